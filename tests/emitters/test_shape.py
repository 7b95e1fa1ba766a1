"""onnxattr/emitters/shape.py: data-movement ops (their VJPs are exact: checked as linear maps too)."""

import numpy as np
import pytest

from tests.vjp_check import check_vjp, run_vjp

rng = np.random.default_rng(6)
r = rng.standard_normal
I64 = np.int64


@pytest.mark.parametrize("dynamic", [(), (0,)])
def test_reshape_family(dynamic):
    x = r((2, 3, 4))
    check_vjp("Reshape", [("x", x, False), ("s", np.array([0, -1], I64), True)], dynamic=dynamic)
    check_vjp("Flatten", [("x", x, False)], {"axis": 2}, dynamic=dynamic)
    check_vjp("Unsqueeze", [("x", x, False), ("a", np.array([1, -1], I64), True)], dynamic=dynamic)
    # a scalar axis, as torch's dynamo exporter writes for repeat_interleave (scaled_dot_product_attention's GQA)
    check_vjp("Unsqueeze", [("x", x, False), ("a", np.array(2, I64), True)], dynamic=dynamic)
    check_vjp("Squeeze", [("x", r((2, 1, 4)), False), ("a", np.array([1], I64), True)], dynamic=dynamic)
    check_vjp("Squeeze", [("x", r((2, 1, 4, 1)), False), ("a", np.array([-1, 1], I64), True)], dynamic=dynamic)
    if not dynamic:  # no axes: every 1 (with a dynamic axis its output shape is unknown to the checker)
        check_vjp("Squeeze", [("x", r((2, 1, 4)), False)])


def test_transpose():
    check_vjp("Transpose", [("x", r((2, 3, 4, 5)), False)], {"perm": [0, 2, 3, 1]})
    check_vjp("Transpose", [("x", r((2, 3, 4)), False)])


@pytest.mark.parametrize("dynamic", [(), (0,)])
def test_concat(dynamic):
    check_vjp("Concat", [("a", r((2, 3, 4)), False), ("b", r((2, 2, 4)), False), ("c", r((2, 1, 4)), True)],
              {"axis": 1}, wrt=["a", "b"], dynamic=dynamic)


def test_concat_dynamic_axis():
    check_vjp("Concat", [("a", r((2, 3)), False), ("b", r((4, 3)), False)], {"axis": 0}, wrt=["a", "b"],
              dynamic=(0,))


def test_split_all_and_some_outputs():
    x = r((2, 6, 3))
    check_vjp("Split", [("x", x, False), ("s", np.array([1, 2, 3], I64), True)], {"axis": 1}, n_out=3,
              out_index=1)
    check_vjp("Split", [("x", x, False)], {"axis": 1, "num_outputs": 2}, n_out=2, out_index=0, opset=18)


SLICES = [
    ([1, 0], [3, 4], [1, 2], None),
    ([-3], [100], [2], None),
    ([0, 4], [5, 0], [1, 2], [2, -1]),  # strided and reversed: the index trick
    ([2], [-1], [0], [1]),
]


@pytest.mark.parametrize("starts,ends,axes,steps", SLICES)
@pytest.mark.parametrize("dynamic", [(), (0, 1, 2)])
def test_slice(starts, ends, axes, steps, dynamic):
    ins = [("x", r((4, 5, 6)), False), ("st", np.array(starts, I64), True), ("en", np.array(ends, I64), True),
           ("ax", np.array(axes, I64), True)]
    if steps is not None:
        ins.append(("sp", np.array(steps, I64), True))
    check_vjp("Slice", ins, dynamic=dynamic)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad(mode):
    pads = np.array([0, 1, 2, 0, 2, 1], I64)
    check_vjp("Pad", [("x", r((2, 4, 5)), False), ("p", pads, True)], {"mode": mode})


def test_pad_negative_crops():
    # onnx's reference Pad rejects negative pads; Pad is linear, so onnxruntime gives an exact check
    check_vjp("Pad", [("x", r((2, 4, 5)), False), ("p", np.array([0, -1, 2, 0, 1, -2], I64), True)],
              linear_ort=True)


