"""Shapley values of feature groups (Shapley 1953; Strumbelj & Kononenko 2014), as Captum's ShapleyValues and
ShapleyValueSampling compute them. The features are split into G groups by a ``feature_mask`` (default: each
feature alone); a coalition S of groups is evaluated with the groups outside S at the baseline, v(S), and
group i gets its mean increase of v when it joins, over all orders of the groups,

    phi_i = sum over S not holding i of w(|S|) (v(S + i) - v(S)),      w(s) = s! (G - s - 1)! / G!,

every feature of a group getting the group's value (Captum's convention). The values add up to
y(x) - y(baseline) per sample.

``shapley_values`` evaluates the 2^G - 1 coalitions but the full one (Captum walks all G! orders: G x G!
passes). Written with the drops d(S) = y(x) - v(S), d(full) = 0, and the weights of a group summing to 0:

    phi_i = sum over S of d(S) (w(|S|) [i not in S] - w(|S| - 1) [i in S]).

``shapley_value_sampling`` averages over ``n_samples`` random orders of the groups (an unbiased estimate, exact on
an additive model). An order ranks group i at r_i; the coalitions S_j of the groups ranked below j, j = 0..G-1,
are evaluated, and

    phi_i = mean over orders of d(S_{r_i}) - d(S_{r_i + 1}).

Both run forward passes only, in chunks inside one ONNX Loop (methods/perturbation.py), summed in float64.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from onnxattr.errors import UsageError
from onnxattr.methods.base import Method, Param, Target, chunk_param, parse_int, positive_int, register_method
from onnxattr.methods.draws import SEED, random_orders
from onnxattr.methods.feature_groups import FEATURE_MASK, feature_groups
from onnxattr.methods.perturbation import BASELINES, MAX_PERTURBATIONS, perturbation_loop, perturbed_features

MAX_EXACT_GROUPS = int(math.log2(MAX_PERTURBATIONS))  # 2^G - 1 coalitions


def _exact_too_many(count: int) -> str | None:
    if count > MAX_EXACT_GROUPS:
        return (f"shapley_values evaluates all 2^G - 1 coalitions of the G feature groups, and the input has G = "
                f"{count} of them; at most {MAX_EXACT_GROUPS}: group the features with a feature_mask, or estimate "
                "the values with shapley_value_sampling")
    return None


def coalition_weights(groups: int) -> np.ndarray:
    """w(s) = s! (G - s - 1)! / G! for s = 0..G-1, in float64: the share of the orders of G groups in which a
    given group joins a given coalition of s others."""
    return np.array([1.0 / (groups * math.comb(groups - 1, s)) for s in range(groups)])


def _column(cb, v, rank: int) -> str:
    """[c] -> [c, 1, 1...]: one value per perturbation, broadcasting to its mask [c, 1, *F']."""
    return cb.op("Reshape", [v, cb.ints([-1] + [1] * (rank + 1))])


def build_shapley_values(t: Target, p: dict) -> str:
    b, x = t.b, t.x
    features = perturbed_features(t, "shapley_values", "groups")
    rank = len(features)
    if p["feature_mask"] is None and not all(isinstance(d, int) for d in features):
        raise UsageError(f"shapley_values needs the number of feature groups at compile time, and the features of "
                         f"'{x}' {[d if isinstance(d, int) else '?' for d in features]} are fixed only at run time: "
                         "give a feature_mask, or use shapley_value_sampling")
    groups, count, feats = feature_groups(t, p, features, _exact_too_many, 0, "groups")
    weights = coalition_weights(count)
    w_table = b.const(np.append(weights, 0.0), np.float64, "shapley_w")  # [G + 1]; w(G) is never read
    place = b.const(2 ** np.arange(count, dtype=np.int64), np.int64, "shapley_bit")  # group g is bit g of k
    found = {}

    def coalitions(cb, ks):
        """Coalition k holds group g where bit g of k is 1; mask 1 where a feature is left out."""
        q = cb.op("Div", [cb.op("Unsqueeze", [ks, cb.ints([1])]), place])  # [c, G]
        bits = cb.op("Sub", [q, cb.op("Mul", [cb.op("Div", [q, cb.const(2, "int64")]), cb.const(2, "int64")])])
        size = cb.op("Cast", [cb.op("ReduceSum", [cb.op("Cast", [bits], to=TensorProto.FLOAT), cb.ints([1])],
                                    keepdims=0)], to=TensorProto.INT64)  # |S| (a float sum: exact up to 2^24)
        held = cb.op("Gather", [bits, groups], axis=1)  # [c, 1, *F']
        found["held"] = cb.op("Equal", [held, cb.const(1, "int64")])
        found["joins"] = _column(cb, cb.op("Gather", [w_table, size]), rank)  # w(|S|): i outside S
        found["leaves"] = _column(cb, cb.op("Neg", [cb.op("Gather", [w_table, cb.op(
            "Max", [cb.op("Sub", [size, cb.const(1, "int64")]), cb.const(0, "int64")])])]), rank)  # -w(|S| - 1)
        return cb.op("Cast", [cb.op("Not", [found["held"]])], to=b.float_type(x))

    def weight(cb, ks):
        return cb.op("Where", [found["held"], found["leaves"], found["joins"]])

    return perturbation_loop(t, p, "shapley_values", 2 ** count - 1, feats, coalitions, weight_of=weight)


def _sampling_too_many(n: int):
    def check(count: int) -> str | None:
        if n * count > MAX_PERTURBATIONS:
            return (f"shapley_value_sampling would run {n * count} forward passes (n_samples={n} orders of {count} "
                    f"feature groups); at most {MAX_PERTURBATIONS}: group the features with a feature_mask, or "
                    "draw fewer orders")
        return None

    return check


def build_shapley_value_sampling(t: Target, p: dict) -> str:
    b, x, n = t.b, t.x, p["n_samples"]
    features = perturbed_features(t, "shapley_value_sampling", "groups")
    rank = len(features)
    groups, count, feats = feature_groups(t, p, features, _sampling_too_many(n), n, "orders")
    g = b.const(np.array([count], np.int64), np.int64, "groups") if isinstance(count, int) else \
        b.op("Reshape", [count, b.ints([1])])
    # n random orders, as the ranks of the groups (the rank table of a random order is a random order too)
    ranks = random_orders(b, b.op("Concat", [b.ints([n]), g], axis=0), g, p["seed"], 0)  # int64 [n, G]
    passes = n * count if isinstance(count, int) else b.op("Mul", [count, b.const(n, "int64")])
    group_count = b.const(count, "int64") if isinstance(count, int) else count
    found = {}

    def steps(cb, ks):
        """Perturbation k is step j = k mod G of order k // G: the groups ranked j or later are left out."""
        order = cb.op("Div", [ks, group_count])
        j = _column(cb, cb.op("Sub", [ks, cb.op("Mul", [order, group_count])]), rank)  # [c, 1, 1...]
        rank_of = cb.op("Gather", [cb.op("Gather", [ranks, order]), groups], axis=1)  # [c, 1, *F']
        found["joins"] = cb.op("Equal", [rank_of, j])  # the group that joins after step j: + d(S_j)
        found["joined"] = cb.op("Equal", [rank_of, cb.op("Sub", [j, cb.const(1, "int64")])])  # - d(S_j)
        return cb.op("Cast", [cb.op("GreaterOrEqual", [rank_of, j])], to=b.float_type(x))

    def weight(cb, ks):
        as_double = lambda v: cb.op("Cast", [v], to=TensorProto.DOUBLE)  # noqa: E731
        return cb.op("Sub", [as_double(found["joins"]), as_double(found["joined"])])

    return perturbation_loop(t, p, "shapley_value_sampling", passes, feats, steps, weight_of=weight, mean_over=n)


register_method(Method(
    "shapley_values", "Shapley values (Captum's ShapleyValues): each feature group's mean increase of the selected "
    "output when it joins the others, over all orders; left-out groups take a baseline (exact: 2^G - 1 forward "
    "passes, G <= 20 groups).", build_shapley_values,
    (FEATURE_MASK, BASELINES,
     chunk_param("coalitions")),
))

register_method(Method(
    "shapley_value_sampling", "Shapley value sampling (Captum's ShapleyValueSampling): the Shapley values estimated "
    "over n_samples random orders of the feature groups (n_samples x G forward passes).",
    build_shapley_value_sampling,
    (FEATURE_MASK, BASELINES,
     Param("n_samples", 25, "random orders of the groups (Captum's default)", parse_int, positive_int),
     SEED,
     chunk_param("forward passes")),
    random=True,
))
