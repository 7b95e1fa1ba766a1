"""onnxattr/methods/cam.py: Grad-CAM in closed form from the layer's activation and gradient, the default
layer, the resizing, channels-last inputs, Guided Grad-CAM as the product, and the refusals (Captum's maps
on six PyTorch nets are in test_oracles, tests/oracles/make_torch.py)."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

import onnxattr
from onnxattr.errors import UsageError
from tests.lrp.nets import resnet_like
from tests.models import mlp, single_io_model

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


def cam_of(a, g, x, relu=True):
    """Grad-CAM by hand from a layer's activation and gradient [N, C, h, w]: relu(sum_c mean_hw(dy/dA_c) A_c),
    bilinear to x's size, the same in every channel of x."""
    cam = (g.mean(axis=(2, 3), keepdims=True) * a).sum(1)
    if relu:
        cam = np.maximum(cam, 0)
    return np.broadcast_to(bilinear_half_pixel(cam, x.shape[-1])[:, None], x.shape)


def cam_at(model, x, tensor, channels_last=False, relu=True):
    """cam_of the tensor's activation and gradient, from onnxattr's input and gradient methods explaining it
    (``channels_last``: it is [N, h, w, C])."""
    a, g = (analyze(method, model, x, input=tensor) for method in ("input", "gradient"))
    if channels_last:
        a, g = (t.transpose(0, 3, 1, 2) for t in (a, g))
    return cam_of(a, g, x, relu)


@pytest.mark.parametrize("relu", [True, False])
def test_grad_cam_closed_form(relu):
    """At layer r3 [N, 4, 4, 4]: relu(sum_c mean_hw(dy/dA_c) A_c), bilinear to 8x8, in both input channels.
    A and dy/dA come from onnxattr's input and gradient methods explaining r3 itself."""
    model = resnet_like(bias=True)
    x = RNG.standard_normal((3, 2, 8, 8)).astype(np.float32)
    want = cam_at(model, x, "r3", relu=relu)
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


def test_a_channels_last_input_scaled_before_its_transpose():
    """x [N, 8, 8, 2] * 0.5, then the Transpose to channels first: the layout is followed along the path, not
    read off x's first consumer (before: the cam was resized to (W, C), 150% off)."""
    model = resnet_like(bias=True)
    g = model.graph
    g.node.insert(0, helper.make_node("Transpose", ["x_half"], ["x"], perm=[0, 3, 1, 2]))
    g.node.insert(0, helper.make_node("Mul", ["x_nhwc", "half"], ["x_half"]))
    g.initializer.append(onnx.numpy_helper.from_array(np.array(0.5, np.float32), "half"))
    g.input[0].CopyFrom(helper.make_tensor_value_info("x_nhwc", onnx.TensorProto.FLOAT, ["N", 8, 8, 2]))
    x = RNG.standard_normal((2, 2, 8, 8)).astype(np.float32)
    want = analyze("grad_cam", resnet_like(bias=True), 0.5 * x, layer="r3")
    got = analyze("grad_cam", model, x.transpose(0, 2, 3, 1), layer="r3")
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-7)


def _sequence_net(dtype=np.float32, conv=True):
    """x [N, C=4, L=6] -> Transpose, a per-position MatMul, Transpose back -> Conv1d k3 pad 1 (or, without
    ``conv``, the per-channel scale of a BatchNorm-like Mul: onnxruntime has no float64 Conv) -> Relu r ->
    ReduceMean over L -> MatMul -> y [N, 3]. The two transposes of a rank 3 tensor are each other's inverse."""
    rng = np.random.default_rng(12)
    inits = {"M": rng.standard_normal((4, 4)), "K": rng.standard_normal((5, 4, 3)),
             "W": rng.standard_normal((5 if conv else 4, 3)), "S": rng.standard_normal((4, 1)),
             "axis": np.array([2], np.int64)}
    inits = {k: v.astype(dtype) if v.dtype.kind == "f" else v for k, v in inits.items()}
    mix = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]), helper.make_node("MatMul", ["xt", "M"], ["m"]),
           helper.make_node("Transpose", ["m"], ["h"], perm=[0, 2, 1])]
    layer = helper.make_node("Conv", ["h", "K"], ["c"], pads=[1, 1]) if conv else \
        helper.make_node("Mul", ["h", "S"], ["c"])
    nodes = mix + [layer, helper.make_node("Relu", ["c"], ["r"]),
                   helper.make_node("ReduceMean", ["r", "axis"], ["p"], keepdims=0),
                   helper.make_node("MatMul", ["p", "W"], ["y"])]
    model = single_io_model(nodes, inits, ["N", 4, 6], ["N", 3], opset=18)
    if dtype == np.float64:
        for vi in list(model.graph.input) + list(model.graph.output):
            vi.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    return model


