"""Canonicalize: put any exported model into the form the reverse pass expects, outputs unchanged.

Steps: lift opsets older than 17 to 17 (onnx.version_converter; the backward needs opset 16's
ScatterElements(reduction="add") and opset 13's input-form axes/splits), or, for a method whose ops
onnxruntime cannot run at the model's opset, convert it down (``max_opset``; ops with no older version are
expanded into their ONNX definitions first); write onnxruntime's QOperator nodes (QLinearConv, ...) as float ops
between DequantizeLinear and QuantizeLinear (qoperator.py); expand the ops of EXPANDED_OPS (Attention, ...) into their
definitions, whose ops the reverse pass differentiates; fold constant subgraphs (weights
spelled as Constant/ConstantOfShape become initializers; CastLike with a known target type becomes Cast
so that constant operands fold too); drop Identity and Dropout; unroll Loops of a trip count known when compiling
and inline Ifs of a known condition (control_flow.py); unroll LSTM, GRU and RNN nodes of a fixed
sequence length (recurrent.py); name every node; infer every
intermediate shape. Tests run the original and the canonical model and compare outputs.
"""

from __future__ import annotations

import copy

import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import version_converter

from onnxattr.dequantize import INTEGER_LAYERS, dequantize_integer_layers
from onnxattr.control_flow import has_control_flow, unroll_control_flow
from onnxattr.errors import InvalidModelError, UnsupportedModelError
from onnxattr.fold import FoldError, can_fold_in_proto, fold_in_proto, remove_dead
from onnxattr.expand import expand_defined_ops, expand_newer_ops
from onnxattr.light import checkable_copy, declared_dims, infer_shapes, tensor_shapes
from onnxattr.load import default_opset
from onnxattr.qoperator import qoperator_to_qdq
from onnxattr.recurrent import unroll_recurrent
from onnxattr.sequences import resolve_sequences
from onnxattr.static_dims import fold_static_dims
from onnxattr.recurrent_nodes import RECURRENT_OPS

MIN_OPSET = 17
TARGET_OPSET = 17
FOLD_SIZE_LIMIT = 64 * 2**20  # bytes: never materialise a folded tensor larger than this
CONTROL_FLOW_PASSES = 8
STATIC_DIMS_PASSES = 8  # fold_static_dims then fold_and_clean, until neither finds more (a Swin-T needs 4)


