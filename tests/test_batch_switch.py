"""onnxattr/batch_switch.py: one model running one of two forms by the batch at run time, with the weights both forms
share stored once and the rest kept apart."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxattr.batch_switch import switch_by_batch


def form(scale: float, shared: np.ndarray, own_name: str = "oa/c_0"):
    """y = (x + shared) * scale, with ``scale`` in an initializer named like the compiler's constants, so the two
    forms clash on that name with different contents."""
    nodes = [helper.make_node("Add", ["x", "w"], ["oa/add_1"], name="oa/Add_1"),
             helper.make_node("Mul", ["oa/add_1", own_name], ["y"], name="oa/Mul_2")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(shared, "w"), numpy_helper.from_array(np.float32(scale), own_name)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"onnxattr.method": "gradient"})
    return model


def run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_batch_chooses_the_form():
    w = np.arange(3, dtype=np.float32)
    switched = switch_by_batch(form(2.0, w), form(3.0, w), "x", 4)
    onnx.checker.check_model(switched, full_check=True)
    assert [n.op_type for n in switched.graph.node] == ["Shape", "LessOrEqual", "If"]
    names = [t.name for t in switched.graph.initializer]
    assert names.count("w") == 1 and len(names) == len(set(names)) == 4  # w once, each form's scale, the limit
    assert {p.key: p.value for p in switched.metadata_props}["onnxattr.method"] == "gradient"
    for n, scale in ((1, 2.0), (4, 2.0), (5, 3.0), (9, 3.0)):
        x = np.ones((n, 3), np.float32)
        np.testing.assert_array_equal(run(switched, x), (x + w) * scale)


def test_weights_of_one_name_but_other_contents_stay_apart():
    switched = switch_by_batch(form(2.0, np.zeros(3, np.float32)), form(2.0, np.ones(3, np.float32)), "x", 1)
    x = np.zeros((2, 3), np.float32)
    np.testing.assert_array_equal(run(switched, x), np.full((2, 3), 2.0, np.float32))
    np.testing.assert_array_equal(run(switched, x[:1]), np.zeros((1, 3), np.float32))


def test_forms_with_subgraphs_are_not_switched():
    w = np.zeros(3, np.float32)
    nested = form(2.0, w)
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "b", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    nested.graph.node.append(helper.make_node("If", ["c"], ["unused"], then_branch=branch, else_branch=branch))
    assert switch_by_batch(nested, form(3.0, w), "x", 4) is None


def test_forms_must_agree_on_inputs_and_outputs():
    w = np.zeros(3, np.float32)
    other = form(3.0, w)
    other.graph.output[0].name = "z"
    with pytest.raises(ValueError, match="same inputs and outputs"):
        switch_by_batch(form(2.0, w), other, "x", 4)
