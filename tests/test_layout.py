"""The backward pass stays in onnxruntime's blocked channel layout (emitters/conv.py, channel_scale;
graph.declared_shapes): onnxruntime's CPU provider runs float32 2-D convolutions in NCHWc and keeps a
Mul or Add in it only when both sides are blocked and provably of one shape; every other meeting costs a
reorder (a copy of the tensor). Counted in the graph onnxruntime itself optimized. Skipped where
onnxruntime has no blocked layout (it needs AVX2 or wider)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr

C = 32  # a multiple of 16: blocked on AVX2 and AVX-512


def residual_net():
    """x[N,16,16,16] -> Conv Relu -> strided Conv Relu -> (Conv Relu Conv) + skip -> Relu ->
    GlobalAveragePool -> Flatten -> Gemm -> y[N,10]: four ReLU masks, a strided Conv (ConvTranspose
    VJP), a residual junction and a GlobalAveragePool, with a symbolic batch."""
    rng = np.random.default_rng(0)
    w = lambda *s: numpy_helper.from_array((rng.standard_normal(s) * 0.2).astype(np.float32))  # noqa: E731
    inits = {"w1": w(C, 16, 3, 3), "w2": w(C, C, 3, 3), "w3": w(C, C, 1, 1), "w4": w(C, C, 3, 3),
             "fc": w(10, C), "fcb": w(10)}
    for name, t in inits.items():
        t.name = name
    conv = lambda i, wt, o, **a: helper.make_node("Conv", [i, wt], [o], **a)  # noqa: E731
    nodes = [
        conv("x", "w1", "c1", pads=[1] * 4), helper.make_node("Relu", ["c1"], ["r1"]),
        conv("r1", "w2", "c2", pads=[1] * 4, strides=[2, 2]), helper.make_node("Relu", ["c2"], ["r2"]),
        conv("r2", "w3", "c3"), helper.make_node("Relu", ["c3"], ["r3"]),
        conv("r3", "w4", "c4", pads=[1] * 4), helper.make_node("Add", ["c4", "r2"], ["s"]),
        helper.make_node("Relu", ["s"], ["r4"]), helper.make_node("GlobalAveragePool", ["r4"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                               ["N", 16, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                              list(inits.values()))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def reorders(model: onnx.ModelProto, tmp_path, name: str) -> int:
    """Reorder nodes in onnxruntime's optimized graph of ``model``, in the main graph and Loop bodies."""
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / f"{name}.opt.onnx")
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    opt = onnx.load(so.optimized_model_filepath)

    def count(g):
        n = 0
        for node in g.node:
            n += node.op_type in ("ReorderInput", "ReorderOutput")
            n += sum(count(a.g) for a in node.attribute if a.type == onnx.AttributeProto.GRAPH)
        return n
    return count(opt.graph)


@pytest.fixture(scope="module")
def net():
    return residual_net()


@pytest.mark.parametrize("method,params", [("gradient", {}), ("guided_backprop", {}),
                                           ("integrated_gradients", {"steps": 4, "chunk_size": 2})])
def test_backward_adds_few_reorders(net, tmp_path, method, params):
    """The forward needs 2 reorders (into the first Conv, out of the pooling). The backward may add: one
    at its start (the Gemm's VJP), two around the strided Conv's ConvTranspose, one at the relevance;
    the forward copy inside a sample Loop needs its own 2. Before the layout work the ReLU masks and the
    residual junction cost more: 10 added for gradient, 12 for integrated gradients. (LRP's epsilon
    ratio a / (a + eps) needs a Div, which has no blocked kernel: its masks still reorder.)"""
    forward = reorders(net, tmp_path, "forward")
    if forward == 0:
        pytest.skip("onnxruntime uses no blocked layout on this CPU")
    compiled = onnxattr.compile(net, method, **params)
    added = reorders(compiled, tmp_path, method) - forward
    assert added <= (6 if method == "integrated_gradients" else 4), added
