"""onnxattr/emitters/pooling.py: MaxPool (tiling windows: ArgMax + scatter; else indices + scatter-add),
AveragePool, global pools."""

import numpy as np
import onnxruntime as ort
import pytest

from onnxattr.errors import UnsupportedModelError
from tests.vjp_check import check_vjp, node_model, run_vjp, vjp_model

rng = np.random.default_rng(5)

POOL_CASES = [
    ((2, 3, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ((2, 3, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2]}),  # overlapping windows
    ((1, 2, 7, 8), {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1]}),
    ((1, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    ((1, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((2, 3, 6, 9), {"kernel_shape": [3, 3], "strides": [3, 3], "auto_pad": "SAME_UPPER"}),  # tiles: no pads
    ((1, 2, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}),
]


@pytest.mark.parametrize("xs,attrs", POOL_CASES)
def test_maxpool_vjp(xs, attrs):
    check_vjp("MaxPool", [("x", rng.standard_normal(xs), False)], attrs, dynamic=(0,))


def test_maxpool_dilated():
    check_vjp("MaxPool", [("x", rng.standard_normal((1, 2, 9, 9)), False)],
              {"kernel_shape": [2, 2], "dilations": [2, 2]})


@pytest.mark.parametrize("xs,attrs", POOL_CASES)
@pytest.mark.parametrize("cip", [0, 1])
def test_avgpool_vjp(xs, attrs, cip):
    check_vjp("AveragePool", [("x", rng.standard_normal(xs), False)], {**attrs, "count_include_pad": cip},
              dynamic=(0,))


# (attributes over a 3 x 4 map, the kernel the VJP keeps)
HUGE_WINDOWS = [({"kernel_shape": [64, 64], "strides": [64, 64], "ceil_mode": 1}, [3, 4]),
                ({"kernel_shape": [5, 6], "strides": [2, 3], "pads": [1, 2, 1, 0], "ceil_mode": 1}, [4, 6])]


def small_kernels(op, inputs, attrs, opset=17):
    """The shapes of the VJP's depthwise ones kernels (initializers [3, 1, kh, kw])."""
    model = vjp_model(node_model(op, inputs, attrs, dynamic=(0,), opset=opset), ["x"])
    return [list(t.dims) for t in model.graph.initializer if len(t.dims) == 4 and t.dims[0] == 3]


@pytest.mark.parametrize("attrs,kept", HUGE_WINDOWS)
def test_avgpool_window_larger_than_the_input(attrs, kept):
    """HF EfficientNet pools its last map with AvgPool2d(hidden_dim, ceil_mode=True), a window far larger than
    the map: the VJP's ones kernel holds only the taps that can land inside x (a 64 x 64 window over a 3 x 4
    map gives a 3 x 4 kernel) and the gradient is the same (on onnxruntime: onnx's reference divides by zero)."""
    inputs = [("x", rng.standard_normal((2, 3, 3, 4)), False)]
    check_vjp("AveragePool", inputs, attrs, dynamic=(0,), linear_ort=True)
    assert [k[2:] for k in small_kernels("AveragePool", inputs, attrs)] == [kept]


def test_lppool_window_larger_than_the_input():
    """The same cut for LpPool (opset 18 has ceil_mode): one window over all of x, y = sqrt(sum x^2)."""
    attrs = {**HUGE_WINDOWS[0][0], "p": 2}
    inputs = [("x", rng.uniform(0.5, 1.5, (2, 3, 3, 4)), False)]
    check_vjp("LpPool", inputs, attrs, dynamic=(0,), opset=18,
              numpy_ref=lambda v: np.sqrt((v["x"] ** 2).sum(axis=(2, 3), keepdims=True)))
    assert [k[2:] for k in small_kernels("LpPool", inputs, attrs, opset=18)] == [[3, 4]]


def test_avgpool_dynamic_spatial_without_pads():
    check_vjp("AveragePool", [("x", rng.standard_normal((2, 3, 6, 6)), False)],
              {"kernel_shape": [2, 2], "strides": [2, 2]}, dynamic=(0, 2, 3))


# padded or ceil_mode windows over spatial dims declared symbolic (an export with dynamic height and width)
DYNAMIC_PADDED = [
    ((1, 2, 7, 8), {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1]}, 17),
    ((2, 3, 6, 6), {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1, 1, 1, 1]}, 17),  # Inception's 3x3 pool
    ((1, 2, 9), {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, 17),
    ((1, 2, 7, 7), {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, 18),
    ((1, 2, 8, 7), {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 1, 0, 1], "ceil_mode": 1}, 18),
    ((1, 2, 9, 9), {"kernel_shape": [2, 3], "dilations": [2, 1], "pads": [1, 1, 0, 1]}, 19),
    # stride-1 SAME pads do not depend on the length: (k - 1) d in all, the odd one at the end (UPPER) or start
    ((1, 2, 7, 6), {"kernel_shape": [2, 3], "auto_pad": "SAME_UPPER"}, 17),
    ((1, 2, 7, 6), {"kernel_shape": [2, 3], "auto_pad": "SAME_LOWER"}, 17),
    # strided SAME: the pads depend on the sizes, found at run time
    ((1, 2, 7, 8), {"kernel_shape": [3, 3], "strides": [2, 3], "auto_pad": "SAME_UPPER"}, 17),
    ((1, 2, 9, 6), {"kernel_shape": [2, 4], "strides": [2, 2], "auto_pad": "SAME_LOWER"}, 17),
]


@pytest.mark.parametrize("xs,attrs,opset", DYNAMIC_PADDED)
@pytest.mark.parametrize("cip", [0, 1])
def test_avgpool_dynamic_spatial_with_pads_or_ceil_mode(xs, attrs, opset, cip):
    """The divisor (the count of the window's taps inside x, or inside the pads too) is counted at run time by a
    sum-pool of ones (refused before: 'padding or ceil_mode with dynamic spatial dims')."""
    check_vjp("AveragePool", [("x", rng.standard_normal(xs), False)], {**attrs, "count_include_pad": cip},
              dynamic=(0, *range(2, len(xs))), opset=opset)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
def test_lppool_dynamic_spatial_strided_same(auto_pad):
    """LpPool's window sums transposed with the SAME pads found at run time."""
    check_vjp("LpPool", [("x", rng.uniform(0.5, 1.5, (1, 2, 7, 8)), False)],
              {"kernel_shape": [3, 2], "strides": [2, 3], "auto_pad": auto_pad, "p": 2}, dynamic=(0, 2, 3))


def test_avgpool_dynamic_spatial_with_ceil_mode_before_opset_18_is_refused():
    """Counting a ceil_mode window's taps at run time takes LpPool's ceil_mode (opset 18)."""
    with pytest.raises(UnsupportedModelError, match="AveragePool node 'node': ceil_mode with dynamic spatial dims "
                                                    "needs opset 18"):
        check_vjp("AveragePool", [("x", rng.standard_normal((1, 2, 7, 7)), False)],
                  {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, dynamic=(0, 2, 3), opset=17)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
@pytest.mark.parametrize("dynamic", [(), (0, 2, 3)])
def test_global_pool_vjp(op, dynamic):
    check_vjp(op, [("x", rng.standard_normal((2, 3, 4, 5)), False)], dynamic=dynamic)


@pytest.mark.parametrize("dynamic", [(), (0,)])
def test_global_avgpool_vjp_as_channel_scale(dynamic):
    """16 channels and a static map: the 1/positions scale is a depthwise Conv (conv.channel_scale)."""
    check_vjp("GlobalAveragePool", [("x", rng.standard_normal((2, 16, 3, 5)), False)], dynamic=dynamic)


@pytest.mark.parametrize("xs,k", [((2, 3, 6, 8), 2), ((1, 2, 9, 6), 3)])
@pytest.mark.parametrize("dynamic,auto_pad", [((), "NOTSET"), ((0,), "NOTSET"), ((), "SAME_LOWER")])
def test_maxpool_vjp_ties_go_to_the_first_maximum(xs, k, dynamic, auto_pad):
    """Windows that tile the input (kernel = strides): on ties (ReLU zeros, repeated values) the whole
    gradient goes to the first maximum in row-major window order, as MaxPool's Indices say."""
    x = np.floor(rng.standard_normal(xs) * 1.5).clip(0, None).astype(np.float32)  # many ties
    g = rng.standard_normal((xs[0], xs[1], xs[2] // k, xs[3] // k)).astype(np.float32)
    (got,) = run_vjp("MaxPool", [("x", x, False)], g, {"kernel_shape": [k, k], "strides": [k, k], "auto_pad": auto_pad},
                     dynamic=dynamic)
    want = np.zeros_like(x)
    for n, c, i, j in np.ndindex(*g.shape):
        win = x[n, c, i * k:(i + 1) * k, j * k:(j + 1) * k]
        a, bb = np.unravel_index(np.argmax(win), win.shape)  # first maximum, row-major
        want[n, c, i * k + a, j * k + bb] = g[n, c, i, j]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("attrs,tiled", [({"kernel_shape": [2, 2], "strides": [2, 2]}, True),
                                          ({"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_UPPER"}, True),
                                          ({"kernel_shape": [3, 3], "strides": [3, 3], "auto_pad": "SAME_LOWER"}, True),
                                          ({"kernel_shape": [3, 3], "strides": [2, 2]}, False)])
def test_maxpool_vjp_asks_for_indices_only_when_windows_overlap(attrs, tiled):
    """Tiling windows take the SpaceToDepth/ArgMax path: the forward MaxPool keeps its single output
    (onnxruntime's kernel with Indices is many times slower) and nothing is scatter-added."""
    m = vjp_model(node_model("MaxPool", [("x", rng.standard_normal((1, 2, 6, 6)), False)], attrs), ["x"])
    pool = next(n for n in m.graph.node if n.op_type == "MaxPool")
    scatters = [n for n in m.graph.node if n.op_type == "ScatterElements"]
    assert (len(pool.output) == 1) == tiled
    assert [a.s for n in scatters for a in n.attribute if a.name == "reduction"] == ([] if tiled else [b"add"])
    assert any(n.op_type == "SpaceToDepth" for n in m.graph.node) == tiled


def test_maxpool_vjp_of_an_empty_batch():
    """A dynamic batch of 0 samples gives an empty gradient on both paths (no reshape by -1 of nothing)."""
    for attrs in ({"kernel_shape": [2, 2], "strides": [2, 2]}, {"kernel_shape": [3, 3], "strides": [2, 2]}):
        x = np.zeros((0, 3, 6, 8), np.float32)
        ho, wo = (3, 4) if attrs["kernel_shape"][0] == 2 else (2, 3)
        (got,) = run_vjp("MaxPool", [("x", x, False)], np.zeros((0, 3, ho, wo), np.float32), attrs, dynamic=(0,))
        assert got.shape == x.shape


def test_global_maxpool_ties_go_to_the_first_maximum():
    """Ties in a plane (ReLU zeros, a repeated maximum): the whole gradient goes to the first maximum of
    the flattened plane, as torch's max-pool indices and MaxPool's do."""
    x = np.array([[[[0, 2, 1], [2, 0, 2]], [[0, 0, 0], [0, 0, 0]], [[-1, 3, 3], [3, -2, 0]]]], np.float32)
    g = np.array([[[[5]], [[7]], [[-2]]]], np.float32)
    (got,) = run_vjp("GlobalMaxPool", [("x", x, False)], g)
    want = np.zeros_like(x)
    want[0, 0, 0, 1], want[0, 1, 0, 0], want[0, 2, 0, 1] = 5, 7, -2
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("attrs", [{"kernel_shape": [2, 2]},
                                   {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
                                   {"kernel_shape": [2, 3], "strides": [1, 2]}])
def test_lp_pool(p, attrs):
    """y = (window sum of |x|^p)^(1/p); x kept away from 0, where |x|^p has a kink for p = 1."""
    x = rng.standard_normal((2, 3, 6, 7))
    x = np.where(np.abs(x) < 0.1, 0.1 * np.sign(x) + x, x)
    check_vjp("LpPool", [("x", x, False)], {**attrs, "p": p}, dynamic=(0,), opset=18,
              numpy_ref=lambda f: lp_pool_numpy(f["x"], p, **attrs))


def lp_pool_numpy(x, p, kernel_shape, strides=(1, 1), pads=(0, 0, 0, 0)):
    """LpPool in float64 from its definition (zero padding adds nothing to the sum)."""
    xp = np.pad(np.abs(x) ** p, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    (kh, kw), (sh, sw) = kernel_shape, strides
    oh, ow = (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1
    out = np.zeros(x.shape[:2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            out[:, :, i, j] = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw].sum((2, 3))
    return out ** (1.0 / p)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_global_lp_pool(p):
    x = rng.standard_normal((2, 3, 4, 5))
    x = np.where(np.abs(x) < 0.1, 0.1 * np.sign(x) + x, x)
    check_vjp("GlobalLpPool", [("x", x, False)], {"p": p}, dynamic=(0,),
              numpy_ref=lambda f: (np.abs(f["x"]) ** p).sum((2, 3), keepdims=True) ** (1.0 / p))


def max_pool_indices(shape, kernel=2):
    """MaxPool's Indices for a random tensor of ``shape`` (N, C, H, W), windows kernel x kernel tiling it: flat
    indices over N*C*H*W, one per window, as MaxUnpool reads them."""
    x = rng.standard_normal(shape)
    n, c, h, w = shape
    idx = np.zeros((n, c, h // kernel, w // kernel), np.int64)
    for i in range(h // kernel):
        for j in range(w // kernel):
            win = x[:, :, i * kernel:(i + 1) * kernel, j * kernel:(j + 1) * kernel].reshape(n, c, -1)
            di, dj = np.divmod(win.argmax(2), kernel)
            plane = (np.arange(n)[:, None] * c + np.arange(c)) * h * w
            idx[:, :, i, j] = plane + (i * kernel + di) * w + j * kernel + dj
    return idx


@pytest.mark.parametrize("dynamic", [(), (0,)])
def test_max_unpool(dynamic):
    """MaxUnpool (torch's max_unpool2d, SegNet's decoder) writes x at MaxPool's indices: dx = g at those indices."""
    idx = max_pool_indices((2, 3, 4, 6))
    check_vjp("MaxUnpool", [("x", rng.standard_normal((2, 3, 2, 3)), False), ("i", idx, True)],
              {"kernel_shape": [2, 2], "strides": [2, 2]}, dynamic=dynamic)


@pytest.mark.parametrize("with_indices", [False, True])
def test_maxpool_column_major_indices(with_indices):
    """storage_order=1 numbers the Indices output column-major. The VJP reads row-major indices from a twin of the
    node, so overlapping windows (which the tiled path does not take) get the gradient, and an Indices output the
    model itself returns keeps its column-major numbering."""
    x = rng.standard_normal((2, 3, 7, 6))
    attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "storage_order": 1}
    check_vjp("MaxPool", [("x", x, False)], attrs, n_out=2 if with_indices else 1)
    if with_indices:
        model = vjp_model(node_model("MaxPool", [("x", x, False)], attrs, n_out=2), ["x"])
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        plain = ort.InferenceSession(node_model("MaxPool", [("x", x, False)], attrs, n_out=2).SerializeToString(),
                                     providers=["CPUExecutionProvider"])
        feeds = {"x": x.astype(np.float32)}
        y1 = sess.run(["y1"], {**feeds, "cotangent": np.zeros((2, 3, 3, 2), np.float32)})[0]
        np.testing.assert_array_equal(y1, plain.run(["y1"], feeds)[0])
