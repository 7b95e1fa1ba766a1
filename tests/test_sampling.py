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
