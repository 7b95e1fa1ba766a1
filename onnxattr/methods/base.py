"""What a method is: a name, parameters with iNNvestigate's defaults, and a graph builder."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx

from onnxattr.errors import UsageError
from onnxattr.graph import GraphBuilder


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    doc: str
    parse: Callable[[str], Any] = float
    check: Callable[[Any], str | None] | None = None  # returns an error text or None
    optional: bool = False  # None is a valid value (always so when the default is None)
    per_sample: bool = False  # an array of x's rank holds one row, or one per sample (checked against the data)


@dataclass
class Target:
    """What the builder explains: y w.r.t. x in the node list, seeded per ``neuron``."""

    b: GraphBuilder
    nodes: list[onnx.NodeProto]
    x: str
    y: str
    neuron: str
    index: str | None  # int64 [N, 1] chosen neuron per sample (None in mode "all")
    static_batch: bool = False
    rows_input: str | None = None  # another graph input whose first axis holds the output's rows (a box head's boxes)
    assignment: dict = field(default_factory=dict)  # node name -> (rule, why), for `inspect`
    data: str | None = None  # the graph input taking the data: x, or the input an intermediate x is computed from


@dataclass(frozen=True)
class Method:
    name: str
    doc: str
    build: Callable[[Target, dict], str]
    params: tuple[Param, ...] = ()
    family: str = "gradient"
    aliases: tuple[str, ...] = field(default_factory=tuple)
    random: bool = False  # emits random ops (RandomNormalLike, RandomUniformLike): see draws.random_opset_limit
    whole_batch: bool = False  # a sample's map depends on the other samples of its batch (feature_permutation)
    # the method's relevance at a tensor T the reverse pass crossed (keep=), from the signal it carried there:
    # at_layer(b, T, carried, params); None where the map is not one reverse pass (the Loop methods)
    at_layer: Callable[[GraphBuilder, str, str, dict], str] | None = None
    # the map is one reverse pass outside any Loop, so it can be conditioned on hidden tensors (condition=)
    conditional: bool = False
    # the map is one pass of exact gradients (no rule replaces a node's backward), so the recurrent nodes that have a
    # fused backward stay as they are (canonicalize's fused_recurrent); the others need them unrolled
    fused_recurrent: bool = False
    # what may make this method's map not finite, given its resolved parameters ("" where nothing in particular)
    non_finite: Callable[[dict], str] | None = None

    def resolve(self, given: dict) -> dict:
        """Defaults overridden by ``given``; unknown names and bad values raise UsageError."""
        known = {p.name: p for p in self.params}
        out = {p.name: p.default for p in self.params}
        for key, value in given.items():
            if key not in known:
                hint = difflib.get_close_matches(key, list(known), n=1)
                names = ", ".join(known) or "none"
                raise UsageError(
                    f"method '{self.name}' has no parameter '{key}'"
                    + (f" (did you mean '{hint[0]}'?)" if hint else "")
                    + f"; its parameters: {names}"
                )
            p = known[key]
            if isinstance(value, str):
                try:
                    value = None if value.lower() in ("none", "null") else p.parse(value)
                except (TypeError, ValueError):
                    expects = _EXPECTS.get(p.parse, "")
                    raise UsageError(f"{self.name}: parameter {key}={value!r} is not a valid value{expects}") \
                        from None
            if isinstance(value, np.integer):
                value = int(value)  # numpy's integers count as integers
            elif isinstance(value, np.floating):
                value = float(value)  # and its floats as floats (np.float32 is no Python float)
            err = _basic_check(p, value)
            if err is None and p.check is not None:
                err = p.check(value)
            if err:
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
                raise UsageError(f"{self.name}: parameter {key}={shown}: {err}")
            out[key] = value
        return out


def parse_int(s: str) -> int:
    return int(s)


def parse_optional_int(s: str) -> int | None:
    return None if s.lower() in ("none", "") else int(s)


_EXPECTS = {float: " (expects a number)", int: " (expects an integer)", parse_int: " (expects an integer)",
            parse_optional_int: " (expects an integer or none)"}  # by parse function: the hint of a bad value


def _basic_check(p: Param, value) -> str | None:
    """None only where the parameter allows it; numbers (and numeric arrays) finite."""
    if value is None:
        return None if p.optional or p.default is None else "needs a value (None is not allowed here)"
    if isinstance(value, (bool, np.bool_)):
        return None if isinstance(p.default, bool) else "must be a number, not a bool"
    if isinstance(value, str) or not isinstance(value, (int, float, np.ndarray, list, tuple, np.number)):
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except OverflowError:
        return "must be finite (and within float32's range)"
    except (TypeError, ValueError):
        return "must be a number or an array of numbers"
    if not np.all(np.isfinite(arr)):
        return "must be finite"
    if arr.size and np.abs(arr).max() > np.finfo(np.float32).max and isinstance(p.default, float):
        return "must be finite (and within float32's range)"
    return None


REGISTRY: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    REGISTRY[method.name] = method
    for alias in method.aliases:
        REGISTRY[alias] = method
    return method


def get_method(name: str) -> Method:
    """A registered method, or the preset defined by a rule file (a name ending in .toml)."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise UsageError(f"the method must be a name such as 'gradient' (or a .toml rule file), got "
                         f"{type(name).__name__}; `onnxattr methods` lists them all")
    if name in REGISTRY:
        return REGISTRY[name]
    if name.endswith(".toml"):
        from onnxattr.methods.lrp import method_from_file

        return method_from_file(name)
    hint = difflib.get_close_matches(name, list(REGISTRY), n=1, cutoff=0.5)
    raise UsageError(
        f"unknown method '{name}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
        + "; `onnxattr methods` lists them all"
    )


