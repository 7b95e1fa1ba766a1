"""Element-wise activations: dx = g * f'(x), written with the forward input x or output y.

Conventions at kinks follow PyTorch's autograd: Relu'(0) = 0, LeakyRelu'(0) = slope,
Clip passes the gradient where min <= x <= max, HardSigmoid where 0 < alpha*x+beta < 1.
"""

import math

from onnx import TensorProto

from onnxattr.emitters.broadcast import unbroadcast
from onnxattr.emitters.conv import channel_scale
from onnxattr.emitters.registry import register


def _where_positive(b, x, then, other):
    return b.op("Where", [b.op("Greater", [x, b.scalar(0.0, x)]), then, other])


@register("Relu")
def relu_vjp(b, node, grads, need):
    """dx = g * [x > 0], read as [y > 0] (the same mask): then nothing but the Relu reads x, and
    onnxruntime can fuse the Relu into the Conv/Gemm before it."""
    y = node.output[0]
    return [mask_positive(b, y, grads[0])]


def mask_positive(b, y, g):
    """g * [y > 0], equal to Where(y > 0, g, 0) for finite g (onnxruntime's Where with a broadcast scalar
    runs several times slower than a Mul by a flag)."""
    return b.op("Mul", [g, positive_flag(b, y)])


# Scaling by 2^127 lifts every v >= 2^-149 to at least 2^-22 (or inf); a HardSigmoid of slope 2^127 then
# saturates at 1, and every v <= 0 gives 0. onnxruntime's CPU Sign is several times slower than both.
_LIFT = 2.0**127


def positive_flag(b, v) -> str:
    """[v > 0] (1 or 0; subnormals, inf and -0 included): HardSigmoid(2^127 v, alpha=2^127, beta=0) for
    float32 (2^127 overflows float16; onnxruntime's CPU HardSigmoid is float32 only), with the lift as
    conv.channel_scale where it applies (onnxruntime fuses the Conv and HardSigmoid and stays in its
    blocked layout), else a Mul; other types Cast(v > 0)."""
    if b.types.get(v) != TensorProto.FLOAT:
        return b.op("Cast", [b.op("Greater", [v, b.scalar(0.0, v)])], to=b.float_type(v))
    lifted = channel_scale(b, v, _LIFT) or b.op("Mul", [v, b.scalar(_LIFT, v)])
    return b.op("HardSigmoid", [lifted], alpha=_LIFT, beta=0.0)


@register("LeakyRelu")
def leaky_relu_vjp(b, node, grads, need):
    """dx = g if x > 0 else alpha * g."""
    alpha = next((a.f for a in node.attribute if a.name == "alpha"), 0.01)
    x, g = node.input[0], grads[0]
    return [_where_positive(b, x, g, b.op("Mul", [g, b.scalar(alpha, x)]))]


@register("PRelu")
def prelu_vjp(b, node, grads, need):
    """dx = g if x > 0 else slope * g (slope broadcast to x)."""
    x, slope = node.input
    g = grads[0]
    gx = _where_positive(b, x, g, b.op("Mul", [g, slope]))
    gs = None
    if need[1]:
        masked = _where_positive(b, x, b.scalar(0.0, x), b.op("Mul", [g, x]))
        gs = unbroadcast(b, masked, slope, node.output[0])
    return [gx, gs]


@register("Elu")
def elu_vjp(b, node, grads, need):
    """dx = g if x > 0 else g * (y + alpha)."""
    alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
    x, y, g = node.input[0], node.output[0], grads[0]
    neg = b.op("Mul", [g, b.op("Add", [y, b.scalar(alpha, x)])])
    return [_where_positive(b, x, g, neg)]


@register("Selu")
def selu_vjp(b, node, grads, need):
    """dx = gamma * g if x > 0 else g * (y + gamma * alpha)."""
    attrs = {a.name: a.f for a in node.attribute}
    alpha = attrs.get("alpha", 1.67326319217681884765625)
    gamma = attrs.get("gamma", 1.05070102214813232421875)
    x, y, g = node.input[0], node.output[0], grads[0]
    pos = b.op("Mul", [g, b.scalar(gamma, x)])
    neg = b.op("Mul", [g, b.op("Add", [y, b.scalar(gamma * alpha, x)])])
    return [_where_positive(b, x, pos, neg)]


