"""onnxattr/api.py: Analyzer.analyze in slices (batch_size) gives the maps and outputs of one whole run."""

import warnings
from pathlib import Path

import numpy as np
import pytest

import onnxattr
from onnxattr.cli import main
from onnxattr.errors import UsageError
from tests.models import mlp

DATA = Path(__file__).resolve().parent / "oracles" / "data"
X = np.random.default_rng(5).standard_normal((7, 6)).astype(np.float32)


@pytest.mark.parametrize("method,params", [("gradient", {}), ("integrated_gradients", {"steps": 8}),
                                           ("lrp.epsilon", {})])
@pytest.mark.parametrize("selection", [None, 2, np.array([0, 1, 2, 1, 0, 2, 1])])
def test_slices_give_the_whole_runs_maps_and_outputs(method, params, selection):
    model, _ = mlp()
    analyzer = onnxattr.create_analyzer(method, model, **params)
    whole = analyzer.analyze(X, neuron_selection=selection)
    outputs = analyzer.outputs
    for size in (1, 3, 7, 100):
        np.testing.assert_allclose(analyzer.analyze(X, neuron_selection=selection, batch_size=size), whole,
                                   rtol=1e-5, atol=1e-6)
        assert len(analyzer.outputs) == len(outputs)
        for got, want in zip(analyzer.outputs, outputs):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_a_feed_with_the_batch_axis_is_sliced_with_the_data():
    """The masked encoder's padding mask [batch, S] goes with its samples' slice (a shared slice would not
    broadcast, or would pad the wrong samples)."""
    with np.load(DATA / "torch_masked_encoder.npz") as f:
        x, mask = f["x"], f["feed:mask"]
    analyzer = onnxattr.create_analyzer("integrated_gradients", DATA / "torch_masked_encoder.onnx", input="emb",
                                        steps=8)
    whole = analyzer.analyze(x, inputs={"mask": mask})
    np.testing.assert_allclose(analyzer.analyze(x, inputs={"mask": mask}, batch_size=1), whole, rtol=1e-5,
                               atol=1e-6 * np.abs(whole).max())


def test_bad_batch_sizes_and_per_sample_references_are_refused():
    model, _ = mlp()
    analyzer = onnxattr.create_analyzer("gradient", model)
    for size in (0, -1, 2.5, True, "Auto", "8"):
        with pytest.raises(UsageError, match="batch_size must be a positive integer"):
            analyzer.analyze(X, batch_size=size)
    per_sample = onnxattr.create_analyzer("integrated_gradients", model, reference_inputs=np.zeros_like(X), steps=4)
    with pytest.raises(UsageError, match="reference_inputs holds one row per sample"):
        per_sample.analyze(X, batch_size=2)
    with pytest.raises(onnxattr.errors.DataError, match="no samples|no values"):
        analyzer.analyze(X[:0], batch_size=2)


def _slice_sizes(monkeypatch, analyzer) -> list:
    """The sample counts of the runs analyze makes, recorded as they happen."""
    sizes, run = [], analyzer._analyze

    def counted(X, *args):
        sizes.append(len(X))
        return run(X, *args)
    monkeypatch.setattr(analyzer, "_analyze", counted)
    return sizes


def test_auto_slices_by_the_explained_values(monkeypatch):
    """batch_size="auto": slices of AUTO_VALUES explained values where the data hold more (6 values a sample: 13 make
    slices of 2), one run where they do not; the maps are the whole run's."""
    model, _ = mlp()
    analyzer = onnxattr.create_analyzer("gradient", model)
    whole = analyzer.analyze(X)
    sizes = _slice_sizes(monkeypatch, analyzer)
    np.testing.assert_array_equal(analyzer.analyze(X, batch_size="auto"), whole)  # 16 images' values: one run
    assert sizes == [7]
    monkeypatch.setattr(onnxattr.api, "AUTO_VALUES", 13)
    sizes.clear()
    np.testing.assert_allclose(analyzer.analyze(X, batch_size="auto"), whole, rtol=1e-6, atol=1e-7)
    assert sizes == [2, 2, 2, 1]


