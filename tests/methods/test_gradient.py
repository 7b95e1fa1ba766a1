"""onnxattr/methods/gradient.py: parameters at their edges."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import onnxattr
from tests.models import mlp

X = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)


def relevance(method, **params):
    compiled = onnxattr.compile(mlp()[0], method, **params)
    return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": X})[0]


def test_smoothgrad_without_noise_is_the_gradient():
    """noise_scale = 0 is allowed; onnxruntime's RandomNormalLike aborts the process at scale 0, so no
    noise node may be emitted: every sample is x itself and the mean is the gradient."""
    np.testing.assert_allclose(relevance("smoothgrad", noise_scale=0.0, augment_by_n=5), relevance("gradient"),
                               rtol=1e-6, atol=1e-7)


def test_random_with_zero_stddev_is_zero():
    got = relevance("random", stddev=0.0)
    assert got.shape == X.shape and not got.any()


@pytest.mark.parametrize("method", ["smoothgrad", "random"])
def test_noise_on_a_model_whose_opset_onnxruntime_has_no_random_kernel_for(method):
    """onnxruntime 1.32 cannot load RandomNormalLike in a model of opset >= 22: compile says so by name
    instead of writing a model that fails to load; where it can, the compiled model runs."""
    from onnxattr.methods.gradient import onnxruntime_has_random

    path = Path(__file__).resolve().parents[1] / "thirdparty" / "data" / "opset_sweep_28.onnx"
    if onnxruntime_has_random(28):
        compiled = onnxattr.compile(str(path), method)
        ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
        return
    with pytest.raises(onnxattr.errors.UnsupportedModelError, match="opset 28.*opset 21 or lower"):
        onnxattr.compile(str(path), method)
    assert onnxruntime_has_random(17)
