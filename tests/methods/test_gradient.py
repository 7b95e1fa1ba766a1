"""onnxattr/methods/gradient.py: parameters at their edges."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import onnxattr
from tests.models import mlp

X = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)


def relevance(method, **params):
    compiled = onnxattr.compile(mlp()[0], method, **params)
    return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": X})[0]


def test_smoothgrad_without_noise_is_the_gradient():
    """noise_scale = 0 is allowed; onnxruntime's RandomNormalLike aborts the process at scale 0, so no
    noise node may be emitted: every sample is x itself and the mean is the gradient."""
    np.testing.assert_allclose(relevance("smoothgrad", noise_scale=0.0, augment_by_n=5), relevance("gradient"),
                               rtol=1e-6, atol=1e-7)


def test_random_with_zero_stddev_is_zero():
    got = relevance("random", stddev=0.0)
    assert got.shape == X.shape and not got.any()


@pytest.mark.parametrize("scale", [0.25, 3.0])
def test_noise_has_the_asked_standard_deviation(scale):
    """y = x * x explained in mode "all": one SmoothGrad sample's map is 2 (x + n), so n = map / 2 - x; and
    `random` returns its noise itself. 40,000 draws estimate the standard deviation within 1 % (its
    standard error is 0.35 %); the mean is within 4 standard errors of 0."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["y"])], "square",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 20000])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 20000])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).standard_normal((2, 20000)).astype(np.float32)

    def run(method, **params):
        compiled = onnxattr.compile(model, method, neuron="all", **params)
        return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]

    for noise in (run("smoothgrad", noise_scale=scale, augment_by_n=1) / 2 - x, run("random", stddev=scale)):
        assert abs(noise.std() / scale - 1) < 0.01, noise.std()
        assert abs(noise.mean()) < 4 * scale / np.sqrt(noise.size)


@pytest.mark.parametrize("method", ["smoothgrad", "random"])
def test_noise_on_a_model_whose_opset_onnxruntime_has_no_random_kernel_for(method):
    """onnxruntime 1.32 cannot load RandomNormalLike in a model of opset >= 22: such a model is converted
    down to opset 21 first (onnx.version_converter), and its outputs stay bit-identical."""
    import onnx

    from onnxattr.methods.draws import onnxruntime_has_random

    path = Path(__file__).resolve().parents[1] / "thirdparty" / "data" / "opset_sweep_28.onnx"
    compiled = onnxattr.compile(str(path), method)
    opset = next(o.version for o in compiled.opset_import if o.domain in ("", "ai.onnx"))
    assert opset == (28 if onnxruntime_has_random(28) else 21)
    sess = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    arg = sess.get_inputs()[0]
    x = np.random.default_rng(0).random([d if isinstance(d, int) else 2 for d in arg.shape]).astype(np.float32)
    *outputs, relevance = sess.run(None, {arg.name: x})
    original = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {arg.name: x})
    assert all(np.array_equal(a, b) for a, b in zip(original, outputs)) and np.isfinite(relevance).all()
    assert onnx.load(str(path)).opset_import[0].version == 28  # the input file is untouched


def test_noise_on_a_model_that_cannot_be_converted_down_names_why():
    """TensorScatter (opset 24) has no earlier version and no ONNX function body to expand
    (expand.expand_newer_ops): no conversion, and the error says why."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxattr.methods.draws import onnxruntime_has_random

    if onnxruntime_has_random(24):
        pytest.skip("this onnxruntime runs the random ops at opset 24: nothing to convert")
    nodes = [helper.make_node("Relu", ["x"], ["c"]), helper.make_node("TensorScatter", ["c", "u"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8])],
                          [numpy_helper.from_array(np.ones((1, 1, 8), np.float32), "u")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 24)], ir_version=11)
    with pytest.raises(onnxattr.errors.UnsupportedModelError, match="RandomNormalLike.*opset 24.*TensorScatter"):
        onnxattr.compile(model, "smoothgrad")


def test_every_seed_is_its_own_stream():
    """onnxruntime reads the seed as a float32 and its generator makes 0 and 1 one stream: seeds are
    passed as 1 + (k mod (2^24 - 1)), so 0, 1, 2 and -1 differ, and k and k + 2^24 - 1 agree."""
    maps = {k: relevance("random", seed=k) for k in (0, 1, 2, -1, 2**24 - 1)}
    for a, b in ((0, 1), (1, 2), (0, 2), (-1, 0), (-1, 1)):
        assert not np.array_equal(maps[a], maps[b]), (a, b)
    np.testing.assert_array_equal(maps[0], maps[2**24 - 1])


def test_zbox_bounds_as_arrays():
    """low/high as arrays of the input's shape give the map of the same scalar bounds."""
    def run(**params):
        c = onnxattr.compile(mlp()[0], "deep_taylor.bounded", **params)
        return ort.InferenceSession(c.SerializeToString()).run(["relevance"], {"x": X})[0]

    np.testing.assert_array_equal(run(low=np.full((1, 6), -2.0), high=np.full(6, 3.0)), run(low=-2.0, high=3.0))


