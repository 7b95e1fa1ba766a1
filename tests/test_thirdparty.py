"""Models exported by frameworks nobody here controls (tests/thirdparty/data, each made by a script in
tests/thirdparty/make_*.py whose docstring says how to run it).

Every shipped model must compile for gradient and guided_backprop, pass the full checker, keep its
original outputs bit for bit (onnxruntime's graph optimizations off), keep its batch dynamic and give a finite map of the input's shape; models
with nothing differentiable must be refused with a one-line UnsupportedModelError. No framework is
needed here: where a framework's own gradient was available it is committed beside the model (.npz).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxattr
from onnxattr.cli import main
from onnxattr.errors import EXIT_CODES, UnsupportedModelError
from onnxattr.methods import REGISTRY

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "thirdparty", "data")
SWEEP = (9, 11, 13, 15, 17, 28)

# file -> size of the dynamic dims other than batch (YOLO's height and width)
MODELS = {
    "torch_dynamo_rescnn.onnx": {},             # make_torch_dynamo.py: exporter optimizer folded BN
    "torch_dynamo_rescnn_raw.onnx": {},         # optimize=False: BatchNormalization, CastLike, Expand
    "torch_dynamo_modern.onnx": {},             # opset 23: GroupNormalization, RMSNormalization, Resize axes
    "torch_dynamo_attention_op18.onnx": {},     # scaled_dot_product_attention spelled out (MatMul, Softmax, Trilu)
    "keras_transformer.onnx": {},               # make_keras.py: tf2onnx, LayerNorm as a BatchNormalization
    "keras_rnn.onnx": {},                       # make_keras_rnn.py: SimpleRNN, GRU(reset_after=False) as Loops
    "keras_rnn_masked.onnx": {},                # Masking: a Where on the mask inside the Loop
    "torch_dynamo_spectrogram_op18.onnx": {},   # a waveform classifier: rfft, irfft (DFT) and STFT inside
    "torch_dynamo_spectrogram_op20.onnx": {},   # the same at opset 20 (DFT's axis an input)
    "torch_stn.onnx": {},                       # make_torch_stn.py: opset 20, AffineGrid + GridSample
    "torchvision_dcn.onnx": {},                 # make_torchvision.py: opset 19, DeformConv (DCNv2)
    "torchvision_vit_ts.onnx": {},              # a VisionTransformer, TorchScript export
    "torchvision_mvit_ts.onnx": {},             # a video MViT-v2: lists as Loops filling ONNX sequences
    "paddle_cnn.onnx": {},                      # make_paddle.py: paddle.onnx.export, opset 13
    "skl_mlp_classifier.onnx": {},              # make_sklearn.py: label + ZipMap (sequence of maps)
    "skl_mlp_classifier_nozipmap.onnx": {},
    "skl_mlp_regressor.onnx": {},
    "yolov8n.onnx": {"height": 64, "width": 64},  # make_yolo.py, 12.7 MB
} | {f"opset_sweep_{o}.onnx": {} for o in SWEEP}  # make_opset_sweep.py


def path_of(name: str) -> str:
    p = os.path.join(DATA, name)
    if not os.path.exists(p):
        pytest.skip(f"{name} is not in tests/thirdparty/data (run its tests/thirdparty/make_*.py)")
    return p


def session(model, exact: bool = False) -> ort.InferenceSession:
    """exact: no onnxruntime graph optimizations, whose fusions (Conv+BatchNorm, ...) depend on which
    operands are initializers and so may round the canonical graph differently by an ulp; and no prepacked
    weights, which MatMul uses only for initializers (a Loop carries tf2onnx's RNN weights, its unrolled copy
    reads them as initializers: the same products, summed in another order)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if exact:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.add_session_config_entry("session.disable_prepacking", "1")
    data = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def random_input(sess: ort.InferenceSession, batch: int, dims: dict, seed: int = 0):
    arg = sess.get_inputs()[0]
    shape = [batch if k == 0 else d if isinstance(d, int) else dims[d] for k, d in enumerate(arg.shape)]
    return arg.name, np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@functools.lru_cache(maxsize=None)
