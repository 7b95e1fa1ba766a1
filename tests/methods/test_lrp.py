"""onnxattr/methods/lrp.py: what the presets' builder says about the model (the presets' rules themselves are
checked in tests/lrp/ and against iNNvestigate and Zennit in test_oracles.py)."""

import re
import warnings
from pathlib import Path

import onnx
import pytest

import onnxattr
from onnxattr.errors import OnnxAttrWarning

LOSS_MODEL = Path(__file__).resolve().parents[1] / "oracles" / "data" / "torch_ce_loss.onnx"


def test_lrp_through_a_layernorm_warns_that_its_gradient_sums_to_zero():
    """The LRP presets give a LayerNormalization its gradient, as Zennit does; the norm ignores a shift along
    its axis, so that gradient sums to 0 there and the map sums to 0, not to the logit: they warn and point to
    attn_lrp, which conserves the logit on the same model (bias-free, beta 0); a net without a norm is silent."""
    import numpy as np
    import onnxruntime as ort
    from onnx import helper

    from tests.models import mlp, single_io_model

    rng = np.random.default_rng(4)
    w1, w2 = rng.standard_normal((5, 7)).astype(np.float32), rng.standard_normal((7, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]),
             helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["f"], axis=-1, name="ln"),
             helper.make_node("MatMul", ["f", "W2"], ["y"])]
    model = single_io_model(nodes, {"W1": w1, "W2": w2, "gamma": rng.uniform(0.5, 2, 7).astype(np.float32),
                                    "beta": np.zeros(7, np.float32)}, ["N", 5], ["N", 3])
    x = rng.standard_normal((4, 5)).astype(np.float32)
    sums = {}
    for method in ("lrp.epsilon", "deep_taylor", "attn_lrp"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiled = onnxattr.compile(model, method)
        said = [str(w.message) for w in caught if issubclass(w.category, OnnxAttrWarning)]
        y, r = ort.InferenceSession(compiled.SerializeToString()).run(None, {"x": x})
        sums[method] = r.sum(1) / y.max(1)
        if method == "attn_lrp":
            assert said == []
        else:
            assert len(said) == 1 and said[0].startswith(f"{method}: relevance crosses the LayerNormalization "
                                                         "node 'ln' by its gradient, which sums to 0")
    np.testing.assert_allclose(sums["lrp.epsilon"], 0, atol=1e-5)
    np.testing.assert_allclose(sums["attn_lrp"], 1, rtol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        onnxattr.compile(mlp(softmax=False)[0], "lrp.epsilon")


def test_lrp_through_a_loss_node_warns_and_names_the_way_out():
    """A model exported with its loss (torch's cross_entropy: SoftmaxCrossEntropyLoss) is explained through the
    loss by its gradient, which conserves nothing: LRP methods warn and point to --output; explaining the
    logits instead is silent."""
    for method in ("lrp.epsilon", "deep_taylor", "attn_lrp"):
        with pytest.warns(OnnxAttrWarning, match=f"{method}: relevance crosses the loss SoftmaxCrossEntropyLoss node "
                                                 ".* --output NAME"):
            onnxattr.compile(str(LOSS_MODEL), method)
    logits = next(n.input[0] for n in onnx.load(LOSS_MODEL).graph.node if n.op_type == "SoftmaxCrossEntropyLoss")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        onnxattr.compile(str(LOSS_MODEL), "lrp.epsilon", output=logits)
        onnxattr.compile(str(LOSS_MODEL), "gradient")  # the gradient of a loss is what it is


@pytest.mark.parametrize("form,first", [("torch", "centre"), ("tf", "centre_var"), ("tf_beta", "centre_var"),
                                        ("tf_neg", "centre_var"), ("tf_bn", "centre_var")])
def test_lrp_through_a_layernorm_written_out_warns_as_through_the_op(form, first):
    """A LayerNorm written out (torch's opset < 17 export, tf2onnx's Keras export) gives the op's map, which sums
    to 0 over the features: the presets warn there too, naming the centring; attn_lrp is silent."""
    from tests.lrp.nets import layernorm_net

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        onnxattr.compile(layernorm_net(form), "lrp.epsilon")
    said = [str(w.message) for w in caught if issubclass(w.category, OnnxAttrWarning)]
    assert len(said) == 1, said  # the norm's products are the norm's, not products of two activations
    assert re.match(f"lrp.epsilon: relevance crosses the centring Sub \\(a LayerNorm written out\\) node '{first}'.* "
                    "by its gradient, which sums to 0", said[0]), said
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        onnxattr.compile(layernorm_net(form), "attn_lrp")


@pytest.mark.parametrize("model, signal", [("torch_gated.onnx", 1), ("torch_gated_xfirst.onnx", 0)])
def test_the_product_warning_names_the_entry_that_holds_the_gate(tmp_path, model, signal):
    """A squeeze-excitation's gate [N, C, 1, 1] is broadcast over its input: the warning names gates = "hold" and the
    [nodes] entry with the input's operand, and each rule file it spells out (the preset as base) compiles without
    the warning."""
    path = Path(__file__).resolve().parents[1] / "oracles" / "data" / model
    with pytest.warns(OnnxAttrWarning, match="a product of two activations") as seen:
        onnxattr.compile(str(path), "lrp.epsilon_plus")
    text = next(str(w.message) for w in seen if "a product of two" in str(w.message))
    assert 'a rule file of base = "lrp.epsilon_plus" and gates = "hold" holds such a gate' in text, text
    entry = re.search(r'\[nodes\] (".*?" = \{ rule = "pass", operand = (\d) \})', text)
    assert entry is not None and entry.group(2) == str(signal), text
    for i, extra in enumerate(('gates = "hold"\n', f"[nodes]\n{entry.group(1)}\n")):
        f = tmp_path / f"held{i}.toml"
        f.write_text(f'base = "lrp.epsilon_plus"\n{extra}')
        with warnings.catch_warnings(record=True) as again:
            warnings.simplefilter("always")
            onnxattr.compile(str(path), str(f))
        assert not [w for w in again if "product of two" in str(w.message)], extra


def test_lrp_through_a_product_of_two_activations_warns():
    """A squeeze-excitation's gate * input takes its gradient in the presets (Zennit's and iNNvestigate's answer),
    which conserves nothing: they warn, naming the node; attn_lrp, which splits the product, and a SiLU written
    out (an activation: relevance passes to x) are silent."""
    from tests.lrp.nets import gated_net, swish_net

    with pytest.warns(OnnxAttrWarning, match="lrp.epsilon: relevance crosses the Mul node 'gate', a product of two "
                                             "activations .* by its gradient.*\"gate\" = { rule = \"pass\", "
                                             "operand = K }"):
        onnxattr.compile(gated_net(True), "lrp.epsilon")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        onnxattr.compile(gated_net(True), "attn_lrp")
        onnxattr.compile(swish_net(False), "lrp.epsilon")