def test_auto_counts_the_embeddings_values_not_the_token_ids(monkeypatch):
    """Token ids [N, 6] explained at their embedding [N, 6, 8]: 48 values a sample, the sequence length read off the
    data (6 ids a sample would make one run of 4 here)."""
    with np.load(DATA / "torch_tokens.npz") as f:
        ids = f["x"]
    analyzer = onnxattr.create_analyzer("gradient", DATA / "torch_tokens.onnx", input="/emb/Gather_output_0")
    whole = analyzer.analyze(ids)
    monkeypatch.setattr(onnxattr.api, "AUTO_VALUES", 96)
    sizes = _slice_sizes(monkeypatch, analyzer)
    np.testing.assert_allclose(analyzer.analyze(ids, batch_size="auto"), whole, rtol=1e-6, atol=1e-7)
    assert sizes == [2, 2]


def test_auto_runs_once_where_slices_would_change_the_map(monkeypatch):
    """Where batch_size=2 is refused (a method that compares the samples, per-sample references, an output over the
    whole batch), "auto" runs the data at once, as without batch_size."""
    model, _ = mlp()
    monkeypatch.setattr(onnxattr.api, "AUTO_VALUES", 6)
    for analyzer in (onnxattr.create_analyzer("feature_permutation", model),
                     onnxattr.create_analyzer("integrated_gradients", model, reference_inputs=np.zeros_like(X),
                                              steps=4),
                     onnxattr.create_analyzer("gradient", _loss_model(), output="loss")):
        with pytest.raises(UsageError, match="batch"):
            analyzer.analyze(X, batch_size=2)
        analyzer.restart()  # the random draws from their seed again
        whole = analyzer.analyze(X)
        analyzer.restart()
        sizes = _slice_sizes(monkeypatch, analyzer)
        np.testing.assert_array_equal(analyzer.analyze(X, batch_size="auto"), whole)
        assert sizes == [7]


def test_auto_takes_a_fixed_batch_in_slices_of_it():
    """A model exported with batch 2 explains six samples in three runs under "auto" (one run is refused)."""
    model = _static_model()
    analyzer = onnxattr.create_analyzer("gradient", model, input="x", neuron_selection_mode="all")
    mask = np.ones((6, 6), np.float32)
    with pytest.raises(onnxattr.errors.DataError):
        analyzer.analyze(X[:6], inputs={"m": mask})
    np.testing.assert_array_equal(analyzer.analyze(X[:6], inputs={"m": mask}, batch_size="auto"),
                                  analyzer.analyze(X[:6], inputs={"m": mask}, batch_size=2))


def test_the_command_line_runs_in_batches(tmp_path, capsys):
    import onnx

    onnx.save(mlp()[0], tmp_path / "mlp.onnx")
    np.save(tmp_path / "x.npy", X)
    args = ["explain", str(tmp_path / "mlp.onnx"), "-m", "gradient", "--data", str(tmp_path / "x.npy")]
    assert main(args + ["-o", str(tmp_path / "whole.npy")]) == 0
    assert main(args + ["-o", str(tmp_path / "parts.npy"), "--batch-size", "3"]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "parts.npy"), np.load(tmp_path / "whole.npy"), rtol=1e-6)
    capsys.readouterr()
    assert main(args + ["--batch-size", "0"]) == 2
    assert "--batch-size must be a positive integer" in capsys.readouterr().err


