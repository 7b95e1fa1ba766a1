"""Conservation: on bias-free ReLU nets the z, flat and w^2 rules (with z on Add and AveragePool and the
winner-takes-all route through MaxPool) hand on exactly the relevance they receive, so the map sums to
the seed, the selected logit. Float32 sums over a few hundred terms: relative tolerance 1e-4.

The input-independent rules (flat, w^2) also put relevance on dead ReLU units; the z rule of an
AveragePool whose window is all zeros then drops it (as in iNNvestigate), so they are checked on a net
whose pools are MaxPools."""

import itertools

import numpy as np
import onnxruntime as ort
import pytest

import onnxattr
from tests.lrp.nets import relu_quantized, resnet_like


def run(model, method, x, options=None, **kw):
    sess = ort.InferenceSession(onnxattr.compile(model, method, **kw).SerializeToString(), options)
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


def gcn_like():
    """Two graph-convolution layers A relu(A X W1) W2 (A a constant normalized adjacency, on the left of
    its MatMul, symmetrically normalized), node mean, dense head; no biases. x: [N, 6 nodes, 4 features]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    adj = (rng.random((6, 6)) < 0.5).astype(np.float32) + np.eye(6, dtype=np.float32)
    adj = np.maximum(adj, adj.T)
    d = 1 / np.sqrt(adj.sum(1))
    adj = (d[:, None] * adj * d[None, :]).astype(np.float32)  # D^-1/2 A D^-1/2: rows do not sum to 1
    w1, w2, w3 = (rng.standard_normal(s).astype(np.float32) for s in ((4, 8), (8, 8), (8, 3)))
    nodes = [helper.make_node("MatMul", ["A", "x"], ["ax"]), helper.make_node("MatMul", ["ax", "W1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["a1"]), helper.make_node("MatMul", ["a1", "W2"], ["h2"]),
             helper.make_node("MatMul", ["A", "h2"], ["ah2"]), helper.make_node("Relu", ["ah2"], ["a2"]),
             helper.make_node("ReduceMean", ["a2", "axes"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W3"], ["y"])]
    for i, n in enumerate(nodes):
        n.name = f"{n.op_type.lower()}{i}"
    inits = [numpy_helper.from_array(a, n) for a, n in ((adj, "A"), (w1, "W1"), (w2, "W2"), (w3, "W3"),
                                                          (np.array([1], np.int64), "axes"))]
    g = helper.make_graph(nodes, "gcn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("method", ["lrp.z", "lrp.z_IB", "lrp.epsilon_IB"])
def test_graph_convolutions_conserve_relevance(method):
    """The adjacency products A X are layers of their own (weight on the left), so the z rule conserves
    through them; the gradient route they had before (R_x = A^T R, which sums to R's sum only where A's
    columns sum to 1) does not."""
    x = np.random.default_rng(4).random((3, 6, 4)).astype(np.float32)
    y, r = run(gcn_like(), method, x)
    np.testing.assert_allclose(r.reshape(3, -1).sum(1), y.max(1), rtol=1e-4, atol=1e-5)
    rows = {row[0]: row[2] for row in onnxattr.api.inspect(gcn_like(), method)}
    assert rows["matmul0"] == rows["matmul4"] == rows["matmul1"] != "gradient", rows


def test_quantized_activations_pass_relevance():
    """A bias-free ReLU net with each Relu's output quantized to 8 bits: a quantizer takes an activation's rule and
    the dequantizer of its codes the same, so the z rule still sums to the logit, and each preset's map stays near
    the float net's, with the Relus kept and with them left to the quantizers (onnxruntime's quantizer's layout):
    the activations move by up to half a step of 1/255 of their range, which moves single values of these maps by
    up to 7 % of the largest (43 % under deep_taylor) but keeps the maps' correlation above 0.97 and their norms
    within 0.5 %. Before, a preset could pass relevance at a QuantizeLinear right after a layer and take the
    gradient at its DequantizeLinear (deep_taylor: an activation after no layer takes the gradient), which scaled
    relevance by the step at every pair: its ResNet18 map fell to 1e-9 of the float net's."""
    x = np.random.default_rng(3).random((3, 2, 8, 8)).astype(np.float32)
    model = resnet_like()
    # as written: optimized, the returned logits are onnxruntime's integer kernels' and the map sums to the float
    # ones of the forward the backward reads (twin_forward), a few codes away
    written = ort.SessionOptions()
    written.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    for q in (relu_quantized(model, x), relu_quantized(model, x, absorb=True)):
        y, r = run(q, "lrp.z", x, written)
        np.testing.assert_allclose(r.reshape(3, -1).sum(1), y.max(1), rtol=1e-4, atol=1e-5)
    methods = ("lrp.z", "lrp.epsilon", "lrp.alpha_1_beta_0", "lrp.epsilon_plus_flat", "deep_taylor",
               "excitation_backprop")
    for q, method in itertools.product((relu_quantized(model, x), relu_quantized(model, x, absorb=True)), methods):
        plain, ours = run(model, method, x)[1].ravel(), run(q, method, x)[1].ravel()
        assert np.corrcoef(plain, ours)[0, 1] > 0.95, method
        assert 0.9 < np.linalg.norm(ours) / np.linalg.norm(plain) < 1.1, method


@pytest.mark.parametrize("method", ["deep_taylor", "lrp.epsilon", "lrp.z_plus"])
def test_codes_moved_between_quantizer_and_dequantizer_keep_the_rule(method):
    """Codes flattened and shaped back between a QuantizeLinear and its DequantizeLinear (a QOperator model's
    Flatten on codes) leave the map as it is: the dequantizer takes its quantizer's rule through the movers. Before,
    it found no quantizer and passed relevance while the quantizer took the gradient (deep_taylor), which scaled
    relevance by 1 / step at each such pair."""
    x = np.random.default_rng(3).random((3, 2, 8, 8)).astype(np.float32)
    model = resnet_like()
    plain, moved = (run(relu_quantized(model, x, absorb=True, moved=m), method, x)[1] for m in (False, True))
    np.testing.assert_allclose(moved, plain, rtol=1e-5, atol=1e-6 * np.abs(plain).max())
