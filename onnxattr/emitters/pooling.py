"""Pooling: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, LpPool, GlobalLpPool, MaxUnpool.

MaxPool VJP: windows that tile x (kernel = strides, no pads) find the first maximum of each window by
ArgMax over a SpaceToDepth block axis and write g there with one ScatterElements. Otherwise the node is
asked for its Indices output (flat over N*C*spatial, first max wins on ties; under storage_order=1, whose
Indices count column-major, a row-major twin of the node gives them), and g is scattered with
ScatterElements(reduction="add") into a flat zero tensor (MaxUnpool is wrong for overlapping windows).
AveragePool VJP: y = S(x) / D with S the window sum and D the per-position divisor, so
dx = S^T(g / D): a depthwise ConvTranspose with a ones kernel, cropped like Conv's VJP. D is computed at
compile time from the geometry (count_include_pad, ceil_mode overhang excluded); without static spatial
dims it is the kernel's size where every window lies inside x or its pads, else counted at run time by a
sum-pool of ones.
LpPool VJP: y = S(|x|^p)^(1/p), so dx = sign(x) |x|^(p-1) S^T(g y^(1-p)) (0 where y = 0), S^T as above and, for
GlobalLpPool, a broadcast.
MaxUnpool VJP: y is zero but for y.flat[I] = x (I: flat indices into y, as MaxPool's Indices give them), so
dx = g.flat[I], one Gather.
"""

import numpy as np
from onnx import TensorProto, helper

from onnxattr.emitters.conv import (channel_scale, conv_attrs, end_pads, spatial_at_run_time, transpose_and_crop,
                                    window_geometry)
from onnxattr.emitters.registry import node_attr, register
from onnxattr.errors import UnsupportedModelError


def scatter_add(b, data, indices, updates, op_type="ScatterElements", **attrs):
    """``op_type`` (ScatterElements or ScatterND) with reduction add; float16 operands are added in float32 and the
    sum cast back (onnxruntime's CPU provider has no float16 kernel with reduction add)."""
    if b.types.get(data) != TensorProto.FLOAT16 and b.types.get(updates) != TensorProto.FLOAT16:
        return b.op(op_type, [data, indices, updates], reduction="add", **attrs)
    wide = [b.op("Cast", [t], to=TensorProto.FLOAT) for t in (data, updates)]
    return b.op("Cast", [b.op(op_type, [wide[0], indices, wide[1]], reduction="add", **attrs)],
                to=TensorProto.FLOAT16)


def scatter_add_flat(b, x, flat_index, g):
    """A tensor of x's shape holding g added at the flat positions ``flat_index`` (scatter_add)."""
    flat_g = b.op("Reshape", [g, b.ints([-1])])
    idx = b.op("Reshape", [flat_index, b.ints([-1])])
    size = b.op("Reshape", [b.op("Size", [x]), b.ints([1])])
    zeros = b.op("ConstantOfShape", [size], value=b.fill_value(0.0, x))
    scattered = scatter_add(b, zeros, idx, flat_g, axis=0)
    out = b.op("Reshape", [scattered, b.shape_of(x)])
    b.set_info(out, x)
    return out


