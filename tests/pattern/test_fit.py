"""onnxattr.pattern: fit learns the paper's patterns (closed form in numpy on the same data, 1e-5),
streamed batches give the same result as one array, conv patches are exact im2col, files round-trip."""

import warnings

import numpy as np
import onnx
import pytest

from onnxattr.errors import DataError, PatternError, UnsupportedModelError
from onnxattr.pattern import DegeneratePatternWarning, fit_patterns, load_patterns
from tests.models import single_io_model
from tests.pattern import nets

RNG = np.random.default_rng(0)
X_DENSE = (RNG.standard_normal((300, 5)) * [1, 2, 0.5, 1, 3] + 0.3).astype(np.float32)


@pytest.mark.parametrize("kind", ["linear", "relu"])
def test_dense_layer_matches_closed_form(kind):
    m, w, b = nets.dense()
    got = fit_patterns(m, X_DENSE, kind, batch_size=64, progress=False).arrays["dense"]
    y = X_DENSE.astype(np.float64) @ w.T.astype(np.float64) + b
    want = nets.estimator(X_DENSE, y, w, kind)
    assert got.shape == w.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    # normalisation of the paper: w_k^T a_k = 1 for every output unit
    np.testing.assert_allclose(np.einsum("kd,kd->k", w, got), 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["linear", "relu"])
