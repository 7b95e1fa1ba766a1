"""onnxattr/methods/shapley.py: Shapley values against the definition (every order of the groups walked by hand
in numpy), the sampling estimate against its standard error, and the edges of both (Captum's ShapleyValues
and ShapleyValueSampling on eight nets are in tests/methods/test_oracles.py)."""

import itertools
import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxattr
from onnxattr.cli import main
from onnxattr.errors import DataError, SelectionError, UsageError
from tests.models import mlp, mlp_logits

X = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
MODEL, WEIGHTS = mlp(softmax=False)


def run(method, model=MODEL, x=X, **params):
    compiled = onnxattr.compile(model, method, **params)
    return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]


def per_order(groups, baseline, x=X):
    """[orders, N, G]: for every order of the groups, each group's increase of the argmax logit when it joins
    the groups before it (the others at the baseline), in float64 from the float32 model."""
    logits = mlp_logits(x, WEIGHTS)
    chosen = logits.argmax(1)
    ids = np.unique(groups)

    def v(held):
        kept = np.where(np.isin(groups, ids[list(held)]), x, baseline).astype(np.float32)
        return mlp_logits(kept, WEIGHTS)[np.arange(len(x)), chosen].astype(np.float64)

    rows = []
    for order in itertools.permutations(range(len(ids))):
        gains, before = np.zeros((len(x), len(ids))), v([])
        for k, g in enumerate(order):
            after = v(order[: k + 1])
            gains[:, g] = after - before
            before = after
        rows.append(gains)
    return np.array(rows)


def spread(values, groups):
    """[N, G] group values -> [N, F]: each feature gets its group's value."""
    return values[:, np.searchsorted(np.unique(groups), groups)]


@pytest.mark.parametrize("mask,baseline,chunk", [
    (None, 0.0, 16), (None, 0.5, 3), (np.array([5, 5, -1, -1, 9, 9]), 0.0, 1),
    (np.array([[0, 1, 1, 2, 3, 3]]), np.linspace(-1, 1, 6).astype(np.float32), 7)])
def test_exact_values_are_the_mean_gain_over_every_order(mask, baseline, chunk):
    """2^G - 1 coalitions give what walking all G! orders gives; any integer ids name the groups."""
    groups = np.arange(6) if mask is None else np.asarray(mask).reshape(-1)
    want = spread(per_order(groups, baseline).mean(0), groups)
    got = run("shapley_values", feature_mask=mask, baselines=baseline, chunk_size=chunk)
    # float32 forward passes in both; the sums in float64
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5 * np.abs(want).max())


def test_the_values_add_up_to_the_output_change():
    logits = mlp_logits(X, WEIGHTS)
    chosen = logits.argmax(1)
    change = logits[np.arange(4), chosen] - mlp_logits(np.zeros_like(X), WEIGHTS)[np.arange(4), chosen]
    for method, params in (("shapley_values", {}), ("shapley_value_sampling", {"n_samples": 3})):
        got = run(method, **params)
        np.testing.assert_allclose(got.sum(1), change, rtol=1e-5, atol=1e-5)


def test_sampling_is_within_its_standard_error_of_the_exact_values():
    """The mean over n random orders: its error is about the spread of one order's gains over sqrt(n)."""
    groups = np.array([0, 0, 1, 2, 3, 3])
    gains = per_order(groups, 0.0)  # [24 orders, N, G]
    exact, sd = gains.mean(0), gains.std(0)
    n = 2000
    got = run("shapley_value_sampling", feature_mask=groups, n_samples=n, chunk_size=64, seed=7)
    error = np.abs(got - spread(exact, groups))
    bound = 5 * spread(sd, groups) / math.sqrt(n) + 1e-5
    assert (error <= bound).all(), (error.max(), bound.min())
    assert error.max() > 0  # an estimate, not the exact values
    other = run("shapley_value_sampling", feature_mask=groups, n_samples=n, chunk_size=64, seed=8)
    assert not np.array_equal(got, other)
    again = run("shapley_value_sampling", feature_mask=groups, n_samples=n, chunk_size=64, seed=7)
    np.testing.assert_array_equal(got, again)  # a seed is one stream


def linear_model():
    w = np.array([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]], np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "linear",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "F"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                          [onnx.numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), w


def test_every_order_gives_an_additive_model_its_exact_values():
    """y = x w: each group's value is (x - baseline) w summed over its features, in every order, so even one
    order is exact; the input's feature axis is symbolic (the groups are numbered at run time)."""
    model, w = linear_model()
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], np.float32)
    want = (x - 0.25) * w[:, 1]
    compiled = onnxattr.compile(model, "shapley_value_sampling", n_samples=1, baselines=0.25, neuron="index")
    got = ort.InferenceSession(compiled.SerializeToString()).run(
        ["relevance"], {"x": x, "target": np.array([1, 1], np.int64)})[0]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    exact = run("shapley_values", model, x, baselines=0.25, neuron="all", feature_mask=np.array([0, 1, 2]))
    np.testing.assert_allclose(exact, (x - 0.25) * w.sum(1), rtol=1e-6, atol=1e-6)


