"""Element-wise arithmetic with broadcasting: Add, Sub, Mul, Div, Sum, Neg, Pow, Sqrt, Exp, Log, Mod, ...

For z = f(a, b) with broadcasting, dL/da = unbroadcast(g * df/da, a).
"""

import numpy as np

from onnxattr.emitters.broadcast import unbroadcast
from onnxattr.emitters.registry import register


@register("Add", "Sum")
def add_vjp(b, node, grads, need):
    """z = a + b (+ ...): every operand gets g, summed back to its shape."""
    g, y = grads[0], node.output[0]
    return [unbroadcast(b, g, x, y) if n else None for x, n in zip(node.input, need)]


@register("Mean")
def mean_vjp(b, node, grads, need):
    """z = (a + b + ...) / n: every operand gets g / n, summed back to its shape."""
    g, y = grads[0], node.output[0]
    share = b.op("Div", [g, b.scalar(float(len(node.input)), y)])
    return [unbroadcast(b, share, x, y) if n else None for x, n in zip(node.input, need)]


@register("Sub")
def sub_vjp(b, node, grads, need):
    """z = a - b: da = g, db = -g."""
    g, y = grads[0], node.output[0]
    a, c = node.input
    ga = unbroadcast(b, g, a, y) if need[0] else None
    gb = unbroadcast(b, b.op("Neg", [g]), c, y) if need[1] else None
    return [ga, gb]


@register("Mul")
def mul_vjp(b, node, grads, need):
    """z = a * b: da = g * b, db = g * a."""
    g, y = grads[0], node.output[0]
    a, c = node.input
    ga = unbroadcast(b, b.op("Mul", [g, c]), a, y) if need[0] else None
    gb = unbroadcast(b, b.op("Mul", [g, a]), c, y) if need[1] else None
    return [ga, gb]


@register("Div")
def div_vjp(b, node, grads, need):
    """z = a / b: da = g / b, db = -g * z / b."""
    g, y = grads[0], node.output[0]
    a, c = node.input
    ga = unbroadcast(b, b.op("Div", [g, c]), a, y) if need[0] else None
    gb = None
    if need[1]:
        t = b.op("Neg", [b.op("Div", [b.op("Mul", [g, y]), c])])
        gb = unbroadcast(b, t, c, y)
    return [ga, gb]


@register("Neg")
def neg_vjp(b, node, grads, need):
    return [b.op("Neg", [grads[0]])]


def divide_or_zero(b, num: str, den: str) -> str:
    """num / den, and 0 where den = 0 (divided by 1 there, so no inf or NaN is formed): the VJPs of Sqrt and
    ReduceL2 at 0, where the derivative is infinite."""
    zero = b.op("Equal", [den, b.scalar(0.0, den)])
    return b.op("Where", [zero, b.scalar(0.0, den), b.op("Div", [num, b.op("Where", [zero, b.scalar(1.0, den), den])])])


@register("Sqrt")
def sqrt_vjp(b, node, grads, need):
    """y = sqrt(x): dx = g / (2 y), and 0 where y = 0, where the derivative is infinite: the convention of
    ReduceL2's VJP and torch's norm, cdist and std backward, which keeps maps through a norm or a standard
    deviation of zero finite (g / 0 would give inf, and NaN after a zero from a ReLU or a Clip)."""
    y = node.output[0]
    return [divide_or_zero(b, grads[0], b.op("Mul", [y, b.scalar(2.0, y)]))]


@register("Exp")
def exp_vjp(b, node, grads, need):
    """y = exp(x): dx = g * y."""
    return [b.op("Mul", [grads[0], node.output[0]])]


@register("Log")
def log_vjp(b, node, grads, need):
    """y = log(x): dx = g / x."""
    return [b.op("Div", [grads[0], node.input[0]])]


@register("Reciprocal")
def reciprocal_vjp(b, node, grads, need):
    """y = 1/x: dx = -g * y^2."""
    y = node.output[0]
    return [b.op("Neg", [b.op("Mul", [grads[0], b.op("Mul", [y, y])])])]


@register("Abs")
def abs_vjp(b, node, grads, need):
    """y = |x|: dx = g * sign(x)."""
    return [b.op("Mul", [grads[0], b.op("Sign", [node.input[0]])])]


@register("Pow")
def pow_vjp(b, node, grads, need):
    """y = a^p: da = g * p * a^(p-1), 0 where p = 0 (not 0 * 0^-1); dp = g * y * log(a), 0 where a = 0 and
    p >= 0 (not 0 * log 0), as torch's pow_backward. An exponent of another type than a (an integer, or another float
    type: Pow allows both) is cast to a's type, and dp cast back to p's."""
    g, y = grads[0], node.output[0]
    a, p = node.input
    ga = gp = None
    own = b.types.get(p) == b.types.get(a)
    pa = p if own else b.op("Cast", [p], to=b.float_type(a))
    zero = b.scalar(0.0, a)
    if need[0]:
        d = b.op("Mul", [pa, b.op("Pow", [a, b.op("Sub", [pa, b.scalar(1.0, a)])])])
        constant = b.value(p)
        if constant is None or not np.all(np.asarray(constant) != 0):  # (a constant p != 0: as written)
            d = b.op("Where", [b.op("Equal", [pa, zero]), zero, d])
        ga = unbroadcast(b, b.op("Mul", [g, d]), a, y)
    if need[1]:
        base_zero = b.op("And", [b.op("Equal", [a, zero]), b.op("GreaterOrEqual", [pa, zero])])
        d = b.op("Mul", [g, b.op("Where", [base_zero, zero, b.op("Mul", [y, b.op("Log", [a])])])])
        gp = unbroadcast(b, d if own else b.op("Cast", [d], to=b.types[p]), p, y)
    return [ga, gp]


@register("Max", "Min")
def minmax_vjp(b, node, grads, need):
    """y = max(a, b, ...): the gradient goes to the operands equal to y (ties share it, as
    every winner gets the full gradient in numpy-style subgradients of torch.maximum/2)."""
    g = grads[0]
    y = node.output[0]
    masks = [b.op("Cast", [b.op("Equal", [x, y])], to=b.types.get(y, 1)) for x in node.input]
    count = b.add_all(masks) if len(masks) > 1 else masks[0]
    share = b.op("Div", [g, count])
    return [
        unbroadcast(b, b.op("Mul", [share, m]), x, y) if n else None
        for x, m, n in zip(node.input, masks, need)
    ]


@register("Where")
def where_vjp(b, node, grads, need):
    """y = where(c, a, b): da = g where c, db = g where not c."""
    g, y = grads[0], node.output[0]
    cond, a, c = node.input
    zero = b.scalar(0.0, y)
    ga = unbroadcast(b, b.op("Where", [cond, g, zero]), a, y) if need[1] else None
    gb = unbroadcast(b, b.op("Where", [cond, zero, g]), c, y) if need[2] else None
    return [None, ga, gb]


@register("Mod")
def mod_vjp(b, node, grads, need):
    """y = fmod(a, b) = a - b * trunc(a / b) (fmod=1, the float form): da = g, db = -g * trunc(a / b), the
    integer trunc(a / b) read back as Round((a - y) / b)."""
    g, y = grads[0], node.output[0]
    a, c = node.input
    ga = unbroadcast(b, g, a, y) if need[0] else None
    gb = None
    if need[1]:
        quotient = b.op("Round", [b.op("Div", [b.op("Sub", [a, y]), c])])
        gb = unbroadcast(b, b.op("Neg", [b.op("Mul", [g, quotient])]), c, y)
    return [ga, gb]
