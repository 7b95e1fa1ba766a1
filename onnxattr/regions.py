"""Regions of a batch for region perturbation (pixel flipping; Samek et al. 2017, iNNvestigate's
tools.Perturbation): a relevance map is reduced over the channel axis, padded to whole regions, averaged per
region and ranked; the input's regions are then replaced in that order.

Layout: one sample's axes are a channel axis (or none) and spatial axes; regions tile the spatial axes, and a
region covers every channel. Internally a batch is [N, C, S1, ..., Sk] (C = 1 without a channel axis).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxattr.draws import GAUSSIAN, per_sample, sample_generators
from onnxattr.errors import UsageError
from onnxattr.viz import channel_axis as image_channel_axis

REDUCTIONS = {"mean": np.mean, "sum": np.sum, "max": np.max}
PERTURBATIONS = ("zeros", "mean", "invert", "gaussian")  # or a number
GAUSSIAN_SCALE = 0.3  # iNNvestigate's "gaussian": N(0, 0.3²) values in place of the region
PAD_MODES = ("reflect", "symmetric", "edge", "wrap", "constant")


@dataclass(frozen=True)
class Layout:
    """Where one sample's channel axis is (None: every axis is spatial) and the region size per spatial axis."""

    channel: int | None
    region: tuple[int, ...]

    def count(self, sample_shape) -> int:
        """Regions per sample of ``sample_shape``: each spatial axis padded to whole regions."""
        spatial = [s for i, s in enumerate(sample_shape) if i != self.channel]
        return int(np.prod([-(-s // r) for s, r in zip(spatial, self.region)]))

    def within(self) -> tuple[int, ...]:
        """The axes inside a region of a blocks() view [N, C, A1, r1, ..., Ak, rk]: r1, ..., rk."""
        return tuple(3 + 2 * i for i in range(len(self.region)))

    def to_internal(self, a: np.ndarray) -> np.ndarray:
        """[N, *sample] -> [N, C, *spatial]."""
        if self.channel is None:
            return a[:, None]
        return np.moveaxis(a, 1 + self.channel, 1)

    def to_sample(self, a: np.ndarray) -> np.ndarray:
        """[N, C, *spatial] -> [N, *sample] (the inverse of to_internal)."""
        if self.channel is None:
            return a[:, 0]
        return np.moveaxis(a, 1, 1 + self.channel)


def layout(sample_shape, channel_axis="auto", region=None) -> Layout:
    """The layout of samples of ``sample_shape``: ``channel_axis`` "auto" (an image's channel axis, as the
    heatmaps read it: CHW or HWC for three axes, none otherwise), None or an axis of one sample (negative counts
    from the end); ``region``: one size per spatial axis, or one for all (default 9 on an image's two spatial axes,
    else 1)."""
    rank = len(sample_shape)
    if rank == 0:
        raise UsageError("region perturbation needs samples with at least one axis (the data is [N] numbers)")
    if channel_axis == "auto":
        channel = image_channel_axis(sample_shape)
    elif channel_axis is None:
        channel = None
    else:
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)) \
                or not -rank <= channel_axis < rank:
            raise UsageError(f"channel_axis must be 'auto', None or an axis of one sample (-{rank} to {rank - 1}), "
                             f"got {channel_axis!r}")
        channel = int(channel_axis)
    if channel is not None:
        channel %= rank
    spatial = rank - (channel is not None)
    if spatial == 0:
        raise UsageError(f"samples of shape {list(sample_shape)} have no axis left for regions besides the channel "
                         "axis; give channel_axis=None")
    if region is None:  # 9 x 9 on an image (a channel axis and two spatial ones), single elements otherwise
        region = (9,) * spatial if spatial == 2 and channel is not None else (1,) * spatial
    sizes = tuple(np.atleast_1d(np.asarray(region)).tolist())
    if len(sizes) == 1:
        sizes = sizes * spatial
    if len(sizes) != spatial or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise UsageError(f"region must be one positive integer per spatial axis ({spatial} for samples of shape "
                         f"{list(sample_shape)} with channel axis {channel}), or one for all; got {region!r}")
    return Layout(channel, sizes)


def pad_widths(spatial_shape, region) -> list[tuple[int, int]]:
    """Per spatial axis, (before, after) so that the axis holds whole regions: half the missing size before
    (rounded down), the rest after, as iNNvestigate pads."""
    out = []
    for size, r in zip(spatial_shape, region):
        missing = (-size) % r
        out.append((missing // 2, missing - missing // 2))
    return out


def pad(a: np.ndarray, region, mode: str) -> np.ndarray:
    """An internal batch [N, C, *spatial] padded to whole regions (numpy.pad ``mode``)."""
    widths = pad_widths(a.shape[2:], region)
    if not any(b or e for b, e in widths):
        return a
    return np.pad(a, [(0, 0), (0, 0), *widths], mode=mode)


def crop(a: np.ndarray, spatial_shape, region) -> np.ndarray:
    """Undo pad: the original spatial extent."""
    widths = pad_widths(spatial_shape, region)
    return a[(slice(None), slice(None), *(slice(b, b + s) for (b, _), s in zip(widths, spatial_shape)))]


def blocks(a: np.ndarray, region) -> np.ndarray:
    """A view [N, C, A1, r1, ..., Ak, rk] of a padded batch [N, C, A1·r1, ..., Ak·rk]."""
    shape = list(a.shape[:2])
    for size, r in zip(a.shape[2:], region):
        shape += [size // r, r]
    return a.reshape(shape)


def region_scores(relevance: np.ndarray, lay: Layout, reduce: str = "mean", aggregate: str = "mean",
                  pad_mode: str = "reflect") -> np.ndarray:
    """[N, A1, ..., Ak]: each region's score, the ``aggregate`` over its elements of the ``reduce`` over
    channels of the relevance (padded as the input is)."""
    check_reductions(reduce, aggregate)
    r = lay.to_internal(np.asarray(relevance, np.float64))
    r = REDUCTIONS[reduce](r, axis=1, keepdims=True)
    grid = blocks(pad(r, lay.region, pad_mode), lay.region)
    return REDUCTIONS[aggregate](grid, axis=lay.within())[:, 0]


def region_ranks(scores: np.ndarray, order: str = "morf") -> np.ndarray:
    """[N, A1, ..., Ak] int: each region's place in the perturbation order, 0 first. ``morf``: most relevant
    first (largest score), ``lerf``: least relevant first; ties go in index order (a stable sort). A region
    whose score is NaN (a map that overflowed) comes last either way."""
    if order not in ("morf", "lerf"):
        raise UsageError(f"order must be 'morf' (most relevant first) or 'lerf' (least relevant first), got {order!r}")
    flat = scores.reshape(len(scores), -1)
    key = -flat if order == "morf" else flat
    key = np.where(np.isnan(key), np.inf, key)
    order_idx = np.argsort(key, axis=1, kind="stable")
    ranks = np.empty_like(order_idx)
    np.put_along_axis(ranks, order_idx, np.arange(flat.shape[1])[None], axis=1)
    return ranks.reshape(scores.shape)


def check_reductions(reduce: str, aggregate: str) -> None:
    for name, value in (("reduce", reduce), ("aggregate", aggregate)):
        if value not in REDUCTIONS:
            raise UsageError(f"{name} must be one of {', '.join(REDUCTIONS)}, got {value!r}")


def check_pad_mode(mode: str) -> None:
    if mode not in PAD_MODES:
        raise UsageError(f"pad_mode must be one of {', '.join(PAD_MODES)} (numpy.pad's), got {mode!r}")


def check_perturbation(perturbation) -> None:
    if isinstance(perturbation, str):
        if perturbation not in PERTURBATIONS:
            raise UsageError(f"perturbation must be one of {', '.join(PERTURBATIONS)} or a number, got "
                             f"{perturbation!r}")
    elif isinstance(perturbation, bool) or not isinstance(perturbation, (int, float, np.number)) \
            or not np.isfinite(perturbation):
        raise UsageError(f"perturbation must be one of {', '.join(PERTURBATIONS)} or a finite number, got "
                         f"{perturbation!r}")


class RegionPerturber:
    """Replaces a batch's regions in rank order, a few more at each call, as iNNvestigate's Perturbation does
    with a growing ``num_perturbed_regions``: every element of a chosen region, in every channel, takes the
    ``perturbation``: 0 (``zeros``), the region's mean in that channel (``mean``), its negation (``invert``),
    N(0, 0.3²) noise (``gaussian``: each sample's from its own generator, of ``seed`` and its row ``first_row`` +
    n in the data, see draws.py) or a number; ``value_range`` (lo, hi) clips the values put
    in. The input is padded to whole regions (``pad_mode``) and cropped back, so a border region's mean also
    counts the padding."""

    def __init__(self, x: np.ndarray, ranks: np.ndarray, lay: Layout, perturbation="mean", pad_mode: str = "reflect",
                 value_range=None, seed: int | None = 0, first_row: int = 0):
        check_perturbation(perturbation)
        self.lay, self.ranks = lay, ranks
        self.dtype = x.dtype
        inner = lay.to_internal(x)
        self.spatial = inner.shape[2:]
        padded = np.ascontiguousarray(pad(inner, lay.region, pad_mode), dtype=np.float64)
        self.current = padded.copy()  # C-contiguous, so blocks() is a view that writes through
        grid = blocks(padded, lay.region)
        if isinstance(perturbation, str):
            if perturbation == "zeros":
                new = np.zeros_like(grid)
            elif perturbation == "mean":
                new = np.broadcast_to(grid.mean(axis=lay.within(), keepdims=True), grid.shape)
            elif perturbation == "invert":
                new = -grid
            else:
                new = per_sample(sample_generators(seed, GAUSSIAN, first_row, len(grid)),
                                 lambda g: g.normal(0.0, GAUSSIAN_SCALE, grid.shape[1:]))
        else:
            new = np.full(grid.shape, float(perturbation))
        if value_range is not None:
            lo, hi = value_range
            new = np.clip(new, lo, hi)
        self.replacement = new
        self.done = 0

    def upto(self, count: int) -> np.ndarray:
        """The batch with its first ``count`` regions (by rank) replaced, in its own layout and dtype; ``count``
        never goes down between calls."""
        if count < self.done:
            raise ValueError("RegionPerturber counts only up")
        if count > self.done:
            chosen = (self.ranks >= self.done) & (self.ranks < count)  # [N, A1, ..., Ak]
            shape = [len(chosen), 1]
            for a in chosen.shape[1:]:
                shape += [a, 1]
            mask = chosen.reshape(shape)
            grid = blocks(self.current, self.lay.region)
            np.copyto(grid, self.replacement, where=np.broadcast_to(mask, grid.shape))
            self.done = count
        return self.lay.to_sample(crop(self.current, self.spatial, self.lay.region)).astype(self.dtype)
