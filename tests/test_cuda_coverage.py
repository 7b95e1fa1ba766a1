"""Every op type the compiler appends has a float32 kernel in onnxruntime's CUDA provider, so a compiled
graph does not fall back to the CPU node by node (README, "CUDA coverage"). No GPU is needed: the set
below is read off onnxruntime's docs/OperatorKernels.md (CUDAExecutionProvider, tensor(float)). An op
that is not in it makes this test fail: check that document before adding it here, or name the fallback
in the README."""

import os

import numpy as np
import onnx
import pytest

import onnxattr
from onnxattr.api import inspect
from onnxattr.load import nodes_within
from onnxattr.methods import REGISTRY
from onnxattr.runtime import cudnn_can_pad
from tests.lrp.nets import resnet_like

CUDA_FLOAT32 = frozenset({
    "Abs", "Add", "And", "ArgMax", "AveragePool", "BatchNormalization", "Cast", "Concat", "ConstantOfShape", "Conv",
    "ConvTranspose", "DepthToSpace", "Div", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Gather",
    "GatherElements", "GatherND", "Gemm", "GlobalAveragePool", "GlobalMaxPool", "Greater", "GreaterOrEqual", "HardSigmoid",
    "Identity", "Floor", "Less", "LessOrEqual", "Loop", "MatMul", "Max", "MaxPool", "Min", "Mul", "Neg", "NonZero", "Not",
    "Pad", "Pow", "RandomNormalLike", "RandomUniformLike", "Range", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceSum", "Relu",
    "Reshape", "Resize", "ScatterElements", "Shape", "Sigmoid", "Sign", "Size", "Slice", "Softmax", "SpaceToDepth", "Split",
    "Sqrt", "Squeeze", "Sub", "Sum", "Tanh", "Tile", "TopK", "Transpose", "Unsqueeze", "Where",
})

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
THIRDPARTY = os.path.join(os.path.dirname(__file__), "thirdparty", "data")
METHODS = sorted(name for name, m in REGISTRY.items() if m.family != "pattern")  # pattern needs fitted data
# exact Shapley values take at most 20 feature groups, KernelSHAP and LIME a group count known at compile time: a
# mask of shape [1] (one group) fits every input, and KernelSHAP then evaluates the full and the empty coalition alone
PARAMS = {"shapley_values": {"feature_mask": np.zeros(1, np.int64)},
          "kernel_shap": {"feature_mask": np.zeros(1, np.int64), "n_samples": 2},
          "lime": {"feature_mask": np.zeros(1, np.int64)}}


def op_types(graph, into):
    for node in graph.node:
        into.add(node.op_type)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                op_types(a.g, into)
    return into


def a_neuron(model) -> dict:
    """neuron_conductance's parameters for ``model``: unit 0 of a tensor halfway along the explained path."""
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in onnx.shape_inference.infer_shapes(model).graph.value_info if v.type.tensor_type.HasField("shape")}
    on_path = [row[2] for row in inspect(model, "gradient", tensors=True) if ranks.get(row[2], 0) >= 2]
    layer = on_path[len(on_path) // 2]
    return {"layer": layer, "neuron_index": [0] * (ranks[layer] - 1)}


def appended_ops(model, method, **options):
    """The op types the compiler appends that the model lacks, and "ConvTranspose(asymmetric pads)" if an
    appended ConvTranspose pads its ends unequally: onnxruntime's CUDA provider drops those to the CPU
    (cuDNN pads symmetrically; onnxruntime's CUDAExecutionProvider::GetCapability)."""
    params = a_neuron(model) if method == "neuron_conductance" else PARAMS.get(method, {})
    compiled = onnxattr.compile(model, method, **params, **options)
    found = op_types(compiled.graph, set()) - op_types(model.graph, set())  # re-runs of the model's own ops are its
    if not all(cudnn_can_pad(n) for n in appended_nodes(compiled.graph)):
        found.add("ConvTranspose(asymmetric pads)")
    return found


def appended_nodes(graph):
    """The nodes the compiler appended (named oa/...), inside subgraphs too."""
    return (n for top in graph.node for n in nodes_within(top) if n.name.startswith("oa/"))


@pytest.mark.parametrize("method", METHODS)
def test_small_nets(method):
    for net in (resnet_like(bias=True, batchnorm=True), resnet_like(last_pool="MaxPool")):
        missing = appended_ops(net, method) - CUDA_FLOAT32
        assert not missing, f"{method} appends ops without a CUDA float32 kernel: {sorted(missing)}"


@pytest.mark.parametrize("name", ["light_inception_v1", "light_squeezenet", "light_shufflenet"])
def test_zoo_graphs(name):
    model = onnx.load(os.path.join(LIGHT, f"{name}.onnx"))
    for method in ("gradient", "lrp.epsilon", "deep_taylor", "integrated_gradients"):
        missing = appended_ops(model, method) - CUDA_FLOAT32
        assert not missing, f"{name} {method}: {sorted(missing)}"


@pytest.mark.parametrize("name", ["opset_sweep_9", "opset_sweep_17", "yolov8n"])
def test_op_sweep_graphs(name):
    """Graphs exercising most emitters (the opset sweeps: Clip, HardSigmoid, Resize, Upsample, ...),
    with every method (each compiles on all three; a compile error fails the test)."""
    model = onnx.load(os.path.join(THIRDPARTY, f"{name}.onnx"))
    for method in METHODS:
        missing = appended_ops(model, method) - CUDA_FLOAT32
        assert not missing, f"{name} {method}: {sorted(missing)}"


@pytest.mark.parametrize("name", ["torch_dynamo_spectrogram_op18", "torch_dynamo_spectrogram_op20", "torch_dynamo_gnn",
                                  "torchvision_dcn", "keras_rnn"])
def test_signal_and_graph_nets(name):
    """The DFT and STFT backward (MatMul with the transform's matrix, ConvTranspose), the scatter max and add
    backward (Equal, GatherElements, GatherND, ScatterElements), DeformConv's (Floor, GatherElements,
    ScatterElements, ConvTranspose) and tf2onnx's Keras RNN Loops, unrolled (Gather, Unsqueeze, Concat):
    onnxruntime's CUDA provider has no DFT kernel, so transforms short enough for the matrix take none."""
    model = onnx.load(os.path.join(THIRDPARTY, f"{name}.onnx"))
    dft_nodes = sum(n.op_type == "DFT" for n in model.graph.node)  # the model's own: a set difference misses more
    for method in ("gradient", "integrated_gradients", "lrp.epsilon", "deep_lift"):
        missing = appended_ops(model, method) - CUDA_FLOAT32
        assert not missing, f"{name} {method}: {sorted(missing)}"
    compiled = onnxattr.compile(model, "gradient")
    assert sum(n.op_type == "DFT" for n in compiled.graph.node) == dft_nodes


def test_box_head():
    """RoiAlign's backward, fixed and adaptive sample counts (Floor, Range, Less, ScatterElements)."""
    model = onnx.load(os.path.join(THIRDPARTY, "torchvision_box_head_ts.onnx"))
    for method in ("gradient", "integrated_gradients", "lrp.epsilon", "occlusion"):
        missing = appended_ops(model, method, input="image") - CUDA_FLOAT32
        assert not missing, f"box head {method}: {sorted(missing)}"
