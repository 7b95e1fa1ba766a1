"""GridSample and AffineGrid, the sampling of a spatial transformer.

GridSample: y[n, c, i, j] samples x[n, c] at the grid's point (grid[n, i, j, 0] along the width,
grid[n, i, j, 1] along the height, in [-1, 1]); a volume's grid[n, d, i, j, 2] goes along the depth. The
formulas below, written for an image, hold per axis: a point's taps are the products of each axis's taps (4 or 8
corners, 16 cubic taps), weighted by the product of the axes' weights, and d y / d ix takes d wx in place of wx.

The point's pixel coordinates are ix = (gx + 1)(W - 1) / 2 (align_corners) or ((gx + 1) W - 1) / 2, clipped to
[0, W - 1] for padding_mode border. Linear mode: with x0 = floor(ix), x1 = x0 + 1, wx1 = ix - x0, wx0 = 1 - wx1 (and
the same along the height), y = sum over the four corners of wx * wy * x[corner], a corner outside x counting 0.
padding_mode reflection first mirrors ix at the ends of [0, W - 1] (align_corners) or [-0.5, W - 0.5] until it
lies inside, then clips it to [0, W - 1]; d ix / d gx then changes sign with each mirror.
So dx is g * wx * wy scattered (added) to the four corners, and
d ix = sum_c g * (wy0 (x[y0, x1] - x[y0, x0]) + wy1 (x[y1, x1] - x[y1, x0])) times d ix / d gx (0 where border
clips), d iy likewise. Nearest mode: g goes to the rounded point, the grid gets 0. Cubic mode: 16 taps
floor(ix) - 1 .. floor(ix) + 2 (and along the height) weighted by the cubic convolution kernel (A = -0.75) at their
distance; the point itself is not padded, each tap is (clipped for border, mirrored for reflection, 0 outside
for zeros), as in torch and onnxruntime (onnx's reference clips the point for border).

AffineGrid: grid[n, p] = theta[n] @ (base[p], 1) with base[p] the normalized coordinates of output point p, so
d theta[n] = sum over p of g[n, p] (base[p], 1)^T, one MatMul; (base, 1) is a constant when the grid's sizes are
known, else AffineGrid itself applied to the identity transform (onnxruntime's CUDA provider has no AffineGrid).
"""

import itertools

import numpy as np
from onnx import TensorProto

from onnxattr.emitters.pooling import scatter_add
from onnxattr.emitters.registry import node_attr, register
from onnxattr.errors import UnsupportedModelError

_LINEAR = ("linear", "bilinear")
_CUBIC = ("cubic", "bicubic")
_NEAREST = "nearest"