def test_gather_tile_expand_depth_to_space():
    check_vjp("Gather", [("x", r((4, 5)), False), ("i", np.array([[0, 3], [3, 1]], I64), True)], {"axis": 0})
    check_vjp("GatherElements", [("x", r((3, 4)), False), ("i", np.array([[0, 0, 2, 1]] * 3, I64), True)],
              {"axis": 1})
    check_vjp("Tile", [("x", r((2, 3)), False), ("t", np.array([2, 3], I64), True)])
    check_vjp("Expand", [("x", r((3, 1)), False), ("s", np.array([2, 3, 4], I64), True)])
    check_vjp("DepthToSpace", [("x", r((1, 8, 2, 3)), False)], {"blocksize": 2, "mode": "CRD"})
    check_vjp("SpaceToDepth", [("x", r((1, 2, 4, 6)), False)], {"blocksize": 2})


def test_gather_nd_and_reverse_sequence():
    """Gather-like ops whose VJP scatters g back through the same indices (repeated indices add up)."""
    check_vjp("GatherND", [("x", r((3, 4, 2)), False), ("i", np.array([[0, 1], [2, 3], [0, 1]], I64), True)])
    check_vjp("GatherND", [("x", r((2, 3, 4)), False), ("i", np.array([[[1], [0]], [[2], [2]]], I64), True)],
              {"batch_dims": 1})
    check_vjp("ReverseSequence", [("x", r((4, 3, 2)), False), ("l", np.array([4, 2, 1], I64), True)],
              {"batch_axis": 1, "time_axis": 0})


def test_identity_and_cast():
    check_vjp("Identity", [("x", r((2, 3)), False)])
    check_vjp("Dropout", [("x", r((2, 3)), False)])  # inference: the identity
    check_vjp("Cast", [("x", r((2, 3)), False)], {"to": 11})


def test_castlike():
    # the second input only lends its type: no gradient flows to it
    check_vjp("CastLike", [("x", r((2, 3)), False), ("t", r((1,)), False)], wrt=["x"])
    check_vjp("CastLike", [("x", r((2, 3)), False), ("t", r((1,)), True)])


def test_compress():
    check_vjp("Compress", [("x", r((2, 5, 3)), False), ("c", np.array([1, 0, 1, 1, 0], bool), True)], {"axis": 1},
              dynamic=(0,))
    check_vjp("Compress", [("x", r((3, 4)), False), ("c", np.array([0, 1, 1, 0, 1], bool), True)])  # flattened


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, -1, 2])
def test_trilu(upper, k):
    ins = [("x", r((2, 4, 5)), False)] + ([("k", np.array(k, I64), True)] if k is not None else [])
    check_vjp("Trilu", ins, {"upper": upper}, dynamic=(0,))


@pytest.mark.parametrize("reduction", ["none", "add", "max", "min", "mul"])
def test_scatter_elements(reduction):
    """Distinct indices for 'none' (repeated ones leave the winner to the runtime); the reductions may repeat them
    (max and min: position 2 of row 1 gets two updates and its data, position 1 of row 1 none)."""
    i = np.array([[1, 0, 3], [2, 2, 0]], I64) if reduction != "none" else np.array([[1, 0, 3], [2, 3, 0]], I64)
    check_vjp("ScatterElements", [("d", r((2, 4)), False), ("i", i, True), ("u", r((2, 3)), False)],
              {"axis": 1, "reduction": reduction}, wrt=["d", "u"], opset=18)


@pytest.mark.parametrize("reduction", ["none", "add", "max", "min", "mul"])
def test_scatter_nd(reduction):
    """torch's x[:, idx] = v and index_put exports: rows of data replaced by (or added to, or compared with) updates;
    the reductions get row 3 twice."""
    i = np.array([[1], [3]], I64) if reduction == "none" else np.array([[1], [3], [3]], I64)
    check_vjp("ScatterND", [("d", r((4, 3)), False), ("i", i, True), ("u", r((len(i), 3)), False)],
              {"reduction": reduction}, wrt=["d", "u"], opset=18)