def test_the_command_line_slices_by_default(tmp_path, monkeypatch):
    """explain's --batch-size is auto unless given: slices of AUTO_VALUES explained values (here 12: two samples)."""
    import onnx

    onnx.save(mlp()[0], tmp_path / "mlp.onnx")
    np.save(tmp_path / "x.npy", X)
    monkeypatch.setattr(onnxattr.api, "AUTO_VALUES", 12)
    sizes, run = [], onnxattr.api.Analyzer._analyze
    monkeypatch.setattr(onnxattr.api.Analyzer, "_analyze", lambda self, X, *a: sizes.append(len(X)) or run(self, X, *a))
    args = ["explain", str(tmp_path / "mlp.onnx"), "-m", "gradient", "--data", str(tmp_path / "x.npy")]
    for given, want in (([], [2, 2, 2, 1]), (["--batch-size", "auto"], [2, 2, 2, 1]), (["--batch-size", "7"], [7])):
        sizes.clear()
        assert main(args + given) == 0
        assert sizes == want, given


def _loss_model():
    """y [N, 2] and the mean of y over the batch as a second output, 'loss' (a value over the whole batch)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(6, 2) / 10, "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"]),
                           helper.make_node("ReduceMean", ["y"], ["loss"], keepdims=0)], "loss",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2]),
                           helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_an_output_over_the_whole_batch_is_refused_with_slices():
    """A loss over the batch explained in slices was a per-slice loss: twice the map at batch_size=2 (found by a
    review); a value without the batch axis would be kept for the last slice only."""
    for output in ("loss", None):
        analyzer = onnxattr.create_analyzer("gradient", _loss_model(), output=output)
        analyzer.analyze(X)  # the whole batch at once is fine
        with pytest.raises(UsageError, match="output 'loss' has no batch axis"):
            analyzer.analyze(X, batch_size=2)


def test_a_selection_of_the_wrong_length_is_named_in_the_datas_terms():
    model, _ = mlp()
    with pytest.raises(onnxattr.errors.DataError, match=r"shape \(8,\); expected one index per sample \(7\)"):
        onnxattr.create_analyzer("gradient", model).analyze(X, neuron_selection=np.zeros(8, np.int64), batch_size=3)
    # out of range: named with the whole selection (it named the failing slice's two values)
    with pytest.raises(onnxattr.errors.DataError, match=r"\[0, 1, 2, 0, 1, 7, 2\] out of range"):
        onnxattr.create_analyzer("gradient", model).analyze(X, neuron_selection=[0, 1, 2, 0, 1, 7, 2], batch_size=3)
    # one slice is the whole run: per-sample references are fine there
    per_sample = onnxattr.create_analyzer("integrated_gradients", model, reference_inputs=np.zeros_like(X), steps=4)
    np.testing.assert_array_equal(per_sample.analyze(X, batch_size=7), per_sample.analyze(X))


def test_one_reference_of_a_samples_features_is_no_per_sample_array():
    """[6] for x [N, 6] is one reference (it runs without slices), not one row per sample: refused before."""
    model, _ = mlp()
    analyzer = onnxattr.create_analyzer("integrated_gradients", model, reference_inputs=np.full(6, 0.5), steps=4)
    np.testing.assert_allclose(analyzer.analyze(X, batch_size=3), analyzer.analyze(X), rtol=1e-6, atol=1e-7)


def _static_model():
    """y = (x * m) w with x and m [2, 6]: a batch fixed at 2."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(6, 2) / 10, "w")
    g = helper.make_graph([helper.make_node("Mul", ["x", "m"], ["xm"]), helper.make_node("MatMul", ["xm", "w"], ["y"])],
                          "static", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6]),
                                     helper.make_tensor_value_info("m", TensorProto.FLOAT, [2, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])], [w])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_a_static_batch_model_runs_in_slices_of_its_batch_with_its_feeds():
    """Batch fixed at 2, six samples: slices of 2, the per-sample feed sliced with them (it was shared, so samples
    2-5 got samples 0-1's feed, or refused as of the wrong shape)."""
    model = _static_model()
    x = X[:6]
    mask = (np.arange(36).reshape(6, 6) % 3 > 0).astype(np.float32)
    analyzer = onnxattr.create_analyzer("gradient", model, input="x", neuron_selection_mode="all")
    got = analyzer.analyze(x, inputs={"m": mask}, batch_size=2)
    want = np.concatenate([analyzer.analyze(x[k:k + 2], inputs={"m": mask[k:k + 2]}) for k in (0, 2, 4)])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, mask * np.arange(12, dtype=np.float32).reshape(6, 2).sum(1) / 10, rtol=1e-6)