class _Axis:
    """One sampled axis: the grid coordinate's pixel coordinate, its clip mask (border), and d ix / d g."""

    def __init__(self, b, node, x, grid, k, axis, pad_source=True):
        self.b = b
        g = b.op("Gather", [grid, b.const(k, np.int64)], axis=b.rank(x) - 1)  # [N, Ho, Wo] (or [N, Do, Ho, Wo])
        self.size = b.float_dim(x, axis, grid)
        one = b.scalar(1.0, grid)
        self.last = b.op("Sub", [self.size, one])
        align = node_attr(node, "align_corners", 0)
        self.slope = b.op("Mul", [self.last if align else self.size, b.scalar(0.5, grid)])
        pos = b.op("Mul", [b.op("Add", [g, one]), self.slope])  # (g + 1) (L - 1) / 2 or (g + 1) L / 2
        if not align:
            pos = b.op("Sub", [pos, b.scalar(0.5, grid)])
        self.clip_mask = None
        self.padding, self.align = node_attr(node, "padding_mode", "zeros"), align
        padding = self.padding if pad_source else "zeros"  # cubic pads each tap, not the point
        if padding == "reflection":
            pos, self.clip_mask = self.reflected(pos, align)
        elif padding == "border":
            self.clip_mask = b.op("Cast", [self.valid(pos)], to=b.float_type(grid))
            pos = self.clipped(pos)
        self.pos = pos

    def reflected(self, pos, align):
        """pos mirrored at the ends of [0, L - 1] (align_corners) or [-0.5, L - 0.5] until inside, then clipped to
        [0, L - 1]; and d reflected / d pos, +1 or -1 (0 where clipped, and 0 for a single pixel with
        align_corners, where every point maps to 0)."""
        b = self.b
        low = b.scalar(0.0 if align else -0.5, pos)
        span = self.last if align else self.size
        offset = b.op("Sub", [pos, low])
        distance = b.op("Abs", [offset])
        some = b.op("Greater", [span, b.scalar(0.0, pos)])
        safe_span = b.op("Where", [some, span, b.scalar(1.0, pos)])
        flips = b.op("Floor", [b.op("Div", [distance, safe_span])])
        extra = b.op("Sub", [distance, b.op("Mul", [flips, safe_span])])
        half = b.op("Floor", [b.op("Mul", [flips, b.scalar(0.5, pos)])])
        odd = b.op("Sub", [flips, b.op("Add", [half, half])])  # 0 or 1
        direction = b.op("Sub", [b.scalar(1.0, pos), b.op("Add", [odd, odd])])  # +1 or -1
        inside = b.op("Add", [b.op("Add", [b.op("Mul", [odd, span]), b.op("Mul", [direction, extra])]), low])
        inside = b.op("Where", [some, inside, b.scalar(0.0, pos)])
        ftype = b.float_type(pos)
        slope = b.op("Mul", [b.op("Mul", [direction, b.op("Sign", [offset])]),
                             b.op("Cast", [b.op("And", [some, self.valid(inside)])], to=ftype)])
        return self.clipped(inside), slope

    def corners(self):
        """[(coordinate, weight, d weight / d pos)] of the two neighbours along this axis."""
        b = self.b
        low = b.op("Floor", [self.pos])
        w_high = b.op("Sub", [self.pos, low])
        w_low = b.op("Sub", [b.scalar(1.0, self.pos), w_high])
        return [(low, w_low, b.scalar(-1.0, self.pos)),
                (b.op("Add", [low, b.scalar(1.0, self.pos)]), w_high, b.scalar(1.0, self.pos))]

    def taps(self):
        """[(coordinate, weight, d weight / d pos)] of the cubic mode's four taps floor(pos) - 1 .. floor(pos) + 2,
        each coordinate clipped (border) or mirrored (reflection) on its own, as torch and onnxruntime do."""
        b = self.b
        low = b.op("Floor", [self.pos])
        t = b.op("Sub", [self.pos, low])
        out = []
        for k, (w, dw) in zip((-1, 0, 1, 2), _cubic_weights(b, t)):
            c = b.op("Add", [low, b.scalar(float(k), t)])
            if self.padding == "border":
                c = self.clipped(c)
            elif self.padding == "reflection":
                c = self.reflected(c, self.align)[0]
            out.append((c, w, dw))
        return out

    def valid(self, c):
        """0 <= c <= L - 1 (bool)."""
        b = self.b
        return b.op("And", [b.op("GreaterOrEqual", [c, b.scalar(0.0, c)]), b.op("LessOrEqual", [c, self.last])])

    def clipped(self, c):
        return self.b.op("Min", [self.b.op("Max", [c, self.b.scalar(0.0, c)]), self.last])


CUBIC_A = -0.75  # the cubic convolution kernel's parameter in torch, onnxruntime and ONNX


def _poly(b, s, coefficients):
    """sum_k coefficients[k] s^k by Horner's rule (coefficients from the highest power down)."""
    out = b.scalar(coefficients[0], s)
    for c in coefficients[1:]:
        out = b.op("Add", [b.op("Mul", [out, s]), b.scalar(c, s)])
    return out


def _cubic_weights(b, t):
    """[(w, dw / dt)] of the taps at distances t + 1, t, 1 - t, 2 - t: the kernel is (A + 2)|s|^3 - (A + 3)|s|^2 + 1
    for |s| <= 1 and A|s|^3 - 5A|s|^2 + 8A|s| - 4A for 1 < |s| < 2."""
    a = CUBIC_A
    near, d_near = [a + 2, -(a + 3), 0.0, 1.0], [3 * (a + 2), -2 * (a + 3), 0.0]
    far, d_far = [a, -5 * a, 8 * a, -4 * a], [3 * a, -10 * a, 8 * a]
    one = b.scalar(1.0, t)
    out = []
    for s, sign, (p, dp) in ((b.op("Add", [t, one]), 1.0, (far, d_far)), (t, 1.0, (near, d_near)),
                             (b.op("Sub", [one, t]), -1.0, (near, d_near)),
                             (b.op("Sub", [b.scalar(2.0, t), t]), -1.0, (far, d_far))):
        out.append((_poly(b, s, p), _poly(b, s, [sign * c for c in dp])))
    return out


