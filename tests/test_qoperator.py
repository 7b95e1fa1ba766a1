"""onnxattr/qoperator.py: onnxruntime's QOperator nodes written as float ops between DequantizeLinear and
QuantizeLinear.

The reference for the rewrite is onnxruntime's own integer kernel: the canonical model must give the codes the
QOperator node gives, exactly, but where a float sum lands within rounding of a step boundary (the kernel sums
integers and scales once; the float op sums scaled values): there one code step at most. The reference for the maps
is onnxruntime's QDQ export of the same float net with the same calibration, which the QDQ path (tests/emitters/
test_quantize.py, tests/oracles/make_quantized.py against torch, Captum and Zennit) already checks: every method
gives the same map on both exports, to 1e-5 of its largest value (observed: below 2e-7).
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.canonicalize import canonicalize
from onnxattr.errors import UnsupportedModelError
from onnxattr.qoperator import ON_CODES, QOPERATOR_AS_FLOAT

RNG = np.random.default_rng(0)
MS = "com.microsoft"


def _arr(name, values, dtype):
    return numpy_helper.from_array(np.asarray(values, dtype), name)


def _int8(shape, rng=RNG):
    return rng.integers(-60, 60, size=shape).astype(np.int8)


# every case: x (float) -> QuantizeLinear(s_x, zp_x) -> "xq", and a second code tensor "x2q" of another scale; the
# case's nodes read them and write "yq" (codes of scale "sy", zero point "zy", or of s_x, zp_x where ``same``) or y
ACTIVATIONS = [_arr("sx", 0.05, np.float32), _arr("zx", 128, np.uint8), _arr("s2", 0.03, np.float32),
               _arr("z2", 100, np.uint8), _arr("sy", 0.08, np.float32), _arr("zy", 120, np.uint8),
               _arr("s_prob", 1 / 256, np.float32), _arr("z_prob", 0, np.uint8)]
IN = ["xq", "sx", "zx"]
IN2 = ["x2q", "s2", "z2"]
OUT = ["sy", "zy"]
CASES = {
    # name: (x shape, nodes, extra initializers, output: "codes" (sy, zy), "same" (sx, zx), "prob" or "float")
    "QLinearConv per channel, bias": (
        (2, 3, 8, 8), [helper.make_node("QLinearConv", IN + ["w", "sw", "zw"] + OUT + ["b"], ["yq"], pads=[1] * 4,
                                        strides=[2, 2])],
        [_arr("w", _int8((4, 3, 3, 3)), np.int8), _arr("sw", [0.01, 0.02, 0.015, 0.03], np.float32),
         _arr("zw", [0] * 4, np.int8), _arr("b", [-300, 0, 250, 1000], np.int32)], "codes"),
    "QLinearConv grouped, no bias": (
        (2, 3, 6, 6), [helper.make_node("QLinearConv", IN + ["w", "sw", "zw"] + OUT, ["yq"], group=3)],
        [_arr("w", _int8((3, 1, 3, 3)), np.int8), _arr("sw", 0.02, np.float32), _arr("zw", 0, np.int8)], "codes"),
    "QLinearMatMul per column": (
        (2, 5, 6), [helper.make_node("QLinearMatMul", IN + ["w", "sw", "zw"] + OUT, ["yq"])],
        [_arr("w", _int8((6, 4)), np.int8), _arr("sw", [0.01, 0.02, 0.015, 0.03], np.float32),
         _arr("zw", [0] * 4, np.int8)], "codes"),
    "QGemm transB, alpha, bias": (
        (3, 6), [helper.make_node("QGemm", IN + ["w", "sw", "zw", "b"] + OUT, ["yq"], domain=MS, transB=1,
                                  alpha=0.5)],
        [_arr("w", _int8((4, 6)), np.int8), _arr("sw", [0.01, 0.02, 0.015, 0.03], np.float32),
         _arr("zw", [0] * 4, np.int8), _arr("b", [-300, 0, 250, 1000], np.int32)], "codes"),
    "QGemm with a float output": (
        (3, 6), [helper.make_node("QGemm", IN + ["w", "sw", "zw", "b"], ["y"], domain=MS)],
        [_arr("w", _int8((6, 4)), np.int8), _arr("sw", 0.02, np.float32), _arr("zw", 0, np.int8),
         _arr("b", [-300, 0, 250, 1000], np.int32)], "float"),
    "QLinearAdd": ((2, 3, 4, 4), [helper.make_node("QLinearAdd", IN + IN2 + OUT, ["yq"], domain=MS)], [], "codes"),
    "QLinearAdd, no output zero point": (  # codes of the operands' type, zero point 0
        (2, 3, 4, 4), [helper.make_node("QLinearAdd", IN + IN2 + ["sy"], ["yq"], domain=MS)], [], "zero"),
    "QLinearMul broadcast": (
        (2, 3, 4, 4), [helper.make_node("QLinearMul", IN + ["c", "sc", "zc"] + OUT, ["yq"], domain=MS)],
        [_arr("c", [[[[30]], [[200]], [[128]]]], np.uint8), _arr("sc", 0.02, np.float32), _arr("zc", 128, np.uint8)],
        "codes"),
    "QLinearWhere": (
        (2, 3, 4), [helper.make_node("QLinearWhere", ["cond"] + IN + IN2 + OUT, ["yq"], domain=MS)],
        [_arr("cond", RNG.random((3, 4)) > 0.5, np.bool_)], "codes"),
    "QLinearGlobalAveragePool": (
        (2, 3, 5, 5), [helper.make_node("QLinearGlobalAveragePool", IN + OUT, ["yq"], domain=MS, channels_last=0)],
        [], "codes"),
    "QLinearAveragePool padded": (
        (2, 3, 7, 7), [helper.make_node("QLinearAveragePool", IN + OUT, ["yq"], domain=MS, kernel_shape=[3, 3],
                                        pads=[1] * 4, strides=[2, 2], count_include_pad=1)], [], "codes"),
    "QLinearLeakyRelu": ((2, 3, 4, 4), [helper.make_node("QLinearLeakyRelu", IN + OUT, ["yq"], domain=MS,
                                                         alpha=0.2)], [], "codes"),
    "QLinearSigmoid": ((2, 3, 4, 4), [helper.make_node("QLinearSigmoid", IN + ["s_prob", "z_prob"], ["yq"],
                                                       domain=MS)], [], "prob"),
    "QLinearSoftmax, last axis": (
        (2, 5, 6), [helper.make_node("QLinearSoftmax", IN + ["s_prob", "z_prob"], ["yq"], domain=MS, axis=-1,
                                     opset=13)], [], "prob"),
    "QLinearSoftmax of opset 12, from axis 1": (
        (2, 5, 6), [helper.make_node("QLinearSoftmax", IN + ["s_prob", "z_prob"], ["yq"], domain=MS, axis=1,
                                     opset=12)], [], "prob"),
    "QLinearConcat of two scales": (
        (2, 3, 4), [helper.make_node("QLinearConcat", OUT + IN + IN2, ["yq"], domain=MS, axis=1)], [], "codes"),
    "MaxPool on codes": (
        (2, 3, 6, 6), [helper.make_node("MaxPool", ["xq"], ["yq"], kernel_shape=[2, 2], strides=[2, 2])], [],
        "same"),
    "Pad on codes, zero point as the value": (
        (2, 3, 4, 4), [helper.make_node("Pad", ["xq", "pads"], ["yq"])],
        [_arr("pads", [0, 0, 1, 2, 0, 0, 2, 1], np.int64)], "same"),
    "Pad on codes with a value": (
        (2, 3, 4, 4), [helper.make_node("Pad", ["xq", "pads", "v"], ["yq"])],
        [_arr("pads", [0, 0, 1, 2, 0, 0, 2, 1], np.int64), _arr("v", 140, np.uint8)], "same"),
    "Resize on codes": (
        (2, 3, 3, 3), [helper.make_node("Resize", ["xq", "", "scales"], ["yq"], mode="nearest")],
        [_arr("scales", [1, 1, 2, 2], np.float32)], "same"),
    "Split on codes": (
        (2, 4, 3), [helper.make_node("Split", ["xq", "parts"], ["aq", "bq"], axis=1),
                    helper.make_node("Concat", ["bq", "aq"], ["yq"], axis=1)],
        [_arr("parts", [1, 3], np.int64)], "same"),
    "Gather and Slice on codes": (
        (2, 4, 5), [helper.make_node("Gather", ["xq", "idx"], ["gq"], axis=1),
                    helper.make_node("Slice", ["gq", "starts", "ends", "axes"], ["yq"])],
        [_arr("idx", [3, 0, 2], np.int64), _arr("starts", [1], np.int64), _arr("ends", [4], np.int64),
         _arr("axes", [2], np.int64)], "same"),
}
OUTPUT_PARAMS = {"codes": ["sy", "zy"], "zero": ["sy"], "same": ["sx", "zx"], "prob": ["s_prob", "z_prob"]}


def qoperator_model(case):
    shape, nodes, extra, output = CASES[case]
    head = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
            helper.make_node("QuantizeLinear", ["x", "s2", "z2"], ["x2q"])]
    tail = [] if output == "float" else [helper.make_node("DequantizeLinear", ["yq"] + OUTPUT_PARAMS[output], ["y"])]
    graph = helper.make_graph(head + nodes + tail, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], ACTIVATIONS + extra)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    return model


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]


@pytest.mark.parametrize("case", CASES)
def test_a_qoperator_node_gives_the_same_codes_as_float_ops(case):
    model = qoperator_model(case)
    x = (np.random.default_rng(1).normal(size=CASES[case][0]) * 3).astype(np.float32)
    canon = canonicalize(onnx.load_from_string(model.SerializeToString()))
    left = [n.op_type for n in canon.graph.node if n.op_type in QOPERATOR_AS_FLOAT or (
        n.op_type in ON_CODES and any(i.endswith("q") for i in n.input))]
    assert not left, left
    want, got = _run(model, x), _run(canon, x)
    assert want.shape == got.shape and np.isfinite(want).all()
    step = {"codes": 0.08, "zero": 0.08, "same": 0.05, "prob": 1 / 256, "float": 0}[CASES[case][3]]
    if step:  # a code at most one step away, where the float sum lay at a rounding boundary; nearly all equal
        np.testing.assert_allclose(got, want, rtol=0, atol=step * 1.001)
        assert np.mean(got == want) > 0.98, np.mean(got == want)
    else:  # a float output: the integer sum times the scales against the float sum
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert len(np.unique(want)) > 3  # not a saturated output


def _net(tmp_path):
    """A float net whose layers onnxruntime's quantize_static writes in both formats with the same parameters:
    Conv (Relu absorbed), MaxPool and Flatten on codes, Add, Mul, LeakyRelu, Sigmoid, GlobalAveragePool, MatMul,
    Gemm (its AveragePool and Concat get other parameters in QDQ than in QOperator, so they are tested above)."""
    rng = np.random.default_rng(0)

    def w(*shape, k=0.3):
        return (rng.normal(size=shape) * k).astype(np.float32)

    inits = {"w1": w(6, 3, 3, 3), "b1": w(6, k=0.1), "w2": w(6, 6, 3, 3, k=0.2), "b2": np.zeros(6, np.float32),
             "w3": w(4, 6, 1, 1), "b3": np.zeros(4, np.float32), "m": w(64, 12, k=0.1), "g": w(5, 12),
             "gb": w(5, k=0.1), "g2": w(6, 5)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1] * 4),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Add", ["r2", "p1"], ["a1"]),
             helper.make_node("Mul", ["a1", "p1"], ["mu"]),
             helper.make_node("LeakyRelu", ["mu"], ["lr"], alpha=0.1),
             helper.make_node("MaxPool", ["lr"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["mp", "w3", "b3"], ["c3"]),
             helper.make_node("Sigmoid", ["c3"], ["sg"]),
             helper.make_node("GlobalAveragePool", ["lr"], ["gp"]),
             helper.make_node("Flatten", ["sg"], ["fl"]),
             helper.make_node("Flatten", ["gp"], ["gf"]),
             helper.make_node("MatMul", ["fl", "m"], ["mm"]),
             helper.make_node("Gemm", ["mm", "g", "gb"], ["y1"], transB=1),
             helper.make_node("Gemm", ["gf", "g2"], ["y2"]),
             helper.make_node("Add", ["y1", "y2"], ["y"])]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "float.onnx"
    onnx.save(model, path)
    return path, [{"x": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(8)]


def _quantized(tmp_path, fmt):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    src, feeds = _net(tmp_path)

    class Probes(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(feeds)

        def get_next(self):
            return next(self.feeds, None)

    dst = tmp_path / f"{fmt}.onnx"
    quantize_static(str(src), str(dst), Probes(), quant_format=getattr(QuantFormat, fmt), per_channel=True)
    return onnx.load(dst)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("qoperator")
    return {fmt: _quantized(tmp, fmt) for fmt in ("QOperator", "QDQ")}


def test_the_net_has_each_kind_of_qoperator_node(exports):
    ops = {n.op_type for n in exports["QOperator"].graph.node}
    assert {"QLinearConv", "QLinearAdd", "QLinearMul", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearMatMul",
            "QGemm", "QLinearGlobalAveragePool", "MaxPool", "Flatten"} <= ops, ops
    assert "Conv" not in ops and "QLinearConv" not in {n.op_type for n in exports["QDQ"].graph.node}


@pytest.mark.parametrize("method", ["gradient", "integrated_gradients", "guided_backprop", "lrp.epsilon",
                                    "lrp.epsilon_plus_flat", "deep_taylor", "occlusion"])
def test_a_qoperator_export_explains_as_its_qdq_twin(exports, method):
    """Both exports give the same outputs and the same maps. Before, the QOperator export was refused for every
    method that needs a backward ("QLinearConv reads the quantized codes ...")."""
    x = np.random.default_rng(1).normal(size=(2, 3, 16, 16)).astype(np.float32)
    kw = {"sliding_window_shapes": (3, 4, 4), "strides": 4} if method == "occlusion" else {}
    maps, outputs = [], []
    for fmt in ("QOperator", "QDQ"):
        compiled = onnxattr.compile(exports[fmt], method, **kw)
        got = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            ["y", "relevance"], {"x": x})
        outputs.append(got[0])
        maps.append(got[1])
    np.testing.assert_array_equal(outputs[0], _run(exports["QOperator"], x))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    assert np.abs(maps[1]).max() > 0
    np.testing.assert_allclose(maps[0], maps[1], rtol=0, atol=1e-5 * np.abs(maps[1]).max())


def test_a_qoperator_node_left_as_it_is_is_refused_by_name():
    """QLinearAdd with no zero points: the codes' type (the output's) is not written anywhere the rewrite reads, so
    the node is left; the reverse pass names it and the QDQ format."""
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx"], ["xq"]),
             helper.make_node("QLinearAdd", ["xq", "sx", "", "xq", "sx", "", "sy"], ["yq"], domain=MS, name="add"),
             helper.make_node("DequantizeLinear", ["yq", "sy"], ["d"]),
             helper.make_node("Neg", ["d"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], ACTIVATIONS)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    with pytest.raises(UnsupportedModelError, match="QLinearAdd node 'add' reads the quantized codes 'xq'.*"
                                                    "QOperator format.*QuantFormat.QDQ"):
        onnxattr.compile(model, "gradient")
