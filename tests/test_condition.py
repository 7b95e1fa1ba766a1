"""Conditioned maps (onnxattr/condition.py, the masks in compiler.reverse_pass): the relevance at a tensor T is
masked and only what passes through T reaches the input (Concept Relevance Propagation). zennit-crp's own maps
are compared in tests/methods/test_oracles.py (tag "crp", all eight torch nets); here the definition is checked
on small nets against quantities computed without conditioning: the gradient through T is (m * dy/dT) . dT/dx,
LRP is linear in the relevance, so the channels' maps add up to the map, and conserves it on a bias-free net."""

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper

import onnxattr
from onnxattr.condition import CONDITION, conditioned_shapes, mask_of
from onnxattr.errors import DataError, SelectionError, UsageError
from tests.lrp.nets import resnet_like
from tests.models import single_io_model
from tests.test_dtypes import as_type

X = np.random.default_rng(3).uniform(-1, 1, (3, 2, 8, 8)).astype(np.float32)
R2 = [3, 4, 4, 4]  # the shape of r2 (inside the residual block; the skip goes around it) for one sample


def session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_gradient_through_one_element_is_its_share_of_the_chain_rule():
    """A one-hot mask at element j of r2: the conditioned gradient is dy/dr2_j * dr2_j/dx (the skip's share of
    dy/dx dropped); both factors from unconditioned compiles (keep=, and r2_j explained as the output)."""
    model = resnet_like(bias=True)
    a = onnxattr.create_analyzer("gradient", model, keep=["r2"])
    a.analyze(X)
    dy_dr2 = a.kept["r2"]
    through = onnxattr.create_analyzer("gradient", model, output="r2", neuron_selection_mode="index")
    live = 0
    for j in range(int(np.prod(R2[1:]))):
        mask = np.zeros([1] + R2[1:], np.float32)
        mask.flat[j] = 1.0
        got = a.analyze(X, condition={"r2": mask})
        want = dy_dr2.reshape(len(X), -1)[:, j].reshape(-1, 1, 1, 1) * through.analyze(X, neuron_selection=j)
        np.testing.assert_allclose(got, want, atol=1e-6 * max(np.abs(want).max(), 1e-3))
        live += bool(np.abs(want).max() > 0)
    assert live >= 10  # units of r2 that are on for some sample


def test_only_relevance_through_the_tensor_reaches_the_input():
    """Ones at r2 (inside the block) drop the skip's share; ones at s (the block's sum, which all relevance
    crosses) or at the input leave the map as it is."""
    model = resnet_like(bias=True)
    for method in ("gradient", "lrp.epsilon", "lrp.alpha_2_beta_1"):
        a = onnxattr.create_analyzer(method, model)
        plain = a.analyze(X)
        for tensor, rank in (("s", 4), ("x", 4)):
            ones = np.ones([1] * rank, np.float32)
            np.testing.assert_array_equal(a.analyze(X, condition={tensor: ones}), plain)
        inside = a.analyze(X, condition={"r2": np.ones([1] * 4, np.float32)})
        assert np.abs(inside - plain).max() > 0.05 * np.abs(plain).max(), method


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.alpha_2_beta_1", "deep_taylor", "lrp.epsilon_plus_flat",
                                    "gradient", "input_t_gradient", "pattern.attribution"])
def test_the_channels_maps_add_up_to_the_map(method):
    """The backward is linear in what arrives at s (every rule, given the forward): one map per channel of s,
    summed, is the map."""
    model = resnet_like(bias=True)
    a = onnxattr.create_analyzer(method, model)
    if method.startswith("pattern"):
        a.fit(X, progress=False)
    plain = a.analyze(X)
    total = sum(a.analyze(X, condition={"s": c}) for c in range(4))
    np.testing.assert_allclose(total, plain, atol=2e-6 * np.abs(plain).max())


