"""onnxattr/methods/feature_ablation.py: Captum's FeatureAblation against a closed form on the MLP, and its
mask's edges (Captum's own maps on eight nets are in tests/methods/test_oracles.py)."""

import numpy as np
import onnxruntime as ort
import pytest

import onnxattr
from onnxattr.cli import main
from onnxattr.errors import SelectionError, UsageError
from tests.models import mlp, mlp_logits

X = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
MODEL, WEIGHTS = mlp(softmax=False)


def run(model=MODEL, x=X, **params):
    compiled = onnxattr.compile(model, "feature_ablation", **params)
    return ort.InferenceSession(compiled.SerializeToString()).run(["relevance"], {"x": x})[0]


def by_hand(groups, baseline):
    """Each feature gets y(x) - y(x with its group set to the baseline) at the argmax logit."""
    logits = mlp_logits(X, WEIGHTS)
    chosen = logits.argmax(1)
    out = np.zeros_like(X)
    for g in np.unique(groups):
        ablated = np.where(groups == g, baseline, X)
        drop = logits[np.arange(len(X)), chosen] - mlp_logits(ablated, WEIGHTS)[np.arange(len(X)), chosen]
        out[:, groups == g] = drop[:, None]
    return out


@pytest.mark.parametrize("mask,chunk", [(None, 16), (None, 4), (np.array([5, 5, -1, -1, 9, 9]), 1),
                                        (np.array([[0, 0, 0, 1, 1, 1]]), 2)])
def test_each_feature_gets_its_groups_drop(mask, chunk):
    """Any integer ids (negative, sparse) name the groups; a mask with a batch axis of 1 is the same mask."""
    groups = np.arange(6) if mask is None else np.asarray(mask).reshape(-1)
    baseline = np.linspace(-1, 1, 6).astype(np.float32)
    got = run(feature_mask=mask, baselines=baseline, chunk_size=chunk)
    np.testing.assert_allclose(got, by_hand(groups, baseline), rtol=1e-5, atol=1e-5)


def test_one_group_is_the_whole_drop():
    got = run(feature_mask=np.zeros(6, np.int64), baselines=0.0)
    logits = mlp_logits(X, WEIGHTS)
    drop = logits.max(1) - mlp_logits(np.zeros_like(X), WEIGHTS)[np.arange(4), logits.argmax(1)]
    np.testing.assert_allclose(got, np.repeat(drop[:, None], 6, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask,words", [
    (np.zeros((2, 6), np.int64), "one mask serves every sample"),
    (np.zeros(5, np.int64), "does not broadcast"),
    (np.zeros(6, np.float32), "integer group ids"),
    ("groups.txt", ".npy file"),
])
def test_bad_masks_are_usage_errors(mask, words):
    with pytest.raises(UsageError, match=words):
        onnxattr.compile(MODEL, "feature_ablation", feature_mask=mask)


def test_symbolic_features_are_numbered_at_run_time_and_a_loss_gets_the_batchs_drops():
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["y"])], "sq",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "F"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "F"])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], np.float32)
    np.testing.assert_allclose(run(model, x, neuron="all"), x * x)  # each feature alone, at any width
    got = run(model, x[:1], neuron="all", feature_mask=np.array([0, 1, 1]))  # a mask fixes nothing else
    np.testing.assert_allclose(got, [[1.0, 13.0, 13.0]])
    g = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], "sum",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    # y = the sum of all of x, one number for the batch: each ablation changes every sample at once, and every
    # row gets the batch's drop (Captum returns that one row)
    loss = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    got = onnxattr.create_analyzer("feature_ablation", loss, feature_mask=np.array([0, 1, 1])).analyze(x)
    np.testing.assert_allclose(got, np.tile([1.5, 6.0, 6.0], (2, 1)))
    with pytest.raises(SelectionError, match="no neuron to pick per sample"):
        onnxattr.compile(loss, "feature_ablation", neuron="index")


