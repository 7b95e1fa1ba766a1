"""Compile: load -> canonicalize -> select & seed -> reverse pass -> assemble one checked model.

The compiled model keeps the original inputs (plus int64 ``target`` [batch] in index mode) and the
original outputs, and adds ``relevance`` (float32, the explained input's shape), then ``relevance:T`` for each
tensor T in ``keep`` (the relevance the reverse pass carries at T: iNNvestigate's reverse_keep_tensors).
"""

from __future__ import annotations

import difflib

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxattr.canonicalize import canonicalize, default_opset
from onnxattr.compiler import path_nodes
from onnxattr.condition import CONDITION, beside, check_chain, check_on_path, condition_list, metadata
from onnxattr.fold import fold_unfused_dequantize
from onnxattr.errors import (InvalidModelError, SelectionError, UnsupportedModelError, UsageError,
                             naming_the_model)
from onnxattr.graph import GraphBuilder, live_nodes, names_read
from onnxattr.batch_switch import switch_by_batch
from onnxattr.light import checkable_copy, declared_dims
from onnxattr.load import check_input_model, check_input_shapes, load_model, model_label, nodes_within
from onnxattr.methods import REGISTRY, Target, get_method
from onnxattr.methods.draws import random_opset_limit
from onnxattr.recurrent_nodes import RECURRENT_OPS, fused_batch_limit, sequence_first_reader
from onnxattr.select import NEURON_MODES, TARGET_INPUT, choose_input, choose_output, looked_through, neuron_index
from onnxattr.twin_forward import quantizes_activations, twin_forward

RELEVANCE = "relevance"
KEPT = "relevance:"  # + a kept tensor's name: the relevance at that tensor


def compile_model(model, method: str, neuron: str = "max", input: str | None = None,
                  output: str | None = None, report: dict | None = None, label: str | None = None,
                  keep=(), condition=(), **params) -> onnx.ModelProto:
    """Return a new model computing the original outputs and the relevance map of ``method``.
    ``report``, when given, receives the nodes on the explained path and the rule each one got;
    ``label`` names the model in messages (its path by default); ``keep``: tensors whose relevance is
    returned too (outputs ``relevance:NAME``); ``condition``: tensors whose relevance is masked by an input
    ``condition:NAME`` (onnxattr.condition)."""
    m = get_method(method)
    if neuron not in NEURON_MODES:
        raise UsageError(f"neuron selection must be one of {', '.join(NEURON_MODES)}, not '{neuron}'")
    resolved = m.resolve(params)
    label = label or model_label(model)
    with naming_the_model(label):
        args = (m, method, resolved, label, neuron, input, output)
        keep, condition = _keep_list(keep, m), condition_list(condition, m)
        proto = load_model(model)
        if m.fused_recurrent and any(n.op_type in RECURRENT_OPS for n in proto.graph.node):
            return _compile_recurrent(proto, args, report, keep, condition)
        return _compile(proto, *args, report, keep, condition)


def _compile_recurrent(proto, args: tuple, report, keep: list[str], condition: list[str]) -> onnx.ModelProto:
    """A method of exact gradients on a recurrent net: the recurrent nodes with a fused backward are left as they are
    (emitters/recurrent.py) at batches up to recurrent_nodes.fused_batch_limit and unrolled above; a dynamic batch gets
    both forms, switched by the batch at run time (batch_switch.py)."""
    spare = onnx.ModelProto()
    spare.CopyFrom(proto)  # canonicalize may change the model it is given
    fused = _compile(proto, *args, report, keep, condition, fused=True)
    limit = fused_batch_limit(fused)
    if limit is None:  # nothing was left fused
        return fused
    data = {p.key: p.value for p in fused.metadata_props}["onnxattr.data"]
    batch = next((declared_dims(i)[0] for i in fused.graph.input if i.name == data), None)
    if isinstance(batch, int) and batch <= limit:
        return fused
    unrolled = _compile(spare, *args, None, keep, condition, fused=False)
    if isinstance(batch, int):
        return unrolled
    switched = switch_by_batch(fused, unrolled, data, limit)
    if switched is None:  # forms with subgraphs of their own: the unrolled one serves every batch
        return unrolled
    light = checkable_copy(switched)
    if light is not None:
        onnx.checker.check_model(light, full_check=True)
    return switched


