"""onnxattr/dequantize.py: dynamically quantized layers written as float layers for the LRP rules."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.dequantize import dequantize_integer_layers
from onnxattr.errors import UnsupportedModelError
from tests.lrp.nets import resnet_like
from tests.models import single_io_model


def dynamic(model, tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    src, dst = tmp_path / "float.onnx", tmp_path / "dynamic.onnx"
    onnx.save(model, src)
    quantize_dynamic(str(src), str(dst))
    return onnx.load(dst)


def linear_net():
    """x [N, 6] -> MatMul -> MatMul -> y [N, 3], no bias: LRP's epsilon rule conserves relevance exactly."""
    rng = np.random.default_rng(11)
    inits = {"w1": rng.standard_normal((6, 8)).astype(np.float32),
             "w2": rng.standard_normal((8, 3)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])]
    return single_io_model(nodes, inits, ["N", 6], ["N", 3])


def run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("net", ["linear", "conv"])
def test_each_layer_becomes_a_float_layer_of_the_same_value(net, tmp_path):
    """quantize_dynamic's chains (DynamicQuantizeLinear, MatMulInteger or ConvInteger, Cast, Mul by the scales)
    become DequantizeLinear -> MatMul/Conv with the dequantized weight; the outputs agree to float rounding (the
    integer sum times both scales against the sum of dequantized products: 2e-6 of the largest)."""
    model = dynamic(linear_net() if net == "linear" else resnet_like(bias=True), tmp_path)
    shape = (4, 6) if net == "linear" else (4, 2, 8, 8)
    x = np.random.default_rng(12).standard_normal(shape).astype(np.float32)
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    count = dequantize_integer_layers(rewritten)
    ops = [n.op_type for n in rewritten.graph.node]
    assert count == (2 if net == "linear" else 5) and "MatMulInteger" not in ops and "ConvInteger" not in ops
    assert "Cast" not in ops and ops.count("DynamicQuantizeLinear") == count
    onnx.checker.check_model(rewritten, full_check=True)
    want, got = run(model, x), run(rewritten, x)
    assert np.abs(got - want).max() <= 2e-6 * np.abs(want).max()


def test_lrp_conserves_relevance_through_a_dynamically_quantized_net(tmp_path):
    """Bias-free linear layers under lrp.epsilon: the map sums to the logit (the quantizers pass relevance, the
    layers' rules read their dequantized weights); before, the integer layers were refused."""
    model = dynamic(linear_net(), tmp_path)
    x = np.random.default_rng(13).standard_normal((5, 6)).astype(np.float32)
    relevance = onnxattr.create_analyzer("lrp.epsilon", model, epsilon=1e-9).analyze(x)
    logits = run(model, x)
    np.testing.assert_allclose(relevance.sum(1), logits.max(1), rtol=1e-4)
    plain = onnxattr.create_analyzer("lrp.epsilon", linear_net(), epsilon=1e-9).analyze(x)
    assert np.corrcoef(relevance.ravel(), plain.ravel())[0, 1] > 0.99


def test_the_gradient_methods_keep_the_integer_layers(tmp_path):
    """Only the LRP family gets the float layers: the gradient's compiled model keeps the integer nodes, its
    outputs the original's bit for bit."""
    model = dynamic(linear_net(), tmp_path)
    compiled = onnxattr.compile(model, "gradient")
    assert "MatMulInteger" in {n.op_type for n in compiled.graph.node}
    x = np.random.default_rng(14).standard_normal((3, 6)).astype(np.float32)
    got = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    assert np.array_equal(got, run(model, x))


def test_an_integer_layer_of_another_shape_is_refused_by_name():
    """MatMulInteger of codes a static QuantizeLinear wrote, its output cast and used as it is (no Mul by the
    scales): not onnxruntime's chain, so no float layer; the LRP rules refuse it by name."""
    inits = {"s": np.float32(0.05), "z": np.uint8(128), "w": np.ones((6, 3), np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant"),
             helper.make_node("MatMulInteger", ["q", "w", "z"], ["i"], name="mmi"),
             helper.make_node("Cast", ["i"], ["c"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Neg", ["c"], ["y"], name="neg")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModelError, match="MatMulInteger node 'mmi': an integer layer"):
        onnxattr.compile(model, "lrp.epsilon")
    assert np.abs(onnxattr.create_analyzer("gradient", model).analyze(
        np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32))).max() > 0


@pytest.mark.parametrize("method", ["pattern.net", "pattern.attribution"])
def test_the_pattern_methods_learn_the_float_layers(method, tmp_path):
    """PatternNet's and PatternAttribution's rules read a layer's weights as the LRP rules do: fit and compile both
    see the float layers, and the maps stay the float net's (correlation above 0.98). Before, the integer layers
    were no layers to them: both maps were the same, the gradient's."""
    model = dynamic(resnet_like(bias=True), tmp_path)
    data = np.random.default_rng(15).random((64, 2, 8, 8)).astype(np.float32)
    maps = []
    for net in (resnet_like(bias=True), model):
        analyzer = onnxattr.create_analyzer(method, net)
        analyzer.fit(data, batch_size=32)
        maps.append(analyzer.analyze(data[:4]).ravel())
    assert np.corrcoef(*maps)[0, 1] > 0.98
    gradient = onnxattr.create_analyzer("gradient", model).analyze(data[:4]).ravel()
    assert np.corrcoef(maps[1], gradient)[0, 1] < 0.9
