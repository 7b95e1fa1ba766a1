"""onnxattr/graph.py: constants wait as arrays and are written into a graph once, bit for bit."""

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxattr.graph import GraphBuilder, write_tensor


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