def test_a_concepts_map_conserves_its_relevance():
    """Bias-free ReLU net, epsilon 1e-7: the map conditioned on channel c of r2 sums to the relevance of that
    channel at r2 (CRP's conditional heatmaps add up to the concept's relevance)."""
    a = onnxattr.create_analyzer("lrp.epsilon", resnet_like(), keep=["r2"], epsilon=1e-7)
    a.analyze(X)
    at_r2 = a.kept["r2"].sum(axis=(2, 3))
    for c in range(4):
        got = a.analyze(X, condition={"r2": [c]}).sum(axis=(1, 2, 3))
        np.testing.assert_allclose(got, at_r2[:, c], rtol=1e-4, atol=1e-5 * np.abs(at_r2).max())


def test_each_sample_its_channels_and_batch_slices():
    a = onnxattr.create_analyzer("lrp.epsilon_plus_flat", resnet_like(bias=True))
    one = [a.analyze(X, condition={"r2": c}) for c in range(4)]
    got = a.analyze(X, condition={"r2": [[0], [2, 3], []]})
    np.testing.assert_array_equal(got[0], one[0][0])
    np.testing.assert_allclose(got[1], one[2][1] + one[3][1], atol=1e-6)
    assert not got[2].any()  # no channel: nothing passes
    np.testing.assert_allclose(a.analyze(X, condition={"r2": [[0], [2, 3], []]}, batch_size=2), got, atol=1e-7)
    np.testing.assert_array_equal(a.analyze(X, condition={"r2": np.array([[0], [2], [1]])}),
                                  np.stack([one[0][0], one[2][1], one[1][2]]))


def test_tensors_one_behind_the_other_and_parallel_ones_refused():
    a = onnxattr.create_analyzer("lrp.epsilon", resnet_like(bias=True))
    alone = a.analyze(X, condition={"r2": 1})
    # every relevance crosses r3 after the block, so ones there change nothing; a channel there does
    np.testing.assert_allclose(a.analyze(X, condition={"r3": np.ones((1, 1, 1, 1), np.float32), "r2": 1}), alone,
                               atol=1e-7)
    both = a.analyze(X, condition={"r3": 0, "r2": 1})
    assert np.abs(both - alone).max() > 1e-3 * np.abs(alone).max()
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["y"])]
    branches = single_io_model(nodes, {}, ["N", 3], ["N", 3])
    with pytest.raises(SelectionError, match="'a' is not computed from 'b'|'b' is not computed from 'a'"):
        onnxattr.compile(branches, "gradient", condition=["a", "b"])


def test_compiled_model_takes_the_masks_as_inputs():
    m = onnxattr.compile(resnet_like(bias=True), "lrp.epsilon", condition=["r2", "h"])
    s = session(m)
    inputs = {i.name: i for i in s.get_inputs()}
    assert inputs[CONDITION + "r2"].type == "tensor(float)" and len(inputs[CONDITION + "r2"].shape) == 4
    assert len(inputs[CONDITION + "h"].shape) == 2
    assert conditioned_shapes(s.get_modelmeta().custom_metadata_map) == {"r2": [None, 4, 4, 4], "h": [None, 6]}
    feeds = {"x": X, CONDITION + "r2": np.ones((1, 4, 1, 1), np.float32), CONDITION + "h": np.ones((3, 6), np.float32)}
    relevance = s.run(["relevance"], feeds)[0]
    plain = onnxattr.create_analyzer("lrp.epsilon", resnet_like(bias=True)).analyze(X, condition={"r2": [0, 1, 2, 3]})
    np.testing.assert_allclose(relevance, plain, atol=1e-7)


def test_float16_model_casts_the_mask():
    model = as_type(resnet_like(bias=True), "float16")
    m = onnxattr.compile(model, "gradient", condition=["r2"])
    x16 = X.astype(np.float16)
    got = session(m).run(["relevance"], {"x": x16, CONDITION + "r2": np.ones((1, 4, 1, 1), np.float32)})[0]
    a = onnxattr.create_analyzer("gradient", resnet_like(bias=True))
    want = a.analyze(X, condition={"r2": [0, 1, 2, 3]})
    np.testing.assert_allclose(got, want, atol=2e-2 * np.abs(want).max())


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(method="integrated_gradients", condition=["r2"]), UsageError, "one reverse pass"),
    (dict(method="conductance", condition=["r2"]), UsageError, "one reverse pass"),
    (dict(method="gradient", condition=["r22"]), SelectionError, "no tensor 'r22'.*did you mean r2"),
    (dict(method="gradient", condition=["d1"]), SelectionError, "tensor 'd1' is not between"),
    (dict(method="gradient", condition=["r2", "r2"]), UsageError, "twice"),
    (dict(method="gradient", condition=[3]), UsageError, "tensor names"),
])
def test_compile_refuses(kwargs, error, match):
    with pytest.raises(error, match=match):
        onnxattr.compile(resnet_like(), kwargs.pop("method"), **kwargs)