@register("GridSample")
def grid_sample_vjp(b, node, grads, need):
    x, grid = node.input[0], node.input[1]
    mode = node_attr(node, "mode", "bilinear")
    padding = node_attr(node, "padding_mode", "zeros")
    rank = b.rank(x)
    if rank is None or rank < 3 or mode not in _LINEAR + _CUBIC + (_NEAREST,) or padding not in (
            "zeros", "border", "reflection"):
        raise UnsupportedModelError(
            f"GridSample node '{node.name}': mode '{mode}', padding_mode '{padding}' on a rank-{rank} input is not "
            "supported (a known rank of 3 or more; modes linear/bilinear, cubic/bicubic and nearest; padding zeros, "
            "border and reflection)")
    cubic, spatial = mode in _CUBIC, rank - 2
    # axes[k] samples x's axis rank - 1 - k with the grid's component k (x along the width, y, z)
    axes = [_Axis(b, node, x, grid, k, rank - 1 - k, not cubic) for k in range(spatial)]
    if mode == _NEAREST:
        taps = [[(b.op("Round", [a.pos]), None, None)] for a in axes]
    else:
        taps = [a.taps() if cubic else a.corners() for a in axes]
    points = [combo[::-1] for combo in itertools.product(*reversed(taps))]  # row-major: the width's tap fastest
    ftype = b.float_type(grid)
    n_c = b.op("Slice", [b.op("Shape", [x]), b.ints([0]), b.ints([2])])  # [N, C]
    flat = b.op("Concat", [n_c, b.ints([-1])], axis=0)  # x and g viewed [N, C, -1]
    per_point = b.op("Concat", [b.op("Slice", [b.op("Shape", [grid]), b.ints([0]), b.ints([1])]),
                                b.ints([1, -1])], axis=0)  # the grid's points viewed [N, 1, points]
    g_flat = b.op("Reshape", [grads[0], flat])
    x_dims = b.op("Shape", [x])
    index, valid, weight = [], [], []
    for point in points:
        inside, at = None, None
        for k in reversed(range(spatial)):  # the flat offset, outermost axis first, in int64
            c, a = point[k][0], axes[k]
            ok = a.valid(c)
            inside = ok if inside is None else b.op("And", [inside, ok])
            c = b.op("Cast", [a.clipped(c)], to=TensorProto.INT64)
            if at is not None:
                at = b.op("Mul", [at, b.op("Gather", [x_dims, b.const(rank - 1 - k, np.int64)])])
            at = c if at is None else b.op("Add", [at, c])
        inside = b.op("Reshape", [b.op("Cast", [inside], to=ftype), per_point])
        index.append(b.op("Expand", [b.op("Reshape", [at, per_point]), b.op("Shape", [g_flat])]))
        valid.append(inside)
        w = _product(b, [t[1] for t in point])
        weight.append(inside if w is None else b.op("Mul", [b.op("Reshape", [w, per_point]), inside]))
    dx = dgrid = None
    if need[0]:
        updates = b.op("Concat", [b.op("Mul", [g_flat, w]) for w in weight], axis=2)
        base = b.op("Reshape", [b.zeros_like(x), flat])
        summed = scatter_add(b, base, b.op("Concat", index, axis=2), updates, axis=2)
        dx = b.op("Reshape", [summed, b.op("Shape", [x])])
    if need[1] and mode == _NEAREST:
        dgrid = b.zeros_like(grid)
    elif need[1]:
        x_flat = b.op("Reshape", [x, flat])
        v = [b.op("Mul", [b.op("GatherElements", [x_flat, i], axis=2), ok]) for i, ok in zip(index, valid)]
        parts = []
        for k, axis in enumerate(axes):  # d y / d pos_k = sum over points of d w_k * (the other weights) * x[point]
            total = None
            for point, value in zip(points, v):
                factor = _product(b, [t[2] if j == k else t[1] for j, t in enumerate(point)])
                term = b.op("Mul", [b.op("Reshape", [factor, per_point]), value])
                total = term if total is None else b.op("Add", [total, term])
            s = b.op("ReduceSum", [b.op("Mul", [g_flat, total]), b.ints([1])], keepdims=0)  # over channels
            s = b.op("Mul", [b.op("Reshape", [s, b.op("Shape", [axis.pos])]), axis.slope])
            if axis.clip_mask is not None:
                s = b.op("Mul", [s, axis.clip_mask])
            parts.append(b.op("Unsqueeze", [s, b.ints([spatial + 1])]))
        dgrid = b.op("Concat", parts, axis=spatial + 1)
    return [dx, dgrid]


