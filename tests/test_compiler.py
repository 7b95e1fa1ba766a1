"""onnxattr/compiler.py: the reverse pass over the explained path."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr


def _model(stop_op):
    """y = x W + stop(x) V: the second branch has zero derivative almost everywhere."""
    rng = np.random.default_rng(0)
    w, v = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"], name="main"),
             helper.make_node(stop_op, ["x"], ["s"], name="stop"),
             helper.make_node("MatMul", ["s", "V"], ["c"], name="side"),
             helper.make_node("Add", ["a", "c"], ["y"], name="sum")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(w, "W"), numpy_helper.from_array(v, "V")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, w


@pytest.mark.parametrize("stop_op", ["Floor", "Ceil", "Round", "Sign"])
def test_zero_derivative_ops_stop_the_gradient(stop_op):
    """Floor/Ceil/Round/Sign on the explained path pass nothing back: the gradient is W's row sum only."""
    model, w = _model(stop_op)
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32) * 3
    compiled = onnxattr.compile(model, "gradient", neuron="all")
    got = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]
    np.testing.assert_allclose(got, np.broadcast_to(w.sum(1), x.shape), rtol=1e-6)


def test_an_input_whose_gradient_an_emitter_cannot_give_is_refused():
    """Clip(x, 0, max(x)): the emitter differentiates x only; a bound that varies with the explained input is
    refused by name instead of being dropped from the gradient."""
    from onnxattr.errors import UnsupportedModelError
    from tests.models import single_io_model

    nodes = [helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
             helper.make_node("Mul", ["top", "half"], ["bound"]),
             helper.make_node("Clip", ["x", "zero", "bound"], ["y"], name="clamp")]
    model = single_io_model(nodes, {"zero": np.float32(0), "half": np.float32(0.5)}, ["N", 4], ["N", 4])
    with pytest.raises(UnsupportedModelError, match="Clip node 'clamp': no gradient for its input bound"):
        onnxattr.compile(model, "gradient", neuron="all")


def test_batchnorm_in_training_mode_is_refused():
    """A BatchNormalization exported in training mode normalizes with the batch's statistics, which no VJP or
    LRP fold here follows (they use the running ones): refused by name for every method."""
    from onnxattr.errors import UnsupportedModelError
    from tests.models import single_io_model

    c = np.ones(2, np.float32)
    node = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], training_mode=1, name="bn")
    model = single_io_model([node], {"g": c, "b": c * 0, "m": c * 0, "v": c}, ["N", 2, 3, 3], ["N", 2, 3, 3],
                            opset=15)
    for method in ("gradient", "lrp.epsilon", "attn_lrp"):
        with pytest.raises(UnsupportedModelError, match="BatchNormalization 'bn' in training mode"):
            onnxattr.compile(model, method, neuron="all")
