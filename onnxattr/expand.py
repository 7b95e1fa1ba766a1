"""Expand ops into their ONNX definitions (part of canonicalize): a node whose op ONNX defines as a function is
replaced by the function's body, inlined by onnx.inliner. Two uses: the ops of EXPANDED_OPS (Attention, ...), which no
emitter differentiates whole but whose bodies use only ops the reverse pass handles; and, before a model is
converted down to an older opset, the ops that have no version there (RMSNormalization-23, Swish-24)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import onnx.numpy_helper

from onnxattr.light import infer_shapes, light_model
from onnxattr.load import default_opset

EXPANDED = "onnxattr.expanded"  # the domain of the model-local functions that expand_ops inlines
# standard ops that ONNX defines as functions of ops the reverse pass differentiates, and no emitter handles whole:
# each node of them is replaced by its definition (torch's dynamo exporter writes scaled_dot_product_attention as
# Attention from opset 23; LinearAttention and CausalConvWithState, opset 27, are Gated DeltaNet's and Mamba's). The
# forward then runs the defining nodes: the same values up to float rounding. The nodes of a body are named after the
# node they replace ("onnxattr.expanded/LinearAttention:mixer/Scan_25"), which messages then show.
EXPANDED_OPS = frozenset({"Attention", "RotaryEmbedding", "MeanVarianceNormalization", "CenterCropPad",
                          "LinearAttention", "CausalConvWithState"})


def _without_version_at(node: onnx.NodeProto, opset: int) -> bool:
    """Whether ``node`` is a standard op that first appeared after ``opset``."""
    if node.domain not in ("", "ai.onnx") or not onnx.defs.has(node.op_type):
        return False
    try:
        onnx.defs.get_schema(node.op_type, opset)  # its newest version at or below opset
    except onnx.defs.SchemaError:
        return True
    return False


def expand_newer_ops(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The model with each main-graph node whose op has no version at or below ``opset`` (RMSNormalization-23,
    Swish-24) expanded (expand_ops), so that the version converter can take the model down."""
    return expand_ops(model, lambda node: _without_version_at(node, opset))


