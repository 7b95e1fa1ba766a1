"""Relevance maps as images, with iNNvestigate's projections and Zennit's colour maps.

heatmap: sum over channels, divide by the largest |value| (0 stays the centre), times ``level`` (Zennit's: above
         1 saturates earlier), map [-1, 1] through a colour map: "seismic" (matplotlib's ramp, iNNvestigate's
         heatmap: dark blue, blue, white, red, dark red) by default, or one of Zennit's (COLORMAPS).
graymap: sum of |value| over channels, divide by the maximum, grey levels.
overlay: a heatmap blended over the input image in grey, so the relevance sits on what the model saw.
"""

from __future__ import annotations

import numpy as np

from onnxattr.errors import UsageError


def _zennit(*colours, centre: str | None = None) -> np.ndarray:
    """Anchors [(position in [0, 1], r, g, b in [0, 1])] of a colour map as Zennit's colour-map language places
    colours given as "rrggbb": on a 0..255 index scale, the first at 0, the last at 255, ``centre`` (when given)
    at 0x80, and the others evenly in between, each index truncated to an integer. Linear in between."""
    marks = [0] + ([colours.index(centre)] if centre else []) + [len(colours) - 1]
    index = {0: 0, len(colours) - 1: 255, **({colours.index(centre): 128} if centre else {})}
    for a, b in zip(marks, marks[1:]):
        for j in range(a + 1, b):
            index[j] = int(index[a] + (index[b] - index[a]) * (j - a) / (b - a))
    return np.array([[index[j] / 255] + [int(c[k:k + 2], 16) / 255 for k in (0, 2, 4)]
                     for j, c in enumerate(colours)])


# matplotlib's seismic (iNNvestigate's heatmap: five even stops), and Zennit's colour maps under Zennit's names
# (zennit/image.py CMAPS: the same colours at the same places; Zennit's own "seismic", brightness 0xd0, is
# "zennit_seismic" here)
COLORMAPS = {
    "seismic": np.array([[0.0, 0.0, 0.0, 0.3], [0.25, 0.0, 0.0, 1.0], [0.5, 1.0, 1.0, 1.0], [0.75, 1.0, 0.0, 0.0],
                         [1.0, 0.5, 0.0, 0.0]]),
    "gray": _zennit("000000", "ffffff"),
    "wred": _zennit("ffffff", "ff0000"),
    "wblue": _zennit("ffffff", "0000ff"),
    "hot": _zennit("000000", "ff0000", "ffff00", "ffffff"),
    "cold": _zennit("000000", "0000ff", "00ffff"),
    "coldnhot": _zennit("00ffff", "0000ff", "000000", "ff0000", "ffff00", "ffffff", centre="000000"),
    "bwr": _zennit("0000ff", "ffffff", "ff0000", centre="ffffff"),
    "france": _zennit("0055a4", "ffffff", "ef4135", centre="ffffff"),
    "zennit_seismic": _zennit("0000d0", "d0d0d0", "d00000", centre="d0d0d0"),
    "coolio": _zennit("00d0d0", "d0d0d0", "d000d0", centre="d0d0d0"),
    "coleus": _zennit("00d000", "d0d0d0", "d000d0", centre="d0d0d0"),
}


def colormap(name: str) -> np.ndarray:
    """The anchors of colour map ``name``; an unknown name is a UsageError listing the known ones."""
    if name not in COLORMAPS:
        raise UsageError(f"unknown colour map '{name}'; known: {', '.join(COLORMAPS)}")
    return COLORMAPS[name]


def apply_colormap(t: np.ndarray, name: str = "seismic") -> np.ndarray:
    """RGB in [0, 1] (a last axis of 3) of values ``t`` in [0, 1] (clipped), linear between the anchors."""
    anchors = colormap(name)
    t = np.clip(t, 0.0, 1.0)
    return np.stack([np.interp(t, anchors[:, 0], anchors[:, c]) for c in (1, 2, 3)], axis=-1)


def channel_axis(shape) -> int | None:
    """The channel axis of one sample's map: 0 for CHW, -1 for HWC, None for other ranks. A channel
    count is 1, 3 or 4; when both ends could be one, the smaller is (a 1x4x4 map is one 4x4 channel),
    and CHW, ONNX's usual layout, wins a tie."""
    if len(shape) != 3:
        return None
    first, last = shape[0] in (1, 3, 4), shape[-1] in (1, 3, 4)
    if last and (not first or shape[-1] < shape[0]):
        return -1
    return 0


def _to_2d(r, absolute: bool) -> np.ndarray:
    """One sample's map (or image) as a 2-D float64 array: |values| when ``absolute``, summed over the channel
    axis and any further leading axes; an element that comes out NaN or inf (a model that overflowed) is 0."""
    r = np.asarray(r, np.float64)
    r = np.abs(r) if absolute else r
    axis = channel_axis(r.shape)
    if axis is not None:
        r = r.sum(axis=axis)
    if r.ndim == 1:
        r = r[None, :]
    while r.ndim > 2:
        r = r.sum(axis=0)
    return np.where(np.isfinite(r), r, 0.0)


def _check_level(level) -> None:
    if not (isinstance(level, (int, float, np.number)) and np.isfinite(level) and level > 0):
        raise UsageError(f"level must be a finite number > 0, got {level!r}")


