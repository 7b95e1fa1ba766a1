"""conductance (onnxattr/methods/conductance.py) against a numpy computation of its sum, and its identities."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import onnxattr
from onnxattr.errors import DataError, UsageError
from onnxattr.methods.gradient import INTEGRATION, ig_quadrature
from tests.models import mlp, single_io_model

RNG = np.random.default_rng(7)
W1, B1 = RNG.standard_normal((5, 7)), RNG.standard_normal(7)
W2, B2 = RNG.standard_normal((7, 4)), RNG.standard_normal(4)


def tanh_mlp():
    """x[N,5] -> MatMul+Add (z) -> Tanh (h) -> MatMul+Add (y[N,4]): smooth, so every rule's sum is distinct."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("Add", ["a", "B1"], ["z"]),
             helper.make_node("Tanh", ["z"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["o"]),
             helper.make_node("Add", ["o", "B2"], ["y"])]
    inits = {k: v.astype(np.float32) for k, v in (("W1", W1), ("B1", B1), ("W2", W2), ("B2", B2))}
    return single_io_model(nodes, inits, ["N", 5], ["N", 4])


def forward(x):
    """float64: (z, h, y) of tanh_mlp."""
    z = x @ W1 + B1
    h = np.tanh(z)
    return z, h, h @ W2 + B2


def numpy_conductance(x, ref, seed, rule, steps):
    """sum_{k < steps} g_k (t(x_{k+1}) - t(x_k)) at x, z and h, from the (steps+1)-point rule's alphas."""
    alphas, _ = ig_quadrature(rule, steps + 1)
    out = {name: 0.0 for name in ("x", "z", "h")}
    for a0, a1 in zip(alphas[:-1], alphas[1:]):
        p0, p1 = ref + a0 * (x - ref), ref + a1 * (x - ref)
        (z0, h0, _), (z1, h1, _) = forward(p0), forward(p1)
        g_h = seed @ W2.T
        g_z = g_h * (1 - h0 ** 2)
        g_x = g_z @ W1.T
        out["x"] = out["x"] + g_x * (p1 - p0)
        out["z"] = out["z"] + g_z * (z1 - z0)
        out["h"] = out["h"] + g_h * (h1 - h0)
    return out


def run(model, x, method="conductance", neuron="max", target=None, keep=("z", "h"), **params):
    compiled = onnxattr.compile(model, method, neuron=neuron, keep=list(keep), **params)
    sess = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {"x": x} if target is None else {"x": x, "target": target}
    names = ["relevance"] + [f"relevance:{k}" for k in keep]
    return dict(zip(["x", *keep], sess.run(names, feed)))


@pytest.mark.parametrize("rule", INTEGRATION)
@pytest.mark.parametrize("chunk", [1, 3, 64])
@pytest.mark.parametrize("neuron", ["max", "index", "all"])
def test_conductance_at_the_input_and_hidden_tensors_equals_numpy(rule, chunk, neuron):
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    ref = np.float32(0.25)
    target = np.array([2, 0, 3], np.int64) if neuron == "index" else None
    got = run(tanh_mlp(), x, neuron=neuron, target=target, steps=10, integration=rule, chunk_size=chunk,
              reference_inputs=float(ref))
    y = forward(x.astype(np.float64))[2]
    picked = {"max": y.argmax(1), "index": target}.get(neuron)
    seed = np.ones_like(y) if picked is None else np.eye(4)[picked]
    want = numpy_conductance(x.astype(np.float64), float(ref), seed, rule, 10)
    for name in ("x", "z", "h"):
        # float32 points and gradients summed over 10 intervals: ~1e-6 of the largest value
        scale = np.abs(want[name]).max()
        assert np.abs(got[name] - want[name]).max() <= 2e-6 * scale, (name, rule, chunk, neuron)


