"""Weight-less copies of a model for structural checks (onnx.checker, shape inference).

Both need the graph, the types and the small constants (shapes, axes), not the weights; serializing
hundreds of megabytes of weights for each of them dominated compile time. Used from load (the input
check), canonicalize (shape inference) and assemble (the output check).
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
TWO_GB = 2**31  # protobuf cannot serialize a message this large

LIGHT_LIMIT = 4096  # elements: initializers larger than this are left out of structural checks


def declared_dims(vi: onnx.ValueInfoProto) -> list | None:
    """A value's declared shape: an int, a symbol or None per axis; None when no shape is declared."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]


def light_model(model: onnx.ModelProto, limit: int = LIGHT_LIMIT) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` whose large initializers are graph inputs of the same name, type and shape,
    and the byte size of the tensors left out. Small initializers and all non-float ones stay."""
    g = model.graph
    light = onnx.ModelProto()
    light.ir_version = model.ir_version
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    lg = light.graph
    lg.name = g.name
    lg.input.extend(g.input)
    lg.output.extend(g.output)
    lg.value_info.extend(g.value_info)
    declared = {i.name for i in g.input}
    left_out = 0

    def large(t):
        n = 1
        for d in t.dims:
            n *= d
        if n <= limit or t.data_type not in FLOAT_TYPES or t.data_location == TensorProto.EXTERNAL:
            return False
        nonlocal left_out
        left_out += n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        if t.name not in declared:  # the weight becomes an input of the (outer) graph, visible everywhere
            declared.add(t.name)
            lg.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        return True

    for t in g.initializer:
        if not large(t):
            lg.initializer.append(t)
    for node in g.node:
        bodies = [a for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
        if not any(len(a.g.initializer) for a in bodies):
            lg.node.append(node)
            continue
        _copy_node(node, lg.node.add(), lambda t: not large(t))  # a Loop body with its own weights
    return light, left_out


def _copy_node(node: onnx.NodeProto, copy: onnx.NodeProto, keep) -> None:
    """Copy ``node`` into ``copy`` with only the initializers ``keep`` accepts in its graph attributes
    (one level: sampling's Loop body; copying the whole node first would copy every body weight)."""
    _copy_fields(node, copy, skip="attribute")
    for a in node.attribute:
        if a.type != onnx.AttributeProto.GRAPH:
            copy.attribute.append(a)
            continue
        c = copy.attribute.add()
        _copy_fields(a, c, skip="g")
        _copy_fields(a.g, c.g, skip="initializer")
        c.g.initializer.extend(t for t in a.g.initializer if keep(t))


def _copy_fields(src, dst, skip: str) -> None:
    """dst = src for every set field but ``skip`` (repeated fields extended, messages copied)."""
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if hasattr(value, "extend"):
            getattr(dst, field.name).extend(value)
        elif hasattr(value, "CopyFrom"):
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def checkable_copy(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """light_model(model) for onnx.checker / strict inference, or None when the whole model is 2 GB or
    more (onnx's checks of a whole model serialize it, and protobuf cannot)."""
    light, left_out = light_model(model)
    return light if light.ByteSize() + left_out < TWO_GB else None


# ops whose output has their first input's type and shape, where onnx's inference leaves it untyped (onnx 1.23
# infers nothing for GroupNormalization-21), and with it every tensor after it
SAME_AS_INPUT = frozenset({"GroupNormalization"})


def typed_like_input(inferred: onnx.ModelProto) -> bool:
    """Declare the output of each SAME_AS_INPUT node that inference left untyped as its input is; True if any."""
    g = inferred.graph
    known = {v.name: v for v in list(g.input) + list(g.value_info) + list(g.output) if v.type.tensor_type.elem_type}
    added = False
    for node in g.node:
        if node.op_type in SAME_AS_INPUT and node.domain in ("", "ai.onnx") and node.input[0] in known \
                and node.output[0] not in known:
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(known[node.input[0]])
            vi.name = node.output[0]
            g.value_info.append(vi)
            known[vi.name], added = vi, True
    return added


def infer_shapes_light(model: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    """onnx.shape_inference (data_prop=True) run on the light copy of ``model``. Returns that inferred
    light copy, or, with ``in_place``, ``model`` itself given the value_info and output shapes found."""
    light, _ = light_model(model)
    inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    if typed_like_input(inferred):  # and what follows such an op
        inferred = onnx.shape_inference.infer_shapes(inferred, data_prop=True)
    if not in_place:
        return inferred
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    outputs = {o.name: o for o in inferred.graph.output}
    for o in model.graph.output:
        if o.name in outputs:
            o.CopyFrom(outputs[o.name])
    return model


def infer_shapes(model: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    """Shapes of every intermediate tensor, inferred on a copy without the weights (fast; see
    light.light_model), else on the whole model, else what the model declares. Without ``in_place``
    the result may lack the large initializers: read types and shapes from it, nothing else."""
    try:
        return infer_shapes_light(model, in_place)
    except Exception:  # noqa: BLE001
        pass
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - fall back to what the model declares
        return model


def tensor_shapes(model: onnx.ModelProto) -> dict:
    """name -> [int, or a symbol/None per unknown axis] of every typed tensor of a shape-inferred model."""
    g = model.graph
    return {vi.name: declared_dims(vi) for vi in list(g.input) + list(g.value_info) + list(g.output)
            if vi.type.HasField("tensor_type")}
