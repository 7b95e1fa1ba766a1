"""A statically quantized model's predictions from its own forward nodes, for assemble.

onnxruntime runs a quantized layer (DequantizeLinear -> Conv [-> Relu] -> QuantizeLinear, and the like) as one
integer kernel only while nothing else reads the float values inside it, and the integer kernel rounds otherwise
than the float ops do. A backward reads those values (a quantizer's mask reads its float input), so with one shared
forward the layers would run in float and the outputs differ from the model's by a code step here and there
(ResNet18: 21 % of its logits). Instead the appended nodes read a twin of the forward nodes they need, their outputs
renamed, and the model's own nodes stay as canonicalize left them: onnxruntime fuses them as it fuses the model, and
the compiled model's outputs are the model's bit for bit. The price is one quantized forward more; a float model
keeps one shared forward. Nodes that read constants only (a weight's DequantizeLinear) are not twinned: both
forwards read them, and fold_unfused_dequantize gives each reader the form it runs fastest.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxattr.fold import DEFAULT_DOMAINS
from onnxattr.graph import follow_codes, outer_reads, rename_reads

TWIN = "onnxattr_backward"  # prefix of the twin's tensor names


def quantizes_activations(nodes) -> bool:
    """Whether the forward quantizes statically (a QuantizeLinear: QDQ, and QOperator as canonicalize writes it):
    then onnxruntime fuses the layers between DequantizeLinear and QuantizeLinear into integer kernels, which a
    backward reading their float values would break. A dynamically quantized layer (DynamicQuantizeLinear ->
    MatMulInteger) keeps its fusion with a backward beside it, so it needs no twin."""
    return any(n.op_type == "QuantizeLinear" and n.domain in DEFAULT_DOMAINS for n in nodes)


def twin_forward(own: list[onnx.NodeProto], forward: list[onnx.NodeProto], appended: list[onnx.NodeProto],
                 constants: dict[str, onnx.TensorProto]) -> tuple[list, dict[str, str], list]:
    """The twin of ``forward`` (the nodes the reverse pass built on, perhaps given extra outputs) that
    ``appended`` reads, its tensors renamed TWIN/name, to which ``appended``'s reads are renamed in place: even a
    model output's, as any reader of a quantized layer's codes but the model's own DequantizeLinear (an ArgMax of
    the output, a seed of its value) keeps onnxruntime from fusing that layer. ``own``: the forward as
    canonicalize left it; ``constants``: the initializers by name. A node of ``forward`` that reads constants only
    and whose outputs ``own`` computes too is read from ``own`` instead of twinned. Returns the twin's nodes,
    {name: its twin's name} and the initializers the twin adds (_unmerged)."""
    computed = {o for n in own for o in n.output}
    rename: dict[str, str] = {}
    twins = []
    for node in forward:
        reads = [i for i in outer_reads(node) if i]
        if all(i in constants or (i in computed and i not in rename) for i in reads) and \
                all(o in computed for o in node.output if o):
            continue
        twin = onnx.NodeProto()
        twin.CopyFrom(node)
        rename_reads(twin, rename)
        for k, o in enumerate(twin.output):
            if o:
                rename[o] = twin.output[k] = f"{TWIN}/{o}"
        twin.name = f"{TWIN}/{node.name}" if node.name else ""
        twins.append(twin)
    for node in appended:
        rename_reads(node, rename)
    wanted = {i for n in appended for i in outer_reads(n)}
    live = []
    for twin in reversed(twins):
        if wanted.intersection(twin.output):
            live.append(twin)
            wanted.update(outer_reads(twin))
    live.reverse()
    return live, rename, _unmerged(live, constants)


def _unmerged(twins, constants: dict[str, onnx.TensorProto]) -> list[onnx.TensorProto]:
    """Copies of the scale and zero point of each twin QuantizeLinear, read by it and by the DequantizeLinear of its
    codes instead: onnxruntime's common-subexpression elimination merges twin nodes with the model's where they
    compute alike (the input's quantizer, and whatever reads the input before it), and a quantizer whose codes the
    model's first layer then shares loses its fusion (int8 codes go unconverted to uint8 for x86's kernels). An
    integer zero point is never shared by its ConstantSharing, so a copy of it keeps the twin's quantizers apart; a
    quantizer without one gets the zero it means (uint8, or its output_dtype's)."""
    copies, renamed = [], {}  # renamed: {codes: {name: its copy's}}
    for node in twins:
        if node.op_type == "QuantizeLinear":
            names = {}
            if len(node.input) < 3 or not node.input[2]:
                code = next((a.i for a in node.attribute if a.name == "output_dtype" and a.i), TensorProto.UINT8)
                zero = numpy_helper.from_array(np.zeros((), helper.tensor_dtype_to_np_dtype(code)),
                                               f"{node.output[0]}/zero_point")
                node.input[:] = list(node.input[:2]) + [zero.name]
                copies.append(zero)
            for k in range(1, len(node.input)):
                source = constants.get(node.input[k])
                if source is not None:
                    copy = onnx.TensorProto()
                    copy.CopyFrom(source)
                    copy.name = names[source.name] = node.input[k] = f"{node.output[0]}/{source.name}"
                    copies.append(copy)
            renamed[node.output[0]] = names
        elif node.op_type == "DequantizeLinear" and node.input[0] in renamed:
            names = renamed[node.input[0]]
            node.input[1:] = [names.get(i, i) for i in node.input[1:]]
        else:
            follow_codes(node, renamed)
    return copies