def test_a_sliced_feed_must_hold_one_row_per_sample():
    """Nine mask rows for three samples: ignored past the third with batch_size >= 3 before (a raw broadcast
    error at 2); the whole run refuses them too."""
    with np.load(DATA / "torch_masked_encoder.npz") as f:
        x, mask = f["x"][:3], f["feed:mask"]
    nine = np.concatenate([mask, mask, mask, mask])[:9]
    analyzer = onnxattr.create_analyzer("gradient", DATA / "torch_masked_encoder.onnx", input="emb")
    for size in (1, 2, 3, 10):
        with pytest.raises(onnxattr.errors.DataError, match="input 'mask' has 9 rows and the data 3 samples"):
            analyzer.analyze(x, inputs={"mask": nine}, batch_size=size)


def test_kept_relevance_comes_with_each_analyze_and_its_slices():
    """Analyzer(keep=) returns the map as before and puts the relevance at each kept tensor in .kept (the
    original outputs stay in .outputs); slices concatenate them like the map."""
    model, _ = mlp()
    analyzer = onnxattr.create_analyzer("lrp.epsilon", model, keep=["r", "x"])
    plain = onnxattr.create_analyzer("lrp.epsilon", model).analyze(X)
    whole = analyzer.analyze(X)
    np.testing.assert_array_equal(whole, plain)
    assert list(analyzer.kept) == ["r", "x"] and analyzer.kept["r"].shape == (7, 8)
    np.testing.assert_array_equal(analyzer.kept["x"], whole)
    assert len(analyzer.outputs) == 1 and analyzer.outputs[0].shape == (7, 3)
    kept = dict(analyzer.kept)
    analyzer.analyze(X, batch_size=3)
    for name, value in kept.items():
        np.testing.assert_allclose(analyzer.kept[name], value, rtol=1e-5, atol=1e-6)


def test_inspect_names_each_nodes_output_tensor():
    """inspect(tensors=True) adds each node's output: the names keep= (and --input, grad_cam's layer) take."""
    model, _ = mlp()
    rows = onnxattr.api.inspect(model, "lrp.epsilon", tensors=True)
    assert [r[2] for r in rows] == ["h", "h2", "r", "z"]  # x W1, + b1, relu, r W2 (the Softmax is looked through)
    assert [r[:2] + r[3:] for r in rows] == onnxattr.api.inspect(model, "lrp.epsilon")
    relevance = onnxattr.create_analyzer("lrp.epsilon", model, keep=[r[2] for r in rows])
    relevance.analyze(X)
    assert list(relevance.kept) == [r[2] for r in rows]


