"""onnxattr/evaluate.py: several maps scored at the same neurons, by curves (a linear model's closed form), by
Captum's metrics as their own functions give them, over other inputs, fixed batches and slices of the data."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.cli import main
from onnxattr.curves import perturbation_curve
from onnxattr.errors import EXIT_CODES, DataError, SelectionError, UsageError
from onnxattr.evaluate import evaluate
from tests.models import mlp, mlp_logits



def linear(batch="N", features=6, classes=3, seed=0):
    """y = x @ W, x [N, F] -> y [N, K]: each feature adds x_i·W[i, k] to logit k."""
    w = np.random.default_rng(seed).standard_normal((features, classes)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "linear",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])],
                          [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, w


def test_a_linear_models_curve_is_its_closed_form():
    """y_k = Σ_i x_i W[i, k]; replacing feature i by 0 removes x_i W[i, k]. With the map x ⊙ W[:, k] (what
    input_t_gradient returns), most relevant first takes off the largest contributions one by one."""
    m, w = linear()
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    y = x.astype(np.float64) @ w
    t = y.argmax(1)
    contrib = x * w[:, t].T
    c = perturbation_curve(m, x, contrib, perturbation="zeros", steps=10)
    assert c.total_regions == 6 and c.regions.tolist() == [0, 1, 2, 3, 4, 5, 6]  # stops when all are replaced
    for n in range(4):
        ordered = np.sort(contrib[n].astype(np.float64))[::-1]
        expected = y[n, t[n]] - np.concatenate([[0.0], np.cumsum(ordered)])
        np.testing.assert_allclose(c.scores[:, n], expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(c.aopc[n], np.mean(expected[0] - expected), rtol=1e-5, atol=1e-5)
    ev = evaluate(m, ["input_t_gradient"], x, relevance={"given": contrib}, perturbation="zeros", steps=10)
    np.testing.assert_allclose(ev.curves["input_t_gradient"]["morf"].scores, c.scores, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ev.targets, t)
    # a faithful map beats its negation: MoRF falls, LeRF rises, so ABPC > 0, and < 0 for the negation
    ev = evaluate(m, [], x, relevance={"x*w": contrib, "-x*w": -contrib}, perturbation="zeros")
    assert (ev.abpc("x*w") > 0).all() and (ev.abpc("-x*w") < 0).all()
    np.testing.assert_allclose(ev.abpc("x*w"), -ev.abpc("-x*w"), rtol=1e-6)


def test_neuron_index_all_and_the_logits_behind_a_softmax():
    m, weights = mlp()  # ends in a Softmax: the logits z are scored, as they are explained
    x = np.random.default_rng(2).standard_normal((3, 6)).astype(np.float32)
    logits = mlp_logits(x, weights)
    r = np.ones_like(x)
    c = perturbation_curve(m, x, r, neuron="index", target=[2, 0, 1], steps=1, perturbation="zeros")
    np.testing.assert_allclose(c.scores[0], logits[np.arange(3), [2, 0, 1]], rtol=1e-5)
    c = perturbation_curve(m, x, r, neuron="all", steps=1)
    np.testing.assert_allclose(c.scores[0], logits.sum(1), rtol=1e-5, atol=1e-5)
    c = perturbation_curve(m, x, r, steps=1)
    np.testing.assert_allclose(c.scores[0], logits.max(1), rtol=1e-5)
    ev = evaluate(m, ["gradient"], x, neuron="index", target=1, steps=2)
    assert ev.targets.tolist() == [1, 1, 1]


def test_a_model_of_fixed_batch_runs_sample_by_sample():
    m, w = linear(batch=1)
    x = np.random.default_rng(3).standard_normal((3, 6)).astype(np.float32)
    c = perturbation_curve(m, x, x, steps=2, perturbation="zeros")
    np.testing.assert_allclose(c.scores[0], (x @ w).max(1), rtol=1e-5)
    ev = evaluate(m, ["gradient"], x, steps=2)
    assert ev.curves["gradient"]["morf"].scores.shape == (3, 3)


def test_forward_passes_run_in_slices_of_the_input_values(monkeypatch):
    """Unless batch_size is given, the scorer runs SCORE_VALUES input values a pass (here 12: two samples of six),
    at most MAX_ROWS rows; the outputs, and evaluate's curves, are the whole run's."""
    from onnxattr import scoring

    m, w = linear()
    x = np.random.default_rng(5).standard_normal((5, 6)).astype(np.float32)
    whole = evaluate(m, ["gradient"], x, steps=3)
    monkeypatch.setattr(scoring, "SCORE_VALUES", 12)
    scorer = scoring.Scorer(m)
    rows, run = [], scorer.runner.run
    monkeypatch.setattr(scorer.runner, "run", lambda feeds, *a: rows.append(len(feeds["x"])) or run(feeds, *a))
    np.testing.assert_allclose(scorer.outputs(x), x @ w, rtol=1e-5, atol=1e-6)
    assert rows == [2, 2, 1]
    monkeypatch.setattr(scoring, "MAX_ROWS", 1)
    rows.clear()
    scorer.outputs(x)
    assert rows == [1] * 5
    monkeypatch.setattr(scoring, "MAX_ROWS", 1024)
    sliced = evaluate(m, ["gradient"], x, steps=3)
    np.testing.assert_allclose(sliced.curves["gradient"]["morf"].scores, whole.curves["gradient"]["morf"].scores,
                               rtol=1e-6)


def test_the_maps_are_explained_in_auto_slices(monkeypatch):
    """evaluate's maps come from analyze's "auto" slices unless batch_size is given (here 2 samples' values a
    slice, sensitivity's moved copies too), with the whole run's curves and sensitivity."""
    m, _ = linear()
    x = np.random.default_rng(4).standard_normal((5, 6)).astype(np.float32)
    args = dict(steps=2, metrics=("aopc", "sensitivity"), sensitivity={"n_perturb_samples": 2})
    whole = evaluate(m, ["gradient"], x, **args)
    monkeypatch.setattr(onnxattr.api, "AUTO_VALUES", 12)
    sizes, run = [], onnxattr.api.Analyzer._analyze
    monkeypatch.setattr(onnxattr.api.Analyzer, "_analyze", lambda self, X, *a: sizes.append(len(X)) or run(self, X, *a))
    sliced = evaluate(m, ["gradient"], x, **args)
    assert sizes == [2, 2, 1] * 3  # the map, then the two moved copies
    np.testing.assert_allclose(sliced.curves["gradient"]["morf"].scores, whole.curves["gradient"]["morf"].scores,
                               rtol=1e-6)
    np.testing.assert_allclose(sliced.sensitivity["gradient"], whole.sensitivity["gradient"], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("call, error, words", [
    (lambda m, x: perturbation_curve(m, x, x[:, :3]), DataError, r"shape \[2, 3\] and the data \[2, 6\]"),
    (lambda m, x: perturbation_curve(m, x, x, steps=0), UsageError, "steps must be a positive integer"),
    (lambda m, x: perturbation_curve(m, x, x, perturbation="blur"), UsageError, "perturbation must be one of"),
    (lambda m, x: perturbation_curve(m, x, x, perturbation=float("nan")), UsageError, "finite number"),
    (lambda m, x: perturbation_curve(m, x, x, pad_mode="mirror"), UsageError, "pad_mode must be one of"),
    (lambda m, x: perturbation_curve(m, x, x, value_range=(1, 0)), UsageError, "lo <= hi"),
    (lambda m, x: perturbation_curve(m, x, x, neuron="index"), UsageError, "needs a target"),
    (lambda m, x: perturbation_curve(m, x, x, neuron="index", target=3), DataError, "out of range"),
    (lambda m, x: perturbation_curve(m, x, x, target=1), UsageError, "neuron 'index'"),
    (lambda m, x: evaluate(m, ["gradient"], x, params={"stepz": 3}), UsageError, "no method given has"),
    (lambda m, x: evaluate(m, ["gradient"], x, relevance={"gradient": x}), UsageError, "given twice"),
    (lambda m, x: evaluate(m, [], x), UsageError, "nothing to evaluate"),
    (lambda m, x: evaluate(m, ["gradient"], x, orders=["morf", "best"]), UsageError, "orders must be"),
])
def test_bad_calls_name_the_problem(call, error, words):
    m, _ = linear()
    x = np.ones((2, 6), np.float32)
    with pytest.raises(error, match=words):
        call(m, x)


def test_parameters_go_to_the_methods_that_have_them():
    m, _ = linear()
    x = np.random.default_rng(4).standard_normal((2, 6)).astype(np.float32)
    ev = evaluate(m, ["integrated_gradients", "gradient"], x, params={"steps": 4}, steps=3)
    assert set(ev.curves) == {"integrated_gradients", "gradient"}


def test_an_intermediate_input_and_a_loss_are_refused():
    m, _ = mlp()
    m.graph.value_info.append(helper.make_tensor_value_info("h2", TensorProto.FLOAT, ["N", 8]))
    x = np.ones((2, 6), np.float32)
    with pytest.raises(SelectionError, match="computed inside the model"):
        perturbation_curve(m, np.ones((2, 8), np.float32), np.ones((2, 8)), input="h2")
    loss = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["y"], keepdims=0)], "loss",
                             [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])])
    lm = helper.make_model(loss, opset_imports=[helper.make_opsetid("", 11)])
    lm.ir_version = 8
    with pytest.raises(UsageError, match="not one row per sample"):
        perturbation_curve(lm, x, x)


def test_evaluate_runs_captums_metrics_as_their_own_functions_do():
    """evaluate's infidelity and sensitivity columns are metrics.infidelity / sensitivity_max of the same map at the
    same neurons (the same seeds: the same draws)."""
    from onnxattr.metrics import infidelity, sensitivity_max

    m, _ = linear()
    x = np.random.default_rng(6).uniform(0.5, 1.5, (3, 6)).astype(np.float32)
    ev = evaluate(m, ["gradient", "input_t_gradient"], x, relevance={"ones": np.ones_like(x)},
                  metrics=["infidelity", "sensitivity"], infidelity={"noise_scale": 0.2, "n_perturb_samples": 4},
                  sensitivity={"radius": 0.1})
    assert ev.curves == {} and set(ev.infidelity) == {"gradient", "input_t_gradient", "ones"}
    assert set(ev.sensitivity) == {"gradient", "input_t_gradient"}  # a given map cannot be re-explained
    # the gradient is read per unit of input change, a given map (like Captum's decorator) per unit of x
    for name, r, by_inputs in (("gradient", None, False), ("ones", np.ones_like(x), True)):
        r = r if r is not None else onnxattr.create_analyzer("gradient", m, neuron_selection_mode="index").analyze(
            x, neuron_selection=ev.targets)
        np.testing.assert_allclose(ev.infidelity[name], infidelity(m, x, r, noise_scale=0.2, n_perturb_samples=4,
                                                                   multiply_by_inputs=by_inputs), rtol=1e-12)
    np.testing.assert_allclose(ev.sensitivity["input_t_gradient"],
                               sensitivity_max(m, "input_t_gradient", x, radius=0.1), rtol=1e-12)
    assert ev.infidelity["input_t_gradient"].max() < 1e-9  # exact for a linear model, read per unit of x
    assert ev.infidelity["gradient"].max() < 1e-9  # and its gradient, read per unit of change
    assert ev.infidelity["ones"].min() > 1e-6
    text = ev.table()
    assert "infidelity" in text and "sensitivity max" in text and "AOPC" not in text
    assert ev.per_sample()["ones"].keys() == {"infidelity"}
    with pytest.raises(UsageError, match="metrics must be"):
        evaluate(m, ["gradient"], x, metrics=["aopc", "fidelity"])


def masked(features=6, classes=3):
    """y = (x ⊙ mask) @ W: a second graph input, one row per sample (declared under the batch axis's name)."""
    w = np.random.default_rng(7).standard_normal((features, classes)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Mul", ["x", "mask"], ["xm"]), helper.make_node("MatMul", ["xm", "W"], ["y"])],
                          "masked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features]),
                                     helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", features])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", classes])],
                          [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m, w


def test_other_inputs_are_checked_cast_and_follow_their_samples():
    """helper audit 51: feeds went to onnxruntime unchecked (a feed named like the data replaced the perturbed input;
    a missing one was a raw traceback; a float64 mask was refused where explain casts it)."""
    m, w = masked()
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    mask = (rng.random((4, 6)) < 0.7).astype(np.float64)  # float64: cast to the input's float32
    contrib = x * mask * w[:, (x * mask @ w).argmax(1)].T
    for batch_size in (None, 3):  # 3: the mask is sliced with the samples
        c = perturbation_curve(m, x, contrib, input="x", inputs={"mask": mask}, steps=6,
                               batch_size=batch_size)
        y = (x * mask).astype(np.float64) @ w
        t = y.argmax(1)
        for n in range(4):
            ordered = np.sort(contrib[n].astype(np.float64))[::-1]
            np.testing.assert_allclose(c.scores[:, n], y[n, t[n]] - np.concatenate([[0.0], np.cumsum(ordered)]),
                                       rtol=1e-5, atol=1e-5)
    ev = evaluate(m, ["gradient"], x, input="x", inputs={"mask": mask}, metrics=["aopc", "infidelity", "sensitivity"], steps=2,
                  infidelity={"n_perturb_samples": 2}, sensitivity={"n_perturb_samples": 2})
    assert ev.infidelity["gradient"].shape == (4,)
    with pytest.raises(UsageError, match="also needs input 'mask'"):
        perturbation_curve(m, x, contrib, input="x")
    with pytest.raises(UsageError, match="not an input of the model besides the explained one"):
        perturbation_curve(m, x, contrib, input="x", inputs={"mask": mask, "x": x})


def test_single_elements_are_zeroed_by_default_and_mean_is_refused_there():
    """helper audit 51: on tabular data the default (mean over regions of one element) changed nothing, so every
    map scored AOPC 0."""
    m, w = linear()
    x = np.random.default_rng(9).standard_normal((3, 6)).astype(np.float32)
    c = perturbation_curve(m, x, x, steps=6)
    assert c.perturbation == "zeros" and np.abs(c.aopc).max() > 0
    with pytest.raises(UsageError, match="regions of one element would not change"):
        perturbation_curve(m, x, x, perturbation="mean")
    assert perturbation_curve(m, x, x, perturbation="mean", region=2, steps=1).perturbation == "mean"


def test_two_axes_without_channels_take_single_elements():
    """A [L, D] sample is no image: regions of one element unless given (the README's rule)."""
    from onnxattr.regions import layout

    assert layout((5, 7)).region == (1, 1) and layout((3, 5, 7)).region == (9, 9)


def test_a_fixed_batch_above_one_and_huge_step_counts():
    m, w = linear(batch=2)
    x = np.random.default_rng(10).standard_normal((4, 6)).astype(np.float32)
    from onnxattr.metrics import infidelity

    assert infidelity(m, x, x, n_perturb_samples=3).shape == (4,)
    c = perturbation_curve(m, x, x, steps=10**12)  # the curve stops at the 6 regions, without building 10^12 counts
    assert c.regions.tolist() == list(range(7))


def test_json_has_no_nan_and_bad_values_are_refused(tmp_path):
    m, _ = linear()
    x = np.ones((2, 6), np.float32)
    ev = evaluate(m, [], x, relevance={"nan": np.full_like(x, np.nan)}, metrics=["infidelity"])
    assert ev.per_sample()["nan"]["infidelity"] == [None, None]
    json.dumps(ev.per_sample(), allow_nan=False)
    with pytest.raises(DataError, match="dtype <U1"):
        evaluate(m, [], x, relevance={"s": np.full(x.shape, "a")})
    with pytest.raises(UsageError, match="seed must be"):
        perturbation_curve(m, x, x, seed=-1)
    with pytest.raises(UsageError, match="sensitivity re-explains"):
        evaluate(m, [], x, relevance={"r": x}, metrics=["sensitivity"])


def test_a_number_beyond_float16_is_refused():
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "half",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["N", 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["N", 2])],
                          [numpy_helper.from_array(np.ones((4, 2), np.float16), "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    x = np.ones((2, 4), np.float16)
    assert perturbation_curve(m, x, x, perturbation=2.0, steps=2).scores.shape == (3, 2)
    with pytest.raises(DataError, match="beyond what the model's input type float16 holds"):
        perturbation_curve(m, x, x, perturbation=1e6)


def test_seeded_methods_are_re_explained_from_the_same_draws():
    """helper audit 52: one session continues its random stream, so sensitivity measured smoothgrad's own noise
    (0.3-0.7 with copies not moved at all); each copy now starts from the seed again."""
    from onnxattr.metrics import sensitivity_max

    m, _ = linear()
    x = np.random.default_rng(11).standard_normal((2, 6)).astype(np.float32)
    still = np.zeros((2, 2, 6))
    for method, params in (("smoothgrad", {"augment_by_n": 4, "base": "input_t_gradient"}), ("random", {})):
        np.testing.assert_array_equal(sensitivity_max(m, method, x, draws=still, **params), 0.0)


def test_a_fixed_batch_model_takes_per_sample_feeds_for_more_samples():
    m, w = masked()
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    m.graph.input[1].type.tensor_type.shape.dim[0].dim_value = 2
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 2
    rng = np.random.default_rng(12)
    x, mask = rng.standard_normal((4, 6)).astype(np.float32), (rng.random((4, 6)) < 0.5).astype(np.float32)
    ev = evaluate(m, ["gradient"], x, input="x", inputs={"mask": mask}, metrics=["aopc", "infidelity"], steps=2)
    np.testing.assert_allclose(ev.curves["gradient"]["morf"].scores[0], ((x * mask) @ w).max(1), rtol=1e-5)


def test_every_refusal_comes_before_the_first_method_runs():
    m, _ = linear()
    x = np.ones((2, 6), np.float32)
    ran = []
    for kwargs, error, words in (
            (dict(params={"augment_by_n": -1}), UsageError, "augment_by_n"),
            (dict(metrics=["infidelity"], infidelity={"baselines": np.zeros(5)}), DataError, "do not broadcast"),
            (dict(metrics=["sensitivity"], sensitivity={"draws": np.zeros((2, 1, 5))}), DataError, "draws has shape"),
            (dict(region=6), UsageError, "single region"),
            (dict(infidelity={"noise": 1}), UsageError, "infidelity has no setting 'noise'"),
            (dict(stepz=3), UsageError, "evaluate has no setting 'stepz'")):
        with pytest.raises(error, match=words):
            evaluate(m, ["gradient", "smoothgrad"], x, progress=ran.append, **kwargs)
        assert ran == []
    with pytest.raises(UsageError, match="names"):
        evaluate(m, [], x, relevance={0: x})


def test_an_alias_is_read_as_its_method():
    from onnxattr.metrics import includes_input

    assert not includes_input("gradient.baseline")


def test_labels_follow_the_accuracy_along_the_curves(tmp_path, capsys):
    m, w = linear()
    rng = np.random.default_rng(14)
    x = rng.standard_normal((5, 6)).astype(np.float32)
    labels = np.array([0, 1, 2, 0, 1])
    ev = evaluate(m, ["input_t_gradient"], x, labels=labels, steps=6, perturbation="zeros")
    c = ev.curves["input_t_gradient"]["morf"]
    # by hand: zero the features in the map's order and compare the argmax with the labels
    t = ev.targets
    contrib = x * w[:, t].T
    for k, count in enumerate(c.regions):
        xk = x.copy()
        for n in range(5):
            xk[n, np.argsort(-contrib[n], kind="stable")[:count]] = 0
        np.testing.assert_array_equal(c.correct[k], (xk @ w).argmax(1) == labels)
    np.testing.assert_allclose(c.accuracy, c.correct.mean(1))
    assert "accuracy MORF" in ev.table() and "accuracy_lerf" in ev.per_sample()["input_t_gradient"]
    assert ev.arrays()["input_t_gradient|morf|correct"].shape == (7, 5)
    for bad, words in ((np.array([0, 1]), "one integer per sample"), (np.array([0, 1, 2, 3, 4]), "3 neurons"),
                       (np.zeros(5), "one integer per sample")):
        with pytest.raises(DataError, match=words):
            evaluate(m, ["gradient"], x, labels=bad)
    with pytest.raises(UsageError, match="add the aopc metric"):
        evaluate(m, ["gradient"], x, labels=labels, metrics=["infidelity"])
    mp, xp, yp, js = tmp_path / "lin.onnx", tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "m.json"
    onnx.save(m, mp)
    np.save(xp, x)
    np.save(yp, labels)
    assert main(["evaluate", str(mp), "-m", "gradient", "--data", str(xp), "--labels", str(yp), "--steps", "3",
                 "--json", str(js)]) == 0
    assert "Accuracy: the share" in capsys.readouterr().out
    assert len(json.loads(js.read_text())["gradient"]["accuracy_morf"]) == 5
    assert main(["evaluate", str(mp), "-m", "gradient", "--data", str(xp), "--labels", str(yp),
                 "-o", str(yp)]) == EXIT_CODES["OutputFileError"]


def _evaluation_arrays(ev):
    return {**ev.arrays(), **{f"{name}|{k}": np.asarray(v, np.float64) for name, row in ev.per_sample().items()
                              for k, v in row.items()}}


@pytest.mark.parametrize("model", ["linear", "masked"])
def test_a_dataset_evaluated_a_slice_at_a_time_equals_one_run(model, tmp_path):
    """Every metric of every map (methods, a given map read from a memory-mapped .npy), per-sample targets and
    labels, gaussian perturbations and seeded draws: slices of 3 samples (3, 3, 1) give what one run gives. Each
    sample's draws come from its own row's generator, so a slice boundary moves none of them."""
    m, w = linear() if model == "linear" else masked()
    rng = np.random.default_rng(21)
    x = rng.standard_normal((7, 6)).astype(np.float32)
    inputs = {} if model == "linear" else {"mask": (rng.random((7, 6)) < 0.7).astype(np.float32)}
    np.save(tmp_path / "given.npy", rng.standard_normal((7, 6)))
    given = np.load(tmp_path / "given.npy", mmap_mode="r")
    target, labels = rng.integers(0, 3, 7), rng.integers(0, 3, 7)
    told = []
    kwargs = dict(relevance={"given": given}, neuron="index", target=target, labels=labels, inputs=inputs, input="x",
                  metrics=["aopc", "infidelity", "sensitivity"], channel_axis=None, perturbation="gaussian", steps=4,
                  seed=5, infidelity={"n_perturb_samples": 3}, sensitivity={"n_perturb_samples": 2, "seed": 6})
    one = evaluate(m, ["gradient", "lrp.epsilon"], x, **kwargs)
    sliced = evaluate(m, ["gradient", "lrp.epsilon"], x, batch_size=3, progress=told.append, **kwargs)
    want, got = _evaluation_arrays(one), _evaluation_arrays(sliced)
    assert sorted(got) == sorted(want) and "given|sensitivity_max" not in got
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-9, err_msg=key)
    assert told[:3] == ["gradient, samples 1-3 of 7", "lrp.epsilon, samples 1-3 of 7", "given, samples 1-3 of 7"]
    assert told[-1] == "given, samples 7-7 of 7" and len(told) == 9
    # the seed reaches each metric: another gives other draws
    other = _evaluation_arrays(evaluate(m, ["gradient", "lrp.epsilon"], x, batch_size=3, **{**kwargs, "seed": 8}))
    assert not np.allclose(other["gradient|morf"], want["gradient|morf"])


def test_a_reader_is_read_a_slice_at_a_time_never_whole():
    """Data with a shape whose slices are arrays (a reader of image files, a memory-mapped .npy) is read one slice
    of batch_size samples at a time (each once), as explain reads it; the evaluation is the array's."""
    m, _ = linear()
    x = np.random.default_rng(22).standard_normal((5, 6)).astype(np.float32)
    read = []

    class Rows:
        shape, dtype = x.shape, x.dtype

        def __getitem__(self, rows):
            read.append(rows)
            return x[rows]

        def __array__(self, *args, **kwargs):
            raise AssertionError("the data was read whole")

    kwargs = dict(metrics=["aopc", "infidelity"], steps=3, batch_size=2)
    ev = evaluate(m, ["gradient"], Rows(), **kwargs)
    assert [rows.indices(5) for rows in read] == [(0, 2, 1), (2, 4, 1), (4, 5, 1)]
    want = _evaluation_arrays(evaluate(m, ["gradient"], x, **kwargs))
    got = _evaluation_arrays(ev)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_a_seeded_method_starts_each_slice_from_its_draws():
    """smoothgrad explains with its own noise: each slice's map of x and its moved copies' maps start from the same
    draws, so copies not moved at all change no map, in the later slices too."""
    m, _ = linear()
    x = np.random.default_rng(23).standard_normal((3, 6)).astype(np.float32)
    ev = evaluate(m, ["smoothgrad"], x, metrics=["sensitivity"], batch_size=1,
                  params={"augment_by_n": 4, "base": "input_t_gradient"},
                  sensitivity={"draws": np.zeros((3, 2, 6))})
    np.testing.assert_array_equal(ev.sensitivity["smoothgrad"], 0.0)


def test_refusals_name_the_whole_data_before_any_slice_runs():
    """A target, labels or draws that do not fit the data are refused with the data's sample count, before the
    first method runs, though the data is evaluated in slices of 2."""
    m, _ = linear()
    x = np.ones((5, 6), np.float32)
    with pytest.raises(DataError, match="target holds 4 indices and the data 5 samples"):
        evaluate(m, ["gradient"], x, neuron="index", target=[0, 1, 2, 0], batch_size=2)
    with pytest.raises(DataError, match="out of range"):
        evaluate(m, ["gradient"], x, neuron="index", target=[0, 1, 2, 0, 3], batch_size=2)
    with pytest.raises(DataError, match="one integer per sample \\(5\\)"):
        evaluate(m, ["gradient"], x, labels=np.zeros(4, int), batch_size=2)
    with pytest.raises(DataError, match="draws has shape"):
        evaluate(m, ["gradient"], x, metrics=["infidelity"], batch_size=2, infidelity={"draws": np.zeros((4, 2, 6))})
    with pytest.raises(DataError, match="no samples"):
        evaluate(m, ["gradient"], np.ones((0, 6), np.float32))
    with pytest.raises(DataError, match="input data is not an array"):
        evaluate(m, ["gradient"], [[1.0, 2.0], [3.0]])


def test_a_method_whose_maps_need_the_whole_batch_keeps_the_data_whole(monkeypatch):
    """feature_permutation explains each sample against the others of its batch: where the data would be sliced
    ("auto", here two samples' values a slice) it runs whole, read in one slice, with the one run's maps; a
    batch_size that would slice it is refused before anything runs."""
    from onnxattr import scoring

    m, _ = linear()
    x = np.random.default_rng(24).standard_normal((5, 6)).astype(np.float32)
    want = _evaluation_arrays(evaluate(m, ["feature_permutation", "gradient"], x, steps=3))
    monkeypatch.setattr(scoring, "SCORE_VALUES", 12)
    read = []

    class Rows:
        shape, dtype = x.shape, x.dtype

        def __getitem__(self, rows):
            read.append(rows.indices(5))
            return x[rows]

    got = _evaluation_arrays(evaluate(m, ["feature_permutation", "gradient"], Rows(), steps=3))
    assert read == [(0, 5, 1)]
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, err_msg=key)
    assert len(_evaluation_arrays(evaluate(m, ["gradient"], Rows(), steps=3))["targets"]) == 5
    assert read[1:] == [(0, 2, 1), (2, 4, 1), (4, 5, 1)]  # without it, slices of two
    told = []
    with pytest.raises(UsageError, match="feature_permutation explains each sample against the other samples"):
        evaluate(m, ["gradient", "feature_permutation"], x, batch_size=2, progress=told.append)
    assert told == []
