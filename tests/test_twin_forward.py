"""onnxattr/twin_forward.py: a quantized model's predictions from its own nodes, its backward from a twin.

The reference is the quantized model itself run by onnxruntime with its default optimizations, which fuse its
layers into integer kernels: the compiled model's outputs must equal its outputs exactly. A float sum and the integer
kernel's sum round a code differently only now and then (on a small net like this one, without the twin, 1 in 640
logits came out a step off; on ResNet18 21 %), so the tests also check the mechanism: onnxruntime writes the compiled
model's own layers as the same integer kernels as the model's.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.twin_forward import TWIN, quantizes_activations, twin_forward

WIDTH = 32
SIZE = 16


def _float_net(path, channels_last=False):
    """x [N, 3, SIZE, SIZE] (or [N, SIZE, SIZE, 3] transposed first, as a TensorFlow export reads images) -> three
    convolutions, the last one's output added to itself -> global average pool -> Gemm -> y [N, 10]."""
    rng = np.random.default_rng(0)

    def w(name, shape, scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], pads=[1] * 4, strides=[2, 2]),
             helper.make_node("Add", ["c3", "c3"], ["a3"]),
             helper.make_node("Relu", ["a3"], ["r3"]),
             helper.make_node("GlobalAveragePool", ["r3"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w4", "b4"], ["y"], transB=1)]
    data = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])
    if channels_last:
        nodes.insert(0, helper.make_node("Transpose", ["images"], ["x"], perm=[0, 3, 1, 2]))
        data = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", SIZE, SIZE, 3])
    inits = [w("w1", (WIDTH, 3, 3, 3), 0.3), w("b1", (WIDTH,), 0.1), w("w2", (WIDTH, WIDTH, 3, 3), 0.08),
             w("b2", (WIDTH,), 0.1), w("w3", (WIDTH, WIDTH, 3, 3), 0.08), w("b3", (WIDTH,), 0.1),
             w("w4", (10, WIDTH), 0.3), w("b4", (10,), 0.1)]
    graph = helper.make_graph(nodes, "net", [data], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """The net as onnxruntime's quantize_static writes it, QDQ and QOperator (its default int8 activations, which
    x86 runs as uint8 after converting the input quantizer)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    folder = tmp_path_factory.mktemp("twin")
    _float_net(str(folder / "float.onnx"))
    _float_net(str(folder / "float-nhwc.onnx"), channels_last=True)
    paths = {}
    for fmt, source, name, shape in (("QDQ", "float", "x", (3, SIZE, SIZE)),
                                     ("QOperator", "float", "x", (3, SIZE, SIZE)),
                                     ("QDQ", "float-nhwc", "images", (SIZE, SIZE, 3))):
        images = np.random.default_rng(1).random((4, 1) + shape, dtype=np.float32)

        class Images(CalibrationDataReader):
            def __init__(self):
                self.left = iter([{name: image} for image in images])

            def get_next(self):
                return next(self.left, None)

        key = fmt if source == "float" else f"{fmt}-nhwc"
        paths[key] = str(folder / f"{key}.onnx")
        quantize_static(str(folder / f"{source}.onnx"), paths[key], Images(), quant_format=getattr(QuantFormat, fmt),
                        per_channel=True)
    return paths


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
@pytest.mark.parametrize("method", ["gradient", "lrp.epsilon", "deep_taylor", "guided_backprop", "grad_cam",
                                    "integrated_gradients"])
def test_a_quantized_net_explained_returns_its_own_predictions_bit_for_bit(exports, fmt, method):
    x = np.random.default_rng(2).random((64, 3, 16, 16), dtype=np.float32)
    want = ort.InferenceSession(exports[fmt], providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    compiled = onnxattr.compile(exports[fmt], method)
    got, relevance = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["y", "relevance"], {"x": x})
    np.testing.assert_array_equal(got, want)
    assert np.isfinite(relevance).all() and np.abs(relevance).max() > 0


def _integer_kernels(model, folder, skip_twin=False) -> list[str]:
    """The fused integer nodes in onnxruntime's optimized graph of ``model`` (the QDQ fusions run at its extended
    level), those of the twin's nodes left out."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(), options,
                         providers=["CPUExecutionProvider"])
    optimized = onnx.load(options.optimized_model_filepath)
    return sorted(n.op_type for n in optimized.graph.node
                  if (n.op_type.startswith("QLinear") or n.op_type == "QGemm")
                  and not (skip_twin and n.name.startswith(TWIN)))


