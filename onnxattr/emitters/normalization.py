"""Normalization layers: BatchNormalization (inference; its statistics may vary with x), LRN, LayerNormalization,
InstanceNormalization, GroupNormalization, RMSNormalization, LpNormalization.

BatchNormalization: y = (x - mean) * gamma / sqrt(var + eps) + beta, so dx = g * gamma / sqrt(var + eps)
                    broadcast on the channel axis (the scale is folded at compile time when constant).
LRN: y = x * s^-beta, s = bias + alpha/size * window_sum(x^2) over channels, so
     dx = g * s^-beta - 2 alpha beta / size * x * window_sum^T(g * x * s^(-beta-1)).
     The channel window sum is a Conv over a unit axis; its transpose swaps the pads.
LayerNormalization: dx = (g*gamma - mean(g*gamma) - xhat * mean(g*gamma*xhat)) / std over the normalized axes;
InstanceNormalization the same over the spatial axes of each (sample, channel), gamma per channel (torch's
GroupNorm exports as one on a reshaped input); GroupNormalization the same over each (sample, group) of x viewed
as [N, G, C/G * spatial], gamma per channel (opset 21).
LpNormalization: y = x / n, n = ||x||_p along ``axis`` (p = 1 or 2): dx = (g - d * sum(g * y)) / n with d = sign(x)
(p = 1) or y (p = 2), the derivative of n; 0 for a zero vector, where onnxruntime's y is the constant 0.
RMSNormalization (opset 23): y = x * rstd * gamma, rstd = 1 / sqrt(mean(x^2) + eps) over the axes from ``axis``
on, xhat = x * rstd: dx = (g*gamma - xhat * mean(g*gamma*xhat)) * rstd.
"""

import numpy as np

from onnxattr.emitters.broadcast import unbroadcast
from onnxattr.emitters.conv import channel_sum
from onnxattr.emitters.registry import known_rank, node_attr, register
from onnxattr.errors import UnsupportedModelError


def _f(node, name, default):
    return next((a.f for a in node.attribute if a.name == name), default)


def _inverse_std(b, node, var, like):
    """1 / sqrt(var + eps), eps the node's ``epsilon`` (1e-5 by default)."""
    eps = b.scalar(_f(node, "epsilon", 1e-5), like)
    return b.op("Div", [b.scalar(1.0, like), b.op("Sqrt", [b.op("Add", [var, eps])])])


def _per_channel(b, x, values, hint: str = "per_channel") -> str:
    """A per-channel vector (a name, or a constant array) shaped [C, 1, ...] to broadcast over x = [N, C, ...]: a
    constant of that shape where x's rank is known; else reshaped at run time to [-1] and rank(x) - 2 ones (a
    guessed rank would broadcast a [C, 1, 1] over an [N, C, L] into a wrong shape)."""
    rank = b.rank(x)
    if not isinstance(values, str):
        if rank is not None:
            return b.const(values.reshape([-1] + [1] * (rank - 2)), values.dtype, hint)
        values = b.const(values.reshape(-1), values.dtype, hint)
    if rank is not None:
        return b.op("Reshape", [values, b.ints([-1] + [1] * (rank - 2))])
    ones = b.op("Expand", [b.ints([1]), b.op("Sub", [b.op("Shape", [b.op("Shape", [x])]), b.ints([2])])])
    return b.op("Reshape", [values, b.op("Concat", [b.ints([-1]), ones], axis=0)])


def bn_scale(b, node):
    """gamma / sqrt(var + eps), reshaped to broadcast over [N, C, ...] (constant when possible)."""
    x, gamma, _, _, var = node.input[:5]
    eps = _f(node, "epsilon", 1e-5)
    vals = [b.value(t) for t in (gamma, var)]
    if all(v is not None for v in vals):
        return _per_channel(b, x, (vals[0] / np.sqrt(vals[1] + eps)).astype(vals[0].dtype), "bn_scale")
    return _per_channel(b, x, b.op("Div", [gamma, b.op("Sqrt", [b.op("Add", [var, b.scalar(eps, x)])])]))


