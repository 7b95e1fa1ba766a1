"""onnxattr/lrp/composite.py (and the shortcuts in rules.py it enables): the Relu-output denominator. Relevance that reaches a Relu from x-times rules
(R = x * c) is 0 wherever the Relu output is 0, so the layer below may divide by Relu(z) + eps instead of
z + eps sign(z); the map must be the same, and the shortcut must not fire when a rule above is not x-times.
Likewise a relevance emitted as a product R = a * c (a residual split, an x-times rule reading a) and divided
by stab(a) is c * a / stab(a), and a tensor read twice gets a * (c1 + c2)."""

import numpy as np
import onnxruntime as ort
import pytest

from onnx import numpy_helper

import onnxattr
from onnxattr.graph import GraphBuilder
from onnxattr.lrp import rules, steps, units
from onnxattr.methods.lrp import preset_folder
from tests.lrp.nets import SE_EXPORTS, gated_net, layernorm_net, relu_quantized, resnet_like, se_export, swish_net

# normal inputs: about half of the pre-activations are negative, where the two denominators differ
X = np.random.default_rng(11).standard_normal((2, 2, 8, 8)).astype(np.float32)
PRESETS = sorted(p.name[:-5] for p in preset_folder().iterdir() if p.name.endswith(".toml"))


def relevance(model, method, **kw):
    compiled = onnxattr.compile(model, method, **kw)
    return compiled, ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": X})[0]


def readers(model, tensor):
    return [n.op_type for n in model.graph.node if tensor in n.input]


@pytest.mark.parametrize("net", [dict(bias=True), dict(bias=True, batchnorm=True), dict(last_pool="MaxPool")])
@pytest.mark.parametrize("preset", PRESETS)
def test_relu_denominator_gives_the_same_map(preset, net, monkeypatch):
    model = resnet_like(**net)
    _, fast = relevance(model, preset)
    monkeypatch.setattr(steps, "positive_part", lambda *a: None)
    monkeypatch.setattr(rules, "known_nonnegative", lambda *a: False)
    monkeypatch.setattr(rules, "own_factor", lambda *a: None)
    monkeypatch.setattr(GraphBuilder, "factored_sum", lambda *a: None)
    _, plain = relevance(model, preset)
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6 * np.abs(plain).max())


@pytest.mark.parametrize("preset", ["deep_taylor", "lrp.z_plus", "lrp.alpha_2_beta_1", "lrp.epsilon_plus_flat"])
def test_codes_dequantized_from_their_lowest_value_are_nonnegative(preset, monkeypatch):
    """uint8 codes of zero point 0 (a quantizer that stands in for a removed ReLU) dequantize to x >= 0, so the
    z+ rules skip the x- w- part as after a Relu: fewer convolutions, the same map. Before, a quantized ResNet50's
    deep_taylor ran 264 convolutions instead of 159 (198 ms against 118)."""
    model = resnet_like()
    quantized = relu_quantized(model, X, absorb=True)
    compiled, fast = relevance(quantized, preset)
    convs = [sum(n.op_type == "Conv" for n in m.graph.node) for m in (compiled, relevance(model, preset)[0], quantized)]
    # as many as on the float net with its Relus, beside the quantized net's own forward (twin_forward)
    assert convs[0] == convs[1] + convs[2], convs
    monkeypatch.setattr(units, "_dequantized_from_the_bottom", lambda *a: False)
    _, plain = relevance(quantized, preset)
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-6 * np.abs(plain).max())


def test_epsilon_leaves_the_pre_activations_to_their_relu():
    """Every pre-activation under a Relu (after a Conv, a MatMul, the residual Add, and through MaxPool)
    is read by its Relu alone, so onnxruntime can fuse them; the logits still get the sign stabilizer."""
    compiled, _ = relevance(resnet_like(bias=True), "lrp.epsilon")
    for z in ("c1", "c2", "s", "h"):
        assert readers(compiled, z) == ["Relu"], (z, readers(compiled, z))
    assert "GreaterOrEqual" in readers(compiled, "y")


