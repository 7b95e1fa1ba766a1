"""onnxattr/emitters/conv.py: Conv and ConvTranspose VJPs against float64 central differences."""

import numpy as np
import pytest

from onnxattr.emitters.conv import channel_scale
from onnxattr.runtime import cudnn_can_pad
from tests.models import run_emitted
from tests.vjp_check import check_vjp, node_model, vjp_model

rng = np.random.default_rng(1)

CONV_CASES = [
    # (x shape, w shape, attrs)
    ((2, 3, 7, 7), (4, 3, 3, 3), {}),
    ((2, 3, 7, 7), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
    ((2, 3, 8, 9), (4, 3, 3, 2), {"strides": [2, 3], "pads": [0, 1, 2, 0]}),  # asymmetric, non-dividing
    ((1, 4, 9, 9), (6, 2, 3, 3), {"group": 2, "dilations": [2, 1]}),
    ((1, 4, 7, 7), (4, 1, 3, 3), {"group": 4, "strides": [2, 2], "pads": [1, 1, 1, 1]}),  # depthwise
    ((2, 3, 7, 8), (5, 3, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    ((2, 3, 7, 8), (5, 3, 2, 2), {"auto_pad": "SAME_LOWER"}),
    ((1, 2, 8, 9), (3, 2, 4, 3), {"auto_pad": "SAME_LOWER", "strides": [2, 3]}),  # (onnxruntime: no dilated SAME)
    ((2, 3, 7, 7), (5, 3, 3, 3), {"auto_pad": "VALID", "strides": [2, 2]}),
    ((2, 3, 11), (4, 3, 3), {"strides": [2], "pads": [1, 2], "dilations": [2]}),  # Conv1D
    # 16 input channels: the strided VJP's ConvTranspose result passes conv.channel_scale
    ((1, 16, 7, 7), (8, 16, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    # ResNet's strided convs on even sizes: the stem (7x7, pads 3) and a 3x3 with pads 1 crop more at the begin
    # than at the end; the 1x1 shortcut leaves a row no window reads
    ((1, 3, 16, 16), (4, 3, 7, 7), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),
    ((1, 4, 8, 8), (4, 4, 3, 3), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ((1, 4, 8, 8), (6, 4, 1, 1), {"strides": [2, 2]}),
    ((2, 2, 8), (2, 1, 1), {"dilations": [2], "group": 2, "pads": [2, 1]}),  # output_padding 1 >= stride: padded after
]


@pytest.mark.parametrize("xs,ws,attrs", CONV_CASES)
@pytest.mark.parametrize("dynamic", [(), (0,), (0, 2, 3)])
def test_conv_vjp(xs, ws, attrs, dynamic):
    dynamic = tuple(d for d in dynamic if d < len(xs))
    x = rng.standard_normal(xs)
    w = rng.standard_normal(ws)
    bias = rng.standard_normal(ws[0])
    check_vjp("Conv", [("x", x, False), ("w", w, True), ("b", bias, True)], attrs, dynamic=dynamic)


@pytest.mark.parametrize("xs,ws,attrs", CONV_CASES)
def test_conv_vjp_emits_convtranspose_with_symmetric_pads(xs, ws, attrs):
    """onnxruntime's CUDA provider drops a ConvTranspose with asymmetric pads (or auto_pad SAME) to the CPU, so
    the VJP's ConvTranspose pads equally at both ends; what that cannot express is a Pad after it."""
    model = node_model("Conv", [("x", rng.standard_normal(xs), False), ("w", rng.standard_normal(ws), True)], attrs)
    vm = vjp_model(model, ["x"], "y0")
    transposed = [n for n in vm.graph.node if n.op_type == "ConvTranspose"]
    assert all(cudnn_can_pad(n) for n in transposed), [list(a.ints) for n in transposed for a in n.attribute]
    if any(s > 1 for s in attrs.get("strides", [1])):
        assert transposed, "a strided Conv's VJP is a ConvTranspose"


def test_conv_same_dynamic_is_a_clear_error():
    """SAME pads of a strided window depend on the length. The input VJPs of Conv and the pools compute them at run
    time (test_conv_vjp, test_pooling: same_begin_at_run_time); the gradient of a weight computed from the input
    takes them as a Conv attribute, so there they need static sizes (stride 1's are (k - 1) d in all)."""
    from onnxattr.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="auto_pad=SAME_UPPER with strides above 1 needs static spatial "
                                                    "dims"):
        check_vjp("Conv", [("x", rng.standard_normal((1, 2, 5, 5)), False),
                           ("w", rng.standard_normal((2, 2, 3, 3)), False)],
                  {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, wrt=["x", "w"], dynamic={"x": (0, 2, 3)})


CONVT_CASES = [
    ((2, 4, 5, 5), (4, 3, 3, 3), {}),
    ((2, 4, 5, 5), (4, 3, 3, 3), {"strides": [2, 2], "pads": [1, 0, 0, 1], "output_padding": [1, 1]}),
    ((1, 4, 4, 6), (4, 2, 2, 3), {"group": 2, "strides": [2, 1], "dilations": [1, 2]}),
    ((1, 3, 6), (3, 2, 4), {"strides": [2], "pads": [1, 1]}),
    ((1, 2, 4, 4), (2, 3, 3, 3), {"strides": [2, 2], "output_shape": [9, 9]}),
    ((1, 2, 4, 4), (2, 3, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 2, 4, 4), (2, 3, 3, 3), {"strides": [2, 2], "auto_pad": "SAME_LOWER"}),  # odd total pad: differs
    # output_shape alone cuts an odd total pad as SAME_LOWER does (more at the begin), SAME_UPPER the other way
    ((1, 2, 4, 4), (2, 3, 3, 3), {"strides": [2, 2], "output_shape": [8, 6]}),
    ((1, 2, 4, 4), (2, 3, 3, 3), {"strides": [2, 2], "output_shape": [8, 6], "auto_pad": "SAME_UPPER"}),
    # output_shape past the full output (onnx's test_convtranspose_output_shape): zeros at the end
    ((1, 1, 3, 3), (1, 2, 3, 3), {"strides": [3, 2], "output_shape": [10, 8]}),
    ((1, 2, 3), (2, 2, 3), {"strides": [3], "output_shape": [11], "auto_pad": "SAME_LOWER"}),
]


@pytest.mark.parametrize("xs,ws,attrs", CONVT_CASES)
def test_conv_transpose_vjp(xs, ws, attrs):
    x = rng.standard_normal(xs)
    w = rng.standard_normal(ws)
    # onnx's reference ConvTranspose mishandles group > 1 and fails on an output_shape that cuts or extends the
    # output: use the exact linear check on onnxruntime (whose forward the compiled model runs)
    check_vjp("ConvTranspose", [("x", x, False), ("w", w, True)], attrs, dynamic=(0,),
              linear_ort=attrs.get("group", 1) > 1 or "output_shape" in attrs)


def _run_channel_scale(x, scale):
    return run_emitted(lambda b, t: channel_scale(b, t, scale), x)[0]


def test_channel_scale_multiplies_every_channel():
    x = rng.standard_normal((2, 32, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(_run_channel_scale(x, 1.0), x)
    np.testing.assert_array_equal(_run_channel_scale(x, 0.25), x * np.float32(0.25))
    np.testing.assert_allclose(_run_channel_scale(x, 1 / 49), x / np.float32(49), rtol=2e-7)


@pytest.mark.parametrize("shape,dtype", [((2, 12, 5, 5), np.float32), ((2, 16, 5), np.float32),
                                         ((2, 16, 5, 5), np.float64)])
def test_channel_scale_declines_what_the_blocked_layout_does_not_take(shape, dtype):
    """Channels not a multiple of 16, not 2-D, not float32: None (the caller writes a Mul)."""
    assert _run_channel_scale(np.ones(shape, dtype), 2.0) is None


@pytest.mark.parametrize("op,ws", [("Conv", (3, 2, 3, 3)), ("ConvTranspose", (2, 3, 3, 3))])
def test_a_bias_that_varies_gets_its_gradient(op, ws):
    """Conv(x, W, b) with b fed (or computed from the input): the bias gradient is g summed over the batch
    and spatial axes (it was dropped, silently)."""
    rng = np.random.default_rng(4)
    check_vjp(op, [("x", rng.standard_normal((2, 2, 5, 5)), False), ("w", rng.standard_normal(ws), True),
                   ("b", rng.standard_normal(3), False)], {"pads": [1, 1, 1, 1]}, wrt=["x", "b"])


@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 1]}, {"dilations": [1, 2], "pads": [1, 0, 1, 1]},
                                   {"strides": [2, 2], "pads": [0, 1, 1, 0], "dilations": [2, 1]}])
def test_col2im(attrs):
    """torch's F.fold: columns [N, C * 2 * 3, L] summed into a [5, 6] image; L from the geometry."""
    strides, dil, pads = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1]), attrs.get("pads", [0] * 4)
    image, block = [5, 6], [2, 3]
    blocks = [(image[k] + pads[k] + pads[k + 2] - dil[k] * (block[k] - 1) - 1) // strides[k] + 1 for k in (0, 1)]
    x = np.random.default_rng(5).standard_normal((2, 2 * 6, blocks[0] * blocks[1]))
    check_vjp("Col2Im", [("x", x, False), ("image", np.array(image, np.int64), True),
                         ("block", np.array(block, np.int64), True)], attrs, opset=18, dynamic=(0,))


@pytest.mark.parametrize("xs,ws,attrs", CONV_CASES)
@pytest.mark.parametrize("dynamic", [(0,), (0, 2, 3)])
def test_conv_weight_computed_from_the_input(xs, ws, attrs, dynamic):
    """A weight fed at run time, as dynamic filters and CondInst's mask head compute it from the input: its gradient
    (a Conv of x with g, batch and channels swapped) for every geometry above, grouped and depthwise included, with
    x's batch (and spatial) dims symbolic."""
    if attrs.get("auto_pad", "VALID") != "VALID" and any(s != 1 for s in attrs.get("strides", [])) \
            and len(dynamic) > 1:
        pytest.skip("strided auto_pad SAME needs static spatial dims")
    dynamic = tuple(d for d in dynamic if d < len(xs))
    check_vjp("Conv", [("x", rng.standard_normal(xs), False), ("w", rng.standard_normal(ws), False)], attrs,
              wrt=["x", "w"], dynamic={"x": dynamic})


def test_conv_weight_of_unknown_kernel_size():
    """A weight whose spatial dims are symbolic takes its kernel from kernel_shape; without it, a clear refusal."""
    x, w = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3))
    inputs = [("x", x, False), ("w", w, False)]
    check_vjp("Conv", inputs, {"kernel_shape": [3, 3], "strides": [2, 2]}, wrt=["w"], dynamic={"w": (0, 2, 3)})
    from onnxattr.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="Conv node 'node': a weight computed from the input needs a known"
                                                    " kernel size"):
        check_vjp("Conv", inputs, {"strides": [2, 2]}, wrt=["w"], dynamic={"w": (0, 2, 3)})


@pytest.mark.parametrize("xs,ws,attrs", CONVT_CASES)
def test_conv_transpose_weight_computed_from_the_input(xs, ws, attrs):
    """ConvTranspose is Conv's adjoint, so its weight's gradient is Conv's with the roles of g and x swapped; checked
    exactly on onnxruntime's forward (linear in the weight), output_shape cuts and extensions included."""
    check_vjp("ConvTranspose", [("x", rng.standard_normal(xs), False), ("w", rng.standard_normal(ws), False)], attrs,
              wrt=["w"], dynamic=(0,), linear_ort=True)
