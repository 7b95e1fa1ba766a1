"""onnxattr/cli_evaluate.py: `onnxattr evaluate` writes its curves, metrics and chart, reads what it is given, and
refuses bad options with one-line errors and their exit codes, never overwriting what it reads."""

import json

import numpy as np
import onnx
import pytest

from onnxattr.cli import main
from onnxattr.errors import EXIT_CODES
from tests.models import mlp
from tests.test_cli_explain import DIGITS, folder, watch_image_reads  # noqa: F401 (folder: a fixture)
from tests.test_evaluate import linear


def test_cli_evaluate_writes_curves_and_json(tmp_path, capsys):
    m, w = linear()
    mp, xp, rp = tmp_path / "lin.onnx", tmp_path / "x.npy", tmp_path / "r.npy"
    onnx.save(m, mp)
    x = np.random.default_rng(5).standard_normal((3, 6)).astype(np.float32)
    np.save(xp, x)
    np.save(rp, -x)
    out, js = tmp_path / "curves.npz", tmp_path / "aopc.json"
    assert main(["evaluate", str(mp), "-m", "input_t_gradient", "-m", "random", "--relevance", f"neg={rp}",
                 "--data", str(xp), "--perturbation", "0", "--steps", "4", "-o", str(out), "--json", str(js)]) == 0
    text = capsys.readouterr().out
    assert "AOPC MORF" in text and "input_t_gradient" in text and "neg" in text
    curves = np.load(out)
    assert curves["input_t_gradient|morf"].shape == (5, 3) and curves["neg|lerf|regions"].tolist() == [0, 1, 2, 3, 4]
    body = json.loads(js.read_text())
    assert set(body) == {"input_t_gradient", "random", "neg"} and len(body["neg"]["abpc"]) == 3
    assert body["input_t_gradient"]["abpc"][0] > 0
    out2, js2 = tmp_path / "all.npz", tmp_path / "all.json"
    assert main(["evaluate", str(mp), "-m", "gradient", "--relevance", f"neg={rp}", "--data", str(xp),
                 "--metric", "aopc", "--metric", "infidelity", "--metric", "sensitivity", "--by-inputs", "no",
                 "--draws", "3", "--steps", "2", "-o", str(out2), "--json", str(js2)]) == 0
    text = capsys.readouterr().out
    assert "Infidelity: 3 draws" in text and "Sensitivity max" in text
    body = json.loads(js2.read_text())
    assert set(body["gradient"]) == {"aopc_morf", "aopc_lerf", "abpc", "infidelity", "sensitivity_max"}
    assert set(body["neg"]) == {"aopc_morf", "aopc_lerf", "abpc", "infidelity"}
    assert max(body["gradient"]["infidelity"]) < 1e-9  # the gradient of a linear model, read per unit of change
    assert np.load(out2)["gradient|sensitivity_max"].shape == (3,)


@pytest.mark.parametrize("extra, code, words", [
    (["--perturbation", "blur"], 2, "--perturbation must be one of"),
    (["--region", "2,x"], 2, "--region must be integers"),
    (["--order", "best"], 2, "--order must be"),
    (["--value-range", "0"], 2, "--value-range must be two numbers"),
    (["--relevance", "r=missing.npy"], EXIT_CODES["DataError"], "no such file"),
    (["--target", "1"], 2, "--target goes with --neuron index"),
    (["-o", "X"], EXIT_CODES["OutputFileError"], "would overwrite"),
    (["--seed", "-1"], 2, "seed must be"),
    (["--feed", "x=X"], 2, "not an input of the model besides the explained one"),
    (["--perturbation", "mean"], 2, "regions of one element would not change"),
])
def test_cli_evaluate_errors(tmp_path, capsys, extra, code, words):
    m, _ = linear()
    mp, xp = tmp_path / "lin.onnx", tmp_path / "x.npy"
    onnx.save(m, mp)
    np.save(xp, np.ones((2, 6), np.float32))
    extra = [e.replace("X", str(xp)) if e in ("X", "x=X") else e for e in extra]
    before = xp.read_bytes()
    assert main(["evaluate", str(mp), "-m", "gradient", "--data", str(xp), *extra]) == code
    assert words in capsys.readouterr().err
    assert xp.read_bytes() == before


def test_cli_evaluate_never_overwrites_a_file_named_by_set_or_a_rule_file(tmp_path, capsys):
    m, _ = linear()
    mp, xp, mask = tmp_path / "lin.onnx", tmp_path / "x.npy", tmp_path / "fm.npy"
    onnx.save(m, mp)
    np.save(xp, np.ones((2, 6), np.float32))
    np.save(mask, np.arange(6)[None])
    before = mask.read_bytes()
    assert main(["evaluate", str(mp), "-m", "feature_ablation", "--set", f"feature_mask={mask}", "--data", str(xp),
                 "--json", str(mask)]) == EXIT_CODES["OutputFileError"]
    assert "would overwrite" in capsys.readouterr().err and mask.read_bytes() == before
    rules = tmp_path / "r.toml"
    rules.write_text('[layers]\ndefault = { rule = "epsilon" }\n')
    assert main(["evaluate", str(mp), "-m", str(rules), "--data", str(xp), "-o", str(rules)]) == \
        EXIT_CODES["OutputFileError"]
    assert rules.read_text().startswith("[layers]")


