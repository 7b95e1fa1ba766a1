"""onnxattr/pixels.py: image files read per layout (8 and 16 bits, float, alpha, frames) and made the model's input,
against Keras' preprocess_input and torchvision's transforms (the oracles of tests/oracles/make_preprocess.py), and
the --preprocess, --mean, --std, --crop and --interpolation options of the commands that read images."""

import json
import os

import numpy as np
import onnx
import pytest
from onnx import helper
from PIL import Image

import onnxattr
from onnxattr import viz
from onnxattr.cli import main
from onnxattr.errors import UsageError
from onnxattr.pixels import IMAGENET_MEAN, IMAGENET_STD, PRESETS, load_image, parse_preprocess
from tests.models import single_io_model

ORACLE = os.path.join(os.path.dirname(__file__), "oracles", "data", "keras_preprocess.npz")


def test_load_image_follows_the_models_layout(tmp_path):
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3) * 3
    Image.fromarray(rgb).save(tmp_path / "i.png")
    chw = load_image(str(tmp_path / "i.png"), ["N", 3, 4, 6])
    np.testing.assert_array_equal(chw, rgb.transpose(2, 0, 1)[None] / np.float32(255))
    hwc = load_image(str(tmp_path / "i.png"), ["N", 4, 6, 3])
    np.testing.assert_array_equal(hwc, rgb[None] / np.float32(255))
    gray = load_image(str(tmp_path / "i.png"), ["N", 1, 8, 5])  # grey, resized to the model's 8x5
    assert gray.shape == (1, 1, 8, 5) and gray.dtype == np.float32 and 0 <= gray.min() <= gray.max() <= 1
    want = np.asarray(Image.fromarray(rgb).convert("L").resize((5, 8)), np.float32) / 255
    np.testing.assert_array_equal(gray[0, 0], want)


