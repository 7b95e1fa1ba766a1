"""onnxattr/emitters/grid_sample.py: GridSample's VJP, images and volumes, for the input (a linear map: checked
exactly on onnxruntime) and for the grid (float64 central differences of a numpy GridSample, points kept away from
pixel centres, where the bilinear weights have kinks)."""

import itertools

import numpy as np
import onnxruntime as ort
import pytest

from tests.vjp_check import check_vjp, node_model, vjp_model

rng = np.random.default_rng(14)


def grid_points(shape, size=(4, 5), align=0, spread=1.2):
    """Grid coordinates in [-spread, spread] whose pixel coordinates stay at least 0.1 from an integer."""
    g = rng.uniform(-spread, spread, shape)
    for k, length in ((0, size[1]), (1, size[0])):
        pos = (g[..., k] + 1) * (length - 1) / 2 if align else ((g[..., k] + 1) * length - 1) / 2
        frac = pos - np.floor(pos)
        pos = np.floor(pos) + np.clip(frac, 0.1, 0.9)
        g[..., k] = pos * 2 / (length - 1) - 1 if align else (2 * pos + 1) / length - 1
    return g


def reflect(p, low, high):
    """p mirrored at low and high until it lies between them."""
    if high == low:
        return 0.0
    while p < low or p > high:
        p = 2 * low - p if p < low else 2 * high - p
    return p


def grid_sample_numpy(x, grid, padding, align):
    """Bilinear GridSample in float64, written from the operator's definition (onnx's reference evaluator agrees
    with onnxruntime on the values but not, by 0.3 %, on their slope along the grid)."""
    n, c, h, w = x.shape
    out = np.zeros((n, c) + grid.shape[1:3])
    for b in range(n):
        for i in range(grid.shape[1]):
            for j in range(grid.shape[2]):
                pos = []
                for g, length in ((grid[b, i, j, 0], w), (grid[b, i, j, 1], h)):
                    p = (g + 1) * (length - 1) / 2 if align else ((g + 1) * length - 1) / 2
                    if padding == "reflection":
                        p = reflect(p, 0.0 if align else -0.5, length - 1.0 if align else length - 0.5)
                    pos.append(min(max(p, 0.0), length - 1.0) if padding in ("border", "reflection") else p)
                (px, py), total = pos, np.zeros(c)
                x0, y0 = int(np.floor(px)), int(np.floor(py))
                for xi, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
                    for yi, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
                        if 0 <= xi < w and 0 <= yi < h:
                            total = total + wx * wy * x[b, :, yi, xi]
                out[b, :, i, j] = total
    return out


def cubic_kernel(s, a=-0.75):
    s = abs(s)
    if s <= 1:
        return ((a + 2) * s - (a + 3)) * s * s + 1
    return ((a * s - 5 * a) * s + 8 * a) * s - 4 * a if s < 2 else 0.0


def grid_sample_cubic_numpy(x, grid, padding, align):
    """Bicubic GridSample in float64 as torch defines it (onnxruntime agrees; onnx's reference clips the point for
    border): the point is not padded; each of its 16 taps is clipped (border), mirrored then clipped (reflection) or
    0 outside (zeros)."""
    n, c, h, w = x.shape
    out = np.zeros((n, c) + grid.shape[1:3])

    def tap(i, length):
        if padding == "reflection":
            i = reflect(float(i), 0.0 if align else -0.5, length - 1.0 if align else length - 0.5)
        if padding in ("border", "reflection"):
            i = min(max(i, 0.0), length - 1.0)
        return int(round(i)) if 0 <= i <= length - 1 else None

    for b in range(n):
        for i in range(grid.shape[1]):
            for j in range(grid.shape[2]):
                pos = [(g + 1) * (length - 1) / 2 if align else ((g + 1) * length - 1) / 2
                       for g, length in ((grid[b, i, j, 0], w), (grid[b, i, j, 1], h))]
                x0, y0 = int(np.floor(pos[0])), int(np.floor(pos[1]))
                total = np.zeros(c)
                for xi in range(x0 - 1, x0 + 3):
                    for yi in range(y0 - 1, y0 + 3):
                        tx, ty = tap(xi, w), tap(yi, h)
                        if tx is not None and ty is not None:
                            total = total + cubic_kernel(pos[0] - xi) * cubic_kernel(pos[1] - yi) * x[b, :, ty, tx]
                out[b, :, i, j] = total
    return out


