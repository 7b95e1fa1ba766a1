"""Weighted linear least squares with an intercept, inside the graph, as scikit-learn's LinearRegression fits
Captum's surrogate models (KernelSHAP, LIME). For one design Z [S, G] shared by the batch, sample weights w
(one set [S] for all rows, or one per row) and targets Y [N, S] (one regression per row n):

    beta_n = argmin over beta, c of  sum_s w_s (Y_ns - c - Z_s . beta)^2,

the least-norm beta where the design leaves it undetermined (scikit-learn's lstsq). With the weighted means
taken out, A = W^1/2 (Z - (w Z) / sum w) and y_n = W^1/2 (Y_n - mean_w Y_n), beta_n is the least-norm minimizer
of |A beta - y_n|, found in float64 by CGLS from 0 (its iterates stay in the row space of A, so it converges to
the least-norm solution whether or not the design determines beta, and whether or not y_n lies in A's range).
CGLS works on A itself, never on A'A, whose condition number the 10^6 endpoint weights of KernelSHAP square
to 1e10 and more: an elimination of A'A (or A A') with a ridge lost every digit on some drawn designs.

The Lasso (LIME's default surrogate) minimizes (1 / (2 sum w)) sum_s w_s (Y_ns - c - Z_s . beta)^2 + alpha |beta|_1
(scikit-learn's objective with sample weights) by FISTA, to convergence.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from onnxattr.graph import GraphBuilder
from onnxattr.sampling import checked_tensor

LASSO_ITERATIONS = 100_000  # FISTA trips at most
LASSO_TOLERANCE = 1e-13  # stop when no coefficient moves by more than this share of the largest
CGLS_TOLERANCE = 1e-15  # stop once |A' r| is below this share of |A' Y| in every row
MAX_FIT_WORK = 4 * 10**9  # S G min(S, G): about a quarter of the fit's multiply-adds (seconds on 2 cores)


def cgls_iterations(samples: int, groups: int) -> int:
    """CGLS trips at most: in exact arithmetic it ends within rank(A) <= min(S, G) trips; in float64 the 10^6
    endpoint weights, and near-square designs (S ~ G, condition numbers of 1e7), cost up to ~13 times that (G =
    784, S = 785: 9,900 trips)."""
    return 24 * min(samples, groups) + 200


def fit_work(samples: int, groups: int) -> int:
    return samples * groups * min(samples, groups)


def _t(b: GraphBuilder, a: str) -> str:
    """a' for a batch of matrices [B, m, n]."""
    return b.op("Transpose", [a], perm=[0, 2, 1])


def _sum_sq(b: GraphBuilder, v: str) -> str:
    """|v|^2 per batch entry of v [N, m, 1]: [N, 1, 1]."""
    return b.reduce("ReduceSum", b.op("Mul", [v, v]), [1, 2])


def _centred(b: GraphBuilder, z: str, w: str):
    """(w [B, S, 1], sum w [B, 1, 1], Z - (w Z) / sum w [B, S, G]) for the design Z [S, G] and weights w [B, S]."""
    w3 = b.op("Unsqueeze", [w, b.ints([2])])
    total = b.reduce("ReduceSum", w3, [1])
    return w3, total, b.op("Sub", [z, b.op("Div", [b.op("MatMul", [_t(b, w3), z]), total])])


def _loop(b: GraphBuilder, cb: GraphBuilder, trips: int, it: str, cond_in: str, cond_out: str, carried, name: str):
    """Append an ONNX Loop of at most ``trips`` trips whose body is ``cb``'s nodes, carrying float64 tensors
    ``carried`` = (body input, body output, initial value, shape) and stopping when ``cond_out`` is false; returns
    the carried tensors' final values."""
    info = lambda n, d: helper.make_tensor_value_info(n, TensorProto.DOUBLE, d)  # noqa: E731
    body = helper.make_graph(
        cb.nodes, b.fresh(f"{name}_body"),
        [helper.make_tensor_value_info(it, TensorProto.INT64, []),
         helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []), *[info(i, d) for i, _, _, d in carried]],
        [helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []), *[info(o, d) for _, o, _, d in carried]])
    done = [b.fresh(name) for _ in carried]
    b.nodes.append(helper.make_node("Loop", [b.const(trips, "int64"), b.const(True, np.bool_),
                                             *[start for _, _, start, _ in carried]], done, name=b.fresh("Loop"),
                                    body=body))
    for out in done:
        b.types[out] = TensorProto.DOUBLE
    return done


