"""onnxattr/emitters/quantize.py: the straight-through backward of QuantizeLinear and DequantizeLinear.

Rounding makes a quantized function piecewise constant, so central differences say nothing here; the reference is
the estimator's definition in numpy (round half to even, as QuantizeLinear rounds): through Q(s_q, zp) then
DQ(s_dq, zp), dx = g * s_dq / s_q where lo <= round(x / s_q) + zp <= hi, else 0. It is torch's fake_quantize
backward; tests/oracles/make_quantized.py checks whole maps against torch, Captum and Zennit on a quantized net.
Tolerance 1e-6 relative: the emitted g * s_dq / s_q rounds twice in float32.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.errors import UnsupportedModelError
from tests.vjp_check import vjp_model

RANGES = {np.uint8: (0, 255), np.int8: (-128, 127), np.uint16: (0, 65535), np.int16: (-32768, 32767)}


def quant_model(shape, scale, zp, axis=1, between=(), dq_scale=None, opset=17, q_attrs=None):
    """x -> QuantizeLinear(scale, zp, axis) -> the nodes ``between`` (op, attrs, extra initializers) on the codes
    -> DequantizeLinear(dq_scale or scale, zp, axis) -> y."""
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
             numpy_helper.from_array(np.asarray(zp), "zp"),
             numpy_helper.from_array(np.asarray(scale if dq_scale is None else dq_scale, np.float32), "s_dq")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q0"], name="quant", axis=axis,
                              **(q_attrs or {}))]
    for k, (op, attrs, extra) in enumerate(between):
        names = []
        for j, arr in enumerate(extra):
            inits.append(numpy_helper.from_array(np.asarray(arr), f"c{k}_{j}"))
            names.append(f"c{k}_{j}")
        nodes.append(helper.make_node(op, [f"q{k}"] + names, [f"q{k + 1}"], name=f"mid{k}", **attrs))
    nodes.append(helper.make_node("DequantizeLinear", [f"q{len(between)}", "s_dq", "zp"], ["y"], name="dequant",
                                  axis=axis))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return onnx.shape_inference.infer_shapes(model)


def scored(model):
    """The model with y = -DQ(...): compile() looks through a trailing quantization (the scores before it are
    explained), so a model that ends in its DequantizeLinear would leave it out of the backward."""
    for node in model.graph.node:
        if node.output[0] == "y":
            node.output[0] = "dq"
    model.graph.node.append(helper.make_node("Neg", ["dq"], ["y"], name="neg"))
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def emitted_gradient(model, x, g):
    m = vjp_model(model, ["x"], out="y")
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(["grad_x"], {"x": x, "cotangent": g})[0]


def straight_through(x, scale, zp, dtype, axis, dq_scale=None):
    """(the reference dx / g, the mask) for broadcastable per-axis parameters."""
    shape = [1] * x.ndim
    s = np.asarray(scale, np.float32)
    z = np.asarray(zp).astype(np.float32)
    if s.ndim:
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    sd = s if dq_scale is None else np.asarray(dq_scale, np.float32).reshape(s.shape)
    lo, hi = RANGES[dtype]
    level = np.round(x / s) + z
    inside = (level >= lo) & (level <= hi)
    return np.where(inside, sd / s, 0).astype(np.float32), inside


CASES = {
    # name: (x shape, scale, zero point, axis)
    "uint8 per tensor": ((2, 3, 4, 4), 0.05, np.uint8(3), 1),
    "int8 per tensor": ((4, 6), 0.02, np.int8(-5), 1),
    "int8 per channel, axis 1": ((2, 3, 4, 4), [0.02, 0.05, 0.1], np.array([0, 4, -3], np.int8), 1),
    "uint8 per channel, axis 0": ((3, 5), [0.04, 0.01, 0.07], np.array([128, 0, 7], np.uint8), 0),
    "int8 per channel, axis -1": ((2, 3, 4), [0.03, 0.02, 0.05, 0.1], np.zeros(4, np.int8), -1),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_quantize_dequantize_passes_the_gradient_inside_the_range(case):
    shape, scale, zp, axis = CASES[case]
    rng = np.random.default_rng(0)
    x = (rng.normal(size=shape) * 4).astype(np.float32)  # wide enough that some codes saturate
    g = rng.normal(size=shape).astype(np.float32)
    got = emitted_gradient(quant_model(shape, scale, zp, axis), x, g)
    factor, inside = straight_through(x, scale, zp, zp.dtype.type, axis % len(shape))
    assert inside.any() and not inside.all(), "the case must have codes inside and outside the range"
    np.testing.assert_allclose(got, g * factor, rtol=1e-6, atol=0)


def test_rounding_ties_decide_the_range_as_quantize_linear_rounds():
    """Scale 0.5, uint8: x / s = 255.5 rounds (half to even) to 256, outside; 254.5 to 254; -0.5 to 0, inside;
    -1.5 to -2, outside. Reading the saturated codes (255, 0) instead would get the first and third wrong."""
    x = np.array([[127.75, 127.25, -0.25, -0.75, 10.0]], np.float32)
    g = np.ones_like(x)
    got = emitted_gradient(quant_model(x.shape, 0.5, np.uint8(0)), x, g)
    np.testing.assert_array_equal(got, [[0.0, 1.0, 1.0, 0.0, 1.0]])


def test_a_dequantize_with_another_scale_rescales_the_gradient():
    shape = (3, 8)
    rng = np.random.default_rng(1)
    x = (rng.normal(size=shape) * 3).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    got = emitted_gradient(quant_model(shape, 0.02, np.int8(0), dq_scale=0.05), x, g)
    factor, inside = straight_through(x, 0.02, np.int8(0), np.int8, 1, dq_scale=0.05)
    assert inside.any() and not inside.all()
    np.testing.assert_allclose(got, g * factor, rtol=1e-6)


def test_16_bit_codes():
    shape = (2, 5)
    x = np.array([[0.0, 1.0, -1.0, 400.0, -400.0], [3.3, 2e3, -2e3, 0.5, 7.0]], np.float32)
    g = np.arange(10, dtype=np.float32).reshape(shape) + 1
    for dtype, zp in ((np.int16, np.int16(100)), (np.uint16, np.uint16(30000))):
        got = emitted_gradient(quant_model(shape, 0.01, zp, opset=21), x, g)
        factor, inside = straight_through(x, 0.01, zp, dtype, 1)
        assert inside.any() and not inside.all()
        np.testing.assert_allclose(got, g * factor, rtol=1e-6)


def test_4_bit_codes():
    """int4 codes (opset 21), zero point 1: the range [-8, 7] clips where round(x / s) passes 6 or -9."""
    model = quant_model((2, 5), 0.5, np.int8(0), opset=21)
    for i, t in enumerate(model.graph.initializer):
        if t.name == "zp":
            model.graph.initializer[i].CopyFrom(helper.make_tensor("zp", TensorProto.INT4, [], [1]))
    del model.graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    x = np.array([[0.0, 1.0, -1.0, 3.0, -5.0], [3.3, 2.0, -4.5, 0.5, 7.0]], np.float32)
    got = emitted_gradient(model, x, np.full_like(x, 2.0))
    np.testing.assert_array_equal(got, [[2, 2, 2, 2, 0], [0, 2, 2, 2, 0]])


MOVERS = {
    "Reshape": ("Reshape", {}, [np.array([2, 12], np.int64)]),
    "Transpose": ("Transpose", {"perm": [1, 0, 2]}, []),
    "Flatten": ("Flatten", {"axis": 1}, []),
    "Unsqueeze and Squeeze": [("Unsqueeze", {}, [np.array([1], np.int64)]), ("Squeeze", {}, [np.array([1], np.int64)])],
    "Identity": ("Identity", {}, []),
}


@pytest.mark.parametrize("mover", sorted(MOVERS))
def test_codes_moved_between_quantize_and_dequantize(mover):
    """Q -> a data-movement op on the int8 codes -> DQ (per tensor, so the layout change leaves the scale
    alone): the gradient comes back to x moved back. Before emitters/quantize.py, no gradient passed (the codes
    were not float) and the compile failed."""
    between = MOVERS[mover] if isinstance(MOVERS[mover], list) else [MOVERS[mover]]
    shape = (2, 3, 4)
    rng = np.random.default_rng(2)
    x = (rng.normal(size=shape) * 3).astype(np.float32)
    model = quant_model(shape, 0.02, np.int8(1), between=between)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    g = rng.normal(size=y.shape).astype(np.float32)
    got = emitted_gradient(model, x, g)
    factor, inside = straight_through(x, 0.02, np.int8(1), np.int8, 1)
    assert inside.any() and not inside.all()
    back = g.reshape(2, 12) if mover == "Reshape" else g.transpose(1, 0, 2) if mover == "Transpose" else g
    np.testing.assert_allclose(got, back.reshape(shape) * factor, rtol=1e-6)


def test_codes_dequantized_by_hand_through_cast():
    """y = (float(Q(x)) - zp) * s, the dequantization written out: Cast's backward gives the codes g itself (not g
    cast to int8, which would truncate it)."""
    shape = (3, 4)
    inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(2), "zp"),
             numpy_helper.from_array(np.float32(2.0), "zpf")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
             helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Sub", ["qf", "zpf"], ["c"], name="sub"),
             helper.make_node("Mul", ["c", "s"], ["y"], name="mul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    rng = np.random.default_rng(3)
    x = (rng.normal(size=shape) * 10).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    factor, inside = straight_through(x, 0.1, np.int8(2), np.int8, 1)
    assert inside.any() and not inside.all()
    np.testing.assert_allclose(emitted_gradient(model, x, g), g * factor, rtol=1e-6)


def test_other_ops_on_codes_are_refused_by_name():
    """An op computing with the codes themselves (Abs of int8) has no straight-through meaning here: refused,
    naming the node and the tensor, instead of dropping the gradient."""
    model = scored(quant_model((2, 4), 0.1, np.int8(0), between=[("Abs", {}, [])]))
    with pytest.raises(UnsupportedModelError, match="Abs node 'mid0' reads the quantized codes 'q0'"):
        onnxattr.compile(model, "gradient")


def test_blocked_quantization_is_refused_by_name():
    scale = np.full((2, 2), 0.1, np.float32)
    model = quant_model((2, 4), scale, np.zeros((2, 2), np.int8), axis=1, opset=21, q_attrs={"block_size": 2})
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            node.attribute.append(helper.make_attribute("block_size", 2))
    with pytest.raises(UnsupportedModelError, match="node 'dequant': blocked quantization"):
        onnxattr.compile(scored(model), "gradient")


def test_float8_codes_are_refused_by_name():
    zp = helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, [], [0.0])
    model = quant_model((2, 4), 0.1, np.int8(0), opset=19)
    for i, t in enumerate(model.graph.initializer):
        if t.name == "zp":
            model.graph.initializer[i].CopyFrom(zp)
    with pytest.raises(UnsupportedModelError, match="QuantizeLinear node 'quant': codes of type FLOAT8E4M3FN"):
        onnxattr.compile(scored(model), "gradient")


# ---- dynamic quantization: DynamicQuantizeLinear, MatMulInteger, ConvInteger --------------------------------------

def _graph(nodes, shape, inits, opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    return onnx.shape_inference.infer_shapes(model)


def test_dynamic_quantize_passes_the_gradient_with_its_scale_held():
    """y = (float(q) - float(zp)) * s with q, s, zp = DynamicQuantizeLinear(x): the codes' path gives g * s / s = g;
    s and zp, computed from x's range, are held constant (no gradient through the Mul's other operand, which would
    add g * (q - zp) * ds/dx at x's largest and smallest elements)."""
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "zp"], name="dql"),
             helper.make_node("Cast", ["q"], ["qf"], to=TensorProto.FLOAT, name="cq"),
             helper.make_node("Cast", ["zp"], ["zf"], to=TensorProto.FLOAT, name="cz"),
             helper.make_node("Sub", ["qf", "zf"], ["c"], name="sub"),
             helper.make_node("Mul", ["c", "s"], ["y"], name="mul")]
    shape = (3, 5)
    rng = np.random.default_rng(4)
    x = (rng.normal(size=shape) * 2).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(emitted_gradient(_graph(nodes, shape, {}), x, g), g, rtol=1e-6)


