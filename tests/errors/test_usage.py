"""Exit code 2: usage (options, parameters, API arguments), and the README's table of exit codes."""

from __future__ import annotations

import numpy as np
import pytest

import onnxattr
from onnxattr.cli import main
from onnxattr.errors import EXIT_CODES
from tests.errors.common import ROOT, fails


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
    ("lrp.epsilon", "epsilon=1e39", ["epsilon", "float32"]),  # finite in float64, inf in the graph
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
    (lambda p: onnxattr.compile(p, "lrp.epsilon", epsilon=10**400), "UsageError", ["epsilon=1000", "...", "finite"]),
    (lambda p: onnxattr.compile(p, "lrp.epsilon", epsilon=True), "UsageError", ["epsilon", "not a bool"]),
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


def test_readme_documents_every_exit_code():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(row.split("|")[1]) for row in table.splitlines() if row.startswith("| ") and
                  row.split("|")[1].strip().isdigit()}
    assert set(EXIT_CODES.values()) | {0, 130} <= documented


def test_numpy_integers_count_as_integers(model_path):
    assert onnxattr.compile(model_path, "smoothgrad", augment_by_n=np.int64(3), seed=np.int32(4)) is not None


@pytest.mark.parametrize("args,words", [
    (["compile", "{m}", "--methd", "gradient", "-o", "{o}"], ["unrecognized arguments: --methd gradient",
                                                             "did you mean --method?", "onnxattr compile --help"]),
    (["compile", "{m}", "-m", "gradient", "--ot", "{o}"], ["required: -o/--out", "did you mean --out?"]),
    (["explain", "{m}", "-m", "gradient", "--data", "{o}", "--heatmp={o}", "--graymp", "{o}"],
     ["--heatmp: did you mean --heatmap?; --graymp: did you mean --graymap?"]),
    (["compile", "{m}", "-m", "gradient", "--data", "{o}", "-o", "{o}"],
     ["--data: an option of explain, fit, compare, evaluate, concepts, not compile"]),
    (["compile", "{m}", "-m", "gradient", "--set", "--eps=0.5", "-o", "{o}"],
     ["--set: expected one argument (see"]),  # no hint on an error that is not about an unknown option
    (["fit", "{m}", "-m", "pattern.net", "--data", "{o}", "-o", "{o}", "--batch-sise", "3"],
     ["did you mean --batch-size?"]),
    (["compile", "{m}", "-m", "gradient", "-o", "{o}", "--zzz"], ["unrecognized arguments: --zzz (see"]),
    (["compile", "{m}", "-m", "gradient", "--fed", "{o}", "--fed", "{o}", "-o", "{o}"],
     ["; did you mean --feed? (an option of explain, fit, compare, evaluate, concepts, not compile) (see"]),  # once, though given twice
    (["compile", "{m}", "-m", "gradient", "--targe", "3", "-o", "{o}"],
     ["--targe: an option of explain, compare, evaluate, not compile"]),
])
def test_unknown_options_name_the_closest_option_of_their_command(tmp_path, model_path, capsys, args, words):
    """argparse's abbreviations stay accepted (--meth is --method); nothing is written."""
    out = tmp_path / "o.onnx"
    line = fails(capsys, "UsageError", *[a.format(m=model_path, o=out) for a in args])
    for w in words:
        assert w in line, line
    assert not out.exists()
    assert "did you mean" not in fails(capsys, "UsageError", "compile", model_path, "--zzz")
    assert main(["compile", str(model_path), "--meth", "gradient", "-o", str(out)]) == 0


@pytest.mark.parametrize("size", ["0", "-5"])
def test_fit_batch_size_must_be_positive_as_a_usage_error(tmp_path, model_path, capsys, size):
    """A bad option value is usage (2), like --batch-size x, not a problem with the data (7)."""
    np.save(tmp_path / "x.npy", np.ones((4, 6), np.float32))
    line = fails(capsys, "UsageError", "fit", model_path, "-m", "pattern.net", "--data", tmp_path / "x.npy",
                 "--batch-size", size, "-o", tmp_path / "p.npz")
    assert "batch_size must be a positive integer" in line and not (tmp_path / "p.npz").exists()
    with pytest.raises(onnxattr.errors.UsageError, match="positive integer"):
        onnxattr.create_analyzer("pattern.net", model_path).fit(np.ones((4, 6), np.float32), batch_size=True)


@pytest.mark.parametrize("value", [np.float32(0.5), np.float16(0.5)])
def test_numpy_floats_count_as_numbers(model_path, value):
    """np.float32 is no Python float (np.float64 is): it was refused as 'must be a number >= 0'."""
    assert onnxattr.compile(model_path, "smoothgrad", noise_scale=value, augment_by_n=2) is not None
    assert onnxattr.compile(model_path, "beta_smooth", beta_smooth=value) is not None
    assert onnxattr.compile(model_path, "random", stddev=value) is not None
