"""Oracle reference maps from Captum and Zennit on small PyTorch models.

Run from the repository root with the torch venv (CPU torch 2.13.0, captum, zennit, scikit-learn for Captum's
KernelShap, onnx, onnxruntime: `pip install -e ".[bench]"` with the CPU wheel index):

    /work/venv-torch/bin/python tests/oracles/make_torch.py

It writes, for each model NAME (torch_mlp, torch_vgg, torch_resnet, torch_conv1d, torch_strided,
torch_inception, torch_vggbn, torch_mlp_nobias), into tests/oracles/data/:

    NAME.onnx      torch.onnx.export(dynamo=False, opset 17, dynamic batch axis); input "input", output "logits"
    NAME.npz       keys "x", "target", "logits" and "<method>|<mode>|<tag>" float32 maps shaped like x
    NAME.json      manifest: model file, library versions, layout, one entry per map key, notes

plus torch_resnet_bn.onnx (exported with TrainingMode.PRESERVE so BatchNormalization nodes stay; the maps in
torch_resnet.npz apply to it too).

Modes: "max" = argmax of the logits per sample, "index" = the `target` array, "all" = every output.
Gradient methods are seeded with 1 at the selected output(s) (a ones vector over all outputs for "all");
LRP (Zennit composites) is seeded with the selected logit's value (y * onehot, or y itself for "all").

Tags: "default"; "abs" (gradient with abs postprocess); for torch_resnet's LRP also "zennit_merge" (zennit's own
BatchNorm merge, which leaves a small artefact) and "nocanon" (no ResNetCanonizer: the residual add copies
relevance into both branches); for deep_lift "maxpool_gradient" / "maxpool_gradient_silu_product" (Captum on a
copy in the form onnxattr sees, see METHOD_NOTES). Maps are computed in float64 and stored as float32; each
manifest entry records fp32_rel_dev, the deviation of the same library call run in float32. A manifest's
"not_comparable" names maps kept for the record that the test does not compare, with the reason.

deep_lift is Captum's DeepLift (baseline 0); excitation_backprop is Zennit's ExcitationBackprop with
zero_params=['bias'] and iNNvestigate's stabilizer, as onnxattr's preset has them (see METHOD_NOTES).

Everything is seeded and runs single-threaded, so a rerun on one machine reproduces the files byte for byte
(smoothgrad is "statistical": its noise comes from torch's RNG and cannot be reproduced by another
implementation, only approximated). Takes about 30 s on 2 CPU cores. Across machines it does not: build() runs
float32 convolutions whose last bits depend on the CPU's kernels, so the rebuilt weights of the nets with
convolutions differ in their low bits (up to 3e-5 in torch_vgg's last Linear on this project's 2-core AMD EPYC
machines against the committed files; torch_mlp came out byte-identical). To add maps of some method families without touching what is committed, use

    /work/venv-torch/bin/python tests/oracles/make_torch.py --add deep_lift,excitation_backprop [--models a,b]

which loads the committed weights (pin_committed), checks them against the committed x/target/logits, computes
only those families' maps and merges them into NAME.npz / NAME.json (every other array kept bit for bit, checked;
the .onnx files untouched). Families: captum (the gradient methods), zennit (the LRP composites), deep_lift,
excitation_backprop, ig_quadrature (integrated gradients with Captum's default, gausslegendre), cam (Captum's
LayerGradCam and GuidedGradCam at the last feature map, for onnxattr's grad_cam and guided_grad_cam),
gradient_shap (Captum's GradientShap with x's samples as the baselines; statistical), occlusion (Captum's
Occlusion), noise_tunnel (Captum's NoiseTunnel with nt_type smoothgrad_sq and vargrad, and over InputXGradient
and GuidedBackprop: onnxattr's smoothgrad nt_type/base and vargrad; statistical), beta_smooth (Zennit's
BetaSmooth composite with the Gradient attributor), feature_ablation (Captum's FeatureAblation, every feature
alone and 4 x 4 patches stored as "mask:patches"), shapley (Captum's ShapleyValues and ShapleyValueSampling over
six coarse groups stored as "mask:coarse"; the sampling maps statistical), deep_lift_shap (Captum's DeepLiftShap
with the samples of x as the baselines, on the model and on its exported form as deep_lift), feature_permutation
(Captum's FeaturePermutation over the coarse groups: on two samples, where it is deterministic, and on four,
statistical, with its exact expectation stored as "perm_mean:MODE"), kernel_shap (Captum's KernelShap over the
coarse groups: on 40 coalitions stored as "coalitions:ks" given as its perturb_func, deterministic, and on its
own 25 draws, statistical), lime (Captum's Lime over the coarse groups: with its default Lasso and with
SkLearnLinearRegression on 40 coalitions stored as "coalitions:lime", deterministic, and on its own 25 draws,
statistical), conductance (Captum's LayerConductance, baselines 0 and 20 steps, gausslegendre and riemann_trapezoid,
at the middle nn.ReLU module called once, for keep=, and at an nn.Identity before the model, the map; and
NeuronConductance of that module's unit that conducts most, for neuron_conductance, with gausslegendre and
riemann_left: Captum's riemann_trapezoid weights sum to (n-1)/n, see IG_QUADRATURES), crp (zennit-crp's
CondAttribution, Concept Relevance Propagation, with EpsilonPlusFlat: conditioned on two channels per sample of
that middle ReLU, for onnxattr's condition=; install it with `pip install --no-deps zennit-crp==0.6.0`: its
metadata pins zennit<=0.4.6, but its CondAttribution runs on zennit 0.5.1, and the bench extra cannot hold both).

This script holds the driver (which maps each model gets, the export, the files written, --add). The rest lies
beside it: torch_nets.py (the nets and their seed search), torch_captum.py, torch_zennit.py and
torch_perturbation.py (one function per family, returning {key: (map, manifest entry)}), torch_common.py
(what the families share) and torch_notes.py (the manifests' notes).

The code is our own; Zennit (LGPL-3) and Captum (BSD-3) are only called as libraries.
"""

