"""onnxruntime's QOperator format written as QDQ (canonicalize's step for statically quantized models).

QuantFormat.QOperator writes a layer as one node on integer codes, whose float computation no node holds:

    y_q = QLinearConv(x_q, s_x, zp_x, W_q, s_w, zp_w, s_y, zp_y, B)

``qoperator_to_qdq`` writes each such node as the float op between dequantizers and a quantizer, the QDQ form
that quantize_static writes by default (and that onnxruntime fuses back into QLinearConv where nothing else reads
the float tensors):

    y_q = QuantizeLinear(Conv(DequantizeLinear(x_q, s_x, zp_x), DequantizeLinear(W_q, s_w, zp_w),
                              DequantizeLinear(B, s_x * s_w)), s_y, zp_y)

The codes are the same up to float rounding where a value lies at a rounding boundary (the integer sum times
s_x s_w against the sum of dequantized products). Ops the format applies to codes themselves (MaxPool, Resize,
Concat of codes with one scale, ...) become DequantizeLinear -> op -> QuantizeLinear with those codes' own scale
and zero point: the same codes. The reverse pass then differentiates the model as a QDQ export, with the
straight-through estimator of emitters/quantize.py. Nodes this cannot write (channels_last layouts, a missing
zero point whose type is unknown, ops of no entry below) are left, and the reverse pass refuses them by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxattr.graph import follow_codes
from onnxattr.recurrent_nodes import node_attrs

DOMAINS = ("", "ai.onnx", "com.microsoft")


@dataclass(frozen=True)
class QOperator:
    """A QOperator node as a float op: ``inputs`` lists the float op's inputs, each an input position of the node
    passed as it is, or a (codes, scale, zero point) triple of positions that is dequantized; ``bias``: the
    position of an int32 bias of scale s_a * s_b (the two triples' scales), appended; ``output``: the (scale, zero
    point) positions the float result is quantized with, None where the node returns float."""

    op: str
    inputs: tuple
    output: tuple | None
    bias: int | None = None


QOPERATOR_AS_FLOAT = {
    "QLinearConv": QOperator("Conv", ((0, 1, 2), (3, 4, 5)), (6, 7), bias=8),
    "QLinearMatMul": QOperator("MatMul", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QGemm": QOperator("Gemm", ((0, 1, 2), (3, 4, 5)), (7, 8), bias=6),
    "QLinearAdd": QOperator("Add", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearMul": QOperator("Mul", ((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearWhere": QOperator("Where", (0, (1, 2, 3), (4, 5, 6)), (7, 8)),
    "QLinearGlobalAveragePool": QOperator("GlobalAveragePool", ((0, 1, 2),), (3, 4)),
    "QLinearAveragePool": QOperator("AveragePool", ((0, 1, 2),), (3, 4)),
    "QLinearLeakyRelu": QOperator("LeakyRelu", ((0, 1, 2),), (3, 4)),
    "QLinearSigmoid": QOperator("Sigmoid", ((0, 1, 2),), (3, 4)),
    "QLinearSoftmax": QOperator("Softmax", ((0, 1, 2),), (3, 4)),
    "QLinearConcat": QOperator("Concat", (), (0, 1)),  # (codes, scale, zero point) triples from position 2 on
}
# ops the QOperator format applies to codes: the same codes through DequantizeLinear -> op -> QuantizeLinear
# (input 0 and, for Concat, every input are codes; Pad's constant value is a code too)
ON_CODES = frozenset({"MaxPool", "GlobalMaxPool", "Resize", "Slice", "Split", "Gather", "Concat", "Tile", "Expand",
                      "DepthToSpace", "SpaceToDepth", "ReduceMax", "ReduceMin", "Pad"})
DROPPED_ATTRIBUTES = {"QLinearSoftmax": ("opset",)}


def qoperator_to_qdq(model: onnx.ModelProto) -> int:
    """Rewrite, in place, the QOperator nodes and the ops on their codes as described above; returns how many."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    new_nodes, count = [], 0
    quantized: dict[str, tuple] = {}  # codes -> (scale, zero point) of the quantizer that wrote them
    for node in graph.node:
        steps = None
        if node.domain in DOMAINS and node.op_type in QOPERATOR_AS_FLOAT and \
                not node_attrs(node).get("channels_last", 0):
            steps = _as_float(node, inits, graph)
        elif node.domain in ("", "ai.onnx") and node.op_type in ON_CODES and node.input[:1] and \
                node.input[0] in quantized:
            steps = _on_codes(node, quantized, inits, graph)
        count += steps is not None
        for step in steps or [node]:
            new_nodes.append(step)
            _note_codes(step, quantized, inits)
    if count:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return count


