"""LIME (Ribeiro et al. 2016), as Captum's Lime computes it by default: n_samples coalitions of the feature groups
(each group kept with probability 1/2, as torch.bernoulli draws them; the others take the baseline) are evaluated,
each weighted by its similarity to x,

    w = exp(-d^2 / (2 kernel_width^2)),   d = 1 - cos(x, x_z) (distance "cosine") or |x - x_z| (distance
    "euclidean"), over all of x's features (torch's cosine: x . x_z / (max(|x|, 1e-8) max(|x_z|, 1e-8))),

and a linear surrogate y(z) ~ c + z . phi is fitted by scikit-learn's Lasso (alpha = 0.01, Captum's
SkLearnLasso; interpretable_model="lasso") or LinearRegression ("linear"), with those weights
(methods/least_squares.py). Every feature of a group gets the group's phi. The similarities are computed from
per-group sums of x^2, x b and b^2 (b the baseline), so no perturbed input is formed for them. For an output that
is one number for the batch (a loss), the batch is one input, as Captum treats it. See methods/surrogate.py for
what LIME shares with KernelSHAP.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper

from onnxattr.errors import UsageError
from onnxattr.methods.base import (
    Method, Param, Target, chunk_param, non_negative, one_of, parse_optional_int, reference_constant, register_method,
)
from onnxattr.methods.draws import SEED, uniform
from onnxattr.methods.feature_groups import FEATURE_MASK
from onnxattr.methods.least_squares import weighted_lasso, weighted_least_squares
from onnxattr.methods.perturbation import BASELINES
from onnxattr.methods.surrogate import COALITIONS, coalition_drops, positive_or_none, spread, surrogate_groups

DEFAULT_SAMPLES = 25  # Captum's Lime.attribute
MAX_LASSO_GROUPS = 1024  # the Lasso keeps an [N, G, G] float64 matrix and multiplies by it every FISTA trip


def _width_check(v):
    if not isinstance(v, (int, float)) or not 1e-100 <= v <= 1e100:
        return "must be a number between 1e-100 and 1e100 (the kernel divides by 2 kernel_width^2)"
    return None
COSINE_EPS = 1e-8  # torch.nn.CosineSimilarity's


def _drawn(b, groups: int, n: int, seed) -> str:
    """float64 [n, G]: each group held with probability 1/2 (Captum's default_perturb_func), shared by the batch."""
    like = b.op("ConstantOfShape", [b.ints([n, groups])], value=numpy_helper.from_array(np.zeros(1)))
    return b.op("Cast", [b.op("Less", [uniform(b, like, seed, 0, TensorProto.DOUBLE), b.const(0.5, np.float64)])],
                to=TensorProto.DOUBLE)


def similarity(t: Target, p: dict, z: str, groups: str, count: int) -> str:
    """float64 [N, S] (or [1, S] for a loss over the batch): exp(-d^2 / (2 kernel_width^2)) between x and x with
    coalition s applied (module docstring), divided by the row's largest."""
    b, x = t.b, t.x
    shape = b.op("Shape", [x])
    rows = b.op("Slice", [shape, b.ints([0]), b.ints([1])])
    flat = lambda v: b.op("Reshape", [v, b.op("Concat", [rows, b.ints([-1])], axis=0)])  # noqa: E731  [N, F]
    xs = flat(b.op("Cast", [x], to=TensorProto.DOUBLE))
    base = reference_constant(b, x, p["baselines"], "baselines")
    bs = flat(b.op("Cast", [b.op("Expand", [base, shape])], to=TensorProto.DOUBLE))
    ids = flat(b.op("Expand", [groups, shape]))
    zeros = b.op("ConstantOfShape", [b.op("Concat", [rows, b.ints([count])], axis=0)],
                 value=numpy_helper.from_array(np.zeros(1)))

    def per_group(v):  # [N, G]: the sum of v over each group's features (over the batch too for a loss)
        summed = b.op("ScatterElements", [zeros, ids, v], axis=1, reduction="add")
        return b.reduce("ReduceSum", summed, [0]) if b.rank(t.y) == 0 else summed

    xx, xb, bb = per_group(b.op("Mul", [xs, xs])), per_group(b.op("Mul", [xs, bs])), per_group(b.op("Mul", [bs, bs]))
    held = b.op("Transpose", [z], perm=[1, 0])  # [G, S]
    left = b.op("Sub", [b.const(1.0, np.float64), held])
    if p["distance"] == "euclidean":  # |x - x_z|^2: the left-out groups' sum of (x - b)^2
        squared = b.op("MatMul", [b.op("Add", [b.op("Sub", [xx, b.op("Mul", [xb, b.const(2.0, np.float64)])]), bb]),
                                  left])
    else:
        dot = b.op("Add", [b.op("MatMul", [xx, held]), b.op("MatMul", [xb, left])])  # x . x_z
        norm_z = b.op("Sqrt", [b.op("Add", [b.op("MatMul", [xx, held]), b.op("MatMul", [bb, left])])])
        norm_x = b.op("Sqrt", [b.reduce("ReduceSum", xx, [1])])
        eps = b.const(COSINE_EPS, np.float64)
        cos = b.op("Div", [dot, b.op("Mul", [b.op("Max", [norm_x, eps]), b.op("Max", [norm_z, eps])])])
        d = b.op("Sub", [b.const(1.0, np.float64), cos])
        squared = b.op("Mul", [d, d])
    scale = b.const(-1.0 / (2.0 * float(p["kernel_width"]) ** 2), np.float64)
    log_w = b.op("Mul", [squared, scale])
    # the fits depend on the weights' ratios only: each row is divided by its largest weight (in the exponent),
    # so that far inputs (all weights below 1e-308, or squared away in the fit) keep their ratios
    return b.op("Exp", [b.op("Sub", [log_w, b.reduce("ReduceMax", log_w, [1])])])


def build_lime(t: Target, p: dict) -> str:
    b = t.b
    groups, count, feats, given = surrogate_groups(t, p, "lime", DEFAULT_SAMPLES)
    if p["interpretable_model"] == "lasso" and count > MAX_LASSO_GROUPS:
        raise UsageError(f"lime's Lasso fits {count} feature groups, at most {MAX_LASSO_GROUPS} (it keeps a G x G "
                         "matrix per sample and multiplies by it on every FISTA step): group the features with a "
                         "feature_mask (superpixels), or use interpretable_model='linear'")
    if given is not None:
        n = len(given)
        z = b.const(given, np.float64, "lime_coalitions")
    else:
        n = DEFAULT_SAMPLES if p["n_samples"] is None else p["n_samples"]
        z = _drawn(b, count, n, p["seed"])
    weights = similarity(t, p, z, groups, count)
    drops = b.op("Cast", [coalition_drops(t, p, "lime", z, groups, feats, n)], to=TensorProto.DOUBLE)  # [N, S]
    # the fit of the drops y(x) - y(z) has the opposite slopes of the fit of y(z) (the L1 penalty is symmetric)
    if p["interpretable_model"] == "linear":
        phi = weighted_least_squares(b, z, weights, drops, count, n)
    else:
        phi = weighted_lasso(b, z, weights, drops, count, p["alpha"])
    return spread(t, b.op("Neg", [phi]), groups)


register_method(Method(
    "lime", "LIME (Captum's Lime): a linear model of the selected output over random coalitions of the feature "
    "groups (feature_mask; left-out groups take a baseline), weighted by their similarity to x and fitted by Lasso "
    "(or least squares); each feature gets its group's coefficient.", build_lime,
    (FEATURE_MASK, BASELINES,
     Param("n_samples", None, f"coalitions evaluated (None: Captum's default {DEFAULT_SAMPLES}, or as many as "
           "coalitions gives)", parse_optional_int, positive_or_none, optional=True),
     COALITIONS,
     Param("interpretable_model", "lasso", "the surrogate: 'lasso' (Captum's default SkLearnLasso) or 'linear' "
           "(SkLearnLinearRegression)", str, one_of("lasso", "linear")),
     Param("alpha", 0.01, "the Lasso's L1 weight (Captum's default)", float, non_negative),
     Param("distance", "cosine", "distance of the similarity kernel: 'cosine' or 'euclidean' (Captum's "
           "get_exp_kernel_similarity_function)", str, one_of("cosine", "euclidean")),
     Param("kernel_width", 1.0, "width of the exponential similarity kernel", float, _width_check),
     SEED,
     chunk_param("forward passes")),
    random=True,
))