def test_trapezoid_input_map_is_the_left_riemann_integrated_gradients():
    """With a_k = k / n the input's differences are (x - ref) / n: the left Riemann sum of integrated gradients."""
    model, _ = mlp()
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    conductance = run(model, x, keep=(), steps=16, integration="riemann_trapezoid")["x"]
    ig = run(model, x, method="integrated_gradients", keep=(), steps=16)["x"]
    assert np.abs(conductance - ig).max() <= 1e-6 * np.abs(ig).max()
    assert np.abs(ig).max() > 0


def test_at_the_explained_logits_it_is_their_change_from_the_reference():
    """The differences telescope (riemann_trapezoid): the selected logit's row sums to z(x) - z(ref)."""
    model, weights = mlp()
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    got = run(model, x, keep=("z",), steps=7, integration="riemann_trapezoid", reference_inputs=0.5)["z"]
    w1, b1, w2 = (w.astype(np.float64) for w in weights)
    logits = lambda v: np.maximum(v @ w1 + b1, 0) @ w2  # noqa: E731
    top = logits(x.astype(np.float64)).argmax(1)
    change = logits(x.astype(np.float64)) - logits(np.full_like(x, 0.5, np.float64))
    want = np.zeros_like(change)
    want[np.arange(4), top] = change[np.arange(4), top]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_a_sample_gets_the_same_maps_in_any_batch_and_with_its_own_reference():
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    refs = RNG.standard_normal((4, 5)).astype(np.float32)
    batch = run(tanh_mlp(), x, steps=5, chunk_size=4, reference_inputs=refs)
    alone = run(tanh_mlp(), x[2:3], steps=5, chunk_size=4, reference_inputs=refs[2:3])
    for name in ("x", "z", "h"):
        assert np.abs(batch[name][2:3] - alone[name]).max() <= 1e-6 * np.abs(alone[name]).max()


def test_gauss_legendre_point_count_and_other_loop_methods_keep_refusal():
    with pytest.raises(UsageError, match="at most 2047 steps"):
        onnxattr.compile(tanh_mlp(), "conductance", steps=2048)
    with pytest.raises(UsageError, match="conductance"):  # the refusal names the methods that take keep=
        onnxattr.compile(tanh_mlp(), "smoothgrad", keep=["h"])


# ---------------------------------------------------------------------------------------------- neuron conductance
def numpy_neuron_conductance(x, seed, unit, rule, steps):
    """(x - 0) * sum_k w_k (dy/dh_j)(x_k) (dh_j/dx)(x_k) for unit j of tanh_mlp's h, reference 0."""
    alphas, weights = ig_quadrature(rule, steps)
    total = 0.0
    for a, w in zip(alphas, weights):
        _, h, _ = forward(a * x)
        through = (seed @ W2.T)[:, unit] * (1 - h[:, unit] ** 2)  # dy/dh_j, times dh_j/dz_j
        total = total + w * through[:, None] * W1[:, unit][None]
    return x * total


