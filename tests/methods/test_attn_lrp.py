"""AttnLRP: closed forms of each rule on small graphs, conservation where the rules conserve, and the rules
the path gets (LXT's maps on two transformers are in test_oracles, tests/oracles/make_lxt.py)."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnxattr
from tests.lrp.nets import SE_EXPORTS, resnet_like, se_export
from tests.models import mlp, single_io_model

RNG = np.random.default_rng(0)


def run(model, x, method="attn_lrp", **kw):
    sess = ort.InferenceSession(onnxattr.compile(model, method, **kw).SerializeToString(),
                               providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})


def rules(model):
    """(op type, rule) of every node on the explained path."""
    return [(op, rule) for _, op, rule, _ in onnxattr.api.inspect(model, "attn_lrp")]


def test_equals_input_times_gradient_without_products_or_smooth_activations():
    """Relu nets: the identity rule of a Relu is its gradient, and the rest keeps the gradient (z rule)."""
    x = RNG.standard_normal((3, 2, 8, 8)).astype(np.float32)
    model = resnet_like(bias=True)
    np.testing.assert_allclose(run(model, x)[1], run(model, x, "input_t_gradient")[1], rtol=1e-6, atol=1e-7)
    x2 = RNG.standard_normal((4, 6)).astype(np.float32)
    m2, _ = mlp(softmax=False)
    np.testing.assert_allclose(run(m2, x2)[1], run(m2, x2, "input_t_gradient")[1], rtol=1e-6, atol=1e-7)


def _bilinear():
    """y = sum over features of (x W1) * (x W2): a product of two activations of x."""
    w1, w2 = RNG.standard_normal((2, 5, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("MatMul", ["x", "W2"], ["b"]),
             helper.make_node("Mul", ["a", "b"], ["p"]),
             helper.make_node("ReduceSum", ["p", "axes"], ["y"], keepdims=1)]
    return single_io_model(nodes, {"W1": w1, "W2": w2, "axes": np.array([1])}, ["N", 5], ["N", 1])


def test_uniform_rule_halves_a_product():
    """y is homogeneous of degree 2 in x: x * grad sums to 2y; the uniform rule gives each factor half, so the
    map is exactly half of input times gradient and sums to y."""
    model = _bilinear()
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    y, r = run(model, x)
    np.testing.assert_allclose(r, 0.5 * run(model, x, "input_t_gradient")[1], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(r.sum(1), y[:, 0], rtol=1e-5)
    assert ("Mul", "uniform") in rules(model)


def _activation_net(act_nodes):
    """x[N,5] -> MatMul W1 -> h -> (act_nodes: h -> f) -> MatMul W2 -> y[N,3]; no biases."""
    w1 = RNG.standard_normal((5, 7)).astype(np.float32)
    w2 = RNG.standard_normal((7, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), *act_nodes, helper.make_node("MatMul", ["f", "W2"], ["y"])]
    inits = {"W1": w1, "W2": w2, "half": np.float32(0.5), "one": np.float32(1.0), "root2": np.float32(np.sqrt(2)),
             "k3": np.float32(0.044715), "c": np.float32(np.sqrt(2 / np.pi))}
    return single_io_model(nodes, inits, ["N", 5], ["N", 3]), w1, w2


def test_identity_rule_closed_form():
    """Tanh between two bias-free layers: R = x * W1 (tanh(h) / h * W2[:, k])."""
    model, w1, w2 = _activation_net([helper.make_node("Tanh", ["h"], ["f"])])
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    y, r = run(model, x)
    h = x @ w1
    k = y.argmax(1)
    want = x * ((np.tanh(h) / h * w2[:, k].T) @ w1.T)
    np.testing.assert_allclose(r, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.sum(1), y[np.arange(4), k], rtol=1e-5)  # bias-free: conserved


def test_gates_are_held_constant():
    """SiLU, exported GELU and GPT-2's gelu_new (x, or 0.5 x, times a function of x alone), in either operand
    order: the whole activation passes relevance, the map sums to the logit of a bias-free net, and the gate's
    branch gets none."""
    silu = [helper.make_node("Sigmoid", ["h"], ["s"]), helper.make_node("Mul", ["s", "h"], ["f"])]
    gelu = [helper.make_node("Div", ["h", "root2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["e1"]), helper.make_node("Mul", ["h", "e1"], ["m"]),
            helper.make_node("Mul", ["m", "half"], ["f"])]
    # GPT-2's gelu_new: 0.5 x (1 + tanh(c (x + 0.044715 x^3))), the gate multiplying 0.5 x, not x
    gelu_new = [helper.make_node("Mul", ["h", "half"], ["hh"]), helper.make_node("Mul", ["h", "h"], ["h2"]),
                helper.make_node("Mul", ["h2", "h"], ["h3"]), helper.make_node("Mul", ["h3", "k3"], ["c3"]),
                helper.make_node("Add", ["h", "c3"], ["inner"]), helper.make_node("Mul", ["inner", "c"], ["arg"]),
                helper.make_node("Tanh", ["arg"], ["th"]), helper.make_node("Add", ["th", "one"], ["t1"]),
                helper.make_node("Mul", ["hh", "t1"], ["f"])]
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    c = np.sqrt(2 / np.pi)
    for act, f in ((silu, lambda h: h / (1 + np.exp(-h))),
                   (gelu, lambda h: 0.5 * h * (1 + np.vectorize(__import__("math").erf)(h / np.sqrt(2)))),
                   (gelu_new, lambda h: 0.5 * h * (1 + np.tanh(c * (h + 0.044715 * h ** 3))))):
        model, w1, w2 = _activation_net(act)
        y, r = run(model, x)
        k = y.argmax(1)
        h = x @ w1
        want = x * ((f(h) / h * w2[:, k].T) @ w1.T)
        np.testing.assert_allclose(r, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(r.sum(1), y[np.arange(4), k], rtol=1e-4)
        assert "gate" in [r for op, r in rules(model) if op == "Mul"]
        assert "uniform" not in {r for _, r in rules(model)}


def held_std_map(x, w1, w2, gamma, k):
    """x * W1 (gamma g - mean(gamma g)) / std with g = W2[:, k] and std that of x W1: the map of W2 after a
    LayerNorm (beta 0) held at its std, after W1."""
    h = x @ w1
    std = np.sqrt(h.var(1, keepdims=True) + 1e-5)
    gg = gamma * w2[:, k].T
    return x * (((gg - gg.mean(1, keepdims=True)) / std) @ w1.T)


def test_layernorm_holds_its_std():
    """LayerNormalization (beta = 0) between bias-free layers: centring is linear and the std a constant, so
    relevance is conserved; the map is x * W1 (gamma g - mean(gamma g)) / std with g = W2[:, k]."""
    w1 = RNG.standard_normal((5, 7)).astype(np.float32)
    w2 = RNG.standard_normal((7, 3)).astype(np.float32)
    gamma = RNG.uniform(0.5, 2, 7).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]),
             helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["f"], axis=-1, epsilon=1e-5),
             helper.make_node("MatMul", ["f", "W2"], ["y"])]
    model = single_io_model(nodes, {"W1": w1, "W2": w2, "gamma": gamma, "beta": np.zeros(7, np.float32)},
                            ["N", 5], ["N", 3])
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    y, r = run(model, x)
    k = y.argmax(1)
    np.testing.assert_allclose(r, held_std_map(x, w1, w2, gamma, k), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r.sum(1), y[np.arange(4), k], rtol=1e-4)
    assert ("LayerNormalization", "layernorm") in rules(model)


def test_zero_pre_activation_gives_a_finite_map():
    """f(x) / x at x = 0 is taken as 0: a unit whose input is exactly 0 passes nothing and breaks nothing."""
    model, w1, w2 = _activation_net([helper.make_node("Sigmoid", ["h"], ["f"])])
    x = np.zeros((2, 5), np.float32)
    x[1, 0] = 1.0
    _, r = run(model, x)
    assert np.all(np.isfinite(r))
    assert np.all(r[0] == 0)


MATMUL_SCORES = [helper.make_node("MatMul", ["x", "Wq"], ["q"]), helper.make_node("MatMul", ["x", "Wk"], ["k"]),
                 helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
                 helper.make_node("MatMul", ["q", "kt"], ["s"])]
EINSUM_SCORES = [helper.make_node("Einsum", ["x", "Wq"], ["q"], equation="btd,de->bte"),
                 helper.make_node("Einsum", ["x", "Wk"], ["k"], equation="btd,de->bte"),
                 helper.make_node("Einsum", ["q", "k"], ["s"], equation="bqe,bke->bqk")]


@pytest.mark.parametrize("scores,op", [(MATMUL_SCORES, "MatMul"), (EINSUM_SCORES, "Einsum")])
def test_uniform_rule_on_attention_scores(scores, op):
    """y = sum((x Wq)(x Wk)^T), as MatMuls or as Einsums (Keras' MultiHeadAttention, torch.einsum): half of
    input times gradient again; the projections (a constant weight) keep their gradient, the z rule."""
    wq, wk = RNG.standard_normal((2, 6, 6)).astype(np.float32)
    nodes = scores + [helper.make_node("ReduceSum", ["s", "axes"], ["y"], keepdims=0)]
    model = single_io_model(nodes, {"Wq": wq, "Wk": wk, "axes": np.array([1, 2])}, ["N", 4, 6], ["N"])
    x = RNG.standard_normal((2, 4, 6)).astype(np.float32)
    y, r = run(model, x, neuron="all")
    np.testing.assert_allclose(r, 0.5 * run(model, x, "input_t_gradient", neuron="all")[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.reshape(2, -1).sum(1), y, rtol=1e-5)
    assert [rule for o, rule in rules(model) if o == op] == ["gradient", "gradient", "uniform"]


def _attention():
    """y = sum(softmax((x Wq)(x Wk)^T) (x Wv)) over a [N, 4, 6] input; (model, weights)."""
    wq, wk, wv = RNG.standard_normal((3, 6, 6)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "Wq"], ["q"]), helper.make_node("MatMul", ["x", "Wk"], ["k"]),
             helper.make_node("MatMul", ["x", "Wv"], ["v"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"]), helper.make_node("Softmax", ["s"], ["a"], axis=-1),
             helper.make_node("MatMul", ["a", "v"], ["c"]),
             helper.make_node("ReduceSum", ["c", "axes"], ["y"], keepdims=0)]
    inits = {"Wq": wq, "Wk": wk, "Wv": wv, "axes": np.array([1, 2])}
    return single_io_model(nodes, inits, ["N", 4, 6], ["N"]), (wq, wk, wv)


def test_cp_lrp_holds_the_attention_weights():
    """CP-LRP: the softmax output is a constant, V gets the whole gradient: R = x * (A^T 1) Wv^T, which sums to y
    (bias-free); Q, K and the softmax get nothing. AttnLRP differs (half to A, then the softmax rule)."""
    model, (wq, wk, wv) = _attention()
    x = RNG.standard_normal((2, 4, 6)).astype(np.float32)
    y, r = run(model, x, "cp_lrp", neuron="all")
    s = (x @ wq) @ (x @ wk).transpose(0, 2, 1)
    a = np.exp(s - s.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    want = x * ((a.transpose(0, 2, 1) @ np.ones((2, 4, 6), np.float32)) @ wv.T)
    np.testing.assert_allclose(r, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r.reshape(2, -1).sum(1), y, rtol=1e-4)
    assert not np.allclose(r, run(model, x, neuron="all")[1], rtol=1e-2)
    got = {op: rule for _, op, rule, _ in onnxattr.api.inspect(model, "cp_lrp") if op in ("Softmax", "Transpose")}
    assert got == {"Softmax": "none", "Transpose": "none"}


def test_cp_lrp_reads_through_masks_after_the_softmax():
    """A head mask (a constant Mul) or a masked_fill (Where) between the softmax and A V still marks A as the
    softmax's output: held constant, V gets the whole gradient (the map sums to y), Q and K nothing."""
    model, _ = _attention()
    nodes = list(model.graph.node)
    i = next(k for k, n in enumerate(nodes) if n.op_type == "Softmax")
    nodes[i + 1].input[0] = "masked"
    for masking, inits in (
            ([helper.make_node("Mul", ["a", "head_mask"], ["masked"])],
             {"head_mask": np.array([[1, 0, 1, 1]] * 4, np.float32)}),
            ([helper.make_node("Where", ["keep", "a", "zero"], ["masked"])],
             {"keep": np.array([[True, True, False, True]] * 4), "zero": np.float32(0)})):
        graph = helper.make_graph(nodes[:i + 1] + masking + nodes[i + 1:], "g", model.graph.input, model.graph.output,
                                  list(model.graph.initializer) + [numpy_helper.from_array(v, k) for k, v in inits.items()])
        masked = helper.make_model(graph, opset_imports=model.opset_import)
        masked.ir_version = 8
        x = RNG.standard_normal((2, 4, 6)).astype(np.float32)
        y, r = run(masked, x, "cp_lrp", neuron="all")
        np.testing.assert_allclose(r.reshape(2, -1).sum(1), y, rtol=1e-4)
        got = {op: rule for _, op, rule, _ in onnxattr.api.inspect(masked, "cp_lrp") if op in ("Softmax", "MatMul")}
        assert got["Softmax"] == "none"


def test_cp_lrp_holds_an_activated_gate():
    """A gated MLP, SiLU(x W1) * (x W2) summed: CP-LRP holds the activated gate, so R = x * (silu(x W1) W2^T);
    AttnLRP halves the product instead."""
    w1, w2 = RNG.standard_normal((2, 5, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Sigmoid", ["h"], ["sg"]),
             helper.make_node("Mul", ["h", "sg"], ["act"]), helper.make_node("MatMul", ["x", "W2"], ["up"]),
             helper.make_node("Mul", ["act", "up"], ["p"]),
             helper.make_node("ReduceSum", ["p", "axes"], ["y"], keepdims=1)]
    model = single_io_model(nodes, {"W1": w1, "W2": w2, "axes": np.array([1])}, ["N", 5], ["N", 1])
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    y, r = run(model, x, "cp_lrp")
    h = x @ w1
    np.testing.assert_allclose(r, x * ((h / (1 + np.exp(-h))) @ w2.T), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r.sum(1), y[:, 0], rtol=1e-4)
    rows = [(op, rule) for _, op, rule, _ in onnxattr.api.inspect(model, "cp_lrp")]
    assert ("Mul", "constant") in rows and ("Mul", "uniform") not in rows
    assert ("Mul", "uniform") in rules(model)  # AttnLRP


def _pooled(weights_nodes, seed=7):
    """x[N,4,5] -> h = x W; (weights_nodes: h -> a, [N,4,1] or [N,4,5]); y = sum over positions of a * h, then
    W2 -> y[N,3]: a product of h with weights computed from h."""
    rng = np.random.default_rng(seed)
    w, w2, v = (rng.standard_normal(s).astype(np.float32) for s in ((5, 5), (5, 3), (5, 1)))
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), *weights_nodes, helper.make_node("Mul", ["a", "h"], ["p"]),
             helper.make_node("ReduceSum", ["p", "one_axis"], ["pooled"], keepdims=0),
             helper.make_node("MatMul", ["pooled", "W2"], ["y"])]
    inits = {"W": w, "W2": w2, "V": v, "one_axis": np.array([1]), "zero": np.array([0]), "big": np.array([99])}
    return single_io_model(nodes, inits, ["N", 4, 5], ["N", 3])


