"""onnxattr/emitters/normalization.py: BatchNormalization, LRN, LayerNormalization, InstanceNormalization,
GroupNormalization, RMSNormalization, LpNormalization."""

import numpy as np
import pytest

from tests.vjp_check import check_vjp, run_vjp

rng = np.random.default_rng(8)
r = rng.standard_normal


@pytest.mark.parametrize("dynamic", [(), (0, 2, 3)])
def test_batchnorm(dynamic):
    c = 3
    check_vjp("BatchNormalization",
              [("x", r((2, c, 4, 5)), False), ("g", r(c), True), ("b", r(c), True), ("m", r(c), True),
               ("v", rng.random(c) + 0.5, True)], {"epsilon": 1e-3}, dynamic=dynamic)


def _batchnorm_after_squeeze(squeeze_rank_unknown: bool):
    """x [N, 3, L, 1] -> Squeeze of axis 3 -> BatchNormalization (constant statistics) -> y [N, 3, L]. The axis is a
    constant, or computed from x's shape (0 * N + 3), so that shape inference cannot tell the Squeeze's rank."""
    from onnx import TensorProto, helper, numpy_helper

    c, draw = 3, np.random.default_rng(5)
    inits = {"g": draw.random(c) + 0.5, "b": draw.random(c) + 2, "m": draw.standard_normal(c) * 0.1,
             "v": draw.random(c) + 0.5}  # positive outputs: Deep Taylor's map is not all 0
    inits = {k: v.astype(np.float32) for k, v in inits.items()}
    if squeeze_rank_unknown:
        inits.update(start=np.array([0]), end=np.array([1]), three=np.array([3]))
        nodes = [helper.make_node("Shape", ["x"], ["shape"]),
                 helper.make_node("Slice", ["shape", "start", "end"], ["n"]),
                 helper.make_node("Sub", ["n", "n"], ["zero"]), helper.make_node("Add", ["zero", "three"], ["axes"])]
    else:
        inits["axes"] = np.array([3])
        nodes = []
    nodes += [helper.make_node("Squeeze", ["x", "axes"], ["s"]),
              helper.make_node("BatchNormalization", ["s", "g", "b", "m", "v"], ["y"], name="bn")]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "g", [vi("x", TensorProto.FLOAT, ["N", c, "L", 1])],
                              [vi("y", TensorProto.FLOAT, ["N", c, "L"])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("method", ["gradient", "lrp.epsilon", "lrp.alpha_2_beta_1", "deep_taylor"])
def test_batchnorm_of_an_input_of_unknown_rank(method):
    """A BatchNormalization whose input's rank shape inference cannot tell: its per-channel scale and shift take
    the rank at run time. They were shaped for rank 4, so on an [N, C, L] input the map came out [C, C, L] and the
    run failed at the Squeeze's backward. The map equals the same net's with the rank known."""
    import onnxruntime as ort

    import onnxattr

    x = np.abs(r((1, 3, 5, 1))).astype(np.float32)
    maps = [ort.InferenceSession(onnxattr.compile(_batchnorm_after_squeeze(unknown), method,
                                                  neuron="all").SerializeToString()).run(["relevance"], {"x": x})[0]
            for unknown in (False, True)]
    assert maps[0].shape == x.shape and np.abs(maps[0]).max() > 0
    np.testing.assert_allclose(maps[1], maps[0], rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 3, 6)])
def test_batchnorm_statistics_that_vary(shape):
    """tf2onnx writes Keras' LayerNormalization as a BatchNormalization whose mean and variance are computed from
    the input: every operand gets its gradient."""
    c = shape[1]
    check_vjp("BatchNormalization",
              [("x", r(shape), False), ("g", r(c), False), ("b", r(c), False), ("m", r(c), False),
               ("v", rng.random(c) + 0.5, False)], {"epsilon": 1e-3}, wrt=["x", "g", "b", "m", "v"])


def lrn_numpy(x, size, alpha, beta, bias):
    """The ONNX spec's LRN in float64 (onnx's reference LRN disagrees with the spec and onnxruntime)."""
    sq = np.zeros_like(x)
    channels = x.shape[1]
    for c in range(channels):
        lo, hi = max(0, c - (size - 1) // 2), min(channels - 1, c + size // 2)
        sq[:, c] = (x[:, lo:hi + 1] ** 2).sum(1)
    return x / (bias + alpha / size * sq) ** beta


@pytest.mark.parametrize("size", [3, 5])  # onnxruntime accepts odd sizes only
def test_lrn(size):
    attrs = {"size": size, "alpha": 0.5, "beta": 0.75, "bias": 1.5}
    check_vjp("LRN", [("x", r((2, 6, 3, 3)), False)], attrs,
              numpy_ref=lambda f: lrn_numpy(f["x"], **attrs))


def test_layernorm():
    check_vjp("LayerNormalization", [("x", r((2, 3, 6)), False), ("g", r(6), True), ("b", r(6), True)],
              {"axis": -1, "epsilon": 1e-5})


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 3, 4, 4)])
@pytest.mark.parametrize("const_scale", [True, False])
def test_instancenorm(shape, const_scale):
    """Normalized over the spatial axes of each (sample, channel); the scale per channel, a constant or
    fed (then reshaped in the graph)."""
    check_vjp("InstanceNormalization", [("x", r(shape), False), ("s", r(3), const_scale), ("b", r(3), True)],
              {"epsilon": 1e-3}, dynamic=(0,))