@pytest.mark.parametrize("preset,ratio", [("lrp.epsilon", ["Abs", "Add", "Div"]), ("lrp.z", ["Mul", "HardSigmoid"])])
def test_residual_operand_divides_by_its_own_ratio(preset, ratio):
    """The Add's first operand c3 receives R = c3 * s from the z split; its conv divides R by stab(c3),
    which is s * c3 / stab(c3): c3 is read by the Add and one Abs, the product c3 * s is never emitted."""
    compiled, _ = relevance(resnet_like(bias=True), preset)
    assert sorted(readers(compiled, "c3")) == ["Abs", "Add"], readers(compiled, "c3")
    made_by = {o: n for n in compiled.graph.node for o in n.output}
    abs_out = next(n.output[0] for n in compiled.graph.node if n.op_type == "Abs" and n.input[0] == "c3")
    chain = {n.op_type for n in compiled.graph.node if abs_out in n.input}
    assert chain <= set(ratio), chain
    assert not [n for n in made_by.values() if n.op_type == "Mul" and "c3" in n.input]


def test_tensor_read_twice_is_multiplied_once():
    """p1 is read by the second conv and the residual Add: its relevance p1 * vjp + p1 * s is emitted as
    p1 * (vjp + s)."""
    for preset in ("lrp.epsilon", "lrp.z", "deep_taylor"):
        compiled, _ = relevance(resnet_like(bias=True), preset)
        assert readers(compiled, "p1").count("Mul") == 1, (preset, readers(compiled, "p1"))


@pytest.mark.parametrize("preset,ratio", [("lrp.epsilon", ["Add", "Div"]), ("lrp.z", ["Mul", "HardSigmoid"])])
def test_relu_output_read_by_an_x_times_rule_gives_its_layer_a_ratio(preset, ratio):
    """The last MatMul's rule sends R = rh * vjp to rh = Relu(h); the first MatMul needs R / stab(h), which
    is vjp * rh / stab(rh): rh is read by the ratio alone (and the MatMul), never multiplied by the vjp."""
    compiled, _ = relevance(resnet_like(bias=True), preset)
    made_by = {o: n for n in compiled.graph.node for o in n.output}
    reading = [n for n in compiled.graph.node if "rh" in n.input and n.op_type != "MatMul"]
    assert sorted(n.op_type for n in reading) == sorted(ratio[:1] + (["Div"] if preset == "lrp.epsilon" else []))
    last = next(n for n in compiled.graph.node if n.op_type == ratio[-1] and (
        "rh" in n.input or any(made_by.get(i) in reading for i in n.input)))
    assert any(n.op_type == "Mul" and last.output[0] in n.input for n in compiled.graph.node)


def test_no_shortcut_below_a_rule_that_is_not_x_times(tmp_path, monkeypatch):
    """w^2 on the second conv: the relevance reaching the first Relu is not 0 where that Relu is 0, so the
    first conv's epsilon rule must divide by its own stabilized output."""
    rules = tmp_path / "mixed.toml"
    rules.write_text('style = "zennit"\n[layers]\nfirst = { rule = "epsilon", epsilon = 0.01 }\n'
                     'default = { rule = "w_square" }\npool = { rule = "z" }\n')
    model = resnet_like(bias=True, residual=False)
    compiled, fast = relevance(model, str(rules))
    z1 = next(n.output[0] for n in compiled.graph.node if n.op_type == "Conv" and n.input[0] == "x")
    assert "GreaterOrEqual" in readers(compiled, z1), readers(compiled, z1)
    monkeypatch.setattr(steps, "positive_part", lambda *a: None)
    np.testing.assert_array_equal(fast, relevance(model, str(rules))[1])


def test_non_negative_modified_forward_needs_no_sign():
    """Zennit's alpha-1-beta-0 on conv layers: z = x+W+ + b+ >= 0, so z + eps sign(z) is z + eps: no sign
    computation reads the W+ forward."""
    compiled, _ = relevance(resnet_like(bias=True), "lrp.epsilon_plus_flat")
    consts = {t.name: numpy_helper.to_array(t) for t in compiled.graph.initializer}
    plus = [n.output[0] for n in compiled.graph.node if n.op_type == "Conv" and n.input[1] in consts
            and (consts[n.input[1]] >= 0).all() and n.input[1] not in ("w1", "w2", "w3")]
    assert plus
    for z in plus:
        assert "GreaterOrEqual" not in readers(compiled, z), readers(compiled, z)


def test_safe_stabilizer_of_a_nonnegative_z_is_one_hardsigmoid():
    """deep_taylor (iNNvestigate's z+ with SafeDivide): z+ >= 0, so z + eps [z = 0] is z + HardSigmoid(z)."""
    compiled, _ = relevance(resnet_like(bias=True), "deep_taylor")
    made_by = {o: n.op_type for n in compiled.graph.node for o in n.output}
    zero_tests = [made_by.get(n.input[0]) for n in compiled.graph.node if n.op_type == "Equal"]
    assert not {"Conv", "MatMul", "Add"} & set(zero_tests), zero_tests  # the MaxPool VJP's ArgMax test stays
    # the zero flags (slope -2^127; a positive slope is a [v > 0] flag): 3 Conv + 2 MatMul layers
    zero_flags = [n for n in compiled.graph.node if n.op_type == "HardSigmoid"
                  and next(a.f for a in n.attribute if a.name == "alpha") < 0]
    assert len(zero_flags) == 5


