"""Resize (and Upsample, lifted to Resize by the opset upgrade).

Resize is linear and separable: along each resized axis a, y = P_a^T x with P_a [L_in, L_out]. P_a is
built in-graph by resizing an identity: an EyeLike placed so axis 0 enumerates the source position and
axis a is resized with the node's own attributes and this axis' scale (or size). Then
dx = P_a @ g along each axis (a MatMul on the last or second-to-last axis, a Transpose otherwise).
Reshape-and-sum is wrong for half the nearest modes; this is exact for every mode. An ``axes`` attribute
(opset 18; torch's dynamo exporter writes it) is spelled out to full-rank scales, sizes and roi first. Sizes
computed at run time (a segmentation head's interpolate(size=x.shape[-2:]) under a symbolic batch axis) are read off
the output: its inferred length where known, else its length at run time; the batch axis is taken as kept. Scales
fed at run time (an Upsample-9's scales input) resize each P_a by the scale of its own axis, read at run time, for
every axis but the batch (an axis of scale 1 gives an identity P_a).
"""

import numpy as np

from onnxattr.emitters.registry import node_attr, register
from onnxattr.errors import UnsupportedModelError


def _resize_inputs(b, node):
    """(roi, scales, sizes) as compile-time arrays (None when absent). Sizes computed at run time (a segmentation
    head's interpolate(size=x.shape[-2:]) under a symbolic batch) come back as the string "output": the resized
    lengths are then the output's, read off its inferred shape or at run time. Scales computed at run time (and no
    sizes) come back as the string "input": the scales input is read at run time."""
    names = list(node.input) + [""] * (4 - len(node.input))
    vals = []
    for k, name in enumerate(names[1:4]):
        if not name:
            vals.append(None)
            continue
        v = b.value(name)
        if v is None and k == 2 and b.rank(node.input[0]) is not None:
            vals.append("output")
            continue
        if v is None and k == 1 and b.rank(node.input[0]) is not None and not names[3]:
            vals.append("input")
            continue
        if v is None:
            raise UnsupportedModelError(
                f"Resize node '{node.name}': {'roi' if k == 0 else 'scales'} computed at run time are not supported"
            )
        vals.append(np.asarray(v))
    roi, scales, sizes = vals
    if isinstance(scales, np.ndarray) and scales.size == 0:
        scales = None
    if isinstance(sizes, np.ndarray) and sizes.size == 0:
        sizes = None
    return roi, scales, sizes


def _full_rank(node, rank, roi, scales, sizes):
    """roi, scales, sizes over every axis for a node with an ``axes`` attribute (unlisted axes: roi [0, 1], scale
    1, size -1: not resized)."""
    axes = [a % rank for a in node_attr(node, "axes")]
    if roi is not None and roi.size:
        full = np.concatenate([np.zeros(rank), np.ones(rank)])
        full[axes], full[[rank + a for a in axes]] = roi[:len(axes)], roi[len(axes):]
        roi = full
    if isinstance(scales, np.ndarray):
        scales, listed = np.ones(rank, np.float32), scales
        scales[axes] = listed
    if isinstance(sizes, np.ndarray):
        sizes, listed = np.full(rank, -1, np.int64), sizes
        sizes[axes] = listed
    return roi, scales, sizes


