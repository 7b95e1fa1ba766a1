"""Many-sample methods (integrated gradients, SmoothGrad) as one in-graph Loop.

Each Loop iteration takes a chunk of c sample indices k, builds c copies of the batch (points of shape
[c*N, ...], sample-major), runs a copy of the forward graph and its reverse pass on them, and adds the
per-sample results into an accumulator of x's shape. c is chunk_size // N, at least one, so memory is bounded
by the chunk's rows, not by the sample count or the batch. The body holds its own copies of the weights (see
_body_weights). Graph inputs with x's batch axis (an attention mask) enter it as count copies of their rows, and
what they feed is computed again there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxattr.compiler import check_supported, path_nodes, reverse_pass
from onnxattr.graph import GraphBuilder, live_nodes, names_read, node_reads, rename_reads, write_tensor
from onnxattr.select import build_seed, selected_value


def forward_subgraph(nodes: list[onnx.NodeProto], x: str, y: str, sources=(),
                     repeatable=lambda name: False) -> list[onnx.NodeProto]:
    """Nodes that depend on x or on a name in ``sources`` and that y depends on other than through x's own
    producer (x is given), in graph order; a node whose needed outputs do not depend on x and are
    ``repeatable`` (taken from outside, a copy per point) is left out with what only it needs."""
    from_x, depends = {x}, {x, *sources}
    for node in nodes:
        reads = node_reads(node)
        if any(i in from_x for i in reads):
            from_x.update(o for o in node.output if o)
        if any(i in depends for i in reads):
            depends.update(o for o in node.output if o)
    needed = {y}
    keep = []
    for node in reversed(nodes):
        outs = [o for o in node.output if o in needed]
        if x in node.output or not outs or not any(i in depends for i in node_reads(node)):
            continue
        if all(o not in from_x and repeatable(o) for o in outs):
            continue
        keep.append(node)
        needed.update(node_reads(node))
    keep.reverse()
    return keep


def copy_nodes(b: GraphBuilder, nodes, rename: dict[str, str]) -> list[onnx.NodeProto]:
    """Copies of nodes with fresh output names (``rename`` is extended and used for inputs)."""
    copies = []
    for node in nodes:
        outs = []
        for o in node.output:
            if not o:
                outs.append("")
                continue
            new = b.fresh("s")
            rename[o] = new
            b.set_info(new, o)
            outs.append(new)
        copy = helper.make_node(node.op_type, list(node.input), outs, name=b.fresh(node.op_type),
                                domain=node.domain or None)
        copy.attribute.extend(node.attribute)
        rename_reads(copy, rename)
        copies.append(copy)
    return copies


BODY_WEIGHT_MIN = 2  # elements: scalars are read from the outer scope


def _body_weights(b: GraphBuilder, body_nodes) -> list:
    """The Loop body's own initializers, as (name, array or TensorProto), for the large float constants
    its nodes read (``body_nodes`` are renamed to match).

    onnxruntime applies its layout optimizations (NCHWc convolutions, weight prepacking) to a
    subgraph only for initializers of that subgraph; weights read from the outer scope left the body
    about twice as slow as the same nodes in the main graph. Constants made for the body alone (flipped
    and modified weights) move into it; weights the main graph reads too (the forward's) are copied
    under a new name: the model file grows by those weights once. Nothing is copied here: the body is
    filled once the Loop node sits in the assembled graph (GraphBuilder.fill_later), as protobuf copies
    a node's whole body each time the node is appended somewhere."""
    outer_reads = {i for n in b.nodes for i in n.input}
    protos = getattr(b.constants, "_protos", {})
    dequantized = getattr(b.constants, "_derived", {})  # quantized weights: DequantizeLinear of constants
    renamed, weights = {}, []
    for node in body_nodes:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
                continue
            ours = b.pending.get(name)
            if ours is None and name in dequantized:  # the body gets the float value (the main graph keeps
                ours = b.value(name)                  # the node, which onnxruntime fuses into integer kernels)
            if ours is not None:
                dtype, size = helper.np_dtype_to_tensor_dtype(ours.dtype), ours.size
            elif name in protos:
                dtype, size = protos[name].data_type, math.prod(protos[name].dims)
            else:
                continue
            if dtype not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16) or size < BODY_WEIGHT_MIN:
                continue
            if name in b.pending and name not in outer_reads:  # no longer the main graph's
                weights.append((name, b.pending.pop(name)))
                renamed[name] = name
                for key in [key for key, v in b.cache.items() if v == name]:
                    del b.cache[key]
                continue
            renamed[name] = node.input[k] = b.fresh("body_w")  # read by the main graph too: a copy
            weights.append((renamed[name], ours if ours is not None else protos[name]))
    return weights


