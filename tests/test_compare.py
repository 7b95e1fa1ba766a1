"""onnxattr/compare.py: two exports of one network explained side by side."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxattr
from onnxattr.cli import main
from onnxattr.compare import _pearson, _top_shared, compare, layout_perm
from onnxattr.errors import DataError, UsageError
from tests.test_cli_explain import folder, watch_image_reads  # noqa: F401 (folder: a fixture)

DATA = Path(__file__).parent / "oracles" / "data"
RESNET, RESNET_BN, VGG = DATA / "torch_resnet.onnx", DATA / "torch_resnet_bn.onnx", DATA / "torch_vgg.onnx"


def oracle_x(name):
    with np.load(DATA / f"{name}.npz") as f:
        return f["x"]


def channels_last(path, out):
    """The model behind a Transpose: it takes [N, H, W, C] data, as a Keras export of the same net would."""
    m = onnx.load(str(path))
    old = m.graph.input[0]
    dims = [d.dim_param or d.dim_value for d in old.type.tensor_type.shape.dim]
    m.graph.node.insert(0, helper.make_node("Transpose", ["x_nhwc"], [old.name], perm=[0, 3, 1, 2]))
    new = helper.make_tensor_value_info("x_nhwc", TensorProto.FLOAT, [dims[0], *dims[2:], dims[1]])
    m.graph.input.remove(old)
    m.graph.input.insert(0, new)
    onnx.save(m, str(out))
    return out


def scaled_weight(path, out, factor, initializer=-1):
    """The model with one initializer (the last, by default) scaled: an export that went wrong."""
    m = onnx.load(str(path))
    t = m.graph.initializer[initializer]
    t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(factor), t.name))
    onnx.save(m, str(out))
    return out


@pytest.mark.parametrize("method", ["gradient", "lrp.epsilon_plus", "integrated_gradients"])
def test_two_exports_of_one_net_agree(method):
    """torch_resnet.onnx (BatchNorms folded by the exporter) and torch_resnet_bn.onnx (kept): one network,
    so the outputs agree to float32 rounding and the maps to 1e-5 of their largest value."""
    x = oracle_x("torch_resnet")
    result = compare(RESNET, RESNET_BN, method, x)
    assert result.perm == (0, 1, 2, 3) and result.choices_agree and len(result.samples) == len(x)
    assert result.within(1e-5), result.table()
    assert all(s.correlation > 0.999999 and s.top_shared == 1.0 and s.output_diff < 1e-5 for s in result.samples)


def test_a_channels_last_export_is_transposed_for_and_back(tmp_path):
    """The second model takes NHWC data: the permutation is found from its declared input, and its map comes
    back in the first model's layout, equal to the first model's own."""
    x = oracle_x("torch_vgg")
    nhwc = channels_last(VGG, tmp_path / "vgg_nhwc.onnx")
    result = compare(VGG, nhwc, "lrp.epsilon_plus_flat", x)
    assert result.perm == (0, 2, 3, 1)
    map_a, map_b = result.maps
    assert map_b.shape == x.shape
    np.testing.assert_allclose(map_b, map_a, rtol=0, atol=1e-6 * np.abs(map_a).max())
    want = onnxattr.create_analyzer("lrp.epsilon_plus_flat", str(VGG)).analyze(x)
    np.testing.assert_array_equal(map_a, want)
    # given the wrong order, the data do not fit the second model
    with pytest.raises(onnxattr.errors.DataError, match="expects shape"):
        compare(VGG, nhwc, "gradient", x, perm=(0, 1, 2, 3))


def test_a_wrong_export_is_found(tmp_path):
    """The first convolution's weights scaled by 1.5 in the second export: outputs and maps differ, and
    within() says so."""
    x = oracle_x("torch_vgg")
    bad = scaled_weight(VGG, tmp_path / "bad.onnx", 1.5, initializer=0)
    assert len(onnx.load(str(bad)).graph.initializer[0].dims) == 4  # a Conv weight
    for method in ("gradient", "lrp.epsilon"):
        result = compare(VGG, bad, method, x, neuron="index", target=np.array([0, 1, 2, 3]))
        assert not result.within(1e-3) and result.worst_relevance_diff > 1e-2, method
        assert max(s.output_diff for s in result.samples) > 1e-2
        assert min(s.correlation for s in result.samples) < 0.9999


def test_b_explains_the_first_models_choice(tmp_path):
    """When the exports choose different neurons, the second is explained at the first one's choice (the maps
    stay comparable) and the disagreement is reported."""
    x = oracle_x("torch_vgg")
    m = onnx.load(str(VGG))
    bias = m.graph.initializer[-1]
    values = numpy_helper.to_array(bias).copy()
    values[0] += 100.0  # neuron 0 wins for every sample in the second export
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    onnx.save(m, str(tmp_path / "biased.onnx"))
    result = compare(VGG, tmp_path / "biased.onnx", "gradient", x)
    assert [s.choice_b for s in result.samples] == [0] * len(x)
    assert not result.choices_agree and not result.within(1.0)
    # a bias shifts no gradient: at the first model's choices the maps are one
    assert result.worst_relevance_diff < 1e-6
    assert "(differ)" in result.table()


def test_layout_perm():
    assert layout_perm((4, 3, 16, 16), ["N", 16, 16, 3]) == (0, 2, 3, 1)
    assert layout_perm((4, 3, 8, 8), [None, None, None, 3]) == (0, 2, 3, 1)  # H, W keep their order
    assert layout_perm((4, 3, 8, 8), ["N", 3, 8, 8]) == (0, 1, 2, 3)
    assert layout_perm((4, 3, 8, 8), ["N", "C", "H", "W"]) == (0, 1, 2, 3)
    assert layout_perm((2, 5, 7), ["N", 7, 5]) == (0, 2, 1)
    with pytest.raises(DataError, match="differ in rank"):
        layout_perm((4, 3, 8, 8), ["N", 192])
    with pytest.raises(DataError, match="in no axis order"):
        layout_perm((4, 3, 8, 8), ["N", 3, 8, 9])


def test_map_similarity_measures():
    a = np.array([0.0, 1.0, 2.0, 3.0, -10.0, 0.5, 0.2, 0.1, 0.0, 4.0])
    assert _pearson(a, 2 * a + 1) == pytest.approx(1.0) and _pearson(a, -a) == pytest.approx(-1.0)
    assert _pearson(np.zeros(4), np.zeros(4)) == 1.0 and _pearson(np.ones(4), np.ones(4)) == 1.0
    # r is undefined where a map is constant (it was 1 for constant 1 against constant 2)
    assert np.isnan(_pearson(np.ones(4), 2 * np.ones(4))) and np.isnan(_pearson(np.zeros(4), np.eye(4)[0]))
    assert _top_shared(a, a) == 1.0  # k = 1: the element -10 by magnitude
    b = a.copy()
    b[4] = 0.0
    assert _top_shared(a, b) == 0.0


def test_both_models_run_in_slices_by_default(tmp_path, monkeypatch):
    """compare's batch_size is "auto": both models explain the data in the same slices (here of 2 samples, the
    second in its own layout, at the first model's choices), slice by slice, and the comparison is the whole
    run's."""
    x = oracle_x("torch_vgg")
    nhwc = channels_last(VGG, tmp_path / "vgg_nhwc.onnx")
    whole = compare(VGG, nhwc, "gradient", x, batch_size=None)
    monkeypatch.setattr(onnxattr.api, "AUTO_VALUES", 2 * int(np.prod(x.shape[1:])))
    sizes, run = [], onnxattr.api.Analyzer._analyze
    monkeypatch.setattr(onnxattr.api.Analyzer, "_analyze", lambda self, X, *a: sizes.append(X.shape) or run(self, X, *a))
    sliced = compare(VGG, nhwc, "gradient", x)
    n, (c, h, w) = len(x), x.shape[1:]
    assert n == 4 and sizes == [(2, c, h, w), (2, h, w, c)] * 2
    assert [s.choice_b for s in sliced.samples] == [s.choice_b for s in whole.samples]
    for got, want in zip(sliced.maps, whole.maps):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * np.abs(want).max())