@pytest.mark.parametrize("eps", [1e-7, 2.0**-23, 1e-30])
def test_hardsigmoid_zero_flag_is_exact(eps):
    """The onnxruntime fact the safe stabilizer relies on: clamp(-2^127 v + eps, 0, 1) = eps [v = 0] for
    every v >= 0, subnormals included, when eps < 2^-22."""
    from onnx import TensorProto, helper

    node = helper.make_node("HardSigmoid", ["v"], ["f"], alpha=rules._ZERO_SLOPE, beta=eps)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("v", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("f", TensorProto.FLOAT, [None])])
    sess = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                .SerializeToString(), providers=["CPUExecutionProvider"])
    v = np.array([0.0, 2.0**-149, 1e-45, 1e-40, 2.0**-126, 1e-30, 1e-7, 0.5, 1.0, 3e38, np.inf], np.float32)
    v = np.tile(v, 37)  # long enough for the vectorized kernel
    expect = np.where(v == 0, np.float32(eps), np.float32(0))
    np.testing.assert_array_equal(sess.run(None, {"v": v})[0], expect)


def test_einsum_of_three_operands_is_refused_by_the_presets():
    """An Einsum of x and two weights has no LRP rule (an Einsum of x and one weight is a layer,
    tests/lrp/test_units.py; of two activations, their gradient): its gradient would carry relevance with no
    stabilizer or bias share, silently, so the presets refuse it by name; the gradient methods and attn_lrp
    differentiate it."""
    from onnx import helper

    from onnxattr.errors import UnsupportedModelError
    from tests.models import single_io_model

    rng = np.random.default_rng(0)
    w, v = rng.standard_normal((6, 3)).astype(np.float32), rng.standard_normal((3, 2)).astype(np.float32)
    node = helper.make_node("Einsum", ["x", "W", "V"], ["y"], equation="bd,de,ef->bf", name="two_weights")
    model = single_io_model([node], {"W": w, "V": v}, ["N", 6], ["N", 2])
    for method in ("lrp.epsilon", "lrp.epsilon_plus_flat", "excitation_backprop", "deep_taylor"):
        with pytest.raises(UnsupportedModelError, match="Einsum node 'two_weights'.*not of 3.*MatMul/Gemm"):
            onnxattr.compile(model, method)
    for method in ("gradient", "attn_lrp"):
        onnxattr.compile(model, method)


def test_einsum_of_two_activations_takes_the_gradient():
    """x (x W)^T-like products written as Einsum get the gradient, as a MatMul of two activations does."""
    from onnx import helper

    from tests.models import single_io_model

    w = np.random.default_rng(0).standard_normal((6, 6)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("Einsum", ["x", "h"], ["y"], equation="bd,bd->b", name="pair")]
    model = single_io_model(nodes, {"W": w}, ["N", 6], ["N"])
    rules_of = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "lrp.epsilon")}
    assert rules_of["pair"] == "gradient"


@pytest.mark.parametrize("preset", ["lrp.epsilon", "lrp.alpha_2_beta_1", "deep_taylor"])
def test_conv_with_a_weight_computed_from_the_input_takes_the_gradient(preset):
    """A dynamic filter (a Conv whose weight a Gemm computes from the pooled input, one sample) is a product of two
    tensors that vary with the input, as a MatMul of two activations: it takes its gradient, so relevance also reaches
    x through the weight (the map differs from the one of the same net with that weight frozen at its value)."""
    from onnx import helper

    from tests.models import single_io_model

    rng = np.random.default_rng(3)
    inits = {"W": rng.standard_normal((2, 3 * 2 * 3 * 3)).astype(np.float32), "shape": np.array([3, 2, 3, 3]),
             "axes": np.array([2, 3])}
    head = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="dynamic"),
            helper.make_node("Relu", ["c"], ["r"]), helper.make_node("ReduceMean", ["r", "axes"], ["y"], keepdims=0)]
    filters = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
               helper.make_node("Gemm", ["f", "W"], ["k"]), helper.make_node("Reshape", ["k", "shape"], ["w"])]
    model = single_io_model(filters + head, inits, [1, 2, 8, 8], [1, 3], opset=18)
    rules_of = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, preset)}
    assert rules_of["dynamic"] == "gradient"
    x = X[:1]
    frozen_w = (np.mean(x, axis=(2, 3)) @ inits["W"]).reshape(3, 2, 3, 3)
    frozen = single_io_model(head, {"w": frozen_w, "axes": inits["axes"]}, [1, 2, 8, 8], [1, 3], opset=18)
    dynamic, fixed = (ort.InferenceSession(onnxattr.compile(m, preset).SerializeToString()).run(
        ["relevance"], {"x": x})[0] for m in (model, frozen))
    assert np.isfinite(dynamic).all()
    assert np.abs(dynamic - fixed).max() > 1e-3 * np.abs(fixed).max()


