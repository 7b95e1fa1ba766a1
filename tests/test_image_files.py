"""onnxattr/image_files.py: image files as a batch read a slice at a time (read_images, ImageFiles), for the
Python API as for the command line (tests/test_cli_explain.py)."""

import numpy as np
import pytest
from PIL import Image

import onnxattr
from onnxattr.errors import DataError, UsageError
from onnxattr.image_files import ImageFiles, read_images
from onnxattr.pixels import PRESETS, load_image

DIGITS = "models/digits_cnn.onnx"


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(3)
    for name in ("b.png", "a.png", "c.jpg"):
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(tmp_path / name)
    return tmp_path


def test_read_images_is_a_batch_read_a_slice_at_a_time(photos):
    """A folder (its images by name) or files, one sample each, resized to the shape and preprocessed by a preset
    named or given; slices, chosen rows and the whole read are the eagerly stacked images'."""
    shape = ["N", 3, 8, 8]
    want = np.concatenate([load_image(str(photos / n), shape, PRESETS["torch"]) for n in ("a.png", "b.png", "c.jpg")])
    for images in (read_images(photos, shape, preprocess="torch"),
                   read_images([photos / "a.png", str(photos / "b.png"), photos / "c.jpg"], shape, PRESETS["torch"])):
        assert isinstance(images, ImageFiles) and images.shape == want.shape and images.ndim == 4 and len(images) == 3
        np.testing.assert_array_equal(images[1:], want[1:])
        np.testing.assert_array_equal(images[[2, 0, -1]], want[[2, 0, -1]])
        np.testing.assert_array_equal(np.asarray(images), want)
        assert images[2:2].shape == (0, 3, 8, 8)
        for bad in (0, [0.5], [[0]]):
            with pytest.raises(TypeError, match="reads a slice or a list of sample numbers"):
                images[bad]
        with pytest.raises(IndexError):
            images[[3]]
    with pytest.raises(UsageError, match="preprocess must be a Preprocess or one of none, torch"):
        read_images(photos, shape, preprocess="imagenet")
    (photos / "empty").mkdir()
    with pytest.raises(DataError, match="a folder without images"):
        read_images(photos / "empty", shape)


def test_unreadable_files_and_sizes_that_differ_fail_when_made(photos):
    """A file Pillow cannot read is named by its header, before any pixel is used; images of other sizes for an
    input of any size are refused (for a fixed size they are resized alike)."""
    (photos / "d.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="d.png: not a .npy file nor an image Pillow can read"):
        read_images(photos, ["N", 3, 8, 8])
    (photos / "d.png").unlink()
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(photos / "d.png")
    assert read_images(photos, ["N", 3, 8, 8]).shape == (4, 3, 8, 8)
    with pytest.raises(DataError, match=r"the images differ in size \(.*a.png: \[3, 12, 10\], .*d.png: \[3, 9, 9\]"):
        read_images(photos, ["N", 3, "H", "W"])


def test_an_analyzer_explains_a_folder_slice_by_slice(tmp_path):
    """The API's flow: read_images at the analyzer's input_shape, analyze_slices over it, gives analyze's map of the
    stacked images."""
    rng = np.random.default_rng(4)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (10, 10), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    analyzer = onnxattr.create_analyzer("lrp.epsilon", DIGITS)
    assert analyzer.input_shape == ["batch", 1, 8, 8]
    images = onnxattr.read_images(tmp_path, analyzer.input_shape)
    pieces = list(analyzer.analyze_slices(images, batch_size=2))
    assert [p.rows for p in pieces] == [slice(0, 2), slice(2, 4), slice(4, 5)]
    np.testing.assert_allclose(np.concatenate([p.relevance for p in pieces]), analyzer.analyze(np.asarray(images)),
                               rtol=1e-5, atol=1e-7)
