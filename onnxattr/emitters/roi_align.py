"""RoiAlign (avg mode, a fixed sampling_ratio): the pooling of a detector's box head.

Box r (x1, y1, x2, y2 times spatial_scale, minus 0.5 for half_pixel) is cut into output_height x output_width bins
of s x s sample points each, at start + (p + (i + 0.5) / s) * bin along each axis (p the bin, i the point). A point
beyond [-1, L] along either axis counts 0; otherwise it is clipped below at 0, and at or past L - 1 it takes row
L - 1 alone; else it is the bilinear mix of rows floor(y) and floor(y) + 1. The output averages a bin's s^2
points. So dx is g / s^2 times the bilinear weights, added into x[batch_index[r]] at the corners (one
ScatterElements over the flattened x). Boxes get no gradient, as in torchvision's roi_align.
"""

import numpy as np

from onnxattr.emitters.registry import node_attr, register
from onnxattr.errors import UnsupportedModelError


class _Axis:
    """One axis of the sample points: for each box r and point k, its two rows with their weights ([R, K] each)
    and whether the point lies in [-1, L]."""

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
        at = (np.arange(pooled)[:, None] + (np.arange(samples)[None, :] + 0.5) / samples).reshape(1, -1)
        pos = b.op("Add", [b.op("Unsqueeze", [ends[0], b.ints([1])]),
                           b.op("Mul", [b.op("Unsqueeze", [step, b.ints([1])]), b.const(at, b.float_dtype(rois))])])
        last = b.op("Sub", [size, b.scalar(1.0, rois)])
        self.inside = b.op("And", [b.op("GreaterOrEqual", [pos, b.scalar(-1.0, rois)]),
                                   b.op("LessOrEqual", [pos, size])])
        y = b.op("Max", [pos, b.scalar(0.0, rois)])
        low = b.op("Floor", [y])
        capped = b.op("GreaterOrEqual", [low, last])  # rows L - 1 .. : that row alone
        low = b.op("Where", [capped, last, low])
        frac = b.op("Where", [capped, b.scalar(0.0, rois), b.op("Sub", [y, low])])
        high = b.op("Where", [capped, last, b.op("Add", [low, b.scalar(1.0, rois)])])
        self.rows = [(low, b.op("Sub", [b.scalar(1.0, rois), frac])), (high, frac)]


@register("RoiAlign")
def roi_align_vjp(b, node, grads, need):
    x, rois, batch_index = node.input[:3]
    mode, samples = node_attr(node, "mode", "avg"), node_attr(node, "sampling_ratio", 0)
    shape = b.shape(x)
    if mode != "avg" or samples <= 0 or shape is None or len(shape) != 4 or not isinstance(shape[1], int):
        raise UnsupportedModelError(
            f"RoiAlign node '{node.name}': mode '{mode}', sampling_ratio {samples} is not supported (mode avg with a "
            "fixed sampling_ratio > 0, such as the 2 of torchvision's Faster R-CNN, on an input [N, C, H, W] with a "
            "known C; the adaptive count of sampling_ratio 0 varies with each box)")
    oh, ow = node_attr(node, "output_height", 1), node_attr(node, "output_width", 1)
    ftype = b.float_type(rois)
    height = _Axis(b, node, rois, b.float_dim(x, 2, rois), oh, samples, 1)
    width = _Axis(b, node, rois, b.float_dim(x, 3, rois), ow, samples, 0)
    channels = shape[1]
    # each point's share of g: g [R, C, oh, ow] repeated s x s times, / s^2 -> [R, C, oh * s, ow * s]
    g = b.op("Mul", [grads[0], b.scalar(1.0 / samples ** 2, grads[0])])
    g = b.op("Unsqueeze", [g, b.ints([3, 5])])
    g = b.op("Expand", [g, b.ints([1, 1, 1, samples, 1, samples])])
    g = b.op("Reshape", [g, b.ints([0, channels, oh * samples, ow * samples])])
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
    summed = b.op("ScatterElements", [flat, b.op("Concat", index, axis=0), b.op("Concat", updates, axis=0)],
                  axis=0, reduction="add")
    return [b.op("Reshape", [summed, b.op("Shape", [x])]), None, None]
