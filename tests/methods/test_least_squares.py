"""onnxattr/methods/least_squares.py: the in-graph weighted least squares with an intercept against numpy's lstsq
(SVD, the least-norm solution) on the centred, weighted data, for designs with more samples than unknowns (the
normal equations), fewer (the S x S side), exactly as many, duplicated rows and a single sample.

Tolerance: 1e-9 of the coefficients' scale where the design determines them (float64 elimination on a system
whose condition number the 10^6 endpoint weights raise to ~1e7), 1e-6 where it does not: there the iterated
Tikhonov steps reach the least-norm solution only up to the rounding that 1 / delta amplifies."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxattr.graph import GraphBuilder
from onnxattr.methods.least_squares import psd_solve, weighted_least_squares


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


@pytest.mark.parametrize("samples,groups,determined", [
    (40, 8, True), (50, 3, True), (200, 20, True), (10, 30, False), (25, 25, False), (6, 6, False), (2, 5, False),
    (300, 200, True), (150, 400, False), (700, 128, True)])  # the last three: 64 pivots per Loop trip
def test_fit_is_the_least_norm_least_squares_solution(samples, groups, determined):
    rng = np.random.default_rng(samples * 100 + groups)
    z, w = design(rng, samples, groups)
    y = rng.standard_normal((3, samples))
    want = lstsq(z, w, y)
    got = fit(z, w, y)
    assert got.shape == (3, groups)
    tol = 1e-9 if determined else 1e-6
    assert np.abs(got - want).max() <= tol * max(1.0, np.abs(want).max())


def test_repeated_coalitions_leave_undetermined_directions_at_zero():
    """Six copies of five rows: rank 4 after centring for 8 unknowns; the least-norm answer, not any answer."""
    rng = np.random.default_rng(7)
    z = np.tile((rng.random((5, 8)) < 0.5).astype(np.float64), (6, 1))
    w = np.ones(30)
    y = rng.standard_normal((2, 30))
    want = lstsq(z, w, y)
    got = fit(z, w, y)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    # any other solution adds a null-space vector of the centred design: the least-norm one is orthogonal to it
    zc = z - z.mean(0)
    null = np.linalg.svd(zc)[2][np.linalg.matrix_rank(zc):]
    assert np.abs(got @ null.T).max() <= 1e-6 * np.abs(got).max()


@pytest.mark.parametrize("samples,groups", [(40, 8), (12, 30), (300, 150)])
def test_weights_of_their_own_for_each_row(samples, groups):
    """w [N, S]: each row of y its own regression (LIME's similarity weights), on either side of the system."""
    rng = np.random.default_rng(samples + groups)
    z, _ = design(rng, samples, groups, endpoints=False)
    w = rng.uniform(0.1, 1.0, (3, samples))
    y = rng.standard_normal((3, samples))
    want = np.concatenate([lstsq(z, w[n], y[n:n + 1]) for n in range(3)])
    got = fit(z, w, y)
    tol = 1e-9 if groups < samples - 1 else 1e-6
    assert np.abs(got - want).max() <= tol * max(1.0, np.abs(want).max())


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


def test_solve_of_a_positive_definite_system():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((12, 12))
    k = a @ a.T + 0.5 * np.eye(12)
    r = rng.standard_normal((12, 3))
    got = _session({"k": k[None], "r": r[None]}, lambda b: psd_solve(b, "k", "r", 12))[0]
    assert np.abs(got - np.linalg.solve(k, r)).max() <= 1e-10 * np.abs(np.linalg.solve(k, r)).max()
