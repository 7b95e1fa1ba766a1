"""RoiAlign (avg mode): the pooling of a detector's box head.

Box r (x1, y1, x2, y2 times spatial_scale, minus 0.5 for half_pixel) is cut into output_height x output_width bins
of s_h x s_w sample points each, at start + (p + (i + 0.5) / s) * bin along each axis (p the bin, i the point):
s = sampling_ratio, or for sampling_ratio 0 ceil(bin) per box and axis (a count known at run time; the points run
to the largest box's, those at i >= s of a box count 0). A point beyond [-1, L] along either axis counts 0;
otherwise it is clipped below at 0, and at or past L - 1 it takes row L - 1 alone; else it is the bilinear mix of
rows floor(y) and floor(y) + 1. The output averages a bin's max(s_h s_w, 1) points. So dx is g / (s_h s_w) times the
bilinear weights, added into x[batch_index[r]] at the corners (one ScatterElements over the flattened x). Boxes
get no gradient, as in torchvision's roi_align.
"""

import numpy as np

from onnxattr.emitters.pooling import scatter_add
from onnxattr.emitters.registry import node_attr, register
from onnxattr.errors import UnsupportedModelError


class _Axis:
    """One axis of the sample points: for each box r and point k, its two rows with their weights ([R, K] each),
    whether the point counts (it lies in [-1, L] and, for an adaptive count, is one of its box's), the points per
    bin (``per_bin``: an int, or int64 [1] at run time) and each box's count (None when fixed)."""

    def __init__(self, b, node, rois, size, pooled, samples, col):
        scale = b.scalar(node_attr(node, "spatial_scale", 1.0), rois)
        half_pixel = node_attr(node, "coordinate_transformation_mode", "half_pixel") == "half_pixel"
        offset = b.scalar(0.5 if half_pixel else 0.0, rois)
        ends = [b.op("Sub", [b.op("Mul", [b.op("Gather", [rois, b.const(c, np.int64)], axis=1), scale]), offset])
                for c in (col, col + 2)]  # [R]
        extent = b.op("Sub", [ends[1], ends[0]])
        if not half_pixel:
            extent = b.op("Max", [extent, b.scalar(1.0, rois)])
        step = b.op("Div", [extent, b.scalar(float(pooled), rois)])  # the bin size
        dtype = b.float_dtype(rois)
        self.count, counted = None, None
        if samples > 0:
            self.per_bin = samples
            at = b.const((np.arange(pooled)[:, None] + (np.arange(samples)[None, :] + 0.5) / samples).reshape(1, -1),
                         dtype)
        else:  # ceil(bin) points per bin of each box, laid out to the most any box takes
            self.count = b.op("Neg", [b.op("Floor", [b.op("Neg", [step])])])  # ceil(bin) [R], with ops CUDA has
            # at least 1 (and a ReduceMax over no boxes at all has the 1 to take)
            most = b.op("ReduceMax", [b.op("Concat", [self.count, b.const(np.ones(1, dtype), dtype)], axis=0)],
                        keepdims=1)
            self.per_bin = b.op("Cast", [most], to=7)  # int64 [1]
            # point k of a box's K = pooled S: bin k // S, point k % S (no Reshape: onnxruntime's optimizer
            # rewrites one of [R, pooled, S] into [0, -1], which fails for no boxes)
            flat = b.op("Cast", [b.op("Range", [b.const(0, np.int64),
                                                b.op("Squeeze", [b.op("Mul", [self.per_bin, b.ints([pooled])])]),
                                                b.const(1, np.int64)])], to=b.float_type(rois))  # [K]
            per_bin = b.op("Cast", [self.per_bin], to=b.float_type(rois))
            bin_of = b.op("Floor", [b.op("Div", [flat, per_bin])])
            point = b.op("Sub", [flat, b.op("Mul", [bin_of, per_bin])])  # [K]
            count = b.op("Unsqueeze", [self.count, b.ints([1])])  # [R, 1]
            at = b.op("Add", [bin_of, b.op("Div", [b.op("Add", [point, b.scalar(0.5, rois)]),
                                                   b.op("Max", [count, b.scalar(1.0, rois)])])])  # [R, K]
            counted = b.op("Less", [point, count])
        pos = b.op("Add", [b.op("Unsqueeze", [ends[0], b.ints([1])]),
                           b.op("Mul", [b.op("Unsqueeze", [step, b.ints([1])]), at])])
        last = b.op("Sub", [size, b.scalar(1.0, rois)])
        self.inside = b.op("And", [b.op("GreaterOrEqual", [pos, b.scalar(-1.0, rois)]),
                                   b.op("LessOrEqual", [pos, size])])
        if counted is not None:
            self.inside = b.op("And", [self.inside, counted])
        y = b.op("Max", [pos, b.scalar(0.0, rois)])
        low = b.op("Floor", [y])
        capped = b.op("GreaterOrEqual", [low, last])  # rows L - 1 .. : that row alone
        low = b.op("Where", [capped, last, low])
        frac = b.op("Where", [capped, b.scalar(0.0, rois), b.op("Sub", [y, low])])
        high = b.op("Where", [capped, last, b.op("Add", [low, b.scalar(1.0, rois)])])
        self.rows = [(low, b.op("Sub", [b.scalar(1.0, rois), frac])), (high, frac)]


