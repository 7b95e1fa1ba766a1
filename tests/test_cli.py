"""onnxattr/cli.py: commands, one-line errors with their exit codes, nothing overwritten or half-written."""

import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest

import onnxattr
from onnxattr.cli import main
from onnxattr.errors import EXIT_CODES
from tests.models import mlp, mlp_gradient, mlp_logits


@pytest.fixture
def model_path(tmp_path):
    m, _ = mlp()
    p = tmp_path / "mlp.onnx"
    onnx.save(m, p)
    return p


def test_compile_and_explain(tmp_path, model_path, capsys):
    out = tmp_path / "mlp.explain.onnx"
    assert main(["compile", str(model_path), "--method", "integrated_gradients", "--set", "steps=8",
                 "-o", str(out)]) == 0
    compiled = onnx.load(out)
    assert [o.name for o in compiled.graph.output] == ["p", "relevance"]
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["explain", str(model_path), "--method", "gradient", "--data", str(tmp_path / "x.npy"),
                 "--neuron", "index", "--target", "2", "-o", str(tmp_path / "r.npy"),
                 "--heatmap", str(tmp_path / "h.png"), "--graymap", str(tmp_path / "g.png")]) == 0
    r = np.load(tmp_path / "r.npy")
    assert r.shape == (3, 6) and np.isfinite(r).all() and np.abs(r).max() > 0
    np.testing.assert_allclose(r, mlp_gradient(x, 2, mlp()[1]), rtol=1e-5, atol=1e-6)  # neuron 2 of each sample
    assert (tmp_path / "h.png").stat().st_size > 0 and (tmp_path / "g.png").stat().st_size > 0
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".onnxattr-")]


def test_explain_names_the_explained_neurons(tmp_path, model_path, capsys):
    """explain prints each sample's explained neuron and its value, of the explained output or the softmax it was
    chosen through (the mlp's p): the largest for --neuron max, the given ones for --neuron index; nothing for all."""
    x = np.random.default_rng(5).standard_normal((3, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    logits = mlp_logits(x, mlp()[1])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    base = ["explain", str(model_path), "-m", "gradient", "--data", str(tmp_path / "x.npy")]

    def printed():
        line = next(t for t in capsys.readouterr().out.splitlines() if t.startswith("explained per sample: "))
        entries = line[len("explained per sample: "):].split(", ")
        assert all(e.startswith("p[") for e in entries)
        return [int(e[2:e.index("]")]) for e in entries], [float(e.split("= ")[1]) for e in entries]

    assert main(base) == 0
    picks, values = printed()
    assert picks == logits.argmax(1).tolist()
    np.testing.assert_allclose(values, p.max(1), rtol=1e-3)  # 4 digits printed
    assert main(base + ["--neuron", "index", "--target", "2,0,1"]) == 0
    picks, values = printed()
    assert picks == [2, 0, 1]
    np.testing.assert_allclose(values, p[[0, 1, 2], [2, 0, 1]], rtol=1e-3)
    assert main(base + ["--neuron", "all"]) == 0
    assert "explained per sample" not in capsys.readouterr().out
    (tmp_path / "classes.txt").write_text("cat\ndog\nbird\n")
    assert main(base + ["--neuron", "index", "--target", "2,0,1", "--classes", str(tmp_path / "classes.txt")]) == 0
    assert "explained per sample: p[2] 'bird' = " in capsys.readouterr().out
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    assert main(base + ["--classes", str(tmp_path / "two.txt")]) == 0
    out = capsys.readouterr()
    assert "warning: --classes names 2 classes and the output p has 3 per sample" in out.err
    assert "'" not in out.out.split("explained per sample: ")[1].splitlines()[0]
    assert main(base + ["--classes", str(tmp_path / "none.txt")]) == 7
    assert "none.txt: no such file (--classes)" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("\n")
    assert main(base + ["--classes", str(tmp_path / "empty.txt"), "-o", str(tmp_path / "r.npy")]) == 7
    assert "holds no class names" in capsys.readouterr().err and not (tmp_path / "r.npy").exists()


def test_heatmap_colour_maps_and_overlay(tmp_path, model_path, capsys):
    """--cmap / --level pick Zennit's colour map and contrast, --overlay draws over the data; the PNG holds
    viz.grid's pixels; a bad level, an unknown map, or a heatmap option without --heatmap (ignored with --graymap
    before) are usage errors (2)."""
    from PIL import Image

    from onnxattr import viz

    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    base = ["explain", str(model_path), "-m", "gradient", "--data", str(tmp_path / "x.npy"),
            "-o", str(tmp_path / "r.npy")]
    assert main(base + ["--heatmap", str(tmp_path / "h.png"), "--cmap", "coldnhot", "--level", "2", "--overlay"]) == 0
    r = np.load(tmp_path / "r.npy")
    want = viz.grid(r, "heatmap", cmap="coldnhot", level=2.0, images=x)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "h.png").convert("RGB")), want)
    assert not np.array_equal(want, viz.grid(r, "heatmap", cmap="coldnhot", level=2.0))
    capsys.readouterr()
    for extra, words in ((["--heatmap", str(tmp_path / "a.png"), "--level", "0"], "--level must be a number > 0"),
                         (["--overlay"], "--overlay is an option of the heatmap"),
                         (["--graymap", str(tmp_path / "a.png"), "--cmap", "hot"], "--cmap is an option of the heatmap"),
                         (["--graymap", str(tmp_path / "a.png"), "--level", "2"], "--level is an option"),
                         (["--heatmap", str(tmp_path / "b.png"), "--cmap", "jet"], "invalid choice: 'jet'"),
                         (["--heatmap", str(tmp_path / "b.png"), "--cmap", "coldnhat"], "did you mean coldnhot?")):
        assert main(base + extra) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()


