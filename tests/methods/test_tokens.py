"""onnxattr/methods/tokens.py: Grad-CAM at a vision transformer's token map. A one-block ViT (8x8 input, 4x4
patches: a 2x2 grid of 6 features, a class token, attention, an MLP, the class token read by the head) against
the closed form computed here from the token map's activation and gradient (onnxattr's input and gradient
methods explaining that tensor): drop the class token, read the patches as [N, C, 2, 2] in row-major order,
relu(sum_c mean(dy/dA_c) A_c), bilinear to 8x8."""

import numpy as np
import pytest
from onnx import helper

import onnxattr
from tests.methods.test_cam import analyze, cam_at, cam_of
from tests.models import single_io_model

C = 6


def tiny_vit(flatten="channels_first", prefix=1, seed=0, pool2d=False):
    """x [N, 3, 8, 8] -> patches -> tokens t1 [N, prefix + 4, 6] (class, and a DeiT's distillation token) -> n1 =
    LayerNorm -> attention -> + -> LayerNorm -> MLP -> + -> LayerNorm -> the first token (or, with no prefix, the mean
    of the tokens; ``pool2d``: that mean as torch's dynamo exporter writes AdaptiveAvgPool1d, a ReduceMean of
    [N, C, 1, T]) -> y [N, 4]."""
    rng = np.random.default_rng(seed)
    w = {name: rng.standard_normal(shape).astype(np.float32) * scale for name, shape, scale in [
        ("Wp", (C, 3, 4, 4), 0.3), ("cls", (1, max(prefix, 1), C), 1.0), ("pos", (1, prefix + 4, C), 0.5),
        ("Wq", (C, C), 0.5), ("Wk", (C, C), 0.5), ("Wv", (C, C), 0.5), ("Wo", (C, C), 0.5), ("W1", (C, 12), 0.5),
        ("W2", (12, C), 0.5), ("Wh", (C, 4), 0.5), ("g", (C,), 1.0), ("beta", (C,), 0.1)]}
    w["g"] = 1 + 0.2 * w["g"]
    w["grid"] = np.array([0, C, 4], np.int64)
    w["tokens"] = np.array([0, 4, C], np.int64)
    w["one_c"] = np.array([prefix, C], np.int64)
    w["lo"], w["hi"] = np.array([0], np.int64), np.array([1], np.int64)
    w["first"] = np.array(0, np.int64)
    n = helper.make_node
    nodes = [n("Conv", ["x", "Wp"], ["e"], strides=[4, 4])]
    if flatten == "channels_first":
        nodes += [n("Reshape", ["e", "grid"], ["ef"]), n("Transpose", ["ef"], ["p"], perm=[0, 2, 1])]
    else:  # channels last, then flattened: [N, 2, 2, 6] -> [N, 4, 6]
        nodes += [n("Transpose", ["e"], ["el"], perm=[0, 2, 3, 1]), n("Reshape", ["el", "tokens"], ["p"])]
    if prefix:
        nodes += [n("Shape", ["x"], ["xs"]), n("Slice", ["xs", "lo", "hi"], ["batch"]),
                  n("Concat", ["batch", "one_c"], ["cls_shape"], axis=0), n("Expand", ["cls", "cls_shape"], ["c"]),
                  n("Concat", ["c", "p"], ["t0"], axis=1)]
    else:
        nodes += [n("Identity", ["p"], ["t0"])]
    nodes += [n("Add", ["t0", "pos"], ["t1"]),
              n("LayerNormalization", ["t1", "g", "beta"], ["n1"], axis=-1, name="norm1"),
              n("MatMul", ["n1", "Wq"], ["q"]), n("MatMul", ["n1", "Wk"], ["k"]), n("MatMul", ["n1", "Wv"], ["v"]),
              n("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), n("MatMul", ["q", "kt"], ["s"]),
              n("Softmax", ["s"], ["a"], axis=-1), n("MatMul", ["a", "v"], ["o"]), n("MatMul", ["o", "Wo"], ["o2"]),
              n("Add", ["t1", "o2"], ["r1"]), n("LayerNormalization", ["r1", "g", "beta"], ["n2"], axis=-1),
              n("MatMul", ["n2", "W1"], ["m1"]), n("Relu", ["m1"], ["m2"]), n("MatMul", ["m2", "W2"], ["m3"]),
              n("Add", ["r1", "m3"], ["r2"]), n("LayerNormalization", ["r2", "g", "beta"], ["n3"], axis=-1)]
    if pool2d:
        w["axis2"], w["flat2"] = np.array([2], np.int64), np.array([0, C], np.int64)
        nodes += [n("Transpose", ["n3"], ["n3t"], perm=[0, 2, 1]), n("Unsqueeze", ["n3t", "axis2"], ["n4"]),
                  n("ReduceMean", ["n4"], ["pooled"], axes=[2, 3]), n("Reshape", ["pooled", "flat2"], ["h"])]
    elif prefix:
        nodes += [n("Gather", ["n3", "first"], ["h"], axis=1)]
    else:
        nodes += [n("ReduceMean", ["n3"], ["h"], axes=[1], keepdims=0)]
    nodes += [n("MatMul", ["h", "Wh"], ["y"])]
    return single_io_model(nodes, w, ["N", 3, 8, 8], ["N", 4])


def closed_form(model, x, tensor, prefix):
    a = analyze("input", model, x, input=tensor)[:, prefix:]
    g = analyze("gradient", model, x, input=tensor)[:, prefix:]
    a, g = (t.transpose(0, 2, 1).reshape(len(x), C, 2, 2) for t in (a, g))
    return cam_of(a, g, x)


@pytest.mark.parametrize("flatten", ["channels_first", "channels_last"])
@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_the_default_is_the_norm_before_the_attention(flatten, prefix):
    """Only the tokens that reach the attention reach the class token: the default layer is norm1's output, as
    pytorch-grad-cam's ViT example takes blocks[-1].norm1; inspect names it."""
    model = tiny_vit(flatten, prefix)
    x = np.random.default_rng(1).standard_normal((3, 3, 8, 8)).astype(np.float32)
    got = analyze("grad_cam", model, x)
    want = closed_form(model, x, "n1", prefix)
    assert np.abs(want).max() > 0 and (want == 0).any()  # the relu cut something, and left something
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    rows = {name: (rule, why) for name, _, rule, why in onnxattr.api.inspect(model, "grad_cam")}
    grid = "a token map, read as the 2x2 patch grid" + {0: "", 1: " after 1 leading token",
                                                         2: " after 2 leading tokens"}[prefix]
    assert rows["norm1"] == ("grad_cam layer", f"its output is {grid}")


@pytest.mark.parametrize("tensor", ["t1", "v", "r1"])
def test_a_named_token_map(tensor):
    """layer= takes any token map [N, 1 + 4, 6]. After the attention (r1) each token goes its own way to the head,
    which reads the class token alone: the patches' gradient is 0 there, and so is the cam (why the default is the
    map before the last attention)."""
    model = tiny_vit()
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    got = analyze("grad_cam", model, x, layer=tensor)
    want = closed_form(model, x, tensor, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * max(np.abs(want).max(), 1e-30))
    assert (np.abs(want).max() == 0) == (tensor == "r1")


def test_the_patch_embedding_stays_a_feature_map():
    """The conv's own output [N, 6, 2, 2] is still a feature map one can name."""
    model = tiny_vit()
    x = np.random.default_rng(3).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = cam_at(model, x, "e")
    np.testing.assert_allclose(analyze("grad_cam", model, x, layer="e"), want, rtol=1e-5,
                               atol=1e-6 * np.abs(want).max())


def test_a_cnn_that_reads_tokens_on_the_way_keeps_its_last_feature_map():
    """A non-local block (the map flattened to tokens, attention over them, reshaped back) inside a CNN: the
    convolution after it writes channels first, so its output is the default layer, not the block's tokens."""
    rng = np.random.default_rng(4)
    w = {"W1": rng.standard_normal((C, 3, 3, 3)).astype(np.float32) * 0.3,
         "W2": rng.standard_normal((C, C, 3, 3)).astype(np.float32) * 0.3,
         "Wq": rng.standard_normal((C, C)).astype(np.float32), "Wh": rng.standard_normal((C, 4)).astype(np.float32),
         "flat": np.array([0, C, 64], np.int64), "back": np.array([0, C, 8, 8], np.int64)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]), n("Relu", ["c1"], ["a1"]),
             n("Reshape", ["a1", "flat"], ["f"]), n("Transpose", ["f"], ["t"], perm=[0, 2, 1]),
             n("MatMul", ["t", "Wq"], ["q"]), n("Transpose", ["t"], ["tt"], perm=[0, 2, 1]),
             n("MatMul", ["q", "tt"], ["s"]), n("Softmax", ["s"], ["p"], axis=-1), n("MatMul", ["p", "t"], ["o"]),
             n("Transpose", ["o"], ["ot"], perm=[0, 2, 1]), n("Reshape", ["ot", "back"], ["g"]),
             n("Add", ["a1", "g"], ["r"]), n("Conv", ["r", "W2"], ["c2"], pads=[1, 1, 1, 1]),
             n("Relu", ["c2"], ["a2"], name="last_map"), n("GlobalAveragePool", ["a2"], ["gp"]),
             n("Flatten", ["gp"], ["h"]), n("MatMul", ["h", "Wh"], ["y"])]
    model = single_io_model(nodes, w, ["N", 3, 8, 8], ["N", 4])
    rules = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "grad_cam")}
    assert rules["last_map"] == "grad_cam layer"
    # the block's tokens are still there to name: [N, 64, 6] read as the 8 x 8 grid
    x = np.random.default_rng(5).standard_normal((2, 3, 8, 8)).astype(np.float32)
    a = analyze("input", model, x, input="t").transpose(0, 2, 1).reshape(2, C, 8, 8)
    g = analyze("gradient", model, x, input="t").transpose(0, 2, 1).reshape(2, C, 8, 8)
    cam = np.maximum((g.mean(axis=(2, 3), keepdims=True) * a).sum(1), 0)
    want = np.broadcast_to(cam[:, None], x.shape)  # 8 x 8 already: resizing keeps it
    np.testing.assert_allclose(analyze("grad_cam", model, x, layer="t"), want, rtol=1e-5,
                               atol=1e-6 * np.abs(want).max())


