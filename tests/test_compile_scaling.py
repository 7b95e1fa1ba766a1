"""The compiler is linear in graph size, checked structurally: the number of Python function calls made
while compiling a graph 4x larger grows at most ~4x (a per-node scan of the whole graph would make it
grow 16x). Call counts are deterministic; no wall-clock time is asserted."""

import cProfile
import pstats

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxattr.assemble import compile_model


def residual_mlp(blocks: int, width: int = 4) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits, h = [], [], "x"
    for i in range(blocks):
        inits += [numpy_helper.from_array(rng.standard_normal((width, width)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(width).astype(np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [h, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"]),
                  helper.make_node("Add", [f"r{i}", h], [f"h{i}"])]
        h = f"h{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", width])],
                              [helper.make_tensor_value_info(h, TensorProto.FLOAT, ["n", width])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def calls(model, method) -> int:
    prof = cProfile.Profile()
    prof.enable()
    compile_model(model, method)
    prof.disable()
    return pstats.Stats(prof).total_calls


@pytest.mark.parametrize("method", ["gradient", "lrp.epsilon", "lrp.epsilon_plus_flat", "integrated_gradients"])
def test_compile_work_grows_linearly_with_graph_size(method):
    small, large = residual_mlp(60), residual_mlp(240)  # 240 and 960 nodes
    calls(small, method)  # imports and one-time caches out of the way
    c_small, c_large = calls(small, method), calls(large, method)
    assert c_large <= 4.6 * c_small, (c_small, c_large, c_large / c_small)


def product_chain(k: int) -> onnx.ModelProto:
    """Two element-wise streams of x multiplied into each other k times (u' = tanh(u v), v' = sigmoid(v + u)):
    every Mul is a product of two activations, and no MatMul ends attn_lrp's search for a gate."""
    nodes = [helper.make_node("Tanh", ["x"], ["u0"]), helper.make_node("Sigmoid", ["x"], ["v0"])]
    for i in range(k):
        nodes += [helper.make_node("Mul", [f"u{i}", f"v{i}"], [f"m{i}"]),
                  helper.make_node("Tanh", [f"m{i}"], [f"u{i + 1}"]),
                  helper.make_node("Add", [f"v{i}", f"u{i}"], [f"a{i}"]),
                  helper.make_node("Sigmoid", [f"a{i}"], [f"v{i + 1}"])]
    nodes.append(helper.make_node("Add", [f"u{k}", f"v{k}"], ["y"]))
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("method", ["attn_lrp", "cp_lrp"])
def test_attn_lrp_gate_search_stays_linear(method):
    """Each product's search for a gate is bounded (lrp/gates.py, GATE_LIMIT): it walked back to the input, 240 s for
    20,000 nodes."""
    small, large = product_chain(150), product_chain(600)  # ~600 and ~2,400 nodes
    calls(small, method)
    c_small, c_large = calls(small, method), calls(large, method)
    assert c_large <= 4.6 * c_small, (c_small, c_large, c_large / c_small)
