"""Quantized ops: the straight-through estimator.

Rounding has a zero derivative almost everywhere, so a quantized model's exact gradient is zero. Its
backward is taken, as quantization-aware training takes it (PyTorch's fake_quantize), by passing the
gradient through the rounding: the integer codes a quantizer writes carry gradient as if they were
continuous (``STRAIGHT_THROUGH``, read by the reverse pass), and each op differentiates its own affine part:

    DequantizeLinear      y = (q - zp) * s:                   dq = g * s
    QuantizeLinear        q = clip(round(x / s) + zp, lo, hi): dx = g / s where lo <= round(x / s) + zp <= hi, else 0
    DynamicQuantizeLinear q = round(x / s) + zp, s and zp from x's range (never clipped): dx = g / s
    MatMulInteger         y = (a - a_zp) @ (b - b_zp):        MatMul's backward on those float operands
    ConvInteger           y = Conv(x - x_zp, w - w_zp):        Conv's backward on those float operands

A Q -> DQ pair with one scale so passes g where x was inside the quantization range and stops it where the
code saturated. The scale and zero point DynamicQuantizeLinear computes from x are held constant (its outputs 1
and 2 carry no gradient: ``HELD_CONSTANT``). ``s`` and ``zp`` are a scalar, or one value per slice along ``axis``;
blocked quantization (``block_size``) and float8 codes are refused by name.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnxattr.emitters.conv import conv_vjp
from onnxattr.emitters.linear import matmul_vjp
from onnxattr.emitters.registry import known_rank, node_attr, register
from onnxattr.errors import UnsupportedModelError
from onnxattr.graph import CODE_MOVERS, along_axis

# ops whose first output is an integer code that carries gradient straight through (the reverse pass reads this)
STRAIGHT_THROUGH = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger"})
# outputs that carry no gradient though they are float and computed from the input: {op: output indices}
HELD_CONSTANT = {"DynamicQuantizeLinear": frozenset({1, 2})}
# ops that may read codes on the explained path: their backward is the same for codes as for floats (data
# movement), or gives a code its float gradient (DequantizeLinear, Cast, the integer products); codes pass
# through the movers
CODE_READERS = CODE_MOVERS | {"DequantizeLinear", "Cast", "MatMulInteger", "ConvInteger"}
# onnxruntime's QOperator format: integer kernels whose float computation the graph does not write (canonicalize
# writes those of qoperator.QOPERATOR_AS_FLOAT as float ops; a node left reading codes is refused naming the format)
QOPERATOR_OPS = frozenset({"QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat",
                           "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearLeakyRelu", "QLinearSigmoid",
                           "QLinearSoftmax", "QLinearReduceMean", "QLinearWhere", "QAttention",
                           "QEmbedLayerNormalization", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
                           "QOrderedMatMul", "DynamicQuantizeLSTM"})

# the integer code types and their ranges
CODE_RANGES = {
    TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127),
    TensorProto.UINT16: (0, 65535), TensorProto.INT16: (-32768, 32767),
    TensorProto.UINT4: (0, 15), TensorProto.INT4: (-8, 7),
    TensorProto.INT32: (-2 ** 31, 2 ** 31 - 1),
}


def _refuse_blocked(node) -> None:
    if node_attr(node, "block_size", 0):
        raise UnsupportedModelError(
            f"{node.op_type} node '{node.name}': blocked quantization (block_size="
            f"{node_attr(node, 'block_size')}) has no backward here; per-tensor and per-axis scales are supported")


def _axis(b, node, data: str) -> int:
    """The node's ``axis`` (default 1) as a non-negative axis of ``data``."""
    rank = known_rank(b, node, data)
    axis = node_attr(node, "axis", 1)
    return axis + rank if axis < 0 else axis


def _along_axis(b, node, param: str, data: str, ftype: int, axis: int | None = None) -> str:
    """``param`` (a scalar or one value per slice of ``data`` along ``axis``, by default the node's) in float type
    ``ftype``, shaped to broadcast against ``data``."""
    shape = b.shape(param)
    out = param if b.types.get(param) == ftype else b.op("Cast", [param], to=ftype)
    if shape is not None and len(shape) == 0:
        return out
    rank = known_rank(b, node, data)
    axis = _axis(b, node, data) if axis is None else axis
    if rank <= 1 or axis == rank - 1 or shape == [1]:
        return out
    return b.op("Unsqueeze", [out, b.ints(list(range(1, rank - axis)))])


