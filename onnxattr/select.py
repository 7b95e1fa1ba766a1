"""Select what to explain (input, output, neuron) and build the seed of the reverse pass.

Outputs of rank > 2 are flattened per sample for neuron selection, as iNNvestigate does. A trailing
Softmax/LogSoftmax is looked through: the logits before it are explained, as iNNvestigate's
model_wo_softmax does, while the compiled model still returns the original outputs; so is a trailing
quantization (QuantizeLinear -> DequantizeLinear): the float scores before it.
Seeds: ``one`` puts 1 on the selected neuron (gradient methods), ``logit`` its value (LRP),
``relu_logit`` max(0, value) (Deep Taylor). An index out of range makes ScatterElements fail at run
time (never a silent all-zero map); the Python API and CLI check it first with a clearer message.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto

from onnxattr.errors import SelectionError
from onnxattr.light import declared_dims
from onnxattr.expand import EXPANDED
from onnxattr.graph import FLOAT_TYPES, GraphBuilder

NEURON_MODES = ("max", "index", "all")
TARGET_INPUT = "target"


def _elem_type(vi) -> int:
    return vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    graph = model.graph
    types = {vi.name: _elem_type(vi) for vi in (*graph.input, *graph.value_info, *graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def float_entry_points(model: onnx.ModelProto, limit: int = 5) -> list[str]:
    """Float tensors computed from the non-float inputs (an embedding lookup's output, say): what
    ``--input`` can name when the model's own inputs are token ids. Gather outputs come first."""
    types = _tensor_types(model)
    inits = {t.name for t in model.graph.initializer}
    derived = {i.name for i in model.graph.input if i.name not in inits and types.get(i.name) not in FLOAT_TYPES}
    found = []
    for node in model.graph.node:
        if any(i in derived for i in node.input):
            for o in node.output:
                if types.get(o) in FLOAT_TYPES:
                    if not node.name.startswith(EXPANDED + "/"):  # a mask inside an expanded op's body is no entry
                        found.append((node.op_type != "Gather", len(found), f"{o} ({node.op_type} '{node.name}')"))
                elif o:
                    derived.add(o)
    return [text for _, _, text in sorted(found)[:limit]]


def _instead(model: onnx.ModelProto) -> str:
    points = float_entry_points(model)
    if not points:
        return "; no float tensor is computed from them either"
    return ("; explain a float tensor computed from them instead with --input NAME (input=NAME in Python), "
            "e.g. " + ", ".join(points))


def choose_input(model: onnx.ModelProto, name: str | None) -> str:
    """The graph input to explain; ``name`` may also be an intermediate float tensor. A graph input
    declared rank 0 is refused: relevance maps are per sample, along a leading batch dimension."""
    chosen = _choose_input(model, name)
    vi = next((i for i in model.graph.input if i.name == chosen), None)
    if vi is not None and vi.type.tensor_type.HasField("shape") and not vi.type.tensor_type.shape.dim:
        raise SelectionError(f"input '{chosen}' is a scalar (rank 0); onnxattr explains inputs with a leading "
                             "batch dimension: export the model with input shape [N, ...]")
    return chosen


def declared_input_shape(model: onnx.ModelProto, name: str | None) -> list | None:
    """The declared shape (ints, or names/None) of the graph input choose_input picks for ``name``; None where
    that is an intermediate tensor or declares no shape."""
    chosen = choose_input(model, name)
    vi = next((i for i in model.graph.input if i.name == chosen), None)
    return None if vi is None else declared_dims(vi)


def _choose_input(model: onnx.ModelProto, name: str | None) -> str:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if name is not None:
        match = [i for i in inputs if i.name == name]
        produced = {o for n in model.graph.node for o in n.output}
        if not match and name in produced and _tensor_types(model).get(name) in FLOAT_TYPES:
            return name  # an intermediate float tensor, e.g. the embedding output of a token model
        if not match:
            raise SelectionError(
                f"no graph input named '{name}' (nor a float tensor); inputs are: {', '.join(i.name for i in inputs)}"
            )
        if _elem_type(match[0]) not in FLOAT_TYPES:
            raise SelectionError(f"input '{name}' is not a float tensor; only float tensors can be explained"
                                 + _instead(model))
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
            "computed for float tensors" + _instead(model)
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
    return chosen, looked_through(chosen, producers)[0]


def looked_through(tensor: str, producers: dict) -> tuple[str, list[str]]:
    """(the tensor explained for output ``tensor``, the ops looked through on the way: "Softmax", "LogSoftmax",
    "QuantizeLinear"): the logits before a trailing Softmax/LogSoftmax, and the float values before a trailing
    quantization (QuantizeLinear -> DequantizeLinear; a quantized model's scores, whose largest ones the output's
    range may clip, and a clipped score's straight-through gradient is 0), through Identity nodes (skl2onnx:
    Softmax -> Identity -> output)."""
    explained, crossed = tensor, []
    node = producers.get(explained)
    while node is not None:
        if node.op_type == "Identity":
            node = producers.get(node.input[0])
            continue
        codes = producers.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if codes is not None and codes.op_type == "QuantizeLinear":
            explained = codes.input[0]
            crossed.append("QuantizeLinear")
        elif node.op_type in ("Softmax", "LogSoftmax") and not {"Softmax", "LogSoftmax"} & set(crossed):
            explained = node.input[0]
            crossed.append(node.op_type)
        else:
            break
        node = producers.get(explained)
    return explained, crossed


def build_seed(b: GraphBuilder, y: str, mode: str, scale: str, index: str | None) -> str:
    """Seed tensor of y's shape. ``index``: int64 [N, 1] neuron per sample (modes max/index). A scalar y (a
    loss, an energy: one number for the whole batch) is its own only neuron, seeded as in mode "all"."""
    if b.rank(y) == 0:
        seed = {"one": lambda: b.op("ConstantOfShape", [b.ints([])], value=b.fill_value(1.0, y)),
                "logit": lambda: b.op("Identity", [y]), "relu_logit": lambda: b.op("Relu", [y])}[scale]()
        b.set_info(seed, y)
        return seed
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


def selected_value(b: GraphBuilder, y: str, seed: str) -> str:
    """[N]: the selected output of each sample, sum(y * seed) over its non-batch axes (the output itself for
    a one-hot seed, the sum of all outputs for a ones seed); [1] for a scalar y (a loss): y times its seed."""
    if b.rank(y) == 0:
        return b.op("Reshape", [b.op("Mul", [y, seed]), b.ints([1])])
    return b.op("ReduceSum", [b.op("Flatten", [b.op("Mul", [y, seed])], axis=1), b.ints([1])], keepdims=0)


def neuron_index(b: GraphBuilder, y: str, mode: str) -> str | None:
    """int64 [N, 1]: ArgMax of the flattened output (max), the ``target`` input (index), or None (mode all,
    or a scalar output: its own only neuron)."""
    if b.rank(y) == 0:
        if mode == "index":
            raise SelectionError(f"the explained output '{y}' is a single number (rank 0, no batch axis): there "
                                 "is no neuron to pick per sample; explain it with neuron 'max' or 'all'")
        return None
    if mode == "max":
        return b.op("ArgMax", [b.op("Flatten", [y], axis=1)], axis=1, keepdims=1)
    if mode == "index":
        return b.op("Unsqueeze", [TARGET_INPUT, b.ints([1])])
    return None
