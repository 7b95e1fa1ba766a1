"""onnxattr/emitters/fourier.py: the VJPs of DFT (forward, inverse, one-sided both ways, cut and padded lengths,
opsets 17 and 20) and STFT (real and complex signals, with and without a window). Both ops are linear in the
signal, so F is onnxruntime's own forward (linear_ort): the difference quotient of a linear map is exact up to
float32 rounding, and the check holds the VJP to the op as onnxruntime computes it (its one-sided inverse with a
cut spectrum departs from numpy's irfft, and is refused)."""

import numpy as np
import pytest

from onnxattr.errors import UnsupportedModelError
from tests.vjp_check import check_vjp, run_vjp

rng = np.random.default_rng(31)


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("inverse,onesided,parts,length", [
    (0, 0, 1, None), (0, 0, 2, None), (1, 0, 2, None), (1, 0, 1, None), (0, 1, 1, None),
    (0, 0, 2, 5), (0, 0, 1, 11), (1, 0, 2, 12), (0, 1, 1, 6), (0, 1, 1, 13)])
def test_dft(opset, inverse, onesided, parts, length):
    """Along axis 1 of [2, 8, 3, parts], the length as given or cut/padded to ``length``."""
    x = rng.standard_normal((2, 8, 3, parts))
    inputs = [("x", x, False)]
    attrs = {"inverse": inverse, "onesided": onesided}
    if opset >= 20:
        inputs += [("length", np.asarray(length if length else 8, np.int64), True),
                   ("axis", np.asarray(1, np.int64), True)]
    else:
        attrs["axis"] = 1
        if length:
            inputs.append(("length", np.asarray(length, np.int64), True))
    check_vjp("DFT", inputs, attrs, opset=opset, dynamic=(0,), linear_ort=True)


@pytest.mark.parametrize("inverse,onesided,parts,length", [(0, 0, 2, None), (0, 1, 1, None), (1, 0, 1, 6),
                                                           (0, 1, 1, 12)])
def test_dft_length_known_at_run_time_only(inverse, onesided, parts, length):
    """The transformed axis is dynamic: the backward takes its length from the input's shape."""
    x = rng.standard_normal((2, 8, parts))
    inputs = [("x", x, False)] + ([("length", np.asarray(length, np.int64), True)] if length else [])
    check_vjp("DFT", inputs, {"inverse": inverse, "onesided": onesided, "axis": 1}, dynamic=(1,), linear_ort=True)


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("bins,length", [(5, None), (4, 7), (4, 6)])
def test_dft_onesided_inverse(opset, bins, length):
    """IRFFT: bins 0..L/2 of a complex spectrum to a real signal of length L (the imaginary parts of bin 0 and,
    for an even L, of bin L/2 have no effect, so their gradient is 0)."""
    x = rng.standard_normal((2, 3, bins, 2))
    attrs = {"inverse": 1, "onesided": 1}
    inputs = [("x", x, False)]
    if length is not None:
        inputs.append(("length", np.asarray(length, np.int64), True))
    if opset >= 20:
        if length is None:
            inputs.append(("length", np.asarray(2 * (bins - 1), np.int64), True))
        inputs.append(("axis", np.asarray(-2, np.int64), True))
    else:
        attrs["axis"] = 2
    grads = check_vjp("DFT", inputs, attrs, opset=opset, linear_ort=True)["x"]
    # 0 up to the float32 rounding of the FFT that computes the gradient
    assert np.abs(grads[:, :, 0, 1]).max() <= 1e-6 * np.abs(grads).max()


@pytest.mark.parametrize("inverse,onesided,parts,bins", [(0, 1, 1, 400), (1, 1, 2, 201), (0, 0, 2, 300)])
def test_dft_long_length_not_a_power_of_two(inverse, onesided, parts, bins):
    """Transforms of these lengths take the float64 matrix: onnxruntime's own DFT of a length that is not a power of
    two is off by about N * 1e-7 of the max (4e-5 at 400). Element by element against the exact VJP, A^T v, with
    A's columns numpy's float64 FFT of the unit vectors; 1e-5 of the largest entry (float32 sums of a few hundred
    terms)."""
    transform = {(0, 1): np.fft.rfft, (1, 1): np.fft.irfft, (0, 0): np.fft.fft}[(inverse, onesided)]

    def numpy_dft(x):
        y = transform(x[..., 0] + 1j * x[..., 1] if parts == 2 else x[..., 0], axis=-1)
        return y[..., None] if inverse else np.stack([y.real, y.imag], -1)

    a = numpy_dft(np.eye(bins * parts).reshape(-1, bins, parts)).reshape(bins * parts, -1).T  # [outputs, inputs]
    x = rng.standard_normal((2, bins, parts))
    v = rng.standard_normal((2,) + numpy_dft(x).shape[1:])
    (got,) = run_vjp("DFT", [("x", x, False)], v, {"inverse": inverse, "onesided": onesided, "axis": 1})
    want = (v.reshape(2, -1) @ a).reshape(x.shape)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("inverse,onesided,parts,bins", [(1, 1, 2, 1025), (0, 1, 1, 2048), (0, 0, 2, 2048)])
def test_dft_too_long_for_the_matrix(inverse, onesided, parts, bins):
    """Transforms whose matrix would pass MATRIX_LIMIT take DFT nodes (lengths that are powers of two, where
    onnxruntime's FFT is as accurate as the matrix)."""
    x = rng.standard_normal((1, bins, parts))
    check_vjp("DFT", [("x", x, False)], {"inverse": inverse, "onesided": onesided, "axis": 1}, linear_ort=True)


def test_dft_onesided_inverse_cut_spectrum_is_refused():
    with pytest.raises(UnsupportedModelError, match="one-sided inverse.*3 bins, L 6"):
        check_vjp("DFT", [("x", rng.standard_normal((2, 3, 2)), False), ("length", np.asarray(6, np.int64), True)],
                  {"inverse": 1, "onesided": 1, "axis": 1}, linear_ort=True)


@pytest.mark.parametrize("parts,onesided", [(1, 1), (1, 0), (2, 0)])
@pytest.mark.parametrize("window", [True, False])
@pytest.mark.parametrize("step", [3, 4, 5])
def test_stft(parts, onesided, window, step):
    """A signal of 27 samples in frames of 8: the last samples reached by no frame when the step leaves some."""
    x = rng.standard_normal((2, 27, parts))
    inputs = [("x", x, False), ("step", np.asarray(step, np.int64), True)]
    if window:
        inputs.append(("window", 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(8) / 8) + 0.1, True))
    else:
        inputs += [("", None, None), ("frame", np.asarray(8, np.int64), True)]
    check_vjp("STFT", inputs, {"onesided": onesided}, dynamic=(0,), linear_ort=True)