def _write_weights(field, weights) -> None:
    for name, value in weights:
        if isinstance(value, np.ndarray):
            write_tensor(field, name, value)
        else:
            t = field.add()
            t.CopyFrom(value)
            t.name = name


SAMPLES = "onnxattr_samples"  # the batch dim inside the Loop body: count * N


def _body_shapes(cb: GraphBuilder, x: str, names, batch: set[str]) -> list:
    """Declared shapes of the body's points, forward copy and backward (GraphBuilder.declared_shapes),
    whose tensors carry count * N where the model says N: the symbolic batch dims (``batch``) are renamed.
    A static batch cannot be told from other dims of that size, so then nothing is declared."""
    if not isinstance((cb.shape(x) or [None])[0], str):
        return []
    return cb.declared_shapes(names, {name: SAMPLES for name in batch})


def batch_names(b: GraphBuilder, nodes, x: str) -> set[str]:
    """The names under which the model declares the batch axis: x's first axis, and the first axis of each
    graph input x is computed from (shape inference may name an intermediate x's batch axis afresh,
    unk__2), except a name that any of them uses on another axis (a position table [S, E] added to
    embeddings [N, S, E] has S first, and S is no batch)."""
    ancestors = live_nodes(nodes, [x])
    made = {o for node in ancestors for o in node.output}
    inputs = {i for node in ancestors for i in names_read([node]) if i and i not in made and b.value(i) is None}
    firsts, others = set(), set()
    for shape in (b.shape(t) or [] for t in inputs | {x}):
        if shape and isinstance(shape[0], str):
            firsts.add(shape[0])
        others.update(d for d in shape[1:] if isinstance(d, str))
    return firsts - others


def batch_axis_reads(b: GraphBuilder, nodes, x: str, names: set[str]) -> list[str]:
    """The tensors ``nodes`` read from outside themselves (their subgraphs included), besides x and
    constants, whose first axis is the batch axis (declared under one of ``names``): a transformer's
    attention mask [N, S], token ids when x is their embedding. Tensors without that axis (an adjacency,
    a shared bias) are shared by all samples; a model with a static batch runs one point per sample in
    each trip, so none is repeated."""
    made = {o for node in nodes for o in node.output}
    found = []
    for node in nodes:
        for name in node_reads(node):
            if name and name != x and name not in made and name not in found and b.value(name) is None \
                    and (b.shape(name) or [None])[0] in names:
                found.append(name)
    return found


