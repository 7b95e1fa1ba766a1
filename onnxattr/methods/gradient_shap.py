"""GradientSHAP (Lundberg & Lee 2017; Captum's GradientShap, "expected gradients"): for each of n draws
per sample, a baseline r drawn from a set of baselines, a point on the line from r to the (noisy) input
at a uniform random position alpha, and

    R = mean over draws of (x_k - r_k) * grad(r_k + alpha_k (x_k - r_k)),      x_k = x + N(0, stdevs^2)

an estimate of SHAP values when the baselines sample the data distribution. Run as one in-graph Loop,
like integrated_gradients and smoothgrad (onnxattr/sampling.py).
"""

from __future__ import annotations

from onnx import TensorProto

from onnxattr.errors import UsageError
from onnxattr.methods.base import (
    Method, Param, Target, chunk_size, in_float_range, non_negative, parse_int, positive_int, register_method,
)
from onnxattr.methods.draws import SEED, uniform
from onnxattr.methods.gradient import CHUNK, noisy_copies
from onnxattr.sampling import sample_loop


BASELINE_SET = Param("baselines", 0.0, "the baselines: a number, or (Python API) an array of x's features or a set "
                     "[B, ...] of them (a background sample of the data, as SHAP's explainers take one)")


def baseline_set(b, x: str, value) -> tuple[str, int]:
    """(a constant [B, ...] of x's float type, B): an array of x's rank is a set of B baselines (Captum's
    distribution of baselines), anything of lower rank one baseline broadcast to x's features."""
    rank, dtype = b.rank(x), b.float_dtype(x)
    arr = in_float_range(value, dtype, "baselines")
    if arr.ndim > rank:
        raise UsageError(f"parameter baselines: an array of rank {arr.ndim} for an input of rank {rank}")
    if arr.ndim < rank:
        arr = arr.reshape((1,) * (rank - arr.ndim) + arr.shape)
    features = (b.shape(x) or [None] * rank)[1:]
    if not all(a == 1 or not isinstance(d, int) or a == d for a, d in zip(arr.shape[1:], features)):
        shown = [d if isinstance(d, int) else "?" for d in features]
        raise UsageError(f"parameter baselines: baselines of shape {list(arr.shape[1:])} do not broadcast to the "
                         f"input's features {shown}")
    if arr.shape[0] == 0:
        raise UsageError("parameter baselines: the set of baselines is empty")
    return b.const(arr, dtype, "baselines"), arr.shape[0]


def build_gradient_shap(t: Target, p: dict) -> str:
    b, x, n = t.b, t.x, p["n_samples"]
    rank = b.rank(x)
    baselines, count_b = baseline_set(b, x, p["baselines"])
    diffs = {}

    def points(cb, x_, ks, count):
        noisy = noisy_copies(cb, x_, count, p["stdevs"], p["seed"])
        rows = cb.op("ConstantOfShape", [cb.op("Slice", [cb.op("Shape", [noisy]), cb.ints([0]), cb.ints([1])])],
                     value=cb.fill_value(0.0, None))  # [count * N] float32
        # the pick and alpha from ONE generator ([rows, 2], interleaved): two RandomUniformLike ops seeded k and
        # k + 1 give (k c_j, (k + 1) c_j) mod 1 of one sequence c_j in onnxruntime (minstd_rand0): dependent
        pair = uniform(cb, cb.op("ConstantOfShape", [cb.op("Concat", [cb.op("Shape", [rows]), cb.ints([2])], axis=0)],
                              value=cb.fill_value(0.0, None)), p["seed"], 1)
        u_pick = cb.op("Squeeze", [cb.op("Slice", [pair, cb.ints([0]), cb.ints([1]), cb.ints([1])]), cb.ints([1])])
        u_alpha = cb.op("Squeeze", [cb.op("Slice", [pair, cb.ints([1]), cb.ints([2]), cb.ints([1])]), cb.ints([1])])
        if count_b == 1:
            base = baselines
        else:
            pick = cb.op("Floor", [cb.op("Mul", [u_pick, cb.scalar(float(count_b))])])
            index = cb.op("Min", [cb.op("Cast", [pick], to=TensorProto.INT64), cb.const(count_b - 1, "int64")])
            base = cb.op("Gather", [baselines, index])
        alpha = cb.op("Reshape", [u_alpha, cb.ints([-1] + [1] * (rank - 1))])
        if cb.float_type(x_) != TensorProto.FLOAT:
            alpha = cb.op("Cast", [alpha], to=cb.float_type(x_))
        diff = cb.op("Sub", [noisy, base])
        diffs["diff"] = diff
        return cb.op("Add", [base, cb.op("Mul", [alpha, diff])])

    def times_diff(cb, g, pts, ks):
        return cb.op("Mul", [g, diffs["diff"]])

    return sample_loop(b, t.nodes, x, t.y, t.index, n, chunk_size(t, p), points, per_sample=times_diff, mean_over=n)


register_method(Method(
    "gradient_shap", "GradientSHAP (Captum's GradientShap): mean of (x - r) * gradient at a random point "
    "between a random baseline r and the noisy input.", build_gradient_shap,
    (Param("n_samples", 5, "draws per sample (Captum's default)", parse_int, positive_int),
     BASELINE_SET,
     Param("stdevs", 0.0, "standard deviation of the Gaussian noise added to the input", float, non_negative),
     SEED, CHUNK), random=True))