def _codes_of(shape):
    """x -> QuantizeLinear(scale 1, zero point 0, uint8): codes equal to x for integer x in [0, 255], whose gradient
    is the codes' (straight through)."""
    return ([helper.make_node("QuantizeLinear", ["x", "one", "zero"], ["q"], name="codes")],
            {"one": np.float32(1.0), "zero": np.uint8(0)})


def _integer_steps_agree(model, shape, seed):
    """The products are linear in the codes, so for integer x and an integer step u the change of y is exact
    (float32 sums of small integers): <VJP(g), u> = <g, y(x + u) - y(x)> to the last bit."""
    rng = np.random.default_rng(seed)
    x = rng.integers(10, 240, size=shape).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y0 = sess.run(None, {"x": x})[0]
    g = rng.integers(-3, 4, size=y0.shape).astype(np.float32)
    grad = emitted_gradient(model, x, g)
    for _ in range(3):
        u = rng.integers(-5, 6, size=shape).astype(np.float32)
        change = sess.run(None, {"x": x + u})[0] - y0
        assert float(np.sum(grad * u)) == float(np.sum(g * change))
    return grad, g


def test_matmul_integer_differentiates_its_float_operands():
    """a [2, 3, 4] codes (zero point 3) @ b [4, 5] int8 codes (zero point per column): da = g (b - b_zp)^T."""
    nodes, inits = _codes_of((2, 3, 4))
    w = np.random.default_rng(5).integers(-128, 128, size=(4, 5)).astype(np.int8)
    wz = np.array([0, 1, -2, 5, -128], np.int8)
    inits.update(w=w, a_zp=np.uint8(3), w_zp=wz)
    nodes += [helper.make_node("MatMulInteger", ["q", "w", "a_zp", "w_zp"], ["i"], name="mm"),
              helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT, name="cast")]
    grad, g = _integer_steps_agree(_graph(nodes, (2, 3, 4), inits), (2, 3, 4), 6)
    np.testing.assert_array_equal(grad, g @ (w.astype(np.float32) - wz.astype(np.float32)).T)


