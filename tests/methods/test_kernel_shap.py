"""onnxattr/methods/kernel_shap.py: KernelSHAP against numpy's weighted least squares on the same coalitions, the
exact answer on an additive model, the Shapley values in the limit of many draws, the distribution of the drawn
coalitions, and the edges (Captum's KernelShap on eight nets is in tests/methods/test_oracles.py).

Tolerances: 1e-5 of the map's scale against numpy (float32 forward passes in both; the fit in float64), 1e-5
on the additive model (exact in exact arithmetic), 0.03 for 4,000 draws against the exact Shapley values (the
estimate's spread there, measured over seeds, is ~0.01)."""

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.cli import main
from onnxattr.errors import UsageError
from onnxattr.graph import GraphBuilder
from onnxattr.methods.kernel_shap import ENDPOINT_WEIGHT, _drawn_coalitions, size_distribution
from tests.models import mlp, mlp_logits

X = np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)
MODEL, WEIGHTS = mlp(softmax=False)
MASK = np.array([0, 0, 1, 2, 2, 3])


def run(method="kernel_shap", model=MODEL, x=X, **params):
    compiled = onnxattr.compile(model, method, **params)
    return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]


def group_values(relevance, mask=MASK):
    """[N, F] -> [N, G]: the value of each group (every feature of a group holds it)."""
    return np.stack([relevance[:, np.argmax(mask == g)] for g in range(mask.max() + 1)], 1)


def numpy_kernel_shap(z, baseline=0.0, x=X, mask=MASK):
    """Captum's fit of the argmax logit on the coalitions z [S, G], in float64 from the float32 model."""
    logits = mlp_logits(x, WEIGHTS)
    chosen = logits.argmax(1)
    w = np.where((z.sum(1) == 0) | (z.sum(1) == z.shape[1]), ENDPOINT_WEIGHT, 1.0)
    ys = np.stack([mlp_logits(np.where(row[mask] == 1, x, baseline).astype(np.float32), WEIGHTS)
                   [np.arange(len(x)), chosen] for row in z], 1).astype(np.float64)  # [N, S]
    zc = z - w @ z / w.sum()
    root = np.sqrt(w)
    return np.array([np.linalg.lstsq(zc * root[:, None], (y - w @ y / w.sum()) * root, rcond=None)[0] for y in ys])


def random_design(rng, samples, groups):
    z = (rng.random((samples, groups)) < 0.5).astype(np.int64)
    z[0], z[1] = 1, 0
    return z


@pytest.mark.parametrize("samples,baseline", [(30, 0.0), (5, 0.5), (9, 0.0)])
def test_given_coalitions_fit_as_least_squares(samples, baseline):
    """30 coalitions of 4 groups (the G x G side), 5 and 9 (the S x S side, 5 leaving the fit undetermined)."""
    z = random_design(np.random.default_rng(samples), samples, 4)
    got = run(feature_mask=MASK, coalitions=z, baselines=baseline)
    want = numpy_kernel_shap(z.astype(np.float64), baseline)
    assert np.abs(group_values(got) - want).max() <= 1e-5 * np.abs(want).max()
    assert np.array_equal(got, group_values(got)[:, MASK]), "every feature of a group holds the group's value"


