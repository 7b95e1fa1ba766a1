"""Conv and ConvTranspose: exact VJPs for any rank, strides, dilations, groups and padding.

Conv VJP (recipe checked on onnxruntime): ConvTranspose of g with the Conv weight as it is (same group,
strides, dilations) and NO pads gives the gradient of the padded input; a Pad with negative begin pads
crops it to x (its end pad is x_len - full_len + pad_begin, positive when the stride did not divide).
With static shapes the crop is ConvTranspose's own ``pads``, symmetric (begin at both ends), and
``output_padding`` = begin + end gives back what the end crop takes beyond the rows it should (zeros where no
window reached; onnxruntime takes it in [0, stride)): one op, no copy. onnxruntime's CUDA provider drops a
ConvTranspose with asymmetric pads to the CPU; other cases pad or crop after an unpadded ConvTranspose. The
``output_shape`` attribute is avoided: onnxruntime ignores pads with it.

ConvTranspose VJP: Conv of g with the same weight, strides, dilations, group and the ConvTranspose pads.

A weight computed from the input (dynamic filters) gets dW from ``conv_weight_vjp``: a Conv of the input with g, batch
and channels swapped (for ConvTranspose, of g with the input: it is Conv's adjoint).

``conv_forward``/``conv_input_vjp`` are the linear pieces LRP rules combine with modified weights.

Layout: onnxruntime's CPU provider runs float32 2-D convolutions in a blocked channel layout (NCHWc)
and keeps Add, Mul and Relu between two such tensors in it (a residual Add even joins the Conv); any
other op costs a reorder of each blocked tensor it meets, and an element-wise op fed by one unblocked
tensor unblocks the whole chain after it. ``channel_scale`` is the way in: a per-channel scale written
as a depthwise 1x1 Conv, put where a backward pass would otherwise leave the layout (the ConvTranspose
of a strided Conv's VJP, GlobalAveragePool's Expand, the ReLU masks in activations.positive_flag).
"""

import math

import numpy as np
from onnx import TensorProto

from onnxattr.emitters.registry import node_attr, register
from onnxattr.errors import UnsupportedModelError


BLOCK = 16  # channels per NCHWc block on AVX-512 (8 on AVX2): tensors with a multiple of 16 suit both


def channel_scale(b, t, scale: float) -> str | None:
    """t * scale as a depthwise 1x1 Conv, for a float32 rank-4 tensor whose channel count is a multiple
    of BLOCK, else None. Exact when scale is a power of two; onnxruntime's CPU provider runs it in its
    blocked layout, so the ops after it stay there. Costs one pass over t, as a Mul would."""
    shape = b.shape(t)
    if (b.types.get(t) != TensorProto.FLOAT or shape is None or len(shape) != 4
            or not isinstance(shape[1], int) or shape[1] % BLOCK):
        return None
    channels = shape[1]
    key = ("channel_scale", channels, float(scale))
    w = b.cache.get(key)
    if w is None:
        w = b.cache[key] = b.const(np.full((channels, 1, 1, 1), scale, np.float32), np.float32, "w_scale")
    out = b.op("Conv", [t, w], group=channels, kernel_shape=[1, 1])
    b.set_info(out, t)
    return out


def conv_attrs(node):
    out = {"auto_pad": "NOTSET", "group": 1}
    for a in node.attribute:
        if a.name in ("dilations", "kernel_shape", "pads", "strides", "output_padding", "output_shape"):
            out[a.name] = list(a.ints)
        elif a.name == "group":
            out["group"] = a.i
        elif a.name == "auto_pad":
            out["auto_pad"] = a.s.decode()
    return out