def _note_codes(node, quantized: dict, inits: dict) -> None:
    """Record the scale and zero point of the codes that a per-tensor quantizer, or a mover of codes, writes."""
    if node.op_type == "QuantizeLinear" and node.domain in ("", "ai.onnx") and \
            not node_attrs(node).get("block_size", 0) and \
            (node.input[1] not in inits or int(np.prod(inits[node.input[1]].dims)) == 1):
        quantized[node.output[0]] = (node.input[1], node.input[2] if len(node.input) > 2 else "")
    elif node.op_type == "DynamicQuantizeLinear":
        quantized[node.output[0]] = (node.output[1], node.output[2])
    else:
        follow_codes(node, quantized)


def _as_float(node, inits: dict, graph) -> list | None:
    spec = QOPERATOR_AS_FLOAT[node.op_type]
    name = node.name or node.output[0]
    inputs = spec.inputs
    if node.op_type == "QLinearConcat":
        inputs = tuple((k, k + 1, k + 2) for k in range(2, len(node.input), 3))
    given = lambda k: node.input[k] if k < len(node.input) else ""  # noqa: E731
    out_scale, out_zero = (given(spec.output[0]), given(spec.output[1])) if spec.output else ("", "")
    if out_scale and not out_zero:  # codes of the operands' type (onnxruntime's rule), known from a zero point
        zero_type = next((inits[given(k[2])].data_type for k in inputs
                          if isinstance(k, tuple) and given(k[2]) in inits), None)
        if zero_type is None:
            return None  # left for the reverse pass, which refuses it by name
        out_zero = f"{name}/output_zero_point"
        graph.initializer.append(helper.make_tensor(out_zero, zero_type, [], [0]))
    steps, float_inputs, scales = [], [], []
    for j, item in enumerate(inputs):
        if not isinstance(item, tuple):
            float_inputs.append(given(item))
            continue
        codes, scale, zero = (given(k) for k in item)
        axis = _weight_axis(node, j)
        out = f"{name}/dequantized_{j}"
        steps.append(helper.make_node("DequantizeLinear", [codes, scale] + ([zero] if zero else []), [out],
                                      name=f"{name}/dequantize_{j}", **({"axis": axis} if axis is not None else {})))
        float_inputs.append(out)
        scales.append(scale)
    if spec.bias is not None and given(spec.bias):
        bias_scale = _product(scales, inits, graph, name, steps)
        out = f"{name}/dequantized_bias"
        steps.append(helper.make_node("DequantizeLinear", [given(spec.bias), bias_scale], [out],
                                      name=f"{name}/dequantize_bias", axis=-1))
        float_inputs.append(out)
    attributes = {k: v for k, v in node_attrs(node).items()
                  if k not in ("channels_last",) + DROPPED_ATTRIBUTES.get(node.op_type, ())}
    if node.op_type == "QGemm":  # onnxruntime scales the bias by alpha too: alpha (A B + C)
        attributes["beta"] = attributes.get("alpha", 1.0)
    result = f"{name}/float" if out_scale else node.output[0]
    if node.op_type == "QLinearSoftmax" and node_attrs(node).get("opset", 13) < 13:
        steps.extend(_softmax_before_13(float_inputs[0], result, attributes.get("axis", 1), name))
    else:
        steps.append(helper.make_node(spec.op, float_inputs, [result], name=f"{name}/float", **attributes))
    if out_scale:
        steps.append(helper.make_node("QuantizeLinear", [result, out_scale, out_zero], [node.output[0]],
                                      name=f"{name}/quantize"))
    return steps


