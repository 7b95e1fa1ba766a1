"""onnxattr/methods/lime.py (and the Lasso of methods/least_squares.py): LIME against numpy on the same coalitions —
the similarity kernel (cosine and euclidean), the weighted least squares, and the Lasso against a coordinate
descent run to convergence here (another algorithm than our FISTA) — the draws, a loss over the batch, and the
edges (Captum's Lime on eight nets is in tests/methods/test_oracles.py).

Tolerance: 1e-5 of the map's scale (float32 forward passes in both, the fits in float64 run to convergence)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxattr
from onnxattr.cli import main
from onnxattr.errors import UsageError
from onnxattr.graph import GraphBuilder
from onnxattr.methods.lime import _drawn
from tests.methods.test_kernel_shap import MASK, group_values
from tests.models import mlp, mlp_logits

X = np.random.default_rng(6).standard_normal((3, 6)).astype(np.float32)
MODEL, WEIGHTS = mlp(softmax=False)
Z = (np.random.default_rng(0).random((30, 4)) < 0.5).astype(np.int64)


def run(model=MODEL, x=X, **params):
    compiled = onnxattr.compile(model, "lime", **params)
    return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]


def log_similarities(x, perturbed, distance="cosine", width=1.0):
    """The log of Captum's default kernel on flattened inputs (torch's cosine: each norm at least 1e-8)."""
    if distance == "euclidean":
        d = np.linalg.norm(x - perturbed)
    else:
        d = 1 - x @ perturbed / (max(np.linalg.norm(x), 1e-8) * max(np.linalg.norm(perturbed), 1e-8))
    return -d * d / (2 * width * width)


def similarities(x, points, distance="cosine", width=1.0):
    """The kernel's weights of the points, divided by the largest (the fits depend on their ratios only)."""
    logs = np.array([log_similarities(x, p, distance, width) for p in points])
    return np.exp(logs - logs.max())


def lasso_cd(z, y, w, alpha, sweeps=20000):
    """scikit-learn's weighted Lasso objective by cyclic coordinate descent (centred data, free intercept)."""
    zc = z - w @ z / w.sum()
    yc = y - w @ y / w.sum()
    m = (zc * w[:, None]).T @ zc / w.sum()
    r = (zc * w[:, None]).T @ yc / w.sum()
    beta = np.zeros(z.shape[1])
    for _ in range(sweeps):
        before = beta.copy()
        for j in range(len(beta)):
            if m[j, j] == 0:
                continue
            rho = r[j] - m[j] @ beta + m[j, j] * beta[j]
            beta[j] = np.sign(rho) * max(abs(rho) - alpha, 0.0) / m[j, j]
        if np.abs(beta - before).max() <= 1e-15:
            break
    return beta


def numpy_lime(z, baseline=0.0, model="lasso", alpha=0.01, distance="cosine", width=1.0, x=X):
    logits = mlp_logits(x, WEIGHTS)
    chosen = logits.argmax(1)
    out = []
    for n in range(len(x)):
        points = np.array([np.where(row[MASK] == 1, x[n], baseline) for row in z], np.float32)
        ys = mlp_logits(points, WEIGHTS)[:, chosen[n]].astype(np.float64)
        w = similarities(x[n].astype(np.float64), points.astype(np.float64), distance, width)
        if model == "linear":
            zc = z - w @ z / w.sum()
            root = np.sqrt(w)
            out.append(np.linalg.lstsq(zc * root[:, None], (ys - w @ ys / w.sum()) * root, rcond=None)[0])
        else:
            out.append(lasso_cd(z.astype(np.float64), ys, w, alpha))
    return np.array(out)


@pytest.mark.parametrize("params", [
    dict(), dict(interpretable_model="linear"), dict(alpha=0.1), dict(alpha=0.0), dict(baselines=0.5),
    dict(distance="euclidean", kernel_width=2.0), dict(kernel_width=0.3)])
