"""onnxattr/viz.py: heatmaps and graymaps with iNNvestigate's projections, colour maps, overlays, grids."""

from pathlib import Path

import numpy as np
import pytest

import onnxattr
from onnxattr import viz


def test_heatmap_sums_channels_and_maps_the_seismic_ramp():
    """CHW map: channels summed; 0 is white, +max dark red, -max dark blue, +max/2 pure red."""
    r = np.zeros((3, 2, 2))
    r[:, 0, 0] = [1.0, 1.0, 2.0]    # sum +4: the maximum
    r[:, 0, 1] = [-3.0, -1.0, 0.0]  # sum -4
    r[:, 1, 0] = [2.0, 0.0, 0.0]    # sum +2
    rgb = viz.heatmap(r)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [128, 0, 0]
    assert rgb[0, 1].tolist() == [0, 0, 76]
    assert rgb[1, 0].tolist() == [255, 0, 0]
    assert rgb[1, 1].tolist() == [255, 255, 255]


def test_graymap_is_the_absolute_sum_over_channels_of_an_hwc_map():
    r = np.zeros((2, 2, 3))  # HWC
    r[0, 0] = [1.0, -1.0, 0.0]  # |.| sum 2
    r[1, 1] = [0.0, 0.0, -4.0]  # 4: the maximum
    g = viz.graymap(r)
    assert g[1, 1].tolist() == [255] * 3 and g[0, 0].tolist() == [128] * 3 and g[0, 1].tolist() == [0] * 3


@pytest.mark.parametrize("shape,axis", [((3, 5, 7), 0), ((5, 7, 3), -1), ((1, 9, 9), 0), ((9, 9, 1), -1),
                                        ((1, 4, 4), 0), ((4, 4, 1), -1), ((3, 4, 4), 0), ((4, 4, 3), -1),
                                        ((3, 8, 3), 0), ((8, 8), None)])
def test_channel_axis(shape, axis):
    assert viz.channel_axis(shape) == axis


def test_grid_puts_upscaled_tiles_side_by_side():
    maps = np.stack([np.ones((1, 4, 4)), -np.ones((1, 4, 4))])
    img = viz.grid(maps, "heatmap", min_size=8)
    assert img.shape == (8, 8 + 4 + 8, 3)
    assert (img[:, :8] == [128, 0, 0]).all() and (img[:, 8:12] == 255).all() and (img[:, 12:] == [0, 0, 76]).all()


def test_grid_of_one_dimensional_maps_stays_narrow():
    """A waveform's map [512] is one row: it is stretched to min_size rows but only as wide as MAX_TILE_WIDTH
    allows (square pixels would make a 65,536-pixel-wide tile); a map wider than that keeps its width."""
    img = viz.grid(np.random.default_rng(0).standard_normal((2, 512)), "heatmap")
    assert img.shape == (128, 2 * viz.MAX_TILE_WIDTH + 4, 3)
    assert viz.grid(np.ones((1, 16000)), "graymap").shape == (128, 16000, 3)
    assert viz.grid(np.ones((1, 16)), "graymap").shape == (128, 16 * 128, 3)  # narrow enough: square pixels


ZENNIT = np.load(Path(__file__).resolve().parent / "oracles" / "data" / "zennit_cmaps.npz")


@pytest.mark.parametrize("key", sorted(k for k in ZENNIT.files if k.count("|") == 1))
def test_heatmaps_match_zennits_imgify(key):
    """zennit.image.imgify(map, symmetric=True, cmap, level) (tests/oracles/make_zennit_cmaps.py): Zennit cuts
    the normalized value to 8 bits before its 256-entry palette, we map it continuously, so a pixel may differ by
    one palette step (stored beside each image) and one level of rounding; on average they differ by ~1 level."""
    name, level = key.split("|")
    ours = viz.heatmap(ZENNIT["map"], "zennit_seismic" if name == "seismic" else name, float(level)).astype(int)
    theirs = ZENNIT[key].astype(int)
    step = int(ZENNIT[f"{key}|step"])
    assert np.abs(ours - theirs).max() <= step + 1
    assert np.abs(ours - theirs).mean() <= 2.0


