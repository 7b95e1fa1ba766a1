"""Canonicalize: replace sequences whose contents are known when compiling by the tensors they hold.

The TorchScript exporter writes Python lists as ONNX sequences: a torch.split of computed sizes becomes a Loop
that inserts each part into a SequenceEmpty (a torchvision MViT's pooling of q, k and v), and SequenceAt picks
the parts. Once control_flow.py has unrolled the Loop, the inserts form a chain whose positions are constants:

    SequenceAt(s, i)            the i-th tensor put into s
    SequenceLength(s)           a constant
    ConcatFromSequence(s)       Concat of the tensors (of their Unsqueezes for new_axis=1)
    SplitToSequence(x, sizes)   Split by those sizes (1-D constant sizes)

so the reverse pass sees plain tensors. A sequence whose contents are not all known (a position computed from
the data, a sequence a Loop body reads) is left as it is; nodes nothing reads any more are dropped.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxattr.fold import remove_dead
from onnxattr.recurrent_nodes import node_attrs


def _int(consts: dict, name: str | None) -> int | None:
    value = consts.get(name) if name else None
    return int(value.reshape(-1)[0]) if value is not None and value.size == 1 else None


def _place(pos: int | None, size: int, inserting: bool) -> int | None:
    """The index a position names in a sequence of ``size`` (negative counts from the end; an insert may name
    ``size``, the end), None when out of range."""
    if pos is None:
        return None
    top = size if inserting else size - 1
    if not -size <= pos <= top:
        return None
    return pos + size if pos < 0 else pos


def resolve_sequences(model: onnx.ModelProto) -> bool:
    """Rewrite, in place, the reads of the sequences whose contents are known (see the module's docstring);
    returns whether any was rewritten."""
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer
              if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and len(t.dims) <= 1}
    taken = {name for n in graph.node for name in (*n.input, *n.output)} | {t.name for t in graph.initializer}
    held: dict[str, list[str]] = {}  # sequence -> the tensors it holds, in order
    nodes, changed = [], False

    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    def constant(value: np.ndarray, base: str) -> str:
        name = fresh(base)
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    for node in graph.node:
        ins, out = list(node.input), (node.output[0] if node.output else "")
        items = held.get(ins[0]) if ins else None
        op = node.op_type if node.domain in ("", "ai.onnx") else None
        replaced = None
        if op == "SequenceEmpty":
            held[out] = []
        elif op == "SequenceConstruct":
            held[out] = ins
        elif op == "SequenceInsert" and items is not None:
            at = len(items) if len(ins) < 3 or not ins[2] else _place(_int(consts, ins[2]), len(items), True)
            if at is not None:
                held[out] = items[:at] + [ins[1]] + items[at:]
        elif op == "SequenceErase" and items is not None:
            at = _place(-1 if len(ins) < 2 or not ins[1] else _int(consts, ins[1]), len(items), False)
            if at is not None:
                held[out] = items[:at] + items[at + 1:]
        elif op == "SequenceAt" and items is not None:
            at = _place(_int(consts, ins[1]), len(items), False)
            if at is not None:
                replaced = [helper.make_node("Identity", [items[at]], [out], name=node.name)]
        elif op == "SequenceLength" and items is not None:
            replaced = [helper.make_node("Constant", [], [out], name=node.name,
                                         value=numpy_helper.from_array(np.array(len(items), np.int64)))]
        elif op == "ConcatFromSequence" and items:
            attrs = node_attrs(node)
            parts = items
            if attrs.get("new_axis", 0):
                axes = constant(np.array([attrs["axis"]], np.int64), f"{out}/axis")
                replaced = [helper.make_node("Unsqueeze", [t, axes], [fresh(f"{out}/part")]) for t in items]
                parts = [n.output[0] for n in replaced]
            replaced = (replaced or []) + [helper.make_node("Concat", parts, [out], name=node.name, axis=attrs["axis"])]
        elif op == "SplitToSequence" and len(ins) > 1 and ins[1] in consts and consts[ins[1]].ndim == 1:
            sizes = consts[ins[1]]
            parts = [fresh(f"{out}/part{k}") for k in range(len(sizes))]
            replaced = [helper.make_node("Split", [ins[0], ins[1]], parts, axis=node_attrs(node).get("axis", 0)),
                        node]  # kept for any reader left (dropped below when there is none)
            held[out] = parts
        if replaced is None:
            nodes.append(node)
            continue
        nodes.extend(replaced)
        changed = True
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
        remove_dead(graph)
    return changed
