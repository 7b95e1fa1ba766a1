"""Occlusion (Zeiler & Fergus 2014), as Captum's Occlusion computes it: a window slides over the input's
features (every axis after the batch), the window's part of x is replaced by a baseline, and each element
gets the mean, over the windows covering it, of the drop of the selected output

    R_i = mean over windows w containing i of (y(x) - y(x with w occluded))

(0 where no window reaches: a stride larger than the window skips elements). The occluded copies run in
chunks inside one forward-only ONNX Loop (methods/perturbation.py); the windows are laid out from the input's
shape at run time, so dynamic spatial axes work.
"""

from __future__ import annotations

import numbers

import numpy as np

from onnxattr.errors import UsageError
from onnxattr.methods.base import Method, Param, Target, chunk_param, register_method
from onnxattr.methods.perturbation import BASELINES, MAX_PERTURBATIONS, perturbation_loop, perturbed_features
from onnxattr.sampling import checked



def _parse_ints(s: str):
    return None if s.lower() in ("none", "") else tuple(int(v) for v in s.replace("x", ",").split(","))


def _sizes(v):
    """None, an int, or a tuple of ints from what the API was given (numpy integers and 1-D arrays too)."""
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    arr = np.asarray(v)
    return tuple(int(d) for d in arr.reshape(-1)) if arr.ndim == 1 and arr.dtype.kind in "iu" else v


def _ints_or_none(v):
    v = _sizes(v)
    if v is None or (isinstance(v, int) and not isinstance(v, bool) and v > 0):
        return None
    if isinstance(v, (tuple, list)) and v and all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                  for d in v):
        return None
    return "must be a positive integer or a tuple of them, one per feature axis"


