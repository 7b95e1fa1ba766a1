"""Normalization layers: BatchNormalization (inference), LRN, LayerNormalization, InstanceNormalization.

BatchNormalization: y = (x - mean) * gamma / sqrt(var + eps) + beta, so dx = g * gamma / sqrt(var + eps)
                    broadcast on the channel axis (the scale is folded at compile time when constant).
LRN: y = x * s^-beta, s = bias + alpha/size * window_sum(x^2) over channels, so
     dx = g * s^-beta - 2 alpha beta / size * x * window_sum^T(g * x * s^(-beta-1)).
     The channel window sum is a Conv over a unit axis; its transpose swaps the pads.
LayerNormalization: dx = (g*gamma - mean(g*gamma) - xhat * mean(g*gamma*xhat)) / std over the normalized axes;
InstanceNormalization the same over the spatial axes of each (sample, channel), gamma per channel (torch's
GroupNorm exports as one on a reshaped input).
"""

import numpy as np

from onnxattr.emitters.broadcast import unbroadcast
from onnxattr.emitters.conv import channel_sum
from onnxattr.emitters.registry import register


def _f(node, name, default):
    return next((a.f for a in node.attribute if a.name == name), default)


def bn_scale(b, node):
    """gamma / sqrt(var + eps), reshaped to broadcast over [N, C, ...] (constant when possible)."""
    x, gamma, _, _, var = node.input[:5]
    eps = _f(node, "epsilon", 1e-5)
    rank = b.rank(x) or 4
    vals = [b.value(t) for t in (gamma, var)]
    if all(v is not None for v in vals):
        scale = vals[0] / np.sqrt(vals[1] + eps)
        return b.const(scale.reshape([-1] + [1] * (rank - 2)).astype(vals[0].dtype), vals[0].dtype, "bn_scale")
    scale = b.op("Div", [gamma, b.op("Sqrt", [b.op("Add", [var, b.scalar(eps, x)])])])
    return b.op("Reshape", [scale, b.ints([-1] + [1] * (rank - 2))])


def bn_scale_shift(b, node):
    """(scale, shift) names with y = x * scale + shift, both shaped [C, 1, ...]."""
    x, gamma, beta, mean, var = node.input[:5]
    scale = bn_scale(b, node)
    rank = b.rank(x) or 4
    vals = [b.value(t) for t in (gamma, beta, mean, var)]
    if all(v is not None for v in vals):
        eps = _f(node, "epsilon", 1e-5)
        shift = vals[1] - vals[2] * vals[0] / np.sqrt(vals[3] + eps)
        return scale, b.const(shift.reshape([-1] + [1] * (rank - 2)).astype(vals[0].dtype), vals[0].dtype, "bn_shift")
    shape = b.ints([-1] + [1] * (rank - 2))
    shift = b.op("Sub", [b.op("Reshape", [beta, shape]), b.op("Mul", [b.op("Reshape", [mean, shape]), scale])])
    return scale, shift


@register("BatchNormalization")
def batchnorm_vjp(b, node, grads, need):
    """Inference form (running statistics; compiler.check_supported refuses a node in training mode)."""
    return [b.op("Mul", [grads[0], bn_scale(b, node)])] + [None] * (len(node.input) - 1)


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
    rank = b.rank(x)
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
    eps = _f(node, "epsilon", 1e-5)
    rank = b.rank(x)
    if node.op_type == "InstanceNormalization":
        axes = list(range(2, rank))
        shape = [-1] + [1] * (rank - 2)
        value = b.value(gamma)
        gamma = (b.const(value.reshape(shape), value.dtype, "in_scale") if value is not None
                 else b.op("Reshape", [gamma, b.ints(shape)]))
    else:
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        axes = list(range(axis % rank, rank))
    mean = b.reduce("ReduceMean", x, axes)
    xc = b.op("Sub", [x, mean])
    var = b.reduce("ReduceMean", b.op("Mul", [xc, xc]), axes)
    rstd = b.op("Div", [b.scalar(1.0, x), b.op("Sqrt", [b.op("Add", [var, b.scalar(eps, x)])])])
    return axes, gamma, xc, rstd


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
    dx = None
    if need[0]:
        gg = b.op("Mul", [g, gamma])
        m1 = b.reduce("ReduceMean", gg, axes)
        m2 = b.reduce("ReduceMean", b.op("Mul", [gg, xhat]), axes)
        dx = b.op("Mul", [b.op("Sub", [b.op("Sub", [gg, m1]), b.op("Mul", [xhat, m2])]), rstd])
    return [dx] + affine_grads(b, node, g, xhat, need)[:len(node.input) - 1]
