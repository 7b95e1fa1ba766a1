"""onnxattr/runtime.py: which execution provider really runs (onnxruntime falls back silently)."""

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxattr
from onnxattr.errors import UsageError
from onnxattr.runtime import ProviderFallbackWarning, Runner

MODEL = Path(__file__).resolve().parents[1] / "models" / "digits_cnn.onnx"


def test_cpu_runs_where_asked_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = Runner(onnx.load(MODEL), "cpu")
    assert r.providers == ["CPUExecutionProvider"]
    assert r.requested == ["CPUExecutionProvider"]
    assert r.fallback is None


def test_a_graph_over_the_node_limit_runs_without_the_memory_pattern(monkeypatch):
    """onnxruntime's memory-pattern planning on the first run grows faster than the graph (a long unrolled LSTM:
    58 s); graphs over MEM_PATTERN_NODE_LIMIT nodes go without it, others keep it (faster later runs)."""
    import onnxattr.runtime as runtime

    model = onnx.load(MODEL)
    assert Runner(model, "cpu").options.enable_mem_pattern
    monkeypatch.setattr(runtime, "MEM_PATTERN_NODE_LIMIT", len(model.graph.node) - 1)
    r = Runner(model, "cpu")
    assert not r.options.enable_mem_pattern
    x = np.zeros([d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim], np.float32)
    assert np.isfinite(r.run({r.input_names[0]: x})[0]).all()


def test_an_unavailable_provider_is_reported_with_what_ran_instead():
    with pytest.warns(ProviderFallbackWarning) as caught:
        r = Runner(onnx.load(MODEL), providers=["FakeExecutionProvider", "CPUExecutionProvider"])
    assert r.providers == ["CPUExecutionProvider"]
    assert "FakeExecutionProvider" in r.fallback and "runs this model on CPUExecutionProvider" in r.fallback
    assert str(caught[0].message) == r.fallback
    assert len(caught) == 1  # onnxruntime's own less clear warning is not repeated


def test_analyzer_with_a_fallback_still_explains_and_says_where_it_ran():
    x = np.load(MODEL.parent / "digits_sample.npy")[:2]
    with pytest.warns(ProviderFallbackWarning):
        a = onnxattr.create_analyzer("gradient", str(MODEL), providers=["FakeExecutionProvider",
                                                                        "CPUExecutionProvider"])
        r = a.analyze(x)
    assert r.shape == x.shape and np.isfinite(r).all()
    assert next(iter(a._runners.values())).providers == ["CPUExecutionProvider"]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available")
def test_cuda_without_onnxruntime_gpu_is_a_clear_usage_error():
    with pytest.raises(UsageError, match=r"device 'cuda' asked for.*pip uninstall -y onnxruntime && pip install onnxruntime-gpu"):
        Runner(onnx.load(MODEL), "cuda")