def test_two_names_of_one_tensor_refused():
    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Identity", ["a"], ["a2"]),
             helper.make_node("Sigmoid", ["a2"], ["y"])]
    with pytest.raises(UsageError, match="name one tensor"):
        onnxattr.compile(single_io_model(nodes, {}, ["N", 3], ["N", 3]), "gradient", condition=["a", "a2"])


def test_mask_of_channel_numbers():
    shape = [None, 3, 2, 2]
    np.testing.assert_array_equal(mask_of("t", 1, shape, 5), np.array([0, 1, 0], np.float32).reshape(1, 3, 1, 1))
    np.testing.assert_array_equal(mask_of("t", [0, 2], shape, 5)[0, :, 0, 0], [1, 0, 1])
    per = mask_of("t", [[0], [1, 2]], shape, 2)
    assert per.shape == (2, 3, 1, 1) and per[:, :, 0, 0].tolist() == [[1, 0, 0], [0, 1, 1]]
    np.testing.assert_array_equal(mask_of("t", np.array([[2], [0]]), shape, 2)[:, :, 0, 0], [[0, 0, 1], [1, 0, 0]])
    last = mask_of("t", [1], [None, 2, 2, 3], 4, axis=-1)
    assert last.shape == (1, 1, 1, 3) and last.ravel().tolist() == [0, 1, 0]
    given = np.ones((1, 1, 2, 2), bool)
    assert mask_of("t", given, shape, 5).dtype == np.float32


@pytest.mark.parametrize("spec,shape,samples,axis,error,match", [
    (3, [None, 3, 2, 2], 1, 1, DataError, "channel 3 is outside axis 1 of 3 channels"),
    (-1, [None, 3, 2, 2], 1, 1, DataError, "channel -1 is outside"),
    ([[0], [1]], [None, 3], 3, 1, DataError, "2 lists of channels and the data 3 samples"),
    (True, [None, 3], 1, 1, UsageError, "give channel numbers"),
    ([0.5], [None, 3], 1, 1, UsageError, "give channel numbers"),
    (0, [None, 3], 1, 0, UsageError, "condition_axis 0 is not an axis after the batch axis"),
    (0, [None, 3], 1, 2, UsageError, "condition_axis 2"),
    (0, [None, None], 1, 1, DataError, "known only at run time"),
    (0, None, 1, 1, DataError, "rank is known only at run time"),
    (np.ones((2, 3, 1), np.float32), [None, 3, 2, 2], 2, 1, DataError, "does not broadcast"),
    (np.ones((2, 2), np.float32), [None, 3], 2, 1, DataError, "does not broadcast"),
    (np.ones((3, 3), np.float32), [None, 3], 2, 1, DataError, "does not broadcast"),
    (np.full((1, 3), np.nan, np.float32), [None, 3], 2, 1, DataError, "NaN or inf"),
])
def test_mask_of_refuses(spec, shape, samples, axis, error, match):
    with pytest.raises(error, match=match):
        mask_of("t", spec, shape, samples, axis)


def test_analyze_refuses_a_condition_that_is_not_a_dict():
    a = onnxattr.create_analyzer("gradient", resnet_like())
    with pytest.raises(UsageError, match="condition must be a dict"):
        a.analyze(X, condition=["r2"])