@pytest.mark.parametrize("rule", INTEGRATION)
@pytest.mark.parametrize("neuron", ["max", "all"])
def test_neuron_conductance_equals_numpy(rule, neuron):
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    compiled = onnxattr.compile(tanh_mlp(), "neuron_conductance", neuron=neuron, layer="h", neuron_index=[4],
                                steps=9, integration=rule, chunk_size=4)
    sess = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["relevance"], {"x": x})[0]
    y = forward(x.astype(np.float64))[2]
    seed = np.ones_like(y) if neuron == "all" else np.eye(4)[y.argmax(1)]
    want = numpy_neuron_conductance(x.astype(np.float64), seed, 4, rule, 9)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def residual_model():
    """y = (relu(x W) + x) V: a path from x to y around h = relu(x W)."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["a"]), helper.make_node("Relu", ["a"], ["h"]),
             helper.make_node("Add", ["h", "x"], ["s"]), helper.make_node("MatMul", ["s", "V"], ["y"])]
    inits = {"W": rng.standard_normal((4, 4)).astype(np.float32), "V": rng.standard_normal((4, 3)).astype(np.float32)}
    return single_io_model(nodes, inits, ["N", 4], ["N", 3]), inits


def test_neuron_conductance_takes_only_paths_through_the_neuron():
    """The skip around h adds nothing: the map is x * mean_k V[j, c] [a_j(x_k) > 0] W[:, j], zero where the unit is
    off along the whole path."""
    model, w = residual_model()
    x = np.array([[1.0, -0.5, 0.25, 2.0], [-1.0, 0.5, -0.25, -2.0]], np.float32)
    compiled = onnxattr.compile(model, "neuron_conductance", neuron="all", layer="h", neuron_index=1, steps=4,
                                integration="riemann_right")
    got = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["relevance"], {"x": x})[0]
    on = (x @ w["W"][:, 1] > 0).astype(np.float64)  # a_1 is linear along the path: on at every point or at none
    want = x * (on * w["V"][1].sum())[:, None] * w["W"][:, 1][None]
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    assert on.tolist() in ([1.0, 0.0], [0.0, 1.0]) and np.all(got[on == 0] == 0)


def test_neuron_conductance_names_what_is_missing_or_wrong():
    with pytest.raises(UsageError, match="needs layer=TENSOR"):
        onnxattr.compile(tanh_mlp(), "neuron_conductance", neuron_index=[1])
    with pytest.raises(UsageError, match="did you mean h"):
        onnxattr.compile(tanh_mlp(), "neuron_conductance", layer="hh", neuron_index=[1])
    with pytest.raises(UsageError, match="one index per axis"):
        onnxattr.compile(tanh_mlp(), "neuron_conductance", layer="h", neuron_index=[1, 0])
    with pytest.raises(UsageError, match="lies outside layer 'h'"):
        onnxattr.compile(tanh_mlp(), "neuron_conductance", layer="h", neuron_index=[7])
    with pytest.raises(UsageError, match="non-negative integers"):
        onnxattr.compile(tanh_mlp(), "neuron_conductance", layer="h", neuron_index=[-1])


def test_neuron_outside_a_layer_of_unknown_size_fails_the_run_by_name():
    """h's size is only known at run time here (x's features are symbolic): the run fails, and the API says why."""
    nodes = [helper.make_node("Tanh", ["x"], ["h"]), helper.make_node("ReduceSum", ["h", "axes"], ["y"], keepdims=1)]
    model = single_io_model(nodes, {"axes": np.array([1], np.int64)}, ["N", "F"], ["N", 1])
    analyzer = onnxattr.create_analyzer("neuron_conductance", model, layer="h", neuron_index=[6], steps=2)
    with pytest.raises(DataError, match=r"neuron_index \[6\] lies outside layer 'h'"):
        analyzer.analyze(np.ones((2, 5), np.float32))
    inside = analyzer.analyze(np.ones((2, 8), np.float32))
    assert np.count_nonzero(inside) == 2 and np.all(inside[:, 6] > 0)


# ---------------------------------------------------------------------------------------------- kept tensors
def sequence_first(shape_input=False):
    """x[N,3,4] -> Transpose -> a[3,N,4] (sequence first, as torch's MultiheadAttention by default) -> Tanh (t) ->
    sum over the sequence -> MatMul -> y[N,2]; with ``shape_input`` a Reshape by a graph input "shp" between a and
    Tanh, so that t's shape is unknown when compiling."""
    rng = np.random.default_rng(5)
    w = {"W": rng.standard_normal((4, 4)).astype(np.float32), "V": rng.standard_normal((4, 2)).astype(np.float32),
         "ax": np.array([0], np.int64)}
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]), helper.make_node("MatMul", ["xt", "W"], ["a"]),
             helper.make_node("Reshape", ["a", "shp"], ["r"]) if shape_input else helper.make_node("Identity", ["a"], ["r"]),
             helper.make_node("Tanh", ["r"], ["t"]), helper.make_node("ReduceSum", ["t", "ax"], ["p"], keepdims=0),
             helper.make_node("MatMul", ["p", "V"], ["y"])]
    model = single_io_model(nodes, w, ["N", 3, 4], ["N", 2])
    if shape_input:
        model.graph.input.append(helper.make_tensor_value_info("shp", 7, [3]))
    return model, w