def check_against_definition(x, grid, attrs, definition):
    """onnxruntime's GridSample (opset 20) equals the numpy ``definition`` at (x, grid) first; then both VJPs equal
    the definition's float64 central differences."""
    sess = ort.InferenceSession(node_model("GridSample", [("x", x, False), ("grid", grid, False)], attrs,
                                           opset=20).SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x.astype(np.float32), "grid": grid.astype(np.float32)})[0]
    np.testing.assert_allclose(y, definition(x, grid), rtol=1e-5, atol=1e-5)
    check_vjp("GridSample", [("x", x, False), ("grid", grid, False)], attrs, wrt=["x", "grid"], opset=20,
              numpy_ref=lambda f: definition(f["x"], f["grid"]))


@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample_cubic(padding, align):
    """Cubic mode (opset 20's name; opset 16's is bicubic), points inside and well outside the image: onnxruntime's
    forward equals the numpy definition first, then both VJPs equal its float64 central differences."""
    x = rng.standard_normal((2, 3, 4, 5))
    grid = grid_points((2, 3, 6, 2), align=align, spread=2.5)
    attrs = {"mode": "cubic", "padding_mode": padding, "align_corners": align}
    check_against_definition(x, grid, attrs, lambda x, grid: grid_sample_cubic_numpy(x, grid, padding, align))


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample_input(mode, padding, align):
    x = rng.standard_normal((2, 3, 4, 5))
    grid = grid_points((2, 3, 6, 2), align=align)
    check_vjp("GridSample", [("x", x, False), ("grid", grid, True)],
              {"mode": mode, "padding_mode": padding, "align_corners": align}, dynamic=(0,), linear_ort=True)


@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [0, 1])
@pytest.mark.parametrize("spread", [1.2, 3.5])
def test_grid_sample_grid(padding, align, spread):
    """Points inside and outside the image (spread 1.2; 3.5 mirrors some several times): border clips, zeros pads,
    reflection mirrors. Opset 20 names the mode
    'linear' (opset 16's 'bilinear'). First the numpy reference is checked against onnxruntime's values."""
    x = rng.standard_normal((2, 3, 4, 5))
    grid = grid_points((2, 3, 6, 2), align=align, spread=spread)
    attrs = {"mode": "linear", "padding_mode": padding, "align_corners": align}
    check_against_definition(x, grid, attrs, lambda x, grid: grid_sample_numpy(x, grid, padding, align))


def test_grid_sample_nearest_grid_gets_zero():
    grads = check_vjp("GridSample", [("x", rng.standard_normal((1, 2, 4, 5)), False),
                                     ("grid", grid_points((1, 2, 3, 2)), False)], {"mode": "nearest"},
                      wrt=["x", "grid"])
    assert not grads["grid"].any()


def test_grid_sample_bicubic_at_opset_16():
    """Opset 16 names the mode bicubic; the x VJP is linear in x (checked on onnxruntime's own forward)."""
    check_vjp("GridSample", [("x", rng.standard_normal((1, 2, 4, 5)), False),
                             ("grid", grid_points((1, 2, 3, 2)), True)], {"mode": "bicubic"}, opset=16,
              linear_ort=True)


def volume_points(shape, size, align, spread):
    """grid_points for a volume: [N, Do, Ho, Wo, 3] over x's (D, H, W) = size, each pixel coordinate at least 0.1
    from an integer."""
    g = rng.uniform(-spread, spread, shape)
    for k, length in enumerate(reversed(size)):
        pos = (g[..., k] + 1) * (length - 1) / 2 if align else ((g[..., k] + 1) * length - 1) / 2
        pos = np.floor(pos) + np.clip(pos - np.floor(pos), 0.1, 0.9)
        g[..., k] = pos * 2 / (length - 1) - 1 if align else (2 * pos + 1) / length - 1
    return g