def test_warnings_are_one_line_and_keep_exit_code_0(tmp_path, model_path, capsys, monkeypatch):
    """fit on one sample: all-zero patterns are a warning (one line on stderr), not an error; other
    libraries' warnings keep their own form; a filter that makes warnings errors gives a one-line error
    with the problem's exit code (7: data)."""
    np.save(tmp_path / "one.npy", np.random.default_rng(0).standard_normal((1, 6)).astype(np.float32))
    fit = ["fit", str(model_path), "-m", "pattern.net", "--data", str(tmp_path / "one.npy")]
    assert main(fit + ["-o", str(tmp_path / "p.npz")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxattr: warning: ") and "all zero" in err[0], err
    assert (tmp_path / "p.npz").exists()

    def methods_warns(a):
        warnings.warn("from another library", DeprecationWarning)
        return 0
    monkeypatch.setitem(main.__globals__, "cmd_methods", methods_warns)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, category, *where, **kw: seen.append(category)
        assert main(["methods"]) == 0
    assert seen == [DeprecationWarning] and "onnxattr: warning" not in capsys.readouterr().err

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(fit + ["-o", str(tmp_path / "p2.npz")]) == 7
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxattr: error: ") and "all zero" in err[0], err
    assert not (tmp_path / "p2.npz").exists()


def test_methods_lists_every_method(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    from onnxattr.methods import REGISTRY

    for name, method in REGISTRY.items():
        if name == method.name:
            assert f"\n{name} " in "\n" + text, name
        else:  # an alias is shown on its method's line
            line = next(row for row in text.splitlines() if row.startswith(f"{method.name} "))
            assert f"(also: {name}" in line or f", {name}" in line, name
    assert "augment_by_n = 64" in text
    # a method's parameter docs start in one column
    lines = text.split("\nocclusion ")[1].splitlines()[1:5]
    assert len({len(line) - len(line[line.index("  ", 4):].lstrip()) for line in lines}) == 1, lines


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "onnxattr.cli", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("args,code,message", [
    (["compile", "{missing}", "-m", "gradient", "-o", "{out}"], "ModelFileError", "no such file"),
    (["compile", "{junk}", "-m", "gradient", "-o", "{out}"], "ModelFileError", "not an ONNX model"),
    (["compile", "{model}", "-m", "gradiant", "-o", "{out}"], "UsageError", "did you mean 'gradient'"),
    (["compile", "{model}", "-m", "smoothgrad", "--set", "augment_by=3", "-o", "{out}"], "UsageError",
     "did you mean 'augment_by_n'"),
    (["compile", "{model}", "-m", "smoothgrad", "--set", "augment_by_n=-3", "-o", "{out}"], "UsageError",
     "positive integer"),
    (["compile", "{model}", "-m", "gradient", "-o", "{model}"], "OutputFileError", "overwrite the input"),
    (["explain", "{model}", "-m", "gradient", "--data", "{bad_x}"], "DataError", "expects"),
    (["explain", "{model}", "-m", "gradient", "--data", "{x}", "--neuron", "index", "--target", "9"],
     "DataError", "out of range"),
])
def test_errors_are_one_line_with_exit_code(tmp_path, model_path, args, code, message):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"hello")
    np.save(tmp_path / "x.npy", np.ones((2, 6), np.float32))
    np.save(tmp_path / "bad_x.npy", np.ones((2, 5), np.float32))
    before = model_path.read_bytes()
    fill = {"missing": tmp_path / "none.onnx", "out": tmp_path / "o.onnx", "junk": junk, "model": model_path,
            "x": tmp_path / "x.npy", "bad_x": tmp_path / "bad_x.npy"}
    res = run_cli(*[a.format(**fill) for a in args])
    assert res.returncode == EXIT_CODES[code], res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxattr: error:") and message in lines[0], res.stderr
    assert "Traceback" not in res.stderr
    assert model_path.read_bytes() == before
    assert not (tmp_path / "o.onnx").exists()


def test_models_over_2gb_are_written_with_external_data_checked_and_run(tmp_path, monkeypatch):
    """The 2 GB limit is lowered to a few bytes so the external-data path runs on a small model."""
    import onnxruntime as ort

    from onnxattr import light, output

    monkeypatch.setattr(output, "TWO_GB", 64)
    monkeypatch.setattr(light, "TWO_GB", 64)  # the checks of the input and the compiled model skip, as over 2 GB
    monkeypatch.setattr(output, "EXTERNAL_MIN_BYTES", 0)
    src = tmp_path / "mlp.onnx"
    m, weights = mlp()
    onnx.save(m, src)
    out = tmp_path / "big.explain.onnx"
    assert main(["compile", str(src), "-m", "gradient", "-o", str(out)]) == 0
    assert (tmp_path / "big.explain.onnx.data").stat().st_size > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".onnxattr-")]  # no temporaries left
    stored = onnx.load(out, load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in stored.graph.initializer)
    onnx.checker.check_model(str(out), full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    y, r = ort.InferenceSession(str(out)).run(None, {"x": x})
    np.testing.assert_allclose(r, mlp_gradient(x, mlp_logits(x, weights).argmax(1), weights), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("a_first", [False, True])
def test_other_graph_inputs_are_fed_with_feed(tmp_path, capsys, a_first):
    """A graph convolution whose adjacency A is a graph input (listed before or after x): explain and fit
    take it with --feed A=FILE (the API with inputs=); the map is the compiled model's run with A fed; a
    missing or unknown one is a one-line usage error (exit 2) naming it."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["A", "x"], ["ax"]), helper.make_node("MatMul", ["ax", "W"], ["h"]),
             helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("ReduceMean", ["a"], ["p"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["p", "H"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 4]),
              helper.make_tensor_value_info("A", TensorProto.FLOAT, [6, 6])]
    g = helper.make_graph(nodes, "gcn", inputs[::-1] if a_first else inputs,
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "W"),
                           numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "H")])
    model = tmp_path / "gcn.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), model)
    x = np.abs(rng.standard_normal((5, 6, 4))).astype(np.float32)
    adj = np.abs(rng.standard_normal((6, 6))).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "A.npy", adj)
    base = ["explain", str(model), "-m", "lrp.epsilon", "--input", "x", "--data", str(tmp_path / "x.npy")]
    assert main(base + ["--feed", f"A={tmp_path / 'A.npy'}", "-o", str(tmp_path / "r.npy")]) == 0
    compiled = onnxattr.compile(str(model), "lrp.epsilon", input="x")
    want = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x, "A": adj})[0]
    np.testing.assert_array_equal(np.load(tmp_path / "r.npy"), want)
    analyzer = onnxattr.create_analyzer("lrp.epsilon", str(model), input="x")
    np.testing.assert_array_equal(analyzer.analyze(x, inputs={"A": adj}), want)
    capsys.readouterr()
    assert main(base) == 2
    assert "needs input 'A' [6, 6]" in capsys.readouterr().err
    assert main(base + ["--feed", f"A={tmp_path / 'A.npy'}", "--feed", f"B={tmp_path / 'A.npy'}"]) == 2
    assert "'B': not an input of the model" in capsys.readouterr().err
    fit = ["fit", str(model), "-m", "pattern.net", "--input", "x", "--data", str(tmp_path / "x.npy"),
           "-o", str(tmp_path / "p.npz"), "--feed", f"A={tmp_path / 'A.npy'}"]
    assert main(fit) == 5 and "weight on the left" in capsys.readouterr().err  # A x has no pattern
    # fit feeds too: a bias fed at run time after a constant layer
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "c"], ["z"]),
             helper.make_node("Relu", ["z"], ["a"]), helper.make_node("MatMul", ["a", "H"], ["y"])]
    g = helper.make_graph(nodes, "fed_bias", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                                              helper.make_tensor_value_info("c", TensorProto.FLOAT, [8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(rng.standard_normal((4, 8)).astype(np.float32), "W"),
                           numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "H")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "fed.onnx")
    np.save(tmp_path / "x2.npy", rng.standard_normal((20, 4)).astype(np.float32))
    np.save(tmp_path / "c.npy", rng.standard_normal(8).astype(np.float32))
    fit = ["fit", str(tmp_path / "fed.onnx"), "-m", "pattern.net", "--input", "x",
           "--data", str(tmp_path / "x2.npy"), "-o", str(tmp_path / "p.npz")]
    assert main(fit) == 2 and "--feed c=FILE.npy" in capsys.readouterr().err
    assert main(fit + ["--feed", f"c={tmp_path / 'c.npy'}"]) == 0
    assert main(base + ["--feed", f"A={tmp_path / 'A.npy'}", "-o", str(tmp_path / "A.npy")]) == 8  # an input


def test_an_image_explained_by_index_compiles_once(tmp_path, capsys):
    """The image's size comes from the model the run uses: a warning of the compile shows once (an image
    with --neuron index compiled a max model first, and warned twice)."""
    from PIL import Image

    model = os.path.join(os.path.dirname(__file__), "..", "models", "digits_cnn.onnx")
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(tmp_path / "d.png")
    rules = tmp_path / "r.toml"
    rules.write_text('[layers]\ndefault = { rule = "z" }\n[nodes]\n"no_such_node" = { rule = "flat" }\n')
    assert main(["explain", model, "--rules", str(rules), "--data", str(tmp_path / "d.png"), "--neuron", "index",
                 "--target", "3"]) == 0
    err = capsys.readouterr().err
    assert err.count("onnxattr: warning:") == 1, err


def test_feeds_take_their_own_types_and_may_be_empty(tmp_path):
    """A fed input keeps its declared type (uint8 and bool are not the data's float) and may hold no values
    (a cache of length 0); inputs= must be a dict; a model input named target clashes with --neuron index."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Cast", ["scale"], ["s"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x", "s"], ["xs"]),
             helper.make_node("Cast", ["keep"], ["k"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["xs", "k"], ["y0"]),
             helper.make_node("ReduceSum", ["past"], ["ps"], keepdims=0, noop_with_empty_axes=0),
             helper.make_node("Add", ["y0", "ps"], ["target"]),
             helper.make_node("Identity", ["target"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5]),
              helper.make_tensor_value_info("scale", TensorProto.UINT8, [5]),
              helper.make_tensor_value_info("keep", TensorProto.BOOL, [5]),
              helper.make_tensor_value_info("past", TensorProto.FLOAT, [0, 5])]
    g = helper.make_graph(nodes, "feeds", inputs,
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).standard_normal((2, 5)).astype(np.float32)
    feeds = {"scale": np.array([1, 2, 3, 4, 250], np.uint8), "keep": np.array([1, 0, 1, 1, 1], bool),
             "past": np.zeros((0, 5), np.float32)}
    analyzer = onnxattr.create_analyzer("gradient", model, input="x", neuron_selection_mode="all")
    got = analyzer.analyze(x, inputs=feeds)
    compiled = onnxattr.compile(model, "gradient", input="x", neuron="all")
    want = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x, **feeds})[0]
    np.testing.assert_array_equal(got, want)
    with pytest.raises(onnxattr.errors.UsageError, match="inputs must be a dict"):
        analyzer.analyze(x, inputs=[feeds["scale"]])
    with pytest.raises(onnxattr.errors.DataError, match="input 'keep' is tensor\\(bool\\), got float"):
        analyzer.analyze(x, inputs={**feeds, "keep": np.ones(5, np.float32)})
    with pytest.raises(onnxattr.errors.DataError,
                       match="input 'scale' is tensor\\(uint8\\), and the data holds values beyond its range"):
        analyzer.analyze(x, inputs={**feeds, "scale": np.array([1, 2, 3, 4, 300])})  # 300 wrapped to 44
    with pytest.raises(onnxattr.errors.UnsupportedModelError, match="has a tensor named 'target'"):
        onnxattr.compile(model, "gradient", input="x", neuron="index")  # a node output of the model
    model.graph.input.append(helper.make_tensor_value_info("target", TensorProto.FLOAT, [5]))
    model.graph.node[5].output[0] = "t0"
    model.graph.node.insert(6, helper.make_node("Add", ["t0", "target"], ["target_sum"]))
    model.graph.node[7].input[0] = "target_sum"
    with pytest.raises(onnxattr.errors.UnsupportedModelError, match="has a tensor named 'target'"):
        onnxattr.compile(model, "gradient", input="x", neuron="index")


def test_an_explained_intermediate_tensor_takes_its_data_through_the_input_it_comes_from():
    """--input emb (an embedding of token ids) on a model whose inputs are [mask, ids]: the data (ids) goes
    to ids, the input emb is computed from, not to the first input."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"]),
             helper.make_node("Unsqueeze", ["mask", "axis"], ["m3"]),
             helper.make_node("Mul", ["emb", "m3"], ["em"]),
             helper.make_node("ReduceMean", ["em", "time"], ["p"], keepdims=0),
             helper.make_node("MatMul", ["p", "W"], ["y"])]
    g = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", "T"]),
                                            helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "E"),
                           numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W"),
                           numpy_helper.from_array(np.array([2], np.int64), "axis"),
                           numpy_helper.from_array(np.array([1], np.int64), "time")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    ids, mask = rng.integers(0, 10, (2, 5)), np.ones((2, 5), np.float32)
    got = onnxattr.create_analyzer("gradient", model, input="emb").analyze(ids, inputs={"mask": mask})
    compiled = onnxattr.compile(model, "gradient", input="emb")
    want = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"ids": ids, "mask": mask})[0]
    np.testing.assert_array_equal(got, want)
    assert got.shape == (2, 5, 4)


def test_a_reader_that_stops_early_gets_no_traceback():
    """`onnxattr methods | head -1` after head has gone: the pipe's read end is closed before onnxattr
    writes, so its first write fails; it stops quietly with 141 (128 + SIGPIPE), as a shell reports such a
    tool, and nothing on stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "onnxattr.cli", "methods"], stdout=write_end,
                              stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == b"", proc.stderr.decode()


