"""onnxattr/methods/least_squares.py: the in-graph weighted least squares with an intercept (CGLS) against numpy's
lstsq (SVD, the least-norm solution) on the centred, weighted data: designs with more samples than unknowns, fewer,
about as many (S = G + 1 .. G + 2, where an earlier elimination with a ridge failed), drawn KernelSHAP designs of
hundreds of groups with affinely dependent coalitions, duplicated rows, a single sample, weights per row.

Tolerance: 1e-7 of the coefficients' scale. CGLS stops once |A' r| is 1e-15 of |A' y|; the coefficients then
carry that times the condition number of A, which KernelSHAP's 10^6 endpoint weights push to ~1e5-1e6 (CGLS on
the same designs in numpy: 4e-8 at worst)."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxattr.graph import GraphBuilder
from onnxattr.methods.least_squares import weighted_least_squares
from tests.methods.test_kernel_shap import _draws


def _session(inputs: dict, build):
    graph = helper.make_graph([], "g", [helper.make_tensor_value_info(k, TensorProto.DOUBLE, list(v.shape))
                                        for k, v in inputs.items()], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    b = GraphBuilder(model)
    out = build(b)
    model.graph.node.extend(b.nodes)
    b.write_initializers(model.graph.initializer)
    model.graph.output.extend([helper.make_tensor_value_info(out, TensorProto.DOUBLE, None)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, inputs)[0]


def fit(z, w, y):
    w = np.asarray(w, np.float64)
    return _session({"z": z, "y": y, "w": w.reshape(1, -1) if w.ndim == 1 else w},
                    lambda b: weighted_least_squares(b, "z", "w", "y", z.shape[1], z.shape[0]))


def lstsq(z, w, y):
    """numpy's least-norm fit of each row of y on z with an intercept, weights w."""
    zc = z - w @ z / w.sum()
    root = np.sqrt(w)
    return np.array([np.linalg.lstsq(zc * root[:, None], (t - w @ t / w.sum()) * root, rcond=None)[0] for t in y])


def design(rng, samples, groups, endpoints=True):
    z = (rng.random((samples, groups)) < 0.5).astype(np.float64)
    w = np.ones(samples)
    if endpoints:
        z[0], z[1], w[:2] = 1.0, 0.0, 1e6
    return z, w


@pytest.mark.parametrize("samples,groups", [
    (40, 8), (50, 3), (200, 20), (10, 30), (25, 25), (6, 6), (2, 5), (300, 200), (150, 400), (700, 128),
    (25, 24), (53, 50), (102, 100)])
def test_fit_is_the_least_norm_least_squares_solution(samples, groups):
    rng = np.random.default_rng(samples * 100 + groups)
    z, w = design(rng, samples, groups)
    y = rng.standard_normal((3, samples))
    want = lstsq(z, w, y)
    got = fit(z, w, y)
    assert got.shape == (3, groups)
    assert np.abs(got - want).max() <= 1e-7 * max(1.0, np.abs(want).max())


@pytest.mark.parametrize("groups,samples,seed", [(24, 25, 4), (24, 25, 5), (784, 700, 0), (150, 100, 0), (600, 610, 0)])
def test_drawn_kernel_shap_designs(groups, samples, seed):
    """KernelSHAP's own draws where a ridge-and-elimination solver failed: S = G + 1 with an eigenvalue of A'A 20x
    below its ridge (0.45 and 0.84 of the map's max off), and S < G with affinely dependent coalitions (1e23); and
    a near-square design of condition number 1e7 where CGLS needs 6,500 trips (8 G + 50 of them left it 0.75 off)."""
    z = _draws(groups, samples, seed).astype(np.float64)
    w = np.where((z.sum(1) == 0) | (z.sum(1) == groups), 1e6, 1.0)
    rng = np.random.default_rng(seed)
    y = (z @ rng.standard_normal((groups, 2)) + 0.3 * np.tanh(z @ rng.standard_normal((groups, 2)))).T
    want = lstsq(z, w, y)
    assert np.abs(fit(z, w, y) - want).max() <= 1e-7 * np.abs(want).max()


def test_repeated_coalitions_leave_undetermined_directions_at_zero():
    """Six copies of five rows: rank 4 after centring for 8 unknowns; the least-norm answer, not any answer."""
    rng = np.random.default_rng(7)
    z = np.tile((rng.random((5, 8)) < 0.5).astype(np.float64), (6, 1))
    w = np.ones(30)
    y = rng.standard_normal((2, 30))
    want = lstsq(z, w, y)
    got = fit(z, w, y)
    assert np.abs(got - want).max() <= 1e-7 * np.abs(want).max()
    # any other solution adds a null-space vector of the centred design: the least-norm one is orthogonal to it
    zc = z - z.mean(0)
    null = np.linalg.svd(zc)[2][np.linalg.matrix_rank(zc):]
    assert np.abs(got @ null.T).max() <= 1e-7 * np.abs(got).max()


@pytest.mark.parametrize("samples,groups", [(40, 8), (12, 30), (300, 150)])
def test_weights_of_their_own_for_each_row(samples, groups):
    """w [N, S]: each row of y its own regression (LIME's similarity weights), on either side of the system."""
    rng = np.random.default_rng(samples + groups)
    z, _ = design(rng, samples, groups, endpoints=False)
    w = rng.uniform(0.1, 1.0, (3, samples))
    y = rng.standard_normal((3, samples))
    want = np.concatenate([lstsq(z, w[n], y[n:n + 1]) for n in range(3)])
    got = fit(z, w, y)
    assert np.abs(got - want).max() <= 1e-7 * max(1.0, np.abs(want).max())


def test_an_exactly_linear_target_is_recovered():
    rng = np.random.default_rng(1)
    z, w = design(rng, 30, 6)
    beta = rng.standard_normal((2, 6))
    y = beta @ z.T + np.array([[0.3], [-2.0]])
    assert np.abs(fit(z, w, y) - beta).max() <= 1e-9


def test_one_sample_fits_nothing():
    """A single coalition: the centred data are all 0 and every coefficient is 0 (numpy's lstsq agrees), not NaN."""
    z = np.ones((1, 4))
    y = np.array([[2.5]])
    got = fit(z, np.array([1e6]), y)
    assert np.array_equal(got, np.zeros((1, 4)))


@pytest.mark.parametrize("method,params,cap", [("kernel_shap", {"n_samples": 40}, "cgls_iterations"),
                                                ("lime", {"n_samples": 40}, "LASSO_ITERATIONS")])
def test_a_fit_that_does_not_converge_fails_by_name(monkeypatch, method, params, cap):
    """Out of trips, the fit fails the run with a message that says so and what to do, rather than return a map
    far from the least-squares one."""
    import onnxattr
    from onnxattr.errors import DataError
    from onnxattr.methods import least_squares
    from tests.models import mlp

    monkeypatch.setattr(least_squares, cap, (lambda s, g: 2) if cap == "cgls_iterations" else 2)
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    with pytest.raises(DataError, match=f"{method}'s fit of its linear surrogate did not converge.*evaluate more coalitions"):
        onnxattr.create_analyzer(method, mlp(softmax=False)[0], **params).analyze(x)
