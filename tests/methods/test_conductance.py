"""conductance (onnxattr/methods/conductance.py) against a numpy computation of its sum, and its identities."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import onnxattr
from onnxattr.errors import UsageError
from onnxattr.methods.gradient import INTEGRATION, ig_quadrature
from tests.models import mlp, single_io_model

RNG = np.random.default_rng(7)
W1, B1 = RNG.standard_normal((5, 7)), RNG.standard_normal(7)
W2, B2 = RNG.standard_normal((7, 4)), RNG.standard_normal(4)


def tanh_mlp():
    """x[N,5] -> MatMul+Add (z) -> Tanh (h) -> MatMul+Add (y[N,4]): smooth, so every rule's sum is distinct."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("Add", ["a", "B1"], ["z"]),
             helper.make_node("Tanh", ["z"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["o"]),
             helper.make_node("Add", ["o", "B2"], ["y"])]
    inits = {k: v.astype(np.float32) for k, v in (("W1", W1), ("B1", B1), ("W2", W2), ("B2", B2))}
    return single_io_model(nodes, inits, ["N", 5], ["N", 4])


def forward(x):
    """float64: (z, h, y) of tanh_mlp."""
    z = x @ W1 + B1
    h = np.tanh(z)
    return z, h, h @ W2 + B2


def numpy_conductance(x, ref, seed, rule, steps):
    """sum_{k < steps} g_k (t(x_{k+1}) - t(x_k)) at x, z and h, from the (steps+1)-point rule's alphas."""
    alphas, _ = ig_quadrature(rule, steps + 1)
    out = {name: 0.0 for name in ("x", "z", "h")}
    for a0, a1 in zip(alphas[:-1], alphas[1:]):
        p0, p1 = ref + a0 * (x - ref), ref + a1 * (x - ref)
        (z0, h0, _), (z1, h1, _) = forward(p0), forward(p1)
        g_h = seed @ W2.T
        g_z = g_h * (1 - h0 ** 2)
        g_x = g_z @ W1.T
        out["x"] = out["x"] + g_x * (p1 - p0)
        out["z"] = out["z"] + g_z * (z1 - z0)
        out["h"] = out["h"] + g_h * (h1 - h0)
    return out


def run(model, x, method="conductance", neuron="max", target=None, keep=("z", "h"), **params):
    compiled = onnxattr.compile(model, method, neuron=neuron, keep=list(keep), **params)
    sess = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"x": x} if target is None else {"x": x, "target": target}
    names = ["relevance"] + [f"relevance:{k}" for k in keep]
    return dict(zip(["x", *keep], sess.run(names, feed)))


@pytest.mark.parametrize("rule", INTEGRATION)
@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("neuron", ["max", "index", "all"])
def test_conductance_at_the_input_and_hidden_tensors_equals_numpy(rule, chunk, neuron):
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    ref = np.float32(0.25)
    target = np.array([2, 0, 3], np.int64) if neuron == "index" else None
    got = run(tanh_mlp(), x, neuron=neuron, target=target, steps=10, integration=rule, chunk_size=chunk,
              reference_inputs=float(ref))
    y = forward(x.astype(np.float64))[2]
    picked = {"max": y.argmax(1), "index": target}.get(neuron)
    seed = np.ones_like(y) if picked is None else np.eye(4)[picked]
    want = numpy_conductance(x.astype(np.float64), float(ref), seed, rule, 10)
    for name in ("x", "z", "h"):
        # float32 points and gradients summed over 10 intervals: ~1e-6 of the largest value
        scale = np.abs(want[name]).max()
        assert np.abs(got[name] - want[name]).max() <= 2e-6 * scale, (name, rule, chunk, neuron)


def test_trapezoid_input_map_is_the_left_riemann_integrated_gradients():
    """With a_k = k / n the input's differences are (x - ref) / n: the left Riemann sum of integrated gradients."""
    model, _ = mlp()
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    conductance = run(model, x, keep=(), steps=16, integration="riemann_trapezoid")["x"]
    ig = run(model, x, method="integrated_gradients", keep=(), steps=16)["x"]
    assert np.abs(conductance - ig).max() <= 1e-6 * np.abs(ig).max()
    assert np.abs(ig).max() > 0


def test_at_the_explained_logits_it_is_their_change_from_the_reference():
    """The differences telescope (riemann_trapezoid): the selected logit's row sums to z(x) - z(ref)."""
    model, weights = mlp()
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    got = run(model, x, keep=("z",), steps=7, integration="riemann_trapezoid", reference_inputs=0.5)["z"]
    w1, b1, w2 = (w.astype(np.float64) for w in weights)
    logits = lambda v: np.maximum(v @ w1 + b1, 0) @ w2  # noqa: E731
    top = logits(x.astype(np.float64)).argmax(1)
    change = logits(x.astype(np.float64)) - logits(np.full_like(x, 0.5, np.float64))
    want = np.zeros_like(change)
    want[np.arange(4), top] = change[np.arange(4), top]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_a_sample_gets_the_same_maps_in_any_batch_and_with_its_own_reference():
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    refs = RNG.standard_normal((4, 5)).astype(np.float32)
    batch = run(tanh_mlp(), x, steps=5, chunk_size=4, reference_inputs=refs)
    alone = run(tanh_mlp(), x[2:3], steps=5, chunk_size=4, reference_inputs=refs[2:3])
    for name in ("x", "z", "h"):
        assert np.abs(batch[name][2:3] - alone[name]).max() <= 1e-6 * np.abs(alone[name]).max()


def test_gauss_legendre_point_count_and_other_loop_methods_keep_refusal():
    with pytest.raises(UsageError, match="at most 2047 steps"):
        onnxattr.compile(tanh_mlp(), "conductance", steps=2048)
    with pytest.raises(UsageError, match="conductance"):  # the refusal names the methods that take keep=
        onnxattr.compile(tanh_mlp(), "smoothgrad", keep=["h"])
