"""Linear units: a BatchNormalization after a Conv is folded into it for the rules (exact fold), the
forward graph stays untouched, and a BatchNormalization with nothing to fold into is a linear layer."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnxattr
from tests.lrp.nets import resnet_like

X = np.random.default_rng(11).random((3, 2, 8, 8)).astype(np.float32)


def run(model, method=None, **kw):
    m = onnxattr.compile(model, method, **kw) if method else model
    return ort.InferenceSession(m.SerializeToString()).run(None, {"x": X})


def fold_in_numpy(model):
    """The textbook fold W' = W s, b' = (b - mean) s + beta, s = gamma / sqrt(var + eps), done here on
    the arrays, independently of the package."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    bn = next(n for n in m.graph.node if n.op_type == "BatchNormalization")
    conv = next(n for n in m.graph.node if n.output[0] == bn.input[0])
    gamma, beta, mean, var = (inits[i].astype(np.float64) for i in bn.input[1:])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    s = gamma / np.sqrt(var + eps)
    w = inits[conv.input[1]].astype(np.float64) * s[:, None, None, None]
    b = (0.0 - mean) * s + beta
    new = [numpy_helper.from_array(w.astype(np.float32), "w_folded"),
           numpy_helper.from_array(b.astype(np.float32), "b_folded")]
    m.graph.initializer.extend(new)
    del conv.input[1:]
    conv.input.extend(["w_folded", "b_folded"])
    conv.output[0] = bn.output[0]
    m.graph.node.remove(bn)
    return m


@pytest.mark.parametrize("eps", [None, 0.5])
def test_folded_batchnorm_gives_the_maps_of_the_folded_graph(eps):
    """eps 0.5 next to variances in [0.5, 2] changes the scale by up to 40 %: the fold must use it."""
    model = resnet_like(batchnorm=True)
    if eps is not None:
        bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
        bn.attribute.append(helper.make_attribute("epsilon", eps))
    folded = fold_in_numpy(model)
    np.testing.assert_allclose(run(folded)[0], run(model)[0], rtol=1e-5, atol=1e-5)  # the fold is right
    for method in ("lrp.z", "lrp.epsilon_plus_flat", "lrp.alpha_2_beta_1", "deep_taylor"):
        got, want = run(model, method)[-1], run(folded, method)[-1]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_inspect_reports_the_fold_and_outputs_stay_bit_identical():
    model = resnet_like(batchnorm=True)
    rows = onnxattr.api.inspect(model, "lrp.z")
    bn = next(r for r in rows if r[1] == "BatchNormalization")
    assert bn[2] == "pass" and bn[3].startswith("fused into")
    np.testing.assert_array_equal(run(model, "lrp.z")[0], run(model)[0])


