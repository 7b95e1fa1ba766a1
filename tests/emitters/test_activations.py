"""onnxattr/emitters/activations.py: activation VJPs (inputs kept away from kinks)."""

import math

import numpy as np
import pytest

from onnxattr.emitters.activations import positive_flag
from tests.models import run_emitted
from tests.vjp_check import check_vjp, run_vjp

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
    ("Gelu", {}, []), ("Gelu", {"approximate": "tanh"}, []), ("Celu", {"alpha": 0.8}, [0]), ("Mish", {}, []),
    ("ThresholdedRelu", {"alpha": 0.5}, [0.5]), ("Shrink", {"lambd": 0.4, "bias": 0.2}, [-0.4, 0.4]),
    ("Shrink", {}, [-0.5, 0.5]), ("Swish", {"alpha": 1.5}, []),
]


_erf = np.vectorize(math.erf)
# onnx's reference Erf rounds to float32, too coarse for a difference quotient: use float64 numpy
NUMPY_REF = {
    "Erf": lambda f: _erf(f["x"]),
    "Gelu": lambda f: 0.5 * f["x"] * (1 + _erf(f["x"] / math.sqrt(2))),
    "Mish": lambda f: f["x"] * np.tanh(np.logaddexp(0.0, f["x"])),
}


@pytest.mark.parametrize("op,attrs,kinks", CASES)
def test_activation_vjp(op, attrs, kinks):
    x = away_from(rng.standard_normal((2, 3, 5)) * 3, kinks)
    opset = {"Gelu": 20, "Mish": 18, "Swish": 24}.get(op, 17)
    ref = None if attrs else NUMPY_REF.get(op)
    check_vjp(op, [("x", x, False)], attrs, dynamic=(0,), opset=opset, numpy_ref=ref)


def test_prelu_vjp():
    x = away_from(rng.standard_normal((2, 3, 4)), [0])
    check_vjp("PRelu", [("x", x, False), ("s", rng.random((3, 1)), False)], wrt=["x", "s"])


def test_clip_vjp():
    x = away_from(rng.standard_normal((3, 4)) * 2, [-1, 0.5])
    check_vjp("Clip", [("x", x, False), ("lo", np.array(-1.0), True), ("hi", np.array(0.5), True)])


# every kind of float32: zeros of both signs, the smallest subnormal, normals, the largest, infinities
FLAG_VALUES = np.array([0.0, -0.0, 2.0**-149, 1e-45, 1e-40, 2.0**-126, 1e-30, 1e-7, 0.5, 1.0, 3e38, np.inf,
                        -2.0**-149, -1e-30, -1.0, -3e38, -np.inf], np.float32)


@pytest.mark.parametrize("shape,dtype,ops", [
    ((37 * 17,), np.float32, ["Mul", "HardSigmoid"]),
    ((2, 32, 17, 37), np.float32, ["Conv", "HardSigmoid"]),  # conv.channel_scale: the blocked layout
    ((2, 3, 17, 37), np.float32, ["Mul", "HardSigmoid"]),
    ((37 * 17,), np.float64, ["Greater", "Cast"]),
])
def test_positive_flag_is_exact(shape, dtype, ops):
    """[v > 0] through onnxruntime: 1 for every positive float (the smallest subnormal and inf
    included), 0 for zeros of both signs and every negative, on each of the three paths."""
    v = np.resize(FLAG_VALUES, shape).astype(dtype)  # long enough for the vectorized kernels
    flag, emitted = run_emitted(positive_flag, v)
    assert emitted == ops
    np.testing.assert_array_equal(flag, (v > 0).astype(dtype))


@pytest.mark.parametrize("op,attrs,inputs,want", [
    # PyTorch's conventions at kinks (module docstring): the kink values themselves
    ("Relu", {}, [], [0, 0, 1]),
    ("LeakyRelu", {"alpha": 0.1}, [], [0.1, 0.1, 1]),
    ("PRelu", {}, [("slope", np.array([0.25], np.float32), True)], [0.25, 0.25, 1]),
    ("Elu", {"alpha": 0.7}, [], [0.7 * math.exp(-1), 0.7, 1]),
    ("Celu", {"alpha": 0.5}, [], [math.exp(-2), 1, 1]),
    ("Clip", {}, [("lo", np.array(-1, np.float32), True), ("hi", np.array(0, np.float32), True)], [1, 1, 0]),
    ("ThresholdedRelu", {"alpha": 0.0}, [], [0, 0, 1]),
    ("Shrink", {"lambd": 1.0}, [], [0, 0, 0]),
])
def test_conventions_at_kinks(op, attrs, inputs, want):
    """x = [-1, 0, 1]: Relu'(0) = 0, LeakyRelu'(0) = PRelu'(0) = slope, Elu'(0) = alpha, Celu'(0) = 1; Clip to [-1, 0]
    passes the gradient at both bounds (min <= x <= max) and not above; ThresholdedRelu and Shrink (torch's
    Hardshrink) pass nothing at their threshold."""
    x = np.array([-1, 0, 1], np.float32)
    (got,) = run_vjp(op, [("x", x, False), *inputs], np.ones(3, np.float32), attrs)
    np.testing.assert_allclose(got, want, rtol=1e-6)
