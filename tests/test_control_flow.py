"""onnxattr/control_flow.py: Loops of a trip count known when compiling are unrolled, Ifs of a known condition
inlined. The canonical model must give the original's outputs (onnxruntime running the Loop or If itself), and the
compiled gradient must be the original's: float64 models, against central differences of onnxruntime's forward
of the original model (h = 1e-6, accurate to ~1e-9 relative; tolerance 1e-6 of the gradient's largest entry)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr import control_flow
from onnxattr.canonicalize import canonicalize
from onnxattr.errors import UnsupportedModelError
from onnxattr.recurrent_nodes import NOT_FIXED

D = TensorProto.DOUBLE
I64, BOOL = TensorProto.INT64, TensorProto.BOOL
STEPS, FEATURES, HIDDEN = 4, 3, 5
RNG = np.random.default_rng(0)
W = RNG.standard_normal((FEATURES, HIDDEN)) * 0.5
R = RNG.standard_normal((HIDDEN, HIDDEN)) * 0.5
B = RNG.standard_normal(HIDDEN) * 0.1
V = RNG.standard_normal((HIDDEN, 2))
U = RNG.standard_normal((HIDDEN, 2))


def vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def const(value, name):
    return numpy_helper.from_array(np.asarray(value), name)


def model_of(nodes, inits, x_shape=("N", STEPS, FEATURES), y_shape=("N", 2)):
    g = helper.make_graph(nodes, "net", [vi("x", D, list(x_shape))], [vi("y", D, list(y_shape))], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def rnn_body(stop: str = "steps_in"):
    """tf2onnx's while loop: h = tanh(x[t] W + h R + b), t + 1 < steps, the weights carried unchanged."""
    return helper.make_graph(
        [helper.make_node("Gather", ["xt", "t_in"], ["x_t"]),
         helper.make_node("MatMul", ["x_t", "W_in"], ["xw"]),
         helper.make_node("MatMul", ["h_in", "R_in"], ["hr"]),
         helper.make_node("Add", ["xw", "hr"], ["s"]),
         helper.make_node("Add", ["s", "B"], ["z"]),
         helper.make_node("Tanh", ["z"], ["h_out"]),
         helper.make_node("Add", ["t_in", "one"], ["t_out"]),
         helper.make_node("Less", ["t_out", stop], ["cond_out"])],
        "body", [vi("iter", I64, []), vi("cond_in", BOOL, []), vi("t_in", I64, []), vi("h_in", D, ["N", HIDDEN]),
                 vi("steps_in", I64, []), vi("W_in", D, [FEATURES, HIDDEN]), vi("R_in", D, [HIDDEN, HIDDEN])],
        [vi("cond_out", BOOL, []), vi("t_out", I64, []), vi("h_out", D, ["N", HIDDEN]), vi("steps_in", I64, []),
         vi("W_in", D, [FEATURES, HIDDEN]), vi("R_in", D, [HIDDEN, HIDDEN]), vi("h_out", D, ["N", HIDDEN])],
        [const(np.array(1, np.int64), "one")])


def rnn_model(trips: int | None = None, stop: int | None = None, x_shape=("N", STEPS, FEATURES), bias=B):
    """y = h_T V + mean_t(h_t) U over a tf2onnx-style Loop; the steps read from Shape(x)[1] unless ``stop``;
    ``trips``: a trip count too."""
    steps = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Cast", ["shape"], ["shape_i"], to=I64),
             helper.make_node("Slice", ["shape_i", "one1", "two1"], ["steps1"]),
             helper.make_node("Squeeze", ["steps1"], ["steps"])] if stop is None else []
    nodes = steps + [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        helper.make_node("Less", ["zero", "steps"], ["cond"]),
        helper.make_node("Shape", ["x"], ["xshape"]),
        helper.make_node("Gather", ["xshape", "zero"], ["n"]),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "hidden1"], ["hshape"], axis=0),
        helper.make_node("ConstantOfShape", ["hshape"], ["h0"], value=helper.make_tensor("", D, [1], [0.0])),
        helper.make_node("Loop", ["trips" if trips is not None else "", "cond", "zero", "h0", "steps", "W", "R"],
                         ["t_n", "h_n", "steps_n", "W_n", "R_n", "hs"], body=rnn_body(), name="rnn"),
        helper.make_node("MatMul", ["h_n", "V"], ["last"]),
        helper.make_node("ReduceMean", ["hs"], ["mean"], axes=[0], keepdims=0),
        helper.make_node("MatMul", ["mean", "U"], ["every"]),
        helper.make_node("Add", ["last", "every"], ["y"])]
    inits = [const(np.array(0, np.int64), "zero"), const(np.array([0], np.int64), "zero1"),
             const(np.array([1], np.int64), "one1"), const(np.array([2], np.int64), "two1"),
             const(np.array([HIDDEN], np.int64), "hidden1"), const(W, "W"), const(R, "R"), const(bias, "B"),
             const(V, "V"), const(U, "U")]
    if stop is not None:
        inits.append(const(np.array(stop, np.int64), "steps"))
    if trips is not None:
        inits.append(const(np.array(trips, np.int64), "trips"))
    return model_of(nodes, inits, x_shape)