def test_standalone_batchnorm_is_a_linear_layer():
    """x -> BN -> y explained in mode "all": z rule R = x s (y / y), z_IB rule R = y."""
    rng = np.random.default_rng(0)
    gamma, beta = rng.uniform(0.5, 2, 2).astype(np.float32), rng.uniform(0.5, 1, 2).astype(np.float32)
    mean, var = rng.standard_normal(2).astype(np.float32), rng.uniform(0.5, 2, 2).astype(np.float32)
    g = helper.make_graph([helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"])], "bn",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8])],
                          [numpy_helper.from_array(a, n) for a, n in ((gamma, "g"), (beta, "b"), (mean, "m"),
                                                                       (var, "v"))])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    s = (gamma / np.sqrt(var + 1e-5))[None, :, None, None]
    y, r = run(model, "lrp.z", neuron="all")
    np.testing.assert_allclose(r, X * s, rtol=1e-4, atol=1e-5)
    _, r_ib = run(model, "lrp.z_IB", neuron="all")
    np.testing.assert_allclose(r_ib, y, rtol=1e-4, atol=1e-5)
    assert onnxattr.api.inspect(model, "lrp.z")[0][2:] == ("z", "default")


@pytest.mark.parametrize("channels,features", [(6, 8), (8, 8)])
def test_batchnorm_after_a_rank3_matmul_is_not_folded_into_its_features(channels, features):
    """x [N, C, K] @ W [K, F] -> BatchNormalization (channels on axis 1, C) -> Relu -> Flatten -> head: the
    BN scales rows, not W's output features, so it cannot fold into W (C != F raised, C == F gave wrong maps).
    lrp.z against numpy with the BN applied exactly: contributions x_k W_kf s_c over z = s_c (x W) + shift."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, features)).astype(np.float32)
    gamma, beta = (rng.random(channels) + 0.5).astype(np.float32), rng.standard_normal(channels).astype(np.float32)
    mean, var = rng.standard_normal(channels).astype(np.float32), (rng.random(channels) + 0.5).astype(np.float32)
    head = rng.standard_normal((channels * features, 2)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("BatchNormalization", ["h", "g", "b", "m", "v"], ["z"]),
             helper.make_node("Relu", ["z"], ["a"]), helper.make_node("Flatten", ["a"], ["f"]),
             helper.make_node("MatMul", ["f", "H"], ["y"])]
    inits = [numpy_helper.from_array(v, k) for k, v in
             (("W", w), ("g", gamma), ("b", beta), ("m", mean), ("v", var), ("H", head))]
    io = ([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, 5])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])])
    g = helper.make_graph(nodes, "bn3", *io, inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((2, channels, 5)).astype(np.float32)
    compiled = onnxattr.compile(model, "lrp.z")
    got = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]

    def safe(v):
        return v + 1e-7 * (v == 0)

    s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-5)
    xd, wd = x.astype(np.float64), w.astype(np.float64)
    z = s[None, :, None] * (xd @ wd) + (beta - mean * s)[None, :, None]
    a = np.maximum(z, 0)
    y = a.reshape(2, -1) @ head.astype(np.float64)
    k = y.argmax(1)
    r_y = np.zeros_like(y)
    r_y[np.arange(2), k] = y[np.arange(2), k]
    r_a = (a.reshape(2, -1) * ((r_y / safe(y)) @ head.T.astype(np.float64))).reshape(a.shape)
    contributions = s[None, :, None, None] * np.einsum("bck,kf->bckf", xd, wd)
    want = np.einsum("bckf,bcf->bck", contributions, r_a / safe(z))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("method", ["lrp.z", "lrp.epsilon", "deep_taylor"])
def test_a_matmul_whose_other_operand_carries_the_batch_is_not_a_layer(method):
    """Explaining a graph convolution A x W w.r.t. its run-time adjacency A [6, 6]: the constant-looking
    operand x [N, 6, 4] is batched, so MatMul(A, x) is a product (gradient), not a layer with weight x
    (which made a graph that failed onnx.checker). The map has A's shape."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["A", "x"], ["ax"]), helper.make_node("MatMul", ["ax", "W"], ["h"]),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("ReduceMean", ["a"], ["p"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["p", "H"], ["y"])]
    io = ([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 4]),
           helper.make_tensor_value_info("A", TensorProto.FLOAT, [6, 6])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), k) for k, s in (("W", (4, 8)),
                                                                                               ("H", (8, 3)))]
    model = helper.make_model(helper.make_graph(nodes, "gcn", *io, inits),
                              opset_imports=[helper.make_opsetid("", 13)])
    compiled = onnxattr.compile(model, method, input="A")
    feeds = {"x": np.abs(rng.standard_normal((2, 6, 4))).astype(np.float32),
             "A": np.abs(rng.standard_normal((6, 6))).astype(np.float32)}
    r = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], feeds)[0]
    assert r.shape == (6, 6) and np.isfinite(r).all()


def test_a_gemm_whose_c_varies_with_the_input_is_not_a_layer():
    """Gemm(x, W, x) (z = x W + x) is a layer plus a residual: C is no constant bias, so the node is not
    taken for a layer with bias C (that dropped C's share of the relevance), and inspect says why."""
    w = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Gemm", ["x", "W", "x"], ["z"], name="residual_gemm")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(w, "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    row = onnxattr.api.inspect(model, "lrp.z")[0]
    assert row[2] == "gradient" and row[3].startswith("not a layer"), row
    w4 = np.ones((2, 2, 1, 1), np.float32)  # Conv(x, W, B) with B computed from x: likewise
    nodes = [helper.make_node("ReduceSum", ["x"], ["b"], axes=[0, 2, 3], keepdims=0),
             helper.make_node("Conv", ["x", "W", "b"], ["y"], name="conv")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3])],
                          [numpy_helper.from_array(w4, "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 11)])
    row = next(r for r in onnxattr.api.inspect(model, "lrp.z") if r[0] == "conv")
    assert row[2] == "gradient" and row[3].startswith("not a layer"), row


def _dense_pair(equation, w1_first):
    """The same two-layer net written with MatMul layers and with Einsum layers (Keras' EinsumDense): x [N, 3, 5]
    -> W1 [5, 7] (+ bias) -> Relu -> W2 [7, 4]; the Einsum form with the weight first or second."""
    rng = np.random.default_rng(5)
    w1, w2 = rng.standard_normal((5, 7)).astype(np.float32), rng.standard_normal((7, 4)).astype(np.float32)
    bias = rng.standard_normal(7).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (w2, "W2"), (bias, "B"))]
    io = ([helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 5])],
          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4])])
    models = []
    for einsum in (False, True):
        if einsum:
            first = helper.make_node("Einsum", ["W1", "x"] if w1_first else ["x", "W1"], ["h"], equation=equation)
            second = helper.make_node("Einsum", ["a", "W2"], ["y"], equation="bsf,fo->bso")
        else:
            first = helper.make_node("MatMul", ["x", "W1"], ["h"])
            second = helper.make_node("MatMul", ["a", "W2"], ["y"])
        nodes = [first, helper.make_node("Add", ["h", "B"], ["hb"]), helper.make_node("Relu", ["hb"], ["a"]), second]
        models.append(helper.make_model(helper.make_graph(nodes, "g", *io, inits),
                                        opset_imports=[helper.make_opsetid("", 17)]))
    return models


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.z_plus", "lrp.alpha_2_beta_1", "lrp.w_square", "lrp.flat",
                                    "deep_taylor", "lrp.epsilon_plus_flat", "lrp.sequential_preset_a"])