def test_weights_mixed_from_the_other_operand_are_no_gate():
    """Attention pooling (a softmax over positions of h V) and an SE-style gate (a sigmoid of h's mean over
    positions through a weight) mix positions or features: h times such weights is a product of two
    activations (uniform), not a gate. A softmax written out (Exp, ReduceSum, Div) keeps its gradient, so its
    map is the Softmax op's."""
    attention = [helper.make_node("MatMul", ["h", "V"], ["e"]), helper.make_node("Softmax", ["e"], ["a"], axis=1)]
    se = [helper.make_node("ReduceMean", ["h"], ["m"], axes=[1], keepdims=1),
          helper.make_node("MatMul", ["m", "W"], ["mw"]), helper.make_node("Sigmoid", ["mw"], ["a"])]
    manual = [helper.make_node("MatMul", ["h", "V"], ["e"]), helper.make_node("Exp", ["e"], ["ex"]),
              helper.make_node("ReduceSum", ["ex", "one_axis"], ["den"], keepdims=1),
              helper.make_node("Div", ["ex", "den"], ["a"])]
    # parameter-free gates that still mix positions: a max over positions, a global pool, a shift (roll)
    peak = [helper.make_node("ReduceMax", ["h"], ["m"], axes=[1], keepdims=1), helper.make_node("Sigmoid", ["m"], ["a"])]
    pool = [helper.make_node("GlobalAveragePool", ["h"], ["m"]), helper.make_node("Sigmoid", ["m"], ["a"])]
    roll = [helper.make_node("Slice", ["h", "one_axis", "big", "one_axis"], ["tail"]),
            helper.make_node("Slice", ["h", "zero", "one_axis", "one_axis"], ["head"]),
            helper.make_node("Concat", ["tail", "head"], ["rolled"], axis=1), helper.make_node("Sigmoid", ["rolled"], ["a"])]
    for weights in (attention, se, manual, peak, pool, roll):
        assert ("Mul", "uniform") in rules(_pooled(weights))
        assert "gate" not in {r for _, r in rules(_pooled(weights))}
    x = RNG.standard_normal((2, 4, 5)).astype(np.float32)
    op_map, manual_map = run(_pooled(attention), x)[1], run(_pooled(manual), x)[1]
    assert np.abs(op_map).max() > 0
    np.testing.assert_allclose(manual_map, op_map, rtol=1e-4, atol=1e-6)


