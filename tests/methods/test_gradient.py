"""onnxattr/methods/gradient.py: parameters at their edges."""

import numpy as np
import onnxruntime as ort

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
