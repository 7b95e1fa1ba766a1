"""onnxattr/plot.py: the perturbation-curve chart draws one line per map, in its colour, one panel per order."""

import numpy as np
import pytest

from onnxattr.evaluate import Evaluation, PerturbationCurve
from onnxattr.plot import PALETTE, PANEL, curves_chart, panel


def _has(img: np.ndarray, colour) -> int:
    return int((img == np.array(colour, np.uint8)).all(axis=-1).sum())


def test_each_series_is_drawn_in_its_colour():
    x = np.linspace(0, 1, 11)
    img = panel({"a": (x, x ** 2), "b": (x, 1 - x), "c": (x[:1], x[:1])}, "most relevant first", "mean score")
    assert img.shape == (PANEL[1], PANEL[0], 3) and img.dtype == np.uint8
    for k in range(3):
        assert _has(img, PALETTE[k]) > 10  # the line (a dot for one point) and its legend swatch
    assert _has(img, PALETTE[3]) == 0


def test_a_flat_or_non_finite_series_still_draws():
    x = np.linspace(0, 1, 5)
    img = panel({"flat": (x, np.full(5, 3.0)), "nan": (x, np.array([1.0, np.nan, 2.0, np.nan, 0.0]))}, "t", "y")
    assert _has(img, PALETTE[0]) > 50 and _has(img, PALETTE[1]) > 10


def test_one_panel_per_order_that_ran():
    scores = np.array([[2.0, 1.0], [1.0, 0.5], [0.0, 0.0]])
    c = PerturbationCurve("morf", np.arange(3), scores, 2)
    both = Evaluation(None, curves={"m": {"morf": c, "lerf": c}}, names=["m"])
    one = Evaluation(None, curves={"m": {"morf": c}}, names=["m"])
    assert curves_chart(both).shape[1] == 2 * PANEL[0] + 8 and curves_chart(one).shape[1] == PANEL[0]
    with pytest.raises(ValueError, match="no perturbation curves"):
        curves_chart(Evaluation(None, names=["m"]))