def test_an_overlay_on_data_that_are_not_the_explained_tensor_is_refused_before_the_run(tmp_path, capsys):
    """Token ids explained as their embedding: refused after the whole run (exit 2, -o written) before."""
    from tests.methods.test_feature_groups import embedding_model

    onnx.save(embedding_model(), tmp_path / "emb.onnx")
    np.save(tmp_path / "ids.npy", np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.int64))
    assert main(["explain", str(tmp_path / "emb.onnx"), "-m", "gradient", "--input", "emb", "--data",
                 str(tmp_path / "ids.npy"), "-o", str(tmp_path / "r.npy"), "--heatmap", str(tmp_path / "h.png"),
                 "--overlay"]) == 7
    assert "the data [2, 4] are not what is explained" in capsys.readouterr().err
    assert not (tmp_path / "r.npy").exists() and not (tmp_path / "h.png").exists()
    # an intermediate of the data's rank ([N, 8] from x [N, 6]): checked by its sizes, not only its rank
    onnx.save(mlp()[0], tmp_path / "mlp.onnx")
    np.save(tmp_path / "x.npy", np.ones((2, 6), np.float32))
    assert main(["explain", str(tmp_path / "mlp.onnx"), "-m", "gradient", "--input", "h2", "--data",
                 str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.npy"), "--heatmap", str(tmp_path / "h.png"),
                 "--overlay"]) == 7
    assert "the data [2, 6] are not what is explained" in capsys.readouterr().err
    assert not (tmp_path / "r.npy").exists()