def test_a_rank_3_input_read_through_two_transposes_stays_channels_first():
    """[0, 2, 1] is its own inverse: x goes channels last and back before the Conv1d. The default layer is
    the Relu after it, and the cam (length 6, as the input) is the same for each of x's 4 channels and
    varies along L (before: x was taken as channels last and the map was constant along L)."""
    x = RNG.standard_normal((2, 4, 6)).astype(np.float32)
    model = _sequence_net()
    a, g = analyze("input", model, x, input="r"), analyze("gradient", model, x, input="r")
    cam = np.maximum((g.mean(axis=2, keepdims=True) * a).sum(1), 0)
    got = analyze("grad_cam", model, x)
    np.testing.assert_allclose(got, np.broadcast_to(cam[:, None], x.shape), rtol=1e-5, atol=1e-6 * np.abs(cam).max())
    assert np.abs(np.diff(got, axis=2)).max() > 0


def test_a_float64_model_gets_its_cam_resized_in_float32():
    """onnxruntime's CPU Resize has no double kernel: the cam is resized in float32 (the map is float32)."""
    x = RNG.standard_normal((2, 4, 6))
    got = analyze("grad_cam", _sequence_net(np.float64, conv=False), x, layer="r")
    want = analyze("grad_cam", _sequence_net(conv=False), x.astype(np.float32), layer="r")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_a_float16_layer_behind_a_cast_of_a_float32_input():
    """A float32 input cast to float16 at the start (onnxconverter-common's keep_io_types): the cam, computed in
    the layer's float16, takes the input's float32 before the map is shaped like x (it kept float16, and onnx's
    checker refused the compiled model as an internal error). The map equals the float32 model's within
    float16's rounding."""
    from tests.test_dtypes import as_type

    model = resnet_like(bias=True)
    half = as_type(model, "float16")
    x_name = half.graph.input[0].name
    half.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for node in half.graph.node:
        node.input[:] = [x_name + "_half" if i == x_name else i for i in node.input]
    half.graph.node.insert(0, helper.make_node("Cast", [x_name], [x_name + "_half"], to=onnx.TensorProto.FLOAT16))
    x = RNG.standard_normal((2, 2, 8, 8)).astype(np.float32)
    want = analyze("grad_cam", model, x, layer="r3")
    got = analyze("grad_cam", half, x, layer="r3")
    assert got.dtype == np.float32 and np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * np.abs(want).max())


def test_a_layer_of_another_rank_is_refused():
    with pytest.raises(UsageError, match="layer 'p' has rank 2; Grad-CAM needs a feature map"):
        onnxattr.compile(_sequence_net(), "grad_cam", layer="p")
    model = single_io_model([helper.make_node("Reshape", ["x", "s"], ["img"]),
                             helper.make_node("Conv", ["img", "K"], ["r"]),
                             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])],
                            {"s": np.array([0, 1, 4, 4], np.int64), "K": np.ones((2, 1, 3, 3), np.float32),
                             "W": np.ones((8, 3), np.float32)}, ["N", 16], ["N", 3])
    with pytest.raises(UsageError, match="layer 'r' has rank 4 and input 'x' rank 2"):
        onnxattr.compile(model, "grad_cam", layer="r")


