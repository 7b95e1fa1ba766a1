"""Reductions and normalizing maps along an axis: ReduceSum/Mean/Max/Min/SumSquare/L2/L1/LogSumExp/Prod,
Softmax, LogSoftmax, CumSum, CumProd, TopK.

ReduceSum:  dx = expand(g with the reduced axes restored)       ReduceMean: the same / count
ReduceMax/Min: the expanded g goes to the positions equal to the extreme value, shared among ties.
ReduceSumSquare: 2 x g    ReduceL2: g x / y (0 at y = 0)    ReduceL1: g sign(x)    ReduceLogSumExp: g exp(x - y)
ReduceLogSum: g exp(-y)
ReduceProd: dx = g * (product of the other elements): y / x without zeros; at the only zero the product of the
            rest; 0 where two or more are zero
Softmax:    dx = y * (g - sum(g * y, axis))                     LogSoftmax: dx = g - exp(y) * sum(g, axis)
CumSum:     dx = the cumulative sum of g in the other direction (same exclusive)
CumProd:    dx_i = sum over the j whose product holds x_i of g_j prod_{k != i} x_k; with S = CumSum in the other
            direction (same exclusive): S(g y) / x before the scan's first zero, S(g y') at that zero (y' the
            products with that zero made 1), 0 after it (every product there holds the zero)
TopK:       dx = g scattered to the positions in Indices, 0 elsewhere
"""

import numpy as np

from onnxattr.emitters.arithmetic import divide_or_zero
from onnxattr.emitters.registry import register
from onnxattr.errors import UnsupportedModelError


def _reduced_axes(b, node):
    """The reduced axes (normalized), from the attribute or the constant axes input."""
    rank = b.rank(node.input[0])
    attrs = {a.name: a for a in node.attribute}
    axes = list(attrs["axes"].ints) if "axes" in attrs else None
    if axes is None and len(node.input) > 1 and node.input[1]:
        v = b.value(node.input[1])
        if v is None:
            raise UnsupportedModelError(
                f"{node.op_type} node '{node.name}': reduction axes computed at run time are not supported"
            )
        axes = [int(a) for a in np.asarray(v).reshape(-1)]
    noop = attrs["noop_with_empty_axes"].i if "noop_with_empty_axes" in attrs else 0
    if not axes and noop:
        return []
    if rank is None:
        if axes and all(a >= 0 for a in axes):
            return sorted(axes)
        raise UnsupportedModelError(
            f"{node.op_type} node '{node.name}': the rank of its input '{node.input[0]}' is unknown (shape "
            "inference could not tell), and its axes (" + ("all" if not axes else ", ".join(map(str, axes))) +
            ") need it; give the model's tensors declared shapes, or reduce over non-negative axes")
    if not axes:
        axes = list(range(rank))
    return sorted(a % rank for a in axes)


def is_global_average(b, node, channels_last: bool = False) -> bool:
    """A ReduceMean over every spatial axis of [N, C, spatial...]: global average pooling, as torch's dynamo exporter
    writes nn.AdaptiveAvgPool2d(1) (the TorchScript exporter writes GlobalAveragePool). ``channels_last``: over
    every axis of [N, spatial..., C] but the first and last, two spatial axes or more (a timm Swin's head; a mean
    over axis 1 of [N, T, C] is a sequence's)."""
    rank = b.rank(node.input[0])
    if node.op_type != "ReduceMean" or rank is None or rank < (4 if channels_last else 3):
        return False
    try:
        return _reduced_axes(b, node) == (list(range(1, rank - 1)) if channels_last else list(range(2, rank)))
    except UnsupportedModelError:  # axes computed at run time
        return False


def _expand_back(b, node, g):
    """g of the reduced shape brought back to x's shape."""
    keep = next((a.i for a in node.attribute if a.name == "keepdims"), 1)
    axes = _reduced_axes(b, node)
    if not keep and axes:
        g = b.op("Unsqueeze", [g, b.ints(axes)])
    return b.op("Expand", [g, b.shape_of(node.input[0])]), axes


def _count(b, node):
    x, y = node.input[0], node.output[0]
    xs, ys = b.static_shape(x), b.static_shape(y)
    if xs is not None and ys is not None:
        return b.scalar(float(np.prod(xs)) / float(max(np.prod(ys), 1)), x)
    to = b.float_type(x)
    return b.op("Div", [b.op("Cast", [b.op("Size", [x])], to=to), b.op("Cast", [b.op("Size", [y])], to=to)])


@register("ReduceSum")
def reduce_sum_vjp(b, node, grads, need):
    g, axes = _expand_back(b, node, grads[0])
    return [g] + [None] * (len(node.input) - 1)


@register("ReduceMean")
def reduce_mean_vjp(b, node, grads, need):
    g, axes = _expand_back(b, node, grads[0])
    return [b.op("Div", [g, _count(b, node)])] + [None] * (len(node.input) - 1)


@register("ReduceMax", "ReduceMin")
def reduce_extreme_vjp(b, node, grads, need):
    x = node.input[0]
    g, axes = _expand_back(b, node, grads[0])
    y_back = _expand_back(b, node, node.output[0])[0]
    mask = b.op("Cast", [b.op("Equal", [x, y_back])], to=b.types.get(x, 1))
    ties = b.op("ReduceSum", [mask, b.ints(axes)], keepdims=1) if axes else mask
    share = b.op("Div", [mask, ties])
    return [b.op("Mul", [g, share])] + [None] * (len(node.input) - 1)


@register("ReduceSumSquare")
def reduce_sum_square_vjp(b, node, grads, need):
    """y = sum(x^2): dx = 2 x g."""
    x = node.input[0]
    g, _ = _expand_back(b, node, grads[0])
    return [b.op("Mul", [g, b.op("Add", [x, x])])] + [None] * (len(node.input) - 1)