def test_a_factor_that_does_not_vary_with_x_is_a_constant():
    """Cross-attention style, (x Wq)(m Wk)^T with m a second float graph input, explained w.r.t. x: m's side is a
    constant of the explanation (as a mask, a position table or a weight is), so the product is linear in x
    and keeps its gradient: the map is input times gradient and sums to y. (LXT, which explains every input
    at once, gives x half of it.)"""
    from onnx import TensorProto

    wq, wk = RNG.standard_normal((2, 6, 6)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "Wq"], ["q"]), helper.make_node("MatMul", ["m", "Wk"], ["k"]),
             helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), helper.make_node("MatMul", ["q", "kt"], ["s"]),
             helper.make_node("ReduceSum", ["s", "axes"], ["y"], keepdims=0)]
    model = single_io_model(nodes, {"Wq": wq, "Wk": wk, "axes": np.array([1, 2])}, ["N", 4, 6], ["N"])
    model.graph.input.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, ["N", 3, 6]))
    x, m = RNG.standard_normal((2, 4, 6)).astype(np.float32), RNG.standard_normal((2, 3, 6)).astype(np.float32)
    maps = {}
    for method in ("attn_lrp", "input_t_gradient"):
        compiled = onnxattr.compile(model, method, input="x", neuron="all")
        sess = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
        y, maps[method] = sess.run(None, {"x": x, "m": m})
    np.testing.assert_allclose(maps["attn_lrp"], maps["input_t_gradient"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps["attn_lrp"].reshape(2, -1).sum(1), y, rtol=1e-5)


def test_keras_layernorm_as_batchnorm_holds_its_variance():
    """tf2onnx writes Keras' LayerNormalization as a BatchNormalization of x viewed [1, N, features] whose mean
    and variance are computed from x: its variance is held constant, which gives LayerNormalization's rule."""
    w1 = RNG.standard_normal((5, 7)).astype(np.float32)
    w2 = RNG.standard_normal((7, 3)).astype(np.float32)
    gamma = RNG.uniform(0.5, 2, 7).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["mean"], axes=[1], keepdims=0),
             helper.make_node("Sub", ["h", "mean_col"], ["hc"]),
             helper.make_node("Unsqueeze", ["mean", "one"], ["mean_col"]),
             helper.make_node("Mul", ["hc", "hc"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["var"], axes=[1], keepdims=0),
             helper.make_node("Reshape", ["h", "rows"], ["h3"]),
             helper.make_node("BatchNormalization", ["h3", "ones", "zeros", "mean", "var"], ["n3"], epsilon=1e-5),
             helper.make_node("Reshape", ["n3", "back"], ["n"]),
             helper.make_node("Mul", ["n", "gamma"], ["f"]),
             helper.make_node("MatMul", ["f", "W2"], ["y"])]
    nodes.insert(3, nodes.pop(2))  # Unsqueeze before the Sub that reads it
    model = single_io_model(nodes, {"W1": w1, "W2": w2, "gamma": gamma, "ones": np.ones(4, np.float32),
                                    "zeros": np.zeros(4, np.float32), "one": np.array([1]),
                                    "rows": np.array([1, 4, 7]), "back": np.array([4, 7])}, [4, 5], [4, 3])
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    y, r = run(model, x)
    np.testing.assert_allclose(r, held_std_map(x, w1, w2, gamma, y.argmax(1)), rtol=1e-4, atol=1e-5)
    assert ("BatchNormalization", "layernorm") in rules(model)
    exact = run(model, x, "input_t_gradient")[1]  # the variance differentiated: another map
    assert not np.allclose(r, exact, atol=1e-3)