def points_per_trip(b: GraphBuilder, x: str, chunk: int) -> int | str:
    """How many points a Loop trip runs: ``chunk`` rows' worth, floor(chunk / N) points for a batch x of N samples
    (at least one), so a trip's [points*N, ...] stays near ``chunk`` rows whatever the batch (a batch of 64 with
    16 points a trip ran 1,024 rows at once). An int where N is fixed, else an int64 scalar computed at run time."""
    if chunk <= 1:
        return 1
    rows = (b.shape(x) or [None])[0]
    if isinstance(rows, int):
        return max(1, chunk // max(rows, 1))
    rows = b.op("Gather", [b.op("Shape", [x]), b.const(0, "int64")])
    return b.op("Max", [b.op("Div", [b.const(chunk, "int64"), b.op("Max", [rows, b.const(1, "int64")])]),
                        b.const(1, "int64")])


def repeat_rows(cb: GraphBuilder, name: str, count: str) -> str:
    """``name`` [N, ...] repeated count times along its first axis: [count*N, ...], sample-major like the
    points."""
    rank = cb.rank(name)
    reps = count if rank == 1 else cb.op("Concat", [count, cb.ints([1] * (rank - 1))], axis=0)
    out = cb.op("Tile", [name, reps])
    cb.set_info(out, name)
    return out


RUN_TIME_CHECK = "run_time_check"  # the name of checked()'s node, which the API recognises in onnxruntime's errors
ROWS_CHECK = "rows_per_point"  # the name of the rows check, which the API recognises in onnxruntime's errors


def _fails_unless(b: GraphBuilder, ok: str, value: str, name: str, shape: str | None = None) -> str:
    """``value`` (int64 [1], or of the int64 ``shape`` given) passed through a Reshape named ``name`` to that
    shape when the bool scalar ``ok`` holds and to -2s (refused) when not: onnxruntime stops the run there, and
    the API reads the name in its error to say what was wrong."""
    out = b.fresh("checked")
    target = b.op("Where", [ok, b.ints([1]) if shape is None else shape, b.ints([-2])])
    b.nodes.append(helper.make_node("Reshape", [value, target], [out], name=b.fresh(name)))
    if value in b.types:
        b.types[out] = b.types[value]
    return out


def checked(b: GraphBuilder, count: str, ok: str, what: str) -> str:
    """The int64 scalar ``count``, checked before a Loop trips over it: the run fails unless the bool scalar
    ``ok`` holds, with ``what`` in the failing node's name (RUN_TIME_CHECK-what)."""
    out = _fails_unless(b, ok, b.op("Reshape", [count, b.ints([1])]), f"{RUN_TIME_CHECK}-{what}")
    # a Gather, not a Reshape: onnxruntime fuses consecutive Reshapes, which would drop the check
    return b.op("Gather", [out, b.const(0, "int64")], axis=0)


def checked_tensor(b: GraphBuilder, x: str, ok: str, what: str) -> str:
    """``x`` passed on as it is when the bool scalar ``ok`` holds; else the run fails with ``what`` in the failing
    node's name (RUN_TIME_CHECK-what), as ``checked``'s do (KernelSHAP's and LIME's fit that did not converge)."""
    return _fails_unless(b, ok, x, f"{RUN_TIME_CHECK}-{what}", b.op("Shape", [x]))


def first_size(b: GraphBuilder, name: str) -> str:
    """int64 [1]: the size of ``name``'s first axis at run time (its rows)."""
    return b.op("Slice", [b.op("Shape", [name]), b.ints([0]), b.ints([1])])


def _one_row_per_point(cb: GraphBuilder, y_copy: str, y: str, count: str) -> str | None:
    """A bool the Loop's condition takes, true, that onnxruntime can only compute when the copy of y has
    count times y's rows. A model that mixes the points of its batch (its batch axis is not x's first, a
    feed declared under another batch name, a mean over the batch) would give a wrong map without a word.
    The check feeds the Loop's condition, so no optimizer drops it. None for a scalar y (sample_loop runs
    one point per sample at a time there)."""
    if cb.rank(y) in (0, None):
        return None
    ok = cb.op("Reshape", [cb.op("Equal", [first_size(cb, y_copy), cb.op("Mul", [count, first_size(cb, y)])]),
                           cb.ints([])])
    rows_checked = _fails_unless(cb, ok, cb.ints([0]), ROWS_CHECK)
    return cb.op("Equal", [cb.op("ReduceSum", [rows_checked], keepdims=0), cb.const(0, "int64")])


@dataclass(frozen=True)
class Trip:
    """What one trip of the Loop gives a per_sample that carries states (sample_loop's carry_like)."""

    count: str  # int64 [1]: the points of this trip
    copies: dict  # the model's tensor -> its copy in the body, at the points (x -> the points)
    carried: list  # the states as the previous trip left them, one per carry_like


def sample_loop(
    b: GraphBuilder,
    nodes: list[onnx.NodeProto],
    x: str,
    y: str,
    index: str | None,
    n: int,
    chunk: int,
    make_points: Callable[[GraphBuilder, str, str, str], str],
    seed_scale: str = "one",
    rule_for=None,
    body_rules: Callable | None = None,
    per_sample: Callable[[GraphBuilder, str, str, str], str] | None = None,
    forward_only: Callable[[GraphBuilder, str, str, str], str] | None = None,
    mean_over: int | None = None,
    factor: Callable[[GraphBuilder, str], str] | None = None,
    sums: int = 1,
    wide: bool = False,
    acc_like: str | list | None = None,
    carry_like: tuple[str, ...] = (),
    backward: Callable | None = None,
) -> str | list[str]:
    """Sum over samples k = 0..n-1 of per_sample(backward(make_points(k))): a tensor of x's shape (divided by
    ``mean_over`` when given). ``n`` is an int, or an int64 scalar tensor known at run time. float16 and
    bfloat16 models sum (and divide) in float32: thousands of float16 adds lose digits and overflow 65504.
    ``wide`` sums (and divides) in float64 whatever x's type, and returns the totals in float64 (VarGrad's
    E[g^2] - E[g]^2 cancels; the float32 gradients square exactly in float64).
    With ``sums`` > 1, per_sample returns that many tensors and the Loop sums each: a list of totals.
    ``acc_like``: a tensor [N, ...] whose shape the totals take instead of x's (kernel_shap's drop per
    coalition, [N, S]); the contributions are then [count*N, ...] of its trailing shape. A list gives one
    per sum (None: x's).
    ``carry_like``: tensors [N, ...] whose shapes states carried from trip to trip take (zeros before the
    first); per_sample is then called as per_sample(cb, grad, points, ks, trip) with a Trip and returns
    (contributions, the carried states for the next trip). The body's reverse pass then also records the
    signal at the copies of the kept tensors (b.keep) in cb.kept (conductance's gradients at a layer).

    make_points(cb, x, ks, count) -> [count*N, ...] given this trip's sample indices ks (int64 [count]) and
    count (int64 [1]); per_sample(cb, grad, points, ks) -> the gradients [count*N, ...] to sum.
    ``factor(b, total)`` returns a tensor the total is multiplied by before any cast back to x's type.
    ``forward_only(cb, selected, ks, count)``, given the selected output of every point ([count*N], the
    seed's selection of y: index, or the sum for "all"), replaces the backward pass and returns the
    [count*N, ...] contributions to sum (occlusion's output drops over each window).
    ``backward(cb, body_forward, points, y_copy, seed, copies)`` replaces the body's reverse pass and returns the
    gradient at the points (neuron conductance's two passes through one tensor); ``copies``: the model's tensor ->
    its copy in the body.
    ``body_rules(cb, body_forward, points)``, in place of ``rule_for``, makes the reverse pass's rules inside the
    body from its copy of the forward (DeepLIFT's reference forward, one reference per point).
    """
    if b.rank(y) == 0:  # a loss over the batch (a mean, say): the Loop's batch must be the data's own N
        chunk = 1
    per = points_per_trip(b, x, max(1, chunk if not isinstance(n, int) else min(chunk, n)))
    if isinstance(n, int) and isinstance(per, int):
        trips, total_n = b.const(math.ceil(n / per), "int64"), None
    else:  # a count known at run time (int64 scalar): occlusion's windows over a dynamic input, or the batch's
        total_n = n if not isinstance(n, int) else b.const(n, "int64")
        step = b.const(per, "int64") if isinstance(per, int) else per
        trips = b.op("Div", [b.op("Add", [total_n, b.op("Sub", [step, b.const(1, "int64")])]), step])
    x_type = b.float_type(x)
    # float16 / bfloat16: the sum over samples is kept in float32 (many trips of float16 adds lose digits, and
    # the sum overflows 65504 before a division by n)
    acc_type = TensorProto.FLOAT if x_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16) else x_type
    if wide:
        acc_type = TensorProto.DOUBLE
    likes = list(acc_like) if isinstance(acc_like, (list, tuple)) else [acc_like] * sums
    assert len(likes) == sums, "one acc_like per sum"
    cb = b.child()
    it, cond_in = cb.fresh("iter"), cb.fresh("cond")
    acc_ins = [cb.fresh("acc") for _ in range(sums)]
    carry_ins = [cb.fresh("carry") for _ in carry_like]
    step = cb.const(per, "int64") if isinstance(per, int) else per
    start = cb.op("Mul", [it, step])
    stop = cb.op("Min", [cb.op("Add", [start, step]), cb.const(n, "int64") if total_n is None else total_n])
    ks = cb.op("Range", [start, stop, cb.const(1, "int64")])
    count = cb.op("Reshape", [cb.op("Sub", [stop, start]), cb.ints([1])])
    points = make_points(cb, x, ks, count)
    cb.set_info(points, x)

    first = len(cb.nodes)
    # per-sample tensors enter the body as repeated rows, one copy per point; what the graph's
    # per-sample inputs feed is computed again inside from theirs, so a mask reshaped with the batch
    # size the model reads off its input matches the points
    names = batch_names(b, nodes, x)
    repeatable = lambda t: (b.shape(t) or [None])[0] in names  # noqa: E731
    forward = forward_subgraph(nodes, x, y, batch_axis_reads(b, nodes, x, names), repeatable)
    if forward_only is None:  # errors name the model's nodes, not the body's copies of them
        check_supported(path_nodes(forward, x, y, b)[0], rule_for, b)
    rename = {x: points, **{t: repeat_rows(cb, t, count) for t in batch_axis_reads(b, forward, x, names)}}
    body_forward = copy_nodes(cb, forward, rename)
    cb.nodes.extend(body_forward)
    y_copy = rename[y]
    rows_ok = _one_row_per_point(cb, y_copy, y, count)
    tiled = None
    if index is not None:
        tiled = cb.op("Tile", [index, cb.op("Concat", [count, cb.ints([1])], axis=0)])
    seed = build_seed(cb, y_copy, "all" if index is None else "index", seed_scale, tiled)
    if forward_only is not None:
        grad = forward_only(cb, selected_value(cb, y_copy, seed), ks, count)
    elif backward is not None:
        grad = backward(cb, body_forward, points, y_copy, seed, rename)
    else:
        rules = body_rules(cb, body_forward, points) if body_rules is not None else rule_for
        if carry_like:
            cb.keep = frozenset(rename[t] for t in b.keep if t in rename)
        grad = reverse_pass(cb, body_forward, points, y_copy, seed, rules)
    if grad is None:
        grad = cb.zeros_like(points)
    declared = _body_shapes(cb, x, [points] + [o for n in cb.nodes[first:] for o in n.output], names)
    carry_outs = []
    if carry_like:
        grad, carry_outs = per_sample(cb, grad, points, ks, Trip(count, rename, carry_ins))
        assert len(carry_outs) == len(carry_ins), "per_sample returns one state per carried one"
    elif per_sample is not None:
        grad = per_sample(cb, grad, points, ks)
    grads = [grad] if sums == 1 else list(grad)
    assert len(grads) == sums, "per_sample returns one tensor per sum"
    acc_outs = []
    for g, acc_in, like in zip(grads, acc_ins, likes):
        # [count, N, ...] by the count, not -1, and a 0 in it is a size (allowzero): a batch of 0 samples
        # a float16 model's contributions, or a tensor of another float type than x's (conductance's kept ones)
        if cb.types.get(g, x_type) != acc_type:
            g = cb.op("Cast", [g], to=acc_type)
        stacked = cb.op("Reshape", [g, cb.op("Concat", [count, cb.op("Shape", [like or x])], axis=0)],
                        allowzero=1)
        acc_outs.append(cb.op("Add", [acc_in, cb.op("ReduceSum", [stacked, cb.ints([0])], keepdims=0)]))
    cond_out = cb.op("Identity", [cond_in]) if rows_ok is None else cb.op("And", [cond_in, rows_ok])

    # the Loop node is assembled in place: make_node/make_graph would copy the body's weights three times
    totals = [b.fresh("loop") for _ in range(sums)]
    zeros = {}
    for like in likes:
        if like not in zeros:
            zeros[like] = b.zeros_like(x) if acc_type == x_type and like is None else b.op(
                "ConstantOfShape", [b.shape_of(like or x)], value=helper.make_tensor("v", acc_type, [1], [0.0]))
    carried = [b.zeros_like(like) for like in carry_like]
    loop = helper.make_node("Loop", [trips, ""] + [zeros[like] for like in likes] + carried,
                            totals + [b.fresh("carried") for _ in carry_like], name=b.fresh("Loop"))
    body_attr = loop.attribute.add()
    body_attr.name, body_attr.type = "body", onnx.AttributeProto.GRAPH
    body = body_attr.g
    body.name = b.fresh("sample_body")
    weights = _body_weights(b, cb.nodes)
    body.node.extend(cb.nodes)
    body.value_info.extend(declared)
    body.input.extend([helper.make_tensor_value_info(it, TensorProto.INT64, []),
                       helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []),
                       *[helper.make_tensor_value_info(a, acc_type, None) for a in acc_ins],
                       *[helper.make_tensor_value_info(c, b.float_type(like), None)
                         for c, like in zip(carry_ins, carry_like)]])
    body.output.extend([helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
                        *[helper.make_tensor_value_info(a, acc_type, None) for a in acc_outs],
                        *[helper.make_tensor_value_info(c, b.float_type(like), None)
                          for c, like in zip(carry_outs, carry_like)]])
    b.nodes.append(loop)
    b.fill_later[loop.name] = lambda node: _write_weights(_body(node).initializer, weights)
    out = [_finish_total(b, total, x, acc_type, mean_over, factor, cast_back=not wide, like=like)
           for total, like in zip(totals, likes)]
    return out[0] if sums == 1 else out


