"""Relevance maps as images, with iNNvestigate's projections.

heatmap: sum over channels, divide by the largest |value| (0 stays the centre), map [-1, 1] through the
         "seismic" colour ramp (dark blue, blue, white, red, dark red).
graymap: sum of |value| over channels, divide by the maximum, grey levels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# seismic: five evenly spaced anchors, linear in between (matplotlib's definition of this ramp)
_SEISMIC = np.array([[0.0, 0.0, 0.3], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.5, 0.0, 0.0]])


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


def _to_2d(r: np.ndarray, absolute: bool) -> np.ndarray:
    r = np.abs(r) if absolute else r
    axis = channel_axis(r.shape)
    if axis is not None:
        r = r.sum(axis=axis)
    if r.ndim == 1:
        r = r[None, :]
    while r.ndim > 2:
        r = r.sum(axis=0)
    return r


def heatmap(r: np.ndarray) -> np.ndarray:
    """RGB uint8 image of one sample's relevance (seismic, symmetric around 0)."""
    m = _to_2d(np.asarray(r, np.float64), absolute=False)
    scale = np.abs(m).max()
    t = (m / scale if scale > 0 else m) * 0.5 + 0.5  # [0, 1]
    pos = t * (len(_SEISMIC) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(_SEISMIC) - 2)
    frac = (pos - lo)[..., None]
    rgb = _SEISMIC[lo] * (1 - frac) + _SEISMIC[lo + 1] * frac
    return (rgb * 255).round().astype(np.uint8)


def graymap(r: np.ndarray) -> np.ndarray:
    m = _to_2d(np.asarray(r, np.float64), absolute=True)
    scale = m.max()
    t = m / scale if scale > 0 else m
    return (np.repeat(t[..., None], 3, axis=-1) * 255).round().astype(np.uint8)


def grid(maps: np.ndarray, kind: str = "heatmap", min_size: int = 128) -> np.ndarray:
    """RGB uint8 image: one tile per sample side by side (nearest-neighbour upscaled so small inputs
    stay visible)."""
    project = heatmap if kind == "heatmap" else graymap
    tiles = [project(m) for m in maps]
    h = max(t.shape[0] for t in tiles)
    factor = max(1, int(np.ceil(min_size / h)))
    tiles = [np.kron(t, np.ones((factor, factor, 1), np.uint8)) for t in tiles]
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    return np.concatenate(sum(([t, gap] for t in tiles), [])[:-1], axis=1)


def load_image(path: str, shape) -> np.ndarray:
    """An image file as a float32 batch of one, in [0, 1], laid out for ``shape`` (NCHW or NHWC)."""
    dims = list(shape[1:])
    axis = channel_axis(dims) if len(dims) == 3 else None
    if axis == 0:
        c, h, w = dims
    elif axis == -1:
        h, w, c = dims
    else:
        h, w, c = (dims + [None, None])[:2] + [1]
    img = Image.open(path).convert("L" if c == 1 else "RGB")
    if isinstance(h, int) and isinstance(w, int):
        img = img.resize((w, h))
    a = np.asarray(img, np.float32) / 255.0
    if a.ndim == 2:
        a = a[..., None]
    if axis == 0:
        a = a.transpose(2, 0, 1)
    return a[None]
