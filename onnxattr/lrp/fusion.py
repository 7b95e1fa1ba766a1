"""Followers fused into a linear unit: a constant bias Add (after the unit, or after the reshape tf2onnx puts
between a Conv1D and its bias) and an inference BatchNormalization, folded exactly (W' = W s,
b' = (b - mean) s + beta with s = gamma / sqrt(var + eps)). The fused nodes pass relevance through unchanged and the
unit reads relevance at the last follower's output.
"""

from __future__ import annotations

import numpy as np

KERNEL_OPS = ("Conv", "DeformConv")  # weights [M, C / group, k...]: the output channels first


def single_consumer(consumers, name):
    users = consumers.get(name, [])
    return users[0] if len(users) == 1 else None


def fuse_left_bias(b, unit, consumers, graph_outputs):
    """A constant Add alone after W x, when it broadcasts to z without changing z's shape and, for a batch
    axis (z of rank >= 3), is the same for every sample: the unit's bias, as given (a row bias [M, 1] ...)."""
    if unit.bias is not None or unit.out in graph_outputs:
        return
    nxt = single_consumer(consumers, unit.out)
    if nxt is None or nxt.op_type != "Add":
        return
    other = nxt.input[1] if nxt.input[0] == unit.out else nxt.input[0]
    cv, zs = b.value(other), b.shape(unit.out)
    if cv is None or zs is None or cv.ndim > len(zs):
        return
    padded = [1] * (len(zs) - cv.ndim) + list(cv.shape)
    if any(d != 1 and d != z for d, z in zip(padded, zs)) or (len(zs) >= 3 and padded[0] != 1):
        return
    unit.bias = b.const(cv, cv.dtype, "bias")
    unit.followers.append(nxt)
    unit.out = nxt.output[0]


def fuse_followers(b, unit, consumers, graph_outputs):
    """Fuse a constant bias Add and/or a BatchNormalization that alone consume the unit's output."""
    n = unit.node
    while unit.out not in graph_outputs:
        nxt = single_consumer(consumers, unit.out)
        if nxt is None:
            return
        wv = b.value(unit.w)
        if nxt.op_type == "Add" and unit.bias is None and unit.kind != "pool":
            other = nxt.input[1] if nxt.input[0] == unit.out else nxt.input[0]
            cv = b.value(other)
            channels = _out_channels(unit, b.shape(unit.w) if wv is None else list(wv.shape))
            if cv is None or channels is None or not _is_channel_bias(cv, b.rank(unit.out), unit, channels):
                return
            unit.bias = b.const(cv.reshape(-1), cv.dtype, "bias")
        elif nxt.op_type == "BatchNormalization" and wv is not None and (
                n.op_type in KERNEL_OPS or (n.op_type in ("Gemm", "MatMul") and b.rank(unit.out) == 2)):
            # a dense output of rank 3+ has its features last but BatchNorm's channels on axis 1
            params = [b.value(t) for t in nxt.input[1:5]]
            if any(p is None for p in params):
                return
            gamma, beta, mean, var = params
            eps = next((a.f for a in nxt.attribute if a.name == "epsilon"), 1e-5)
            s = gamma / np.sqrt(var + eps)
            if n.op_type in KERNEL_OPS:
                w2 = wv * s.reshape([-1] + [1] * (wv.ndim - 1))
            elif n.op_type == "Gemm" and any(a.name == "transB" and a.i for a in n.attribute):
                w2 = wv * s[:, None]
            else:
                w2 = wv * s[None, :]
            bv = b.value(unit.bias) if unit.bias else 0.0
            b2 = (np.asarray(bv) - mean) * s + beta
            unit.w = b.const(w2.astype(wv.dtype), wv.dtype, "w_bn")
            unit.bias = b.const(np.asarray(b2, wv.dtype).reshape(-1), wv.dtype, "b_bn")
        elif nxt.op_type in _RESHAPING and unit.bias is None and unit.kind == "conv":
            _fuse_bias_after_reshape(b, unit, nxt, consumers, graph_outputs)
            return
        else:
            return
        unit.followers.append(nxt)
        unit.out = nxt.output[0]


_RESHAPING = ("Squeeze", "Unsqueeze", "Transpose")


def _axis_after(b, node, axis: int, rank: int) -> int | None:
    """Where axis ``axis`` of the input of a Squeeze/Unsqueeze/Transpose ends up in its output."""
    attrs = {a.name: list(a.ints) for a in node.attribute}
    if node.op_type == "Transpose":
        perm = attrs.get("perm") or list(reversed(range(rank)))
        return perm.index(axis)
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        value = b.value(node.input[1])
        axes = None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
    if axes is None:
        return None
    if node.op_type == "Squeeze":
        axes = [a % rank for a in axes]
        return None if axis in axes else axis - sum(1 for a in axes if a < axis)
    out_rank = rank + len(axes)
    axes = sorted(a % out_rank for a in axes)
    kept = [i for i in range(out_rank) if i not in axes]
    return kept[axis]


def _fuse_bias_after_reshape(b, unit, shape_node, consumers, graph_outputs):
    """tf2onnx writes Keras' Conv1D as Conv -> Squeeze -> Add(bias): fuse that bias into the unit. The
    shape node keeps its gradient emitter, so relevance still arrives at the Conv output, which then
    lacks the bias (``out_has_bias`` False: rules recompute z with it)."""
    if shape_node.output[0] in graph_outputs:
        return
    add = single_consumer(consumers, shape_node.output[0])
    rank = b.rank(unit.out)
    channels = _out_channels(unit, b.shape(unit.w))
    if add is None or add.op_type != "Add" or rank is None or channels is None:
        return
    other = add.input[1] if add.input[0] == shape_node.output[0] else add.input[0]
    cv = b.value(other)
    axis = _axis_after(b, shape_node, 1, rank)
    out_rank = b.rank(shape_node.output[0])
    if cv is None or axis is None or out_rank is None or cv.ndim > out_rank or cv.size != channels:
        return
    shape = [1] * (out_rank - cv.ndim) + list(cv.shape)
    if any(d != (channels if i == axis else 1) for i, d in enumerate(shape)):
        return
    unit.bias = b.const(cv.reshape(-1), cv.dtype, "bias")
    unit.out_has_bias = False
    unit.followers.append(add)


def _out_channels(unit, wshape):
    """The output channel count from the weight's shape (None when unknown)."""
    n = unit.node
    if wshape is None or any(not isinstance(d, int) for d in wshape):
        return None
    if n.op_type in KERNEL_OPS:
        return wshape[0]
    if n.op_type == "MatMul" and len(wshape) == 2:
        return wshape[1]
    if n.op_type == "Gemm":
        tb = next((a.i for a in n.attribute if a.name == "transB"), 0)
        return wshape[0] if tb else wshape[1]
    return None


def _is_channel_bias(cv, rank, unit, channels):
    """A bias broadcasting along the output channels only (axis 1 for conv, the last for dense)."""
    if rank is None or cv.ndim > rank or cv.size != channels:
        return False
    shape = [1] * (rank - cv.ndim) + list(cv.shape)
    axis = 1 if unit.kind == "conv" else rank - 1
    return all(d == (channels if i == axis else 1) for i, d in enumerate(shape))
