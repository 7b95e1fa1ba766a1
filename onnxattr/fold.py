"""Constant folding on the ModelProto itself, for canonicalize.

Every node that computes from constants only (initializers that are not graph inputs, or outputs of
such nodes) runs once, all together, in one onnxruntime session; the tensors the rest of the graph reads
from them become initializers. Identity and Dropout (whose mask nobody reads) are bypassed, and nodes
and initializers that no graph output needs are dropped. This is onnx-graphsurgeon's import → fold →
cleanup → export without the round trip through its object graph, which cost light_densenet121
(836 ConstantOfShape weight fills) a second of its compile time.

It does not fold shapes (Shape/Size of a tensor with a static shape) and does not look inside
control-flow bodies: canonicalize sends such models to graphsurgeon, see ``can_fold_in_proto``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from onnxattr.graph import live_nodes, names_read, outer_reads, rename_reads

# ops whose output is a sequence, not a tensor: no initializer can hold it
SEQUENCE_OPS = frozenset({"SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceErase", "SplitToSequence",
                          "SequenceMap"})
NON_DETERMINISTIC = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                               "Multinomial", "Bernoulli"})
SHAPE_OPS = frozenset({"Shape", "Size"})
# kept as they are though their inputs are constants: a quantized weight stays int8 codes read through
# DequantizeLinear, so onnxruntime runs the layer as it runs the original model (it fuses DequantizeLinear -> Conv
# -> QuantizeLinear into integer kernels, and re-quantizes a float weight it finds there with scales of its own);
# the compiler reads the weight's value from GraphBuilder.constants (graph.dequantized_constants), and the compiled
# model holds it as a float constant only where the layer cannot be fused (fold_unfused_dequantize)
NOT_FOLDED = frozenset({"DequantizeLinear"})
# the layers onnxruntime fuses with the DequantizeLinear of their weight into an integer kernel where their output
# goes to a QuantizeLinear through no branch (a float weight found there on Conv, ConvTranspose or Gemm its
# WeightBiasQuantization quantizes again)
FUSED_WITH_WEIGHT = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
DEFAULT_DOMAINS = ("", "ai.onnx")


class FoldError(RuntimeError):
    """onnxruntime could not evaluate the constant part; the caller falls back to graphsurgeon."""


def has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def can_fold_in_proto(model: onnx.ModelProto) -> bool:
    """No Shape/Size nodes (graphsurgeon folds static shapes) and no control flow (bodies read outer
    names implicitly)."""
    return not any(n.op_type in SHAPE_OPS or has_subgraph(n) for n in model.graph.node)


def drop_initializer_inputs(graph: onnx.GraphProto) -> None:
    """Initializers listed as graph inputs (required before IR 4, overridable defaults after) are
    constants here, as graphsurgeon treats them: the input entries go."""
    initializers = {t.name for t in graph.initializer}
    if any(i.name in initializers for i in graph.input):
        inputs = [i for i in graph.input if i.name not in initializers]
        del graph.input[:]
        graph.input.extend(inputs)


def bypass_passthroughs(graph: onnx.GraphProto) -> None:
    """Identity(x) and Dropout(x) (mask unread) are removed; their readers read x. Graph outputs stay."""
    outputs = {o.name for o in graph.output}
    read = {i for n in graph.node for i in outer_reads(n)} | outputs
    rename: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if rename:
            rename_reads(node, rename)  # a Loop body's outer reads too
        passthrough = node.domain in DEFAULT_DOMAINS and (
            node.op_type == "Identity"
            or (node.op_type == "Dropout" and (len(node.output) < 2 or node.output[1] not in read)))
        if passthrough and node.output[0] not in outputs:
            rename[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    if rename:
        del graph.node[:]
        graph.node.extend(keep)


def _too_large(node: onnx.NodeProto, initializers: dict[str, onnx.TensorProto], limit: int) -> bool:
    """A ConstantOfShape whose output size is known from an initializer shape and exceeds ``limit``."""
    if node.op_type != "ConstantOfShape" or node.input[0] not in initializers:
        return False
    itemsize = 4
    for a in node.attribute:
        if a.name == "value":
            itemsize = numpy_helper.to_array(a.t).itemsize
    shape = numpy_helper.to_array(initializers[node.input[0]])
    return int(np.prod(shape, dtype=np.int64)) * itemsize > limit


def constant_nodes(graph: onnx.GraphProto, limit: int) -> list[int]:
    """Indices of the nodes that compute from constants (initializers) only (deterministic, default domain, no
    subgraph, not a sequence, not a graph output, not a ConstantOfShape known to exceed ``limit``, not NOT_FOLDED)."""
    initializers = {t.name: t for t in graph.initializer}
    constant = set(initializers)
    outputs = {o.name for o in graph.output}
    found = []
    for k, node in enumerate(graph.node):
        if (node.domain in DEFAULT_DOMAINS and node.op_type not in NON_DETERMINISTIC | SEQUENCE_OPS | NOT_FOLDED
                and not has_subgraph(node) and not outputs.intersection(node.output)
                and all(not i or i in constant for i in node.input)
                and not _too_large(node, initializers, limit)):
            found.append(k)
            constant.update(o for o in node.output if o)
    return found


def evaluate(model: onnx.ModelProto, nodes: list[onnx.NodeProto], wanted: list[str]) -> dict[str, np.ndarray]:
    """Run ``nodes`` (constant inputs only) once and return the ``wanted`` tensors."""
    graph = model.graph
    read = {i for n in nodes for i in n.input}
    sub = onnx.helper.make_graph(list(nodes), "constants", [], [onnx.ValueInfoProto(name=w) for w in wanted],
                                 [t for t in graph.initializer if t.name in read])
    sub_model = onnx.helper.make_model(sub, opset_imports=list(model.opset_import))
    sub_model.ir_version = model.ir_version
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures come back as the exception, not on stderr
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(sub_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        values = session.run(wanted, {})
    except Exception as e:  # noqa: BLE001 - any failure means: let graphsurgeon try
        raise FoldError(str(e)) from None
    return dict(zip(wanted, values))


def remove_dead(graph: onnx.GraphProto) -> None:
    """Drop nodes that no graph output depends on, then initializers nothing reads (graph inputs stay)."""
    kept = live_nodes(graph.node, {o.name for o in graph.output})
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(kept)
    live = names_read(graph.node) | {o.name for o in graph.output}
    inputs = {i.name for i in graph.input}
    unused = [t for t in graph.initializer if t.name not in live and t.name not in inputs]
    for t in unused:
        graph.initializer.remove(t)


def fold_in_proto(model: onnx.ModelProto, limit: int, evaluate_nothing: bool = False) -> onnx.ModelProto:
    """A folded copy of ``model`` (see the module docstring). Raises FoldError if onnxruntime cannot
    evaluate the constant part. ``evaluate_nothing``: only drop initializers from the inputs, pass-throughs and dead
    nodes (for a model whose constant part onnxruntime cannot evaluate)."""
    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    graph = model_copy.graph
    drop_initializer_inputs(graph)
    bypass_passthroughs(graph)
    folded = [] if evaluate_nothing else constant_nodes(graph, limit)
    if folded:
        in_folded = set(folded)
        produced = {o for k in folded for o in graph.node[k].output if o}
        # what a Loop or If reads inside its bodies counts: a Constant only a Loop body reads is wanted
        read_outside = {i for k, n in enumerate(graph.node) if k not in in_folded for i in outer_reads(n)}
        wanted = produced & read_outside
        values: dict[str, np.ndarray] = {}
        while True:  # one round unless a tensor is too large: then its producers stay and their inputs are wanted
            ask = sorted(wanted - values.keys())
            if ask:
                values.update(evaluate(model_copy, [graph.node[k] for k in folded], ask))
            materialised = {name: v for name, v in values.items() if v.nbytes <= limit}
            needed = wanted - materialised.keys()
            keep_folded = set()
            for k in reversed(folded):
                node = graph.node[k]
                if needed.intersection(node.output):
                    keep_folded.add(k)
                    needed.update(i for i in node.input if i not in materialised)
            frontier = {i for k in keep_folded for i in graph.node[k].input if i in produced} - values.keys()
            if not frontier:
                break
            wanted |= frontier
        for k in keep_folded:  # a node that stays produces its outputs itself
            for o in graph.node[k].output:
                materialised.pop(o, None)
        nodes = [n for k, n in enumerate(graph.node) if k not in in_folded or k in keep_folded]
        del graph.node[:]
        graph.node.extend(nodes)
        graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in materialised.items())
    remove_dead(graph)
    known = ({o for n in graph.node for o in n.output} | {t.name for t in graph.initializer}
             | {i.name for i in graph.input})
    value_info = [vi for vi in graph.value_info if vi.name in known]
    del graph.value_info[:]
    graph.value_info.extend(value_info)
    return model_copy


def fold_unfused_dequantize(graph: onnx.GraphProto, value, own: int = 0) -> int:
    """Give each reader of a DequantizeLinear of constants its float value, as a constant, unless the reader is a
    layer of ``FUSED_WITH_WEIGHT`` that can be fused (its output goes to a QuantizeLinear and nowhere else). A layer
    whose float output has another reader (a backward) runs in float anyway, and onnxruntime packs a constant
    weight once for its blocked kernels instead of dequantizing it at every run. A DequantizeLinear left with no
    reader goes. ``value``: a tensor's compile-time value (GraphBuilder.value, which holds DequantizeLinear's own
    arithmetic for a DequantizeLinear of constants: graph.dequantized_constants); ``own``: how many nodes, first in
    the graph, keep reading the DequantizeLinear (twin_forward's model nodes, which run as in the model). Returns how
    many were folded."""
    inits = {t.name: t for t in graph.initializer}
    readers: dict[str, list] = {}
    nodes = list(graph.node)  # held, so that their ids stay theirs
    exempt = {id(n) for n in nodes[:own]}
    for n in nodes:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    taken = {o for n in graph.node for o in n.output} | set(inits) | {i.name for i in graph.input}

    def fusable(layer) -> bool:  # onnxruntime's condition: one reader each step, Relu or Clip, then a quantizer
        node = layer
        while len(node.output) == 1 and node.output[0] not in outputs and len(readers.get(node.output[0], [])) == 1:
            node = readers[node.output[0]][0]
            if node.op_type == "QuantizeLinear":
                return True
            if node.op_type not in ("Relu", "Clip"):
                return False
        return False

    folded = []  # (position, name, value): the whole node
    constants = []  # (name, value): for some readers only
    for k, node in enumerate(nodes):
        if node.op_type != "DequantizeLinear" or node.domain not in DEFAULT_DOMAINS or node.output[0] in outputs:
            continue
        codes = inits.get(node.input[0])
        if codes is None or np.dtype(helper.tensor_dtype_to_np_dtype(codes.data_type)).kind not in "iu":
            continue  # codes computed at run time, or not integers (float8, packed 4-bit)
        layers = readers.get(node.output[0], [])
        unfused = [r for r in layers if id(r) not in exempt and not (r.op_type in FUSED_WITH_WEIGHT and fusable(r))]
        if not unfused:
            continue
        weight = value(node.output[0])
        if weight is None:
            continue
        if len(unfused) == len(layers):
            folded.append((k, node.output[0], weight))
            continue
        name = node.output[0] + "/float"
        while name in taken:
            name += "_"
        taken.add(name)
        constants.append((name, weight))
        for r in unfused:
            r.input[:] = [name if i == node.output[0] else i for i in r.input]
    if folded or constants:
        gone = {k for k, _, _ in folded}
        kept = [n for k, n in enumerate(nodes) if k not in gone]
        del graph.node[:]
        graph.node.extend(kept)
        read = names_read(graph.node) | outputs | {i.name for i in graph.input}
        values = [t for t in graph.initializer if t.name in read]
        values += [numpy_helper.from_array(weight, name) for _, name, weight in folded]
        values += [numpy_helper.from_array(weight, name) for name, weight in constants]
        del graph.initializer[:]
        graph.initializer.extend(values)
    return len(folded) + len(constants)