def numpy_sequence_first(x, w, steps):
    """Conductance at a and t of sequence_first, gausslegendre, reference 0."""
    alphas, _ = ig_quadrature("gausslegendre", steps + 1)
    fa = lambda p: np.transpose(p, (1, 0, 2)) @ w["W"].astype(np.float64)  # noqa: E731
    y = np.tanh(fa(x)).sum(0) @ w["V"]
    g_t = np.broadcast_to((np.eye(2)[y.argmax(1)] @ w["V"].T)[None], (3, len(x), 4))
    out = {"a": 0.0, "t": 0.0}
    for a0, a1 in zip(alphas[:-1], alphas[1:]):
        z0, z1 = fa(a0 * x), fa(a1 * x)
        out["t"] = out["t"] + g_t * (np.tanh(z1) - np.tanh(z0))
        out["a"] = out["a"] + g_t * (1 - np.tanh(z0) ** 2) * (z1 - z0)
    return out


@pytest.mark.parametrize("chunk", [1, 7])
def test_a_kept_tensor_whose_batch_axis_is_not_its_first(chunk):
    """The points are stacked along x's batch axis, which is a's second: a takes one point per trip."""
    model, w = sequence_first()
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    compiled = onnxattr.compile(model, "conductance", keep=["a", "t"], steps=6, chunk_size=chunk)
    got = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["relevance:a", "relevance:t"], {"x": x})
    want = numpy_sequence_first(x.astype(np.float64), w, 6)
    for g, name in zip(got, ("a", "t")):
        assert np.abs(g - want[name]).max() <= 2e-6 * np.abs(want[name]).max(), name


def test_a_kept_tensor_of_unknown_shape_is_checked_at_run_time():
    model, w = sequence_first(shape_input=True)
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    feeds = {"shp": np.array([3, -1, 4], np.int64)}
    analyzer = onnxattr.create_analyzer("conductance", model, keep=["t"], steps=6, chunk_size=4)
    with pytest.raises(DataError, match="did not hold them in its first axis"):
        analyzer.analyze(x, inputs=feeds)
    one = onnxattr.create_analyzer("conductance", model, keep=["t"], steps=6, chunk_size=1)
    one.analyze(x, inputs=feeds)
    want = numpy_sequence_first(x.astype(np.float64), w, 6)["t"]
    assert np.abs(one.kept["t"] - want).max() <= 2e-6 * np.abs(want).max()


def test_keep_naming_the_input_or_a_name_passing_it_on_is_the_map():
    nodes = [helper.make_node("Identity", ["x"], ["xi"])] + list(tanh_mlp().graph.node)
    nodes[1].input[0] = "xi"
    inits = {k: v.astype(np.float32) for k, v in (("W1", W1), ("B1", B1), ("W2", W2), ("B2", B2))}
    model = single_io_model(nodes, inits, ["N", 5], ["N", 4])
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    got = run(model, x, keep=("x", "xi"), steps=5)
    assert np.abs(got["x"]).max() > 0
    assert np.array_equal(got["x"], got["xi"]) and np.array_equal(got["x"], run(model, x, keep=("xi",), steps=5)["xi"])
    assert np.abs(got["xi"] - run(model, x, keep=(), steps=5)["x"]).max() == 0


def test_a_kept_tensor_of_another_float_type():
    """h computed in float64 inside a float32 model: its conductance is summed in float32, equal to numpy's."""
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["a"]), helper.make_node("Add", ["a", "B1"], ["z"]),
             helper.make_node("Cast", ["z"], ["z64"], to=11), helper.make_node("Tanh", ["z64"], ["h"]),
             helper.make_node("Cast", ["h"], ["h32"], to=1), helper.make_node("MatMul", ["h32", "W2"], ["o"]),
             helper.make_node("Add", ["o", "B2"], ["y"])]
    inits = {k: v.astype(np.float32) for k, v in (("W1", W1), ("B1", B1), ("W2", W2), ("B2", B2))}
    model = single_io_model(nodes, inits, ["N", 5], ["N", 4])
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    got = run(model, x, keep=("h",), steps=10, integration="riemann_trapezoid", chunk_size=3)
    y = forward(x.astype(np.float64))[2]
    want = numpy_conductance(x.astype(np.float64), 0.0, np.eye(4)[y.argmax(1)], "riemann_trapezoid", 10)
    for name in ("x", "h"):
        assert np.abs(got[name] - want[name]).max() <= 2e-6 * np.abs(want[name]).max(), name