def test_conv_layer_matches_closed_form_on_im2col(kind):
    m, w, b, at = nets.conv(group=2)
    x = RNG.standard_normal((9, 4, 7, 6)).astype(np.float32)
    got = fit_patterns(m, x, kind, batch_size=4, progress=False).arrays["conv"]
    patches, (ho, wo) = nets.im2col(x.astype(np.float64), w.shape[2:], at["pads"], at["strides"],
                                    at["dilations"], at["group"])
    assert patches.shape[0] == 9 * ho * wo
    kg = w.shape[0] // at["group"]
    w_kd = w.reshape(w.shape[0], -1).astype(np.float64)
    for gi in range(at["group"]):
        rows = slice(gi * kg, (gi + 1) * kg)
        y = patches[:, gi] @ w_kd[rows].T + b[rows]
        want = nets.estimator(patches[:, gi], y, w_kd[rows], kind)
        np.testing.assert_allclose(got[rows].reshape(kg, -1), want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_streamed_batches_equal_one_array():
    m, _ = nets.two_layer()
    x = RNG.standard_normal((257, 6)).astype(np.float32)
    whole = fit_patterns(m, x, "relu", batch_size=257, progress=False)
    sliced = fit_patterns(m, x, "relu", batch_size=10, progress=False)
    uneven = fit_patterns(m, iter([x[:3], (x[3:100], None), x[100:]]), "relu", progress=False)
    assert whole.samples == sliced.samples == uneven.samples == 257
    for name, a in whole.arrays.items():
        np.testing.assert_allclose(sliced.arrays[name], a, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(uneven.arrays[name], a, rtol=1e-9, atol=1e-12)
    again = fit_patterns(m, x, "relu", batch_size=10, progress=False)  # deterministic
    assert all(np.array_equal(again.arrays[k], v) for k, v in sliced.arrays.items())


def test_save_load_round_trip(tmp_path):
    m, _ = nets.two_layer()
    p = fit_patterns(m, RNG.standard_normal((40, 6)).astype(np.float32), "linear", progress=False)
    p.save(tmp_path / "p.npz")
    q = load_patterns(tmp_path / "p.npz")
    assert (q.model_sha256, q.pattern_type, q.samples) == (p.model_sha256, "linear", 40)
    assert set(q.arrays) == {"fc1", "fc2"} and all(np.array_equal(q.arrays[k], p.arrays[k]) for k in p.arrays)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(PatternError):
        load_patterns(tmp_path / "bad.npz")
    with pytest.raises(PatternError):
        load_patterns(tmp_path / "missing.npz")


def test_unsupported_kernel_layer_is_named():
    w = np.ones((3, 5), np.float32)
    node = onnx.helper.make_node("Gemm", ["x", "w"], ["y"], transA=1, transB=1, name="dense_tA")
    m = single_io_model([node], {"w": w}, [5, "N"], ["N", 3])
    with pytest.raises(UnsupportedModelError, match="dense_tA"):
        fit_patterns(m, np.zeros((5, 4), np.float32), progress=False)


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_a_layer_with_its_weight_on_the_left_is_refused_by_name(op):
    """W x mixes x's rows (a graph convolution): the patterns are learned for x W layers only."""
    node = onnx.helper.make_node(op, ["w", "x"], ["y"], name="adjacency")
    m = single_io_model([node], {"w": np.ones((3, 5), np.float32)}, [5, 4], [3, 4])
    with pytest.raises(UnsupportedModelError, match=r"adjacency' \(weight on the left"):
        fit_patterns(m, np.zeros((5, 4), np.float32), progress=False)


def test_an_einsum_layer_is_refused_by_name():
    """x W written as an Einsum learns no pattern (the layers are Conv, Gemm and MatMul): refused, not given
    its gradient."""
    node = onnx.helper.make_node("Einsum", ["x", "w"], ["y"], equation="bd,de->be", name="dense_einsum")
    m = single_io_model([node], {"w": np.ones((5, 3), np.float32)}, ["N", 5], ["N", 3])
    with pytest.raises(UnsupportedModelError, match="Einsum 'dense_einsum'"):
        fit_patterns(m, np.zeros((4, 5), np.float32), progress=False)


def test_a_conv_whose_bias_varies_is_refused_with_the_reason():
    """Conv(x, W, b(x)): not a layer for the rules, and the refusal says it is the bias, not the weight."""
    nodes = [onnx.helper.make_node("ReduceMean", ["x"], ["m"], axes=[0, 1, 2, 3], keepdims=0),
             onnx.helper.make_node("Reshape", ["m", "shape"], ["bias"]),
             onnx.helper.make_node("Conv", ["x", "w", "bias"], ["y"], name="biased", kernel_shape=[1, 1])]
    inits = {"w": np.ones((1, 1, 1, 1), np.float32), "shape": np.array([1])}
    m = single_io_model(nodes, inits, [2, 1, 3, 3], [2, 1, 3, 3])
    with pytest.raises(UnsupportedModelError, match=r"Conv 'biased' \(its bias varies with the input\)"):
        fit_patterns(m, np.zeros((2, 1, 3, 3), np.float32), progress=False)


def test_analyzer_fit_refuses_unknown_arguments():
    """A typo (batchsize) is an error, not silently ignored; iNNvestigate's verbose is accepted."""
    import onnxattr
    from onnxattr.errors import UsageError

    m, _ = nets.two_layer()
    x = RNG.standard_normal((8, 6)).astype(np.float32)
    analyzer = onnxattr.create_analyzer("pattern.net", m)
    with pytest.raises(UsageError, match="unknown argument 'batchsize'"):
        analyzer.fit(x, batchsize=4)
    assert analyzer.fit(x, verbose=0).params["patterns"] is not None


def test_pattern_files_that_are_folders_or_not_finite(tmp_path):
    m, _ = nets.two_layer()
    p = fit_patterns(m, RNG.standard_normal((20, 6)).astype(np.float32), "linear", progress=False)
    with pytest.raises(PatternError, match="is a folder"):
        load_patterns(tmp_path)
    p.arrays["fc1"] = np.full_like(p.arrays["fc1"], np.nan)
    p.save(tmp_path / "nan.npz")
    with pytest.raises(PatternError, match="layer 'fc1' is not finite"):
        load_patterns(tmp_path / "nan.npz")


def test_all_zero_patterns_are_named_in_a_warning():
    """One sample, or many identical ones, give no covariance: every pattern is zero (float64 rounding
    residue of E[xy] - E[x]E[y] is not blown up by the normalisation), and the warning names the
    layers and the sample count; varied data warns nothing."""
    m, _ = nets.two_layer()
    x = RNG.standard_normal((1, 6)).astype(np.float32)
    with pytest.warns(DegeneratePatternWarning, match=r"2 of 2 layers are all zero \('fc1', 'fc2'\): on this sample"):
        one = fit_patterns(m, x, "relu", progress=False)
    assert not any(a.any() for a in one.arrays.values())
    for kind in ("linear", "relu"):
        for copies, batch in ((50, 7), (1000, 64)):
            with pytest.warns(DegeneratePatternWarning, match=f"on these {copies} samples"):
                same = fit_patterns(m, np.repeat(x, copies, axis=0), kind, batch_size=batch, progress=False)
            assert not any(a.any() for a in same.arrays.values()), (kind, copies)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        varied = fit_patterns(m, RNG.standard_normal((64, 6)).astype(np.float32), "relu", progress=False)
    assert all(a.any() for a in varied.arrays.values())


def test_small_variation_around_a_large_mean_keeps_its_covariance():
    """x = 1000 (1 + 1e-6 noise): the one-pass E[xy] - E[x]E[y] cancels almost all digits; y is shifted
    by the first sample's before summing, so the patterns match a two-pass float64 reference (both x
    and y centred) on the same float32 x and y, to 1e-6 (measured 2e-10; unshifted sums: 2e-4)."""
    import onnxruntime as ort
    m, w, _ = nets.dense()
    x = (1000 * (1 + 1e-6 * RNG.standard_normal((500, 5)))).astype(np.float32)
    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    cov = ((xd - xd.mean(0))[:, None, :] * (yd - yd.mean(0))[:, :, None]).mean(0)
    want = cov / np.einsum("kd,kd->k", w.astype(np.float64), cov)[:, None]
    got = fit_patterns(m, x, "linear", batch_size=500, progress=False).arrays["dense"]
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_patterns_that_overflow_are_refused_naming_the_layer():
    """Finite data whose layer outputs overflow float32 give no patterns file of NaNs: a DataError."""
    m, _, _ = nets.dense()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no numpy warnings on the way
        with pytest.raises(DataError, match="patterns of layer 'dense' are not finite: its input or output overflows"):
            fit_patterns(m, np.full((4, 5), 3e38, np.float32), "linear", progress=False)


def test_patterns_beyond_a_float16_layer_range_are_refused():
    """Patterns do not scale with the data; a float16 layer whose pattern exceeds 65504 (a near-difference
    filter on strongly correlated inputs) is refused naming the dtype, not saved as inf."""
    w = np.array([[1.0, 1e-3], [1.0, -0.99e-3]], np.float16)
    h, f16 = onnx.helper, onnx.TensorProto.FLOAT16
    m = h.make_model(h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"], name="fc")], "net",
                                  [h.make_tensor_value_info("x", f16, ["N", 2])], [h.make_tensor_value_info("y", f16, ["N", 2])],
                                  [onnx.numpy_helper.from_array(w, "w")]), opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    z = RNG.standard_normal((2000, 1))
    x = (z + 1e-3 * RNG.standard_normal((2000, 2))).astype(np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="'fc' are not finite: they exceed the range of the layer's float16"):
            fit_patterns(m, x, "linear", progress=False)


def test_a_matmul_with_a_batched_constant_weight_is_refused():
    node = onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="mm3")
    m = single_io_model([node], {"w": np.ones((1, 4, 5), np.float32)}, ["N", 3, 4], ["N", 3, 5])
    with pytest.raises(UnsupportedModelError, match="MatMul 'mm3'"):
        fit_patterns(m, np.zeros((2, 3, 4), np.float32), progress=False)


def test_a_matmul_with_a_weight_fed_at_run_time_is_refused_like_a_gemm():
    """The pattern is a constant of the compiled model: a weight known only at run time has none (a Gemm was
    refused, a MatMul silently took the gradient)."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="fed")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5]),
                           helper.make_tensor_value_info("w", TensorProto.FLOAT, [5, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedModelError, match="MatMul 'fed'"):
        fit_patterns(m, np.zeros((4, 5), np.float32), input="x", progress=False, inputs={"w": np.ones((5, 3))})