def test_a_missing_kernel_is_a_named_error_not_a_traceback(tmp_path, capsys):
    """onnxruntime's CPU provider has no float64 Conv: the CLI says so in one line, exits 5 and writes
    nothing."""
    from onnxattr.cli import main
    from onnxattr.errors import UnsupportedModelError
    from tests.lrp.nets import resnet_like
    from tests.test_dtypes import as_type

    model = as_type(resnet_like(bias=True), "float64")
    with pytest.raises(UnsupportedModelError, match="no float64 Conv"):
        Runner(onnxattr.compile(model, "gradient"), "cpu")
    onnx.save(model, tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", np.zeros((1, 2, 8, 8)))
    code = main(["explain", str(tmp_path / "m.onnx"), "-m", "gradient", "--data", str(tmp_path / "x.npy"),
                 "-o", str(tmp_path / "r.npy")])
    assert code == 5
    assert "Could not find an implementation for Conv" in capsys.readouterr().err
    assert not (tmp_path / "r.npy").exists()


def test_a_target_beyond_a_dynamic_output_is_named_and_a_models_own_index_error_is_not():
    """With a symbolic output size the target cannot be checked before the run: onnxruntime's index error in
    the seed's one-hot is reported as the target's, whichever exception class it arrives as; an index error in
    the model's own Gather stays onnxruntime's message."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxattr.errors import DataError

    table = numpy_helper.from_array(np.ones((10, 4), np.float32), "E")
    nodes = [helper.make_node("Gather", ["E", "ids"], ["emb"]), helper.make_node("Relu", ["emb"], ["h"]),
             helper.make_node("ReduceSum", ["h"], ["y"], axes=[2], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "T"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "T"])], [table])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=8)
    analyzer = onnxattr.create_analyzer("gradient", model, neuron_selection_mode="index", input="emb")
    ids = np.zeros((2, 3), np.int64)
    with pytest.raises(DataError, match="target index is out of range"):
        analyzer.analyze(ids, neuron_selection=[1, 7])
    with pytest.raises(DataError, match="onnxruntime .*Gather") as err:
        analyzer.analyze(np.full((2, 3), 12), neuron_selection=[1, 0])
    assert "target" not in str(err.value)


def test_node_placement_reads_every_node_and_its_provider_off_the_profile():
    model = onnxattr.compile(str(MODEL), "gradient")
    x = np.load(MODEL.parent / "digits_sample.npy")[:2].astype(np.float32)
    placed = onnxattr.runtime.node_placement(model, {model.graph.input[0].name: x}, "cpu")
    # the nodes of the optimized graph (onnxruntime folds, fuses and adds layout nodes), each once
    assert len(placed) == len({p["node"] for p in placed}) >= len(model.graph.node) // 2
    assert {p["provider"] for p in placed} == {"CPUExecutionProvider"}
    convs = [p for p in placed if p["op"] in ("Conv", "FusedConv")]
    assert convs and all(p["outputs"] == ["float"] for p in convs)
    assert sum(n.op_type == "Conv" for n in model.graph.node) == len(convs)  # forward and backward Convs, each once
    assert not any("fallback" in p for p in placed)  # only nodes off the first provider asked for get one


@pytest.mark.parametrize("attrs,runs_on_cuda", [
    ({}, True), ({"pads": [1, 0, 1, 0]}, True), ({"pads": [1, 1, 0, 0]}, False), ({"pads": [3, 3, 2, 2]}, False),
    ({"auto_pad": "SAME_UPPER"}, False), ({"auto_pad": "VALID"}, True)])
def test_node_placement_knows_the_convtranspose_pads_cuda_refuses(attrs, runs_on_cuda):
    """onnxruntime's CUDA provider drops a ConvTranspose with asymmetric pads (or auto_pad SAME) to the CPU
    (CUDAExecutionProvider::GetCapability: cuDNN pads symmetrically); node_placement calls that a fallback."""
    node = onnx.helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attrs)
    assert onnxattr.runtime.cudnn_can_pad(node) is runs_on_cuda
    assert onnxattr.runtime.cudnn_can_pad(onnx.helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 0, 1, 0]))


def test_mark_fallbacks_follows_onnxruntimes_rule_for_cpu_nodes():
    """A node off CUDA whose inputs were all on the CPU (a graph input, Shape's output, a small constant, a CPU
    node's output) is onnxruntime's choice; one with an input on the GPU, or a ConvTranspose cuDNN cannot pad,
    is a fallback; a fused node's name/Suffix is read as its first node's."""
    h = onnx.helper
    nodes = [h.make_node("Relu", ["x"], ["r"], name="relu"), h.make_node("Shape", ["r"], ["s"], name="shape"),
             h.make_node("Cast", ["s"], ["c"], name="cast", to=1), h.make_node("Div", ["c", "k"], ["d"], name="div"),
             h.make_node("Mul", ["r", "d"], ["m"], name="mul"),
             h.make_node("ConvTranspose", ["m", "w"], ["y"], name="convt", pads=[1, 1, 0, 0])]
    inits = [onnx.numpy_helper.from_array(np.ones(1, np.float32), "k"),
             onnx.numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "w")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4, 5, 5])],
                         [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    model = h.make_model(graph)
    cuda, cpu = "CUDAExecutionProvider", "CPUExecutionProvider"
    placed = [{"node": "relu", "op": "Relu", "provider": cuda}, {"node": "shape", "op": "Shape", "provider": cuda},
              {"node": "cast/SomeFusion", "op": "Cast", "provider": cpu},
              {"node": "div", "op": "Div", "provider": cpu, "input_shapes": [[4], [1]]},
              {"node": "mul", "op": "Mul", "provider": cpu, "input_shapes": [[1, 4, 5, 5], [4]]},
              {"node": "convt", "op": "ConvTranspose", "provider": cpu},
              {"node": "Memcpy", "op": "MemcpyToHost", "provider": cuda}]
    marked = {p["node"]: p.get("fallback") for p in onnxattr.runtime.mark_fallbacks(model, placed, cuda)}
    assert marked == {"relu": None, "shape": None, "cast/SomeFusion": False, "div": False, "mul": True,
                      "convt": True, "Memcpy": None}
