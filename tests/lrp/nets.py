"""Small ONNX networks for the LRP tests, built with onnx.helper (no framework)."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from tests.models import freeze, single_io_model, tensor_values

ORACLES = Path(__file__).resolve().parents[1] / "oracles" / "data"


def resnet_like(bias=False, batchnorm=False, seed=0, residual=True, last_pool="AveragePool"):
    """x[N,2,8,8] -> Conv Relu MaxPool -> (Conv Relu Conv) + skip -> Relu -> AveragePool -> Flatten ->
    MatMul Relu -> MatMul -> y[N,4]; bias-free unless ``bias``; a BatchNorm after the first Conv if
    ``batchnorm``; without the skip if not ``residual``; ``last_pool`` is the second pooling op."""
    rng = np.random.default_rng(seed)
    f = np.float32
    inits = {
        "w1": rng.standard_normal((4, 2, 3, 3)).astype(f), "w2": rng.standard_normal((4, 4, 3, 3)).astype(f) * 0.5,
        "w3": rng.standard_normal((4, 4, 3, 3)).astype(f) * 0.5, "d1": rng.standard_normal((16, 6)).astype(f),
        "d2": rng.standard_normal((6, 4)).astype(f), "shape": np.array([0, -1], np.int64),
    }
    c = lambda i, w, o: helper.make_node("Conv", [i, w] + ([w + "b"] if bias else []), [o], pads=[1, 1, 1, 1])  # noqa
    if bias:
        for w in ("w1", "w2", "w3"):
            inits[w + "b"] = rng.standard_normal(4).astype(f) * 0.3
    nodes = [c("x", "w1", "c1")]
    first = "c1"
    if batchnorm:
        inits.update(g=rng.uniform(0.5, 1.5, 4).astype(f), be=rng.standard_normal(4).astype(f) * 0.2,
                     mu=rng.standard_normal(4).astype(f) * 0.2, var=rng.uniform(0.5, 2, 4).astype(f))
        nodes.append(helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn1"]))
        first = "bn1"
    nodes += [
        helper.make_node("Relu", [first], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        c("p1", "w2", "c2"), helper.make_node("Relu", ["c2"], ["r2"]), c("r2", "w3", "c3"),
        helper.make_node("Add", ["c3", "p1"], ["s"]) if residual else helper.make_node("Identity", ["c3"], ["s"]),
        helper.make_node("Relu", ["s"], ["r3"]),
        helper.make_node(last_pool, ["r3"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p2", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "d1"], ["h"]), helper.make_node("Relu", ["h"], ["rh"]),
        helper.make_node("MatMul", ["rh", "d2"], ["y"]),
    ]
    return single_io_model(nodes, inits, ["N", 2, 8, 8], ["N", 4])


def _head(rng, nodes, inits, mid, n_in=5, n_mid=7):
    """x [N, n_in] -> MatMul W1 -> h -> (nodes: h to ``mid``) -> MatMul W2 -> y [N, 3]."""
    inits.update(W1=rng.standard_normal((n_in, n_mid)).astype(np.float32),
                 W2=rng.standard_normal((n_mid, 3)).astype(np.float32))
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1")] + nodes + [
        helper.make_node("MatMul", [mid, "W2"], ["y"], name="fc2")]
    return single_io_model(nodes, inits, ["N", n_in], ["N", 3])


def layernorm_net(form: str, seed=0, zero_beta=False):
    """x -> MatMul -> LayerNorm over 7 features (gamma, beta random; beta 0 with ``zero_beta``) -> MatMul, the norm
    as the op ("op"), as torch's opset < 17 export writes it out ("torch": (h - mean) / sqrt(var + eps) * gamma +
    beta), or in the forms of tf2onnx's Keras LayerNormalization, with s = gamma / sqrt(var + eps) and the mean
    reshaped between: "tf" h s - mean(h) s + beta, "tf_beta" h s + (beta - mean(h) s), "tf_neg" h s + Neg(mean(h)
    s) (beta 0), and "tf_bn", a BatchNormalization of h reshaped to [1, N, 7] with its own statistics (Keras' fused
    form at its default epsilon, for 4 samples: the variance a ReduceSumSquare of the centring over the count), then
    gamma and beta."""
    rng = np.random.default_rng(seed)
    inits = {"gamma": rng.uniform(0.5, 1.5, 7).astype(np.float32), "beta": rng.normal(0, 0.2, 7).astype(np.float32),
             "two": np.array(2, np.float32), "eps": np.array(1e-5, np.float32),
             "shape": np.array([-1, 1], np.int64)}
    if zero_beta or form == "tf_neg":
        inits["beta"][:] = 0
    mk = helper.make_node
    stats = [mk("ReduceMean", ["h"], ["m0"], axes=[-1], name="mean"), mk("Reshape", ["m0", "shape"], ["m"]),
             mk("Sub", ["h", "m"], ["d"], name="centre_var"), mk("Mul", ["d", "d"], ["d2"], name="square"),
             mk("ReduceMean", ["d2"], ["v"], axes=[-1], name="var"), mk("Add", ["v", "eps"], ["ve"]),
             mk("Sqrt", ["ve"], ["sd"], name="std"), mk("Div", ["gamma", "sd"], ["s"], name="scale"),
             mk("Mul", ["h", "s"], ["hs"]), mk("Mul", ["m", "s"], ["ms"])]
    if form == "op":
        nodes = [mk("LayerNormalization", ["h", "gamma", "beta"], ["f"], axis=-1, epsilon=1e-5, name="ln")]
    elif form == "torch":
        nodes = [mk("ReduceMean", ["h"], ["m"], axes=[-1], name="mean"), mk("Sub", ["h", "m"], ["d"], name="centre"),
                 mk("Pow", ["d", "two"], ["d2"], name="square"), mk("ReduceMean", ["d2"], ["v"], axes=[-1], name="var"),
                 mk("Add", ["v", "eps"], ["ve"], name="add_eps"), mk("Sqrt", ["ve"], ["sd"], name="std"),
                 mk("Div", ["d", "sd"], ["n"], name="normalize"), mk("Mul", ["n", "gamma"], ["g"], name="scale"),
                 mk("Add", ["g", "beta"], ["f"], name="shift")]
    elif form == "tf":
        nodes = stats + [mk("Sub", ["hs", "ms"], ["c"], name="centre"), mk("Add", ["c", "beta"], ["f"])]
    elif form == "tf_beta":
        nodes = stats + [mk("Sub", ["beta", "ms"], ["bm"], name="shift"), mk("Add", ["hs", "bm"], ["f"], name="centre")]
    elif form == "tf_neg":
        nodes = stats + [mk("Neg", ["ms"], ["nm"], name="negate"), mk("Add", ["hs", "nm"], ["f"], name="centre")]
    else:
        inits.update(ones=np.ones(4, np.float32), zeros=np.zeros(4, np.float32), to_bn=np.array([1, 4, 7], np.int64),
                     back=np.array([4, 7], np.int64), count=np.array(7, np.float32))
        nodes = [mk("Reshape", ["h", "to_bn"], ["hr"]),
                 mk("ReduceMean", ["hr"], ["mk"], axes=[0, 2], name="mean"),
                 mk("Sub", ["hr", "mk"], ["d"], name="centre_var"),
                 mk("ReduceSumSquare", ["d"], ["ss"], axes=[0, 2], keepdims=0, name="square_sum"),
                 mk("Squeeze", ["mk", "axes02"], ["m"]), mk("Div", ["ss", "count"], ["v"], name="var"),
                 mk("BatchNormalization", ["hr", "ones", "zeros", "m", "v"], ["nr"], epsilon=1e-5, name="bn"),
                 mk("Reshape", ["nr", "back"], ["n"]), mk("Mul", ["n", "gamma"], ["g"], name="gamma"),
                 mk("Add", ["g", "beta"], ["f"])]
        inits["axes02"] = np.array([0, 2], np.int64)
    return _head(rng, nodes, inits, "f")


def gated_net(gate_first: bool, seed=0):
    """x -> MatMul -> h -> Relu -> a; a squeeze-excitation-like gate g = Sigmoid(mean(a) W3 + b3) (mean over the
    features, as a global pool); Mul(g, a) (``gate_first``, torchvision's order) or Mul(a, g) -> MatMul."""
    rng = np.random.default_rng(seed)
    inits = {"W3": rng.standard_normal((1, 7)).astype(np.float32), "b3": rng.normal(0, 0.5, 7).astype(np.float32)}
    mk = helper.make_node
    nodes = [mk("Relu", ["h"], ["a"]), mk("ReduceMean", ["a"], ["p"], axes=[-1], name="pool"),
             mk("MatMul", ["p", "W3"], ["q"], name="fc3"), mk("Add", ["q", "b3"], ["qb"]), mk("Sigmoid", ["qb"], ["g"]),
             mk("Mul", ["g", "a"] if gate_first else ["a", "g"], ["f"], name="gate")]
    return _head(rng, nodes, inits, "f")


def swish_net(x_first: bool, seed=0):
    """x -> MatMul -> h -> h * Sigmoid(h) (SiLU as torch exports it; ``x_first``: Mul(h, s), else Mul(s, h))
    -> MatMul."""
    rng = np.random.default_rng(seed)
    mk = helper.make_node
    nodes = [mk("Sigmoid", ["h"], ["s"]), mk("Mul", ["h", "s"] if x_first else ["s", "h"], ["f"], name="silu")]
    return _head(rng, nodes, {}, "f")


# exports of a squeeze-excitation block among the oracles: (their data, the gate's tensor, the input's name, the
# signal's operand in the SE Mul); tf2onnx's gate is [unk__0, 1, 1, C] over [N, H, W, C]
SE_EXPORTS = {
    "torch_gated.onnx": ("torch_gated", "/sigmoid/Sigmoid_output_0", "input", 1),
    "torch_gated_xfirst.onnx": ("torch_gated", "/sigmoid/Sigmoid_output_0", "input", 0),
    "keras_se.onnx": ("keras_se", "keras_se/se_reshape/Reshape:0", "x", 1),
    "keras_se_xfirst.onnx": ("keras_se", "keras_se/se_reshape/Reshape:0", "x", 0),
}


def se_export(export: str):
    """(model, the model with its SE gate frozen at its value for x, x, the input's name, the signal's operand, the
    SE Mul's name) for one of SE_EXPORTS."""
    data, gate, name, signal = SE_EXPORTS[export]
    model = onnx.load(ORACLES / export)
    x = np.load(ORACLES / f"{data}.npz")["x"]
    frozen = freeze(model, gate, tensor_values(model, gate, {name: x}))
    se_mul = next(n.name for n in model.graph.node if n.op_type == "Mul" and gate in n.input)
    return model, frozen, x, name, signal, se_mul


def relu_quantized(model, x, steps=255, absorb=False, moved=False):
    """``model`` with every Relu's output fake-quantized (uint8 QuantizeLinear -> DequantizeLinear, zero point 0,
    the scale putting the largest value on x at code ``steps``: below 255, nothing saturates); ``absorb``: the Relu
    left out, as onnxruntime's quantizer leaves it out (codes from zero point 0 clip the negative values);
    ``moved``: the codes flattened and shaped back between the two (as a QOperator model moves codes)."""
    relus = [n.output[0] for n in model.graph.node if n.op_type == "Relu"]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend([helper.make_tensor_value_info(r, TensorProto.FLOAT, None) for r in relus])
    values = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(relus, {"x": x})
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for r, v in zip(relus, values):
        for node in graph.node:
            for k, i in enumerate(node.input):
                if i == r:
                    node.input[k] = r + "_dq"
        graph.initializer.extend([helper.make_tensor(r + "_s", TensorProto.FLOAT, [], [float(v.max()) / steps]),
                                  helper.make_tensor(r + "_z", TensorProto.UINT8, [], [0])])
        source = r
        if absorb:
            relu = next(n for n in graph.node if n.op_type == "Relu" and n.output[0] == r)
            source = relu.input[0]
            graph.node.remove(relu)
        codes = r + "_q"
        graph.node.append(helper.make_node("QuantizeLinear", [source, r + "_s", r + "_z"], [codes], name=codes))
        if moved:
            graph.initializer.append(helper.make_tensor(r + "_shape", TensorProto.INT64, [v.ndim], v.shape))
            graph.node.extend([helper.make_node("Flatten", [codes], [r + "_flat"], name=r + "_flat"),
                               helper.make_node("Reshape", [r + "_flat", r + "_shape"], [r + "_back"],
                                            name=r + "_back")])
            codes = r + "_back"
        graph.node.append(helper.make_node("DequantizeLinear", [codes, r + "_s", r + "_z"], [r + "_dq"],
                                           name=r + "_dq"))
    order, ready, pending = [], {"x"} | {t.name for t in graph.initializer}, list(graph.node)  # topological order
    while pending:
        for n in pending:
            if all(i in ready for i in n.input if i):
                order.append(n)
                ready.update(n.output)
                pending.remove(n)
                break
    del graph.node[:]
    graph.node.extend(order)
    return out
