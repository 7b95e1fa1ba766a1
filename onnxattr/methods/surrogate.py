"""What KernelSHAP and LIME share (Captum's LimeBase): S coalitions z of the G feature groups (z_g = 1: group g keeps
x, 0: it takes the baseline) are evaluated by forward passes, and a linear surrogate y(z) ~ c + z . phi is fitted
to them (methods/least_squares.py); every feature gets its group's phi. The group count must be known at compile
time; the coalitions are drawn by the method, or given (``coalitions``, an [S, G] 0/1 array: the map is then
deterministic). One set of coalitions serves the whole batch.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from onnxattr.errors import UsageError
from onnxattr.methods.base import Param, Target, positive_int
from onnxattr.methods.feature_groups import array_or_npy_check, feature_groups, loaded, parse_array_or_npy
from onnxattr.methods.least_squares import MAX_FIT_WORK, fit_work
from onnxattr.methods.perturbation import MAX_PERTURBATIONS, perturbation_loop, perturbed_features


def _coalitions_error(arr: np.ndarray) -> str | None:
    if arr.ndim != 2 or arr.size == 0 or arr.dtype.kind not in "biuf" or not np.isin(arr, (0, 1)).all():
        return f"must be a non-empty 0/1 array [S coalitions, G groups], got {arr.dtype} {list(arr.shape)}"
    return None


coalitions_check = array_or_npy_check("a 0/1 array [S, G]", _coalitions_error)


def positive_or_none(v):
    return None if v is None else positive_int(v)


COALITIONS = Param("coalitions", None, "the coalitions to evaluate, a 0/1 array [S, G] (1: the group keeps x; "
                   "on the command line a .npy file), in place of random draws (None: draw n_samples)",
                   parse_array_or_npy, coalitions_check, optional=True)


def surrogate_groups(t: Target, p: dict, method: str, default_samples: int):
    """(groups, G, feats, given) as feature_groups returns them, with the group count G an int, and the given
    coalitions as float64 [S, G] (None when drawn), refusing what cannot be fitted: a group count known only at
    run time, more forward passes than MAX_PERTURBATIONS, a fit above MAX_FIT_WORK, coalitions that do not match
    the groups or n_samples."""
    x = t.x
    features = perturbed_features(t, method, "groups")
    if p["feature_mask"] is None and not all(isinstance(d, int) for d in features):
        raise UsageError(f"{method} needs the number of feature groups at compile time, and the features of "
                         f"'{x}' {[d if isinstance(d, int) else '?' for d in features]} are fixed only at run time: "
                         "give a feature_mask")
    given, n = p["coalitions"], p["n_samples"]

    def too_many(count: int, passes=None) -> str | None:
        passes = passes or (default_samples if n is None and given is None else n)
        if passes is not None and passes > MAX_PERTURBATIONS:
            return f"{method} would run {passes} forward passes; at most {MAX_PERTURBATIONS}"
        if passes is not None and fit_work(passes, count) > MAX_FIT_WORK:
            return (f"{method} fits {count} feature groups to {passes} coalitions, and S G min(S, G) = "
                    f"{fit_work(passes, count):.2g} is above {MAX_FIT_WORK:.0e} (a fit of minutes): group the features "
                    "with a feature_mask, or evaluate fewer coalitions")
        return None

    groups, count, feats = feature_groups(t, p, features, too_many, 1, "coalitions")
    if given is None:
        return groups, count, feats, None
    z = np.asarray(loaded(given, "coalitions", coalitions_check, method), np.float64)
    if z.shape[1] != count:
        made = "the feature_mask makes" if p["feature_mask"] is not None else \
            "the input has (no feature_mask: every feature its own group)"
        raise UsageError(f"{method}: coalitions of shape {list(z.shape)} give {z.shape[1]} groups, and {made} "
                         f"{count}: give one column per feature group")
    if n is not None and n != len(z):
        raise UsageError(f"{method}: n_samples={n} and {len(z)} coalitions given; leave n_samples out")
    err = too_many(count, len(z))
    if err:
        raise UsageError(err)
    return groups, count, feats, z


def coalition_drops(t: Target, p: dict, method: str, z: str, groups: str, feats: str, n: int) -> str:
    """float32 [N, S]: y(x) - y(x with the groups that coalition s leaves out at the baseline), for the n
    coalitions z (float64 [S, G]), each kept apart in one forward-only Loop (methods/perturbation.py)."""
    b, x = t.b, t.x
    if b.value(z) is not None:  # a constant the Loop body reads first would move into the body
        z = b.op("Identity", [z])  # (sampling._body_weights), and the fit after the Loop reads it too
    slots = b.const(np.arange(n), np.int64, "coalition_slot")

    def left_out(cb, ks):
        held = cb.op("Gather", [cb.op("Gather", [z, ks], axis=0), groups], axis=1)  # [c, 1, *F']
        return cb.op("Cast", [cb.op("Sub", [cb.const(1.0, np.float64), held])], to=b.float_type(x))

    def slot(cb, ks):  # coalition k's drop goes to column k
        one_hot = cb.op("Cast", [cb.op("Equal", [cb.op("Unsqueeze", [ks, cb.ints([1])]), slots])],
                        to=TensorProto.DOUBLE)
        return cb.op("Unsqueeze", [one_hot, cb.ints([1])])  # [c, 1, S]

    rows = b.op("Slice", [b.op("Shape", [x]), b.ints([0]), b.ints([1])])
    drops_of = b.op("ConstantOfShape", [b.op("Concat", [rows, b.ints([n])], axis=0)])
    b.shapes[drops_of] = [b.shape(x)[0], n]
    return perturbation_loop(t, p, method, n, feats, left_out, weight_of=slot, acc_like=drops_of)


def spread(t: Target, phi: str, groups: str) -> str:
    """The map: every feature of group g gets phi_g (phi float64 [N, G]), in float32."""
    b, x = t.b, t.x
    per_feature = b.op("Squeeze", [b.op("Gather", [phi, groups], axis=1), b.ints([1])])  # [N, *F']
    out = b.op("Cast", [b.op("Expand", [per_feature, b.op("Shape", [x])])], to=TensorProto.FLOAT)
    b.set_info(out, x)
    b.types[out] = TensorProto.FLOAT
    return out
