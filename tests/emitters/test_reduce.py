"""onnxattr/emitters/reduce.py: reductions, Softmax, LogSoftmax."""

import numpy as np
import pytest

from tests.vjp_check import check_vjp

rng = np.random.default_rng(7)
r = rng.standard_normal


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("axes,keep", [([1], 1), ([1, 2], 0), ([-1], 0), (None, 1)])
@pytest.mark.parametrize("dynamic", [(), (0,)])
def test_reduce(op, axes, keep, dynamic):
    ins = [("x", r((2, 3, 4)), False)]
    if axes is not None:
        ins.append(("a", np.array(axes, np.int64), True))
    check_vjp(op, ins, {"keepdims": keep}, dynamic=dynamic, opset=18)


def test_reduce_mean_axes_attribute_opset13():
    check_vjp("ReduceMean", [("x", r((2, 3, 4)), False)], {"axes": [2], "keepdims": 1}, opset=13)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax(op, axis):
    check_vjp(op, [("x", r((2, 3, 4)), False)], {"axis": axis}, dynamic=(0,))