def test_neuron_conductance_needs_a_layer_with_the_batch_axis_first():
    model, _ = sequence_first()
    with pytest.raises(UsageError, match="does not have the batch axis first"):
        onnxattr.compile(model, "neuron_conductance", layer="a", neuron_index=[0, 1])
    model, _ = sequence_first(shape_input=True)  # t's shape unknown when compiling: checked at run time
    analyzer = onnxattr.create_analyzer("neuron_conductance", model, layer="t", neuron_index=[0, 1], steps=3)
    with pytest.raises(DataError, match="choose a layer"):
        analyzer.analyze(RNG.standard_normal((2, 3, 4)).astype(np.float32), inputs={"shp": np.array([3, -1, 4])})


def test_neuron_index_forms_and_a_layer_of_one_value_per_sample():
    """numpy's integers and arrays are indices; a layer [N] takes () (its value is the neuron); indices too large
    for an int64 are refused by name."""
    x = RNG.standard_normal((2, 5)).astype(np.float32)
    maps = [run(tanh_mlp(), x, "neuron_conductance", keep=(), layer="h", neuron_index=i, steps=4)["x"]
            for i in (4, [4], (np.int64(4),), np.array([4]))]
    assert all(np.array_equal(maps[0], m) for m in maps[1:]) and np.abs(maps[0]).max() > 0
    with pytest.raises(UsageError, match="non-negative integers"):
        onnxattr.compile(tanh_mlp(), "neuron_conductance", layer="h", neuron_index=[2 ** 63])
    nodes = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("ReduceSum", ["t", "axes"], ["h"], keepdims=0),
             helper.make_node("Unsqueeze", ["h", "axes"], ["y"])]
    model = single_io_model(nodes, {"axes": np.array([1], np.int64)}, ["N", 5], ["N", 1])
    compiled = onnxattr.compile(model, "neuron_conductance", neuron="all", layer="h", neuron_index=(), steps=8,
                                integration="riemann_trapezoid")
    got = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["relevance"], {"x": x})[0]
    want = run(model, x, "integrated_gradients", neuron="all", keep=(), steps=8, integration="riemann_trapezoid")["x"]
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()  # y is h: through h is every path


def test_a_layer_of_unknown_rank_is_checked_at_run_time():
    """h = Reshape(t, shp) with shp a graph input: neither its rank nor its sizes are known when compiling. An
    index of the wrong length, or outside, fails the run by name instead of broadcasting over several units."""
    nodes = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Reshape", ["t", "shp"], ["h"]),
             helper.make_node("ReduceSum", ["h", "axes"], ["y"], keepdims=0)]
    model = single_io_model(nodes, {"axes": np.array([1, 2], np.int64)}, ["N", 16], ["N"])
    model.graph.input.append(helper.make_tensor_value_info("shp", 7, ["R"]))  # its length unknown too
    x = RNG.standard_normal((2, 16)).astype(np.float32)
    feeds = {"shp": np.array([-1, 4, 4], np.int64)}
    for index in ([2], [0, 9], [1, 2, 0]):
        analyzer = onnxattr.create_analyzer("neuron_conductance", model, layer="h", neuron_index=index, steps=2)
        with pytest.raises(DataError, match="lies outside layer 'h' on this data, or has not one entry per axis"):
            analyzer.analyze(x, inputs=feeds)
    inside = onnxattr.create_analyzer("neuron_conductance", model, layer="h", neuron_index=[2, 1], steps=2)
    got = inside.analyze(x, inputs=feeds)
    assert np.count_nonzero(got) == 2 and np.all(got[:, 9] != 0)  # unit (2, 1) of [4, 4] is feature 9