def _tiled_maxpool_vjp(b, node, g):
    """MaxPool with kernel = strides over 2-D windows that tile x exactly (VGG's 2x2/2): the windows
    become a block axis by SpaceToDepth, ArgMax finds the first maximum of each (row-major scan, as
    MaxPool's indices do on ties), and g is written there: position = base(window) + offset(argmax)
    within each (n, c) plane, one ScatterElements along the flattened spatial axis (windows do not
    overlap, so no position is written twice). No Indices output is asked of the forward MaxPool
    (onnxruntime's kernel with indices is many times slower). None when the geometry does not fit."""
    at = conv_attrs(node)
    x = node.input[0]
    xs = b.shape(x)
    kernel = at.get("kernel_shape") or []
    if len(kernel) != 2 or xs is None or len(xs) != 4 or not all(isinstance(d, int) for d in xs[1:]):
        return None
    k = kernel[0]
    strides, pads = at.get("strides") or [1, 1], at.get("pads") or [0]
    if kernel[1] != k or strides != [k, k] or any(pads) or any(d != 1 for d in at.get("dilations") or [1]) \
            or xs[2] % k or xs[3] % k:  # then every auto_pad (SAME_* included) pads nothing
        return None
    c, w, ho, wo = xs[1], xs[3], xs[2] // k, xs[3] // k
    blocks = b.op("Reshape", [b.op("SpaceToDepth", [x], blocksize=k), b.ints([0, k * k, c, ho, wo])])
    first = b.op("ArgMax", [blocks], axis=1, keepdims=0)  # [N, C, ho, wo], block q = (row q // k, col q % k)
    q = np.arange(k * k, dtype=np.int64)
    offset = b.const((q // k) * w + q % k, np.int64, "window_offset")
    base = b.const((k * w * np.arange(ho, dtype=np.int64)[:, None] + k * np.arange(wo, dtype=np.int64)).reshape(1, 1, -1),
                   np.int64, "window_base")
    windows = b.ints([0, c, ho * wo])  # static sizes, not -1: a batch of 0 samples must reshape too
    target = b.op("Add", [b.op("Reshape", [b.op("Gather", [offset, first]), windows]), base])
    flat_x = b.op("Reshape", [x, b.ints([0, c, xs[2] * w])])
    zeros = b.op("ConstantOfShape", [b.op("Shape", [flat_x])], value=b.fill_value(0.0, x))
    placed = b.op("ScatterElements", [zeros, target, b.op("Reshape", [g, windows])], axis=2)
    out = b.op("Reshape", [placed, b.shape_of(x)])
    b.set_info(out, x)
    return out


@register("MaxPool")
def maxpool_vjp(b, node, grads, need):
    tiled = _tiled_maxpool_vjp(b, node, grads[0])  # windows tile x: ceil_mode changes nothing
    if tiled is not None:
        return [tiled]
    if node_attr(node, "storage_order", 0):  # column-major Indices, which the model may read: a row-major twin
        twin = helper.make_node("MaxPool", [node.input[0]], [b.fresh("maxpool"), b.fresh("maxpool_indices")],
                                name=b.fresh("MaxPool"))
        twin.attribute.extend(a for a in node.attribute if a.name != "storage_order")
        b.nodes.append(twin)
        return [scatter_add_flat(b, node.input[0], twin.output[1], grads[0])]
    if len(node.output) < 2 or not node.output[1]:
        if len(node.output) < 2:
            node.output.append(b.fresh("maxpool_indices"))
        else:
            node.output[1] = b.fresh("maxpool_indices")
    return [scatter_add_flat(b, node.input[0], node.output[1], grads[0])]


def _divisor(b, node, x, kernel, strides, dil, begin):
    """Per-output-position divisor D of AveragePool, or None if it cannot be known."""
    at = {a.name: a.i for a in node.attribute if a.name in ("ceil_mode", "count_include_pad")}
    nsp = len(kernel)
    if isinstance(begin, str):  # strided SAME pads found at run time
        return None
    end = end_pads(b, node, x, kernel, strides, dil)
    xs, ys = b.shape(x), b.shape(node.output[0])
    if xs is None or ys is None or not all(isinstance(d, int) for d in xs[2:] + ys[2:]):
        if not at.get("ceil_mode", 0) and (at.get("count_include_pad", 0) or not any(begin) and not any(end)):
            return float(np.prod(kernel))  # every window's taps all inside x or its pads
        return None
    include_pad = at.get("count_include_pad", 0)
    counts = []
    for i in range(nsp):
        L, Lo = xs[2 + i], ys[2 + i]
        lo, hi = (-begin[i], L + end[i]) if include_pad else (0, L)
        c = np.zeros(Lo)
        for o in range(Lo):
            p = o * strides[i] - begin[i] + np.arange(kernel[i]) * dil[i]
            c[o] = np.count_nonzero((p >= lo) & (p < hi))
        counts.append(c)
    d = counts[0]
    for c in counts[1:]:
        d = np.multiply.outer(d, c)
    return d


def _inverse_divisor_at_run_time(b, node, x, kernel, strides, dil, begin) -> str:
    """1 / D [1, 1, *output spatial] for spatial dims known only at run time: the taps inside x counted by a
    sum-pool of ones with the node's geometry (a Conv with a ones kernel; with ceil_mode an LpPool of p = 1,
    opset 18), and with count_include_pad those inside the pads too, D = inside / AveragePool(ones). Counted in
    float32 (small integers, exact) and cast to x's type; 0 for a window with no tap inside x (it adds to no
    x)."""
    at = {a.name: a.i for a in node.attribute if a.name in ("ceil_mode", "count_include_pad")}
    if at.get("ceil_mode", 0) and b.opset < 18:
        raise UnsupportedModelError(f"AveragePool node '{node.name}': ceil_mode with dynamic spatial dims needs "
                                    "opset 18 (LpPool's ceil_mode counts the windows' taps); export at opset 18 or "
                                    "newer, or with a fixed input size")
    nsp = len(kernel)
    if isinstance(begin, str):  # strided SAME: the pads depend on the sizes, so the counting pools pad as SAME too
        geometry = {"strides": strides, "auto_pad": conv_attrs(node)["auto_pad"], "kernel_shape": kernel}
    else:
        geometry = {"strides": strides, "pads": list(begin) + list(end_pads(b, node, x, kernel, strides, dil)),
                    "kernel_shape": kernel}
    if any(d != 1 for d in dil):
        geometry["dilations"] = dil
    ones = b.op("ConstantOfShape", [b.op("Concat", [b.ints([1, 1]), spatial_at_run_time(b, x, nsp)], axis=0)],
                value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]))
    if at.get("ceil_mode", 0):
        inside = b.op("LpPool", [ones], p=1, ceil_mode=1, **geometry)
    else:
        inside = b.op("Conv", [ones, b.const(np.ones([1, 1] + list(kernel)), np.float32, "ones_kernel")], **geometry)
    inverse = b.op("Reciprocal", [b.op("Max", [inside, b.scalar(1.0)])])
    if at.get("count_include_pad", 0):  # AveragePool(ones) = inside / D
        inverse = b.op("Mul", [inverse, b.op("AveragePool", [ones], count_include_pad=1,
                                             ceil_mode=at.get("ceil_mode", 0), **geometry)])
    return inverse if b.float_type(x) == TensorProto.FLOAT else b.op("Cast", [inverse], to=b.float_type(x))


