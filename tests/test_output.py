"""onnxattr/output.py: atomic writes that leave files as a normal write would (mode), and clear errors."""

import os
import stat

import numpy as np
import pytest
from PIL import Image

from onnxattr.errors import OutputFileError
from onnxattr.output import save_array, save_image, save_model
from tests.models import mlp

RGB = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("write,name", [
    (lambda p: save_model(mlp()[0], str(p)), "m.onnx"),
    (lambda p: save_array(np.ones(3), str(p)), "r.npy"),
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