def _signed(r: np.ndarray, level: float) -> np.ndarray:
    """One sample's map projected to 2-D (_to_2d: a NaN or inf element is 0, and the rest keep their scale),
    divided by its largest |value| and times ``level``, in [-1, 1]."""
    _check_level(level)
    m = _to_2d(r, absolute=False)
    scale = np.abs(m).max() if m.size else 0.0
    return np.clip((m / scale if scale > 0 else m) * level, -1.0, 1.0)


def heatmap(r: np.ndarray, cmap: str = "seismic", level: float = 1.0) -> np.ndarray:
    """RGB uint8 image of one sample's relevance, symmetric around 0 (0 maps to the colour map's centre, the
    largest |value| to its ends): Zennit's imgify(symmetric=True, cmap, level) without its 8-bit steps."""
    return (apply_colormap(_signed(r, level) * 0.5 + 0.5, cmap) * 255).round().astype(np.uint8)


def overlay(r: np.ndarray, image: np.ndarray, cmap: str = "seismic", level: float = 1.0,
            alpha: float = 0.5) -> np.ndarray:
    """RGB uint8: the heatmap of one sample over its input ``image`` (the same layout as r) in grey,
    heat * a + grey * (1 - a) with a = ``alpha`` * |relevance| / max: where nothing is relevant the image shows
    through, and the most relevant elements get ``alpha`` of the colour."""
    if not (isinstance(alpha, (int, float, np.number)) and 0 <= alpha <= 1):
        raise UsageError(f"alpha must be a number in [0, 1], got {alpha!r}")
    signed = _signed(r, level)
    grey = _to_2d(image, absolute=False)
    lo, hi = grey.min(), grey.max()
    grey = (grey - lo) / (hi - lo) if hi > lo else np.full_like(grey, 0.5)
    if grey.shape != signed.shape:
        raise UsageError(f"overlay: the image projects to {list(grey.shape)} and the relevance to "
                         f"{list(signed.shape)}")
    a = (alpha * np.abs(signed))[..., None]
    rgb = apply_colormap(signed * 0.5 + 0.5, cmap) * a + grey[..., None] * (1 - a)
    return (rgb * 255).round().astype(np.uint8)


def graymap(r: np.ndarray) -> np.ndarray:
    """RGB uint8 grey levels of one sample's |relevance| summed over channels, over its maximum (non-finite
    elements drawn as 0)."""
    m = _to_2d(r, absolute=True)
    scale = m.max()
    t = m / scale if scale > 0 else m
    return (np.repeat(t[..., None], 3, axis=-1) * 255).round().astype(np.uint8)


MAX_TILE_WIDTH = 4096  # pixels a tile is upscaled to at most along its width (wider maps keep their own width)


def grid(maps: np.ndarray, kind: str = "heatmap", min_size: int = 128, cmap: str = "seismic", level: float = 1.0,
         images: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 image: one tile per sample side by side (nearest-neighbour upscaled so small inputs stay
    visible: at least ``min_size`` pixels high, and no wider than MAX_TILE_WIDTH unless the map is). ``kind``
    "heatmap" (with ``cmap`` and ``level``; over the samples' ``images`` in grey when given) or "graymap"."""
    colormap(cmap)  # an unknown name, level or kind fails before any work
    _check_level(level)
    if kind not in ("heatmap", "graymap"):
        raise UsageError(f"kind must be 'heatmap' or 'graymap', got {kind!r}")
    if len(maps) == 0:
        raise UsageError("no maps to draw (an empty batch)")
    if images is not None and np.shape(images) != np.shape(maps):
        raise UsageError(f"an overlay needs the input of each map, of the map's shape {list(np.shape(maps))}; the "
                         f"data have the shape {list(np.shape(images))}")
    if kind == "graymap":
        tiles = [graymap(m) for m in maps]
    elif images is not None:
        tiles = [overlay(m, image, cmap, level) for m, image in zip(maps, images)]
    else:
        tiles = [heatmap(m, cmap, level) for m in maps]
    h, w = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    rows = max(1, int(np.ceil(min_size / h)))
    # square pixels unless that makes a tile wider than MAX_TILE_WIDTH: a 1-D map (a waveform, a row of features)
    # is one row high, and a token-by-embedding map a few, which would otherwise be upscaled min_size times
    cols = rows if w * rows <= MAX_TILE_WIDTH else max(1, MAX_TILE_WIDTH // w)
    tiles = [np.kron(t, np.ones((rows, cols, 1), np.uint8)) for t in tiles]
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate(sum(([t, gap] for t in tiles), [])[:-1], axis=1)


def stack_rows(rows: list[np.ndarray]) -> np.ndarray:
    """RGB uint8 images (grid rows) one below the other, 4 white pixels apart, padded white to the widest."""
    width = max(r.shape[1] for r in rows)
    padded = [np.concatenate([r, np.full((r.shape[0], width - r.shape[1], 3), 255, np.uint8)], axis=1)
              for r in rows]
    gap = np.full((4, width, 3), 255, np.uint8)
    return np.concatenate(sum(([r, gap] for r in padded), [])[:-1], axis=0)