def test_a_pool_to_1x1_of_symbolic_size_is_not_the_default_layer():
    """A dynamic H/W export pooling its last map with AveragePool(8) on 8x8: the pool's output has symbolic
    spatial dims, but its Flatten feeds a MatMul whose weight has C rows, so it is 1x1: the default is the
    map before it (before: the pool's output, a flat cam)."""
    rng = np.random.default_rng(13)
    nodes = [helper.make_node("Conv", ["x", "K"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[8, 8]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])]
    model = single_io_model(nodes, {"K": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
                                    "W": rng.standard_normal((4, 3)).astype(np.float32)}, ["N", 2, "H", "W"], ["N", 3])
    rows = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "grad_cam")}
    assert [n for n, r in rows.items() if r == "grad_cam layer"] == ["Relu_1"]
    x = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    assert np.abs(np.diff(analyze("grad_cam", model, x), axis=3)).max() > 0


def test_a_block_computed_channels_last_is_not_the_default_map():
    """Conv, then a Swin-style block on [N, H, W, C] (Transpose to channels last, a per-position MatMul, Relu),
    then back to channels first and a global pool: the last channels-first map is the Transpose back, not
    the channels-last Relu (before: the Relu's [N, H, W, C] was read as [N, C, H, W], 105% off Captum)."""
    rng = np.random.default_rng(16)
    nodes = [helper.make_node("Conv", ["x", "K"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["cl"], perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["cl", "M"], ["m"]), helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("Transpose", ["r"], ["cf"], perm=[0, 3, 1, 2]),
             helper.make_node("GlobalAveragePool", ["cf"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "W"], ["y"])]
    model = single_io_model(nodes, {"K": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
                                    "M": rng.standard_normal((4, 4)).astype(np.float32),
                                    "W": rng.standard_normal((4, 3)).astype(np.float32)}, ["N", 2, 6, 6], ["N", 3])
    rows = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "grad_cam")}
    assert [n for n, r in rows.items() if r == "grad_cam layer"] == ["Transpose_4"]
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(analyze("grad_cam", model, x), analyze("grad_cam", model, x, layer="cf"))


def swin_like(attention: bool):
    """x [N, 3, 8, 8] -> a 2x2/2 patch conv [N, 6, 4, 4] -> channels last [N, 4, 4, 6] (a timm Swin's stages) ->
    ``attention``: the 16 tokens attend to each other and go back to [N, 4, 4, 6] beside a residual; else 2x2
    windows (a Reshape to rank 6, a Transpose, a Reshape back, which lose the layout) and a per-position MatMul ->
    LayerNorm over C ("final_norm") -> ReduceMean over axes 1, 2 (the head's global pool) -> y [N, 3]."""
    rng = np.random.default_rng(21)
    n = helper.make_node
    w = {"Wp": rng.standard_normal((6, 3, 2, 2)).astype(np.float32) * 0.5, "g": np.ones(6, np.float32),
         "beta": np.zeros(6, np.float32), "M": rng.standard_normal((6, 6)).astype(np.float32) * 0.5,
         "Wh": rng.standard_normal((6, 3)).astype(np.float32), "grid": np.array([0, 4, 4, 6], np.int64)}
    nodes = [n("Conv", ["x", "Wp"], ["e"], strides=[2, 2]), n("Transpose", ["e"], ["el"], perm=[0, 2, 3, 1])]
    if attention:
        w["tokens"] = np.array([0, 16, 6], np.int64)
        nodes += [n("Reshape", ["el", "tokens"], ["t"]), n("LayerNormalization", ["t", "g", "beta"], ["n1"], axis=-1),
                  n("MatMul", ["n1", "M"], ["q"]), n("Transpose", ["n1"], ["kt"], perm=[0, 2, 1]),
                  n("MatMul", ["q", "kt"], ["s"]), n("Softmax", ["s"], ["a"], axis=-1),
                  n("MatMul", ["a", "n1"], ["o"]), n("Reshape", ["o", "grid"], ["ob"]), n("Add", ["el", "ob"], ["r"])]
    else:
        w["windows"] = np.array([0, 2, 2, 2, 2, 6], np.int64)
        nodes += [n("Reshape", ["el", "windows"], ["w6"]), n("Transpose", ["w6"], ["wt"], perm=[0, 1, 3, 2, 4, 5]),
                  n("Reshape", ["wt", "grid"], ["wb"]), n("MatMul", ["wb", "M"], ["r"])]
    nodes += [n("LayerNormalization", ["r", "g", "beta"], ["ln"], axis=-1, name="final_norm"),
              n("ReduceMean", ["ln"], ["h"], axes=[1, 2], keepdims=0), n("MatMul", ["h", "Wh"], ["y"])]
    return single_io_model(nodes, w, ["N", 3, 8, 8], ["N", 3])


