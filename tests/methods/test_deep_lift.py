"""DeepLIFT rescale: summation to delta, the closed form on a one-hidden-layer net, and the reference; DeepLIFT SHAP
as DeepLIFT averaged over a set of baselines."""

import numpy as np
import pytest
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


def test_a_unit_whose_input_equals_its_reference_takes_the_gradient():
    """z = x1 - x2 with x = [1, 1] and reference 0: dz = 0 at the Sigmoid, where the rescale multiplier
    dy/dz is 0/0; DeepLIFT takes its limit, the gradient sigmoid'(0) = 1/4, so x1 and x2 get +1/4 and -1/4
    (their shares cancel, as dy = 0 requires), not 0 each."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Sigmoid", ["z"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                          [numpy_helper.from_array(np.array([[1.0], [-1.0]], np.float32), "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    compiled = onnxattr.compile(model, "deep_lift", neuron="all")
    x = np.ones((1, 2), np.float32)
    r = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]
    np.testing.assert_allclose(r, [[0.25, -0.25]], rtol=1e-6)


def test_deep_lift_shap_is_deep_lift_averaged_over_the_baselines():
    """Each chunk of baselines runs as copies of the batch in a Loop, with the reference forward inside it:
    the map equals the mean of deep_lift against each baseline, whatever the chunk, and sums to y(x) minus the
    mean of y(baseline) on a net without MaxPool (Captum's DeepLiftShap on eight nets: test_oracles.py)."""
    model = resnet_like(bias=True, last_pool="AveragePool")
    for node in model.graph.node:
        if node.op_type == "MaxPool":
            node.op_type = "AveragePool"
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    baselines = rng.standard_normal((5, 2, 8, 8)).astype(np.float32)
    want = np.mean([run(model, x, reference_inputs=b)[1] for b in baselines], axis=0)
    for chunk in (1, 2, 16):
        compiled = onnxattr.compile(model, "deep_lift_shap", baselines=baselines, chunk_size=chunk)
        y, r = ort.InferenceSession(compiled.SerializeToString()).run(None, {"x": x})
        np.testing.assert_allclose(r, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    sess = ort.InferenceSession(model.SerializeToString())
    k = y.argmax(1)
    y0 = np.mean([sess.run(None, {"x": np.broadcast_to(b, x.shape).copy()})[0][np.arange(2), k] for b in baselines], 0)
    np.testing.assert_allclose(r.reshape(2, -1).sum(1), y[np.arange(2), k] - y0, rtol=1e-4, atol=1e-4)


def test_deep_lift_shap_with_one_baseline_is_deep_lift():
    model, _ = mlp(softmax=False)
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    want = run(model, x, reference_inputs=0.5)[1]
    sess = ort.InferenceSession(onnxattr.compile(model, "deep_lift_shap", baselines=0.5).SerializeToString())
    np.testing.assert_allclose(sess.run(["relevance"], {"x": x})[0], want, rtol=1e-6, atol=1e-7)
    with pytest.raises(onnxattr.errors.UsageError, match=r"baselines of shape \[5\] do not broadcast"):
        onnxattr.compile(model, "deep_lift_shap", baselines=np.zeros((2, 5), np.float32))


def test_every_rescaled_nonlinearity_has_a_gradient_to_fall_back_to():
    """The rescale rule takes the gradient where x is at its reference: Mish and Celu had none, and deep_lift
    crashed with KeyError 'Mish'."""
    from onnxattr.emitters import VJPS
    from onnxattr.methods.deep_lift import NONLINEAR

    assert NONLINEAR <= set(VJPS), sorted(NONLINEAR - set(VJPS))