def test_scatter_max_ties_share_evenly():
    """Where data and two updates tie for the maximum, each gets a third of g (torch's scatter_reduce amax
    backward); where an update alone wins, it gets all of g and the data nothing."""
    d = np.array([[2.0, 0.0, 0.0]])
    i = np.array([[0, 0, 2]], I64)
    u = np.array([[2.0, 2.0, 5.0]])
    gd, gu = run_vjp("ScatterElements", [("d", d, False), ("i", i, True), ("u", u, False)], np.array([[3.0, 1.0, 6.0]]),
                     {"axis": 1, "reduction": "max"}, wrt=["d", "u"], opset=18)
    np.testing.assert_allclose(gd, [[1.0, 1.0, 0.0]])
    np.testing.assert_allclose(gu, [[1.0, 1.0, 6.0]])


@pytest.mark.parametrize("op", ["ScatterElements", "ScatterND"])
def test_scatter_mul_zero_factors(op):
    """torch's scatter_reduce prod backward: a factor gets g times the product of the others at its position, so
    where one update is 0 only that update gets a gradient, and where two are 0 none does (and data gets 0)."""
    d = np.array([[2.0, 3.0, 5.0, 7.0]])
    u = np.array([[0.0, 4.0, 0.0, 0.0, 6.0]])  # position 0: 0 and 4; position 2: 0 and 0; position 3: 6
    g = np.array([[1.0, 10.0, 100.0, 1000.0]])
    if op == "ScatterElements":
        i, attrs = np.array([[0, 0, 2, 2, 3]], I64), {"axis": 1, "reduction": "mul"}
        ins = [("d", d, False), ("i", i, True), ("u", u, False)]
    else:  # the same as rows of the transposed tensors
        i, attrs = np.array([[0], [0], [2], [2], [3]], I64), {"reduction": "mul"}
        ins, g = [("d", d.T, False), ("i", i, True), ("u", u.T, False)], g.T
    gd, gu = run_vjp(op, ins, g, attrs, wrt=["d", "u"], opset=18)
    if op == "ScatterND":
        gd, gu = gd.T, gu.T
    np.testing.assert_allclose(gd, [[0.0, 10.0, 0.0, 1000.0 * 6.0]])
    np.testing.assert_allclose(gu, [[2.0 * 4.0, 0.0, 0.0, 0.0, 1000.0 * 7.0]])


def test_scatter_unknown_reduction_refused():
    with pytest.raises(Exception, match="ScatterND node 'node': reduction 'mean' is not supported"):
        check_vjp("ScatterND", [("d", r((4, 3)), False), ("i", np.array([[1]], I64), True), ("u", r((1, 3)), False)],
                  {"reduction": "mean"}, wrt=["d", "u"], opset=18)


@pytest.mark.parametrize("attrs,shapes,written", [
    ({}, ((2, 3, 6, 4), (2, 3, 2, 4)), [1, 4]),  # a KV cache: [N, heads, max length, head size]
    ({"mode": "circular"}, ((2, 3, 5, 4), (2, 3, 3, 4)), [4, 1]),  # the first sample's rows wrap around
    ({"axis": 1}, ((2, 5, 3), (2, 2, 3)), None),  # no write_indices: rows 0, 1
    ({"axis": 2, "mode": "circular"}, ((3, 2, 4), (3, 2, 4)), [2, 0, 3]),  # the update fills the cache
])
def test_tensor_scatter(attrs, shapes, written):
    inputs = [("past", r(shapes[0]), False), ("update", r(shapes[1]), False)]
    if written is not None:
        inputs.append(("write_indices", np.array(written, I64), False))
    check_vjp("TensorScatter", inputs, attrs, wrt=["past", "update"], opset=24)
