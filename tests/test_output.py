"""onnxattr/output.py: atomic writes that leave files as a normal write would (mode), and clear errors."""

import os
import stat

import numpy as np
import pytest
from PIL import Image

from onnxattr.errors import OutputFileError
from onnxattr.output import array_rows, save_array, save_image, save_model, staged_folder
from tests.models import mlp

RGB = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def write_rows(path, parts, shape):
    with array_rows(str(path), shape, np.float32) as write:
        for part in parts:
            write(part)


@pytest.mark.parametrize("write,name", [
    (lambda p: save_model(mlp()[0], str(p)), "m.onnx"),
    (lambda p: save_array(np.ones(3), str(p)), "r.npy"),
    (lambda p: write_rows(p, [np.ones((2, 3))], (2, 3)), "rows.npy"),
    (lambda p: save_image(RGB, str(p)), "h.png"),
])
def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path, umask_022, write, name):
    """The temporary file is created 0600; the result must not be."""
    path = tmp_path / name
    write(path)
    assert mode(path) == 0o644
    os.chmod(path, 0o640)
    write(path)
    assert mode(path) == 0o640
    assert os.listdir(tmp_path) == [name]  # no temporary left behind


def test_image_round_trip(tmp_path):
    save_image(RGB, str(tmp_path / "h.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "h.png")), RGB)


def test_unknown_image_type_is_a_clear_error_and_writes_nothing(tmp_path):
    with pytest.raises(OutputFileError, match=r"h\.xyz: cannot write an image of this type.*\.png"):
        save_image(RGB, str(tmp_path / "h.xyz"))
    assert os.listdir(tmp_path) == []


def test_image_over_an_input_is_refused(tmp_path):
    src = tmp_path / "x.npy"
    np.save(src, np.zeros(2))
    before = src.read_bytes()
    with pytest.raises(OutputFileError, match="overwrite the input"):
        save_image(RGB, str(src), str(src))
    assert src.read_bytes() == before


def test_array_rows_writes_the_array_a_slice_at_a_time(tmp_path):
    """Rows appended in slices make the file np.save would (cast to the dtype given); the file appears only once
    every row is in, and an error in the block, too few or misfitting rows leave no file and no temporary."""
    a = np.random.default_rng(0).standard_normal((7, 2, 3))
    write_rows(tmp_path / "r.npy", [a[:3], a[3:6], a[6:]], a.shape)
    np.save(tmp_path / "want.npy", a.astype(np.float32))
    assert (tmp_path / "r.npy").read_bytes() == (tmp_path / "want.npy").read_bytes()
    with pytest.raises(RuntimeError, match="stopped"):
        with array_rows(str(tmp_path / "s.npy"), a.shape, np.float32) as write:
            write(a[:3])
            assert not (tmp_path / "s.npy").exists()
            raise RuntimeError("stopped")
    with pytest.raises(ValueError, match="3 of the array's 7 rows were written"):
        write_rows(tmp_path / "s.npy", [a[:3]], a.shape)
    with pytest.raises(ValueError, match="do not continue an array"):
        write_rows(tmp_path / "s.npy", [a[:3, :1]], a.shape)
    with pytest.raises(ValueError, match="do not continue an array"):
        write_rows(tmp_path / "s.npy", [a, a[:1]], a.shape)
    assert sorted(os.listdir(tmp_path)) == ["r.npy", "want.npy"]
    with pytest.raises(OutputFileError, match="the output would overwrite the input"):
        array_rows(str(tmp_path / "r.npy"), a.shape, np.float32, str(tmp_path / "r.npy")).__enter__()
    with pytest.raises(OutputFileError, match="does not exist"):
        array_rows(str(tmp_path / "no" / "r.npy"), a.shape, np.float32).__enter__()


def test_png_is_written_at_zlib_level_1(tmp_path, monkeypatch):
    """PNGs are written with compress_level=PNG_LEVEL (1: four times faster than Pillow's default on heatmaps, and
    smaller); other formats get no PNG option; the pixels come back as written."""
    from onnxattr import output

    levels = []
    save = Image.Image.save
    monkeypatch.setattr(Image.Image, "save", lambda self, fp, format=None, **kw: levels.append(
        (format, kw.get("compress_level"))) or save(self, fp, format=format, **kw))
    save_image(RGB, str(tmp_path / "h.png"))
    save_image(RGB, str(tmp_path / "h.bmp"))
    assert levels == [("PNG", output.PNG_LEVEL), ("BMP", None)] and output.PNG_LEVEL == 1
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "h.png")), RGB)


def test_read_files_finds_the_inputs_once_for_many_outputs(tmp_path, monkeypatch):
    """A heatmap per sample of a folder of N images was checked against every image: N x N real paths (2.3 s of
    a 256-image run). ReadFiles finds the inputs' real paths once; each output then costs one, and an output over
    an input (also through a link) is still refused, naming the input as given."""
    from onnxattr import output

    inputs = []
    for i in range(50):
        (tmp_path / f"{i}.png").write_bytes(b"x")
        inputs.append(str(tmp_path / f"{i}.png"))
    os.symlink(tmp_path / "7.png", tmp_path / "link.png")
    calls, real = [], os.path.realpath
    monkeypatch.setattr(output.os.path, "realpath", lambda p, **kw: calls.append(p) or real(p, **kw))
    read = output.ReadFiles(inputs, models=[])
    for i in range(50):
        read.refuse(str(tmp_path / f"out{i}.png"))
    assert len(calls) == 100
    for name in ("7.png", "link.png"):
        with pytest.raises(OutputFileError, match=f"would overwrite the input {tmp_path / '7.png'}"):
            output.refuse_overwriting_input(str(tmp_path / name), read)


def test_a_staged_folder_takes_its_files_only_when_all_are_written(tmp_path):
    """staged_folder: the files appear, by renames, once the block ends; an error leaves the folder as it was (a
    new one is not left behind), and no hidden folder stays either way."""
    maps = tmp_path / "maps"
    with pytest.raises(RuntimeError):
        with staged_folder(str(maps)) as stage:
            open(stage(str(maps / "a.png")), "w").write("new a")
            raise RuntimeError("the run failed")
    assert not maps.exists()
    maps.mkdir()
    (maps / "a.png").write_text("old a")
    (maps / "keep.txt").write_text("kept")
    with pytest.raises(RuntimeError):
        with staged_folder(str(maps)) as stage:
            open(stage(str(maps / "a.png")), "w").write("new a")
            assert sorted(os.listdir(maps))[-2:] == ["a.png", "keep.txt"] and (maps / "a.png").read_text() == "old a"
            raise RuntimeError("the run failed")
    assert sorted(os.listdir(maps)) == ["a.png", "keep.txt"] and (maps / "a.png").read_text() == "old a"
    with staged_folder(str(maps)) as stage:
        for name in ("a.png", "b.png"):
            open(stage(str(maps / name)), "w").write(f"new {name}")
        assert (maps / "a.png").read_text() == "old a" and not (maps / "b.png").exists()
    assert sorted(os.listdir(maps)) == ["a.png", "b.png", "keep.txt"]
    assert (maps / "a.png").read_text() == "new a.png" and (maps / "b.png").read_text() == "new b.png"
