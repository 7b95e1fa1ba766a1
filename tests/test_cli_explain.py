"""onnxattr/cli_explain.py (and explain's lazy data, image_files.ImageFiles): explain reads, explains and writes its
data a slice at a time, with the files and printed lines of one whole run."""

import os

import numpy as np
import onnx
import pytest
from PIL import Image

import onnxattr
import onnxattr.image_files
from onnxattr import viz
from onnxattr.cli import main
from onnxattr.cli_data import load_samples
from onnxattr.image_files import ImageFiles
from onnxattr.errors import DataError
from onnxattr.pixels import load_image
from tests.models import mlp

DIGITS = os.path.join(os.path.dirname(__file__), "..", "models", "digits_cnn.onnx")


@pytest.fixture
def folder(tmp_path):
    """Five grey images of other sizes than the digits model's 8 x 8 (read resized), and a .npy of them as read."""
    rng = np.random.default_rng(7)
    (tmp_path / "imgs").mkdir()
    for i, size in enumerate([(12, 10), (9, 9), (12, 10), (16, 8), (8, 8)]):
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    files = sorted(str(p) for p in (tmp_path / "imgs").iterdir())
    np.save(tmp_path / "x.npy", np.concatenate([load_image(f, ["N", 1, 8, 8]) for f in files]))
    return tmp_path / "imgs"


def watch_image_reads(monkeypatch) -> tuple[list, list]:
    """(the image files decoded, the slices of ImageFiles taken), as they come; reading a folder whole fails."""
    decoded, read = [], onnxattr.image_files.read_image
    monkeypatch.setattr(onnxattr.image_files, "read_image", lambda path, *a: decoded.append(path) or read(path, *a))
    slices, getitem = [], ImageFiles.__getitem__
    monkeypatch.setattr(ImageFiles, "__getitem__", lambda self, rows: slices.append(rows) or getitem(self, rows))

    def whole_read(*args, **kwargs):
        raise AssertionError("the folder was read whole")
    monkeypatch.setattr(ImageFiles, "__array__", whole_read)
    return decoded, slices


def test_a_folder_is_read_explained_and_written_a_slice_at_a_time(tmp_path, folder, monkeypatch, capsys):
    """--batch-size 2 over five images: each image is decoded once, two at a time (the overlay takes the slice
    again, kept), never all of them; the -o array,
    the one-per-sample heatmaps (over the images), the single graymap and the printed lines are those of the
    stacked .npy explained in one run."""
    whole = ["explain", DIGITS, "-m", "lrp.epsilon", "--data", str(tmp_path / "x.npy"), "--batch-size", "5"]
    assert main(whole + ["-o", str(tmp_path / "want.npy"), "--graymap", str(tmp_path / "want.png")]) == 0
    want_printed = capsys.readouterr().out.splitlines()
    decoded, slices = watch_image_reads(monkeypatch)
    sliced = ["explain", DIGITS, "-m", "lrp.epsilon", "--data", str(folder), "--batch-size", "2"]
    assert main(sliced + ["-o", str(tmp_path / "r.npy"), "--graymap", str(tmp_path / "g.png"),
                          "--heatmap", str(tmp_path / "maps") + "/", "--overlay"]) == 0
    printed = capsys.readouterr().out.splitlines()
    files = sorted(str(p) for p in folder.iterdir())
    assert sorted(decoded) == files and len(decoded) == 5
    assert [s for i, s in enumerate(slices) if s not in slices[:i]] == [slice(0, 2), slice(2, 4), slice(4, 5)]
    r = np.load(tmp_path / "r.npy")
    np.testing.assert_allclose(r, np.load(tmp_path / "want.npy"), rtol=1e-5, atol=1e-6 * np.abs(r).max())
    assert printed[:2] == want_printed[:2]  # the maps' shape and sums, the explained neurons
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), viz.grid(r, "graymap"))
    x = np.load(tmp_path / "x.npy")
    assert sorted(os.listdir(tmp_path / "maps")) == [f"{i}.png" for i in range(5)]
    for i in range(5):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "maps" / f"{i}.png")),
                                      viz.grid(r[i:i + 1], "heatmap", images=x[i:i + 1]))