def bn_scale_shift(b, node):
    """(scale, shift) names with y = x * scale + shift, both shaped [C, 1, ...]."""
    x, gamma, beta, mean, var = node.input[:5]
    scale = bn_scale(b, node)
    vals = [b.value(t) for t in (gamma, beta, mean, var)]
    if all(v is not None for v in vals):
        eps = _f(node, "epsilon", 1e-5)
        shift = vals[1] - vals[2] * vals[0] / np.sqrt(vals[3] + eps)
        return scale, _per_channel(b, x, shift.astype(vals[0].dtype), "bn_shift")
    shift = b.op("Sub", [_per_channel(b, x, beta), b.op("Mul", [_per_channel(b, x, mean), scale])])
    return scale, shift


@register("BatchNormalization")
def batchnorm_vjp(b, node, grads, need):
    """Inference form (compiler.check_supported refuses a node in training mode). Statistics or parameters fed
    from the input (tf2onnx writes Keras' LayerNormalization as a BatchNormalization of a reshaped x with its
    own mean and variance) get, with s = 1 / sqrt(var + eps) and per-channel sums over batch and space:
    d gamma = sum(g (x - mean) s), d beta = sum(g), d mean = -sum(g) gamma s,
    d var = -sum(g (x - mean)) gamma s^3 / 2."""
    g = grads[0]
    out = [b.op("Mul", [g, bn_scale(b, node)]) if need[0] else None] + [None] * (len(node.input) - 1)
    if not any(need[1:5]):
        return out
    x, gamma, _, mean, var = node.input[:5]
    rank = b.rank(x)
    if rank is None:
        raise UnsupportedModelError(f"BatchNormalization '{node.name}': statistics computed from the input need the "
                                    "input's rank known (shape inference could not tell)")
    s = _inverse_std(b, node, var, x)
    centred = b.op("Sub", [x, _per_channel(b, x, mean)])
    g_centred = channel_sum(b, b.op("Mul", [g, centred]), rank)  # [C]
    g_sum = channel_sum(b, g, rank) if need[2] or need[3] else None
    if need[1]:
        out[1] = b.op("Mul", [g_centred, s])
    if need[2]:
        out[2] = g_sum
    if need[3]:
        out[3] = b.op("Neg", [b.op("Mul", [g_sum, b.op("Mul", [gamma, s])])])
    if need[4]:
        s3 = b.op("Mul", [s, b.op("Mul", [s, s])])
        out[4] = b.op("Mul", [b.op("Mul", [g_centred, b.op("Mul", [gamma, s3])]), b.scalar(-0.5, x)])
    return out


def _window_sum(b, t, rank, size, transpose):
    """Sum over channel windows [c - (size-1)//2, c + size//2] (or its transpose) of an NC... tensor."""
    lo, hi = (size - 1) // 2, size // 2
    if transpose:
        lo, hi = hi, lo
    u = b.op("Unsqueeze", [t, b.ints([1])])  # [N, 1, C, ...]
    kernel = b.const(np.ones([1, 1, size] + [1] * (rank - 2)), b.float_dtype(t), hint="lrn_kernel")
    pads = [lo] + [0] * (rank - 2) + [hi] + [0] * (rank - 2)
    return b.op("Squeeze", [b.op("Conv", [u, kernel], pads=pads), b.ints([1])])


@register("LRN")
def lrn_vjp(b, node, grads, need):
    x, g = node.input[0], grads[0]
    alpha, beta, bias = _f(node, "alpha", 1e-4), _f(node, "beta", 0.75), _f(node, "bias", 1.0)
    size = next(a.i for a in node.attribute if a.name == "size")
    rank = known_rank(b, node)
    s = b.op("Add", [b.op("Mul", [_window_sum(b, b.op("Mul", [x, x]), rank, size, False),
                                  b.scalar(alpha / size, x)]), b.scalar(bias, x)])
    direct = b.op("Mul", [g, b.op("Pow", [s, b.scalar(-beta, x)])])
    inner = b.op("Mul", [b.op("Mul", [g, x]), b.op("Pow", [s, b.scalar(-beta - 1.0, x)])])
    cross = b.op("Mul", [b.op("Mul", [x, _window_sum(b, inner, rank, size, True)]),
                         b.scalar(-2.0 * alpha * beta / size, x)])
    return [b.op("Add", [direct, cross])]