def data_input(model: onnx.ModelProto, x: str) -> str:
    """The graph input that takes the data: x itself, or for an intermediate x (an embedding) the graph
    input it is computed from (the first in graph order that is not a bool flag, when several are)."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    if x in inputs:
        return x
    producer = {o: n for n in model.graph.node for o in n.output}
    seen, stack = set(), [x]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in producer:  # what the node reads, in its subgraphs (If branches, Loop bodies) too
            stack.extend(i for n in nodes_within(producer[t]) for i in n.input if i)
    types = {i.name: i.type.tensor_type.elem_type for i in model.graph.input}
    found = [i for i in inputs if i in seen]
    return next((i for i in found if types.get(i) != TensorProto.BOOL), found[0] if found else x)


def _keep_list(keep, m) -> list[str]:
    """``keep`` as a list of tensor names (one name, or several), refused for methods that are not one reverse
    pass."""
    names = [keep] if isinstance(keep, str) else list(keep or ())
    if not all(isinstance(n, str) and n for n in names):
        raise UsageError(f"keep takes tensor names, got {keep!r}")
    if names and m.at_layer is None:
        single = sorted({mm.name for mm in REGISTRY.values() if mm.at_layer is not None and mm.family == "gradient"})
        raise UsageError(f"keep: {m.name} does not compute its map in one reverse pass, so it has no relevance at "
                         f"other tensors; the LRP methods, attn_lrp, pattern.* and {', '.join(single)} do")
    return list(dict.fromkeys(names))


def _kept_outputs(b: GraphBuilder, m, keep: dict[str, str], x: str, y: str, chosen: str, on_path, tensors: set,
                  params: dict) -> dict[str, tuple[str, str]]:
    """{name: (its relevance, the tensor)} for the kept names ({name: the canonical tensor holding it}), from
    what the reverse pass carried there; ``tensors``: every tensor name of the model, for the message when one is
    off the path."""
    out = {}
    for name, tensor in keep.items():
        _check_crossed("keep", b, name, tensor, x, y, chosen, on_path, tensors)
        carried = b.kept.get(tensor)
        out[name] = (b.zeros_like(tensor) if carried is None else m.at_layer(b, tensor, carried, params), tensor)
    return out


def _check_crossed(option: str, b: GraphBuilder, name: str, tensor: str, x: str, y: str, chosen: str, on_path,
                   tensors: set) -> None:
    """A SelectionError naming the closest tensors unless the reverse pass crosses ``tensor`` (``name``, as the
    user gave it, for the message)."""
    crossed = [x] + [o for n in on_path for o in n.output if b.is_float(o)]
    if tensor in crossed:
        return
    close = difflib.get_close_matches(name, crossed, n=3)
    where = f"tensor '{name}' is not" if tensor in tensors else f"no tensor '{name}'"
    after = (f" (the explained tensor is '{y}', from which a Softmax or a trailing quantization computes "
             f"'{chosen}': relevance starts there)" if tensor == chosen and chosen != y else "")
    raise SelectionError(
        f"{option}: {where} between input '{x}' and output '{y}'{after}; "
        + (f"did you mean {', '.join(close)}?" if close else f"tensors there include {', '.join(crossed[-5:])}")
        + " (`onnxattr inspect` lists them)")


def _sequence_route(nodes, x: str, y: str) -> list[str]:
    """The sequence ops (SequenceAt, ConcatFromSequence, ...) on a route of any tensor type from x to y, named."""
    reach = {x}
    for n in nodes:
        if reach.intersection(names_read([n])):
            reach.update(o for o in n.output if o)
    route = live_nodes([n for n in nodes if reach.intersection(n.output)], {y})
    return [f"{n.op_type} '{n.name}'" for n in route if "Sequence" in n.op_type][:3]


def _pass_through_sources(proto: onnx.ModelProto, keep: list[str], tensors: set) -> dict[str, str]:
    """{kept name: the tensor that holds its value in the canonical model}: canonicalize drops Identity and
    Dropout nodes, so a name one of them gave is read at the tensor it passed on."""
    source = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type in ("Identity", "Dropout") and n.input}
    out = {}
    for name in keep:
        tensor, seen = name, set()
        while tensor not in tensors and tensor in source and tensor not in seen:
            seen.add(tensor)
            tensor = source[tensor]
        out[name] = tensor
    return out


def _compile(proto, m, method: str, resolved: dict, label: str, neuron: str, input, output,
             report, keep: list[str], condition: list[str], fused: bool = False) -> onnx.ModelProto:
    """``proto``: the loaded model (load_model's copy); ``fused``: leave the recurrent nodes with a fused backward as
    they are (canonicalize's fused_recurrent)."""
    check_input_model(proto, label)
    limit = random_opset_limit(default_opset(proto)) if m.random else None
    canon = canonicalize(proto, label, max_opset=limit, fused_recurrent=fused,
                         float_layers=m.family in ("lrp", "pattern"))
    x = choose_input(canon, input)
    reader = sequence_first_reader(proto, x)
    if reader is not None:
        raise UnsupportedModelError(
            f"{label}: input '{x}' is sequence-first ([T, N, ...]): {reader.op_type} '{reader.name}' reads it with "
            "layout 0, as torch writes nn.LSTM/GRU/RNN without batch_first. onnxattr takes the batch on the first "
            f"axis of the explained input: export with batch_first=True, or transpose {x} to [N, T, ...] in the model")
    names = {i.name for i in canon.graph.input} | {t.name for t in canon.graph.initializer} | {
        o for top in canon.graph.node for n in nodes_within(top) for o in n.output}
    for name, why in ((TARGET_INPUT, "neuron index input (--neuron index, neuron_selection=)"),
                      (RELEVANCE, "relevance output"),
                      *((KEPT + k, f"output for the relevance at '{k}' (keep=)") for k in keep),
                      *((CONDITION + k, f"input for the mask at '{k}' (condition=)") for k in condition)):
        if name in names and (name != TARGET_INPUT or neuron == "index"):
            raise UnsupportedModelError(
                f"{label}: the model has a tensor named '{name}', the name of the compiled model's {why}; "
                "rename it" + (", or explain the largest or all outputs" if name == TARGET_INPUT else ""))
    b = GraphBuilder(canon)
    chosen, y = choose_output(canon, b, output)
    on_path, live = path_nodes(list(canon.graph.node), x, y, b) if x != y else ([], set())
    if m.family != "baseline" and x != y and not on_path:
        lists = _sequence_route(canon.graph.node, x, y)
        if lists:
            raise UnsupportedModelError(
                f"{label}: output '{y}' depends on input '{x}' only through ONNX sequences ({', '.join(lists)}); "
                "onnxattr turns a sequence into its tensors where its positions are known when compiling, and "
                "here one is computed at run time: export the list as tensors (torch.split to a fixed count, "
                "Concat instead of a list)")
        raise SelectionError(f"{label}: output '{y}' does not depend on input '{x}' through float tensors, "
                             "so every map would be zero; choose another --output or --input")
    _check_float_types(b, label, [x] + [o for n in on_path for o in n.output])
    own = None
    if quantizes_activations(canon.graph.node):  # the predictions from nodes the reverse pass leaves as they are
        own = [onnx.NodeProto() for _ in canon.graph.node]
        for copy, node in zip(own, canon.graph.node):
            copy.CopyFrom(node)
    index = neuron_index(b, y, neuron)
    xshape = b.shape(x) or [None]
    target = Target(b, list(canon.graph.node), x, y, neuron, index,
                    static_batch=isinstance(xshape[0], int), data=data_input(canon, x),
                    rows_input=rows_input(canon, b, x, y))
    sources = _pass_through_sources(proto, keep, names) if keep else {}
    b.keep = frozenset(sources.values())
    masked = _pass_through_sources(proto, condition, names) if condition else {}
    for name, tensor in masked.items():
        _check_crossed("condition", b, name, tensor, x, y, chosen, on_path, names)
    check_on_path(live | {x, y}, y, masked)
    check_chain(b, on_path, x, masked)
    b.conditions = {tensor: CONDITION + name for name, tensor in masked.items()}
    relevance = m.build(target, resolved)
    if set(b.conditions) - b.conditioned:
        raise InvalidModelError(f"internal error: {method} did not reach conditioned tensor(s) "
                                f"{sorted(set(b.conditions) - b.conditioned)}")
    kept = _kept_outputs(b, m, sources, x, y, chosen, on_path, names, resolved) if keep else {}
    for name in beside(b, on_path, sources, masked) if masked else ():  # no relevance passes there
        kept[name] = (b.zeros_like(kept[name][1]), kept[name][1])
    if report is not None:
        _fill_report(report, target, m)
    try:
        return assemble(canon, target, relevance, neuron, method, resolved, chosen, kept, masked, own)
    except InvalidModelError:
        check_input_shapes(proto, label)  # blame the user's model when its own shapes disagree
        raise


def _looked_through(canon: onnx.ModelProto, chosen: str | None, y: str) -> dict:
    """{"onnxattr.through": the ops looked through from the chosen output to the explained tensor, comma-separated
    (select.looked_through)} where there are any: a reader of the chosen output's values can tell probabilities
    (a Softmax) from the scores themselves, quantized."""
    if not chosen or chosen == y:
        return {}
    explained, crossed = looked_through(chosen, {o: n for n in canon.graph.node for o in n.output})
    return {"onnxattr.through": ",".join(crossed)} if explained == y and crossed else {}


def assemble(canon: onnx.ModelProto, t: Target, relevance: str, neuron: str, method: str,
             params: dict, graph_output: str | None = None, kept: dict | None = None,
             masked: dict | None = None, own: list | None = None) -> onnx.ModelProto:
    """The compiled model; ``graph_output``: the tensor the explained one was chosen through (the graph
    output, or the tensor ``--output`` named; a softmax of the explained logits), recorded for readers of
    its values; ``kept``: {name: (its relevance, the tensor of its shape)}, output as relevance:NAME after the
    map; ``masked``: {name: the conditioned tensor}, whose masks are inputs condition:NAME after the others;
    ``own``: the forward as canonicalize left it, which then computes the outputs while the appended nodes read a
    twin of ``t.nodes`` (twin_forward: a quantized model's integer kernels)."""
    b = t.b
    finals = {RELEVANCE: (relevance, t.x), **{KEPT + name: r_like for name, r_like in (kept or {}).items()}}
    for out_name, (r, like) in finals.items():
        if b.types.get(r, b.types.get(like)) != TensorProto.FLOAT:  # a method may give float32 itself
            r = b.op("Cast", [r], to=TensorProto.FLOAT)
        b.op("Identity", [r])
        b.nodes[-1].output[0] = out_name
    graph = canon.graph
    # forward nodes (possibly given extra outputs, e.g. MaxPool indices) then the appended ones
    del graph.node[:]
    graph.node.extend(t.nodes if own is None else own)
    # appended nodes nothing reads go (a rule may leave a product it found a shortcut around)
    appended = live_nodes(b.nodes, {o.name for o in graph.output} | set(finals) | names_read(t.nodes))
    if own is not None:
        twins, rename, copies = twin_forward(own, t.nodes, appended, {i.name: i for i in graph.initializer})
        graph.node.extend(twins)
        graph.initializer.extend(copies)
        graph.value_info.extend(_renamed(v, rename[v.name]) for v in list(graph.value_info) if v.name in rename)
    start = len(graph.node)
    graph.node.extend(appended)
    # a Loop body's weights go in now, in place: a node appended with them would be copied whole
    for k in range(start, len(graph.node)):
        fill = b.fill_later.get(graph.node[k].name)
        if fill is not None:
            fill(graph.node[k])
    used = names_read(graph.node)
    b.write_initializers(graph.initializer, used)
    fold_unfused_dequantize(graph, b.value, len(own or ()))  # weights of layers read in float, as float constants
    graph.value_info.extend(b.declared_shapes(o for n in appended for o in n.output))
    if neuron == "index":
        graph.input.append(helper.make_tensor_value_info(TARGET_INPUT, TensorProto.INT64, [_target_dim(b, canon, t)]))
    for name, tensor in (masked or {}).items():  # any sizes that broadcast to the tensor's: [N, C, 1, 1] for channels
        rank = b.shape(tensor)
        graph.input.append(helper.make_tensor_value_info(CONDITION + name, TensorProto.FLOAT,
                                                         None if rank is None else [None] * len(rank)))
    for out_name, (_, like) in finals.items():
        graph.output.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, b.shape(like)))  # [] a scalar
    y_dims = (b.shape(t.y) or [None])[1:]
    n_neurons = {"onnxattr.outputs": str(int(np.prod(y_dims)))} if all(isinstance(d, int) for d in y_dims) else {}
    helper.set_model_props(canon, {**{p.key: p.value for p in canon.metadata_props}, **n_neurons,
                                   "onnxattr.method": method,
                                   "onnxattr.input": t.x,
                                   "onnxattr.explained": t.y,
                                   "onnxattr.chosen": graph_output or t.y,
                                   **_looked_through(canon, graph_output, t.y),
                                   "onnxattr.data": data_input(canon, t.x),
                                   "onnxattr.neuron": neuron,
                                   "onnxattr.params": repr(params),
                                   **({"onnxattr.keep": repr(list(kept))} if kept else {}),
                                   **(metadata(b, masked) if masked else {})})
    # the checker (and its strict shape inference) runs on a copy without the weights: serializing
    # them dominated compile time; our own constants are made from numpy arrays and cannot disagree
    light = checkable_copy(canon)
    if light is not None:
        try:
            onnx.checker.check_model(light, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InvalidModelError(f"internal error: the compiled model fails onnx.checker: {first}") from None
    return canon


def _renamed(info: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    copy = onnx.ValueInfoProto()
    copy.CopyFrom(info)
    copy.name = name
    return copy


def _check_float_types(b: GraphBuilder, label: str, tensors) -> None:
    """bfloat16 on the explained path is refused by name: ConstantOfShape, which every backward needs,
    has no bfloat16 before opset 20, and onnxruntime has few bfloat16 kernels."""
    bf16 = [t for t in tensors if b.types.get(t) == TensorProto.BFLOAT16]
    if bf16:
        raise UnsupportedModelError(
            f"{label}: tensor '{bf16[0]}' on the explained path is bfloat16; float32, float16 and float64 "
            "models are supported: convert the model (e.g. its weights and inputs to float32) first")


def _fill_report(report: dict, t: Target, m) -> None:
    on_path, _ = path_nodes(t.nodes, t.x, t.y, t.b)
    report.update(method=m.name, input=t.x, output=t.y, nodes=[
        (n.name, n.op_type, *t.assignment.get(n.name, (_default_rule(m, n), "")))
        for n in on_path], outputs={n.name: n.output[0] for n in on_path})


def _default_rule(m, node) -> str:
    if m.family == "baseline":
        return "none (baseline: no backward pass)"
    return "gradient"


def _target_dim(b, model, t):
    """The target input's length: one index per row of the explained output. That is the input's batch axis, but
    where the output's first axis has a fixed size of its own (a graph net's readout [1, C] over node features
    [nodes, F]), that size, and where it is another input's first axis (a box head's logits [R, C] for boxes
    [R, 5]), that axis' name."""
    y_shape = b.shape(t.y)
    x_dim = _batch_dim(model, t.x)
    if y_shape and isinstance(y_shape[0], int) and y_shape[0] > 0 and y_shape[0] != x_dim:
        return y_shape[0]
    if t.rows_input is not None:
        return y_shape[0]
    return x_dim


def rows_input(model, b, x: str, y: str) -> str | None:
    """The graph input, other than the data's, whose first axis the explained output's rows are declared under,
    where that is not the data's batch axis (boxes [R, 5] for a box head's logits [R, C] over images [N, ...]):
    the rows are then not the samples, and the sampling methods run one point at a time."""
    first = (b.shape(y) or [None])[0]
    data = data_input(model, x)
    if not isinstance(first, str) or first == _batch_dim(model, data):
        return None
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in (x, data) and dims and dims[0].dim_param == first:
            return vi.name
    return None


def _batch_dim(model, x):
    for vi in model.graph.input:
        if vi.name == x:
            d = vi.type.tensor_type.shape.dim
            if d:
                return d[0].dim_value if d[0].HasField("dim_value") else (d[0].dim_param or "batch")
    return "batch"
