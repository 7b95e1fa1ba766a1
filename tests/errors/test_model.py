"""Exit codes 3-6: the model file, an invalid model, unsupported ops, nothing to explain."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
import onnxattr.load
from onnxattr.cli import main
from onnxattr.emitters import VJPS
from tests.errors.common import fails, make_model, save, token_model, vi
from tests.models import mlp


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


@pytest.mark.parametrize("op,opset,name,where", [
    ("ImageScaler", 8, "", "graph"), ("Reluu", 17, "act", "graph"), ("ImageScaler", 9, "is", "if"),
    ("ImageScaler", 9, "", "function")])
def test_an_op_onnx_does_not_know_is_named_and_nothing_reaches_stdout(tmp_path, capfd, op, opset, name, where):
    """Early exports' experimental ops (ImageScaler, opset 8) pass onnx.checker with a warning printed to
    stdout, then fail the opset upgrade with a raw assertion text; a misspelt op fails the checker. Found
    in an If branch or a model-local function too."""
    attrs = {"scale": 2.0, "bias": [0.0]} if op == "ImageScaler" else {}
    node = helper.make_node(op, ["x"], ["y"], name=name or None, **attrs)
    shape = ["N", 1, 4, 4]
    io = [vi("x", TensorProto.FLOAT, shape)], [vi("y", TensorProto.FLOAT, shape)]
    m = make_model([node], *io)
    if where == "if":
        branch = helper.make_graph([node], "branch", [], [vi("y", TensorProto.FLOAT, shape)])
        relu = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "other", [],
                                 [vi("y", TensorProto.FLOAT, shape)])
        cond = helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.BOOL, [], [True]))
        m = make_model([cond, helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=relu)], *io)
    elif where == "function":
        fn = helper.make_function("local", "scaler", ["x"], ["y"], [node], [helper.make_opsetid("", opset)])
        m = make_model([helper.make_node("scaler", ["x"], ["y"], domain="local")], *io)
        m.functions.append(fn)
        m.opset_import.append(helper.make_opsetid("local", 1))
    m.opset_import[0].version = opset
    p = save(tmp_path, m, "old.onnx")
    assert main(["compile", str(p), "-m", "gradient", "-o", str(tmp_path / "o.onnx")]) == 4
    out, err = capfd.readouterr()  # file-descriptor level: onnx's C++ code prints there
    assert out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert f"{op} ({f'node {name!r}' if name else 'an unnamed node'}) is not an ONNX op" in err, err


def test_a_tensorflow_op_tf2onnx_left_is_named_with_the_way_out(tmp_path, capsys):
    """tf2onnx 1.17 leaves a Keras Conv2D with groups > 1 as the TensorFlow op PartitionedCall (found by a sweep
    of Keras applications: RegNet, ConvNeXt); in a tf2onnx model such an op is named as TensorFlow's, with the
    rewrite that converts (one Conv2D per group, checked with tf2onnx 1.17), not as an early ONNX op."""
    shape = ["N", 4]
    m = make_model([helper.make_node("PartitionedCall", ["x"], ["y"], name="model/conv2d/PartitionedCall")],
                   [vi("x", TensorProto.FLOAT, shape)], [vi("y", TensorProto.FLOAT, shape)])
    m.producer_name = "tf2onnx"
    p = save(tmp_path, m, "grouped.onnx")
    line = fails(capsys, "InvalidModelError", "compile", p, "-m", "gradient", "-o", tmp_path / "o.onnx")
    assert "PartitionedCall (node 'model/conv2d/PartitionedCall') is not an ONNX op" in line
    assert "a TensorFlow op that tf2onnx left unconverted" in line and "one Conv2D per group" in line
    assert "early ONNX" not in line


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
    assert not {"Bernoulli", "Unique"} & set(VJPS), "pick ops without a backward for this test"
    nodes = [helper.make_node("Bernoulli", ["x"], ["a"], name="wave1"),
             helper.make_node("Relu", ["a"], ["b"], name="act"),
             helper.make_node("Bernoulli", ["b"], ["c"], name="wave2"),
             helper.make_node("Unique", ["c"], ["y"], name="running_total")]
    m = make_model(nodes, [vi("x", TensorProto.FLOAT, [1, 1, 2, 2])], [vi("y", TensorProto.FLOAT, [1, 1])])
    p = save(tmp_path, m, "m.onnx")
    line = fails(capsys, "UnsupportedModelError", "compile", p, "-m", "gradient", "-o", tmp_path / "o.onnx")
    for word in ("Bernoulli", "wave1", "wave2", "Unique", "running_total"):
        assert word in line
    assert "'act'" not in line and not (tmp_path / "o.onnx").exists()
    np.save(tmp_path / "x.npy", np.ones((1, 1, 2, 2), np.float32))  # fit refuses before reading the data
    line = fails(capsys, "UnsupportedModelError", "fit", p, "-m", "pattern.net", "--data", tmp_path / "x.npy",
                 "-o", tmp_path / "p.npz")
    assert "wave1" in line and "running_total" in line and not (tmp_path / "p.npz").exists()


def test_onnxruntime_fusions_are_named(tmp_path, capsys):
    """A com.microsoft op (onnxruntime's transformer optimizer) leaves the ops after it without inferred types:
    it is still found on the path and named, with what to do, not reported as an output that does not
    depend on the input."""
    nodes = [helper.make_node("FastGelu", ["x"], ["a"], name="fused_gelu", domain="com.microsoft"),
             helper.make_node("Relu", ["a"], ["b"], name="act"), helper.make_node("Neg", ["b"], ["y"])]
    m = make_model(nodes, [vi("x", TensorProto.FLOAT, ["N", 4])], [vi("y", TensorProto.FLOAT, ["N", 4])], [])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    p = save(tmp_path, m, "m.onnx")
    line = fails(capsys, "UnsupportedModelError", "compile", p, "-m", "attn_lrp", "-o", tmp_path / "o.onnx")
    assert "com.microsoft.FastGelu" in line and "fused_gelu" in line and "before that optimizer" in line


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
    """y = x doubled as many times as x's largest entry says (a Loop of known trip count is unrolled)."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "v_in"], ["v_out"])],
        "body", [vi("i", TensorProto.INT64, []), vi("cond_in", TensorProto.BOOL, []),
                 vi("v_in", TensorProto.FLOAT, ["N", 4])],
        [vi("cond_out", TensorProto.BOOL, []), vi("v_out", TensorProto.FLOAT, ["N", 4])])
    nodes = [helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
             helper.make_node("Cast", ["top"], ["trips"], to=TensorProto.INT64),
             helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body, name="repeat")]
    return make_model(nodes, [vi("x", TensorProto.FLOAT, ["N", 4])], [vi("y", TensorProto.FLOAT, ["N", 4])])


@pytest.mark.parametrize("build,label", [
    (_if_model, "If 'branch' (its condition is computed at run time)"),
    (_loop_model, "Loop 'repeat' (its trip count reads 'trips', which is computed from the data at run time)")])
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