def upgrade_opset(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    newest = onnx.defs.onnx_opset_version()
    if default_opset(model) > newest:
        raise InvalidModelError(
            f"{label}: opset {default_opset(model)} is newer than the newest this onnx package knows "
            f"({newest}); upgrade onnx and onnxruntime, or export the model with an older opset")
    if default_opset(model) >= MIN_OPSET:
        return model
    before = model
    try:
        model = version_converter.convert_version(model, TARGET_OPSET)
    except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InvalidModelError(
            f"{label}: cannot upgrade opset {default_opset(model)} to {TARGET_OPSET}: "
            f"{first.split('failed: ', 1)[-1]}"  # the converter's C++ assertion text, without its file:line
        ) from None
    _same_interface(before, model, label)
    _typed_pad_values(model)
    model.ir_version = max(model.ir_version, 8)
    return model


def _typed_pad_values(model: onnx.ModelProto) -> None:
    """The version converter turns Pad-2's ``value`` attribute into a float32 Constant whatever the data's type, which
    fails onnx's checker for a float64 or float16 model: such a constant takes the type of the tensor it pads."""
    made = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant" and n.attribute
            and n.attribute[0].name == "value" and n.attribute[0].t.data_type == onnx.TensorProto.FLOAT}
    pads = [n for n in model.graph.node if n.op_type == "Pad" and len(n.input) > 2 and n.input[2] in made]
    if not pads:
        return
    typed = onnx.shape_inference.infer_shapes(model)  # (not strict: what it cannot type stays untyped)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(typed.graph.input) + list(typed.graph.value_info)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    for node in pads:
        want = types.get(node.input[0])
        if want in (onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            value = made[node.input[2]].attribute[0]
            array = onnx.numpy_helper.to_array(value.t).astype(onnx.helper.tensor_dtype_to_np_dtype(want))
            value.t.CopyFrom(onnx.numpy_helper.from_array(array, value.t.name))


def _same_interface(before: onnx.ModelProto, after: onnx.ModelProto, label: str) -> None:
    """An UnsupportedModelError where the version converter changed a graph input's or output's shape: it drops
    Scan-8's batch axis, so the compiled model would not take the original's inputs."""
    shapes = {vi.name: declared_dims(vi) for vi in list(before.graph.input) + list(before.graph.output)}
    for vi in list(after.graph.input) + list(after.graph.output):
        old, new = shapes.get(vi.name), declared_dims(vi)
        if old is not None and new is not None and len(old) != len(new):
            ops = sorted({n.op_type for n in before.graph.node} & {"Scan"})
            raise UnsupportedModelError(
                f"{label}: upgrading opset {default_opset(before)} to {TARGET_OPSET} changes '{vi.name}' from "
                f"{old} to {new}" + (f" ({ops[0]}-8 has a batch axis that later versions drop)" if ops else "")
                + f", so the compiled model would not take the model's own data: export it with opset {TARGET_OPSET} "
                "or newer")


def downgrade_opset(model: onnx.ModelProto, label: str, opset: int, why: str) -> onnx.ModelProto:
    """The model converted down to ``opset`` (onnx.version_converter, then the checker on its weight-less
    copy), or an UnsupportedModelError saying ``why`` it was needed and why it failed. Ops newer than
    ``opset`` are expanded into their ONNX function bodies first (expand_newer_ops)."""
    try:
        converted = version_converter.convert_version(expand_newer_ops(model, opset), opset)
        light = checkable_copy(converted)
        if light is not None:
            onnx.checker.check_model(light)
    except Exception as e:  # noqa: BLE001 - the converter raises bare RuntimeErrors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = first.split("failed: ", 1)[-1]  # the converter's C++ assertion text, without its file:line
        raise UnsupportedModelError(f"{label}: {why}, and converting the model from opset {default_opset(model)} "
                                    f"down to {opset} failed ({first}); export it with opset {opset} or lower") \
            from None
    return converted


def castlike_to_cast(model: onnx.ModelProto) -> onnx.ModelProto:
    """CastLike(a, t) whose target t has a known type becomes Cast(a, to=type(t)): the same value,
    but a constant ``a`` then folds. PyTorch's dynamo exporter writes CastLike(constant, activation)
    for a Conv's zero bias; left dynamic, that bias would hide from rules that read it at compile time."""
    if not any(n.op_type == "CastLike" for n in model.graph.node):
        return model
    types = {t.name: t.data_type for t in model.graph.initializer}
    typed = infer_shapes(model)
    for vi in list(typed.graph.input) + list(typed.graph.value_info) + list(typed.graph.output):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types.setdefault(vi.name, vi.type.tensor_type.elem_type)
    model = copy.deepcopy(model)
    for node in model.graph.node:
        if node.op_type == "CastLike" and node.domain in ("", "ai.onnx") and types.get(node.input[1]):
            to = types[node.input[1]]
            node.op_type = "Cast"
            del node.input[1:]
            node.attribute.append(onnx.helper.make_attribute("to", to))
    return model


FOLD_TRIGGERS = frozenset({"Identity", "Dropout", "Constant", "CastLike", "Shape", "Size"})


def needs_folding(model: onnx.ModelProto) -> bool:
    """Whether graphsurgeon's import/fold/export round trip can change anything: some node to drop,
    or computing only from constants (one pass; conservative). Skipping it saves a third of the
    compile time of graphs with nothing to fold."""
    constant = {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in FOLD_TRIGGERS or all(not i or i in constant for i in node.input):
            return True
    return False


def fold_and_clean(model: onnx.ModelProto) -> onnx.ModelProto:
    """Fold constant subgraphs into initializers and remove Identity/Dropout pass-throughs."""
    if not needs_folding(model):
        clean = onnx.ModelProto()  # a new object, as the round trip gives: callers keep the original
        clean.CopyFrom(model)
        return clean
    model = castlike_to_cast(model)
    if can_fold_in_proto(model):
        try:
            return fold_in_proto(model, FOLD_SIZE_LIMIT)
        except FoldError:
            pass
    try:
        return fold_with_graphsurgeon(model)
    except Exception:  # noqa: BLE001 - graphsurgeon crashes on a constant sequence that something not folded reads
        pass  # (it asks the list for its nbytes); fold.py leaves sequences alone
    try:
        return fold_in_proto(model, FOLD_SIZE_LIMIT)
    except FoldError:  # fold nothing, but still take the initializers out of the inputs and drop Identity, Dropout
        return fold_in_proto(model, limit=0, evaluate_nothing=True)


def fold_with_graphsurgeon(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same with onnx-graphsurgeon, which also folds static shapes (Shape, Size) and handles
    control flow; slower (an import/export round trip of the whole graph)."""
    # a copy: folding an If of a known condition, graphsurgeon renames the branch's initializers and the outer
    # ones it reads in the proto it imported, and the caller's model would then read names it no longer has
    graph = gs.import_onnx(copy.deepcopy(model))
    outputs = {t.name for t in graph.outputs}
    for node in graph.nodes:
        mask_read = node.op == "Dropout" and len(node.outputs) > 1 and node.outputs[1].outputs
        if node.op in ("Identity", "Dropout") and node.outputs[0].name not in outputs and not mask_read:
            src = node.inputs[0]
            for consumer in list(node.outputs[0].outputs):
                for k, t in enumerate(consumer.inputs):
                    if t is node.outputs[0]:
                        consumer.inputs[k] = src
            node.outputs.clear()
    graph.cleanup(remove_unused_graph_inputs=False)
    # graphsurgeon evaluates the constant subgraphs with onnxruntime, whose optimizer logs warnings about
    # the temporary graph ("UnsqueezeElimination cannot remove node ..."): not the user's business
    ort.set_default_logger_severity(3)
    try:
        graph.fold_constants(size_threshold=FOLD_SIZE_LIMIT, error_ok=True)
    finally:
        ort.set_default_logger_severity(2)  # onnxruntime's default (warnings); it has no getter to restore
    graph.cleanup(remove_unused_graph_inputs=False)
    folded = gs.export_onnx(graph, do_type_check=False)
    restore_value_types(model, folded)
    folded.ir_version = model.ir_version
    del folded.opset_import[:]
    folded.opset_import.extend(model.opset_import)
    folded.metadata_props.extend(model.metadata_props)
    return folded


def drop_io_value_info(model: onnx.ModelProto) -> None:
    """Remove value_info entries that name a graph input or output: their declarations hold, and such an entry can
    only repeat or contradict one (onnxconverter-common's keep_io_types leaves a float16 entry for an output it casts
    back to float32, which took the declaration's place in onnx-graphsurgeon's copy)."""
    io = {vi.name for vi in list(model.graph.input) + list(model.graph.output)}
    if any(vi.name in io for vi in model.graph.value_info):
        keep = [vi for vi in model.graph.value_info if vi.name not in io]
        del model.graph.value_info[:]
        model.graph.value_info.extend(keep)


def restore_value_types(original: onnx.ModelProto, folded: onnx.ModelProto) -> None:
    """graphsurgeon keeps only tensor types: a sequence-of-maps output (skl2onnx's ZipMap) comes back
    as a sequence of tensors of undefined type, which the checker rejects. Put back the declared types
    of graph inputs and outputs, and drop intermediate value_info whose type was lost."""
    declared = {vi.name: vi for vi in list(original.graph.input) + list(original.graph.output)}
    for vi in list(folded.graph.input) + list(folded.graph.output):
        if vi.name in declared and not vi.type.HasField("tensor_type"):
            vi.type.CopyFrom(declared[vi.name].type)
    keep = [vi for vi in folded.graph.value_info
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type]
    del folded.graph.value_info[:]
    folded.graph.value_info.extend(keep)


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node, and every node after the first of a repeated name, a name of its own:
    "{op}_{index}", with a suffix where the model already uses that name (onnxruntime refuses two nodes of
    one name, and the rules are looked up by name)."""
    nodes = model.graph.node
    taken = {n.name for n in nodes if n.name}
    seen = set()
    for i, node in enumerate(nodes):
        if not node.name or node.name in seen:
            name, k = f"{node.op_type}_{i}", 1
            while name in taken:
                name, k = f"{node.op_type}_{i}_{k}", k + 1
            node.name = name
            taken.add(name)
        seen.add(node.name)


def canonicalize(model: onnx.ModelProto, label: str = "model",
                 max_opset: tuple[int, str] | None = None, fused_recurrent: bool = False,
                 float_layers: bool = False) -> onnx.ModelProto:
    """``max_opset`` = (opset, why): convert a newer model down to that opset first, for a method whose
    ops onnxruntime cannot run at the model's own opset. ``fused_recurrent``: leave the recurrent nodes that the
    exact-gradient methods differentiate as they are (recurrent_nodes.why_not_fused) instead of unrolling them.
    ``float_layers``: write dynamically quantized layers as float ones (dequantize.py), for the LRP and pattern
    rules."""
    drop_io_value_info(model)
    if float_layers and any(n.op_type in INTEGER_LAYERS for n in model.graph.node):
        dequantize_integer_layers(model)
    if max_opset is not None and default_opset(model) > max_opset[0]:
        model = downgrade_opset(model, label, *max_opset)
    model = upgrade_opset(model, label)
    qoperator_to_qdq(model)  # integer kernels of the QOperator format as float ops between DQ and Q (qoperator.py)
    model = expand_defined_ops(model)
    model = fold_and_clean(model)
    for _ in range(CONTROL_FLOW_PASSES):  # each pass unrolls one level of nesting; folding then fixes the next's
        if resolve_sequences(model):  # lists of tensors (an unrolled torch.split) read at constant positions
            model = fold_and_clean(model)
        # shape entries known despite a symbolic batch axis (a Loop's step count), and again after folding: the
        # constants it makes (a TorchScript Swin's window padding, computed with Mod) make more shapes known
        for _ in range(STATIC_DIMS_PASSES):
            if not fold_static_dims(model):
                break
            model = fold_and_clean(model)
        if not has_control_flow(model) or not unroll_control_flow(model):
            break
        # known shapes let the next Loop's steps (Shape(h)) fold; in place: the light copy lacks the large weights
        model = fold_and_clean(infer_shapes(model, in_place=True))
    if any(n.op_type in RECURRENT_OPS for n in model.graph.node):
        unroll_recurrent(model, tensor_shapes(infer_shapes(model)), fused_recurrent)
        remove_dead(model.graph)  # a zero initial state's ConstantOfShape(Shape(x)) chain
    name_nodes(model)
    return infer_shapes(model, in_place=True)
