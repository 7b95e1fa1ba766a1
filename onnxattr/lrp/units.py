"""Linear units: the nodes LRP rules act on, with their parameters and their two linear maps.

A unit is a node computing z = W x + b (Conv, ConvTranspose, DeformConv (linear in x for its offsets and mask, which
get no relevance, as an LSTM's gates get none), Gemm, MatMul with a constant operand on either side:
x W, or W x for a 2-D W that mixes x's rows, as a graph convolution's A X does; an Einsum of x and a weight, as
Keras' EinsumDense writes a layer; a standalone BatchNormalization as a per-channel scale) or a parameter-free
linear map (AveragePool, GlobalAveragePool, a ReduceMean over every spatial axis, as torch's dynamo exporter
writes a global average pool of [N, C, ...] and tf2onnx one of [N, ..., C] where Keras' layout stays, and a
ReduceSum or ReduceMean that makes the explained output). A
BatchNormalization right after a Conv/Gemm/MatMul, and a constant bias Add right after a bias-free one, are
fused into it with the exact fold (W' = W s, b' = (b - mean) s + beta with s = gamma / sqrt(var + eps)); the
fused followers pass relevance through unchanged and the unit reads
relevance at the last follower's output. The forward graph itself is never changed, so the compiled model's
original outputs stay bit-identical.

``forward(b, x, w, bias)`` applies the unit's map to other operands; ``vjp(b, g, w)`` is its input VJP
with weight w. Both come from the op family's emitter module: no second implementation of a backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import helper

from onnxattr.emitters import VJPS
from onnxattr.emitters.conv import conv_forward, conv_input_vjp, conv_transpose_input_vjp
from onnxattr.emitters.deform_conv import deform_conv_input_vjp
from onnxattr.emitters.linear import matmul_input_vjp
from onnxattr.emitters.normalization import bn_scale_shift
from onnxattr.emitters.quantize import from_lowest_code
from onnxattr.emitters.reduce import is_global_average
from onnxattr.lrp.fusion import fuse_followers, fuse_left_bias

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOL_OPS = ("AveragePool", "GlobalAveragePool")


@dataclass
class Unit:
    node: object            # the linear node
    x: str                  # its input on the explained path
    out: str                # tensor whose relevance the unit consumes (after fused followers)
    kind: str               # "conv" | "dense" | "norm" | "pool"
    w: str | None = None    # weight tensor name (possibly a folded constant)
    bias: str | None = None
    followers: list = field(default_factory=list)  # fused nodes (relevance passes through them)
    cache: dict = field(default_factory=dict)
    nonneg: bool = False    # x >= 0 by construction (a Relu output, pooled/reshaped): x+ = x, x- = 0
    out_has_bias: bool = True  # False when the bias is added after a reshape (Conv1D from tf2onnx)
    left: bool = False      # MatMul(W, x): the constant 2-D weight is the left operand (z = W x)
    pads: list = field(default_factory=list)  # Pad nodes from the explained input to x, in order (z-box's bounds)

    def _einsum_operands(self, x, w):
        """An Einsum unit's node inputs with x and w in place of its own operands."""
        return [x if i == self.x else w for i in self.node.input]

    # ---- the two linear maps ------------------------------------------------------------------
    def forward(self, b, x, w, bias):
        n = self.node
        if self.kind == "pool":
            return b.replay(n, {n.input[0]: x})[0]
        if self.left:
            z = b.op("MatMul", [w, x])
            return b.op("Add", [z, bias]) if bias else z
        if n.op_type == "Einsum":
            z = b.replay(n, dict(zip(n.input, self._einsum_operands(x, w))))[0]
            return b.op("Add", [z, bias]) if bias else z
        if n.op_type == "Conv":
            return conv_forward(b, n, x, w, bias)
        if n.op_type == "ConvTranspose":
            out = b.op("ConvTranspose", [x, w] + ([bias] if bias else []))
            b.nodes[-1].attribute.extend(n.attribute)
            return out
        if n.op_type == "DeformConv":  # the node's own offsets and mask: linear in x
            mask = n.input[4] if len(n.input) > 4 else ""
            out = b.op("DeformConv", [x, w, n.input[2]] + ([bias or "", mask] if mask else [bias] if bias else []))
            b.nodes[-1].attribute.extend(n.attribute)
            return out
        if n.op_type == "Gemm":
            tb = next((a.i for a in n.attribute if a.name == "transB"), 0)
            return b.op("Gemm", [x, w] + ([bias] if bias else []), transB=tb)
        if self.kind == "norm":
            z = b.op("Mul", [x, w])
        else:
            z = b.op("MatMul", [x, w])
        return b.op("Add", [z, bias]) if bias else z

    def vjp(self, b, g, w):
        n = self.node
        if self.kind == "pool":
            return VJPS[n.op_type](b, n, [g], [True])[0]
        if self.left:  # dx = W^T g (W^T folded at compile time for a constant W)
            wv = b.value(w)
            wt = b.op("Transpose", [w], perm=[1, 0]) if wv is None else \
                b.const(np.ascontiguousarray(wv.T), wv.dtype, "wT")
            out = b.op("MatMul", [wt, g])
            b.set_info(out, self.x)
            return out
        if n.op_type == "Einsum":  # the emitter's VJP of x, read off a copy of the node whose weight is w
            proxy = helper.make_node("Einsum", self._einsum_operands(self.x, w), list(n.output), name=n.name)
            proxy.attribute.extend(n.attribute)
            out = VJPS["Einsum"](b, proxy, [g], [i == self.x for i in n.input])[list(n.input).index(self.x)]
            b.set_info(out, self.x)
            return out
        if n.op_type == "Conv":
            return conv_input_vjp(b, n, g, w, self.x)
        if n.op_type == "ConvTranspose":
            return conv_transpose_input_vjp(b, n, g, w, self.x)
        if n.op_type == "DeformConv":
            out = deform_conv_input_vjp(b, n, g, w)
            b.set_info(out, self.x)
            return out
        if n.op_type == "Gemm":
            tb = next((a.i for a in n.attribute if a.name == "transB"), 0)
            out = b.op("Gemm", [g, w], transB=1 - tb)
            b.set_info(out, self.x)
            return out
        if self.kind == "norm":
            return b.op("Mul", [g, w])
        return matmul_input_vjp(b, n, g, w, self.x)