def test_the_command_line_takes_the_mask_as_a_npy_file(tmp_path, capsys):
    import onnx

    onnx.save(MODEL, tmp_path / "mlp.onnx")
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "groups.npy", np.array([0, 0, 1, 1, 2, 2]))
    assert main(["explain", str(tmp_path / "mlp.onnx"), "-m", "feature_ablation", "--set",
                 f"feature_mask={tmp_path / 'groups.npy'}", "--set", "baselines=0.25", "--data",
                 str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "r.npy"), by_hand(np.array([0, 0, 1, 1, 2, 2]), 0.25),
                               rtol=1e-5, atol=1e-5)
    assert main(["compile", str(tmp_path / "mlp.onnx"), "-m", "feature_ablation", "--set",
                 f"feature_mask={tmp_path / 'none.npy'}", "-o", str(tmp_path / "c.onnx")]) == 2
    assert "not a readable .npy" in capsys.readouterr().err


def test_run_time_sizes_are_checked_before_the_loop():
    """On dynamic spatial axes the mask's sizes and the ablation count are known only at run time: a mask of
    32 x 32 on 64 x 64 data, and every feature of a 608 x 608 image alone (over 2^20 forward passes), fail
    before the Loop with a message naming the cause (a raw broadcast error inside the Loop, and a run of
    1.1 million forward passes, before). onnxruntime fuses consecutive Reshapes: the check must survive its
    optimizer."""
    import onnx
    from onnx import TensorProto, helper

    k = np.ones((2, 3, 1, 1), np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "k"], ["c"]),
                           helper.make_node("ReduceMean", ["c"], ["y"], axes=[2, 3], keepdims=0)], "fcn",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                          [onnx.numpy_helper.from_array(k, "k")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    mask = np.arange(1024).reshape(1, 32, 32) // 64
    x = np.random.default_rng(0).random((1, 3, 32, 32)).astype(np.float32)
    assert onnxattr.create_analyzer("feature_ablation", model, feature_mask=mask).analyze(x).shape == x.shape
    with pytest.raises(onnxattr.errors.DataError, match=r"feature_mask of shape \[1, 32, 32\] does not fit.*64, 64"):
        onnxattr.create_analyzer("feature_ablation", model, feature_mask=mask).analyze(np.zeros((1, 3, 64, 64),
                                                                                             np.float32))
    with pytest.raises(onnxattr.errors.DataError, match="more than 1048576 feature ablations.*feature_mask"):
        onnxattr.create_analyzer("feature_ablation", model).analyze(np.zeros((1, 3, 608, 608), np.float32))
    with pytest.raises(onnxattr.errors.DataError, match="more than 1048576 occlusion windows.*stride"):
        onnxattr.create_analyzer("occlusion", model, sliding_window_shapes=(3, 1, 1)).analyze(
            np.zeros((1, 3, 1100, 1000), np.float32))


def test_a_baseline_beyond_a_float16_input_is_refused():
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["y"])], "sq",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    for method in ("feature_ablation", "occlusion"):
        with pytest.raises(UsageError, match="baselines: values beyond the range.*float16"):
            onnxattr.compile(model, method, baselines=70000.0)


def test_a_mask_file_that_does_not_fit_is_named_with_its_shape(tmp_path):
    """The mask given as a .npy path (the command line's way): the message gave its shape as [] before."""
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["y"])], "sq",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "F"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "F"])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    np.save(tmp_path / "m.npy", np.array([0, 0, 1, 1]))
    with pytest.raises(onnxattr.errors.DataError, match=r"feature_mask of shape \[4\] does not fit.*\[5\]"):
        onnxattr.create_analyzer("feature_ablation", model, neuron_selection_mode="all",
                                 feature_mask=str(tmp_path / "m.npy")).analyze(np.ones((1, 5), np.float32))


# feature_permutation (Captum's FeaturePermutation): the group taken from other samples of the batch

