"""Canonicalize: fold the parts of shapes that are known when compiling.

Shape(h) of an h with a symbolic batch axis is not a constant, but Shape(h)[0] may be, and constant folding
(fold.py, graphsurgeon) stops at the Shape, or at a Cast after it. Here the shape tensors that exporters compute
between a Shape and its use carry one entry per element, an int or None where unknown, through Shape, Size,
Cast, Slice, Gather, Squeeze, Unsqueeze, Concat, Identity, integer Add/Sub/Mul/Div (truncating, as ONNX's),
Equal and Where (a dimension is never negative: Equal(N, -1) is false) and a Reshape to one axis;
a tensor whose entries all become known is replaced by an initializer. tf2onnx's while loops read their step count
this way, from the shape of the sequence (control_flow.py needs it constant), and the TorchScript exporter's
reshapes their target shapes (a ShuffleNet's channel shuffle, view(N, groups, C // groups, H, W)): with the known
entries folded, shape inference then knows the shapes after them. An unknown entry remembers which dimension it
is (a tensor's axis, and its symbolic name): a Reshape whose target is known but for entries that repeat its own
input's dimension at the same place (x.flatten(2), x.view(x.size(0), -1) under a symbolic batch) gets the constant
target with 0 there, which ONNX's Reshape reads as "copy that dimension"; an Expand's target made that way gets
spelled as Concat(Shape(t, start=axis, end=axis + 1), constants), which shape inference follows.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxattr.light import infer_shapes, tensor_shapes
from onnxattr.recurrent_nodes import node_attrs

MAX_ELEMENTS = 64  # shape tensors are short; larger constants are not followed


class _Dim(NamedTuple):
    """An entry not known when compiling: axis ``axis`` of tensor ``tensor``, of symbolic name ``name`` (or None)."""

    tensor: str
    axis: int
    name: str | None


class _Dims:
    """A small 0-d or 1-d tensor of which some entries are known: a list of int/_Dim/None, and whether it is 0-d."""

    def __init__(self, entries: list, scalar: bool, dtype: int):
        self.entries, self.scalar, self.dtype = entries, scalar, dtype

    @property
    def known(self) -> bool:
        return all(isinstance(e, int) for e in self.entries)

    def array(self) -> np.ndarray:
        values = np.array(self.entries, helper.tensor_dtype_to_np_dtype(self.dtype))
        return values.reshape(()) if self.scalar else values


def _int_values(init: onnx.TensorProto) -> _Dims | None:
    if init.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) or len(init.dims) > 1:
        return None
    values = numpy_helper.to_array(init)
    if values.size > MAX_ELEMENTS:
        return None
    return _Dims([int(v) for v in values.reshape(-1)], values.ndim == 0, init.data_type)


def _shape(node, dims, shapes):
    shape = shapes.get(node.input[0])
    if shape is None:
        return None
    entries = [d if isinstance(d, int) else _Dim(node.input[0], k, d if isinstance(d, str) else None)
               for k, d in enumerate(shape)]
    rank = len(entries)
    attrs = node_attrs(node)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    return _Dims(entries[slice(start, end)], False, onnx.TensorProto.INT64)


def _size(node, dims, shapes):
    shape = shapes.get(node.input[0])
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return _Dims([int(np.prod(shape))], True, onnx.TensorProto.INT64)


def _cast(node, dims, shapes):
    to = node_attrs(node).get("to")
    x = dims.get(node.input[0])
    if x is None or to not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
        return None
    return _Dims(list(x.entries), x.scalar, to)


def _constant_list(dims, name):
    v = dims.get(name)
    return v.entries if v is not None and v.known and not v.scalar else None


def _slice(node, dims, shapes):
    x = dims.get(node.input[0])
    args = [_constant_list(dims, i) if i else None for i in list(node.input[1:]) + [""] * (5 - len(node.input))]
    starts, ends, axes, steps = args[0], args[1], args[2], args[3]
    if x is None or x.scalar or starts is None or ends is None or len(starts) != 1:
        return None
    if (node.input[3:4] and node.input[3] and axes not in ([0], [-1])) or (
            node.input[4:5] and node.input[4] and steps is None):
        return None
    step = steps[0] if steps else 1
    return _Dims(x.entries[slice(starts[0], ends[0], step)], False, x.dtype)


def _gather(node, dims, shapes):
    x, index = dims.get(node.input[0]), dims.get(node.input[1])
    if x is None or x.scalar or index is None or not index.known or node_attrs(node).get("axis", 0) not in (0, -1):
        return None
    n = len(x.entries)
    if not all(-n <= i < n for i in index.entries):
        return None
    return _Dims([x.entries[i] for i in index.entries], index.scalar, x.dtype)


def _squeeze(node, dims, shapes):
    x = dims.get(node.input[0])
    return _Dims(list(x.entries), True, x.dtype) if x is not None and not x.scalar and len(x.entries) == 1 else None


def _unsqueeze(node, dims, shapes):
    x = dims.get(node.input[0])
    return _Dims(list(x.entries), False, x.dtype) if x is not None and x.scalar else None


def _concat(node, dims, shapes):
    parts = [dims.get(i) for i in node.input]
    if any(p is None or p.scalar for p in parts):
        return None
    return _Dims([e for p in parts for e in p.entries], False, parts[0].dtype)


def _identity(node, dims, shapes):
    return dims.get(node.input[0])


def _elementwise(node, dims, entry, dtype: int | None = None):
    """Entry by entry, ``entry`` of the inputs' entries, 1-element inputs broadcast against the others; None unless
    every input is followed and their lengths broadcast. ``dtype``: the output's, else the last input's."""
    values = [dims.get(i) for i in node.input]
    if any(v is None for v in values):
        return None
    n = max(len(v.entries) for v in values)
    if {len(v.entries) for v in values} - {1, n}:
        return None
    columns = zip(*(v.entries * (n // len(v.entries)) for v in values))
    return _Dims([entry(*c) for c in columns], all(v.scalar for v in values), dtype or values[-1].dtype)


_ARITHMETIC = {"Add": lambda u, v: u + v, "Sub": lambda u, v: u - v, "Mul": lambda u, v: u * v,
               "Div": lambda u, v: abs(u) // abs(v) * (1 if (u < 0) == (v < 0) else -1) if v else None}


def _arithmetic(node, dims, shapes):
    op = _ARITHMETIC[node.op_type]
    return _elementwise(node, dims, lambda u, v: op(u, v) if isinstance(u, int) and isinstance(v, int) else None)


def _equal(node, dims, shapes):
    """A dimension is never negative: Equal(dim, -1), how TorchScript writes expand(n, -1, -1), is false."""
    def eq(u, v):
        if isinstance(u, int) and isinstance(v, int):
            return int(u == v)
        if isinstance(u, _Dim) and isinstance(v, int) and v < 0 or isinstance(v, _Dim) and isinstance(u, int) and u < 0:
            return 0
        return None

    return _elementwise(node, dims, eq, onnx.TensorProto.BOOL)


def _where(node, dims, shapes):
    cond = dims.get(node.input[0])
    if cond is None or not all(isinstance(c, int) for c in cond.entries):
        return None
    return _elementwise(node, dims, lambda c, u, v: u if c else v)


def _reshape(node, dims, shapes):
    """A shape tensor reshaped to one axis ([-1] or [n]): the same entries."""
    x, target = dims.get(node.input[0]), dims.get(node.input[1])
    if x is None or target is None or not target.known or len(target.entries) != 1 or \
            target.entries[0] not in (-1, len(x.entries)):
        return None
    return _Dims(list(x.entries), False, x.dtype)


RULES = {"Shape": _shape, "Size": _size, "Cast": _cast, "Slice": _slice, "Gather": _gather, "Squeeze": _squeeze,
         "Unsqueeze": _unsqueeze, "Concat": _concat, "Identity": _identity, "Add": _arithmetic, "Sub": _arithmetic,
         "Mul": _arithmetic, "Div": _arithmetic, "Equal": _equal, "Where": _where, "Reshape": _reshape}


def fold_static_dims(model: onnx.ModelProto, rounds: int = 64) -> bool:
    """Replace, in place, every node output of the main graph whose value the rules above know in full by an
    initializer; returns whether any was. The nodes left unread are for constant folding to drop. Each round infers
    shapes anew: a shape folded in one round (a reshape's target) makes the shapes after it known for the next."""
    changed = False
    for _ in range(rounds):
        if not _fold_round(model):
            break
        changed = True
    return changed


def _fold_round(model: onnx.ModelProto) -> bool:
    graph = model.graph
    inputs, outputs = {i.name for i in graph.input}, {o.name for o in graph.output}
    dims: dict[str, _Dims] = {}
    for init in graph.initializer:
        if init.name not in inputs and (d := _int_values(init)) is not None:
            dims[init.name] = d
    shapes = None
    folded: list[tuple[int, np.ndarray]] = []
    for k, node in enumerate(graph.node):
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") and len(node.output) == 1 else None
        if rule is None:
            continue
        if node.op_type in ("Shape", "Size") and shapes is None:
            shapes = tensor_shapes(infer_shapes(model))
        value = rule(node, dims, shapes or {})
        if value is None or len(value.entries) > MAX_ELEMENTS:
            continue
        dims[node.output[0]] = value
        if value.known and node.output[0] not in outputs:  # also a Cast of what an earlier round folded
            folded.append((k, value.array()))
    if folded:  # first, while the indices are the graph's
        replaced = {k for k, _ in folded}
        nodes = [n for k, n in enumerate(graph.node) if k not in replaced]
        graph.initializer.extend(numpy_helper.from_array(v, graph.node[k].output[0]) for k, v in folded)
        del graph.node[:]
        graph.node.extend(nodes)
    copied = _copied_dims(graph, dims, shapes or {})
    spelled = _spell_expand_targets(graph, dims)  # inserts nodes
    return bool(folded) or copied or spelled


def _copied_dims(graph: onnx.GraphProto, dims: dict, shapes: dict) -> bool:
    """Point each Reshape whose target is known but for entries equal to its input's dimension at the same place
    (the same tensor's axis, or the same symbolic name) to a constant target with 0 there; in place."""
    changed = False
    for node in graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or node_attrs(node).get("allowzero", 0):
            continue
        target = dims.get(node.input[1])
        shape = shapes.get(node.input[0])
        if target is None or target.known or target.scalar or shape is None:
            continue
        entries = []
        for k, e in enumerate(target.entries):
            same = isinstance(e, _Dim) and k < len(shape) and (
                (e.tensor == node.input[0] and e.axis == k) or (e.name is not None and shape[k] == e.name))
            entries.append(0 if same else e)
        if not all(isinstance(e, int) for e in entries):
            continue
        name = f"{node.input[1]}/copied"
        while any(t.name == name for t in graph.initializer):
            name += "_"
        graph.initializer.append(numpy_helper.from_array(np.array(entries, np.int64), name))
        node.input[1] = name
        changed = True
    return changed


SPELLED = "oa_dims/"  # the names of the nodes _spell_expand_targets writes


def _spell_expand_targets(graph: onnx.GraphProto, dims: dict) -> bool:
    """An Expand whose target is known but for whole dimensions of other tensors (TorchScript's cls.expand(n, -1, -1)
    computes it through Equal and Where, which shape inference does not follow) gets that target spelled as Concat of
    Shape(tensor, start=axis, end=axis + 1) and constants, which it follows: the Expand's output shape is then
    known. In place; returns whether any was."""
    producer = {o: n for n in graph.node for o in n.output}
    nodes, spelled = [], {}
    for node in graph.node:
        if node.op_type == "Expand" and len(node.input) > 1 and node.input[1] in spelled:  # a second reader
            node.input[1] = spelled[node.input[1]]
            nodes.append(node)
            continue
        target = dims.get(node.input[1]) if node.op_type == "Expand" and len(node.input) > 1 else None
        maker = producer.get(node.input[1]) if target is not None else None
        if target is None or target.known or target.scalar or (maker is not None and maker.name.startswith(SPELLED)) \
                or not all(isinstance(e, (int, _Dim)) for e in target.entries):
            nodes.append(node)
            continue
        parts, run = [], []
        base = f"{SPELLED}{node.input[1]}"
        for k, e in enumerate(target.entries):
            if isinstance(e, _Dim):
                if run:
                    parts.append(helper.make_node("Constant", [], [f"{base}/c{k}"], name=f"{base}/c{k}",
                                                  value=numpy_helper.from_array(np.array(run, np.int64))))
                    run = []
                parts.append(helper.make_node("Shape", [e.tensor], [f"{base}/d{k}"], name=f"{base}/d{k}",
                                              start=e.axis, end=e.axis + 1))
            else:
                run.append(e)
        if run:
            parts.append(helper.make_node("Constant", [], [f"{base}/c_end"], name=f"{base}/c_end",
                                          value=numpy_helper.from_array(np.array(run, np.int64))))
        parts.append(helper.make_node("Concat", [p.output[0] for p in parts], [f"{base}/target"],
                                      name=f"{base}/target", axis=0))
        nodes.extend(parts)
        spelled[node.input[1]] = parts[-1].output[0]
        node.input[1] = parts[-1].output[0]
        nodes.append(node)
    if spelled:
        del graph.node[:]
        graph.node.extend(nodes)
    return bool(spelled)
