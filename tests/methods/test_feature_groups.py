"""onnxattr/methods/feature_groups.py and what the perturbation methods share (methods/perturbation.py): the
mask as a path, the run-time mask check named in the explained tensor's terms, and baselines with one row per
sample checked against the data."""

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.errors import DataError
from tests.models import mlp

MASK_METHODS = ("feature_ablation", "shapley_values", "shapley_value_sampling")


@pytest.mark.parametrize("method", MASK_METHODS)
def test_a_mask_file_may_be_a_path_object(method, tmp_path):
    """A pathlib.Path was refused as "an array of integer group ids, got object []"; a str path worked."""
    model, _ = mlp(softmax=False)
    np.save(tmp_path / "groups.npy", np.array([0, 0, 1, 1, 2, 2]))
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    by_path = onnxattr.create_analyzer(method, model, feature_mask=Path(tmp_path / "groups.npy")).analyze(x)
    by_str = onnxattr.create_analyzer(method, model, feature_mask=str(tmp_path / "groups.npy")).analyze(x)
    np.testing.assert_array_equal(by_path, by_str)
    assert np.abs(by_path).max() > 0


def embedding_model():
    """Token ids [batch, S] -> an embedding [batch, S, 3] (the explained tensor) -> tanh, sum over S -> [batch, 2]."""
    rng = np.random.default_rng(0)
    g = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["emb"]), helper.make_node("Tanh", ["emb"], ["t"]),
         helper.make_node("ReduceSum", ["t", "one"], ["p"], keepdims=0), helper.make_node("MatMul", ["p", "w"], ["y"])],
        "emb", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "S"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(rng.standard_normal((10, 3)).astype(np.float32), "table"),
         numpy_helper.from_array(rng.standard_normal((3, 2)).astype(np.float32), "w"),
         numpy_helper.from_array(np.array([1]), "one")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("method", MASK_METHODS)
def test_a_mask_that_does_not_fit_an_embedding_is_named_in_its_terms(method):
    """The data are token ids [2, 4] and the explained tensor their embedding [2, 4, 3]: the message named the
    token ids' features [4] before."""
    ids = np.random.default_rng(1).integers(0, 10, (2, 4)).astype(np.int64)
    analyzer = onnxattr.create_analyzer(method, embedding_model(), input="emb", feature_mask=np.arange(5).reshape(5, 1))
    with pytest.raises(DataError, match=r"feature_mask of shape \[5, 1\] does not fit the explained features "
                                        r"\['\?', 3\]"):
        analyzer.analyze(ids)
    by_token = np.arange(4).reshape(4, 1)  # a group per token, over its three embedding features
    extra = {"seed": 3} if method == "shapley_value_sampling" else {}
    fits = onnxattr.create_analyzer(method, embedding_model(), input="emb", feature_mask=by_token, **extra)
    spelled_out = onnxattr.create_analyzer(method, embedding_model(), input="emb",
                                           feature_mask=np.repeat(by_token, 3, 1), **extra)
    got = fits.analyze(ids)
    assert got.shape == (2, 4, 3) and np.abs(got).max() > 0
    np.testing.assert_allclose(got, spelled_out.analyze(ids), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got, np.repeat(got[:, :, :1], 3, axis=2))  # a token's features share its value


@pytest.mark.parametrize("method", MASK_METHODS + ("occlusion",))
def test_baselines_hold_one_row_or_one_per_sample(method):
    """Four baselines for five samples failed inside the Loop with onnxruntime's broadcast error."""
    model, _ = mlp(softmax=False)
    x = np.random.default_rng(2).standard_normal((5, 6)).astype(np.float32)
    with pytest.raises(DataError, match="baselines holds 4 references and the data 5 samples"):
        onnxattr.create_analyzer(method, model, baselines=np.zeros((4, 6), np.float32)).analyze(x)
    per_sample = np.linspace(-1, 1, 30, dtype=np.float32).reshape(5, 6)
    extra = {"seed": 4} if method == "shapley_value_sampling" else {}
    got = onnxattr.create_analyzer(method, model, baselines=per_sample, **extra).analyze(x)
    for k in range(5):  # each sample against its own row, as when explained alone with that baseline
        alone = onnxattr.create_analyzer(method, model, baselines=per_sample[k], **extra).analyze(x[k:k + 1])
        if method != "shapley_value_sampling":  # its random orders differ between batches of 5 and of 1
            np.testing.assert_allclose(got[k:k + 1], alone, rtol=1e-5, atol=1e-6)
        else:  # every order adds up to y(x) - y(baseline) (each feature its own group): the sums must agree
            np.testing.assert_allclose(got[k].sum(), alone[0].sum(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["feature_ablation", "feature_permutation"])
def test_a_mask_that_does_not_broadcast_is_named_by_the_shape_given(method):
    """A mask [1, 5] for six features: the message shows [1, 5], not the [5] left after its batch axis of 1 is
    dropped (found by the helper audit of feature_permutation)."""
    from onnxattr.errors import UsageError

    with pytest.raises(UsageError, match=r"feature_mask of shape \[1, 5\] does not broadcast"):
        onnxattr.compile(mlp(softmax=False)[0], method, feature_mask=np.zeros((1, 5), np.int64))
