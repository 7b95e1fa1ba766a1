"""onnxattr/sampling.py: the Loop over samples equals the sum of single gradients, and its body holds
its own copies of the weights (onnxruntime optimizes a subgraph's own initializers only)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import onnxattr
from tests.lrp.nets import resnet_like
from tests.models import mlp


def run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["relevance"], {session.get_inputs()[0].name: x})[0]


def loop_body(model):
    loop = next(n for n in model.graph.node if n.op_type == "Loop")
    return next(a.g for a in loop.attribute if a.name == "body")


@pytest.mark.parametrize("chunk", [1, 3, 16])
def test_integrated_gradients_is_the_mean_of_path_gradients(chunk):
    """IG = x * mean_k grad(k/steps * x) (zero reference, seed on every logit), with gradients from the compiled gradient
    graph one point at a time; 7 steps in chunks of 1, 3 (a partial last chunk) and 16 (one trip)."""
    model = resnet_like(bias=True)
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8)).astype(np.float32)
    gradient = onnxattr.compile(model, "gradient", neuron="all")
    expected = x * np.mean([run(gradient, (k / 7 * x).astype(np.float32)) for k in range(7)], axis=0)
    ig = onnxattr.compile(model, "integrated_gradients", neuron="all", steps=7, chunk_size=chunk)
    np.testing.assert_allclose(run(ig, x), expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_body_holds_its_weights():
    model = resnet_like(bias=True)
    ig = onnxattr.compile(model, "integrated_gradients", steps=4)
    body = loop_body(ig)
    body_inits = {t.name: numpy_helper.to_array(t) for t in body.initializer}
    outer = {t.name for t in ig.graph.initializer}
    large = lambda t: t.data_type == onnx.TensorProto.FLOAT and np.prod(t.dims) >= 2  # noqa: E731
    # every large float constant a body node reads is the body's own
    for node in body.node:
        for name in node.input:
            assert name not in outer or not large(next(t for t in ig.graph.initializer if t.name == name)), name
    # each of the forward's float weights appears in the body, bit for bit
    body_values = list(body_inits.values())
    for t in model.graph.initializer:
        w = numpy_helper.to_array(t)
        if large(t):
            assert any(v.shape == w.shape and np.array_equal(v, w) for v in body_values), t.name


def test_integrated_gradients_with_a_reference():
    """IG(x; r) = (x - r) * mean_k grad(r + k/steps * (x - r)), for a per-channel reference array."""
    model = resnet_like(bias=True)
    x = np.random.default_rng(1).standard_normal((2, 2, 8, 8)).astype(np.float32)
    ref = np.array([0.5, -0.25], np.float32).reshape(2, 1, 1)
    gradient = onnxattr.compile(model, "gradient", neuron="all")
    points = [(ref + k / 5 * (x - ref)).astype(np.float32) for k in range(5)]
    expected = (x - ref) * np.mean([run(gradient, p) for p in points], axis=0)
    ig = onnxattr.compile(model, "integrated_gradients", neuron="all", steps=5, reference_inputs=ref, chunk_size=2)
    got = run(ig, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    zero_ref = run(onnxattr.compile(model, "integrated_gradients", neuron="all", steps=5), x)
    assert np.abs(got - zero_ref).max() > 1e-2 * np.abs(zero_ref).max()  # the reference matters here


@pytest.mark.parametrize("post,fn", [("abs", np.abs), ("square", np.square)])
def test_smoothgrad_postprocess_applies_to_each_sample(post, fn):
    """With noise_scale = 0 every sample is the gradient itself: the map is post(gradient); with noise,
    the mean of post(g_k) is not post(mean g_k), which a post applied after the mean would give."""
    model = resnet_like(bias=True)
    x = np.random.default_rng(2).standard_normal((2, 2, 8, 8)).astype(np.float32)
    grad = run(onnxattr.compile(model, "gradient"), x)
    noiseless = run(onnxattr.compile(model, "smoothgrad", augment_by_n=3, noise_scale=0.0, postprocess=post), x)
    np.testing.assert_allclose(noiseless, fn(grad), rtol=1e-5, atol=1e-7 * np.abs(fn(grad)).max())
    assert (noiseless >= 0).all()
    plain = run(onnxattr.compile(model, "smoothgrad", augment_by_n=8, noise_scale=1.0, seed=3), x)
    post_each = run(onnxattr.compile(model, "smoothgrad", augment_by_n=8, noise_scale=1.0, seed=3,
                                     postprocess=post), x)
    assert (post_each >= fn(plain) - 1e-6).all() and np.abs(post_each - fn(plain)).max() > 1e-3 * post_each.max()


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_a_batch_of_0_samples_gives_an_empty_map(method):
    """Run directly in onnxruntime (the API refuses empty data), a dynamic batch of 0 goes through the
    Loop: the accumulator's reshape takes the chunk's count, and its 0 is a size, not 'copy'."""
    model, _ = mlp()  # (resnet_like's own forward cannot take 0 samples: its Reshape infers a -1)
    compiled = onnxattr.compile(model, method, steps=3) if method == "integrated_gradients" else \
        onnxattr.compile(model, method, augment_by_n=3)
    assert run(compiled, np.zeros((0, 6), np.float32)).shape == (0, 6)


def masked_attention():
    """x [N, S, D] -> softmax(x x^T + (1 - mask) * -1e4) x, scaled by a shared feed w [D], mean over S, @ W:
    mask [N, S] is per sample (its first axis has x's name), w is the same for every sample. The mask's
    bias is flattened and reshaped by x's [N, S]."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "xt"], ["scores"]),
             helper.make_node("Sub", ["one", "mask"], ["off"]),
             helper.make_node("Mul", ["off", "big"], ["bias2"]),
             # flattened outside, reshaped by x's own [N, S] as torch's attention does: only a mask
             # recomputed from repeated rows inside the Loop fits the points
             helper.make_node("Reshape", ["bias2", "flat"], ["bias_flat"]),
             helper.make_node("Shape", ["x"], ["x_shape"], end=2),
             helper.make_node("Reshape", ["bias_flat", "x_shape"], ["bias_ns"]),
             helper.make_node("Unsqueeze", ["bias_ns", "axis1"], ["bias"]),
             helper.make_node("Add", ["scores", "bias"], ["masked"]),
             helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "x"], ["h"]),
             helper.make_node("Mul", ["h", "w"], ["hw"]),
             helper.make_node("ReduceMean", ["hw", "axis1"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W"], ["y"])]
    inits = [numpy_helper.from_array(np.array(1, np.float32), "one"),
             numpy_helper.from_array(np.array(-1e4, np.float32), "big"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat"),
             numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")]
    g = helper.make_graph(nodes, "masked_attention",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5, 4]),
                           helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 5]),
                           helper.make_tensor_value_info("w", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_a_feed_with_the_batch_axis_is_repeated_for_every_point(method):
    """A per-sample feed (an attention mask [N, S]) goes with its sample's points inside the Loop; a feed
    without the batch axis (w [D]) is shared. IG equals x times the mean of the gradient graph's maps
    at k/steps * x with the same feeds; SmoothGrad without noise equals the gradient. Each sample's map
    equals that sample explained alone, and the mask changes it."""
    model = masked_attention()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    feeds = {"mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 1, 0, 1]], np.float32),
             "w": np.array([1.0, -0.5, 2.0, 0.25], np.float32)}
    gradient = ort.InferenceSession(onnxattr.compile(model, "gradient", neuron="all", input="x").SerializeToString())
    grad_at = lambda p: gradient.run(["relevance"], {"x": p.astype(np.float32), **feeds})[0]  # noqa: E731
    if method == "integrated_gradients":
        compiled = onnxattr.compile(model, method, neuron="all", input="x", steps=6, chunk_size=4)
        expected = x * np.mean([grad_at(k / 6 * x) for k in range(6)], axis=0)
    else:
        compiled = onnxattr.compile(model, method, neuron="all", input="x", augment_by_n=5, noise_scale=0.0, chunk_size=2)
        expected = grad_at(x)
    session = ort.InferenceSession(compiled.SerializeToString())
    got = session.run(["relevance"], {"x": x, **feeds})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    for n in range(3):
        alone = session.run(["relevance"], {"x": x[n:n + 1], "mask": feeds["mask"][n:n + 1], "w": feeds["w"]})[0]
        np.testing.assert_allclose(got[n:n + 1], alone, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    unmasked = session.run(["relevance"], {"x": x, "mask": np.ones((3, 5), np.float32), "w": feeds["w"]})[0]
    assert np.abs(unmasked[0] - got[0]).max() > 1e-2 * np.abs(got[0]).max()
