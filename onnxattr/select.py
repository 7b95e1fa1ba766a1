"""Select what to explain (input, output, neuron) and build the seed of the reverse pass.

Outputs of rank > 2 are flattened per sample for neuron selection, as iNNvestigate does. A trailing
Softmax/LogSoftmax is looked through: the logits before it are explained, as iNNvestigate's
model_wo_softmax does, while the compiled model still returns the original outputs.
Seeds: ``one`` puts 1 on the selected neuron (gradient methods), ``logit`` its value (LRP),
``relu_logit`` max(0, value) (Deep Taylor). An index out of range makes ScatterElements fail at run
time (never a silent all-zero map); the Python API and CLI check it first with a clearer message.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from onnxattr.errors import SelectionError
from onnxattr.graph import FLOAT_TYPES, GraphBuilder

NEURON_MODES = ("max", "index", "all")
TARGET_INPUT = "target"


def _elem_type(vi) -> int:
    return vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0


def choose_input(model: onnx.ModelProto, name: str | None) -> str:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if name is not None:
        match = [i for i in inputs if i.name == name]
        if not match:
            raise SelectionError(
                f"no graph input named '{name}'; inputs are: {', '.join(i.name for i in inputs)}"
            )
        if _elem_type(match[0]) not in FLOAT_TYPES:
            raise SelectionError(f"input '{name}' is not a float tensor; only float inputs can be explained")
        return name
    floats = [i for i in inputs if _elem_type(i) in FLOAT_TYPES]
    if len(floats) == 1:
        return floats[0].name
    if not floats:
        described = ", ".join(
            f"{i.name} ({TensorProto.DataType.Name(_elem_type(i)) if _elem_type(i) else 'non-tensor'})"
            for i in inputs
        )
        raise SelectionError(
            f"the model has no float input to explain (inputs: {described}); relevance can only be "
            "computed for float tensors — e.g. the embedding output of a token model, passed with --input "
            "after exporting it as an input"
        )
    raise SelectionError(
        "the model has several float inputs (" + ", ".join(i.name for i in floats)
        + "); choose one with --input NAME"
    )


def choose_output(model: onnx.ModelProto, b: GraphBuilder, name: str | None) -> tuple[str, str]:
    """(graph output chosen, tensor actually explained: the logits before a trailing softmax)."""
    outputs = [o.name for o in model.graph.output]
    producers = {o: n for n in model.graph.node for o in n.output}
    if name is not None:
        if name not in outputs and name not in producers:
            raise SelectionError(f"no output or tensor named '{name}'; outputs are: {', '.join(outputs)}")
        chosen = name
    else:
        floats = [o for o in outputs if b.is_float(o)]
        if not floats:
            zipmap = [n for n in model.graph.node if n.op_type == "ZipMap" and n.output[0] in outputs]
            if zipmap:
                chosen = zipmap[0].input[0]
            else:
                raise SelectionError(
                    "the model has no float tensor output to explain; outputs are: " + ", ".join(outputs)
                )
        else:
            chosen = floats[0]
    explained = chosen
    node = producers.get(explained)
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        explained = node.input[0]
    return chosen, explained


def build_seed(b: GraphBuilder, y: str, mode: str, scale: str, index: str | None) -> str:
    """Seed tensor of y's shape. ``index``: int64 [N, 1] neuron per sample (modes max/index)."""
    flat = b.op("Flatten", [y], axis=1)
    if mode == "all":
        if scale == "one":
            seed_flat = b.op("ConstantOfShape", [b.op("Shape", [flat])],
                             value=onnx.helper.make_tensor("one", b.types.get(y, 1), [1], [1.0]))
        elif scale == "logit":
            seed_flat = flat
        else:
            seed_flat = b.op("Relu", [flat])
    else:
        if scale == "one":
            values = b.op("ConstantOfShape", [b.op("Shape", [index])],
                          value=onnx.helper.make_tensor("one", b.types.get(y, 1), [1], [1.0]))
        else:
            values = b.op("GatherElements", [flat, index], axis=1)
            if scale == "relu_logit":
                values = b.op("Relu", [values])
        zeros = b.op("ConstantOfShape", [b.op("Shape", [flat])],
                     value=onnx.helper.make_tensor("zero", b.types.get(y, 1), [1], [0.0]))
        seed_flat = b.op("ScatterElements", [zeros, index, values], axis=1)
    seed = b.op("Reshape", [seed_flat, b.shape_of(y)])
    b.set_info(seed, y)
    return seed


def neuron_index(b: GraphBuilder, y: str, mode: str) -> str | None:
    """int64 [N, 1]: ArgMax of the flattened output (max), the ``target`` input (index), or None."""
    if mode == "max":
        return b.op("ArgMax", [b.op("Flatten", [y], axis=1)], axis=1, keepdims=1)
    if mode == "index":
        return b.op("Unsqueeze", [TARGET_INPUT, b.ints([1])])
    return None