def compiled(name: str, method: str, neuron: str = "max", input: str | None = None) -> onnx.ModelProto:
    return onnxattr.compile(path_of(name), method, neuron=neuron, input=input)


def same_output(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return a == b  # ZipMap: a list of {label: probability}


@pytest.mark.parametrize("method", ["gradient", "guided_backprop"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_compiles_runs_and_keeps_outputs(name, method):
    path = path_of(name)
    model = compiled(name, method)
    onnx.checker.check_model(model, full_check=True)
    original, explained = session(path, exact=True), session(model, exact=True)
    assert [o.name for o in model.graph.output] == [o.name for o in original.get_outputs()] + ["relevance"]
    # batch stays dynamic in the declared output and at run time
    batch_dim = model.graph.output[-1].type.tensor_type.shape.dim[0]
    assert not batch_dim.HasField("dim_value")
    for batch in (1, 3):
        x_name, x = random_input(original, batch, MODELS[name], seed=batch)
        want = original.run(None, {x_name: x})
        got = explained.run(None, {x_name: x})
        assert len(got) == len(want) + 1
        for a, b in zip(want, got):
            assert same_output(a, b)
        r = got[-1]
        assert r.shape == x.shape and r.dtype == np.float32
        assert np.isfinite(r).all()
        if method == "gradient":
            assert np.abs(r).max() > 0


def test_opset_sweep_gives_identical_maps():
    """One model lifted by onnx.version_converter from opset 9 to each opset: the same map every time."""
    maps = {}
    for opset in SWEEP:
        name = f"opset_sweep_{opset}.onnx"
        declared = next(o.version for o in onnx.load(path_of(name)).opset_import if o.domain in ("", "ai.onnx"))
        assert declared == opset
        sess = session(compiled(name, "gradient"))
        x_name, x = random_input(sess, 4, {}, seed=7)
        maps[opset] = sess.run(["relevance"], {x_name: x})[0]
    for opset in SWEEP:
        np.testing.assert_allclose(maps[opset], maps[9], rtol=1e-5, atol=1e-7, err_msg=f"opset {opset}")


def test_yolov8n_matches_torch_autograd():
    """output0 is [batch, 84, anchors] (4 box coordinates + 80 class scores per anchor); it is flattened
    per sample, so neuron c * anchors + a is row c of anchor a. torch's own gradients are committed."""
    ref = np.load(path_of("yolov8n_ref.npz"))
    path = path_of("yolov8n.onnx")
    x = ref["x"]
    y = session(path).run(None, {"images": x})[0]
    np.testing.assert_allclose(y, ref["y"], rtol=1e-4, atol=1e-3)
    for neuron, t, g in (("max", None, ref["g_max"]), ("index", ref["t_cls"], ref["g_cls"])):
        feeds = {"images": x} | ({"target": t.astype(np.int64)} if t is not None else {})
        r = session(compiled("yolov8n.onnx", "gradient", neuron)).run(["relevance"], feeds)[0]
        scale = np.abs(g).max()
        assert scale > 0
        np.testing.assert_allclose(r, g, rtol=0, atol=1e-3 * scale, err_msg=neuron)


def test_torch_dynamo_outputs_match_torch_and_raw_export():
    """The exporter's optimized and raw (optimize=False) graphs give the torch output and one map."""
    ref = np.load(path_of("torch_dynamo_rescnn.npz"))
    maps = []
    for name in ("torch_dynamo_rescnn.onnx", "torch_dynamo_rescnn_raw.onnx"):
        logits, r = session(compiled(name, "gradient")).run(None, {"image": ref["x"]})
        np.testing.assert_allclose(logits, ref["y"], rtol=1e-4, atol=1e-5)
        maps.append(r)
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-4, atol=1e-6)


def assert_framework_gradient(name: str, input_name: str, ref, neurons=("max", "index"), other=None):
    """The compiled gradient of ``name`` gives the framework's own output and gradient (committed in ``ref``:
    g_max for the largest logit, g_2 for logit 2) to 1e-4 of the gradient's largest entry (float32 in both,
    summed in different orders); ``other``: the model's other inputs."""
    x = ref["x"]
    for neuron in neurons:
        target = np.full(len(ref["y"]), 2, np.int64)  # one per output row (a graph net's: one, for 6 node rows)
        feeds, g = ({}, ref["g_max"]) if neuron == "max" else ({"target": target}, ref["g_2"])
        feeds.update(other or {})
        explained = input_name if other else None  # a second float input (boxes): name the explained one
        logits, r = session(compiled(name, "gradient", neuron, explained)).run(None, {input_name: x, **feeds})
        np.testing.assert_allclose(logits, ref["y"], rtol=1e-4, atol=1e-5)
        scale = np.abs(g).max()
        assert scale > 0
        np.testing.assert_allclose(r, g, rtol=0, atol=1e-4 * scale, err_msg=neuron)


def test_torch_dynamo_modern_matches_torch_autograd():
    """Opset 23 as torch's dynamo exporter writes it (GroupNormalization-21, RMSNormalization-23, Resize with
    axes, LayerNormalization on a channels-last view): the map is torch's own gradient, for the largest logit
    and for logit 2."""
    assert_framework_gradient("torch_dynamo_modern.onnx", "image", np.load(path_of("torch_dynamo_modern.npz")))


def test_torch_attention_matches_torch_autograd_at_both_opsets():
    """One causal self-attention block exported at opset 18 (the exporter spells scaled_dot_product_attention out:
    MatMul, Softmax, a Trilu mask) and at opset 23 (one Attention node, which canonicalize expands into its ONNX
    definition): both maps are torch's gradient."""
    ref = np.load(path_of("torch_dynamo_attention.npz"))
    for opset in (18, 23):
        assert_framework_gradient(f"torch_dynamo_attention_op{opset}.onnx", "x", ref)



def test_torch_spectrogram_matches_torch_autograd_at_both_opsets():
    """A waveform classifier with its front end inside (rfft, a gain per bin, irfft; torch.stft with a Hann window
    and reflect padding; a filterbank and log power), exported at opsets 18 and 20 as DFT and STFT nodes: both
    maps are torch's gradient with respect to the waveform."""
    ref = np.load(path_of("torch_dynamo_spectrogram.npz"))
    for opset in (18, 20):
        assert_framework_gradient(f"torch_dynamo_spectrogram_op{opset}.onnx", "wave", ref)



def test_torch_gnn_matches_torch_autograd():
    """Message passing as torch_geometric-style code writes it (scatter_reduce amax: ScatterElements with reduction
    max; index_add: ScatterND with reduction add), on a fixed graph whose node axis is no batch axis: the map over
    the node features is torch's gradient of the graph's logit."""
    ref = np.load(path_of("torch_dynamo_gnn.npz"))
    assert_framework_gradient("torch_dynamo_gnn.onnx", "nodes", ref)
    # the Python API: one target for the graph's one output row, though the data has 6 rows
    path = path_of("torch_dynamo_gnn.onnx")
    gradient = onnxattr.create_analyzer("gradient", path, neuron_selection_mode="index")
    np.testing.assert_allclose(gradient.analyze(ref["x"], neuron_selection=2), ref["g_2"], rtol=0,
                               atol=1e-4 * np.abs(ref["g_2"]).max())
    # integrated gradients must not take the node rows for samples of its own (a point per row would mix them)
    plain = onnxattr.create_analyzer("gradient", path)
    riemann = ref["x"] * np.mean([plain.analyze(k / 8 * ref["x"]) for k in range(8)], 0)
    ig = onnxattr.create_analyzer("integrated_gradients", path, steps=8).analyze(ref["x"])
    np.testing.assert_allclose(ig, riemann, rtol=0, atol=1e-5 * np.abs(riemann).max())


# the methods that run on the attention block as they are (Grad-CAM and neuron conductance need a layer named)
ATTENTION_METHODS = sorted(n for n, m in REGISTRY.items() if m.family != "pattern"
                           and n not in ("grad_cam", "guided_grad_cam", "neuron_conductance"))


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_two_exports_of_one_attention_block_give_one_map(method):
    """Auditing two exports of the same model against each other: every method's map on the opset-23 export (Attention
    expanded) equals its map on the opset-18 export (attention spelled out by the exporter), to 1e-4 of the map's
    largest value (the two forwards round differently; LRP's epsilon divisions amplify that most, ~1e-5)."""
    x = np.load(path_of("torch_dynamo_attention.npz"))["x"]
    groups = {"feature_mask": np.arange(8).reshape(1, 1, 8)} if method in ("kernel_shap", "lime", "shapley_values") \
        else {}
    maps = [onnxattr.create_analyzer(method, path_of(f"torch_dynamo_attention_op{opset}.onnx"), **groups).analyze(x)
            for opset in (18, 23)]
    np.testing.assert_allclose(maps[1], maps[0], rtol=0, atol=1e-4 * max(np.abs(maps[0]).max(), 1e-30))


def test_hf_llama_matches_torch_autograd():
    """A Hugging Face LLaMA classifier (make_hf.py) at opset 23 on its token embeddings, one sample padded: its
    RMSNorm (RMSNormalization-23), rotary embedding, grouped-query Attention nodes with a causal and padding mask
    computed from the mask input, SwiGLU MLP and last-position pick give torch's gradient, for the largest logit
    and for logit 2; AttnLRP, CP-LRP, integrated gradients and SmoothGrad (the model converted down to opset 21, its
    RMSNormalization expanded) give finite maps."""
    ref = np.load(path_of("hf_llama.npz"))
    assert_framework_gradient("hf_llama_op23.onnx", "embeds", ref, other={"mask": ref["mask"]})
    for method in ("attn_lrp", "cp_lrp", "integrated_gradients", "smoothgrad"):
        analyzer = onnxattr.create_analyzer(method, path_of("hf_llama_op23.onnx"))
        r = analyzer.analyze(ref["x"], inputs={"mask": ref["mask"]})
        assert r.shape == ref["x"].shape and np.isfinite(r).all() and np.abs(r).max() > 0, method


def test_hf_efficientnet_matches_torch_autograd():
    """A Hugging Face EfficientNet (make_hf.py efficientnet; TorchScript export) pools its last map with
    AvgPool2d(hidden_dim): a 160 x 160 window over a 1 x 1 map. The VJP's ones kernel keeps the one tap that lands
    inside the map (the full one took 15.6 GiB for B0's 1280 at compile time), and the gradient of logit 0 is
    torch's, through its ZeroPad2d Pad nodes and SiLU/squeeze-excitation blocks."""
    ref = np.load(path_of("hf_efficientnet.npz"))
    analyzer = onnxattr.create_analyzer("gradient", path_of("hf_efficientnet_ts.onnx"), neuron_selection_mode="index")
    g = analyzer.analyze(ref["x"], neuron_selection=0)
    np.testing.assert_allclose(g, ref["g_0"], rtol=0, atol=1e-4 * np.abs(ref["g_0"]).max())
    model = onnx.load(path_of("hf_efficientnet_ts.onnx"))
    weights = lambda m: sum(int(np.prod(t.dims)) for t in m.graph.initializer)  # noqa: E731
    assert weights(onnxattr.compile(model, "gradient")) < 2 * weights(model)  # not 160^3 ones


@pytest.mark.parametrize("method", sorted(name for name, m in REGISTRY.items() if m.random))
def test_random_draws_on_torch_dynamo_modern(method):
    """Opset 23 with RMSNormalization, which has no older version: the random ops need opset 21 (onnxruntime has
    no kernel for their opset-22 versions), so RMSNormalization is expanded into its ONNX definition and the model
    converted down; its outputs stay within float rounding of the original's and the map is finite."""
    model = onnx.load(path_of("torch_dynamo_modern.onnx"))
    # a group per channel: LIME's Lasso zeroes every one of 768 single-pixel groups on this tiny net
    params = {"feature_mask": np.arange(3).reshape(1, 3, 1, 1)} if method in ("kernel_shap", "lime") else {}
    sess = session(onnxattr.compile(model, method, **params))
    x = np.load(path_of("torch_dynamo_modern.npz"))["x"]
    logits, relevance = sess.run(None, {"image": x})
    original = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"image": x})
    np.testing.assert_allclose(logits, original[0], rtol=1e-5, atol=1e-6)
    assert relevance.shape == x.shape and np.isfinite(relevance).all() and np.abs(relevance).max() > 0


