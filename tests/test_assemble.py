"""onnxattr/assemble.py: where the data goes (data_input, metadata onnxattr.data) and the names the compiled
model adds (target, relevance), which may not clash with the model's own."""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.assemble import data_input
from onnxattr.errors import UnsupportedModelError
from onnxattr.twin_forward import TWIN


def token_model(inputs_first_flag: bool, in_if: bool, extra_output: str | None = None):
    """ids (int64) -> Gather(E) -> emb -> mean -> W -> y, with a bool flag input; the Gather sits inside
    an If on the flag when ``in_if``."""
    rng = np.random.default_rng(0)
    vi = helper.make_tensor_value_info
    gather = helper.make_node("Gather", ["E", "ids"], ["emb" if not in_if else "e_in"])
    nodes = [gather]
    if in_if:
        then = helper.make_graph([gather], "then", [], [vi("e_in", TensorProto.FLOAT, None)])
        other = helper.make_graph([helper.make_node("Gather", ["E", "ids"], ["e_out"])], "else", [],
                                  [vi("e_out", TensorProto.FLOAT, None)])
        nodes = [helper.make_node("If", ["flag"], ["emb"], then_branch=then, else_branch=other)]
    nodes += [helper.make_node("ReduceMean", ["emb", "time"], ["p"], keepdims=0),
              helper.make_node("MatMul", ["p", "W"], ["y"])]
    if extra_output:
        nodes.append(helper.make_node("Identity", ["p"], [extra_output]))
    inputs = [vi("ids", TensorProto.INT64, ["N", 5]), vi("flag", TensorProto.BOOL, [])]
    outputs = [vi("y", TensorProto.FLOAT, ["N", 3])] + ([vi(extra_output, TensorProto.FLOAT, ["N", 4])]
                                                         if extra_output else [])
    g = helper.make_graph(nodes, "tok", inputs[::-1] if inputs_first_flag else inputs, outputs,
                          [numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "E"),
                           numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W"),
                           numpy_helper.from_array(np.array([1], np.int64), "time")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("flag_first", [False, True])
@pytest.mark.parametrize("in_if", [False, True])
def test_an_intermediate_takes_its_data_through_the_input_it_is_computed_from(flag_first, in_if):
    """Also when it is computed inside an If (the input is read in its branches), and never through a bool
    flag that it depends on too."""
    model = token_model(flag_first, in_if)
    assert data_input(model, "emb") == "ids" and data_input(model, "ids") == "ids"
    compiled = onnxattr.compile(model, "gradient", input="emb")
    assert {p.key: p.value for p in compiled.metadata_props}["onnxattr.data"] == "ids"
    ids = np.random.default_rng(1).integers(0, 10, (2, 5))
    r = onnxattr.create_analyzer("gradient", model, input="emb").analyze(ids, inputs={"flag": np.array(True)})
    assert r.shape == (2, 5, 4) and np.isfinite(r).all()


@pytest.mark.parametrize("name,neuron", [("target", "index"), ("relevance", "max")])
def test_a_model_tensor_named_like_what_the_compiled_model_adds_is_refused(name, neuron):
    model = token_model(False, False, extra_output=name)
    with pytest.raises(UnsupportedModelError, match=f"has a tensor named '{name}'"):
        onnxattr.compile(model, "gradient", input="emb", neuron=neuron)
    if name == "target":
        onnxattr.compile(model, "gradient", input="emb", neuron="max")  # only --neuron index adds target


def test_the_data_for_an_integer_input_keeps_its_type_and_range():
    """uint8 ids are sent as uint8 (they were sent as float32, which onnxruntime refused); ids beyond
    the input's integer type are a data error (they wrapped around)."""
    model = token_model(False, False)
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    model.graph.node.insert(0, helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64))
    model.graph.node[1].input[1] = "ids64"
    analyzer = onnxattr.create_analyzer("gradient", model, input="emb")
    ids = np.random.default_rng(1).integers(0, 10, (2, 5))
    r = analyzer.analyze(ids.astype(np.uint8), inputs={"flag": np.array(True)})
    np.testing.assert_array_equal(analyzer.analyze(ids, inputs={"flag": np.array(True)}), r)
    with pytest.raises(onnxattr.errors.DataError, match="beyond its range"):
        analyzer.analyze(ids + 256, inputs={"flag": np.array(True)})


