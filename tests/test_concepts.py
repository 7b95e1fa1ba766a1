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
    model = resnet_like(bias=True)
    got = concepts(model, "lrp.epsilon_plus_flat", "r2", X, top=3, channels=[2, 0, 2])
    assert list(got.references) == [2, 0]
    a = onnxattr.create_analyzer("lrp.epsilon_plus_flat", model)
    for c, maps in got.references.items():
        rows = got.top_relevance[c]
        np.testing.assert_allclose(maps, a.analyze(X[rows], condition={"r2": [c]}), atol=1e-7)
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
    got = concepts(model, "lrp.epsilon_plus_flat", "r2", X, top=3, channels=[1], receptive_field=True)
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
