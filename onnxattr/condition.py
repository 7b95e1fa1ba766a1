"""Conditioned maps (Concept Relevance Propagation, Achtibat et al. 2023, as zennit-crp computes them).

A tensor T on the explained path is *conditioned* by a mask m that broadcasts to it: the relevance reaching T is
multiplied by m, and only what passes through T goes on to the input (relevance that went around T, through a
parallel branch or a shortcut, is dropped: zennit-crp's ``exclude_parallel``). With m one-hot over T's channels
the map is the relevance of that channel's concept; the map then sums to the masked relevance at T for rules that
conserve. Several conditioned tensors must lie one behind the other on the path (hierarchical conditions).

The compiled model takes each mask as a graph input ``condition:T`` (float32, T's rank, any sizes that
broadcast to T's), so one model explains every concept; this module names and checks the tensors when
compiling, and turns channel lists into masks when running.
"""

from __future__ import annotations

import json

import numpy as np

from onnxattr.compiler import path_nodes
from onnxattr.errors import DataError, SelectionError, UsageError
from onnxattr.methods import REGISTRY

CONDITION = "condition:"  # + a conditioned tensor's name: the graph input of its mask
META = "onnxattr.condition"  # {name: the tensor's shape when compiled}, JSON


def condition_list(condition, method) -> list[str]:
    """``condition`` as a list of tensor names, refused for methods that are not one reverse pass."""
    names = [condition] if isinstance(condition, str) else list(condition or ())
    if not all(isinstance(n, str) and n for n in names):
        raise UsageError(f"condition takes tensor names, got {condition!r}")
    if names and not method.conditional:
        able = sorted({m.name for m in REGISTRY.values() if m.conditional and m.family != "lrp"})
        raise UsageError(f"condition: {method.name} does not compute its map in one reverse pass, so it cannot be "
                         f"conditioned on a tensor; the LRP methods, attn_lrp, cp_lrp and {', '.join(able)} can")
    if len(set(names)) != len(names):
        raise UsageError(f"condition names tensor '{next(n for n in names if names.count(n) > 1)}' twice")
    return names


def check_chain(b, nodes, x: str, tensors: dict[str, str]) -> None:
    """The conditioned tensors ({name: canonical tensor}) lie one behind the other: each later one is computed
    from each earlier one (relevance that went around a conditioned tensor is dropped, so a tensor beside it
    would get none)."""
    position = {x: -1, **{o: k for k, n in enumerate(nodes) for o in n.output}}
    if len(set(tensors.values())) != len(tensors):
        raise UsageError(f"condition: {', '.join(map(repr, tensors))} name one tensor; condition it once")
    ordered = sorted(tensors.items(), key=lambda item: position[item[1]])
    for (name_a, a), (name_b, c) in zip(ordered, ordered[1:]):
        if a != x and not path_nodes(nodes, a, c, b)[0]:
            raise SelectionError(
                f"condition: tensor '{name_b}' is not computed from '{name_a}' (they lie on parallel branches), and "
                "each conditioned tensor passes on only the relevance that went through it: condition tensors that "
                "lie one behind the other, or explain each branch in its own run")


def check_on_path(live: set, y: str, tensors: dict[str, str]) -> None:
    """Each conditioned tensor is one of the tensors ``live`` on the paths to the explained output y (an on-path
    node's other output, such as a Split's part that y does not read, would drop every relevance)."""
    for name, tensor in tensors.items():
        if tensor not in live:
            raise SelectionError(f"condition: output '{y}' does not depend on tensor '{name}' (an output of a node on "
                                 "the path that the explained output does not read), so no relevance reaches it and "
                                 "the map would be 0: condition a tensor the explained output is computed from")


def beside(b, nodes, kept: dict[str, str], tensors: dict[str, str]) -> set:
    """The kept tensors ({name: tensor}) that are neither computed from nor used to compute some conditioned tensor:
    on a branch beside it, where no relevance passes through it (zennit-crp records none there either); the others
    keep what the reverse pass carried (the whole relevance at and above a conditioned tensor, within the concept
    below it)."""
    out = set()
    for name, k in kept.items():
        for t in tensors.values():
            if k != t and not path_nodes(nodes, t, k, b)[0] and not path_nodes(nodes, k, t, b)[0]:
                out.add(name)
    return out