def test_another_colour_map_is_far_from_zennits():
    """The bound above tells the maps apart: bwr and france share their centre and differ at the ends."""
    ours = viz.heatmap(ZENNIT["map"], "france").astype(int)
    assert np.abs(ours - ZENNIT["bwr|1.0"].astype(int)).max() > 10 * (int(ZENNIT["bwr|1.0|step"]) + 1)


def test_level_saturates_and_unknown_colour_maps_are_named():
    r = np.array([[1.0, 0.5, -0.25, 0.0]])
    rgb = viz.heatmap(r, "bwr", level=2.0)
    assert rgb[0, 0].tolist() == rgb[0, 1].tolist() == [255, 0, 0]  # 0.5 of the max, doubled: the end
    assert rgb[0, 3].tolist() == [254, 254, 255]  # Zennit's white sits at 0x80 / 0xff, a hair above the centre
    assert viz.heatmap(r)[0, 3].tolist() == [255, 255, 255]  # matplotlib's seismic: white at the centre
    with pytest.raises(onnxattr.errors.UsageError, match="unknown colour map 'jet'; known: seismic, gray"):
        viz.heatmap(r, "jet")


def test_overlay_shows_the_image_where_nothing_is_relevant():
    image = np.zeros((3, 2, 2))
    image[:, 0, 1] = 1.0  # a white pixel; the others black
    r = np.zeros((3, 2, 2))
    r[0, 1, 1] = -2.0  # the only relevant pixel
    rgb = viz.overlay(r, image, "bwr", alpha=0.5)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]
    assert rgb[1, 1].tolist() == [0, 0, 128]  # half blue over black
    with pytest.raises(onnxattr.errors.UsageError, match=r"of the map's shape \[1, 3, 2, 2\].*\[1, 2, 2\]"):
        viz.grid(r[None], images=np.zeros((1, 2, 2)))


def test_a_non_finite_element_keeps_the_scale_of_the_others():
    """One NaN made the largest |value| NaN, so nothing was scaled: a map of ~1e-3 came out white."""
    r = np.array([[1e-3, -2e-3, 5e-4, 0.0]])
    clean = viz.heatmap(r, "bwr")
    spoiled = r.copy()
    spoiled[0, 3] = np.nan
    got = viz.heatmap(spoiled, "bwr")
    np.testing.assert_array_equal(got[0, :3], clean[0, :3])
    assert got[0, 3].tolist() == clean[0, 3].tolist()  # drawn as 0
    assert viz.graymap(np.array([[np.inf, 1.0, 2.0]]))[0].tolist() == [[0] * 3, [128] * 3, [255] * 3]


@pytest.mark.parametrize("call,words", [
    (lambda: viz.heatmap(np.ones((2, 2)), level=-1), "level must be a finite number > 0"),
    (lambda: viz.heatmap(np.ones((2, 2)), level=float("nan")), "level must be a finite number > 0"),
    (lambda: viz.overlay(np.ones((2, 2)), np.ones((2, 2)), alpha=2), r"alpha must be a number in \[0, 1\]"),
    (lambda: viz.grid(np.ones((1, 2, 2)), kind="graymapp"), "kind must be 'heatmap' or 'graymap'"),
    (lambda: viz.grid(np.ones((0, 2, 2))), "no maps to draw"),
])
def test_bad_drawing_parameters_are_named(call, words):
    """level -1 swapped the colours, alpha 2 wrapped around in uint8, an unknown kind drew a heatmap."""
    with pytest.raises(onnxattr.errors.UsageError, match=words):
        call()


def test_stack_rows_pads_to_the_widest_row():
    from onnxattr.viz import stack_rows

    a, b = np.zeros((2, 5, 3), np.uint8), np.zeros((3, 2, 3), np.uint8)
    out = stack_rows([a, b])
    assert out.shape == (2 + 4 + 3, 5, 3) and out.dtype == np.uint8
    assert (out[2:6] == 255).all() and (out[6:, 2:] == 255).all() and not out[6:, :2].any()
