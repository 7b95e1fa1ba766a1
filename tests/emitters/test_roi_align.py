"""onnxattr/emitters/roi_align.py: RoiAlign's VJP for its input against float64 central differences of onnx's
reference RoiAlign: boxes inside, across and beyond the border, both coordinate modes, a spatial scale, boxes of
both images of the batch."""

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


@pytest.mark.parametrize("attrs,why", [({"sampling_ratio": 0}, "sampling_ratio 0"),
                                       ({"sampling_ratio": 2, "mode": "max"}, "mode 'max'")])
def test_roi_align_refused(attrs, why):
    with pytest.raises(UnsupportedModelError, match=f"RoiAlign node 'node': .*{why}"):
        check_vjp("RoiAlign", [("x", rng.standard_normal((2, 3, 6, 7)), False), ("rois", ROIS, True),
                               ("batch", BATCH, True)], attrs, opset=16)