def grid_sample_volume_numpy(x, grid, padding, align):
    """Trilinear GridSample in float64 from the operator's definition: grid[..., 0] along the width, 1 the height,
    2 the depth; the 8 corners weighted by the products of their linear weights, 0 outside for zeros."""
    n, c = x.shape[:2]
    sizes = x.shape[:1:-1]  # (W, H, D), in the grid's component order
    out = np.zeros((n, c) + grid.shape[1:4])
    for b in range(n):
        for at in np.ndindex(*grid.shape[1:4]):
            pos = []
            for g, length in zip(grid[(b,) + at], sizes):
                p = (g + 1) * (length - 1) / 2 if align else ((g + 1) * length - 1) / 2
                if padding == "reflection":
                    p = reflect(p, 0.0 if align else -0.5, length - 1.0 if align else length - 0.5)
                pos.append(min(max(p, 0.0), length - 1.0) if padding in ("border", "reflection") else p)
            total = np.zeros(c)
            for corner in itertools.product((0, 1), repeat=3):
                index = [int(np.floor(p)) + o for p, o in zip(pos, corner)]
                weight = np.prod([1 - abs(p - i) for p, i in zip(pos, index)])
                if all(0 <= i < length for i, length in zip(index, sizes)):
                    total = total + weight * x[b, :, index[2], index[1], index[0]]
            out[(b, slice(None)) + at] = total
    return out


@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_grid_sample_volume_input(mode, padding):
    """A volume [N, C, D, H, W] (opset 20): the VJP for x, a linear map, on onnxruntime's own forward."""
    x = rng.standard_normal((2, 3, 3, 4, 5))
    check_vjp("GridSample", [("x", x, False), ("grid", volume_points((2, 2, 3, 4, 3), (3, 4, 5), 0, 1.2), True)],
              {"mode": mode, "padding_mode": padding}, dynamic=(0,), opset=20, linear_ort=True)


@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align", [0, 1])
def test_grid_sample_volume_grid(padding, align):
    """Trilinear sampling of a volume, points inside and outside (spread 2.5): the numpy definition first equals
    onnxruntime's forward, then both VJPs equal its float64 central differences."""
    x = rng.standard_normal((2, 3, 3, 4, 5))
    grid = volume_points((2, 2, 3, 2, 3), (3, 4, 5), align, 2.5)
    attrs = {"mode": "linear", "padding_mode": padding, "align_corners": align}
    check_against_definition(x, grid, attrs, lambda x, grid: grid_sample_volume_numpy(x, grid, padding, align))


@pytest.mark.parametrize("align", [0, 1])
@pytest.mark.parametrize("size", [[2, 3, 4, 5], [2, 1, 3, 4, 2], [2, 3, 1, 5]])
def test_affine_grid(align, size):
    """torch.nn.functional.affine_grid at opset 20 (the legacy exporter's spatial transformer): a linear map of
    theta, so checked on onnxruntime; 2-D and 3-D. The base grid is a constant (no AffineGrid appended:
    onnxruntime's CUDA provider has none), except for a length 1 under align_corners, whose base onnxruntime
    puts at 1 (torch at 0, onnx's reference at -1): AffineGrid of the identity makes it there."""
    k = len(size) - 2
    theta = rng.standard_normal((2, k, k + 1))
    inputs = [("theta", theta, False), ("size", np.array(size, np.int64), True)]
    check_vjp("AffineGrid", inputs, {"align_corners": align}, dynamic=(0,), opset=20, linear_ort=True)
    appended = [n.op_type for n in vjp_model(node_model("AffineGrid", inputs, {"align_corners": align},
                                                        dynamic=(0,), opset=20), ["theta"], "y0").graph.node]
    assert appended.count("AffineGrid") == (2 if align and 1 in size[2:] else 1)
