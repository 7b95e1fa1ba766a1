"""Weighted linear least squares with an intercept, inside the graph, as scikit-learn's LinearRegression fits
Captum's surrogate models (KernelSHAP, LIME). For one design Z [S, G] shared by the batch, sample weights w
(one set [S] for all rows, or one per row) and targets Y [N, S] (one regression per row n):

    beta_n = argmin over beta, c of  sum_s w_s (Y_ns - c - Z_s . beta)^2,

the least-norm beta where the design leaves it undetermined (scikit-learn's lstsq). With the weighted means
taken out (Zc = Z - (w Z) / sum w) and A = W^1/2 Zc:

    S > G:   (A'A) beta_n = A' W^1/2 Y_n                          (the G x G normal equations)
    S <= G:  beta_n = A' u_n,  (A A') u_n = W^1/2 (Y_n - mean_w Y_n)  (the S x S side)

Either symmetric system K u = R is solved in float64: (K + delta I)^-1 by Gauss-Jordan elimination without
pivoting (K + delta I is positive definite) in an ONNX Loop of D / 64 trips (64 pivots each), delta = 1e-8
trace(K) / D, then REFINEMENTS iterated Tikhonov steps u <- u + (K + delta I)^-1 (R - K u). Each step shrinks
the error along an eigenvalue lambda of K by delta / (lambda + delta), so u reaches K^+ R, the least-norm
solution, wherever lambda is well above delta; the directions K does not see receive only rounding, amplified
by 1 / delta in every step. On the S x S side A' removes those (A A' always has one: the weighted centring),
and R lies in the range of A A' where the S <= G coalitions are independent; the G x G side serves designs of
more coalitions than groups, where A'A is singular only for degenerate designs (there the fit is the least-norm
one to ~1e-6). A smaller delta does worse: the 10^6 endpoint weights give K a condition number of ~1e7 before
delta, and the elimination's rounding grows with it.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnxattr.graph import GraphBuilder

RIDGE = 1e-8  # delta / (trace(K) / D)
REFINEMENTS = 16  # iterated Tikhonov steps after the first solve (D^2 multiply-adds each)
BLOCK = 64  # pivots per Loop trip of the elimination (systems of order above BLOCK)
LASSO_ITERATIONS = 20000  # FISTA trips at most
LASSO_TOLERANCE = 1e-13  # stop when no coefficient moves by more than this share of the largest
MAX_SYSTEM = 4096  # D (2 cores: 9 ms at 256, 0.8 s at 2048, 6 s at 4096; benchmarks/solve_scale.py)


def system_size(samples: int, groups: int) -> int:
    """D, the order of the system weighted_least_squares solves (module docstring)."""
    return groups if groups < samples else samples


def _t(b: GraphBuilder, a: str) -> str:
    """a' for a batch of matrices [B, m, n]."""
    return b.op("Transpose", [a], perm=[0, 2, 1])