def test_cli_evaluate_takes_fitted_patterns_and_never_overwrites_them(tmp_path, capsys):
    m, _ = mlp()
    mp, xp, pp = tmp_path / "mlp.onnx", tmp_path / "x.npy", tmp_path / "p.npz"
    onnx.save(m, mp)
    np.save(xp, np.random.default_rng(13).standard_normal((16, 6)).astype(np.float32))
    assert main(["fit", str(mp), "-m", "pattern.attribution", "--data", str(xp), "-o", str(pp)]) == 0
    before = pp.read_bytes()
    assert main(["evaluate", str(mp), "-m", "pattern.attribution", "-m", "gradient", "--patterns", str(pp),
                 "--data", str(xp), "--steps", "3"]) == 0
    assert "pattern.attribution" in capsys.readouterr().out
    assert main(["evaluate", str(mp), "-m", "pattern.attribution", "--patterns", str(pp), "--data", str(xp),
                 "-o", str(pp)]) == EXIT_CODES["OutputFileError"]
    assert pp.read_bytes() == before


def test_cli_evaluate_draws_the_curves(tmp_path, capsys):
    from PIL import Image

    m, _ = linear()
    mp, xp, png = tmp_path / "lin.onnx", tmp_path / "x.npy", tmp_path / "curves.png"
    onnx.save(m, mp)
    np.save(xp, np.random.default_rng(15).standard_normal((3, 6)).astype(np.float32))
    assert main(["evaluate", str(mp), "-m", "gradient", "-m", "random", "--data", str(xp), "--plot", str(png)]) == 0
    with Image.open(png) as img:
        assert img.size[0] > img.size[1] > 100  # two panels side by side
    assert main(["evaluate", str(mp), "-m", "gradient", "--data", str(xp), "--plot", str(png), "--json",
                 str(png)]) == 2
    assert "name the same file" in capsys.readouterr().err
    assert main(["evaluate", str(mp), "-m", "gradient", "--data", str(xp), "--metric", "infidelity", "--plot",
                 str(tmp_path / "c.png")]) == 2
    assert "add --metric aopc" in capsys.readouterr().err
    assert main(["evaluate", str(mp), "-m", "gradient", "--data", str(xp), "--plot", str(tmp_path / "c.xyz")]) == \
        EXIT_CODES["OutputFileError"]


def test_cli_evaluate_reads_a_folder_a_slice_at_a_time(tmp_path, folder, monkeypatch, capsys):  # noqa: F811
    """--batch-size 2 over five images: each image is decoded once, two at a time, never all of them, and the
    given map is memory-mapped; the table and the JSON are those of the stacked .npy."""
    np.save(tmp_path / "given.npy", np.random.default_rng(3).standard_normal((5, 1, 8, 8)).astype(np.float32))
    common = [DIGITS, "-m", "gradient", "-m", "lrp.epsilon", "--relevance", f"given={tmp_path / 'given.npy'}",
              "--metric", "aopc", "--metric", "infidelity", "--steps", "3", "--region", "3", "--batch-size", "2"]
    assert main(["evaluate", *common, "--data", str(tmp_path / "x.npy"), "--json", str(tmp_path / "want.json")]) == 0
    want_printed = capsys.readouterr().out.splitlines()
    decoded, slices = watch_image_reads(monkeypatch)
    loaded = np.load

    def load(path, *args, **kwargs):
        assert kwargs.get("mmap_mode") == "r" or not str(path).endswith("given.npy"), "the map was read whole"
        return loaded(path, *args, **kwargs)
    monkeypatch.setattr(np, "load", load)
    assert main(["evaluate", *common, "--data", str(folder), "--json", str(tmp_path / "got.json")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert sorted(decoded) == sorted(str(p) for p in folder.iterdir()) and len(decoded) == 5
    assert [rows.indices(5) for rows in slices] == [(0, 2, 1), (2, 4, 1), (4, 5, 1)]
    assert [line for line in printed if not line.startswith("wrote")] == \
        [line for line in want_printed if not line.startswith("wrote")]
    assert "evaluating given, samples 5-5 of 5 ..." in printed
    got, want = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("got", "want"))
    assert got.keys() == want.keys() == {"gradient", "lrp.epsilon", "given"}
    for name in want:
        for metric in want[name]:
            np.testing.assert_allclose(got[name][metric], want[name][metric], rtol=1e-6, atol=1e-9)
