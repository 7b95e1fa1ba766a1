"""onnxattr/concepts.py: a layer's channels over a dataset (CRP's relevance and activation maximization).

Against zennit-crp 0.6.0's FeatureVisualization (tests/oracles/make_crp_concepts.py: a residual CNN, 24 samples
explained at their targets with EpsilonPlusFlat, two layers): zennit-crp ranks every sample per channel by its share
of relevance (of activation), sum over the channel over the sum of |channel sums| (+1e-10). Our share of each
sample zennit-crp ranked must equal the share it recorded (1e-5 absolute: shares are at most 1 in magnitude, and
the maps agree to float32 rounding), and our ranking must be in descending order of those shares; the sample
indices themselves can differ only among ties (many channel sums of a ReLU output are exactly 0). Zennit without
its ResNet canonizer copies relevance into both operands of the residual Add, so the oracle is compared with our
EpsilonPlusFlat whose Add takes the gradient rule, written as a user's rule file (as test_oracles does for the
"nocanon" maps)."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import onnxattr
from onnxattr.concepts import concepts, per_channel, shares, top_samples
from onnxattr.errors import DataError, SelectionError, UsageError
from onnxattr.methods.lrp import preset_folder
from tests.lrp.nets import resnet_like

DATA = Path(__file__).resolve().parent / "oracles" / "data"
X = np.random.default_rng(5).uniform(-1, 1, (7, 2, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def oracle():
    return dict(np.load(DATA / "crp_concepts.npz"))


@pytest.fixture(scope="module")
def gradient_add_rules(tmp_path_factory):
    text = (preset_folder() / "lrp.epsilon_plus_flat.toml").read_text()
    assert 'add = "z"' in text
    path = tmp_path_factory.mktemp("rules") / "epsilon_plus_flat.gradient_add.toml"
    path.write_text(text.replace('add = "z"', 'add = "gradient"'))
    return str(path)


@pytest.mark.parametrize("layer", ["/conv1/Conv_output_0", "/block_relu/Relu_output_0"])
@pytest.mark.parametrize("receptive_field", [False, True])
def test_references_match_zennit_crp(oracle, gradient_add_rules, layer, receptive_field):
    """zennit-crp's reference heatmaps (started at the layer from its activation, conditioned on the channel or on
    its most relevant unit; summed over the input's channels) of channels 0 and 3 on their 3 most relevant samples:
    the same samples, and the maps to float32 rounding (2e-7 of the map's max; 1e-5 allowed)."""
    got = concepts(str(DATA / "crp_cnn.onnx"), gradient_add_rules, layer, oracle["x"], labels=oracle["labels"],
                   top=3, channels=[0, 3], receptive_field=receptive_field, batch_size=10)
    for c in (0, 3):
        np.testing.assert_array_equal(got.top_relevance[c], oracle[f"rel_idx:{layer}"][:3, c])
        want = oracle[f"{'ref_rf' if receptive_field else 'ref'}:{layer}:{c}"]
        np.testing.assert_allclose(got.references[c].sum(axis=1), want, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("layer", ["/conv1/Conv_output_0", "/block_relu/Relu_output_0"])
def test_matches_zennit_crp_feature_visualization(oracle, gradient_add_rules, layer):
    assert layer in oracle["tensors"]
    n = len(oracle["x"])
    got = concepts(str(DATA / "crp_cnn.onnx"), gradient_add_rules, layer, oracle["x"], labels=oracle["labels"],
                   top=n, batch_size=10)
    for kind, share, top in (("rel", got.relevance_share, got.top_relevance),
                             ("act", got.activation_share, got.top_activation)):
        want_idx, want_val = oracle[f"{kind}_idx:{layer}"], oracle[f"{kind}_val:{layer}"]
        assert want_idx.shape == (n, share.shape[1]) and np.abs(want_val).max() > 0.1
        np.testing.assert_allclose(np.take_along_axis(share, want_idx, 0), want_val, atol=1e-5)
        ours = np.take_along_axis(share, top.T, 0)
        assert (np.diff(ours, axis=0) <= 0).all()
        np.testing.assert_allclose(ours, want_val, atol=1e-5)  # the same values in the same order


def test_statistics_are_the_channel_sums_of_the_kept_relevance_and_the_layer():
    model = resnet_like(bias=True)
    got = concepts(model, "lrp.epsilon", "r2", X, top=3, batch_size=3)
    a = onnxattr.create_analyzer("lrp.epsilon", model, keep=["r2"])
    a.analyze(X)
    np.testing.assert_allclose(got.relevance, a.kept["r2"].sum(axis=(2, 3)), rtol=1e-6, atol=1e-9)
    probe = resnet_like(bias=True)
    probe.graph.output[0].name = "r2"  # the layer as the model's output, run by onnxruntime directly
    del probe.graph.node[[n.output[0] for n in probe.graph.node].index("r2") + 1:]
    r2 = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    np.testing.assert_allclose(got.activation, r2.sum(axis=(2, 3)), rtol=1e-6)
    assert got.top_relevance.shape == (4, 3)
    np.testing.assert_allclose(np.abs(got.relevance_share).sum(1), 1.0, rtol=1e-6)


def test_labels_pick_the_explained_output_and_slices_do_not_matter():
    model = resnet_like(bias=True)
    labels = np.array([0, 1, 2, 3, 0, 1, 2])
    one = concepts(model, "lrp.epsilon_plus_flat", "r2", X, labels=labels, batch_size=32)
    sliced = concepts(model, "lrp.epsilon_plus_flat", "r2", X, labels=labels, batch_size=2)
    np.testing.assert_allclose(sliced.relevance, one.relevance, rtol=1e-6, atol=1e-9)
    a = onnxattr.create_analyzer("lrp.epsilon_plus_flat", model, neuron_selection_mode="index", keep=["r2"])
    a.analyze(X, neuron_selection=labels)
    np.testing.assert_allclose(one.relevance, a.kept["r2"].sum(axis=(2, 3)), rtol=1e-6, atol=1e-9)
    predicted = concepts(model, "lrp.epsilon_plus_flat", "r2", X)
    assert np.abs(predicted.relevance - one.relevance).max() > 1e-3


def test_references_are_the_top_samples_maps_conditioned_on_the_channel():
    """start "layer": the layer explained from its own value, masked to the channel; start "output": the map of
    the explained output conditioned on the channel."""
    model = resnet_like(bias=True)
    got = concepts(model, "lrp.epsilon_plus_flat", "r2", X, top=3, channels=[2, 0, 2])
    out = concepts(model, "lrp.epsilon_plus_flat", "r2", X, top=3, channels=[2], start="output")
    assert list(got.references) == [2, 0]
    from_layer = onnxattr.create_analyzer("lrp.epsilon_plus_flat", model, output="r2", neuron_selection_mode="all")
    a = onnxattr.create_analyzer("lrp.epsilon_plus_flat", model)
    for c, maps in got.references.items():
        rows = got.top_relevance[c]
        np.testing.assert_allclose(maps, from_layer.analyze(X[rows], condition={"r2": [c]}), atol=1e-7)
    rows = got.top_relevance[2]
    np.testing.assert_allclose(out.references[2], a.analyze(X[rows], condition={"r2": [2]}), atol=1e-7)
    assert np.abs(out.references[2] - got.references[2]).max() > 1e-3 * np.abs(got.references[2]).max()
    arrays = got.arrays()
    assert {"relevance", "activation", "relevance_share", "activation_share", "top_relevance", "top_activation",
            "reference:2", "reference:0"} == set(arrays)


def test_helpers():
    v = np.array([[1.0, -3.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(shares(v), [[0.25, -0.75, 0.0], [0.0, 0.0, 0.0]], rtol=1e-8)
    assert top_samples(np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 1.0]]), 2).tolist() == [[1, 2], [0, 1]]
    assert top_samples(np.ones((2, 1)), 5).tolist() == [[0, 1]]
    t = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    np.testing.assert_allclose(per_channel(t, 1), [[66, 210]])
    np.testing.assert_allclose(per_channel(t, -1), t.sum(axis=(1, 2)))


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(channels=[4]), DataError, "channel 4 is not one of the 4 channels"),
    (dict(channels=[True]), DataError, "channel True"),
    (dict(labels=[0, 1]), DataError, "one integer per sample"),
    (dict(top=0), UsageError, "top"),
    (dict(axis=0), UsageError, "axis 0 is not an axis after the batch axis"),
    (dict(axis=1.0), UsageError, "axis must be an integer"),
    (dict(method="integrated_gradients"), UsageError, "keep: integrated_gradients"),
    (dict(layer="r22"), SelectionError, "did you mean r2"),
])
def test_refuses(kwargs, error, match):
    args = dict(method="lrp.epsilon", layer="r2")
    args.update(kwargs)
    with pytest.raises(error, match=match):
        concepts(resnet_like(), args.pop("method"), args.pop("layer"), X, **args)


