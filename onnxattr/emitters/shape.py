"""Data movement: Reshape-likes, Transpose, Concat, Split, Slice, Pad, Gather, Tile, Expand, Cast(Like), ...

Reshape/Flatten: dx = reshape(g, shape(x)); Squeeze/Unsqueeze with known axes: the other one on the same axes
(no Shape node where the batch is dynamic). Transpose: inverse permutation.
Concat: split g at the operands' sizes; Split: concat the output gradients (zeros where none).
Slice with unit steps and Pad(constant): Pad g with the complementary (negated) pads.
Every other pure movement (Gather*, Tile, strided Slice, reflect/edge Pad, DepthToSpace, Compress, ...) uses the
index trick: run the op on a tensor holding each element's flat position, then scatter-add g there.
Trilu: the same triangle of g. ScatterElements/ScatterND: data gets g with the overwritten positions zeroed (all
of g for reduction="add"), updates gets g gathered at the indices; for max and min, the values equal to the result
share g evenly (torch's convention for ties); for mul, each factor gets g times the product of the others.
TensorScatter (a KV cache's update): past_cache gets g with the written rows zeroed (the op itself, writing zeros);
update gets g's rows at write_indices[n] + s (modulo the cache's length when circular), one GatherElements.
"""

import numpy as np
from onnx import TensorProto

from onnxattr.emitters.broadcast import unbroadcast
from onnxattr.emitters.pooling import scatter_add, scatter_add_flat
from onnxattr.emitters.registry import known_rank, node_attr, register
from onnxattr.errors import UnsupportedModelError


def index_trick_vjp(b, node, x, g, dtype=TensorProto.INT64):
    """dx for a pure data-movement op: scatter-add g at the source positions of its output."""
    count = b.op("Size", [x])
    flat = b.op("Range", [b.const(0, np.int64), count, b.const(1, np.int64)])
    positions = b.op("Reshape", [flat, b.shape_of(x)])
    if dtype != TensorProto.INT64:
        positions = b.op("Cast", [positions], to=dtype)
    moved = b.replay(node, {x: positions})[0]
    if dtype != TensorProto.INT64:
        moved = b.op("Cast", [moved], to=TensorProto.INT64)
    return scatter_add_flat(b, x, moved, g)


