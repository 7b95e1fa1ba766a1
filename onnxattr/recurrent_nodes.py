"""What a recurrent node (LSTM, GRU, RNN) is and what can be done with it: its attributes and activations, whether it
can be unrolled (recurrent.py) or differentiated as it is (emitters/recurrent.py), which input it reads sequence-first,
and the symbolic sizes a model's data fixes. ONNX's gate orders: LSTM i, o, f, c; GRU z, r, h."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}
# activation -> (ONNX op, number of alpha/beta values it reads, default alpha, default beta), as onnxruntime
ACTIVATIONS = {
    "sigmoid": ("Sigmoid", 0, None, None), "tanh": ("Tanh", 0, None, None), "relu": ("Relu", 0, None, None),
    "softsign": ("Softsign", 0, None, None), "softplus": ("Softplus", 0, None, None),
    "leakyrelu": ("LeakyRelu", 1, 0.01, None), "elu": ("Elu", 1, 1.0, None),
    "hardsigmoid": ("HardSigmoid", 2, 0.2, 0.5), "affine": ("Affine", 2, 0.0, 0.0),  # no longer ONNX ops:
    "scaledtanh": ("ScaledTanh", 2, 0.0, 0.0),  # onnxruntime's defaults for them are 0
}
UNROLL_LIMIT = 4096  # steps per node: a longer sequence would give a graph too large to compile quickly


def node_attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def decode(v):
    return v.decode() if isinstance(v, bytes) else v


def activation_specs(op_type: str, attrs: dict, dirs: int) -> list[tuple] | None:
    """One (op, n, alpha, beta) per activation per direction, alphas and betas consumed in order as
    onnxruntime reads them; None if one is not supported."""
    names = [decode(a) for a in attrs.get("activations", [])] or list(DEFAULT_ACTIVATIONS[op_type]) * dirs
    alphas, betas = list(attrs.get("activation_alpha", [])), list(attrs.get("activation_beta", []))
    specs = []
    for name in names:
        known = ACTIVATIONS.get(name.lower())
        if known is None:
            return None
        op, n, alpha, beta = known
        if n >= 1 and alphas:
            alpha = alphas.pop(0)
        if n >= 2 and betas:
            beta = betas.pop(0)
        specs.append((op, n, alpha, beta))
    per = len(DEFAULT_ACTIVATIONS[op_type])
    return specs if len(specs) == per * dirs else None


def why_not_unrolled(node: onnx.NodeProto, steps, value) -> str | None:
    """None if the node can be unrolled, else why not. ``steps``: its static sequence length or None;
    ``value(name)``: a constant's array, or None for a tensor computed at run time."""
    ins = list(node.input) + [""] * (8 - len(node.input))
    if not isinstance(steps, int):
        return (f"{NOT_FIXED} (export the model with a fixed sequence length; `onnxattr explain` and the Python "
                "Analyzer fix it from the data)")
    if steps > UNROLL_LIMIT:
        return f"its sequence length {steps} is above {UNROLL_LIMIT}"
    weights = [ins[1], ins[2], ins[3]] + ([ins[7]] if node.op_type == "LSTM" else [])
    if any(w and value(w) is None for w in weights):
        return "its weights are computed at run time"
    lengths = value(ins[4]) if ins[4] else None
    if ins[4] and not (lengths is not None and np.all(lengths == steps)):
        return "it takes per-sample sequence lengths (sequence_lens)"
    attrs = node_attrs(node)
    dirs = 2 if decode(attrs.get("direction", b"forward")) == "bidirectional" else 1
    names = [decode(a) for a in attrs.get("activations", [])]
    if names and len(names) != len(DEFAULT_ACTIVATIONS[node.op_type]) * dirs:
        return (f"it lists {len(names)} activations {names} where {'a bidirectional' if dirs == 2 else 'a one-way'} "
                f"{node.op_type} takes {len(DEFAULT_ACTIVATIONS[node.op_type]) * dirs}")
    if activation_specs(node.op_type, attrs, dirs) is None:
        return (f"its activations {names} are not all supported (supported: "
                f"{', '.join(sorted(v[0] for v in ACTIVATIONS.values()))})")
    return None


# per op with a fused backward (emitters/recurrent.py): the activations it differentiates
FUSED_ACTIVATIONS = {"LSTM": (("Sigmoid", "Tanh", "Tanh"),), "GRU": (("Sigmoid", "Tanh"),)}
# per op, the largest batch at which the fused backward is the faster (benchmarks/results/NOTES.md: its batched
# recomputation grows with the batch, the unrolled steps' cost is mostly onnxruntime's per-node overhead)
FUSED_BATCH_LIMIT = {"LSTM": 4, "GRU": 8}


