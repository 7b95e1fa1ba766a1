"""DFT and STFT: both are linear in the signal, so the VJP is the transposed map.

DFT along an axis of length L (``dft_length``; the input is cut or zero-padded to it), with F_kn = e^(-2 pi i kn / L)
and the last axis holding (real, imaginary) or a real value alone. With static sizes and a matrix of at most
MATRIX_LIMIT entries, dx = g A, one MatMul with the transform's float64 matrix A (``dft_matrix``). Otherwise DFT
nodes compute the transposed map:
- forward, y = F x: dx = F^H g = L * IDFT(g);
- inverse, y = F^H x / L: dx = F g / L = DFT(g) / L;
- one-sided forward (RFFT of a real x, bins 0..L/2): g zero-padded to L bins, then L * IDFT, real part;
- one-sided inverse (IRFFT to a real y of length L from bins 0..L/2, conjugate symmetry filling the rest):
  y_n = (1/L) sum_k c_k Re(X_k e^(2 pi i kn / L)) with c_k = 2 but 1 at k = 0 and (L even) k = L/2, so
  dX = c * RFFT(g) / L (the imaginary parts of those bins get 0, as they have no effect).
A real input takes the real part of the complex result; the cut or padded length is undone by padding or cutting
dx along the axis.

STFT of a signal [N, T, 1 or 2] in frames of n = frame_length samples every ``frame_step``, times the window w:
y[f, k] = sum_m w_m x[f step + m] e^(-2 pi i km / n). That is a 1-D Conv of the signal with the 2K kernels
w_m cos and -w_m sin (and their partners for a complex signal) at stride frame_step, so its VJP is one
ConvTranspose of g with those kernels, padded at the end to T (samples no frame reaches get 0).
"""

import numpy as np

from onnxattr.emitters.registry import known_rank, node_attr, register
from onnxattr.errors import UnsupportedModelError


def _scalar(b, name):
    """The compile-time value of an optional scalar input (``None`` when absent or not a constant)."""
    if not name:
        return None
    value = b.value(name)
    return None if value is None else int(np.asarray(value).reshape(-1)[0])


def _axis_dim(b, t, axis):
    """Dimension ``axis`` of t: an int when known at compile time, else a 1-element int64 tensor."""
    shape = b.shape(t)
    if shape is not None and isinstance(shape[axis], int):
        return shape[axis]
    return b.op("Slice", [b.op("Shape", [t]), b.ints([axis]), b.ints([axis + 1])])


def _as_tensor(b, dim):
    return b.ints([dim]) if isinstance(dim, int) else dim


def _fit_length(b, t, axis, rank, length):
    """t cut or zero-padded at the end of ``axis`` to ``length`` (an int or a 1-element int64 tensor)."""
    have = _axis_dim(b, t, axis)
    if isinstance(have, int) and isinstance(length, int):
        if have == length:
            return t
        if have > length:
            return b.op("Slice", [t, b.ints([0]), b.ints([length]), b.ints([axis])])
        pads = [0] * (2 * rank)
        pads[rank + axis] = length - have
        return b.op("Pad", [t, b.ints(pads)])
    grow = b.op("Max", [b.op("Sub", [_as_tensor(b, length), _as_tensor(b, have)]), b.ints([0])])
    pads = b.op("Concat", [b.ints([0] * (rank + axis)), grow, b.ints([0] * (rank - axis - 1))], axis=0)
    return b.op("Slice", [b.op("Pad", [t, pads]), b.ints([0]), _as_tensor(b, length), b.ints([axis])])


def _dft(b, t, axis, inverse, onesided=0):
    """A DFT node along ``axis`` of t's own length, in the model's opset (axis an attribute before opset 20, an
    input from 20)."""
    if b.opset >= 20:
        return b.op("DFT", [t, "", b.const(axis, np.int64)], inverse=inverse, onesided=onesided)
    return b.op("DFT", [t], axis=axis, inverse=inverse, onesided=onesided)


def _float_of(b, dim, like):
    """A length (an int or a 1-element int64 tensor) as a 0-d float in the type of ``like``."""
    if isinstance(dim, int):
        return b.scalar(float(dim), like)
    return b.op("Cast", [b.op("Squeeze", [dim, b.ints([0])])], to=b.float_type(like))