def _eliminate(b: GraphBuilder, aug: str, d: int, width: int, block: int) -> str:
    """Gauss-Jordan elimination of a batch [B, d, width] of float64 ``aug`` whose first d columns are positive
    definite, in an ONNX Loop of d / block trips (block divides d), no row exchanges: each trip takes the next
    ``block`` pivots at once, scales their rows by the inverse of their [block, block] pivot block (itself
    eliminated one pivot per trip, block = 1, where a pivot row is divided by its pivot), subtracts them from
    the other rows in one rank-``block`` update and writes them in place of the pivot rows. The first d columns
    end as I."""
    cb = b.child()
    it, cond_in, a_in = cb.fresh("iter"), cb.fresh("cond"), cb.fresh("gauss_jordan")
    first = cb.op("Mul", [it, cb.const(block, "int64")])
    at = cb.op("Range", [first, cb.op("Add", [first, cb.const(block, "int64")]), cb.const(1, "int64")])
    rows = cb.op("Gather", [a_in, at], axis=1)  # [B, block, width]
    pivots = cb.op("Gather", [rows, at], axis=2)  # [B, block, block]
    if block == 1:
        scaled = cb.op("Div", [rows, pivots])
    else:
        eye = cb.op("Expand", [cb.const(np.eye(block), np.float64, "eye"), cb.op("Shape", [pivots])])
        inverse = cb.op("Slice", [_eliminate(cb, cb.op("Concat", [pivots, eye], axis=2), block, 2 * block, 1),
                                  cb.ints([block]), cb.ints([2 * block]), cb.ints([2])])
        scaled = cb.op("MatMul", [inverse, rows])
    # every row loses A[i, pivots] times the scaled rows; the pivot rows are then replaced by those (written,
    # not left to the subtraction: A[p] - A[p, pivots] P^-1 A[pivots] cancels to 0 with A's rounding)
    reduced = cb.op("Sub", [a_in, cb.op("MatMul", [cb.op("Gather", [a_in, at], axis=2), scaled])])
    where = cb.op("Expand", [cb.op("Reshape", [at, cb.ints([1, block, 1])]), cb.op("Shape", [scaled])])
    a_out = cb.op("ScatterElements", [reduced, where, scaled], axis=1)
    cond_out = cb.op("Identity", [cond_in])
    body = helper.make_graph(
        cb.nodes, b.fresh("gauss_jordan_body"),
        [helper.make_tensor_value_info(it, TensorProto.INT64, []),
         helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []),
         helper.make_tensor_value_info(a_in, TensorProto.DOUBLE, [None, d, width])],
        [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
         helper.make_tensor_value_info(a_out, TensorProto.DOUBLE, [None, d, width])])
    done = b.fresh("gauss_jordan")
    b.nodes.append(helper.make_node("Loop", [b.const(d // block, "int64"), "", aug], [done], name=b.fresh("Loop"),
                                    body=body))
    b.types[done] = TensorProto.DOUBLE
    return done


def psd_inverse(b: GraphBuilder, k: str, d: int) -> str:
    """(K + delta I)^-1 of a batch [B, d, d] of symmetric positive semi-definite float64 K, delta = RIDGE
    trace(K) / d (1 for K = 0, which then meets zero right-hand sides only): Gauss-Jordan on [K + delta I | I]
    (every pivot of a positive definite matrix is positive), BLOCK pivots per Loop trip above BLOCK, K then
    padded by I to a multiple of BLOCK."""
    eye = b.const(np.eye(d), np.float64, "eye")
    trace = b.reduce("ReduceSum", b.op("Mul", [k, eye]), [1, 2])  # [B, 1, 1]
    zero = b.op("Cast", [b.op("Equal", [trace, b.const(0.0, np.float64)])], to=TensorProto.DOUBLE)
    delta = b.op("Add", [b.op("Mul", [trace, b.const(RIDGE / d, np.float64)]), zero])
    ridged = b.op("Add", [k, b.op("Mul", [eye, delta])])
    block = BLOCK if d > BLOCK else 1
    padded = -(-d // block) * block
    if padded > d:
        extra = np.diag(np.r_[np.zeros(d), np.ones(padded - d)])
        ridged = b.op("Add", [b.op("Pad", [ridged, b.ints([0, 0, 0, 0, padded - d, padded - d])]),
                              b.const(extra, np.float64, "pad_eye")])
    identity = b.op("Expand", [b.const(np.eye(padded), np.float64, "eye"), b.op("Shape", [ridged])])
    done = _eliminate(b, b.op("Concat", [ridged, identity], axis=2), padded, 2 * padded, block)  # [B, D, 2D]
    return b.op("Slice", [done, b.ints([0, padded]), b.ints([d, padded + d]), b.ints([1, 2])])


def psd_solve(b: GraphBuilder, k: str, r: str, d: int) -> str:
    """K^+ R for a batch [B, d, d] of symmetric positive semi-definite float64 K and R [B or N, d, m] in its range
    (module docstring); B = 1 serves every right-hand side."""
    h = psd_inverse(b, k, d)
    u = b.op("MatMul", [h, r])
    for _ in range(REFINEMENTS):
        u = b.op("Add", [u, b.op("MatMul", [h, b.op("Sub", [r, b.op("MatMul", [k, u])])])])
    return u


def weighted_least_squares(b: GraphBuilder, z: str, w: str, y: str, groups: int, samples: int) -> str:
    """beta [N, G] (float64) of the regressions of Y [N, S] on the design Z [S, G] with an intercept and the
    weights w [B, S], one row for every regression (B = 1: one system for all) or one per row of Y (module
    docstring); all float64."""
    w3 = b.op("Unsqueeze", [w, b.ints([2])])  # [B, S, 1]
    total = b.reduce("ReduceSum", w3, [1])  # [B, 1, 1]
    mean = b.op("Div", [b.op("MatMul", [_t(b, w3), z]), total])  # [B, 1, G]
    root = b.op("Sqrt", [w3])
    a = b.op("Mul", [b.op("Sub", [z, mean]), root])  # W^1/2 Zc [B, S, G]
    y3 = b.op("Unsqueeze", [y, b.ints([2])])  # [N, S, 1]
    if system_size(samples, groups) == groups:  # A'Y's weighted mean is 0: Y need not be centred
        u = psd_solve(b, b.op("MatMul", [_t(b, a), a]), b.op("MatMul", [_t(b, a), b.op("Mul", [y3, root])]),
                      groups)  # [N, G, 1]
    else:
        y_mean = b.op("Div", [b.op("MatMul", [_t(b, y3), w3]), total])  # [N, 1, 1]
        targets = b.op("Mul", [b.op("Sub", [y3, y_mean]), root])  # [N, S, 1]
        u = b.op("MatMul", [_t(b, a), psd_solve(b, b.op("MatMul", [a, _t(b, a)]), targets, samples)])
    return b.op("Squeeze", [u, b.ints([2])])


def weighted_lasso(b: GraphBuilder, z: str, w: str, y: str, groups: int, alpha: float) -> str:
    """beta [N, G] (float64) minimizing (1 / (2 sum_s w_s)) sum_s w_s (Y_ns - c - Z_s . beta)^2 + alpha |beta|_1 with a
    free intercept c (scikit-learn's Lasso with sample weights), weights w [B, S] as weighted_least_squares takes
    them. With the weighted means out, M = Zc' W Zc / sum w and r = Zc' W Y / sum w, FISTA (Beck & Teboulle 2009)
    from 0: beta <- soft(v - (M v - r) / L, alpha / L), v <- beta + m_k (beta - beta_prev), L = max_i sum_j |M_ij|
    (at least the largest eigenvalue), in an ONNX Loop that stops when no coefficient moved by more than
    LASSO_TOLERANCE of the largest, or after LASSO_ITERATIONS trips."""
    w3 = b.op("Unsqueeze", [w, b.ints([2])])  # [B, S, 1]
    total = b.reduce("ReduceSum", w3, [1])
    centred = b.op("Sub", [z, b.op("Div", [b.op("MatMul", [_t(b, w3), z]), total])])  # [B, S, G]
    weighted_t = _t(b, b.op("Div", [b.op("Mul", [centred, w3]), total]))  # Zc' W / sum w [B, G, S]
    m = b.op("MatMul", [weighted_t, centred])  # [B, G, G]
    r = b.op("MatMul", [weighted_t, b.op("Unsqueeze", [y, b.ints([2])])])  # [N, G, 1]
    bound = b.reduce("ReduceMax", b.reduce("ReduceSum", b.op("Abs", [m]), [2]), [1])  # [B, 1, 1]
    bound = b.op("Add", [bound, b.op("Cast", [b.op("Equal", [bound, b.const(0.0, np.float64)])],
                                     to=TensorProto.DOUBLE)])  # M = 0: any step
    step = b.op("Reciprocal", [bound])
    threshold = b.op("Mul", [step, b.const(float(alpha), np.float64)])
    t_k, momentum = 1.0, []
    for _ in range(LASSO_ITERATIONS):
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * t_k * t_k)) / 2.0
        momentum.append((t_k - 1.0) / t_next)
        t_k = t_next
    moments = b.const(np.array(momentum), np.float64, "fista_momentum")
    start = b.op("Mul", [r, b.const(0.0, np.float64)])  # zeros [N, G, 1]
    cb = b.child()
    it, cond_in, beta_in, v_in = cb.fresh("iter"), cb.fresh("cond"), cb.fresh("beta"), cb.fresh("v")
    u = cb.op("Sub", [v_in, cb.op("Mul", [cb.op("Sub", [cb.op("MatMul", [m, v_in]), r]), step])])
    beta = cb.op("Sub", [u, cb.op("Max", [cb.op("Min", [u, threshold]), cb.op("Neg", [threshold])])])  # soft(u)
    moved = cb.op("Sub", [beta, beta_in])
    v_out = cb.op("Add", [beta, cb.op("Mul", [cb.op("Gather", [moments, it]), moved])])
    largest = cb.op("ReduceMax", [cb.op("Abs", [beta])], keepdims=0)
    cond_out = cb.op("Greater", [cb.op("ReduceMax", [cb.op("Abs", [moved])], keepdims=0),
                                 cb.op("Mul", [largest, cb.const(LASSO_TOLERANCE, np.float64)])])
    body = helper.make_graph(
        cb.nodes, b.fresh("fista_body"),
        [helper.make_tensor_value_info(it, TensorProto.INT64, []),
         helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []),
         helper.make_tensor_value_info(beta_in, TensorProto.DOUBLE, [None, groups, 1]),
         helper.make_tensor_value_info(v_in, TensorProto.DOUBLE, [None, groups, 1])],
        [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
         helper.make_tensor_value_info(beta, TensorProto.DOUBLE, [None, groups, 1]),
         helper.make_tensor_value_info(v_out, TensorProto.DOUBLE, [None, groups, 1])])
    done = [b.fresh("lasso"), b.fresh("lasso_v")]
    b.nodes.append(helper.make_node("Loop", [b.const(LASSO_ITERATIONS, "int64"), b.const(True, np.bool_),
                                             start, start], done, name=b.fresh("Loop"), body=body))
    b.types[done[0]] = TensorProto.DOUBLE
    return b.op("Squeeze", [done[0], b.ints([2])])
