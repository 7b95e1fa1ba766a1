"""One small CNN written at opset 9, converted by onnx.version_converter to opsets 9, 11, 13, 15, 17
and the newest opset this onnx knows, for the opset sweep in tests/test_thirdparty.py.

Run from the repository root in the dev venv (onnx only, no framework):

    . .venv/bin/activate && python tests/thirdparty/make_opset_sweep.py

The graph uses ops whose signatures changed across opsets (Pad, Clip, Slice, Squeeze/Unsqueeze, Split,
ReduceMean, Upsample/Resize, BatchNormalization, Softmax), so every file spells them differently while
computing the same function. Writes tests/thirdparty/data/opset_sweep_<N>.onnx (random weights, seed 0,
dynamic batch "N", input x [N, 3, 12, 12], output "probs" [N, 5]).
"""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
OPSETS = (9, 11, 13, 15, 17, onnx.defs.onnx_opset_version())


def source_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def w(name, *shape, scale=0.3):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        w("W1", 8, 3, 3, 3), w("B1", 8),
        numpy_helper.from_array(rng.uniform(0.5, 1.5, 8).astype(np.float32), "bn_s"),
        w("bn_b", 8), w("bn_m", 8),
        numpy_helper.from_array(rng.uniform(0.5, 2.0, 8).astype(np.float32), "bn_v"),
        w("W2", 8, 4, 3, 3),  # grouped conv (groups=2)
        w("W3", 6, 8, 1, 1),
        w("Wfc", 5, 6), w("Bfc", 5),
        numpy_helper.from_array(np.array([1.0, 1.0, 2.0, 2.0], np.float32), "scales"),
        numpy_helper.from_array(np.array([-1, 6], np.int64), "flat_shape"),
    ]
    n = helper.make_node
    nodes = [
        n("Pad", ["x"], ["p"], mode="constant", pads=[0, 0, 1, 1, 0, 0, 1, 1]),  # 12 -> 14
        n("Conv", ["p", "W1", "B1"], ["c1"]),                                  # 14 -> 12
        n("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], epsilon=1e-3),
        n("Clip", ["bn"], ["a1"], min=-0.5, max=4.0),
        n("MaxPool", ["a1"], ["m1"], kernel_shape=[2, 2], strides=[2, 2]),      # 12 -> 6
        n("Upsample", ["m1", "scales"], ["up"], mode="nearest"),                # 6 -> 12
        n("Conv", ["up", "W2"], ["c2"], group=2, pads=[1, 1, 1, 1]),
        n("LeakyRelu", ["c2"], ["a2"], alpha=0.1),
        n("Split", ["a2"], ["s1", "s2"], axis=1, split=[4, 4]),
        n("Sigmoid", ["s2"], ["g"]),
        n("Mul", ["s1", "g"], ["gated"]),
        n("Concat", ["gated", "s2"], ["cat"], axis=1),
        n("Slice", ["cat"], ["sl"], starts=[1, 1], ends=[13, 13], axes=[2, 3]),  # 12 -> 11
        n("Conv", ["sl", "W3"], ["c3"]),
        n("Relu", ["c3"], ["a3"]),
        n("ReduceMean", ["a3"], ["gap"], axes=[2, 3], keepdims=1),
        n("Squeeze", ["gap"], ["v"], axes=[2, 3]),
        n("Reshape", ["v", "flat_shape"], ["v2"]),
        n("Gemm", ["v2", "Wfc", "Bfc"], ["logits"], transB=1),
        n("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "opset_sweep",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 4
    onnx.checker.check_model(model, full_check=True)
    return model


def main():
    src = source_model()
    for opset in OPSETS:
        m = src if opset == 9 else version_converter.convert_version(src, opset)
        m.ir_version = max(m.ir_version, 4)
        onnx.checker.check_model(m, full_check=True)
        path = os.path.join(HERE, f"opset_sweep_{opset}.onnx")
        onnx.save(m, path)
        print(path, os.path.getsize(path), sorted({nd.op_type for nd in m.graph.node}))


if __name__ == "__main__":
    main()
