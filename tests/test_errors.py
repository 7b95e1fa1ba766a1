"""The error catalogue: one test per problem a user can cause, through the command line.

Each checks the exact exit code (onnxattr/errors.py, README "Exit codes") and that stderr is one line
``onnxattr: error: ...`` naming the problem. Items already covered elsewhere are not repeated here:
missing file, junk file, unknown method/parameter with suggestion, a non-positive integer parameter,
``-o`` equal to the input path, a wrong data shape and ``--target 9`` are in tests/test_cli.py;
folders, empty files and external data escaping the model's folder are in tests/test_load.py.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
import onnxattr.cli
import onnxattr.load
import onnxattr.output
from onnxattr.cli import main
from onnxattr.emitters import VJPS
from onnxattr.errors import EXIT_CODES
from tests.models import mlp
from tests.test_cli import run_cli

vi = helper.make_tensor_value_info
ROOT = Path(__file__).resolve().parents[1]


def make_model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def fails(capsys, error: str, *args) -> str:
    """Run the CLI; assert exit code of ``error`` and one line on stderr; return that line."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxattr: error: "), err
    assert "Traceback" not in err
    assert code == EXIT_CODES[error], (code, err)
    return lines[0]


def no_temporaries(folder):
    return not [f for f in os.listdir(folder) if f.startswith(".onnxattr-")]


@pytest.fixture
def model_path(tmp_path):
    p = tmp_path / "mlp.onnx"
    onnx.save(mlp()[0], p)
    return p


@pytest.fixture
def x_path(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32))
    return p


def save(tmp_path, model, name):
    p = tmp_path / name
    p.write_bytes(model.SerializeToString())
    return p


def token_model():
    """ids int64 [N, 5] -> Gather (embedding) -> mean over tokens -> MatMul: logits [N, 3]."""
    rng = np.random.default_rng(0)
    emb, w = rng.standard_normal((10, 4)).astype(np.float32), rng.standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"], name="embed"),
             helper.make_node("ReduceMean", ["emb"], ["pooled"], axes=[1], keepdims=0, name="pool"),
             helper.make_node("MatMul", ["pooled", "W"], ["logits"], name="head")]
    m = make_model(nodes, [vi("ids", TensorProto.INT64, ["N", 5])], [vi("logits", TensorProto.FLOAT, ["N", 3])],
                   [numpy_helper.from_array(emb, "E"), numpy_helper.from_array(w, "W")])
    return m, w


# ---- exit code 3: the file ------------------------------------------------------------------------

def test_unreadable_model_file(tmp_path, model_path, monkeypatch, capsys):
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(onnxattr.load, "open", refuse, raising=False)  # chmod 000 does not stop root
    line = fails(capsys, "ModelFileError", "compile", model_path, "-m", "gradient", "-o", tmp_path / "o.onnx")
    assert str(model_path) in line and "cannot read" in line and "Permission denied" in line
    assert not (tmp_path / "o.onnx").exists()


