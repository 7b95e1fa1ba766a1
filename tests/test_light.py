"""onnxattr/light.py: weight-less copies keep the graph and leave the large weights out, Loop bodies included."""

import numpy as np
import onnx

import onnxattr
from onnxattr.light import checkable_copy, infer_shapes_light, light_model
from tests.lrp.nets import resnet_like


def _loop(model):
    return next(n for n in model.graph.node if n.op_type == "Loop")


def _without_body_weights(node):
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for a in copy.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            del a.g.initializer[:]
    return copy.SerializeToString()


def test_loop_body_weights_become_outer_inputs():
    """A compiled IG's Loop body keeps its small constants in the light copy; its large ones (here: more
    than 8 elements) become inputs of the outer graph, the node is otherwise the same, and the model the
    copy was made from is untouched."""
    ig = onnxattr.compile(resnet_like(bias=True), "integrated_gradients", steps=4)
    before = ig.SerializeToString()
    light, left_out = light_model(ig, limit=8)
    assert ig.SerializeToString() == before
    body = next(a.g for a in _loop(ig).attribute if a.name == "body")
    light_body = next(a.g for a in _loop(light).attribute if a.name == "body")
    size = {t.name: int(np.prod(t.dims)) for t in body.initializer}
    assert any(n > 8 for n in size.values()) and any(n <= 8 for n in size.values())
    assert sorted(t.name for t in light_body.initializer) == sorted(k for k, n in size.items() if n <= 8)
    inputs = {i.name for i in light.graph.input}
    assert {k for k, n in size.items() if n > 8} <= inputs
    assert left_out >= 4 * sum(n for n in size.values() if n > 8)
    assert _without_body_weights(_loop(light)) == _without_body_weights(_loop(ig))
    onnx.checker.check_model(light, full_check=True)


def test_checkable_copy_of_a_compiled_model_passes_the_checker():
    model = onnxattr.compile(resnet_like(bias=True), "smoothgrad", augment_by_n=3)
    onnx.checker.check_model(checkable_copy(model), full_check=True)


def test_group_normalization_output_is_typed_and_followed():
    """onnx's inference leaves GroupNormalization-21's output untyped, and every tensor after it: the explained
    path would end there ("does not depend on the input"). typed_like_input declares it as its input is."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("GroupNormalization", ["x", "s", "b"], ["t"], num_groups=2),
             helper.make_node("Relu", ["t"], ["u"]), helper.make_node("Flatten", ["u"], ["y"])]
    ones = np.ones(4, np.float32)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 36])],
                              [numpy_helper.from_array(ones, "s"), numpy_helper.from_array(ones, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    inferred = infer_shapes_light(model)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    assert types["t"] == types["u"] == TensorProto.FLOAT
    assert [o.name for o in onnxattr.compile(model, "gradient").graph.output] == ["y", "relevance"]