@pytest.mark.parametrize("chunk", [1, 3, 16])
@pytest.mark.parametrize("integration,factor", [
    ("riemann_left", 21 / 32), ("riemann_right", 45 / 32), ("riemann_middle", 63 / 64),
    ("riemann_trapezoid", 1 + 1 / 18), ("gausslegendre", 1.0)])
def test_integration_rules_against_their_closed_forms(integration, factor, chunk):
    """y = x^3 element-wise, mode "all", reference 0: IG = x * sum_k w_k 3 (a_k x)^2 = x^3 * sum_k w_k 3 a_k^2,
    with 4 steps: left (n-1)(2n-1)/(2n^2) = 21/32, right (n+1)(2n+1)/(2n^2) = 45/32, middle 1 - 1/(4n^2),
    trapezoid 1 + 1/(2(n-1)^2) (its error term h^2/12 (f'(1) - f'(0))), Gauss-Legendre exactly 1 (exact to
    degree 2n - 1). Chunks of 1, 3 (a partial last trip) and 16 samples."""
    from onnx import TensorProto, helper

    cube = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Mul", ["sq", "x"], ["y"])]
    g = helper.make_graph(cube, "cube", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(1).uniform(-2, 2, (3, 5)).astype(np.float32)
    compiled = onnxattr.compile(model, "integrated_gradients", neuron="all", steps=4, integration=integration,
                                chunk_size=chunk)
    got = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]
    np.testing.assert_allclose(got, x.astype(np.float64) ** 3 * factor, rtol=2e-6, atol=1e-6)


def _cube(elem, batch="N"):
    from onnx import TensorProto, helper

    cube = [helper.make_node("Mul", ["x", "x"], ["sq"]), helper.make_node("Mul", ["sq", "x"], ["y"])]
    g = helper.make_graph(cube, "cube", [helper.make_tensor_value_info("x", elem, [batch, 5])],
                          [helper.make_tensor_value_info("y", elem, [batch, 5])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_weighted_rules_index_their_tables_exactly_in_float16_and_take_a_batch_of_0():
    """The point and weight tables are indexed by the int64 step (a float16 step rounds above 2048: step
    4095 read past the table); a batch of 0 run directly in onnxruntime gives an empty map."""
    from onnx import TensorProto

    x = np.random.default_rng(2).uniform(0.5, 1.5, (2, 5))
    compiled = onnxattr.compile(_cube(TensorProto.FLOAT16), "integrated_gradients", neuron="all", steps=4100,
                                integration="riemann_trapezoid", chunk_size=512)
    got = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x.astype(np.float16)})[0]
    np.testing.assert_allclose(got, x ** 3, rtol=3e-2)
    compiled = onnxattr.compile(_cube(TensorProto.FLOAT), "integrated_gradients", neuron="all", steps=8,
                                integration="gausslegendre", chunk_size=3)
    empty = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": np.zeros((0, 5), np.float32)})
    assert empty[0].shape == (0, 5)


