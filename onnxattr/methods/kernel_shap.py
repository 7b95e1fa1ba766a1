"""KernelSHAP (Lundberg & Lee 2017), as Captum's KernelShap computes it: the features are split into G groups by
a ``feature_mask``; S coalitions z (z_g = 1: group g keeps x, 0: it takes the baseline) are evaluated, and a
linear model y(z) ~ c + z . phi is fitted by weighted least squares (methods/least_squares.py, scikit-learn's
LinearRegression as Captum fits it). Group g gets phi_g, every feature of the group the group's value.

The coalitions are Captum's: the full one and the empty one first, with weight 10^6 (standing in for the
Shapley kernel's infinite weight, which makes the fit meet y(x) and y(baseline)); then coalitions of k groups
with k drawn from p(k) ~ (G - 1) / (k (G - k)), k = 1..G-1, every k-subset alike, each with weight 1 (drawn in
proportion to the Shapley kernel, so weighted alike). One set of coalitions serves the whole batch (Captum
draws anew per sample: each of our samples' estimates is distributed as Captum's), so the batch shares one
linear system. ``coalitions`` gives them instead (an [S, G] 0/1 array; weights by the same rule): the map is
then deterministic. On an additive model the fit is exact (phi_g = y's change when g alone is ablated); with
many draws it tends to the Shapley values.

The S forward passes run in chunks inside one forward-only ONNX Loop (methods/perturbation.py), which keeps
each coalition's drop y(x) - y(z) apart ([N, S]); the fit follows in float64.
"""

from __future__ import annotations

import os

import numpy as np
from onnx import TensorProto, numpy_helper

from onnxattr.errors import UsageError
from onnxattr.methods.base import Method, Param, Target, parse_int, parse_optional_int, positive_int, register_method
from onnxattr.methods.draws import SEED, random_orders, uniform
from onnxattr.methods.feature_groups import FEATURE_MASK, feature_groups
from onnxattr.methods.least_squares import MAX_SYSTEM, system_size, weighted_least_squares
from onnxattr.methods.perturbation import BASELINES, MAX_PERTURBATIONS, perturbation_loop, perturbed_features

DEFAULT_SAMPLES = 25  # Captum's
ENDPOINT_WEIGHT = 1e6  # Captum's KernelShap.inf_weight


def _parse_coalitions(s: str):
    return None if s.lower() in ("none", "") else s


def _coalitions_check(v):
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    if v is None or (isinstance(v, str) and v.endswith(".npy")):
        return None
    if isinstance(v, (str, bytes)):
        return "must be a 0/1 array [S, G], or (command line) a .npy file holding one"
    arr = np.asarray(v)
    if arr.ndim != 2 or arr.size == 0 or arr.dtype.kind not in "biuf" or not np.isin(arr, (0, 1)).all():
        return f"must be a non-empty 0/1 array [S coalitions, G groups], got {arr.dtype} {list(arr.shape)}"
    return None


def _positive_or_none(v):
    return None if v is None else positive_int(v)


COALITIONS = Param("coalitions", None, "the coalitions to evaluate, a 0/1 array [S, G] (1: the group keeps x; "
                   "on the command line a .npy file), in place of random draws (None: draw n_samples)",
                   _parse_coalitions, _coalitions_check, optional=True)


def shapley_kernel_weights(z: np.ndarray) -> np.ndarray:
    """Captum's sample weights: ENDPOINT_WEIGHT for the empty and the full coalition, 1 for the others."""
    held = z.sum(axis=1)
    return np.where((held == 0) | (held == z.shape[1]), ENDPOINT_WEIGHT, 1.0)


def size_distribution(groups: int) -> np.ndarray:
    """p(k) ~ (G - 1) / (k (G - k)) for k = 1..G-1, normalized (float64 [G - 1])."""
    k = np.arange(1, groups, dtype=np.float64)
    p = (groups - 1) / (k * (groups - k))
    return p / p.sum()