def norm_stats(b, node):
    """(axes, gamma, xc, rstd) of a LayerNormalization or InstanceNormalization node: the normalized axes
    (from ``axis`` on; the spatial axes), its scale shaped to broadcast against x (an InstanceNorm's per
    channel), x - mean and rstd = 1 / sqrt(var + eps), recomputed from its input."""
    x, gamma = node.input[0], node.input[1]
    rank = known_rank(b, node)
    if node.op_type == "InstanceNormalization":
        axes = list(range(2, rank))
        value = b.value(gamma)
        gamma = _per_channel(b, x, gamma if value is None else value, "in_scale")
    else:
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        axes = list(range(axis % rank, rank))
    mean = b.reduce("ReduceMean", x, axes)
    xc = b.op("Sub", [x, mean])
    var = b.reduce("ReduceMean", b.op("Mul", [xc, xc]), axes)
    return axes, gamma, xc, _inverse_std(b, node, var, x)


def affine_grads(b, node, g: str, xhat: str, need) -> list:
    """[d scale, d bias] of a Layer/InstanceNormalization whose scale or bias varies with the input (a
    conditional norm; None where not needed): sum(g * xhat) and sum(g), back to the parameter's shape, per
    channel for an InstanceNorm, over the broadcast leading axes for a LayerNorm."""
    out = []
    for k, t in ((1, lambda: b.op("Mul", [g, xhat])), (2, lambda: g)):
        if len(need) <= k or not need[k]:
            out.append(None)
        elif node.op_type == "InstanceNormalization":
            out.append(channel_sum(b, t(), b.rank(node.input[0])))
        else:
            out.append(unbroadcast(b, t(), node.input[k], node.input[0]))
    return out


@register("LayerNormalization", "InstanceNormalization")
def layernorm_vjp(b, node, grads, need):
    """dx as above; a scale or bias that varies with x (a conditional norm) gets sum(g * xhat) and sum(g)."""
    g = grads[0]
    axes, gamma, xc, rstd = norm_stats(b, node)
    xhat = b.op("Mul", [xc, rstd])
    dx = normalized_grad(b, b.op("Mul", [g, gamma]), xhat, rstd, axes) if need[0] else None
    return [dx] + affine_grads(b, node, g, xhat, need)[:len(node.input) - 1]


def normalized_grad(b, gg, xhat, rstd, axes, centered=True, std_held=False):
    """dx of xhat = (x - mean) * rstd (or x * rstd, not ``centered``) given gg = dL/dxhat:
    (gg - mean(gg) - xhat * mean(gg * xhat)) * rstd, the means over ``axes``; with ``std_held`` (AttnLRP, as
    LXT stops the std's gradient) the last term, the std's own dependence on x, is dropped (xhat unused)."""
    centered_gg = b.op("Sub", [gg, b.reduce("ReduceMean", gg, axes)]) if centered else gg
    if std_held:
        return b.op("Mul", [centered_gg, rstd])
    m2 = b.reduce("ReduceMean", b.op("Mul", [gg, xhat]), axes)
    return b.op("Mul", [b.op("Sub", [centered_gg, b.op("Mul", [xhat, m2])]), rstd])


def _refuse_varying_affine(node, need):
    if any(need[1:]):
        raise UnsupportedModelError(f"{node.op_type} '{node.name}': a scale or bias computed from the explained "
                                    "input is not supported (only constant ones)")