def window_sizes(features: list, window, stride) -> tuple[list, list]:
    """(window, stride) per feature axis, each an int or None where it follows a symbolic axis: ``window``
    None covers the first feature axis whole (the channels of a channels-first input) and 8 elements of
    the others; an int means that size on every axis; ``stride`` None is the window (no overlap)."""
    rank = len(features)
    if window is None:
        window = [features[0]] + [min(8, d) if isinstance(d, int) else 8 for d in features[1:]]
        if not isinstance(features[0], int):
            window[0] = None
    elif isinstance(window, int):
        window = [window] * rank
    window = list(window)
    stride = list(window) if stride is None else [stride] * rank if isinstance(stride, int) else list(stride)
    for name, v in (("sliding_window_shapes", window), ("strides", stride)):
        if len(v) != rank:
            raise UsageError(f"parameter {name}={list(v)}: give one size per feature axis of the input "
                             f"(features {list(features)})")
    if any(isinstance(w, int) and isinstance(d, int) and w > d for w, d in zip(window, features)):
        raise UsageError(f"parameter sliding_window_shapes={window}: larger than the input's features {features}")
    if all(isinstance(d, int) for d in features):
        counts = [-(-(d - w) // s) + 1 for d, w, s in zip(features, window, stride)]
        if int(np.prod(counts)) > MAX_PERTURBATIONS:
            raise UsageError(f"occlusion would run {int(np.prod(counts))} windows "
                             f"({' x '.join(map(str, counts))}); at most {MAX_PERTURBATIONS}: use a larger stride")
    return window, stride


def _axis_value(b, feats: str, d: int, value) -> str:
    """int64 [1]: ``value`` when it is an int, else feature axis d's size (read at run time)."""
    if isinstance(value, int):
        return b.const(np.array([value], np.int64), np.int64, "occ")
    return b.op("Slice", [feats, b.ints([d]), b.ints([d + 1])])


def build_occlusion(t: Target, p: dict) -> str:
    b, x = t.b, t.x
    features = perturbed_features(t, "occlusion", "slides a window over")
    rank = len(features)
    window, stride = window_sizes(features, _sizes(p["sliding_window_shapes"]), _sizes(p["strides"]))
    feats = b.op("Slice", [b.op("Shape", [x]), b.ints([1]), b.ints([rank + 1])])
    size = [_axis_value(b, feats, d, features[d]) for d in range(rank)]
    # a window may not reach past a symbolic axis: it is cut to the axis (Captum refuses such a window)
    win = [b.op("Min", [_axis_value(b, feats, d, window[d]), size[d]]) for d in range(rank)]
    step = [win[d] if stride[d] is None else b.const(np.array([stride[d]], np.int64), np.int64, "occ")
            for d in range(rank)]
    one = b.const(np.array([1], np.int64), np.int64, "occ")
    # as Captum: ceil((size - window) / stride) + 1 positions per axis, the last window cut at the end
    counts = [b.op("Add", [b.op("Div", [b.op("Sub", [b.op("Add", [b.op("Sub", [size[d], win[d]]), step[d]]), one]),
                                        step[d]]), one]) for d in range(rank)]
    place = [one] * rank  # the window index k in mixed radix: k_d = (k // place_d) % counts_d
    for d in range(rank - 2, -1, -1):
        place[d] = b.op("Mul", [place[d + 1], counts[d + 1]])
    n_windows = b.op("Reshape", [b.op("Mul", [place[0], counts[0]]), b.ints([])])
    if not all(isinstance(d, int) for d in features):  # compile time checked the fixed sizes (window_sizes)
        n_windows = checked(b, n_windows, b.op("LessOrEqual", [n_windows, b.const(MAX_PERTURBATIONS, "int64")]),
                            "windows")
    axes_shape = lambda d: [1] * d + [-1] + [1] * (rank - d - 1)  # noqa: E731

    def inside(cb, starts, d):
        """[len(starts), F_d] float: 1 where starts <= position < starts + window."""
        pos = cb.op("Unsqueeze", [cb.op("Range", [cb.const(0, "int64"), cb.op("Squeeze", [size[d]]),
                                                  cb.const(1, "int64")]), cb.ints([0])])
        lo = cb.op("Unsqueeze", [starts, cb.ints([1])])
        hit = cb.op("And", [cb.op("GreaterOrEqual", [pos, lo]), cb.op("Less", [pos, cb.op("Add", [lo, win[d]])])])
        return cb.op("Cast", [hit], to=b.float_type(x))

    def windows(cb, ks):
        mask = None
        for d in range(rank):
            q = cb.op("Div", [ks, place[d]])  # k_d = q mod counts_d, as q - (q // counts_d) counts_d: no Mod
            k_d = cb.op("Sub", [q, cb.op("Mul", [cb.op("Div", [q, counts[d]]), counts[d]])])  # kernel on CUDA
            axis = cb.op("Reshape", [inside(cb, cb.op("Mul", [k_d, step[d]]), d), cb.ints([0] + axes_shape(d))])
            mask = axis if mask is None else cb.op("Mul", [mask, axis])  # [c, *F]
        return cb.op("Unsqueeze", [mask, cb.ints([1])])  # [c, 1, *F]

    def inverse_cover(b, total):
        """1 / (how many windows cover each element), 0 where none does, in the total's type (float32 for
        a float16 model: the sum over windows overflows float16 before this division). Along axis d the windows
        k s (k = 0..counts-1, stride s, width w) covering position i are those with i - w < k s <= i: from
        ceil(max(i - w + 1, 0) / s) to min(floor(i / s), counts - 1), a count per position (not a windows x
        positions table: 48 GB for a 220,000-sample signal and windows of 1)."""
        cover = None
        zero64 = b.const(np.array([0], np.int64), np.int64, "occ")
        for d in range(rank):
            pos = b.op("Range", [b.const(0, "int64"), b.op("Squeeze", [size[d]]), b.const(1, "int64")])
            first = b.op("Div", [b.op("Add", [b.op("Max", [b.op("Add", [b.op("Sub", [pos, win[d]]), one]), zero64]),
                                              b.op("Sub", [step[d], one])]), step[d]])
            last = b.op("Min", [b.op("Div", [pos, step[d]]), b.op("Sub", [counts[d], one])])
            hits = b.op("Max", [b.op("Add", [b.op("Sub", [last, first]), one]), zero64])
            axis = b.op("Reshape", [b.op("Cast", [hits], to=b.types[total]), b.ints(axes_shape(d))])
            cover = axis if cover is None else b.op("Mul", [cover, axis])
        zero_t, one_t = b.scalar(0.0, total), b.scalar(1.0, total)
        return b.op("Where", [b.op("Greater", [cover, zero_t]), b.op("Div", [one_t, b.op("Max", [cover, one_t])]),
                              zero_t])

    return perturbation_loop(t, p, "occlusion", n_windows, feats, windows, factor=inverse_cover)


register_method(Method(
    "occlusion", "Occlusion (Captum's): the mean drop of the selected output over the windows covering each "
    "element, with the window replaced by a baseline.", build_occlusion,
    (Param("sliding_window_shapes", None, "window size per feature axis ('3,15,15'; an int for all; None: the "
           "whole first axis and 8 on the others)", _parse_ints, _ints_or_none, optional=True),
     Param("strides", None, "step per feature axis (an int for all; None: the window)", _parse_ints, _ints_or_none,
           optional=True),
     BASELINES,
     chunk_param("windows")),
    ))