def test_a_map_with_nan_is_drawn_with_a_warning(tmp_path, capsys):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Sqrt", ["x"], ["y"])], "sqrt",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "sqrt.onnx")
    np.save(tmp_path / "x.npy", np.array([[1.0, 4.0, 9.0, -1.0]], np.float32))
    assert main(["explain", str(tmp_path / "sqrt.onnx"), "-m", "gradient", "--neuron", "all", "--data",
                 str(tmp_path / "x.npy"), "--heatmap", str(tmp_path / "h.png")]) == 0
    err = capsys.readouterr().err
    assert "onnxattr: warning: the relevance holds 1 NaN or inf values" in err and "NaN or inf values as 0" in err
    # without images too: an LRP map that overflowed (Swin-V2's epsilon rule) was written without a word
    assert main(["explain", str(tmp_path / "sqrt.onnx"), "-m", "gradient", "--neuron", "all", "--data",
                 str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.npy")]) == 0
    err = capsys.readouterr().err
    assert "onnxattr: warning: the relevance holds 1 NaN or inf values" in err and "as 0" not in err
    assert np.isnan(np.load(tmp_path / "r.npy")).sum() == 1


def test_explain_takes_several_images_or_a_folder_of_them(tmp_path, capsys):
    """One sample per image, in the order given (a folder: its images by name), resized to the model's fixed
    8 x 8; the map is the same as for the stacked .npy batch."""
    from PIL import Image

    from onnxattr.pixels import load_image

    model = os.path.join(os.path.dirname(__file__), "..", "models", "digits_cnn.onnx")
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name in ("b.png", "a.png", "c.jpg"):
        Image.fromarray(rng.integers(0, 255, (12, 10), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    want_order = [folder / "a.png", folder / "b.png", folder / "c.jpg"]
    stacked = np.concatenate([load_image(str(p), ["batch", 1, 8, 8]) for p in want_order])
    np.save(tmp_path / "x.npy", stacked)
    base = ["explain", model, "-m", "gradient"]
    assert main(base + ["--data", str(tmp_path / "x.npy"), "-o", str(tmp_path / "want.npy")]) == 0
    assert main(base + ["--data", str(folder), "-o", str(tmp_path / "folder.npy")]) == 0
    assert main(base + ["--data", *map(str, want_order), "-o", str(tmp_path / "files.npy")]) == 0
    want = np.load(tmp_path / "want.npy")
    assert want.shape == (3, 1, 8, 8)
    np.testing.assert_array_equal(np.load(tmp_path / "folder.npy"), want)
    np.testing.assert_array_equal(np.load(tmp_path / "files.npy"), want)
    capsys.readouterr()
    assert main(base + ["--data", str(folder), str(tmp_path / "x.npy")]) == 7
    assert "a .npy batch is the whole --data" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(base + ["--data", str(tmp_path / "empty")]) == 7
    assert "a folder without images" in capsys.readouterr().err


def test_heatmaps_into_a_folder_one_per_sample(tmp_path, capsys):
    """--heatmap / --graymap naming a folder (existing, or ending in /) write one PNG per sample, named after its
    image (numbered in front where two images share a name; a .npy batch: its name and the sample's number), each
    the one-sample grid; a name that would replace an input is refused before the run (8), as are the same folder
    for both (2), a file where a folder is named and a missing parent folder (8)."""
    from PIL import Image

    from onnxattr import viz
    from onnxattr.pixels import load_image

    model = os.path.join(os.path.dirname(__file__), "..", "models", "digits_cnn.onnx")
    rng = np.random.default_rng(4)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files = [tmp_path / "a" / "cat.png", tmp_path / "b" / "cat.jpg", tmp_path / "a" / "dog.png"]
    for f in files:
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(f)
    base = ["explain", model, "-m", "gradient", "--data", *map(str, files), "-o", str(tmp_path / "r.npy")]
    assert main(base + ["--heatmap", str(tmp_path / "heat") + "/", "--overlay", "--graymap", str(tmp_path / "a")]) == 0
    assert "wrote 3 heatmaps into" in capsys.readouterr().out
    r = np.load(tmp_path / "r.npy")
    x = np.concatenate([load_image(str(f), ["N", 1, 8, 8]) for f in files])
    assert sorted(os.listdir(tmp_path / "heat")) == ["0_cat.png", "1_cat.png", "2_dog.png"]
    for i, name in enumerate(["0_cat.png", "1_cat.png", "2_dog.png"]):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "heat" / name)),
                                      viz.grid(r[i:i + 1], "heatmap", images=x[i:i + 1]))
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / name)), viz.grid(r[i:i + 1], "graymap"))
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "batch").mkdir()
    assert main(["explain", model, "-m", "gradient", "--data", str(tmp_path / "x.npy"), "--heatmap",
                 str(tmp_path / "batch")]) == 0
    assert sorted(os.listdir(tmp_path / "batch")) == ["x_0.png", "x_1.png", "x_2.png"]
    capsys.readouterr()
    single = ["explain", model, "-m", "gradient", "--data", str(files[2])]
    assert main(single + ["--heatmap", str(tmp_path / "a")]) == 8  # a/dog.png is the input
    assert "would overwrite the input" in capsys.readouterr().err
    assert main(single + ["--heatmap", str(tmp_path / "h") + "/", "--graymap", str(tmp_path / "h") + "/"]) == 2
    assert "name the same folder" in capsys.readouterr().err
    assert main(single + ["--heatmap", str(tmp_path / "r.npy") + "/"]) == 8
    assert "names a folder (it ends in '/') but is a file" in capsys.readouterr().err
    assert main(single + ["--heatmap", str(tmp_path / "no" / "such") + "/"]) == 8
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()


