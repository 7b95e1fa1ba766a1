"""Each LRP rule against an independent numpy reference written in the pairwise form of the papers:
contributions z_jk of input j to output k, R_j = sum_k z_jk / z_k R_k. The compiled graphs compute
the same numbers through modified forwards and VJPs, a different route.

One linear layer (dense MatMul+Add, a Gemm with alpha, beta and transB, a MatMul with the weight on
the left, or a Conv or strided ConvTranspose with bias turned into its explicit matrix), explained in
mode "all" with the logit seed, so R_out = z. Tolerance 1e-4 relative to the map's largest |value|:
float32 against float64, with denominators bounded away from zero by the chosen inputs.
"""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnxattr

RNG = np.random.default_rng(7)


def dense_model():
    w = RNG.standard_normal((5, 4)).astype(np.float32)
    b = RNG.standard_normal(4).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"])], "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return m, w.astype(np.float64), b.astype(np.float64), (5,)


def conv_model():
    w = RNG.standard_normal((3, 2, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(3).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["z"], pads=[1, 0, 1, 1], strides=[1, 2])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 6])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3, 5, 3])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    # explicit matrix: column k of M is the conv (without bias) of the k-th basis image
    nobias = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["z"], pads=[1, 0, 1, 1], strides=[1, 2])], "c",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, None)],
        [helper.make_tensor_value_info("z", TensorProto.DOUBLE, None)],
        [numpy_helper.from_array(w.astype(np.float64), "W")]), opset_imports=[helper.make_opsetid("", 17)])
    basis = np.eye(2 * 5 * 6).reshape(-1, 2, 5, 6)
    out = ReferenceEvaluator(nobias).run(None, {"x": basis})[0]
    matrix = out.reshape(out.shape[0], -1)  # [J, K]
    bias = np.repeat(b.astype(np.float64), out.shape[2] * out.shape[3])
    return m, matrix, bias, (2, 5, 6)


def conv_transpose_model():
    """A strided ConvTranspose with bias (LRP units.py's ConvTranspose kind), and its explicit matrix. Eight
    input channels: each output sums enough taps that its denominators stay away from 0."""
    w = RNG.standard_normal((8, 2, 3, 3)).astype(np.float32)  # [C_in, C_out, kh, kw]
    b = RNG.standard_normal(2).astype(np.float32)
    attrs = {"strides": [2, 2], "pads": [1, 1, 0, 0]}
    g = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "W", "B"], ["z"], **attrs)], "convt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 2, 2])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    nobias = helper.make_model(helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "W"], ["z"], **attrs)], "c",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, None)],
        [helper.make_tensor_value_info("z", TensorProto.DOUBLE, None)],
        [numpy_helper.from_array(w.astype(np.float64), "W")]), opset_imports=[helper.make_opsetid("", 17)])
    out = ReferenceEvaluator(nobias).run(None, {"x": np.eye(8 * 2 * 2).reshape(-1, 8, 2, 2)})[0]
    assert out.shape[1:] == (2, 4, 4)
    return m, out.reshape(out.shape[0], -1), np.repeat(b.astype(np.float64), 4 * 4), (8, 2, 2)


def gemm_model():
    """Gemm with transB = 1, alpha = 0.5, beta = 2: the rules see W' = alpha W^T and b' = beta c."""
    w = RNG.standard_normal((4, 5)).astype(np.float32)  # [K, J], read transposed
    c = RNG.standard_normal(4).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W", "C"], ["z"], transB=1, alpha=0.5, beta=2.0)], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(c, "C")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return m, 0.5 * w.T.astype(np.float64), 2.0 * c.astype(np.float64), (5,)


