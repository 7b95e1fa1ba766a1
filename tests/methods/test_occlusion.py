"""onnxattr/methods/occlusion.py: closed forms on a linear model (a window's drop is sum over it of
(x - b) W), Captum's window layout (the last window cut at the end), uncovered elements, and the refusals
(Captum's Occlusion on eight PyTorch nets is in test_oracles)."""

import numpy as np
import pytest
from onnx import helper

import onnxattr
from onnxattr.errors import UsageError
from tests.models import single_io_model

W = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
X = np.random.default_rng(1).standard_normal((2, 6)).astype(np.float32)


def linear(batch="N"):
    return single_io_model([helper.make_node("MatMul", ["x", "W"], ["y"])], {"W": W}, [batch, 6], [batch, 3])


def occlusion(model=None, **kw):
    analyzer = onnxattr.create_analyzer("occlusion", model or linear(), neuron_selection_mode="index", **kw)
    return analyzer.analyze(X, neuron_selection=np.array([0, 2]))


def test_windows_of_one_element_give_input_times_weight():
    got = occlusion(sliding_window_shapes=1, baselines=0.25)
    np.testing.assert_allclose(got, (X - 0.25) * W[:, [0, 2]].T, rtol=1e-5, atol=1e-6)


def test_every_element_of_a_window_gets_its_drop_averaged_over_the_windows_covering_it():
    """Window 4, stride 2 on 6 features: windows [0, 4) and [2, 6); the middle two get their mean."""
    got = occlusion(sliding_window_shapes=4, strides=2, chunk_size=1)
    c = X * W[:, [0, 2]].T  # each feature's share of the drop (baseline 0)
    first, second = c[:, :4].sum(1, keepdims=True), c[:, 2:].sum(1, keepdims=True)
    want = np.concatenate([np.repeat(first, 2, 1), np.repeat((first + second) / 2, 2, 1), np.repeat(second, 2, 1)], 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_the_last_window_is_cut_at_the_end_and_a_long_stride_skips_elements():
    """Window 4, stride 3: windows [0, 4) and [3, 6) (the second cut to 3 elements, as Captum does); stride 4 > 2
    with window 2: windows [0, 2), [4, 6), and features 2, 3 get 0."""
    c = X * W[:, [0, 2]].T
    got = occlusion(sliding_window_shapes=4, strides=3)
    first, second = c[:, :4].sum(1, keepdims=True), c[:, 3:].sum(1, keepdims=True)
    want = np.concatenate([np.repeat(first, 3, 1), (first + second) / 2, np.repeat(second, 2, 1)], 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    sparse = occlusion(sliding_window_shapes=2, strides=4)
    np.testing.assert_array_equal(sparse[:, 2:4], 0)
    np.testing.assert_allclose(sparse[:, :2], np.repeat(c[:, :2].sum(1, keepdims=True), 2, 1), rtol=1e-5)


def test_inspect_says_forward_only():
    rows = onnxattr.api.inspect(linear(), "occlusion")
    assert [(op, rule) for _, op, rule, _ in rows] == [("MatMul", "forward")]


@pytest.mark.parametrize("kw,words", [
    ({"sliding_window_shapes": 7}, r"sliding_window_shapes=\[7\]: larger than the input's features \[6\]"),
    ({"sliding_window_shapes": (2, 2)}, r"give one size per feature axis of the input \(features \[6\]\)"),
    ({"strides": 0}, "must be a positive integer or a tuple of them"),
])
def test_windows_that_do_not_fit_are_refused(kw, words):
    with pytest.raises(UsageError, match=words):
        onnxattr.compile(linear(), "occlusion", **kw)


def test_dynamic_spatial_axes_lay_out_the_windows_at_run_time():
    """A conv net declared [N, 2, H, W] gives the map of the same net declared [N, 2, 10, 7]: the windows
    (default: both channels, 8 x 8 cut to the input, stride the window) come from the input's shape at run
    time. A window wider than a static axis is refused; on a symbolic one it is cut to the axis."""
    from tests.lrp.nets import resnet_like

    static = resnet_like(bias=True)
    x = np.random.default_rng(2).standard_normal((2, 2, 8, 8)).astype(np.float32)
    dynamic = resnet_like(bias=True)
    dynamic.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"
    dynamic.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "W"
    for kw in ({}, {"sliding_window_shapes": (1, 3, 2), "strides": (1, 2, 3)}):
        want = onnxattr.create_analyzer("occlusion", static, **kw).analyze(x)
        got = onnxattr.create_analyzer("occlusion", dynamic, **kw).analyze(x)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * np.abs(want).max())
        assert np.abs(want).max() > 0
    with pytest.raises(UsageError, match="larger than the input's features"):
        onnxattr.compile(static, "occlusion", sliding_window_shapes=(2, 9, 2))
    wide = onnxattr.create_analyzer("occlusion", dynamic, sliding_window_shapes=(2, 9, 8)).analyze(x)
    np.testing.assert_allclose(wide, onnxattr.create_analyzer("occlusion", static, sliding_window_shapes=(2, 8, 8))
                               .analyze(x), rtol=1e-6)


def test_the_window_count_is_bounded():
    model = single_io_model([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=1)], {}, ["N", 3, 2000, 2000],
                            ["N", 1, 1, 1])
    with pytest.raises(UsageError, match="occlusion would run 3996001 windows"):
        onnxattr.compile(model, "occlusion", sliding_window_shapes=(3, 2, 2), strides=(3, 1, 1))