def test_cli_compare_and_its_tolerance(tmp_path, capsys):
    x = oracle_x("torch_vgg")
    np.save(tmp_path / "x.npy", x)
    bad = scaled_weight(VGG, tmp_path / "bad.onnx", 1.5, initializer=0)
    args = ["compare", str(VGG), str(bad), "-m", "lrp.epsilon", "--data", str(tmp_path / "x.npy"),
            "--neuron", "index", "--target", "0,1,2,3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("lrp.epsilon on ") and "worst" in out and "relevance diff" in out
    assert main(args + ["--tolerance", "1e-3"]) == 1
    assert "the maps differ by up to" in capsys.readouterr().err
    assert main(["compare", str(VGG), str(VGG), "-m", "gradient", "--data", str(tmp_path / "x.npy"),
                 "--tolerance", "0"]) == 0
    assert main(args[:-2]) == 2  # --neuron index without --target
    assert "--target" in capsys.readouterr().err
    assert main(args + ["--perm", "0,x"]) == 2
    assert main(args + ["--perm", "1,0,2,3"]) == 2
    assert "batch first" in capsys.readouterr().err


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "m", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


W = np.random.default_rng(5).standard_normal((4, 3)).astype(np.float32)
X4 = np.random.default_rng(6).standard_normal((3, 4)).astype(np.float32)
DENSE = _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [("w", W)])