def test_float16_riemann_points_are_computed_in_float32():
    """k / steps with k counted in float16 repeats points above step 2048 (8192 steps gave 4097 distinct):
    the Loop body divides in float32 and casts the points to float16."""
    from onnx import TensorProto

    compiled = onnxattr.compile(_cube(TensorProto.FLOAT16), "integrated_gradients", neuron="all", steps=8192)
    loop = next(n for n in compiled.graph.node if n.op_type == "Loop")
    body = next(a.g for a in loop.attribute if a.name == "body")
    casts = {n.output[0]: n for n in body.node if n.op_type == "Cast"}
    div = next(n for n in body.node if n.op_type == "Div")
    k = casts[div.input[0]]
    assert next(a.i for a in k.attribute if a.name == "to") == TensorProto.FLOAT
    to = {name: next(a.i for a in n.attribute if a.name == "to") for name, n in casts.items()}
    assert any(n.input[0] == div.output[0] and to[name] == TensorProto.FLOAT16 for name, n in casts.items())


def test_trapezoid_needs_two_steps_and_unknown_rules_are_named():
    with pytest.raises(onnxattr.errors.UsageError, match="steps >= 2"):
        onnxattr.compile(mlp()[0], "integrated_gradients", steps=1, integration="riemann_trapezoid")
    with pytest.raises(onnxattr.errors.UsageError, match="gausslegendre"):
        onnxattr.compile(mlp()[0], "integrated_gradients", integration="simpson")
    with pytest.raises(onnxattr.errors.UsageError, match="at most 2048 steps"):  # leggauss is n x n
        onnxattr.compile(mlp()[0], "integrated_gradients", integration="gausslegendre", steps=100000)


