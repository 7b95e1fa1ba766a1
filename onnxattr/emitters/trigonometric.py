"""Trigonometric and hyperbolic functions, each dx = g * f'(x) written as data (like PyTorch's derivatives.yaml):

Sin: cos x     Cos: -sin x     Tan: 1 + y^2     Asin: 1 / sqrt(1 - x^2)     Acos: -1 / sqrt(1 - x^2)
Atan: 1 / (1 + x^2)     Sinh: cosh x     Cosh: sinh x     Asinh: 1 / sqrt(x^2 + 1)     Acosh: 1 / sqrt(x^2 - 1)
Atanh: 1 / (1 - x^2)
"""

from onnxattr.emitters.registry import register


def _one_plus(b, x, sign):
    """1 + sign * x^2 (sign = +1 or -1), or x^2 - 1 for sign = 0."""
    square = b.op("Mul", [x, x])
    if sign == 0:
        return b.op("Sub", [square, b.scalar(1.0, x)])
    return b.op("Add" if sign > 0 else "Sub", [b.scalar(1.0, x), square])


# op -> (b, x, y) -> (factor, divide): dx = g * factor, or g / factor where divide
DERIVATIVES = {
    "Sin": lambda b, x, y: (b.op("Cos", [x]), False),
    "Cos": lambda b, x, y: (b.op("Neg", [b.op("Sin", [x])]), False),
    "Tan": lambda b, x, y: (_one_plus(b, y, +1), False),
    "Asin": lambda b, x, y: (b.op("Sqrt", [_one_plus(b, x, -1)]), True),
    "Acos": lambda b, x, y: (b.op("Neg", [b.op("Sqrt", [_one_plus(b, x, -1)])]), True),
    "Atan": lambda b, x, y: (_one_plus(b, x, +1), True),
    "Sinh": lambda b, x, y: (b.op("Cosh", [x]), False),
    "Cosh": lambda b, x, y: (b.op("Sinh", [x]), False),
    "Asinh": lambda b, x, y: (b.op("Sqrt", [_one_plus(b, x, +1)]), True),
    "Acosh": lambda b, x, y: (b.op("Sqrt", [_one_plus(b, x, 0)]), True),
    "Atanh": lambda b, x, y: (_one_plus(b, x, -1), True),
}


@register(*DERIVATIVES)
def trigonometric_vjp(b, node, grads, need):
    factor, divide = DERIVATIVES[node.op_type](b, node.input[0], node.output[0])
    return [b.op("Div" if divide else "Mul", [grads[0], factor])]
