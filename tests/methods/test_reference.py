"""reference_data (onnxattr/methods/reference.py): the reference of the path methods given as data, for an
explained intermediate tensor, is that tensor's value on the data."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.errors import UsageError
from tests.models import mlp

RNG = np.random.default_rng(4)
TABLE = RNG.standard_normal((10, 4)).astype(np.float32)
POS = RNG.standard_normal((5, 4)).astype(np.float32)
W = RNG.standard_normal((4, 3)).astype(np.float32)


def token_model():
    """ids[N,5] -> Gather from TABLE, plus a position table (emb) -> Tanh -> mean over tokens -> MatMul -> y[N,3]."""
    nodes = [helper.make_node("Gather", ["table", "ids"], ["tok"]), helper.make_node("Add", ["tok", "pos"], ["emb"]),
             helper.make_node("Tanh", ["emb"], ["t"]), helper.make_node("ReduceMean", ["t", "ax"], ["p"], keepdims=0),
             helper.make_node("MatMul", ["p", "W"], ["y"])]
    g = helper.make_graph(nodes, "tokens", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                          [numpy_helper.from_array(TABLE, "table"), numpy_helper.from_array(POS, "pos"),
                           numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.array([1], np.int64), "ax")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    return m


def relevance(method, ids, **params):
    compiled = onnxattr.compile(token_model(), method, input="emb", **params)
    return ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["relevance"], {"ids": ids})[0]


EXTRA = {"integrated_gradients": {"steps": 8}, "conductance": {"steps": 8}, "deep_lift": {},
         "neuron_conductance": {"steps": 8, "layer": "t", "neuron_index": [2, 1]}}


@pytest.mark.parametrize("method", sorted(EXTRA))
@pytest.mark.parametrize("rows", [1, 3])
def test_reference_data_is_the_reference_embedding(method, rows):
    """Padding ids as data give the map of their embedding (position table included) as reference_inputs."""
    ids = RNG.integers(1, 10, (3, 5))
    pad = np.zeros((rows, 5), np.int64)
    pad[:, 0] = ids[:rows, 0]
    got = relevance(method, ids, reference_data=pad, **EXTRA[method])
    want = relevance(method, ids, reference_inputs=TABLE[pad] + POS, **EXTRA[method])
    assert np.abs(want).max() > 0
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_reference_data_from_a_npy_file_on_the_command_line(tmp_path):
    ids = RNG.integers(1, 10, (2, 5))
    path = tmp_path / "pad.npy"
    np.save(path, np.zeros((1, 5), np.int64))
    got = relevance("integrated_gradients", ids, reference_data=str(path), steps=4)
    want = relevance("integrated_gradients", ids, reference_inputs=TABLE[np.zeros((1, 5), int)] + POS, steps=4)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_reference_data_refusals_name_the_problem():
    with pytest.raises(UsageError, match="the explained input itself: use reference_inputs"):
        onnxattr.compile(mlp()[0], "integrated_gradients", reference_data=np.zeros((1, 6)))
    with pytest.raises(UsageError, match="not both"):
        relevance("integrated_gradients", None, reference_data=np.zeros((1, 5), np.int64), reference_inputs=0.5)
    with pytest.raises(UsageError, match=r"shape \[1, 4\] does not fit the data input 'ids'"):
        relevance("integrated_gradients", None, reference_data=np.zeros((1, 4), np.int64))
    with pytest.raises(UsageError, match="holds fractions"):
        relevance("integrated_gradients", None, reference_data=np.full((1, 5), 0.5))


def test_reference_data_rows_and_lengths_are_checked_against_the_data():
    """The API counts its rows as reference_inputs'; ids of another length than the data's fail the run by name
    (DeepLIFT would otherwise return a map of the reference's shape)."""
    ids = RNG.integers(1, 10, (2, 5))
    with pytest.raises(onnxattr.errors.DataError, match="reference_data holds 3 references and the data 2 samples"):
        onnxattr.create_analyzer("deep_lift", token_model(), input="emb",
                                 reference_data=np.zeros((3, 5), np.int64)).analyze(ids)
    with pytest.raises(UsageError, match="reference_data holds one row per sample"):
        onnxattr.create_analyzer("integrated_gradients", token_model(), input="emb", steps=2,
                                 reference_data=np.zeros((2, 5), np.int64)).analyze(ids, batch_size=1)
    dynamic = token_model()
    dynamic.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "S"
    dynamic.graph.initializer[1].CopyFrom(numpy_helper.from_array(POS[0], "pos"))  # one bias for any length
    for method in ("deep_lift", "integrated_gradients"):
        analyzer = onnxattr.create_analyzer(method, dynamic, input="emb", reference_data=np.zeros((1, 5), np.int64))
        with pytest.raises(onnxattr.errors.DataError, match=r"reference_data does not fit the data of shape \[2, 3\]"):
            analyzer.analyze(ids[:, :3])
        assert analyzer.analyze(ids).shape == (2, 5, 4)


def test_reference_data_on_a_static_batch_and_integer_range():
    """A model of static batch gets a one-row reference repeated to its rows; ids beyond the input's integer type are
    refused, not wrapped."""
    model = token_model()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    ids = RNG.integers(1, 10, (2, 5))
    got = onnxattr.create_analyzer("integrated_gradients", model, input="emb", steps=4,
                                   reference_data=np.zeros((1, 5), np.int64)).analyze(ids)
    want = onnxattr.create_analyzer("integrated_gradients", model, input="emb", steps=4,
                                    reference_inputs=TABLE[np.zeros((1, 5), int)] + POS).analyze(ids)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()
    narrow = token_model()
    narrow.graph.input[0].type.tensor_type.elem_type = TensorProto.INT32
    with pytest.raises(UsageError, match="do not fit the data input 'ids' \\(int32\\)"):
        onnxattr.compile(narrow, "integrated_gradients", input="emb", reference_data=np.full((1, 5), 2 ** 32 + 3))