@pytest.mark.parametrize("attention", [False, True])
def test_a_channels_last_map_pooled_over_its_spatial_axes_is_the_default(attention):
    """A timm Swin keeps its stages channels last, [N, h, w, C], and its head averages over axes 1 and 2: what that
    mean reads is a channels-last map, whose layout the window reshapes lost on the way. It is the default layer,
    read as [N, C, h, w] (before: the TorchScript export took the patch conv's output, the dynamo export a token map
    of the first stage)."""
    model = swin_like(attention)
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    rows = {name: (rule, why) for name, _, rule, why in onnxattr.api.inspect(model, "grad_cam")}
    assert [n for n, (r, _) in rows.items() if r == "grad_cam layer"] == ["final_norm"]
    assert rows["final_norm"][1] == "its output is the feature map, channels last"
    want = cam_at(model, x, "ln", channels_last=True)
    assert np.abs(want).max() > 0 and (want == 0).any()
    got = analyze("grad_cam", model, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    np.testing.assert_array_equal(got, analyze("grad_cam", model, x, layer="ln"))


def test_a_space_to_depth_stem_written_as_reshapes_keeps_the_maps_after_it():
    """A TResNet's stem: SpaceToDepth(4) as Reshape to rank 6 (a -1 batch: shape inference names it unk__),
    Transpose, Reshape, so no convolution reads a known layout. The convolutions after it still write channels
    first, and x is channels first (no Transpose reads it): the last Relu is the default layer, and naming it is
    no longer refused for its made-up first axis (before: "no feature map", and "has unk__1 on its first axis")."""
    rng = np.random.default_rng(22)
    n = helper.make_node
    w = {"W1": rng.standard_normal((8, 48, 1, 1)).astype(np.float32), "W2": rng.standard_normal((8, 8, 1, 1)).astype(
        np.float32), "G": rng.standard_normal((8, 3)).astype(np.float32),
         "s6": np.array([-1, 3, 2, 4, 2, 4], np.int64), "s4": np.array([-1, 48, 2, 2], np.int64)}
    nodes = [n("Reshape", ["x", "s6"], ["r6"]), n("Transpose", ["r6"], ["t6"], perm=[0, 3, 5, 1, 2, 4]),
             n("Reshape", ["t6", "s4"], ["s2d"]), n("Conv", ["s2d", "W1"], ["c1"]), n("Relu", ["c1"], ["a1"]),
             n("Conv", ["a1", "W2"], ["c2"]), n("Relu", ["c2"], ["a2"], name="last_map"),
             n("GlobalAveragePool", ["a2"], ["p"]), n("Flatten", ["p"], ["f"]), n("MatMul", ["f", "G"], ["y"])]
    model = single_io_model(nodes, w, ["N", 3, 8, 8], ["N", 3])
    rows = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "grad_cam")}
    assert [name for name, rule in rows.items() if rule == "grad_cam layer"] == ["last_map"]
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = cam_at(model, x, "a2")
    assert np.abs(want).max() > 0
    got = analyze("grad_cam", model, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    np.testing.assert_array_equal(got, analyze("grad_cam", model, x, layer="a2"))


def test_the_default_is_a_map_every_path_passes_through():
    """An Inception block whose branches collapse the map to 1x1 (Inception-v3 at 96 px): the last map of more than
    1x1 is one branch's, b1, which the other branch (a MaxPool of A) goes round; the default is A, the block's input,
    which every path from x to y passes through (before: b1, whose cam misses the other branch)."""
    rng = np.random.default_rng(23)
    n = helper.make_node
    w = {"W0": rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "W1": rng.standard_normal((4, 4, 3, 3)).astype(
        np.float32), "W2": rng.standard_normal((4, 4, 4, 4)).astype(np.float32),
         "G": rng.standard_normal((8, 5)).astype(np.float32)}
    nodes = [n("Conv", ["x", "W0"], ["c0"]), n("Relu", ["c0"], ["A"], name="block_input"),
             n("Conv", ["A", "W1"], ["c1"], pads=[1, 1, 1, 1]), n("Relu", ["c1"], ["b1"]),
             n("Conv", ["b1", "W2"], ["b1o"], strides=[4, 4]), n("MaxPool", ["A"], ["b2o"], kernel_shape=[4, 4],
                                                                  strides=[4, 4]),
             n("Concat", ["b1o", "b2o"], ["cat"], axis=1), n("GlobalAveragePool", ["cat"], ["p"]),
             n("Flatten", ["p"], ["f"]), n("MatMul", ["f", "G"], ["y"])]
    model = single_io_model(nodes, w, ["N", 3, 4, 4], ["N", 5])
    rows = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "grad_cam")}
    assert [name for name, rule in rows.items() if rule == "grad_cam layer"] == ["block_input"]
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    np.testing.assert_array_equal(analyze("grad_cam", model, x), analyze("grad_cam", model, x, layer="A"))
    assert not np.array_equal(analyze("grad_cam", model, x), analyze("grad_cam", model, x, layer="b1"))