def _group_stats(b, node):
    """(rows, xc, rstd, gamma) of a GroupNormalization-21 node: the [0, G, -1] shape that views x as one row per
    (sample, group), x - mean and rstd = 1 / sqrt(var + eps) per row (recomputed from its input), and its scale
    shaped [C, 1, ...] to broadcast against x."""
    x, gamma = node.input[0], node.input[1]
    if b.opset < 21:
        raise UnsupportedModelError(f"GroupNormalization '{node.name}': only opset 21's form (scale and bias per "
                                    "channel) is supported")
    rank = known_rank(b, node)
    rows = b.ints([0, node_attr(node, "num_groups"), -1])
    xr = b.op("Reshape", [x, rows])
    xc = b.op("Sub", [xr, b.reduce("ReduceMean", xr, [2])])
    var = b.reduce("ReduceMean", b.op("Mul", [xc, xc]), [2])
    return rows, xc, _inverse_std(b, node, var, x), b.op("Reshape", [gamma, b.ints([-1] + [1] * (rank - 2))])


def group_norm_grad(b, node, g, need, std_held=False):
    """[dx, None, None] of a GroupNormalization-21 node (``normalized_grad`` per (sample, group) row; its scale
    and bias must not vary with the input)."""
    _refuse_varying_affine(node, need)
    rows, xc, rstd, gamma = _group_stats(b, node)
    gg = b.op("Reshape", [b.op("Mul", [g, gamma]), rows])
    xhat = None if std_held else b.op("Mul", [xc, rstd])
    dx = normalized_grad(b, gg, xhat, rstd, [2], std_held=std_held)
    return [b.op("Reshape", [dx, b.op("Shape", [node.input[0]])])] + [None] * (len(node.input) - 1)


@register("GroupNormalization")
def groupnorm_vjp(b, node, grads, need):
    """x viewed as [N, G, C/G * spatial] and normalized per row, gamma per channel (opset 21; opset 18's per-group
    scale is deprecated, and onnx.checker refuses it at load)."""
    return group_norm_grad(b, node, grads[0], need)


def rms_stats(b, node):
    """(axes, rstd) of an RMSNormalization node: the normalized axes (from ``axis`` on) and
    rstd = 1 / sqrt(mean(x^2) + eps) over them, recomputed from its input."""
    x = node.input[0]
    rank = known_rank(b, node)
    axes = list(range(node_attr(node, "axis", -1) % rank, rank))
    return axes, _inverse_std(b, node, b.reduce("ReduceMean", b.op("Mul", [x, x]), axes), x)


def rms_scale_grad(b, node, g, xhat, need):
    """The gradient of an RMSNormalization's scale where it varies with the input: sum(g * xhat), xhat = x * rstd."""
    if len(need) < 2 or not need[1]:
        return None
    return unbroadcast(b, b.op("Mul", [g, xhat]), node.input[1], node.input[0])


@register("RMSNormalization")
def rmsnorm_vjp(b, node, grads, need):
    """dx = (g*gamma - xhat * mean(g*gamma*xhat)) * rstd; a scale varying with x gets sum(g * xhat)."""
    g = grads[0]
    axes, rstd = rms_stats(b, node)
    xhat = b.op("Mul", [node.input[0], rstd])
    dx = normalized_grad(b, b.op("Mul", [g, node.input[1]]), xhat, rstd, axes, centered=False) if need[0] else None
    return [dx, rms_scale_grad(b, node, g, xhat, need)]


@register("LpNormalization")
def lp_normalization_vjp(b, node, grads, need):
    x, y, g = node.input[0], node.output[0], grads[0]
    axis, p = node_attr(node, "axis", -1), node_attr(node, "p", 2)
    if p not in (1, 2):
        raise UnsupportedModelError(f"LpNormalization '{node.name}': p = {p} (only 1 and 2 are defined)")
    norm = b.reduce("ReduceL1" if p == 1 else "ReduceL2", x, [axis])
    along = b.op("Sign", [x]) if p == 1 else y
    projected = b.op("Mul", [along, b.reduce("ReduceSum", b.op("Mul", [g, y]), [axis])])
    dx = b.op("Div", [b.op("Sub", [g, projected]), norm])
    # a zero vector: onnxruntime writes y = 0 there, a constant, so dx = 0 (not g / 0)
    return [b.op("Where", [b.op("Equal", [norm, b.scalar(0.0, x)]), b.scalar(0.0, x), dx])]