def test_beta_smooth_is_the_gradient_with_sigmoid_for_the_relu_derivative():
    """On the MLP the map is (w2[:, t] * sigmoid(beta (x W1 + b1))) W1^T, closed form (Zennit's ReLUBetaSmooth);
    a large beta gives the gradient back."""
    from tests.models import mlp_logits

    model, weights = mlp(softmax=False)
    w1, b1, w2 = weights

    def run(method, **params):
        compiled = onnxattr.compile(model, method, **params)
        return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": X})[0]

    target = mlp_logits(X, weights).argmax(1)
    for beta in (0.5, 10.0):
        want = (w2[:, target].T / (1 + np.exp(-beta * (X @ w1 + b1)))) @ w1.T
        np.testing.assert_allclose(run("beta_smooth", beta_smooth=beta), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(run("beta_smooth", beta_smooth=1e6), run("gradient"), rtol=1e-6, atol=1e-7)
    assert np.abs(run("beta_smooth") - run("gradient")).max() > 1e-2  # beta 10 is not the gradient here


@pytest.mark.parametrize("base", ["gradient", "input_t_gradient", "guided_backprop", "deconvnet"])
def test_noise_tunnel_without_noise_is_its_base(base):
    """noise_scale 0: every copy is x, so smoothgrad is the base method's map, smoothgrad_sq its square and
    vargrad 0."""
    want = relevance(base)
    common = dict(noise_scale=0.0, augment_by_n=3, base=base)
    np.testing.assert_allclose(relevance("smoothgrad", **common), want, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(relevance("smoothgrad", nt_type="smoothgrad_sq", **common), want ** 2,
                               rtol=1e-5, atol=1e-7)
    assert np.abs(relevance("vargrad", **common)).max() < 1e-6 * np.abs(want).max() ** 2
    assert np.abs(want).max() > 0


def _square_model(width):
    """y = x * x, [N, width]: each copy's gradient in mode "all" is 2 (x + noise)."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["y"])], "square",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", width])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run_all(model, x, method, **params):
    compiled = onnxattr.compile(model, method, neuron="all", **params)
    return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]


def test_vargrad_is_the_mean_square_minus_the_squared_mean():
    """With one seed the three aggregates see the same copies: vargrad = smoothgrad_sq - smoothgrad^2 (to
    float32 rounding of the two maps it is computed from here); on y = x * x it estimates 4 noise_scale^2."""
    model = _square_model(2000)
    x = np.random.default_rng(0).standard_normal((2, 2000)).astype(np.float32)
    kw = dict(augment_by_n=50, noise_scale=0.5, seed=4, chunk_size=16)
    mean = _run_all(model, x, "smoothgrad", **kw).astype(np.float64)
    mean_sq = _run_all(model, x, "smoothgrad", nt_type="smoothgrad_sq", **kw).astype(np.float64)
    var = _run_all(model, x, "vargrad", **kw)
    np.testing.assert_allclose(var, mean_sq - mean ** 2, rtol=0, atol=4e-7 * mean_sq.max())
    assert (var >= 0).all() and abs(var.mean() / (4 * 0.25) - 1) < 0.03  # std error of the mean 0.4 %
    np.testing.assert_array_equal(var, _run_all(model, x, "smoothgrad", nt_type="vargrad", **kw))


def test_vargrad_keeps_a_variance_far_below_the_mean_square():
    """x = 1000, noise_scale 1e-3: the copies' gradients are 2000 +- 0.002, their variance 4e-6 is 1e-12 of
    the mean square. Summed in float32 (Captum's way, mean(a^2) - mean(a)^2) the difference is rounding noise
    of about 0.25 either side; summed in float64 it is the variance, within its sampling error (0.2 % here)."""
    model = _square_model(2000)
    x = np.full((1, 2000), 1000, np.float32)
    kw = dict(augment_by_n=400, noise_scale=1e-3, seed=1)
    var = _run_all(model, x, "vargrad", **kw)
    assert abs(var.mean() / 4e-6 - 1) < 0.02, var.mean()
    in_float32 = _run_all(model, x, "smoothgrad", nt_type="smoothgrad_sq", **kw) \
        - _run_all(model, x, "smoothgrad", **kw) ** 2
    assert np.abs(in_float32).max() > 1e3 * 4e-6  # what the float64 sums avoid


def test_gradient_baseline_is_innvestigates_name_for_the_gradient():
    """iNNvestigate registers its framework-gradient check as 'gradient.baseline'; a script that asks for it
    gets the gradient, and the model records the name it was asked for."""
    compiled = onnxattr.compile(mlp()[0], "gradient.baseline", postprocess="abs")
    assert {p.key: p.value for p in compiled.metadata_props}["onnxattr.method"] == "gradient.baseline"
    got = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": X})[0]
    np.testing.assert_array_equal(got, relevance("gradient", postprocess="abs"))


def _scaled(dtype, c, square=False, width=400):
    """y = c x (or c x^2) with x and c of ``dtype``."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Mul", ["x", "x"], ["t"]), helper.make_node("Mul", ["t", "c"], ["y"])] if square \
        else [helper.make_node("Mul", ["x", "c"], ["y"])]
    g = helper.make_graph(nodes, "scaled", [helper.make_tensor_value_info("x", dtype, ["N", width])],
                          [helper.make_tensor_value_info("y", dtype, ["N", width])],
                          [helper.make_tensor("c", dtype, [], [c])])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_float16_squares_and_small_variances_keep_their_range():
    """float16 holds 6e-8 to 65504: squares of a gradient of 300, and VarGrad's variances of 1e-7, fall
    outside it. They are squared and summed in float64 and returned in float32 (the relevance output's type),
    so the float16 model's maps equal the float32 model's (they had inf, and a variance in 3 float16 steps)."""
    from onnx import TensorProto

    def maps(method, c, square, **params):
        out = []
        for dtype, np_type in ((TensorProto.FLOAT, np.float32), (TensorProto.FLOAT16, np.float16)):
            x = np.full((1, 400), 0.5, np_type)
            compiled = onnxattr.compile(_scaled(dtype, c, square), method, neuron="all", **params)
            out.append(ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0])
        return out

    for params in ({"nt_type": "smoothgrad_sq"}, {"postprocess": "square"}):
        f32, f16 = maps("smoothgrad", 300.0, False, augment_by_n=4, **params)
        np.testing.assert_array_equal(f32, np.full_like(f32, 90000.0))
        np.testing.assert_array_equal(f16, f32)
    f32, f16 = maps("vargrad", 0.003, True, augment_by_n=64, noise_scale=0.05, seed=2)
    assert len(np.unique(f16)) > 300 and np.abs(f32.mean() / 9e-8 - 1) < 0.05
    assert np.median(np.abs(f16 - f32) / f32) < 2e-3


