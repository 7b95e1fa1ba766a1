"""Gemm, MatMul and Det: y = alpha * A' B' + beta * C, batched/broadcast matrix products, determinants.

Gemm:   dA' = alpha * g B'^T,  dB' = alpha * A'^T g,  dC = unbroadcast(beta * g)
        (A' = A^T when transA, likewise B'); each is one Gemm with flipped trans flags.
MatMul: dA = unbroadcast(g B^T), dB = unbroadcast(A^T g); 1-D operands are lifted to matrices
        first (numpy rules). A constant 2-D B is transposed at compile time.
Det:    dA = g C, C the cofactors: C_ij = (-1)^(i+j) det(A without row i and column j), the n^2 minors gathered
        and batched through Det (exact for a singular A too, unlike det(A) A^-T); dA = g for n = 1.
"""

import numpy as np

from onnxattr.emitters.broadcast import unbroadcast
from onnxattr.emitters.registry import register
from onnxattr.errors import UnsupportedModelError


def _gemm_attrs(node):
    at = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}
    for a in node.attribute:
        at[a.name] = a.f if a.name in ("alpha", "beta") else a.i
    return at


def gemm_forward(b, node, x, w, bias=None):
    """The node's Gemm on other operands (bias None drops C)."""
    at = _gemm_attrs(node)
    ins = [x, w] + ([bias] if bias else [])
    out = b.op("Gemm", ins, alpha=at["alpha"], beta=at["beta"] if bias else None,
               transA=at["transA"], transB=at["transB"])
    b.set_info(out, node.output[0])
    return out


def gemm_input_vjp(b, node, g, w, x):
    """dL/dA for y = Gemm(A, w): alpha * g B'^T (transposed back when transA)."""
    at = _gemm_attrs(node)
    if at["transA"]:
        # dA = (alpha g B'^T)^T = alpha B' g^T ;  B' = B^T when transB
        out = b.op("Gemm", [w, g], alpha=at["alpha"], transA=at["transB"], transB=1)
    else:
        out = b.op("Gemm", [g, w], alpha=at["alpha"], transB=1 - at["transB"])
    b.set_info(out, x)
    return out


@register("Gemm")
def gemm_vjp(b, node, grads, need):
    at = _gemm_attrs(node)
    g = grads[0]
    a, w = node.input[0], node.input[1]
    out = [None] * len(node.input)
    if need[0]:
        out[0] = gemm_input_vjp(b, node, g, w, a)
    if need[1]:
        if at["transB"]:  # dB = (alpha A'^T g)^T = alpha g^T A'
            out[1] = b.op("Gemm", [g, a], alpha=at["alpha"], transA=1, transB=at["transA"])
        else:
            out[1] = b.op("Gemm", [a, g], alpha=at["alpha"], transA=1 - at["transA"])
    if len(node.input) > 2 and node.input[2] and need[2]:
        scaled = b.op("Mul", [g, b.scalar(at["beta"], g)])
        out[2] = unbroadcast(b, scaled, node.input[2], node.output[0])
    return out


def _mm(b, a, c, batch_like: str | None = None):
    """MatMul with its result's rank recorded (so unbroadcast can find the axes at compile time), and its batch
    dims those of ``batch_like`` (the forward MatMul's output: a product with g has its batch dims) where known:
    unbroadcast then sees where an operand's symbolic batch dim may have been broadcast."""
    out = b.op("MatMul", [a, c])
    ra, rc = b.rank(a), b.rank(c)
    if ra is not None and rc is not None:
        b.shapes[out] = [None] * max(ra, rc)
        like = b.shape(batch_like) if batch_like else None
        if like is not None and len(like) == max(ra, rc):
            b.shapes[out] = list(like[:-2]) + [None, None]
    return out


def _swap_last(b, t):
    """t with its last two axes swapped; for a t of unknown rank (shape inference gave up upstream) an
    Einsum "...ij->...ji", which needs none."""
    r = b.rank(t)
    if r is None:
        return b.op("Einsum", [t], equation="...ij->...ji")
    perm = list(range(r - 2)) + [r - 1, r - 2]
    out = b.op("Transpose", [t], perm=perm)
    b.shapes[out] = [None] * r
    return out


def matmul_forward(b, node, x, w):
    out = b.op("MatMul", [x, w])
    b.set_info(out, node.output[0])
    return out


