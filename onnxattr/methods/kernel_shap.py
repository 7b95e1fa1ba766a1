"""KernelSHAP (Lundberg & Lee 2017), as Captum's KernelShap computes it: the features are split into G groups by
a ``feature_mask``; S coalitions z (z_g = 1: group g keeps x, 0: it takes the baseline) are evaluated, and a
linear model y(z) ~ c + z . phi is fitted by weighted least squares (methods/least_squares.py, scikit-learn's
LinearRegression as Captum fits it). Group g gets phi_g, every feature of the group the group's value.

The coalitions are Captum's: the full one and the empty one first, with weight 10^6 (standing in for the
Shapley kernel's infinite weight, which makes the fit meet y(x) and y(baseline)); then coalitions of k groups
with k drawn from p(k) ~ (G - 1) / (k (G - k)), k = 1..G-1, every k-subset alike, each with weight 1 (drawn in
proportion to the Shapley kernel, so weighted alike). One set of coalitions serves the whole batch (Captum
draws anew per sample: each of our samples' estimates is distributed as Captum's), so the batch shares one
design matrix. ``coalitions`` gives them instead (an [S, G] 0/1 array; weights by the same rule): the map is
then deterministic. On an additive model the fit is exact (phi_g = y's change when g alone is ablated) where the
coalitions determine it (independent ones, more than the groups; else the least-norm fit, as Captum's); with
many draws it tends to the Shapley values.

The S forward passes run in chunks inside one forward-only ONNX Loop (methods/perturbation.py), which keeps
each coalition's drop y(x) - y(z) apart ([N, S]); the fit follows in float64.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper

from onnxattr.errors import UsageError
from onnxattr.methods.base import Method, Param, Target, chunk_param, parse_optional_int, register_method
from onnxattr.methods.draws import SEED, random_orders, uniform
from onnxattr.methods.feature_groups import FEATURE_MASK
from onnxattr.methods.least_squares import weighted_least_squares
from onnxattr.methods.perturbation import BASELINES
from onnxattr.methods.surrogate import COALITIONS, coalition_drops, positive_or_none, spread, surrogate_groups

DEFAULT_SAMPLES = 25  # Captum's
ENDPOINT_WEIGHT = 1e6  # Captum's KernelShap.inf_weight


def shapley_kernel_weights(z: np.ndarray) -> np.ndarray:
    """Captum's sample weights: ENDPOINT_WEIGHT for the empty and the full coalition, 1 for the others."""
    held = z.sum(axis=1)
    return np.where((held == 0) | (held == z.shape[1]), ENDPOINT_WEIGHT, 1.0)


def size_distribution(groups: int) -> np.ndarray:
    """p(k) ~ (G - 1) / (k (G - k)) for k = 1..G-1, normalized (float64 [G - 1])."""
    k = np.arange(1, groups, dtype=np.float64)
    p = (groups - 1) / (k * (groups - k))
    return p / p.sum()


def _drawn_coalitions(b, groups: int, n: int, seed) -> str:
    """float64 [n, G]: the full coalition, the empty one, then n - 2 drawn as Captum draws them (module
    docstring), shared by the batch."""
    ends = b.const(np.array([[1.0] * groups, [0.0] * groups])[:n], np.float64, "kernel_shap_ends")
    if n <= 2:
        return ends
    draws = n - 2
    if groups == 2:
        size = b.const(np.ones((draws, 1), np.int64), np.int64, "kernel_shap_size")
    else:
        u = uniform(b, b.op("ConstantOfShape", [b.ints([draws, 1])], value=numpy_helper.from_array(np.zeros(1))),
                    seed, 0, TensorProto.DOUBLE)  # [draws, 1]
        cdf = np.cumsum(size_distribution(groups))[:-1]  # P(k <= j), j = 1..G-2
        passed = b.op("Cast", [b.op("GreaterOrEqual", [u, b.const(cdf, np.float64, "kernel_shap_cdf")])],
                      to=TensorProto.INT64)
        size = b.op("Add", [b.reduce("ReduceSum", passed, [1]), b.const(1, "int64")])  # k, [draws, 1]
    # a random order of the groups per draw; the k groups ranked first are held
    order = random_orders(b, b.ints([draws, groups]), b.ints([groups]), seed, 1)
    held = b.op("Cast", [b.op("Less", [order, size])], to=TensorProto.DOUBLE)
    return b.op("Concat", [ends, held], axis=0)


def build_kernel_shap(t: Target, p: dict) -> str:
    b = t.b
    groups, count, feats, given = surrogate_groups(t, p, "kernel_shap", DEFAULT_SAMPLES)
    if given is not None:
        n, weights = len(given), shapley_kernel_weights(given)
        z = b.const(given, np.float64, "kernel_shap_coalitions")
    else:
        n = DEFAULT_SAMPLES if p["n_samples"] is None else p["n_samples"]
        if count < 2 and n > 2:
            raise UsageError("kernel_shap draws coalitions of 1..G-1 of the G feature groups, and there is one group: "
                             "its value is y(x) - y(baseline) (feature_ablation gives it)")
        weights = np.array([ENDPOINT_WEIGHT] * min(n, 2) + [1.0] * (n - 2))
        z = _drawn_coalitions(b, count, n, p["seed"])
    drops = coalition_drops(t, p, "kernel_shap", z, groups, feats, n)  # [N, S]
    # the fit of the drops y(x) - y(z) has the opposite slopes of the fit of y(z)
    w = b.const(weights.reshape(1, -1), np.float64, "sample_w")
    phi = weighted_least_squares(b, z, w, b.op("Cast", [drops], to=TensorProto.DOUBLE), count, n)
    return spread(t, b.op("Neg", [phi]), groups)


register_method(Method(
    "kernel_shap", "KernelSHAP (Captum's KernelShap): a linear model of the selected output over coalitions of the "
    "feature groups (feature_mask; left-out groups take a baseline), fitted by weighted least squares with the "
    "Shapley kernel; each feature gets its group's coefficient.", build_kernel_shap,
    (FEATURE_MASK, BASELINES,
     Param("n_samples", None, f"coalitions evaluated, the full and the empty one among them (None: Captum's default "
           f"{DEFAULT_SAMPLES}, or as many as coalitions gives)", parse_optional_int, positive_or_none, optional=True),
     COALITIONS, SEED,
     chunk_param("forward passes")),
    random=True,
))