def test_instancenorm_holds_its_std():
    """InstanceNormalization (torch's GroupNorm export; beta = 0) before a bias-free weighting: its std is held
    constant like a LayerNorm's, so relevance is conserved, which input times gradient is not."""
    scale = RNG.uniform(0.5, 2, 3).astype(np.float32)
    w = RNG.standard_normal((3, 5)).astype(np.float32)
    nodes = [helper.make_node("InstanceNormalization", ["x", "scale", "bias"], ["n"], epsilon=1e-5),
             helper.make_node("Mul", ["n", "W"], ["p"]), helper.make_node("ReduceSum", ["p", "axes"], ["y"], keepdims=0)]
    model = single_io_model(nodes, {"scale": scale, "bias": np.zeros(3, np.float32), "W": w,
                                    "axes": np.array([1, 2])}, ["N", 3, 5], ["N"])
    x = RNG.standard_normal((2, 3, 5)).astype(np.float32)
    y, r = run(model, x, neuron="all")
    np.testing.assert_allclose(r.reshape(2, -1).sum(1), y, rtol=1e-4, atol=1e-5)
    assert ("InstanceNormalization", "layernorm") in rules(model)
    assert not np.allclose(r, run(model, x, "input_t_gradient", neuron="all")[1], atol=1e-3)


