"""onnxattr/regions.py: layouts, padding, region scores and ranks, and the perturber; its replaced batches
equal iNNvestigate's Perturbation.perturbate_on_batch (tests/oracles/make_innvestigate_perturbation.py)."""

import json
from pathlib import Path

import numpy as np
import pytest

from onnxattr.errors import UsageError
from onnxattr.regions import (
    RegionPerturber, blocks, crop, layout, pad, pad_widths, region_ranks, region_scores,
)

DATA = Path(__file__).parent / "oracles" / "data"


def test_layout_reads_images_and_takes_given_axes():
    assert layout((3, 32, 32)).channel == 0 and layout((3, 32, 32)).region == (9, 9)
    assert layout((32, 32, 3)).channel == 2
    assert layout((20,)).channel is None and layout((20,)).region == (1,)
    assert layout((16, 4), channel_axis=-1).channel == 1 and layout((16, 4), channel_axis=-1).region == (1,)
    assert layout((3, 8, 8), region=(2, 4)).region == (2, 4)
    assert layout((3, 8, 8), channel_axis=None).region == (1, 1, 1)
    assert layout((3, 8, 8), region=4).region == (4, 4)


@pytest.mark.parametrize("kwargs, words", [
    (dict(region=(2, 2, 2)), "one positive integer per spatial axis"),
    (dict(region=0), "one positive integer per spatial axis"),
    (dict(region=2.5), "one positive integer per spatial axis"),
    (dict(channel_axis=3), "channel_axis must be"),
    (dict(channel_axis=True), "channel_axis must be"),
])
def test_layout_refuses_what_does_not_fit(kwargs, words):
    with pytest.raises(UsageError, match=words):
        layout((3, 8, 8), **kwargs)


def test_layout_needs_an_axis_for_regions():
    with pytest.raises(UsageError, match="no axis left"):
        layout((5,), channel_axis=0)
    with pytest.raises(UsageError, match="at least one axis"):
        layout(())


def test_padding_puts_the_smaller_half_first_and_crop_undoes_it():
    assert pad_widths((10, 12, 9), (4, 4, 3)) == [(1, 1), (0, 0), (0, 0)]
    assert pad_widths((10,), (3,)) == [(1, 1)]
    assert pad_widths((7,), (5,)) == [(1, 2)]
    a = np.arange(2 * 1 * 7 * 5, dtype=np.float64).reshape(2, 1, 7, 5)
    p = pad(a, (5, 5), "reflect")
    assert p.shape == (2, 1, 10, 5)
    np.testing.assert_array_equal(p[:, :, 1], a[:, :, 0])
    np.testing.assert_array_equal(p[:, :, 0], a[:, :, 1])  # reflect: the row after the edge mirrored
    np.testing.assert_array_equal(crop(p, (7, 5), (5, 5)), a)


def test_region_scores_average_channels_then_regions():
    r = np.zeros((1, 2, 4, 4))
    r[0, 0, :2, :2] = 4.0  # top-left region, channel 0
    r[0, 1, 2:, 2:] = -2.0  # bottom-right region, channel 1
    lay = layout(r.shape[1:], channel_axis=0, region=2)  # (2, 4, 4) alone would read as HWC
    s = region_scores(r, lay)
    np.testing.assert_allclose(s[0], [[2.0, 0.0], [0.0, -1.0]])  # mean over 2 channels, then over 4 elements
    np.testing.assert_allclose(region_scores(r, lay, reduce="sum", aggregate="sum")[0], [[16.0, 0], [0, -8.0]])
    np.testing.assert_allclose(region_scores(r, lay, reduce="max", aggregate="max")[0], [[4.0, 0], [0, 0]])
    with pytest.raises(UsageError, match="reduce must be one of"):
        region_scores(r, lay, reduce="median")


def test_ranks_most_and_least_relevant_first_ties_in_index_order_nan_last():
    s = np.array([[0.5, 2.0, np.nan, 2.0, -1.0]])
    np.testing.assert_array_equal(region_ranks(s, "morf"), [[2, 0, 4, 1, 3]])
    np.testing.assert_array_equal(region_ranks(s, "lerf"), [[1, 2, 4, 3, 0]])
    with pytest.raises(UsageError, match="order must be"):
        region_ranks(s, "random")


