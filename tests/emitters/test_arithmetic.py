"""onnxattr/emitters/arithmetic.py: element-wise arithmetic with broadcasting."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tests.vjp_check import check_vjp, run_vjp, vjp_model

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


def test_mean_vjp():
    check_vjp("Mean", [("a", r((2, 3)), False), ("b", r((3,)), False), ("c", r((2, 1)), False)],
              wrt=["a", "b", "c"])


@pytest.mark.parametrize("op", ["Neg", "Sqrt", "Exp", "Log", "Reciprocal", "Abs"])
def test_unary_vjp(op):
    x = r((2, 5))
    if op in ("Sqrt", "Log", "Reciprocal"):
        x = np.abs(x) + 0.5
    check_vjp(op, [("x", x, False)])


def test_sqrt_takes_zero_where_its_derivative_is_infinite():
    """At sqrt(0) the VJP is 0, as ReduceL2's and torch's norm backward (a ReLU's zero times inf would be NaN);
    elsewhere g / (2 sqrt(x))."""
    x = np.array([[0.0, 4.0, 0.0, 0.25]], np.float32)
    g = np.array([[3.0, 2.0, 0.0, 1.0]], np.float32)
    (dx,) = run_vjp("Sqrt", [("x", x, False)], g)
    np.testing.assert_allclose(dx, [[0.0, 0.5, 0.0, 1.0]], rtol=1e-6)


def test_pow_vjp():
    check_vjp("Pow", [("a", np.abs(r((2, 3))) + 0.5, False), ("p", np.array([2.0, 3.0, 0.5]), False)],
              wrt=["a", "p"])


def test_pow_at_a_zero_base_and_a_zero_exponent():
    """As torch's pow_backward: dp = 0 where a = 0 and p >= 0 (0^p does not move with p; it was 0 * log 0 = NaN,
    onnx's test_pow), da = 0 where p = 0 (a^0 = 1; it was 0 * 0^-1 = NaN); elsewhere the closed forms."""
    a = np.array([[0.0, 0.0, 2.0, 0.5]], np.float32)
    p = np.array([[0.5, 0.0, 0.0, 3.0]], np.float32)
    g = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    da, dp = run_vjp("Pow", [("a", a, False), ("p", p, False)], g, wrt=["a", "p"])
    np.testing.assert_array_equal(da[0, 1:3], [0.0, 0.0])
    assert da[0, 0] == np.inf  # the true slope of sqrt at 0
    np.testing.assert_allclose(da[0, 3], 4.0 * 3.0 * 0.25, rtol=1e-6)
    np.testing.assert_array_equal(dp[0, :2], [0.0, 0.0])
    np.testing.assert_allclose(dp[0, 2:], g[0, 2:] * a[0, 2:] ** p[0, 2:] * np.log(a[0, 2:]), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
@pytest.mark.parametrize("const", [False, True])
def test_pow_with_an_integer_exponent(dtype, const):
    """Pow(float, int), as onnx's test_pow_types_float32_int32 writes it: the exponent is cast for the
    derivative (the compiled graph failed onnx's checker)."""
    check_vjp("Pow", [("a", r((2, 3)), False), ("p", np.array([2, 3, 1], dtype), const)])


def test_pow_with_an_exponent_of_another_float_type():
    """Pow(float32, float64): da in float32, dp in float64, each checked against its closed form."""
    node = helper.make_node("Pow", ["a", "p"], ["y0"], name="node")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
                                            helper.make_tensor_value_info("p", TensorProto.DOUBLE, [3])],
                              [helper.make_tensor_value_info("y0", TensorProto.FLOAT, [2, 3])])
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    a = (np.abs(r((2, 3))) + 0.5).astype(np.float32)
    p = np.array([2.0, 3.0, 0.5])
    g = r((2, 3)).astype(np.float32)
    sess = ort.InferenceSession(vjp_model(model, ["a", "p"]).SerializeToString(), providers=["CPUExecutionProvider"])
    da, dp = sess.run(["grad_a", "grad_p"], {"a": a, "p": p, "cotangent": g})
    assert da.dtype == np.float32 and dp.dtype == np.float64
    a64 = a.astype(np.float64)
    np.testing.assert_allclose(da, g * p * a64 ** (p - 1), rtol=1e-6)
    np.testing.assert_allclose(dp, (g * a64 ** p * np.log(a64)).sum(0), rtol=1e-6)


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_vjp(op):
    check_vjp(op, [("a", r((2, 3)), False), ("b", r((3,)), False)], wrt=["a", "b"])


@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_ties_share_the_gradient(op):
    """Operands equal to the result share g evenly (torch.maximum's g/2 on a tie; g/3 for three)."""
    a = np.array([[1, 2, 5], [0, 4, 4]], np.float32)
    b = np.array([[1, 3, 5], [0, 4, 1]], np.float32)
    c = np.array([[1, 0, 9], [0, 4, 4]], np.float32)
    if op == "Min":
        a, b, c = -a, -b, -c
    g = np.array([[6, 6, 6], [3, 3, 3]], np.float32)
    ga, gb, gc = run_vjp(op, [("a", a, False), ("b", b, False), ("c", c, False)], g, wrt=["a", "b", "c"])
    np.testing.assert_allclose(ga, [[2, 0, 0], [1, 1, 1.5]], rtol=1e-6)
    np.testing.assert_allclose(gb, [[2, 6, 0], [1, 1, 0]], rtol=1e-6)
    np.testing.assert_allclose(gc, [[2, 0, 6], [1, 1, 1.5]], rtol=1e-6)


def test_where_vjp():
    cond = rng.random((2, 3)) > 0.5
    check_vjp("Where", [("c", cond, True), ("a", r((2, 3)), False), ("b", r((3,)), False)], wrt=["a", "b"])


@pytest.mark.parametrize("sa,sb", SHAPES[:3])
def test_mod_vjp(sa, sb):
    """fmod (torch.fmod, the float form): a / b kept away from integers, where fmod jumps."""
    b = r(sb)
    b = np.sign(b) * (np.abs(b) + 0.5)
    q = r(np.broadcast_shapes(sa, sb)) * 4
    q = np.trunc(q) + np.where(q < 0, -1, 1) * rng.uniform(0.2, 0.8, q.shape)  # fractional part in [0.2, 0.8]
    a = (q * b)[tuple(slice(0, n) for n in sa)] if sa == q.shape else None
    if a is None:  # a broadcast: one a, the quotients of its broadcast copies all away from integers
        a = np.full(sa, 0.5)
        b = a / (np.trunc(r(sb) * 3) + 0.5)
    check_vjp("Mod", [("a", a, False), ("b", b, False)], {"fmod": 1}, wrt=["a", "b"])