# keep=: the relevance at hidden tensors, as outputs relevance:NAME after the map

def _kept_run(method, keep, x, **params):
    import onnxruntime as ort

    from tests.models import mlp

    compiled = onnxattr.compile(mlp(softmax=False)[0], method, keep=keep, **params)
    sess = ort.InferenceSession(compiled.SerializeToString())
    names = [o.name for o in sess.get_outputs()]
    return compiled, dict(zip(names, sess.run(None, {"x": x}))), names


def test_kept_tensors_are_outputs_after_the_map_with_their_relevance():
    """mlp: h = x W1, h2 = h + b1, r = relu(h2), z = r W2. The gradient at r is W2's selected column, at h2 that
    masked by r > 0, at x the map itself and at z the seed; lrp.z's relevance at r and h2 is the same (the
    Relu passes it) and sums to the logit (a bias-free layer above conserves it)."""
    from tests.models import mlp, mlp_logits

    w1, b1, w2 = mlp(softmax=False)[1]
    x = np.random.default_rng(4).standard_normal((5, 6)).astype(np.float32)
    logits = mlp_logits(x, (w1, b1, w2))
    top = logits.argmax(1)
    compiled, out, names = _kept_run("gradient", ["r", "h2", "x", "z"], x)
    assert names == ["z", "relevance", "relevance:r", "relevance:h2", "relevance:x", "relevance:z"]
    np.testing.assert_allclose(out["relevance:r"], w2[:, top].T, rtol=1e-6)
    np.testing.assert_allclose(out["relevance:h2"], w2[:, top].T * (x @ w1 + b1 > 0), rtol=1e-6)
    np.testing.assert_array_equal(out["relevance:x"], out["relevance"])
    np.testing.assert_array_equal(out["relevance:z"], np.eye(3, dtype=np.float32)[top])
    assert {p.key: p.value for p in compiled.metadata_props}["onnxattr.keep"] == repr(["r", "h2", "x", "z"])
    _, out, _ = _kept_run("lrp.z", ["r", "h2"], x)
    np.testing.assert_array_equal(out["relevance:r"], out["relevance:h2"])
    np.testing.assert_allclose(out["relevance:r"].sum(1), logits[np.arange(5), top], rtol=1e-5)
    _, out, _ = _kept_run("input_t_gradient", "r", x)  # one name; the tensor times the gradient there
    np.testing.assert_allclose(out["relevance:r"], np.maximum(x @ w1 + b1, 0) * w2[:, top].T, rtol=1e-5, atol=1e-6)


def test_keep_refusals_name_the_problem():
    from onnxattr.errors import SelectionError, UsageError
    from tests.models import mlp

    model = mlp(softmax=False)[0]
    with pytest.raises(SelectionError, match=r"no tensor 'h3' between input 'x' and output 'z'.*did you mean h\?"):
        onnxattr.compile(model, "lrp.epsilon", keep=["h3"])
    with pytest.raises(SelectionError, match="tensor 'W1' is not between"):  # a weight: not on the path
        onnxattr.compile(model, "lrp.epsilon", keep=["W1"])
    # a trailing Softmax is looked through: its output is not explained, and the message says what is
    with pytest.raises(SelectionError, match="tensor 'p' is not between.*the explained tensor is 'z', from which a "
                                             "Softmax or a trailing quantization computes 'p'"):
        onnxattr.compile(mlp()[0], "gradient", keep=["p"])
    # a model tensor already named like the output keep would add
    clash = mlp(softmax=False)[0]
    clash.graph.node[2].output[0] = "relevance:h2"
    clash.graph.node[3].input[0] = "relevance:h2"
    with pytest.raises(UnsupportedModelError, match="a tensor named 'relevance:h2', the name of the compiled model's "
                                                    "output for the relevance at 'h2'"):
        onnxattr.compile(clash, "gradient", keep=["h2"])
    with pytest.raises(UsageError, match="keep: smoothgrad does not compute its map in one reverse pass.*lrp"):
        onnxattr.compile(model, "smoothgrad", keep=["r"])
    with pytest.raises(UsageError, match="keep takes tensor names"):
        onnxattr.compile(model, "gradient", keep=[3])