def test_zbox_bounds_of_the_input_are_padded_as_the_input_is():
    """A Pad node before the first Conv (Keras' 'same' padding, torch's ZeroPad2d): z-box bounds given as arrays of
    the input's shape did not fit the padded layer input. They are now padded as the input is (a padded entry is 0,
    and so are its bounds), which gives the map of the same net written as a Conv with pads. (Scalar bounds cover
    the padded entries too, as Zennit's ZBox does: tests/oracles' torch_strided checks that.)"""
    from onnx import helper

    from tests.models import single_io_model

    rng = np.random.default_rng(5)
    inits = {"w1": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
             "w2": rng.standard_normal((3, 4 * 8 * 8)).astype(np.float32)}
    head = [helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
            helper.make_node("Gemm", ["f", "w2"], ["y"], transB=1)]
    pad = [helper.make_node("Pad", ["x", "pads"], ["xp"]), helper.make_node("Conv", ["xp", "w1"], ["c"])]
    padded = single_io_model(pad + head, {**inits, "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1])}, [1, 2, 8, 8], [1, 3])
    attribute = single_io_model([helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1])] + head, inits,
                                [1, 2, 8, 8], [1, 3])
    x = X[:1]
    low, high = np.minimum(x, 0) - 0.5, np.maximum(x, 0) + 0.5
    maps = [relevance_of(m, "lrp.epsilon_gamma_box", x, low=low, high=high) for m in (padded, attribute)]
    np.testing.assert_allclose(maps[0], maps[1], atol=1e-5 * np.abs(maps[1]).max())


def relevance_of(model, method, x, **params):
    compiled = onnxattr.compile(model, method, **params)
    return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.z_plus", "deep_taylor"])
def test_pass_sums_relevance_over_a_broadcast_operand(method):
    """A per-sample scale s [N, 1] (computed from x) times features h [N, 7], scale first: pass gives s the
    relevance of the whole product, summed over the broadcast axis (it used to hand on the [N, 7] tensor, which
    onnxruntime refused for s's declared [N, 1]; Keras' GroupNormalization through tf2onnx has this form)."""
    from onnx import helper

    from tests.models import single_io_model

    rng = np.random.default_rng(1)
    w1, w2 = rng.standard_normal((5, 7)).astype(np.float32), rng.standard_normal((7, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("ReduceMean", ["a"], ["s"], axes=[1], keepdims=1),
             helper.make_node("Mul", ["s", "a"], ["p"]), helper.make_node("MatMul", ["p", "W2"], ["y"])]
    model = single_io_model(nodes, {"W1": w1, "W2": w2}, ["N", 5], ["N", 3])
    x = np.abs(rng.standard_normal((4, 5))).astype(np.float32)
    sess = ort.InferenceSession(onnxattr.compile(model, method).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    y, r = sess.run(None, {"x": x})
    assert r.shape == x.shape and np.isfinite(r).all() and np.abs(r).max() > 0


@pytest.mark.parametrize("act,opset,rule", [("Relu", 17, "pass"), ("Celu", 17, "pass"), ("Swish", 24, "pass"),
                                            ("Shrink", 17, "pass"), ("ThresholdedRelu", 17, "pass"),
                                            ("Mish", 18, "gradient")])
def test_activations_pass_as_zennit_passes_its_activation_types(act, opset, rule):
    """Zennit's composites give its Activation types (CELU, SiLU, Hard/Softshrink, Threshold among them; Mish is
    not one) the Pass rule; an activation after a kernel layer passes here, others keep their gradient."""
    from onnx import helper

    from tests.models import single_io_model

    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node(act, ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "W2"], ["y"])]
    model = single_io_model(nodes, {"W1": rng.standard_normal((5, 7)).astype(np.float32),
                                    "W2": rng.standard_normal((7, 3)).astype(np.float32)}, ["N", 5], ["N", 3],
                            opset=opset)
    model.ir_version = 10
    rules_of = {op: r for _, op, r, _ in onnxattr.api.inspect(model, "lrp.epsilon_plus_flat")}
    assert rules_of[act] == rule