def left_matmul_model():
    """MatMul(W, x) with the constant on the left (a graph convolution's A X): it mixes x's rows, each of
    its 3 columns on its own; no bias. Explicit matrix from the basis inputs, as for the conv."""
    w = RNG.standard_normal((4, 5)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["W", "x"], ["z"])], "left",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4, 3])],
        [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    out = np.einsum("mk,jkf->jmf", w.astype(np.float64), np.eye(5 * 3).reshape(-1, 5, 3))
    return m, out.reshape(out.shape[0], -1), np.zeros(4 * 3), (5, 3)


def left_matmul_bias_model():
    """MatMul(W, x) then Add of a per-row bias [4, 1] (fused into the layer, as a right MatMul's bias is)."""
    m, matrix, _, shape = left_matmul_model()
    b = RNG.standard_normal((4, 1)).astype(np.float32)
    g = m.graph
    g.node[0].output[0] = "h"
    g.node.append(helper.make_node("Add", ["h", "B"], ["z"]))
    g.initializer.append(numpy_helper.from_array(b, "B"))
    return m, matrix, np.repeat(b.astype(np.float64).reshape(-1), 3), shape


LAYERS = {"dense": dense_model, "conv": conv_model, "conv_transpose": conv_transpose_model, "gemm": gemm_model,
          "left_matmul": left_matmul_model, "left_matmul_bias": left_matmul_bias_model}


def safe(z, eps=1e-7):
    return z + eps * (z == 0)


def signed(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


DENOMINATORS = []  # every denominator the last reference() used


def share(pairs, den, r):
    """R_j = sum_k pairs_jk / den_k R_k for pairs [N, J, K]. Only denominators that matter are recorded
    for the conditioning check: an output k with R_k = 0, or whose contributions pairs_jk are all exactly 0
    (no positive weight in its receptive field, for z+), adds exactly 0 whatever its denominator."""
    DENOMINATORS.append(np.where((r != 0) & (np.abs(pairs).sum(1) > 0), den, np.inf))
    return (pairs / den[:, None, :] * r[:, None, :]).sum(-1)


def reference(rule, x, m, b, opts):
    x = x.reshape(len(x), -1).astype(np.float64)
    z = x @ m + b
    r = z  # mode "all" with the logit seed
    pairs = x[:, :, None] * m[None]
    pos, neg = np.maximum(pairs, 0), np.minimum(pairs, 0)
    if rule == "z":
        return share(pairs, safe(z), r)
    if rule == "z_IB":
        return share(pairs, safe(pairs.sum(1)), r)
    if rule == "epsilon":
        return share(pairs, signed(z, opts["epsilon"]), r)
    if rule == "epsilon_IB":
        return share(pairs, signed(pairs.sum(1), opts["epsilon"]), r)
    if rule == "w_square":
        sq = np.broadcast_to(m[None] ** 2, pairs.shape)
        return share(sq, safe(sq.sum(1)), r)
    if rule == "flat":
        ones = np.broadcast_to((m != 0)[None], pairs.shape).astype(np.float64)  # the receptive fields
        return share(ones, safe(ones.sum(1)), r)
    if rule in ("alpha_beta", "alpha_beta_IB"):
        a, be = opts["alpha"], opts["beta"]
        bias = b if rule == "alpha_beta" else 0.0
        out = a * share(pos, safe(pos.sum(1) + bias), r)
        if be:
            out = out - be * share(neg, safe(neg.sum(1) + bias), r)
        return out
    if rule == "z_plus_fast":
        p = x[:, :, None] * np.maximum(m, 0)[None]
        return share(p, safe(p.sum(1)), r)
    if rule == "gamma":
        g = opts["gamma"]
        xp, xn = np.maximum(x, 0)[:, :, None], np.minimum(x, 0)[:, :, None]
        mp, mn = np.maximum(m, 0)[None], np.minimum(m, 0)[None]
        up = xp * (m + g * mp) + xn * (m + g * mn)
        down = xp * (m + g * mn) + xn * (m + g * mp)
        rp = share(up, signed(up.sum(1) + b + g * np.maximum(b, 0), 1e-6), r * (z > 0))
        rn = share(down, signed(down.sum(1) + b + g * np.minimum(b, 0), 1e-6), r * (z < 0))
        return rp + rn
    if rule == "zbox":
        lo, hi = opts["low"], opts["high"]
        p = pairs - lo * np.maximum(m, 0)[None] - hi * np.minimum(m, 0)[None]
        return share(p, signed(p.sum(1), 1e-6), r)
    raise AssertionError(rule)


CASES = [  # (method or inline rule file, reference rule, options)
    ("lrp.z", "z", {}),
    ("lrp.z_IB", "z_IB", {}),
    ("lrp.epsilon", "epsilon", {"epsilon": 1e-7}),
    ("lrp.epsilon_IB", "z_IB", {}),  # epsilon 1e-7 is invisible next to these denominators
    ("lrp.w_square", "w_square", {}),
    ("lrp.flat", "flat", {}),
    ("lrp.alpha_2_beta_1", "alpha_beta", {"alpha": 2, "beta": 1}),
    ("lrp.alpha_2_beta_1_IB", "alpha_beta_IB", {"alpha": 2, "beta": 1}),
    ("lrp.alpha_1_beta_0", "alpha_beta", {"alpha": 1, "beta": 0}),
    ("lrp.alpha_1_beta_0_IB", "alpha_beta_IB", {"alpha": 1, "beta": 0}),
    ("lrp.z_plus", "alpha_beta_IB", {"alpha": 1, "beta": 0}),
    ("lrp.z_plus_fast", "z_plus_fast", {}),
    ('style = "zennit"\n[layers]\ndefault = { rule = "gamma", gamma = 0.5 }', "gamma", {"gamma": 0.5}),
    ('style = "zennit"\n[layers]\ndefault = { rule = "zbox", low = -1.0, high = 2.0 }', "zbox",
     {"low": -1.0, "high": 2.0}),
    ('[layers]\ndefault = { rule = "epsilon", epsilon = 0.5 }', "epsilon", {"epsilon": 0.5}),
    ('[layers]\ndefault = { rule = "epsilon_IB", epsilon = 0.5 }', "epsilon_IB", {"epsilon": 0.5}),
]


def well_conditioned(rng, shape, rule, m, b, opts, non_negative=False):
    """(x [3, *shape], the reference map of ``rule`` there) for the first draw whose denominators all stay 0.05
    away from 0: a fair float32 comparison."""
    for _ in range(200):
        x = rng.standard_normal((3,) + shape).astype(np.float32)
        if non_negative:
            x = np.abs(x)
        DENOMINATORS.clear()
        want = reference(rule, x, m, b, opts).reshape(x.shape)
        if min(np.abs(d).min() for d in DENOMINATORS) > 0.05:
            return x, want
    pytest.fail("no well-conditioned input found")

@pytest.mark.parametrize("layer", list(LAYERS))
@pytest.mark.parametrize("method,rule,opts", CASES, ids=[c[0][:24].replace("\n", " ") for c in CASES])
def test_rule_matches_pairwise_reference(layer, method, rule, opts, tmp_path):
    model, m, b, shape = LAYERS[layer]()
    if method.startswith("lrp."):
        key = method
    else:
        key = str(tmp_path / "rule.toml")
        (tmp_path / "rule.toml").write_text(method)
    x, want = well_conditioned(np.random.default_rng(len(CASES)), shape, rule, m, b, opts,
                               non_negative=rule == "z_plus_fast")
    compiled = onnxattr.compile(model, key, neuron="all")
    got = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= 1e-4 * scale, (np.abs(got - want).max(), scale)


@pytest.mark.parametrize("method", ["lrp.z", "lrp.epsilon", "lrp.alpha_2_beta_1", "lrp.w_square", "deep_taylor"])
def test_gemm_with_the_weight_on_the_left_is_that_matmul_plus_bias(method):
    """Gemm(A, x, C) with transA, alpha 0.5, beta 2 (torch.addmm's export, 2-D x) is z = 0.5 A^T x + 2 C: the
    same layer as MatMul(0.5 A^T, x) + Add(2 C), so the same map (that form is checked above)."""
    a = RNG.standard_normal((5, 4)).astype(np.float32)
    c = RNG.standard_normal((4, 1)).astype(np.float32)
    x = np.abs(RNG.standard_normal((5, 3))).astype(np.float32)
    io = ([helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 3])],
          [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 3])])
    gemm = helper.make_model(helper.make_graph(
        [helper.make_node("Gemm", ["A", "x", "C"], ["z"], transA=1, alpha=0.5, beta=2.0)], "g", *io,
        [numpy_helper.from_array(a, "A"), numpy_helper.from_array(c, "C")]),
        opset_imports=[helper.make_opsetid("", 17)])
    plain = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["W", "x"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"])], "m", *io,
        [numpy_helper.from_array(0.5 * a.T, "W"), numpy_helper.from_array(2 * c, "B")]),
        opset_imports=[helper.make_opsetid("", 17)])

    def run(model):
        compiled = onnxattr.compile(model, method, neuron="all")
        return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]

    want = run(plain)
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(run(gemm), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_z_plus_equals_alpha_1_beta_0_ib():
    model, *_ = conv_model()
    x = RNG.standard_normal((2, 2, 5, 6)).astype(np.float32)
    maps = [ort.InferenceSession(onnxattr.compile(model, name).SerializeToString()).run(["relevance"], {"x": x})[0]
            for name in ("lrp.z_plus", "lrp.alpha_1_beta_0_IB")]
    np.testing.assert_array_equal(maps[0], maps[1])


def test_excitation_backprop_is_the_marginal_winning_probability():
    """Zhang et al. 2016 on x -> W1 -> relu -> W2 (no biases), seeded with probability 1 at the top
    neuron: P(h_j) = h_j sum_k W2+_jk P_k / sum_j' h_j' W2+_j'k, then the same from h down to x."""
    from tests.models import mlp

    model, (w1, b1, w2) = mlp(softmax=False)
    for init in model.graph.initializer:  # drop the bias: the rule ignores it anyway, the net must not
        if init.name == "b1":
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(b1), "b1"))
    x = np.abs(RNG.standard_normal((3, 6))).astype(np.float64)
    h = np.maximum(x @ w1, 0)
    top = (h @ w2).argmax(1)
    p_out = np.eye(w2.shape[1])[top]
    w1p, w2p = np.maximum(w1, 0), np.maximum(w2, 0)
    p_h = h * ((p_out / (h @ w2p)) @ w2p.T)
    p_x = x * ((p_h / safe(x @ w1p)) @ w1p.T)
    got = ort.InferenceSession(onnxattr.compile(model, "excitation_backprop").SerializeToString()).run(
        ["relevance"], {"x": x.astype(np.float32)})[0]
    np.testing.assert_allclose(got, p_x, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-4)  # a probability distribution over the input


