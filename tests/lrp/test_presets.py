"""Presets are data: every shipped file parses, user files compile and change the map as declared, and
a malformed file gets an error naming the file, the line and the key."""

import numpy as np
import onnxruntime as ort
import pytest

import onnxattr
from onnxattr.cli import main
from onnxattr.errors import UsageError
from onnxattr.lrp.presets import load_preset
from onnxattr.methods.lrp import preset_folder
from tests.lrp.nets import resnet_like

X = np.random.default_rng(5).random((2, 2, 8, 8)).astype(np.float32)


def relevance(model, method, **kw):
    return ort.InferenceSession(onnxattr.compile(model, method, **kw).SerializeToString()).run(
        ["relevance"], {"x": X})[0]


def test_every_shipped_preset_is_a_method_that_compiles():
    names = [p.name[:-5] for p in preset_folder().iterdir() if p.name.endswith(".toml")]
    assert len(names) >= 25
    model = resnet_like(bias=True)
    for name in names:
        assert load_preset(preset_folder() / f"{name}.toml").name == name
        r = relevance(model, name)
        assert r.shape == X.shape and np.isfinite(r).all(), name


def test_user_rule_file_equals_the_preset_it_restates(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('[layers]\ndefault = { rule = "z" }\npool = { rule = "z" }\n')
    model = resnet_like(bias=True)
    np.testing.assert_array_equal(relevance(model, str(f)), relevance(model, "lrp.z"))


@pytest.mark.filterwarnings("ignore::onnxattr.errors.OnnxAttrWarning")
def test_a_file_of_only_a_base_is_that_preset(tmp_path):
    """base = "NAME" takes the shipped preset's keys, parameters and layer rules: the same map for every preset
    (the maps of different presets differ, so this can fail)."""
    model = resnet_like(bias=True, batchnorm=True)
    names = sorted(p.name[:-5] for p in preset_folder().iterdir() if p.name.endswith(".toml"))
    maps = {}
    for name in names:
        f = tmp_path / f"{name}.toml"
        f.write_text(f'base = "{name}"\n')
        maps[name] = relevance(model, name)
        np.testing.assert_array_equal(relevance(model, str(f)), maps[name], err_msg=name)
    assert len({m.tobytes() for m in maps.values()}) > len(names) // 2


def test_a_base_with_changes(tmp_path):
    """A file's own layer entries, parameters and keys replace the base's; the base's parameters stay settable."""
    model = resnet_like(bias=True)
    f = tmp_path / "mine.toml"
    f.write_text('base = "lrp.epsilon_plus"\nadd = "gradient"\n[params]\ngamma = { default = 0.5 }\n'
                 '[layers]\nconv = { rule = "gamma", gamma = "$gamma" }\n')
    rows = {r[0]: r[2:] for r in onnxattr.inspect(model, str(f))}
    assert rows["Conv_3"] == ("gamma(gamma=0.5)", "conv") and rows["MatMul_10"] == ("epsilon(epsilon=1e-06)", "dense")
    assert rows["Add_6"] == ("gradient", "add")
    full = tmp_path / "full.toml"
    full.write_text('style = "zennit"\nadd = "gradient"\n[layers]\nconv = { rule = "gamma", gamma = 0.25 }\n'
                    'dense = { rule = "epsilon", epsilon = 0.1 }\nnorm = { rule = "pass" }\n'
                    'default = { rule = "epsilon", epsilon = 0.1 }\npool = { rule = "z" }\n')
    np.testing.assert_array_equal(relevance(model, str(f), epsilon=0.1, gamma=0.25), relevance(model, str(full)))
    bad = tmp_path / "bad.toml"
    bad.write_text('# a typo\nbase = "lrp.epsilonplus"\n')
    with pytest.raises(UsageError, match=r"bad\.toml:2: base = 'lrp\.epsilonplus' is not a shipped preset "
                                         r"\(known: deep_taylor, .*lrp\.epsilon_plus,"):
        onnxattr.compile(model, str(bad))


def test_a_gates_value_that_is_not_known_names_its_line(tmp_path):
    f = tmp_path / "gates.toml"
    f.write_text('base = "lrp.epsilon"\ngates = "held"\n')
    with pytest.raises(UsageError, match=r"gates\.toml:2: gates = 'held' is not one of gradient, hold"):
        load_preset(f, {"lrp.epsilon": load_preset(preset_folder() / "lrp.epsilon.toml")})


def test_user_rule_file_changes_only_what_it_declares(tmp_path):
    """flat on the first layer of a bias-free net: the map changes, but flat conserves relevance like
    the z rule it replaces, so the total stays the logit; flat everywhere is lrp.flat."""
    model = resnet_like()
    first = tmp_path / "first.toml"
    first.write_text('[layers]\nfirst = { rule = "flat" }\ndefault = { rule = "z" }\npool = { rule = "z" }\n')
    r_first, r_z = relevance(model, str(first)), relevance(model, "lrp.z")
    assert np.abs(r_first - r_z).max() > 1e-2 * np.abs(r_z).max()
    np.testing.assert_allclose(r_first.reshape(2, -1).sum(1), r_z.reshape(2, -1).sum(1), rtol=1e-4)
    everywhere = tmp_path / "all.toml"
    everywhere.write_text('[layers]\ndefault = { rule = "flat" }\npool = { rule = "z" }\n')
    np.testing.assert_array_equal(relevance(model, str(everywhere)), relevance(model, "lrp.flat"))


def test_parameters_of_a_user_file(tmp_path):
    f = tmp_path / "eps.toml"
    f.write_text('[params]\neps = { default = 0.5, doc = "mine" }\n[layers]\ndefault = { rule = "epsilon", '
                 'epsilon = "$eps" }\npool = { rule = "z" }\n')
    model = resnet_like(bias=True)
    np.testing.assert_allclose(relevance(model, str(f), eps=3.0), relevance(model, "lrp.epsilon", epsilon=3.0),
                               rtol=1e-6)


@pytest.mark.parametrize("text,where", [
    ('[layers]\nfirst = { rule = "flat" }\nsecnd = { rule = "z" }\n', ":3: unknown layer selector 'secnd'"),
    ('stlye = "zennit"\n[layers]\ndefault = { rule = "z" }\n', ":1: unknown key 'stlye'"),
    ('[layers]\ndefault = { rule = "epsilon", epsilon = "big" }\n', ":2: 'default': epsilon must be a float"),
    ('[layers]\ndefault = { rule = "epsilon", epsilon = "$eps" }\n', "undeclared parameter '$eps'"),
    ('[layers]\n\ndefault = { rule = "zplus" }\n', ":3: 'default': unknown rule 'zplus'"),
    ('[layers]\ndefault = { rule = "zbox", low = 0 }\n', ":2: 'default': rule zbox needs low and high"),
    ('[layers\ndefault = { rule = "z" }\n', "not valid TOML"),
    ('style = "zennit"\n', ":1: a preset needs a [layers] table"),
    ('seed = "two"\n[layers]\ndefault = { rule = "z" }\n', ":1: seed = 'two' is not one of"),
    ('params = [1]\n[layers]\ndefault = { rule = "z" }\n', ":1: params must be a table"),
    ('doc = 5\n[layers]\ndefault = { rule = "z" }\n', ":1: doc must be a string"),
    ('[layers]\ndefault = { rule = "z", epsilon = 0.1 }\n', ":2: 'default': rule z takes no epsilon"),
    ('[params]\neps = { default = 1.0, dco = "x" }\n[layers]\ndefault = { rule = "epsilon", epsilon = "$eps" }\n',
     ":2: parameter 'eps': unknown key 'dco'"),
    ('[params]\nuntil_layer_idx = { default = 1.5 }\n[layers]\nuntil = { rule = "flat" }\n',
     ":2: parameter 'until_layer_idx': default must be an integer >= 0"),
])
def test_malformed_rule_file_names_file_line_and_key(tmp_path, capsys, text, where):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(UsageError, match="bad.toml"):
        load_preset(f)
    code = main(["compile", str(resnet_like().SerializeToString() and _save(tmp_path)), "--rules", str(f),
                 "-o", str(tmp_path / "out.onnx")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and where in err and str(f) in err, err
    assert not (tmp_path / "out.onnx").exists()


def _save(tmp_path):
    import onnx

    path = tmp_path / "net.onnx"
    onnx.save(resnet_like(), path)
    return path


def test_inspect_shows_the_rule_of_every_node(tmp_path, capsys):
    path = _save(tmp_path)
    assert main(["inspect", str(path), "--method", "lrp.sequential_preset_a_flat"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    ops = {name: row.split()[1] for name, row in rows.items()}
    convs = [n for n, op in ops.items() if op == "Conv"]
    dense = [n for n, op in ops.items() if op == "MatMul"]
    assert "flat" in rows[convs[0]] and "[first]" in rows[convs[0]]
    assert all("alpha_1_beta_0" in rows[c] for c in convs[1:])
    assert all("epsilon(epsilon=0.1)" in rows[d] for d in dense)
    assert "gradient" in rows[next(n for n, op in ops.items() if op == "MaxPool")]
    assert " z " in rows[next(n for n, op in ops.items() if op == "AveragePool")] + " "
    assert "z  [add]" in rows[next(n for n, op in ops.items() if op == "Add")]
    assert main(["inspect", str(path), "--method", "random"]) == 0  # a baseline runs no backward pass
    assert all("none (baseline" in line for line in capsys.readouterr().out.splitlines()[1:])


def test_until_layer_idx_counts_kernel_layers_from_zero():
    rows = onnxattr.api.inspect(resnet_like(), "lrp.sequential_preset_b_flat_until_idx", until_layer_idx=1)
    kernel = [r for r in rows if r[1] in ("Conv", "MatMul")]
    assert [r[2] for r in kernel] == ["flat", "flat", "alpha_2_beta_1", "epsilon(epsilon=0.1)",
                                      "epsilon(epsilon=0.1)"]


@pytest.mark.parametrize("method,params,message", [
    ("lrp.epsilon", {"epsilon": 0.0}, "lrp.epsilon: parameter epsilon=0: must be > 0"),
    ("lrp.epsilon", {"epsilon": -1.0}, "must be > 0"),
    ("lrp.alpha_beta", {"alpha": 1.0, "beta": 1.0}, "alpha - beta = 1"),
    ("lrp.alpha_beta", {"alpha": 0.5, "beta": -0.5}, "alpha, beta >= 0"),
    ("lrp.epsilon_gamma_box", {"gamma": -1.0}, "gamma=-1: must be >= 0"),
])
def test_rule_parameters_outside_their_range_are_usage_errors(method, params, message):
    """What iNNvestigate and Zennit refuse (epsilon <= 0, alpha - beta != 1, negative alpha/beta) is
    refused here, naming the method and the value."""
    with pytest.raises(UsageError, match=message):
        onnxattr.compile(resnet_like(bias=True), method, **params)


def test_a_rule_value_out_of_range_in_a_file_names_the_file_and_selector(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('[layers]\ndefault = { rule = "epsilon", epsilon = -1 }\n')
    with pytest.raises(UsageError, match=r"mine\.toml: 'default': parameter epsilon=-1: must be > 0"):
        onnxattr.compile(resnet_like(bias=True), str(f))


def test_a_rule_file_with_a_byte_order_mark(tmp_path):
    f = tmp_path / "bom.toml"
    f.write_bytes("\ufeff[layers]\ndefault = { rule = \"z\" }\n".encode("utf-8"))
    assert load_preset(f).layers == {"default": {"rule": "z"}}


def test_node_patterns_pick_rules_by_name_before_the_selectors(tmp_path):
    """[nodes]: an exact name or a glob pattern, the first matching in file order, before [layers]; a map
    built that way equals the one of a file whose selectors give the same rules (flat on the first Conv,
    epsilon on both MatMuls)."""
    model = resnet_like(bias=True)
    named = tmp_path / "named.toml"
    named.write_text('[params]\neps = { default = 0.5 }\n'
                     '[layers]\ndefault = { rule = "z" }\npool = { rule = "z" }\n'
                     '[nodes]\n"Conv_0" = { rule = "flat" }\n'
                     '"MatMul_*" = { rule = "epsilon", epsilon = "$eps" }\n'
                     '"*" = { rule = "w_square" }\n"Conv_3" = { rule = "flat" }\n')
    with pytest.warns(onnxattr.OnnxAttrWarning, match=r"\[nodes\] 'Conv_3' matches only nodes an earlier"):
        rows = {r[0]: r[2:] for r in onnxattr.api.inspect(model, str(named))}
    assert rows["Conv_0"] == ("flat", "node 'Conv_0'")
    assert rows["MatMul_10"] == ("epsilon(epsilon=0.5)", "node 'MatMul_*'")
    assert rows["Conv_3"] == rows["Conv_5"] == ("w_square", "node '*'")  # "*" comes before "Conv_3"
    assert rows["AveragePool_8"] == ("w_square", "node '*'") and rows["Add_6"] == ("z", "add")
    same = tmp_path / "same.toml"
    same.write_text('[layers]\nfirst = { rule = "flat" }\ndense = { rule = "epsilon", epsilon = 2.0 }\n'
                    'default = { rule = "w_square" }\npool = { rule = "w_square" }\n')
    with pytest.warns(onnxattr.OnnxAttrWarning):
        np.testing.assert_array_equal(relevance(model, str(named), eps=2.0), relevance(model, str(same)))


def test_pass_on_a_layer_that_changes_the_shape_is_a_usage_error(tmp_path, capsys):
    f = tmp_path / "pass.toml"
    f.write_text('[layers]\ndefault = { rule = "z" }\n[nodes]\n"MatMul_10" = { rule = "pass" }\n')
    assert main(["compile", str(_save(tmp_path)), "--rules", str(f), "-o", str(tmp_path / "o.onnx")]) == 2
    line = capsys.readouterr().err.strip()
    assert str(f) in line and "rule pass on MatMul 'MatMul_10'" in line and "not known to have one shape" in line, line
    assert not (tmp_path / "o.onnx").exists()
    model = resnet_like()  # an AveragePool on symbolic H, W: 'H' -> 'h' is not shown to be one shape
    for v in list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 4:
            dims[2].dim_param, dims[3].dim_param = "H", "W"
    pool = tmp_path / "pool.toml"
    pool.write_text('[layers]\ndefault = { rule = "z" }\npool = { rule = "pass" }\n')
    with pytest.raises(UsageError, match="rule pass on AveragePool"):
        onnxattr.compile(model, str(pool))


def test_a_node_name_with_glob_characters_matches_itself(tmp_path):
    """A name copied from `inspect` such as /features[0]/Conv is a glob that does not match itself."""
    model = resnet_like(bias=True)
    model.graph.node[0].name = "/features[0]/Conv*"
    f = tmp_path / "exact.toml"
    f.write_text('[layers]\ndefault = { rule = "z" }\n[nodes]\n"/features[0]/Conv*" = { rule = "flat" }\n')
    rows = {r[0]: r[2:] for r in onnxattr.api.inspect(model, str(f))}
    assert rows["/features[0]/Conv*"] == ("flat", "node '/features[0]/Conv*'")


def test_a_node_pattern_matching_no_layer_warns(tmp_path, capsys):
    f = tmp_path / "typo.toml"
    f.write_text('[layers]\ndefault = { rule = "z" }\n'
                 '[nodes]\n"Conv_O" = { rule = "flat" }\n"Mat*" = { rule = "z" }\n')
    with pytest.warns(onnxattr.OnnxAttrWarning, match=r"\[nodes\] 'Conv_O' matches no node on the explained"):
        onnxattr.compile(resnet_like(), str(f))
    relu = tmp_path / "relu.toml"
    relu.write_text('[layers]\ndefault = { rule = "z" }\n[nodes]\n"Relu_*" = { rule = "flat" }\n')
    with pytest.warns(onnxattr.OnnxAttrWarning, match=r"'Relu_\*' matches only nodes that do not take its rule"):
        onnxattr.compile(resnet_like(), str(relu))
    assert main(["compile", str(_save(tmp_path)), "--rules", str(f), "-o", str(tmp_path / "o.onnx")]) == 0
    assert "onnxattr: warning: " in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    for quote in ('"', "'"):  # a TOML literal string ('...') as the key is found on its line too
        bad.write_text('[layers]\ndefault = { rule = "z" }\n[nodes]\n'
                       f'{quote}Conv_0{quote} = {{ rule = "flatt" }}\n')
        with pytest.raises(UsageError, match=r"bad.toml:4: 'Conv_0': unknown rule 'flatt'"):
            load_preset(bad)
