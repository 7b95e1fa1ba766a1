"""benchmarks/: the paired-ratio figure of the report (report.py) and a smoke run of paired.py (no timings
asserted)."""

import sys
from pathlib import Path

import onnx

import onnxattr

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench  # noqa: E402, F401  (imports configs and report as the benchmark does)
import paired  # noqa: E402
import report  # noqa: E402


def test_paired_ratio_is_the_median_of_per_round_ratios():
    # per round 2, 4, 2: the median is 2, while min/min would say 2 / 1 and median/median 4 / 1
    assert report._paired({"runs": [2.0, 4.0, 6.0]}, {"runs": [1.0, 1.0, 3.0]}) == 2.0
    assert report._paired({"runs": [1.0, 3.0]}, {"runs": [1.0, 1.0]}) == 2.0


def test_paired_script_runs_on_the_shipped_model(tmp_path, capsys):
    """Also a --neuron index model, which takes a `target` input (fed with zeros)."""
    model = Path(__file__).resolve().parent.parent / "models" / "digits_cnn.onnx"
    compiled, indexed = tmp_path / "digits.gradient.onnx", tmp_path / "digits.index.onnx"
    onnx.save(onnxattr.compile(str(model), "gradient"), str(compiled))
    onnx.save(onnxattr.compile(str(model), "gradient", neuron="index"), str(indexed))
    paired.main([str(model), str(compiled), str(indexed), "--rounds", "2", "--batch", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith(str(model)) and "x forward paired 1.00" in lines[0]
    for line, path in zip(lines[1:], (compiled, indexed)):
        assert line.startswith(str(path)) and "x forward paired" in line
