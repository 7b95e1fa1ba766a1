"""onnxattr/emitters/pooling.py: MaxPool (indices + scatter-add), AveragePool, global pools."""

import numpy as np
import pytest

from tests.vjp_check import check_vjp

rng = np.random.default_rng(5)

POOL_CASES = [
    ((2, 3, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ((2, 3, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2]}),  # overlapping windows
    ((1, 2, 7, 8), {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1]}),
    ((1, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
]


@pytest.mark.parametrize("xs,attrs", POOL_CASES)
def test_maxpool_vjp(xs, attrs):
    check_vjp("MaxPool", [("x", rng.standard_normal(xs), False)], attrs, dynamic=(0,))


def test_maxpool_dilated():
    check_vjp("MaxPool", [("x", rng.standard_normal((1, 2, 9, 9)), False)],
              {"kernel_shape": [2, 2], "dilations": [2, 2]})


@pytest.mark.parametrize("xs,attrs", POOL_CASES)
@pytest.mark.parametrize("cip", [0, 1])
def test_avgpool_vjp(xs, attrs, cip):
    check_vjp("AveragePool", [("x", rng.standard_normal(xs), False)], {**attrs, "count_include_pad": cip},
              dynamic=(0,))


def test_avgpool_dynamic_spatial_without_pads():
    check_vjp("AveragePool", [("x", rng.standard_normal((2, 3, 6, 6)), False)],
              {"kernel_shape": [2, 2], "strides": [2, 2]}, dynamic=(0, 2, 3))


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("dynamic", [(), (0, 2, 3)])
def test_global_pool_vjp(op, dynamic):
    check_vjp(op, [("x", rng.standard_normal((2, 3, 4, 5)), False)], dynamic=dynamic)