def _product(b, factors):
    """The product of the factors that are not None (None if all are)."""
    out = None
    for f in factors:
        if f is not None:
            out = f if out is None else b.op("Mul", [out, f])
    return out


def homogeneous_base(lengths, align_corners) -> np.ndarray:
    """(base[p], 1) for the output points p of an AffineGrid with spatial ``lengths`` ([H, W] or [D, H, W]), in
    row-major order: [points, k + 1] with columns x (along the width), y[, z], 1. A length L spans [-1, 1] at its
    end points (align_corners; lengths above 1), else at its cell centres (2i + 1) / L - 1."""
    axes = [np.linspace(-1.0, 1.0, n) if align_corners else (2.0 * np.arange(n) + 1.0) / n - 1.0 for n in lengths]
    mesh = np.meshgrid(*axes, indexing="ij")  # one array per axis, in the order of lengths
    columns = [m.reshape(-1) for m in reversed(mesh)] + [np.ones(mesh[0].size)]
    return np.stack(columns, axis=1)


@register("AffineGrid")
def affine_grid_vjp(b, node, grads, need):
    theta, size = node.input[0], node.input[1]
    k = b.shape(theta)[1] if b.shape(theta) is not None and isinstance(b.shape(theta)[1], int) else None
    if k is None:
        raise UnsupportedModelError(f"AffineGrid node '{node.name}': theta's shape [N, k, k + 1] must be known")
    align = node_attr(node, "align_corners", 0)
    grid_shape = b.shape(node.output[0])
    lengths = grid_shape[1:1 + k] if grid_shape is not None and len(grid_shape) == k + 2 else None
    # a length 1 under align_corners is 0 in torch, -1 in onnx's reference, 1 in onnxruntime: AffineGrid decides
    if lengths is not None and all(isinstance(d, int) and (d > 1 or not align) for d in lengths):
        homogeneous = b.const(homogeneous_base(lengths, align), b.float_dtype(theta), "affine_base")
    else:  # sizes known at run time only: AffineGrid of the identity (onnxruntime's CUDA provider has no kernel;
        # its CPU provider runs float16 through the op's function body, which fails on these sizes: float32, cast)
        half = b.float_type(theta) == TensorProto.FLOAT16
        identity = b.const(np.eye(k, k + 1)[None], np.float32 if half else b.float_dtype(theta), "affine_identity")
        one_sample = b.op("Concat", [b.ints([1]), b.op("Slice", [size, b.ints([1]), b.ints([k + 2])])], axis=0)
        base = b.op("AffineGrid", [identity, one_sample], align_corners=align)
        if half:
            base = b.op("Cast", [base], to=TensorProto.FLOAT16)
        base = b.op("Reshape", [base, b.ints([-1, k])])  # [points, k]: (x, y[, z]) per output point
        ones = b.op("ConstantOfShape", [b.op("Slice", [b.op("Shape", [base]), b.ints([0]), b.ints([1])])],
                    value=b.fill_value(1.0, theta))
        homogeneous = b.op("Concat", [base, b.op("Unsqueeze", [ones, b.ints([1])])], axis=1)  # [points, k + 1]
    g = b.op("Reshape", [grads[0], b.op("Concat", [b.op("Slice", [b.op("Shape", [theta]), b.ints([0]), b.ints([1])]),
                                                   b.ints([-1, k])], axis=0)])  # [N, points, k]
    return [b.op("MatMul", [b.op("Transpose", [g], perm=[0, 2, 1]), homogeneous]), None]