def test_a_map_that_is_not_finite_fails_whatever_its_sample():
    """NaN in sample 1's map of the second export (0 * log x at x = 0): the worst row shows NaN and within()
    fails naming the sample (Python's max kept the 0 of sample 0 before)."""
    b = _model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Log", ["x"], ["l"]),
                helper.make_node("Mul", ["l", "zero"], ["z"]), helper.make_node("ReduceSum", ["z", "one"], ["s"]),
                helper.make_node("Add", ["h", "s"], ["y"])],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
               [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
               [("w", W), ("zero", np.zeros(1, np.float32)), ("one", np.ones(1, np.int64))])
    x = np.abs(X4) + 0.5
    x[1, 2] = 0.0
    result = compare(DENSE, b, "gradient", x, neuron="all")
    assert [s.finite for s in result.samples] == [True, False, True]
    assert np.isnan(result.worst_relevance_diff) and not result.within(1.0)
    assert result.problems(1.0) == ["a map is not finite (NaN or inf) for sample 1"]
    assert result.table().splitlines()[-1].split()[3] == "nan"


@pytest.mark.parametrize("neuron", ["max", "all"])
def test_a_scalar_output_is_compared(neuron):
    loss = _model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("ReduceSum", ["h"], ["y"],
                                                                                    keepdims=0)],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])], [("w", W)])
    result = compare(loss, loss, "gradient", X4, neuron=neuron)
    assert result.within(0) and all(s.output_diff == 0 and s.choice_b is None for s in result.samples)
    np.testing.assert_allclose(result.maps[1], np.tile(W.sum(1), (3, 1)), rtol=1e-6)