def matmul_input_vjp(b, node, g, w, x):
    """dL/dA for y = A @ w (A at least 2-D, w 2-D or batched): unbroadcast(g w^T)."""
    wv = b.value(w)
    if b.rank(x) == 2 and b.rank(w) == 2:  # Gemm reads w transposed: no copy of the weight
        out = b.op("Gemm", [g, w], transB=1)
        b.set_info(out, x)
        return out
    if wv is not None and wv.ndim == 2:  # no batch dims on w: g w^T has x's shape already
        out = b.op("MatMul", [g, b.const(np.ascontiguousarray(wv.T), wv.dtype, "wT")])
        b.set_info(out, x)
        return out
    elif b.rank(w) == 1:  # w is lifted to [K, 1]: dA = g[..., None] * w
        out = b.op("Mul", [b.op("Unsqueeze", [g, b.ints([-1])]), w])
        return unbroadcast(b, out, x)
    else:
        wt = _swap_last(b, w)
    return unbroadcast(b, _mm(b, g, wt, node.output[0]), x)


@register("MatMul")
def matmul_vjp(b, node, grads, need):
    g = grads[0]
    a, w = node.input
    ra, rw = b.rank(a), b.rank(w)
    out = [None, None]
    if ra == 1:  # a is lifted to [1, K]; y lost that row axis
        if rw == 1:  # dot product
            return [b.op("Mul", [g, w]) if need[0] else None, b.op("Mul", [g, a]) if need[1] else None]
        g_row = b.op("Unsqueeze", [g, b.ints([-2])])  # [..., 1, N]
        b.shapes[g_row] = [None] * (rw)
        if need[0]:
            full = b.op("MatMul", [g_row, _swap_last(b, w)])  # [..., 1, K]
            flat = b.op("Reshape", [full, b.op("Concat", [b.ints([-1]), b.shape_of(a)], axis=0)])
            out[0] = b.op("ReduceSum", [flat, b.ints([0])], keepdims=0)
        if need[1]:
            a_col = b.op("Unsqueeze", [a, b.ints([-1])])
            b.shapes[a_col] = [None, None]
            out[1] = unbroadcast(b, _mm(b, a_col, g_row), w)  # [..., K, N]
        return out
    if need[0]:
        out[0] = matmul_input_vjp(b, node, g, w, a)
    if need[1]:
        if rw == 1:  # w is lifted to [K, 1]; y lost that column axis
            g_col = b.op("Unsqueeze", [g, b.ints([-1])])  # [..., M, 1]
            t = b.op("MatMul", [_swap_last(b, a), g_col])  # [..., K, 1]
            flat = b.op("Reshape", [t, b.op("Concat", [b.ints([-1]), b.shape_of(w)], axis=0)])
            out[1] = b.op("ReduceSum", [flat, b.ints([0])], keepdims=0)
        else:
            out[1] = unbroadcast(b, _mm(b, _swap_last(b, a), g, node.output[0]), w)
    return out


@register("Det")
def det_vjp(b, node, grads, need):
    a, g = node.input[0], grads[0]
    shape = b.shape(a)
    if shape is None or not isinstance(shape[-1], int):
        raise UnsupportedModelError(f"Det node '{node.name}': the matrix size of '{a}' must be static")
    n, rank = shape[-1], len(shape)
    per_matrix = b.op("Unsqueeze", [g, b.ints([-2, -1])])  # [..., 1, 1]
    if n == 1:
        return [b.op("Expand", [per_matrix, b.shape_of(a)])]
    keep = np.array([[k for k in range(n) if k != i] for i in range(n)], np.int64)  # [n, n - 1]
    others = b.const(keep, np.int64, "minor_index")
    rows = b.op("Gather", [a, others], axis=rank - 2)  # [..., i, r, col]
    minors = b.op("Gather", [rows, others], axis=rank)  # [..., i, r, j, c]
    batch = list(range(rank - 2))
    minors = b.op("Transpose", [minors], perm=batch + [rank - 2, rank, rank - 1, rank + 1])  # [..., i, j, r, c]
    sign = b.const((-1.0) ** np.add.outer(np.arange(n), np.arange(n)), b.float_dtype(a), "cofactor_sign")
    cofactors = b.op("Mul", [b.op("Det", [minors]), sign])
    return [b.op("Mul", [per_matrix, cofactors])]
