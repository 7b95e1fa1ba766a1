"""onnxattr/viz.py: heatmaps and graymaps with iNNvestigate's projections, image loading per layout."""

import numpy as np
import pytest
from PIL import Image

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


def test_load_image_follows_the_models_layout(tmp_path):
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    Image.fromarray(rgb).save(tmp_path / "i.png")
    chw = viz.load_image(str(tmp_path / "i.png"), ["N", 3, 4, 6])
    np.testing.assert_array_equal(chw, rgb.transpose(2, 0, 1)[None] / np.float32(255))
    hwc = viz.load_image(str(tmp_path / "i.png"), ["N", 4, 6, 3])
    np.testing.assert_array_equal(hwc, rgb[None] / np.float32(255))
    gray = viz.load_image(str(tmp_path / "i.png"), ["N", 1, 8, 5])  # grey, resized to the model's 8x5
    assert gray.shape == (1, 1, 8, 5) and gray.dtype == np.float32 and 0 <= gray.min() <= gray.max() <= 1
    want = np.asarray(Image.fromarray(rgb).convert("L").resize((5, 8)), np.float32) / 255
    np.testing.assert_array_equal(gray[0, 0], want)