def run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def numeric_gradient(model, x, k=0, h=1e-6):
    """d y[:, k].sum() / dx by central differences of onnxruntime's forward."""
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        g[idx] = (run(model, up)[:, k].sum() - run(model, down)[:, k].sum()) / (2 * h)
    return g


def assert_unrolled_like(model, x, tol=1e-12):
    canon = canonicalize(model)
    assert not [n.op_type for n in canon.graph.node if n.op_type in ("Loop", "If")]
    np.testing.assert_allclose(run(canon, x), run(model, x), rtol=0, atol=tol)
    return canon


def assert_gradient(model, x):
    compiled = onnxattr.compile(model, "gradient", neuron="index")
    target = np.zeros(len(x), np.int64)
    r = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["relevance"], {"x": x, "target": target})[0]
    want = numeric_gradient(model, x)
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(r, want, rtol=0, atol=1e-6 * np.abs(want).max())


X = np.random.default_rng(1).standard_normal((2, STEPS, FEATURES))


def test_while_loop_stopped_by_a_counter_is_unrolled_with_the_weights_as_initializers():
    canon = assert_unrolled_like(rnn_model(), X)
    assert sum(n.op_type == "Tanh" for n in canon.graph.node) == STEPS
    weights = {t.name for t in canon.graph.initializer}
    matmuls = [n for n in canon.graph.node if n.op_type == "MatMul" and "rnn/" in n.name]
    assert len(matmuls) == 2 * STEPS and all(n.input[1] in weights for n in matmuls)
    assert_gradient(rnn_model(), X)


@pytest.mark.parametrize("trips,stop,expected", [(None, 3, 3), (2, 3, 2), (3, 10, 3), (1, 5, 1), (None, 1, 1)])
def test_trip_count_is_the_first_of_the_count_and_the_condition(trips, stop, expected):
    """ONNX's Loop runs while i < M and cond: the condition is checked before every trip, first the Loop's own."""
    model = rnn_model(trips=trips, stop=stop)
    canon = assert_unrolled_like(model, X)
    assert sum(n.op_type == "Tanh" for n in canon.graph.node) == expected
    if expected:
        assert_gradient(model, X)


def test_zero_trips_with_a_scan_output_read_is_refused_by_name():
    model = rnn_model(stop=0)  # the scan output hs is read by the ReduceMean
    with pytest.raises(UnsupportedModelError, match=r"Loop 'rnn' \(it runs zero times and a scan output is read"):
        onnxattr.compile(model, "gradient")