def test_groupnorm_holds_its_std():
    """GroupNormalization-21 (torch's dynamo export from opset 21; beta = 0) before a bias-free weighting: each
    group's std held constant, relevance is conserved; the map is x * (gamma g - mean(gamma g)) / std per group."""
    scale = RNG.uniform(0.5, 2, 4).astype(np.float32)
    w = RNG.standard_normal((4, 5)).astype(np.float32)
    nodes = [helper.make_node("GroupNormalization", ["x", "scale", "bias"], ["n"], num_groups=2, epsilon=1e-5),
             helper.make_node("Mul", ["n", "W"], ["p"]), helper.make_node("ReduceSum", ["p", "axes"], ["y"], keepdims=0)]
    model = single_io_model(nodes, {"scale": scale, "bias": np.zeros(4, np.float32), "W": w,
                                    "axes": np.array([1, 2])}, ["N", 4, 5], ["N"], opset=21)
    model.ir_version = 10
    x = RNG.standard_normal((2, 4, 5)).astype(np.float32)
    y, r = run(model, x, neuron="all")
    rows = x.reshape(2, 2, 10)
    std = np.sqrt(rows.var(2, keepdims=True) + 1e-5)
    gg = (scale[:, None] * w)[None].repeat(2, 0).reshape(2, 2, 10)
    want = x * ((gg - gg.mean(2, keepdims=True)) / std).reshape(x.shape)
    np.testing.assert_allclose(r, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r.reshape(2, -1).sum(1), y, rtol=1e-4, atol=1e-5)
    assert ("GroupNormalization", "groupnorm") in rules(model)


