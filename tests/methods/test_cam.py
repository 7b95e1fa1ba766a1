"""onnxattr/methods/cam.py: Grad-CAM in closed form from the layer's activation and gradient, the default
layer, the resizing, channels-last inputs, Guided Grad-CAM as the product, and the refusals (Captum's maps
on six PyTorch nets are in test_oracles, tests/oracles/make_torch.py)."""

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxattr
from onnxattr.errors import UsageError
from tests.lrp.nets import resnet_like
from tests.models import mlp

RNG = np.random.default_rng(3)


def analyze(method, model, x, **kw):
    return onnxattr.create_analyzer(method, model, **kw).analyze(x)


def bilinear_half_pixel(a: np.ndarray, size: int) -> np.ndarray:
    """[..., h, w] -> [..., size, size] by bilinear interpolation with half-pixel centres, edges clamped
    (torch's bilinear with align_corners=False), written out per axis."""
    for axis in (-2, -1):
        n = a.shape[axis]
        pos = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n - 1)
        w = pos - lo
        shape = [1] * a.ndim
        shape[axis] = size
        a = np.take(a, lo, axis) * (1 - w).reshape(shape) + np.take(a, hi, axis) * w.reshape(shape)
    return a


@pytest.mark.parametrize("relu", [True, False])
def test_grad_cam_closed_form(relu):
    """At layer r3 [N, 4, 4, 4]: relu(sum_c mean_hw(dy/dA_c) A_c), bilinear to 8x8, in both input channels.
    A and dy/dA come from onnxattr's input and gradient methods explaining r3 itself."""
    model = resnet_like(bias=True)
    x = RNG.standard_normal((3, 2, 8, 8)).astype(np.float32)
    a = analyze("input", model, x, input="r3")
    g = analyze("gradient", model, x, input="r3")
    cam = (g.mean(axis=(2, 3), keepdims=True) * a).sum(1)
    if relu:
        cam = np.maximum(cam, 0)
    want = np.broadcast_to(bilinear_half_pixel(cam, 8)[:, None], x.shape)
    got = analyze("grad_cam", model, x, layer="r3", relu=relu)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert (got < 0).any() != relu and np.abs(got).max() > 0


def test_the_default_layer_is_the_last_feature_map_and_nearest_repeats_it():
    """resnet_like's last map before the flatten is the AveragePool's p2 [N, 4, 2, 2]; nearest resizing to
    8x8 repeats each cell 4x4; inspect names the layer and marks the nodes before it."""
    model = resnet_like(bias=True)
    x = RNG.standard_normal((2, 2, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(analyze("grad_cam", model, x), analyze("grad_cam", model, x, layer="p2"))
    near = analyze("grad_cam", model, x, interpolation="nearest")
    cells = near[:, 0, ::4, ::4]
    np.testing.assert_array_equal(near[:, 0], np.repeat(np.repeat(cells, 4, 1), 4, 2))
    assert not np.array_equal(near, analyze("grad_cam", model, x))  # linear differs
    rows = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "grad_cam")}
    assert [n for n, r in rows.items() if r == "grad_cam layer"] == ["AveragePool_8"]
    assert rows["Conv_0"] == "none" and rows["MatMul_10"] == "gradient"


def test_a_channels_last_input_gets_the_map_in_its_layout():
    """The same net fed NHWC through a Transpose (as tf2onnx exports Keras models): the map is the NCHW map
    transposed."""
    model = resnet_like(bias=True)
    g = model.graph
    g.node.insert(0, helper.make_node("Transpose", ["x_nhwc"], ["x"], perm=[0, 3, 1, 2]))
    g.input[0].CopyFrom(helper.make_tensor_value_info("x_nhwc", onnx.TensorProto.FLOAT, ["N", 8, 8, 2]))
    x = RNG.standard_normal((2, 2, 8, 8)).astype(np.float32)
    want = analyze("grad_cam", resnet_like(bias=True), x, layer="r3")
    got = analyze("grad_cam", model, x.transpose(0, 2, 3, 1), layer="r3")
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), rtol=1e-6)


def test_guided_grad_cam_is_guided_backprop_times_the_cam():
    model = resnet_like(bias=True)
    x = RNG.standard_normal((2, 2, 8, 8)).astype(np.float32)
    want = analyze("guided_backprop", model, x) * analyze("grad_cam", model, x, layer="r2")
    got = analyze("guided_grad_cam", model, x, layer="r2")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7 * np.abs(want).max())
    rows = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "guided_grad_cam", layer="r2")}
    assert rows["Relu_1"] == "guided_backprop" and rows["Relu_4"] == "grad_cam layer"


@pytest.mark.parametrize("kw,words", [
    ({"layer": "nowhere"}, "layer 'nowhere' is not a tensor between input 'x' and output 'y'"),
    ({"layer": "h"}, "layer 'h' has rank 2"),
    ({"layer": "x"}, "layer 'x' is not a tensor between"),
    ({"relu": 3}, "parameter relu=3: must be true or false"),
    ({"interpolation": "cubic"}, "must be one of linear, nearest"),
])
def test_refusals_name_the_problem(kw, words):
    with pytest.raises(UsageError, match=words):
        onnxattr.compile(resnet_like(bias=True), "grad_cam", **kw)


def test_a_model_without_feature_maps_is_refused():
    model, _ = mlp(softmax=False)
    with pytest.raises(UsageError, match=r"no feature map \[N, C, spatial...\] of rank 2"):
        onnxattr.compile(model, "grad_cam")


def test_relu_parses_from_the_command_line(tmp_path):
    from onnxattr.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(resnet_like(bias=True), path)
    x = RNG.standard_normal((2, 2, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["explain", str(path), "--method", "grad_cam", "--set", "relu=false", "--data",
                 str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "r.npy"), analyze("grad_cam", path, x, relu=False))
    assert main(["compile", str(path), "--method", "grad_cam", "--set", "relu=maybe", "-o",
                 str(tmp_path / "c.onnx")]) == 2
