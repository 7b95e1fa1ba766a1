"""onnxattr/sequences.py: sequences whose contents are known when compiling become the tensors they hold. Float64
models; the canonical model must give the original's outputs (onnxruntime running the sequence ops and the Loop
itself) and no sequence op, and the compiled gradient the original's (central differences, as in
test_control_flow)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import onnxattr
from onnxattr.canonicalize import canonicalize
from onnxattr.errors import OnnxAttrError
from tests.test_control_flow import BOOL, D, FEATURES, I64, STEPS, X, assert_gradient, const, model_of, run, vi

RNG = np.random.default_rng(7)
V1, V2, V3 = (RNG.standard_normal((FEATURES, 2)) for _ in range(3))
n = helper.make_node


def torch_split_model():
    """TorchScript's torch.split of computed sizes: a Loop of 2 trips inserts x[:, sizes[i]:sizes[i + 1]] into a
    SequenceEmpty (the slice bounds Gather the sizes at the iteration number, which TorchScript declares [1], so they
    are 1-D), one more insert adds the tail x[:, 3:], then SequenceAt(0), SequenceAt(-1), ConcatFromSequence and
    SequenceLength read the list."""
    body = helper.make_graph(
        [n("Gather", ["sizes", "i"], ["start"], axis=0), n("Add", ["i", "one"], ["next"]),
         n("Gather", ["sizes", "next"], ["end"], axis=0), n("Slice", ["x", "start", "end", "axis1"], ["part"]),
         n("SequenceInsert", ["seq_in", "part"], ["seq_out"]), n("Identity", ["cond"], ["cond_out"])],
        "body", [vi("i", I64, [1]), vi("cond", BOOL, []), helper.make_tensor_sequence_value_info("seq_in", D, None)],
        [vi("cond_out", BOOL, []), helper.make_tensor_sequence_value_info("seq_out", D, None)],
        [const(np.array(1, np.int64), "one")])
    nodes = [n("SequenceEmpty", [], ["empty"], dtype=D),
             n("Loop", ["trips", "true", "empty"], ["parts"], body=body, name="split"),
             n("Slice", ["x", "three1", "four1", "axis1"], ["tail"]),
             n("SequenceInsert", ["parts", "tail"], ["all"]),
             n("SequenceAt", ["all", "zero"], ["first"]), n("SequenceAt", ["all", "minus1"], ["last"]),
             n("ConcatFromSequence", ["all"], ["whole"], axis=1), n("SequenceLength", ["all"], ["count"]),
             n("Cast", ["count"], ["count_f"], to=D),
             n("ReduceSum", ["first", "axis1"], ["f"], keepdims=0), n("Mul", ["last", "last"], ["l2"]),
             n("ReduceSum", ["l2", "axis1"], ["l"], keepdims=0), n("Tanh", ["whole"], ["tw"]),
             n("ReduceSum", ["tw", "axis1"], ["w"], keepdims=0), n("Mul", ["w", "count_f"], ["wc"]),
             n("MatMul", ["f", "V1"], ["yf"]), n("MatMul", ["l", "V2"], ["yl"]), n("MatMul", ["wc", "V3"], ["yw"]),
             n("Add", ["yf", "yl"], ["y1"]), n("Add", ["y1", "yw"], ["y"])]
    inits = [const(np.array([0, 1, 3], np.int64), "sizes"), const(np.array(2, np.int64), "trips"),
             const(np.array(True), "true"), const(np.array([1], np.int64), "axis1"),
             const(np.array([3], np.int64), "three1"), const(np.array([STEPS], np.int64), "four1"),
             const(np.array(0, np.int64), "zero"), const(np.array(-1, np.int64), "minus1"),
             const(V1, "V1"), const(V2, "V2"), const(V3, "V3")]
    return model_of(nodes, inits)


def list_ops_model():
    """SplitToSequence with constant sizes, an insert at position 0, an erase of the last, a stack
    (ConcatFromSequence new_axis=1) and a SequenceConstruct read at position 1."""
    nodes = [n("SplitToSequence", ["x", "halves"], ["s"], axis=1),
             n("Slice", ["x", "one1", "three1", "axis1"], ["middle"]),
             n("SequenceInsert", ["s", "middle", "zero"], ["s3"]), n("SequenceErase", ["s3"], ["s2"]),
             n("ConcatFromSequence", ["s2"], ["stack"], axis=1, new_axis=1),
             n("SequenceLength", ["s2"], ["count"]), n("Cast", ["count"], ["count_f"], to=D),
             n("Tanh", ["stack"], ["ts"]), n("ReduceSum", ["ts", "axes12"], ["r"], keepdims=0),
             n("Mul", ["r", "count_f"], ["rc"]), n("Mul", ["middle", "middle"], ["m2"]),
             n("SequenceConstruct", ["middle", "m2"], ["pair"]), n("SequenceAt", ["pair", "one"], ["second"]),
             n("ReduceSum", ["second", "axis1"], ["p"], keepdims=0),
             n("MatMul", ["rc", "V1"], ["y1"]), n("MatMul", ["p", "V2"], ["y2"]), n("Add", ["y1", "y2"], ["y"])]
    inits = [const(np.array([2, 2], np.int64), "halves"), const(np.array([1], np.int64), "one1"),
             const(np.array([3], np.int64), "three1"), const(np.array([1], np.int64), "axis1"),
             const(np.array(0, np.int64), "zero"), const(np.array(1, np.int64), "one"),
             const(np.array([1, 2], np.int64), "axes12"), const(V1, "V1"), const(V2, "V2")]
    return model_of(nodes, inits)


@pytest.mark.parametrize("make", [torch_split_model, list_ops_model])
def test_known_sequences_become_tensors(make):
    model = make()
    canon = canonicalize(model)
    left = [node.op_type for node in canon.graph.node if "Sequence" in node.op_type or node.op_type == "Loop"]
    assert left == []
    np.testing.assert_allclose(run(canon, X), run(model, X), rtol=0, atol=1e-12)
    assert_gradient(model, X)


def test_a_position_read_from_the_data_keeps_the_sequence_and_is_refused():
    """SequenceAt at a position computed from x (an ArgMax) is not known when compiling: the sequence stays and
    compiling names the problem instead of giving a map."""
    nodes = [n("SplitToSequence", ["x", "halves"], ["s"], axis=1),
             n("ReduceSum", ["x", "axes12"], ["total"], keepdims=0), n("ArgMax", ["total"], ["pick"], keepdims=1),
             n("Gather", ["pick", "zero"], ["pos"], axis=0), n("SequenceAt", ["s", "pos"], ["part"]),
             n("ReduceSum", ["part", "axis1"], ["p"], keepdims=0), n("MatMul", ["p", "V1"], ["y"])]
    inits = [const(np.array([2, 2], np.int64), "halves"), const(np.array([1, 2], np.int64), "axes12"),
             const(np.array(0, np.int64), "zero"), const(np.array([1], np.int64), "axis1"), const(V1, "V1")]
    model = model_of(nodes, inits)
    assert "SequenceAt" in [node.op_type for node in canonicalize(model).graph.node]
    with pytest.raises(OnnxAttrError, match="equence"):
        onnxattr.compile(model, "gradient")
