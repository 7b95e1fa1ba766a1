"""DeepLIFT rescale: summation to delta, the closed form on a one-hidden-layer net, and the reference."""

import numpy as np
import onnxruntime as ort

import onnxattr
from tests.lrp.nets import resnet_like
from tests.models import mlp


def run(model, x, **kw):
    sess = ort.InferenceSession(onnxattr.compile(model, "deep_lift", **kw).SerializeToString())
    return sess.run(None, {"x": x})


def test_sums_to_the_output_difference_on_a_residual_net():
    """No MaxPool: every op is linear or a rescaled ReLU, so sum(map) = y(x) - y(x0) exactly."""
    model = resnet_like(bias=True, last_pool="AveragePool")
    for node in model.graph.node:  # swap the MaxPool for an AveragePool (linear)
        if node.op_type == "MaxPool":
            node.op_type = "AveragePool"
    x = np.random.default_rng(0).standard_normal((3, 2, 8, 8)).astype(np.float32)
    y, r = run(model, x)
    y0 = ort.InferenceSession(model.SerializeToString()).run(None, {"x": np.zeros_like(x)})[0]
    k = y.argmax(1)
    delta = y[np.arange(3), k] - y0[np.arange(3), k]
    np.testing.assert_allclose(r.reshape(3, -1).sum(1), delta, rtol=1e-4, atol=1e-4)


def test_closed_form_on_the_mlp():
    """One hidden ReLU layer: map = (x - x0) * W1 diag(m) W2[:, k], m = (relu(h) - relu(h0)) / (h - h0)."""
    model, (w1, b1, w2) = mlp(softmax=True)
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    ref = 0.5
    _, r = run(model, x, neuron="all", reference_inputs=ref)
    h, h0 = x @ w1 + b1, np.full_like(x, ref) @ w1 + b1
    m = (np.maximum(h, 0) - np.maximum(h0, 0)) / (h - h0)
    want = (x - ref) * ((m * w2.sum(1)) @ w1.T)
    np.testing.assert_allclose(r, want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(r, run(model, x, neuron="all")[1])  # the reference matters
