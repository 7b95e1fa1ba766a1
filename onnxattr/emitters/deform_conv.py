"""DeformConv (rank 4): a convolution whose taps sample x at learned offsets (torchvision's deform_conv2d).

Tap k = (i, j) of output point (oh, ow) in offset group a reads x at py = oh s_h - pad_top + i d_h + offset_y and
px = ow s_w - pad_left + j d_w + offset_x (offset[n, a, i, j, (y, x), oh, ow]) by bilinear interpolation, a corner
outside x counting 0, times mask[n, a, i, j, oh, ow] (1 when absent); y = W * cols + B, a 1 x 1 convolution of
those columns cols[n, c, k, oh, ow]. Backward, with cg = W^T g (one MatMul per group, batched):
dx = cg * mask * w_corner scattered to the four corners; d offset_y = sum over the group's channels of
cg * mask * sum_b wx_b (x[y1, x_b] - x[y0, x_b]) (offset_x likewise); d mask = sum over its channels of cg * cols;
dW = g cols^T summed over the batch; dB = g summed over the batch and positions. ``deform_conv_input_vjp`` gives dx
for another weight (LRP's W+ and W^2 on the columns, lrp/units.py).
"""

import numpy as np

from onnxattr.emitters.pooling import scatter_add
from onnxattr.emitters.registry import node_attr, register
from onnxattr.errors import UnsupportedModelError


class _Axis:
    """One axis of the sample points [N, G, kh, kw, OH, OW]: its two rows (clipped into x, int64) with their
    bilinear weights, and whether each row lies in x."""

    def __init__(self, b, x, coord, base, taps, size_axis):
        size = b.float_dim(x, size_axis, coord)
        pos = b.op("Add", [b.op("Add", [coord, base]), taps])
        low = b.op("Floor", [pos])
        frac = b.op("Sub", [pos, low])
        high = b.op("Add", [low, b.scalar(1.0, coord)])
        last = b.op("Sub", [size, b.scalar(1.0, coord)])
        self.rows, self.weights, self.inside = [], [b.op("Sub", [b.scalar(1.0, coord), frac]), frac], []
        for row in (low, high):
            self.inside.append(b.op("And", [b.op("GreaterOrEqual", [row, b.scalar(0.0, coord)]),
                                            b.op("LessOrEqual", [row, last])]))
            clipped = b.op("Min", [b.op("Max", [row, b.scalar(0.0, coord)]), last])
            self.rows.append(b.op("Cast", [clipped], to=7))


def _spec(b, node):
    x, w = node.input[:2]
    shape, wshape = b.shape(x), b.shape(w)
    if (shape is None or len(shape) != 4 or not isinstance(shape[1], int) or wshape is None
            or not all(isinstance(d, int) for d in wshape[1:])):
        raise UnsupportedModelError(
            f"DeformConv node '{node.name}': only 2-D DeformConv (x [N, C, H, W] with a known C and a weight "
            "[M, C / group, kH, kW] with known C / group, kH, kW) is supported")
    return shape[1], wshape


@register("DeformConv")
def deform_conv_vjp(b, node, grads, need):
    return _vjp(b, node, grads[0], need, node.input[1])


def deform_conv_input_vjp(b, node, g, w):
    """dx with weight ``w`` in place of the node's (LRP's modified weights); the offsets and mask as they are."""
    return _vjp(b, node, g, [True], w)[0]


