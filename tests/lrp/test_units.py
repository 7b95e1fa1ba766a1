"""Linear units: a BatchNormalization after a Conv is folded into it for the rules (exact fold), the
forward graph stays untouched, and a BatchNormalization with nothing to fold into is a linear layer."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from tests.lrp.nets import resnet_like

X = np.random.default_rng(11).random((3, 2, 8, 8)).astype(np.float32)


def run(model, method=None, **kw):
    m = onnxattr.compile(model, method, **kw) if method else model
    return ort.InferenceSession(m.SerializeToString()).run(None, {"x": X})


def fold_in_numpy(model):
    """The textbook fold W' = W s, b' = (b - mean) s + beta, s = gamma / sqrt(var + eps), done here on
    the arrays, independently of the package."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    bn = next(n for n in m.graph.node if n.op_type == "BatchNormalization")
    conv = next(n for n in m.graph.node if n.output[0] == bn.input[0])
    gamma, beta, mean, var = (inits[i].astype(np.float64) for i in bn.input[1:])
    eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
    s = gamma / np.sqrt(var + eps)
    w = inits[conv.input[1]].astype(np.float64) * s[:, None, None, None]
    b = (0.0 - mean) * s + beta
    new = [numpy_helper.from_array(w.astype(np.float32), "w_folded"),
           numpy_helper.from_array(b.astype(np.float32), "b_folded")]
    m.graph.initializer.extend(new)
    del conv.input[1:]
    conv.input.extend(["w_folded", "b_folded"])
    conv.output[0] = bn.output[0]
    m.graph.node.remove(bn)
    return m


@pytest.mark.parametrize("eps", [None, 0.5])
def test_folded_batchnorm_gives_the_maps_of_the_folded_graph(eps):
    """eps 0.5 next to variances in [0.5, 2] changes the scale by up to 40 %: the fold must use it."""
    model = resnet_like(batchnorm=True)
    if eps is not None:
        bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
        bn.attribute.append(helper.make_attribute("epsilon", eps))
    folded = fold_in_numpy(model)
    np.testing.assert_allclose(run(folded)[0], run(model)[0], rtol=1e-5, atol=1e-5)  # the fold is right
    for method in ("lrp.z", "lrp.epsilon_plus_flat", "lrp.alpha_2_beta_1", "deep_taylor"):
        got, want = run(model, method)[-1], run(folded, method)[-1]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_inspect_reports_the_fold_and_outputs_stay_bit_identical():
    model = resnet_like(batchnorm=True)
    rows = onnxattr.api.inspect(model, "lrp.z")
    bn = next(r for r in rows if r[1] == "BatchNormalization")
    assert bn[2] == "pass" and bn[3].startswith("fused into")
    np.testing.assert_array_equal(run(model, "lrp.z")[0], run(model)[0])


def test_standalone_batchnorm_is_a_linear_layer():
    """x -> BN -> y explained in mode "all": z rule R = x s (y / y), z_IB rule R = y."""
    rng = np.random.default_rng(0)
    gamma, beta = rng.uniform(0.5, 2, 2).astype(np.float32), rng.uniform(0.5, 1, 2).astype(np.float32)
    mean, var = rng.standard_normal(2).astype(np.float32), rng.uniform(0.5, 2, 2).astype(np.float32)
    g = helper.make_graph([helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"])], "bn",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 8, 8])],
                          [numpy_helper.from_array(a, n) for a, n in ((gamma, "g"), (beta, "b"), (mean, "m"),
                                                                       (var, "v"))])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    s = (gamma / np.sqrt(var + 1e-5))[None, :, None, None]
    y, r = run(model, "lrp.z", neuron="all")
    np.testing.assert_allclose(r, X * s, rtol=1e-4, atol=1e-5)
    _, r_ib = run(model, "lrp.z_IB", neuron="all")
    np.testing.assert_allclose(r_ib, y, rtol=1e-4, atol=1e-5)
    assert onnxattr.api.inspect(model, "lrp.z")[0][2:] == ("z", "default")
