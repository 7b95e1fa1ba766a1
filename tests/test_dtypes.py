"""float64 and float16 models: every appended constant, Cast and fill takes the model's float type (a float32
constant in a float64 graph fails onnx.checker), and the map equals the float32 model's map.

Values come from onnx's reference evaluator (onnxruntime has no float64/float16 CPU Conv) for the
small residual net, and from onnxruntime for the sampling methods on an MLP (the reference evaluator's
Loop does not see the body's outer-scope names). Tolerances, relative to the float32 map's largest |value|:
float64 1e-4 (the float32 map itself is the coarser side: 24-bit significand through ~10 layers, with
epsilon = 1e-7 stabilizers); float16 1e-2 (11-bit significand, relative rounding 4.9e-4 per op).
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator

import onnxattr
from onnxattr.methods import REGISTRY
from tests.lrp.nets import resnet_like
from tests.models import mlp

X = np.random.default_rng(11).standard_normal((2, 2, 8, 8))
TYPES = {"float64": (np.float64, TensorProto.DOUBLE), "float16": (np.float16, TensorProto.FLOAT16)}
DETERMINISTIC = sorted(name for name, m in REGISTRY.items()
                       if m.family != "pattern" and name not in ("integrated_gradients", "smoothgrad", "random"))
# float16 tops out at 65504: relevance divided by an epsilon of 1e-7 where z = 0 overflows for rules whose
# relevance is not zero there (flat, w^2 and alpha-beta's inhibitor below a non-x-times rule)
FLOAT16_SAFE = ["deconvnet", "deep_lift", "deep_taylor", "excitation_backprop", "gradient", "guided_backprop",
                "input_t_gradient", "lrp.epsilon", "lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box", "lrp.z",
                "lrp.z_plus"]
# exact Shapley values take at most 20 feature groups (x has 128 features): a group per channel
PARAMS = {"shapley_values": {"feature_mask": np.arange(2).reshape(2, 1, 1)},
          "neuron_conductance": {"layer": "r2", "neuron_index": [0, 1, 1]}}  # resnet_like's middle Relu


def as_type(model, dtype):
    """The model with its float32 initializers, inputs, outputs, Constant values and Cast targets in ``dtype`` (no
    value_info left)."""
    np_type, elem = TYPES[dtype]
    m = onnx.ModelProto.FromString(model.SerializeToString())
    for i, init in enumerate(m.graph.initializer):
        a = numpy_helper.to_array(init)
        if a.dtype == np.float32:
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(a.astype(np_type), init.name))
    for node in m.graph.node:
        for a in node.attribute:
            if a.name == "to" and node.op_type == "Cast" and a.i == TensorProto.FLOAT:
                a.i = elem
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np_type), a.t.name))
    del m.graph.value_info[:]
    for v in list(m.graph.input) + list(m.graph.output):
        if v.type.tensor_type.elem_type == TensorProto.FLOAT:
            v.type.tensor_type.elem_type = elem
    return m


def reference_map(model, method, x):
    compiled = onnxattr.compile(model, method, **PARAMS.get(method, {}))
    out = next(o for o in compiled.graph.output if o.name == "relevance")
    assert out.type.tensor_type.elem_type == TensorProto.FLOAT  # the contract: relevance is float32
    return ReferenceEvaluator(compiled).run(["relevance"], {"x": x})[0]


@pytest.fixture(scope="module")
def float32_maps():
    model = resnet_like(bias=True)
    return {m: reference_map(model, m, X.astype(np.float32)) for m in DETERMINISTIC}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("dtype,methods,tol", [("float64", DETERMINISTIC, 1e-4), ("float16", FLOAT16_SAFE, 1e-2)])
def test_map_equals_the_float32_map(dtype, methods, tol, float32_maps):
    model = as_type(resnet_like(bias=True), dtype)
    for method in methods:
        got = reference_map(model, method, X.astype(TYPES[dtype][0]))
        want = float32_maps[method]
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max(), err_msg=method)


@pytest.mark.parametrize("method", sorted(set(DETERMINISTIC) - set(FLOAT16_SAFE)) + ["random"])
def test_float16_compiles_for_every_method(method):
    """The rest compile to a checked graph (onnxattr.compile runs onnx.checker with strict inference)."""
    compiled = onnxattr.compile(as_type(resnet_like(bias=True), "float16"), method, **PARAMS.get(method, {}))
    types = {o.name: o.type.tensor_type.elem_type for o in compiled.graph.output}
    assert types == {"y": TensorProto.FLOAT16, "relevance": TensorProto.FLOAT}


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-5), ("float16", 1e-2)])
def test_sampling_methods_run_in_onnxruntime(dtype, tol):
    """integrated_gradients, and smoothgrad without noise (the plain gradient), on an MLP in onnxruntime."""
    base = mlp()[0]
    model = as_type(base, dtype)
    x = np.random.default_rng(1).standard_normal((3, 6))
    cases = [("integrated_gradients", {}, "integrated_gradients"), ("smoothgrad", {"noise_scale": 0.0}, "gradient")]
    for method, params, same_as in cases:
        compiled = onnxattr.compile(model, method, **params)
        got = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x.astype(TYPES[dtype][0])})[0]
        ref = onnxattr.compile(base, same_as)
        want = ort.InferenceSession(ref.SerializeToString()).run(["relevance"], {"x": x.astype(np.float32)})[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max(), err_msg=method)


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-5), ("float16", 1e-2)])
@pytest.mark.parametrize("method,params", [("smoothgrad", {"noise_scale": 0.5, "augment_by_n": 4}),
                                           ("random", {})])
def test_noise_is_the_same_in_every_float_type(dtype, tol, method, params):
    """The same seed draws the same float32 noise in a float16/float64 export, so the maps match."""
    base = mlp()[0]
    x = np.random.default_rng(2).standard_normal((3, 6))

    def run(model, x):
        compiled = onnxattr.compile(model, method, seed=5, **params)
        return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]

    got, want = run(as_type(base, dtype), x.astype(TYPES[dtype][0])), run(base, x.astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


def test_bfloat16_is_refused_by_name():
    """bfloat16 cannot be compiled (no bfloat16 ConstantOfShape before opset 20): a clear error, not an
    internal one."""
    from onnx import helper

    from onnxattr.errors import UnsupportedModelError

    model = mlp()[0]
    for i, init in enumerate(model.graph.initializer):
        values = numpy_helper.to_array(init).ravel().tolist()
        model.graph.initializer[i].CopyFrom(helper.make_tensor(init.name, TensorProto.BFLOAT16, init.dims, values))
    for v in list(model.graph.input) + list(model.graph.output):
        v.type.tensor_type.elem_type = TensorProto.BFLOAT16
    with pytest.raises(UnsupportedModelError, match="'x' on the explained path is bfloat16"):
        onnxattr.compile(model, "gradient")


def test_float16_scatters_run_in_onnxruntime():
    """An overlapping MaxPool (Indices + a scatter-add) and a Gather (the class token's [:, 0]) in a float16
    model: onnxruntime's CPU ScatterElements has no float16 kernel with reduction add, so the adds run in
    float32; the map equals the float32 model's."""
    from onnx import helper

    from tests.models import single_io_model

    w = np.random.default_rng(3).standard_normal((3, 2, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["p", "W"], ["c"]),
             helper.make_node("Reshape", ["c", "flat"], ["t"]),
             helper.make_node("Gather", ["t", "first"], ["y"], axis=2)]
    model = single_io_model(nodes, {"W": w, "flat": np.array([0, 3, -1]), "first": np.array(0)},
                            ["N", 2, 8, 8], ["N", 3])
    x = X.astype(np.float32)
    want = ort.InferenceSession(onnxattr.compile(model, "gradient").SerializeToString()).run(["relevance"], {"x": x})[0]
    half = onnxattr.compile(as_type(model, "float16"), "gradient")
    got = ort.InferenceSession(half.SerializeToString()).run(["relevance"], {"x": x.astype(np.float16)})[0]
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, atol=1e-2 * np.abs(want).max())
