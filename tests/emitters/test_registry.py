"""onnxattr/emitters/registry.py: the helpers every emitter shares."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.errors import UnsupportedModelError

# ops whose backward needs the rank of their input: (node, initializers, output rank)
NEEDS_RANK = {
    "LayerNormalization": (helper.make_node("LayerNormalization", ["s", "scale"], ["y"], axis=-1, name="op"),
                           {"scale": np.ones(4, np.float32)}, 4),
    "InstanceNormalization": (helper.make_node("InstanceNormalization", ["s", "c", "z"], ["y"], name="op"),
                              {"c": np.ones(2, np.float32), "z": np.zeros(2, np.float32)}, 4),
    "GroupNormalization": (helper.make_node("GroupNormalization", ["s", "c", "z"], ["y"], num_groups=1, name="op"),
                           {"c": np.ones(2, np.float32), "z": np.zeros(2, np.float32)}, 4),
    "RMSNormalization": (helper.make_node("RMSNormalization", ["s", "scale"], ["y"], axis=-1, name="op"),
                         {"scale": np.ones(4, np.float32)}, 4),
    "LRN": (helper.make_node("LRN", ["s"], ["y"], size=3, name="op"), {}, 4),
    "Transpose": (helper.make_node("Transpose", ["s"], ["y"], name="op"), {}, 4),
    "DFT": (helper.make_node("DFT", ["s", "", "axis"], ["y"], name="op"), {"axis": np.array(-2)}, 4),
}


@pytest.mark.parametrize("op", sorted(NEEDS_RANK))
def test_an_input_of_unknown_rank_is_refused_by_name(op):
    """x [N, C, H, W] of symbolic dims -> Squeeze without axes (shape inference cannot tell which dims are 1, so
    the result has no rank) -> an op whose backward needs its input's rank: refused naming the node, the op and
    the tensor (before: a bare TypeError from the emitter for LayerNormalization, InstanceNormalization, LRN and
    Transpose)."""
    node, inits, out_rank = NEEDS_RANK[op]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Squeeze", ["x"], ["s"], name="squeeze"), node], "g",
                              [vi("x", TensorProto.FLOAT, ["N", "C", "H", "W"])],
                              [vi("y", TensorProto.FLOAT, ["a", "b", "c", "d"][:out_rank])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    with pytest.raises(UnsupportedModelError, match=f"{op} node 'op': the rank of its input 's' is unknown"):
        onnxattr.compile(model, "gradient")
