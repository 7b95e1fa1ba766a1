"""onnxattr/fold.py: folding on the proto gives what onnx-graphsurgeon's folder gives, faster."""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxattr import canonicalize as canon_module
from onnxattr.canonicalize import FOLD_SIZE_LIMIT, canonicalize, castlike_to_cast, fold_with_graphsurgeon, upgrade_opset
from onnxattr.fold import FoldError, can_fold_in_proto, fold_in_proto
from onnxattr.graph import GraphBuilder
from tests.models import single_io_model

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
ZOO = sorted(f for f in os.listdir(LIGHT) if f.endswith(".onnx"))


def summary(model):
    nodes = [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return nodes, inits, [i.name for i in model.graph.input], [o.name for o in model.graph.output]


def run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("name", ZOO)
def test_same_graph_as_graphsurgeon(name):
    """The reference is graphsurgeon's fold + cleanup: the same nodes, the same initializers bit for bit."""
    model = castlike_to_cast(upgrade_opset(onnx.load(os.path.join(LIGHT, name)), name))
    if not can_fold_in_proto(model):
        assert any(n.op_type in ("Shape", "Size") for n in model.graph.node)
        pytest.skip("has Shape/Size: graphsurgeon's folder runs")
    ours, ref = summary(fold_in_proto(model, FOLD_SIZE_LIMIT)), summary(fold_with_graphsurgeon(model))
    assert ours[0] == ref[0]
    assert ours[1].keys() == ref[1].keys()
    for key, value in ref[1].items():
        assert ours[1][key].dtype == value.dtype
        np.testing.assert_array_equal(ours[1][key], value)
    assert ours[2:] == ref[2:]


def chain_model():
    """x + Tile(Mul(c, 2), reps) and an Identity, a Dropout and a dead node on the way."""
    nodes = [helper.make_node("Mul", ["c", "two"], ["c2"]),
             helper.make_node("Tile", ["c2", "reps"], ["tiled"]),
             helper.make_node("Identity", ["x"], ["x_id"]),
             helper.make_node("Dropout", ["x_id"], ["x_d"]),
             helper.make_node("Neg", ["x"], ["unused"]),
             helper.make_node("Add", ["x_d", "tiled"], ["y"])]
    inits = {"c": np.arange(4, dtype=np.float32), "two": np.array(2, np.float32),
             "reps": np.array([8], np.int64)}
    return single_io_model(nodes, inits, ["N", 32], ["N", 32])


def test_folds_bypasses_and_drops_dead_nodes():
    model = chain_model()
    folded = fold_in_proto(model, FOLD_SIZE_LIMIT)
    assert [n.op_type for n in folded.graph.node] == ["Add"]
    assert list(folded.graph.node[0].input) == ["x", "tiled"]
    assert [t.name for t in folded.graph.initializer] == ["tiled"]
    np.testing.assert_array_equal(numpy_helper.to_array(folded.graph.initializer[0]), np.tile(np.arange(4) * 2, 8))
    x = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)
    np.testing.assert_array_equal(run(folded, {"x": x})[0], run(model, {"x": x})[0])
    assert len(model.graph.node) == 6  # the input model is not touched


def test_tensor_over_the_limit_keeps_its_producer():
    """Tile's 128-byte output exceeds a 100-byte limit: Tile stays, its 16-byte input is folded."""
    folded = fold_in_proto(chain_model(), 100)
    assert [n.op_type for n in folded.graph.node] == ["Tile", "Add"]
    assert sorted(t.name for t in folded.graph.initializer) == ["c2", "reps"]
    x = np.ones((1, 32), np.float32)
    np.testing.assert_array_equal(run(folded, {"x": x})[0], run(chain_model(), {"x": x})[0])


def test_dropout_with_a_read_mask_and_random_ops_stay():
    nodes = [helper.make_node("Dropout", ["x"], ["x_d", "mask"]),
             helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("RandomUniform", [], ["r"], shape=[1, 3]),
             helper.make_node("Mul", ["x_d", "m"], ["p"]),
             helper.make_node("Add", ["p", "r"], ["y"])]
    model = single_io_model(nodes, {}, ["N", 3], ["N", 3])
    folded = fold_in_proto(model, FOLD_SIZE_LIMIT)
    assert [n.op_type for n in folded.graph.node] == ["Dropout", "Cast", "RandomUniform", "Mul", "Add"]


def test_identity_that_is_a_graph_output_stays():
    model = single_io_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["y"])],
                            {}, ["N", 3], ["N", 3])
    assert [n.op_type for n in fold_in_proto(model, FOLD_SIZE_LIMIT).graph.node] == ["Relu", "Identity"]


