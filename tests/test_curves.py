"""onnxattr/curves.py: perturbation curves equal iNNvestigate's PerturbationAnalysis
(tests/oracles/make_innvestigate_perturbation.py), and their steps count regions as asked. (A linear model's
curve against its closed form, and the curves' refusals, are in test_evaluate.py, beside evaluate's.)"""

import json
from pathlib import Path

import numpy as np
import pytest

from onnxattr.curves import perturbation_curve
from tests.test_evaluate import linear

DATA = Path(__file__).parent / "oracles" / "data"
ORACLE = DATA / "keras_perturb.onnx"


@pytest.mark.parametrize("config", ["r5_zeros", "r4_mean", "r3_invert", "r3_mean"])
def test_curves_equal_innvestigates_perturbation_analysis(config):
    """iNNvestigate scored each step with a Keras loss of -logit[label] averaged over the batch, so its loss is
    minus the mean of our scores at neuron index = the labels, and with Keras's accuracy, which is our accuracy
    along the curve; its most-relevant-first run on -R is our least-relevant-first on R. The perturbed inputs agree
    to float32 rounding (test_regions), so the logits to 1e-6 (they are O(1))."""
    d = np.load(DATA / "keras_perturb.npz")
    c = json.loads(str(d["manifest"]))["configs"][config]
    kw = dict(region=tuple(c["region_shape"]), perturbation=c["perturbation"], steps=c["steps"], neuron="index",
              target=d["labels"], labels=d["labels"])
    morf = perturbation_curve(ORACLE, d["x"], d["analysis"], order="morf", **kw)
    lerf = perturbation_curve(ORACLE, d["x"], d["analysis"], order="lerf", **kw)
    np.testing.assert_array_equal(morf.regions, np.arange(c["steps"] + 1))
    for ours, theirs in ((morf, d[f"{config}|scores"]), (lerf, d[f"{config}|negated|scores"])):
        np.testing.assert_allclose(ours.scores.mean(1), -theirs[:, 0], rtol=0, atol=1e-6)  # the loss
        np.testing.assert_allclose(ours.accuracy, theirs[:, 1], rtol=0, atol=1e-6)  # Keras's accuracy
    assert np.ptp(morf.scores.mean(1)) > 1e-3  # the curve moves: the check compares something


def test_regions_per_step_and_steps_set_the_counts():
    m, _ = linear(features=10)
    x = np.ones((2, 10), np.float32)
    r = np.arange(20, dtype=np.float32).reshape(2, 10)
    assert perturbation_curve(m, x, r, steps=3, regions_per_step=3).regions.tolist() == [0, 3, 6, 9]
    assert perturbation_curve(m, x, r, steps=5, regions_per_step=3).regions.tolist() == [0, 3, 6, 9, 10]
    assert perturbation_curve(m, x, r, steps=2, region=4).regions.tolist() == [0, 1, 2]
    assert perturbation_curve(m, x, r, steps=9, region=4).total_regions == 3  # 10 padded to 12