def test_kept_tensors_above_and_below_a_conditioned_one():
    """keep= at the conditioned tensor returns its whole relevance (the concepts' relevances, before the mask);
    at a tensor below it, the relevance of the concept there (zennit-crp's attribution graph: r2's channels
    within channel c of r3), which adds up over c to r2's relevance within the whole of r3."""
    a = onnxattr.create_analyzer("lrp.epsilon_plus_flat", resnet_like(bias=True), keep=["r3", "r2"])
    a.analyze(X)
    whole = dict(a.kept)
    a.analyze(X, condition={"r3": np.ones((1, 1, 1, 1), np.float32)})
    np.testing.assert_array_equal(a.kept["r3"], whole["r3"])
    through_r3 = a.kept["r2"]
    parts = []
    for c in range(4):
        a.analyze(X, condition={"r3": c})
        np.testing.assert_array_equal(a.kept["r3"], whole["r3"])  # unmasked at the conditioned tensor
        parts.append(a.kept["r2"])
    assert np.abs(parts[0] - through_r3).max() > 1e-3 * np.abs(through_r3).max()
    np.testing.assert_allclose(sum(parts), through_r3, atol=2e-6 * np.abs(through_r3).max())
    np.testing.assert_allclose(through_r3, whole["r2"], atol=1e-7)  # all of r2's relevance crosses r3


@pytest.mark.parametrize("order", ["branch_first", "shortcut_first"])
def test_kept_tensor_beside_a_conditioned_one_gets_nothing(order):
    """A shortcut beside the conditioned branch carries none of the concept's relevance, whatever the node order
    (zennit-crp records none there); the branch below the conditioned tensor does."""
    rng = np.random.default_rng(1)
    inits = {"w1": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
             "w2": rng.standard_normal((3, 2, 1, 1)).astype(np.float32),
             "d": rng.standard_normal((192, 4)).astype(np.float32), "shape": np.array([0, -1], np.int64)}
    branch = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"])]
    shortcut = [helper.make_node("Conv", ["x", "w2"], ["dn"])]
    tail = [helper.make_node("Add", ["r", "dn"], ["s"]), helper.make_node("Reshape", ["s", "shape"], ["f"]),
            helper.make_node("MatMul", ["f", "d"], ["y"])]
    nodes = (branch + shortcut if order == "branch_first" else shortcut + branch) + tail
    a = onnxattr.create_analyzer("lrp.epsilon", single_io_model(nodes, inits, ["N", 2, 8, 8], ["N", 4]),
                                 keep=["dn", "s", "x"])
    x = rng.uniform(-1, 1, (3, 2, 8, 8)).astype(np.float32)
    a.analyze(x)
    whole = dict(a.kept)
    got = a.analyze(x, condition={"r": [0, 1]})
    assert not a.kept["dn"].any() and np.abs(whole["dn"]).max() > 0
    np.testing.assert_array_equal(a.kept["s"], whole["s"])  # above: the whole relevance
    np.testing.assert_array_equal(a.kept["x"], got)  # below: the concept's


def test_condition_on_an_output_the_explained_one_does_not_read_is_refused():
    nodes = [helper.make_node("Split", ["x"], ["a", "b"], axis=1, num_outputs=2),
             helper.make_node("Relu", ["a"], ["y"])]
    model = single_io_model(nodes, {}, ["N", 4], ["N", 2], opset=18)
    with pytest.raises(SelectionError, match="does not depend on tensor 'b'"):
        onnxattr.compile(model, "gradient", condition=["b"])


def test_mask_beyond_float32_refused():
    with pytest.raises(DataError, match="beyond float32's range"):
        mask_of("t", np.full((1, 3), 1e40), [None, 3], 2)


def test_complex_mask_refused_in_one_line():
    with pytest.raises(UsageError) as e:
        mask_of("t", np.ones((1, 3), np.complex64), [None, 3], 2)
    assert "dtype complex64 and shape [1, 3]" in str(e.value) and "\n" not in str(e.value)


def test_mask_of_a_size_known_only_at_run_time_is_named_when_it_does_not_fit():
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Sigmoid", ["h"], ["y"])]
    a = onnxattr.create_analyzer("gradient", single_io_model(nodes, {}, ["N", "C"], ["N", "C"]))
    x = np.ones((2, 3), np.float32)
    assert a.analyze(x, condition={"h": np.ones((1, 3), np.float32)}).shape == (2, 3)
    with pytest.raises(DataError, match="the mask of condition 'h' has sizes"):
        a.analyze(x, condition={"h": np.ones((1, 5), np.float32)})
    with pytest.raises(DataError, match="known only at run time"):
        a.analyze(x, condition={"h": [0]})