def _given_coalitions(value, groups: int) -> np.ndarray:
    if isinstance(value, (str, os.PathLike)):
        try:
            value = np.load(value, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UsageError(f"coalitions {value}: not a readable .npy array ({e})") from None
        err = _coalitions_check(value)
        if err:
            raise UsageError(f"kernel_shap: coalitions {err}")
    z = np.asarray(value, np.float64)
    if z.shape[1] != groups:
        raise UsageError(f"kernel_shap: coalitions of shape {list(z.shape)} give {z.shape[1]} groups, and the "
                         f"feature_mask makes {groups}: give one column per feature group")
    return z


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
    b, x = t.b, t.x
    features = perturbed_features(t, "kernel_shap", "groups")
    if p["feature_mask"] is None and not all(isinstance(d, int) for d in features):
        raise UsageError(f"kernel_shap needs the number of feature groups at compile time, and the features of "
                         f"'{x}' {[d if isinstance(d, int) else '?' for d in features]} are fixed only at run time: "
                         "give a feature_mask")
    given = p["coalitions"]
    n = p["n_samples"]

    def too_many(count: int) -> str | None:
        passes = DEFAULT_SAMPLES if n is None and given is None else n
        if passes is not None and passes > MAX_PERTURBATIONS:
            return f"kernel_shap would run {passes} forward passes; at most {MAX_PERTURBATIONS}"
        if passes is not None and system_size(passes, count) > MAX_SYSTEM:
            return (f"kernel_shap fits {count} feature groups to {passes} coalitions, a linear system of order "
                    f"{system_size(passes, count)}; at most {MAX_SYSTEM}: group the features with a feature_mask, "
                    "or evaluate fewer coalitions")
        return None

    groups, count, feats = feature_groups(t, p, features, too_many, 1, "coalitions")
    if given is not None:
        z_np = _given_coalitions(given, count)
        if n is not None and n != len(z_np):
            raise UsageError(f"kernel_shap: n_samples={n} and {len(z_np)} coalitions given; leave n_samples out")
        n = len(z_np)
        err = too_many(count)
        if err:
            raise UsageError(err)
        weights = shapley_kernel_weights(z_np)
        z = b.const(z_np, np.float64, "kernel_shap_coalitions")
    else:
        n = DEFAULT_SAMPLES if n is None else n
        if count < 2 and n > 2:
            raise UsageError("kernel_shap draws coalitions of 1..G-1 of the G feature groups, and there is one group: "
                             "its value is y(x) - y(baseline) (feature_ablation gives it)")
        weights = np.array([ENDPOINT_WEIGHT] * min(n, 2) + [1.0] * (n - 2))
        z = _drawn_coalitions(b, count, n, p["seed"])
    if b.value(z) is not None:  # a constant the Loop body reads first would move into the body
        z = b.op("Identity", [z])  # (sampling._body_weights), and the fit after the Loop reads it too
    slots = b.const(np.arange(n), np.int64, "kernel_shap_slot")

    def left_out(cb, ks):
        held = cb.op("Gather", [cb.op("Gather", [z, ks], axis=0), groups], axis=1)  # [c, 1, *F']
        return cb.op("Cast", [cb.op("Sub", [cb.const(1.0, np.float64), held])], to=b.float_type(x))

    def slot(cb, ks):  # coalition k's drop goes to column k
        one_hot = cb.op("Cast", [cb.op("Equal", [cb.op("Unsqueeze", [ks, cb.ints([1])]), slots])],
                        to=TensorProto.DOUBLE)
        return cb.op("Unsqueeze", [one_hot, cb.ints([1])])  # [c, 1, S]

    drops_of = b.op("ConstantOfShape", [b.op("Concat", [b.op("Slice", [b.op("Shape", [x]), b.ints([0]), b.ints([1])]),
                                                         b.ints([n])], axis=0)])
    b.shapes[drops_of] = [b.shape(x)[0], n]
    drops = perturbation_loop(t, p, "kernel_shap", n, feats, left_out, weight_of=slot, acc_like=drops_of)  # [N, S]
    # the fit of the drops y(x) - y(z) has the opposite slopes of the fit of y(z)
    phi = b.op("Neg", [weighted_least_squares(b, z, weights, b.op("Cast", [drops], to=TensorProto.DOUBLE), count)])
    per_feature = b.op("Squeeze", [b.op("Gather", [phi, groups], axis=1), b.ints([1])])  # [N, *F']
    out = b.op("Cast", [b.op("Expand", [per_feature, b.op("Shape", [x])])], to=TensorProto.FLOAT)
    b.set_info(out, x)
    b.types[out] = TensorProto.FLOAT
    return out


register_method(Method(
    "kernel_shap", "KernelSHAP (Captum's KernelShap): a linear model of the selected output over coalitions of the "
    "feature groups (feature_mask; left-out groups take a baseline), fitted by weighted least squares with the "
    "Shapley kernel; each feature gets its group's coefficient.", build_kernel_shap,
    (FEATURE_MASK, BASELINES,
     Param("n_samples", None, f"coalitions evaluated, the full and the empty one among them (None: Captum's default "
           f"{DEFAULT_SAMPLES}, or as many as coalitions gives)", parse_optional_int, _positive_or_none, optional=True),
     COALITIONS, SEED,
     Param("chunk_size", 16, "forward passes per Loop iteration (bounds memory)", parse_int, positive_int)),
    random=True,
))
