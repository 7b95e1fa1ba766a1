"""onnxattr/graph.py: constants wait as arrays and are written into a graph once, bit for bit."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxattr.graph import GraphBuilder, outer_reads, rename_reads, write_tensor


@pytest.mark.parametrize("value", [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 7.5,
    np.array([1.5, -0.0, np.inf, np.nan], np.float16),
    np.array([[1.0, -2.0]], np.float64),
    np.array([3, -4, 2**40], np.int64),
    np.array([True, False, True]),
    np.array(2.5, np.float32),  # 0-d
    np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not contiguous
])
def test_write_tensor_round_trips(value):
    g = onnx.GraphProto()
    write_tensor(g.initializer, "w", value)
    (t,) = g.initializer
    got = numpy_helper.to_array(t)
    assert t.name == "w" and got.dtype == value.dtype and got.shape == value.shape
    np.testing.assert_array_equal(got, value)
    assert t.SerializeToString() == numpy_helper.from_array(np.array(value, order="C"), "w").SerializeToString()


def test_constants_are_written_once_and_only_those_asked_for():
    model = helper.make_model(helper.make_graph([], "g", [], []))
    b = GraphBuilder(model)
    big = b.const(np.ones((5, 5), np.float32), np.float32, "big")
    other = b.const(np.zeros(20, np.float32), np.float32, "other")
    assert set(b.pending) == {big, other}
    np.testing.assert_array_equal(b.value(big), np.ones((5, 5), np.float32))  # readable before writing
    b.write_initializers(model.graph.initializer, {big})
    assert [t.name for t in model.graph.initializer] == [big] and set(b.pending) == {other}
    b.write_initializers(model.graph.initializer)
    assert [t.name for t in model.graph.initializer] == [big, other] and not b.pending


def test_emitted_node_names_avoid_the_models_node_names():
    """A model whose nodes are named as the compiler names its own (oa/<Op>_<k>): the compiled model still has
    one node per name, which onnxruntime requires."""
    from collections import Counter

    import onnxruntime as ort

    import onnxattr
    from tests.models import single_io_model

    nodes, t = [], "x"
    for k in range(40):
        for op in ("Mul", "Add", "Reshape", "MatMul", "Transpose", "ConstantOfShape", "ScatterElements", "ArgMax"):
            nodes.append(helper.make_node("Tanh", [t], [f"t_{op}_{k}"], name=f"oa/{op}_{k}"))
            t = f"t_{op}_{k}"
    nodes.append(helper.make_node("MatMul", [t, "W"], ["y"], name="head"))
    model = single_io_model(nodes, {"W": np.ones((4, 3), np.float32)}, ["N", 4], ["N", 3])
    compiled = onnxattr.compile(model, "gradient", neuron="index")
    assert not [n for n, c in Counter(n.name for n in compiled.graph.node).items() if c > 1]
    ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])


def test_outer_reads_and_their_renaming_see_through_nested_subgraphs():
    """A Loop whose body reads outer 'w' and 'x', defines 'x' inside an If branch's scope only, and returns outer
    'u' as an output: the outer names are found and renamed; the names the subgraphs define are not."""
    from onnx import TensorProto

    inner = helper.make_graph([helper.make_node("Neg", ["w"], ["x"]), helper.make_node("Add", ["x", "v"], ["r"])],
                              "branch", [], [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)])
    body = helper.make_graph(
        [helper.make_node("Mul", ["v_in", "w"], ["v"]),
         helper.make_node("If", ["c_in"], ["v_out"], then_branch=inner, else_branch=inner)],
        "body", [helper.make_tensor_value_info(n, t, None) for n, t in
                 (("i", TensorProto.INT64), ("c_in", TensorProto.BOOL), ("v_in", TensorProto.FLOAT))],
        [helper.make_tensor_value_info(n, t, None) for n, t in
         (("c_in", TensorProto.BOOL), ("v_out", TensorProto.FLOAT), ("u", TensorProto.FLOAT))])
    loop = helper.make_node("Loop", ["n", "", "x"], ["y", "us"], body=body)
    assert sorted(set(outer_reads(loop))) == ["n", "u", "w", "x"]
    rename_reads(loop, {"w": "W", "x": "X", "u": "U", "v": "V", "r": "R"})
    assert sorted(set(outer_reads(loop))) == ["U", "W", "X", "n"]
    branch = loop.attribute[0].g.node[1].attribute[0].g
    assert [list(n.input) for n in branch.node] == [["W"], ["x", "v"]]  # 'x' and 'v' are defined inside
    assert loop.attribute[0].g.output[2].name == "U"


def _weights_through_dequantize():
    """y = x @ DQ(codes, scale per column (axis 1), zero point) + DQ(int32 bias, 0.05): onnxruntime's quantizer's
    layout of a quantized layer."""
    codes = np.array([[-128, 5, 127], [3, 0, -7]], np.int8)
    scale = np.array([0.5, 0.25, 0.125], np.float32)
    zp = np.array([1, -2, 0], np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=1, name="dq_w"),
             helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], name="dq_b"),
             helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(scale, "w_s"),
                               numpy_helper.from_array(zp, "w_z"),
                               numpy_helper.from_array(np.array([40, -3, 2**30], np.int32), "b_q"),
                               numpy_helper.from_array(np.float32(0.05), "b_s")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), codes, scale, zp


def test_a_dequantized_constant_has_its_value_when_compiling():
    """The rules read a quantized weight's value (W+ of a DequantizeLinear of int8 codes) though the node stays in
    the graph; the value is onnxruntime's DequantizeLinear's, bit for bit."""
    import onnxruntime as ort

    model, codes, scale, zp = _weights_through_dequantize()
    b = GraphBuilder(model)
    want = ((codes.astype(np.float32) - zp.astype(np.float32)) * scale).astype(np.float32)
    np.testing.assert_array_equal(b.value("w"), want)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend([helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("w", "b")])
    w, bias = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["w", "b"], {"x": np.zeros((1, 2), np.float32)})
    assert b.value("w").dtype == np.float32 and np.array_equal(b.value("w"), w)
    assert np.array_equal(b.value("b"), bias)  # int32 codes: 2**30 * 0.05 rounds as onnxruntime rounds it
    assert "w" in b.constants and b.value("h") is None