def test_a_convolution_beside_the_last_attention_is_not_the_default():
    """A CoaT block: a depthwise convolution of the value tokens (its position encoding, CRPE) added to the
    attention's output beside it, then the class token read by the head. That convolution's map reaches the class
    token through no attention, so its gradient and cam are 0; the default stays the tokens the attention reads
    (before: the convolution's map, and the cam was 0 everywhere)."""
    rng = np.random.default_rng(6)
    w = {name: rng.standard_normal(shape).astype(np.float32) * scale for name, shape, scale in [
        ("Wp", (C, 3, 4, 4), 0.3), ("cls", (1, 1, C), 1.0), ("Wq", (C, C), 0.5), ("Wk", (C, C), 0.5),
        ("Wv", (C, C), 0.5), ("Wd", (C, 1, 3, 3), 0.5), ("Wo", (C, C), 0.5), ("Wh", (C, 4), 0.5)]}
    w.update({"g": np.ones(C, np.float32), "beta": np.zeros(C, np.float32), "grid": np.array([0, C, 4], np.int64),
              "square": np.array([0, C, 2, 2], np.int64), "one_c": np.array([1, C], np.int64),
              "lo": np.array([0], np.int64), "hi": np.array([1], np.int64), "p_lo": np.array([1], np.int64),
              "p_hi": np.array([5], np.int64), "cls_row": np.array([0, 1, 0, 0, 0, 0], np.int64),
              "first": np.array(0, np.int64)})
    n = helper.make_node
    nodes = [n("Conv", ["x", "Wp"], ["e"], strides=[4, 4]), n("Reshape", ["e", "grid"], ["ef"]),
             n("Transpose", ["ef"], ["p"], perm=[0, 2, 1]), n("Shape", ["x"], ["xs"]),
             n("Slice", ["xs", "lo", "hi"], ["batch"]), n("Concat", ["batch", "one_c"], ["cls_shape"], axis=0),
             n("Expand", ["cls", "cls_shape"], ["c"]), n("Concat", ["c", "p"], ["t1"], axis=1),
             n("LayerNormalization", ["t1", "g", "beta"], ["n1"], axis=-1, name="norm1"),
             n("MatMul", ["n1", "Wq"], ["q"]), n("MatMul", ["n1", "Wk"], ["k"]), n("MatMul", ["n1", "Wv"], ["v"]),
             n("Transpose", ["k"], ["kt"], perm=[0, 2, 1]), n("MatMul", ["q", "kt"], ["s"]),
             n("Softmax", ["s"], ["a"], axis=-1), n("MatMul", ["a", "v"], ["o"]),
             n("Slice", ["v", "p_lo", "p_hi", "hi"], ["vp"]), n("Transpose", ["vp"], ["vt"], perm=[0, 2, 1]),
             n("Reshape", ["vt", "square"], ["vg"]), n("Conv", ["vg", "Wd"], ["cv"], group=C, pads=[1, 1, 1, 1],
                                                       name="crpe"),
             n("Reshape", ["cv", "grid"], ["cf"]), n("Transpose", ["cf"], ["ct"], perm=[0, 2, 1]),
             n("Pad", ["ct", "cls_row"], ["cpad"]), n("Add", ["o", "cpad"], ["o_sum"]),
             n("MatMul", ["o_sum", "Wo"], ["o2"]), n("Add", ["t1", "o2"], ["r1"]),
             n("LayerNormalization", ["r1", "g", "beta"], ["n3"], axis=-1), n("Gather", ["n3", "first"], ["h"], axis=1),
             n("MatMul", ["h", "Wh"], ["y"])]
    model = single_io_model(nodes, w, ["N", 3, 8, 8], ["N", 4])
    rows = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "grad_cam")}
    assert [name for name, rule in rows.items() if rule == "grad_cam layer"] == ["norm1"]
    x = np.random.default_rng(7).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert np.abs(analyze("gradient", model, x, input="cv")).max() == 0  # the convolution's map reaches nothing
    want = closed_form(model, x, "n1", 1)
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(analyze("grad_cam", model, x), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_a_map_computed_from_the_last_attention_is_the_default():
    """A timm SwinV2-CR's last stage: the attention's tokens reshaped back to [N, 2, 2, C] (a layout the reshapes
    lose), transposed to channels first and averaged over H, W by the head. That map comes from the last attention
    (no convolution after the tokens), so it is the default layer (before: the first stage's token map)."""
    rng = np.random.default_rng(9)
    w = {"Wp": rng.standard_normal((C, 3, 4, 4)).astype(np.float32) * 0.3, "g": np.ones(C, np.float32),
         "beta": np.zeros(C, np.float32), "Wq": rng.standard_normal((C, C)).astype(np.float32) * 0.5,
         "Wh": rng.standard_normal((C, 4)).astype(np.float32), "grid": np.array([0, C, 4], np.int64),
         "square": np.array([-1, 2, 2, C], np.int64)}
    n = helper.make_node
    nodes = [n("Conv", ["x", "Wp"], ["e"], strides=[4, 4]), n("Reshape", ["e", "grid"], ["ef"]),
             n("Transpose", ["ef"], ["t"], perm=[0, 2, 1]),
             n("LayerNormalization", ["t", "g", "beta"], ["n1"], axis=-1, name="norm1"),
             n("MatMul", ["n1", "Wq"], ["q"]), n("Transpose", ["n1"], ["kt"], perm=[0, 2, 1]),
             n("MatMul", ["q", "kt"], ["s"]), n("Softmax", ["s"], ["a"], axis=-1), n("MatMul", ["a", "n1"], ["o"]),
             n("Reshape", ["o", "square"], ["o4"]), n("Transpose", ["o4"], ["cf"], perm=[0, 3, 1, 2], name="to_nchw"),
             n("ReduceMean", ["cf"], ["h"], axes=[2, 3], keepdims=0), n("MatMul", ["h", "Wh"], ["y"])]
    model = single_io_model(nodes, w, ["N", 3, 8, 8], ["N", 4])
    rows = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "grad_cam")}
    assert [name for name, rule in rows.items() if rule == "grad_cam layer"] == ["to_nchw"]
    x = np.random.default_rng(10).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = cam_at(model, x, "cf")
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(analyze("grad_cam", model, x), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_a_mean_over_the_tokens_written_as_a_2d_pool_keeps_the_token_map():
    """torch's dynamo exporter writes a Swin's AdaptiveAvgPool1d over the tokens as Unsqueeze to [N, C, 1, T] and a
    ReduceMean over its last two axes: that [N, C, 1, T] is no feature map of the image (no convolution follows the
    tokens), and the default stays the token map before the last attention."""
    model = tiny_vit(prefix=0, pool2d=True)
    rows = {name: rule for name, _, rule, _ in onnxattr.api.inspect(model, "grad_cam")}
    assert rows["norm1"] == "grad_cam layer"
    x = np.random.default_rng(6).standard_normal((2, 3, 8, 8)).astype(np.float32)
    want = closed_form(model, x, "n1", 0)
    np.testing.assert_allclose(analyze("grad_cam", model, x), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
