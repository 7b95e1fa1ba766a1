"""Exit code 8: outputs never replace an input, are written atomically, and are checked first."""

from __future__ import annotations

import os
import stat

import numpy as np
import onnx
import pytest

import onnxattr
import onnxattr.cli
import onnxattr.output
from onnxattr.cli import main
from tests.errors.common import ROOT, fails, no_temporaries
from tests.models import mlp


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
    assert "overwrite the input" in line and "another -o" not in line  # the path came with --heatmap
    assert (model_path.read_bytes(), x_path.read_bytes()) == before
    assert os.path.islink(tmp_path / "alias.onnx")


def test_output_over_a_rules_or_patterns_file_is_refused(tmp_path, model_path, x_path, capsys):
    rules = tmp_path / "my.toml"
    rules.write_text((ROOT / "rules" / "lrp.epsilon.toml").read_text())
    assert main(["fit", str(model_path), "-m", "pattern.net", "--data", str(x_path),
                 "-o", str(tmp_path / "pat.npz")]) == 0
    pat = tmp_path / "pat.npz"
    before = rules.read_bytes(), pat.read_bytes()
    for args in (["compile", model_path, "-m", "pattern.net", "--set", f"patterns={pat}", "-o", pat],
                 ["explain", model_path, "-m", "pattern.net", "--set", f"patterns={pat}", "--data", x_path, "-o", pat],
                 ["compile", model_path, "--rules", rules, "-o", rules],
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


def test_a_dangling_link_or_an_unwritable_image_type_is_refused_first(tmp_path, model_path, x_path, capsys,
                                                                      monkeypatch):
    """-o as a symbolic link into a missing folder, and image types Pillow knows but cannot write RGB to
    (.psd, .xbm), stop explain before it compiles anything."""
    monkeypatch.setattr(onnxattr.cli, "Analyzer", None)
    os.symlink(tmp_path / "nowhere" / "r.npy", tmp_path / "dangling.npy")
    line = fails(capsys, "OutputFileError", "explain", model_path, "-m", "gradient", "--data", x_path,
                 "-o", tmp_path / "dangling.npy")
    assert "dangling.npy" in line and "folder does not exist" in line
    for ext in (".psd", ".xbm"):
        line = fails(capsys, "OutputFileError", "explain", model_path, "-m", "gradient", "--data", x_path,
                     "--heatmap", tmp_path / f"h{ext}")
        assert ext in line and "cannot write an RGB image" in line


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