def _code_type(b, node) -> int:
    """The element type of a QuantizeLinear's codes: its zero point's, its output_dtype, else uint8."""
    if len(node.input) > 2 and node.input[2] and node.input[2] in b.types:
        return b.types[node.input[2]]
    return node_attr(node, "output_dtype", 0) or b.types.get(node.output[0], TensorProto.UINT8)


def _scale_key(b, node, data: str):
    """(the scale: its value where constant, else its name; the axis, or None for a scalar scale): what makes two
    nodes' scaling the same."""
    value = b.value(node.input[1])
    scale = node.input[1] if value is None else (np.asarray(value).dtype.str, np.shape(value),
                                                 np.asarray(value).tobytes())
    shape = b.shape(node.input[1])
    if shape is not None and (len(shape) == 0 or shape == [1]):
        return scale, None
    return scale, _axis(b, node, data)


@register("DequantizeLinear")
def dequantize_linear_vjp(b, node, grads, need):
    """y = (q - zp) * s: dq = g * s (q's gradient, in g's float type); no gradient to s or zp."""
    _refuse_blocked(node)
    q, scale, g = node.input[0], node.input[1], grads[0]
    if not need[0]:
        return [None] * len(node.input)
    out = b.op("Mul", [g, _along_axis(b, node, scale, q, b.float_type(g))])
    b.cache[("dequantized", out)] = (g, _scale_key(b, node, q))  # its quantizer may divide by s again: see below
    return [out] + [None] * (len(node.input) - 1)


@register("QuantizeLinear")
def quantize_linear_vjp(b, node, grads, need):
    """q = clip(round(x / s) + zp, lo, hi): dx = g / s where round(x / s) + zp lies in [lo, hi], else 0."""
    if not need[0]:
        return [None] * len(node.input)
    return [_quantize_backward(b, node, grads[0])] + [None] * (len(node.input) - 1)


def _quantize_backward(b, node, g: str, lower: str = "range") -> str:
    """g / s where round(x / s) + zp lies in [lo, hi], else 0; ``lower`` "above_zero_point": in [zp + 1, hi] (the
    codes a rectifier lets through), "none": at most hi (its top clipped, the bottom let through). Where g is the
    gradient the DequantizeLinear of these codes made with the same scale, g0 * s, g / s is g0 with no op. With a
    constant zero point the range is two thresholds on x / s (``_thresholds``), else round(x / s) + zp is compared."""
    _refuse_blocked(node)
    x, scale = node.input[0], node.input[1]
    code = _code_type(b, node)
    if code not in CODE_RANGES:
        raise UnsupportedModelError(
            f"QuantizeLinear node '{node.name}': codes of type {TensorProto.DataType.Name(code)} have no backward "
            f"here; integer codes ({', '.join(TensorProto.DataType.Name(t) for t in CODE_RANGES)}) are supported")
    lo, hi = CODE_RANGES[code]
    lo = None if lower == "none" else lo + 1 if lower == "above_zero_point" else lo  # a rectifier's zp is lo
    ftype, dtype = b.float_type(x), b.float_dtype(x)
    scale = _along_axis(b, node, scale, x, ftype)
    base, key = b.cache.get(("dequantized", g), (None, None))
    if base is not None and key == _scale_key(b, node, x):
        step = base if b.types.get(base) == ftype else b.op("Cast", [base], to=ftype)
    else:
        step = b.op("Div", [g if b.types.get(g) == ftype else b.op("Cast", [g], to=ftype), scale])
    bounds = _thresholds(b, node, x, lo, hi, dtype)
    on_x = None if bounds is None else _thresholds_on_x(b, node, x, bounds, dtype)
    if on_x is not None and on_x[0] is not None and np.ndim(on_x[0]) == np.ndim(on_x[1]) == 0:
        kept = b.op("Clip", [x, b.const(on_x[0], dtype, "lo"), b.const(on_x[1], dtype, "hi")])
        inside = b.op("Equal", [kept, x])  # x itself where it lies in [x_lo, x_hi]
    elif bounds is not None:
        below, above = bounds if on_x is None else on_x
        compared = b.op("Div", [x, scale]) if on_x is None else x
        inside = b.op("LessOrEqual", [compared, b.const(above, dtype, "hi")])
        if below is not None:
            inside = b.op("And", [b.op("GreaterOrEqual", [compared, b.const(below, dtype, "lo")]), inside])
    else:
        level = b.op("Round", [b.op("Div", [x, scale])])
        if len(node.input) > 2 and node.input[2]:
            level = b.op("Add", [level, _along_axis(b, node, node.input[2], x, ftype)])
        inside = b.op("LessOrEqual", [level, b.const(np.asarray(hi, dtype), dtype, "hi")])
        if lo is not None:
            inside = b.op("And", [b.op("GreaterOrEqual", [level, b.const(np.asarray(lo, dtype), dtype, "lo")]),
                                  inside])
    return b.op("Mul", [step, b.op("Cast", [inside], to=ftype)])  # (Where is five times slower on CPU)