def _vjp(b, node, g, need, w):
    inputs = list(node.input) + [""] * (5 - len(node.input))
    x, _, offset, bias, mask = inputs
    need = list(need) + [False] * (5 - len(need))
    channels, (out_channels, group_channels, kh, kw) = _spec(b, node)
    group, offset_group = node_attr(node, "group", 1), node_attr(node, "offset_group", 1)
    strides, dilations = node_attr(node, "strides", [1, 1]), node_attr(node, "dilations", [1, 1])
    pads = node_attr(node, "pads", [0, 0, 0, 0])
    taps, og = kh * kw, offset_group
    ftype = b.float_type(g)
    dtype = b.float_dtype(g)

    def plane(n):  # 0, 1, .., n - 1 as floats
        return b.op("Cast", [b.op("Range", [b.const(0, np.int64), n, b.const(1, np.int64)])], to=ftype)

    shape_off = b.op("Shape", [offset])
    oh, ow = (b.op("Gather", [shape_off, b.const(k, np.int64)]) for k in (2, 3))  # 0-d, for Range
    out_hw = b.op("Slice", [shape_off, b.ints([2]), b.ints([4])])
    # per axis: the offsets [N, G, kh, kw, OH, OW], the output points' base and the taps' steps
    split = b.op("Reshape", [offset, b.ints([0, og, kh, kw, 2, -1])])  # [N, G, kh, kw, 2, L]
    parts = []
    for k, (n_out, stride, pad, dil, n_tap) in enumerate([(oh, strides[0], pads[0], dilations[0], kh),
                                                          (ow, strides[1], pads[1], dilations[1], kw)]):
        base = b.op("Sub", [b.op("Mul", [plane(n_out), b.scalar(float(stride), g)]), b.scalar(float(pad), g)])
        coord = b.op("Reshape", [b.op("Gather", [split, b.const(k, np.int64)], axis=4),
                                 b.op("Concat", [b.ints([0, og, kh, kw]), out_hw], axis=0)])
        tap_shape = [1, 1, kh, 1, 1, 1] if k == 0 else [1, 1, 1, kw, 1, 1]
        tap = b.const((np.arange(n_tap) * dil).reshape(tap_shape), dtype)
        base = b.op("Unsqueeze", [base, b.ints([0, 1, 2, 3, 5] if k == 0 else [0, 1, 2, 3, 4])])
        parts.append((coord, base, tap))
    rows = _Axis(b, x, *parts[0], 2)
    cols_axis = _Axis(b, x, *parts[1], 3)

    def flat(t):  # [N, G, kh, kw, OH, OW] -> [N, G, 1, K * L]
        return b.op("Reshape", [t, b.ints([0, og, 1, -1])])

    shape_x = b.op("Shape", [x])
    width_i = b.op("Gather", [shape_x, b.const(3, np.int64)])
    per_group = channels // og
    xg = b.op("Reshape", [x, b.ints([0, og, per_group, -1])])  # [N, G, Cg, H W]
    corners = []  # (flat index expanded to [N, G, Cg, P], weight [N, G, 1, P], inside 0/1 [N, G, 1, P]); P = K L
    for a in (0, 1):
        for c in (0, 1):
            inside = b.op("Cast", [b.op("And", [rows.inside[a], cols_axis.inside[c]])], to=ftype)
            weight = flat(b.op("Mul", [b.op("Mul", [rows.weights[a], cols_axis.weights[c]]), inside]))
            index = flat(b.op("Add", [b.op("Mul", [rows.rows[a], width_i]), cols_axis.rows[c]]))
            index = b.op("Expand", [index, b.ints([1, 1, per_group, 1])])
            corners.append((index, weight, flat(inside)))
    values = {}

    def value(i):  # x at corner i, 0 outside: [N, G, Cg, P]
        if i not in values:
            values[i] = b.op("Mul", [b.op("GatherElements", [xg, corners[i][0]], axis=3), corners[i][2]])
        return values[i]

    m = b.op("Reshape", [mask, b.ints([0, og, 1, -1])]) if mask else None
    need_cols = need[1] or (mask and need[4])
    cols = None
    if need_cols:
        cols = b.add_all([b.op("Mul", [value(i), corners[i][1]]) for i in range(4)])  # [N, G, Cg, P]
    # cg = W^T g per group: [grp, Cw K, oCg] @ [N, grp, oCg, L] -> [N, grp, Cw K, L] -> [N, G, Cg, P] (a MatMul, which
    # onnxruntime's CPU provider runs in float64 too, unlike ConvTranspose)
    w_value = b.value(w)
    wt = (b.const(w_value.reshape(group, -1, group_channels * taps).transpose(0, 2, 1), w_value.dtype)
          if w_value is not None else
          b.op("Transpose", [b.op("Reshape", [w, b.ints([group, -1, group_channels * taps])])], perm=[0, 2, 1]))
    if isinstance(out_channels, int):
        per_group_out = b.ints([out_channels // group])
    else:
        per_group_out = b.op("Div", [b.op("Slice", [b.op("Shape", [w]), b.ints([0]), b.ints([1])]), b.ints([group])])
    gg = b.op("Reshape", [g, b.op("Concat", [b.ints([0, group]), per_group_out, b.ints([-1])], axis=0)])
    out = [None] * 5  # gg: g as [N, grp, oCg, L], L = OH OW
    if need[0] or need[2] or (mask and need[4]):
        cg = b.op("Reshape", [b.op("MatMul", [wt, gg]), b.ints([0, og, per_group, -1])])
        if mask and need[4]:
            dm = b.op("ReduceSum", [b.op("Mul", [cg, cols]), b.ints([2])], keepdims=1)
            out[4] = b.op("Reshape", [dm, b.op("Shape", [mask])])
        cgm = b.op("Mul", [cg, m]) if m else cg
        if need[0]:
            index = b.op("Concat", [corners[i][0] for i in range(4)], axis=3)
            updates = b.op("Concat", [b.op("Mul", [cgm, corners[i][1]]) for i in range(4)], axis=3)
            summed = scatter_add(b, b.zeros_like(xg), index, updates, axis=3)
            out[0] = b.op("Reshape", [summed, shape_x])
        if need[2]:
            def slope(pairs, weights):  # sum_b w_b (v[1, b] - v[0, b]) over the other axis' two rows
                terms = [b.op("Mul", [b.op("Sub", [value(hi), value(lo)]), flat(wt)]) for (lo, hi), wt in
                         zip(pairs, weights)]
                return b.op("ReduceSum", [b.op("Mul", [cgm, b.op("Add", terms)]), b.ints([2])], keepdims=1)

            d_y = slope([(0, 2), (1, 3)], cols_axis.weights)  # corners: 0 (y0, x0), 1 (y0, x1), 2 (y1, x0), 3 (y1, x1)
            d_x = slope([(0, 1), (2, 3)], rows.weights)
            both = b.op("Concat", [b.op("Reshape", [t, b.ints([0, og, taps, 1, -1])]) for t in (d_y, d_x)], axis=3)
            out[2] = b.op("Reshape", [both, shape_off])
    if need[1]:
        cm = b.op("Mul", [cols, m]) if m else cols
        cm = b.op("Reshape", [cm, b.ints([0, group, group_channels * taps, -1])])  # [N, grp, Cw K, L]
        dw = b.op("MatMul", [gg, b.op("Transpose", [cm], perm=[0, 1, 3, 2])])  # [N, grp, oCg, Cw K]
        dw = b.op("ReduceSum", [dw, b.ints([0])], keepdims=0)
        out[1] = b.op("Reshape", [dw, b.ints([-1, group_channels, kh, kw])])
    if bias and need[3]:
        out[3] = b.op("ReduceSum", [g, b.ints([0, 2, 3])], keepdims=0)
    return out[:len(node.input)]
