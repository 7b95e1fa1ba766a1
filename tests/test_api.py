"""onnxattr/api.py: Analyzer.analyze in slices (batch_size) gives the maps and outputs of one whole run."""

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
    for size in (0, -1, 2.5, True):
        with pytest.raises(UsageError, match="batch_size must be a positive integer"):
            analyzer.analyze(X, batch_size=size)
    per_sample = onnxattr.create_analyzer("integrated_gradients", model, reference_inputs=np.zeros_like(X), steps=4)
    with pytest.raises(UsageError, match="reference_inputs holds one row per sample"):
        per_sample.analyze(X, batch_size=2)
    with pytest.raises(onnxattr.errors.DataError, match="no samples|no values"):
        analyzer.analyze(X[:0], batch_size=2)


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