def _against(b, node, x: str, values: np.ndarray) -> np.ndarray:
    """A constant scale or zero point (one value, or one per slice along the node's axis) shaped to broadcast
    against x."""
    if values.ndim == 1 and values.size > 1:
        return along_axis(values, known_rank(b, node, x), _axis(b, node, x))
    return values.reshape(()) if values.ndim else values


def _thresholds(b, node, x: str, lo, hi: int, dtype):
    """(t_lo or None, t_hi) with lo <= round(r) + zp <= hi exactly where t_lo <= r <= t_hi, for a constant zero
    point: round(r) >= k where r >= k - 0.5, the tie included when round half to even takes it to k (k even) and
    excluded by the next float up otherwise; likewise r <= m + 0.5 at the top. None when the zero point is computed,
    or a threshold is not a number of x's float type."""
    zp = b.value(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.int64)
    if zp is None:
        return None
    zp = _against(b, node, x, np.asarray(zp).astype(np.float64))

    def edge(k, toward):
        t = k + (0.5 if toward < 0 else -0.5)
        exact = np.asarray(t, dtype).astype(np.float64)
        if not np.array_equal(exact, t):
            return None
        moved = np.nextafter(np.asarray(t, dtype), np.asarray(toward, dtype))
        return np.where(np.mod(k, 2) == 0, np.asarray(t, dtype), moved).astype(dtype)

    above = edge(hi - zp, -np.inf)
    below = edge(lo - zp, np.inf) if lo is not None else None
    if above is None or (lo is not None and below is None):
        return None
    return below, above


def _thresholds_on_x(b, node, x: str, bounds, dtype):
    """(x_lo or None, x_hi): ``bounds`` (on r = x / s) moved onto x itself, so that no division runs. For a constant
    positive scale, r = x / s rounded to float32 rises with x, so {x : r <= t} is {x <= x_hi}, x_hi the largest float32
    whose quotient, divided as IEEE divides (correctly rounded, as numpy and onnxruntime's Div do), is at most t;
    likewise x_lo. None for another float type, a computed or non-positive scale, or a search that does not settle."""
    scale = b.value(node.input[1])
    if np.dtype(dtype) != np.float32 or scale is None:
        return None
    scale = _against(b, node, x, np.asarray(scale, np.float32))
    if not (np.all(scale > 0) and np.all(np.isfinite(scale))):
        return None
    below, above = bounds
    x_hi = _last_inside(above, scale, np.float32(np.inf))
    x_lo = None if below is None else _last_inside(below, scale, np.float32(-np.inf))
    if x_hi is None or (below is not None and x_lo is None):
        return None
    return x_lo, x_hi


def _last_inside(bound, scale: np.ndarray, outward: np.float32):
    """The float32 x farthest toward ``outward`` (+inf: x / s <= bound; -inf: x / s >= bound), elementwise."""
    bound = np.asarray(bound, np.float32)
    inside = (lambda v: v / scale <= bound) if outward > 0 else (lambda v: v / scale >= bound)
    x = (bound.astype(np.float64) * scale.astype(np.float64)).astype(np.float32)
    for _ in range(32):  # the product lies within an ulp or two of the answer
        beyond = np.nextafter(x, outward)
        grow, shrink = inside(x) & inside(beyond), ~inside(x)
        if not (grow.any() or shrink.any()):
            return x if np.all(np.isfinite(x)) else None
        x = np.where(grow, beyond, np.where(shrink, np.nextafter(x, -outward), x)).astype(np.float32)
    return None


