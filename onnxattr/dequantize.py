"""Dynamically quantized layers written as float layers, for the LRP rules (canonicalize's last step for them).

onnxruntime's quantize_dynamic writes a layer as

    q, s_x, zp = DynamicQuantizeLinear(x)
    y = Cast(MatMulInteger(q, W_q, zp, W_zp)) * Mul(s_x, s_w)         (ConvInteger likewise)

whose float weights and scores no node holds. ``dequantize_integer_layers`` rewrites each such chain as

    y = MatMul(DequantizeLinear(q, s_x, zp), (W_q - W_zp) * s_w)

the same value up to float rounding (the integer sum times s_x s_w, against the sum of the dequantized
products), a layer with a constant weight as the rules read one. The codes q still come from x through
DynamicQuantizeLinear, so the backward is the straight-through estimator as before (emitters/quantize.py).
Chains of another shape are left alone, and the LRP composite refuses their integer nodes by name.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxattr.graph import dequantize_array

INTEGER_LAYERS = {"MatMulInteger": "MatMul", "ConvInteger": "Conv"}


def dequantize_integer_layers(model: onnx.ModelProto) -> int:
    """Rewrite, in place, the chains described above; returns how many."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    rewrites = []
    for node in graph.node:
        if node.op_type not in INTEGER_LAYERS or node.domain not in ("", "ai.onnx"):
            continue
        chain = _chain(node, producer, readers, inits, outputs)
        if chain is not None:
            rewrites.append(chain)
    for node, cast, mul, quantizer, weight in rewrites:
        name = node.name or node.output[0]
        codes = node.input[0]
        dequantized = f"{name}/dequantized_input"
        weight_name = f"{name}/dequantized_weight"
        graph.initializer.append(numpy_helper.from_array(weight, weight_name))
        steps = [helper.make_node("DequantizeLinear", [codes, quantizer.output[1], quantizer.output[2]],
                                  [dequantized], name=f"{name}/dequantize_input"),
                 helper.make_node(INTEGER_LAYERS[node.op_type], [dequantized, weight_name], list(mul.output),
                                  name=f"{name}/float")]
        steps[1].attribute.extend(node.attribute)
        at = list(graph.node).index(mul)
        for k, step in enumerate(steps):
            graph.node.insert(at + k, step)
        for old in (node, cast, mul):
            graph.node.remove(old)
    if rewrites:
        _drop_unread(graph, {producer[mul.input[0] if mul.input[1] == cast.output[0] else mul.input[1]].name
                             for node, cast, mul, _, _ in rewrites},
                     {i for node, _, _, _, _ in rewrites for i in node.input[1:]})
    return len(rewrites)


def _chain(node, producer: dict, readers: dict, inits: dict, outputs: set):
    """(node, its Cast, the Mul by the scales, the DynamicQuantizeLinear, the float weight) when ``node`` heads a
    chain of the shape above (nothing else reads its intermediate tensors), else None."""
    if len(node.input) < 2 or node.input[1] not in inits:
        return None
    quantizer = producer.get(node.input[0])
    if quantizer is None or quantizer.op_type != "DynamicQuantizeLinear":
        return None
    if len(node.input) > 2 and node.input[2] and node.input[2] != quantizer.output[2]:
        return None
    w_zp = node.input[3] if len(node.input) > 3 and node.input[3] else None
    if w_zp is not None and w_zp not in inits:
        return None
    cast = _only_reader(node.output[0], readers, outputs)
    if cast is None or cast.op_type != "Cast" or \
            next((a.i for a in cast.attribute if a.name == "to"), None) != TensorProto.FLOAT:
        return None
    mul = _only_reader(cast.output[0], readers, outputs)
    if mul is None or mul.op_type != "Mul":
        return None
    scales = producer.get(mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0])
    if scales is None or scales.op_type != "Mul" or quantizer.output[1] not in scales.input:
        return None
    w_scale = scales.input[1] if scales.input[0] == quantizer.output[1] else scales.input[0]
    if w_scale not in inits:
        return None
    codes = numpy_helper.to_array(inits[node.input[1]])
    zero = numpy_helper.to_array(inits[w_zp]) if w_zp else None
    scale = numpy_helper.to_array(inits[w_scale]).astype(np.float32)
    if node.op_type == "ConvInteger":  # one value (onnxruntime's ConvInteger takes no zero point per channel)
        if (zero is not None and zero.size > 1) or scale.size > 1:
            return None
    elif (zero is not None and zero.ndim > 1) or scale.ndim > 1:  # MatMulInteger: one per column of W [K, N]
        return None
    return node, cast, mul, quantizer, dequantize_array(codes, scale, zero, axis=-1)


def _only_reader(tensor: str, readers: dict, outputs: set):
    found = readers.get(tensor, [])
    return found[0] if len(found) == 1 and tensor not in outputs else None


def _drop_unread(graph: onnx.GraphProto, scale_nodes: set, weights: set) -> None:
    """Remove what the rewrite left unread: the scales' Mul nodes (by name) and the integer weights, zero points and
    scales (``weights``: the names the integer nodes read)."""
    outputs = {o.name for o in graph.output} | {i.name for i in graph.input}
    read = {i for n in graph.node for i in n.input} | outputs
    for n in [n for n in graph.node if n.name in scale_nodes and not any(o in read for o in n.output)]:
        weights.update(n.input)
        graph.node.remove(n)
    read = {i for n in graph.node for i in n.input} | outputs
    for t in [t for t in graph.initializer if t.name in weights and t.name not in read]:
        graph.initializer.remove(t)