def test_16_bit_and_float_images_keep_their_values(tmp_path):
    """Pillow's 8-bit conversion clipped them: a 16-bit PNG read as all 1, a float TIFF in [0, 1] as all 0."""
    grey = np.linspace(0, 1, 48).reshape(6, 8)
    Image.fromarray((grey * 65535).astype(np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(grey.astype(np.float32), "F").save(tmp_path / "f.tif")
    np.testing.assert_allclose(load_image(str(tmp_path / "g16.png"), ["N", 1, 6, 8])[0, 0], grey, atol=2e-5)  # a step
    np.testing.assert_allclose(load_image(str(tmp_path / "f.tif"), ["N", 1, 6, 8])[0, 0], grey, atol=1e-7)
    rgb = load_image(str(tmp_path / "g16.png"), ["N", 6, 8, 3])  # grey repeated for an RGB model
    np.testing.assert_allclose(rgb[0], np.repeat(grey[..., None], 3, -1), atol=2e-5)


def test_what_an_image_loses_is_said(tmp_path):
    """An alpha channel and the frames after the first are left out with a warning naming the file; a plain
    RGB image, and an RGBA one whose pixels are all opaque, load silently."""
    import warnings

    from onnxattr.errors import OnnxAttrWarning

    pixels = (np.random.default_rng(0).random((8, 8, 4)) * 255).astype(np.uint8)
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    frames = [Image.fromarray(pixels[..., k]) for k in range(3)]
    frames[0].save(tmp_path / "b.gif", save_all=True, append_images=frames[1:])
    Image.fromarray(pixels[..., :3]).save(tmp_path / "c.png")
    opaque = pixels.copy()
    opaque[..., 3] = 255
    Image.fromarray(opaque, "RGBA").save(tmp_path / "d.png")
    with pytest.warns(OnnxAttrWarning, match=r"a\.png: read without its alpha channel"):
        got = load_image(str(tmp_path / "a.png"), ["N", 3, 8, 8])
    np.testing.assert_allclose(got[0], pixels[..., :3].transpose(2, 0, 1) / 255, atol=1e-6)
    with pytest.warns(OnnxAttrWarning, match=r"b\.gif: read without 2 frames after the first"):
        load_image(str(tmp_path / "b.gif"), ["N", 1, 8, 8])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(str(tmp_path / "c.png"), ["N", 3, 8, 8])
        load_image(str(tmp_path / "d.png"), ["N", 3, 8, 8])


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_presets_equal_keras_preprocess_input(tmp_path, mode, layout):
    """The PNG of the oracle's pixels, read for an NHWC or NCHW model, equals Keras' load_img, img_to_array and
    preprocess_input(mode). Keras rounds each step to float32 (the division, the mean, its subtraction), we compute
    in float64 and round once: the tolerance is two float32 steps at the largest value a step makes (255 for caffe,
    2 for tf, 1 / 0.224 for torch); the pixels as read ('none') are off by up to 150 and 2.6."""
    d = np.load(ORACLE)
    Image.fromarray(d["image"]).save(tmp_path / "i.png")
    want = d[f"{mode}|{layout}"]
    shape = ["N", 6, 9, 3] if layout == "channels_last" else ["N", 3, 6, 9]
    got = load_image(str(tmp_path / "i.png"), shape, PRESETS[mode])
    assert got.dtype == np.float32 and got.shape == want.shape
    largest = {"caffe": 255.0, "tf": 2.0, "torch": 1 / 0.224}[mode]
    np.testing.assert_allclose(got, want, rtol=0, atol=2 * np.spacing(np.float32(largest)))
    plain = load_image(str(tmp_path / "i.png"), shape)
    assert np.abs(plain - want).max() > 0.5


@pytest.mark.parametrize("image", ["landscape", "portrait", "square"])
def test_crop_equals_torchvision_resize_and_center_crop(tmp_path, image):
    """--crop f with --preprocess torch reads an image as torchvision's Resize(floor(16 / f)), CenterCrop(16),
    ToTensor and Normalize do (tests/oracles/make_preprocess.py torchvision): both resize with Pillow's bilinear
    filter to the same size and cut at the same offsets, so the pixels are the same; the tolerance is that of the
    float32 arithmetic (two steps at 1 / 0.224), as for the presets. Stretching instead gives another image."""
    d = np.load(os.path.join(os.path.dirname(ORACLE), "torchvision_crop.npz"))
    Image.fromarray(d[image]).save(tmp_path / "i.png")
    for f in json.loads(str(d["manifest"]))["fractions"]:
        got = load_image(str(tmp_path / "i.png"), ["N", 3, 16, 16], parse_preprocess("torch", crop=f))
        np.testing.assert_allclose(got[0], d[f"{image}|{f}"], rtol=0, atol=2 * np.spacing(np.float32(1 / 0.224)))
    stretched = load_image(str(tmp_path / "i.png"), ["N", 3, 16, 16], PRESETS["torch"])
    assert np.abs(stretched[0] - d[f"{image}|1.0"]).max() > 0.1


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
def test_interpolation_equals_keras_load_img(tmp_path, interpolation):
    """--interpolation I stretches an image as Keras' load_img(target_size, interpolation=I) does (a 23 x 37 image to
    16 x 16; both resize with Pillow, the oracle's 13.0 here too): the same 8-bit pixels. Without it the stretch is
    bicubic, Pillow's default, which differs from Keras' default nearest."""
    d = np.load(ORACLE)
    Image.fromarray(d["stretch_image"]).save(tmp_path / "s.png")
    got = load_image(str(tmp_path / "s.png"), ["N", 16, 16, 3], parse_preprocess(interpolation=interpolation))
    np.testing.assert_allclose(got[0] * 255, d[f"stretch|{interpolation}"], rtol=0, atol=1e-4)
    plain = load_image(str(tmp_path / "s.png"), ["N", 16, 16, 3])
    np.testing.assert_array_equal(plain, load_image(str(tmp_path / "s.png"), ["N", 16, 16, 3],
                                                    parse_preprocess(interpolation="bicubic")))
    assert np.abs(plain[0] * 255 - d["stretch|nearest"]).max() > 10


def test_interpolation_with_crop_replaces_its_bilinear_filter(tmp_path):
    pixels = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "i.png")
    got = load_image(str(tmp_path / "i.png"), ["N", 3, 16, 16], parse_preprocess(crop=1.0, interpolation="nearest"))
    want = np.asarray(Image.fromarray(pixels).resize((21, 16), Image.NEAREST).crop((2, 0, 18, 16)), np.float32) / 255
    np.testing.assert_allclose(got[0].transpose(1, 2, 0), want, rtol=1e-6)
    bilinear = load_image(str(tmp_path / "i.png"), ["N", 3, 16, 16], parse_preprocess(crop=1.0))
    assert np.abs(bilinear - got).max() > 0.05


def test_crop_covers_a_model_of_another_aspect(tmp_path):
    """A 20 x 10 model and a square image: the image is resized to cover 20 x 10 (20 x 20) and its middle
    rows kept; a model without a fixed size cannot be cropped to (usage error)."""
    pixels = np.repeat(np.arange(40, dtype=np.uint8)[:, None] * 6, 40, axis=1)  # each row one grey level
    Image.fromarray(pixels).save(tmp_path / "rows.png")
    got = load_image(str(tmp_path / "rows.png"), ["N", 1, 20, 10], parse_preprocess(crop=1.0))
    want = np.asarray(Image.fromarray(pixels).resize((20, 20), Image.BILINEAR).crop((5, 0, 15, 20)), np.float32) / 255
    np.testing.assert_allclose(got[0, 0], want, rtol=1e-6)
    with pytest.raises(UsageError, match="has no fixed height and width"):
        load_image(str(tmp_path / "rows.png"), ["N", 1, "H", "W"], parse_preprocess(crop=0.875))


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
@pytest.mark.parametrize("shape", [["N", 6, 9, 3], ["N", 3, 6, 9]])
def test_undo_gives_back_the_pixels(tmp_path, mode, shape):
    """undo inverts apply (what --overlay draws over): the image as read, to float32 rounding."""
    Image.fromarray(np.load(ORACLE)["image"]).save(tmp_path / "i.png")
    plain = load_image(str(tmp_path / "i.png"), shape)
    x = load_image(str(tmp_path / "i.png"), shape, PRESETS[mode])
    np.testing.assert_allclose(PRESETS[mode].undo(x), plain, rtol=0, atol=1e-6)


def test_parse_preprocess():
    assert parse_preprocess() is None and parse_preprocess("none") is None
    assert parse_preprocess(None, "0", "1") is None  # leaves the pixels as they are
    torch = parse_preprocess("torch")
    assert torch.mean == IMAGENET_MEAN and torch.std == IMAGENET_STD and not torch.bgr
    custom = parse_preprocess("torch", mean="0.5", std="0.25,0.5,1")
    assert custom.mean == (0.5,) and custom.std == (0.25, 0.5, 1.0) and custom.name == "torch (with --mean/--std)"
    pixels = np.random.default_rng(0).random((2, 3, 3))
    np.testing.assert_array_equal(custom.apply(pixels), ((pixels - 0.5) / [0.25, 0.5, 1.0]).astype(np.float32))
    tf = parse_preprocess(None, mean="0.5", std="0.5")
    np.testing.assert_allclose(tf.apply(pixels), PRESETS["tf"].apply(pixels), rtol=0, atol=0)
    for args, message in [(("tff",), "not one of none, torch, tf, caffe"), ((None, "a,b"), "--mean expects numbers"),
                          ((None, None, "0.2,0"), "--std expects numbers > 0"),
                          ((None, "nan"), "--mean expects finite numbers"),
                          ((None, None, None, 0.0), r"--crop expects a fraction in \(0, 1\]"),
                          ((None, None, None, 1.5), "--crop expects a fraction"),
                          ((None, None, None, None, "cubic"), "--interpolation cubic: not one of nearest, bilinear")]:
        with pytest.raises(UsageError, match=message):
            parse_preprocess(*args)


def test_channel_counts_are_checked(tmp_path):
    Image.fromarray(np.full((4, 4), 128, np.uint8)).save(tmp_path / "g.png")
    with pytest.raises(UsageError, match="torch preprocessing has 3 mean values, and the model takes 1 channel: "
                                         "give one value"):
        load_image(str(tmp_path / "g.png"), ["N", 1, 4, 4], PRESETS["torch"])
    with pytest.raises(UsageError, match="reverses RGB to BGR, and the model takes 1 channel, not 3"):
        load_image(str(tmp_path / "g.png"), ["N", 1, 4, 4], parse_preprocess("caffe", mean="100"))
    with pytest.raises(UsageError, match="2 std values, and the model takes 3 channels: give one value, or 3"):
        load_image(str(tmp_path / "g.png"), ["N", 3, 4, 4], parse_preprocess(None, std="1,2"))
    grey = load_image(str(tmp_path / "g.png"), ["N", 3, 4, 4], PRESETS["caffe"])  # grey repeated to RGB first
    np.testing.assert_allclose(grey[0, :, 0, 0], 128 - np.array([103.939, 116.779, 123.68]), rtol=1e-6)


def _rgb_model():
    """x [N, 3, 6, 9] -> Conv 3x3 (3 -> 2) -> Relu -> GlobalAveragePool -> Flatten -> y [N, 2]."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Flatten", ["p"], ["y"])]
    inits = {"W": rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "B": np.array([0.1, -0.2], np.float32)}
    return single_io_model(nodes, inits, ["N", 3, 6, 9], ["N", 2])


def test_commands_preprocess_images(tmp_path, capsys):
    """explain, compare, evaluate and concepts give an image the model's preprocessing: explain's map equals the
    analyzer's on the preprocessed array; a .npy batch with --preprocess is a usage error (exit 2), as is a count
    of values that fits no channel count."""
    model = tmp_path / "rgb.onnx"
    onnx.save(_rgb_model(), model)
    pixels = np.random.default_rng(2).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "i.png")
    x = ((pixels / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32).transpose(2, 0, 1)[None]
    np.save(tmp_path / "x.npy", x)
    base = ["explain", str(model), "-m", "gradient", "--neuron", "index", "--target", "0"]
    assert main(base + ["--data", str(tmp_path / "i.png"), "--preprocess", "torch", "-o", str(tmp_path / "r.npy")]) == 0
    want = onnxattr.create_analyzer("gradient", str(model), neuron_selection_mode="index").analyze(x, 0)
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), want, rtol=1e-6, atol=1e-7)
    assert main(base + ["--data", str(tmp_path / "i.png"), "-o", str(tmp_path / "plain.npy")]) == 0
    assert not np.allclose(np.load(tmp_path / "plain.npy"), want, rtol=1e-3)
    assert main(base + ["--data", str(tmp_path / "x.npy"), "--preprocess", "torch", "-o", str(tmp_path / "n.npy")]) == 2
    assert "apply to image files; a .npy batch is the model's input as it is" in capsys.readouterr().err
    assert not (tmp_path / "n.npy").exists()
    # --overlay draws over the image's pixels, not over the normalized input
    assert main(base + ["--data", str(tmp_path / "i.png"), "--preprocess", "torch", "--mean", "0.1,0.5,0.9",
                        "--std", "0.1,0.3,1", "-o", str(tmp_path / "c.npy"), "--heatmap", str(tmp_path / "h.png"),
                        "--overlay"]) == 0
    plain = load_image(str(tmp_path / "i.png"), ["N", 3, 6, 9])
    drawn = np.asarray(Image.open(tmp_path / "h.png").convert("RGB"))
    r = np.load(tmp_path / "c.npy")
    np.testing.assert_array_equal(drawn, viz.grid(r, "heatmap", images=plain))
    normalized = load_image(str(tmp_path / "i.png"), ["N", 3, 6, 9],
                            parse_preprocess("torch", "0.1,0.5,0.9", "0.1,0.3,1"))
    assert not np.array_equal(drawn, viz.grid(r, "heatmap", images=normalized))
    assert main(base + ["--data", str(tmp_path / "i.png"), "--mean", "0.1,0.2", "-o", str(tmp_path / "m.npy")]) == 2
    assert "2 mean values, and the model takes 3 channels" in capsys.readouterr().err
    # --interpolation: a larger image stretched with Keras' default filter
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (13, 20, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    shown = ["explain", str(model), "-m", "input", "--data", str(tmp_path / "big.png")]  # the map is the input
    assert main(shown + ["--interpolation", "nearest", "-o", str(tmp_path / "near.npy")]) == 0
    assert main(shown + ["-o", str(tmp_path / "cubic.npy")]) == 0
    near = load_image(str(tmp_path / "big.png"), ["N", 3, 6, 9], parse_preprocess(interpolation="nearest"))
    np.testing.assert_array_equal(np.load(tmp_path / "near.npy"), near)
    assert np.abs(np.load(tmp_path / "cubic.npy") - near).max() > 0.05
    assert main(base + ["--data", str(tmp_path / "x.npy"), "--interpolation", "nearest"]) == 2
    assert "--interpolation apply to image files" in capsys.readouterr().err
    for command in (base, ["compare", str(model), str(model), "-m", "gradient"], ["evaluate", str(model), "-m",
                    "gradient"], ["concepts", str(model), "-m", "lrp.epsilon", "--layer", "r"]):
        assert main(command + ["--data", str(tmp_path / "i.png"), "--std", "-1"]) == 2  # before any model is read
        assert "--std expects numbers > 0" in capsys.readouterr().err

    # the image through torch's preprocessing and its array as .npy
    sources = (("png", ["--data", str(tmp_path / "i.png"), "--preprocess", "torch"]),
               ("npy", ["--data", str(tmp_path / "x.npy")]))
    # compare: the image through torch preprocessing in both models is the array's comparison
    out = {}
    for name, data in sources:
        assert main(["compare", str(model), str(model), "-m", "gradient", *data,
                     "--json", str(tmp_path / f"{name}.json")]) == 0
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert out["png"] == out["npy"]

    # evaluate: the curves of the preprocessed image are those of the array
    for name, data in sources:
        assert main(["evaluate", str(model), "-m", "gradient", *data, "--steps", "3", "--region", "3,3",
                     "-o", str(tmp_path / f"{name}.npz")]) == 0
    curves = [np.load(tmp_path / f"{name}.npz") for name in ("png", "npy")]
    assert sorted(curves[0].files) == sorted(curves[1].files) and curves[0].files
    for key in curves[0].files:
        np.testing.assert_array_equal(curves[0][key], curves[1][key])

    # concepts: the channels' relevance over the preprocessed image is that over the array
    for name, data in sources:
        assert main(["concepts", str(model), "-m", "lrp.epsilon", "--layer", "r", *data,
                     "-o", str(tmp_path / f"c_{name}.npz")]) == 0
    found = [np.load(tmp_path / f"c_{name}.npz") for name in ("png", "npy")]
    assert "relevance" in found[1].files and set(found[0].files) == set(found[1].files) | {"files"}  # images: names
    for key in found[1].files:
        np.testing.assert_array_equal(found[0][key], found[1][key])
