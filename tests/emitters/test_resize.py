"""onnxattr/emitters/resize.py: Resize in every mode (a linear map: checked exactly on onnxruntime)."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.light import infer_shapes
from tests.vjp_check import check_vjp, run_vjp, vjp_model

rng = np.random.default_rng(9)

MODES = [
    {"mode": "nearest"},
    {"mode": "nearest", "coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
    {"mode": "nearest", "coordinate_transformation_mode": "half_pixel", "nearest_mode": "round_prefer_ceil"},
    {"mode": "linear"},
    {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
    {"mode": "cubic"},
]


@pytest.mark.parametrize("attrs", MODES)
@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 1.5, 0.5], [1, 1, 3, 1]])
def test_resize_scales(attrs, scales):
    # Resize is linear in x: onnxruntime (the runtime users get) is the reference, difference exact
    check_vjp("Resize", [("x", rng.standard_normal((2, 3, 4, 6)), False), ("roi", np.zeros(0, np.float32), True),
                         ("s", np.array(scales, np.float32), True)], attrs, dynamic=(0,), linear_ort=True)


def test_resize_sizes():
    check_vjp("Resize", [("x", rng.standard_normal((1, 2, 4, 5)), False), ("roi", np.zeros(0, np.float32), True),
                         ("s", np.zeros(0, np.float32), True), ("z", np.array([1, 2, 7, 3], np.int64), True)],
              {"mode": "linear"}, linear_ort=True)


def _sized_by_shape(attrs, tail, opset, from_input):
    """x [N, 3, 4, 5] resized to sizes computed from shapes, as torchvision's segmentation heads do: Shape(x)[:2]
    followed by the constant ``tail`` (the output's inferred shape then knows it) or by Shape(ref)[2:] of a second
    input ``ref`` of symbolic size (the lengths are then known at run time only); with opset 18's ``axes``, the
    tail alone."""
    from onnx import TensorProto, helper, numpy_helper

    axes = [2, 3] if opset >= 18 else None
    head = [] if axes else [helper.make_node("Shape", ["x"], ["head"], end=2)]
    tail_nodes = [helper.make_node("Shape", ["ref"], ["tail"], start=2)] if from_input else []
    nodes = head + tail_nodes + [
        helper.make_node("Concat", ([] if axes else ["head"]) + ["tail"], ["sizes"], axis=0),
        helper.make_node("Resize", ["x", "", "", "sizes"], ["y0"], **attrs, **({"axes": axes} if axes else {}))]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 5])] + (
        [helper.make_tensor_value_info("ref", TensorProto.FLOAT, ["N", 1, "H", "W"])] if from_input else [])
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y0", TensorProto.FLOAT, None)],
                          [] if from_input else [numpy_helper.from_array(np.array(tail, np.int64), "tail")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return infer_shapes(model)


@pytest.mark.parametrize("attrs", MODES)
@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("from_input", [False, True])
def test_resize_sizes_computed_at_run_time(attrs, opset, from_input):
    """The VJP with sizes computed from shapes equals the one with the same sizes as a constant (checked above)."""
    import onnxruntime as ort

    tail = [7, 3]
    x = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    v = rng.standard_normal((2, 3, *tail)).astype(np.float32)
    model = _sized_by_shape(attrs, tail, opset, from_input)
    feeds = {"x": x, "cotangent": v} | ({"ref": np.zeros((2, 1, *tail), np.float32)} if from_input else {})
    got = ort.InferenceSession(vjp_model(model, ["x"]).SerializeToString()).run(["grad_x"], feeds)[0]
    want = run_vjp("Resize", [("x", x, False), ("roi", np.zeros(0, np.float32), True),
                              ("s", np.zeros(0, np.float32), True), ("z", np.array([2, 3, *tail], np.int64), True)],
                   v, attrs)[0]
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_resize_3d():
    check_vjp("Resize", [("x", rng.standard_normal((1, 2, 3, 4, 5)), False), ("roi", np.zeros(0, np.float32), True),
                         ("s", np.array([1, 1, 2, 1, 2], np.float32), True)], {"mode": "nearest"},
              linear_ort=True)


@pytest.mark.parametrize("attrs", [{"mode": "linear"},
                                   {"mode": "linear", "coordinate_transformation_mode": "align_corners"},
                                   {"mode": "nearest", "antialias": 0}, {"mode": "cubic", "antialias": 1}])
def test_resize_axes_scales(attrs):
    # opset 18's axes attribute (torch's dynamo exporter writes axes=[2, 3] and two scales)
    check_vjp("Resize", [("x", rng.standard_normal((2, 3, 4, 6)), False), ("roi", np.zeros(0, np.float32), True),
                         ("s", np.array([2.0, 0.5], np.float32), True)], {**attrs, "axes": [2, 3]},
              dynamic=(0,), opset=18, linear_ort=True)


def test_resize_axes_sizes_negative():
    check_vjp("Resize", [("x", rng.standard_normal((2, 3, 4, 5)), False), ("roi", np.zeros(0, np.float32), True),
                         ("s", np.zeros(0, np.float32), True), ("z", np.array([7], np.int64), True)],
              {"mode": "linear", "axes": [-2]}, dynamic=(0,), opset=18, linear_ort=True)


def test_resize_axes_roi():
    # tf_crop_and_resize reads roi per listed axis: [start_2, start_3, end_2, end_3] (no scale of 1: onnxruntime
    # leaves such an axis as it is, crop or not, and the VJP follows onnxruntime)
    check_vjp("Resize", [("x", rng.standard_normal((1, 2, 5, 6)), False),
                         ("roi", np.array([0.1, 0.2, 0.9, 0.7], np.float32), True),
                         ("s", np.array([1.5, 2.0], np.float32), True)],
              {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize", "axes": [2, 3]},
              opset=18, linear_ort=True)


def test_resize_keep_aspect_ratio_refused():
    with pytest.raises(Exception, match="keep_aspect_ratio_policy 'not_larger' is not supported"):
        check_vjp("Resize", [("x", rng.standard_normal((1, 2, 4, 5)), False), ("roi", np.zeros(0, np.float32), True),
                             ("s", np.zeros(0, np.float32), True), ("z", np.array([8, 8], np.int64), True)],
                  {"mode": "linear", "axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}, opset=18,
                  linear_ort=True)


@pytest.mark.parametrize("attrs", MODES)
@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 1.5, 0.5], [1, 1.0, 1.1, 1]])
def test_resize_scales_fed_at_run_time(attrs, scales):
    """Scales fed as an input (an Upsample-9 with a scales input, after the upgrade): each axis' map is resized by its
    own scale read at run time; a scale of 1.1 that leaves the length (4) is still a resampling."""
    check_vjp("Resize", [("x", rng.standard_normal((2, 3, 4, 6)), False), ("roi", np.zeros(0, np.float32), True),
                         ("s", np.array(scales, np.float32), False)], attrs, dynamic={"x": (0,)}, linear_ort=True)


def test_resize_axes_scales_fed_at_run_time():
    check_vjp("Resize", [("x", rng.standard_normal((2, 3, 4, 6)), False), ("roi", np.zeros(0, np.float32), True),
                         ("s", np.array([2.0, 0.5], np.float32), False)], {"mode": "linear", "axes": [2, 3]},
              dynamic={"x": (0,)}, opset=18, linear_ort=True)


def test_upsample_with_a_scales_input():
    """Upsample-9 reads its scales from an input, which the opset upgrade keeps as the Resize's: the map of
    sum(Upsample(x, s) * v) with s fed equals the map with s stored in the model (its own test above)."""
    v = rng.standard_normal((1, 2, 6, 12)).astype(np.float32)
    scales = np.array([1, 1, 2, 3], np.float32)
    maps = []
    for fed in (True, False):
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])]
        inits = [numpy_helper.from_array(v, "v")]
        if fed:
            inputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, [4]))
        else:
            inits.append(numpy_helper.from_array(scales, "s"))
        graph = helper.make_graph([helper.make_node("Upsample", ["x", "s"], ["u"], mode="nearest"),
                                   helper.make_node("Mul", ["u", "v"], ["y"])], "g", inputs,
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 12])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=4)
        compiled = onnxattr.compile(model, "gradient", input="x", neuron="all")
        feeds = {"x": rng.standard_normal((1, 2, 3, 4)).astype(np.float32), "s": scales}
        session = ort.InferenceSession(compiled.SerializeToString())
        maps.append(session.run(["relevance"], {i.name: feeds[i.name] for i in session.get_inputs()})[0])
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-6)
    np.testing.assert_allclose(maps[1], v.reshape(1, 2, 3, 2, 4, 3).sum(axis=(3, 5)), rtol=1e-5)