def test_the_perturber_replaces_in_rank_order_and_counts_only_up():
    x = np.arange(1, 7, dtype=np.float32).reshape(1, 6)  # [N, F]: every feature a region
    lay = layout((6,))
    ranks = region_ranks(np.array([[0.1, 0.6, 0.2, 0.5, 0.3, 0.4]]), "morf")
    p = RegionPerturber(x, ranks, lay, "zeros")
    np.testing.assert_array_equal(p.upto(0), x)
    np.testing.assert_array_equal(p.upto(2), [[1, 0, 3, 0, 5, 6]])
    np.testing.assert_array_equal(p.upto(3), [[1, 0, 3, 0, 5, 0]])
    assert p.upto(3).dtype == np.float32
    with pytest.raises(ValueError):
        p.upto(1)
    np.testing.assert_array_equal(RegionPerturber(x, ranks, lay, "invert").upto(1), [[1, -2, 3, 4, 5, 6]])
    # a number, clipped to value_range where it is put in (the other values are left as they are)
    np.testing.assert_array_equal(RegionPerturber(x, ranks, lay, 9.0, value_range=(0, 4)).upto(1),
                                  [[1, 4, 3, 4, 5, 6]])


def test_mean_replaces_each_channel_by_its_region_mean_and_gaussian_follows_its_seed():
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 4, 4)).astype(np.float32)
    lay = layout(x.shape[1:], region=2)
    ranks = region_ranks(rng.standard_normal((2, 2, 2)), "morf")
    out = RegionPerturber(x, ranks, lay, "mean").upto(1)
    for n in range(2):
        i, j = np.argwhere(ranks[n] == 0)[0]
        block = (n, slice(None), slice(2 * i, 2 * i + 2), slice(2 * j, 2 * j + 2))
        np.testing.assert_allclose(out[block], np.broadcast_to(x[block].mean((1, 2), keepdims=True), (3, 2, 2)),
                                   rtol=1e-6)
        rest = np.ones(x.shape[1:], bool)
        rest[block[1:]] = False
        np.testing.assert_array_equal(out[n][rest], x[n][rest])
    g1 = RegionPerturber(x, ranks, lay, "gaussian", seed=1).upto(4)
    np.testing.assert_array_equal(g1, RegionPerturber(x, ranks, lay, "gaussian", seed=1).upto(4))
    assert not np.array_equal(g1, RegionPerturber(x, ranks, lay, "gaussian", seed=2).upto(4))
    assert 0.2 < g1.std() < 0.4  # N(0, 0.3²) everywhere once every region is replaced


def test_blocks_is_a_view():
    a = np.zeros((1, 1, 4, 6))
    blocks(a, (2, 3))[0, 0, 1, :, 0, :] = 1.0
    assert a[0, 0, 2:, :3].sum() == 6 and a.sum() == 6


@pytest.mark.parametrize("config", ["r5_zeros", "r4_mean", "r3_invert", "r3_mean"])
def test_replaced_batches_equal_innvestigates(config):
    """iNNvestigate's perturbate_on_batch with 1..K regions (channels last, padded by reflection where 10 is not
    a multiple of the region): equal up to float32 rounding of the region means (ours are taken in float64)."""
    d = np.load(DATA / "keras_perturb.npz")
    c = json.loads(str(d["manifest"]))["configs"][config]
    x = d["x"]
    lay = layout(x.shape[1:], region=tuple(c["region_shape"]))
    assert lay.channel == 2
    p = RegionPerturber(x, region_ranks(region_scores(d["analysis"], lay), "morf"), lay, c["perturbation"])
    expected = d[f"{config}|perturbed"]
    assert len(expected) == c["steps"]
    for k, want in enumerate(expected, start=1):
        np.testing.assert_allclose(p.upto(k), want, rtol=0, atol=2.5e-7)
    assert not np.array_equal(expected[0], x)  # the oracle replaced something