def test_a_float16_model_gets_float64_weights():
    """w(s) reaches 1 / (G C(G-1, s)), below float16's normal range for G = 20: the weights and the sums stay in
    float64, and the map comes back in float32 (the relevance's type) without a float16 rounding."""
    g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["sq"]),
                           helper.make_node("ReduceSum", ["sq", "axes"], ["y"], keepdims=1)], "sq16",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 20])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 1])],
                          [onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.linspace(-2, 2, 20, dtype=np.float16).reshape(1, 20)
    got = run("shapley_values", model, x, chunk_size=4096)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.astype(np.float64), x.astype(np.float64) ** 2, rtol=2e-3, atol=1e-3)


def test_too_many_groups_are_refused_before_anything_runs():
    onnxattr.compile(_wide_model(20), "shapley_values")  # 2^20 - 1 coalitions: allowed
    with pytest.raises(UsageError, match=r"G = 21 of them; at most 20.*shapley_value_sampling"):
        onnxattr.compile(_wide_model(21), "shapley_values")
    with pytest.raises(UsageError, match=r"2000000 forward passes .*n_samples=1000 orders of 2000"):
        onnxattr.compile(_wide_model(2000), "shapley_value_sampling", n_samples=1000)
    model, _ = linear_model()
    with pytest.raises(UsageError, match="fixed only at run time: give a feature_mask"):
        onnxattr.compile(model, "shapley_values")
    with pytest.raises(DataError, match=r"more than 1048576 forward passes \(25 orders .*draw fewer orders"):
        onnxattr.create_analyzer("shapley_value_sampling", model, neuron_selection_mode="all").analyze(
            np.zeros((1, 50000), np.float32))


def _wide_model(features):
    g = helper.make_graph([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)], "wide",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                          [onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_loss_over_the_batch_gets_the_batchs_values_in_every_row():
    """y = the sum of all of x (one number for the batch): each coalition changes every sample at once, and the
    Shapley value of a group is its features' sum over the batch minus the baseline's (additive); every row holds
    it (Captum returns that one row)."""
    g = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], "sum",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], np.float32)
    want = np.tile(x.sum(0) - 2 * 0.25, (2, 1))
    for method in ("shapley_values", "shapley_value_sampling"):
        got = onnxattr.create_analyzer(method, model, baselines=0.25).analyze(x)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(SelectionError, match="no neuron to pick per sample"):
        onnxattr.compile(model, "shapley_values", neuron="index")


def test_the_command_line_takes_the_mask_as_a_npy_file(tmp_path):
    onnx.save(MODEL, tmp_path / "mlp.onnx")
    np.save(tmp_path / "x.npy", X)
    groups = np.array([0, 0, 1, 1, 2, 2])
    np.save(tmp_path / "groups.npy", groups)
    assert main(["explain", str(tmp_path / "mlp.onnx"), "-m", "shapley_values", "--set",
                 f"feature_mask={tmp_path / 'groups.npy'}", "--set", "baselines=0.25", "--data",
                 str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.npy")]) == 0
    want = spread(per_order(groups, 0.25).mean(0), groups)
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,params", [("shapley_values", {}), ("shapley_value_sampling", {"n_samples": 3}),
                                           ("feature_ablation", {}), ("occlusion", {"sliding_window_shapes": 1}),
                                           ("kernel_shap", {"n_samples": 12}),
                                           ("lime", {"interpretable_model": "linear", "n_samples": 20})])
def test_the_forward_only_methods_explain_a_tree_ensemble(method, params):
    """No gradient exists through ai.onnx.ml's trees, but these methods run forward passes only: on two additive
    trees every method gives each feature its own tree's change from the baseline (0)."""
    from tests.models import tree_ensemble

    x = np.array([[0.9, 1.0, 5.0], [0.1, -1.0, 5.0], [0.7, -2.0, 0.0]], np.float32)
    got = onnxattr.create_analyzer(method, tree_ensemble(), neuron_selection_mode="all", **params).analyze(x)
    first = np.where(x[:, 0] > 0.5, 1.0, -1.0) - (-1.0)  # the baseline 0 takes the first tree's -1
    second = np.where(x[:, 1] > 0, 2.0, 0.0)
    np.testing.assert_allclose(got, np.stack([first, second, np.zeros(3)], 1), atol=1e-6)
    with pytest.raises(onnxattr.errors.UnsupportedModelError, match="traditional-ML.*forward passes only.*shapley_values"):
        onnxattr.compile(tree_ensemble(), "gradient", neuron="all")