def test_rmsnorm_holds_its_rms():
    """RMSNormalization-23 between bias-free layers (LXT's rms_norm_forward): the rms held constant, so the map
    is x * W1 (gamma g / rms) with g = W2[:, k], and relevance is conserved."""
    w1 = RNG.standard_normal((5, 7)).astype(np.float32)
    w2 = RNG.standard_normal((7, 3)).astype(np.float32)
    gamma = RNG.uniform(0.5, 2, 7).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]),
             helper.make_node("RMSNormalization", ["h", "gamma"], ["f"], epsilon=1e-5),
             helper.make_node("MatMul", ["f", "W2"], ["y"])]
    model = single_io_model(nodes, {"W1": w1, "W2": w2, "gamma": gamma}, ["N", 5], ["N", 3], opset=23)
    model.ir_version = 10
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    y, r = run(model, x)
    k = y.argmax(1)
    h = x @ w1
    rms = np.sqrt((h * h).mean(1, keepdims=True) + 1e-5)
    want = x * (((gamma * w2[:, k].T) / rms) @ w1.T)
    np.testing.assert_allclose(r, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r.sum(1), y[np.arange(4), k], rtol=1e-4)
    assert ("RMSNormalization", "rmsnorm") in rules(model)


def test_a_layernorm_spelled_with_two_centrings_is_a_gate():
    """torch.var exports its own x - mean(x): the std comes from a second centring of x, still a norm of x,
    so the division is a gate; with beta = 0 and no bias the map sums to y. A power x^2 used as an activation
    takes the identity rule, as its Mul(x, x) spelling does (a gate)."""
    def centring(out):
        return [helper.make_node("ReduceMean", ["h"], [f"{out}_m"], axes=[1], keepdims=1),
                helper.make_node("Sub", ["h", f"{out}_m"], [out])]
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), *centring("c1"), *centring("c2"),
             helper.make_node("Mul", ["c2", "c2"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["var"], axes=[1], keepdims=1),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["std"]),
             helper.make_node("Div", ["c1", "std"], ["n"]), helper.make_node("Pow", ["n", "two"], ["f"]),
             helper.make_node("MatMul", ["f", "W2"], ["y"])]
    w1, w2 = RNG.standard_normal((5, 7)).astype(np.float32), RNG.standard_normal((7, 3)).astype(np.float32)
    model = single_io_model(nodes, {"W1": w1, "W2": w2, "eps": np.float32(1e-5), "two": np.float32(2)},
                            ["N", 5], ["N", 3])
    assert ("Div", "gate") in rules(model) and ("Pow", "identity") in rules(model)
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    y, r = run(model, x)
    np.testing.assert_allclose(r.sum(1), y[np.arange(4), y.argmax(1)], rtol=1e-4)