@register("Resize")
def resize_vjp(b, node, grads, need):
    x, g = node.input[0], grads[0]
    if node_attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        raise UnsupportedModelError(f"Resize node '{node.name}': keep_aspect_ratio_policy "
                                    f"'{node_attr(node, 'keep_aspect_ratio_policy')}' is not supported (only "
                                    "'stretch', the default)")
    roi, scales, sizes = _resize_inputs(b, node)
    xs = b.shape(x)
    if node_attr(node, "axes") is not None:
        if xs is None:
            raise UnsupportedModelError(f"Resize node '{node.name}': an axes attribute needs the input's rank")
        roi, scales, sizes = _full_rank(node, len(xs), roi, scales, sizes)
    rank = len(xs) if xs is not None else len(scales if scales is not None else sizes)
    # the axes the scales or sizes input lists (all of them without an axes attribute)
    listed = [a % rank for a in node_attr(node, "axes")] if node_attr(node, "axes") is not None else range(rank)
    if isinstance(scales, str):  # read at run time: every axis but the batch
        axes = [a for a in listed if a != 0]
        scales = {a: (node.input[2], j) for j, a in enumerate(listed)}  # axis -> (scales input, its entry)
    elif scales is not None:
        axes = [a for a in range(rank) if scales[a] != 1.0]
    elif isinstance(sizes, str):  # every axis but one the input and output share a length on (the batch)
        ys = b.shape(node.output[0]) or [None] * rank
        axes = [a for a in listed if xs[a] is None or xs[a] != ys[a]]  # an axis of one length: left as it is
        sizes = [ys[a] if isinstance(ys[a], int) else None for a in range(rank)]
        if 0 in axes and not isinstance(sizes[0], int):
            axes.remove(0)  # a batch axis resized at run time: rare enough to take the batch as kept
    else:
        axes = [a for a in range(rank) if sizes[a] >= 0 and (xs is None or sizes[a] != xs[a])]
    if 0 in axes:
        raise UnsupportedModelError(f"Resize node '{node.name}': resizing the batch axis is not supported")
    dx = g
    for a in reversed(axes):
        dx = _axis_vjp(b, node, x, dx, a, rank, roi, scales, sizes)
    return [dx] + [None] * (len(node.input) - 1)


def _axis_vjp(b, node, x, g, a, rank, roi, scales, sizes):
    length = b.op("Gather", [b.op("Shape", [x]), b.ints([a])])  # [1]
    eye = b.identity(length, x)  # [L, L]
    placed_shape = b.op("Concat", [length] + [
        length if i == a else b.ints([1]) for i in range(1, rank)
    ], axis=0)
    placed = b.op("Reshape", [eye, placed_shape])
    roi_name = b.const(roi, np.float32) if roi is not None and roi.size else ""
    if isinstance(scales, dict):  # this axis' scale from the scales input, 1 on the others
        name, entry = scales[a]
        ones = lambda n: [b.const(np.ones(n, np.float32), np.float32)] if n else []  # noqa: E731
        s = b.op("Concat", ones(a) + [b.op("Gather", [name, b.ints([entry])])] + ones(rank - a - 1), axis=0)
        resized = b.op("Resize", [placed, roi_name, s])
    elif scales is not None:
        s = np.ones(rank, np.float32)
        s[a] = scales[a]
        resized = b.op("Resize", [placed, roi_name, b.const(s, np.float32)])
    else:
        out_len = b.ints([int(sizes[a])]) if sizes[a] is not None else b.op(
            "Gather", [b.op("Shape", [node.output[0]]), b.ints([a])])  # sizes computed at run time
        sz = b.op("Concat", [length] + [out_len if i == a else b.ints([1]) for i in range(1, rank)], axis=0)
        resized = b.op("Resize", [placed, roi_name, "", sz])
    b.nodes[-1].attribute.extend(a for a in node.attribute if a.name not in ("axes", "keep_aspect_ratio_policy"))
    p = b.op("Reshape", [resized, b.op("Concat", [length, b.ints([-1])], axis=0)])  # [L_in, L_out]
    if a == rank - 1:
        return b.op("MatMul", [g, b.op("Transpose", [p], perm=[1, 0])])
    if a == rank - 2:
        return b.op("MatMul", [p, g])
    perm = [i for i in range(rank) if i != a] + [a]
    inverse = list(np.argsort(perm))
    moved = b.op("Transpose", [g], perm=perm)
    back = b.op("MatMul", [moved, b.op("Transpose", [p], perm=[1, 0])])
    return b.op("Transpose", [back], perm=[int(i) for i in inverse])
