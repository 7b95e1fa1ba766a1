"""onnxattr/emitters/roi_align.py: RoiAlign's VJP for its input against float64 central differences of onnx's
reference RoiAlign: boxes inside, across and beyond the border, both coordinate modes, a spatial scale, boxes of
both images of the batch, fixed and adaptive sample counts."""

import numpy as np
import pytest

from onnxattr.errors import UnsupportedModelError
from tests.vjp_check import check_vjp

rng = np.random.default_rng(23)

# (x1, y1, x2, y2) in input pixels (spatial_scale 0.5: the feature map is half the size)
ROIS = np.array([[1.0, 2.0, 9.0, 7.0], [0.0, 0.0, 12.0, 10.0], [-3.0, 4.5, 5.5, 13.0], [6.2, 1.1, 6.9, 1.8],
                 [10.5, 8.0, 15.0, 14.0]])
BATCH = np.array([0, 1, 1, 0, 1], np.int64)


@pytest.mark.parametrize("mode", ["half_pixel", "output_half_pixel"])
@pytest.mark.parametrize("samples,pooled", [(1, (2, 2)), (2, (3, 2)), (3, (1, 4))])
def test_roi_align(mode, samples, pooled):
    x = rng.standard_normal((2, 3, 6, 7))
    check_vjp("RoiAlign", [("x", x, False), ("rois", ROIS, True), ("batch", BATCH, True)],
              {"coordinate_transformation_mode": mode, "sampling_ratio": samples, "output_height": pooled[0],
               "output_width": pooled[1], "spatial_scale": 0.5}, opset=16, dynamic=(0,))


@pytest.mark.parametrize("mode", ["half_pixel", "output_half_pixel"])
@pytest.mark.parametrize("pooled", [(2, 2), (3, 1)])
def test_roi_align_adaptive(mode, pooled):
    """sampling_ratio 0 (torchvision's default, -1, exports as 0): ceil(bin) points per bin, a count of each box
    and axis known at run time (1 to 3 here); a box with x2 a little below x1 takes no points in half_pixel mode (its
    output and gradient are 0; further below, onnxruntime's forward fails) and is 1 wide in output_half_pixel mode."""
    x = rng.standard_normal((2, 3, 6, 7))
    rois = np.concatenate([ROIS, [[9.0, 2.0, 8.5, 8.0]]])
    check_vjp("RoiAlign", [("x", x, False), ("rois", rois, True), ("batch", np.append(BATCH, 0), True)],
              {"coordinate_transformation_mode": mode, "sampling_ratio": 0, "output_height": pooled[0],
               "output_width": pooled[1], "spatial_scale": 0.5}, opset=16, dynamic=(0,))


@pytest.mark.parametrize("samples", [0, 2])
def test_roi_align_without_boxes(samples):
    """No boxes at all (a detector that found nothing; the box count is declared dynamic, as exporters write it): the
    gradient is 0 and the run does not fail."""
    check_vjp("RoiAlign", [("x", rng.standard_normal((2, 3, 6, 7)), False), ("rois", np.zeros((0, 4)), False),
                           ("batch", np.zeros(0, np.int64), False)],
              {"sampling_ratio": samples, "output_height": 2, "output_width": 2}, opset=16, wrt=["x"], dynamic=(0,))


@pytest.mark.parametrize("attrs,dynamic,why", [
    ({"sampling_ratio": 2, "mode": "max"}, (), "mode 'max' is not supported"),
    # (the message said mode 'avg' was not supported)
    ({"sampling_ratio": 2}, {"x": (1,)}, r"its input 'x' must be \[N, C, H, W\] with a channel count C known when "
                                         r"compiling, and shape inference gives \[2, x_1, 6, 7\]")])
def test_roi_align_refused(attrs, dynamic, why):
    with pytest.raises(UnsupportedModelError, match=f"RoiAlign node 'node': {why}"):
        check_vjp("RoiAlign", [("x", rng.standard_normal((2, 3, 6, 7)), False), ("rois", ROIS, True),
                               ("batch", BATCH, True)], attrs, opset=16, dynamic=dynamic)