def test_keras_transformer_matches_tensorflow_gradient():
    """tf2onnx's Keras LayerNormalization is a BatchNormalization fed the input's own mean and variance: the map
    differentiates them and is TensorFlow's gradient, for the largest logit and for logit 2."""
    ref = np.load(path_of("keras_transformer.npz"))
    assert_framework_gradient("keras_transformer.onnx", "x", ref)
    attn = session(compiled("keras_transformer.onnx", "attn_lrp")).run(None, {"x": ref["x"]})[1]
    assert np.isfinite(attn).all() and not np.allclose(attn, ref["x"] * ref["g_max"], atol=1e-3 * np.abs(attn).max())


def test_keras_recurrent_loops_match_tensorflow_gradient():
    """tf2onnx writes SimpleRNN and GRU(reset_after=False) as Loops stopped by time < steps (a bidirectional
    SimpleRNN, a GRU after it; a SimpleRNN behind Masking, whose Where keeps the state at padded steps):
    unrolled, the map is TensorFlow's gradient."""
    for name in ("keras_rnn", "keras_rnn_masked"):
        assert_framework_gradient(f"{name}.onnx", "x", np.load(path_of(f"{name}.npz")))


def test_keras_recurrent_loop_of_symbolic_length_is_explained_at_the_data_length():
    """The same net exported with its sequence length unknown: compile refuses it by name, the Analyzer compiles
    it at the data's length (the retry that ONNX's own recurrent nodes get) and gives TensorFlow's gradient."""
    ref = np.load(path_of("keras_rnn.npz"))
    with pytest.raises(UnsupportedModelError, match="its sequence length is not fixed: its first condition is read "
                                                    "from an input's symbolic size"):
        onnxattr.compile(path_of("keras_rnn_dynamic.onnx"), "gradient")
    analyzer = onnxattr.Analyzer("gradient", path_of("keras_rnn_dynamic.onnx"))
    r = analyzer.analyze(ref["x"])
    np.testing.assert_allclose(r, ref["g_max"], rtol=0, atol=1e-4 * np.abs(ref["g_max"]).max())
    assert analyzer.analyze(ref["x"][:, :4]).shape == (3, 4, 3)


