"""Feature groups, as Captum's ``feature_mask`` defines them for feature ablation and Shapley values: one
integer id per feature, shared by every sample (an array that broadcasts to one sample: superpixels [1, H, W]
shared by the channels, column groups [1, F] of a table); by default every feature is a group of its own. The
ids are renumbered 0..G-1 in increasing order, so any integers (negative, sparse) name the groups."""

from __future__ import annotations

import os

import numpy as np

from onnxattr.errors import UsageError
from onnxattr.methods.base import Param, Target
from onnxattr.methods.perturbation import MAX_PERTURBATIONS
from onnxattr.sampling import checked


def parse_array_or_npy(s: str):
    """An array parameter on the command line: a .npy path (read at compile time), or none."""
    return None if s.lower() in ("none", "") else s


def array_or_npy_check(expects: str, array_error):
    """A Param check for an array parameter the command line gives as a .npy path: None, a .npy path, or an array
    that ``array_error(arr)`` accepts (it returns an error text or None)."""
    def check(v):
        if isinstance(v, os.PathLike):
            v = os.fspath(v)
        if v is None or (isinstance(v, str) and v.endswith(".npy")):
            return None
        if isinstance(v, (str, bytes)):
            return f"must be {expects}, or (command line) a .npy file holding one"
        return array_error(np.asarray(v))
    return check


def loaded(value, name: str, check, method: str = ""):
    """An array parameter's value, read from its .npy file when it is a path (checked then by ``check``; errors
    name ``name`` and, when given, the method)."""
    if not isinstance(value, (str, os.PathLike)):
        return value
    try:
        value = np.load(value, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"{name} {value}: not a readable .npy array ({e})") from None
    err = check(value)
    if err:
        raise UsageError(f"{method + ': ' if method else ''}{name}: {err}")
    return value


_mask_check = array_or_npy_check("an integer array", lambda arr: None if arr.dtype.kind in "iub" and arr.size else
                                 f"must be a non-empty array of integer group ids, got {arr.dtype} {list(arr.shape)}")


FEATURE_MASK = Param("feature_mask", None, "a group id per feature, shared by all samples (an integer array that "
                     "broadcasts to one sample, or on the command line a .npy file; None: every feature alone)",
                     parse_array_or_npy, _mask_check, optional=True)


def group_ids(mask, features: list, too_many) -> tuple[np.ndarray, int]:
    """The mask as int64 group ids 0..G-1 (its distinct values in increasing order) shaped to broadcast
    against one sample [1, *features], and G. None: every feature its own group (features fixed at compile
    time; feature_groups numbers them at run time otherwise). ``too_many(G)`` returns an error text when G
    groups need too many forward passes, checked before the ids are made (a huge input allocates gigabytes)."""
    if mask is None:
        count = int(np.prod(features))
        _refuse(too_many, count)
        return np.arange(count, dtype=np.int64).reshape([1, *features]), count
    mask = np.asarray(loaded(mask, "feature_mask", _mask_check))
    given = list(mask.shape)  # as the user gave it, for the messages
    shown = [d if isinstance(d, int) else "?" for d in features]
    if mask.ndim == len(features) + 1:
        if mask.shape[0] != 1:
            raise UsageError(f"feature_mask of shape {list(mask.shape)} has one axis more than the features "
                             f"{shown}: its first is the batch axis, and one mask serves every sample; give it "
                             "without that axis (or as 1)")
        mask = mask[0]
    fits = mask.ndim <= len(features) and all(
        m == 1 or not isinstance(d, int) or m == d for m, d in zip(mask.shape[::-1], features[::-1]))
    if not fits:
        raise UsageError(f"feature_mask of shape {given} does not broadcast to the input's features {shown}")
    values, inverse = np.unique(mask, return_inverse=True)
    _refuse(too_many, len(values))
    ids = inverse.reshape((1,) * (len(features) + 1 - mask.ndim) + mask.shape).astype(np.int64)
    return ids, len(values)


def _refuse(too_many, count: int) -> None:
    err = too_many(count)
    if err:
        raise UsageError(err)


def feature_groups(t: Target, p: dict, features: list, too_many, passes_per_group: int, what: str):
    """(groups, G, feats) for x's feature dims ``features`` (perturbation.perturbed_features): groups an int64
    tensor [1, *F'] of group ids broadcasting to one sample, G their count (an int, or an int64 scalar tensor
    when every feature of an input with dynamic feature axes is its own group), feats x's feature dims at run
    time (int64 [rank]). Sizes known only at run time are checked there, failing with ``what`` in the node's
    name (sampling.checked): a mask axis that does not match the data's, and G * ``passes_per_group`` above
    MAX_PERTURBATIONS."""
    b, x = t.b, t.x
    rank = len(features)
    feats = b.op("Slice", [b.op("Shape", [x]), b.ints([1]), b.ints([rank + 1])])
    if p["feature_mask"] is None and not all(isinstance(d, int) for d in features):
        # every feature alone, numbered at run time: Range over the features, shaped like one sample
        count = b.op("Slice", [feats, b.ints([0]), b.ints([1])])
        for d in range(1, rank):  # the product of the dims (CUDA has no int64 ReduceProd)
            count = b.op("Mul", [count, b.op("Slice", [feats, b.ints([d]), b.ints([d + 1])])])
        count = b.op("Reshape", [count, b.ints([])])
        passes = b.op("Mul", [count, b.const(passes_per_group, "int64")])
        count = checked(b, count, b.op("LessOrEqual", [passes, b.const(MAX_PERTURBATIONS, "int64")]), what)
        groups = b.op("Reshape", [b.op("Range", [b.const(0, "int64"), count, b.const(1, "int64")]),
                                  b.op("Concat", [b.ints([1]), feats], axis=0)])
        return groups, count, feats
    ids, count = group_ids(p["feature_mask"], features, too_many)
    groups = b.const(ids, np.int64, "groups")  # [1, *F'] broadcasting to one sample
    # a mask axis of more than 1 meets a feature axis fixed only at run time: they must agree
    meets = [(d, m) for d, m in enumerate(ids.shape[1:]) if m != 1 and features[d] is None]
    if meets:
        ok = None
        for d, m in meets:
            same = b.op("Equal", [b.op("Slice", [feats, b.ints([d]), b.ints([d + 1])]),
                                  b.const(np.array([m], np.int64), np.int64, "mask_dim")])
            ok = same if ok is None else b.op("And", [ok, same])
        # the check adds 0 to the ids, which the Loop reads: it runs before the first trip
        groups = b.op("Add", [groups, checked(b, b.const(0, "int64"), b.op("Reshape", [ok, b.ints([])]),
                                              "feature_mask")])
    return groups, count, feats