def test_images_of_different_sizes_for_a_model_of_any_size_are_refused(tmp_path, capsys):
    from onnx import TensorProto, helper, numpy_helper
    from PIL import Image

    g = helper.make_graph([helper.make_node("Conv", ["x", "k"], ["c"]),
                           helper.make_node("ReduceMean", ["c"], ["y"], axes=[2, 3], keepdims=0)], "fcn",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                          [numpy_helper.from_array(np.ones((2, 1, 1, 1), np.float32), "k")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "fcn.onnx")
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(tmp_path / "small.png")
    Image.fromarray(np.zeros((9, 5), np.uint8)).save(tmp_path / "tall.png")
    assert main(["explain", str(tmp_path / "fcn.onnx"), "-m", "gradient", "--data", str(tmp_path / "small.png"),
                 str(tmp_path / "tall.png")]) == 7
    assert "the images differ in size" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "fcn.onnx"), "-m", "gradient", "--data", str(tmp_path / "small.png"),
                 str(tmp_path / "small.png"), "-o", str(tmp_path / "r.npy")]) == 0
    assert np.load(tmp_path / "r.npy").shape == (2, 1, 6, 5)


def test_a_data_folder_is_read_safely(tmp_path, capsys, monkeypatch):
    """Outputs may not overwrite the images found in a --data folder (exit 8; only the folder's own path was
    checked), two outputs may not share a file (exit 2), sub-folders named like images and hidden files are not
    samples, and a folder that cannot be listed is a one-line data error (a traceback before)."""
    from PIL import Image

    model = os.path.join(os.path.dirname(__file__), "..", "models", "digits_cnn.onnx")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("a.png", ".hidden.png"):
        Image.fromarray(np.full((8, 8), 7, np.uint8)).save(folder / name)
    (folder / "old.png").mkdir()
    before = (folder / "a.png").read_bytes()
    base = ["explain", model, "-m", "gradient", "--data", str(folder)]
    assert main(base + ["--heatmap", str(folder / "a.png")]) == 8
    assert (folder / "a.png").read_bytes() == before
    assert main(base + ["-o", str(tmp_path / "r.png"), "--heatmap", str(tmp_path / "r.png")]) == 2
    assert "name the same file" in capsys.readouterr().err
    assert main(base + ["-o", str(tmp_path / "r.npy")]) == 0
    assert np.load(tmp_path / "r.npy").shape == (1, 1, 8, 8)  # a.png alone
    capsys.readouterr()

    def refuse(path):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr("onnxattr.cli_data.os.listdir", refuse)
    assert main(base) == 7
    assert "cannot list the folder (Permission denied)" in capsys.readouterr().err