def _gemm_effective(b, node):
    """Gemm as z = x W + c with alpha/beta folded into constants (None if not constant or transA)."""
    at = {a.name: (a.f if a.type == a.FLOAT else a.i) for a in node.attribute}
    if at.get("transA", 0):
        return None
    w = b.value(node.input[1])
    c = b.value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    alpha, beta = at.get("alpha", 1.0), at.get("beta", 1.0)
    if alpha == 1.0 and (c is None or beta == 1.0):
        return node.input[1], (node.input[2] if c is not None else None), w, c
    if w is None:
        return None
    return None, None, w * alpha, (c * beta if c is not None else None)


# ops whose output is >= 0 when their first input is (data movement, max and average pooling)
_KEEPS_SIGN = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "Flatten",
                         "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Dropout"})
# ops whose output is >= 0 when all their float inputs are
_KEEPS_SIGN_ALL = frozenset({"Add", "Sum", "Mean", "Concat", "Max", "Mul"})


def nonnegative_tensors(b, nodes) -> set:
    """Tensors >= 0 by construction (or NaN): Relu outputs, codes dequantized from the bottom of their range (a
    quantizer that stands in for a ReLU), and what sign-keeping ops make of them. One pass over ``nodes`` in
    topological order."""
    out: set = set()
    for n in nodes:
        if n.domain not in ("", "ai.onnx") or not n.output:
            continue
        if n.op_type == "Relu":
            ok = True
        elif n.op_type == "DequantizeLinear":
            ok = _dequantized_from_the_bottom(b, n)
        elif n.op_type in _KEEPS_SIGN:
            ok = n.input[0] in out
        elif n.op_type in _KEEPS_SIGN_ALL:
            floats = [i for i in n.input if i and (b.is_float(i) or i in out)]
            ok = bool(floats) and all(i in out for i in floats)
        else:
            ok = False
        if ok:
            out.add(n.output[0])
    return out


def _dequantized_from_the_bottom(b, node) -> bool:
    """y = (q - zp) * s >= 0 for every code q: the zero point is the lowest code of q's type and every scale is
    positive."""
    scale = b.value(node.input[1])
    return scale is not None and bool(np.all(np.asarray(scale) > 0)) and from_lowest_code(b, node)


