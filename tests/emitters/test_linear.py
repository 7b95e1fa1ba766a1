"""onnxattr/emitters/linear.py: Gemm and MatMul VJPs (constant and activation operands, broadcasting), Det."""

import numpy as np
import pytest

from tests.vjp_check import check_vjp, run_vjp

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


@pytest.mark.parametrize("sa,sb,dynamic", [
    ((2, 1, 3, 4), (5, 4, 2), {"a": (1,), "b": (0,)}),  # a's batch dim 1 broadcast, both symbolic
    # onnx's test_matmul_bcast with every dim symbolic but a's first (node_model names every first axis "N", which
    # would declare a's 3 equal to b's 1)
    ((3, 1, 3, 4), (1, 2, 4, 2), {"a": (1, 2, 3), "b": (0, 1, 2, 3)}),
    ((5, 3, 4), (1, 4, 2), {"a": (1,), "b": (0,)})])  # b's broadcast
def test_matmul_vjp_symbolic_batch_dims_that_broadcast(sa, sb, dynamic):
    """A batch dim declared symbolic may be 1 at run time and broadcast: the gradient is summed over it at run
    time. (It was taken for one that does not broadcast: a's gradient came out [3, 2, 3, 4] for a [3, 1, 3, 4].)"""
    check_vjp("MatMul", [("a", r(sa), False), ("b", r(sb), False)], wrt=["a", "b"], dynamic=dynamic)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 5))])
def test_matmul_vjp_constant_weight(sa, sb):
    check_vjp("MatMul", [("a", r(sa), False), ("b", r(sb), True)], dynamic=(0,))


def test_matmul_vjp_with_an_operand_of_unknown_rank():
    """y = a @ x with a from an If whose branches differ in rank, so shape inference gives a no rank: x's
    gradient a^T g swaps a's last two axes without knowing its rank (before: a TypeError at compile time)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    import onnxattr

    vi = helper.make_tensor_value_info
    then_g = helper.make_graph([helper.make_node("Identity", ["a_in"], ["ta"])], "then", [],
                               [vi("ta", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["flat"], ["ea"])], "else", [],
                               [vi("ea", TensorProto.FLOAT, None)])
    g = helper.make_graph([helper.make_node("If", ["full"], ["a"], then_branch=then_g, else_branch=else_g),
                           helper.make_node("MatMul", ["a", "x"], ["y"])], "g",
                          [vi("x", TensorProto.FLOAT, ["N", 3, 4]), vi("a_in", TensorProto.FLOAT, ["N", 5, 3]),
                           vi("full", TensorProto.BOOL, [])],
                          [vi("y", TensorProto.FLOAT, ["N", 5, 4])],
                          [numpy_helper.from_array(np.ones((5, 3), np.float32), "flat")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    compiled = onnxattr.compile(model, "gradient", input="x", output="y", neuron="all")
    a, x = rng.standard_normal((2, 5, 3)).astype(np.float32), rng.standard_normal((2, 3, 4)).astype(np.float32)
    got = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x, "a_in": a,
                                                                                "full": np.array(True)})[0]
    np.testing.assert_allclose(got, np.swapaxes(a, 1, 2) @ np.ones((2, 5, 4), np.float32), rtol=1e-5)


@pytest.mark.parametrize("shape", [(4, 4), (2, 3, 3), (2, 1, 2, 2), (3, 1, 1)])
def test_det(shape):
    check_vjp("Det", [("a", r(shape), False)], dynamic=(0,) if len(shape) > 2 else ())


def test_det_of_singular_matrices():
    """det(A) is linear in each entry, so det(A + E_ij) - det(A) is its exact derivative, the cofactor C_ij. At
    singular matrices (rank n - 1: cofactors nonzero; rank n - 2: all zero) the VJP must still give g C, where
    det(A) A^-T does not exist."""
    u, v = r((4, 1)), r((1, 4))
    rank_one = u @ v
    a = np.stack([rank_one + r((4, 1)) @ r((1, 4)) + r((4, 1)) @ r((1, 4)), rank_one, np.eye(4)])
    g = np.array([1.5, -2.0, 0.5])
    exact = np.zeros_like(a)
    for m in range(3):
        for i in range(4):
            for j in range(4):
                step = np.zeros((4, 4))
                step[i, j] = 1
                exact[m, i, j] = g[m] * (np.linalg.det(a[m] + step) - np.linalg.det(a[m]))
    (got,) = run_vjp("Det", [("a", a, False)], g)
    assert np.abs(exact[0]).max() > 0.1 and np.abs(exact[1]).max() < 1e-12
    np.testing.assert_allclose(got, exact, rtol=1e-4, atol=1e-4)