def test_keep_prints_each_tensors_sums_and_writes_them(tmp_path, model_path, capsys):
    """--keep TENSOR (repeatable) in compile adds relevance:TENSOR outputs; in explain it prints the sum per
    sample at each tensor (a conservation check) and --keep-out writes them to one .npz by name."""
    out = tmp_path / "c.onnx"
    assert main(["compile", str(model_path), "-m", "lrp.z", "--keep", "r", "--keep", "h2", "-o", str(out)]) == 0
    assert [o.name for o in onnx.load(out).graph.output] == ["p", "relevance", "relevance:r", "relevance:h2"]
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    capsys.readouterr()
    assert main(["explain", str(model_path), "-m", "lrp.z", "--data", str(tmp_path / "x.npy"), "--keep", "r",
                 "--keep-out", str(tmp_path / "k.npz")]) == 0
    printed = capsys.readouterr().out
    kept = np.load(tmp_path / "k.npz")
    assert kept.files == ["r"] and kept["r"].shape == (3, 8)
    logits = mlp_logits(x, mlp()[1])
    np.testing.assert_allclose(kept["r"].sum(1), logits.max(1), rtol=1e-5)  # lrp.z conserves above the bias
    assert "relevance at r [3, 8]; sum per sample: " + ", ".join(f"{v:.4g}" for v in kept["r"].sum(1)) in printed
    assert main(["explain", str(model_path), "-m", "lrp.z", "--data", str(tmp_path / "x.npy"),
                 "--keep-out", str(tmp_path / "k2.npz")]) == EXIT_CODES["UsageError"]
    assert "add --keep TENSOR" in capsys.readouterr().err and not (tmp_path / "k2.npz").exists()
    assert main(["explain", str(model_path), "-m", "lrp.z", "--data", str(tmp_path / "x.npy"), "--keep", "r",
                 "--keep-out", str(tmp_path / "k.txt")]) == EXIT_CODES["UsageError"]
    assert "must name a .npz file" in capsys.readouterr().err and not (tmp_path / "k.txt").exists()