def _weight_axis(node, j: int) -> int | None:
    """The axis of per-channel scales of the node's ``j``-th dequantized operand: Conv's output channels, the
    columns of MatMul's and Gemm's B; None for the others (per-tensor)."""
    if j != 1:
        return None
    if node.op_type == "QLinearConv":
        return 0
    if node.op_type == "QLinearMatMul":
        return -1
    if node.op_type == "QGemm":
        return 0 if node_attrs(node).get("transB", 0) else 1
    return None


def _product(scales: list, inits: dict, graph, name: str, steps: list) -> str:
    """The bias scale s_a * s_b: a constant where both are, else a Mul node."""
    out = f"{name}/bias_scale"
    if all(s in inits for s in scales):
        a, b = (numpy_helper.to_array(inits[s]) for s in scales)
        graph.initializer.append(numpy_helper.from_array((a * b).astype(a.dtype), out))
    else:
        steps.append(helper.make_node("Mul", scales, [out], name=f"{name}/bias_scale"))
    return out


def _softmax_before_13(x: str, out: str, axis: int, name: str) -> list:
    """Softmax as opset 11 defines it: over the axes from ``axis`` on, flattened into one."""
    return [helper.make_node("Shape", [x], [f"{name}/shape"], name=f"{name}/shape"),
            helper.make_node("Flatten", [x], [f"{name}/flat"], name=f"{name}/flatten", axis=axis),
            helper.make_node("Softmax", [f"{name}/flat"], [f"{name}/flat_softmax"], name=f"{name}/float", axis=-1),
            helper.make_node("Reshape", [f"{name}/flat_softmax", f"{name}/shape"], [out], name=f"{name}/unflatten")]


def _on_codes(node, quantized: dict, inits: dict, graph) -> list | None:
    scale, zero = quantized[node.input[0]]
    data = list(node.input) if node.op_type == "Concat" else node.input[:1]
    if any(quantized.get(d) != (scale, zero) for d in data):
        return None  # codes of different scales: not one DequantizeLinear's
    name = node.name or node.output[0]
    params = [scale] + ([zero] if zero else [])
    inputs = list(node.input)
    if node.op_type == "Pad" and zero and node.input[2:3] in ([], [""]) and \
            node_attrs(node).get("mode", b"constant") in (b"constant", "constant"):
        if zero not in inits:
            return None  # code 0 is (0 - zp) * s: zp's type must be known to write it
        value = f"{name}/zero_code"  # an absent value pads with code 0, not with the code of 0.0
        graph.initializer.append(helper.make_tensor(value, inits[zero].data_type, [], [0]))
        inputs = inputs[:2] + [value] + inputs[3:]
    codes = inputs if node.op_type == "Concat" else inputs[:1] + inputs[2:3] * (node.op_type == "Pad")
    steps = []
    for k, c in enumerate(codes):
        if c:
            steps.append(helper.make_node("DequantizeLinear", [c] + params, [f"{name}/dequantized_{k}"],
                                          name=f"{name}/dequantize_{k}"))
            inputs[inputs.index(c)] = f"{name}/dequantized_{k}"
    floats = [f"{name}/float_{k}" if o else "" for k, o in enumerate(node.output)]
    if node.op_type != "Split":
        floats[1:] = list(node.output[1:])  # MaxPool's indices stay what they were
    op = helper.make_node(node.op_type, inputs, floats, name=f"{name}/float")
    op.attribute.extend(node.attribute)
    steps.append(op)
    for k, (f, o) in enumerate(zip(floats, node.output)):
        if f and f != o:
            steps.append(helper.make_node("QuantizeLinear", [f] + params, [o], name=f"{name}/quantize_{k}"))
    return steps
