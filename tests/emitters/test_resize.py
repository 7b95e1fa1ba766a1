"""onnxattr/emitters/resize.py: Resize in every mode (a linear map: checked exactly on onnxruntime)."""

import numpy as np
import pytest

from tests.vjp_check import check_vjp

rng = np.random.default_rng(9)

MODES = [
    {"mode": "nearest"},
    {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
    {"mode": "nearest", "coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_ceil"},
    {"mode": "linear"},
    {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
    {"mode": "cubic"},
]


@pytest.mark.parametrize("attrs", MODES)
@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 1.5, 0.5], [1, 1, 3, 1]])
def test_resize_scales(attrs, scales):
    # Resize is linear in x: onnxruntime (the runtime users get) is the reference, difference exact
    check_vjp("Resize", [("x", rng.standard_normal((2, 3, 4, 6)), False), ("roi", np.zeros(0, np.float32), True),
                         ("s", np.array(scales, np.float32), True)], attrs, dynamic=(0,), linear_ort=True)


def test_resize_sizes():
    check_vjp("Resize", [("x", rng.standard_normal((1, 2, 4, 5)), False), ("roi", np.zeros(0, np.float32), True),
                         ("s", np.zeros(0, np.float32), True), ("z", np.array([1, 2, 7, 3], np.int64), True)],
              {"mode": "linear"}, linear_ort=True)


def test_resize_3d():
    check_vjp("Resize", [("x", rng.standard_normal((1, 2, 3, 4, 5)), False), ("roi", np.zeros(0, np.float32), True),
                         ("s", np.array([1, 1, 2, 1, 2], np.float32), True)], {"mode": "nearest"},
              linear_ort=True)


@pytest.mark.parametrize("attrs", [{"mode": "linear"},
                                   {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
                                   {"mode": "nearest", "antialias": 0}, {"mode": "cubic", "antialias": 1}])
def test_resize_axes_scales(attrs):
    # opset 18's axes attribute (torch's dynamo exporter writes axes=[2, 3] and two scales)
    check_vjp("Resize", [("x", rng.standard_normal((2, 3, 4, 6)), False), ("roi", np.zeros(0, np.float32), True),
                         ("s", np.array([2.0, 0.5], np.float32), True)], {**attrs, "axes": [2, 3]},
              dynamic=(0,), opset=18, linear_ort=True)


def test_resize_axes_sizes_negative():
    check_vjp("Resize", [("x", rng.standard_normal((2, 3, 4, 5)), False), ("roi", np.zeros(0, np.float32), True),
                         ("s", np.zeros(0, np.float32), True), ("z", np.array([7], np.int64), True)],
              {"mode": "linear", "axes": [-2]}, dynamic=(0,), opset=18, linear_ort=True)


def test_resize_axes_roi():
    # tf_crop_and_resize reads roi per listed axis: [start_2, start_3, end_2, end_3] (no scale of 1: onnxruntime
    # leaves such an axis as it is, crop or not, and the VJP follows onnxruntime)
    check_vjp("Resize", [("x", rng.standard_normal((1, 2, 5, 6)), False),
                         ("roi", np.array([0.1, 0.2, 0.9, 0.7], np.float32), True),
                         ("s", np.array([1.5, 2.0], np.float32), True)],
              {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize", "axes": [2, 3]},
              opset=18, linear_ort=True)


def test_resize_keep_aspect_ratio_refused():
    with pytest.raises(Exception, match="keep_aspect_ratio_policy 'not_larger' is not supported"):
        check_vjp("Resize", [("x", rng.standard_normal((1, 2, 4, 5)), False), ("roi", np.zeros(0, np.float32), True),
                             ("s", np.zeros(0, np.float32), True), ("z", np.array([8, 8], np.int64), True)],
                  {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}, opset=18,
                  linear_ort=True)
