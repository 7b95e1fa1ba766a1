"""onnxattr/lrp/named.py: a rule file's [nodes] entries on nodes that are not layers (activations, element-wise
ops, residual Adds, products of two activations), each checked against an independent form of the same map."""

import re
import warnings

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

import onnxattr
from onnxattr.errors import UsageError
from onnxattr.lrp.presets import load_preset
from tests.lrp.nets import _head, gated_net, resnet_like
from tests.models import single_io_model

X = np.random.default_rng(21).standard_normal((4, 5)).astype(np.float32)
# layer rules that differ in how they read the relevance; every one is linear in it
LAYER_RULES = {
    "epsilon": '{ rule = "epsilon", epsilon = 0.25 }',
    "alpha_beta": '{ rule = "alpha_beta", alpha = 2, beta = 1 }',
    "z_plus": '{ rule = "z_plus" }',
    "gamma": '{ rule = "gamma", gamma = 0.5 }',
    "w_square": '{ rule = "w_square" }',
}


def rule_file(tmp_path, layers: str, nodes: str = "", name="rules.toml", top='style = "zennit"\n'):
    f = tmp_path / name
    f.write_text(f"{top}[layers]\ndefault = {layers}\n" + (f"[nodes]\n{nodes}\n" if nodes else ""))
    return str(f)


def relevance(model, method, x=X, **kw):
    compiled = onnxattr.compile(model, method, **kw)
    return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]


def rules_of(model, method):
    return {row[0]: row[2:] for row in onnxattr.inspect(model, method)}


def _gate_values(model, x):
    """The gate g = Sigmoid(mean(Relu(x W1)) W3 + b3) of gated_net, in numpy."""
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    a = np.maximum(x @ w["W1"], 0)
    return (1 / (1 + np.exp(-(a.mean(-1, keepdims=True) @ w["W3"] + w["b3"])))).astype(np.float32)


def _gate_as_constant(model, g):
    """gated_net with its gate's branch replaced by the constant g (one row per sample)."""
    out = type(model)()
    out.CopyFrom(model)
    keep = [n for n in out.graph.node if n.op_type not in ("ReduceMean", "Add", "Sigmoid")
            and n.name != "fc3"]
    del out.graph.node[:]
    out.graph.node.extend(keep)
    out.graph.initializer.append(numpy_helper.from_array(g, "g"))
    return out


@pytest.mark.parametrize("gate_first", [True, False])
@pytest.mark.parametrize("layers", sorted(LAYER_RULES))
def test_pass_to_an_operand_holds_the_gate_of_a_product(tmp_path, gate_first, layers):
    """"gate" = { rule = "pass", operand = k } gives a squeeze-excitation's gate * a all its relevance to a, the
    gate held constant: the map of the same net whose gate is a constant (an element-wise scale, whose relevance
    passes), in either operand order; and the products warning is gone."""
    model = gated_net(gate_first)
    signal = 1 if gate_first else 0
    held = rule_file(tmp_path, LAYER_RULES[layers], f'"gate" = {{ rule = "pass", operand = {signal} }}')
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got = relevance(model, held)
    assert not [w for w in seen if "product of two" in str(w.message)], [str(w.message) for w in seen]
    assert rules_of(model, held)["gate"] == ("pass to operand %d" % signal, "node 'gate'")
    want = relevance(_gate_as_constant(model, _gate_values(model, X)), rule_file(tmp_path, LAYER_RULES[layers],
                                                                                  name="plain.toml"))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    assert np.abs(want).max() > 0


def _scaled_net(c):
    """x -> MatMul W1 -> h -> Mul by the scalar c ("scale": a LayerScale, an input scaling) -> Relu -> MatMul W2."""
    nodes = [helper.make_node("Mul", ["h", "c"], ["hs"], name="scale"), helper.make_node("Relu", ["hs"], ["f"])]
    return _head(np.random.default_rng(5), nodes, {"c": np.array(c, np.float32)}, "f")


@pytest.mark.parametrize("layers", sorted(LAYER_RULES))
def test_gradient_on_a_scale_multiplies_the_relevance_by_it(tmp_path, layers):
    """A Mul by a constant passes relevance; "scale" = { rule = "gradient" } multiplies it by c as Zennit does on a
    LayerScale. Every layer rule is linear in the relevance, so the map is c times the passing one."""
    model = _scaled_net(3.0)
    passing = relevance(model, rule_file(tmp_path, LAYER_RULES[layers], name="pass.toml"))
    scaled = relevance(model, rule_file(tmp_path, LAYER_RULES[layers], '"scale" = { rule = "gradient" }'))
    np.testing.assert_allclose(scaled, 3.0 * passing, rtol=1e-5, atol=1e-6 * np.abs(passing).max())
    assert np.abs(passing).max() > 0


def _two_branch_net():
    """x [N, 5] -> MatMul W1 -> h1, MatMul W2 -> h2; Add(h1, h2) ("sum") -> s -> MatMul W3 -> y [N, 3]; no biases."""
    rng = np.random.default_rng(8)
    w = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in (("W1", (5, 6)), ("W2", (5, 6)),
                                                                          ("W3", (6, 3)))}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h1"], name="fc1"),
             helper.make_node("MatMul", ["x", "W2"], ["h2"], name="fc2"),
             helper.make_node("Add", ["h1", "h2"], ["s"], name="sum"),
             helper.make_node("MatMul", ["s", "W3"], ["y"], name="fc3")]
    return single_io_model(nodes, w, ["N", 5], ["N", 3]), w