@pytest.mark.parametrize("method", ["lrp.z", "lrp.epsilon", "lrp.epsilon_plus_flat", "lrp.alpha_2_beta_1"])
def test_mean_of_activations_splits_like_their_sum(method):
    """A Mean of n activations is a layer of weights 1/n: R_i = (x_i / n) R / stab(mean). The residual join of
    resnet_like written as Mean, with the next layer's weights doubled, computes the same logits, and every rule
    gives the same map as on the Add (a plain gradient through the Mean would halve each branch's share
    instead of splitting by contribution)."""
    summed = resnet_like(bias=True)
    averaged = resnet_like(bias=True)
    join = next(n for n in averaged.graph.node if n.op_type == "Add")
    join.op_type = "Mean"
    d1 = next(t for t in averaged.graph.initializer if t.name == "d1")
    d1.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(d1) * 2, "d1"))
    x = np.random.default_rng(4).random((3, 2, 8, 8)).astype(np.float32)
    (y1, r1), (y2, r2) = [ort.InferenceSession(onnxattr.compile(m, method).SerializeToString()).run(None, {"x": x})
                          for m in (summed, averaged)]
    np.testing.assert_allclose(y2, y1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r2, r1, rtol=0, atol=1e-5 * np.abs(r1).max())


@pytest.mark.parametrize("method", ["lrp.z", "lrp.epsilon", "lrp.epsilon_plus_flat", "lrp.alpha_2_beta_1"])
def test_add_of_a_tensor_computed_from_the_input_shape_alone_is_a_bias(method):
    """Swin's shifted-window mask: a TorchScript export computes it from Shape(x) (ConstantOfShape, then
    arithmetic), the dynamo export folds it to a constant. Either way it does not vary with x, so the Add is a
    bias Add (relevance passes), not a residual sum whose z split hands relevance to the mask; both forms give
    one map."""
    from onnx import TensorProto, helper

    from tests.models import single_io_model

    rng = np.random.default_rng(5)
    w1, w2 = rng.standard_normal((6, 6)).astype(np.float32), rng.standard_normal((6, 3)).astype(np.float32)
    mask = np.array([0, -100, 0, 3, -100, 0], np.float32)
    head = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["a"])]
    tail = [helper.make_node("Add", ["a", "m"], ["s"], name="mask_add"), helper.make_node("MatMul", ["s", "W2"], ["y"])]
    from_shape = [helper.make_node("Shape", ["a"], ["shape"]),
                  helper.make_node("ConstantOfShape", ["shape"], ["ones"],
                                   value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
                  helper.make_node("Mul", ["ones", "M"], ["m"])]
    computed = single_io_model(head + from_shape + tail, {"W1": w1, "W2": w2, "M": mask}, ["N", 6], ["N", 3])
    constant = single_io_model(head + tail, {"W1": w1, "W2": w2, "m": mask}, ["N", 6], ["N", 3])
    rules_of = {name: rule for name, _, rule, _ in onnxattr.api.inspect(computed, method)}
    assert rules_of["mask_add"] == "pass"
    x = rng.standard_normal((4, 6)).astype(np.float32)
    (y1, r1), (y2, r2) = [ort.InferenceSession(onnxattr.compile(m, method).SerializeToString()).run(None, {"x": x})
                          for m in (constant, computed)]
    np.testing.assert_array_equal(y2, y1)
    assert np.abs(r1).max() > 0
    np.testing.assert_allclose(r2, r1, rtol=0, atol=1e-6 * np.abs(r1).max())


@pytest.mark.parametrize("method", ["deep_taylor", "lrp.z_plus", "lrp.alpha_1_beta_0"])
def test_an_activation_after_a_reshape_of_a_layer_still_belongs_to_it(method):
    """A transformer's MLP activation read through the layout ops that move its tokens (Reshape, Transpose) is the
    layer's own activation, as it is when read directly: the two orders compute the same function and give one map
    (the dynamo export of a SegFormer put its Gelu after them, and deep_taylor took the Gelu's gradient there)."""
    from onnx import helper

    from tests.models import single_io_model

    rng = np.random.default_rng(6)
    w1, w2 = rng.standard_normal((6, 8)).astype(np.float32), rng.standard_normal((8, 3)).astype(np.float32)
    n = helper.make_node
    move = [n("Reshape", ["{}", "split"], ["r"]), n("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
            n("Reshape", ["t", "flat"], ["{}_moved"])]

    def model(act_first):
        first = [n("MatMul", ["x", "W1"], ["h"])]
        if act_first:
            body = [n("Tanh", ["h"], ["a"], name="act")] + [
                n(m.op_type, [i.format("a") for i in m.input], [o.format("a") for o in m.output],
                  **{a.name: helper.get_attribute_value(a) for a in m.attribute}) for m in move]
            last = "a_moved"
        else:
            body = [n(m.op_type, [i.format("h") for i in m.input], [o.format("h") for o in m.output],
                      **{a.name: helper.get_attribute_value(a) for a in m.attribute}) for m in move] + [
                n("Tanh", ["h_moved"], ["a"], name="act")]
            last = "a"
        return single_io_model(first + body + [n("MatMul", [last, "W2"], ["y"])],
                               {"W1": w1, "W2": w2, "split": np.array([0, 2, 4], np.int64),
                                "flat": np.array([0, 8], np.int64)}, ["N", 6], ["N", 3])

    x = rng.standard_normal((4, 6)).astype(np.float32)
    maps = []
    for act_first in (True, False):
        m = model(act_first)
        rules = {name: rule for name, _, rule, _ in onnxattr.api.inspect(m, method)}
        assert rules["act"] == "pass", (act_first, rules["act"])
        maps.append(ort.InferenceSession(onnxattr.compile(m, method).SerializeToString()).run(None, {"x": x})[1])
    assert np.abs(maps[0]).max() > 0
    np.testing.assert_allclose(maps[1], maps[0], rtol=0, atol=1e-6 * np.abs(maps[0]).max())


def _map(model, method, x):
    compiled = onnxattr.compile(model, method)
    return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]


X_FLAT = np.random.default_rng(12).standard_normal((4, 5)).astype(np.float32)


@pytest.mark.filterwarnings("ignore::onnxattr.errors.OnnxAttrWarning")
@pytest.mark.parametrize("preset", PRESETS)
def test_product_of_two_activations_does_not_depend_on_operand_order(preset):
    """A squeeze-excitation's gate * a takes its gradient, as Zennit and iNNvestigate give a product without a
    rule, whichever operand is first (before, relevance went to the first: all of it into the gate's branch
    in torchvision's order; tests/oracles/data/torch_gated checks the maps against Zennit)."""
    first, second = _map(gated_net(True), preset, X_FLAT), _map(gated_net(False), preset, X_FLAT)
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-6 * np.abs(first).max())
    rules = {row[0]: row[2] for row in onnxattr.inspect(gated_net(True), preset)}
    assert rules["gate"] == "gradient"