def test_window_sizes_parse_from_the_command_line(tmp_path):
    import onnx

    from onnxattr.cli import main

    onnx.save(linear(), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", X)
    base = ["explain", str(tmp_path / "m.onnx"), "--method", "occlusion", "--data", str(tmp_path / "x.npy")]
    assert main(base + ["--set", "sliding_window_shapes=3", "--set", "strides=3", "-o", str(tmp_path / "r.npy")]) == 0
    c = X * W[:, np.argmax(X @ W, 1)].T
    want = np.concatenate([np.repeat(c[:, :3].sum(1, keepdims=True), 3, 1), np.repeat(c[:, 3:].sum(1, keepdims=True), 3, 1)], 1)
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), want, rtol=1e-5, atol=1e-6)
    assert main(base + ["--set", "sliding_window_shapes=3,x", "-o", str(tmp_path / "s.npy")]) == 2


def test_numpy_window_sizes_and_array_baselines():
    """Windows as numpy integers or a 1-D array (as a user computes them); a baselines array broadcast to x
    (one per feature here) is checked against x's shape at compile time."""
    want = occlusion(sliding_window_shapes=3)
    np.testing.assert_array_equal(occlusion(sliding_window_shapes=np.int64(3)), want)
    np.testing.assert_array_equal(occlusion(sliding_window_shapes=np.array([3])), want)
    b = np.linspace(-1, 1, 6).astype(np.float32)
    got = occlusion(sliding_window_shapes=1, baselines=b)
    np.testing.assert_allclose(got, (X - b) * W[:, [0, 2]].T, rtol=1e-5, atol=1e-6)
    with pytest.raises(UsageError, match=r"parameter baselines: an array of shape \[5\] does not broadcast"):
        onnxattr.compile(linear(), "occlusion", baselines=np.zeros(5))


def test_a_float16_model_divides_by_the_window_count_before_going_back_to_float16():
    """y = sum(0.1 x) at x = 1 on 64 x 64, windows 32 x 32 with stride 1: every window drops y by 102.4, so
    the map is 102.4, while the sum over the 1089 windows covering the centre is 111514, past float16's
    65504. The Loop's float32 sum must be divided before the cast back to float16. onnxruntime's CPU runs
    float16 ops in float32 and drops the cast pairs (at every optimization level), so on CPU the map is
    right either way: the graph itself is checked, and the map."""
    from onnx import TensorProto, numpy_helper

    g = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["h"]), helper.make_node("ReduceSum", ["h", "axes"], ["s"], keepdims=1),
         helper.make_node("Flatten", ["s"], ["y"], axis=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 1, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 1])],
        [numpy_helper.from_array(np.array(0.1, np.float16), "w"),
         numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    params = dict(sliding_window_shapes=(1, 32, 32), strides=1, chunk_size=128)
    compiled = onnxattr.compile(model, "occlusion", neuron="all", **params)
    loop = next(n for n in compiled.graph.node if n.op_type == "Loop").output[0]
    readers = [n for n in compiled.graph.node if loop in n.input]
    assert readers and not any(n.op_type == "Cast" for n in readers), [n.op_type for n in readers]
    got = onnxattr.create_analyzer("occlusion", model, neuron_selection_mode="all", **params).analyze(
        np.ones((1, 1, 64, 64), np.float16))
    np.testing.assert_allclose(got, 102.4, rtol=2e-3)


@pytest.mark.parametrize("length,window,stride", [(13, 1, 1), (13, 4, 3), (13, 3, 5), (13, 5, 2), (13, 13, 1),
                                                  (16, 6, 4)])
def test_the_cover_count_matches_a_window_by_window_count(length, window, stride):
    """Each element's mean is over the windows covering it, counted per position in closed form (the count was a
    windows x positions table, 48 GB for a 220,000-sample signal and windows of 1): against numpy's loop over
    Captum's windows (ceil((L - w) / s) + 1 of them, the last cut at the end) on a linear model."""
    rng = np.random.default_rng(length + window + stride)
    w = rng.standard_normal((length, 2)).astype(np.float32)
    x = rng.standard_normal((3, length)).astype(np.float32)
    model = single_io_model([helper.make_node("MatMul", ["x", "W"], ["y"])], {"W": w}, ["N", length], ["N", 2])
    got = onnxattr.create_analyzer("occlusion", model, neuron_selection_mode="index", sliding_window_shapes=window,
                                   strides=stride).analyze(x, neuron_selection=np.array([1, 0, 1]))
    total, cover = np.zeros_like(x, np.float64), np.zeros(length)
    for start in range(0, -(-(length - window) // stride) * stride + 1, stride):
        inside = np.zeros(length, bool)
        inside[start:start + window] = True
        total += (x * w[:, [1, 0, 1]].T * inside).sum(1, keepdims=True) * inside
        cover += inside
    want = np.where(cover > 0, total / np.maximum(cover, 1), 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