def same_pads(b, node, x, kernel, strides, dil) -> tuple[list, list]:
    """(begin, end) pads of auto_pad=SAME_UPPER/LOWER: per axis a total of (ceil(L / s) - 1) s + (k - 1) d + 1 - L
    (at least 0), which for stride 1 is (k - 1) d whatever L; other strides need x's length L static."""
    mode = conv_attrs(node)["auto_pad"]
    xs = b.shape(x)
    lengths = xs[2:] if xs is not None and len(xs) == 2 + len(kernel) else [None] * len(kernel)
    if any(not isinstance(L, int) and s != 1 for L, s in zip(lengths, strides)):
        raise UnsupportedModelError(
            f"{node.op_type} node '{node.name}': auto_pad={mode} with strides above 1 needs static spatial dims of "
            "its input (its pads depend on the length)")
    begin, end = [], []
    for L, k, s, d in zip(lengths, kernel, strides, dil):
        total = (k - 1) * d if not isinstance(L, int) else max((math.ceil(L / s) - 1) * s + (k - 1) * d + 1 - L, 0)
        begin.append(total // 2 if mode == "SAME_UPPER" else total - total // 2)
        end.append(total - begin[-1])
    return begin, end


def end_pads(b, node, x, kernel, strides, dil) -> list:
    """The end pads of a windowed node: its pads attribute's, SAME's (same_pads: static sizes or stride 1), none
    for VALID."""
    mode, nsp = conv_attrs(node)["auto_pad"], len(kernel)
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        return same_pads(b, node, x, kernel, strides, dil)[1]
    return [0] * nsp if mode == "VALID" else (conv_attrs(node).get("pads") or [0] * (2 * nsp))[nsp:]


def window_geometry(b, node, x, kernel, at_run_time: bool = False):
    """Strides, dilations and begin pads of a windowed node (Conv, pools) with this kernel. ``at_run_time``: the
    begin pads of a strided SAME window over sizes known only at run time as an int64 tensor
    (same_begin_at_run_time), for the callers that crop with them (transpose_and_crop), instead of a refusal."""
    at = conv_attrs(node)
    nsp = len(kernel)
    strides = at.get("strides") or [1] * nsp
    dil = at.get("dilations") or [1] * nsp
    begin = (at.get("pads") or [0] * (2 * nsp))[:nsp]
    if at["auto_pad"] in ("SAME_UPPER", "SAME_LOWER") and at_run_time and any(s != 1 for s in strides) and \
            _spatial(b, x, nsp) is None:
        begin = same_begin_at_run_time(b, node, x, kernel, strides, dil)
    elif at["auto_pad"] in ("SAME_UPPER", "SAME_LOWER"):
        begin = same_pads(b, node, x, kernel, strides, dil)[0]
    elif at["auto_pad"] == "VALID":
        begin = [0] * nsp
    return strides, dil, begin


def transpose_and_crop(b, g, w, x, y, group, kernel, strides, dil, begin):
    """ConvTranspose(g, w) without pads, then crop/pad to x: the input VJP of a windowed op. A stride-1
    op with a constant weight gets a flipped Conv instead; a ConvTranspose result is moved into the
    blocked layout when it can be (``channel_scale`` by 1)."""
    nsp = len(kernel)
    xs, gs = _spatial(b, x, nsp), _spatial(b, y, nsp)
    flipped = _flipped_conv(b, g, w, x, group, kernel, strides, dil, begin, xs, gs)
    if flipped is not None:
        return flipped
    out = _transposed(b, g, w, x, group, kernel, strides, dil, begin, xs, gs)
    return channel_scale(b, out, 1.0) or out


def _transposed(b, g, w, x, group, kernel, strides, dil, begin, xs, gs):
    nsp = len(kernel)
    if xs is not None and gs is not None:
        end = [xs[i] - ((gs[i] - 1) * strides[i] + (kernel[i] - 1) * dil[i] + 1) + begin[i] for i in range(nsp)]
        extra = [begin[i] + e for i, e in enumerate(end)]  # output_padding that makes the end pad equal begin
        if all(0 <= extra[i] < strides[i] for i in range(nsp)):  # onnxruntime: output_padding below the stride
            # the crop as ConvTranspose pads, rows no window reached as output_padding (zeros): no Pad copy.
            # The pads are symmetric (the end crop is begin; output_padding adds back the rows it takes beyond
            # -end): onnxruntime's CUDA provider runs no ConvTranspose with asymmetric pads, it drops them to the CPU
            out = b.op("ConvTranspose", [g, w], group=group, strides=strides, dilations=dil,
                       pads=list(begin) * 2, output_padding=extra)
            b.set_info(out, x)
            return out
        full = b.op("ConvTranspose", [g, w], group=group, strides=strides, dilations=dil)
        pads = b.ints([0, 0] + [-p for p in begin] + [0, 0] + end)
    else:  # begin: a list, or an int64 tensor of the begin pads computed at run time (strided SAME)
        full = b.op("ConvTranspose", [g, w], group=group, strides=strides, dilations=dil)
        begin_t = begin if isinstance(begin, str) else b.ints(begin)
        end = b.op("Add", [b.op("Sub", [spatial_at_run_time(b, x, nsp), spatial_at_run_time(b, full, nsp)]), begin_t])
        pads = b.op("Concat", [b.ints([0, 0]), b.op("Neg", [begin_t]), b.ints([0, 0]), end], axis=0)
    out = b.op("Pad", [full, pads])
    b.set_info(out, x)
    return out


def spatial_at_run_time(b, t, nsp) -> str:
    """t's spatial dims as an int64 tensor, read at run time."""
    return b.op("Slice", [b.op("Shape", [t]), b.ints([2]), b.ints([2 + nsp])])


def same_begin_at_run_time(b, node, x, kernel, strides, dil) -> str:
    """The begin pads of auto_pad=SAME_UPPER/LOWER as an int64 tensor computed from x's spatial dims L at run
    time: total = max((ceil(L / s) - 1) s + (k - 1) d + 1 - L, 0), half of it (rounded down for UPPER) first."""
    L = spatial_at_run_time(b, x, len(kernel))
    s = b.ints(list(strides))
    ceil = b.op("Div", [b.op("Add", [L, b.op("Sub", [s, b.ints([1] * len(kernel))])]), s])
    reach = b.ints([(k - 1) * d + 1 for k, d in zip(kernel, dil)])
    total = b.op("Max", [b.op("Sub", [b.op("Add", [b.op("Mul", [b.op("Sub", [ceil, b.ints([1] * len(kernel))]), s]),
                                                    reach]), L]), b.ints([0] * len(kernel))])
    half = b.op("Div", [total, b.ints([2] * len(kernel))])
    return half if conv_attrs(node)["auto_pad"] == "SAME_UPPER" else b.op("Sub", [total, half])


def _spatial(b, t, nsp):
    """The static spatial dims of t (batch and channels may be dynamic), else None."""
    s = b.shape(t)
    if s is None or len(s) != nsp + 2 or not all(isinstance(d, int) for d in s[2:]):
        return None
    return list(s[2:])


def _flipped_conv(b, g, w, x, group, kernel, strides, dil, begin, xs, gs):
    """The input VJP of a stride-1 windowed op with a constant weight as one Conv of g with the weight
    transposed (in/out channels, per group) and flipped in space, padded so the result has x's size:
    dx[i] = sum_k g[i + begin - k d] w[k]. onnxruntime runs Conv faster than ConvTranspose + Pad
    (NCHWc layout, fusions). None when not applicable (strides, unknown sizes, weight not constant,
    a pad beyond the kernel's reach)."""
    wv = b.value(w)
    if wv is None or xs is None or gs is None or any(s != 1 for s in strides):
        return None
    nsp = len(kernel)
    pads_begin, pads_end = [], []
    for i in range(nsp):
        reach = (kernel[i] - 1) * dil[i]
        end = xs[i] - gs[i] + begin[i]  # the output length gs + (reach - begin) + end - reach is xs
        if begin[i] > reach or end < 0:
            return None
        pads_begin.append(reach - begin[i])
        pads_end.append(end)
    key = ("flipped_conv_weight", w, group)
    wt = b.cache.get(key)
    if wt is None:
        co, cig = wv.shape[0], wv.shape[1]
        v = wv.reshape((group, co // group, cig) + wv.shape[2:])
        v = np.swapaxes(v, 1, 2).reshape((group * cig, co // group) + wv.shape[2:])
        v = v[(slice(None), slice(None)) + (slice(None, None, -1),) * nsp]
        wt = b.cache[key] = b.const(np.ascontiguousarray(v), wv.dtype, "w_flip")
    out = b.op("Conv", [g, wt], group=group, dilations=dil, pads=pads_begin + pads_end,
               kernel_shape=list(kernel))
    b.set_info(out, x)
    return out


def conv_forward(b, node, x, w, bias=None):
    """The node's Conv applied to other operands (LRP's modified forward passes)."""
    attrs = {a.name: a for a in node.attribute}
    out = b.op("Conv", [x, w] + ([bias] if bias else []))
    b.nodes[-1].attribute.extend(attrs.values())
    b.set_info(out, node.output[0])
    return out


def conv_input_vjp(b, node, g, w, x):
    """dL/dx of y = Conv(x, w): ConvTranspose(g, w) without pads, cropped to x."""
    at = conv_attrs(node)
    wshape = b.shape(w)
    if wshape is None:
        raise UnsupportedModelError(f"Conv node '{node.name}': the weight's rank is unknown")
    kernel = at.get("kernel_shape") or list(wshape[2:])
    strides, dil, begin = window_geometry(b, node, x, kernel, at_run_time=True)
    return transpose_and_crop(b, g, w, x, node.output[0], at["group"], kernel, strides, dil, begin)


@register("Conv")
def conv_vjp(b, node, grads, need):
    x, w = node.input[0], node.input[1]
    out = [None] * len(node.input)
    if need[0]:
        out[0] = conv_input_vjp(b, node, grads[0], w, x)
    if len(need) > 1 and need[1]:  # a weight computed from the input (dynamic filters, CondInst's mask head)
        at, kernel = conv_attrs(node), _kernel(b, node, w)
        strides, dil, begin = window_geometry(b, node, x, kernel)
        end = end_pads(b, node, x, kernel, strides, dil)
        out[1] = conv_weight_vjp(b, x, grads[0], at["group"], kernel, strides, dil, list(begin) + end)
    if len(need) > 2 and need[2]:
        out[2] = channel_sum(b, grads[0], b.rank(node.output[0]))  # a bias that varies with the input
    return out


def _kernel(b, node, w) -> list:
    """The node's kernel size: its kernel_shape, else the weight's static spatial dims."""
    kernel = conv_attrs(node).get("kernel_shape")
    shape = b.shape(w)
    if not kernel and shape is not None and all(isinstance(d, int) for d in shape[2:]):
        kernel = list(shape[2:])
    if not kernel:
        raise UnsupportedModelError(f"{node.op_type} node '{node.name}': a weight computed from the input needs a "
                                    "known kernel size (kernel_shape, or the weight's static spatial dims)")
    return kernel


def conv_weight_vjp(b, image, g, group, kernel, strides, dil, pads):
    """dW of y = Conv(image, W): dW[o, i, k] = sum over n and output positions p of g[n, o, p] *
    image_padded[n, G(o) Cg + i, p s + k d]. That is itself a convolution with batch and channels swapped: the image
    as [Cg, G N, *S] convolved (group G, strides d, dilations s, the same pads) with g as a weight [G Og, N, *So],
    giving [Cg, O, *K'] with K' >= k; transposed to [O, Cg, *K'] and cut to the kernel."""
    nsp = len(kernel)
    spatial = list(range(2, 2 + nsp))
    if group == 1:
        swapped = b.op("Transpose", [image], perm=[1, 0] + spatial)  # [C, N, *S]
        filters = b.op("Transpose", [g], perm=[1, 0] + spatial)  # [O, N, *So]
    else:
        swapped = _groups_first(b, image, group, nsp, [2, 1, 0])  # [Cg, G N, *S]
        filters = _groups_first(b, g, group, nsp, [1, 2, 0])  # [G Og, N, *So]
    full = b.op("Conv", [swapped, filters], group=group, strides=list(dil), dilations=list(strides), pads=list(pads))
    dw = b.op("Transpose", [full], perm=[1, 0] + spatial)
    return b.op("Slice", [dw, b.ints([0] * nsp), b.ints(list(kernel)), b.ints(spatial)])


def _groups_first(b, t, group, nsp, order):
    """t [N, G C', *S] viewed [N, G, C', *S], its first three axes permuted by ``order`` and two merged: order
    [2, 1, 0] gives [C', G N, *S] (the last two of the three merged), [1, 2, 0] gives [G C', N, *S] (the first two)."""
    space = spatial_at_run_time(b, t, nsp)
    split = b.op("Reshape", [t, b.op("Concat", [b.ints([0, group, -1]), space], axis=0)])
    moved = b.op("Transpose", [split], perm=order + list(range(3, 3 + nsp)))
    if order == [2, 1, 0]:
        return b.op("Reshape", [moved, b.op("Concat", [b.ints([0, -1]), space], axis=0)])
    kept = b.op("Slice", [b.op("Shape", [moved]), b.ints([2]), b.ints([3 + nsp])])  # N, *S
    return b.op("Reshape", [moved, b.op("Concat", [b.ints([-1]), kept], axis=0)])


def channel_sum(b, t: str, rank: int) -> str:
    """t [N, C, ...] summed over the batch and spatial axes: the gradient of a per-channel parameter (a Conv
    or ConvTranspose bias, an InstanceNorm's scale or bias)."""
    return b.op("ReduceSum", [t, b.ints([0] + list(range(2, rank)))], keepdims=0)


def _convtranspose_pads(b, node, x, w):
    at = conv_attrs(node)
    wshape = b.shape(w)
    nsp = len(wshape) - 2
    kernel = at.get("kernel_shape") or list(wshape[2:])
    strides = at.get("strides") or [1] * nsp
    dil = at.get("dilations") or [1] * nsp
    opad = at.get("output_padding") or [0] * nsp
    if at["auto_pad"] == "NOTSET" and "output_shape" not in at:
        return at, strides, dil, at.get("pads") or [0] * (2 * nsp)
    xs, ys = b.shape(x), b.shape(node.output[0])
    if xs is None or ys is None or any(not isinstance(d, int) for d in xs[2:] + ys[2:]):
        raise UnsupportedModelError(
            f"ConvTranspose node '{node.name}': auto_pad/output_shape need static spatial dims"
        )
    begin, end = [], []
    for i in range(nsp):
        total = strides[i] * (xs[2 + i] - 1) + opad[i] + (kernel[i] - 1) * dil[i] + 1 - ys[2 + i]
        if total < 0:  # an output_shape past the full output: zeros at the end (onnxruntime)
            begin.append(0)
        elif at["auto_pad"] == "SAME_UPPER":
            begin.append(total // 2)
        else:  # SAME_LOWER, and output_shape alone (the spec's "else" branch; onnxruntime agrees)
            begin.append(total - total // 2)
        end.append(total - begin[-1])
    return at, strides, dil, begin + end


def _cut_past_full_output(b, node, g, pads):
    """(g, pads) with the rows that a ConvTranspose's output_shape adds past its full output (zeros: a negative end
    pad) cut from g, which no tap reads, and those end pads made 0."""
    nsp = len(pads) // 2
    if all(p >= 0 for p in pads[nsp:]):
        return g, pads
    ys = b.shape(node.output[0])
    g = b.op("Slice", [g, b.ints([0] * nsp), b.ints([d + min(p, 0) for d, p in zip(ys[2:], pads[nsp:])]),
                       b.ints(list(range(2, 2 + nsp)))])
    return g, pads[:nsp] + [max(p, 0) for p in pads[nsp:]]


def conv_transpose_input_vjp(b, node, g, w, x):
    """dL/dx of y = ConvTranspose(x, w): Conv(g, w) with the same pads, strides, dilations, group; where
    output_shape adds zeros past the full output (a negative end pad), g is cut there first."""
    at, strides, dil, pads = _convtranspose_pads(b, node, x, w)
    g, pads = _cut_past_full_output(b, node, g, pads)
    out = b.op("Conv", [g, w], group=at["group"], strides=strides, dilations=dil, pads=pads)
    b.set_info(out, x)
    return out


@register("ConvTranspose")
def conv_transpose_vjp(b, node, grads, need):
    x, w = node.input[0], node.input[1]
    out = [None] * len(node.input)
    if need[0]:
        out[0] = conv_transpose_input_vjp(b, node, grads[0], w, x)
    if len(need) > 1 and need[1]:  # the adjoint of Conv(g, W): W's gradient is Conv's with image g and gradient x
        at, strides, dil, pads = _convtranspose_pads(b, node, x, w)
        g, pads = _cut_past_full_output(b, node, grads[0], pads)
        out[1] = conv_weight_vjp(b, g, x, at["group"], _kernel(b, node, w), strides, dil, pads)
    if len(need) > 2 and need[2]:
        out[2] = channel_sum(b, grads[0], b.rank(node.output[0]))  # a bias that varies with the input
    return out


@register("Col2Im")
def col2im_vjp(b, node, grads, need):
    """Col2Im sums the columns [N, C * prod(block), L] into an image [N, C, *image] (torch's F.fold); its VJP cuts
    the blocks back out (F.unfold): a Conv of g with group C whose C * prod(block) kernels are one-hot at each
    block offset, with Col2Im's strides, dilations and pads, flattened to [N, C * prod(block), L]."""
    x, block = node.input[0], b.value(node.input[2])
    channels = (b.shape(x) or [None, None])[1]
    if block is None or not isinstance(channels, int):
        raise UnsupportedModelError(f"Col2Im node '{node.name}': the backward needs a constant block_shape and a "
                                    "known column count (C * prod(block_shape))")
    block = [int(k) for k in np.asarray(block).reshape(-1)]
    size = int(np.prod(block))
    groups = channels // size
    kernel = np.eye(size).reshape([size, 1] + block)  # kernel k is one at block offset k
    weight = b.const(np.tile(kernel, (groups,) + (1,) * (kernel.ndim - 1)).astype(b.float_dtype(x)),
                     b.float_dtype(x), "w_col2im")
    attrs = {k: list(v) for k, v in ((a, node_attr(node, a)) for a in ("strides", "dilations", "pads")) if v}
    blocks = b.op("Conv", [grads[0], weight], group=groups, kernel_shape=block, **attrs)
    flat = b.op("Reshape", [blocks, b.ints([0, channels, -1])])
    return [flat, None, None]