def permuted_drops(x, groups, perm, chosen):
    """y(x) - y(x with each group's features from the rows ``perm``) at the ``chosen`` logits, per feature."""
    logits = mlp_logits(x, WEIGHTS)
    rows = np.arange(len(x))
    out = np.zeros_like(x)
    for g in np.unique(groups):
        mixed = np.where(groups == g, x[list(perm)], x)
        out[:, groups == g] = (logits[rows, chosen] - mlp_logits(mixed, WEIGHTS)[rows, chosen])[:, None]
    return out


@pytest.mark.parametrize("mask", [None, np.array([[0, 0, 1, 1, 2, 7]])])
def test_a_pair_swaps_its_features(mask):
    """With two samples the only permutation that moves a row is the swap: the map is deterministic, for
    every seed, and equals the drops by hand."""
    groups = np.arange(6) if mask is None else mask.reshape(-1)
    pair = X[:2]
    want = permuted_drops(pair, groups, [1, 0], mlp_logits(pair, WEIGHTS).argmax(1))
    for seed in (0, 5):
        analyzer = onnxattr.create_analyzer("feature_permutation", MODEL, feature_mask=mask, seed=seed)
        np.testing.assert_allclose(analyzer.analyze(pair), want, rtol=1e-5, atol=1e-5)


def test_four_samples_average_to_the_mean_over_the_permutations_that_move_a_row():
    """Each group's permutation is uniform over the 23 of four rows that are not the identity (Captum redraws
    torch.randperm until one moves a row): the mean of 300 runs (successive runs of a session continue the
    stream; two chunks of groups, so the Loop's trips draw anew) lies within 4.5 standard errors of the exact
    expectation at every one of the 24 values, and the identity never comes (a run with it at every group would
    give a zero map)."""
    import itertools

    target = np.array([0, 2, 1, 2])
    perms = [p for p in itertools.permutations(range(4)) if p != (0, 1, 2, 3)]
    exact = np.mean([permuted_drops(X, np.arange(6), p, target) for p in perms], axis=0)
    analyzer = onnxattr.create_analyzer("feature_permutation", MODEL, neuron_selection_mode="index", seed=3,
                                        chunk_size=4)
    runs = np.array([analyzer.analyze(X, target) for _ in range(300)])
    assert all(np.abs(r).max() > 0 for r in runs)
    error = np.abs(runs.mean(0) - exact) / (runs.std(0) / np.sqrt(len(runs)))
    assert error.max() < 4.5, error.max()
    # a seed fixes the stream: a new session with the same seed draws the same first map
    again = onnxattr.create_analyzer("feature_permutation", MODEL, neuron_selection_mode="index", seed=3, chunk_size=4)
    np.testing.assert_array_equal(again.analyze(X, target), runs[0])


def test_one_sample_is_refused_at_run_time_or_compile_time(tmp_path, capsys):
    analyzer = onnxattr.create_analyzer("feature_permutation", MODEL)
    with pytest.raises(onnxattr.errors.DataError, match="data hold 1 sample: give two or more"):
        analyzer.analyze(X[:1])
    with pytest.raises(onnxattr.errors.UnsupportedModelError, match="fixed batch of 1"):
        onnxattr.compile(mlp(batch=1, softmax=False)[0], "feature_permutation")
    np.save(tmp_path / "one.npy", X[:1])
    path = tmp_path / "mlp.onnx"
    path.write_bytes(MODEL.SerializeToString())
    code = main(["explain", str(path), "--method", "feature_permutation", "--data", str(tmp_path / "one.npy"),
                 "-o", str(tmp_path / "r.npy")])
    assert code != 0 and "give two or more" in capsys.readouterr().err
    assert not (tmp_path / "r.npy").exists()


def test_batch_slices_are_refused():
    """A sample's map depends on the other samples of its batch: slicing the data would change it."""
    analyzer = onnxattr.create_analyzer("feature_permutation", MODEL)
    with pytest.raises(UsageError, match="batch_size: feature_permutation explains each sample against the other"):
        analyzer.analyze(X, batch_size=2)
    np.testing.assert_array_equal(analyzer.analyze(X[:2], batch_size=2), analyzer.analyze(X[:2]))  # one slice