# a DFT's VJP as a MatMul with its float64 matrix up to this many entries (16 MB in float32): onnxruntime's DFT of a
# length that is not a power of two is off by about N * 1e-7 of the spectrum's max (4e-5 at N = 400), and its CUDA
# provider has no DFT kernel; longer transforms take DFT nodes
MATRIX_LIMIT = 1 << 22


def irfft_weights(bins: int, length: int) -> np.ndarray:
    """c_k / L of the one-sided inverse: c_k = 2, but 1 at k = 0 and (L even) at k = L / 2, whose mirror is itself."""
    weights = np.full(bins, 2.0 / length)
    weights[0] = 1.0 / length
    if length % 2 == 0:
        weights[-1] = 1.0 / length
    return weights


def dft_matrix(n_in: int, parts: int, length: int, inverse: int, onesided: int) -> np.ndarray:
    """The real matrix A [n_out * c_out, n_in * parts] of one DFT node along its axis (rows: output bin, then real
    and imaginary part; a one-sided inverse has one real output per sample): y = A x, in float64."""
    used = min(n_in, length)  # the input cut or zero-padded to the length
    if onesided and inverse:
        m = np.exp(2j * np.pi * np.outer(np.arange(length), np.arange(n_in)) / length) * irfft_weights(n_in, length)
        blocks = [[m.real, -m.imag]]  # y = Re(M X)
    else:
        out = length // 2 + 1 if onesided else length
        m = np.exp((1 if inverse else -1) * 2j * np.pi * np.outer(np.arange(out), np.arange(used)) / length)
        m = m / length if inverse else m
        m = np.pad(m, ((0, 0), (0, n_in - used)))
        blocks = [[m.real, -m.imag], [m.imag, m.real]]  # Re y, Im y from Re z, Im z
    a = np.stack([np.stack(row[:parts], -1) for row in blocks], 1)  # [n_out, c_out, n_in, parts]
    return a.reshape(a.shape[0] * a.shape[1], n_in * parts)


