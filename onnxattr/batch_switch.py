"""Assemble, batch switch: one model holding two compiled forms of the same explanation, the one run chosen by the
batch at run time, If(N <= limit, small, large). A recurrent net's fused backward (emitters/recurrent.py) is the faster
at small batches and its unrolled backward at large ones (benchmarks/results/NOTES.md), so a model whose batch is
dynamic gets both. The two forms have the same inputs and outputs; the weights they share are stored once."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

PREFIX = "onnxattr_batch_switch/"


def _has_subgraphs(model: onnx.ModelProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in model.graph.node
               for a in n.attribute)


def _same(a: onnx.TensorProto, b: onnx.TensorProto) -> bool:
    if (a.data_type, list(a.dims)) != (b.data_type, list(b.dims)):
        return False
    if a.raw_data and b.raw_data:
        return a.raw_data == b.raw_data
    return a.SerializeToString() == b.SerializeToString()


def _branch(model: onnx.ModelProto, prefix: str, shared: set, initializers: list) -> onnx.GraphProto:
    """``model``'s graph as an If branch: every tensor it makes and every initializer of its own renamed with
    ``prefix`` (names must not repeat across the branches and the outer graph); its own initializers go to
    ``initializers`` (the outer graph's), the shared ones are read from there."""
    g = model.graph
    rename = {o: prefix + o for n in g.node for o in n.output if o}
    for t in g.initializer:
        if t.name not in shared:
            rename[t.name] = prefix + t.name
            initializers.append(t)
            t.name = prefix + t.name
    nodes = []
    for n in g.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(n)
        copy.name = prefix + n.name
        copy.input[:] = [rename.get(i, i) for i in n.input]
        copy.output[:] = [rename.get(o, o) for o in n.output]
        nodes.append(copy)
    outputs = []
    for o in g.output:
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(o)
        vi.name = rename.get(o.name, o.name)
        outputs.append(vi)
    infos = []
    for v in g.value_info:
        if v.name in rename:
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(v)
            vi.name = rename[v.name]
            infos.append(vi)
    return helper.make_graph(nodes, prefix.rstrip("/"), [], outputs, value_info=infos)


def switch_by_batch(small: onnx.ModelProto, large: onnx.ModelProto, data: str, limit: int) -> onnx.ModelProto | None:
    """If(batch of graph input ``data`` <= limit, small, large) as one model (``small`` and ``large`` are consumed);
    None when a form holds subgraphs of its own (their outer references would need renaming too)."""
    if _has_subgraphs(small) or _has_subgraphs(large):
        return None
    if [i.name for i in small.graph.input] != [i.name for i in large.graph.input] or \
            [o.name for o in small.graph.output] != [o.name for o in large.graph.output]:
        raise ValueError("the two forms of a batch switch must have the same inputs and outputs")
    theirs = {t.name: t for t in large.graph.initializer}
    shared = {t.name for t in small.graph.initializer if t.name in theirs and _same(t, theirs[t.name])}
    out = onnx.ModelProto()
    out.CopyFrom(small)
    g = out.graph
    del g.node[:], g.value_info[:], g.initializer[:]
    inits = [t for t in small.graph.initializer if t.name in shared]
    then_branch = _branch(small, PREFIX + "small/", shared, inits)
    else_branch = _branch(large, PREFIX + "large/", shared, inits)
    g.initializer.extend(inits)
    g.initializer.append(numpy_helper.from_array(np.array([limit], np.int64), PREFIX + "limit"))
    g.node.extend([
        helper.make_node("Shape", [data], [PREFIX + "batch"], name=PREFIX + "Shape", start=0, end=1),
        helper.make_node("LessOrEqual", [PREFIX + "batch", PREFIX + "limit"], [PREFIX + "small"],
                         name=PREFIX + "LessOrEqual"),
        helper.make_node("If", [PREFIX + "small"], [o.name for o in small.graph.output], name=PREFIX + "If",
                         then_branch=then_branch, else_branch=else_branch),
    ])
    helper.set_model_props(out, {**{p.key: p.value for p in out.metadata_props},
                                 "onnxattr.batch_switch": f"the first form up to batch {limit}, the second above"})
    return out
