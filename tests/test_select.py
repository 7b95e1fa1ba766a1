"""onnxattr/select.py: input/output choice, softmax look-through, neuron modes and seed validation."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxattr
from onnxattr.errors import DataError, SelectionError
from tests.models import mlp, mlp_gradient, mlp_logits

X = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)


def session(model):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("neuron", ["max", "index", "all"])
def test_modes_match_closed_form(neuron):
    m, w = mlp()
    compiled = onnxattr.compile(m, "gradient", neuron=neuron)
    names = [i.name for i in compiled.graph.input]
    feeds = {"x": X}
    logits = mlp_logits(X, w)
    if neuron == "index":
        assert names == ["x", "target"]
        targets = np.array([2, 0, 1, 2], np.int64)
        feeds["target"] = targets
    else:
        targets = logits.argmax(1)
    out = session(compiled).run(None, feeds)
    np.testing.assert_allclose(out[0], session(m).run(None, {"x": X})[0], rtol=1e-6)  # original output
    if neuron == "all":
        want = sum(mlp_gradient(X, np.full(4, k), w) for k in range(3))
    else:
        want = mlp_gradient(X, targets, w)
    np.testing.assert_allclose(out[-1], want, rtol=1e-5, atol=1e-5)


def test_out_of_range_target_fails_in_the_compiled_model():
    m, _ = mlp()
    s = session(onnxattr.compile(m, "gradient", neuron="index"))
    with pytest.raises(Exception, match="indice|index|range|bound"):
        s.run(None, {"x": X, "target": np.array([0, 1, 3, 0], np.int64)})


def test_out_of_range_target_is_a_data_error_in_the_api():
    m, _ = mlp()
    with pytest.raises(DataError, match="out of range"):
        onnxattr.create_analyzer("gradient", m).analyze(X, neuron_selection=[0, 1, 7, 0])


def test_softmax_is_looked_through_but_kept_as_output():
    with_sm, w = mlp(softmax=True)
    without, _ = mlp(softmax=False)
    a = onnxattr.create_analyzer("gradient", with_sm).analyze(X)
    b = onnxattr.create_analyzer("gradient", without).analyze(X)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert [o.name for o in onnxattr.compile(with_sm, "gradient").graph.output] == ["p", "relevance"]


def test_rank3_output_is_flattened_per_sample():
    m, w = mlp(softmax=False)
    m.graph.node.append(helper.make_node("Reshape", ["z", "shape3"], ["z3"]))
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.array([0, 3, 1], np.int64), "shape3"))
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("z3", TensorProto.FLOAT, ["N", 3, 1]))
    r = onnxattr.create_analyzer("gradient", m).analyze(X, neuron_selection=1)
    np.testing.assert_allclose(r, mlp_gradient(X, np.full(4, 1), w), rtol=1e-5, atol=1e-6)


def test_batch_stays_dynamic_and_checker_passes():
    m, _ = mlp()
    c = onnxattr.compile(m, "integrated_gradients")
    onnx.checker.check_model(c, full_check=True)
    assert c.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert c.graph.output[-1].type.tensor_type.shape.dim[0].dim_param == "N"
    for n in (1, 5):
        assert session(c).run(None, {"x": np.ones((n, 6), np.float32)})[-1].shape == (n, 6)


def test_no_float_input_and_several_inputs():
    m, _ = mlp()
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    with pytest.raises(SelectionError, match="no float input"):
        onnxattr.compile(m, "gradient")
    m2, _ = mlp()
    m2.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 6]))
    with pytest.raises(SelectionError, match="several float inputs"):
        onnxattr.compile(m2, "gradient")
    with pytest.raises(SelectionError, match="no graph input named"):
        onnxattr.compile(m2, "gradient", input="nope")


def test_token_ids_suggest_the_embedding_not_an_expanded_attentions_mask():
    """Token ids and a boolean mask into an Attention node (opset 23): the mask becomes a float bias inside the
    Attention's expanded body, which is no place to explain from; the embedding lookup is suggested alone."""
    from onnx import numpy_helper

    table = np.random.default_rng(0).standard_normal((10, 1, 4, 3)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["g"], name="lookup"),
             helper.make_node("Squeeze", ["g", "one"], ["embedding"]),
             helper.make_node("Attention", ["embedding", "embedding", "embedding", "mask"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"]),
                                       helper.make_tensor_value_info("mask", TensorProto.BOOL, ["N", 1, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 4, 3])],
                          [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([1]), "one")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)], ir_version=11)
    with pytest.raises(SelectionError, match=r"e\.g\. g \(Gather 'lookup'\)$"):
        onnxattr.compile(model, "gradient")


