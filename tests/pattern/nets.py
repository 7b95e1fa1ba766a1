"""Small nets for the pattern tests (onnx.helper, no framework) and a numpy reference of the paper's
estimators, written directly from the formulas (boolean masks per output unit, no shared code)."""

import numpy as np
from onnx import helper

from tests.models import single_io_model


def dense(d=5, k=3, seed=0):
    """y = Gemm(x, W[K, D], b, transB=1): one linear layer."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, d)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, name="dense")]
    return single_io_model(nodes, {"w": w, "b": bias}, ["N", d], ["N", k]), w, bias


def two_layer(d=6, h=8, k=4, seed=1):
    """x -> Gemm(W1[H, D], b1, transB=1) -> Relu -> MatMul(W2[H, K]) -> Add(b2) -> y."""
    rng = np.random.default_rng(seed)
    p = {"w1": rng.standard_normal((h, d)).astype(np.float32), "b1": rng.standard_normal(h).astype(np.float32),
         "w2": rng.standard_normal((h, k)).astype(np.float32), "b2": rng.standard_normal(k).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["z1"], transB=1, name="fc1"),
             helper.make_node("Relu", ["z1"], ["h"], name="relu"),
             helper.make_node("MatMul", ["h", "w2"], ["z2"], name="fc2"),
             helper.make_node("Add", ["z2", "b2"], ["y"], name="bias2")]
    return single_io_model(nodes, p, ["N", d], ["N", k]), p


def conv(seed=2, group=2):
    """One Conv with uneven pads, strides, dilations and groups: x[N, 4, 7, 6] -> y[N, 6, ...]."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((6, 4 // group, 3, 2)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    attrs = dict(pads=[1, 0, 2, 1], strides=[2, 1], dilations=[1, 2], group=group)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)]
    return single_io_model(nodes, {"w": w, "b": bias}, ["N", 4, 7, 6], ["N", 6, "H", "W"]), w, bias, attrs


def estimator(x, y, w_kd, kind):
    """The paper's patterns for pairs x [M, D], y [M, K] (float64): a_k = cov_k / (w_k^T cov_k) with
    cov_k = E[x y_k] - E[x] E[y_k] (linear) or E+[x y_k] - E+[x] E[y_k], E+ over y_k > 0 (relu)."""
    x, y = x.astype(np.float64), y.astype(np.float64)
    out = np.zeros((y.shape[1], x.shape[1]))
    for k in range(y.shape[1]):
        if kind == "linear":
            cov = ((x - x.mean(0)) * (y[:, k:k + 1] - y[:, k].mean())).mean(0)
        else:
            pos = y[:, k] > 0
            cov = (x[pos] * y[pos, k:k + 1]).mean(0) - x[pos].mean(0) * y[:, k].mean() if pos.any() else 0 * x[0]
        norm = w_kd[k].astype(np.float64) @ cov
        out[k] = cov / (norm if norm != 0 else 1.0)
    return out


def im2col(x, kernel, pads, strides, dil, group):
    """Patches by explicit loops: [N * Ho * Wo, group, C/group * kh * kw] and the output size."""
    n, c, hgt, wid = x.shape
    xp = np.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    ho = (hgt + pads[0] + pads[2] - dil[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    wo = (wid + pads[1] + pads[3] - dil[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    rows = []
    for i in range(n):
        for r in range(ho):
            for s in range(wo):
                patch = xp[i, :, r * strides[0]:r * strides[0] + dil[0] * (kernel[0] - 1) + 1:dil[0],
                           s * strides[1]:s * strides[1] + dil[1] * (kernel[1] - 1) + 1:dil[1]]
                rows.append(patch.reshape(group, -1))
    return np.stack(rows), (ho, wo)