def test_outputs_in_another_layout_are_matched_neuron_by_neuron():
    """A segmentation output [N, K, H, W] in one export and [N, H, W, K] in the other: the first model's
    choice (a flat index in its layout) is translated for the second, and the outputs compared after
    transposing back; an output [N, K, 1, 1] against [N, K] is the same neurons."""
    k = np.random.default_rng(7).standard_normal((5, 2, 1, 1)).astype(np.float32)
    conv = [helper.make_node("Conv", ["x", "k"], ["y"])]
    nchw = _model(conv, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 4, 4])], [("k", k)])
    nhwc = _model([helper.make_node("Transpose", ["xl"], ["x"], perm=[0, 3, 1, 2]), *conv,
                   helper.make_node("Transpose", ["y"], ["yl"], perm=[0, 2, 3, 1])],
                  [helper.make_tensor_value_info("xl", TensorProto.FLOAT, ["N", 4, 4, 2])],
                  [helper.make_tensor_value_info("yl", TensorProto.FLOAT, ["N", 4, 4, 5])], [("k", k)])
    x = np.random.default_rng(8).standard_normal((2, 2, 4, 4)).astype(np.float32)
    for neuron, target in (("max", None), ("index", np.array([3, 70]))):
        result = compare(nchw, nhwc, "gradient", x, neuron=neuron, target=target)
        assert result.perm == (0, 2, 3, 1) and result.outputs_compared and result.within(1e-6), result.table()
    assert result.choices_compared is False
    result = compare(nchw, nhwc, "gradient", x)
    assert result.choices_compared and result.choices_agree
    column = _model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                     helper.make_node("Unsqueeze", ["h", "axes"], ["y"])],
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 1, 1])],
                    [("w", W), ("axes", np.array([2, 3], np.int64))])
    result = compare(DENSE, column, "gradient", X4)
    assert result.outputs_compared and result.choices_compared and result.within(0)


def test_layout_bound_methods_are_not_compared_across_layouts(tmp_path):
    nhwc = channels_last(VGG, tmp_path / "vgg_nhwc.onnx")
    with pytest.raises(UsageError, match="occlusion's windows.*transposed"):
        compare(VGG, nhwc, "occlusion", oracle_x("torch_vgg"))
    # a mask that fits only the first layout: the layout refusal, not the second model's shape error
    with pytest.raises(UsageError, match="feature_ablation's windows.*transposed"):
        compare(VGG, nhwc, "feature_ablation", oracle_x("torch_vgg"), feature_mask=np.zeros((1, 16, 16), int))


def test_token_ids_explained_at_their_embedding():
    """Integer ids [N, S] in, the map [N, S, D] of the embedding they select: nothing to transpose."""
    emb = np.random.default_rng(9).standard_normal((10, 4)).astype(np.float32)
    model = _model([helper.make_node("Gather", ["e", "ids"], ["emb"]),
                    helper.make_node("ReduceSum", ["emb", "one"], ["pooled"], keepdims=0),
                    helper.make_node("MatMul", ["pooled", "w"], ["y"])],
                   [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 5])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                   [("e", emb), ("one", np.ones(1, np.int64)), ("w", W)])
    ids = np.random.default_rng(10).integers(0, 10, (2, 5))
    result = compare(model, model, "input_t_gradient", ids, input_a="emb", input_b="emb")
    assert result.maps[0].shape == (2, 5, 4) and result.within(0)


def test_cli_compare_with_a_feed_and_a_finite_tolerance(tmp_path, capsys):
    masked = DATA / "torch_masked_encoder.onnx"
    with np.load(DATA / "torch_masked_encoder.npz") as f:
        np.save(tmp_path / "x.npy", f["x"])
        np.save(tmp_path / "mask.npy", f["feed:mask"])
    args = ["compare", str(masked), str(masked), "-m", "gradient", "--input", "emb", "--data",
            str(tmp_path / "x.npy"), "--feed", f"mask={tmp_path / 'mask.npy'}"]
    assert main(args + ["--tolerance", "0"]) == 0
    assert main(args + ["--tolerance", "inf"]) == 2
    assert "finite" in capsys.readouterr().err