def test_float16_beta_smooth_takes_any_beta():
    """beta 1e5 is inf in float16, and inf * 0 is NaN at a Relu input of 0: the slope is computed in
    float32 for 16-bit models, giving 0.5 there like the float32 model."""
    from onnx import TensorProto, helper

    out = []
    for dtype, np_type in ((TensorProto.FLOAT, np.float32), (TensorProto.FLOAT16, np.float16)):
        g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", dtype, ["N", 4])],
                              [helper.make_tensor_value_info("y", dtype, ["N", 4])])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        compiled = onnxattr.compile(model, "beta_smooth", neuron="all", beta_smooth=1e5)
        x = np.array([[0.0, 1.0, -1.0, 1e-3]], np_type)
        out.append(ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0])
    np.testing.assert_array_equal(out[0], [[0.5, 1.0, 0.0, 1.0]])
    np.testing.assert_array_equal(out[1], out[0])


@pytest.mark.parametrize("method,params,rule", [
    ("beta_smooth", {}, "beta_smooth(10)"), ("beta_smooth", {"beta_smooth": 2.5}, "beta_smooth(2.5)"),
    ("guided_backprop", {}, "guided_backprop"), ("deconvnet", {}, "deconvnet"),
    ("vargrad", {"base": "guided_backprop"}, "guided_backprop"), ("smoothgrad", {"base": "deconvnet"}, "deconvnet"),
    ("smoothgrad", {}, "gradient"),
])
def test_inspect_names_the_relu_rule(method, params, rule):
    rows = onnxattr.api.inspect(mlp()[0], method, **params)
    assert [r[2] for r in rows if r[1] == "Relu"] == [rule]
    assert {r[2] for r in rows if r[1] != "Relu"} == {"gradient"}


def _capped_relu_model(low, high=6.0, activation="Clip"):
    """x [N, 5] -> MatMul W1 -> Clip(low, high) (a ReLU6 at low 0) or another activation -> MatMul W2 -> y [N, 1]."""
    from onnx import helper

    from tests.models import single_io_model

    rng = np.random.default_rng(7)
    w1 = (3 * rng.standard_normal((5, 12))).astype(np.float32)
    w2 = rng.standard_normal((12, 1)).astype(np.float32)
    inits = {"w1": w1, "w2": w2, "lo": np.float32(low), "hi": np.float32(high)}
    act = (helper.make_node("Clip", ["h", "lo", "hi"], ["a"], name="capped") if activation == "Clip"
           else helper.make_node(activation, ["h"], ["a"], name="capped"))
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), act, helper.make_node("MatMul", ["a", "w2"], ["y"])]
    return single_io_model(nodes, inits, ["N", 5], ["N", 1]), w1, w2