INT_LIMIT = 2**31  # counts (steps, samples, chunk sizes) beyond this are typos, and overflow int64 math


def positive_int(v):
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        return "must be a positive integer"
    return None if v < INT_LIMIT else f"must be a positive integer below 2^31, got {v}"


def positive(v):
    return None if isinstance(v, (int, float)) and v > 0 else "must be a number > 0"


def non_negative(v):
    return None if isinstance(v, (int, float)) and v >= 0 else "must be a number >= 0"


def non_negative_int(v):
    return None if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else "must be an integer >= 0"


def optional_int(v):
    return None if v is None or (isinstance(v, int) and not isinstance(v, bool)) else "must be an integer or None"


def one_of(*choices):
    def check(v):
        return None if v in choices else f"must be one of {', '.join(map(str, choices))}"

    return check


def in_float_range(value, dtype, what: str) -> np.ndarray:
    """``value`` as an array of the input's float ``dtype``; values that would become inf there (1e5 for
    float16) are a UsageError naming the parameter ``what``."""
    with np.errstate(over="ignore", invalid="ignore"):  # an overflowing cast is named below, not by numpy
        arr = np.asarray(value, dtype=dtype)
    if not np.isfinite(arr).all():
        raise UsageError(f"parameter {what}: values beyond the range of the input's type {dtype} (largest "
                         f"{np.finfo(dtype).max:.6g}); they would become inf")
    return arr


def reference_constant(b: GraphBuilder, x: str, value, what: str = "reference_inputs") -> str:
    """``value`` (a number or an array broadcastable to x's shape) as a constant of x's float type; a
    shape that cannot broadcast to x is a UsageError naming both shapes (dims unknown at compile time
    accept anything)."""
    dtype = b.float_dtype(x)
    arr = in_float_range(value, dtype, what)
    xs = b.shape(x)
    if xs is not None:
        fits = arr.ndim <= len(xs) and all(
            a == 1 or not isinstance(d, int) or a == d for a, d in zip(arr.shape[::-1], xs[::-1]))
        if not fits:
            shown = [d if isinstance(d, int) else "?" for d in xs]
            raise UsageError(f"parameter {what}: an array of shape {list(arr.shape)} does not broadcast to the "
                             f"input's shape {shown}")
    return b.const(arr, dtype, "reference")


def chunk_param(points: str) -> Param:
    """The Loop methods' ``chunk_size``: rows a Loop trip runs, the ``points`` (path points, windows, coalitions)
    times the batch's N, so chunk_size // N points a trip, at least one (sampling.points_per_trip)."""
    return Param("chunk_size", 16, f"rows per Loop iteration (bounds memory): chunk_size // N {points} a trip for a "
                 "batch of N, at least one", parse_int, positive_int)


def chunk_size(t: Target, p: dict) -> int:
    """Rows per Loop iteration: the ``chunk_size`` parameter, or 1 for a model of static batch (its
    graph cannot take a larger one) and for one whose output rows follow another input (boxes index the images
    of the data's batch, not of a chunk of copies)."""
    return 1 if t.static_batch or t.rows_input is not None else p["chunk_size"]


def as_carried(b: GraphBuilder, tensor: str, carried: str, params: dict) -> str:
    """The relevance at a tensor is the signal the reverse pass carries there (LRP, gradients)."""
    return carried


def times_tensor(b: GraphBuilder, tensor: str, carried: str, params: dict) -> str:
    """The relevance at a tensor is the tensor times the signal carried there (input x gradient, AttnLRP)."""
    return b.op("Mul", [tensor, carried])
