"""onnxattr/load.py: safe loading and clear errors for bad files."""

import os

import numpy as np
import onnx
import pytest

from onnxattr.errors import InvalidModelError, ModelFileError
from onnxattr import load
from onnxattr.load import check_input_model, load_model, model_files
from tests.models import mlp


def test_missing_folder_and_garbage(tmp_path):
    with pytest.raises(ModelFileError, match="no such file"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelFileError, match="is a folder"):
        load_model(tmp_path)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe not a protobuf \x00\x01" * 10)
    with pytest.raises(ModelFileError, match="not an ONNX model"):
        load_model(junk)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelFileError, match="not an ONNX model"):
        load_model(empty)


def test_truncated_file(tmp_path):
    m, _ = mlp()
    data = m.SerializeToString()
    p = tmp_path / "cut.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError):
        load_model(p)


def test_external_data_inside_folder_loads(tmp_path):
    m, (w1, _, _) = mlp()
    onnx.save_model(m, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    loaded = load_model(tmp_path / "m.onnx")
    got = {t.name: onnx.numpy_helper.to_array(t) for t in loaded.graph.initializer}
    np.testing.assert_array_equal(got["W1"], w1)


@pytest.mark.parametrize("location", ["../secret.data", "/etc/passwd"])
def test_external_data_escaping_is_refused(tmp_path, location):
    m, _ = mlp()
    (tmp_path / "sub").mkdir()
    onnx.save_model(m, tmp_path / "sub" / "m.onnx", save_as_external_data=True, location="m.data",
                    size_threshold=0)
    loaded = onnx.load(tmp_path / "sub" / "m.onnx", load_external_data=False)
    for t in loaded.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    with open(tmp_path / "sub" / "evil.onnx", "wb") as f:
        f.write(loaded.SerializeToString())
    with pytest.raises(ModelFileError, match="outside the model's folder"):
        load_model(tmp_path / "sub" / "evil.onnx")


def test_symlink_out_of_folder_is_refused(tmp_path):
    m, _ = mlp()
    (tmp_path / "sub").mkdir()
    onnx.save_model(m, tmp_path / "m.onnx", save_as_external_data=True, location="m.data", size_threshold=0)
    os.symlink(tmp_path / "m.data", tmp_path / "sub" / "m.data")
    (tmp_path / "sub" / "m.onnx").write_bytes((tmp_path / "m.onnx").read_bytes())
    with pytest.raises(ModelFileError, match="symbolic link"):
        load_model(tmp_path / "sub" / "m.onnx")


def test_a_linked_model_finds_its_external_data(tmp_path):
    """A symbolic link to a model with external data loads its data from beside the linked file; a link
    whose own folder holds the data (the model file linked in from elsewhere) loads it from there."""
    m, (w1, _, _) = mlp()
    (tmp_path / "store").mkdir()
    (tmp_path / "work").mkdir()
    onnx.save_model(m, tmp_path / "store" / "m.onnx", save_as_external_data=True, location="m.data",
                    size_threshold=0)
    os.symlink(tmp_path / "store" / "m.onnx", tmp_path / "work" / "link.onnx")
    loaded = load_model(tmp_path / "work" / "link.onnx")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(next(t for t in loaded.graph.initializer
                                                                  if t.name == "W1")), w1)
    (tmp_path / "other").mkdir()
    os.replace(tmp_path / "store" / "m.data", tmp_path / "other" / "m.data")
    os.symlink(tmp_path / "store" / "m.onnx", tmp_path / "other" / "link.onnx")
    assert len(load_model(tmp_path / "other" / "link.onnx").graph.initializer) == 3


def test_checker_failure_is_invalid_model():
    m, _ = mlp()
    m.graph.node[0].input[1] = "does_not_exist"
    with pytest.raises(InvalidModelError, match="onnx.checker"):
        check_input_model(m, "m.onnx")


@pytest.mark.parametrize("token,field", [
    (b"W1", "graph.node.input"),                  # a repeated string field (first: nodes come first)
    (b"labels", "graph.initializer.name"),        # a string inside a repeated message
    (b"mlp", "graph.name"),                       # a singular string
    (b"axis", "graph.node.attribute.name"),       # two messages deep
])
def test_non_utf8_text_is_found_wherever_it_is(tmp_path, token, field):
    """One byte of one text is damaged in the file; the error names the field path."""
    m, _ = mlp()
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(2, np.float32), "labels"))
    data = m.SerializeToString()
    pos = data.index(token)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[:pos] + b"\xbf" + data[pos + 1:])
    with pytest.raises(ModelFileError, match=f"field {field} is not UTF-8"):
        load_model(bad)


def test_model_files_parses_each_version_of_a_model_once(tmp_path, monkeypatch):
    """A command checks each output against the model's files: one parse per version of the file."""
    m, _ = mlp()
    path = tmp_path / "m.onnx"
    onnx.save(m, path, save_as_external_data=True, location="m.data", size_threshold=0)
    parses = []
    real_load = onnx.load
    monkeypatch.setattr(load.onnx, "load", lambda *a, **k: parses.append(a) or real_load(*a, **k))
    expected = [os.path.realpath(path), os.path.realpath(tmp_path / "m.data")]
    assert model_files(path) == expected and model_files(str(path)) == expected and len(parses) == 1
    onnx.save(mlp()[0], path)  # a new version, weights inside
    os.utime(path, ns=(1, 1))
    assert model_files(path) == [os.path.realpath(path)] and len(parses) == 2
    assert model_files(tmp_path / "none.onnx") == [] and model_files(tmp_path) == []


def test_model_files_of_one_link_name_in_two_folders(tmp_path, monkeypatch):
    """The same relative link name in two folders, each with the data file beside it: after chdir the
    second folder's data file, not the cached first one."""
    m, _ = mlp()
    (tmp_path / "real").mkdir()
    onnx.save(m, tmp_path / "real" / "m.onnx", save_as_external_data=True, location="w.bin", size_threshold=0)
    for folder in ("A", "B"):
        (tmp_path / folder).mkdir()
        os.symlink(tmp_path / "real" / "m.onnx", tmp_path / folder / "m.onnx")
        (tmp_path / folder / "w.bin").write_bytes((tmp_path / "real" / "w.bin").read_bytes())
    (tmp_path / "real" / "w.bin").unlink()  # data beside each link only
    for folder in ("A", "B"):
        monkeypatch.chdir(tmp_path / folder)
        assert model_files("m.onnx")[1] == os.path.realpath(tmp_path / folder / "w.bin")