def test_cli_feed_b_gives_the_second_model_its_own_array(tmp_path, capsys):
    """The same export with another padding mask in b: the maps differ where the masks do, and --feed-b of the
    same mask as --feed makes them equal (before --feed-b one name could carry one array only)."""
    masked = DATA / "torch_masked_encoder.onnx"
    with np.load(DATA / "torch_masked_encoder.npz") as f:
        np.save(tmp_path / "x.npy", f["x"])
        mask = f["feed:mask"]
    np.save(tmp_path / "mask.npy", mask)
    other = mask.copy()
    other[:, -2:] = 0  # two more padded positions
    np.save(tmp_path / "other.npy", other)
    args = ["compare", str(masked), str(masked), "-m", "gradient", "--input", "emb", "--data",
            str(tmp_path / "x.npy"), "--feed", f"mask={tmp_path / 'mask.npy'}", "--tolerance", "1e-6"]
    assert main(args + ["--feed-b", f"mask={tmp_path / 'mask.npy'}"]) == 0
    assert main(args + ["--feed-b", f"mask={tmp_path / 'other.npy'}"]) == 1
    capsys.readouterr()
    assert main(args + ["--feed-b", "mask"]) == 2
    assert "--feed-b expects NAME=FILE.npy" in capsys.readouterr().err


def test_a_classifier_ending_in_softmax_is_compared_at_its_choice():
    """The logits are explained (the softmax stripped) but only the probabilities are an output: the choice
    is their argmax (the logits' too, for [N, K]); it failed with 'needs the explained tensor among its
    outputs' before."""
    from tests.models import mlp, mlp_logits

    model, weights = mlp()
    x = np.random.default_rng(11).standard_normal((5, 6)).astype(np.float32)
    result = compare(model, model, "lrp.epsilon", x)
    assert result.within(0) and result.outputs_compared
    assert [s.choice_a for s in result.samples] == mlp_logits(x, weights).argmax(1).tolist()


def test_probabilities_are_not_compared_with_logits():
    """One export ends in a softmax, the other does not: the maps are compared (both explain the logits), the
    outputs are not (it reported a difference of 2.5 to 4.7 between probabilities and logits)."""
    from tests.models import mlp

    x = np.random.default_rng(12).standard_normal((3, 6)).astype(np.float32)
    result = compare(mlp()[0], mlp(softmax=False)[0], "gradient", x)
    assert not result.outputs_compared and all(s.output_diff is None for s in result.samples)
    assert result.within(0)


def test_other_axis_orders_are_noted_only_where_the_declared_shapes_differ(tmp_path):
    """16 x 16 images fit with H and W swapped too; two exports declaring one shape are one layout (no note),
    a channels-last one gets the note that another order fits."""
    x = oracle_x("torch_resnet")
    assert compare(RESNET, RESNET_BN, "gradient", x).other_orders == 0
    nhwc = channels_last(VGG, tmp_path / "nhwc.onnx")
    assert compare(VGG, nhwc, "gradient", oracle_x("torch_vgg")).other_orders == 1


def test_cli_json_report(tmp_path):
    import json

    x = oracle_x("torch_vgg")
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "report.json"
    assert main(["compare", str(VGG), str(VGG), "-m", "gradient", "--data", str(tmp_path / "x.npy"),
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["method"] == "gradient" and report["perm"] == [0, 1, 2, 3] and len(report["samples"]) == 4
    assert all(s["relevance_diff"] == 0 and s["choice_a"] == s["choice_b"] for s in report["samples"])
    assert main(["compare", str(VGG), str(VGG), "-m", "gradient", "--data", str(tmp_path / "x.npy"),
                 "--json", str(tmp_path / "x.npy")]) == 8  # never over an input
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), x)