@pytest.mark.parametrize("preset,rule", [("lrp.epsilon", "epsilon"), ("lrp.epsilon_IB", "epsilon_IB")])
def test_preset_epsilon_parameter_reaches_the_rule(preset, rule, tmp_path):
    """--set epsilon=0.5 on the preset gives the map of a rule file with epsilon 0.5, not the default's."""
    model, *_ = dense_model()
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    (tmp_path / "r.toml").write_text(f'[layers]\ndefault = {{ rule = "{rule}", epsilon = 0.5 }}')

    def run(key, **params):
        c = onnxattr.compile(model, key, neuron="all", **params)
        return ort.InferenceSession(c.SerializeToString()).run(["relevance"], {"x": x})[0]

    set_half, file_half, default = run(preset, epsilon=0.5), run(str(tmp_path / "r.toml")), run(preset)
    np.testing.assert_allclose(set_half, file_half, rtol=1e-6, atol=1e-7)
    assert np.abs(set_half - default).max() > 1e-3 * np.abs(default).max()


@pytest.mark.parametrize("method,rule,opts", [
    ("lrp.alpha_2_beta_1", "alpha_beta", {"alpha": 2, "beta": 1}), ("lrp.w_square", "w_square", {}),
    ("lrp.flat", "flat", {}),
    ('style = "zennit"\n[layers]\ndefault = { rule = "gamma", gamma = 0.5 }', "gamma", {"gamma": 0.5}),
], ids=["alpha_2_beta_1", "w_square", "flat", "gamma"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_rules_on_weights_known_only_at_run_time(method, rule, opts, side, tmp_path):
    """W fed as a second graph input (explaining x): W+, W-, W^2, ones and W + gamma W+ are computed in the
    graph (Max/Min/Mul/ConstantOfShape) instead of at compile time, with the same map. ``left``: W x
    without bias (a graph convolution's adjacency fed at run time), W^T transposed in the graph."""
    if side == "right":
        _, m, b, shape = dense_model()
        w = m
        nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "B"], ["z"])]
        inits = [numpy_helper.from_array(b.astype(np.float32), "B")]
        shapes = (["N", 5], [5, 4], ["N", 4])
    else:
        _, m, b, shape = left_matmul_model()
        w = RNG.standard_normal((4, 5)).astype(np.float32).astype(np.float64)
        m = np.einsum("mk,jkf->jmf", w, np.eye(5 * 3).reshape(-1, 5, 3)).reshape(15, -1)
        nodes, inits, shapes = [helper.make_node("MatMul", ["W", "x"], ["z"])], [], (["N", 5, 3], [4, 5], ["N", 4, 3])
    g = helper.make_graph(
        nodes, "runtime_w",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shapes[0]),
         helper.make_tensor_value_info("W", TensorProto.FLOAT, shapes[1])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, shapes[2])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    key = method
    if not method.startswith("lrp."):
        key = str(tmp_path / "rule.toml")
        (tmp_path / "rule.toml").write_text(method)
    x, want = well_conditioned(np.random.default_rng(3), shape, rule, m, b, opts)
    compiled = onnxattr.compile(model, key, neuron="all", input="x")
    got = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x, "W": w.astype(np.float32)})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())