def test_a_layernorm_spelled_as_keras_batchnorm_math_holds_its_std():
    """tf2onnx writes Keras' LayerNormalization of an NHWC map as x s + (-(mean(x) s)), s = gamma / sqrt(var + eps),
    the mean reshaped before its centring: s is held in both products, which is the LayerNormalization op's rule,
    so the map is held_std_map's. Before, neither product was a gate (the reshape hid the centring, and mean(x) s
    is no product of x), both took the uniform rule, and a Keras ConvNeXt's map summed to -0.1 of its logit."""
    w1 = RNG.standard_normal((5, 7)).astype(np.float32)
    w2 = RNG.standard_normal((7, 3)).astype(np.float32)
    gamma = RNG.uniform(0.5, 2, 7).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["mean"], axes=[1], keepdims=1),
             helper.make_node("Reshape", ["mean", "shape"], ["mean_r"]),
             helper.make_node("Sub", ["h", "mean_r"], ["d"]), helper.make_node("Mul", ["d", "d"], ["sq"]),
             helper.make_node("ReduceMean", ["sq"], ["var"], axes=[1], keepdims=1),
             helper.make_node("Add", ["var", "eps"], ["ve"]), helper.make_node("Sqrt", ["ve"], ["std"]),
             helper.make_node("Reciprocal", ["std"], ["rstd"]), helper.make_node("Mul", ["rstd", "gamma"], ["s"]),
             helper.make_node("Mul", ["mean", "s"], ["ms"]), helper.make_node("Neg", ["ms"], ["shift"]),
             helper.make_node("Mul", ["h", "s"], ["hs"]), helper.make_node("Add", ["hs", "shift"], ["f"]),
             helper.make_node("MatMul", ["f", "W2"], ["y"])]
    model = single_io_model(nodes, {"W1": w1, "W2": w2, "gamma": gamma, "eps": np.float32(1e-5),
                                    "shape": np.array([-1, 1], np.int64)}, ["N", 5], ["N", 3])
    assert [r for op, r in rules(model) if op == "Mul"].count("gate") == 2
    assert "uniform" not in {r for _, r in rules(model)}
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    y, r = run(model, x)
    k = y.argmax(1)
    np.testing.assert_allclose(r, held_std_map(x, w1, w2, gamma, k), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(r.sum(1), y[np.arange(4), k], rtol=1e-4)


def test_layernorm_with_a_varying_scale_keeps_its_std_held():
    """A conditional LayerNorm (scale computed from the input): the std is still held constant for x, and the
    scale gets sum(g * xhat), as LXT's layer_norm_forward does; the map differs from input times gradient."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("ReduceMean", ["x"], ["m"], axes=[0],
                                                                              keepdims=0),
             helper.make_node("MatMul", ["m", "Ws"], ["scale"]),
             helper.make_node("LayerNormalization", ["h", "scale", "beta"], ["f"], axis=-1),
             helper.make_node("MatMul", ["f", "W2"], ["y"])]
    inits = {"W1": RNG.standard_normal((5, 7)).astype(np.float32), "Ws": RNG.standard_normal((5, 7)).astype(np.float32),
             "beta": np.zeros(7, np.float32), "W2": RNG.standard_normal((7, 3)).astype(np.float32)}
    model = single_io_model(nodes, inits, [4, 5], [4, 3])
    assert ("LayerNormalization", "layernorm") in rules(model)
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    _, r = run(model, x)
    assert np.all(np.isfinite(r)) and not np.allclose(r, run(model, x, "input_t_gradient")[1], atol=1e-3)


def test_gamma_on_layers_is_the_lrp_gamma_rule(tmp_path):
    """conv_gamma / linear_gamma give the layers Zennit's gamma rule (R_out = g z, g_in = R_in / stab(x)): on
    a Relu ResNet, where attn_lrp's other steps are LRP's z rules, the map is that of an LRP rule file with
    gamma on every layer, seeded with the logit as x * g is (Zennit's stabilizer; residual Adds and pools
    split in proportion, whose stabilizer 1e-6 and the 1e-10 one of the division by x are the only
    differences)."""
    rules = tmp_path / "gamma.toml"
    rules.write_text('style = "zennit"\nseed = "logit"\nadd = "z"\n[layers]\n'
                     'conv = { rule = "gamma", gamma = 0.3 }\ndense = { rule = "gamma", gamma = 0.05 }\n'
                     'pool = { rule = "z" }\n')
    model = resnet_like(bias=True)
    x = RNG.standard_normal((3, 2, 8, 8)).astype(np.float32)
    want = run(model, x, str(rules))[1]
    got = run(model, x, conv_gamma=0.3, linear_gamma=0.05)[1]
    # float32 in both, in another order, through denominators stabilized by 1e-6 only: 2e-5 of the max seen
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    plain = run(model, x)[1]
    assert np.abs(got - plain).max() > 0.1 * np.abs(want).max()  # gamma changes the map here
    only_conv = run(model, x, conv_gamma=0.3)[1]
    assert np.abs(only_conv - got).max() > 1e-3 * np.abs(want).max()  # the dense layer's gamma matters
    table = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "attn_lrp", conv_gamma=0.3)}
    assert "gamma(0.3)" in table.values()
    assert not any(rule.startswith("gamma") for _, _, rule, _ in onnxattr.api.inspect(model, "attn_lrp"))


@pytest.mark.parametrize("value", [-0.1, float("inf"), float("nan"), True])
def test_gamma_must_be_a_finite_number_at_least_0(value):
    model = resnet_like(bias=True)
    with pytest.raises(onnxattr.errors.UsageError, match="parameter linear_gamma=.*: must be"):
        onnxattr.compile(model, "attn_lrp", linear_gamma=value)


def _dense_bn(bn: bool):
    """x [N, 6] -> Gemm -> BatchNormalization (or the same affine map as Mul, Add) -> Relu -> Gemm -> y [N, 3]."""
    rng = np.random.default_rng(7)
    f = np.float32
    scale, shift = rng.uniform(0.5, 2, 5).astype(f), rng.standard_normal(5).astype(f)
    mean, var = rng.standard_normal(5).astype(f), rng.uniform(0.5, 2, 5).astype(f)
    inits = {"w1": rng.standard_normal((6, 5)).astype(f), "b1": rng.standard_normal(5).astype(f),
             "w2": rng.standard_normal((5, 3)).astype(f), "b2": rng.standard_normal(3).astype(f)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"])]
    if bn:
        inits.update(scale=scale, shift=shift, mean=mean, var=var)
        nodes.append(helper.make_node("BatchNormalization", ["h", "scale", "shift", "mean", "var"], ["n"],
                                      epsilon=1e-5))
    else:
        s = scale / np.sqrt(var + 1e-5)
        inits.update(s=s.astype(f), t=(shift - mean * s).astype(f))
        nodes += [helper.make_node("Mul", ["h", "s"], ["hs"]), helper.make_node("Add", ["hs", "t"], ["n"])]
    nodes += [helper.make_node("Relu", ["n"], ["r"]), helper.make_node("Gemm", ["r", "w2", "b2"], ["y"])]
    return single_io_model(nodes, inits, ["N", 6], ["N", 3])


def test_gamma_stays_on_the_layer_before_a_batchnorm():
    """LXT's Gamma sits on a Linear with its own bias and a BatchNorm1d after it keeps its gradient: the map
    equals that of the same net with the BatchNorm written as Mul and Add (before, the Gemm fused with the
    BatchNorm lost its gamma: 7% off LXT)."""
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    got = run(_dense_bn(True), x, linear_gamma=0.1)[1]
    want = run(_dense_bn(False), x, linear_gamma=0.1)[1]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert np.abs(got - run(_dense_bn(True), x)[1]).max() > 1e-2 * np.abs(got).max()


def test_gamma_in_float16_gives_a_finite_map():
    """The division by x + 1e-10 sign(x) at each layer's input: 1e-10 is 0 in float16, so a Relu's exact 0
    gave 0/0 and the whole map NaN; the stabilizer is at least float16's smallest step."""
    from onnx import numpy_helper

    model = resnet_like(bias=True)
    m16 = single_io_model(list(model.graph.node), {
        t.name: (numpy_helper.to_array(t).astype(np.float16) if t.data_type == 1 else numpy_helper.to_array(t))
        for t in model.graph.initializer}, ["N", 2, 8, 8], ["N", 4])
    for vi in list(m16.graph.input) + list(m16.graph.output):
        vi.type.tensor_type.elem_type = 10
    x = np.random.default_rng(3).standard_normal((2, 2, 8, 8)).astype(np.float32)
    got = onnxattr.create_analyzer("attn_lrp", m16, conv_gamma=0.25, linear_gamma=0.1).analyze(x.astype(np.float16))
    want = run(model, x, conv_gamma=0.25, linear_gamma=0.1)[1]
    assert np.isfinite(got).all()
    # float16 through the gamma rule's denominators: 0.13% of float32's map in L2 for this x (other inputs
    # with a denominator near 0 move further, as the LRP gamma rule file does in float16)
    assert np.linalg.norm(got - want) < 0.01 * np.linalg.norm(want)


def test_gamma_leaves_held_layers_marked_none():
    """cp_lrp holds the attention weights: the q and k projections feed only them and get no relevance; inspect
    still says so with gamma set."""
    from pathlib import Path

    model = str(Path(__file__).resolve().parents[1] / "oracles" / "data" / "lxt_llama.onnx")
    plain = {n: r for n, _, r, _ in onnxattr.api.inspect(model, "cp_lrp")}
    with_gamma = {n: r for n, _, r, _ in onnxattr.api.inspect(model, "cp_lrp", linear_gamma=0.1)}
    held = [n for n, r in plain.items() if r == "none"]
    assert any("MatMul" in n for n in held) and all(with_gamma[n] == "none" for n in held)
    assert any(r.startswith("gamma") for r in with_gamma.values())


def test_linear_gamma_leaves_einsum_layers_alone():
    """LXT puts lin_gamma on nn.Linear modules, which export as MatMul/Gemm; an Einsum with a weight (a layer for
    the LRP presets) keeps its gradient here."""
    from tests.lrp.test_units import _dense_pair

    matmul, einsum = _dense_pair("bsi,io->bso", False)
    assert [r[2] for r in onnxattr.api.inspect(matmul, "attn_lrp", linear_gamma=0.1)][0] == "gamma(0.1)"
    assert [r[2] for r in onnxattr.api.inspect(einsum, "attn_lrp", linear_gamma=0.1)][0] == "gradient"


@pytest.mark.filterwarnings("ignore::onnxattr.errors.OnnxAttrWarning")
@pytest.mark.parametrize("export", sorted(SE_EXPORTS))
@pytest.mark.parametrize("method", ["attn_lrp", "cp_lrp"])
def test_hold_gates_gives_the_map_of_the_net_with_the_gate_frozen(export, method):
    """hold_gates=1 holds a squeeze-excitation's gate, broadcast over its input, where the uniform rule halves the
    relevance into the gate's branch: the map of the export with the gate replaced by its value for this batch, in
    either operand order, torch's and tf2onnx's; the gate's branch then gets no relevance."""
    model, frozen, x, name, signal, se_mul = se_export(export)

    def run(m, **kw):
        compiled = onnxattr.compile(m, method, **kw)
        return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {name: x})[0]

    want = run(frozen)
    np.testing.assert_allclose(run(model, hold_gates=1), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert np.abs(run(model) - want).max() > 1e-2 * np.abs(want).max()  # both operands are activations: uniform
    rules = {row[0]: row[2] for row in onnxattr.inspect(model, method, hold_gates=1)}
    assert rules[se_mul] == "gate"
    fc = "/fc2/Conv" if export.startswith("torch") else "keras_se/se_expand/MatMul"
    assert rules[fc] == "none"
