"""onnxattr/emitters/normalization.py: BatchNormalization, LRN, LayerNormalization, InstanceNormalization."""

import numpy as np
import pytest

from tests.vjp_check import check_vjp

rng = np.random.default_rng(8)
r = rng.standard_normal


@pytest.mark.parametrize("dynamic", [(), (0, 2, 3)])
def test_batchnorm(dynamic):
    c = 3
    check_vjp("BatchNormalization",
              [("x", r((2, c, 4, 5)), False), ("g", r(c), True), ("b", r(c), True), ("m", r(c), True),
               ("v", rng.random(c) + 0.5, True)], {"epsilon": 1e-3}, dynamic=dynamic)


def lrn_numpy(x, size, alpha, beta, bias):
    """The ONNX spec's LRN in float64 (onnx's reference LRN disagrees with the spec and onnxruntime)."""
    sq = np.zeros_like(x)
    channels = x.shape[1]
    for c in range(channels):
        lo, hi = max(0, c - (size - 1) // 2), min(channels - 1, c + size // 2)
        sq[:, c] = (x[:, lo:hi + 1] ** 2).sum(1)
    return x / (bias + alpha / size * sq) ** beta


@pytest.mark.parametrize("size", [3, 5])  # onnxruntime accepts odd sizes only
def test_lrn(size):
    attrs = {"size": size, "alpha": 0.5, "beta": 0.75, "bias": 1.5}
    check_vjp("LRN", [("x", r((2, 6, 3, 3)), False)], attrs,
              numpy_ref=lambda f: lrn_numpy(f["x"], **attrs))


def test_layernorm():
    check_vjp("LayerNormalization", [("x", r((2, 3, 6)), False), ("g", r(6), True), ("b", r(6), True)],
              {"axis": -1, "epsilon": 1e-5})


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 4)])
@pytest.mark.parametrize("const_scale", [True, False])
def test_instancenorm(shape, const_scale):
    """Normalized over the spatial axes of each (sample, channel); the scale per channel, a constant or
    fed (then reshaped in the graph)."""
    check_vjp("InstanceNormalization", [("x", r(shape), False), ("s", r(3), const_scale), ("b", r(3), True)],
              {"epsilon": 1e-3}, dynamic=(0,))


@pytest.mark.parametrize("op,shape,param", [("InstanceNormalization", (2, 3, 5), (3,)),
                                            ("LayerNormalization", (2, 3, 6), (6,)),
                                            ("LayerNormalization", (2, 3, 6), (3, 6))])
def test_norm_scale_and_bias_that_vary(op, shape, param):
    """A conditional norm, whose scale and bias are computed from the input: both get their gradient."""
    attrs = {"epsilon": 1e-3} if op == "InstanceNormalization" else {"axis": -len(param), "epsilon": 1e-3}
    check_vjp(op, [("x", r(shape), False), ("s", r(param), False), ("b", r(param), False)], attrs,
              wrt=["x", "s", "b"])