def from_lowest_code(b, node) -> bool:
    """A QuantizeLinear or DequantizeLinear whose zero point (0 where absent) is its codes' lowest value, uint8's 0
    the default: the codes' dequantized values are >= 0 for a positive scale."""
    if node.domain not in ("", "ai.onnx") or node_attr(node, "block_size", 0):
        return False
    code = _code_type(b, node) if node.op_type == "QuantizeLinear" else b.types.get(node.input[0])
    if code not in CODE_RANGES:
        return False
    zp = b.value(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
    return zp is not None and bool(np.all(np.asarray(zp).astype(np.int64) == CODE_RANGES[code][0]))


def rectifies(b, node) -> bool:
    """A QuantizeLinear from its codes' lowest value (from_lowest_code): a ReLU (capped at the range's top), as
    onnxruntime's quantizer writes a layer's ReLU into it."""
    return node.op_type == "QuantizeLinear" and from_lowest_code(b, node)


def rectifier_vjp(b, node, grads, need, kind: str):
    """Guided backprop's (``kind`` "guided") and DeconvNet's ("deconv") step at a rectifying QuantizeLinear:
    relu(g) / s where the code is above the zero point (guided; DeconvNet ignores that forward mask) and not clipped
    at the top, the straight-through estimator's own mask there."""
    positive = b.op("Relu", [grads[0]])
    out = _quantize_backward(b, node, positive, "above_zero_point" if kind == "guided" else "none")
    return [out] + [None] * (len(node.input) - 1)


@register("DynamicQuantizeLinear")
def dynamic_quantize_linear_vjp(b, node, grads, need):
    """q = round(x / s) + zp with s, zp from x's range (held constant): dx = g / s (nothing is clipped)."""
    g, scale = grads[0], node.output[1]
    if g is None or not need[0]:
        return [None]
    ftype = b.float_type(node.input[0])
    if b.types.get(g) != ftype:
        g = b.op("Cast", [g], to=ftype)
    if b.types.get(scale, TensorProto.FLOAT) != ftype:
        scale = b.op("Cast", [scale], to=ftype)
    return [b.op("Div", [g, scale])]


def _float_operand(b, node, k: int, ftype: int, zp_axis: int | None = None) -> str:
    """The integer product ``node``'s operand k (codes, zero point k + 2) as codes - zp in float type ``ftype``: a
    constant where both are, else computed at run time. ``zp_axis``: the axis a 1-D zero point runs along
    (MatMulInteger's a_zero_point is one per row, ConvInteger's w_zero_point one per output channel); None where it
    broadcasts as written (b_zero_point, one per column)."""
    codes = node.input[k]
    zp = node.input[k + 2] if len(node.input) > k + 2 and node.input[k + 2] else None
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ftype))
    values, point = b.value(codes), (b.value(zp) if zp else np.zeros((), np.int8))
    if values is not None and point is not None:
        point = np.asarray(point).astype(dtype)
        if zp_axis is not None and point.ndim == 1:
            point = along_axis(point, np.ndim(values), zp_axis)
        return b.const(np.asarray(values).astype(dtype) - point, dtype, "dequantized")
    out = b.op("Cast", [codes], to=ftype)
    if zp:
        zshape, rank = b.shape(zp), b.rank(codes)
        if zp_axis is not None and zshape is not None and len(zshape) == 1 and rank is not None:
            shift = _along_axis(b, node, zp, codes, ftype, axis=zp_axis)
        else:
            shift = b.op("Cast", [zp], to=ftype)
        out = b.op("Sub", [out, shift])
    b.set_info(out, codes)
    return out


@register("MatMulInteger")
def matmul_integer_vjp(b, node, grads, need):
    """y = (a - a_zp) @ (b - b_zp), int32: MatMul's backward on the float operands (the codes' gradients)."""
    ftype = b.float_type(grads[0])
    rank_a = b.rank(node.input[0])
    fa = _float_operand(b, node, 0, ftype, zp_axis=(rank_a - 2) if rank_a else None) if need[1] else node.input[0]
    fw = _float_operand(b, node, 1, ftype) if need[0] else node.input[1]
    out = matmul_vjp(b, float_view("MatMul", [fa, fw], node), grads, need[:2])
    return out + [None] * (len(node.input) - 2)


@register("ConvInteger")
def conv_integer_vjp(b, node, grads, need):
    """y = Conv(x - x_zp, w - w_zp), int32: Conv's backward on the float operands (the codes' gradients)."""
    ftype = b.float_type(grads[0])
    fx = _float_operand(b, node, 0, ftype) if len(need) > 1 and need[1] else node.input[0]
    fw = _float_operand(b, node, 1, ftype, zp_axis=0)
    out = conv_vjp(b, float_view("Conv", [fx, fw], node), grads, need[:2])
    return out + [None] * (len(node.input) - 2)


def float_view(op_type: str, inputs: list[str], like):
    """A float op standing for integer node ``like`` (same name, attributes and output) for the emitter that
    differentiates it; it is never added to the graph."""
    view = helper.make_node(op_type, inputs, list(like.output), name=like.name)
    view.attribute.extend(like.attribute)
    return view