import importlib.metadata
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import torch

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

# the families, one module each beside this script (on the path when it runs); torch_zennit first: it imports
# zennit behind its stand-in for torchvision
from torch_zennit import (  # noqa: E402
    conservation, epsilon_everywhere_conserves, run_beta_smooth, run_crp, run_excitation, run_zennit,
    run_zennit_layers, zennit)
import captum  # noqa: E402
from torch_captum import (  # noqa: E402
    DEEPLIFT_VARIANTS, run_captum, run_cam, run_conductance, run_deeplift, run_deeplift_shap, run_gradient_shap,
    run_ig_quadrature, run_noise_tunnel, run_occlusion)
from torch_common import AUX, MODES, ONNX_FILE  # noqa: E402
from torch_nets import (  # noqa: E402
    bias_free_clone, build, make_conv1d, make_inception, make_mlp, make_mlp_nobias, make_resnet, make_strided,
    make_target, make_vgg, make_vggbn, prefold_bn)
from torch_notes import COMMON_NOTES, FLAT_NOTE, METHOD_NOTES, MODEL_METHOD_NOTES, NOT_COMPARABLE  # noqa: E402
from torch_perturbation import (  # noqa: E402
    run_feature_ablation, run_feature_permutation, run_kernel_shap, run_lime, run_shapley)

__all__ = ["zennit"]  # make_lxt.py and make_zennit_cmaps.py import zennit from here

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")

# None: make everything. A tuple of FAMILIES (--add): compute only those maps, on the committed models, and
# merge them into the committed NAME.npz / NAME.json (other arrays kept bit for bit, the .onnx files untouched)
ADD_ONLY = None


FAMILIES = ("captum", "zennit", "deep_lift", "excitation_backprop", "ig_quadrature", "cam", "gradient_shap",
            "occlusion", "noise_tunnel", "beta_smooth", "feature_ablation", "shapley", "deep_lift_shap",
            "feature_permutation", "zennit_layers", "kernel_shap", "lime", "conductance", "crp")


