"""Small ONNX models built in the tests (no framework needed)."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def single_io_model(nodes, inits: dict, x_shape, y_shape, opset=17):
    """A float model with one input "x", one output "y" and ``inits`` (name -> array) as initializers."""
    g = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def mlp(batch="N", softmax=True, seed=0, opset=17):
    """x[N,6] -> MatMul+Add -> Relu -> MatMul -> (Softmax). Returns (model, weights)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((6, 8)).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32)
    w2 = rng.standard_normal((8, 3)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["r"]), helper.make_node("MatMul", ["r", "W2"], ["z"])]
    out = "z"
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["p"], axis=-1))
        out = "p"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 6])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, 3])],
                          [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(b1, "b1"),
                           numpy_helper.from_array(w2, "W2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m, (w1, b1, w2)


def mlp_gradient(x, target, weights):
    """Closed-form gradient of logit[target] of mlp() w.r.t. x, per sample."""
    w1, b1, w2 = weights
    mask = (x @ w1 + b1) > 0
    return (w2[:, target].T * mask) @ w1.T


def mlp_logits(x, weights):
    w1, b1, w2 = weights
    return np.maximum(x @ w1 + b1, 0) @ w2


def run_emitted(emit, x):
    """A model whose one input "t" (x's shape, batch symbolic) goes through ``emit(builder, "t")``, run on
    onnxruntime's CPU provider: (the emitted output's value, the emitted op types), or (None, []) when
    ``emit`` returns None."""
    import onnxruntime as ort

    from onnxattr.graph import GraphBuilder

    elem = helper.np_dtype_to_tensor_dtype(x.dtype)
    graph = helper.make_graph([], "g", [helper.make_tensor_value_info("t", elem, ["N", *x.shape[1:]])], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    b = GraphBuilder(model)
    out = emit(b, "t")
    if out is None:
        return None, []
    model.graph.node.extend(b.nodes)
    b.write_initializers(model.graph.initializer)
    model.graph.output.append(helper.make_tensor_value_info(out, elem, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"t": x})[0], [n.op_type for n in b.nodes]


def tree_ensemble():
    """A scikit-learn-style regressor as skl2onnx writes one (ai.onnx.ml TreeEnsembleRegressor, no gradient):
    x [N, 3] -> y [N, 1] = (1 if x0 > 0.5 else -1) + (2 if x1 > 0 else 0); x2 unused."""
    node = helper.make_node(
        "TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1,
        nodes_treeids=[0, 0, 0, 1, 1, 1], nodes_nodeids=[0, 1, 2, 0, 1, 2], nodes_featureids=[0, 0, 0, 1, 1, 1],
        nodes_modes=["BRANCH_GT", "LEAF", "LEAF"] * 2, nodes_values=[0.5, 0, 0, 0.0, 0, 0],
        nodes_truenodeids=[1, 0, 0, 1, 0, 0], nodes_falsenodeids=[2, 0, 0, 2, 0, 0],
        nodes_hitrates=[1.0] * 6, nodes_missing_value_tracks_true=[0] * 6,
        target_treeids=[0, 0, 1, 1], target_nodeids=[1, 2, 1, 2], target_ids=[0] * 4,
        target_weights=[1.0, -1.0, 2.0, 0.0])
    g = helper.make_graph([node], "trees", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    m.ir_version = 8
    return m


def freeze(model, tensor: str, value):
    """``model`` with ``tensor`` replaced by the constant ``value`` and the nodes that only computed it removed (a
    squeeze-excitation's gate frozen at its value for one batch)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output) and tensor not in node.output:
            keep.append(node)
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(reversed(keep))
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), tensor))
    used = {i for n in graph.node for i in n.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return out


def tensor_values(model, tensor: str, feeds: dict):
    """The value of an intermediate ``tensor`` of ``model`` for ``feeds``, by onnxruntime."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    return ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run([tensor], feeds)[0]