@pytest.mark.parametrize("attrs", [{"pads": [1, 1, 1, 1]}, {"strides": [2, 2], "pads": [0, 1, 1, 0]}, {"group": 2}])
def test_conv_integer_differentiates_its_float_operands(attrs):
    """x [2, 4, 6, 6] codes (zero point 7) * w int8 codes (zero point 3; onnxruntime's ConvInteger takes no zero
    point per channel): Conv's input VJP with w - w_zp, checked by exact integer steps."""
    nodes, inits = _codes_of((2, 4, 6, 6))
    groups = attrs.get("group", 1)
    w = np.random.default_rng(7).integers(-20, 20, size=(6, 4 // groups, 3, 3)).astype(np.int8)
    inits.update(w=w, x_zp=np.uint8(7), w_zp=np.int8(3))
    nodes += [helper.make_node("ConvInteger", ["q", "w", "x_zp", "w_zp"], ["i"], name="conv", **attrs),
              helper.make_node("Cast", ["i"], ["y"], to=TensorProto.FLOAT, name="cast")]
    grad, _ = _integer_steps_agree(_graph(nodes, (2, 4, 6, 6), inits, opset=17), (2, 4, 6, 6), 8)
    assert np.abs(grad).max() > 0


def test_a_dynamically_quantized_mlp_against_its_dequantized_weights(tmp_path):
    """onnxruntime's quantize_dynamic on a two-layer linear net: nothing clips, and the scales are held, so the
    straight-through gradient of a logit is the product of the dequantized weights' columns, W1q W2q[:, k], read from
    the quantized file in numpy."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(9)
    w1, w2 = rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(8, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("MatMul", ["h", "w2"], ["y"], name="mm2")]
    src, dst = tmp_path / "float.onnx", tmp_path / "dynamic.onnx"
    onnx.save(_graph(nodes, ("N", 6), {"w1": w1, "w2": w2}), src)
    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    model = onnx.load(dst)
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {n.op_type for n in model.graph.node}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}

    def dequantized(name):
        codes = next(v for k, v in inits.items() if k.startswith(name) and v.dtype == np.int8 and v.ndim == 2)
        scale = next(v for k, v in inits.items() if k.startswith(name) and "scale" in k)
        zp = next(v for k, v in inits.items() if k.startswith(name) and "zero_point" in k)
        return (codes.astype(np.float32) - zp.astype(np.float32)) * scale

    x = rng.normal(size=(4, 6)).astype(np.float32)
    relevance = onnxattr.create_analyzer("gradient", model).analyze(x, neuron_selection=[0, 1, 2, 1])
    product = dequantized("w1") @ dequantized("w2")
    np.testing.assert_allclose(relevance, product[:, [0, 1, 2, 1]].T, rtol=1e-5)


def test_a_zero_point_fed_at_run_time():
    """A zero point that is a graph input (not a constant): round(x / s) + zp is compared with the range, where a
    constant zero point gives two thresholds on x / s; both agree with the definition, ties included."""
    inits = [numpy_helper.from_array(np.float32(0.5), "s")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dequant")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6]),
                                           helper.make_tensor_value_info("zp", TensorProto.UINT8, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    m = vjp_model(model, ["x"], out="y")
    assert "Round" in {n.op_type for n in m.graph.node}
    x = np.array([[126.25, 126.75, -1.25, -1.75, 1.0, 200.0]], np.float32)  # x / s: 252.5, 253.5, -2.5, -3.5
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["grad_x"], {"x": x, "zp": np.array(3, np.uint8), "cotangent": np.ones_like(x)})[0]
    factor, _ = straight_through(x, 0.5, np.uint8(3), np.uint8, 1)
    np.testing.assert_array_equal(got, factor)
    np.testing.assert_array_equal(got, [[1, 0, 1, 0, 1, 0]])  # round: 252 + 3, 254 + 3, -2 + 3, -4 + 3


def test_a_pair_with_one_scale_divides_by_nothing():
    """Q -> DQ with one scale tensor: the DequantizeLinear's g * s and the QuantizeLinear's division by s cancel, so
    the backward is g times the range's mask, and a constant scale's range is two thresholds on x itself: x equals
    Clip(x, x_lo, x_hi) inside it. No Div, no Where (five times slower than a Mul by the cast mask on onnxruntime's CPU
    provider)."""
    from onnxattr.graph import live_nodes

    m = vjp_model(quant_model((2, 8), 0.1, np.uint8(7)), ["x"], out="y")
    ops = [n.op_type for n in live_nodes(list(m.graph.node), {"grad_x"}) if n.op_type not in ("QuantizeLinear",)]
    assert ops == ["Clip", "Equal", "Cast", "Mul", "Identity"], ops


def _edges(scale, zp, lo, hi):
    """The float32 x at each end of the range, x = (level - zp) * s for the half levels around lo and hi, and the
    four floats on either side of each."""
    values = []
    for level in (lo - 0.5, lo + 0.5, hi - 0.5, hi + 0.5):
        v = np.float32((level - float(zp)) * np.float64(scale))
        for _ in range(4):
            v = np.nextafter(v, np.float32(-np.inf))
        for _ in range(9):
            values.append(v)
            v = np.nextafter(v, np.float32(np.inf))
    return np.array(values, np.float32)


@pytest.mark.parametrize("scale,zp,axis", [
    (0.1, np.uint8(7), 1), (1 / 3, np.int8(-5), 1), (0.0157, np.uint8(0), 1), (3.0e-5, np.int16(11), 1),
    ([0.1, 1 / 3, 0.0157], np.array([7, 0, 255], np.uint8), 1), ([0.07, 2.5], np.array([-128, 3], np.int8), 0)])
def test_the_range_on_x_itself_is_the_range_on_x_over_s(scale, zp, axis):
    """The thresholds moved from r = x / s onto x (emitters/quantize._thresholds_on_x) decide every float32 as the
    division does: x at each end of the range and the eight floats around it, per tensor and per channel, the ties
    of round half to even among them."""
    lo, hi = RANGES[zp.dtype.type]
    if np.ndim(scale) == 0:
        x = _edges(scale, zp, lo, hi)[None, :]
    else:
        columns = np.stack([_edges(s, z, lo, hi) for s, z in zip(scale, zp)])  # [C, n]
        x = columns if axis == 0 else columns.T
    got = emitted_gradient(quant_model(x.shape, scale, zp, axis, opset=21), x, np.ones_like(x))
    factor, inside = straight_through(x, scale, zp, zp.dtype.type, axis)
    assert inside.any() and not inside.all()
    np.testing.assert_array_equal(got, factor)
