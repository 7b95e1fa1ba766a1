"""Running sums for the signal estimators of PatternNet (Kindermans et al. 2018), and the patterns.

For one linear layer y = W x + b, every output unit k sees pairs (x, y_k): x is the layer's input
(for a convolution, the receptive-field patch at one output position; all positions count as samples)
and y_k its pre-activation output. With a mask m_k (all ones for the linear estimator, [y_k > 0] for the
positive half of the two-component estimator A_{+-}) the sums kept, in float64, are

    n = #pairs,  Σ y'_k,  c_k = Σ m_k,  Σ m_k x,  Σ m_k y'_k x      (y'_k = y_k - t_k)

with t_k the first sample's y_k (for a convolution its mean over positions), and the pattern of unit k is

    cov_k = Σ m_k y'_k x / c_k - (Σ m_k x / c_k) · (Σ y'_k / n)    (E_m[x y] - E_m[x] E[y])
    a_k   = cov_k / (w_k^T cov_k)                                  (so that w_k^T a_k = 1)

linear: a = cov[x, y] / (w^T cov[x, y]); relu: a_+ = (E+[xy] - E+[x] E[y]) / w^T(E+[xy] - E+[x] E[y]),
E[y] over all pairs, as in the paper and iNNvestigate 1.x. A shift of y cancels out of cov exactly
(E_m[x t] = E_m[x] t), so a bias does, and t keeps the one-pass difference from cancelling catastrophically
when y varies little around a large mean; identical samples give y' = 0, so exactly zero patterns.
Divisions by zero give zero (c_k = 0) or leave the numerator (w^T cov = 0), as iNNvestigate does.
"""

from __future__ import annotations

import itertools

import numpy as np

PATTERN_TYPES = ("relu", "linear")
CHUNK_BYTES = 64 * 2**20  # float64 working set per patch slice: sub-batches keep memory bounded


class ConvGeometry:
    """Kernel, strides, dilations, begin pads and groups of a convolution (any spatial rank)."""

    def __init__(self, kernel, strides, dilations, begin, group):
        self.kernel, self.strides, self.dil = list(kernel), list(strides), list(dilations)
        self.begin, self.group = list(begin), int(group)

    def patch_products(self, x: np.ndarray, gs: list) -> list:
        """For each g in ``gs``: Σ_{n, positions} g[n, k, p] · patch(x)[n, p, (c, offsets)], shape
        [K, C/group, *kernel] — im2col of x (zero padding) correlated with g, i.e. the Conv's weight
        gradient for output gradient g. One matmul per group for all g together."""
        nsp = len(self.kernel)
        out_sp = gs[0].shape[2:]
        pads = [(0, 0)]
        for i in range(nsp):
            need = (out_sp[i] - 1) * self.strides[i] + (self.kernel[i] - 1) * self.dil[i] + 1
            pads.append((self.begin[i], max(0, need - x.shape[2 + i] - self.begin[i])))
        xl = np.pad(np.moveaxis(x, 1, -1), pads + [(0, 0)])  # [N, *padded, C]
        windows = [xl[(slice(None),) + tuple(slice(o * d, o * d + (L - 1) * s + 1, s)
                                             for o, d, s, L in zip(off, self.dil, self.strides, out_sp))]
                   for off in itertools.product(*(range(k) for k in self.kernel))]
        rows = x.shape[0] * int(np.prod(out_sp))
        patches = np.stack(windows, axis=-2).reshape(rows, len(windows), x.shape[1])  # [M, offsets, C]
        g = np.concatenate([np.moveaxis(t, 1, 0).reshape(t.shape[1], rows) for t in gs])  # [sum K, M]
        cg, kg = x.shape[1] // self.group, gs[0].shape[1] // self.group
        k_total = gs[0].shape[1]
        out = np.zeros((len(gs), k_total, cg, len(windows)), np.float64)
        for gi in range(self.group):
            pg = patches[:, :, gi * cg:(gi + 1) * cg].reshape(rows, -1)  # [M, offsets * cg]
            idx = np.concatenate([np.arange(gi * kg, (gi + 1) * kg) + j * k_total for j in range(len(gs))])
            prod = (g[idx] @ pg).reshape(len(gs), kg, len(windows), cg)
            out[:, gi * kg:(gi + 1) * kg] = prod.transpose(0, 1, 3, 2)
        return [o.reshape(k_total, cg, *self.kernel) for o in out]


class LayerStats:
    """The running sums of one linear layer; ``conv`` is a ConvGeometry, or None for a dense layer
    (x [..., D], y [..., K]). Patterns come out as [K, D] with D the flattened patch."""

    def __init__(self, pattern_type: str, conv: ConvGeometry | None = None):
        if pattern_type not in PATTERN_TYPES:
            raise ValueError(pattern_type)
        self.pattern_type, self.conv = pattern_type, conv
        self.n = 0.0
        self.shift = None  # t_k: the first sample's y_k (a convolution's: its mean over positions)
        self.sum_y = self.count = self.sum_x = self.sum_xy = None

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add one batch: x the layer input, y its pre-activation output (any float dtype)."""
        if self.conv is None:
            x = x.reshape(-1, x.shape[-1])
            y = y.reshape(-1, y.shape[-1])
            self._add(x.astype(np.float64), y.astype(np.float64))
            return
        patches = (y[0].size // y.shape[1]) * x.shape[1] * int(np.prod(self.conv.kernel))
        per_sample = (patches + x[0].size + 5 * y[0].size) * 8  # im2col, x, y, mask, y*mask, g
        step = max(1, CHUNK_BYTES // per_sample)  # memory: max(CHUNK_BYTES, one sample's patches)
        for i in range(0, x.shape[0], step):
            self._add(x[i:i + step].astype(np.float64), y[i:i + step].astype(np.float64))

    def _add(self, x, y):
        if y.shape[0] == 0:
            return
        mask = (y > 0).astype(np.float64) if self.pattern_type == "relu" else np.ones_like(y)
        if self.shift is None:
            self.shift = y[0] if self.conv is None else y[0].reshape(y.shape[1], -1).mean(1)
        y = y - (self.shift if self.conv is None else self.shift.reshape((-1,) + (1,) * (y.ndim - 2)))
        ym = y * mask
        if self.conv is None:
            parts = (y.sum(0), mask.sum(0), mask.T @ x, ym.T @ x)
            n = y.shape[0]
        else:
            red = (0,) + tuple(range(2, y.ndim))
            products = self.conv.patch_products(x, [mask, ym])
            parts = (y.sum(red), mask.sum(red)) + tuple(p.reshape(p.shape[0], -1) for p in products)
            n = y.size // y.shape[1]
        if self.sum_y is None:
            self.sum_y, self.count, self.sum_x, self.sum_xy = (np.zeros_like(p) for p in parts)
        for acc, p in zip((self.sum_y, self.count, self.sum_x, self.sum_xy), parts):
            acc += p
        self.n += n

    def pattern(self, w_kd: np.ndarray) -> np.ndarray:
        """a [K, D] for the layer weight w_kd [K, D] (row k: the weights of output unit k)."""
        if self.sum_y is None:
            raise ValueError("no data seen")
        c = self.count[:, None]
        safe_c = np.where(c == 0, 1.0, c)
        ex, exy = self.sum_x / safe_c, self.sum_xy / safe_c
        ey = self.sum_y / self.n
        cov = exy - ex * ey[:, None]
        norm = np.einsum("kd,kd->k", np.asarray(w_kd, np.float64), cov)
        return cov / np.where(norm == 0, 1.0, norm)[:, None]
