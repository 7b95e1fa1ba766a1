"""The arrays fed to a compiled model: the data and the model's other graph inputs, checked against what its
graph inputs declare (element type, rank, fixed sizes) and cast without losing values."""

from __future__ import annotations

import numpy as np

from onnxattr.errors import DataError, UsageError
from onnxattr.runtime import Runner


def as_array(value, what: str, hint: str = "") -> np.ndarray:
    """np.asarray(value), or a DataError saying that ``what`` is not an array (ragged lists, objects), then
    ``hint``."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:
        raise DataError(f"{what} is not an array ({str(e).splitlines()[0]}){hint}") from None


def sliceable(X) -> bool:
    """Whether X is data whose rows are read where they are used: it has a shape and X[rows] gives an array (an
    array, a memory-mapped .npy, a reader of image files)."""
    return hasattr(X, "shape") and hasattr(X, "__getitem__")


def read_by_rows(X):
    """X as it is where it is sliceable, else np.asarray(X)."""
    return X if sliceable(X) else np.asarray(X)


def as_input(X, arg) -> np.ndarray:
    X = as_array(X, "input data", "; give an array [N, ...]")
    if X.dtype.kind not in "fiu":
        raise DataError(f"input data has dtype {X.dtype}; a float array is expected")
    dtype = np.dtype(NP_TYPES.get(arg.type, "float32"))
    if dtype.kind in "iu" and X.dtype.kind == "f":
        raise DataError(f"input '{arg.name}' expects integers ({arg.type}), got {X.dtype} data")
    X = cast_in_range(X, dtype, arg, arg.type if dtype.kind in "iu" else dtype.name)
    if len(arg.shape) != X.ndim:
        raise DataError(f"input '{arg.name}' expects rank {len(arg.shape)} {list(arg.shape)}, got shape {list(X.shape)}")
    for want, got in zip(arg.shape, X.shape):
        if isinstance(want, int) and want != got:
            raise DataError(f"input '{arg.name}' expects shape {list(arg.shape)}, got {list(X.shape)}")
    if X.size == 0:
        raise DataError(f"input data of shape {list(X.shape)} holds no values; give at least one sample")
    return X


def cast_in_range(values: np.ndarray, dtype: np.dtype, arg, type_name: str) -> np.ndarray:
    """``values`` cast to the input's ``dtype``; a DataError when some do not fit: integers beyond its range
    (they would wrap around), finite values a float type cannot hold (they would become inf)."""
    if dtype.kind in "iu" and values.dtype.kind in "iu" and values.size and (
            values.min() < np.iinfo(dtype).min or values.max() > np.iinfo(dtype).max):
        raise DataError(f"input '{arg.name}' is {type_name}, and the data holds values beyond its range "
                        f"({values.min()} to {values.max()}); they would wrap around")
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing cast is reported below, not by numpy
        cast = values.astype(dtype, copy=False)
    if dtype.kind == "f" and cast.dtype != values.dtype:
        overflow = np.isfinite(values) & ~np.isfinite(cast)
        if overflow.any():
            worst = np.abs(values[overflow].astype(np.longdouble)).max()  # longdouble: no wrap-around, no inf
            raise DataError(f"input '{arg.name}' is {type_name}, and the data holds values beyond its range "
                            f"(largest magnitude {np.format_float_scientific(worst, precision=3, trim='-')}); "
                            "they would become inf")
    return cast


def other_feeds(runner: Runner, explained: set, given: dict | None) -> dict:
    """The model's graph inputs besides ``explained``, from ``given`` (name -> array), checked like the data;
    a missing or unknown name is a UsageError saying how to give it."""
    if given is not None and not isinstance(given, dict):
        raise UsageError(f"inputs must be a dict of graph input name -> array, got {type(given).__name__}")
    given = dict(given or {})
    args = {a.name: a for a in runner.session.get_inputs() if a.name not in explained}
    unknown = sorted(set(given) - set(args))
    if unknown:
        raise UsageError(f"{', '.join(map(repr, unknown))}: not an input of the model besides the explained one "
                         f"(its other inputs: {', '.join(map(repr, args)) or 'none'})")
    missing = [n for n in args if n not in given]
    if missing:
        shown = ", ".join(f"'{n}' {list(args[n].shape)}" for n in missing)
        raise UsageError(f"the model also needs input {shown} besides the explained one: give it with "
                         f"inputs={{'{missing[0]}': array}} (Python) or --feed {missing[0]}=FILE.npy (command line)")
    return {n: as_feed(v, args[n]) for n, v in given.items()}


def as_feed(value, arg) -> np.ndarray:
    """A fed graph input: its declared element type (a cast within ints or floats, or ints to floats, when
    every value fits), rank and fixed dims; it may be empty (a cache of length 0, say)."""
    arr = as_array(value, f"input '{arg.name}'")
    want = np.dtype(NP_TYPES[arg.type]) if arg.type in NP_TYPES else None
    if want is not None and arr.size == 0:
        arr = arr.astype(want)  # an empty list is float64 to numpy; no value to lose
    if want is not None and arr.dtype != want:
        same_kind = np.can_cast(arr.dtype, want, casting="same_kind")
        if not (same_kind or (arr.dtype.kind in "iu" and want.kind in "iuf")):
            raise DataError(f"input '{arg.name}' is {arg.type}, got {arr.dtype} data")
        cast = cast_in_range(arr, want, arg, arg.type)
        if want.kind == "f" and arr.dtype.kind in "iu" and arr.size and (cast.astype(arr.dtype) != arr).any():
            raise DataError(f"input '{arg.name}' is {arg.type}, which cannot hold these integers exactly")
        arr = cast
    if len(arg.shape) != arr.ndim or any(isinstance(w, int) and w != g for w, g in zip(arg.shape, arr.shape)):
        raise DataError(f"input '{arg.name}' expects shape {list(arg.shape)}, got {list(arr.shape)}")
    return arr


# onnxruntime's type names of graph inputs -> numpy dtypes, for the data and the feeds
NP_TYPES = {**{f"tensor({t})": t for t in ("float16", "double", "int8", "int16", "int32", "int64", "uint8",
                                              "uint16", "uint32", "uint64", "bool")},
            "tensor(float)": "float32"}