def test_truncated_model_file(tmp_path, model_path, capsys):
    data = model_path.read_bytes()
    cut = save(tmp_path, mlp()[0], "cut.onnx")
    cut.write_bytes(data[: len(data) * 2 // 3])
    line = fails(capsys, "ModelFileError", "compile", cut, "-m", "gradient", "-o", tmp_path / "o.onnx")
    assert str(cut) in line and "not an ONNX model" in line


def test_names_that_are_not_utf8(tmp_path, model_path, capsys):
    """A damaged name: protobuf hands back bytes, onnx.checker does not look at node names."""
    data = model_path.read_bytes()
    pos = data.index(b"MatMul")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[:pos] + b"\xbf" + data[pos + 1:])
    line = fails(capsys, "ModelFileError", "compile", bad, "-m", "gradient", "-o", tmp_path / "o.onnx")
    assert "UTF-8" in line and "op_type" in line


# ---- exit code 4: the model is invalid --------------------------------------------------------------

def test_model_failing_the_checker(tmp_path, capsys):
    m, _ = mlp()
    m.graph.node[0].input[1] = "no_such_weight"
    p = save(tmp_path, m, "bad.onnx")
    line = fails(capsys, "InvalidModelError", "compile", p, "-m", "gradient", "-o", tmp_path / "o.onnx")
    assert "onnx.checker" in line and "no_such_weight" in line
    assert "MatMul" in line  # the checker's lines are joined: the node is named too


def test_model_with_an_opset_newer_than_onnx_knows(tmp_path, capsys):
    m, _ = mlp()
    m.opset_import[0].version = 99
    p = save(tmp_path, m, "future.onnx")
    line = fails(capsys, "InvalidModelError", "compile", p, "-m", "gradient", "-o", tmp_path / "o.onnx")
    assert "future.onnx" in line and "opset 99" in line and "older opset" in line
    assert not (tmp_path / "o.onnx").exists()


def test_weight_shape_contradicting_the_graph(tmp_path, capsys):
    """The plain checker passes, strict shape inference does not: the user's model is blamed, not us."""
    m, _ = mlp(softmax=False)
    w2 = next(t for t in m.graph.initializer if t.name == "W2")
    w2.CopyFrom(numpy_helper.from_array(np.ones((5, 3), np.float32), "W2"))  # [8, 3] expected
    onnx.checker.check_model(m)
    p = save(tmp_path, m, "bad.onnx")
    line = fails(capsys, "InvalidModelError", "compile", p, "-m", "gradient", "-o", tmp_path / "o.onnx")
    assert "internal error" not in line and "inconsistent" in line and "MatMul" in line


def test_tensor_data_not_matching_its_dims(tmp_path, capsys):
    m, _ = mlp()
    b1 = next(t for t in m.graph.initializer if t.name == "b1")
    b1.raw_data = b1.raw_data[:-8]  # two floats short
    p = save(tmp_path, m, "bad.onnx")
    line = fails(capsys, "InvalidModelError", "compile", p, "-m", "gradient", "-o", tmp_path / "o.onnx")
    assert "'b1'" in line and "[8]" in line


# ---- exit code 5: unsupported ----------------------------------------------------------------------

def test_unsupported_ops_are_all_listed_with_node_names(tmp_path, capsys):
    assert not {"Sin", "CumSum"} & set(VJPS), "pick ops without a backward for this test"
    nodes = [helper.make_node("Sin", ["x"], ["a"], name="wave1"),
             helper.make_node("Relu", ["a"], ["b"], name="act"),
             helper.make_node("Sin", ["b"], ["c"], name="wave2"),
             helper.make_node("CumSum", ["c", "axis"], ["y"], name="running_total")]
    m = make_model(nodes, [vi("x", TensorProto.FLOAT, ["N", 4])], [vi("y", TensorProto.FLOAT, ["N", 4])],
                   [numpy_helper.from_array(np.array(1, np.int64), "axis")])
    p = save(tmp_path, m, "m.onnx")
    line = fails(capsys, "UnsupportedModelError", "compile", p, "-m", "gradient", "-o", tmp_path / "o.onnx")
    for word in ("Sin", "wave1", "wave2", "CumSum", "running_total"):
        assert word in line
    assert "'act'" not in line and not (tmp_path / "o.onnx").exists()


def _if_model():
    """y = Relu(x) if sum(x) > 0 else -x; the branches read x from the outer scope (no If input)."""
    then_g = helper.make_graph([helper.make_node("Relu", ["x"], ["t"])], "then", [],
                               [vi("t", TensorProto.FLOAT, ["N", 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [vi("e", TensorProto.FLOAT, ["N", 4])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="total"),
             helper.make_node("Greater", ["s", "zero"], ["cond"], name="positive"),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g, name="branch")]
    return make_model(nodes, [vi("x", TensorProto.FLOAT, ["N", 4])], [vi("y", TensorProto.FLOAT, ["N", 4])],
                      [numpy_helper.from_array(np.array(0, np.float32), "zero")])


def _loop_model():
    """y = x doubled three times by a Loop carrying x."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "v_in"], ["v_out"])],
        "body", [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []),
                 vi("v_in", TensorProto.FLOAT, ["N", 4])],
        [vi("cond_out", TensorProto.BOOL, []), vi("v_out", TensorProto.FLOAT, ["N", 4])])
    nodes = [helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body, name="repeat")]
    return make_model(nodes, [vi("x", TensorProto.FLOAT, ["N", 4])], [vi("y", TensorProto.FLOAT, ["N", 4])],
                      [numpy_helper.from_array(np.array(3, np.int64), "trips")])


@pytest.mark.parametrize("build,label", [(_if_model, "If 'branch'"), (_loop_model, "Loop 'repeat'")])
def test_control_flow_on_the_explained_path(tmp_path, capsys, build, label):
    m = build()
    onnx.checker.check_model(m, full_check=True)
    p = save(tmp_path, m, "m.onnx")
    line = fails(capsys, "UnsupportedModelError", "compile", p, "-m", "gradient", "-o", tmp_path / "o.onnx")
    assert "control flow" in line and label in line


# ---- exit code 6: nothing (unambiguous) to explain ------------------------------------------------

def test_integer_inputs_name_the_float_tensors_to_explain_instead(tmp_path, capsys):
    m, w = token_model()
    p = save(tmp_path, m, "tokens.onnx")
    line = fails(capsys, "SelectionError", "compile", p, "-m", "gradient", "-o", tmp_path / "o.onnx")
    assert "no float input" in line and "ids (INT64)" in line
    assert "--input" in line and "emb (Gather 'embed')" in line
    # the advice works: the embedding output is explained, with the token ids still the model's input
    assert main(["compile", str(p), "-m", "gradient", "--input", "emb", "--neuron", "index",
                 "-o", str(tmp_path / "o.onnx")]) == 0
    compiled = onnx.load(tmp_path / "o.onnx")
    ids = np.array([[1, 2, 3, 4, 5], [0, 0, 9, 9, 1]], np.int64)
    s = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    r = s.run(None, {"ids": ids, "target": np.array([2, 0], np.int64)})[-1]
    want = np.stack([np.broadcast_to(w[:, k] / 5, (5, 4)) for k in (2, 0)])  # d mean-pool-then-linear
    np.testing.assert_allclose(r, want, rtol=1e-6)


def test_float_data_for_integer_input_is_a_data_error(tmp_path, capsys):
    m, _ = token_model()
    p = save(tmp_path, m, "tokens.onnx")
    np.save(tmp_path / "ids.npy", np.ones((2, 5), np.float32))
    line = fails(capsys, "DataError", "explain", p, "-m", "gradient", "--input", "emb",
                 "--data", tmp_path / "ids.npy")
    assert "'ids'" in line and "integers" in line


def test_several_float_inputs_and_no_choice(tmp_path, capsys):
    nodes = [helper.make_node("Add", ["image", "mask"], ["s"], name="add"),
             helper.make_node("ReduceSum", ["s", "axes"], ["y"], keepdims=0, name="sum")]
    m = make_model(nodes, [vi("image", TensorProto.FLOAT, ["N", 4]), vi("mask", TensorProto.FLOAT, ["N", 4])],
                   [vi("y", TensorProto.FLOAT, ["N"])], [numpy_helper.from_array(np.array([1], np.int64), "axes")])
    p = save(tmp_path, m, "two.onnx")
    line = fails(capsys, "SelectionError", "compile", p, "-m", "gradient", "-o", tmp_path / "o.onnx")
    assert "several float inputs" in line and "image" in line and "mask" in line and "--input" in line
    assert line.startswith(f"onnxattr: error: {p}: ")  # the file is named, by compile and by explain
    np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
    line = fails(capsys, "SelectionError", "explain", p, "-m", "gradient", "--data", tmp_path / "x.npy")
    assert line.startswith(f"onnxattr: error: {p}: ") and "several float inputs" in line
    assert main(["compile", str(p), "-m", "gradient", "--input", "mask", "-o", str(tmp_path / "o.onnx")]) == 0


def test_several_outputs_explain_the_first_float_one():
    """Outputs [label (int64), logits, hidden]: with no --output the logits (first float) are explained."""
    m, _ = mlp(softmax=False)
    m.graph.node.append(helper.make_node("ArgMax", ["z"], ["label"], axis=1, keepdims=0))
    outputs = [vi("label", TensorProto.INT64, ["N"]), m.graph.output[0], vi("h2", TensorProto.FLOAT, ["N", 8])]
    del m.graph.output[:]
    m.graph.output.extend(outputs)
    x = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)

    def relevance(**kw):
        c = onnxattr.compile(m, "gradient", neuron="all", **kw)
        assert [o.name for o in c.graph.output] == ["label", "z", "h2", "relevance"]
        return ort.InferenceSession(c.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[-1]

    default, logits, hidden = relevance(), relevance(output="z"), relevance(output="h2")
    np.testing.assert_array_equal(default, logits)
    assert not np.allclose(default, hidden)


def test_scalar_input_is_refused(tmp_path, capsys):
    m = make_model([helper.make_node("Mul", ["x", "x"], ["y"], name="square")], [vi("x", TensorProto.FLOAT, [])],
                   [vi("y", TensorProto.FLOAT, [])])
    p = save(tmp_path, m, "scalar.onnx")
    line = fails(capsys, "SelectionError", "compile", p, "-m", "gradient", "-o", tmp_path / "o.onnx")
    assert "scalar.onnx" in line and "'x'" in line and "rank 0" in line and "[N, ...]" in line


# ---- exit code 2: usage ---------------------------------------------------------------------------

@pytest.mark.parametrize("args,words", [
    (["--set", "steps=many"], ["steps", "'many'", "not a valid value"]),
    (["--set", "steps=0"], ["steps", "positive integer"]),
    (["--set", "steps"], ["--set", "KEY=VALUE", "'steps'"]),
    (["--neuron", "sideways"], ["--neuron", "'sideways'", "max"]),
])
def test_bad_parameter_values(tmp_path, model_path, capsys, args, words):
    line = fails(capsys, "UsageError", "compile", model_path, "-m", "integrated_gradients", *args,
                 "-o", tmp_path / "o.onnx")
    for w in words:
        assert w in line


@pytest.mark.parametrize("method,setting,words", [
    ("lrp.epsilon", "epsilon=none", ["epsilon", "needs a value"]),
    ("lrp.epsilon", "epsilon=inf", ["epsilon", "finite"]),
    ("lrp.epsilon_gamma_box", "gamma=nan", ["gamma", "finite"]),
    ("integrated_gradients", "reference_inputs=none", ["reference_inputs", "needs a value"]),
    ("integrated_gradients", "reference_inputs=-inf", ["reference_inputs", "finite"]),
    ("integrated_gradients", "steps=99999999999999999999", ["steps", "below 2^31"]),
    ("smoothgrad", "noise_scale=inf", ["noise_scale", "finite"]),
    ("smoothgrad", "augment_by_n=4294967296", ["augment_by_n", "below 2^31"]),
])
def test_parameters_need_finite_values(tmp_path, model_path, capsys, method, setting, words):
    """None only where a parameter allows it (seed=none is a fresh stream), no inf/nan (an all-NaN map
    would follow), counts within int32."""
    line = fails(capsys, "UsageError", "compile", model_path, "-m", method, "--set", setting,
                 "-o", tmp_path / "o.onnx")
    for w in words:
        assert w in line
    assert main(["compile", str(model_path), "-m", "smoothgrad", "--set", "seed=none", "--set", "augment_by_n=2",
                 "-o", str(tmp_path / "o.onnx")]) == 0


@pytest.mark.parametrize("call,error,words", [
    (lambda p: onnxattr.compile(None, "gradient"), "UsageError", ["file path or an onnx.ModelProto", "NoneType"]),
    (lambda p: onnxattr.compile(p.read_bytes(), "gradient"), "UsageError", ["bytes", "load_from_string"]),
    (lambda p: onnxattr.compile(p, None), "UsageError", ["method must be a name"]),
    (lambda p: onnxattr.compile(p, "lrp.epsilon", epsilon=[1, 2]), "UsageError", ["epsilon", "must be a number"]),
    (lambda p: onnxattr.compile(p, "integrated_gradients", reference_inputs=np.zeros((3, 3))), "UsageError",
     ["reference_inputs", "[3, 3]", "does not broadcast", "[?, 6]"]),
    (lambda p: onnxattr.compile(p, "deep_lift", reference_inputs=np.zeros(5)), "UsageError",
     ["reference_inputs", "[5]", "does not broadcast"]),
    (lambda p: onnxattr.compile(p, "deep_taylor.bounded", low=np.zeros((2, 2)), high=np.ones(3)), "UsageError",
     ["low (shape (2, 2))", "high (shape (3,))", "broadcast"]),
    (lambda p: onnxattr.create_analyzer("gradient", p).analyze([[1.0, 2.0], [3.0]]), "DataError",
     ["not an array"]),
    (lambda p: onnxattr.create_analyzer("pattern.net", p).fit(None), "DataError", ["fit needs data", "NoneType"]),
    (lambda p: onnxattr.create_analyzer("pattern.net", p).fit(np.float32(1)), "DataError", ["single number"]),
])
def test_python_api_arguments_of_the_wrong_kind(model_path, call, error, words):
    with pytest.raises(onnxattr.OnnxAttrError) as info:
        call(model_path)
    assert type(info.value).__name__ == error
    text = str(info.value).replace("'", "")
    assert "\n" not in str(info.value) and all(w.replace("'", "") in text for w in words), str(info.value)


def test_bad_choice_parameter_lists_the_choices(tmp_path, model_path, capsys):
    line = fails(capsys, "UsageError", "compile", model_path, "-m", "gradient", "--set", "postprocess=cube",
                 "-o", tmp_path / "o.onnx")
    assert "postprocess" in line and "abs" in line and "square" in line


def test_target_that_is_not_a_number(model_path, x_path, capsys):
    line = fails(capsys, "UsageError", "explain", model_path, "-m", "gradient", "--data", x_path,
                 "--neuron", "index", "--target", "1,b")
    assert "--target" in line and "'1,b'" in line


# ---- exit code 7: data ----------------------------------------------------------------------------

@pytest.mark.parametrize("target,words", [("-1", ["out of range", "-1"]), ("2,3", ["out of range", "3"]),
                                          ("0,1,2", ["one index per sample", "2"])])
def test_target_out_of_range_or_of_the_wrong_count(model_path, x_path, capsys, target, words):
    line = fails(capsys, "DataError", "explain", model_path, "-m", "gradient", "--data", x_path,
                 "--neuron", "index", "--target", target)
    for w in words:
        assert w in line


@pytest.mark.parametrize("array,words", [
    (np.array([["a"] * 6, ["b"] * 6]), ["dtype", "<U1"]),
    (np.ones((2, 6), np.complex64), ["dtype", "complex64"]),
    (np.ones((2, 6, 1), np.float32), ["rank", "[2, 6, 1]"]),
    (np.ones((0, 6), np.float32), ["[0, 6]", "no values"]),
])
def test_data_whose_dtype_or_shape_does_not_fit(tmp_path, model_path, capsys, array, words):
    np.save(tmp_path / "d.npy", array)
    line = fails(capsys, "DataError", "explain", model_path, "-m", "gradient", "--data", tmp_path / "d.npy",
                 "-o", tmp_path / "r.npy")
    for w in words:
        assert w in line
    assert not (tmp_path / "r.npy").exists()


def test_onnxruntime_failing_on_the_data_is_one_line(tmp_path):
    """A model whose channel count is only known at run time: onnxruntime's own failure becomes one
    line (exit 7) and its log line stays quiet, for explain and for fit."""
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], name="conv"),
             helper.make_node("ReduceMean", ["c"], ["y"], axes=[2, 3], keepdims=0, name="pool")]
    m = make_model(nodes, [vi("x", TensorProto.FLOAT, ["N", "C", "H", "W"])], [vi("y", TensorProto.FLOAT, ["N", 4])],
                   [numpy_helper.from_array(w, "W")])
    p = save(tmp_path, m, "dyn.onnx")
    np.save(tmp_path / "c5.npy", np.ones((1, 5, 8, 8), np.float32))
    for args in (["explain", p, "-m", "gradient", "--data", tmp_path / "c5.npy"],
                 ["fit", p, "-m", "pattern.net", "--data", tmp_path / "c5.npy", "-o", tmp_path / "p.npz"]):
        res = run_cli(*args)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]  # no progress bar off a terminal
        assert res.returncode == EXIT_CODES["DataError"], res.stderr
        assert len(lines) == 1 and lines[0].startswith("onnxattr: error: onnxruntime failed on this input"), res.stderr
        assert "Input channels" in lines[0]


@pytest.mark.parametrize("content,words", [
    (b"", ["empty.npy", "not a readable .npy array"]),
    (None, ["single number", "[N, ...]"]),
])
def test_fit_data_that_is_not_samples(tmp_path, model_path, capsys, content, words):
    data = tmp_path / "empty.npy"
    if content is None:
        np.save(data, np.float32(3))
    else:
        data.write_bytes(content)
    line = fails(capsys, "DataError", "fit", model_path, "-m", "pattern.net", "--data", data,
                 "-o", tmp_path / "p.npz")
    for w in words:
        assert w in line
    assert not (tmp_path / "p.npz").exists()


@pytest.mark.parametrize("name,content", [("empty.npz", b""), ("x.npy", None)])
def test_a_patterns_file_that_is_not_one(tmp_path, model_path, capsys, name, content):
    bad = tmp_path / name
    if content is None:
        np.save(bad, np.ones(3, np.float32))
    else:
        bad.write_bytes(content)
    line = fails(capsys, "PatternError", "compile", model_path, "-m", "pattern.net", "--patterns", bad,
                 "-o", tmp_path / "o.onnx")
    assert name in line and "not a readable onnxattr pattern file" in line


def test_fit_data_with_nan(tmp_path, model_path, capsys):
    x = np.ones((3, 6), np.float32)
    x[2, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    line = fails(capsys, "DataError", "fit", model_path, "-m", "pattern.net", "--data", tmp_path / "nan.npy",
                 "-o", tmp_path / "p.npz")
    assert "NaN or inf" in line
    assert not (tmp_path / "p.npz").exists()


def test_target_without_neuron_index(model_path, x_path, capsys):
    line = fails(capsys, "UsageError", "explain", model_path, "-m", "gradient", "--data", x_path, "--target", "1")
    assert "--target" in line and "--neuron index" in line


@pytest.mark.parametrize("setting,words", [("steps=2.5", ["steps", "expects an integer"]),
                                           ("seed=1.5", None), ("chunk_size=x", ["chunk_size", "expects an integer"])])
def test_integer_parameters_say_so(tmp_path, model_path, capsys, setting, words):
    method = "smoothgrad" if setting.startswith("seed") else "integrated_gradients"
    line = fails(capsys, "UsageError", "compile", model_path, "-m", method, "--set", setting, "-o", tmp_path / "o.onnx")
    for w in words or ["seed", "expects an integer or none"]:
        assert w in line
    with pytest.raises(onnxattr.errors.UsageError, match="must be an integer or None"):
        onnxattr.compile(model_path, "smoothgrad", seed=1.5)
    with pytest.raises(onnxattr.errors.UsageError, match="until_layer_idx=1.5: must be an integer >= 0"):
        onnxattr.compile(model_path, "lrp.sequential_preset_b_flat_until_idx", until_layer_idx=1.5)


def test_target_too_large_for_an_integer(model_path, x_path, capsys):
    line = fails(capsys, "UsageError", "explain", model_path, "-m", "gradient", "--data", x_path,
                 "--neuron", "index", "--target", "99999999999999999999999")
    assert "--target" in line


# ---- exit code 8: output --------------------------------------------------------------------------

def test_output_naming_the_input_another_way_is_refused(tmp_path, model_path, x_path, capsys, monkeypatch):
    before = model_path.read_bytes(), x_path.read_bytes()
    os.symlink(model_path, tmp_path / "alias.onnx")
    monkeypatch.chdir(tmp_path)
    for out in ("alias.onnx", "./mlp.onnx", f"../{tmp_path.name}/mlp.onnx"):
        line = fails(capsys, "OutputFileError", "compile", model_path, "-m", "gradient", "-o", out)
        assert "overwrite the input" in line
    line = fails(capsys, "OutputFileError", "explain", model_path, "-m", "gradient", "--data", x_path,
                 "-o", "x.npy")
    assert "overwrite the input" in line and "x.npy" in line
    line = fails(capsys, "OutputFileError", "explain", model_path, "-m", "gradient", "--data", x_path,
                 "--heatmap", "alias.onnx")
    assert "overwrite the input" in line
    assert (model_path.read_bytes(), x_path.read_bytes()) == before
    assert os.path.islink(tmp_path / "alias.onnx")


def test_output_over_a_rules_or_patterns_file_is_refused(tmp_path, model_path, x_path, capsys):
    rules = tmp_path / "my.toml"
    rules.write_text((ROOT / "rules" / "lrp.epsilon.toml").read_text())
    assert main(["fit", str(model_path), "-m", "pattern.net", "--data", str(x_path),
                 "-o", str(tmp_path / "pat.npz")]) == 0
    pat = tmp_path / "pat.npz"
    before = rules.read_bytes(), pat.read_bytes()
    for args in (["compile", model_path, "--rules", rules, "-o", rules],
                 ["explain", model_path, "--rules", rules, "--data", x_path, "-o", rules],
                 ["compile", model_path, "-m", "pattern.net", "--patterns", pat, "-o", pat],
                 ["explain", model_path, "-m", "pattern.net", "--patterns", pat, "--data", x_path, "-o", pat],
                 ["explain", model_path, "-m", "pattern.net", "--patterns", pat, "--data", x_path,
                  "--heatmap", pat]):
        assert "overwrite the input" in fails(capsys, "OutputFileError", *args)
    assert (rules.read_bytes(), pat.read_bytes()) == before


def test_output_over_the_models_external_data_is_refused(tmp_path, x_path, capsys):
    folder = tmp_path / "ext"
    folder.mkdir()
    onnx.save(mlp()[0], folder / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="m.data", size_threshold=0)
    data = folder / "m.data"
    before = data.read_bytes()
    for args in (["compile", folder / "m.onnx", "-m", "gradient", "-o", data],
                 ["explain", folder / "m.onnx", "-m", "gradient", "--data", x_path, "-o", data]):
        line = fails(capsys, "OutputFileError", *args)
        assert "external data" in line and "m.onnx" in line
    assert data.read_bytes() == before
    assert main(["compile", str(folder / "m.onnx"), "-m", "gradient", "-o", str(folder / "o.onnx")]) == 0


def test_output_that_is_not_a_regular_file_is_refused(tmp_path, model_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "not a regular file" in fails(capsys, "OutputFileError", "compile", model_path, "-m", "gradient",
                                         "-o", fifo)
    (tmp_path / "adir").mkdir()
    assert "is a folder" in fails(capsys, "OutputFileError", "compile", model_path, "-m", "gradient",
                                  "-o", tmp_path / "adir")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path / "adir") == []
    assert no_temporaries(tmp_path)


def test_output_through_a_symbolic_link_writes_its_target(tmp_path, model_path, capsys):
    (tmp_path / "results").mkdir()
    target = tmp_path / "results" / "o.onnx"
    target.write_bytes(b"previous result")
    os.symlink(target, tmp_path / "link.onnx")
    assert main(["compile", str(model_path), "-m", "gradient", "-o", str(tmp_path / "link.onnx")]) == 0
    assert os.path.islink(tmp_path / "link.onnx")
    assert [o.name for o in onnx.load(target).graph.output] == ["p", "relevance"]
    assert no_temporaries(tmp_path) and no_temporaries(tmp_path / "results")


def test_saving_patterns_over_the_analyzers_model_is_refused(model_path, x_path):
    before = model_path.read_bytes()
    analyzer = onnxattr.create_analyzer("pattern.net", str(model_path)).fit(np.load(x_path), progress=False)
    with pytest.raises(onnxattr.errors.OutputFileError, match="overwrite the input"):
        analyzer.save_patterns(model_path)
    assert model_path.read_bytes() == before


def test_unwritable_outputs_are_refused_before_the_work(tmp_path, model_path, x_path, capsys, monkeypatch):
    """A missing folder or an image type Pillow cannot write stops explain before it compiles anything."""
    monkeypatch.setattr(onnxattr.cli, "Analyzer", None)  # reaching it would be a TypeError, not exit 8
    line = fails(capsys, "OutputFileError", "explain", model_path, "-m", "gradient", "--data", x_path,
                 "--heatmap", tmp_path / "h.xyz")
    assert "h.xyz" in line and ".png" in line
    line = fails(capsys, "OutputFileError", "explain", model_path, "-m", "gradient", "--data", x_path,
                 "-o", tmp_path / "nowhere" / "r.npy")
    assert "does not exist" in line
    monkeypatch.setattr(onnxattr.cli, "compile_model", None)
    line = fails(capsys, "OutputFileError", "compile", model_path, "-m", "gradient", "-o", tmp_path / "nowhere" / "o.onnx")
    assert "does not exist" in line


def test_output_folder_missing(tmp_path, model_path, capsys):
    line = fails(capsys, "OutputFileError", "compile", model_path, "-m", "gradient",
                 "-o", tmp_path / "nowhere" / "o.onnx")
    assert "nowhere" in line and "does not exist" in line


def test_failed_write_leaves_no_partial_file(tmp_path, model_path, capsys, monkeypatch):
    """The rename into place fails (disk full, say): no output, no temporary, an old file untouched."""
    out = tmp_path / "o.onnx"
    out.write_bytes(b"previous result")

    def broken_replace(src, dst):
        assert os.path.getsize(src) > 0  # the temporary was written in full first
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnxattr.output.os, "replace", broken_replace)
    line = fails(capsys, "OutputFileError", "compile", model_path, "-m", "gradient", "-o", out)
    assert str(out) in line and "No space left on device" in line
    assert out.read_bytes() == b"previous result" and no_temporaries(tmp_path)


def test_interrupted_write_leaves_no_partial_file(tmp_path, model_path, capsys, monkeypatch):
    """Ctrl-C half-way through writing the temporary file: exit 130, nothing left behind."""
    out = tmp_path / "o.onnx"
    real_open = open
    half_written = []

    class HalfThenInterrupt:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            half_written.append(os.path.getsize(self.f.name))
            raise KeyboardInterrupt

    def opener(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return HalfThenInterrupt(f) if "w" in mode else f

    monkeypatch.setattr(onnxattr.output, "open", opener, raising=False)
    code = main(["compile", str(model_path), "-m", "gradient", "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert half_written and half_written[0] > 0  # a partial file did exist for a moment
    assert code == 130 and len(err) == 1 and "interrupted" in err[0] and "nothing was written" in err[0]
    assert not out.exists() and no_temporaries(tmp_path)


def test_readme_documents_every_exit_code():
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
    table = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(row.split("|")[1]) for row in table.splitlines() if row.startswith("| ") and
                  row.split("|")[1].strip().isdigit()}
    assert set(EXIT_CODES.values()) | {0, 130} <= documented