def test_a_relu6_is_a_rectifier_for_guided_backprop_and_deconvnet():
    """A Clip from 0 (torch's ReLU6, Keras' ReLU(max_value=6): MobileNets) rectifies: deconvnet passes
    relu(R) and guided backprop relu(R) [0 < h <= 6] (the Clip's own mask at 6), in closed form, also as the
    base of a noise tunnel (its Loop body's copy of the Clip). Before, only Relu nodes counted, and both
    maps were the plain gradient g [0 <= h <= 6]."""
    model, w1, w2 = _capped_relu_model(0.0)
    x = np.random.default_rng(8).standard_normal((6, 5)).astype(np.float32)
    h = x @ w1
    assert (h < 0).any() and (h > 6).any() and ((h > 0) & (h <= 6)).any()
    g = np.broadcast_to(w2[:, 0], h.shape)
    want = {"gradient": (g * ((h >= 0) & (h <= 6))) @ w1.T,
            "deconvnet": np.maximum(g, 0) @ w1.T,
            "guided_backprop": (np.maximum(g, 0) * ((h > 0) & (h <= 6))) @ w1.T}
    for method, expected in want.items():
        np.testing.assert_allclose(_run_all(model, x, method), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(want["guided_backprop"] - want["gradient"]).max() > 1e-2
    np.testing.assert_allclose(_run_all(model, x, "smoothgrad", noise_scale=0.0, augment_by_n=2,
                                        base="guided_backprop"), want["guided_backprop"], rtol=1e-5, atol=1e-5)
    rows = onnxattr.api.inspect(model, "guided_backprop")
    assert [r[2] for r in rows if r[1] == "Clip"] == ["guided_backprop"]


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_no_rectifier_on_the_path_warns_that_the_map_is_the_gradient(method):
    """A Clip from -1 (a hardtanh) and a swish-like Sigmoid are no rectifiers: the map is the gradient, and
    a warning says so and names the activations; a model with a Relu gets no warning."""
    from onnxattr.errors import OnnxAttrWarning

    x = np.random.default_rng(9).standard_normal((4, 5)).astype(np.float32)
    for model, name in ((_capped_relu_model(-1.0, 1.0)[0], "Clip"), (_capped_relu_model(0, activation="Sigmoid")[0],
                                                                      "Sigmoid")):
        with pytest.warns(OnnxAttrWarning, match=f"no rectifier .* activations: {name}.*plain gradient"):
            got = _run_all(model, x, method)
        np.testing.assert_array_equal(got, _run_all(model, x, "gradient"))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", OnnxAttrWarning)
        relevance(method)


def test_a_map_not_finite_at_the_reference_names_the_integration_that_leaves_it_out():
    """y = (x / |x|) w has no finite gradient at x = 0: integrated gradients from the zero reference with a rule that
    takes alpha = 0 (riemann_left, the default) is NaN, and the warning says so and what leaves that point out; the
    midpoints are finite. The gradient's NaN keeps the general hint."""
    import warnings

    from onnx import TensorProto, helper, numpy_helper

    from onnxattr.api import NonFiniteRelevanceWarning

    w = np.array([[1.0], [2.0], [-1.0]], np.float32)
    nodes = [helper.make_node("ReduceL2", ["x", "axis"], ["n"], keepdims=1), helper.make_node("Div", ["x", "n"], ["u"]),
             helper.make_node("MatMul", ["u", "w"], ["y"])]
    g = helper.make_graph(nodes, "unit", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1], np.int64), "axis")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    x = np.array([[1.0, -2.0, 0.5]], np.float32)
    for method, params in (("integrated_gradients", {}), ("conductance", {"integration": "riemann_trapezoid"})):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            r = onnxattr.create_analyzer(method, model, steps=8, **params).analyze(x)
        assert not np.isfinite(r).all()
        (warning,) = [s for s in seen if s.category is NonFiniteRelevanceWarning]
        assert "alpha = 0" in str(warning.message) and "riemann_middle or gausslegendre" in str(warning.message)
        assert "LRP" not in str(warning.message)
    ok = onnxattr.create_analyzer("integrated_gradients", model, steps=8, integration="riemann_middle").analyze(x)
    # y is scale-free, so the gradient at alpha x is grad(x) / alpha: IG = x grad(x) sum_k w_k / alpha_k
    grad = onnxattr.create_analyzer("gradient", model).analyze(x)
    np.testing.assert_allclose(ok, x * grad * sum(1 / (k + 0.5) for k in range(8)), rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        onnxattr.create_analyzer("gradient", model).analyze(np.zeros_like(x))
    (warning,) = [s for s in seen if s.category is NonFiniteRelevanceWarning]
    assert "alpha = 0" not in str(warning.message) and "LRP" in str(warning.message)


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_a_quantizer_from_zero_point_0_is_a_rectifier(method):
    """onnxruntime's quantizer writes a layer's ReLU into the QuantizeLinear after it (uint8 codes from zero point 0
    clip the negative values), leaving no Relu: such a quantizer is a rectifier, and the map stays the float net's
    (correlation 0.9999 with 8-bit activations), with no warning. Before, the path had no rectifier, and the map was
    the plain gradient with a warning."""
    import warnings

    from tests.lrp.nets import relu_quantized, resnet_like

    x = np.random.default_rng(3).random((3, 2, 8, 8)).astype(np.float32)
    model = resnet_like()
    absorbed = relu_quantized(model, x, absorb=True)
    assert "Relu" not in {n.op_type for n in absorbed.graph.node}
    plain = onnxattr.create_analyzer(method, model).analyze(x).ravel()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = onnxattr.create_analyzer(method, absorbed).analyze(x).ravel()
    gradient = onnxattr.create_analyzer("gradient", absorbed).analyze(x).ravel()
    assert np.corrcoef(plain, ours)[0, 1] > 0.999
    assert np.corrcoef(plain, gradient)[0, 1] < 0.9  # the test can tell the rule from the plain gradient