@register("ReduceL2")
def reduce_l2_vjp(b, node, grads, need):
    """y = sqrt(sum(x^2)): dx = g x / y, 0 where y = 0 (torch.norm's subgradient there)."""
    x = node.input[0]
    g, _ = _expand_back(b, node, grads[0])
    y, _ = _expand_back(b, node, node.output[0])
    return [divide_or_zero(b, b.op("Mul", [g, x]), y)] + [None] * (len(node.input) - 1)


@register("ReduceL1")
def reduce_l1_vjp(b, node, grads, need):
    """y = sum(|x|): dx = g sign(x)."""
    g, _ = _expand_back(b, node, grads[0])
    return [b.op("Mul", [g, b.op("Sign", [node.input[0]])])] + [None] * (len(node.input) - 1)


@register("ReduceLogSum")
def reduce_log_sum_vjp(b, node, grads, need):
    """y = log(sum(x)): dx = g / sum(x) = g exp(-y)."""
    g, _ = _expand_back(b, node, grads[0])
    y, _ = _expand_back(b, node, node.output[0])
    return [b.op("Mul", [g, b.op("Exp", [b.op("Neg", [y])])])] + [None] * (len(node.input) - 1)


@register("ReduceLogSumExp")
def reduce_log_sum_exp_vjp(b, node, grads, need):
    """y = log(sum(exp(x))): dx = g exp(x - y), the softmax over the reduced axes."""
    x = node.input[0]
    g, _ = _expand_back(b, node, grads[0])
    y, _ = _expand_back(b, node, node.output[0])
    return [b.op("Mul", [g, b.op("Exp", [b.op("Sub", [x, y])])])] + [None] * (len(node.input) - 1)


@register("ReduceProd")
def reduce_prod_vjp(b, node, grads, need):
    x = node.input[0]
    g, axes = _expand_back(b, node, grads[0])
    rest = [None] * (len(node.input) - 1)
    if not axes:  # noop_with_empty_axes: y = x
        return [g] + rest
    zero = b.op("Equal", [x, b.scalar(0.0, x)])
    nonzero = b.op("Where", [zero, b.scalar(1.0, x), x])
    product = b.reduce("ReduceProd", nonzero, axes)  # of the non-zero elements, keepdims
    zeros = b.reduce("ReduceSum", b.op("Cast", [zero], to=b.float_type(x)), axes)
    one_zero = b.op("Cast", [b.op("Equal", [zeros, b.scalar(1.0, x)])], to=b.float_type(x))
    no_zero = b.op("Cast", [b.op("Equal", [zeros, b.scalar(0.0, x)])], to=b.float_type(x))
    others = b.op("Where", [zero, b.op("Mul", [product, one_zero]),
                            b.op("Mul", [b.op("Div", [product, nonzero]), no_zero])])
    return [b.op("Mul", [g, others])] + rest


@register("CumSum")
def cumsum_vjp(b, node, grads, need):
    reverse = next((a.i for a in node.attribute if a.name == "reverse"), 0)
    exclusive = next((a.i for a in node.attribute if a.name == "exclusive"), 0)
    return [b.op("CumSum", [grads[0], node.input[1]], exclusive=exclusive, reverse=1 - reverse), None]


@register("CumProd")
def cumprod_vjp(b, node, grads, need):
    x, axis, y, g = node.input[0], node.input[1], node.output[0], grads[0]
    reverse = next((a.i for a in node.attribute if a.name == "reverse"), 0)
    exclusive = next((a.i for a in node.attribute if a.name == "exclusive"), 0)

    def back_sum(t):
        return b.op("CumSum", [t, axis], exclusive=exclusive, reverse=1 - reverse)

    zero = b.op("Equal", [x, b.scalar(0.0, x)])
    seen = b.op("CumSum", [b.op("Cast", [zero], to=b.float_type(x)), axis], reverse=reverse)  # zeros so far
    before = b.op("Equal", [seen, b.scalar(0.0, x)])
    first = b.op("And", [zero, b.op("Equal", [seen, b.scalar(1.0, x)])])
    one = b.scalar(1.0, x)
    at_first = back_sum(b.op("Mul", [g, b.op("CumProd", [b.op("Where", [first, one, x]), axis],
                                             exclusive=exclusive, reverse=reverse)]))
    elsewhere = b.op("Div", [back_sum(b.op("Mul", [g, y])), b.op("Where", [before, x, one])])
    dx = b.op("Where", [before, elsewhere, b.op("Where", [first, at_first, b.scalar(0.0, x)])])
    return [dx, None]


@register("TopK")
def topk_vjp(b, node, grads, need):
    x, indices = node.input[0], node.output[1]
    dx = b.op("ScatterElements", [b.zeros_like(x), indices, grads[0]], axis=_axis(node))
    return [dx, None]


def _axis(node, default=-1):
    return next((a.i for a in node.attribute if a.name == "axis"), default)


@register("Softmax")
def softmax_vjp(b, node, grads, need):
    y, g = node.output[0], grads[0]
    s = b.op("ReduceSum", [b.op("Mul", [g, y]), b.ints([_axis(node)])], keepdims=1)
    return [b.op("Mul", [y, b.op("Sub", [g, s])])]


def log_softmax_grad(b, y: str, g: str, axis: int) -> str:
    """dx = g - exp(y) sum(g, axis) for y = LogSoftmax(x, axis)."""
    s = b.op("ReduceSum", [g, b.ints([axis])], keepdims=1)
    return b.op("Sub", [g, b.op("Mul", [b.op("Exp", [y]), s])])


@register("LogSoftmax")
def log_softmax_vjp(b, node, grads, need):
    return [log_softmax_grad(b, node.output[0], grads[0], _axis(node))]