def test_a_feed_only_the_second_model_lacks_is_named_for_it(tmp_path, capsys):
    """--feed-b of a name the second model has not (or a missing one): the message did not say which model."""
    masked = DATA / "torch_masked_encoder.onnx"
    with np.load(DATA / "torch_masked_encoder.npz") as f:
        np.save(tmp_path / "x.npy", f["x"])
        np.save(tmp_path / "mask.npy", f["feed:mask"])
    args = ["compare", str(masked), str(masked), "-m", "gradient", "--input", "emb", "--data", str(tmp_path / "x.npy")]
    assert main(args + ["--feed", f"mask={tmp_path / 'mask.npy'}", "--feed-b", f"nosuch={tmp_path / 'mask.npy'}"]) == 2
    assert "the second model: 'nosuch': not an input of the model" in capsys.readouterr().err


def test_cli_compare_takes_image_files_and_folders(tmp_path):
    """compare --data, like explain's: image files or a folder of them (by name), one sample each, resized to the
    first model's input; the report is the stacked .npy's."""
    import json

    from PIL import Image

    from onnxattr.pixels import load_image

    digits = Path(__file__).resolve().parents[1] / "models" / "digits_cnn.onnx"
    other = scaled_weight(digits, tmp_path / "other.onnx", 1.5, initializer=0)
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(9)
    for name in ("b.png", "a.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (10, 12), dtype=np.uint8)).save(tmp_path / "imgs" / name)
    files = [str(tmp_path / "imgs" / n) for n in ("a.png", "b.png", "c.png")]
    np.save(tmp_path / "x.npy", np.concatenate([load_image(f, ["N", 1, 8, 8]) for f in files]))
    reports = []
    for data in ([str(tmp_path / "x.npy")], [str(tmp_path / "imgs")], files):
        out = tmp_path / f"r{len(reports)}.json"
        assert main(["compare", str(digits), str(other), "-m", "lrp.epsilon", "--data", *data, "--json",
                     str(out)]) == 0
        reports.append(json.loads(out.read_text()))
    assert len(reports[0]["samples"]) == 3 and reports[0]["samples"][0]["relevance_diff"] > 0
    assert reports[1] == reports[0] and reports[2] == reports[0]


def test_data_read_by_rows_is_compared_a_slice_at_a_time(tmp_path):
    """Data with a shape whose slices are arrays (a reader of image files) is read one slice at a time, each once
    for both models (the second in its own layout), never whole; the report is the array's, and without keep_maps
    no map is kept."""
    x = oracle_x("torch_vgg")
    nhwc = channels_last(VGG, tmp_path / "vgg_nhwc.onnx")
    read = []

    class Rows:
        shape, dtype = x.shape, x.dtype

        def __getitem__(self, rows):
            read.append(rows.indices(len(x)))
            return x[rows]

        def __array__(self, *args, **kwargs):
            raise AssertionError("the data was read whole")

    want = compare(VGG, nhwc, "lrp.epsilon", x, batch_size=2)
    got = compare(VGG, nhwc, "lrp.epsilon", Rows(), batch_size=3, keep_maps=False)
    assert read == [(0, 3, 1), (3, 4, 1)] and got.maps is None
    assert_samples_match(got.as_dict()["samples"], want.as_dict()["samples"], 1e-5)
    assert [s.choice_b for s in got.samples] == [s.choice_b for s in want.samples] and len(got.samples) == 4


def test_cli_compare_reads_a_folder_a_slice_at_a_time(tmp_path, folder, monkeypatch):  # noqa: F811
    """--batch-size 2 over five images: each image is decoded once, two at a time, never all of them; the JSON
    report is the stacked .npy's."""
    import json

    digits = Path(__file__).resolve().parents[1] / "models" / "digits_cnn.onnx"
    other = scaled_weight(digits, tmp_path / "other.onnx", 1.5, initializer=0)
    args = ["compare", str(digits), str(other), "-m", "lrp.epsilon", "--batch-size", "2", "--json"]
    assert main(args + [str(tmp_path / "want.json"), "--data", str(tmp_path / "x.npy")]) == 0
    decoded, slices = watch_image_reads(monkeypatch)
    assert main(args + [str(tmp_path / "got.json"), "--data", str(folder)]) == 0
    assert sorted(decoded) == sorted(str(p) for p in folder.iterdir()) and len(decoded) == 5
    assert [rows.indices(5) for rows in slices] == [(0, 2, 1), (2, 4, 1), (4, 5, 1)]
    got, want = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("got", "want"))
    assert_samples_match(got["samples"], want["samples"], 1e-6)
    assert len(got["samples"]) == 5