@register("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape_vjp(b, node, grads, need):
    axes = b.value(node.input[1]) if node.op_type in ("Squeeze", "Unsqueeze") and len(node.input) > 1 else None
    if axes is not None and b.static_shape(node.input[0]) is None:  # Unsqueeze undoes Squeeze and back
        # as a vector: torch's dynamo exporter gives Unsqueeze a scalar axis, which onnxruntime's Squeeze refuses
        axes = b.ints([int(a) for a in np.atleast_1d(axes)])
        out = b.op("Unsqueeze" if node.op_type == "Squeeze" else "Squeeze", [grads[0], axes])
    else:
        out = b.op("Reshape", [grads[0], b.shape_of(node.input[0])])
    return [out] + [None] * (len(node.input) - 1)


@register("Identity", "Dropout")
def identity_vjp(b, node, grads, need):
    return [grads[0]] + [None] * (len(node.input) - 1)


@register("Cast")
def cast_vjp(b, node, grads, need):
    """dx = g in x's type; for a quantizer's integer codes (emitters/quantize.py) g itself, their float gradient."""
    x = node.input[0]
    if x in b.types and not b.is_float(x):
        return [grads[0]]
    return [b.op("Cast", [grads[0]], to=b.types.get(x, TensorProto.FLOAT))]


@register("CastLike")
def castlike_vjp(b, node, grads, need):
    """y = CastLike(x, t): dx = g cast back to x's type; t only lends its type (no gradient).
    PyTorch's dynamo exporter writes CastLike(constant, activation) around BatchNorm and Linear."""
    x = node.input[0]
    if not need[0]:
        return [None, None]
    dx = b.op("Cast", [grads[0]], to=b.types[x]) if x in b.types else b.op("CastLike", [grads[0], x])
    return [dx, None]


@register("Transpose")
def transpose_vjp(b, node, grads, need):
    perm = node_attr(node, "perm") or list(reversed(range(known_rank(b, node))))
    inverse = [0] * len(perm)
    for i, p in enumerate(perm):
        inverse[p] = i
    return [b.op("Transpose", [grads[0]], perm=inverse)]


@register("Concat")
def concat_vjp(b, node, grads, need):
    axis = node_attr(node, "axis")
    sizes = []
    static = True
    for x in node.input:
        s = b.shape(x)
        d = s[axis] if s is not None else None
        if not isinstance(d, int):
            static = False
        sizes.append(d)
    if static:
        split = b.ints(sizes)
    else:
        split = b.op("Concat", [
            b.op("Gather", [b.op("Shape", [x]), b.ints([axis])]) for x in node.input  # Gather takes axis < 0
        ], axis=0)
    parts = b.op("Split", [grads[0], split], n_out=len(node.input), axis=axis)
    parts = parts if isinstance(parts, list) else [parts]
    return [p if n else None for p, n in zip(parts, need)]


@register("Split")
def split_vjp(b, node, grads, need):
    axis = node_attr(node, "axis", 0)
    pieces = [g if g is not None else b.zeros_like(y) for g, y in zip(grads, node.output)]
    return [b.op("Concat", pieces, axis=axis)] + [None] * (len(node.input) - 1)


def _const_inputs(b, node, first):
    vals = []
    for i in range(first, len(node.input)):
        if not node.input[i]:
            vals.append(None)
            continue
        v = b.value(node.input[i])
        if v is None:
            return None
        vals.append(v)
    return vals


@register("Slice")
def slice_vjp(b, node, grads, need):
    x, g = node.input[0], grads[0]
    xs = b.static_shape(x)
    consts = _const_inputs(b, node, 1)
    rest = [None] * (len(node.input) - 1)
    if xs is not None and consts is not None:
        starts, ends = consts[0], consts[1]
        axes = consts[2] if len(consts) > 2 and consts[2] is not None else np.arange(len(starts))
        steps = consts[3] if len(consts) > 3 and consts[3] is not None else np.ones(len(starts), np.int64)
        if np.all(steps == 1):
            begin = [0] * len(xs)
            end = [0] * len(xs)
            for s, e, a in zip(starts, ends, axes):
                a = int(a) % len(xs)
                lo, hi, _ = slice(int(s), int(e), 1).indices(xs[a])
                begin[a] = lo
                end[a] = xs[a] - lo - max(hi - lo, 0)
            return [b.op("Pad", [g, b.ints(begin + end)])] + rest
    return [index_trick_vjp(b, node, x, g)] + rest


@register("Pad")
def pad_vjp(b, node, grads, need):
    """constant mode: Pad(g, -pads) crops what was added (and zero-fills what was cropped); pads are an
    input (canonicalize lifts models to opset 17)."""
    x, g = node.input[0], grads[0]
    mode = node_attr(node, "mode", "constant")
    rest = [None] * (len(node.input) - 1)
    if mode != "constant":
        return [index_trick_vjp(b, node, x, g)] + rest
    pads = node.input[1]
    pv = b.value(pads)
    neg = b.ints(-pv) if pv is not None else b.op("Neg", [pads])
    axes = node.input[3] if len(node.input) > 3 and node.input[3] else ""
    ins = [g, neg] + (["", axes] if axes else [])
    return [b.op("Pad", ins)] + rest


@register("Expand")
def expand_vjp(b, node, grads, need):
    return [unbroadcast(b, grads[0], node.input[0], node.output[0]), None]


@register("Gather", "GatherElements", "GatherND", "Tile", "DepthToSpace", "SpaceToDepth", "ReverseSequence", "Compress")
def movement_vjp(b, node, grads, need):
    x = node.input[0]
    dtype = TensorProto.DOUBLE if node.op_type in ("DepthToSpace", "SpaceToDepth") else TensorProto.INT64
    return [index_trick_vjp(b, node, x, grads[0], dtype)] + [None] * (len(node.input) - 1)


@register("Trilu")
def trilu_vjp(b, node, grads, need):
    upper = node_attr(node, "upper", 1)
    return [b.op("Trilu", [grads[0]] + list(node.input[1:2]), upper=upper)] + [None] * (len(node.input) - 1)


@register("ScatterElements", "ScatterND")
def scatter_vjp(b, node, grads, need):
    """data: g where not overwritten (reduction none) or g (add); updates: g gathered at the indices. max/min: g
    goes to the values equal to the result, shared evenly among ties (torch's scatter_reduce amax/amin). mul: each
    factor gets g times the product of the other factors at its position."""
    reduction = node_attr(node, "reduction", "none")
    if reduction not in ("none", "add", "max", "min", "mul"):
        raise UnsupportedModelError(f"{node.op_type} node '{node.name}': reduction '{reduction}' is not supported "
                                    "(only 'none', 'add', 'max', 'min' and 'mul')")
    data, indices, updates = node.input
    g = grads[0]
    elements = node.op_type == "ScatterElements"
    axis = {"axis": node_attr(node, "axis", 0)} if elements else {}
    gather = "GatherElements" if elements else "GatherND"
    if reduction in ("max", "min"):
        return _scatter_extreme_vjp(b, node, g, need, gather, axis)
    if reduction == "mul":
        return _scatter_product_vjp(b, node, g, need, gather, axis)
    gd = gu = None
    if need[0]:
        gd = g if reduction == "add" else b.op(node.op_type, [g, indices, b.zeros_like(updates)], **axis)
    if need[2]:
        gu = b.op(gather, [g, indices], **axis)
    return [gd, None, gu]


def _scatter_extreme_vjp(b, node, g, need, gather, axis):
    """y = max (min) of data and the updates sent to each position. The winners (values equal to y) share g:
    count = [data = y] + scatter-add of [update = y at its index]; dx = [x = y] * g / count."""
    data, indices, updates = node.input
    y = node.output[0]
    ftype = b.float_type(g)
    data_wins = b.op("Cast", [b.op("Equal", [data, y])], to=ftype)
    update_wins = b.op("Cast", [b.op("Equal", [updates, b.op(gather, [y, indices], **axis)])], to=ftype)
    count = scatter_add(b, data_wins, indices, update_wins, node.op_type, **axis)
    share = b.op("Div", [g, b.op("Max", [count, b.scalar(1.0, g)])])  # count >= 1 wherever y came from somewhere
    gd = b.op("Mul", [data_wins, share]) if need[0] else None
    gu = b.op("Mul", [update_wins, b.op(gather, [share, indices], **axis)]) if need[2] else None
    return [gd, None, gu]


def _scatter_product_vjp(b, node, g, need, gather, axis):
    """y[p] = data[p] * prod of the updates u_i sent to p. dy/ddata = prod u (the scatter of u into ones);
    dy/du_i = data[p] * prod of the other updates: data[p] * P[p] / u_i, with P the product of p's nonzero updates,
    where no other update at p is 0, else 0 (a zero u_i divides nothing out: torch's scatter_reduce prod rule)."""
    data, indices, updates = node.input
    ftype = b.float_type(g)
    gd = gu = None
    if need[0]:
        gd = b.op("Mul", [g, b.op(node.op_type, [b.full_like(data, 1.0), indices, updates], reduction="mul", **axis)])
    if need[2]:
        is_zero = b.op("Equal", [updates, b.scalar(0.0, updates)])
        nonzero = b.op("Where", [is_zero, b.scalar(1.0, updates), updates])
        zeros = b.op("Cast", [is_zero], to=ftype)
        zero_count = scatter_add(b, b.zeros_like(data), indices, zeros, node.op_type, **axis)
        product = b.op(node.op_type, [data, indices, nonzero], reduction="mul", **axis)  # data * P
        others_zero = b.op("Sub", [b.op(gather, [zero_count, indices], **axis), zeros])
        rest = b.op("Div", [b.op(gather, [b.op("Mul", [g, product]), indices], **axis), nonzero])
        gu = b.op("Where", [b.op("Greater", [others_zero, b.scalar(0.5, updates)]), b.scalar(0.0, updates), rest])
    return [gd, None, gu]


@register("TensorScatter")
def tensor_scatter_vjp(b, node, grads, need):
    past, update = node.input[0], node.input[1]
    written = node.input[2] if len(node.input) > 2 and node.input[2] else None
    g = grads[0]
    rank = known_rank(b, node, past)
    axis = node_attr(node, "axis", -2) % rank
    circular = node_attr(node, "mode", "linear") == "circular"
    gp = gu = None
    if need[0]:
        gp = b.op("TensorScatter", [g, b.zeros_like(update)] + ([written] if written else []),
                  axis=axis, mode="circular" if circular else "linear")
    if need[1]:
        length = b.op("Gather", [b.op("Shape", [update]), b.const(axis, np.int64)])
        rows = b.op("Range", [b.const(0, np.int64), length, b.const(1, np.int64)])  # [S]
        if written:
            rows = b.op("Add", [b.op("Unsqueeze", [written, b.ints([1])]), rows])  # [N, S]
        if circular:
            rows = b.op("Mod", [rows, b.op("Gather", [b.op("Shape", [past]), b.const(axis, np.int64)])])
        spread = [k for k in range(rank) if k != axis and (k != 0 or not written)]
        index = b.op("Expand", [b.op("Unsqueeze", [rows, b.ints(spread)]), b.op("Shape", [update])])
        gu = b.op("GatherElements", [g, index], axis=axis)
    return [gp, gu, None]