def test_initializers_listed_as_inputs_become_constants():
    model = chain_model()
    model.graph.input.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, [4]))
    folded = fold_in_proto(model, FOLD_SIZE_LIMIT)
    assert [i.name for i in folded.graph.input] == ["x"]
    assert [n.op_type for n in folded.graph.node] == ["Add"]


def test_shapes_and_control_flow_go_to_graphsurgeon():
    shape = single_io_model([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])],
                            {}, [2, 3], [2, 3])
    assert not can_fold_in_proto(shape)
    body = helper.make_graph([helper.make_node("Relu", ["x"], ["b"])], "body", [],
                             [helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3])])
    branch = single_io_model([helper.make_node("If", ["cond"], ["y"], then_branch=body, else_branch=body)],
                             {"cond": np.array(True)}, [2, 3], [2, 3])
    assert not can_fold_in_proto(branch)
    assert can_fold_in_proto(chain_model())


def test_evaluation_failure_falls_back_to_graphsurgeon(monkeypatch):
    def fail(*args):
        raise FoldError("no")

    monkeypatch.setattr("onnxattr.fold.evaluate", fail)
    with pytest.raises(FoldError):
        fold_in_proto(chain_model(), FOLD_SIZE_LIMIT)
    calls = []
    real = canon_module.fold_with_graphsurgeon
    monkeypatch.setattr(canon_module, "fold_with_graphsurgeon", lambda m: calls.append(1) or real(m))
    canon = canonicalize(chain_model())
    assert calls == [1]
    assert [n.op_type for n in canon.graph.node] == ["Add"]


def test_graphsurgeon_path_keeps_a_dropout_whose_mask_is_read():
    """The Shape node sends this model to graphsurgeon's folder; dropping the Dropout there would leave
    its mask without a producer."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Reshape", ["x", "s"], ["xr"]),
             helper.make_node("Dropout", ["xr"], ["x_d", "mask"]),
             helper.make_node("Cast", ["mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["x_d", "m"], ["y"])]
    model = single_io_model(nodes, {}, [2, 3], [2, 3])
    assert not can_fold_in_proto(model)
    canon = canonicalize(model)
    assert "Dropout" in [n.op_type for n in canon.graph.node]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(run(canon, {"x": x})[0], run(model, {"x": x})[0])


def test_what_a_loop_body_reads_is_kept_and_renamed():
    """fold.py runs on control flow too when graphsurgeon crashes (a constant sequence): a Constant only a Loop body
    reads must become an initializer, not be dropped as unread, and an Identity's output a body reads must be renamed
    inside the body (a TorchScript MViT's Loops read their split sizes that way; the unrolled model then read names
    nothing defined)."""
    n = helper.make_node
    body = helper.make_graph(
        [n("Gather", ["sizes", "i"], ["size"], axis=0), n("Cast", ["size"], ["size_f"], to=TensorProto.FLOAT),
         n("Mul", ["acc", "size_f"], ["scaled"]), n("Add", ["scaled", "offset"], ["acc_out"]),
         n("Identity", ["cond"], ["cond_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("acc", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, ["N", 3])])
    nodes = [n("Constant", [], ["sizes"], value=numpy_helper.from_array(np.array([2, 3, 4], np.int64))),
             n("Constant", [], ["half"], value=numpy_helper.from_array(np.array(0.5, np.float32))),
             n("Mul", ["half", "two"], ["one_f"]), n("Identity", ["one_f"], ["offset"]),
             n("Loop", ["trips", "", "x"], ["y"], body=body)]
    model = single_io_model(nodes, {"two": np.array(2.0, np.float32), "trips": np.array(3, np.int64)},
                            ["N", 3], ["N", 3])
    folded = fold_in_proto(model, FOLD_SIZE_LIMIT)
    defined = {t.name for t in folded.graph.initializer} | {o for node in folded.graph.node for o in node.output}
    loop = next(node for node in folded.graph.node if node.op_type == "Loop")
    body_reads = {i for inner in loop.attribute[0].g.node for i in inner.input}
    assert {"sizes"} <= defined and "offset" not in body_reads and "Identity" not in [
        node.op_type for node in folded.graph.node]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(ort.InferenceSession(folded.SerializeToString()).run(None, {"x": x})[0], want,
                               rtol=1e-6)


def test_a_dequantize_of_constants_stays_a_node():
    """DequantizeLinear of int8 codes is not folded into a float weight: onnxruntime fuses DequantizeLinear ->
    Conv -> QuantizeLinear into integer kernels as in the original model, where a float weight it finds there it
    quantizes again with scales of its own (which changed a quantized net's activations by whole steps)."""
    from tests.test_graph import _weights_through_dequantize

    model = _weights_through_dequantize()[0]
    folded = fold_in_proto(model, FOLD_SIZE_LIMIT)
    assert [n.op_type for n in folded.graph.node] == ["DequantizeLinear", "DequantizeLinear", "MatMul", "Add"]
    x = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)
    np.testing.assert_array_equal(run(folded, {"x": x})[0], run(model, {"x": x})[0])