def test_no_samples_refused():
    with pytest.raises(DataError, match="no samples"):
        concepts(resnet_like(), "lrp.epsilon", "r2", X[:0])


def test_receptive_field_references_are_conditioned_on_the_most_relevant_unit():
    """zennit-crp's mask_rf: each top sample's map conditioned on the channel's unit where its relevance there is
    largest (a one-hot mask over the whole layer), not on the channel."""
    model = resnet_like(bias=True)
    got = concepts(model, "lrp.epsilon_plus_flat", "r2", X, top=3, channels=[1], receptive_field=True,
                   start="output")
    rows = got.top_relevance[1]
    a = onnxattr.create_analyzer("lrp.epsilon_plus_flat", model, keep=["r2"])
    a.analyze(X[rows])
    at = a.kept["r2"][:, 1].reshape(3, -1)
    np.testing.assert_array_equal(got.fields[1], at.argmax(1))
    mask = np.zeros((3, 4, 16), np.float32)
    mask[np.arange(3), 1, at.argmax(1)] = 1
    want = a.analyze(X[rows], condition={"r2": mask.reshape(3, 4, 4, 4)})
    np.testing.assert_allclose(got.references[1], want, atol=1e-7)
    whole = a.analyze(X[rows], condition={"r2": [1]})
    assert np.abs(whole - want).max() > 1e-3 * np.abs(whole).max()
    assert set(got.arrays()) >= {"reference:1", "field:1"}


