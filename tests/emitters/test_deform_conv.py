"""onnxattr/emitters/deform_conv.py: DeformConv's VJP for x, the weight, the offsets, the bias and the mask against
float64 central differences of DeformConv written from its definition in numpy (bilinear sampling, a corner outside
x counting 0, as torchvision's deform_conv2d), after checking that onnxruntime's forward and onnx's reference
DeformConv compute that function. The reference itself is not the check: it rounds like float32 (1e-7 of the
output from a float64 evaluation), which its difference quotients turn into errors of 0.4% in the offsets'
gradient. Offsets of up to +-3 pixels put taps across and beyond every border."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

from onnxattr.errors import UnsupportedModelError
from tests.vjp_check import check_vjp, node_model, vjp_model

rng = np.random.default_rng(29)

# (x shape, W shape, offset_group, attributes): square 3x3 taps with a mask and bias; grouped, strided and dilated
# with uneven pads; a 1x2 kernel
CASES = [
    ((2, 4, 5, 6), (3, 4, 3, 3), 2, {"pads": [1, 1, 1, 1]}),
    ((1, 4, 7, 6), (4, 2, 3, 3), 1, {"group": 2, "strides": [2, 1], "dilations": [2, 1], "pads": [2, 0, 1, 1]}),
    ((2, 3, 4, 5), (2, 3, 1, 2), 3, {}),
]


def deform_conv(x, w, off, b=None, m=None, kernel_shape=None, offset_group=1, pads=(0, 0, 0, 0), strides=(1, 1),
                dilations=(1, 1), group=1):
    """DeformConv in float64 from the definition: taps at (oh s + i d - pad + offset_y, ow s + j d - pad + offset_x)
    sampled bilinearly (corners outside count 0), times the mask, then a convolution of those columns."""
    n, c, h, wd = x.shape
    kh, kw = kernel_shape
    oh, ow = off.shape[2:]
    o = off.reshape(n, offset_group, kh, kw, 2, oh, ow)
    py = ((np.arange(oh) * strides[0] - pads[0])[:, None] + (np.arange(kh) * dilations[0])[:, None, None, None]
          + o[:, :, :, :, 0])  # [N, G, kh, kw, OH, OW]
    px = (np.arange(ow) * strides[1] - pads[1]) + (np.arange(kw) * dilations[1])[:, None, None] + o[:, :, :, :, 1]
    xg = x.reshape(n, offset_group, c // offset_group, h, wd)
    cols = 0.0
    for row in (np.floor(py), np.floor(py) + 1):
        for col in (np.floor(px), np.floor(px) + 1):
            weight = (1 - np.abs(py - row)) * (1 - np.abs(px - col))
            weight = weight * ((row >= 0) & (row <= h - 1) & (col >= 0) & (col <= wd - 1))
            r, q = np.clip(row, 0, h - 1).astype(int), np.clip(col, 0, wd - 1).astype(int)
            values = np.stack([np.stack([xg[k, a][:, r[k, a], q[k, a]] for a in range(offset_group)])
                               for k in range(n)])  # [N, G, Cg, kh, kw, OH, OW]
            cols = cols + values * weight[:, :, None]
    if m is not None:
        cols = cols * m.reshape(n, offset_group, 1, kh, kw, oh, ow)
    cols = cols.reshape(n, group, c // group * kh * kw, oh, ow)
    out = np.einsum("gok,ngkhw->ngohw", w.reshape(group, len(w) // group, -1), cols).reshape(n, len(w), oh, ow)
    return out if b is None else out + b[:, None, None]


def _out_size(size, k, stride, dilation, pad):
    return (size + pad - dilation * (k - 1) - 1) // stride + 1


def _inputs(x_shape, w_shape, offset_group, attrs, mask, bias):
    n, _, h, w = x_shape
    kh, kw = w_shape[2:]
    strides, dilations = attrs.get("strides", [1, 1]), attrs.get("dilations", [1, 1])
    pads = attrs.get("pads", [0, 0, 0, 0])
    oh = _out_size(h, kh, strides[0], dilations[0], pads[0] + pads[2])
    ow = _out_size(w, kw, strides[1], dilations[1], pads[1] + pads[3])
    ins = [("x", rng.standard_normal(x_shape), False), ("w", rng.standard_normal(w_shape), False),
           ("off", rng.uniform(-3.0, 3.0, (n, offset_group * 2 * kh * kw, oh, ow)), False)]
    ins.append(("b", rng.standard_normal(w_shape[0]), False) if bias else ("", None, None))
    if mask:
        ins.append(("m", rng.uniform(0.1, 1.0, (n, offset_group * kh * kw, oh, ow)), False))
    return ins, {"kernel_shape": [kh, kw], "offset_group": offset_group, **attrs}


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("mask,bias", [(True, True), (False, False)])
def test_deform_conv(case, mask, bias):
    ins, attrs = _inputs(*CASES[case], mask, bias)
    wrt = [name for name, _, _ in ins if name]
    check_vjp("DeformConv", ins, attrs, wrt=wrt, opset=19, dynamic=(0,), numpy_ref=_definition(ins, attrs))


def _definition(ins, attrs):
    """The numpy definition as check_vjp's reference, once it is checked to be what onnxruntime and onnx's reference
    evaluator compute."""
    def ref(feeds):
        return deform_conv(feeds["x"], feeds["w"], feeds["off"], feeds.get("b"), feeds.get("m"), **attrs)

    model = node_model("DeformConv", ins, attrs, opset=19)
    feeds = {name: a for name, a, const in ins if name and not const}
    want = ref({name: a for name, a, _ in ins if name})
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {name: a.astype(np.float32) for name, a in feeds.items()})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    model64 = node_model("DeformConv", ins, attrs, dtype=np.float64, opset=19)
    got = ReferenceEvaluator(model64).run(None, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
    return ref


def test_deform_conv_constant_weight():
    """A weight stored in the model (the usual case) is reshaped when compiling."""
    ins, attrs = _inputs(*CASES[0], True, True)
    ins[1] = ("w", ins[1][1], True)
    check_vjp("DeformConv", ins, attrs, wrt=["x", "off", "m"], opset=19, numpy_ref=_definition(ins, attrs))


def test_deform_conv_3d_refused():
    ins = [("x", rng.standard_normal((1, 2, 5)), False), ("w", rng.standard_normal((2, 2, 3)), True),
           ("off", rng.standard_normal((1, 6, 3)), False)]
    with pytest.raises(UnsupportedModelError, match="DeformConv node 'node': only 2-D DeformConv"):
        check_vjp("DeformConv", ins, {"kernel_shape": [3]}, opset=19)


@pytest.mark.parametrize("constant_weight", [False, True])
def test_deform_conv_float64(constant_weight):
    """A float64 DeformConv's VJP runs on onnxruntime's CPU provider (its W^T g was a 1 x 1 ConvTranspose, which that
    provider has no float64 kernel for) and equals the definition's float64 central differences to 1e-6 of the
    scale (float64 rounding through h = 1e-6 is ~1e-10)."""
    ins, attrs = _inputs(*CASES[1], True, True)
    ins[1] = ("w", ins[1][1], constant_weight)
    ref = _definition(ins, attrs)
    wrt = ["x", "off", "m"] + ([] if constant_weight else ["w"])
    model = vjp_model(node_model("DeformConv", ins, attrs, dtype=np.float64, opset=19), wrt)
    given = {name: a for name, a, _ in ins if name}
    v = rng.standard_normal(ref(given).shape)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {name: a for name, a, const in ins if name and not const}
    grads = session.run([f"grad_{n}" for n in wrt], {**feeds, "cotangent": v})
    for name, grad in zip(wrt, grads):
        assert grad.dtype == np.float64
        u = rng.standard_normal(given[name].shape)
        s = [float(np.sum(v * ref({**given, name: given[name] + step * u}))) for step in (1e-6, -1e-6)]
        numeric, analytic = (s[0] - s[1]) / 2e-6, float(np.sum(grad * u))
        assert abs(analytic - numeric) <= 1e-6 * (abs(numeric) + float(np.sum(np.abs(grad * u)))), name