def test_nested_loop_whose_trip_count_is_the_outer_iteration_number():
    """v = x; for i in 0..2: for j in 0..i: v = tanh(v * a + x): the inner Loop's count is i + 1, known once the
    outer one is unrolled and its iteration number folded."""
    inner = helper.make_graph(
        [helper.make_node("Mul", ["w_in", "a"], ["wa"]), helper.make_node("Add", ["wa", "x"], ["wax"]),
         helper.make_node("Tanh", ["wax"], ["w_out"]), helper.make_node("Identity", ["c_in"], ["c_out"])],
        "inner", [vi("j", I64, []), vi("c_in", BOOL, []), vi("w_in", D, ["N", 3])],
        [vi("c_out", BOOL, []), vi("w_out", D, ["N", 3])])
    outer = helper.make_graph(
        [helper.make_node("Add", ["i", "one"], ["count"]),
         helper.make_node("Loop", ["count", "", "v_in"], ["v_out"], body=inner, name="inner"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "outer", [vi("i", I64, []), vi("cond_in", BOOL, []), vi("v_in", D, ["N", 3])],
        [vi("cond_out", BOOL, []), vi("v_out", D, ["N", 3])], [const(np.array(1, np.int64), "one")])
    model = model_of([helper.make_node("Loop", ["three", "", "x"], ["v"], body=outer, name="outer"),
                      helper.make_node("MatMul", ["v", "P"], ["y"])],
                     [const(np.array(3, np.int64), "three"), const(np.array([0.9, -0.7, 0.4]), "a"),
                      const(RNG.standard_normal((3, 2)), "P")], x_shape=("N", 3))
    x = np.random.default_rng(2).standard_normal((2, 3))
    canon = assert_unrolled_like(model, x)
    assert sum(n.op_type == "Tanh" for n in canon.graph.node) == 1 + 2 + 3
    assert_gradient(model, x)


def test_body_nodes_that_read_no_trip_value_are_emitted_once():
    """Relu(x) inside the body reads only the outer scope: one copy, whatever the trip count."""
    body = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["rx"]), helper.make_node("Add", ["v_in", "rx"], ["v_out"]),
         helper.make_node("Identity", ["c_in"], ["c_out"])],
        "body", [vi("i", I64, []), vi("c_in", BOOL, []), vi("v_in", D, ["N", 3])],
        [vi("c_out", BOOL, []), vi("v_out", D, ["N", 3])])
    model = model_of([helper.make_node("Loop", ["five", "", "x"], ["v"], body=body, name="repeat"),
                      helper.make_node("MatMul", ["v", "P"], ["y"])],
                     [const(np.array(5, np.int64), "five"), const(RNG.standard_normal((3, 2)), "P")],
                     x_shape=("N", 3))
    x = np.random.default_rng(3).standard_normal((2, 3))
    canon = assert_unrolled_like(model, x)
    assert sum(n.op_type == "Relu" for n in canon.graph.node) == 1
    assert sum(n.op_type == "Add" for n in canon.graph.node) == 5
    assert_gradient(model, x)


def if_model(cond_nodes, then_scale=2.0, width=3):
    """y = (x · s) P in the then branch (s its own initializer), x P in the else branch."""
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["xs"]),
                                helper.make_node("MatMul", ["xs", "P"], ["t"])], "then", [],
                               [vi("t", D, ["N", 2])], [const(np.array(then_scale), "s")])
    else_g = helper.make_graph([helper.make_node("MatMul", ["x", "P"], ["e"])], "else", [], [vi("e", D, ["N", 2])])
    return model_of(cond_nodes + [helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g,
                                                   name="branch")],
                    [const(RNG.standard_normal((width, 2)), "P"), const(np.array(2, np.int64), "two"),
                     const(np.array(0.0), "zero"), const(np.array(1, np.int64), "one")], x_shape=("N", width))


@pytest.mark.parametrize("width,scale", [(3, 2.0), (2, 1.0)])
def test_if_on_a_known_size_is_replaced_by_its_branch(width, scale):
    """cond = Shape(x)[1] > 2 (the batch axis symbolic): the then branch, with its own initializer, runs."""
    model = if_model([helper.make_node("Shape", ["x"], ["shape"]),
                      helper.make_node("Gather", ["shape", "one"], ["width"]),
                      helper.make_node("Greater", ["width", "two"], ["cond"])], width=width)
    x = np.random.default_rng(4).standard_normal((2, width))
    canon = assert_unrolled_like(model, x)
    assert sum(n.op_type == "Mul" for n in canon.graph.node) == (scale != 1.0)
    assert_gradient(model, x)


def test_if_on_the_data_is_refused_with_the_reason():
    model = if_model([helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
                      helper.make_node("Greater", ["s", "zero"], ["cond"])])
    with pytest.raises(UnsupportedModelError, match=r"If 'branch' \(its condition is computed at run time\)"):
        onnxattr.compile(model, "gradient")