@pytest.mark.filterwarnings("ignore::onnxattr.errors.OnnxAttrWarning")
@pytest.mark.parametrize("preset", PRESETS)
def test_layernorm_written_out_gives_the_op_map(preset):
    """torch's opset < 17 export and tf2onnx's Keras export write a LayerNorm out (tf2onnx in four ways, one a
    BatchNormalization of the input's own statistics); its ops, gamma and centring mean included, take their
    gradient, so the map is the LayerNormalization op's (before, the written-out forms passed relevance to the
    first operand of each product, tf2onnx's final Add took the residual split and its BatchNormalization was
    taken for a layer: another map for each export)."""
    # atol 1e-6 too: a flat first layer gives each input its row's total, which is 0 here up to rounding
    for form in ("torch", "tf", "tf_beta", "tf_neg", "tf_bn"):
        want = _map(layernorm_net("op", zero_beta=form == "tf_neg"), preset, X_FLAT)
        got = _map(layernorm_net(form), preset, X_FLAT)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=max(1e-5 * np.abs(want).max(), 1e-6), err_msg=form)


@pytest.mark.parametrize("x_first", [True, False])
def test_silu_written_out_passes_relevance_in_either_order(x_first):
    """h * Sigmoid(h) is SiLU as torch exports it: an activation, whose relevance passes unchanged to h (Zennit's
    Pass on nn.SiLU), in either operand order. lrp.z on a bias-free MLP, against numpy."""
    w1, w2 = (numpy_helper.to_array(t) for t in swish_net(x_first).graph.initializer)
    h = X_FLAT @ w1
    f = h / (1 + np.exp(-h))
    y = f @ w2
    seed = np.where(np.arange(3) == y.argmax(1)[:, None], y, 0)
    r_f = f * ((seed / y) @ w2.T)
    want = X_FLAT * ((r_f / h) @ w1.T)
    got = _map(swish_net(x_first), "lrp.z", X_FLAT)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