def test_a_long_branch_beside_the_features_is_not_the_default():
    """A wav2vec2-like positional convolution: 36 convolutions (72 maps) in a branch beside the features f, added to
    them only once both are tokens. However many maps the branch holds, the default is f, which every path passes
    through (a search bounded to the last 64 maps took the branch's last one in a TorchScript Data2VecAudio, whose
    dynamo export, with fewer tensors, took f)."""
    rng = np.random.default_rng(24)
    n = helper.make_node
    w = {"W0": rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "G": rng.standard_normal((4, 3)).astype(
        np.float32), "tokens": np.array([0, 4, 64], np.int64), "axis": np.array([2], np.int64)}
    nodes = [n("Conv", ["x", "W0"], ["c0"], pads=[1, 1, 1, 1]), n("Relu", ["c0"], ["f"], name="features")]
    prev = "f"
    for k in range(36):
        w[f"B{k}"] = (rng.standard_normal((4, 4, 1, 1)) * 0.5).astype(np.float32)
        nodes += [n("Conv", [prev, f"B{k}"], [f"bc{k}"]), n("Relu", [f"bc{k}"], [f"br{k}"])]
        prev = f"br{k}"
    nodes += [n("Reshape", ["f", "tokens"], ["ft"]), n("Reshape", [prev, "tokens"], ["bt"]), n("Add", ["ft", "bt"], ["s"]),
              n("ReduceMean", ["s", "axis"], ["m"], keepdims=0), n("MatMul", ["m", "G"], ["y"])]
    model = single_io_model(nodes, w, ["N", 2, 8, 8], ["N", 3], opset=18)
    rows = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "grad_cam")}
    assert [name for name, rule in rows.items() if rule == "grad_cam layer"] == ["features"]
    x = rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(analyze("grad_cam", model, x), analyze("grad_cam", model, x, layer="f"))


def test_nothing_computed_from_a_global_pool_alone_is_the_default_map():
    """A ConvNeXt head as torch's dynamo exporter writes it: the global pool a ReduceMean over H, W, then a view to
    [N, 1, 1, C] (an as_strided the layout tracking cannot follow) and a LayerNormalization over C: those [N, 1, 1, C]
    tensors are no feature maps (before: the LayerNorm's output was the default layer, and the two exports of a
    ConvNeXt gave different cams)."""
    rng = np.random.default_rng(17)
    nodes = [helper.make_node("Conv", ["x", "K"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["p"], axes=[2, 3], keepdims=1),
             helper.make_node("Reshape", ["p", "to_last"], ["pl"]),
             helper.make_node("LayerNormalization", ["pl", "gamma", "beta"], ["ln"], axis=-1),
             helper.make_node("Reshape", ["ln", "flat"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])]
    model = single_io_model(nodes, {"K": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
                                    "to_last": np.array([0, 1, 1, 4], np.int64), "flat": np.array([0, 4], np.int64),
                                    "gamma": np.ones(4, np.float32), "beta": np.zeros(4, np.float32),
                                    "W": rng.standard_normal((4, 3)).astype(np.float32)}, ["N", 2, 6, 6], ["N", 3])
    rows = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "grad_cam")}
    assert [n for n, r in rows.items() if r == "grad_cam layer"] == ["Relu_1"]
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    np.testing.assert_array_equal(analyze("grad_cam", model, x), analyze("grad_cam", model, x, layer="r"))


