"""Conservation: on bias-free ReLU nets the z, flat and w^2 rules (with z on Add and AveragePool and the
winner-takes-all route through MaxPool) hand on exactly the relevance they receive, so the map sums to
the seed, the selected logit. Float32 sums over a few hundred terms: relative tolerance 1e-4.

The input-independent rules (flat, w^2) also put relevance on dead ReLU units; the z rule of an
AveragePool whose window is all zeros then drops it (as in iNNvestigate), so they are checked on a net
whose pools are MaxPools."""

import numpy as np
import onnxruntime as ort
import pytest

import onnxattr
from tests.lrp.nets import resnet_like


def run(model, method, x, **kw):
    sess = ort.InferenceSession(onnxattr.compile(model, method, **kw).SerializeToString())
    return sess.run(None, {"x": x})


@pytest.mark.parametrize("method,net", [
    ("lrp.z", {}), ("lrp.z_IB", {}), ("lrp.epsilon_IB", {}),
    ("lrp.flat", {"residual": False, "last_pool": "MaxPool"}),
    ("lrp.w_square", {"residual": False, "last_pool": "MaxPool"}),
])
def test_relevance_sums_to_the_logit(method, net):
    x = np.random.default_rng(1).random((3, 2, 8, 8)).astype(np.float32)
    y, r = run(resnet_like(**net), method, x)
    logit = y.max(1)
    np.testing.assert_allclose(r.reshape(3, -1).sum(1), logit, rtol=1e-4, atol=1e-5)


def test_all_mode_sums_to_all_logits():
    x = np.random.default_rng(2).random((2, 2, 8, 8)).astype(np.float32)
    y, r = run(resnet_like(), "lrp.z", x, neuron="all")
    np.testing.assert_allclose(r.reshape(2, -1).sum(1), y.sum(1), rtol=1e-4, atol=1e-5)


def test_bias_absorbs_relevance():
    """With biases the z rule is no longer conservative (the bias keeps its share): the check above
    can fail, so it is meaningful."""
    x = np.random.default_rng(1).random((3, 2, 8, 8)).astype(np.float32)
    y, r = run(resnet_like(bias=True), "lrp.z", x)
    assert np.abs(r.reshape(3, -1).sum(1) - y.max(1)).max() > 1e-2


def test_deep_taylor_conserves_positive_logits_and_zeroes_negative_ones():
    x = np.random.default_rng(3).random((4, 2, 8, 8)).astype(np.float32)
    model = resnet_like()
    y, r = run(model, "deep_taylor", x, neuron="all")
    sess = ort.InferenceSession(onnxattr.compile(model, "deep_taylor", neuron="index").SerializeToString())
    for target in range(4):
        _, rt = sess.run(None, {"x": x, "target": np.full(4, target, np.int64)})
        sums = rt.reshape(4, -1).sum(1)
        logit = y[:, target]
        assert np.all(sums[logit <= 0] == 0)
        # deep Taylor in iNNvestigate copies relevance into both branches of an Add (gradient), so the
        # sum grows there; it is still positive and finite
        assert np.all(np.isfinite(sums)) and np.all(sums[logit > 0] > 0)