def metadata(b, tensors: dict[str, str]) -> dict:
    """The model property recording each conditioned tensor's shape (None for a size known at run time only)."""
    shapes = {name: (None if b.shape(t) is None else [d if isinstance(d, int) else None for d in b.shape(t)])
              for name, t in tensors.items()}
    return {META: json.dumps(shapes)}


def conditioned_shapes(meta: dict) -> dict:
    """{name: shape} of a compiled model's conditioned tensors, from its metadata."""
    return json.loads(meta[META]) if META in meta else {}


def mask_of(name: str, spec, shape, samples: int, axis: int = 1) -> np.ndarray:
    """The mask fed as ``condition:name``, float32, from ``spec``:
    - an int, or a list of ints: the channels (indices along ``axis``) every sample keeps;
    - a list of such lists, one per sample: each sample's channels;
    - a float or bool array: the mask itself, broadcasting to the tensor (its first axis 1 or one row per sample).
    ``shape``: the tensor's shape when compiled (None entries unknown)."""
    what = f"condition '{name}'"
    if isinstance(spec, np.ndarray) and spec.dtype.kind in "fb":
        return _given_mask(what, spec, shape, samples)
    if shape is None:
        raise DataError(f"{what}: the tensor's rank is known only at run time, so channel numbers cannot be turned "
                        "into a mask here: give the mask itself (a float array that broadcasts to the tensor)")
    rank = len(shape)
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not 1 <= axis % max(rank, 1) < rank \
            or not -rank <= axis < rank:
        raise UsageError(f"{what}: condition_axis {axis!r} is not an axis after the batch axis of a tensor of rank "
                         f"{rank}")
    axis = int(axis) % rank
    sizes = shape[axis]
    if sizes is None:
        raise DataError(f"{what}: the size of axis {axis} is known only at run time, so channel numbers cannot be "
                        "turned into a mask here: give the mask itself (a float array that broadcasts to the tensor)")
    per_sample = _channel_lists(what, spec, samples)
    mask = np.zeros([len(per_sample), sizes] + [1] * (rank - 2), np.float32)  # channels on axis 1, moved below
    for row, channels in enumerate(per_sample):
        bad = [c for c in channels if not 0 <= c < sizes]
        if bad:
            raise DataError(f"{what}: channel {bad[0]} is outside axis {axis} of {sizes} channels (0 to {sizes - 1})")
        mask[row, channels] = 1.0
    return np.moveaxis(mask, 1, axis)


def _channel_lists(what: str, spec, samples: int) -> list[list[int]]:
    """One list of channel numbers per row of the mask (one row shared by every sample, or one per sample)."""
    def channels(v) -> list[int] | None:
        if isinstance(v, (bool, np.bool_)):
            return None
        if isinstance(v, (int, np.integer)):
            return [int(v)]
        if isinstance(v, (list, tuple, np.ndarray)) and all(
                isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_)) for c in v):
            return [int(c) for c in v]
        return None

    if isinstance(spec, np.ndarray) and spec.dtype.kind in "iu":
        spec = spec.tolist()
    shared = channels(spec)
    if shared is not None:
        return [shared]
    rows = [channels(v) for v in spec] if isinstance(spec, (list, tuple)) else [None]
    if None in rows:
        shown = (f"an array of dtype {spec.dtype} and shape {list(spec.shape)}" if isinstance(spec, np.ndarray)
                 else " ".join(repr(spec).split())[:80])
        raise UsageError(f"{what}: give channel numbers (an int, a list of ints, or one such list per sample) or a "
                         f"float mask array, got {shown}")
    if len(rows) != samples:
        raise DataError(f"{what} gives {len(rows)} lists of channels and the data {samples} samples: give one list "
                        "per sample, or one list of ints for all")
    return rows


def _given_mask(what: str, mask: np.ndarray, shape, samples: int) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        mask = mask.astype(np.float32)
    if not np.all(np.isfinite(mask)):
        raise DataError(f"{what}: the mask holds NaN or inf, or values beyond float32's range")
    if shape is not None:
        ok = mask.ndim == len(shape) and mask.shape[0] in (1, samples) and all(
            m == 1 or d is None or m == d for m, d in zip(mask.shape[1:], shape[1:]))
        if not ok:
            want = [samples] + ["?" if d is None else d for d in shape[1:]]
            raise DataError(f"{what}: a mask of shape {list(mask.shape)} does not broadcast to the tensor {want}: "
                            "give its rank, 1 or the tensor's size on each axis, and one row or one per sample")
    return mask