def fused_batch_limit(model: onnx.ModelProto) -> int | None:
    """The largest batch at which every recurrent node left fused in ``model`` pays; None when none is."""
    ops = {n.op_type for n in model.graph.node if n.op_type in FUSED_BATCH_LIMIT and n.domain in ("", "ai.onnx")}
    return min((FUSED_BATCH_LIMIT[op] for op in ops), default=None)


def why_not_fused(node: onnx.NodeProto, steps, value) -> str | None:
    """None if the exact-gradient methods differentiate the node as it is (emitters/recurrent.py: onnxruntime's
    kernel runs the forward, the backward is a few ops per step), else why the node is unrolled instead. Arguments
    as for why_not_unrolled."""
    why = why_not_unrolled(node, steps, value)
    if why is not None:
        return why
    if node.op_type not in FUSED_ACTIVATIONS:
        return f"no fused backward for {node.op_type}"
    attrs = node_attrs(node)
    ins = list(node.input) + [""] * (8 - len(node.input))
    dirs = 2 if decode(attrs.get("direction", b"forward")) == "bidirectional" else 1
    specs = activation_specs(node.op_type, attrs, dirs)
    per = len(DEFAULT_ACTIVATIONS[node.op_type])
    if attrs.get("layout", 0):
        return "layout 1"
    if attrs.get("clip") is not None:
        return "clipped pre-activations"
    if node.op_type == "LSTM" and (attrs.get("input_forget", 0) or (ins[7] and np.any(value(ins[7])))):
        return "coupled gates or peepholes"
    if node.op_type == "GRU" and not attrs.get("linear_before_reset", 0):
        return "linear_before_reset 0"
    if any(tuple(s[0] for s in specs[d * per:(d + 1) * per]) not in FUSED_ACTIVATIONS[node.op_type]
           for d in range(dirs)):
        return "activations other than the defaults"
    return None


# ops whose output keeps the first axis of the tensor followed back (element-wise ops, an embedding's Gather of ids)
_AXIS_KEEPING = frozenset({"Identity", "Dropout", "Cast", "Add", "Sub", "Mul", "Div", "Neg", "Relu", "LeakyRelu",
                           "Tanh", "Sigmoid", "Gelu", "Erf", "LayerNormalization", "Where", "Clip"})


def sequence_first_reader(model: onnx.ModelProto, x: str) -> onnx.NodeProto | None:
    """A recurrent node of layout 0 (input [T, N, C], as torch writes nn.LSTM without batch_first) whose input is
    ``x`` itself, or computed from x by ops that keep x's first axis first: x is then sequence-first."""
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type not in RECURRENT_OPS or node_attrs(node).get("layout", 0) != 0:
            continue
        stack, seen = [node.input[0]], set()
        while stack:
            t = stack.pop()
            if t == x:
                return node
            if t in seen or t not in producers:
                continue
            seen.add(t)
            p = producers[t]
            if p.op_type in _AXIS_KEEPING:
                stack.extend(i for i in p.input if i)
            elif p.op_type == "Gather":  # an embedding: the ids' axes come first (axis 0); else the data's first
                axis = node_attrs(p).get("axis", 0)
                stack.append(p.input[1] if axis == 0 else p.input[0])
    return None


def sequence_length(shapes: dict, node: onnx.NodeProto):
    """The static length of the node's sequence axis, or None."""
    shape = shapes.get(node.input[0])
    if shape is None or len(shape) != 3:
        return None
    layout = node_attrs(node).get("layout", 0)
    return shape[1 if layout else 0]


NOT_FIXED = "its sequence length is not fixed"  # in why_not_unrolled's reason (the Analyzer retries on it)


def data_sizes(model: onnx.ModelProto, shape: tuple) -> tuple | None:
    """The symbolic sizes of the data's input as the data's ``shape`` gives them (all but its batch axis), as sorted
    (name, size) pairs; None if it names none. The data's input is the first graph input of the data's rank."""
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    data = next((i for i in inputs if len(i.type.tensor_type.shape.dim) == len(shape)), None)
    if data is None:
        return None
    sizes = {d.dim_param: int(n) for d, n in zip(list(data.type.tensor_type.shape.dim)[1:], shape[1:])
             if d.dim_param and not d.HasField("dim_value")}
    return tuple(sorted(sizes.items())) or None


def with_sizes(model: onnx.ModelProto, sizes: tuple) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs have those symbolic sizes fixed (in every input that names them). A
    model exported with a symbolic sequence length then has a fixed one, so its recurrent nodes unroll."""
    fixed, by_name = onnx.ModelProto(), dict(sizes)
    fixed.CopyFrom(model)
    for i in fixed.graph.input:
        for d in i.type.tensor_type.shape.dim:
            if d.dim_param in by_name:
                d.dim_value = by_name[d.dim_param]  # clears dim_param (a oneof)
    return fixed