def test_a_sequence_first_tensor_is_no_feature_map():
    """A recurrent net (torch's two-layer LSTM, unrolled): its steps [N, 1, C] have the input's rank but are no
    feature map (no convolution, pool or norm comes before them), and the second layer's steps, read from the
    sequence-first [T, N, C] between the layers, do not have the batch first: refused by name when named
    (before, onnxruntime failed the run in an Expand)."""
    path = Path(__file__).resolve().parents[1] / "oracles" / "data" / "torch_lstm.onnx"
    with pytest.raises(UsageError, match="no feature map"):
        onnxattr.compile(path, "grad_cam")
    with pytest.raises(UsageError, match=r"layer '/rnn/LSTM_1/split_2' has 1 on its first axis where input 'x' has "
                                         r"its batch \(batch\)"):
        onnxattr.compile(path, "grad_cam", layer="/rnn/LSTM_1/split_2")


def test_a_sequence_model_takes_its_conv_features_not_the_attention_after_them():
    """A Whisper-like encoder: a 1-D convolution's features [N, 6, 16], moved to tokens [N, 16, 6], attention whose
    heads are reshaped back to [N, 16, 6], a mean over the tokens. The tensors after the heads' reshapes have lost
    their layout and are no feature maps (they were taken as [N, C, L] before); the default is the conv's
    activation, which both torch exporters then agree on."""
    rng = np.random.default_rng(8)
    n = helper.make_node
    w = {"K": rng.standard_normal((6, 4, 3)).astype(np.float32) * 0.5, "Wq": rng.standard_normal((6, 6)).astype(
        np.float32), "Wh": rng.standard_normal((6, 3)).astype(np.float32),
        "heads": np.array([0, 16, 2, 3], np.int64), "back": np.array([0, 16, 6], np.int64),
        "tokens": np.array([1], np.int64)}
    nodes = [n("Conv", ["x", "K"], ["c"], pads=[1, 1]), n("Relu", ["c"], ["a"], name="conv_act"),
             n("Transpose", ["a"], ["t"], perm=[0, 2, 1]), n("MatMul", ["t", "Wq"], ["q"]),
             n("Reshape", ["q", "heads"], ["qh"]), n("Transpose", ["qh"], ["qt"], perm=[0, 2, 1, 3]),
             n("Transpose", ["qt"], ["kt"], perm=[0, 1, 3, 2]), n("MatMul", ["qt", "kt"], ["s"]),
             n("Softmax", ["s"], ["p"], axis=-1), n("MatMul", ["p", "qt"], ["o"]),
             n("Transpose", ["o"], ["ob"], perm=[0, 2, 1, 3]), n("Reshape", ["ob", "back"], ["merged"]),
             n("ReduceMean", ["merged", "tokens"], ["pooled"], keepdims=0), n("MatMul", ["pooled", "Wh"], ["y"])]
    model = single_io_model(nodes, w, ["N", 4, 16], ["N", 3], opset=18)
    rules = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "grad_cam")}
    assert rules["conv_act"] == "grad_cam layer"