def test_below_is_the_lower_tensors_relevance_within_the_concept():
    """Bias-free net, epsilon 1e-7: all of channel c's relevance at r3 reaches p1 (below the block, the skip
    included), so p1's channel sums add up to it; r2, inside the block, gets the share through the convolution
    branch only: the relevance kept at r2 in the map conditioned on channel c of r3."""
    model = resnet_like()
    got = concepts(model, "lrp.epsilon", "r3", X, top=3, epsilon=1e-7)
    a = onnxattr.create_analyzer("lrp.epsilon", model, keep=["r3", "r2"], epsilon=1e-7)
    for c in range(4):
        rows = got.top_relevance[c]
        a.analyze(X[rows])
        at_r3 = a.kept["r3"][:, c].sum(axis=(1, 2))
        np.testing.assert_allclose(got.below(c, "p1").sum(axis=1), at_r3, rtol=1e-4, atol=1e-6 * np.abs(at_r3).max())
        inside = got.below(c, "r2")
        a.analyze(X[rows], condition={"r3": [c]})
        want = a.kept["r2"].astype(np.float64).sum(axis=(2, 3))
        np.testing.assert_allclose(inside, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    with pytest.raises(SelectionError, match="'r3' is not computed from 'h'"):
        got.below(0, "h")
    with pytest.raises(DataError, match="channel 9"):
        got.below(9, "r2")


def _shared_table_model():
    """x [N, 6] and a table s [K, 8] shared by every sample: y = Relu(x W) + mean_k(s), a layer r = Relu(x W)."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(2).standard_normal((6, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("ReduceMean", ["s"], ["m"], axes=[0], keepdims=1),
             helper.make_node("Add", ["r", "m"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6]),
                                       helper.make_tensor_value_info("s", TensorProto.FLOAT, ["K", 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                          [numpy_helper.from_array(w, "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_inputs_shared_by_the_samples_are_not_sliced():
    """A table [K, 8] read by every sample stays whole in every slice (helper audit 54: it was cut per slice)."""
    rng = np.random.default_rng(3)
    x, table = rng.standard_normal((10, 6)).astype(np.float32), rng.standard_normal((10, 8)).astype(np.float32)
    model = _shared_table_model()
    got = concepts(model, "gradient", "r", x, inputs={"s": table}, batch_size=4, top=2, channels=[1], input="x")
    whole = concepts(model, "gradient", "r", x, inputs={"s": table}, batch_size=32, top=2, input="x")
    np.testing.assert_allclose(got.relevance, whole.relevance, rtol=1e-6)
    np.testing.assert_allclose(got.activation, np.maximum(x @ _shared_w(model), 0), rtol=1e-5, atol=1e-6)


def _shared_w(model):
    from onnx import numpy_helper

    return numpy_helper.to_array(model.graph.initializer[0])


def test_float16_model_and_a_fixed_batch_model():
    """The layer's activation in the model's own float type (it was declared float32: helper audit 54); a model
    of batch 4 runs 7 samples and 3 references in padded slices of 4."""
    from tests.test_dtypes import as_type

    f16 = concepts(as_type(resnet_like(bias=True), "float16"), "lrp.epsilon", "r2", X, top=2)
    f32 = concepts(resnet_like(bias=True), "lrp.epsilon", "r2", X, top=2)
    np.testing.assert_allclose(f16.activation, f32.activation, rtol=2e-2, atol=2e-2 * np.abs(f32.activation).max())
    fixed = resnet_like(bias=True)
    for vi in (fixed.graph.input[0], fixed.graph.output[0]):
        vi.type.tensor_type.shape.dim[0].dim_value = 4
    got = concepts(fixed, "lrp.epsilon", "r2", X, top=3, channels=[1], batch_size=32)
    np.testing.assert_allclose(got.relevance, f32.relevance, rtol=1e-5, atol=1e-6)
    want = concepts(resnet_like(bias=True), "lrp.epsilon", "r2", X, top=3, channels=[1])
    np.testing.assert_allclose(got.references[1], want.references[1], atol=1e-6)


def test_non_finite_samples_and_early_checks_are_named():
    bad = X.copy()
    bad[2, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="sample 2 gives NaN or inf"):
        concepts(resnet_like(), "lrp.epsilon", "r2", bad)
    with pytest.raises(DataError, match="labels: .*out of range"):
        concepts(resnet_like(), "lrp.epsilon", "r2", X, labels=[0, 1, 2, 3, 4, 5, 6])
    with pytest.raises(DataError, match="labels: the labels must be integers"):
        concepts(resnet_like(), "lrp.epsilon", "r2", X, labels=np.zeros(7))
    with pytest.raises(UsageError, match="conductance cannot be conditioned"):
        concepts(resnet_like(), "conductance", "r2", X, channels=[0])
    with pytest.raises(UsageError, match="at its largest output, or at its label"):
        concepts(resnet_like(), "lrp.epsilon", "r2", X, neuron_selection_mode="all")
    with pytest.raises(UsageError, match="start must be one of layer, output"):
        concepts(resnet_like(), "lrp.epsilon", "r2", X, start="input")
    assert list(concepts(resnet_like(), "lrp.epsilon", "r2", X, top=2, channels=3).references) == [3]