def _finish_total(b: GraphBuilder, total: str, x: str, acc_type: int, mean_over, factor, cast_back: bool,
                  like: str | None = None) -> str:
    """The Loop's total divided by ``mean_over``, times ``factor``, in the accumulator's type; then cast back
    to x's type unless not ``cast_back``. Its shape is declared as ``like``'s (x's by default)."""
    if mean_over is not None:  # divided while still in the accumulator's type
        acc_dtype = helper.tensor_dtype_to_np_dtype(acc_type)
        total = b.op("Div", [total, b.const(np.array(float(mean_over), acc_dtype), acc_dtype, "count")])
    if factor is not None:  # factor(b, total): of the total's type (occlusion's 1 / windows covering)
        b.types[total] = acc_type
        total = b.op("Mul", [total, factor(b, total)])
    if cast_back and acc_type != b.float_type(x):
        total = b.op("Cast", [total], to=b.float_type(x))
    b.set_info(total, x)
    if like is not None:
        b.shapes.pop(total, None)
        if like in b.shapes:
            b.shapes[total] = b.shapes[like]
    if not cast_back:
        b.types[total] = acc_type
    return total


def _body(loop: onnx.NodeProto) -> onnx.GraphProto:
    return next(a.g for a in loop.attribute if a.name == "body")
