"""onnxattr/emitters/trigonometric.py: each function against float64 central differences inside its domain."""

import numpy as np
import pytest

from tests.vjp_check import check_vjp

rng = np.random.default_rng(12)

# op -> the interval the inputs are drawn from (inside the domain, away from its poles)
DOMAINS = {"Sin": (-3, 3), "Cos": (-3, 3), "Tan": (-1.2, 1.2), "Asin": (-0.9, 0.9), "Acos": (-0.9, 0.9),
           "Atan": (-3, 3), "Sinh": (-2, 2), "Cosh": (-2, 2), "Asinh": (-3, 3), "Acosh": (1.2, 3),
           "Atanh": (-0.9, 0.9)}


@pytest.mark.parametrize("op", sorted(DOMAINS))
def test_trigonometric(op):
    lo, hi = DOMAINS[op]
    check_vjp(op, [("x", rng.uniform(lo, hi, (2, 3, 4)), False)], dynamic=(0,))


def test_every_function_has_a_domain_here():
    from onnxattr.emitters.trigonometric import DERIVATIVES
    assert set(DERIVATIVES) == set(DOMAINS)