@register("DFT")
def dft_vjp(b, node, grads, need):
    x = node.input[0]
    rank = known_rank(b, node)
    axis_input = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if axis_input and _scalar(b, axis_input) is None:
        raise UnsupportedModelError(f"DFT node '{node.name}': its axis is computed at run time; the backward "
                                    "needs it as a constant")
    axis = _scalar(b, axis_input) if axis_input else node_attr(node, "axis", 1 if b.opset < 20 else -2)
    axis = axis + rank if axis < 0 else axis
    inverse, onesided = node_attr(node, "inverse", 0), node_attr(node, "onesided", 0)
    parts = b.shape(x)[-1]
    if parts not in (1, 2):
        raise UnsupportedModelError(f"DFT node '{node.name}': the input's last axis must be 1 (real) or 2 (complex) "
                                    f"when compiling; it is {parts}")
    length_input = node.input[1] if len(node.input) > 1 and node.input[1] else None
    n_in = _axis_dim(b, x, axis)
    length = _scalar(b, length_input) if length_input else n_in
    if onesided and inverse and not length_input:
        length = 2 * (n_in - 1) if isinstance(n_in, int) else None
    if onesided and inverse and (not isinstance(n_in, int) or length is None or n_in != length // 2 + 1):
        raise UnsupportedModelError(
            f"DFT node '{node.name}' (one-sided inverse): supported with a constant length L and L // 2 + 1 "
            f"input bins (got {n_in} bins, L {length}); onnxruntime's result differs from the definition otherwise")
    g = grads[0]
    if isinstance(n_in, int) and isinstance(length, int) and n_in * length * 4 <= MATRIX_LIMIT:
        return [_matrix_vjp(b, x, g, axis, rank, dft_matrix(n_in, parts, length, inverse, onesided))] \
            + [None] * (len(node.input) - 1)
    if onesided and inverse:
        dx = _irfft_vjp(b, g, axis, rank, n_in, length)
    else:
        if length is None:  # a length computed at run time
            length = b.op("Reshape", [b.op("Cast", [length_input], to=7), b.ints([1])])
        if onesided:  # the bins past L/2 got no gradient: zeros there
            g = _fit_length(b, g, axis, rank, length)
        scale = _float_of(b, length, g)
        dx = _dft(b, g, axis, inverse=0 if inverse else 1)
        dx = b.op("Div" if inverse else "Mul", [dx, scale])
        if parts == 1:
            dx = b.op("Slice", [dx, b.ints([0]), b.ints([1]), b.ints([rank - 1])])
        dx = _fit_length(b, dx, axis, rank, n_in)
    return [dx] + [None] * (len(node.input) - 1)


def _matrix_vjp(b, x, g, axis, rank, a):
    """dx = g A along the axis and the complex axis: those two moved last, flattened, one MatMul, moved back."""
    perm = [d for d in range(rank - 1) if d != axis] + [axis, rank - 1]
    moved = g if axis == rank - 2 else b.op("Transpose", [g], perm=perm)
    flat = b.op("Reshape", [moved, b.ints([0] * (rank - 2) + [-1])])
    dx = b.op("MatMul", [flat, b.const(a.astype(b.float_dtype(g)), b.float_dtype(g), "w_dft")])
    if axis == rank - 2:
        return b.op("Reshape", [dx, b.shape_of(x)])
    leading = b.op("Slice", [b.op("Shape", [moved]), b.ints([0]), b.ints([rank - 2])])
    shape = b.op("Concat", [leading, b.ints([b.shape(x)[axis], b.shape(x)[-1]])], axis=0)
    return b.op("Transpose", [b.op("Reshape", [dx, shape])], perm=list(np.argsort(perm)))


def _irfft_vjp(b, g, axis, rank, bins, length):
    """dX = c * RFFT(g) / L for the one-sided inverse."""
    shape = [1] * rank
    shape[axis] = bins
    spectrum = _dft(b, g, axis, inverse=0, onesided=1)
    return b.op("Mul", [spectrum, b.const(irfft_weights(bins, length).reshape(shape), b.float_dtype(g))])


def _stft_kernels(window, complex_in: bool, onesided: bool):
    """The ConvTranspose weight [2K, C, n] of the STFT's VJP: input channel 2k is bin k's real part, 2k + 1 its
    imaginary part; output channel 0 the signal (its real part), 1 its imaginary part."""
    n = len(window)
    bins = n // 2 + 1 if onesided else n
    phase = 2 * np.pi * np.outer(np.arange(bins), np.arange(n)) / n
    cos, sin = np.cos(phase) * window, np.sin(phase) * window
    w = np.zeros((bins, 2, 2 if complex_in else 1, n))
    w[:, 0, 0], w[:, 1, 0] = cos, -sin  # Re y = sum w (xr cos + xi sin), Im y = sum w (xi cos - xr sin)
    if complex_in:
        w[:, 0, 1], w[:, 1, 1] = sin, cos
    return w.reshape(2 * bins, w.shape[2], n)


@register("STFT")
def stft_vjp(b, node, grads, need):
    signal = node.input[0]
    inputs = list(node.input) + [""] * (4 - len(node.input))
    step, window, frame = _scalar(b, inputs[1]), inputs[2], _scalar(b, inputs[3])
    window_value = b.value(window) if window else None
    shape = b.shape(signal)
    channels = shape[-1] if shape is not None and len(shape) == 3 else None
    if step is None or (window and window_value is None) or (not window and frame is None) or channels not in (1, 2):
        raise UnsupportedModelError(
            f"STFT node '{node.name}': the backward needs a constant frame_step, a constant window (or, without "
            "one, a constant frame_length) and a signal [N, T, 1 or 2]")
    if len(need) > 2 and need[2]:
        raise UnsupportedModelError(f"STFT node '{node.name}': the window depends on the explained input; only "
                                    "the signal's backward is supported")
    taper = np.asarray(window_value, np.float64) if window else np.ones(frame)
    onesided = node_attr(node, "onesided", 1) and channels == 1
    kernels = _stft_kernels(taper, channels == 2, bool(onesided))
    g = grads[0]  # [N, F, K, 2] -> [N, 2K, F]
    bins = kernels.shape[0] // 2
    per_channel = b.op("Reshape", [b.op("Transpose", [g], perm=[0, 2, 3, 1]), b.ints([0, 2 * bins, -1])])
    weight = b.const(kernels.astype(b.float_dtype(g)), b.float_dtype(g), "w_stft")
    frames = b.op("ConvTranspose", [per_channel, weight], strides=[step], kernel_shape=[len(taper)])  # [N, C, ...]
    dx = _fit_length(b, frames, 2, 3, _axis_dim(b, signal, 1))
    return [b.op("Transpose", [dx], perm=[0, 2, 1])] + [None] * (len(node.input) - 1)