def test_a_kept_name_an_identity_gave_is_read_where_its_value_is():
    """canonicalize drops Identity and Dropout: a name one of them gave (h_id = Identity(h)) is kept at h,
    under the name asked for."""
    import onnxruntime as ort

    from tests.models import mlp

    model = mlp(softmax=False)[0]
    model.graph.node.insert(1, helper.make_node("Identity", ["h"], ["h_id"]))
    model.graph.node[2].input[0] = "h_id"  # Add(h_id, b1)
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    run = lambda m, keep: dict(zip(  # noqa: E731
        ["z", "relevance", "kept"],
        ort.InferenceSession(onnxattr.compile(m, "gradient", keep=keep).SerializeToString()).run(None, {"x": x})))
    got = run(model, ["h_id"])
    assert [o.name for o in onnxattr.compile(model, "gradient", keep=["h_id"]).graph.output][-1] == "relevance:h_id"
    np.testing.assert_array_equal(got["kept"], run(mlp(softmax=False)[0], ["h"])["kept"])


def test_keep_at_a_scalar_explained_output_is_a_scalar_output():
    """A loss (rank 0) kept: its relevance output is declared with shape [] (an output without a shape fails the
    checker); the gradient carried there is the seed, 1."""
    from tests.models import single_io_model

    nodes = [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("ReduceMean", ["z"], ["y"], keepdims=0)]
    model = single_io_model(nodes, {"W": np.ones((3, 2), np.float32)}, ["N", 3], [])
    compiled = onnxattr.compile(model, "gradient", keep=["y"])
    out = {o.name: o for o in compiled.graph.output}["relevance:y"]
    assert out.type.tensor_type.HasField("shape") and len(out.type.tensor_type.shape.dim) == 0
    sess = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    kept = sess.run(["relevance:y"], {"x": np.ones((4, 3), np.float32)})[0]
    assert kept.shape == () and kept == 1.0


def test_a_quantized_net_keeps_its_own_layers_and_its_twin_reads_float_weights():
    """The compiled gradient of a quantized net computes its outputs with the model's own nodes, every weight's
    DequantizeLinear kept (onnxruntime fuses them into integer kernels as in the model), and its backward reads a
    twin of the forward (onnxattr.twin_forward) whose layers, read in float, hold their weights as float constants
    (onnxattr.fold.fold_unfused_dequantize), packed once instead of dequantized at every run. The outputs are the
    model's bit for bit, as written and as onnxruntime optimizes them."""
    path = os.path.join(os.path.dirname(__file__), "oracles", "data", "quant_cnn.onnx")
    model = onnx.load(path)

    def dequantized_constants(m):
        inits = {t.name for t in m.graph.initializer}
        return sum(n.op_type == "DequantizeLinear" and n.input[0] in inits for n in m.graph.node)

    def float_weights(m):  # the twin's layers that read a float weight
        weights = {t.name for t in m.graph.initializer if t.name.endswith("/float")}
        return sorted(n.op_type for n in m.graph.node
                      if n.output[0].startswith(TWIN + "/") and weights.intersection(n.input[1:2]))

    assert dequantized_constants(model) == 4
    compiled = onnxattr.compile(model, "gradient")
    assert dequantized_constants(compiled) == 4
    assert float_weights(compiled) == ["Conv", "Conv", "Gemm", "Gemm"]
    # occlusion reads the twin's scores before the output's quantizer only: that layer alone runs in float there
    assert float_weights(onnxattr.compile(model, "occlusion")) == ["Gemm"]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    x = np.random.default_rng(0).random([2] + dims, dtype=np.float32)
    feeds = {model.graph.input[0].name: x}
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        want = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]).run(None, feeds)
        got = ort.InferenceSession(compiled.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
            [o.name for o in model.graph.output], feeds)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
