"""Every method against the real libraries: maps made by iNNvestigate 2.1.2 (Keras models exported with
tf2onnx), Captum and Zennit (PyTorch models exported with torch.onnx) and LXT 2.1 (AttnLRP and CP-LRP on two small
transformers), stored by the scripts in tests/oracles/ as small .npz files next to the exported models.
Nothing here imports a framework.

Tolerance: max |ours - theirs| <= tol * max |theirs| per map, tol = 1e-3 (float32 in both, different
op order), 1e-2 for epsilon <= 1e-6 and the z rule (denominators that small amplify rounding), except
Zennit's maps on the nets whose BatchNorms were folded exactly beforehand (tag "default"): 1e-3 there,
where all agree to better than 1e-4.
Integrated gradients agree to ~3e-7 where compared; the map where MaxPool ties near the zero baseline
flip winners between float32 implementations (keras_branch) is recorded as not comparable.
deep_lift (Captum DeepLift, baseline 0), deep_lift_shap (Captum DeepLiftShap, x's samples as the baselines; ~5e-6)
and excitation_backprop (Zennit's ExcitationBackprop with
zero_params=['bias'] and iNNvestigate's stabilizer, as ours) sit in the 1e-3 class; they agree to ~3e-6 and
~1e-5 (the ResNet's float32 floor, fp32_rel_dev, is 8e-5 there). attn_lrp and cp_lrp agree with LXT to ~5e-7
(also on lxt_llama_sdpa, the decoder's opset-23 export with Attention nodes), and
with LXT plus Zennit's gamma rule on the ViT's layers (tag "gamma") to ~7e-7. An entry's ``keep`` names a hidden
tensor whose relevance is compared (keep=): Zennit's EpsilonPlusFlat relevance retained at a middle ReLU's output
(tag "layer", all eight torch nets). An entry's ``condition`` ({tensor, channels: one list per sample}) is
zennit-crp's CondAttribution with EpsilonPlusFlat at that middle ReLU (tag "crp", all eight nets; the relevance
that went around the tensor dropped, its exclude_parallel), compared through the API's condition=; they agree to
float32 rounding (1.6e-5 of the map's max on torch_vggbn, Zennit's BatchNorm merge; 1.1e-5 on the ResNet in
mode all, whose float32 floor there is 8.8e-5; 5e-7 elsewhere). On three models whose output is a loss
over the batch (tests/oracles/make_captum_loss.py), Captum's perturbation methods change every sample at once
and return one row, stored repeated for each sample as onnxattr returns it; a manifest entry's ``rows`` keeps
the first rows of the data only (feature permutation of a pair, where Captum's swap is forced).
A manifest's ``not_comparable`` names maps the generator kept for the record with the reason they cannot be
reproduced (a Keras layer that becomes two ONNX nodes, a tie convention of another framework, a seed
convention no rescaling undoes, a step the other library defines otherwise, such as Captum's DeepLift
maxpool rule): they are not test cases; test_not_comparable_recorded checks that each names a stored map
and gives a reason.
grad_cam and guided_grad_cam agree with Captum's LayerGradCam (resized by LayerAttribution.interpolate) and
GuidedGradCam to ~1.3e-6 (torch_strided's float32 floor is 1.8e-6), at the layer onnxattr picks by default.
An entry's ``nodes`` (a [nodes] table) and ``keys`` (top-level keys) change its preset, in a user's rule file with the
preset as its base (torch_scaled: the gradient on the input normalization's Div, a LayerScale's Mul and a residual
Add, where Zennit takes it, by name or by scales = gradient and add = gradient; they agree to 1.9e-5 of the map's
max, and are 0.8-1.0 apart without the changes).
A manifest's ``feeds`` are the model's other graph inputs, stored as ``feed:NAME`` (torch_masked_encoder's
padding mask, one row per sample, which integrated gradients and SmoothGrad give each of a sample's points).
quant_cnn (tests/oracles/make_quantized.py): a quantization-aware torch net, its fake quantizations exported as
QuantizeLinear/DequantizeLinear and its weights as int8 codes, under Captum's gradient family and Zennit's composites
(the quantizers as Zennit activations: Pass), in the classes above; they agree to 3.6e-7 of the map's max (its 36
maps all fail without the straight-through estimator's saturation mask).
A manifest's ``also_valid_for`` models (the same net exported another way: Keras at opset 9, PyTorch
with its BatchNormalization nodes kept; torch_gated's LayerNorm written out at opset 14 and its squeeze-excitation
product in the other operand order, tests/oracles/make_zennit_products.py; keras_se's Multiply([x, gate]) beside
Multiply([gate, x])) are checked against the same maps.
SmoothGrad, GradientSHAP, Shapley value sampling and feature permutation draw other noise (and baselines, points,
orders of the features, permutations) than the reference: the difference to the reference must look like the
difference between two of our own runs with different seeds (both are means over the same number of draws).
Where the manifest holds the value estimated (an entry's ``exact``: Shapley value sampling of the exact Shapley
values, feature permutation of its expectation over the permutations), eight of our runs
must average to it within twice the expected error of an 8-run mean, and the reference must lie no further from
it than our runs' mean distance plus four standard deviations (the 24 values of a six-group map make a
distance between two single runs too noisy to compare). Exact Shapley values (Captum's
ShapleyValues walks all 720 orders of six groups, onnxattr its 63 coalitions) sit in the 1e-3 class.
KernelSHAP: given the same 40 coalitions as Captum's perturb_func (tag "coalitions"), in the 1e-3 class; they
agree to 2.2e-6 of the map's max (Captum fits in float32, we in float64: the float32 floor is 4e-6 there). Its
own draws (tag "default") are statistical with eight runs (an entry's ``runs``): onnxattr draws one set of
coalitions for the whole batch, so a run's errors are shared by its samples and three runs scatter too much.
LIME likewise (tags "coalitions": Captum's default Lasso, which stops at tol=1e-4 where our FISTA runs to
convergence, agreeing to 2.3e-5; "linear": LinearRegression, to 1.8e-6; "default": statistical, eight runs).
conductance: Captum's LayerConductance at an nn.Identity before the model (tags "gausslegendre",
"riemann_trapezoid": the map) and at a middle ReLU (tags "layer_*", keep=), in the 1e-3 class; they agree to
7.3e-7 of the map's max (torch_strided's float32 floor there is 1.4e-6). neuron_conductance: Captum's
NeuronConductance of one unit of that ReLU's output, to 3.6e-7. On a model fed token ids
(tests/oracles/make_captum_tokens.py), Captum's LayerIntegratedGradients at the embedding with baselines given as
token ids: onnxattr's integrated_gradients explained at the embedding (the manifest's ``explain_at``) with
``reference_data``.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

import onnxattr
from onnxattr.methods import get_method
from onnxattr.methods.lrp import preset_folder

DATA = Path(__file__).resolve().parents[1] / "oracles" / "data"
MODES = {"max": "max", "index": "index", "all": "all"}
NOT_OURS = {"alphas", "stabilizer", "rule", "bias"}  # how the generators called the library, not our parameters
# iNNvestigate seeds deconvnet and guided backprop with the logit (it keeps the identity head mapping of
# its reverse analyzers); we seed every gradient method with 1, as Captum does and as iNNvestigate's own
# Gradient does. Their maps are linear in the seed: divide by the selected logit to compare. In mode
# "all" it seeds each output with its own logit, which no rescaling of a ones-seeded map reproduces: those
# maps are in the keras manifests' not_comparable (tests/oracles/make_innvestigate.py).
LOGIT_SEEDED_IN_INNVESTIGATE = {"deconvnet", "guided_backprop"}


def entries():
    out = []
    for manifest in sorted(DATA.glob("*.json")):
        info = json.loads(manifest.read_text())
        for model in [info["model"]] + info.get("also_valid_for", []):
            tag = manifest.stem if model == info["model"] else Path(model).stem
            for key in info["entries"]:
                if key not in info.get("not_comparable", {}):
                    out.append(pytest.param(manifest.stem, key, model, id=f"{tag}:{key}"))
    return out


_cache = {}


def load(name):
    if name not in _cache:
        info = json.loads((DATA / f"{name}.json").read_text())
        _cache[name] = info, dict(np.load(DATA / f"{name}.npz"))
    return _cache[name]


def our_params(entry, arrays=None):
    """The entry's parameters that are ours; a value "@KEY" is the stored array KEY (gradient_shap's
    baselines: the samples of x)."""
    method = get_method(entry["method"])
    known = {p.name for p in method.params}
    params = {}
    for k, v in entry["params"].items():
        if k in NOT_OURS:
            continue
        assert k in known, f"the oracle used parameter {k} that {entry['method']} does not have"
        params[k] = arrays[v[1:]] if isinstance(v, str) and v.startswith("@") else v
    return params


def run(model_path, method, mode, x, target, input_name, feeds=None, keep=None, at=None, **params):
    """The compiled map of x; ``feeds``: the model's other graph inputs (a padding mask); ``keep``: a tensor
    whose relevance is returned instead (keep=); ``at``: an intermediate tensor explained (--input), x then being
    the data of the graph input ``input_name`` it is computed from (token ids)."""
    compiled = onnxattr.compile(str(model_path), method, neuron=mode, input=at or input_name,
                                keep=[keep] if keep else (), **params)
    sess = ort.InferenceSession(compiled.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {input_name: x, **(feeds or {})}
    if mode == "index":
        feed["target"] = target
    return sess.run([f"relevance:{keep}" if keep else "relevance"], feed)[0]


def tolerance(entry, key=""):
    if key.endswith("|default") and entry.get("zennit_canonizers") is not None:
        return 1e-3  # Zennit on BatchNorms folded exactly beforehand: the tag to match tightly
    # the z rule is the epsilon rule with epsilon 0: its denominators are as small as they come
    eps = 0.0 if entry["method"] in ("lrp.z", "lrp.z_IB") else entry["params"].get("epsilon")
    if eps is not None and eps <= 1e-6:
        return 1e-2
    return 1e-3


def as_user_file(method, tmp_path, add):
    """The shipped preset with another residual-Add rule, as a user's rule file."""
    text = (preset_folder() / f"{method}.toml").read_text()
    assert 'add = "z"' in text
    path = tmp_path / f"{method}.{add}.toml"
    path.write_text(text.replace('add = "z"', f'add = "{add}"'))
    return str(path)