def _repeated(b, g, channels, height, width, oh, ow):
    """g [R, C, oh, ow] with each bin's value repeated over its points: [R, C, oh s_h, ow s_w]."""
    if isinstance(height.per_bin, int) and isinstance(width.per_bin, int):
        s_h, s_w = height.per_bin, width.per_bin
        g = b.op("Expand", [b.op("Unsqueeze", [g, b.ints([3, 5])]), b.ints([1, 1, 1, s_h, 1, s_w])])
        return b.op("Reshape", [g, b.ints([0, channels, oh * s_h, ow * s_w])])
    s_h, s_w = height.per_bin, width.per_bin
    g = b.op("Expand", [b.op("Unsqueeze", [g, b.ints([3, 5])]),
                        b.op("Concat", [b.ints([1, 1, 1]), s_h, b.ints([1]), s_w], axis=0)])
    rows = b.op("Mul", [s_h, b.ints([oh])])
    cols = b.op("Mul", [s_w, b.ints([ow])])
    return b.op("Reshape", [g, b.op("Concat", [b.ints([0, channels]), rows, cols], axis=0)])


@register("RoiAlign")
def roi_align_vjp(b, node, grads, need):
    x, rois, batch_index = node.input[:3]
    mode, samples = node_attr(node, "mode", "avg"), node_attr(node, "sampling_ratio", 0)
    shape = b.shape(x)
    if mode != "avg":
        raise UnsupportedModelError(f"RoiAlign node '{node.name}': mode '{mode}' is not supported (mode avg is, as "
                                    "torchvision's roi_align)")
    if shape is None or len(shape) != 4 or not isinstance(shape[1], int):
        raise UnsupportedModelError(
            f"RoiAlign node '{node.name}': its input '{x}' must be [N, C, H, W] with a channel count C known when "
            "compiling, and shape inference gives " + ("no shape" if shape is None else
                                                       "[" + ", ".join(map(str, shape)) + "]"))
    oh, ow = node_attr(node, "output_height", 1), node_attr(node, "output_width", 1)
    ftype = b.float_type(rois)
    height = _Axis(b, node, rois, b.float_dim(x, 2, rois), oh, samples, 1)
    width = _Axis(b, node, rois, b.float_dim(x, 3, rois), ow, samples, 0)
    channels = shape[1]
    # each point's share of g: g [R, C, oh, ow] repeated over each bin's points, / the points a bin averages
    g = _repeated(b, grads[0], channels, height, width, oh, ow)
    if samples > 0:
        g = b.op("Mul", [g, b.scalar(1.0 / samples ** 2, grads[0])])
    else:
        count = b.op("Max", [b.op("Mul", [height.count, width.count]), b.scalar(1.0, rois)])  # [R]
        g = b.op("Div", [g, b.op("Unsqueeze", [count, b.ints([1, 2, 3])])])
    inside = b.op("Cast", [b.op("And", [b.op("Unsqueeze", [height.inside, b.ints([2])]),
                                        b.op("Unsqueeze", [width.inside, b.ints([1])])])], to=ftype)  # [R, Kh, Kw]
    # flat position (int64: x may hold more elements than float32 counts exactly) of (batch_index[r], c, 0, 0),
    # (n C + c) H W, plus row * W + column
    shape_x = b.op("Shape", [x])
    height_i, width_i = (b.op("Gather", [shape_x, b.const(k, np.int64)]) for k in (2, 3))
    first = b.op("Mul", [b.op("Cast", [batch_index], to=7), b.const(channels, np.int64)])  # [R]
    base = b.op("Add", [b.op("Unsqueeze", [first, b.ints([1])]), b.const(np.arange(channels).reshape(1, -1), np.int64)])
    base = b.op("Unsqueeze", [b.op("Mul", [base, b.op("Mul", [height_i, width_i])]), b.ints([2, 3])])  # [R, C, 1, 1]
    index, updates = [], []
    for ry, wy in height.rows:
        for rx, wx in width.rows:
            weight = b.op("Mul", [b.op("Mul", [b.op("Unsqueeze", [wy, b.ints([2])]),
                                               b.op("Unsqueeze", [wx, b.ints([1])])]), inside])
            at = b.op("Add", [b.op("Mul", [b.op("Unsqueeze", [b.op("Cast", [ry], to=7), b.ints([2])]), width_i]),
                              b.op("Unsqueeze", [b.op("Cast", [rx], to=7), b.ints([1])])])  # [R, Kh, Kw]
            at = b.op("Add", [base, b.op("Unsqueeze", [at, b.ints([1])])])  # [R, C, Kh, Kw]
            index.append(b.op("Reshape", [at, b.ints([-1])]))
            updates.append(b.op("Reshape", [b.op("Mul", [g, b.op("Unsqueeze", [weight, b.ints([1])])]),
                                            b.ints([-1])]))
    flat = b.op("Reshape", [b.zeros_like(x), b.ints([-1])])
    summed = scatter_add(b, flat, b.op("Concat", index, axis=0), b.op("Concat", updates, axis=0), axis=0)
    return [b.op("Reshape", [summed, b.op("Shape", [x])]), None, None]