def _quantized_conv(branch: bool, relu: bool = False):
    """x -> Q -> DQ -> Conv(DQ(int8 W, per channel), DQ(int32 b)) [-> Relu] -> Q -> DQ -> y, as onnxruntime's
    quantizer writes a layer; ``branch``: the Conv's output is also an output of its own (as a backward reads it)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8), "w_q"),
             numpy_helper.from_array(np.array([0.01, 0.02, 0.015, 0.03], np.float32), "w_s"),
             numpy_helper.from_array(np.zeros(4, np.int8), "w_z"),
             numpy_helper.from_array(np.array([-300, 0, 250, 1000], np.int32), "b_q"),
             numpy_helper.from_array(np.array([5e-4, 1e-3, 7.5e-4, 1.5e-3], np.float32), "b_s"),
             numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.uint8(128), "z"),
             numpy_helper.from_array(np.float32(0.2), "s_y"), numpy_helper.from_array(np.uint8(100), "z_y")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=0),
             helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], axis=0),
             helper.make_node("Conv", ["xd", "w", "b"], ["c"], pads=[1] * 4)]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["r"]))
    nodes += [helper.make_node("QuantizeLinear", ["r" if relu else "c", "s_y", "z_y"], ["cq"]),
              helper.make_node("DequantizeLinear", ["cq", "s_y", "z_y"], ["y"])]
    outputs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ["y"] + ["c"] * branch]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 5, 5])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run_as_written(model, x):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})


def test_weights_of_a_layer_read_in_float_become_constants():
    """Where the Conv's float output has another reader, onnxruntime cannot fuse the layer and would dequantize
    its weight at every run: the weight and bias become float constants (the codes go), the same values, so the
    outputs are the graph's as written bit for bit."""
    from onnxattr.fold import fold_unfused_dequantize

    model = _quantized_conv(branch=True)
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    assert fold_unfused_dequantize(folded.graph, GraphBuilder(model).value) == 2
    assert [n.op_type for n in folded.graph.node].count("DequantizeLinear") == 2  # the activations' stay
    inits = {t.name: numpy_helper.to_array(t) for t in folded.graph.initializer}
    assert inits["w"].dtype == np.float32 and "w_q" not in inits and "b_q" not in inits
    x = np.random.default_rng(1).normal(size=(2, 3, 5, 5)).astype(np.float32)
    for got, want in zip(_run_as_written(folded, x), _run_as_written(model, x)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("relu", [False, True])
def test_a_layer_onnxruntime_fuses_keeps_its_dequantized_weight(relu):
    """Conv [-> Relu] -> QuantizeLinear and nothing else reading: onnxruntime fuses it into an integer kernel, and
    would quantize a float weight found there again with scales of its own, so the DequantizeLinear nodes stay."""
    from onnxattr.fold import fold_unfused_dequantize

    model = _quantized_conv(branch=False, relu=relu)
    assert fold_unfused_dequantize(model.graph, GraphBuilder(model).value) == 0
    assert [n.op_type for n in model.graph.node].count("DequantizeLinear") == 4


def test_the_models_own_layer_keeps_its_dequantized_weight_while_its_twin_reads_floats():
    """twin_forward's graph: the model's own nodes first (``own`` of them), then a twin Conv whose float output a
    backward reads. The own Conv keeps reading the DequantizeLinear nodes though it cannot be fused here either (it
    runs as in the model); the twin reads float constants of the same values."""
    from onnxattr.fold import fold_unfused_dequantize

    model = _quantized_conv(branch=False)
    own = len(model.graph.node)
    model.graph.node.append(helper.make_node("Conv", ["xd", "w", "b"], ["twin_c"], pads=[1] * 4))
    model.graph.output.append(helper.make_tensor_value_info("twin_c", TensorProto.FLOAT, None))
    model.graph.output.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))  # no fusion for own
    before = onnx.ModelProto()
    before.CopyFrom(model)
    assert fold_unfused_dequantize(model.graph, GraphBuilder(before).value, own) == 2
    conv, twin = [n for n in model.graph.node if n.op_type == "Conv"]
    assert list(conv.input) == ["xd", "w", "b"] and list(twin.input) == ["xd", "w/float", "b/float"]
    assert [n.op_type for n in model.graph.node].count("DequantizeLinear") == 4
    x = np.random.default_rng(1).normal(size=(2, 3, 5, 5)).astype(np.float32)
    y, twin_c, c = _run_as_written(model, x)
    np.testing.assert_array_equal(twin_c, c)
    np.testing.assert_array_equal(y, _run_as_written(before, x)[0])