def test_spatial_transformer_matches_torch_autograd():
    """AffineGrid and GridSample (border padding) with theta computed from the input: the map differentiates
    through the sampled values and through the grid, and is torch's gradient."""
    assert_framework_gradient("torch_stn.onnx", "image", np.load(path_of("torch_stn.npz")), neurons=("max",))


def test_torchvision_deformable_convolution_matches_torch_autograd():
    """torchvision's deform_conv2d with a mask (DCNv2), its offsets and mask computed from the input by a
    convolution, as the dynamo exporter writes it (DeformConv-19): the map differentiates through the sampled
    values, the offsets and the mask, and is torch's gradient; LRP takes DeformConv for a layer."""
    ref = np.load(path_of("torchvision_dcn.npz"))
    assert_framework_gradient("torchvision_dcn.onnx", "image", ref)
    for method in ("lrp.epsilon", "deep_taylor", "integrated_gradients"):
        r = onnxattr.create_analyzer(method, path_of("torchvision_dcn.onnx")).analyze(ref["x"])
        assert r.shape == ref["x"].shape and np.isfinite(r).all() and np.abs(r).max() > 0, method


def test_torchvision_mvit_through_its_lists_matches_torch_autograd():
    """The TorchScript export of a video MViT-v2 passes q, k and v through Python lists: Loops that fill ONNX
    sequences, read by SequenceAt. Unrolled and resolved into tensors (sequences.py), the map is torch's gradient
    (it was refused before: no float path through the sequences)."""
    from onnxattr.canonicalize import canonicalize

    assert_framework_gradient("torchvision_mvit_ts.onnx", "clip", np.load(path_of("torchvision_mvit.npz")))
    canon = canonicalize(onnx.load(path_of("torchvision_mvit_ts.onnx")))
    assert not [n.op_type for n in canon.graph.node if "Sequence" in n.op_type or n.op_type == "Loop"]


