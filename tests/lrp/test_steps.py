"""onnxattr/lrp/steps.py: the per-node relevance steps that are not layer rules."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr


def _net(cast_to):
    """x [N, 4] -> Gemm -> (Cast to ``cast_to``) -> Softmax -> (Cast back) -> Gemm -> y [N, 3]; no Casts when
    None."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("w1", (4, 5)), ("b1", (5,)), ("w2", (5, 3)))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"])]
    if cast_to is None:
        nodes.append(helper.make_node("Softmax", ["h"], ["r"]))
    else:
        nodes += [helper.make_node("Cast", ["h"], ["hc"], to=cast_to), helper.make_node("Softmax", ["hc"], ["rc"]),
                  helper.make_node("Cast", ["rc"], ["r"], to=TensorProto.FLOAT)]
    nodes.append(helper.make_node("Gemm", ["r", "w2"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.alpha_2_beta_1", "lrp.z", "deconvnet"])
@pytest.mark.parametrize("cast_to", [TensorProto.DOUBLE, TensorProto.FLOAT16])
def test_relevance_through_a_cast_takes_the_operands_type_back(method, cast_to):
    """A Cast on the path (a float16 model's softmax computed in float32; Attention's softmax_precision) passes
    relevance unchanged, cast back to its operand's type: under the LRP rules it was passed as it came, and the
    compiled model failed onnx's checker. The map equals the same net's without the Casts (float16: to its
    rounding)."""
    x = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)
    maps = []
    for cast_to_ in (cast_to, None):
        compiled = onnxattr.compile(_net(cast_to_), method)
        onnx.checker.check_model(compiled, full_check=True)
        session = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
        maps.append(session.run(["relevance"], {"x": x})[0])
    tol = 1e-6 if cast_to == TensorProto.DOUBLE else 2e-3
    np.testing.assert_allclose(maps[0], maps[1], rtol=tol, atol=tol * np.abs(maps[1]).max())