def test_a_map_folded_back_by_reshapes_before_a_pool_is_the_default():
    """A MobileViT folds its patches back to [N, C, H, W] by Reshapes, whose layout the forward walk loses; a pool
    (or a convolution) reads channels first, so what it reads is channels first, back through ops that keep the
    layout: the folded map is the last feature map."""
    rng = np.random.default_rng(9)
    n = helper.make_node
    w = {"K": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "Wh": rng.standard_normal((4, 3)).astype(
        np.float32), "patches": np.array([0, 4, 4, 16], np.int64), "back": np.array([0, 4, 8, 8], np.int64)}
    nodes = [n("Conv", ["x", "K"], ["c"], pads=[1, 1, 1, 1]), n("Relu", ["c"], ["a"]),
             n("Reshape", ["a", "patches"], ["p"]), n("Transpose", ["p"], ["pt"], perm=[0, 1, 3, 2]),
             n("Sigmoid", ["pt"], ["ps"]), n("Transpose", ["ps"], ["pb"], perm=[0, 1, 3, 2]),
             n("Reshape", ["pb", "back"], ["folded"]), n("Relu", ["folded"], ["mixed"], name="fold_back"),
             n("GlobalAveragePool", ["mixed"], ["g"]), n("Flatten", ["g"], ["h"]), n("MatMul", ["h", "Wh"], ["y"])]
    model = single_io_model(nodes, w, ["N", 3, 8, 8], ["N", 3])
    rules = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "grad_cam")}
    assert rules["fold_back"] == "grad_cam layer"


def test_a_one_dimensional_signal_gets_the_cam_of_its_conv_features():
    """Raw audio x [N, L] that an Unsqueeze makes [N, 1, L] for 1-D convolutions (wav2vec2's feature encoder): the
    default layer is the last conv map [N, C, T], and the cam relu(sum_c mean_t(dy/dA_c) A_c) is resized linearly
    (half-pixel centres) to L, one value per sample of the signal. A and dy/dA come from onnxattr's input and
    gradient methods explaining that map. (Before, grad_cam refused: no feature map of the input's rank 2.)"""
    rng = np.random.default_rng(10)
    n = helper.make_node
    w = {"K1": rng.standard_normal((4, 1, 4)).astype(np.float32), "K2": rng.standard_normal((4, 4, 3)).astype(
        np.float32), "Wh": rng.standard_normal((4, 3)).astype(np.float32), "one": np.array([1], np.int64)}
    nodes = [n("Unsqueeze", ["x", "one"], ["x1"]), n("Conv", ["x1", "K1"], ["c1"], strides=[2]),
             n("Relu", ["c1"], ["a1"]), n("Conv", ["a1", "K2"], ["c2"], strides=[2]),
             n("Relu", ["c2"], ["a2"], name="last_map"), n("GlobalAveragePool", ["a2"], ["g"]),
             n("Flatten", ["g"], ["h"]), n("MatMul", ["h", "Wh"], ["y"])]
    model = single_io_model(nodes, w, ["N", 32], ["N", 3])
    rules = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "grad_cam")}
    assert rules["last_map"] == "grad_cam layer"
    x = rng.standard_normal((3, 32)).astype(np.float32)
    a = analyze("input", model, x, input="a2")
    g = analyze("gradient", model, x, input="a2")
    cam = np.maximum((g.mean(axis=2, keepdims=True) * a).sum(1), 0)  # [N, T]
    t = cam.shape[1]
    pos = np.clip((np.arange(32) + 0.5) * t / 32 - 0.5, 0, t - 1)
    lo = np.floor(pos).astype(int)
    hi, frac = np.minimum(lo + 1, t - 1), pos - np.floor(pos)
    want = cam[:, lo] * (1 - frac) + cam[:, hi] * frac
    got = analyze("grad_cam", model, x)
    assert got.shape == x.shape and np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("pad_node", [True, False])