def test_trip_count_from_the_data_is_refused_naming_the_tensor():
    body = helper.make_graph([helper.make_node("Add", ["v_in", "v_in"], ["v_out"]),
                              helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
                             [vi("i", I64, []), vi("c_in", BOOL, []), vi("v_in", D, ["N", 3])],
                             [vi("c_out", BOOL, []), vi("v_out", D, ["N", 3])])
    model = model_of([helper.make_node("ReduceMax", ["x"], ["top"], keepdims=0),
                      helper.make_node("Cast", ["top"], ["count"], to=I64),
                      helper.make_node("Loop", ["count", "", "x"], ["v"], body=body, name="repeat"),
                      helper.make_node("MatMul", ["v", "P"], ["y"])],
                     [const(RNG.standard_normal((3, 2)), "P")], x_shape=("N", 3))
    with pytest.raises(UnsupportedModelError, match=r"Loop 'repeat' \(its trip count reads 'count', which is "
                                                    r"computed from the data at run time\)"):
        onnxattr.compile(model, "gradient")


def test_symbolic_sequence_length_is_refused_as_not_fixed():
    """The Analyzer and `explain` retry on NOT_FIXED with the data's sizes (tests/test_thirdparty.py)."""
    with pytest.raises(UnsupportedModelError, match=f"Loop 'rnn' \\({NOT_FIXED}: its first condition is read "
                                                    "from an input's symbolic size"):
        onnxattr.compile(rnn_model(x_shape=("N", "T", FEATURES)), "gradient")


def test_a_loop_longer_than_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(control_flow, "MAX_TRIPS", 3)
    with pytest.raises(UnsupportedModelError, match=r"Loop 'rnn' \(it runs more than 3 times\)"):
        onnxattr.compile(rnn_model(stop=4), "gradient")


def test_an_unrolled_loop_larger_than_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(control_flow, "MAX_UNROLLED_NODES", 20)
    with pytest.raises(UnsupportedModelError, match=r"Loop 'rnn' \(unrolled, its 4 trips would take 32 nodes \(at "
                                                    r"most 20\)\)"):
        onnxattr.compile(rnn_model(), "gradient")


def test_lrp_sees_the_unrolled_layers():
    """Each trip's x W and h R are layers with constant weights: without biases, at a zero initial state and a
    tiny epsilon, lrp.epsilon conserves the logit at the input (tanh passes relevance on as it is); gradient ×
    input does not (tanh is not linear)."""
    model = rnn_model(bias=np.zeros(HIDDEN))
    sums = {}
    for method in ("lrp.epsilon", "input_t_gradient"):
        params = {"epsilon": 1e-12} if method == "lrp.epsilon" else {}
        compiled = onnxattr.compile(model, method, neuron="index", **params)
        y, r = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            ["y", "relevance"], {"x": X, "target": np.zeros(len(X), np.int64)})
        sums[method] = r.reshape(len(X), -1).sum(1)
    np.testing.assert_allclose(sums["lrp.epsilon"], y[:, 0], rtol=2e-6)  # relevance is returned in float32
    assert np.abs(sums["input_t_gradient"] - y[:, 0]).max() > 1e-3 * np.abs(y[:, 0]).max()


def test_unnamed_loops_and_names_the_model_already_uses_get_copies_of_their_own():
    """Two unnamed Loops, and a tensor already named like a copy ("Loop/…"): every copy's name is new."""
    def doubling(tag):
        return helper.make_graph([helper.make_node("Add", ["v_in", "v_in"], ["v_out"]),
                                  helper.make_node("Identity", ["c_in"], ["c_out"])], tag,
                                 [vi("i", I64, []), vi("c_in", BOOL, []), vi("v_in", D, ["N", 3])],
                                 [vi("c_out", BOOL, []), vi("v_out", D, ["N", 3])])
    model = model_of([helper.make_node("Relu", ["x"], ["Loop/x"]),
                      helper.make_node("Loop", ["two", "", "Loop/x"], ["a"], body=doubling("first")),
                      helper.make_node("Loop", ["two", "", "a"], ["b"], body=doubling("second")),
                      helper.make_node("MatMul", ["b", "P"], ["y"])],
                     [const(np.array(2, np.int64), "two"), const(RNG.standard_normal((3, 2)), "P")], x_shape=("N", 3))
    x = np.random.default_rng(5).standard_normal((2, 3))
    canon = assert_unrolled_like(model, x)
    np.testing.assert_allclose(run(canon, x), np.maximum(x, 0) * 16 @ numpy_helper.to_array(model.graph.initializer[1]))
    assert_gradient(model, x)