@pytest.mark.parametrize("op,shape,param", [("InstanceNormalization", (2, 3, 5), (3,)),
                                            ("LayerNormalization", (2, 3, 6), (6,)),
                                            ("LayerNormalization", (2, 3, 6), (3, 6))])
def test_norm_scale_and_bias_that_vary(op, shape, param):
    """A conditional norm, whose scale and bias are computed from the input: both get their gradient."""
    attrs = {"epsilon": 1e-3} if op == "InstanceNormalization" else {"axis": -len(param), "epsilon": 1e-3}
    check_vjp(op, [("x", r(shape), False), ("s", r(param), False), ("b", r(param), False)], attrs,
              wrt=["x", "s", "b"])


@pytest.mark.parametrize("shape,groups", [((2, 6, 3, 4), 3), ((2, 4, 5), 2), ((2, 4, 3, 3), 4), ((3, 6), 1)])
def test_groupnorm(shape, groups):
    """Normalized over each (sample, group), scale and bias per channel (opset 21; torch's dynamo exporter writes
    it from opset 21 on)."""
    scale, bias = r(shape[1]), r(shape[1])
    check_vjp("GroupNormalization", [("x", r(shape), False), ("s", scale, True), ("b", bias, True)],
              {"num_groups": groups, "epsilon": 1e-3}, dynamic=(0,), opset=21,
              numpy_ref=lambda f: groupnorm_numpy(f["x"], scale, bias, groups, 1e-3))


def groupnorm_numpy(x, scale, bias, groups, eps):
    """GroupNormalization-21 in float64 (onnx's reference computes the statistics in float32, its stash_type)."""
    rows = x.reshape(x.shape[0], groups, -1)
    xhat = ((rows - rows.mean(2, keepdims=True)) / np.sqrt(rows.var(2, keepdims=True) + eps)).reshape(x.shape)
    per_channel = (-1,) + (1,) * (x.ndim - 2)
    return xhat * scale.reshape(per_channel) + bias.reshape(per_channel)


def test_groupnorm_opset_18_refused():
    """Opset 18's per-group scale (deprecated; onnx.checker refuses it when a model is loaded)."""
    with pytest.raises(Exception, match="only opset 21's form"):
        check_vjp("GroupNormalization", [("x", r((2, 4, 3)), False), ("s", r(2), True), ("b", r(2), True)],
                  {"num_groups": 2}, opset=18)


def test_groupnorm_varying_scale_refused():
    with pytest.raises(Exception, match="GroupNormalization 'node': a scale or bias computed from the explained"):
        check_vjp("GroupNormalization", [("x", r((2, 4, 3)), False), ("s", r(4), False), ("b", r(4), True)],
                  {"num_groups": 2}, wrt=["x", "s"], opset=21)


@pytest.mark.parametrize("shape,axis,param", [((2, 3, 6), -1, (6,)), ((2, 3, 4, 4), 1, (3, 4, 4)),
                                              ((2, 3, 4), 1, (1, 4))])
def test_rmsnorm(shape, axis, param):
    check_vjp("RMSNormalization", [("x", r(shape), False), ("s", r(param), True)], {"axis": axis, "epsilon": 1e-3},
              dynamic=(0,), opset=23)


def test_rmsnorm_scale_that_varies():
    check_vjp("RMSNormalization", [("x", r((2, 3, 6)), False), ("s", r(6), False)], {"epsilon": 1e-3},
              wrt=["x", "s"], opset=23)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [-1, 1])
def test_lp_normalization(p, axis):
    """Against numpy: onnx's reference LpNormalization divides by the plain sum for p = 1 (onnxruntime by the sum
    of absolute values, as the operator's definition says)."""
    check_vjp("LpNormalization", [("x", r((2, 3, 4)), False)], {"p": p, "axis": axis}, dynamic=(0,),
              numpy_ref=lambda f: f["x"] / np.linalg.norm(f["x"], ord=p, axis=axis, keepdims=True))


@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization_of_a_zero_vector(p):
    """onnxruntime normalizes a zero vector to 0 (onnx's test_l2normalization_axis_0 holds one): its gradient is 0
    there, not g / 0 (inf or NaN, which made the whole map NaN), and the other vectors keep theirs."""
    x = r((2, 3, 4)).astype(np.float32)
    x[1, :, 2] = 0.0
    g = r((2, 3, 4)).astype(np.float32)
    (dx,) = run_vjp("LpNormalization", [("x", x, False)], g, {"p": p, "axis": 1})
    assert np.all(dx[1, :, 2] == 0)
    n = np.linalg.norm(x, ord=p, axis=1, keepdims=True)
    d = np.sign(x) if p == 1 else x / n
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = (g - d * np.sum(g * x / n, axis=1, keepdims=True)) / n
    keep = np.ones(x.shape, bool)
    keep[1, :, 2] = False
    np.testing.assert_allclose(dx[keep], expected[keep], rtol=1e-5, atol=1e-6)