def expand_defined_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with each main-graph node of EXPANDED_OPS expanded (expand_ops), its softmax rows that a mask hides
    whole made finite (finite_hidden_rows)."""
    expanded = expand_ops(model, lambda node: node.op_type in EXPANDED_OPS and node.domain in ("", "ai.onnx"))
    if expanded is not model:
        finite_hidden_rows(expanded)
    return expanded


def finite_hidden_rows(model: onnx.ModelProto) -> None:
    """Attention's body (opset 23 on) takes the softmax of scores + mask bias, NaN in a row the mask hides whole (all
    -inf), and puts 0 there: Where(ReduceMax(bias over the last axis) == -inf, 0, softmax). The forward is right, but
    the softmax's VJP multiplies those rows' zero gradient by NaN, and the NaN spreads over the map. Where a Where
    replaces a softmax over the last axis (through Casts whose values only it reads) at a condition made by Equal from a
    ReduceMax over that axis (the same in a whole row), the softmax's input gets 0 in those rows too. Their softmax is
    dropped all the same, now finite: the outputs are unchanged, and the gradient there is 0."""
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    readers: dict = {}
    for n in nodes:
        for i in n.input[:1] if n.op_type == "CastLike" else n.input:  # (CastLike reads its second input's type)
            readers[i] = readers.get(i, 0) + 1
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in nodes:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name in ("value", "value_ints", "value_int"):
            value = onnx.helper.get_attribute_value(n.attribute[0])
            consts[n.output[0]] = onnx.numpy_helper.to_array(value) if n.attribute[0].name == "value" else value
    for where in [n for n in nodes if n.op_type == "Where" and n.domain in ("", "ai.onnx")]:
        chain, t = [], producer.get(where.input[2])
        while t is not None and t.op_type == "Cast" and readers.get(t.output[0]) == 1:
            chain.insert(0, t)
            t = producer.get(t.input[0])
        if t is None or t.op_type != "Softmax" or readers.get(t.output[0]) != 1 \
                or any(a.name == "axis" and a.i != -1 for a in t.attribute) \
                or not _whole_rows(producer.get(where.input[0]), producer, consts):
            continue
        zero = f"{t.name or t.output[0]}/zero_where_hidden"
        safe = f"{t.input[0]}/finite_where_hidden"
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros((), np.float32), zero + "/f"))
        made = [onnx.helper.make_node("CastLike", [zero + "/f", t.input[0]], [zero], name=zero),
                onnx.helper.make_node("Where", [where.input[0], zero, t.input[0]], [safe], name=safe)]
        t.input[0] = safe
        moved = [t] + chain  # after the condition: just before the Where, their only reader
        nodes = [n for n in nodes if all(n is not m for m in moved)]
        at = next(k for k, n in enumerate(nodes) if n is where)
        nodes[at:at] = made + moved
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _whole_rows(cond: onnx.NodeProto | None, producer: dict, consts: dict) -> bool:
    """Whether ``cond`` is Equal(ReduceMax(b) over the last axis, kept, ...): one value per row of the last axis."""
    if cond is None or cond.op_type != "Equal":
        return False
    for i in cond.input:
        m = producer.get(i)
        if m is None or m.op_type != "ReduceMax" or any(a.name == "keepdims" and a.i == 0 for a in m.attribute):
            continue
        axes = next((list(a.ints) for a in m.attribute if a.name == "axes"), None)
        if axes is None and len(m.input) > 1:
            axes = consts.get(m.input[1])
            axes = None if axes is None else [int(v) for v in np.asarray(axes).reshape(-1)]
        if axes == [-1]:
            return True
    return False


def expand_ops(model: onnx.ModelProto, pick) -> onnx.ModelProto:
    """The model with each main-graph node that ``pick`` accepts replaced by its op's function body as ONNX
    defines it (for RMSNormalization: X / sqrt(mean(X^2) + epsilon) * scale); the model itself when there is
    none. The bodies become model-local functions of the weight-less copy (light_model), which onnx.inliner
    inlines; its nodes then replace the model's. A node whose op has no body (or none for its input types)
    stays. The values equal the op's up to float rounding (the kernel and the expanded nodes may sum in
    another order)."""
    if not any(pick(n) for n in model.graph.node):
        return model
    model_opset = default_opset(model)
    light, _ = light_model(model)
    types = {vi.name: vi.type for vi in list(infer_shapes(light).graph.value_info) + list(light.graph.input)}
    for t in light.graph.initializer:
        types.setdefault(t.name, onnx.helper.make_tensor_type_proto(t.data_type, list(t.dims)))
    for k, node in enumerate(n for n in light.graph.node if pick(n)):
        body = _function_body(node, model_opset, types)
        if body is not None:  # else the version converter names the op that stopped it
            body.domain, body.name = EXPANDED, f"{node.op_type}_{k}"
            outer = f"{EXPANDED}/{node.op_type}" + (f":{node.name}" if node.name else "")
            for j, inner in enumerate(body.node):  # named after the node they replace, which messages then show
                inner.name = f"{outer}/{inner.op_type}_{j}"
            node.domain, node.op_type = EXPANDED, body.name
            light.functions.append(body)
    if not light.functions:
        return model
    light.opset_import.append(onnx.helper.make_opsetid(EXPANDED, 1))
    # the inliner converts a body of an older opset to the model's, which needs every tensor's type
    listed = {vi.name for vi in list(light.graph.input) + list(light.graph.value_info) + list(light.graph.output)}
    light.graph.value_info.extend(onnx.helper.make_value_info(n, t) for n, t in types.items() if n not in listed)
    inlined = onnx.inliner.inline_local_functions(light, convert_version=True)
    expanded = onnx.ModelProto()
    expanded.CopyFrom(model)
    del expanded.graph.node[:]
    expanded.graph.node.extend(inlined.graph.node)
    _plain_shapes(expanded)
    _constant_ranks(expanded, types)
    _name_unnamed(expanded)
    return expanded


def _name_unnamed(model: onnx.ModelProto) -> None:
    """A name for each node the inliner (or _plain_shapes) left unnamed: onnx-graphsurgeon tells nodes apart by their
    fields, so two unnamed Identity nodes of two bodies reading one mask were one node to it when it folded."""
    taken = {n.name for n in model.graph.node}
    for k, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{EXPANDED}/{node.op_type}_{k}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)


def _plain_shapes(model: onnx.ModelProto) -> None:
    """Shape(x, start, end) becomes Slice(Shape(x), start, end): the same values, in the form that onnx-graphsurgeon's
    shape folding reads right (it takes a Shape node for the whole shape, whatever its start and end)."""
    nodes = []
    for node in model.graph.node:
        bounds = {a.name: a.i for a in node.attribute if a.name in ("start", "end")}
        if node.op_type != "Shape" or node.domain not in ("", "ai.onnx") or not bounds:
            nodes.append(node)
            continue
        out, whole = node.output[0], f"{node.output[0]}/whole"
        begin, end = f"{out}/start", f"{out}/end"
        model.graph.initializer.extend(
            [onnx.numpy_helper.from_array(np.array([bounds.get("start", 0)], np.int64), begin),
             onnx.numpy_helper.from_array(np.array([bounds.get("end", 2**62)], np.int64), end)])
        nodes += [onnx.helper.make_node("Shape", [node.input[0]], [whole]),
                  onnx.helper.make_node("Slice", [whole, begin, end], [out])]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _function_body(node: onnx.NodeProto, opset: int, types: dict) -> onnx.FunctionProto | None:
    """ONNX's definition of ``node``'s op as a function, as of the newest opset at or below ``opset`` that defines
    one (context-dependent bodies are made for the node's attributes and input ``types``); None if there is none."""
    schema = onnx.defs.get_schema(node.op_type, opset)
    given = {a.name for a in node.attribute}
    for name, attr in schema.attributes.items():  # the body reads defaults through the node (MVN's axes)
        if name not in given and attr.default_value.type != onnx.AttributeProto.UNDEFINED:
            node.attribute.append(attr.default_value)
    dependent = max((v for v in schema.context_dependent_function_opset_versions if v <= opset), default=0)
    plain = max((v for v in schema.function_opset_versions if v <= opset), default=0)
    inputs = [(types[i] if i in types else onnx.TypeProto()).SerializeToString() for i in node.input]
    try:
        if dependent:  # an empty body where onnx could not build one for these types (a symbolic channel count)
            body = onnx.FunctionProto.FromString(schema.get_context_dependent_function_with_opset_version(
                dependent, node.SerializeToString(), inputs))
            return body if body.node and len(body.input) >= len(node.input) else None
        if plain:
            body = onnx.FunctionProto.FromString(schema.get_function_with_opset_version(plain))
            first = types.get(node.input[0]) if node.input else None
            if first is not None and first.HasField("tensor_type"):
                _retype_constants(body, first.tensor_type.elem_type)
            return body
    except Exception:  # noqa: BLE001 - no body for these input types
        pass
    return None


def _retype_constants(body: onnx.FunctionProto, elem_type: int) -> None:
    """A fixed body's float32 Constants (MeanVarianceNormalization's exponent 2 and epsilon) made of the input's
    float type, float16 or float64: as written they only type-check with a float32 input."""
    if elem_type not in (onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16):
        return
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    for node in body.node:
        if node.op_type != "Constant" or len(node.attribute) != 1:
            continue
        a = node.attribute[0]
        if a.name in ("value_float", "value_floats"):
            value = np.asarray(onnx.helper.get_attribute_value(a), np.float32)
        elif a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT:
            value = onnx.numpy_helper.to_array(a.t)
        else:
            continue
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("value", onnx.numpy_helper.from_array(value.astype(dtype))))


def _constant_ranks(model: onnx.ModelProto, types: dict) -> None:
    """Size(Shape(x)) becomes a Constant holding x's rank where x's rank is known (the function bodies compute
    their reduction axes from it), so that those axes fold into constants."""
    shape_of = {n.output[0]: n.input[0] for n in model.graph.node
                if n.op_type == "Shape" and n.domain in ("", "ai.onnx") and not n.attribute}
    for node in model.graph.node:
        x = shape_of.get(node.input[0]) if node.op_type == "Size" and node.input else None
        t = types.get(x)
        if t is not None and t.HasField("tensor_type") and t.tensor_type.HasField("shape"):
            rank = onnx.numpy_helper.from_array(np.array(len(t.tensor_type.shape.dim), np.int64))
            node.op_type = "Constant"
            del node.input[:]
            node.attribute.append(onnx.helper.make_attribute("value", rank))
