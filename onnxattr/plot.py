"""Perturbation curves as a line chart (Pillow, no plotting library): one panel per order, the mean score over the
samples against the share of regions replaced, one coloured line per map, with a legend."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# distinct, print-safe line colours (a map beyond the tenth reuses them)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
PANEL = (440, 320)  # width, height of one panel in pixels
MARGIN = dict(left=58, right=12, top=26, bottom=34)
TITLES = {"morf": "most relevant first", "lerf": "least relevant first"}


def _ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    return [lo + (hi - lo) * k / (count - 1) for k in range(count)]


def panel(series: dict, title: str, y_label: str) -> np.ndarray:
    """One panel, RGB uint8 [H, W, 3]: ``series`` name -> (x in [0, 1], y), drawn in PALETTE order."""
    w, h = PANEL
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = MARGIN["left"], w - MARGIN["right"], MARGIN["top"], h - MARGIN["bottom"]
    ys = np.concatenate([np.asarray(y, np.float64) for _, y in series.values()]) if series else np.zeros(1)
    ys = ys[np.isfinite(ys)]
    lo, hi = (float(ys.min()), float(ys.max())) if ys.size else (0.0, 1.0)
    if hi - lo < 1e-12 * max(1.0, abs(hi)):
        lo, hi = lo - 1.0, hi + 1.0
    lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)

    def at(x, y):
        return left + x * (right - left), bottom - (y - lo) / (hi - lo) * (bottom - top)

    d.rectangle([left, top, right, bottom], outline="black")
    for v in _ticks(lo, hi):
        _, py = at(0.0, v)
        d.line([left - 4, py, left, py], fill="black")
        d.text((4, py - 5), f"{v:.3g}", fill="black", font=font)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        px, _ = at(v, lo)
        d.line([px, bottom, px, bottom + 4], fill="black")
        d.text((px - 8, bottom + 6), f"{v:g}", fill="black", font=font)
    d.text((left, 6), f"{title} ({y_label})", fill="black", font=font)
    d.text(((left + right) // 2 - 60, bottom + 20), "share of regions replaced", fill="black", font=font)
    for k, (name, (x, y)) in enumerate(series.items()):
        colour = PALETTE[k % len(PALETTE)]
        points = [at(float(a), float(b)) for a, b in zip(x, y) if np.isfinite(b)]
        if len(points) > 1:
            d.line(points, fill=colour, width=2)
        elif points:
            px, py = points[0]
            d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
    names = [name[:28] for name in series]  # the legend, on white over the lines' top-right corner
    text_w = max([d.textlength(n, font=font) for n in names] + [0])
    lx = right - 34 - text_w
    d.rectangle([lx - 4, top + 3, right - 3, top + 8 + 12 * len(names)], fill="white", outline=(200, 200, 200))
    for k, name in enumerate(names):
        ly = top + 6 + 12 * k
        d.line([lx, ly + 5, lx + 20, ly + 5], fill=PALETTE[k % len(PALETTE)], width=2)
        d.text((lx + 24, ly), name, fill="black", font=font)
    return np.asarray(img)


def curves_chart(evaluation, y_label: str = "mean score") -> np.ndarray:
    """RGB uint8: the mean over the samples of each map's curve, one panel per order that ran (an
    ``evaluate.Evaluation``'s curves), side by side."""
    orders = [o for o in TITLES if any(o in c for c in evaluation.curves.values())]
    if not orders:
        raise ValueError("no perturbation curves to draw (the aopc metric did not run)")
    panels = []
    for order in orders:
        series = {}
        for name, by_order in evaluation.curves.items():
            c = by_order.get(order)
            if c is not None:
                series[name] = (c.regions / max(c.total_regions, 1), c.scores.mean(axis=1))
        panels.append(panel(series, TITLES[order], y_label))
    gap = np.full((PANEL[1], 8, 3), 255, np.uint8)
    return np.concatenate(sum(([p, gap] for p in panels), [])[:-1], axis=1)