@pytest.mark.parametrize("equation,w1_first", [("bsi,io->bso", False), ("io,bsi->bso", True)])
def test_einsum_with_a_constant_operand_is_a_dense_layer(method, equation, w1_first):
    """An Einsum of x and a constant weight (either order, bias Add after it) is a layer: the map of the MatMul
    form, rule for rule (the Einsum's VJP and forward are the emitter's, with the modified weights)."""
    x = np.abs(np.random.default_rng(6).standard_normal((2, 3, 5))).astype(np.float32)
    maps = []
    for model in _dense_pair(equation, w1_first):
        sess = ort.InferenceSession(onnxattr.compile(model, method).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
        maps.append(sess.run(["relevance"], {"x": x})[0])
    assert np.abs(maps[0]).max() > 0
    np.testing.assert_allclose(maps[1], maps[0], rtol=1e-5, atol=1e-6 * np.abs(maps[0]).max())


def _conv_or_deform(deform: bool, seed=3):
    """x [2, 3, 8, 8] -> 3x3 conv (bias) -> Relu -> 3x3 stride-2 conv + BatchNorm -> Relu -> Gemm. With ``deform``
    the two convolutions are DeformConv nodes whose offsets (and, for the second, mask) a Conv computes from the
    input, with zero weights: offsets 0 and a mask sigmoid(30) = 1 in float32, so both nets compute the same
    function and every LRP rule must give the same map on both."""
    rng = np.random.default_rng(seed)
    init = {"w1": rng.standard_normal((4, 3, 3, 3)) * 0.5, "b1": rng.standard_normal(4) * 0.1,
            "w2": rng.standard_normal((5, 4, 3, 3)) * 0.4, "gamma": rng.uniform(0.5, 1.5, 5),
            "beta": rng.standard_normal(5) * 0.1, "mean": rng.standard_normal(5) * 0.1, "var": rng.uniform(0.5, 2, 5),
            "wd": rng.standard_normal((5 * 4 * 4, 3)) * 0.2, "bd": rng.standard_normal(3) * 0.1,
            "zo1": np.zeros((18, 3, 3, 3)), "zo2": np.zeros((27, 4, 3, 3)),
            "bo2": np.r_[np.zeros(18), np.full(9, 30.0)]}
    nodes = []
    if deform:
        nodes += [helper.make_node("Conv", ["x", "zo1"], ["off1"], name="offsets1", pads=[1] * 4),
                  helper.make_node("DeformConv", ["x", "w1", "off1", "b1"], ["z1"], name="conv1", pads=[1] * 4,
                                   kernel_shape=[3, 3])]
    else:
        nodes.append(helper.make_node("Conv", ["x", "w1", "b1"], ["z1"], name="conv1", pads=[1] * 4))
    nodes.append(helper.make_node("Relu", ["z1"], ["a1"], name="relu1"))
    if deform:
        nodes += [helper.make_node("Conv", ["a1", "zo2", "bo2"], ["om2"], name="offsets2", pads=[1] * 4,
                                   strides=[2, 2]),
                  helper.make_node("Split", ["om2", "split"], ["off2", "m2_logit"], name="split", axis=1),
                  helper.make_node("Sigmoid", ["m2_logit"], ["m2"], name="mask2"),
                  helper.make_node("DeformConv", ["a1", "w2", "off2", "", "m2"], ["z2"], name="conv2",
                                   pads=[1] * 4, strides=[2, 2], kernel_shape=[3, 3])]
        init["split"] = np.array([18, 9], np.int64)
    else:
        nodes.append(helper.make_node("Conv", ["a1", "w2"], ["z2"], name="conv2", pads=[1] * 4, strides=[2, 2]))
    nodes += [helper.make_node("BatchNormalization", ["z2", "gamma", "beta", "mean", "var"], ["n2"], name="bn2"),
              helper.make_node("Relu", ["n2"], ["a2"], name="relu2"),
              helper.make_node("Flatten", ["a2"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "wd", "bd"], ["y"], name="dense")]
    inits = [numpy_helper.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k) for k, v in init.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


# every preset whose layer choice does not count kernel layers in graph order (the offsets' Conv nodes count there)
ORDER_FREE = ["lrp.z", "lrp.z_IB", "lrp.epsilon", "lrp.w_square", "lrp.flat", "lrp.alpha_2_beta_1",
              "lrp.alpha_1_beta_0", "lrp.z_plus", "lrp.z_plus_fast", "lrp.epsilon_plus", "lrp.epsilon_plus_flat",
              "lrp.epsilon_alpha2_beta1", "deep_taylor", "deep_taylor.bounded", "excitation_backprop",
              "lrp.sequential_preset_a"]


@pytest.mark.parametrize("method", ORDER_FREE)
def test_deform_conv_is_a_layer(method):
    """A DeformConv is an LRP layer over its sampled columns: with zero offsets and a unit mask its maps equal the
    Conv net's under every rule (and its BatchNorm is folded into it), so the rules see W and the sampling as
    the convolution; the offsets' and mask's Conv nodes get no relevance (else the maps would differ)."""
    x = np.abs(np.random.default_rng(4).standard_normal((2, 3, 8, 8))).astype(np.float32)  # z_plus_fast: x >= 0
    maps = [ort.InferenceSession(onnxattr.compile(_conv_or_deform(d), method).SerializeToString()).run(
        None, {"x": x})[1] for d in (False, True)]
    np.testing.assert_allclose(maps[1], maps[0], rtol=0, atol=2e-5 * np.abs(maps[0]).max())
    assert np.abs(maps[0]).max() > 0


MODIFIED_FORWARD = ["lrp.z_plus", "lrp.alpha_2_beta_1", "lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box", "deep_taylor",
                    "excitation_backprop"]


# float64 runs in onnx's reference evaluator (seconds a map): the W+ rule and the bounds' rule, which failed apart
@pytest.mark.parametrize("method,dtype,tol", [(m, "float16", 1e-2) for m in MODIFIED_FORWARD]
                         + [("lrp.z_plus", "float64", 1e-5), ("lrp.epsilon_gamma_box", "float64", 1e-5)])
def test_deform_conv_layer_in_other_float_types(method, dtype, tol):
    """The DeformConv net in float16 and float64 under the rules that run a modified forward through the layer
    (W+, W-, or the bounds' sampling): the modified DeformConv's output keeps the model's float type, so the
    stabilizer's constants take it too (they were float32: onnx's checker refused the compiled model). Its map
    equals the float32 model's within float16's rounding (4.9e-4 per op) or float32's (the float32 map is the
    coarser side) through the two layers."""
    from tests.test_dtypes import TYPES, as_type

    x = np.abs(np.random.default_rng(4).standard_normal((2, 3, 8, 8)))
    model = _conv_or_deform(True)
    want = ort.InferenceSession(onnxattr.compile(model, method).SerializeToString()).run(
        ["relevance"], {"x": x.astype(np.float32)})[0]
    typed = onnxattr.compile(as_type(model, dtype), method)
    # onnxruntime's CPU provider has no float64 Conv (the offsets' Conv): onnx's reference evaluator runs that one
    runner = ReferenceEvaluator(typed) if dtype == "float64" else ort.InferenceSession(typed.SerializeToString())
    got = runner.run(["relevance"], {"x": x.astype(TYPES[dtype][0])})[0]
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


def _pooled_net(global_pool: bool, opset=18):
    """x [N, 2, 6, 6] -> Conv -> Relu -> Conv -> Relu -> global average -> Gemm: the pool as GlobalAveragePool and
    Flatten (the TorchScript exporter's nn.AdaptiveAvgPool2d(1)) or ReduceMean over axes 2, 3 and Reshape (the
    dynamo exporter's)."""
    rng = np.random.default_rng(7)
    w1, w2 = rng.standard_normal((4, 2, 3, 3)).astype(np.float32), rng.standard_normal((5, 4, 3, 3)).astype(np.float32)
    fc = rng.standard_normal((3, 5)).astype(np.float32)
    pool = [helper.make_node("GlobalAveragePool", ["r2"], ["p"]), helper.make_node("Flatten", ["p"], ["f"])] \
        if global_pool else [helper.make_node("ReduceMean", ["r2", "spatial"], ["p"], keepdims=1),
                             helper.make_node("Reshape", ["p", "flat"], ["f"])]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]), *pool, helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    inits = [("w1", w1), ("w2", w2), ("fc", fc)] + ([] if global_pool else [
        ("spatial", np.array([2, 3], np.int64)), ("flat", np.array([0, -1], np.int64))])
    g = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(a, n) for n, a in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.epsilon_plus_flat", "lrp.alpha_1_beta_0", "deep_taylor"])
