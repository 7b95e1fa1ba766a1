"""onnxattr/emitters/arithmetic.py: element-wise arithmetic with broadcasting."""

import numpy as np
import pytest

from tests.vjp_check import check_vjp

rng = np.random.default_rng(3)
r = rng.standard_normal
SHAPES = [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (3, 1)), ((1,), (2, 3))]


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("sa,sb", SHAPES)
@pytest.mark.parametrize("dynamic", [(), (0,)])
def test_binary_vjp(op, sa, sb, dynamic):
    b = r(sb)
    if op == "Div":
        b = np.sign(b) * (np.abs(b) + 0.5)
    dyn = dynamic if len(sa) > 1 else ()
    check_vjp(op, [("a", r(sa), False), ("b", b, False)], wrt=["a", "b"], dynamic=dyn)


def test_sum_vjp():
    check_vjp("Sum", [("a", r((2, 3)), False), ("b", r((3,)), False), ("c", r((2, 1)), False)],
              wrt=["a", "b", "c"])


@pytest.mark.parametrize("op", ["Neg", "Sqrt", "Exp", "Log", "Reciprocal", "Abs"])
def test_unary_vjp(op):
    x = r((2, 5))
    if op in ("Sqrt", "Log", "Reciprocal"):
        x = np.abs(x) + 0.5
    check_vjp(op, [("x", x, False)])


def test_pow_vjp():
    check_vjp("Pow", [("a", np.abs(r((2, 3))) + 0.5, False), ("p", np.array([2.0, 3.0, 0.5]), False)],
              wrt=["a", "p"])


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_vjp(op):
    check_vjp(op, [("a", r((2, 3)), False), ("b", r((3,)), False)], wrt=["a", "b"])


def test_where_vjp():
    cond = rng.random((2, 3)) > 0.5
    check_vjp("Where", [("c", cond, True), ("a", r((2, 3)), False), ("b", r((3,)), False)], wrt=["a", "b"])
