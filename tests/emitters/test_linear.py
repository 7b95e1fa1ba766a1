"""onnxattr/emitters/linear.py: Gemm and MatMul VJPs (constant and activation operands, broadcasting)."""

import numpy as np
import pytest

from tests.vjp_check import check_vjp

rng = np.random.default_rng(2)
r = rng.standard_normal


@pytest.mark.parametrize("attrs", [{}, {"transB": 1}, {"transA": 1}, {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}])
@pytest.mark.parametrize("const_b", [True, False])
def test_gemm_vjp(attrs, const_b):
    a = r((3, 4)) if not attrs.get("transA") else r((4, 3))
    b = r((4, 5)) if not attrs.get("transB") else r((5, 4))
    c = r((5,))
    wrt = ["a"] if const_b else ["a", "b"]
    check_vjp("Gemm", [("a", a, False), ("b", b, const_b), ("c", c, True)], attrs, wrt=wrt)


def test_gemm_bias_gradient():
    check_vjp("Gemm", [("a", r((3, 4)), True), ("b", r((4, 5)), True), ("c", r((1, 5)), False)],
              {"beta": 0.7}, wrt=["c"])


@pytest.mark.parametrize("sa,sb", [
    ((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)),
    ((4,), (4, 5)), ((2, 3, 4), (4,)), ((4,), (4,)), ((4,), (2, 4, 3)),
])
def test_matmul_vjp_activations(sa, sb):
    check_vjp("MatMul", [("a", r(sa), False), ("b", r(sb), False)], wrt=["a", "b"])


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5))])
def test_matmul_vjp_constant_weight(sa, sb):
    check_vjp("MatMul", [("a", r(sa), False), ("b", r(sb), True)], dynamic=(0,))