def test_lrp_of_the_loop_is_that_of_onnxs_rnn_node_without_biases():
    """The same cell as ONNX's RNN node, which recurrent.py unrolls into one layer over [x_t, h_{t-1}]: the Loop's
    two layers x W and h R meet in an Add, split in proportion to its operands, so ε and z give the node's maps
    where no bias takes a share (with biases the bias Add after the sum takes none, unlike the node's layer)."""
    bias = np.zeros(HIDDEN)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("RNN", ["xt", "Wn", "Rn", "Bn"], ["Y", "Yh"], hidden_size=HIDDEN),
             helper.make_node("Squeeze", ["Y", "ax1"], ["hs"]), helper.make_node("Squeeze", ["Yh", "ax0"], ["h_n"]),
             helper.make_node("MatMul", ["h_n", "V"], ["last"]),
             helper.make_node("ReduceMean", ["hs"], ["mean"], axes=[0], keepdims=0),
             helper.make_node("MatMul", ["mean", "U"], ["every"]), helper.make_node("Add", ["last", "every"], ["y"])]
    node_model = model_of(nodes, [const(W.T[None], "Wn"), const(R.T[None], "Rn"),
                                  const(np.zeros((1, 2 * HIDDEN)), "Bn"), const(np.array([1], np.int64), "ax1"),
                                  const(np.array([0], np.int64), "ax0"), const(V, "V"), const(U, "U")])
    target = np.zeros(len(X), np.int64)
    for method in ("gradient", "lrp.epsilon", "lrp.z"):
        maps = []
        for m in (rnn_model(bias=bias), node_model):
            session = ort.InferenceSession(onnxattr.compile(m, method, neuron="index").SerializeToString(),
                                           providers=["CPUExecutionProvider"])
            maps.append(session.run(["relevance"], {"x": X, "target": target})[0])
        np.testing.assert_allclose(maps[0], maps[1], rtol=0, atol=1e-5 * np.abs(maps[1]).max(), err_msg=method)


def test_an_if_on_the_iteration_number_inside_a_loop():
    """for i in 0..3: v = tanh(v) · 2 if i == 0 else v + tanh(v): the If is inlined once the Loop's copies read a
    constant i."""
    then_g = helper.make_graph([helper.make_node("Mul", ["t", "two_f"], ["a"])], "then", [], [vi("a", D, ["N", 3])])
    else_g = helper.make_graph([helper.make_node("Add", ["v_in", "t"], ["b"])], "else", [], [vi("b", D, ["N", 3])])
    body = helper.make_graph(
        [helper.make_node("Tanh", ["v_in"], ["t"]), helper.make_node("Equal", ["i", "zero_i"], ["first"]),
         helper.make_node("If", ["first"], ["v_out"], then_branch=then_g, else_branch=else_g),
         helper.make_node("Identity", ["c_in"], ["c_out"])],
        "body", [vi("i", I64, []), vi("c_in", BOOL, []), vi("v_in", D, ["N", 3])],
        [vi("c_out", BOOL, []), vi("v_out", D, ["N", 3])])
    model = model_of([helper.make_node("Loop", ["four", "", "x"], ["v"], body=body, name="steps"),
                      helper.make_node("MatMul", ["v", "P"], ["y"])],
                     [const(np.array(4, np.int64), "four"), const(np.array(0, np.int64), "zero_i"),
                      const(np.array(2.0), "two_f"), const(RNG.standard_normal((3, 2)), "P")], x_shape=("N", 3))
    x = np.random.default_rng(6).standard_normal((2, 3))
    canon = assert_unrolled_like(model, x)
    assert sum(n.op_type == "Mul" for n in canon.graph.node) == 1
    assert_gradient(model, x)


