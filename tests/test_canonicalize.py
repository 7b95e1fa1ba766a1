"""onnxattr/canonicalize.py: the canonical model computes the same outputs as the original."""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnxattr.canonicalize import FOLD_SIZE_LIMIT, canonicalize, default_opset
from tests.models import mlp

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
ZOO = sorted(f for f in os.listdir(LIGHT) if f.endswith(".onnx"))


def run(model, feeds):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_canonical_outputs_unchanged(name):
    model = onnx.load(os.path.join(LIGHT, name))
    canon = canonicalize(model)
    assert default_opset(canon) >= 17
    assert not any(n.op_type in ("Constant", "Identity", "Dropout") for n in canon.graph.node)
    # weight fills fold unless larger than the fold limit (vgg19's 411 MB fc6 stays a ConstantOfShape)
    for n in canon.graph.node:
        if n.op_type == "ConstantOfShape":
            size = np.prod(onnx.numpy_helper.to_array(next(t for t in canon.graph.initializer if t.name == n.input[0])))
            assert size * 4 > FOLD_SIZE_LIMIT
    inits = {t.name for t in model.graph.initializer}
    inp = next(i for i in model.graph.input if i.name not in inits)
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    for a, b in zip(run(model, {inp.name: x}), run(canon, {inp.name: x})):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(a).max()))


def test_identity_dropout_dropped_and_shapes_inferred():
    m, _ = mlp()
    g = m.graph
    g.node.insert(1, onnx.helper.make_node("Identity", ["h"], ["h_id"]))
    g.node[2].input[0] = "h_id"
    g.node.insert(3, onnx.helper.make_node("Dropout", ["h2"], ["h2_d"]))
    g.node[4].input[0] = "h2_d"
    canon = canonicalize(m)
    assert [n.op_type for n in canon.graph.node] == ["MatMul", "Add", "Relu", "MatMul", "Softmax"]
    assert {vi.name for vi in canon.graph.value_info} >= {"h", "r", "z"}
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    np.testing.assert_allclose(run(m, {"x": x})[0], run(canon, {"x": x})[0], rtol=1e-6)


def test_castlike_with_known_type_becomes_cast_and_folds():
    """dynamo-exported Conv biases are CastLike(constant, activation): they must fold to initializers."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("CastLike", ["c", "r"], ["cl"]),
             helper.make_node("Add", ["r", "cl"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(np.array([1.0, 2.0, 3.0], np.float64), "c")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    canon = canonicalize(model)
    assert [n.op_type for n in canon.graph.node] == ["Relu", "Add"]
    assert canon.graph.initializer[0].data_type == TensorProto.FLOAT
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(run(canon, {"x": x})[0], run(model, {"x": x})[0])


def test_folding_does_not_leak_onnxruntime_warnings(capfd):
    """graphsurgeon folds with onnxruntime; its optimizer's warnings about that temporary graph
    (light_densenet121 gives 'UnsqueezeElimination cannot remove node') must not reach the user's terminal."""
    canonicalize(onnx.load(os.path.join(LIGHT, "light_densenet121.onnx")))
    assert "onnxruntime" not in capfd.readouterr().err


def test_generated_node_names_do_not_take_a_name_the_model_uses():
    """A user's node named "MatMul_2" and an unnamed MatMul at index 2, whose generated name would be the same:
    every name stays unique (onnxruntime refuses two nodes of one name; the rules are looked up by name)."""
    import onnxattr
    from onnx import helper

    from tests.models import single_io_model

    w = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="MatMul_2"), helper.make_node("Tanh", ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "W"], ["y"])]
    model = single_io_model(nodes, {"W": w}, ["N", 4], ["N", 4])
    names = [n.name for n in canonicalize(model).graph.node]
    assert len(set(names)) == len(names) and "MatMul_2" in names
    compiled = onnxattr.compile(model, "gradient")
    sess = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.ones((2, 4), np.float32)
    assert sess.run(["relevance"], {"x": x})[0].shape == (2, 4)