def test_explain_an_intermediate_tensor():
    m, w = mlp()
    r = onnxattr.create_analyzer("gradient", m, output="h2", neuron_selection_mode="index").analyze(
        X, neuron_selection=3)
    np.testing.assert_allclose(r, np.broadcast_to(w[0][:, 3], (4, 6)), rtol=1e-6)


def test_output_that_does_not_depend_on_the_input_is_an_error():
    """Two inputs, the explained output reads only the other one: a zero map would mislead."""
    import onnx
    import pytest
    from onnx import TensorProto, helper

    import onnxattr
    from onnxattr.errors import SelectionError

    g = helper.make_graph([helper.make_node("Relu", ["b"], ["y"]), helper.make_node("Relu", ["a"], ["z"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(SelectionError, match="'y' does not depend on input 'a'"):
        onnxattr.compile(model, "gradient", input="a", output="y")
    assert isinstance(onnxattr.compile(model, "gradient", input="a", output="z"), onnx.ModelProto)


def _scalar_output_model():
    """y = sum(relu(x W)^2) over the whole batch: a rank-0 output (a loss, an energy), no batch axis."""
    from onnx import numpy_helper

    w = np.random.default_rng(0).standard_normal((6, 6)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                           helper.make_node("Mul", ["r", "r"], ["t"]),
                           helper.make_node("ReduceSum", ["t"], ["y"], keepdims=0)], "energy",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), w


def test_a_scalar_output_is_its_own_only_neuron():
    """A rank-0 output is explained as it is in modes max and all (it failed onnx.checker on a Flatten with
    axis 1); mode index, with no neuron to pick, is refused. Occlusion (forward only) gets the drop of the one
    number when a window is occluded in every sample at once, the same in every row."""
    model, w = _scalar_output_model()
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    want = 2 * np.maximum(x @ w, 0) @ w.T
    for method, expected in (("gradient", want), ("input_t_gradient", x * want), ("smoothgrad", want)):
        for neuron in ("max", "all"):
            params = {"noise_scale": 0.0, "augment_by_n": 2} if method == "smoothgrad" else {}
            compiled = onnxattr.compile(model, method, neuron=neuron, **params)
            got = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    compiled = onnxattr.compile(model, "lrp.z", neuron="max")  # seeded with the output's own value
    got = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]
    assert np.isfinite(got).all() and got.any()
    with pytest.raises(onnxattr.errors.SelectionError, match="single number.*'max' or 'all'"):
        onnxattr.compile(model, "gradient", neuron="index")
    energy = lambda v: float((np.maximum(v @ w, 0) ** 2).sum())  # noqa: E731
    drops = [energy(x) - energy(np.where(np.arange(6) == f, 0.0, x)) for f in range(6)]
    compiled = onnxattr.compile(model, "occlusion", neuron="all", sliding_window_shapes=(1,))
    got = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]
    np.testing.assert_allclose(got, np.tile(drops, (3, 1)), atol=1e-6 * energy(x))  # float32 differences of sums


def test_a_batch_mean_loss_is_explained_per_sample_by_the_loop_methods():
    """y = mean over the batch of tanh(x w): the Loop methods evaluated a chunk of points as one larger
    batch, and a mean over it shrank each point's gradient by the chunk (0.2 of the gradient at chunk 16).
    On a scalar output they run one point per sample at a time, whatever chunk_size says."""
    from onnx import numpy_helper

    w = (0.3 * np.random.default_rng(2).standard_normal((6, 1))).astype(np.float32)  # tanh unsaturated
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
                           helper.make_node("ReduceMean", ["t"], ["y"], keepdims=0)], "mean_loss",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], [numpy_helper.from_array(w, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)

    def run(method, **params):
        return session(onnxattr.compile(model, method, neuron="all", **params)).run(["relevance"], {"x": x})[0]

    grad = run("gradient")
    np.testing.assert_allclose(grad, (1 - np.tanh(x @ w) ** 2) @ w.T / 4, rtol=1e-5)
    for chunk in (1, 3, 16):
        np.testing.assert_allclose(run("smoothgrad", noise_scale=0.0, augment_by_n=5, chunk_size=chunk), grad,
                                   rtol=1e-5, atol=1e-7)
    ig = run("integrated_gradients", steps=64, chunk_size=16)
    points = [(k / 64) * x for k in range(64)]
    want = x * np.mean([(1 - np.tanh(p @ w) ** 2) @ w.T / 4 for p in points], axis=0)
    np.testing.assert_allclose(ig, want, rtol=1e-4, atol=1e-6)


def _quantized_mlp(softmax_first: bool, scale: float = 0.01):
    """mlp's logits through an int8 QuantizeLinear -> DequantizeLinear (the output's range 0.01 * [-128, 127] clips
    the largest logits), with a Softmax before or after the quantization."""
    model, _ = mlp(softmax=False)
    graph = model.graph
    last = graph.output[0].name
    for node in graph.node:
        if last in node.output:
            node.output[list(node.output).index(last)] = "scores"
    graph.initializer.extend([helper.make_tensor("qs", TensorProto.FLOAT, [], [scale]),
                              helper.make_tensor("qz", TensorProto.INT8, [], [0])])
    chain = [("Softmax", {"axis": -1}), ("Q", {}), ("DQ", {})] if softmax_first else \
        [("Q", {}), ("DQ", {}), ("Softmax", {"axis": -1})]
    t = "scores"
    for k, (op, attrs) in enumerate(chain):
        out = last if k == len(chain) - 1 else f"t{k}"
        if op == "Q":
            graph.node.append(helper.make_node("QuantizeLinear", [t, "qs", "qz"], [out], name=f"q{k}"))
        elif op == "DQ":
            graph.node.append(helper.make_node("DequantizeLinear", [t, "qs", "qz"], [out], name=f"dq{k}"))
        else:
            graph.node.append(helper.make_node(op, [t], [out], name=f"sm{k}", **attrs))
        t = out
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("softmax_first", [False, True])
def test_a_trailing_quantization_is_looked_through(softmax_first):
    """The logits before a trailing QuantizeLinear -> DequantizeLinear (and a Softmax before or after it) are
    explained: the map is the float model's, where the quantized logits' straight-through gradient is 0 wherever
    the output's range clips them (mlp's largest logits exceed 1.27 here), which made all-zero maps (Grad-CAM of a
    ResNet18 quantized by onnxruntime). The outputs stay the quantized ones."""
    plain = onnxattr.create_analyzer("gradient", mlp(softmax=False)[0]).analyze(X * 10)
    model = _quantized_mlp(softmax_first)
    compiled = onnxattr.compile(model, "gradient")
    meta = {p.key: p.value for p in compiled.metadata_props}
    assert meta["onnxattr.explained"] == "scores"
    assert [o.name for o in compiled.graph.output] == [model.graph.output[0].name, "relevance"]
    quantized = onnxattr.create_analyzer("gradient", model).analyze(X * 10)
    np.testing.assert_allclose(quantized, plain, rtol=1e-5, atol=1e-7)
    logits = session(mlp(softmax=False)[0]).run(None, {"x": X * 10})[0]
    assert np.abs(logits).max(axis=1).min() > 1.3, "the largest logits must be clipped for the test to mean much"


def test_the_ops_looked_through_are_recorded():
    """onnxattr.through names what lies between the chosen output and the explained tensor, so a reader of the
    output's values (onnxattr compare) tells probabilities from quantized scores."""
    def through(model):
        meta = {p.key: p.value for p in onnxattr.compile(model, "gradient").metadata_props}
        return meta.get("onnxattr.through")

    assert through(mlp(softmax=True)[0]) == "Softmax"
    assert through(mlp(softmax=False)[0]) is None
    assert through(_quantized_mlp(softmax_first=False)) == "Softmax,QuantizeLinear"
    assert through(_quantized_mlp(softmax_first=True)) == "QuantizeLinear,Softmax"
