"""Exit codes 7 and 9: data that does not fit the model, pattern files that are not ones."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.errors import EXIT_CODES
from tests.errors.common import fails, make_model, save, vi
from tests.test_cli import run_cli


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
    (np.full((2, 6), 1e39), ["float32", "beyond its range", "magnitude 1e+39)"]),  # would become inf in the cast
    (np.array([[np.nan, -3e39, 1, 2, 3, 4]] * 2), ["float32", "beyond its range", "magnitude 3e+39)"]),  # NaN is not it
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
    """An integer beyond int64 is out of range like any index past the outputs (exit 7); it was called "not
    integers" (a usage error) before."""
    line = fails(capsys, "DataError", "explain", model_path, "-m", "gradient", "--data", x_path,
                 "--neuron", "index", "--target", "99999999999999999999999")
    assert "--target" in line and "out of range" in line


@pytest.mark.parametrize("method", ["integrated_gradients", "deep_lift"])
def test_per_sample_references_must_match_the_data(model_path, method):
    x = np.ones((4, 6), np.float32)
    analyzer = onnxattr.create_analyzer(method, str(model_path), reference_inputs=np.zeros((3, 6)))
    with pytest.raises(onnxattr.errors.DataError, match="reference_inputs holds 3 references and the data 4"):
        analyzer.analyze(x)
    assert analyzer.analyze(x[:3]).shape == (3, 6)  # one per sample works


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad"])
def test_a_per_sample_feed_under_another_axis_name_says_why_it_failed(method):
    """x declared [batch, 4] and mask [n, 4]: nothing says mask has x's batch axis, so the points of both
    samples share it and onnxruntime fails inside the Loop. The error names the feed and says why. The
    same model with a static batch of 2 runs one point per Loop trip and takes the mask as it is."""
    FLOAT = TensorProto.FLOAT

    def model(x_batch, mask_batch):
        g = helper.make_graph([helper.make_node("Mul", ["x", "mask"], ["xm"]),
                               helper.make_node("MatMul", ["xm", "W"], ["y"])], "feeds",
                              [vi("x", FLOAT, [x_batch, 4]), vi("mask", FLOAT, [mask_batch, 4])],
                              [vi("y", FLOAT, [x_batch, 3])],
                              [numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    x, feeds = np.ones((2, 4), np.float32), {"mask": np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.float32)}
    with pytest.raises(onnxattr.errors.DataError, match=r"a feed \(mask\) goes with its sample's points only"):
        onnxattr.create_analyzer(method, model("batch", "n"), input="x").analyze(x, inputs=feeds)
    want = onnxattr.create_analyzer("gradient", model("batch", "n"), input="x").analyze(x, inputs=feeds)
    np.testing.assert_array_equal(want, [[2, 5, 0, 0], [2, 5, 8, 11]])  # the mask times W's row sums: y linear
    for shapes in (("batch", "batch"), (2, 2)):
        params = {"steps": 3} if method == "integrated_gradients" else {"noise_scale": 0.0, "augment_by_n": 3}
        got = onnxattr.create_analyzer(method, model(*shapes), input="x", **params).analyze(x, inputs=feeds)
        np.testing.assert_allclose(got, want if method == "smoothgrad" else x * want, rtol=1e-6)


def test_references_are_checked_against_the_explained_tensor_not_the_data():
    """IG at a token embedding [N, T, 4] with ids [N, T] as the data: a reference [T, 4] is one shared
    reference (the embedding's features), not 5 per-sample references for 2 samples; [3, T, 4] is refused."""
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"]),
             helper.make_node("ReduceMean", ["emb", "time"], ["p"], keepdims=0),
             helper.make_node("MatMul", ["p", "W"], ["y"])]
    g = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), "E"),
                           numpy_helper.from_array(np.ones((4, 3), np.float32), "W"),
                           numpy_helper.from_array(np.array([1], np.int64), "time")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    ids = np.array([[1, 2, 3, 4, 5], [0, 0, 9, 9, 1]])
    shared = np.full((5, 4), 0.5, np.float32)
    got = onnxattr.create_analyzer("integrated_gradients", model, input="emb", steps=4,
                                   reference_inputs=shared).analyze(ids)
    assert got.shape == (2, 5, 4)
    with pytest.raises(onnxattr.errors.DataError, match="reference_inputs holds 3 references and the data 2"):
        onnxattr.create_analyzer("integrated_gradients", model, input="emb", steps=4,
                                 reference_inputs=np.zeros((3, 5, 4), np.float32)).analyze(ids)


@pytest.mark.parametrize("method", ["gradient_shap", "occlusion"])
def test_the_feed_error_names_the_method_that_runs(method):
    """A feed [M, 4] under another name than x's [batch, 4]: the error names the method running (not
    'integrated_gradients and smoothgrad') and suggests chunk_size=1."""
    FLOAT = TensorProto.FLOAT
    g = helper.make_graph([helper.make_node("Mul", ["x", "mask"], ["xm"]), helper.make_node("MatMul", ["xm", "W"], ["y"])],
                          "feeds", [vi("x", FLOAT, ["batch", 4]), vi("mask", FLOAT, ["n", 4])], [vi("y", FLOAT, ["batch", 3])],
                          [numpy_helper.from_array(np.ones((4, 3), np.float32), "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"mask": np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.float32)}
    with pytest.raises(onnxattr.errors.DataError, match=f"{method} runs every sample's points.*or set chunk_size=1"):
        kw = {"sliding_window_shapes": 1} if method == "occlusion" else {}  # 4 windows, one chunk
        onnxattr.create_analyzer(method, model, input="x", **kw).analyze(np.ones((2, 4), np.float32), inputs=feeds)
