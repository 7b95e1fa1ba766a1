"""Many-sample methods (integrated gradients, SmoothGrad) as one in-graph Loop.

Each Loop iteration takes a chunk of c sample indices k, builds c copies of the batch (points of shape
[c*N, ...], sample-major), runs a copy of the forward graph and its reverse pass on them, and adds the
per-sample results into an accumulator of x's shape. Memory is bounded by the chunk, not the sample
count. The body holds its own copies of the weights (see _weights_into_body).
"""

from __future__ import annotations

import math
from typing import Callable

import onnx
from onnx import TensorProto, helper

from onnxattr.compiler import reverse_pass
from onnxattr.graph import GraphBuilder
from onnxattr.select import build_seed


def forward_subgraph(nodes: list[onnx.NodeProto], x: str, y: str) -> list[onnx.NodeProto]:
    """Nodes that depend on x and that y depends on, in graph order."""
    depends = {x}
    for node in nodes:
        if any(i in depends for i in node.input):
            depends.update(o for o in node.output if o)
    needed = {y}
    keep = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output) and any(i in depends for i in node.input):
            keep.append(node)
            needed.update(node.input)
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
        copy = helper.make_node(node.op_type, [rename.get(i, i) for i in node.input], outs,
                                name=b.fresh(node.op_type), domain=node.domain or None)
        copy.attribute.extend(node.attribute)
        copies.append(copy)
    return copies


BODY_WEIGHT_MIN = 2  # elements: scalars are read from the outer scope


def _weights_into_body(b: GraphBuilder, body_nodes, dest) -> None:
    """Initializers of the Loop body (appended to ``dest``) for the large float constants its nodes read.

    onnxruntime applies its layout optimizations (NCHWc convolutions, weight prepacking) to a
    subgraph only for initializers of that subgraph; weights read from the outer scope left the body
    about twice as slow as the same nodes in the main graph. Constants made for the body alone (flipped
    and modified weights) move into it; weights the main graph reads too (the forward's) are copied
    under a new name: the model file grows by those weights once. Each tensor is copied once, straight
    into ``dest`` (the body's initializer field): a body holds all the weights, so copies cost time."""
    outer_reads = {i for n in b.nodes for i in n.input}
    protos = getattr(b.constants, "_protos", {})
    ours = {t.name: t for t in b.initializers}
    renamed, moved = {}, set()
    for node in body_nodes:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
                continue
            t = ours.get(name) or protos.get(name)
            if t is None or t.data_type not in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16) \
                    or math.prod(t.dims) < BODY_WEIGHT_MIN:
                continue
            if name in ours and name not in outer_reads:
                moved.add(name)
                del ours[name]
                dest.append(t)
                renamed[name] = name
                continue
            copy = dest.add()
            copy.CopyFrom(t)
            copy.name = renamed[name] = b.fresh("body_w")
            node.input[k] = copy.name
    if moved:  # no longer visible to the main graph: out of its initializers and of the shared caches
        b.initializers[:] = [t for t in b.initializers if t.name not in moved]
        for key in [k for k, v in b.cache.items() if v in moved]:
            del b.cache[key]


SAMPLES = "onnxattr_samples"  # the batch dim inside the Loop body: count * N


def _body_shapes(cb: GraphBuilder, x: str, names) -> list:
    """Declared shapes of the body's points, forward copy and backward (GraphBuilder.declared_shapes),
    whose tensors carry count * N where the model says N: x's symbolic batch dim is renamed. A static
    batch cannot be told from other dims of that size, so then nothing is declared."""
    batch = (cb.shape(x) or [None])[0]
    if not isinstance(batch, str):
        return []
    return cb.declared_shapes(names, {batch: SAMPLES})


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
    per_sample: Callable[[GraphBuilder, str, str], str] | None = None,
) -> str:
    """Sum over samples k = 0..n-1 of per_sample(backward(make_points(k))): a tensor of x's shape.

    make_points(cb, x, k, count) -> [count*N, ...] given k (float [count]) and count (int64 [1]).
    """
    chunk = max(1, min(chunk, n))
    trips = math.ceil(n / chunk)
    cb = b.child()
    it, cond_in, acc_in = cb.fresh("iter"), cb.fresh("cond"), cb.fresh("acc")
    cb.set_info(acc_in, x)
    start = cb.op("Mul", [it, cb.const(chunk, "int64")])
    stop = cb.op("Min", [cb.op("Add", [start, cb.const(chunk, "int64")]), cb.const(n, "int64")])
    ks = cb.op("Range", [start, stop, cb.const(1, "int64")])
    count = cb.op("Reshape", [cb.op("Sub", [stop, start]), cb.ints([1])])
    points = make_points(cb, x, cb.op("Cast", [ks], to=cb.float_type(x)), count)
    cb.set_info(points, x)

    first = len(cb.nodes)
    rename = {x: points}
    body_forward = copy_nodes(cb, forward_subgraph(nodes, x, y), rename)
    y_copy = rename[y]
    cb.nodes.extend(body_forward)
    tiled = None
    if index is not None:
        tiled = cb.op("Tile", [index, cb.op("Concat", [count, cb.ints([1])], axis=0)])
    seed = build_seed(cb, y_copy, "all" if index is None else "index", seed_scale, tiled)
    grad = reverse_pass(cb, body_forward, points, y_copy, seed, rule_for)
    if grad is None:
        grad = cb.zeros_like(points)
    declared = _body_shapes(cb, x, [points] + [o for n in cb.nodes[first:] for o in n.output])
    if per_sample is not None:
        grad = per_sample(cb, grad, points)
    stacked = cb.op("Reshape", [grad, cb.op("Concat", [cb.ints([-1]), cb.op("Shape", [x])], axis=0)])
    acc_out = cb.op("Add", [acc_in, cb.op("ReduceSum", [stacked, cb.ints([0])], keepdims=0)])
    cond_out = cb.op("Identity", [cond_in])

    x_type = b.float_type(x)
    # the Loop node is assembled in place: make_node/make_graph would copy the body's weights three times
    total = b.fresh("loop")
    loop = helper.make_node("Loop", [b.const(trips, "int64"), "", b.zeros_like(x)], [total], name=b.fresh("Loop"))
    body_attr = loop.attribute.add()
    body_attr.name, body_attr.type = "body", onnx.AttributeProto.GRAPH
    body = body_attr.g
    body.name = b.fresh("sample_body")
    _weights_into_body(b, cb.nodes, body.initializer)
    body.node.extend(cb.nodes)
    body.value_info.extend(declared)
    body.input.extend([helper.make_tensor_value_info(it, TensorProto.INT64, []),
                       helper.make_tensor_value_info(cond_in, TensorProto.BOOL, []),
                       helper.make_tensor_value_info(acc_in, x_type, None)])
    body.output.extend([helper.make_tensor_value_info(cond_out, TensorProto.BOOL, []),
                        helper.make_tensor_value_info(acc_out, x_type, None)])
    b.nodes.append(loop)
    b.set_info(total, x)
    return total

