"""onnxattr/emitters/reduce.py: reductions, Softmax, LogSoftmax, CumSum, CumProd, TopK."""

import numpy as np
import pytest

from tests.vjp_check import check_vjp, run_vjp

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


@pytest.mark.parametrize("op", ["ReduceSumSquare", "ReduceL2", "ReduceL1", "ReduceLogSumExp"])
@pytest.mark.parametrize("axes,keep", [([1], 1), ([1, 2], 0), ([-1], 0), (None, 1)])
def test_norm_reductions(op, axes, keep):
    ins = [("x", r((2, 3, 4)), False)]
    if axes is not None:
        ins.append(("a", np.array(axes, np.int64), True))
    check_vjp(op, ins, {"keepdims": keep}, dynamic=(0,), opset=18)


@pytest.mark.parametrize("axes,keep", [([1], 1), ([1, 2], 0), (None, 1)])
def test_reduce_log_sum(axes, keep):
    ins = [("x", np.abs(r((2, 3, 4))) + 0.5, False)]
    if axes is not None:
        ins.append(("a", np.array(axes, np.int64), True))
    check_vjp("ReduceLogSum", ins, {"keepdims": keep}, dynamic=(0,), opset=18)


def test_reduce_l2_of_zeros_gives_zero():
    """A zero vector's norm has no gradient; torch.norm's backward gives 0 there, and so do we (no NaN)."""
    x = np.array([[0, 0, 0], [3, 4, 0]], np.float32)
    (got,) = run_vjp("ReduceL2", [("x", x, False), ("a", np.array([1], np.int64), True)],
                     np.array([[1], [5]], np.float32), {"keepdims": 1}, opset=18)
    np.testing.assert_allclose(got, [[0, 0, 0], [3, 4, 0]], rtol=1e-6)


def test_reduce_mean_axes_attribute_opset13():
    check_vjp("ReduceMean", [("x", r((2, 3, 4)), False)], {"axes": [2], "keepdims": 1}, opset=13)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [-1, 1])