def test_given_coalitions_match_numpy(params):
    want = numpy_lime(Z.astype(np.float64), params.get("baselines", 0.0), params.get("interpretable_model", "lasso"),
                      params.get("alpha", 0.01), params.get("distance", "cosine"), params.get("kernel_width", 1.0))
    got = run(feature_mask=MASK, coalitions=Z, **params)
    assert np.abs(group_values(got) - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("model", ["linear", "lasso"])
def test_weights_are_taken_by_their_ratios(model):
    """A group the coalitions always leave out (group 3, the last feature) adds the same (x_5 - b_5)^2 to every
    squared euclidean distance: every weight is multiplied by exp(-x_5^2 / 2) and the fits must not change. With
    x_5 = 45 that factor is below 1e-308 (numpy's exp gives 0 and its fit is undefined); the weights divided by
    the largest keep their ratios."""
    z = Z.copy()
    z[:, 3] = 0
    near, far = X.copy(), X.copy()
    near[:, 5], far[:, 5] = 0.5, 45.0
    want = numpy_lime(z.astype(np.float64), model=model, distance="euclidean", x=near)
    for x in (near, far):
        got = run(x=x, feature_mask=MASK, coalitions=z, interpretable_model=model, distance="euclidean")
        assert np.abs(group_values(got) - want).max() <= 1e-5 * np.abs(want).max()


def test_a_large_alpha_zeroes_every_coefficient():
    assert np.array_equal(run(feature_mask=MASK, coalitions=Z, alpha=100.0), np.zeros_like(X))


def test_drawn_coalitions_hold_each_group_with_probability_one_half():
    graph = helper.make_graph([], "g", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    b = GraphBuilder(model)
    z = _drawn(b, 5, 4000, 3)
    model.graph.node.extend(b.nodes)
    b.write_initializers(model.graph.initializer)
    model.graph.output.extend([helper.make_tensor_value_info(z, TensorProto.DOUBLE, None)])
    drawn = ort.InferenceSession(model.SerializeToString()).run(None, {})[0]
    assert set(np.unique(drawn)) == {0.0, 1.0}
    assert np.abs(drawn.mean(0) - 0.5).max() <= 4 * np.sqrt(0.25 / 4000)
    # the groups are drawn independently: the pairs' correlation is within noise
    corr = np.corrcoef(drawn.T)[np.triu_indices(5, 1)]
    assert np.abs(corr).max() <= 4 / np.sqrt(4000)


def test_draws_follow_the_seed_and_fit():
    a, b = run(feature_mask=MASK, seed=1), run(feature_mask=MASK, seed=2)
    assert np.array_equal(a, run(feature_mask=MASK, seed=1)) and not np.array_equal(a, b)
    assert np.isfinite(a).all()


def test_loss_over_the_batch_weighs_the_whole_batch():
    """A scalar output: every sample perturbed at once, the similarity taken over the whole batch flattened (as
    Captum's Lime takes the batch as one input), every row the batch's coefficients."""
    g = onnx.load_from_string(MODEL.SerializeToString())
    g.graph.node.append(helper.make_node("ReduceMean", ["z"], ["loss"], keepdims=0))
    del g.graph.output[:]
    g.graph.output.extend([helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])])
    got = run(model=g, feature_mask=MASK, coalitions=Z, interpretable_model="linear")
    assert np.allclose(got, got[:1])
    points = [np.where(row[MASK] == 1, X, 0.0).astype(np.float32) for row in Z]
    ys = np.array([mlp_logits(p, WEIGHTS).mean() for p in points], np.float64)
    w = similarities(X.reshape(-1).astype(np.float64), np.array([p.reshape(-1) for p in points], np.float64))
    zc = Z - w @ Z / w.sum()
    want = np.linalg.lstsq(zc * np.sqrt(w)[:, None], (ys - w @ ys / w.sum()) * np.sqrt(w), rcond=None)[0]
    assert np.abs(group_values(got[:1])[0] - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("params,message", [
    (dict(interpretable_model="ridge"), "interpretable_model"),
    (dict(distance="manhattan"), "distance"),
    (dict(kernel_width=0.0), "kernel_width"),
    (dict(kernel_width=1e-200), "between 1e-100 and 1e100"),
    (dict(coalitions=np.ones((5, 3))), "give one column per feature group"),
])
def test_refusals_name_the_problem(params, message):
    with pytest.raises(UsageError, match=message):
        run(feature_mask=MASK, **params)


def test_command_line(tmp_path):
    onnx.save(MODEL, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "mask.npy", MASK)
    np.save(tmp_path / "z.npy", Z)
    rc = main(["explain", str(tmp_path / "m.onnx"), "--method", "lime", "--data", str(tmp_path / "x.npy"),
               "--set", f"feature_mask={tmp_path / 'mask.npy'}", "--set", f"coalitions={tmp_path / 'z.npy'}",
               "--set", "interpretable_model=linear", "-o", str(tmp_path / "r.npy")])
    assert rc == 0
    want = numpy_lime(Z.astype(np.float64), model="linear")
    assert np.abs(group_values(np.load(tmp_path / "r.npy")) - want).max() <= 1e-5 * np.abs(want).max()


def test_the_lasso_refuses_more_groups_than_it_can_hold():
    g = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=1)], "sum",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2000])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UsageError, match="at most 1024.*interpretable_model='linear'"):
        onnxattr.compile(model, "lime")
    onnxattr.compile(model, "lime", interpretable_model="linear")  # the least squares need no G x G matrix