def test_condition_explains_the_channels_of_a_hidden_tensor(tmp_path, model_path, capsys):
    """--condition r=2,5: the gradient through units 2 and 5 of the hidden Relu only (closed form: the others
    masked out of the chain rule); the same from a float mask file and from per-sample channel numbers."""
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    w1, b1, w2 = mlp()[1]
    on = (x @ w1 + b1) > 0
    keep = np.zeros(8, np.float32)
    keep[[2, 5]] = 1
    want = (w2[:, 1] * on * keep) @ w1.T
    args = ["explain", str(model_path), "--method", "gradient", "--data", str(tmp_path / "x.npy"), "--neuron", "index",
            "--target", "1", "-o", str(tmp_path / "r.npy")]
    assert main(args + ["--condition", "r=2,5"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), want, rtol=1e-5, atol=1e-6)
    np.save(tmp_path / "mask.npy", np.tile(keep, (3, 1)))
    assert main(args + ["--condition", f"r={tmp_path / 'mask.npy'}"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), want, rtol=1e-5, atol=1e-6)
    np.save(tmp_path / "channels.npy", np.array([[2, 5], [5, 2], [2, 5]]))
    assert main(args + ["--condition", f"r={tmp_path / 'channels.npy'}"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), want, rtol=1e-5, atol=1e-6)
    out = tmp_path / "c.onnx"
    assert main(["compile", str(model_path), "--method", "lrp.epsilon", "--condition", "r", "-o", str(out)]) == 0
    assert [i.name for i in onnx.load(out).graph.input] == ["x", "condition:r"]


