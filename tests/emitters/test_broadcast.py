"""onnxattr/emitters/broadcast.py: a gradient summed back over the axes where its operand was broadcast."""

import numpy as np
import pytest

from tests.vjp_check import check_vjp

rng = np.random.default_rng(0)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Where"])
def test_symbolic_dims_that_broadcast_at_run_time(op):
    """[2, 1, 3] against [1, 4, 3] with the dims that broadcast declared symbolic (a's second, b's first two; the
    condition's like a's, as node_model names every first axis "N"): which of them are 1 is only known at run
    time, so the axes to sum over are found there. (A symbolic dim was taken for one that does not broadcast: each
    gradient came out [2, 4, 3].)"""
    a, b = rng.standard_normal((2, 1, 3)), rng.standard_normal((1, 4, 3))
    inputs = [("a", np.abs(a) + 0.5 if op == "Pow" else a, False), ("b", b, False)]
    if op == "Where":
        inputs.insert(0, ("c", rng.standard_normal((2, 1, 3)) > 0, False))
    check_vjp(op, inputs, wrt=["a", "b"], dynamic={"a": (1,), "b": (0, 1), "c": (1,)})