def oracle_maps(model, x, argmax, target, variants_fn):
    """All maps computed in float64 (stored as float32), plus each map's float32 deviation: the same library
    call on the float32 model, max|m32 - m64| / max|m64| (a floor for any float32 implementation's error)."""
    import copy
    results = {}
    for dtype in (torch.float64, torch.float32):
        m = copy.deepcopy(model).to(dtype).eval()
        xd = x.to(dtype)
        with torch.no_grad():
            assert np.array_equal(m(xd).argmax(1).numpy(), argmax), "argmax differs between float32/64"
        families = FAMILIES if ADD_ONLY is None else ADD_ONLY
        maps = run_captum(m, xd, argmax, target) if "captum" in families else {}
        variants = variants_fn(m)
        if "zennit" in families:
            maps.update(run_zennit(variants, xd, argmax, target))
        if "zennit_layers" in families:
            maps.update(run_zennit_layers(variants, xd, argmax, target))
        if "crp" in families:
            maps.update(run_crp(variants, xd, argmax, target))
        for family, run in (("deep_lift", run_deeplift), ("ig_quadrature", run_ig_quadrature), ("cam", run_cam),
                            ("gradient_shap", run_gradient_shap), ("occlusion", run_occlusion),
                            ("noise_tunnel", run_noise_tunnel), ("beta_smooth", run_beta_smooth),
                            ("feature_ablation", run_feature_ablation), ("shapley", run_shapley),
                            ("deep_lift_shap", run_deeplift_shap), ("feature_permutation", run_feature_permutation),
                            ("kernel_shap", run_kernel_shap), ("lime", run_lime),
                            ("conductance", run_conductance)):
            if family in families:
                maps.update(run(m, xd, argmax, target))
        if "excitation_backprop" in families:
            eb_model, eb_canon, _ = variants["default"]  # the LRP variant to match tightly (BNs folded exactly)
            maps.update(run_excitation(eb_model, eb_canon, xd, argmax, target))
        results[dtype] = maps
    r64 = results[torch.float64]
    for tag in DEEPLIFT_VARIANTS:  # deeplift_onnx_form copies that change nothing here: not stored
        keys = [(f"deep_lift|{mode}|{tag}", f"deep_lift|{mode}|default") for mode in MODES]
        if all(k in r64 for k, _ in keys) and all(torch.equal(r64[k][0], r64[d][0]) for k, d in keys):
            print(f"  deep_lift|*|{tag} == deep_lift|*|default bit for bit: not stored")
            for k, _ in keys:
                del r64[k]
    out = {}
    for key, (m64, entry) in results[torch.float64].items():
        m32 = results[torch.float32][key][0].double()
        entry = dict(entry, fp32_rel_dev=float(f"{((m32 - m64).abs().max() / m64.abs().max()).item():.2e}"))
        out[key] = (m64, entry)
    return out


# --------------------------------------------------------------------------------------------- export
def export(model, x, path, preserve=False):
    """Export to `path` and check it against torch; in --add mode only check the committed file."""
    extra = {"training": torch.onnx.TrainingMode.PRESERVE} if preserve else {}
    if ADD_ONLY is None:
        torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          **extra)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(x).numpy()
    worst = 0.0
    for xs in (x.numpy(), x.numpy()[:1], np.concatenate([x.numpy()] * 3)):
        got = sess.run(None, {"input": xs})[0]
        with torch.no_grad():
            want = model(torch.from_numpy(xs)).numpy()
        err = float(np.abs(got - want).max())
        # 1e-5 relative to the largest logit (|logits| reach ~2 here; float32 rounding in the ResNet alone
        # moves torch's own logits by ~9e-6 from a float64 evaluation)
        tol = 1e-5 * max(1.0, float(np.abs(want).max()))
        assert err <= tol, f"{path}: onnxruntime vs torch logits differ by {err} > {tol}"
        worst = max(worst, err)
    import onnx
    ops = sorted({n.op_type for n in onnx.load(path).graph.node})
    print(f"  exported {os.path.basename(path)}: ops {ops}, max |ort - torch| = {worst:.2e}")
    return ref


def versions():
    return (f"zennit {importlib.metadata.version('zennit')} / captum {captum.__version__} / "
            f"torch {torch.__version__}")