def with_changes(method, tmp_path, nodes=None, keys=None):
    """A user's rule file: the shipped preset as its base, with top-level ``keys`` (key -> value) and a [nodes]
    table of ``nodes`` (pattern -> rule spec)."""
    text = f'base = "{method}"\n' + "".join(f"{k} = {json.dumps(v)}\n" for k, v in (keys or {}).items())
    if nodes:
        text += "[nodes]\n" + "".join(f'{json.dumps(p)} = {{ {", ".join(f"{k} = {json.dumps(v)}" for k, v in spec.items())} }}\n'
                                      for p, spec in nodes.items())
    path = tmp_path / f"{method}.changed.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name,key,model_file", entries())
def test_matches_reference(name, key, model_file, tmp_path):
    info, arrays = load(name)
    entry = dict(info["entries"][key])
    if key.endswith("|nocanon"):
        # Zennit without its ResNet canonizer copies relevance into both branches of a residual Add:
        # the same preset with the gradient rule on Add, written as a user rule file
        entry["method"] = as_user_file(entry["method"], tmp_path, "gradient")
    if entry.get("nodes") or entry.get("keys"):  # the preset with these [nodes] entries or keys (torch_scaled)
        entry["method"] = with_changes(entry["method"], tmp_path, entry.get("nodes"), entry.get("keys"))
    model = DATA / model_file
    input_name = info.get("input_name") or onnxattr_input(model)
    x, target = arrays["x"], arrays["target"].astype(np.int64)
    feeds = {name: arrays[f"feed:{name}"] for name in info.get("feeds", [])}
    if entry.get("rows"):  # a map of the first rows only (feature_permutation of a pair: the swap)
        x, target = x[: entry["rows"]], target[: entry["rows"]]
        feeds = {name: v[: entry["rows"]] for name, v in feeds.items()}
    want = arrays[key]
    params = our_params(entry, arrays)
    if info.get("library", "").startswith("innvestigate"):
        if entry["method"] in LOGIT_SEEDED_IN_INNVESTIGATE:
            assert entry["mode"] != "all", "mode all is not comparable: the manifest must say so"
            chosen = target if entry["mode"] == "index" else arrays["logits"].argmax(1)
            logit = arrays["logits"][np.arange(len(x)), chosen]
            # relu(R) at every ReLU makes these maps positively homogeneous only: a negative seed
            # flips which parts survive, so samples with a negative selected logit are not comparable
            keep = logit > 0
            if not keep.any():
                pytest.skip("every selected logit is negative")
            x, target, logit = x[keep], target[keep], logit[keep]
            want = want[keep] / logit.reshape((-1,) + (1,) * (want.ndim - 1))
        if "until_layer_idx" in params:
            params["until_layer_idx"] = kernel_index(info, params["until_layer_idx"])
    if entry.get("exact"):
        # an estimate of a value the manifest holds (Shapley value sampling of the exact Shapley values): ours
        # must scatter around it without bias, and the reference must lie as far from it as our runs do
        truth = arrays[entry["exact"]]
        runs = [run(model, entry["method"], MODES[entry["mode"]], x, target, input_name, feeds, seed=s, **params)
                for s in range(1, 9)]
        rms = lambda d: float(np.sqrt(np.mean(d ** 2)))  # noqa: E731
        spread = [rms(r - truth) for r in runs]
        assert rms(np.mean(runs, 0) - truth) <= 2 * np.mean(spread) / np.sqrt(len(runs)), spread
        assert rms(want - truth) <= np.mean(spread) + 4 * np.std(spread), (rms(want - truth), spread)
        return
    if entry.get("statistical"):
        # three of our runs: their mean distance to the reference against their mean distance to each other
        # (one pair alone fluctuates by +-40% on a 64-element map, so a correct implementation failed ~1 in 20)
        # (an entry's ``runs``: more, where one run's samples share their draws, KernelSHAP's coalitions)
        runs = [run(model, entry["method"], MODES[entry["mode"]], x, target, input_name, feeds, seed=s, **params)
                for s in range(1, 1 + entry.get("runs", 3))]
        rms = lambda d: float(np.sqrt(np.mean(d ** 2)))  # noqa: E731
        to_ref = np.mean([rms(r - want) for r in runs])
        to_own = np.mean([rms(runs[i] - runs[j]) for i in range(len(runs)) for j in range(i + 1, len(runs))])
        assert to_ref <= 1.5 * to_own, (to_ref, to_own)
        return
    if entry.get("condition"):  # zennit-crp: the map conditioned on channels of a hidden tensor, via the API
        given = entry["condition"]
        analyzer = onnxattr.create_analyzer(entry["method"], str(model), neuron_selection_mode=entry["mode"],
                                            input=input_name, **params)
        got = analyzer.analyze(x, neuron_selection=target if entry["mode"] == "index" else None,
                               condition={given["tensor"]: given["channels"]})
    else:
        got = run(model, entry["method"], MODES[entry["mode"]], x, target, input_name, feeds, entry.get("keep"),
                  info.get("explain_at"), **params)
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert err <= tolerance(entry, key) * scale, f"max error {err:.3g} vs map max {scale:.3g}"