def test_a_model_with_subgraphs_is_not_changed_by_canonicalize():
    """graphsurgeon, folding an If of a known condition, renamed the branch's initializers and the outer ones
    it reads in the proto it had imported: the caller's model then read names it no longer had."""
    from onnx import TensorProto, helper, numpy_helper

    def branch(name, scale):
        nodes = [helper.make_node("Mul", ["x", "s"], ["xs"]), helper.make_node("Mul", ["xs", "k"], [name])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", 3])],
                                 [numpy_helper.from_array(np.array(scale, np.float32), "s")])

    g = helper.make_graph([helper.make_node("Shape", ["x"], ["shape"]),
                           helper.make_node("Gather", ["shape", "one"], ["width"]),
                           helper.make_node("Greater", ["width", "one"], ["c"]),  # 3 > 1
                           helper.make_node("If", ["c"], ["y"], then_branch=branch("t", 2),
                                            else_branch=branch("e", 5))],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(np.array(3, np.float32), "k"),
                           numpy_helper.from_array(np.array(1, np.int64), "one")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    canonical = canonicalize(model)
    assert model.SerializeToString() == before
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for m in (model, canonical):
        got = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_array_equal(got, x * 6)


def test_a_constant_sequence_does_not_crash_folding():
    """SequenceEmpty feeding a SequenceInsert of data (torchvision's MViT as the TorchScript exporter writes it):
    graphsurgeon's folder asked the empty sequence, a list, for its nbytes and crashed; fold.py leaves sequences
    alone, then sequences.py turns the list of one known tensor into a Concat, and the model keeps its outputs."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("SequenceEmpty", [], ["seq0"], dtype=TensorProto.FLOAT),
             helper.make_node("Identity", ["x"], ["x1"]),
             helper.make_node("SequenceInsert", ["seq0", "x1"], ["seq1"]),
             helper.make_node("ConcatFromSequence", ["seq1"], ["y"], axis=0)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    canonical = canonicalize(model)
    assert [n.op_type for n in canonical.graph.node] == ["Concat"]
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    got = ort.InferenceSession(canonical.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(got[0], x)


def test_shapes_known_only_after_folding_are_folded_in_turn():
    """A TorchScript Swin pads its windows by (w - L % w) % w, computed from Shape(x) with Mod (which constant
    folding evaluates, static_dims does not), then reshapes by Shape(padded)[1] / w: the reshape's target is
    known only after folding made the padding a constant, and static_dims ran again (the Casts after each Shape,
    as the exporter writes them, stop graphsurgeon's own shape folding). Its shape is then known, and the outputs
    are the original's."""
    from onnx import TensorProto, helper, numpy_helper

    n = helper.make_node
    consts = {"one": np.array(1, np.int64), "w": np.array(3, np.int64), "axis0": np.array([0], np.int64),
              "zeros4": np.zeros(4, np.int64), "zero1": np.zeros(1, np.int64), "tail": np.array([3, 4], np.int64),
              "bi": np.array([0], np.int64), "axis2": np.array([2], np.int64)}
    nodes = [n("Shape", ["x"], ["s0"]), n("Cast", ["s0"], ["s"], to=TensorProto.INT64),
             n("Gather", ["s", "one"], ["length"], axis=0),
             n("Mod", ["length", "w"], ["rest"]), n("Sub", ["w", "rest"], ["short"]), n("Mod", ["short", "w"], ["pad"]),
             n("Unsqueeze", ["pad", "axis0"], ["pad1"]), n("Concat", ["zeros4", "pad1", "zero1"], ["pads"], axis=0),
             n("Pad", ["x", "pads"], ["padded"]), n("Shape", ["padded"], ["ps0"]),
             n("Cast", ["ps0"], ["ps"], to=TensorProto.INT64),
             n("Gather", ["ps", "one"], ["plen"], axis=0), n("Div", ["plen", "w"], ["windows"]),
             n("Unsqueeze", ["windows", "axis0"], ["windows1"]), n("Gather", ["ps", "bi"], ["batch"], axis=0),
             n("Concat", ["batch", "windows1", "tail"], ["target"], axis=0),
             n("Reshape", ["padded", "target"], ["grid"], name="windows"), n("ReduceSum", ["grid", "axis2"], ["y"], keepdims=0)]
    g = helper.make_graph(nodes, "swin_pad", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, 4])],
                          [numpy_helper.from_array(v, k) for k, v in consts.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    canon = canonicalize(model)
    shapes = {vi.name: [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in canon.graph.value_info}
    reshape = next(node for node in canon.graph.node if node.op_type == "Reshape")
    assert shapes[reshape.output[0]][1:] == [2, 3, 4]
    x = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    got = ort.InferenceSession(canon.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, want)


def test_an_upgrade_that_changes_the_inputs_is_refused():
    """onnx's version converter takes Scan-8 to Scan-9 by dropping its batch axis from the graph's inputs and outputs
    (onnx's test_scan_sum: 'initial' [1, 2] became [2]), so the compiled model refused the model's own data at run
    time; now compiling says so, with the input, both shapes and the opset to export with."""
    from onnx import TensorProto, helper

    from onnxattr.errors import UnsupportedModelError

    body = helper.make_graph(
        [helper.make_node("Add", ["sum_in", "next"], ["sum_out"]),
         helper.make_node("Identity", ["sum_out"], ["scan_out"])], "body",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("sum_in", "next")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("sum_out", "scan_out")])
    scan = helper.make_node("Scan", ["", "initial", "x"], ["y", "z"], num_scan_inputs=1, body=body)
    graph = helper.make_graph([scan], "g", [helper.make_tensor_value_info("initial", TensorProto.FLOAT, [1, 2]),
                                            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 3, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)], ir_version=4)
    with pytest.raises(UnsupportedModelError, match=r"opset 8 to 17 changes 'initial' from \[1, 2\] to \[2\] "
                                                    r"\(Scan-8 .*export it with opset 17 or newer"):
        canonicalize(model)