@pytest.mark.parametrize("extra,code,message", [
    (["--condition", "r"], 2, "expects TENSOR=CHANNELS"),
    (["--condition", "r=two"], 2, "expects channel numbers"),
    (["--condition", "r=1", "--condition", "r=2"], 2, "given twice"),
    (["--condition", "r=8"], 7, "channel 8 is outside axis 1 of 8 channels"),
    (["--condition", "r=1", "--condition-axis", "2"], 2, "condition_axis 2"),
    (["--condition", "r=1", "--method", "integrated_gradients"], 2, "one reverse pass"),
    (["--condition", "nope=1"], 6, "no tensor 'nope'"),
    (["--condition", "r=missing.npy"], 7, "no such file"),
])
def test_condition_errors(tmp_path, model_path, capsys, extra, code, message):
    np.save(tmp_path / "x.npy", np.ones((2, 6), np.float32))
    args = ["explain", str(model_path), "--method", "gradient", "--data", str(tmp_path / "x.npy")]
    assert main(args + extra) == code
    assert message in capsys.readouterr().err


def test_condition_mask_file_is_never_overwritten(tmp_path, model_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((2, 6), np.float32))
    mask = tmp_path / "mask.npy"
    np.save(mask, np.ones((1, 8), np.float32))
    before = mask.read_bytes()
    assert main(["explain", str(model_path), "--method", "gradient", "--data", str(tmp_path / "x.npy"),
                 "--condition", f"r={mask}", "-o", str(mask)]) == EXIT_CODES["OutputFileError"]
    assert mask.read_bytes() == before


@pytest.mark.parametrize("command,out,message", [
    ("explain", "r.png", "for an image use --heatmap or --graymap"),
    ("explain", "r.npz", "name a .npy file"),
    ("compile", "m.npy", "name a .onnx file"),
])
def test_output_suffix_must_fit_what_is_written(tmp_path, model_path, capsys, command, out, message):
    np.save(tmp_path / "x.npy", np.ones((2, 6), np.float32))
    data = ["--data", str(tmp_path / "x.npy")] if command == "explain" else []
    assert main([command, str(model_path), "--method", "gradient", *data, "-o", str(tmp_path / out)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / out).exists()


def test_condition_files_one_channel_per_sample_and_odd_names(tmp_path, model_path, capsys):
    """A vector of integers [N] in a file is one channel per sample (a file holds rows); a path with '=' and an
    upper-case .NPY are files; --condition-axis needs --condition."""
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    args = ["explain", str(model_path), "--method", "gradient", "--data", str(tmp_path / "x.npy"), "--neuron", "index",
            "--target", "1", "-o", str(tmp_path / "r.npy")]
    assert main(args + ["--condition", "r=2,5"]) == 0
    pair = np.load(tmp_path / "r.npy")
    rows = []
    for c in (2, 5, 7):
        assert main(args + ["--condition", f"r={c}"]) == 0
        rows.append(np.load(tmp_path / "r.npy"))
    odd = tmp_path / "a=b"
    odd.mkdir()
    np.save(odd / "top.npy", np.array([2, 5, 7]))
    assert main(args + ["--condition", f"r={odd / 'top.npy'}"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), np.stack([rows[k][k] for k in range(3)]), atol=1e-6)
    np.save(tmp_path / "pair_mask.npy", np.eye(8, dtype=np.float32)[[2, 5]].sum(0, keepdims=True))
    (tmp_path / "pair_mask.npy").rename(tmp_path / "PAIR.NPY")
    assert main(args + ["--condition", f"r={tmp_path / 'PAIR.NPY'}"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), pair, atol=1e-6)
    capsys.readouterr()
    assert main(args + ["--condition-axis", "1"]) == 2
    assert "add --condition" in capsys.readouterr().err