@register("Celu")
def celu_vjp(b, node, grads, need):
    """y = max(0, x) + min(0, alpha (exp(x / alpha) - 1)): dx = g if x > 0 else g * (y / alpha + 1)
    (exp(x / alpha) from y; 1 at x = 0, as PyTorch)."""
    alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
    x, y, g = node.input[0], node.output[0], grads[0]
    neg = b.op("Mul", [g, b.op("Add", [b.op("Div", [y, b.scalar(alpha, x)]), b.scalar(1.0, x)])])
    return [_where_positive(b, x, g, neg)]


@register("Clip")
def clip_vjp(b, node, grads, need):
    """dx = g * [min <= x <= max] (bounds are inputs: canonicalize lifts models to opset 17)."""
    x, g = node.input[0], grads[0]
    mask = None
    lo = node.input[1] if len(node.input) > 1 and node.input[1] else None
    hi = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if lo is not None:
        mask = b.op("GreaterOrEqual", [x, lo])
    if hi is not None:
        m2 = b.op("LessOrEqual", [x, hi])
        mask = m2 if mask is None else b.op("And", [mask, m2])
    if mask is None:
        return [g] + [None] * (len(node.input) - 1)
    return [b.op("Where", [mask, g, b.scalar(0.0, x)])] + [None] * (len(node.input) - 1)


@register("Sigmoid")
def sigmoid_vjp(b, node, grads, need):
    """dx = g * y * (1 - y)."""
    y = node.output[0]
    d = b.op("Mul", [y, b.op("Sub", [b.scalar(1.0, y), y])])
    return [b.op("Mul", [grads[0], d])]


@register("Tanh")
def tanh_vjp(b, node, grads, need):
    """dx = g * (1 - y^2)."""
    y = node.output[0]
    d = b.op("Sub", [b.scalar(1.0, y), b.op("Mul", [y, y])])
    return [b.op("Mul", [grads[0], d])]


@register("HardSigmoid")
def hard_sigmoid_vjp(b, node, grads, need):
    """y = max(0, min(1, alpha x + beta)): dx = alpha * g where 0 < alpha x + beta < 1."""
    attrs = {a.name: a.f for a in node.attribute}
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    x, g = node.input[0], grads[0]
    z = b.op("Add", [b.op("Mul", [x, b.scalar(alpha, x)]), b.scalar(beta, x)])
    inside = b.op("And", [b.op("Greater", [z, b.scalar(0.0, x)]), b.op("Less", [z, b.scalar(1.0, x)])])
    return [b.op("Where", [inside, b.op("Mul", [g, b.scalar(alpha, x)]), b.scalar(0.0, x)])]


@register("HardSwish")
def hard_swish_vjp(b, node, grads, need):
    """y = x * hardsigmoid(x; 1/6, 1/2): dx = 0 (x < -3), g * (x/3 + 1/2) (x <= 3), g (x > 3)."""
    x, g = node.input[0], grads[0]
    mid = b.op("Mul", [g, b.op("Add", [b.op("Div", [x, b.scalar(3.0, x)]), b.scalar(0.5, x)])])
    upper = b.op("Where", [b.op("LessOrEqual", [x, b.scalar(3.0, x)]), mid, g])
    return [b.op("Where", [b.op("Less", [x, b.scalar(-3.0, x)]), b.scalar(0.0, x), upper])]


@register("Softplus")
def softplus_vjp(b, node, grads, need):
    """y = log(1 + e^x): dx = g * sigmoid(x)."""
    return [b.op("Mul", [grads[0], b.op("Sigmoid", [node.input[0]])])]


@register("Mish")
def mish_vjp(b, node, grads, need):
    """y = x tanh(softplus(x)): dx = g * (t + x (1 - t^2) sigmoid(x)), t = tanh(softplus(x))."""
    x, g = node.input[0], grads[0]
    t = b.op("Tanh", [b.op("Softplus", [x])])
    slope = b.op("Mul", [b.op("Mul", [x, b.op("Sub", [b.scalar(1.0, x), b.op("Mul", [t, t])])]),
                         b.op("Sigmoid", [x])])
    return [b.op("Mul", [g, b.op("Add", [t, slope])])]


