"""Feature ablation, as Captum's FeatureAblation computes it: the input's features are split into groups by a
``feature_mask`` (one group id per feature, shared by every sample; by default every feature is a group of
its own), each group in turn is replaced by a baseline, and every feature of the group gets the drop of the
selected output

    R_i = y(x) - y(x with the group of i ablated)

The ablated copies run in chunks inside one forward-only ONNX Loop (methods/perturbation.py, as occlusion's
windows do); the mask is baked into the compiled model.
"""

from __future__ import annotations

import os

import numpy as np

from onnxattr.errors import UsageError
from onnxattr.methods.base import Method, Param, Target, parse_int, positive_int, register_method
from onnxattr.methods.perturbation import MAX_PERTURBATIONS, perturbation_loop, perturbed_features
from onnxattr.sampling import checked


def _parse_mask(s: str):
    return None if s.lower() in ("none", "") else s


def _mask_check(v):
    if v is None or (isinstance(v, str) and v.endswith(".npy")):
        return None
    if isinstance(v, str):
        return "must be an integer array, or (command line) a .npy file holding one"
    arr = np.asarray(v)
    if arr.dtype.kind not in "iub" or arr.size == 0:
        return f"must be a non-empty array of integer group ids, got {arr.dtype} {list(arr.shape)}"
    return None


def group_ids(mask, features: list) -> tuple[np.ndarray, int]:
    """The mask as int64 group ids 0..G-1 (its distinct values in increasing order) shaped to broadcast
    against one sample [1, *features], and G. None: every feature its own group (features fixed at compile
    time; build_feature_ablation numbers them at run time otherwise)."""
    if mask is None:
        count = _at_most_allowed(int(np.prod(features)))  # before the ids: a huge input allocates gigabytes
        ids = np.arange(count, dtype=np.int64).reshape([1, *features])
    else:
        if isinstance(mask, (str, os.PathLike)):
            try:
                mask = np.load(mask, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise UsageError(f"feature_mask {mask}: not a readable .npy array ({e})") from None
            err = _mask_check(mask)
            if err:
                raise UsageError(f"feature_mask: {err}")
        mask = np.asarray(mask)
        if mask.ndim == len(features) + 1:
            if mask.shape[0] != 1:
                raise UsageError(f"feature_mask of shape {list(mask.shape)} has one axis more than the features "
                                 f"{[d if isinstance(d, int) else '?' for d in features]}: its first is the batch "
                                 "axis, and one mask serves every sample; give it without that axis (or as 1)")
            mask = mask[0]
        fits = mask.ndim <= len(features) and all(
            m == 1 or not isinstance(d, int) or m == d for m, d in zip(mask.shape[::-1], features[::-1]))
        if not fits:
            raise UsageError(f"feature_mask of shape {list(mask.shape)} does not broadcast to the input's features "
                             f"{[d if isinstance(d, int) else '?' for d in features]}")
        values, inverse = np.unique(mask, return_inverse=True)
        count = len(values)
        ids = inverse.reshape((1,) * (len(features) + 1 - mask.ndim) + mask.shape).astype(np.int64)
    return ids, _at_most_allowed(count)


def _at_most_allowed(count: int) -> int:
    if count > MAX_PERTURBATIONS:
        raise UsageError(f"feature_ablation would run {count} ablations; at most {MAX_PERTURBATIONS}: group the "
                         "features with a feature_mask")
    return count


def build_feature_ablation(t: Target, p: dict) -> str:
    b, x = t.b, t.x
    features = perturbed_features(t, "feature_ablation", "groups")
    rank = len(features)
    feats = b.op("Slice", [b.op("Shape", [x]), b.ints([1]), b.ints([rank + 1])])
    if p["feature_mask"] is None and not all(isinstance(d, int) for d in features):
        # every feature alone, numbered at run time: Range over the features, shaped like one sample
        count = b.op("Slice", [feats, b.ints([0]), b.ints([1])])
        for d in range(1, rank):  # the product of the dims (CUDA has no int64 ReduceProd)
            count = b.op("Mul", [count, b.op("Slice", [feats, b.ints([d]), b.ints([d + 1])])])
        count = b.op("Reshape", [count, b.ints([])])
        count = checked(b, count, b.op("LessOrEqual", [count, b.const(MAX_PERTURBATIONS, "int64")]), "ablations")
        groups = b.op("Reshape", [b.op("Range", [b.const(0, "int64"), count, b.const(1, "int64")]),
                                  b.op("Concat", [b.ints([1]), feats], axis=0)])
    else:
        ids, count = group_ids(p["feature_mask"], features)
        groups = b.const(ids, np.int64, "groups")  # [1, *F'] broadcasting to one sample
        # a mask axis of more than 1 meets a feature axis fixed only at run time: they must agree
        meets = [(d, m) for d, m in enumerate(ids.shape[1:]) if m != 1 and features[d] is None]
        if meets:
            ok = None
            for d, m in meets:
                same = b.op("Equal", [b.op("Slice", [feats, b.ints([d]), b.ints([d + 1])]),
                                      b.const(np.array([m], np.int64), np.int64, "mask_dim")])
                ok = same if ok is None else b.op("And", [ok, same])
            count = checked(b, b.const(count, "int64"), b.op("Reshape", [ok, b.ints([])]), "feature_mask")

    def masks(cb, ks):
        k = cb.op("Reshape", [ks, cb.ints([-1] + [1] * (rank + 1))])  # [c, 1, 1...]
        return cb.op("Cast", [cb.op("Equal", [cb.op("Unsqueeze", [groups, cb.ints([0])]), k])],
                     to=b.float_type(x))  # [c, 1, *F']

    return perturbation_loop(t, p, "feature_ablation", count, feats, masks)


register_method(Method(
    "feature_ablation", "Feature ablation (Captum's FeatureAblation): each feature gets the drop of the selected "
    "output when its group (feature_mask) is replaced by a baseline.", build_feature_ablation,
    (Param("feature_mask", None, "a group id per feature, shared by all samples (an integer array that broadcasts "
           "to one sample, or on the command line a .npy file; None: every feature alone)", _parse_mask,
           _mask_check, optional=True),
     Param("baselines", 0.0, "the value an ablated feature takes (a number, or via the Python API an array that "
           "broadcasts to x)"),
     Param("chunk_size", 16, "ablations per Loop iteration (bounds memory)", parse_int, positive_int)),
))