def cgls(b: GraphBuilder, a: str, rhs: str, iterations: int) -> str:
    """The least-norm minimizer x [N, G, 1] of |A x - rhs| for A [B, S, G] (B = 1: one A for all) and rhs [N, S, 1],
    float64, by CGLS (Hestenes & Stiefel's conjugate gradients on A'A x = A' rhs, A'A never formed) from x = 0, in
    an ONNX Loop of at most ``iterations`` trips that stops once |A' r| <= CGLS_TOLERANCE |A' rhs| for every row;
    a row still above 1e-12 after the last trip fails the run (sampling.checked_tensor)."""
    # 0 / 0 where a row has converged exactly: its steps are 0 (a Max, as onnxruntime's optimizer drops an Add of
    # so small a constant)
    tiny = b.const(1e-300, np.float64)
    s0 = b.op("MatMul", [_t(b, a), rhs])  # [N, G, 1]
    gamma0 = _sum_sq(b, s0)
    stop = b.op("Mul", [gamma0, b.const(CGLS_TOLERANCE ** 2, np.float64)])
    x0 = b.op("Mul", [s0, b.const(0.0, np.float64)])
    cb = b.child()
    it, cond_in = cb.fresh("iter"), cb.fresh("cond")
    x_in, r_in, p_in, g_in = (cb.fresh(n) for n in ("x", "r", "p", "gamma"))
    q = cb.op("MatMul", [a, p_in])  # [N, S, 1]
    step = cb.op("Div", [g_in, cb.op("Max", [_sum_sq(cb, q), tiny])])
    x_out = cb.op("Add", [x_in, cb.op("Mul", [step, p_in])])
    r_out = cb.op("Sub", [r_in, cb.op("Mul", [step, q])])
    s = cb.op("MatMul", [_t(cb, a), r_out])
    g_out = _sum_sq(cb, s)
    p_out = cb.op("Add", [s, cb.op("Mul", [cb.op("Div", [g_out, cb.op("Max", [g_in, tiny])]), p_in])])
    going = cb.op("Cast", [cb.op("Greater", [g_out, stop])], to=TensorProto.DOUBLE)  # rows not yet converged
    cond_out = cb.op("Greater", [cb.op("ReduceMax", [going], keepdims=0), cb.const(0.0, np.float64)])
    column = [None, None, 1]
    done = _loop(b, cb, iterations, it, cond_in, cond_out,
                 ((x_in, x_out, x0, column), (r_in, r_out, rhs, column), (p_in, p_out, s0, column),
                  (g_in, g_out, gamma0, [None, 1, 1])), "cgls")
    # the run fails where a row stopped short of 1e-12 of its |A' y| (the trips ran out; the tolerance is 1e-15)
    slack = b.op("Mul", [gamma0, b.const(1e-24, np.float64)])
    converged = b.op("Not", [b.op("Cast", [b.op("ReduceMax", [b.op("Cast", [b.op("Greater", [done[3], slack])],
                                                                    to=TensorProto.DOUBLE)], keepdims=0)],
                                          to=TensorProto.BOOL)])
    return checked_tensor(b, done[0], converged, "fit")


def weighted_least_squares(b: GraphBuilder, z: str, w: str, y: str, groups: int, samples: int) -> str:
    """beta [N, G] (float64) of the regressions of Y [N, S] on the design Z [S, G] with an intercept and the
    weights w [B, S], one row for every regression (B = 1: one A for all) or one per row of Y (module docstring);
    all float64."""
    w3, total, centred = _centred(b, z, w)
    root = b.op("Sqrt", [w3])
    a = b.op("Mul", [centred, root])  # W^1/2 Zc [B, S, G]
    y3 = b.op("Unsqueeze", [y, b.ints([2])])  # [N, S, 1]
    y_mean = b.op("Div", [b.op("MatMul", [_t(b, y3), w3]), total])  # [N, 1, 1]
    targets = b.op("Mul", [b.op("Sub", [y3, y_mean]), root])  # W^1/2 (Y - mean_w Y) [N, S, 1]
    x = cgls(b, a, targets, cgls_iterations(samples, groups))
    return b.op("Squeeze", [x, b.ints([2])])