@register("AveragePool")
def avgpool_vjp(b, node, grads, need):
    x, g = node.input[0], grads[0]
    kernel = conv_attrs(node)["kernel_shape"]
    strides, dil, begin = window_geometry(b, node, x, kernel, at_run_time=True)
    d = _divisor(b, node, x, kernel, strides, dil, begin)
    if d is None:
        scaled = b.op("Mul", [g, _inverse_divisor_at_run_time(b, node, x, kernel, strides, dil, begin)])
    elif np.isscalar(d):
        scaled = b.op("Mul", [g, b.scalar(1.0 / d, x)])
    else:
        inv = np.where(d > 0, 1.0 / np.maximum(d, 1), 0.0)
        scaled = b.op("Mul", [g, b.const(inv, b.float_dtype(x))])
    return [_window_sum_transpose(b, node, scaled, kernel, strides, dil, begin)]


def _window_sum_transpose(b, node, t, kernel, strides, dil, begin):
    """S^T(t) for the window sum S of a pooling node: a depthwise ConvTranspose with a ones kernel, cropped to x."""
    x = node.input[0]
    xs = b.shape(x)
    channels = xs[1] if xs else None
    if not isinstance(channels, int):
        raise UnsupportedModelError(f"{node.op_type} node '{node.name}': the channel count must be static")
    kernel = reaching_kernel(kernel, xs[2:], dil, begin)
    ones = b.const(np.ones([channels, 1] + list(kernel)), b.float_dtype(x), hint="ones_kernel")
    return transpose_and_crop(b, t, ones, x, node.output[0], channels, kernel, strides, dil, begin)