@pytest.mark.parametrize("elem,dtype", [(onnx.TensorProto.DOUBLE, np.float64), (onnx.TensorProto.FLOAT16, np.float16)])
def test_an_upgraded_pad_value_takes_the_data_type(elem, dtype):
    """onnx's version converter writes Pad-2's value attribute as a float32 constant, whatever the data's type: a
    float64 (or float16) export at an old opset then failed onnx's checker as an internal error. Its fill value
    now takes the data's type, and the gradient of sum(Pad(x) * w) is w's interior."""
    from onnx import helper, numpy_helper

    import onnxattr

    w = np.arange(1.0, 21.0).reshape(1, 1, 4, 5).astype(dtype)
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x"], ["p"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.5, mode="constant"),
         helper.make_node("Mul", ["p", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", elem, [1, 1, 2, 3])],
        [helper.make_tensor_value_info("y", elem, [1, 1, 4, 5])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 6)], ir_version=4)
    compiled = onnxattr.compile(model, "gradient", neuron="all")
    x = np.ones((1, 1, 2, 3), dtype)
    got = ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]
    np.testing.assert_array_equal(got, w[:, :, 1:3, 1:4])


def test_a_value_info_that_contradicts_a_graph_output_is_dropped():
    """onnxconverter-common's float16 conversion with keep_io_types casts the last float16 tensor to a float32
    output and leaves a value_info declaring that output float16. The graph's own output declaration holds (the
    stale entry took its place in onnx-graphsurgeon's copy, and the compiled model failed onnx's checker as an
    internal error); the map equals the model's without that entry."""
    from onnx import TensorProto, helper, numpy_helper

    import onnxattr

    w = np.random.default_rng(2).standard_normal((4, 3)).astype(np.float16)
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["xc"], to=TensorProto.FLOAT16),  # a Shape: canonicalize folds the graph
         helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Reshape", ["xc", "shape"], ["xh"]),
         helper.make_node("MatMul", ["xh", "w"], ["yh"]),
         helper.make_node("Cast", ["yh"], ["y"], to=TensorProto.FLOAT)],
        "g",
        [vi("x", TensorProto.FLOAT, ["N", 4])], [vi("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "w")])
    clean = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    stale = onnx.ModelProto.FromString(clean.SerializeToString())
    stale.graph.value_info.append(vi("y", TensorProto.FLOAT16, ["N", 3]))
    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    maps = [ort.InferenceSession(onnxattr.compile(m, "gradient").SerializeToString()).run(["relevance"], {"x": x})[0]
            for m in (clean, stale)]
    assert np.abs(maps[0]).max() > 0
    np.testing.assert_array_equal(maps[1], maps[0])