@pytest.mark.filterwarnings("ignore::onnxattr.errors.OnnxAttrWarning")
@pytest.mark.parametrize("preset", ["lrp.z", "lrp.epsilon_plus", "deep_taylor"])
def test_square_written_as_a_product_gives_the_pow_map(preset):
    """h * h is h ** 2 as torch writes x * x: both take their gradient (before, Mul(h, h) passed relevance as
    an activation written out, and Pow took its gradient)."""
    from onnx import helper

    from tests.lrp.nets import _head

    maps = []
    for node, extra in ((helper.make_node("Mul", ["h", "h"], ["f"]), {}),
                        (helper.make_node("Pow", ["h", "two"], ["f"]), {"two": np.array(2, np.float32)})):
        maps.append(_map(_head(np.random.default_rng(3), [node], dict(extra), "f"), preset, X_FLAT))
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-5, atol=1e-6 * np.abs(maps[1]).max())
    assert np.abs(maps[1]).max() > 0


@pytest.mark.filterwarnings("ignore::onnxattr.errors.OnnxAttrWarning")
@pytest.mark.parametrize("preset", ["lrp.z", "lrp.epsilon_plus", "deep_taylor", "lrp.alpha_2_beta_1"])
def test_one_over_x_written_as_div_gives_the_reciprocal_map(preset):
    """1 / h as Div(1, h) and as Reciprocal(h) take their gradient alike (before, the Div passed relevance as a scaling
    of h would, and Reciprocal took its gradient). With c / h the logit seed is c times that of 1 / h and so is the
    gradient, and the rules are linear in the relevance: c^2 times the map."""
    from onnx import helper

    from tests.lrp.nets import _head

    def net(node, c):
        return _head(np.random.default_rng(4), [node], {"c": np.array(c, np.float32)}, "f")

    one = _map(net(helper.make_node("Div", ["c", "h"], ["f"]), 1.0), preset, X_FLAT)
    reciprocal = _map(net(helper.make_node("Reciprocal", ["h"], ["f"]), 1.0), preset, X_FLAT)
    np.testing.assert_allclose(one, reciprocal, rtol=1e-5, atol=1e-6 * np.abs(reciprocal).max())
    three = _map(net(helper.make_node("Div", ["c", "h"], ["f"]), 3.0), preset, X_FLAT)
    np.testing.assert_allclose(three, 9 * one, rtol=1e-5, atol=1e-6 * np.abs(one).max())
    assert np.abs(one).max() > 0


