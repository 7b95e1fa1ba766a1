"""onnxattr/metrics.py: infidelity and sensitivity_max equal Captum's (tests/oracles/make_captum_metrics.py, the
same draws handed to both) and their closed forms on a linear model."""

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxattr.errors import DataError, UsageError
from onnxattr.metrics import infidelity, sensitivity_max

DATA = Path(__file__).parent / "oracles" / "data"
MODEL = DATA / "torch_metrics.onnx"


@pytest.fixture(scope="module")
def oracle():
    return dict(np.load(DATA / "torch_metrics.npz"))


def linear(features=6, classes=3, seed=0):
    w = np.random.default_rng(seed).standard_normal((features, classes)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "linear",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
                          [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, w


# Captum ran in float64; our forward is float32, so each f(x) - f(x - ξ) carries ~1e-7 of |f|. Unnormalized the
# squared error is dominated by its own size (2e-7 seen); normalized, β²Σa² − 2βΣad + Σd² cancels to ~1e-5 of Σd²
# and keeps that rounding relative to the small rest (2e-6 seen).
@pytest.mark.parametrize("mbi, normalize, rtol", [(0, 0, 1e-6), (0, 1, 2e-5), (1, 0, 1e-6), (1, 1, 2e-5)])
def test_noise_infidelity_equals_captums(oracle, mbi, normalize, rtol):
    ours = infidelity(MODEL, oracle["x"], oracle["relevance"], perturbation="noise", draws=oracle["noise"],
                      multiply_by_inputs=bool(mbi), normalize=bool(normalize))
    ref = oracle[f"infidelity|noise|{mbi}|{normalize}"]
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=0)


@pytest.mark.parametrize("normalize, rtol", [(0, 1e-6), (1, 2e-5)])
def test_subset_infidelity_equals_captums(oracle, normalize, rtol):
    ours = infidelity(MODEL, oracle["x"], oracle["relevance"], perturbation="subset", draws=oracle["masks"],
                      baselines=0.25, normalize=bool(normalize))
    np.testing.assert_allclose(ours, oracle[f"infidelity|subset|1|{normalize}"], rtol=rtol, atol=0)


@pytest.mark.parametrize("method, key, params", [("gradient", "saliency", {}),
                                                 ("integrated_gradients", "integrated_gradients", {"steps": 8})])
def test_sensitivity_max_equals_captums(oracle, method, key, params):
    """Two exact maps (Captum's Saliency(abs=False) and riemann_left IG of 8 steps) at the same noisy copies."""
    ours = sensitivity_max(MODEL, method, oracle["x"], draws=oracle["uniform"], **params)
    np.testing.assert_allclose(ours, oracle[f"sensitivity|{key}"], rtol=1e-5, atol=0)
    assert (ours > 0.01).all()  # the maps moved: the check compares something


def test_a_linear_models_exact_map_has_no_infidelity():
    """f(x) − f(x − ξ) = ξ·w exactly, so the gradient w (read against ξ) and x ⊙ w (read against ξ / x) are
    perfectly faithful; a wrong map is not. A linear model's gradient never moves: sensitivity 0."""
    m, w = linear()
    x = np.random.default_rng(1).uniform(0.5, 1.5, (3, 6)).astype(np.float32)
    t = (x @ w).argmax(1)
    grad = w[:, t].T
    assert infidelity(m, x, grad, multiply_by_inputs=False, noise_scale=0.1).max() < 1e-9
    assert infidelity(m, x, x * grad, noise_scale=0.1).max() < 1e-9
    assert infidelity(m, x, x * grad, perturbation="subset").max() < 1e-9
    assert infidelity(m, x, -grad, multiply_by_inputs=False, noise_scale=0.1).min() > 1e-3
    # normalize forgives a scale: 3·grad is as faithful as grad
    assert infidelity(m, x, 3 * grad, multiply_by_inputs=False, normalize=True).max() < 1e-9
    np.testing.assert_array_equal(sensitivity_max(m, "gradient", x, n_perturb_samples=3), 0.0)


def test_which_maps_carry_the_input_factor():
    from onnxattr.metrics import includes_input

    assert not includes_input("gradient") and not includes_input("guided_backprop") and not includes_input("grad_cam")
    assert includes_input("input_t_gradient") and includes_input("lrp.epsilon") and includes_input(None)
    assert not includes_input("smoothgrad", {"base": "gradient"}) and includes_input("vargrad", {"base": "input_t_gradient"})


def test_draws_follow_the_seed():
    m, w = linear()
    x = np.ones((2, 6), np.float32)
    r = np.ones_like(x)
    a = infidelity(m, x, r, seed=3)
    np.testing.assert_array_equal(a, infidelity(m, x, r, seed=3))
    assert not np.array_equal(a, infidelity(m, x, r, seed=4))


@pytest.mark.parametrize("call, error, words", [
    (lambda m, x: infidelity(m, x, x[:, :2]), DataError, "the data"),
    (lambda m, x: infidelity(m, x, x, perturbation="blur"), UsageError, "perturbation must be one of"),
    (lambda m, x: infidelity(m, x, x, n_perturb_samples=0), UsageError, "n_perturb_samples must be"),
    (lambda m, x: infidelity(m, x, x, noise_scale=-1.0), UsageError, "noise_scale must be"),
    (lambda m, x: infidelity(m, x, x, perturbation="subset", fraction=1.5), UsageError, "fraction must be at most"),
    (lambda m, x: infidelity(m, x, x, draws=np.zeros((2, 3, 5))), DataError, "draws has shape"),
    (lambda m, x: infidelity(m, x, x, draws=np.zeros((2, 3, 6)), n_perturb_samples=4), DataError, "3 draws"),
    (lambda m, x: infidelity(m, x, x, draws=np.full((2, 1, 6), np.nan)), DataError, "NaN"),
    (lambda m, x: sensitivity_max(m, "gradient", x, radius=0), UsageError, "radius must be"),
    (lambda m, x: sensitivity_max(m, "gradient", x, neuron="index"), UsageError, "needs a target"),
])
def test_bad_calls_name_the_problem(call, error, words):
    m, _ = linear()
    x = np.ones((2, 6), np.float32)
    with pytest.raises(error, match=words):
        call(m, x)