def reaching_kernel(kernel, lengths, dil, begin):
    """The kernel cut to the taps that can land inside x: tap j of the window at output o reads position
    o s - begin + j d, inside x only while j d <= L - 1 + begin. The taps cut read only padding, whatever the
    window, so the window sums are the same; a window far larger than x (HF EfficientNet's AvgPool2d(1280,
    ceil_mode=True) over a 2 x 2 map) then costs a 2 x 2 kernel, not a 1280 x 1280 one."""
    if isinstance(begin, str):  # pads found at run time, over sizes known only then
        return list(kernel)
    return [min(k, (L - 1 + p) // d + 1) if isinstance(L, int) else k
            for k, L, d, p in zip(kernel, lengths, dil, begin)]


@register("GlobalAveragePool")
def global_avgpool_vjp(b, node, grads, need):
    """dx = expand(g) / (number of spatial positions); with a static map, expand(g) * (1 / positions) as
    conv.channel_scale where it applies (within one rounding of the quotient), which puts the backward
    pass into onnxruntime's blocked layout at its start."""
    x, y = node.input[0], node.output[0]
    shape = b.shape(x)
    if shape is not None and all(isinstance(d, int) for d in shape[2:]):
        # broadcast to [1, 1, *spatial]: no Shape of x (a Shape of a blocked tensor costs a reorder)
        positions = float(np.prod(shape[2:]))
        expanded = b.op("Expand", [grads[0], b.ints([1, 1] + list(shape[2:]))])
        b.set_info(expanded, x)
        scaled = channel_scale(b, expanded, 1.0 / positions)
        if scaled is not None:
            return [scaled]
        count = b.scalar(positions, x)
    else:
        expanded = b.op("Expand", [grads[0], b.op("Shape", [x])])
        count = b.op("Div", [b.op("Cast", [b.op("Size", [x])], to=b.float_type(x)),
                             b.op("Cast", [b.op("Size", [y])], to=b.float_type(x))])
    return [b.op("Div", [expanded, count])]


@register("GlobalMaxPool")
def global_maxpool_vjp(b, node, grads, need):
    """The gradient goes to the first maximum of each (n, c) plane."""
    x = node.input[0]
    flat = b.op("Reshape", [x, b.ints([0, 0, -1])])
    idx = b.op("ArgMax", [flat], axis=2, keepdims=1)
    zeros = b.op("ConstantOfShape", [b.op("Shape", [flat])], value=b.fill_value(0.0, x))
    g = b.op("Reshape", [grads[0], b.ints([0, 0, 1])])
    scattered = b.op("ScatterElements", [zeros, idx, g], axis=2)
    return [b.op("Reshape", [scattered, b.shape_of(x)])]


@register("LpPool", "GlobalLpPool")
def lp_pool_vjp(b, node, grads, need):
    x, y, g = node.input[0], node.output[0], grads[0]
    p = node_attr(node, "p", 2)
    zero = b.scalar(0.0, x)
    scale = b.op("Where", [b.op("Greater", [y, zero]), b.op("Pow", [y, b.scalar(1.0 - p, x)]), zero])
    back = b.op("Mul", [g, scale])
    if node.op_type == "LpPool":
        kernel = conv_attrs(node)["kernel_shape"]
        back = _window_sum_transpose(b, node, back, kernel, *window_geometry(b, node, x, kernel, at_run_time=True))
    if p == 1:
        local = b.op("Sign", [x])
    elif p == 2:
        local = x
    else:
        local = b.op("Mul", [b.op("Sign", [x]), b.op("Pow", [b.op("Abs", [x]), b.scalar(float(p - 1), x)])])
    return [b.op("Mul", [back, local])]


@register("MaxUnpool")
def max_unpool_vjp(b, node, grads, need):
    """dx = g.flat[I]: each input element's gradient is read where it was written."""
    flat = b.op("Reshape", [grads[0], b.ints([-1])])
    return [b.op("Gather", [flat, node.input[1]], axis=0)] + [None] * (len(node.input) - 1)