def test_epsilon_and_pass_on_a_residual_add_against_numpy(tmp_path):
    """"sum" = { rule = "epsilon", epsilon = 0.5 } splits an Add of activations as a layer of identity weights
    under the epsilon rule, R_i = h_i R / (s + 0.5 sign(s)); { rule = "pass", operand = 1 } gives operand 1 all.
    The z rule on the dense layers (zennit style: stabilizer 1e-6 sign(z)), against numpy."""
    model, w = _two_branch_net()
    h1, h2 = X @ w["W1"], X @ w["W2"]
    s = h1 + h2
    y = s @ w["W3"]
    stab = lambda z, eps: z + eps * np.where(z >= 0, 1, -1)  # noqa: E731
    seed = np.where(np.arange(3) == y.argmax(1)[:, None], y, 0)
    r_s = s * ((seed / stab(y, 1e-6)) @ w["W3"].T)
    back = lambda r, h, wk: X * ((r / stab(h, 1e-6)) @ wk.T)  # noqa: E731
    r_1, r_2 = h1 * r_s / stab(s, 0.5), h2 * r_s / stab(s, 0.5)
    cases = {'{ rule = "epsilon", epsilon = 0.5 }': back(r_1, h1, w["W1"]) + back(r_2, h2, w["W2"]),
             '{ rule = "pass", operand = 1 }': back(r_s, h2, w["W2"])}
    for i, (entry, want) in enumerate(cases.items()):
        f = rule_file(tmp_path, '{ rule = "z" }', f'"sum" = {entry}', name=f"add{i}.toml")
        np.testing.assert_allclose(relevance(model, f), want, rtol=1e-4, atol=1e-6 * np.abs(want).max(),
                                   err_msg=entry)


def test_z_and_gradient_on_an_add_equal_the_file_wide_add_rule(tmp_path):
    """"Add_6" = { rule = "z" } under add = "gradient" gives the map of add = "z", and the other way round."""
    model = resnet_like(bias=True)
    x = np.random.default_rng(3).standard_normal((2, 2, 8, 8)).astype(np.float32)
    for add, other in (("z", "gradient"), ("gradient", "z")):
        whole = rule_file(tmp_path, '{ rule = "epsilon" }', name=f"{add}.toml", top=f'add = "{add}"\n')
        named = rule_file(tmp_path, '{ rule = "epsilon" }', f'"Add_6" = {{ rule = "{add}" }}',
                          name=f"named_{add}.toml", top=f'add = "{other}"\n')
        want = relevance(model, whole, x)
        np.testing.assert_allclose(relevance(model, named, x), want, rtol=1e-5, atol=1e-7 * np.abs(want).max())
        assert not np.allclose(relevance(model, rule_file(tmp_path, '{ rule = "epsilon" }', name="o.toml",
                                                          top=f'add = "{other}"\n'), x), want)


def test_each_node_takes_the_first_pattern_whose_rule_it_takes(tmp_path):
    """"*" = flat names every node but only layers take flat; "*" = gradient then takes the Relus and the Add, and
    nothing is reported as shadowed. Nodes fused into a layer and data movement take no rule."""
    model = resnet_like(bias=True)
    f = rule_file(tmp_path, '{ rule = "z" }', '"*" = { rule = "flat" }\n"*[0-9]" = { rule = "gradient" }')
    with warnings.catch_warnings():
        warnings.simplefilter("error", onnxattr.OnnxAttrWarning)
        rows = rules_of(model, f)
    assert rows["Conv_0"] == rows["MatMul_10"] == rows["AveragePool_8"] == ("flat", "node '*'")
    assert rows["Relu_1"] == rows["Add_6"] == ("gradient", "node '*[0-9]'")
    assert rows["MaxPool_2"][1] != "node '*[0-9]'" and rows["Reshape_9"][1] != "node '*[0-9]'"


def test_a_pattern_that_no_node_takes_warns(tmp_path):
    """A layer rule on activations, pass with an operand on a layer, z on a product: matched, never taken."""
    model = resnet_like(bias=True)
    for entry in ('"Relu_*" = { rule = "epsilon" }', '"Conv_0" = { rule = "pass", operand = 0 }',
                  '"MaxPool_2" = { rule = "gradient" }'):
        f = rule_file(tmp_path, '{ rule = "z" }', entry)
        pattern = entry.split(" = ")[0].strip('"')
        with pytest.warns(onnxattr.OnnxAttrWarning, match=f"'{re.escape(pattern)}' matches only nodes that do not take its"):
            onnxattr.compile(model, f)
    f = rule_file(tmp_path, '{ rule = "z" }', '"gate" = { rule = "z" }')
    with pytest.warns(onnxattr.OnnxAttrWarning, match="'gate' matches only nodes that do not take its rule"):
        onnxattr.compile(gated_net(True), f)


@pytest.mark.parametrize("entry, message", [
    ('"n" = { rule = "pass", operand = 2 }', "operand=2: must be 0 or 1"),
    ('"n" = { rule = "epsilon", operand = 0 }', "'n': rule epsilon takes no operand"),
    ('"n" = { rule = "pass", operand = true }', "'n': operand must be a int, got True"),
])
def test_bad_operands_name_the_entry(tmp_path, entry, message):
    f = rule_file(tmp_path, '{ rule = "z" }', entry)
    with pytest.raises(UsageError, match=message):
        onnxattr.compile(gated_net(True), f)


def test_an_operand_under_layers_is_refused_with_its_line(tmp_path):
    f = tmp_path / "layers.toml"
    f.write_text('[layers]\ndefault = { rule = "z" }\npool = { rule = "pass", operand = 0 }\n')
    with pytest.raises(UsageError, match=r"layers\.toml:3: 'pool': operand picks an operand"):
        load_preset(f)