def test_per_sample_targets_kept_tensors_and_sums_come_out_as_in_one_run(tmp_path, capsys):
    """--neuron index with a target per sample, --keep and --keep-out over slices of a .npy: the printed neurons,
    sums and kept tensors and the written arrays are the one run's."""
    onnx.save(mlp()[0], tmp_path / "mlp.onnx")
    x = np.random.default_rng(2).standard_normal((11, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    base = ["explain", str(tmp_path / "mlp.onnx"), "-m", "lrp.z", "--data", str(tmp_path / "x.npy"), "--neuron",
            "index", "--target", "0,1,2,0,1,2,0,1,2,0,1", "--keep", "h2"]
    runs = {}
    for size in ("11", "3"):
        assert main(base + ["--batch-size", size, "-o", str(tmp_path / f"r{size}.npy"), "--keep-out",
                            str(tmp_path / f"k{size}.npz")]) == 0
        runs[size] = capsys.readouterr().out.splitlines()
    assert runs["3"][:3] == runs["11"][:3]
    assert runs["3"][1].count("p[") == 8 and runs["3"][1].startswith("explained per sample: p[0] = ")
    np.testing.assert_allclose(np.load(tmp_path / "r3.npy"), np.load(tmp_path / "r11.npy"), rtol=1e-6)
    np.testing.assert_allclose(np.load(tmp_path / "k3.npz")["h2"], np.load(tmp_path / "k11.npz")["h2"], rtol=1e-6)
    assert np.load(tmp_path / "k3.npz")["h2"].shape[0] == 11


def test_a_run_that_fails_midway_writes_no_array(tmp_path, monkeypatch, capsys):
    """An error in the second slice: exit 7 with its message, no -o file and no temporary left; a --heatmap folder
    is left as it was (not made, or holding what it held: no map of the failed run)."""
    onnx.save(mlp()[0], tmp_path / "mlp.onnx")
    np.save(tmp_path / "x.npy", np.ones((6, 6), np.float32))
    calls, run = [], onnxattr.api.Analyzer._analyze

    def second_fails(self, X, *args):
        calls.append(len(X))
        if len(calls) == 2:
            raise DataError("the second slice failed")
        return run(self, X, *args)
    monkeypatch.setattr(onnxattr.api.Analyzer, "_analyze", second_fails)
    assert main(["explain", str(tmp_path / "mlp.onnx"), "-m", "gradient", "--data", str(tmp_path / "x.npy"),
                 "--batch-size", "2", "-o", str(tmp_path / "r.npy")]) == 7
    assert "the second slice failed" in capsys.readouterr().err
    assert calls == [2, 2] and sorted(os.listdir(tmp_path)) == ["mlp.onnx", "x.npy"]
    # a heatmap folder: a new one is not left behind, and one that holds an earlier run's maps keeps them all
    calls.clear()
    heatmap = ["--heatmap", str(tmp_path / "maps") + "/", "--batch-size", "2"]
    assert main(["explain", str(tmp_path / "mlp.onnx"), "-m", "gradient", "--data", str(tmp_path / "x.npy"),
                 *heatmap]) == 7
    assert sorted(os.listdir(tmp_path)) == ["mlp.onnx", "x.npy"]
    monkeypatch.setattr(onnxattr.api.Analyzer, "_analyze", run)
    assert main(["explain", str(tmp_path / "mlp.onnx"), "-m", "input", "--data",
                 str(tmp_path / "x.npy"), *heatmap]) == 0
    before = {name: (tmp_path / "maps" / name).read_bytes() for name in os.listdir(tmp_path / "maps")}
    assert sorted(before) == [f"x_{i}.png" for i in range(6)]
    monkeypatch.setattr(onnxattr.api.Analyzer, "_analyze", run)
    assert main(["explain", str(tmp_path / "mlp.onnx"), "-m", "gradient", "--data", str(tmp_path / "x.npy"),
                 "--heatmap", str(tmp_path / "gradient") + "/"]) == 0
    # the failed run's first maps would differ from those there
    assert (tmp_path / "gradient" / "x_0.png").read_bytes() != before["x_0.png"]
    monkeypatch.setattr(onnxattr.api.Analyzer, "_analyze", second_fails)
    calls.clear()
    assert main(["explain", str(tmp_path / "mlp.onnx"), "-m", "gradient", "--data", str(tmp_path / "x.npy"),
                 *heatmap]) == 7
    assert {name: (tmp_path / "maps" / name).read_bytes() for name in os.listdir(tmp_path / "maps")} == before


def test_an_unreadable_image_fails_before_the_run(tmp_path, folder, monkeypatch, capsys):
    """A file that is not an image among the folder's is named before anything is explained (its header is read
    with the others')."""
    (folder / "9.png").write_bytes(b"not a png")
    ran = []
    monkeypatch.setattr(onnxattr.api.Analyzer, "_analyze", lambda *a: ran.append(1))
    assert main(["explain", DIGITS, "-m", "gradient", "--data", str(folder), "-o", str(tmp_path / "r.npy")]) == 7
    assert f"{folder / '9.png'}: not a .npy file nor an image Pillow can read" in capsys.readouterr().err
    assert not ran and not (tmp_path / "r.npy").exists()


def test_explain_data_are_lazy(tmp_path, folder):
    """load_samples(lazy=True): a .npy memory-mapped, several images an ImageFiles (tests/test_image_files.py),
    whose whole read is the eager stack's."""
    x = np.load(tmp_path / "x.npy")
    mapped = load_samples([str(tmp_path / "x.npy")], None, lazy=True)
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, x)
    files = load_samples([str(folder)], lambda: ["N", 1, 8, 8], lazy=True)
    assert isinstance(files, ImageFiles) and files.shape == x.shape
    np.testing.assert_array_equal(np.asarray(files), x)
    np.testing.assert_array_equal(load_samples([str(folder)], lambda: ["N", 1, 8, 8]), x)


def test_the_model_is_asked_for_its_input_shape_once_per_folder(folder):
    """The images' target shape may take a compile (concepts) or a session (evaluate): it is asked once for all
    the images, not once for each (concepts over 1,024 photos spent 459 s, nearly all of it compiling)."""
    asked = []

    def shape():
        asked.append(1)
        return ["N", 1, 8, 8]
    for lazy in (True, False):
        asked.clear()
        assert np.asarray(load_samples([str(folder)], shape, lazy=lazy)).shape == (5, 1, 8, 8)
        assert asked == [1]