def find_units(b, nodes, on_path: set, graph_outputs: set, x: str | None = None) -> dict:
    """node name -> Unit for every linear node on the path, with fused followers mapped too. A node is a
    layer when one operand (the weight: an initializer, or fed at run time) does not vary with the
    explained input ``x``; MatMul and Gemm take it on either side. With both operands varying it is a
    product of activations, not a layer."""
    consumers: dict[str, list] = {}
    producer = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        for o in n.output:
            producer[o] = n.name
    nonneg = nonnegative_tensors(b, nodes)
    units = {}
    for n in nodes:
        if n.name not in on_path:
            continue
        if n.op_type in POOL_OPS or is_global_average(b, n) or is_global_average(b, n, channels_last=True) or \
                _reduces_into_output(n, consumers, graph_outputs):
            units[n.name] = Unit(n, n.input[0], n.output[0], "pool")
            continue
        if n.op_type == "BatchNormalization" and n.name not in units:
            if any(producer.get(i) in on_path or i == x for i in n.input[1:5]):
                continue  # statistics from the input (tf2onnx's Keras LayerNormalization): a norm, no layer
            scale, shift = bn_scale_shift(b, n)
            units[n.name] = Unit(n, n.input[0], n.output[0], "norm", scale, shift)
            continue
        if n.op_type == "Einsum":
            unit = _einsum_unit(n, [i == x or producer.get(i) in on_path for i in n.input])
            if unit is not None:
                _record(b, unit, units, nonneg, consumers, graph_outputs, fuse_left_bias)
            continue
        if n.op_type == "DeformConv":
            varies = [i == x or producer.get(i) in on_path for i in n.input]
            if varies[1] or (len(varies) > 3 and varies[3]):
                continue  # a weight or bias that varies with x
            bias = n.input[3] if len(n.input) > 3 and n.input[3] else None
            _record(b, Unit(n, n.input[0], n.output[0], "conv", n.input[1], bias), units, nonneg, consumers,
                    graph_outputs)
            continue
        if n.op_type not in LINEAR_OPS:
            continue
        w_name = n.input[1]
        varies = [i == x or producer.get(i) in on_path for i in n.input]
        if any(varies[2:]):
            continue  # a bias (Gemm's C, Conv's B) that varies with x: a sum with an activation, not a layer
        varies = varies[:2]
        if varies == [False, True] and n.op_type in ("MatMul", "Gemm"):  # W x: the weight on the left
            unit = _left_unit(b, n)
            if unit is not None:
                _record(b, unit, units, nonneg, consumers, graph_outputs, fuse_left_bias)
            continue
        if varies[1]:
            continue  # the weight varies with x too: a product of activations (AttnLRP territory), not a layer
        if n.op_type == "MatMul":
            if (b.rank(w_name) or 2) > 2:
                continue  # a batched weight (another input with the batch axis): a product, not a layer
            unit = Unit(n, n.input[0], n.output[0], "dense", w_name, None)
        elif n.op_type == "Gemm":
            eff = _gemm_effective(b, n)
            if eff is None:
                continue
            wn, cn, wv2, cv = eff
            unit = Unit(n, n.input[0], n.output[0], "dense",
                        wn or b.const(wv2, wv2.dtype, "w"), cn if cn or cv is None else b.const(cv, cv.dtype, "b"))
        else:
            bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
            unit = Unit(n, n.input[0], n.output[0], "conv", w_name, bias)
        _record(b, unit, units, nonneg, consumers, graph_outputs)
    return units


RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
LAYOUT_OPS = RESHAPES | {"Transpose"}  # ops that move elements without changing them


def _reduces_into_output(n, consumers, graph_outputs) -> bool:
    """A ReduceSum or ReduceMean whose result is the explained output, through reshapes alone: the model's last
    step sums or averages a map (a depth model's mean depth, a regression's total). A linear map of x, so a pool
    unit: R_i = x_i R / y (z rule), what seeding the map itself with its share of the output gives. Under the
    gradient each x_i would get R (a sum: n times the output in all) or R / n, whatever it contributed."""
    if n.op_type not in ("ReduceSum", "ReduceMean"):
        return False
    t = n.output[0]
    while t not in graph_outputs:
        after = consumers.get(t, [])
        if len(after) != 1 or after[0].op_type not in RESHAPES:
            return False
        t = after[0].output[0]
    return True


def _record(b, unit, units, nonneg, consumers, graph_outputs, fuse=fuse_followers):
    """Record a unit with its followers fused in: a bias Add and BatchNorm (``fuse_followers``), or for a unit whose
    bias can only be an Add after it (W x, an Einsum) that Add (``fuse_left_bias``)."""
    unit.nonneg = unit.x in nonneg
    fuse(b, unit, consumers, graph_outputs)
    units[unit.node.name] = unit
    for f in unit.followers:
        units[f.name] = unit


def _einsum_unit(n, varies: list[bool]) -> Unit | None:
    """Einsum of x and a weight that does not vary with x (either order): a dense layer. None for a product of
    two activations (AttnLRP's territory) or any other operand count."""
    if len(n.input) != 2 or varies.count(True) != 1 or n.input[0] == n.input[1]:
        return None
    k = varies.index(True)
    return Unit(n, n.input[k], n.output[0], "dense", n.input[1 - k], None)


def _left_unit(b, n) -> Unit | None:
    """MatMul(W, x) / Gemm(W, x[, C]) with a 2-D W: z = W' x + c, W' = alpha W (transposed for transA),
    c = beta C (shaped as given: it broadcasts to z). None (the gradient) for shapes or forms this does not
    cover: x of rank < 2, a batched W, Gemm's transB (x transposed), a scaled W known only at run time."""
    if b.rank(n.input[0]) != 2 or (b.rank(n.input[1]) or 0) < 2:
        return None
    if n.op_type == "MatMul":
        return Unit(n, n.input[1], n.output[0], "dense", n.input[0], None, left=True)
    at = {a.name: (a.f if a.type == a.FLOAT else a.i) for a in n.attribute}
    if at.get("transB", 0):
        return None
    alpha, beta, trans = at.get("alpha", 1.0), at.get("beta", 1.0), at.get("transA", 0)
    w = n.input[0]
    if alpha != 1.0 or trans:
        wv = b.value(w)
        if wv is None:
            return None
        wv = alpha * (wv.T if trans else wv)
        w = b.const(np.ascontiguousarray(wv), wv.dtype, "w")
    c = n.input[2] if len(n.input) > 2 and n.input[2] else None
    if c is not None and beta != 1.0:
        cv = b.value(c)
        if cv is None:
            return None
        c = b.const(beta * cv, cv.dtype, "b")
    return Unit(n, n.input[1], n.output[0], "dense", w, c, left=True)