def kernel_index(info, keras_index):
    """iNNvestigate counts until_layer_idx over model.layers (InputLayer and weightless layers included);
    we count kernel layers only, from 0: the index of the last kernel layer among layers[0..keras_index]."""
    kernels = [n for n in info["keras_layers"][: keras_index + 1] if "conv" in n or "dense" in n or n == "logits"]
    return len(kernels) - 1


def onnxattr_input(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[0].name


def test_oracle_data_present():
    assert len(list(DATA.glob("*.json"))) >= 3


@pytest.mark.parametrize("name", sorted(m.stem for m in DATA.glob("*.json")))
def test_not_comparable_recorded(name):
    """Every not_comparable key names a stored map with its manifest entry and gives a reason."""
    info, arrays = load(name)
    for key, reason in info.get("not_comparable", {}).items():
        assert key in info["entries"] and key in arrays, f"{name}: not_comparable {key} names no stored map"
        assert isinstance(reason, str) and len(reason) > 20, f"{name}: not_comparable {key} gives no reason"


def test_new_oracles_are_compared():
    """deep_lift, deep_lift_shap and excitation_backprop are compared on the nets where they are comparable, attn_lrp and
    cp_lrp on both transformers (with LXT's gamma on the ViT), and the gradient family on the masked encoder,
    in every mode; Captum's NoiseTunnel variants, FeatureAblation, ShapleyValues, ShapleyValueSampling,
    FeaturePermutation, KernelShap, Lime, LayerConductance, NeuronConductance and Zennit's BetaSmooth on all eight torch nets, and Captum on three losses over the batch; Grad-CAM
    and Guided Grad-CAM on every net with feature maps, for one output (the cam of the logits' sum is 0 on
    these nets: their heads are decorrelated from the mean feature)."""
    compared = {p.values[1] for p in entries() if p.values[0] in ("torch_mlp", "torch_vgg", "torch_resnet")}
    for method in ("deep_lift", "deep_lift_shap", "excitation_backprop"):
        for mode in MODES:
            assert f"{method}|{mode}|default" in compared, (method, mode)
    for name in ("torch_vgg", "torch_resnet", "torch_conv1d", "torch_inception", "torch_strided", "torch_vggbn"):
        compared = {p.values[1] for p in entries() if p.values[0] == name}
        for mode in ("max", "index"):
            assert {f"grad_cam|{mode}|default", f"grad_cam|{mode}|norelu", f"guided_grad_cam|{mode}|default"} \
                <= compared, (name, mode)
    for name in ("torch_mlp", "torch_vgg", "torch_resnet"):
        compared = {p.values[1] for p in entries() if p.values[0] == name}
        assert {f"gradient_shap|{mode}|default" for mode in MODES} <= compared, name
    noise_tunnel = {"smoothgrad|sq", "smoothgrad|input_t_gradient", "smoothgrad|guided_backprop", "vargrad|default",
                    "vargrad|abs", "beta_smooth|default", "beta_smooth|beta3"}
    for name in ("torch_mlp", "torch_vgg", "torch_resnet", "torch_conv1d", "torch_inception", "torch_strided",
                 "torch_vggbn", "torch_mlp_nobias"):
        compared = {p.values[1] for p in entries() if p.values[0] == name}
        assert {f"{m}|{mode}|{tag}" for m, tag in (k.split("|") for k in noise_tunnel) for mode in MODES} \
            <= compared, name
        assert {f"feature_ablation|{mode}|patches" for mode in MODES} <= compared, name
        assert {f"{m}|{mode}|default" for m in ("shapley_values", "shapley_value_sampling") for mode in MODES} \
            <= compared, name
        assert {f"feature_permutation|{mode}|{tag}" for mode in MODES for tag in ("pair", "default")} <= compared, name
        assert {f"kernel_shap|{mode}|{tag}" for mode in MODES for tag in ("coalitions", "default")} <= compared, name
        assert {f"lime|{mode}|{tag}" for mode in MODES for tag in ("coalitions", "linear", "default")} <= compared, name
        assert {f"lrp.epsilon_plus_flat|{mode}|layer" for mode in MODES} <= compared, name  # relevance at a hidden tensor
        assert {f"lrp.epsilon_plus_flat|{mode}|crp" for mode in MODES} <= compared, name  # conditioned on its channels
        assert {f"conductance|{mode}|{where}{rule}" for mode in MODES for where in ("", "layer_")
                for rule in ("gausslegendre", "riemann_trapezoid")} <= compared, name
        assert {f"neuron_conductance|{mode}|{rule}" for mode in MODES for rule in ("gausslegendre", "riemann_left")} \
            <= compared, name
        if name.startswith("torch_mlp"):
            assert {f"feature_ablation|{mode}|default" for mode in MODES} <= compared, name
    for name in ("torch_tabular_loss", "torch_cnn_loss", "torch_ce_loss"):  # a loss: Captum's scalar-output mode
        compared = {p.values[1] for p in entries() if p.values[0] == name}
        assert compared == {f"{m}|max|default" for m in ("gradient", "feature_ablation", "occlusion", "shapley_values",
                                                          "feature_permutation")} | {"feature_permutation|max|pair",
                                                                                     "kernel_shap|max|coalitions",
                                                                                     "lime|max|coalitions",
                                                                                     "lime|max|linear"}
    compared = {p.values[1] for p in entries() if p.values[0] == "torch_tokens"}  # at the embedding of token ids
    assert compared == {f"integrated_gradients|{mode}|{rule}" for mode in MODES
                        for rule in ("gausslegendre", "riemann_left")}
    compared = {p.values[1] for p in entries() if p.values[0] == "torch_masked_encoder"}
    assert compared == {f"{m}|{mode}|default" for m in ("gradient", "input_t_gradient", "integrated_gradients",
                                                        "smoothgrad") for mode in MODES}
    for name, tags in (("lxt_vit", ("default", "gamma")), ("lxt_llama", ("default",)),
                       ("lxt_llama_sdpa", ("default",))):
        compared = {p.values[1] for p in entries() if p.values[0] == name}
        assert compared == {f"{m}|{mode}|{tag}" for m in ("attn_lrp", "cp_lrp") for mode in MODES
                            for tag in tags}, name