def save(name, layout, x, target, logits, maps, notes, also_valid_for=()):
    arrays = {"x": x.numpy().astype(np.float32), "target": target.astype(np.int64),
              "logits": logits.astype(np.float32)}
    entries = {}
    for key, (value, entry) in sorted(maps.items()):
        arr = value.detach().numpy().astype(np.float32)
        if "keep" not in entry:  # a kept tensor's relevance has that tensor's shape
            assert arr.shape == (entry.get("rows", x.shape[0]),) + tuple(x.shape[1:]), (key, arr.shape)
        assert np.isfinite(arr).all(), f"{name}: {key} is not finite"
        assert np.abs(arr).max() > 0, f"{name}: {key} is all zero"
        arrays[key] = arr
        entries[key] = entry
    arrays.update(AUX)  # masks the entries' params name with "@KEY"
    AUX.clear()
    notes = COMMON_NOTES + notes + METHOD_NOTES + MODEL_METHOD_NOTES.get(name, [])
    npz = os.path.join(DATA, f"{name}.npz")
    if ADD_ONLY is not None:
        arrays, entries, notes = merge_committed(name, arrays, entries)
    np.savez_compressed(npz, **arrays)
    if ADD_ONLY is not None:  # the committed maps must come back bit for bit
        with np.load(npz) as back:
            for key, arr in arrays.items():
                assert back[key].dtype == arr.dtype and np.array_equal(back[key], arr), (name, key)
    manifest = {"model": f"{name}.onnx", "library": versions(), "layout": layout, "input_name": "input",
                "output_name": "logits", "entries": entries, "notes": notes}
    missing = set(NOT_COMPARABLE.get(name, {})) - set(entries)
    assert not missing, f"{name}: not_comparable names maps that were not made: {missing}"
    if NOT_COMPARABLE.get(name):  # maps kept for the record that the test does not compare (the reason)
        manifest["not_comparable"] = {k: NOT_COMPARABLE[name][k] for k in entries if k in NOT_COMPARABLE[name]}
    if also_valid_for:  # other exports of the same net: tests/methods/test_oracles.py checks them too
        manifest["also_valid_for"] = list(also_valid_for)
    with open(os.path.join(DATA, f"{name}.json"), "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=False)
        fh.write("\n")
    print(f"  wrote {name}.npz ({os.path.getsize(npz)} bytes, {len(entries)} maps) and {name}.json")


def merge_committed(name, arrays, entries):
    """--add mode: the committed NAME.npz/NAME.json with the new maps in place of any earlier maps of the same
    methods; x, target, logits and every other map are the committed arrays, unchanged. Returns the merged
    (arrays, entries, notes) in the order a full run writes them (x, target, logits, then keys sorted)."""
    with np.load(os.path.join(DATA, f"{name}.npz")) as old:
        old_arrays = {k: old[k] for k in old.files}
    with open(os.path.join(DATA, f"{name}.json")) as fh:
        manifest = json.load(fh)
    assert manifest["library"] == versions(), (manifest["library"], versions())
    for k in ("x", "target"):
        assert np.array_equal(old_arrays[k], arrays[k]), (name, k)
    # a family that makes a method's "default" maps owns that method (its earlier maps of any tag go);
    # one that adds other tags only (ig_quadrature) replaces just its own keys
    new_methods = {e["method"] for k, e in entries.items() if k.endswith("|default")}
    kept = {k: e for k, e in manifest["entries"].items() if e["method"] not in new_methods and k not in entries}
    merged_entries = dict(sorted({**kept, **entries}.items()))
    merged = {k: old_arrays[k] for k in ("x", "target", "logits")}
    for k in merged_entries:
        merged[k] = arrays[k] if k in entries else old_arrays[k]
    for k in sorted(set(old_arrays) | set(arrays)):  # arrays the params name ("@mask:patches"), not maps
        if ":" in k and not k.count("|"):
            merged[k] = arrays.get(k, old_arrays.get(k))
    notes = manifest["notes"] + [n for n in METHOD_NOTES + MODEL_METHOD_NOTES.get(name, [])
                                 if n not in manifest["notes"]]
    return merged, merged_entries, notes


def main():
    os.makedirs(DATA, exist_ok=True)
    print(versions())
    # `make_torch.py --models a,b` regenerates only those models (the other files stay as they are);
    # `make_torch.py --add deep_lift,excitation_backprop [--models a,b]` adds (or remakes) only those families'
    # maps in the committed files, on the committed weights (see ADD_ONLY)
    global ADD_ONLY
    args = sys.argv[1:]
    opts = dict(zip(args[::2], args[1::2]))
    assert len(args) % 2 == 0 and set(opts) <= {"--models", "--add"}, f"usage: {sys.argv[0]} [--models a,b] [--add f,g]"
    only = set(opts["--models"].split(",")) if "--models" in opts else None
    if "--add" in opts:
        ADD_ONLY = tuple(opts["--add"].split(","))
        assert set(ADD_ONLY) <= set(FAMILIES), f"--add takes some of {FAMILIES}"
        # captum makes the default integrated_gradients and smoothgrad maps, so it owns those methods in
        # merge_committed: the tagged maps of these families would go unless they are made again with it
        assert "captum" not in ADD_ONLY or {"ig_quadrature", "noise_tunnel"} <= set(ADD_ONLY), \
            "--add captum needs ig_quadrature and noise_tunnel too (their maps are tags of captum's methods)"

    makers = {"torch_mlp": main_mlp, "torch_vgg": main_vgg, "torch_resnet": main_resnet,
              "torch_conv1d": main_conv1d, "torch_strided": main_strided, "torch_inception": main_inception,
              "torch_vggbn": main_vggbn, "torch_mlp_nobias": main_mlp_nobias}
    for name, make in makers.items():
        if only is None or name in only:
            make()


def plain(m):
    return {"default": (m, [], "model as is")}


def prepare(name, maker, shape, lo=0.0, hi=1.0, preserve=False):
    """build, the stored target, and the export to DATA/<name>.onnx: (model, x, argmax, seed, target, logits)."""
    model, x, argmax, seed = build(name, maker, shape, lo, hi)
    if ADD_ONLY is not None:
        argmax = pin_committed(name, model, x)
    target = make_target(argmax)
    logits = export(model, x, os.path.join(DATA, f"{name}.onnx"), preserve=preserve)
    ONNX_FILE.update(path=os.path.join(DATA, f"{name}.onnx"), x=x.numpy())
    return model, x, argmax, seed, target, logits


def pin_committed(name, model, x):
    """--add mode: load the committed model's weights into `model` (built with the same code, so the same
    architecture) and check x, target and the argmax against the committed NAME.npz; returns the argmax.

    Why: build() runs float32 convolutions (decorrelate_head, calibrate_bns) whose last bits depend on the
    CPU's kernels, so on another machine the rebuilt weights differ in their low bits from the committed ones.
    Maps added later must belong to the committed models, and the committed maps must stay as they are."""
    from onnx import load, numpy_helper
    # the export that keeps every parameter under its state_dict name (BatchNorms unfolded) when there is one
    path = os.path.join(DATA, f"{name}_bn.onnx")
    path = path if os.path.exists(path) else os.path.join(DATA, f"{name}.onnx")
    inits = [(i.name, numpy_helper.to_array(i)) for i in load(path).graph.initializer]
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    loaded = {k: torch.from_numpy(v.copy()) for k, v in inits if k in state}
    # unnamed initializers (torch.onnx names a Linear without bias by its MatMul: onnx::MatMul_12 holding W^T)
    rest_init = [v for k, v in inits if k not in state]
    rest_keys = [k for k in state if k not in loaded]
    assert len(rest_init) == len(rest_keys), (name, rest_keys, len(rest_init))
    for k, v in zip(rest_keys, rest_init):
        t = torch.from_numpy(v.copy())
        loaded[k] = t if t.shape == state[k].shape else t.T.contiguous()
    for k, v in loaded.items():
        assert v.shape == state[k].shape and v.dtype == state[k].dtype, (name, k, v.shape, state[k].shape)
    model.load_state_dict(loaded, strict=False)
    model.eval()
    stored = np.load(os.path.join(DATA, f"{name}.npz"))
    assert np.array_equal(stored["x"], x.numpy()), f"{name}: x differs from the committed one"
    with torch.no_grad():
        logits = model(x).numpy()
    tol = 1e-5 * max(1.0, float(np.abs(stored["logits"]).max()))
    assert np.abs(logits - stored["logits"]).max() <= tol, f"{name}: committed weights do not give the committed logits"
    argmax = logits.argmax(1)
    assert np.array_equal(argmax, stored["logits"].argmax(1))
    assert np.array_equal(make_target(argmax), stored["target"])
    print(f"  {name}: committed weights loaded from {os.path.basename(path)}, "
          f"max |logits - committed| = {np.abs(logits - stored['logits']).max():.1e}")
    return argmax


def main_conv1d():
    model, x, argmax, seed, target, logits = prepare("torch_conv1d", make_conv1d, (4, 4, 20))
    maps = oracle_maps(model, x, argmax, target, plain)
    save("torch_conv1d", "NCL", x, target, logits, maps, [
        f"Model seed {seed}: default init; last Linear decorrelated from the mean feature as for torch_mlp.",
        "Conv1d(4,6,5,pad 2)+ReLU, MaxPool1d(2), Conv1d(6,8,3,stride 2)+Tanh, Flatten, Dropout (eval: identity), "
        "Linear(32,8)+SiLU, Linear(8,5). zennit.types.Activation includes Tanh and SiLU: Pass rule (relevance "
        "unchanged); Captum's guided_backprop/deconvnet modify nn.ReLU only (Tanh/SiLU: plain gradient).",
        FLAT_NOTE + " Here: conv1 gets Flat / ZBox; conv2 ZPlus / AlphaBeta(2,1) / Gamma(0.25); both Linears "
        "Epsilon(1e-6).",
    ])


def main_strided():
    model, x, argmax, seed, target, logits = prepare("torch_strided", make_strided, (4, 3, 16, 16), -1.0, 1.0)
    maps = oracle_maps(model, x, argmax, target, plain)
    save("torch_strided", "NCHW", x, target, logits, maps, [
        f"Model seed {seed}: default init; last Linear decorrelated as for torch_mlp. x uniform in [-1, 1).",
        "ZeroPad2d((0,1,1,0)) (asymmetric; exported as Pad), Conv2d(3,6,3,stride 2) (17 -> 8, the last row/col "
        "unused), LeakyReLU(0.1) (zennit: Pass), Conv2d(6,8,3,stride 2,pad 1), ReLU, AvgPool2d(3, stride 2, pad 1, "
        "count_include_pad=True) (zennit: Norm), Conv2d 1x1, ReLU, AdaptiveAvgPool2d(1) (Norm), Flatten, Linear.",
        FLAT_NOTE + " Here: the first Conv (after the ZeroPad2d) gets Flat / ZBox(low=0, high=1) (inputs "
        "outside [low, high] are allowed: the rule is applied as is).",
    ])


def main_inception():
    model, x, argmax, seed, target, logits = prepare("torch_inception", make_inception, (4, 3, 12, 12))
    maps = oracle_maps(model, x, argmax, target, plain)
    save("torch_inception", "NCHW", x, target, logits, maps, [
        f"Model seed {seed}: default init; fc decorrelated as for torch_mlp.",
        "Three branches joined by torch.cat (a function, no module: zennit applies no rule, the gradient of cat "
        "splits the relevance by channel): b1 1x1 conv; b2 3x3 conv; b3 AvgPool2d(3, 1, 1, "
        "count_include_pad=False) (Norm rule) then 1x1 conv; then MaxPool2d(2) (gradient), conv, "
        "AdaptiveAvgPool2d(1) (Norm), Flatten, fc.",
        FLAT_NOTE + " Here: stem gets Flat / ZBox; b1, b2, b3, conv get ZPlus / AlphaBeta(2,1) / Gamma(0.25).",
    ])


def main_vggbn():
    model, x, argmax, seed, target, logits = prepare("torch_vggbn", make_vggbn, (4, 3, 16, 16), preserve=True)
    maps = oracle_maps(model, x, argmax, target, lambda m: {
        "default": (m, ["SequentialMergeBatchNorm"], "model as is; zennit merges each BatchNorm into the "
                    "Conv/Linear before it")})
    assert "deep_lift|max|maxpool_gradient" not in maps, "update the deep_lift note: MaxPool rule differs"
    save("torch_vggbn", "NCHW", x, target, logits, maps, [
        f"Model seed {seed}: default init; BatchNorm statistics set as for torch_resnet (probe statistics, "
        "perturbed; generator seed 4321); last Linear decorrelated as for torch_mlp.",
        "Exported with TrainingMode.PRESERVE (eval mode): the BatchNormalization nodes stay in the ONNX graph.",
        "BatchNorm2d(3) on the INPUT (nothing before it to merge into: zennit's base map gives BatchNorm the "
        "Pass rule, relevance unchanged), Conv-BN-ReLU, MaxPool, Conv(bias=False)-BN-ReLU, MaxPool, Flatten, "
        "Linear-BatchNorm1d-ReLU, Dropout, Linear. LRP canonizers=[SequentialMergeBatchNorm()] merge every BN "
        "that follows a Conv/Linear (leaving x/sqrt(1+eps) behind, ~5e-6 relative, no residual to amplify it).",
        FLAT_NOTE + " Here: the first Conv (input = the input BatchNorm's output) gets Flat / ZBox(0, 1).",
    ])


def main_mlp_nobias():
    model, x, argmax, seed, target, logits = prepare("torch_mlp_nobias", make_mlp_nobias, (4, 16), -1.0, 1.0)
    maps = oracle_maps(model, x, argmax, target, plain)
    conservation(model, x, argmax, [], "torch_mlp_nobias", check=True)
    save("torch_mlp_nobias", "NC", x, target, logits, maps, [
        f"Model seed {seed}: Linear layers with bias=False; last Linear decorrelated from the mean feature and "
        "rescaled (no bias to centre). x uniform in [-1, 1).",
        FLAT_NOTE + " Here: first Linear gets Flat in the *_flat composites; every Linear gets Epsilon(1e-6) "
        "otherwise (no Conv).",
    ])


def main_mlp():
    model, x, argmax, seed, target, logits = prepare("torch_mlp", make_mlp, (4, 16))
    maps = oracle_maps(model, x, argmax, target, plain)
    conservation(model, x, argmax, [], "torch_mlp")
    conservation(bias_free_clone(model), x, argmax, [], "torch_mlp bias-free", check=True)
    save("torch_mlp", "NC", x, target, logits, maps, [
        f"Model seed {seed}: torch.manual_seed then default init; last Linear's component along the mean "
        "penultimate feature (over 256 uniform probes + x) removed, bias set to centre each logit over the probes, all scaled so logits have std 1, then 0.1*N(0,1) added to the last bias.",
        FLAT_NOTE + " Here: first Linear gets Flat in the *_flat composites.",
        "lrp.epsilon_gamma_box on this MLP: there is no Conv, so zennit applies Epsilon(1e-6) to EVERY Linear "
        "(no ZBox, no Gamma: Gamma/ZBox are mapped to Convolution only); the map equals lrp.epsilon_plus's.",
        "lrp.epsilon_plus / lrp.epsilon_alpha2_beta1 on this MLP: ZPlus/AlphaBeta are for Convolution only, "
        "so every Linear gets Epsilon(1e-6).",
    ])



def main_vgg():
    model, x, argmax, seed, target, logits = prepare("torch_vgg", make_vgg, (4, 3, 16, 16))
    maps = oracle_maps(model, x, argmax, target, plain)
    conservation(model, x, argmax, [], "torch_vgg")
    conservation(bias_free_clone(model), x, argmax, [], "torch_vgg bias-free", check=True)
    assert "deep_lift|max|maxpool_gradient" not in maps, "update the deep_lift note: MaxPool rule differs"
    save("torch_vgg", "NCHW", x, target, logits, maps, [
        f"Model seed {seed}: default init; last Linear decorrelated from the mean feature as for torch_mlp.",
        FLAT_NOTE + " Here: the first Conv gets Flat (*_flat) or ZBox(low=0, high=1) (epsilon_gamma_box); the "
        "other Convs get ZPlus / AlphaBeta(2,1) / Gamma(0.25); both Linears get Epsilon(1e-6); MaxPool and "
        "Flatten have no rule (plain gradient); ReLU gets Pass.",
    ])



def main_resnet():
    model, x, argmax, seed, target, logits = prepare("torch_resnet", make_resnet, (4, 3, 16, 16))
    logits_bn = export(model, x, os.path.join(DATA, "torch_resnet_bn.onnx"), preserve=True)
    assert np.array_equal(logits, logits_bn)
    maps = oracle_maps(model, x, argmax, target, lambda m: {
        # BN folded exactly beforehand; ResNetCanonizer then only adds the Sum module (its merge finds no BN)
        "default": (prefold_bn(m), ["ResNetCanonizer"], "BatchNorms folded exactly into their Convs (prefold_bn)"),
        # zennit's own merge (ResNetCanonizer = SequentialMergeBatchNorm + Sum), with its x/sqrt(1+eps) leftover
        "zennit_merge": (m, ["ResNetCanonizer"], "model as is; zennit merges the BatchNorms"),
        # BN folded exactly, residual add left as a plain '+'
        "nocanon": (prefold_bn(m), [], "BatchNorms folded exactly into their Convs (prefold_bn)"),
    })
    conservation(model, x, argmax, ["ResNetCanonizer"], "torch_resnet (ResNetCanonizer)")
    conservation(model, x, argmax, ["SequentialMergeBatchNorm"], "torch_resnet (merge-BN only)")
    # not conserved even bias-free: ZPlus drops relevance that the residual Sum's Norm rule hands to
    # downsample outputs with no positive contribution (z+ == 0); see the manifest notes
    conservation(bias_free_clone(model), x, argmax, ["ResNetCanonizer"], "torch_resnet bias-free")
    epsilon_everywhere_conserves(bias_free_clone(model), x, argmax, "torch_resnet bias-free")
    save("torch_resnet", "NCHW", x, target, logits, maps, [
        f"Model seed {seed}: default init; BatchNorm running stats set to the statistics of the 256 uniform "
        "probe inputs (one train-mode pass, momentum 1), then running_mean += 0.2*std*N(0,1), running_var *= "
        "U(0.6, 1.4); weight ~ U(0.5, 1.5) with ~15% negated, bias ~ 0.2 N(0,1) (generator seed 1234); eval "
        "mode; fc decorrelated from the mean feature as for torch_mlp.",
        "The same maps hold for torch_resnet_bn.onnx (exported with TrainingMode.PRESERVE in eval mode, so the "
        "BatchNormalization nodes are kept; torch_resnet.onnx has them folded into the Convs).",
        "LRP tag 'default': each BN folded EXACTLY into the Conv before it (W*g/sqrt(var+eps), "
        "(b-mean)*g/sqrt(var+eps)+beta; a bias-free Conv gets that bias) and replaced by Identity (prefold_bn), "
        "then canonizers=[zennit.torchvision.ResNetCanonizer()], whose BasicBlock part replaces each block's "
        "'out + shortcut' by Sum(stack([shortcut, out], -1)) with the Norm rule: "
        "R_branch = branch * R / (sum + 1e-6*sign(sum)), sign(0)=+1. This is the tag to match tightly.",
        "LRP tag 'zennit_merge': the model as is with canonizers=[ResNetCanonizer()] (= SequentialMergeBatchNorm "
        "+ the Sum canonizer). zennit's merge sets the BN to running_mean 0, running_var 1, weight 1, bias 0 "
        "but keeps its eps, so each BN still computes x/sqrt(1+eps) (Pass rule): activations are off by "
        "~5e-6 relative per BN; at residual sums that nearly cancel (e.g. out=-0.723, shortcut=+0.731) the "
        "Norm split amplifies this ~100x, giving maps up to ~3e-3 (of the max) away from 'default'. An "
        "artefact of zennit's canonizer, not of LRP; kept for reference.",
        "LRP tag 'nocanon': BN prefolded as in 'default', no canonizer: the residual '+' has no rule, so its "
        "plain gradient copies the relevance unchanged into BOTH branches (no conservation).",
        FLAT_NOTE + " Here: the stem conv1 (after BN merge, with bias) gets Flat / ZBox; all other Convs, "
        "including the 1x1 downsample, get ZPlus / AlphaBeta(2,1) / Gamma(0.25); fc gets Epsilon(1e-6); "
        "AdaptiveAvgPool2d gets Norm (R_in = x * dAvg^T(R / stab(avg(x)))); Flatten has no rule.",
        "Captum methods run on the un-canonized model (BN in eval mode; ReLU hooks on relu and relu2).",
        "Conservation: even with all biases zero (and BN mean/beta zero) lrp.epsilon_plus does not conserve here "
        "(sum off by a few %): the Sum's Norm rule gives relevance out*R/sum to a branch whose value is "
        "negative; where that is the 1x1 downsample conv and its merged weights see only zero inputs at "
        "positive weights (z+ = 0, so z = z- < 0), ZPlus computes 0 * R/(0 + 1e-6) and the relevance is lost. "
        "Epsilon everywhere with the same canonizer conserves exactly (checked by the script).",
    ], also_valid_for=["torch_resnet_bn.onnx"])


if __name__ == "__main__":
    main()