@register("Softsign")
def softsign_vjp(b, node, grads, need):
    """y = x / (1 + |x|): dx = g / (1 + |x|)^2."""
    x = node.input[0]
    d = b.op("Add", [b.scalar(1.0, x), b.op("Abs", [x])])
    return [b.op("Div", [grads[0], b.op("Mul", [d, d])])]


@register("Erf")
def erf_vjp(b, node, grads, need):
    """dx = g * 2/sqrt(pi) * exp(-x^2)."""
    x = node.input[0]
    e = b.op("Exp", [b.op("Neg", [b.op("Mul", [x, x])])])
    return [b.op("Mul", [grads[0], b.op("Mul", [e, b.scalar(2.0 / math.sqrt(math.pi), x)])])]


@register("Gelu")
def gelu_vjp(b, node, grads, need):
    """exact: dx = g * (Phi(x) + x phi(x)); tanh: dx = g * d/dx[x/2 (1 + tanh(u))],
    u = sqrt(2/pi) (x + 0.044715 x^3)."""
    approx = next((a.s.decode() for a in node.attribute if a.name == "approximate"), "none")
    x, g = node.input[0], grads[0]
    s = lambda v: b.scalar(v, x)  # noqa: E731
    if approx == "tanh":
        c = math.sqrt(2.0 / math.pi)
        x2 = b.op("Mul", [x, x])
        u = b.op("Mul", [b.op("Add", [x, b.op("Mul", [b.op("Mul", [x2, x]), s(0.044715)])]), s(c)])
        t = b.op("Tanh", [u])
        du = b.op("Mul", [s(c), b.op("Add", [s(1.0), b.op("Mul", [x2, s(3 * 0.044715)])])])
        sech2 = b.op("Sub", [s(1.0), b.op("Mul", [t, t])])
        d = b.op("Add", [
            b.op("Mul", [s(0.5), b.op("Add", [s(1.0), t])]),
            b.op("Mul", [b.op("Mul", [s(0.5), x]), b.op("Mul", [sech2, du])]),
        ])
    else:
        cdf = b.op("Mul", [s(0.5), b.op("Add", [s(1.0), b.op("Erf", [b.op("Mul", [x, s(1 / math.sqrt(2))])])])])
        pdf = b.op("Mul", [b.op("Exp", [b.op("Mul", [b.op("Mul", [x, x]), s(-0.5)])]), s(1 / math.sqrt(2 * math.pi))])
        d = b.op("Add", [cdf, b.op("Mul", [x, pdf])])
    return [b.op("Mul", [g, d])]


@register("ThresholdedRelu")
def thresholded_relu_vjp(b, node, grads, need):
    """y = x if x > alpha else 0: dx = g * [x > alpha]."""
    x = node.input[0]
    alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
    flag = b.op("Cast", [b.op("Greater", [x, b.scalar(alpha, x)])], to=b.float_type(x))
    return [b.op("Mul", [grads[0], flag])]


@register("Shrink")
def shrink_vjp(b, node, grads, need):
    """y = x - bias if x > lambd, x + bias if x < -lambd, else 0: dx = g * [|x| > lambd]."""
    x = node.input[0]
    lambd = next((a.f for a in node.attribute if a.name == "lambd"), 0.5)
    flag = b.op("Cast", [b.op("Greater", [b.op("Abs", [x]), b.scalar(lambd, x)])], to=b.float_type(x))
    return [b.op("Mul", [grads[0], flag])]


@register("Swish")
def swish_vjp(b, node, grads, need):
    """y = x * sigmoid(alpha x) (opset 24): dx = g * (s + alpha x s (1 - s)), s = sigmoid(alpha x)."""
    x = node.input[0]
    alpha = next((a.f for a in node.attribute if a.name == "alpha"), 1.0)
    ax = b.op("Mul", [x, b.scalar(alpha, x)])
    sig = b.op("Sigmoid", [ax])
    slope = b.op("Mul", [b.op("Mul", [ax, sig]), b.op("Sub", [b.scalar(1.0, x), sig])])
    return [b.op("Mul", [grads[0], b.op("Add", [sig, slope])])]