def test_like_copies_the_settings_but_the_changes():
    from tests.lrp.nets import resnet_like

    a = onnxattr.create_analyzer("lrp.epsilon", resnet_like(), neuron_selection_mode="index", epsilon=0.5)
    b = a.like(keep=["r2"])
    assert (b.mode, b.params["epsilon"], b.keep, a.keep) == ("index", 0.5, ["r2"], ())
    x = np.random.default_rng(0).standard_normal((2, 2, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(b.analyze(x, neuron_selection=1), a.analyze(x, neuron_selection=1))
    assert b.kept["r2"].shape == (2, 4, 4, 4)


def test_a_map_with_nan_warns_once_from_analyze(tmp_path, capsys):
    """A map holding NaN or inf is returned as computed with one NonFiniteRelevanceWarning counting them, also over
    slices (one warning for the whole data, not one per slice); turned into an error it exits with code 7."""
    import warnings

    import onnx
    from onnx import TensorProto, helper

    from onnxattr.api import NonFiniteRelevanceWarning

    g = helper.make_graph([helper.make_node("Sqrt", ["x"], ["y"])], "sqrt",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    x = np.array([[1.0, 4.0, 9.0, -1.0], [1.0, -4.0, 9.0, 16.0], [1.0, 1.0, 1.0, 1.0]], np.float32)
    analyzer = onnxattr.create_analyzer("gradient", model, neuron_selection_mode="all")
    for batch_size in (None, 1):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            r = analyzer.analyze(x, batch_size=batch_size)
        assert np.isnan(r).sum() == 2 and np.isfinite(r[2]).all()
        assert [w.category for w in seen] == [NonFiniteRelevanceWarning]
        assert "holds 2 NaN or inf values" in str(seen[0].message) and seen[0].filename == __file__
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        analyzer.analyze(x[2:])
    assert seen == []
    onnx.save(model, tmp_path / "sqrt.onnx")
    np.save(tmp_path / "x.npy", x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["explain", str(tmp_path / "sqrt.onnx"), "-m", "gradient", "--neuron", "all", "--data",
                     str(tmp_path / "x.npy"), "-o", str(tmp_path / "r.npy")]) == 7
    assert "onnxattr: error: the relevance holds 2 NaN or inf values" in capsys.readouterr().err


class Reader:
    """Data read a slice at a time (as a reader of files): records the rows of each read; np.asarray fails."""

    def __init__(self, x):
        self.x, self.shape, self.reads = x, x.shape, []

    def __len__(self):
        return len(self.x)

    def __getitem__(self, rows):
        self.reads.append(range(*rows.indices(len(self.x))))
        return self.x[rows]

    def __array__(self, *args, **kwargs):
        raise AssertionError("the data were read whole")


def test_analyze_slices_yields_each_slice_as_it_is_computed(tmp_path):
    """analyze_slices yields the slices in order: their rows, maps, outputs and kept tensors are those of the
    whole run; data with a shape whose slices are arrays (a reader, a memory-mapped .npy) are read a slice at a
    time, never whole; batch_size=None is one slice of all rows."""
    model, _ = mlp()
    analyzer = onnxattr.create_analyzer("lrp.z", model, keep=["h2"])
    whole, outputs, kept = analyzer.analyze(X), analyzer.outputs, analyzer.kept["h2"]
    reader = Reader(X)
    pieces = list(analyzer.analyze_slices(reader, batch_size=3))
    assert [p.rows for p in pieces] == [slice(0, 3), slice(3, 6), slice(6, 7)]
    assert reader.reads == [range(0, 3), range(3, 6), range(6, 7)]
    for p in pieces:
        np.testing.assert_allclose(p.relevance, whole[p.rows], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(p.outputs[0], outputs[0][p.rows], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(p.kept["h2"], kept[p.rows], rtol=1e-5, atol=1e-6)
    assert analyzer.outputs is pieces[-1].outputs
    np.save(tmp_path / "x.npy", X)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.testing.assert_allclose(np.concatenate([p.relevance for p in analyzer.analyze_slices(mapped, batch_size=2)]),
                               whole, rtol=1e-5, atol=1e-6)
    (one,) = analyzer.analyze_slices(X, batch_size=None)
    assert one.rows == slice(0, 7)
    np.testing.assert_array_equal(one.relevance, whole)


def test_analyze_slices_warns_of_nan_once_after_the_last_slice():
    """A NaN in two slices' maps is one warning, counting both, given when the last slice has been taken."""
    model, _ = mlp()
    x = X.copy()
    x[[0, 5], 0] = np.nan
    pieces = onnxattr.create_analyzer("gradient", model).analyze_slices(x, batch_size=3)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        next(pieces), next(pieces), next(pieces)
        assert not seen
        assert next(pieces, None) is None
    (w,) = seen
    assert isinstance(w.message, onnxattr.api.NonFiniteRelevanceWarning)
    assert "the relevance holds 12 NaN or inf values" in str(w.message)