def test_softmax(op, axis):
    check_vjp(op, [("x", r((2, 3, 4)), False)], {"axis": axis}, dynamic=(0,))


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_extreme_ties_share_the_gradient(op):
    """Ties for the extreme value share g evenly (torch.amax/amin's rule): g/k to each of k winners."""
    sign = 1 if op == "ReduceMax" else -1
    x = sign * np.array([[1, 3, 3, 0], [2, 2, 2, 2], [0, 0, 5, 1]], np.float32)
    g = np.array([[6], [8], [-3]], np.float32)
    (got,) = run_vjp(op, [("x", x, False), ("a", np.array([1], np.int64), True)], g, {"keepdims": 1}, opset=18)
    want = np.array([[0, 3, 3, 0], [2, 2, 2, 2], [0, 0, -3, 0]], np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("axis", [1, -1])
def test_reduce_of_a_tensor_of_unknown_rank(axis):
    """x + an If's output whose branches differ in rank: shape inference gives the sum no rank. Axes >= 0 need
    none (the gradient of a mean over 4 is 1/4); a negative axis does, and is refused by node and tensor
    (before: a bare TypeError)."""
    from onnx import TensorProto, helper, numpy_helper

    import onnxattr

    vi = helper.make_tensor_value_info
    then_g = helper.make_graph([helper.make_node("Identity", ["mask"], ["tb"])], "then", [],
                               [vi("tb", TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["zero"], ["eb"])], "else", [],
                               [vi("eb", TensorProto.FLOAT, None)])
    nodes = [helper.make_node("If", ["flag"], ["bias"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Add", ["x", "bias"], ["s"]),
             helper.make_node("ReduceMean", ["s", "axes"], ["y"], keepdims=0, name="mean")]
    g = helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, ["N", 4]), vi("mask", TensorProto.FLOAT, ["N", 4]),
                                       vi("flag", TensorProto.BOOL, [])], [vi("y", TensorProto.FLOAT, ["N"])],
                          [numpy_helper.from_array(np.array([axis], np.int64), "axes"),
                           numpy_helper.from_array(np.float32(0), "zero")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    if axis < 0:
        with pytest.raises(onnxattr.errors.UnsupportedModelError, match="ReduceMean node 'mean': the rank of its "
                           "input 's' is unknown"):
            onnxattr.compile(model, "gradient", neuron="all", input="x")
        return
    analyzer = onnxattr.create_analyzer("gradient", model, neuron_selection_mode="all", input="x")
    feeds = {"mask": np.ones((3, 4), np.float32), "flag": np.array(True)}
    np.testing.assert_allclose(analyzer.analyze(np.ones((3, 4), np.float32), inputs=feeds), np.full((3, 4), 0.25))


@pytest.mark.parametrize("axes,keep", [([1], 1), ([0, 2], 0), ([-1], 0), (None, 1)])
def test_reduce_prod(axes, keep):
    ins = [("x", np.sign(r((2, 3, 4))) * rng.uniform(0.5, 1.5, (2, 3, 4)), False)]
    if axes is not None:
        ins.append(("a", np.array(axes, np.int64), True))
    check_vjp("ReduceProd", ins, {"keepdims": keep}, dynamic=(0,), opset=18)


def test_reduce_prod_with_zeros():
    """The product of the other elements, also where x holds zeros (torch.prod's backward): the only zero of a
    row gets the product of the rest, everything else in a row with a zero gets 0."""
    x = np.array([[0, 2, 3], [0, 0, 4], [1, 2, 3]], np.float32)
    (got,) = run_vjp("ReduceProd", [("x", x, False), ("a", np.array([1], np.int64), True)],
                     np.array([[1], [1], [2]], np.float32), {"keepdims": 1}, opset=18)
    np.testing.assert_array_equal(got, [[6, 0, 0], [0, 0, 0], [12, 6, 4]])


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis,dtype", [(1, np.int64), (-1, np.int32)])
def test_cumsum(exclusive, reverse, axis, dtype):
    check_vjp("CumSum", [("x", r((2, 3, 4)), False), ("a", np.array(axis, dtype), True)],
              {"exclusive": exclusive, "reverse": reverse}, dynamic=(0,))


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis", [1, -1])
def test_cumprod(exclusive, reverse, axis):
    x = np.sign(r((2, 3, 4))) * rng.uniform(0.5, 1.5, (2, 3, 4))
    check_vjp("CumProd", [("x", x, False), ("a", np.array(axis, np.int64), True)],
              {"exclusive": exclusive, "reverse": reverse}, dynamic=(0,), opset=26)


def _cumprod(x, exclusive, reverse):
    """numpy's cumulative product along the last axis, with CumProd's exclusive and reverse."""
    x = x[..., ::-1] if reverse else x
    if exclusive:
        x = np.concatenate([np.ones_like(x[..., :1]), x[..., :-1]], axis=-1)
    y = np.cumprod(x, axis=-1)
    return y[..., ::-1] if reverse else y


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
def test_cumprod_with_zeros(exclusive, reverse):
    """Rows with no zero, one zero, two zeros, and zeros at either end. Each product is linear in each x_i, so
    s(x + e_i) - s(x) (float64) is the exact derivative, at a zero too: the VJP (which divides by x only before
    the scan's first zero) must equal it."""
    x = np.array([[1.5, -2, 0.5, 3, -1], [2, 0, 3, -1, 2], [0, 2, 0, 1.5, 2], [2, 1, 3, -2, 0], [0, 0, 0, 2, 1]])
    g = r(x.shape)

    def s(value):
        return float(np.sum(g * _cumprod(value, exclusive, reverse)))

    exact = np.array([[s(x + np.eye(x.size)[k].reshape(x.shape)) - s(x) for k in range(x.size)]]).reshape(x.shape)
    (got,) = run_vjp("CumProd", [("x", x, False), ("a", np.array(1, np.int64), True)], g,
                     {"exclusive": exclusive, "reverse": reverse}, opset=26)
    np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("largest", [1, 0])
def test_topk(axis, largest):
    """Values only (Indices is an integer output); distinct values, so no ties."""
    check_vjp("TopK", [("x", r((2, 5, 6)), False), ("k", np.array([3], np.int64), True)],
              {"axis": axis, "largest": largest}, n_out=2, dynamic=(0,))