@pytest.mark.parametrize("name", ["torchvision_vit_ts.onnx", "torchvision_vit_dynamo.onnx"])
def test_torchvision_vit_grad_cam_is_torchs(name):
    """A torchvision VisionTransformer from both exporters: Grad-CAM's default layer is the last block's ln_1 token
    map, read as the 8x8 patch grid, and the cam is the one torch computes there (pytorch-grad-cam's recipe, in
    make_torchvision.py) to 1e-5 of its max (float32 gradients summed in other orders); the gradient is torch's."""
    ref = np.load(path_of("torchvision_vit.npz"))
    assert_framework_gradient(name, "image", ref)
    rules = onnxattr.inspect(path_of(name), "grad_cam", tensors=True)
    layer = [row for row in rules if row[3] == "grad_cam layer"]
    assert len(layer) == 1 and layer[0][1] == "LayerNormalization", layer
    last_ln_1 = {"torchvision_vit_ts.onnx": "/encoder/layers/encoder_layer_1/ln_1/LayerNormalization_output_0",
                 "torchvision_vit_dynamo.onnx": "layer_norm_2"}  # the dynamo export counts the LayerNorms: 0, 1, 2
    assert layer[0][2] == last_ln_1[name], layer
    cam = onnxattr.create_analyzer("grad_cam", path_of(name)).analyze(ref["x"])
    want = np.broadcast_to(ref["cam"], ref["x"].shape)
    assert (want > 0).any() and (want == 0).any()
    np.testing.assert_allclose(cam, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("name", ["torchvision_box_head_ts.onnx", "torchvision_box_head_dynamo.onnx"])
def test_torchvision_box_head_matches_torch_autograd(name):
    """A box head: features pooled by torchvision's roi_align at the boxes of a second input, aligned (RoiAlign
    half_pixel) and not (output_half_pixel), exported by both of torch's exporters: the map over the image is
    torch's gradient of each box's logit, summed over the boxes (5 boxes over 2 images)."""
    ref = np.load(path_of("torchvision_box_head.npz"))
    assert_framework_gradient(name, "image", ref, other={"boxes": ref["boxes"]})


@pytest.mark.parametrize("name", ["torchvision_box_head_ts.onnx", "torchvision_box_head_dynamo.onnx"])
def test_torchvision_box_head_rows_are_the_boxes(name):
    """The logits have one row per box, and the boxes index the images of the batch: a target per box (declared
    under the boxes' axis, 'rois', in the TorchScript export); integrated gradients runs one point of the whole
    batch per trip (a chunk of copies would leave the copies without boxes) and equals the Riemann sum of gradient
    maps at each box's class; feature ablation perturbs every image at once and attributes the drop of the boxes'
    summed logits, computed here by plain forward passes."""
    ref = np.load(path_of("torchvision_box_head.npz"))
    x, boxes = ref["x"], {"boxes": ref["boxes"]}
    path = path_of(name)
    compiled_index = onnxattr.compile(path, "gradient", neuron="index", input="image")
    target = next(i for i in compiled_index.graph.input if i.name == "target").type.tensor_type.shape.dim[0]
    assert (target.dim_param or target.dim_value) == ("rois" if name.endswith("_ts.onnx") else 5)
    classes = ref["y"].argmax(1)
    plain = onnxattr.create_analyzer("gradient", path, input="image", neuron_selection_mode="index")
    np.testing.assert_allclose(plain.analyze(x, inputs=boxes, neuron_selection=2), ref["g_2"], rtol=0,
                               atol=1e-4 * np.abs(ref["g_2"]).max())
    riemann = x * np.mean([plain.analyze(k / 8 * x, inputs=boxes, neuron_selection=classes) for k in range(8)], 0)
    ig = onnxattr.create_analyzer("integrated_gradients", path, input="image", steps=8).analyze(x, inputs=boxes)
    np.testing.assert_allclose(ig, riemann, rtol=0, atol=1e-5 * np.abs(riemann).max())

    groups = (np.arange(12)[:, None] // 6 * 2 + np.arange(12)[None, :] // 6).reshape(1, 1, 12, 12)  # 4 quadrants
    ablation = onnxattr.create_analyzer("feature_ablation", path, input="image", feature_mask=groups)
    forward = session(path)

    def total(image):  # the boxes' logits of each box's class at x, summed
        logits = forward.run(None, {"image": image.astype(np.float32), **boxes})[0]
        return float(logits[np.arange(len(classes)), classes].sum())

    want = np.zeros_like(x)
    for g in range(4):
        want += np.where(groups == g, total(x) - total(np.where(groups == g, 0.0, x)), 0.0)
    np.testing.assert_allclose(ablation.analyze(x, inputs=boxes), want, rtol=1e-4, atol=1e-5)


def test_skl_classifier_zipmap_explains_the_logits():
    """skl2onnx's probabilities come through ZipMap (or Identity with zipmap=False): both look through
    the Softmax to the logits and give one map."""
    maps = []
    for name in ("skl_mlp_classifier.onnx", "skl_mlp_classifier_nozipmap.onnx"):
        sess = session(compiled(name, "gradient"))
        x_name, x = random_input(sess, 5, {}, seed=3)
        maps.append(sess.run(["relevance"], {x_name: x})[0])
    np.testing.assert_array_equal(maps[0], maps[1])


@pytest.mark.parametrize("name,ops", [
    ("skl_tree_ensemble.onnx", ["ai.onnx.ml.TreeEnsembleClassifier"]),
    ("skl_logreg.onnx", ["ai.onnx.ml.LinearClassifier", "ai.onnx.ml.Normalizer"]),
])
def test_traditional_ml_ops_are_refused(name, ops, tmp_path, capsys):
    path = path_of(name)
    with pytest.raises(UnsupportedModelError, match="not differentiable") as info:
        onnxattr.compile(path, "gradient")
    for op in ops:
        assert op in str(info.value)
    code = main(["compile", path, "--method", "gradient", "-o", str(tmp_path / "out.onnx")])
    assert code == EXIT_CODES["UnsupportedModelError"]
    err = capsys.readouterr().err.strip()
    assert err.startswith("onnxattr: error:") and "\n" not in err and "not differentiable" in err
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("name", ["paddle_cnn.onnx", "torch_dynamo_rescnn_raw.onnx", "opset_sweep_9.onnx",
                                  "keras_transformer.onnx", "torch_dynamo_modern.onnx", "torchvision_dcn.onnx",
                                  "keras_rnn.onnx"])
def test_every_relevance_method_compiles_on_foreign_exports(name):
    """Every LRP preset, Deep Taylor, DeepLIFT and excitation backprop on exports of other tools: the
    graphs check, keep their outputs and give finite maps (value checks live in tests/methods)."""
    from onnxattr.methods import REGISTRY

    path = path_of(name)
    original = session(path, exact=True)
    x_name, x = random_input(original, 2, {}, seed=5)
    x = np.abs(x)  # z_plus_fast and the bounded rules assume inputs >= 0
    want = original.run(None, {x_name: x})
    methods = sorted({m.name for m in REGISTRY.values() if m.family == "lrp"} | {"deep_lift"})
    assert len(methods) >= 27  # 26 presets in rules/ and deep_lift
    for method in methods:
        model = onnxattr.compile(path, method)
        *outputs, r = session(model, exact=True).run(None, {x_name: x})
        assert all(same_output(a, b) for a, b in zip(want, outputs)), method
        assert r.shape == x.shape and np.isfinite(r).all(), method


def test_hf_glpn_grad_cam_takes_the_depth_head_map():
    """A Hugging Face GLPN depth model (make_hf.py glpn; TorchScript export) explained by its mean depth: onnx's
    shape inference names the batch axis afresh (unk__0) after the first patch embedding's Reshape, and Grad-CAM
    took such a name for another axis than the batch, so it passed over the head's maps for a decoder gate (the
    dynamo export, whose shapes keep N, took the head's map: both do now, 9.4e-8 apart in the sweep)."""
    path = path_of("hf_glpn_ts.onnx")
    layers = [r[2] for r in onnxattr.inspect(path, "grad_cam", tensors=True) if r[3] == "grad_cam layer"]
    assert layers == ["/model/head/Mul_output_0"]
    cam = onnxattr.create_analyzer("grad_cam", path).analyze(np.random.default_rng(0).standard_normal(
        (2, 3, 32, 32)).astype(np.float32))
    assert cam.shape == (2, 3, 32, 32) and np.isfinite(cam).all() and np.abs(cam).max() > 0