def scan_model(x_shape=("N", STEPS, FEATURES)):
    """A Scan over x's axis 1, forwards and (a second scan input) backwards: h = tanh(x_t W + x_{T-1-t} W2 + h R);
    its outputs h_T, every h on axis 1 in order, and every h on axis 0 in reverse order, weighted by a ramp."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_t", "W"], ["xw"]), helper.make_node("MatMul", ["x_back", "W2"], ["xw2"]),
         helper.make_node("MatMul", ["h_in", "R"], ["hr"]), helper.make_node("Sum", ["xw", "xw2", "hr"], ["z"]),
         helper.make_node("Tanh", ["z"], ["h_out"]), helper.make_node("Identity", ["h_out"], ["h_copy"]),
         helper.make_node("Identity", ["h_out"], ["h_copy2"])],  # onnxruntime's Scan misreads one name output twice
        "body", [vi("h_in", D, ["N", HIDDEN]), vi("x_t", D, ["N", FEATURES]), vi("x_back", D, ["N", FEATURES])],
        [vi("h_out", D, ["N", HIDDEN]), vi("h_copy", D, ["N", HIDDEN]), vi("h_copy2", D, ["N", HIDDEN])])
    nodes = [helper.make_node("Shape", ["x"], ["xshape"]), helper.make_node("Gather", ["xshape", "zero1"], ["n1"]),
             helper.make_node("Concat", ["n1", "hidden1"], ["hshape"], axis=0),
             helper.make_node("ConstantOfShape", ["hshape"], ["h0"], value=helper.make_tensor("", D, [1], [0.0])),
             helper.make_node("Scan", ["h0", "x", "x"], ["h_n", "hs", "hs_back"], body=body, num_scan_inputs=2,
                              scan_input_axes=[1, -2], scan_input_directions=[0, 1], scan_output_axes=[1, 0],
                              scan_output_directions=[0, 1], name="scan"),
             helper.make_node("MatMul", ["h_n", "V"], ["last"]),
             helper.make_node("ReduceMean", ["hs"], ["mean"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["mean", "U"], ["every"]),
             helper.make_node("Mul", ["hs_back", "ramp"], ["weighted"]),
             helper.make_node("ReduceSum", ["weighted", "zero1"], ["back"], keepdims=0),
             helper.make_node("MatMul", ["back", "U"], ["backwards"]),
             helper.make_node("Sum", ["last", "every", "backwards"], ["y"])]
    inits = [const(np.array([0], np.int64), "zero1"), const(np.array([HIDDEN], np.int64), "hidden1"), const(W, "W"),
             const(W[::-1] * 0.5, "W2"), const(R, "R"), const(V, "V"), const(U, "U"),
             const(np.linspace(1, 2, STEPS).reshape(STEPS, 1, 1), "ramp")]
    return model_of(nodes, inits, x_shape)


def test_scan_forwards_and_backwards_on_any_axis_is_unrolled():
    canon = assert_unrolled_like(scan_model(), X)
    assert sum(n.op_type == "Tanh" for n in canon.graph.node) == STEPS
    assert_gradient(scan_model(), X)


def test_scan_of_a_symbolic_length_is_refused_as_not_fixed():
    with pytest.raises(UnsupportedModelError, match=f"Scan 'scan' \\({NOT_FIXED}: its scan inputs' length"):
        onnxattr.compile(scan_model(x_shape=("N", "T", FEATURES)), "gradient")


def test_the_canonical_model_keeps_its_large_weights_as_initializers():
    """After unrolling, shapes are inferred on the model itself: inferring them on the weight-less copy (whose large
    initializers are graph inputs) made a large weight a second float input, and compile then refused the model."""
    body = helper.make_graph([helper.make_node("Add", ["v_in", "v_in"], ["v_out"]),
                              helper.make_node("Identity", ["c_in"], ["c_out"])], "body",
                             [vi("i", I64, []), vi("c_in", BOOL, []), vi("v_in", D, ["N", 64])],
                             [vi("c_out", BOOL, []), vi("v_out", D, ["N", 64])])
    model = model_of([helper.make_node("Loop", ["two", "", "x"], ["v"], body=body, name="twice"),
                      helper.make_node("MatMul", ["v", "P"], ["y"])],
                     [const(np.array(2, np.int64), "two"), const(RNG.standard_normal((64, 100)), "P")],
                     x_shape=("N", 64), y_shape=("N", 100))
    x = np.random.default_rng(7).standard_normal((2, 64))
    canon = assert_unrolled_like(model, x)
    assert [i.name for i in canon.graph.input] == ["x"]
    assert_gradient(model, x)