def test_a_padded_map_is_not_the_default_layer(pad_node):
    """A TorchScript MobileNet zero-pads its 1 x 1 map to 3 x 3 with a Pad node before a depthwise conv; the
    dynamo exporter folds the padding into the conv. The padded map is its input's features and a border of
    zeros, so neither export takes it: both take the 2 x 2 map before it (HF MobileNetV1 and V2: cams 1.8e-6 and
    7.4e-7 apart; the TorchScript one took the Pad's output before)."""
    rng = np.random.default_rng(3)
    w = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),  # 4 x 4 -> 2 x 2
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),  # 2 x 2 -> 1 x 1
             helper.make_node("Relu", ["c2"], ["r2"])]
    if pad_node:
        nodes += [helper.make_node("Pad", ["r2", "pads"], ["p2"]),
                  helper.make_node("Conv", ["p2", "w3"], ["c3"], group=8)]
    else:
        nodes += [helper.make_node("Conv", ["r2", "w3"], ["c3"], group=8, pads=[1, 1, 1, 1])]
    nodes += [helper.make_node("Relu", ["c3"], ["r3"]), helper.make_node("GlobalAveragePool", ["r3"], ["gp"]),
              helper.make_node("Flatten", ["gp"], ["f"]), helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    inits = {"w1": w(8, 3, 3, 3), "w2": w(8, 8, 3, 3), "w3": w(8, 1, 3, 3), "wf": w(5, 8),
             "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}
    model = single_io_model(nodes, inits, ["N", 3, 4, 4], ["N", 5])
    layers = [r[2] for r in onnxattr.inspect(model, "grad_cam", tensors=True) if r[3] == "grad_cam layer"]
    assert layers == ["r1"]


@pytest.mark.parametrize("axis", [np.array([2], np.int64), np.array(2, np.int64)])
def test_a_sequence_unsqueezed_to_one_row_is_not_a_feature_map(axis):
    """torch's dynamo exporter writes an AdaptiveAvgPool1d over a sequence [N, C, L] as Unsqueeze to [N, C, 1, L]
    and a mean over the last two axes: that is no 1 x L image (an HF FocalNet's dynamo export took it, and its cam
    was stripes; the TorchScript export took a 4 x 4 map, as both do now, 1e-7 apart). The map is the conv's; the
    axis may be a scalar, as the dynamo exporter writes Unsqueeze's."""
    rng = np.random.default_rng(5)
    n = helper.make_node
    nodes = [n("Conv", ["x", "K"], ["c"], strides=[2, 2]), n("Relu", ["c"], ["a"], name="conv_map"),
             n("Reshape", ["a", "seq"], ["s"]), n("Sigmoid", ["s"], ["gated"]),
             n("Unsqueeze", ["gated", "axis"], ["row"]), n("ReduceMean", ["row", "axes"], ["m"], keepdims=0),
             n("MatMul", ["m", "Wh"], ["y"])]
    w = {"K": rng.standard_normal((8, 3, 2, 2)).astype(np.float32), "seq": np.array([0, 8, 16], np.int64),
         "axis": axis, "axes": np.array([2, 3], np.int64),
         "Wh": rng.standard_normal((8, 5)).astype(np.float32)}
    model = single_io_model(nodes, w, ["N", 3, 8, 8], ["N", 5], opset=18)
    rules = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "grad_cam")}
    assert rules["conv_map"] == "grad_cam layer"


def test_a_dynamically_quantized_net_keeps_its_feature_maps(tmp_path):
    """onnxruntime's quantize_dynamic writes each Conv as ConvInteger (then Cast, Mul by the scales, Add the bias):
    the feature maps start there as they start at a Conv, and the cam stays the float net's (correlation 0.999).
    Before, a net whose convolutions were all ConvInteger had no feature map for Grad-CAM."""
    from onnxruntime.quantization import quantize_dynamic

    rng = np.random.default_rng(5)
    inits = {"w1": rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
             "w2": rng.standard_normal((4, 4, 3, 3)).astype(np.float32),
             "d": rng.standard_normal((4, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "d"], ["y"])]  # no pool before the last map
    src, dst = tmp_path / "float.onnx", tmp_path / "dynamic.onnx"
    onnx.save(single_io_model(nodes, inits, ["N", 2, 8, 8], ["N", 3]), src)
    quantize_dynamic(str(src), str(dst))
    quantized = onnx.load(dst)
    assert "ConvInteger" in {n.op_type for n in quantized.graph.node}
    assert "Conv" not in {n.op_type for n in quantized.graph.node}
    x = np.random.default_rng(4).random((3, 2, 8, 8)).astype(np.float32)
    plain = onnxattr.create_analyzer("grad_cam", onnx.load(src)).analyze(x).ravel()
    ours = onnxattr.create_analyzer("grad_cam", quantized).analyze(x).ravel()
    assert np.corrcoef(plain, ours)[0, 1] > 0.99