def assert_samples_match(got: list, want: list, rtol: float) -> None:
    """Two reports' samples: the same fields, choices and finiteness, the measures to ``rtol``."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key in w:
            if isinstance(w[key], float):
                np.testing.assert_allclose(g[key], w[key], rtol=rtol, atol=1e-9, err_msg=key)
            else:
                assert g[key] == w[key], key


def test_the_table_shows_its_first_samples_and_the_worst_of_all(tmp_path, monkeypatch, capsys):
    """table(shown): the first samples, a line counting the rest, and the worst over every sample (the same line as
    the whole table's); the command line shows TABLE_ROWS of them and says where every one is written."""
    import onnxattr.cli

    x = oracle_x("torch_vgg")
    result = compare(VGG, scaled_weight(VGG, tmp_path / "bad.onnx", 1.5, initializer=0), "lrp.epsilon", x)
    whole, cut = ([line.split() for line in t.splitlines()] for t in (result.table(), result.table(2)))
    assert len(whole) == 6 and cut[:3] == whole[:3] and cut[3] == ["(2", "more)"] and cut[4] == whole[5]
    # which sample each worst value is: the first whose choices differ, the largest diffs, the lowest agreements
    s = result.samples
    differ = [i for i in range(4) if s[i].choice_a != s[i].choice_b]
    want = [str(differ[0]) if differ else "-", *(str(int(f(np.array([getattr(x, k) for x in s])))) for k, f in (
        ("output_diff", np.argmax), ("relevance_diff", np.argmax), ("correlation", np.argmin),
        ("top_shared", np.argmin)))]
    assert cut[5] == ["at", "sample", *want] and len(cut) == 6
    np.save(tmp_path / "x.npy", x)
    monkeypatch.setattr(onnxattr.cli, "TABLE_ROWS", 3)
    args = ["compare", str(VGG), str(tmp_path / "bad.onnx"), "-m", "lrp.epsilon", "--data", str(tmp_path / "x.npy")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(1 more)" in out and "note: the table shows the first 3 of 4 samples, and the worst of all; --json" in out
    assert main(args + ["--json", str(tmp_path / "r.json")]) == 0
    assert "(1 more)" in (out := capsys.readouterr().out) and "note: the table" not in out


def test_a_quantized_export_has_its_outputs_compared(tmp_path):
    """A float model against its copy whose logits pass a trailing QuantizeLinear -> DequantizeLinear (steps of
    0.1, nothing clipped): the second explains the scores before the quantization and outputs the quantized ones,
    the scores' own values within half a step: compared, where a softmax's probabilities would not be. Before,
    compare left the outputs out ("not a graph output of both")."""
    from tests.models import mlp
    from tests.test_select import _quantized_mlp

    model = mlp(softmax=False)[0]
    quantized = _quantized_mlp(softmax_first=False, scale=0.1)
    quantized.graph.node.pop()  # without its softmax: the logits quantized
    quantized.graph.node[-1].output[0] = "z"
    onnx.save(model, tmp_path / "float.onnx")
    onnx.save(onnx.shape_inference.infer_shapes(quantized), tmp_path / "quantized.onnx")
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32) * 0.2
    result = compare(tmp_path / "float.onnx", tmp_path / "quantized.onnx", "gradient", x)
    assert result.outputs_compared and result.choices_agree
    logits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(logits).max() < 12.7  # inside the range
    assert all(0 < s.output_diff <= 0.05 / np.abs(logits[k]).max() + 1e-6 for k, s in enumerate(result.samples))
    assert result.within(1e-5), result.table()