def test_a_reduce_mean_over_the_spatial_axes_is_a_global_average_pool(method):
    """The two exports of one torch model give one map: before, the ReduceMean passed relevance on by its gradient
    (R/n to every position), where the pool's z rule gives each position its share of the mean."""
    x = np.abs(np.random.default_rng(8).standard_normal((2, 2, 6, 6))).astype(np.float32)
    pooled, reduced = (ort.InferenceSession(onnxattr.compile(_pooled_net(flag), method).SerializeToString()).run(
        ["relevance"], {"x": x})[0] for flag in (True, False))
    assert np.abs(pooled).max() > 0
    np.testing.assert_allclose(reduced, pooled, rtol=0, atol=1e-5 * np.abs(pooled).max())


@pytest.mark.parametrize("reduce", ["ReduceMean", "ReduceSum"])
@pytest.mark.parametrize("method", ["lrp.z", "lrp.epsilon", "lrp.alpha_1_beta_0"])
def test_a_reduction_that_makes_the_explained_output_is_a_pool(reduce, method):
    """A depth model's mean depth, a regression's total: y = mean (or sum) of a Conv's map m, through a Flatten
    and a Reshape. Each position gets its share of y, R_i = m_i y / sum(m) (lrp.z; the Conv then hands it on
    as z = x w: R_x = 2 x / n). Under the gradient every position got y / n (a mean) or y (a sum: n times y in
    all), whatever it contributed."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Flatten", ["c"], ["f"], axis=1),
             helper.make_node(reduce, ["f", "axes"], ["r"], keepdims=1),
             helper.make_node("Reshape", ["r", "shape"], ["y"])]
    inits = [numpy_helper.from_array(np.full((1, 1, 1, 1), 2, np.float32), "w"),
             numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.array([-1, 1], np.int64), "shape")]
    g = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.5, 1.5], [2.5, 3.5]]]], np.float32)
    r = ort.InferenceSession(onnxattr.compile(model, method).SerializeToString()).run(["relevance"], {"x": x})[0]
    want = 2 * x / (4 if reduce == "ReduceMean" else 1)
    np.testing.assert_allclose(r, want, rtol=1e-5)  # lrp.epsilon's 1e-6 and alpha-beta on positive x: the same


@pytest.mark.parametrize("preset", ["lrp.z", "lrp.epsilon_plus", "lrp.alpha_2_beta_1"])
def test_channels_last_global_mean_is_the_average_pool(preset):
    """tf2onnx writes Keras' GlobalAveragePooling2D as GlobalAveragePool where it can move the layout back to
    channels first, and as a ReduceMean over axes 1, 2 of [N, H, W, C] where it cannot (a Keras net with a
    channels-last LayerNorm): both are the pool, with the pool's rule, and give one map (before, the ReduceMean
    took its gradient)."""
    from tests.models import single_io_model

    rng = np.random.default_rng(5)
    inits = {"W": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
             "D": rng.standard_normal((4, 3)).astype(np.float32), "flat": np.array([-1, 4], np.int64)}
    mk = helper.make_node
    head = [mk("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), mk("Relu", ["c"], ["r"])]
    tail = [mk("Reshape", ["p", "flat"], ["q"]), mk("MatMul", ["q", "D"], ["y"])]
    nchw = head + [mk("GlobalAveragePool", ["r"], ["p"])] + tail
    nhwc = head + [mk("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
                   mk("ReduceMean", ["t"], ["p"], axes=[1, 2], keepdims=1)] + tail
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    maps = []
    for nodes in (nchw, nhwc):
        model = single_io_model(nodes, inits, ["N", 2, 6, 6], ["N", 3])
        compiled = onnxattr.compile(model, preset)
        maps.append(ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0])
    np.testing.assert_allclose(maps[1], maps[0], rtol=1e-5, atol=1e-6 * np.abs(maps[0]).max())