@pytest.mark.filterwarnings("ignore::onnxattr.errors.OnnxAttrWarning")
@pytest.mark.parametrize("export", sorted(SE_EXPORTS))
@pytest.mark.parametrize("preset", ["lrp.epsilon_plus", "lrp.epsilon", "deep_taylor", "lrp.epsilon_gamma_box"])
def test_gates_hold_gives_the_map_of_the_net_with_the_gate_frozen(tmp_path, export, preset):
    """gates = "hold" holds a squeeze-excitation's gate, broadcast over its input (torch's [N, 8, 1, 1], tf2onnx's
    channels-last [N, 1, 1, 6] whose batch shape inference names apart): the map of the same export with the gate
    replaced by its value for this batch (a Mul by a constant, whose relevance passes), in either operand order;
    the shipped preset (the gate's gradient) gives another map."""
    model, frozen, x, name, signal, se_mul = se_export(export)
    f = tmp_path / "hold.toml"
    f.write_text(f'base = "{preset}"\ngates = "hold"\n')
    kw = {"low": 0.0, "high": 1.0} if "box" in preset else {}

    def run(m, method):
        compiled = onnxattr.compile(m, method, **kw)
        return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {name: x})[0]

    want = run(frozen, preset)
    np.testing.assert_allclose(run(model, str(f)), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert np.abs(run(model, preset) - want).max() > 1e-2 * np.abs(want).max()
    rules = {row[0]: row[2] for row in onnxattr.inspect(model, str(f), **kw)}
    assert rules[se_mul] == f"pass to operand {signal}"


def _tanh_gelu_net(form: str, after_relu: bool = False):
    """x -> MatMul -> h -> GELU's tanh form, 0.5 h (1 + tanh(0.798 (h + 0.0447 h^3))), -> MatMul: written out with
    the 0.5 on h first ("scale_first", HF's gelu_new) or on the product ("scale_last"), or the opset-20 Gelu op;
    ``after_relu``: of Relu(h) instead, so that it is no kernel layer's own activation."""
    from onnx import helper

    from tests.lrp.nets import _head

    mk = helper.make_node
    relu = [mk("Relu", ["h0"], ["h"])] if after_relu else []
    if form == "op":
        model = _head(np.random.default_rng(6), relu + [mk("Gelu", ["h"], ["f"], approximate="tanh")], {}, "f")
        model.opset_import[0].version = 20
        return _renamed_head(model) if after_relu else model
    nodes = relu + [mk("Pow", ["h", "three"], ["h3"]), mk("Mul", ["h3", "c2"], ["h3c"]), mk("Add", ["h", "h3c"], ["u"]),
             mk("Mul", ["u", "c1"], ["v"]), mk("Tanh", ["v"], ["t"]), mk("Add", ["t", "one"], ["a"])]
    if form == "scale_first":
        nodes += [mk("Mul", ["h", "half"], ["hh"]), mk("Mul", ["hh", "a"], ["f"])]
    else:
        nodes += [mk("Mul", ["h", "a"], ["p"]), mk("Mul", ["p", "half"], ["f"])]
    consts = {"half": 0.5, "three": 3.0, "c2": 0.044715, "c1": 0.7978845608, "one": 1.0}
    model = _head(np.random.default_rng(6), nodes, {k: np.array(v, np.float32) for k, v in consts.items()}, "f")
    return _renamed_head(model) if after_relu else model


def _renamed_head(model):
    """_head's first MatMul writes h; with a Relu in front of the GELU it must write h0."""
    model.graph.node[0].output[0] = "h0"
    return model


@pytest.mark.filterwarnings("ignore::onnxattr.errors.OnnxAttrWarning")
@pytest.mark.parametrize("preset", ["lrp.epsilon_plus", "lrp.z", "deep_taylor"])
def test_scales_gradient_multiplies_by_a_scaling_but_leaves_an_activation_whole(tmp_path, preset):
    """scales = "gradient" gives a Mul by a constant its gradient (c times the map where the relevance passes, the
    rules being linear in it), as Zennit does; the 0.5 of a GELU written out stays part of the activation, which
    passes whole as the Gelu op does, in both places HF and torch put the 0.5 and with either scales (before,
    deep_taylor took the gradient of HF's form, whose product reads 0.5 h rather than the layer's output h)."""
    from tests.lrp.test_named import _scaled_net

    f = tmp_path / "scales.toml"
    f.write_text(f'base = "{preset}"\nscales = "gradient"\n')
    scaled = _scaled_net(3.0)
    passing = _map(scaled, preset, X_FLAT)
    np.testing.assert_allclose(_map(scaled, str(f), X_FLAT), 3.0 * passing, rtol=1e-5, atol=1e-6 * np.abs(passing).max())
    for method in (preset, str(f)):
        want = _map(_tanh_gelu_net("op"), method, X_FLAT)
        assert np.abs(want).max() > 0
        for form in ("scale_first", "scale_last"):
            np.testing.assert_allclose(_map(_tanh_gelu_net(form), method, X_FLAT), want, rtol=1e-5,
                                       atol=1e-6 * np.abs(want).max(), err_msg=f"{method} {form}")


@pytest.mark.filterwarnings("ignore::onnxattr.errors.OnnxAttrWarning")
@pytest.mark.parametrize("scales", ["pass", "gradient"])
def test_an_activation_written_out_that_takes_its_gradient_is_the_op_derivative(tmp_path, scales):
    """deep_taylor differentiates an activation that is no kernel layer's own (activation = "gradient"): GELU
    written out after a Relu then takes the derivative the Gelu op takes, every op of it (its constant scalings, the
    Add inside tanh's argument) by its gradient, in both placements of the 0.5 and with either scales (before, with
    the default scales the constant scalings passed relevance, and the map was another)."""
    f = tmp_path / "dt.toml"
    f.write_text(f'base = "deep_taylor"\nscales = "{scales}"\n')
    want = _map(_tanh_gelu_net("op", after_relu=True), str(f), X_FLAT)
    assert np.abs(want).max() > 0
    for form in ("scale_first", "scale_last"):
        np.testing.assert_allclose(_map(_tanh_gelu_net(form, after_relu=True), str(f), X_FLAT), want, rtol=1e-4,
                                   atol=1e-5 * np.abs(want).max(), err_msg=form)