@pytest.mark.parametrize("export", ["QDQ", "QDQ-nhwc"])
@pytest.mark.parametrize("method", ["gradient", "lrp.epsilon", "deep_taylor", "integrated_gradients"])
def test_the_models_own_layers_fuse_as_in_the_model(exports, export, method, tmp_path):
    """The mechanism behind the equality above, which rounding shows only now and then: onnxruntime writes the
    compiled model's own layers as the same integer kernels it writes the model's (a backward reading their float
    values would keep them float; a twin quantizer merged with the model's would keep the first one float, also
    where the input is transposed before its quantizer)."""
    want = _integer_kernels(exports[export], tmp_path)
    assert want == ["QGemm", "QLinearConv", "QLinearConv", "QLinearGlobalAveragePool"]  # conv3 feeds Add twice
    assert _integer_kernels(onnxattr.compile(exports[export], method), tmp_path, skip_twin=True) == want


def test_the_float_net_has_no_twin(exports):
    compiled = onnxattr.compile(exports["QDQ"].replace("QDQ", "float"), "gradient")
    assert not any(o.startswith(TWIN) for n in compiled.graph.node for o in n.output)


def test_the_twin_copies_what_the_backward_reads_and_no_more():
    """x -> QuantizeLinear -> DequantizeLinear -> MaxPool (given indices by the reverse pass) -> Relu -> y, with a
    weight-like DequantizeLinear of constants and a tail nothing appended reads."""
    s, zp = numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.uint8(128), "zp")
    codes = numpy_helper.from_array(np.arange(4, dtype=np.uint8), "codes")
    own = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
           helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["d"]),
           helper.make_node("DequantizeLinear", ["codes", "s", "zp"], ["w"]),
           helper.make_node("MaxPool", ["d"], ["p"], kernel_shape=[2]),
           helper.make_node("Relu", ["p"], ["y"]),
           helper.make_node("Neg", ["y"], ["tail"])]
    assert quantizes_activations(own) and not quantizes_activations(own[1:])
    forward = [onnx.NodeProto() for _ in own]
    for copy, node in zip(forward, own):
        copy.CopyFrom(node)
    forward[3].output.append("indices")  # as the reverse pass gives a MaxPool
    appended = [helper.make_node("Mul", ["indices", "y"], ["g"]), helper.make_node("Mul", ["g", "w"], ["r"]),
                helper.make_node("Identity", ["x"], ["x2"])]
    twins, rename, copies = twin_forward(own, forward, appended, {t.name: t for t in (s, zp, codes)})
    assert [n.op_type for n in twins] == ["QuantizeLinear", "DequantizeLinear", "MaxPool", "Relu"]  # no tail
    assert rename["indices"] == f"{TWIN}/indices" and rename["y"] == f"{TWIN}/y" and "w" not in rename
    assert [list(n.input) for n in appended] == [[f"{TWIN}/indices", f"{TWIN}/y"], ["g", "w"], ["x"]]
    # the twin's quantizer reads its own scale and zero point, equal to the model's, and so does the DequantizeLinear
    # of its codes; the weight's DequantizeLinear is the model's own
    assert twins[0].input[0] == "x" and [c.name for c in copies] == list(twins[0].input[1:]) == list(twins[1].input[1:])
    assert [numpy_helper.to_array(c) for c in copies] == [np.float32(0.1), np.uint8(128)]
    assert list(own[2].input[1:]) == ["s", "zp"]



@pytest.mark.parametrize("zero_point", ["absent", "empty", "int8 by output_dtype"])
def test_a_twin_quantizer_without_a_zero_point_gets_its_own(zero_point):
    """A QuantizeLinear may leave its zero point out (uint8 0, or 0 of its output_dtype at opset 21): the twin's is
    given one explicitly, so that it is no copy of the model's for common-subexpression elimination."""
    s = numpy_helper.from_array(np.float32(0.1), "s")
    inputs = {"absent": ["x", "s"], "empty": ["x", "s", ""], "int8 by output_dtype": ["x", "s"]}[zero_point]
    attrs = {"output_dtype": TensorProto.INT8} if zero_point.startswith("int8") else {}
    own = [helper.make_node("QuantizeLinear", inputs, ["q"], **attrs),
           helper.make_node("DequantizeLinear", ["q", "s"], ["d"])]
    appended = [helper.make_node("Neg", ["d"], ["r"])]
    twins, _, copies = twin_forward(own, own, appended, {"s": s})
    zero = {c.name: numpy_helper.to_array(c) for c in copies}[twins[0].input[2]]
    assert zero.dtype == (np.int8 if attrs else np.uint8) and zero == 0
    assert twins[0].input[1] != "s" and twins[1].input[1] == twins[0].input[1]