def weighted_lasso(b: GraphBuilder, z: str, w: str, y: str, groups: int, alpha: float) -> str:
    """beta [N, G] (float64) minimizing (1 / (2 sum_s w_s)) sum_s w_s (Y_ns - c - Z_s . beta)^2 + alpha |beta|_1 with a
    free intercept c (scikit-learn's Lasso with sample weights), weights w [B, S] as weighted_least_squares takes
    them. With the weighted means out, M = Zc' W Zc / sum w and r = Zc' W Y / sum w, FISTA (Beck & Teboulle 2009)
    from 0: beta <- soft(v - (M v - r) / L, alpha / L), v <- beta + m_k (beta - beta_prev), L = max_i sum_j |M_ij|
    (at least the largest eigenvalue), restarting the momentum where it points against the step (O'Donoghue &
    Candes 2015's gradient scheme: 3-10x fewer trips here), in an ONNX Loop that stops when no coefficient moved by
    more than LASSO_TOLERANCE of the largest; a run that does not get there in LASSO_ITERATIONS trips fails."""
    w3, total, centred = _centred(b, z, w)
    weighted_t = _t(b, b.op("Div", [b.op("Mul", [centred, w3]), total]))  # Zc' W / sum w [B, G, S]
    m = b.op("MatMul", [weighted_t, centred])  # [B, G, G]
    r = b.op("MatMul", [weighted_t, b.op("Unsqueeze", [y, b.ints([2])])])  # [N, G, 1]
    bound = b.reduce("ReduceMax", b.reduce("ReduceSum", b.op("Abs", [m]), [2]), [1])  # [B, 1, 1]
    bound = b.op("Add", [bound, b.op("Cast", [b.op("Equal", [bound, b.const(0.0, np.float64)])],
                                     to=TensorProto.DOUBLE)])  # M = 0: any step
    step = b.op("Reciprocal", [bound])
    threshold = b.op("Mul", [step, b.const(float(alpha), np.float64)])
    start = b.op("Mul", [r, b.const(0.0, np.float64)])  # zeros [N, G, 1]
    ones = b.op("Add", [b.reduce("ReduceSum", start, [1, 2]), b.const(1.0, np.float64)])  # t = 1 per row
    one, zero = b.const(1.0, np.float64), b.const(0.0, np.float64)
    cb = b.child()
    it, cond_in = cb.fresh("iter"), cb.fresh("cond")
    beta_in, v_in, t_in, gap_in = (cb.fresh(n) for n in ("beta", "v", "t", "gap"))
    u = cb.op("Sub", [v_in, cb.op("Mul", [cb.op("Sub", [cb.op("MatMul", [m, v_in]), r]), step])])
    beta = cb.op("Sub", [u, cb.op("Max", [cb.op("Min", [u, threshold]), cb.op("Neg", [threshold])])])  # soft(u)
    moved = cb.op("Sub", [beta, beta_in])
    t_next = cb.op("Div", [cb.op("Add", [one, cb.op("Sqrt", [cb.op("Add", [one, cb.op(
        "Mul", [cb.op("Mul", [t_in, t_in]), cb.const(4.0, np.float64)])])])]), cb.const(2.0, np.float64)])
    against = cb.op("Greater", [cb.reduce("ReduceSum", cb.op("Mul", [cb.op("Sub", [v_in, beta]), moved]), [1, 2]),
                                zero])  # [N, 1, 1]: restart
    momentum = cb.op("Where", [against, zero, cb.op("Div", [cb.op("Sub", [t_in, one]), t_next])])
    t_out = cb.op("Where", [against, one, t_next])
    v_out = cb.op("Add", [beta, cb.op("Mul", [momentum, moved])])
    gap_out = cb.op("Sub", [cb.op("ReduceMax", [cb.op("Abs", [moved])], keepdims=0),
                            cb.op("Mul", [cb.op("ReduceMax", [cb.op("Abs", [beta])], keepdims=0),
                                          cb.const(LASSO_TOLERANCE, np.float64)])])
    cond_out = cb.op("Greater", [gap_out, zero])
    done = _loop(b, cb, LASSO_ITERATIONS, it, cond_in, cond_out,
                 ((beta_in, beta, start, [None, groups, 1]), (v_in, v_out, start, [None, groups, 1]),
                  (t_in, t_out, ones, [None, 1, 1]), (gap_in, gap_out, one, [])), "fista")
    converged = b.op("LessOrEqual", [done[3], zero])
    return b.op("Squeeze", [checked_tensor(b, done[0], converged, "fit"), b.ints([2])])
