"""onnxattr/emitters/activations.py: activation VJPs (inputs kept away from kinks)."""

import math

import numpy as np
import pytest

from tests.vjp_check import check_vjp

rng = np.random.default_rng(4)


def away_from(x, points, margin=0.05):
    for p in points:
        close = np.abs(x - p) < margin
        x = np.where(close, p + margin * np.sign(x - p + 1e-12) * 2, x)
    return x


CASES = [
    ("Relu", {}, [0]), ("LeakyRelu", {"alpha": 0.1}, [0]), ("Elu", {"alpha": 0.7}, [0]),
    ("Selu", {}, [0]), ("Sigmoid", {}, []), ("Tanh", {}, []),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}, [-0.4 / 0.3, 0.6 / 0.3]),
    ("HardSwish", {}, [-3, 3]), ("Softplus", {}, []), ("Softsign", {}, []), ("Erf", {}, []),
    ("Gelu", {}, []), ("Gelu", {"approximate": "tanh"}, []),
]


_erf = np.vectorize(math.erf)
# onnx's reference Erf rounds to float32, too coarse for a difference quotient: use float64 numpy
NUMPY_REF = {
    "Erf": lambda f: _erf(f["x"]),
    "Gelu": lambda f: 0.5 * f["x"] * (1 + _erf(f["x"] / math.sqrt(2))),
}


@pytest.mark.parametrize("op,attrs,kinks", CASES)
def test_activation_vjp(op, attrs, kinks):
    x = away_from(rng.standard_normal((2, 3, 5)) * 3, kinks)
    opset = 20 if op == "Gelu" else 17
    ref = None if attrs else NUMPY_REF.get(op)
    check_vjp(op, [("x", x, False)], attrs, dynamic=(0,), opset=opset, numpy_ref=ref)


def test_prelu_vjp():
    x = away_from(rng.standard_normal((2, 3, 4)), [0])
    check_vjp("PRelu", [("x", x, False), ("s", rng.random((3, 1)), False)], wrt=["x", "s"])


def test_clip_vjp():
    x = away_from(rng.standard_normal((3, 4)) * 2, [-1, 0.5])
    check_vjp("Clip", [("x", x, False), ("lo", np.array(-1.0), True), ("hi", np.array(0.5), True)])