def test_additive_model_is_explained_exactly():
    """On a linear model the fit is exact whatever the draws: group g gets sum over its features of
    w_i (x_i - b_i)."""
    w = np.random.default_rng(0).standard_normal((6, 1)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "lin",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                          [numpy_helper.from_array(w, "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    want = np.stack([((X - 0.25) * w[:, 0])[:, MASK == k].sum(1) for k in range(4)], 1)
    for seed in (0, 1):
        got = group_values(run(model=model, feature_mask=MASK, baselines=0.25, n_samples=12, seed=seed))
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_many_draws_tend_to_the_shapley_values():
    exact = run("shapley_values", feature_mask=MASK)
    got = run(feature_mask=MASK, n_samples=4000, chunk_size=500)
    assert np.abs(got - exact).max() <= 0.03 * np.abs(exact).max()


def test_a_sample_gets_the_same_map_in_any_batch():
    """One set of coalitions per seed, shared by the batch: a sample's map does not depend on the others."""
    whole = run(feature_mask=MASK, seed=3)
    assert np.array_equal(run(x=X[2:3], feature_mask=MASK, seed=3), whole[2:3])
    assert not np.array_equal(run(feature_mask=MASK, seed=4), whole)


def _draws(groups, n, seed):
    graph = helper.make_graph([], "g", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    b = GraphBuilder(model)
    z = _drawn_coalitions(b, groups, n, seed)
    model.graph.node.extend(b.nodes)
    b.write_initializers(model.graph.initializer)
    model.graph.output.extend([helper.make_tensor_value_info(z, TensorProto.DOUBLE, None)])
    return ort.InferenceSession(model.SerializeToString()).run(None, {})[0]


def test_drawn_coalitions_follow_the_shapley_kernel():
    """The full and the empty coalition first; then sizes k with p(k) ~ (G - 1) / (k (G - k)) (Pearson's test),
    and within a size every group equally often (each k-subset alike). Fixed seed: deterministic."""
    groups, n = 7, 20002
    z = _draws(groups, n, seed=11)
    assert z.shape == (n, groups)
    assert np.array_equal(z[0], np.ones(groups)) and np.array_equal(z[1], np.zeros(groups))
    sizes = z[2:].sum(1).astype(int)
    counts = np.bincount(sizes, minlength=groups + 1)
    assert counts[0] == 0 and counts[groups] == 0
    expected = size_distribution(groups) * (n - 2)
    chi2 = ((counts[1:groups] - expected) ** 2 / expected).sum()
    assert chi2 < 16.8, chi2  # 5 degrees of freedom: the 0.995 quantile
    for k in range(1, groups):
        rows = z[2:][sizes == k]
        share = rows.mean(0)  # each group is held in k / G of the size-k coalitions
        se = math.sqrt(k / groups * (1 - k / groups) / len(rows))
        assert np.abs(share - k / groups).max() <= 4 * se, (k, share)


def test_two_groups_draw_one_of_them():
    z = _draws(2, 200, seed=0)
    assert (z[2:].sum(1) == 1).all() and 0.35 < z[2:, 0].mean() < 0.65


def test_loss_over_the_batch_gets_one_row_for_all():
    """A scalar output (the mean of the argmax logits stand-in: ReduceMean of all logits): every sample is perturbed
    at once, and every row holds the batch's values."""
    g = onnx.load_from_string(MODEL.SerializeToString())
    g.graph.node.append(helper.make_node("ReduceMean", ["z"], ["loss"], keepdims=0))
    del g.graph.output[:]
    g.graph.output.extend([helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])])
    z = random_design(np.random.default_rng(2), 12, 4)
    got = run(model=g, feature_mask=MASK, coalitions=z)
    assert np.allclose(got, got[:1])
    w = np.where((z.sum(1) == 0) | (z.sum(1) == 4), ENDPOINT_WEIGHT, 1.0)
    ys = np.array([mlp_logits(np.where(row[MASK] == 1, X, 0.0).astype(np.float32), WEIGHTS).mean()
                   for row in z], np.float64)
    zc = z - w @ z / w.sum()
    want = np.linalg.lstsq(zc * np.sqrt(w)[:, None], (ys - w @ ys / w.sum()) * np.sqrt(w), rcond=None)[0]
    assert np.abs(group_values(got[:1])[0] - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("params,message", [
    (dict(coalitions=np.ones((5, 3))), "give one column per feature group"),
    (dict(coalitions=np.ones((5, 4)), n_samples=6), "leave n_samples out"),
    (dict(coalitions=np.full((5, 4), 2)), "0/1 array"),
    (dict(feature_mask=np.zeros(6, np.int64)), "one group"),
])
def test_refusals_name_the_problem(params, message):
    with pytest.raises(UsageError, match=message):
        run(**{"feature_mask": MASK, **params})


def test_many_coalitions_of_few_groups_fit_on_the_groups_side():
    """3000 coalitions of 6 groups: a 6 x 6 system, not 3000 x 3000."""
    exact = run("shapley_values")
    assert np.abs(run(n_samples=3000, chunk_size=500) - exact).max() <= 0.05 * np.abs(exact).max()


def test_too_large_a_system_is_refused():
    g = helper.make_graph([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)], "sum",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5000])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                          [numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UsageError, match=r"S G min\(S, G\) = 1.5e\+11 is above 4e\+09"):
        onnxattr.compile(model, "kernel_shap", n_samples=6000)


def test_coalitions_without_a_mask_count_the_features():
    with pytest.raises(UsageError, match=r"no feature_mask: every feature its own group\) 6: give one column"):
        run(coalitions=np.ones((3, 4)))


def test_dynamic_features_need_a_mask():
    g = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], "sum",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "F"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N"])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UsageError, match="give a feature_mask"):
        onnxattr.compile(model, "kernel_shap")


def test_command_line_reads_coalitions_from_npy(tmp_path):
    onnx.save(MODEL, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "mask.npy", MASK)
    z = random_design(np.random.default_rng(4), 10, 4)
    np.save(tmp_path / "z.npy", z)
    rc = main(["explain", str(tmp_path / "m.onnx"), "--method", "kernel_shap", "--data", str(tmp_path / "x.npy"),
               "--set", f"feature_mask={tmp_path / 'mask.npy'}", "--set", f"coalitions={tmp_path / 'z.npy'}",
               "-o", str(tmp_path / "r.npy")])
    assert rc == 0
    want = numpy_kernel_shap(z.astype(np.float64))
    assert np.abs(group_values(np.load(tmp_path / "r.npy")) - want).max() <= 1e-5 * np.abs(want).max()
