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

The code is our own; Zennit (LGPL-3) and Captum (BSD-3) are only called as libraries.
"""

import contextlib
import importlib.metadata
import json
import os
import sys
import types

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from permutations import given_as_perturb_func, kernel_shap_coalitions, permutation_mean  # (on the path)

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
N_CLASSES = 5


# --------------------------------------------------------------------------------------------- models
class BasicBlock(nn.Module):
    """A torchvision-style residual block (conv-bn-relu-conv-bn + shortcut, relu).

    Attribute names follow torchvision's BasicBlock (conv1, bn1, relu, conv2, bn2, downsample), because
    zennit's ResNetBasicBlockCanonizer swaps in its own forward that uses exactly those attributes (and uses
    `self.relu` twice). Our own forward uses a second ReLU module `relu2` after the addition so that
    Captum's per-module ReLU hooks see each ReLU call on its own module. Children are declared in forward
    order because zennit's SequentialMergeBatchNorm pairs a Conv with the BatchNorm that follows it in
    module-registration order.
    """

    expansion = 1

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + shortcut)


class _PlaceholderBottleneck(nn.Module):
    """Never instantiated; stands in for torchvision's Bottleneck in the import shim."""


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, N_CLASSES)

    def features(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        return self.flatten(self.avgpool(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.fc(self.features(x))


def make_mlp(probe=None):
    return nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, N_CLASSES))


def make_vgg(probe=None):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 32), nn.ReLU(),
        nn.Linear(32, N_CLASSES),
    )


def make_resnet(probe):
    """ResNet with BatchNorm statistics like a trained net's: running stats first set to the probe batch's
    statistics (one train-mode pass with momentum 1), then perturbed; random affine parameters. (With
    arbitrary running stats on uniform-noise inputs most channels die and the pooled features barely vary,
    which makes the logits ill-conditioned in float32.)"""
    return calibrate_bns(ResNet(), probe, 1234)


class Inception(nn.Module):
    """Stem conv, then three branches joined by torch.cat (zennit has no rule for cat: plain gradient):
    1x1 conv; 3x3 conv; AvgPool2d(3, 1, 1, count_include_pad=False) + 1x1 conv; then MaxPool, a conv,
    AdaptiveAvgPool2d(1), Flatten, Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.stem_relu = nn.ReLU()
        self.b1 = nn.Conv2d(6, 4, 1)
        self.b1_relu = nn.ReLU()
        self.b2 = nn.Conv2d(6, 4, 3, padding=1)
        self.b2_relu = nn.ReLU()
        self.b3_pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.b3 = nn.Conv2d(6, 4, 1)
        self.b3_relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv = nn.Conv2d(12, 8, 3, padding=1)
        self.conv_relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, N_CLASSES)

    def features(self, x):
        h = self.stem_relu(self.stem(x))
        h = torch.cat([self.b1_relu(self.b1(h)), self.b2_relu(self.b2(h)), self.b3_relu(self.b3(self.b3_pool(h)))], 1)
        h = self.conv_relu(self.conv(self.pool(h)))
        return self.flatten(self.avgpool(h))

    def forward(self, x):
        return self.fc(self.features(x))


def make_inception(probe=None):
    return Inception()


def make_conv1d(probe=None):
    """Conv1d, MaxPool1d, a strided valid Conv1d, Tanh, Dropout, SiLU (zennit: Pass on Tanh/SiLU)."""
    return nn.Sequential(
        nn.Conv1d(4, 6, 5, padding=2), nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(6, 8, 3, stride=2), nn.Tanh(),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(32, 8), nn.SiLU(),
        nn.Linear(8, N_CLASSES),
    )


def make_strided(probe=None):
    """Asymmetric ZeroPad2d, stride-2 convs (one padded), LeakyReLU, AvgPool2d(3, 2, 1, count_include_pad=True),
    AdaptiveAvgPool2d(1) + Flatten."""
    return nn.Sequential(
        nn.ZeroPad2d((0, 1, 1, 0)),
        nn.Conv2d(3, 6, 3, stride=2), nn.LeakyReLU(0.1),
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True),
        nn.Conv2d(8, 8, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, N_CLASSES),
    )


def calibrate_bns(model, probe, seed):
    """BatchNorm statistics like a trained net's (as make_resnet does): running stats of the probe batch, then
    perturbed; random affine parameters with a few negative gammas."""
    bns = [mod for mod in model.modules() if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for bn in bns:
        bn.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(probe)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in bns:
            bn.momentum = 0.1
            c = bn.num_features
            std = bn.running_var.sqrt()
            bn.running_mean += 0.2 * std * torch.randn(c, generator=gen)
            bn.running_var *= 0.6 + 0.8 * torch.rand(c, generator=gen)
            scale = 0.5 + torch.rand(c, generator=gen)
            flip = torch.rand(c, generator=gen) < 0.15
            bn.weight.copy_(torch.where(flip, -scale, scale))
            bn.bias.copy_(0.2 * torch.randn(c, generator=gen))
    return model


def make_vggbn(probe):
    """A BatchNorm on the input (nothing to merge into: zennit's Pass), Conv-BN-ReLU blocks, Linear-BN1d-ReLU,
    Dropout."""
    model = nn.Sequential(
        nn.BatchNorm2d(3),
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 16), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(16, N_CLASSES),
    )
    return calibrate_bns(model, probe, 4321)


def make_mlp_nobias(probe=None):
    return nn.Sequential(nn.Linear(16, 12, bias=False), nn.ReLU(), nn.Linear(12, 8, bias=False), nn.ReLU(),
                         nn.Linear(8, N_CLASSES, bias=False))


def features_and_head(model):
    """(function giving the input of the last Linear, the last Linear)."""
    if isinstance(model, (ResNet, Inception)):
        return model.features, model.fc
    return model[:-1], model[-1]


def decorrelate_head(model, probe):
    """Remove the final layer's component along the mean feature direction and centre its bias over the probes,
    so that different inputs get different classes."""
    feats_fn, head = features_and_head(model)
    with torch.no_grad():
        feats = feats_fn(probe)
        m = feats.mean(0)
        m = m / m.norm()
        head.weight -= torch.outer(head.weight @ m, m)
        if head.bias is None:  # bias-free head: only rescale
            head.weight /= head(feats).std()
            return
        # centre every class's logit over the probes (so no class wins by its bias), then rescale to O(1)
        head.bias.copy_(-(feats @ head.weight.T).mean(0))
        logits = head(feats)
        head.weight /= logits.std()
        head.bias /= logits.std()
        head.bias += 0.1 * torch.randn(head.bias.shape)  # keep a non-zero bias in the last layer


# --------------------------------------------------------------------------------------------- zennit import
def import_zennit():
    """zennit imports torchvision's ResNet block classes at import time; torchvision cannot be installed beside
    the CPU torch here, so a stand-in module of that name offers our own BasicBlock (its canonizer then
    recognises our blocks). The stand-in is removed from sys.modules right after the import."""
    names = ["torchvision", "torchvision.models", "torchvision.models.resnet"]
    saved = {n: sys.modules.get(n) for n in names}
    mods = {n: types.ModuleType(n) for n in names}
    mods["torchvision"].models = mods["torchvision.models"]
    mods["torchvision.models"].resnet = mods["torchvision.models.resnet"]
    mods["torchvision.models.resnet"].BasicBlock = BasicBlock
    mods["torchvision.models.resnet"].Bottleneck = _PlaceholderBottleneck
    sys.modules.update(mods)
    try:
        import zennit  # noqa: F401
        import zennit.attribution
        import zennit.canonizers
        import zennit.composites
        import zennit.torchvision
    finally:
        for n in names:
            if saved[n] is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = saved[n]
    assert zennit.torchvision.ResNetBasicBlock is BasicBlock
    return zennit


zennit = import_zennit()
import captum  # noqa: E402
from captum.attr import (  # noqa: E402
    DeepLift, Deconvolution, GradientShap, GuidedBackprop, GuidedGradCam, InputXGradient, IntegratedGradients,
    LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion, Saliency)
from captum.attr._utils.approximation_methods import approximation_parameters  # noqa: E402

IG_STEPS = 64
SG_SAMPLES = 64
SG_STD = 1.0
MODES = ("max", "index", "all")
# None: make everything. A tuple of FAMILIES (--add): compute only those maps, on the committed models, and
# merge them into the committed NAME.npz / NAME.json (other arrays kept bit for bit, the .onnx files untouched)
ADD_ONLY = None


class SumOutputs(nn.Module):
    """Wraps a classifier so its single output is the sum of all logits: the gradient of that output is the
    vector-Jacobian product with a ones seed, i.e. neuron mode "all". Captum then runs unchanged (target=0),
    and its ReLU hooks still find the wrapped model's nn.ReLU modules."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).sum(dim=1, keepdim=True)


def captum_target(mode, argmax, target):
    return {"max": argmax.tolist(), "index": target.tolist(), "all": 0}[mode]


def captum_model(model, mode):
    return SumOutputs(model).eval() if mode == "all" else model


def captum_call(model, mode, argmax, target):
    """(the model Captum is given, its target, the manifest's note on the seed) for one mode."""
    note = "captum target" if mode != "all" else "captum on SumOutputs(model) with target=0 (ones seed)"
    return captum_model(model, mode), captum_target(mode, argmax, target), note


def run_captum(model, x, argmax, target):
    """Returns {key: (map, entry)} for the gradient family."""
    out = {}
    step_fn, alpha_fn = approximation_parameters("riemann_left")
    alphas = alpha_fn(IG_STEPS)
    assert alphas == [k / IG_STEPS for k in range(IG_STEPS)], "captum riemann_left alphas are not k/n"
    assert step_fn(IG_STEPS) == [1.0 / IG_STEPS] * IG_STEPS
    for mode in MODES:
        m, tgt, seed_note = captum_call(model, mode, argmax, target)

        def add(method, tag, value, params, call, statistical=False):
            out[f"{method}|{mode}|{tag}"] = (value, {
                "method": method, "params": params, "mode": mode, "seed": "one",
                "statistical": statistical, "library_call": call + "; " + seed_note})

        xi = x.clone().requires_grad_()
        add("gradient", "default", Saliency(m).attribute(xi, target=tgt, abs=False), {},
            "captum Saliency(model).attribute(x, target, abs=False)")
        add("gradient", "abs", Saliency(m).attribute(xi, target=tgt, abs=True), {"postprocess": "abs"},
            "captum Saliency(model).attribute(x, target, abs=True)")
        add("input_t_gradient", "default", InputXGradient(m).attribute(xi, target=tgt), {},
            "captum InputXGradient(model).attribute(x, target)")
        add("integrated_gradients", "default",
            IntegratedGradients(m).attribute(xi, baselines=0.0, target=tgt, n_steps=IG_STEPS,
                                             method="riemann_left"),
            {"reference_inputs": 0.0, "steps": IG_STEPS, "alphas": "k/steps for k=0..steps-1 (left Riemann)"},
            "captum IntegratedGradients(model).attribute(x, baselines=0.0, target, n_steps=64, "
            "method='riemann_left')")
        add("guided_backprop", "default", GuidedBackprop(m).attribute(xi, target=tgt), {},
            "captum GuidedBackprop(model).attribute(x, target)")
        add("deconvnet", "default", Deconvolution(m).attribute(xi, target=tgt), {},
            "captum Deconvolution(model).attribute(x, target)")
        torch.manual_seed(2024)
        add("smoothgrad", "default",
            NoiseTunnel(Saliency(m)).attribute(xi, nt_type="smoothgrad", nt_samples=SG_SAMPLES,
                                               stdevs=SG_STD, target=tgt, abs=False),
            {"augment_by_n": SG_SAMPLES, "noise_scale": SG_STD},
            "captum NoiseTunnel(Saliency(model)).attribute(x, nt_type='smoothgrad', nt_samples=64, "
            "stdevs=1.0, target, abs=False); torch.manual_seed(2024) before; target for 'max' is the argmax "
            "of the CLEAN input's logits, the same for every noisy copy",
            statistical=True)
    return out


LRP_METHODS = {
    # onnxattr method: (zennit composite class name, kwargs, params recorded)
    "lrp.epsilon_plus": ("EpsilonPlus", {}, {"epsilon": 1e-6, "stabilizer": 1e-6}),
    "lrp.epsilon_plus_flat": ("EpsilonPlusFlat", {}, {"epsilon": 1e-6, "stabilizer": 1e-6}),
    "lrp.epsilon_gamma_box": ("EpsilonGammaBox", {"low": 0.0, "high": 1.0},
                              {"low": 0.0, "high": 1.0, "gamma": 0.25, "epsilon": 1e-6, "stabilizer": 1e-6}),
    "lrp.epsilon_alpha2_beta1": ("EpsilonAlpha2Beta1", {}, {"epsilon": 1e-6, "stabilizer": 1e-6}),
    "lrp.epsilon_alpha2_beta1_flat": ("EpsilonAlpha2Beta1Flat", {}, {"epsilon": 1e-6, "stabilizer": 1e-6}),
}


def lrp_seed(mode, argmax, target):
    def fn(y):
        y = y.detach()
        if mode == "all":
            return y
        idx = torch.as_tensor(argmax if mode == "max" else target)
        return y * nn.functional.one_hot(idx, y.shape[1]).to(y)
    return fn


def zennit_composite(method, canonizer_names):
    """A new Zennit composite of LRP_METHODS[method] with the named canonizers."""
    cls_name, kwargs, _ = LRP_METHODS[method]
    canonizers = [getattr(zennit.canonizers, n)() if hasattr(zennit.canonizers, n)
                  else getattr(zennit.torchvision, n)() for n in canonizer_names]
    return getattr(zennit.composites, cls_name)(canonizers=canonizers, **kwargs)


def zennit_map(model, x, method, canonizer_names, mode, argmax, target):
    composite = zennit_composite(method, canonizer_names)
    with zennit.attribution.Gradient(model, composite) as attributor:
        _, rel = attributor(x.clone(), lrp_seed(mode, argmax, target))
    return rel


def prefold_bn(model):
    """Copy of `model` with every BatchNorm that directly follows a Conv folded EXACTLY into that Conv
    (W*g/sqrt(var+eps), (b-mean)*g/sqrt(var+eps)+beta, computed in float64) and replaced by nn.Identity.
    zennit's own SequentialMergeBatchNorm does the same fold but leaves the BN computing x/sqrt(1+eps)
    (running_var=1 with eps kept), a ~5e-6 relative change per BN that the residual Norm rule amplifies."""
    import copy
    clone = copy.deepcopy(model)
    leaves = [(n, m) for n, m in clone.named_modules() if not list(m.children())]
    with torch.no_grad():
        for (_, conv), (bn_name, bn) in zip(leaves, leaves[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
                bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
                new_bias = (bias - bn.running_mean.double()) * scale + bn.bias.double()
                conv.weight.copy_((conv.weight.double() * scale[:, None, None, None]).to(conv.weight.dtype))
                conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
                parent_name, _, attr = bn_name.rpartition(".")
                setattr(clone.get_submodule(parent_name) if parent_name else clone, attr, nn.Identity())
    return clone.eval()


ONNX_FILE = {}  # "path": the export of the model being made (set by prepare), for families that name its tensors


def onnx_tensor_of(value):
    """The name of the float tensor of the exported model (ONNX_FILE["path"]) that holds ``value`` (a module's
    output at the stored x), a Relu output first: the name onnxattr's keep= takes."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(ONNX_FILE["path"]))
    outputs = {o.name for o in model.graph.output}
    floats = {v.name for v in model.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    relu = [n.output[0] for n in model.graph.node if n.op_type == "Relu"]
    names = [o for o in relu + [o for n in model.graph.node for o in n.output if o not in relu] if o in floats]
    for name in names:
        if name not in outputs:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    found = dict(zip([o.name for o in sess.get_outputs()],
                     sess.run(None, {sess.get_inputs()[0].name: ONNX_FILE["x"]})))
    want = value.detach().double().numpy()
    for name in names:
        got = found.get(name)
        # within 1e-4 of the largest value (Zennit's SequentialMergeBatchNorm leaves x / sqrt(1 + eps): ~1e-5)
        if got is not None and got.shape == want.shape and np.abs(got - want).max() <= 1e-4 * np.abs(want).max():
            return name
    near = sorted((float(np.abs(found[n] - want).max() / np.abs(want).max()), n) for n in names
                  if n in found and found[n].shape == want.shape)
    raise AssertionError(f"no tensor of the export holds the module's output {want.shape}; nearest: {near[:3]}")


def at_middle_relu(variants, x):
    """EpsilonPlusFlat on variant 'default' at its middle nn.ReLU module called once (under the canonizers: ResNet's
    calls one twice): (model, canonizer names, composite class name, params, a composite factory, the module's
    name)."""
    model, names, _ = variants["default"]
    cls_name, _, params = LRP_METHODS["lrp.epsilon_plus_flat"]

    def composite():
        return zennit_composite("lrp.epsilon_plus_flat", names)

    chosen, _ = middle_relu(model, x, zennit.attribution.Gradient(model, composite()))
    return model, names, cls_name, params, composite, chosen


def run_zennit_layers(variants, x, argmax, target):
    """Zennit's relevance at a hidden tensor: EpsilonPlusFlat (variant 'default'), the gradient retained at the
    output of the middle nn.ReLU module called once in the forward pass (under Zennit's rule hooks the gradient
    between hooked layers is the relevance), for onnxattr's keep= at the export's tensor that holds it."""
    model, names, cls_name, params, composite, chosen = at_middle_relu(variants, x)
    out = {}
    for mode in MODES:
        kept = {}

        def keep(mod, i, o):
            o.retain_grad()
            kept["out"] = o

        with zennit.attribution.Gradient(model, composite()) as attributor:
            handle = model.get_submodule(chosen).register_forward_hook(keep)
            attributor(x.clone(), lrp_seed(mode, argmax, target))
            handle.remove()
        tensor = onnx_tensor_of(kept["out"])
        seed = {"max": "y*onehot(argmax)", "index": "y*onehot(target)", "all": "y (all logits)"}[mode]
        out[f"lrp.epsilon_plus_flat|{mode}|layer"] = (kept["out"].grad.detach().clone(), {
            "method": "lrp.epsilon_plus_flat", "params": params, "mode": mode, "seed": "logit",
            "statistical": False, "zennit_canonizers": names, "keep": tensor,
            "library_call": f"zennit.attribution.Gradient(model, zennit.composites.{cls_name}(canonizers={names})) "
                            f"with attr_output = {seed}; the gradient retained at the output of module "
                            f"'{chosen}' (export tensor '{tensor}')"})
    return out


def crp_channels(channels, samples):
    """The channels sample i is conditioned on: two of them, a different pair per sample (one on a single channel)."""
    return [sorted({i % channels, (3 * i + 1) % channels}) for i in range(samples)]


def run_crp(variants, x, argmax, target):
    """zennit-crp's CondAttribution (Concept Relevance Propagation) with EpsilonPlusFlat: the relevance at the
    middle nn.ReLU module called once is masked per sample to two of its channels (ChannelConcept, axis 1) and
    only what passes through that module reaches the input (exclude_parallel, its default); the map is data.grad
    (CRP's heatmap sums it over the channels), for onnxattr's condition= at the export's tensor of that output."""
    from crp.attribution import CondAttribution

    model, names, cls_name, params, composite, chosen = at_middle_relu(variants, x)
    value = {}
    handle = model.get_submodule(chosen).register_forward_hook(lambda mod, i, o: value.update(out=o))
    with zennit.attribution.Gradient(model, composite()):
        with torch.no_grad():
            model(x)
    handle.remove()
    tensor = onnx_tensor_of(value["out"])
    channels = crp_channels(value["out"].shape[1], len(x))
    out = {}
    for mode in MODES:
        picked = {"max": argmax, "index": target}.get(mode)
        conditions = [{chosen: c, **({} if picked is None else {"y": [int(picked[i])]})} for i, c in enumerate(channels)]
        data = x.clone().requires_grad_(True)
        CondAttribution(model, no_param_grad=False)(
            data, conditions, composite(), init_rel=(lambda y: y) if mode == "all" else None)
        seed = {"max": "y*onehot(argmax)", "index": "y*onehot(target)", "all": "y (all logits)"}[mode]
        out[f"lrp.epsilon_plus_flat|{mode}|crp"] = (data.grad.detach().clone(), {
            "method": "lrp.epsilon_plus_flat", "params": params, "mode": mode, "seed": "logit",
            "statistical": False, "zennit_canonizers": names, "condition": {"tensor": tensor, "channels": channels},
            "library_call": f"crp.attribution.CondAttribution(model)(x, conditions=[{{'{chosen}': the sample's "
                            f"channels{'' if mode == 'all' else ', y: [its class]'}}} per sample], "
                            f"zennit.composites.{cls_name}(canonizers={names})"
                            f"{', init_rel=lambda y: y' if mode == 'all' else ''}) (exclude_parallel=True), "
                            f"seed {seed}; the map is data.grad (the heatmap before CRP sums its channels); "
                            f"conditioned on module '{chosen}' (export tensor '{tensor}')"})
    return out


def run_zennit(variants, x, argmax, target):
    """variants: {tag: (model, canonizer names, description)}."""
    out = {}
    for tag, (model, names, desc) in variants.items():
        for method, (cls_name, kwargs, params) in LRP_METHODS.items():
            for mode in MODES:
                rel = zennit_map(model, x, method, names, mode, argmax, target)
                seed = {"max": "y*onehot(argmax)", "index": "y*onehot(target)", "all": "y (all logits)"}[mode]
                out[f"{method}|{mode}|{tag}"] = (rel, {
                    "method": method, "params": params, "mode": mode, "seed": "logit", "statistical": False,
                    "zennit_canonizers": names, "model_variant": desc,
                    "library_call": f"zennit.attribution.Gradient(model, zennit.composites.{cls_name}("
                                    f"{', '.join(f'{k}={v}' for k, v in kwargs.items())}"
                                    f"{', ' if kwargs else ''}canonizers={names})) with attr_output = {seed}"})
    return out

# --------------------------------------------------------------------------------------------- DeepLIFT
class GradientMaxPool1d(nn.MaxPool1d):
    """nn.MaxPool1d under another type. Captum's DeepLift picks its rule by EXACT type
    (type(module) in SUPPORTED_NON_LINEAR), so this module gets no hook: its plain gradient (the route to the
    winner at x), which is what onnxattr's deep_lift does at MaxPool."""


class GradientMaxPool2d(nn.MaxPool2d):
    """See GradientMaxPool1d."""


class SiLUProduct(nn.Module):
    """x * sigmoid(x) with the Sigmoid as a module of its own: the form torch.onnx exports nn.SiLU in
    (Sigmoid + Mul). Captum's DeepLift then rescales the Sigmoid (nn.Sigmoid is in SUPPORTED_NON_LINEAR) and
    autograd applies the product rule at the Mul, as onnxattr does on the exported graph; on nn.SiLU itself
    (not in SUPPORTED_NON_LINEAR) Captum takes the plain gradient of x*sigmoid(x).

    The Sigmoid gets a copy of x: Captum hooks a module's INPUT TENSOR (captum/_utils/common.py
    _register_backward_hook) and replaces the whole gradient arriving at that tensor by the rescaled one, so
    with x itself as the Sigmoid's input the Mul's direct share g*sigmoid(x) would be dropped."""

    def __init__(self):
        super().__init__()
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        return x * self.sigmoid(x.clone())


def deeplift_onnx_form(model):
    """(copy of `model` with nn.MaxPool1d/2d -> GradientMaxPool1d/2d and nn.SiLU -> SiLUProduct, its tag) or
    (None, None) when the model has neither. Same forward values; only Captum's rule choice changes."""
    import copy
    clone = copy.deepcopy(model)
    swapped = []
    for name, mod in list(clone.named_modules()):
        if type(mod) in (nn.MaxPool1d, nn.MaxPool2d):
            cls = GradientMaxPool1d if type(mod) is nn.MaxPool1d else GradientMaxPool2d
            new = cls(mod.kernel_size, mod.stride, mod.padding, mod.dilation, mod.return_indices, mod.ceil_mode)
            swapped.append("maxpool_gradient")
        elif type(mod) is nn.SiLU:
            new = SiLUProduct()
            swapped.append("silu_product")
        else:
            continue
        parent_name, _, attr = name.rpartition(".")
        setattr(clone.get_submodule(parent_name) if parent_name else clone, attr, new)
    if not swapped:
        return None, None
    tag = "_".join(t for t in ("maxpool_gradient", "silu_product") if t in swapped)
    return clone.eval(), tag


DEEPLIFT_VARIANTS = {
    "maxpool_gradient": "every nn.MaxPool* replaced by GradientMaxPool* (same forward; Captum looks rules up by "
                        "exact type, so MaxPool takes its plain gradient, as in onnxattr)",
    "maxpool_gradient_silu_product": "every nn.MaxPool* replaced by GradientMaxPool* (plain gradient) and nn.SiLU "
                                     "by SiLUProduct (x * nn.Sigmoid()(x.clone()), the exported form: Captum rescales "
                                     "the Sigmoid, autograd takes the product rule)",
}


def deeplift_maps(model, x, argmax, target, method, attribute, params, call):
    """Maps of a Captum DeepLift attributor, ``attribute(model, target)``, in every mode: tag "default" on the
    model as is (Captum's maxpool rule at nn.MaxPool*, plain gradient at nn.SiLU), and on models with a MaxPool or
    SiLU also deeplift_onnx_form(model)'s tag. ``call``: the library call, for the manifest."""
    out = {}
    variants = {"default": (model, "model as is")}
    onnx_form, tag = deeplift_onnx_form(model)
    if onnx_form is not None:
        variants[tag] = (onnx_form, DEEPLIFT_VARIANTS[tag])
    for tag, (net, desc) in variants.items():
        for mode in MODES:
            m, tgt, seed_note = captum_call(net, mode, argmax, target)
            # Captum's maxpool rule calls max_unpool, which torch flags as non-deterministic (a scatter); the
            # MaxPools here have kernel == stride, so every index is written once and the order cannot matter
            torch.use_deterministic_algorithms(True, warn_only=True)
            try:
                rel = attribute(m, tgt)
            finally:
                torch.use_deterministic_algorithms(True)
            out[f"{method}|{mode}|{tag}"] = (rel.detach(), {
                "method": method, "params": params, "mode": mode, "seed": "one", "statistical": False,
                "model_variant": desc, "library_call": f"{call}; {seed_note}"})
    return out


def run_deeplift(model, x, argmax, target):
    """Captum DeepLift (rescale rule, baselines 0, multiply_by_inputs=True, eps 1e-10), as deeplift_maps."""
    return deeplift_maps(model, x, argmax, target, "deep_lift",
                         lambda m, tgt: DeepLift(m).attribute(x.clone().requires_grad_(), baselines=0.0, target=tgt),
                         {"reference_inputs": 0.0}, "captum DeepLift(model).attribute(x, baselines=0.0, target) "
                         "(rescale rule, multiply_by_inputs=True, eps=1e-10)")


def run_deeplift_shap(model, x, argmax, target):
    """Captum DeepLiftShap with the samples of x as the baselines (DeepLIFT's rescale rule against each, averaged),
    as deeplift_maps."""
    from captum.attr import DeepLiftShap

    return deeplift_maps(model, x, argmax, target, "deep_lift_shap",
                         lambda m, tgt: DeepLiftShap(m).attribute(x.clone().requires_grad_(), baselines=x.clone(),
                                                                  target=tgt),
                         {"baselines": "@x"}, "captum DeepLiftShap(model).attribute(x, baselines=x, target) (the "
                         "four samples as the baselines; params 'baselines': '@x' means the stored x)")


# --------------------------------------------------------------------------------------------- IG quadratures
# Captum's riemann_trapezoid is not stored: its step sizes are 1/n with halved ends (summing to (n-1)/n) on
# alphas k/(n-1), so its maps are (n-1)/n times the trapezoid rule's, which onnxattr computes (README)
IG_QUADRATURES = ("gausslegendre",)


def run_ig_quadrature(model, x, argmax, target):
    """Captum IntegratedGradients with Gauss-Legendre points and weights (Captum's default), baseline 0, 64
    steps; tagged by the rule, onnxattr's `integration` parameter of the same name."""
    out = {}
    for mode in MODES:
        m, tgt, seed_note = captum_call(model, mode, argmax, target)
        for rule in IG_QUADRATURES:
            rel = IntegratedGradients(m).attribute(x.clone().requires_grad_(), baselines=0.0, target=tgt,
                                                   n_steps=IG_STEPS, method=rule)
            out[f"integrated_gradients|{mode}|{rule}"] = (rel, {
                "method": "integrated_gradients", "mode": mode, "seed": "one", "statistical": False,
                "params": {"reference_inputs": 0.0, "steps": IG_STEPS, "integration": rule},
                "library_call": f"captum IntegratedGradients(model).attribute(x, baselines=0.0, target, "
                                f"n_steps={IG_STEPS}, method='{rule}'); " + seed_note})
    return out


def run_occlusion(model, x, argmax, target):
    """Captum Occlusion, baselines 0.5: the window covers the first feature axis whole and 4 elements of each
    other (4 of the 16 features of an MLP's input), stride 2 (3 for the MLP), the last window on an axis cut
    at its end as Captum does."""
    rank = x.ndim - 1
    window = (x.shape[1],) + (4,) * (rank - 1) if rank > 1 else (4,)
    strides = (x.shape[1],) + (2,) * (rank - 1) if rank > 1 else (3,)
    out = {}
    for mode in MODES:
        m, tgt, seed_note = captum_call(model, mode, argmax, target)
        with torch.no_grad():
            rel = Occlusion(m).attribute(x, sliding_window_shapes=window, strides=strides, baselines=0.5,
                                         target=tgt)
        out[f"occlusion|{mode}|default"] = (rel, {
            "method": "occlusion", "mode": mode, "seed": "one", "statistical": False,
            "params": {"sliding_window_shapes": list(window), "strides": list(strides), "baselines": 0.5},
            "library_call": f"captum Occlusion(model).attribute(x, sliding_window_shapes={window}, "
                            f"strides={strides}, baselines=0.5, target); " + seed_note})
    return out


GS_SAMPLES, GS_STD = 64, 0.1


def run_gradient_shap(model, x, argmax, target):
    """Captum GradientShap with the samples of x as the set of baselines (a background batch, as SHAP's
    explainers take one), n_samples=64, stdevs=0.1; statistical (torch's and numpy's RNGs, seeded 2025)."""
    out = {}
    for mode in MODES:
        m, tgt, seed_note = captum_call(model, mode, argmax, target)
        torch.manual_seed(2025)
        np.random.seed(2025)
        rel = GradientShap(m).attribute(x.clone().requires_grad_(), baselines=x.clone(), n_samples=GS_SAMPLES,
                                        stdevs=GS_STD, target=tgt)
        out[f"gradient_shap|{mode}|default"] = (rel.detach(), {
            "method": "gradient_shap", "mode": mode, "seed": "one", "statistical": True,
            "params": {"n_samples": GS_SAMPLES, "stdevs": GS_STD, "baselines": "@x"},
            "library_call": f"captum GradientShap(model).attribute(x, baselines=x, n_samples={GS_SAMPLES}, "
                            f"stdevs={GS_STD}, target); torch.manual_seed(2025), np.random.seed(2025) before; "
                            "params 'baselines': '@x' means the stored x; " + seed_note})
    return out


NT_VARIANTS = (
    # (onnxattr method, tag, Captum base, base kwargs, nt_type, onnxattr params beyond the noise)
    ("smoothgrad", "sq", "Saliency", {"abs": False}, "smoothgrad_sq", {"nt_type": "smoothgrad_sq"}),
    ("smoothgrad", "input_t_gradient", "InputXGradient", {}, "smoothgrad", {"base": "input_t_gradient"}),
    ("smoothgrad", "guided_backprop", "GuidedBackprop", {}, "smoothgrad", {"base": "guided_backprop"}),
    ("vargrad", "default", "Saliency", {"abs": False}, "vargrad", {}),
    ("vargrad", "abs", "Saliency", {"abs": True}, "vargrad", {"postprocess": "abs"}),
)


def run_noise_tunnel(model, x, argmax, target):
    """Captum NoiseTunnel's other aggregates and bases (smoothgrad_sq, vargrad; InputXGradient, GuidedBackprop)
    over 64 copies with N(0, 1) noise: onnxattr's smoothgrad with nt_type / base, and vargrad. Statistical
    (torch's RNG, seeded 2026 before each call)."""
    out = {}
    for mode in MODES:
        m, tgt, seed_note = captum_call(model, mode, argmax, target)
        for method, tag, base, kwargs, nt_type, params in NT_VARIANTS:
            torch.manual_seed(2026)
            base_class = {"Saliency": Saliency, "InputXGradient": InputXGradient, "GuidedBackprop": GuidedBackprop}
            rel = NoiseTunnel(base_class[base](m)).attribute(
                x.clone().requires_grad_(), nt_type=nt_type, nt_samples=SG_SAMPLES, stdevs=SG_STD, target=tgt,
                **kwargs)
            shown = "".join(f", {k}={v}" for k, v in kwargs.items())
            out[f"{method}|{mode}|{tag}"] = (rel.detach(), {
                "method": method, "mode": mode, "seed": "one", "statistical": True,
                "params": {"augment_by_n": SG_SAMPLES, "noise_scale": SG_STD, **params},
                "library_call": f"captum NoiseTunnel({base}(model)).attribute(x, nt_type='{nt_type}', "
                                f"nt_samples={SG_SAMPLES}, stdevs={SG_STD}, target{shown}); torch.manual_seed(2026) "
                                "before; " + seed_note})
    return out


AUX = {}  # arrays a map's params refer to ("@mask:patches"), stored beside the maps of the model being made


def patch_mask(shape, size=4):
    """Group ids of size x size patches over the spatial axes (one group over the channels), [1, 1, *S]; for a
    flat input [N, F], pairs of features, [1, F] (Captum reads a 1-D mask [F] wrongly: it gave non-zero maps
    for 2 of the 8 groups when tried)."""
    if len(shape) == 2:
        return (np.arange(shape[1], dtype=np.int64) // 2).reshape(1, -1)
    spatial = shape[2:]
    blocks = [np.arange(s) // size for s in spatial]
    per_axis = [(s + size - 1) // size for s in spatial]
    ids = np.zeros(spatial, np.int64)
    for d, b in enumerate(blocks):
        ids = ids * per_axis[d] + b.reshape([-1 if k == d else 1 for k in range(len(spatial))])
    return ids.reshape((1, 1) + tuple(spatial))


def run_feature_ablation(model, x, argmax, target):
    """Captum FeatureAblation, baselines 0.5: tag 'default' (feature_mask None: every feature alone) on the
    flat inputs, tag 'patches' (patch_mask: 4 x 4 patches over all channels, pairs of a flat input's features)
    on every net."""
    from captum.attr import FeatureAblation

    mask = patch_mask(tuple(x.shape))
    AUX["mask:patches"] = mask
    out = {}
    for mode in MODES:
        m, tgt, seed_note = captum_call(model, mode, argmax, target)
        tags = [("patches", torch.from_numpy(mask), "@mask:patches")]
        tags += [("default", None, None)] if x.ndim == 2 else []
        for tag, fm, stored in tags:
            with torch.no_grad():
                rel = FeatureAblation(m).attribute(x, baselines=0.5, target=tgt, feature_mask=fm,
                                                   perturbations_per_eval=4)
            params = {"baselines": 0.5, **({"feature_mask": stored} if stored else {})}
            out[f"feature_ablation|{mode}|{tag}"] = (rel, {
                "method": "feature_ablation", "mode": mode, "seed": "one", "statistical": False, "params": params,
                "library_call": f"captum FeatureAblation(model).attribute(x, baselines=0.5, target, feature_mask="
                                f"{'None' if fm is None else 'the stored ' + stored[1:]}); " + seed_note})
    return out


SV_SAMPLES = 25  # Captum's default n_samples


def coarse_mask(shape, groups=6):
    """Six groups for Shapley values (Captum's ShapleyValues walks all 6! = 720 orders): [1, 1, H, W] of three
    bands of rows times two of columns, shared by the channels; [1, 1, L] of six bands; [1, F] of six runs of
    neighbouring features."""
    if len(shape) == 2:
        return (np.arange(shape[1]) * groups // shape[1]).reshape(1, -1).astype(np.int64)
    if len(shape) == 3:
        return (np.arange(shape[2]) * groups // shape[2]).reshape(1, 1, -1).astype(np.int64)
    rows = np.arange(shape[2]) * 3 // shape[2]
    cols = np.arange(shape[3]) * 2 // shape[3]
    return (rows[:, None] * 2 + cols[None, :]).reshape((1, 1) + tuple(shape[2:])).astype(np.int64)


def coarse_groups(x):
    """(coarse_mask of x's shape, the same as a torch tensor), the mask stored as 'mask:coarse' (the entries'
    feature_mask names it)."""
    mask = coarse_mask(tuple(x.shape))
    AUX["mask:coarse"] = mask
    return mask, torch.from_numpy(mask)


def run_shapley(model, x, argmax, target):
    """Captum ShapleyValues (exact: every order of the six groups of coarse_mask) and ShapleyValueSampling
    (n_samples=25 random orders; statistical, torch.manual_seed(2027) before), baselines 0.5."""
    from captum.attr import ShapleyValues, ShapleyValueSampling

    mask, fm = coarse_groups(x)
    out = {}
    for mode in MODES:
        m, tgt, seed_note = captum_call(model, mode, argmax, target)
        with torch.no_grad():
            exact = ShapleyValues(m).attribute(x, baselines=0.5, target=tgt, feature_mask=fm,
                                               perturbations_per_eval=1)
            torch.manual_seed(2027)
            sampled = ShapleyValueSampling(m).attribute(x, baselines=0.5, target=tgt, feature_mask=fm,
                                                        n_samples=SV_SAMPLES, perturbations_per_eval=1)
        params = {"baselines": 0.5, "feature_mask": "@mask:coarse"}
        out[f"shapley_values|{mode}|default"] = (exact, {
            "method": "shapley_values", "mode": mode, "seed": "one", "statistical": False, "params": params,
            "library_call": "captum ShapleyValues(model).attribute(x, baselines=0.5, target, feature_mask=the stored "
                            "mask:coarse); " + seed_note})
        out[f"shapley_value_sampling|{mode}|default"] = (sampled, {
            "method": "shapley_value_sampling", "mode": mode, "seed": "one", "statistical": True,
            "params": {**params, "n_samples": SV_SAMPLES}, "exact": f"shapley_values|{mode}|default",
            "library_call": "captum ShapleyValueSampling(model).attribute(x, baselines=0.5, target, feature_mask="
                            f"the stored mask:coarse, n_samples={SV_SAMPLES}); torch.manual_seed(2027) before; "
                            + seed_note})
    return out


def run_feature_permutation(model, x, argmax, target):
    """Captum FeaturePermutation over the six groups of coarse_mask: tag 'pair' on the first two samples, where the
    only permutation Captum accepts is the swap (deterministic; entry 'rows': 2), and tag 'default' on all four
    (statistical, torch.manual_seed(2028) before), with its exact expectation over the 23 permutations that move a
    row stored as 'perm_mean:MODE' (the entry's 'exact')."""
    from captum.attr import FeaturePermutation

    mask, fm = coarse_groups(x)
    out = {}
    for mode in MODES:
        m, tgt, seed_note = captum_call(model, mode, argmax, target)
        pair_tgt = tgt if isinstance(tgt, int) else tgt[:2]
        with torch.no_grad():
            pair = FeaturePermutation(m).attribute(x[:2], target=pair_tgt, feature_mask=fm)
            torch.manual_seed(2028)
            sampled = FeaturePermutation(m).attribute(x, target=tgt, feature_mask=fm)
        index = torch.as_tensor(tgt).reshape(-1, 1) if not isinstance(tgt, int) else torch.full((len(x), 1), tgt)
        selected = lambda v, m=m, index=index: m(v).gather(1, index).squeeze(1)  # noqa: E731
        AUX[f"perm_mean:{mode}"] = permutation_mean(selected, x, mask).expand_as(x).numpy().astype(np.float32)
        params = {"feature_mask": "@mask:coarse"}
        call = "captum FeaturePermutation(model).attribute(x, target, feature_mask=the stored mask:coarse)"
        out[f"feature_permutation|{mode}|pair"] = (pair, {
            "method": "feature_permutation", "mode": mode, "seed": "one", "statistical": False, "params": params,
            "rows": 2, "library_call": call.replace("(x,", "(x[:2],") + "; " + seed_note})
        out[f"feature_permutation|{mode}|default"] = (sampled, {
            "method": "feature_permutation", "mode": mode, "seed": "one", "statistical": True, "params": params,
            "exact": f"perm_mean:{mode}",
            "library_call": call + "; torch.manual_seed(2028) before; " + seed_note})
    return out


def run_beta_smooth(model, x, argmax, target):
    """Zennit's BetaSmooth composite (every nn.ReLU's gradient becomes sigmoid(beta x), beta 10 and 3) with the
    Gradient attributor, seeded with 1 at the selected output(s) (a ones vector for 'all')."""
    out = {}
    for mode in MODES:
        seed_note = {"max": "onehot(argmax)", "index": "onehot(target)", "all": "ones (all logits)"}[mode]

        def seed(y, mode=mode):
            if mode == "all":
                return torch.ones_like(y)
            idx = torch.as_tensor(argmax if mode == "max" else target)
            return nn.functional.one_hot(idx, y.shape[1]).to(y)

        for tag, beta in (("default", 10.0), ("beta3", 3.0)):
            composite = zennit.composites.BetaSmooth(beta_smooth=beta)
            with zennit.attribution.Gradient(model, composite) as attributor:
                _, rel = attributor(x.clone(), seed)
            out[f"beta_smooth|{mode}|{tag}"] = (rel.detach(), {
                "method": "beta_smooth", "mode": mode, "seed": "one", "statistical": False,
                "params": {"beta_smooth": beta},
                "library_call": f"zennit.attribution.Gradient(model, zennit.composites.BetaSmooth(beta_smooth={beta}))"
                                f" with attr_output = {seed_note}"})
    return out


def last_feature_map(model, x):
    """The module whose output is the last feature map of x's rank with a spatial axis above 1, in the order
    modules run (forward hooks): onnxattr's default Grad-CAM layer (a ResNet's last block, a VGG's last pool)."""
    seen = []
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.append((mod, o)))
             for m in model.modules() if not list(m.children())]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    found = [mod for mod, o in seen if torch.is_tensor(o) and o.ndim == x.ndim >= 3 and max(o.shape[2:]) > 1]
    return found[-1] if found else None


def run_cam(model, x, argmax, target):
    """Captum LayerGradCam (relu_attributions=True; tag "norelu": False, the signed cam, non-zero where random
    weights leave a sample's cam negative everywhere) resized with LayerAttribution.interpolate (bilinear, linear
    for one spatial axis: the Grad-CAM paper's) and broadcast over x's channels; GuidedGradCam with the same
    interpolation. The layer: last_feature_map."""
    layer = last_feature_map(model, x)
    if layer is None:
        return {}
    name = next(n for n, m in model.named_modules() if m is layer)
    mode_name = {3: "linear", 4: "bilinear"}[x.ndim]
    out = {}
    for mode in ("max", "index"):  # the heads are decorrelated from the mean feature: the logits' sum barely
        m = model                   # varies, and its cam is all 0 after the relu
        tgt = captum_target(mode, argmax, target)
        seed_note = "captum target"
        xi = x.clone().requires_grad_()
        cam = LayerGradCam(m, layer).attribute(xi, target=tgt, relu_attributions=True)
        cam = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode=mode_name).expand_as(x)
        signed = LayerGradCam(m, layer).attribute(xi, target=tgt, relu_attributions=False)
        signed = LayerAttribution.interpolate(signed, tuple(x.shape[2:]), interpolate_mode=mode_name).expand_as(x)
        guided = GuidedGradCam(m, layer).attribute(xi, target=tgt, interpolate_mode=mode_name)
        for method, tag, value, relu, call in (
                ("grad_cam", "default", cam, True, f"captum LayerGradCam(model, model.{name}).attribute(x, target, "
                 f"relu_attributions=True), LayerAttribution.interpolate(., x.shape[2:], '{mode_name}'), "
                 "expanded over x's channels"),
                ("grad_cam", "norelu", signed, False, f"captum LayerGradCam(model, model.{name}).attribute(x, "
                 f"target, relu_attributions=False), LayerAttribution.interpolate(., x.shape[2:], '{mode_name}'), "
                 "expanded over x's channels"),
                ("guided_grad_cam", "default", guided, True, f"captum GuidedGradCam(model, model.{name}).attribute("
                 f"x, target, interpolate_mode='{mode_name}')")):
            params = {"interpolation": "linear"} if relu else {"interpolation": "linear", "relu": False}
            out[f"{method}|{mode}|{tag}"] = (value.detach(), {
                "method": method, "mode": mode, "seed": "one", "statistical": False,
                "params": params, "library_call": call + "; " + seed_note})
    return out


# --------------------------------------------------------------------------------------------- conductance
CONDUCTANCE_STEPS = 20


class InputLayer(nn.Module):
    """The model behind an nn.Identity whose output is x: Captum's LayerConductance at it is the input's map."""

    def __init__(self, model):
        super().__init__()
        self.inp, self.model = nn.Identity(), model

    def forward(self, x):
        return self.model(self.inp(x))


def middle_relu(model, x, context=None):
    """(name, module) of the middle nn.ReLU module among those the forward calls once (within ``context``, a Zennit
    attributor whose canonizers change the calls)."""
    calls = []
    with context or contextlib.nullcontext():
        handles = [m.register_forward_hook(lambda mod, i, o, n=n: calls.append(n))
                   for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
        with torch.no_grad():
            model(x)
        for h in handles:
            h.remove()
    once = [n for n in dict.fromkeys(calls) if calls.count(n) == 1]
    name = once[len(once) // 2]
    return name, model.get_submodule(name)


def run_conductance(model, x, argmax, target):
    """Captum's LayerConductance (baselines 0, n_steps 20) at the middle ReLU module called once, for onnxattr's
    conductance with keep= at the export's tensor that holds its output, with Captum's default method
    (gausslegendre) and riemann_trapezoid; and at an nn.Identity before the model (InputLayer), onnxattr's map."""
    from captum.attr import LayerConductance, NeuronConductance

    name, layer = middle_relu(model, x)
    value = _module_output(model, layer, x)
    tensor = onnx_tensor_of(value)
    unit = conducting_unit(model, layer, x, argmax)
    out = {}
    for mode in MODES:
        m, tgt, seed_note = captum_call(model, mode, argmax, target)
        wrapped = InputLayer(m).eval()
        for rule in ("gausslegendre", "riemann_trapezoid"):
            params = {"steps": CONDUCTANCE_STEPS, "integration": rule, "reference_inputs": 0.0}
            call = f"n_steps={CONDUCTANCE_STEPS}, method='{rule}'); " + seed_note
            at_layer = LayerConductance(m, layer).attribute(x.clone(), baselines=0.0, target=tgt,
                                                            n_steps=CONDUCTANCE_STEPS, method=rule)
            out[f"conductance|{mode}|layer_{rule}"] = (at_layer.detach(), {
                "method": "conductance", "params": params, "mode": mode, "seed": "one", "statistical": False,
                "keep": tensor, "library_call": f"captum LayerConductance(model, model.{name}).attribute(x, "
                f"baselines=0.0, target, " + call + f" (export tensor '{tensor}')"})
            at_input = LayerConductance(wrapped, wrapped.inp).attribute(x.clone(), baselines=0.0, target=tgt,
                                                                        n_steps=CONDUCTANCE_STEPS, method=rule)
            out[f"conductance|{mode}|{rule}"] = (at_input.detach(), {
                "method": "conductance", "params": params, "mode": mode, "seed": "one", "statistical": False,
                "library_call": "captum LayerConductance(InputLayer(model), its nn.Identity before the model)"
                f".attribute(x, baselines=0.0, target, " + call})
        # NeuronConductance weighs the points as IntegratedGradients does: Captum's riemann_trapezoid weights sum to
        # (n-1)/n (see IG_QUADRATURES), so its default is not stored; riemann_left's weights are the same as ours
        for rule in ("gausslegendre", "riemann_left"):
            params = {"steps": CONDUCTANCE_STEPS, "integration": rule, "reference_inputs": 0.0}
            neuron = NeuronConductance(m, layer).attribute(x.clone(), unit, baselines=0.0, target=tgt,
                                                            n_steps=CONDUCTANCE_STEPS, method=rule)
            out[f"neuron_conductance|{mode}|{rule}"] = (neuron.detach(), {
                "method": "neuron_conductance", "mode": mode, "seed": "one", "statistical": False,
                "params": {**params, "layer": tensor, "neuron_index": list(unit)},
                "library_call": f"captum NeuronConductance(model, model.{name}).attribute(x, neuron_selector={unit}, "
                f"baselines=0.0, target, n_steps={CONDUCTANCE_STEPS}, method='{rule}'); {seed_note} (export tensor "
                f"'{tensor}')"})
    return out


def conducting_unit(model, layer, x, argmax):
    """NeuronConductance's unit: the one of layer's output whose |gradient x activation|, averaged over the samples,
    is largest for both the logits' sum and the argmax logits (a unit that, say, never wins a MaxPool is skipped)."""
    kept = {}

    def hook(mod, i, o):
        o.retain_grad()
        kept["o"] = o

    scores = []
    for pick in ("all", "max"):
        handle = layer.register_forward_hook(hook)
        y = model(x.clone())
        handle.remove()
        (y.sum() if pick == "all" else y[torch.arange(len(y)), torch.as_tensor(argmax)].sum()).backward()
        o = kept["o"]
        scores.append((o.grad * o).abs().mean(0).detach())
        model.zero_grad()
    score = torch.minimum(*scores)
    return tuple(int(i) for i in np.unravel_index(int(score.argmax()), tuple(score.shape)))


def _module_output(model, layer, x):
    """layer's output in model(x)."""
    seen = []
    handle = layer.register_forward_hook(lambda mod, i, o: seen.append(o))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


# --------------------------------------------------------------------------------------------- excitation backprop
def safe_divide(z):
    """iNNvestigate's SafeDivide stabilizer, z + 1e-7 [z == 0], which onnxattr's iNNvestigate-style presets
    (excitation_backprop included) use; passed to zennit as a callable stabilizer."""
    return z + 1e-7 * (z == 0)


def run_excitation(model, canonizer_names, x, argmax, target):
    """zennit.composites.ExcitationBackprop with zero_params=['bias'] (no bias in the z+ denominators, as in
    Zhang et al. 2016 and onnxattr) and stabilizer=safe_divide, seeded with 1 at the selected output(s) (a ones
    vector for 'all')."""
    out = {}
    for mode in MODES:
        canonizers = [getattr(zennit.canonizers, n)() if hasattr(zennit.canonizers, n)
                      else getattr(zennit.torchvision, n)() for n in canonizer_names]
        composite = zennit.composites.ExcitationBackprop(stabilizer=safe_divide, zero_params=["bias"],
                                                         canonizers=canonizers)

        def seed(y, mode=mode):
            y = y.detach()
            if mode == "all":
                return torch.ones_like(y)
            idx = torch.as_tensor(argmax if mode == "max" else target)
            return nn.functional.one_hot(idx, y.shape[1]).to(y)

        with zennit.attribution.Gradient(model, composite) as attributor:
            _, rel = attributor(x.clone(), seed)
        seed_note = {"max": "onehot(argmax)", "index": "onehot(target)", "all": "ones"}[mode]
        out[f"excitation_backprop|{mode}|default"] = (rel, {
            "method": "excitation_backprop", "params": {"stabilizer": "z + 1e-7*[z == 0]", "bias": False},
            "mode": mode, "seed": "one", "statistical": False, "zennit_canonizers": canonizer_names,
            "library_call": "zennit.attribution.Gradient(model, zennit.composites.ExcitationBackprop("
                            f"stabilizer=lambda z: z + 1e-7 * (z == 0), zero_params=['bias'], "
                            f"canonizers={canonizer_names})) with attr_output = {seed_note}"})
    return out


KS_SAMPLES = 40  # coalitions stored for the deterministic KernelSHAP entries (six groups: 64 exist)
# onnxattr draws one set of coalitions for the batch, so a run's errors are shared by its samples and three runs'
# spread (the statistical check's default) is too noisy: with three, a copy of Captum's own estimator failed the
# check 2 % of the time on torch_resnet, with eight never in 3000 trials
KS_RUNS = 8


def run_kernel_shap(model, x, argmax, target):
    """Captum KernelShap over the six groups of coarse_mask, baselines 0.5: tag 'coalitions' evaluates the 40
    coalitions stored as 'coalitions:ks' (given to Captum as its perturb_func; deterministic), tag 'default'
    Captum's own 25 draws (statistical, torch.manual_seed(2029) before). Captum fits in float32 (LimeBase casts
    the data to float before scikit-learn's LinearRegression)."""
    from captum.attr import KernelShap

    mask, fm = coarse_groups(x)
    groups = int(mask.max()) + 1
    coalitions = kernel_shap_coalitions(groups, KS_SAMPLES, np.random.default_rng(2029))
    AUX["coalitions:ks"] = coalitions
    stored = given_as_perturb_func(coalitions)

    out = {}
    for mode in MODES:
        m, tgt, seed_note = captum_call(model, mode, argmax, target)
        given = KernelShap(m)
        given.perturb_func = stored
        with torch.no_grad():
            fixed = given.attribute(x, baselines=0.5, target=tgt, feature_mask=fm, n_samples=KS_SAMPLES)
            torch.manual_seed(2029)
            drawn = KernelShap(m).attribute(x, baselines=0.5, target=tgt, feature_mask=fm)
        params = {"baselines": 0.5, "feature_mask": "@mask:coarse"}
        out[f"kernel_shap|{mode}|coalitions"] = (fixed, {
            "method": "kernel_shap", "mode": mode, "seed": "one", "statistical": False,
            "params": {**params, "coalitions": "@coalitions:ks"},
            "library_call": "captum KernelShap(model) with perturb_func replaced by a generator of the stored "
                            f"coalitions:ks, .attribute(x, baselines=0.5, target, feature_mask=the stored "
                            f"mask:coarse, n_samples={KS_SAMPLES}); " + seed_note})
        out[f"kernel_shap|{mode}|default"] = (drawn, {
            "method": "kernel_shap", "mode": mode, "seed": "one", "statistical": True, "params": params,
            "runs": KS_RUNS,
            "library_call": "captum KernelShap(model).attribute(x, baselines=0.5, target, feature_mask=the stored "
                            "mask:coarse) (n_samples=25); torch.manual_seed(2029) before; " + seed_note})
    return out


LIME_SAMPLES = 40  # coalitions stored for the deterministic LIME entries


def run_lime(model, x, argmax, target):
    """Captum Lime over the six groups of coarse_mask, baselines 0.5, its default similarity (exp(-d^2 / 2), d the
    cosine distance): tag 'coalitions' (Captum's default SkLearnLasso(alpha=0.01)) and tag 'linear'
    (SkLearnLinearRegression) on the 40 coalitions stored as 'coalitions:lime' (each group held with probability
    1/2, numpy's draws, given to Captum as its perturb_func; deterministic); tag 'default' Captum's own 25 draws
    (statistical, torch.manual_seed(2031) before)."""
    from captum._utils.models.linear_model import SkLearnLinearRegression
    from captum.attr import Lime

    mask, fm = coarse_groups(x)
    groups = int(mask.max()) + 1
    coalitions = (np.random.default_rng(2031).random((LIME_SAMPLES, groups)) < 0.5).astype(np.int64)
    AUX["coalitions:lime"] = coalitions
    stored = given_as_perturb_func(coalitions)

    out = {}
    for mode in MODES:
        m, tgt, seed_note = captum_call(model, mode, argmax, target)
        params = {"baselines": 0.5, "feature_mask": "@mask:coarse"}
        for tag, extra, surrogate in (("coalitions", {}, None), ("linear", {"interpretable_model": "linear"},
                                                                  SkLearnLinearRegression())):
            lime = Lime(m) if surrogate is None else Lime(m, interpretable_model=surrogate)
            lime.perturb_func = stored
            with torch.no_grad():
                fixed = lime.attribute(x, baselines=0.5, target=tgt, feature_mask=fm, n_samples=LIME_SAMPLES)
            out[f"lime|{mode}|{tag}"] = (fixed, {
                "method": "lime", "mode": mode, "seed": "one", "statistical": False,
                "params": {**params, "coalitions": "@coalitions:lime", **extra},
                "library_call": f"captum Lime(model{'' if surrogate is None else ', SkLearnLinearRegression()'}) "
                                "with perturb_func replaced by a generator of the stored coalitions:lime, "
                                ".attribute(x, baselines=0.5, target, feature_mask=the stored mask:coarse, "
                                f"n_samples={LIME_SAMPLES}); " + seed_note})
        with torch.no_grad():
            torch.manual_seed(2031)
            drawn = Lime(m).attribute(x, baselines=0.5, target=tgt, feature_mask=fm)
        out[f"lime|{mode}|default"] = (drawn, {
            "method": "lime", "mode": mode, "seed": "one", "statistical": True, "params": params, "runs": KS_RUNS,
            "library_call": "captum Lime(model).attribute(x, baselines=0.5, target, feature_mask=the stored "
                            "mask:coarse) (n_samples=25); torch.manual_seed(2031) before; " + seed_note})
    return out


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


# --------------------------------------------------------------------------------------------- sanity
def bias_free_clone(model):
    """Copy with all biases zero and BatchNorms reduced to pure scales (mean 0, beta 0): LRP with
    ZPlus/Epsilon(1e-6)/Norm on such a ReLU net conserves relevance (sum of map == logit), up to eps."""
    import copy
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for mod in clone.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)) and mod.bias is not None:
                mod.bias.zero_()
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.zero_()
                mod.bias.zero_()
    return clone.eval()


def conservation(model, x, argmax, canon, name, check=False):
    """Print sum(lrp.epsilon_plus|max map) against the selected logit; with check=True assert they agree."""
    with torch.no_grad():
        y = model(x)
    rel = zennit_map(model, x, "lrp.epsilon_plus", canon, "max", argmax, None)
    sums = rel.flatten(1).sum(1)
    logit = y[torch.arange(len(x)), torch.as_tensor(argmax)]
    print(f"  {name}: sum(lrp.epsilon_plus|max) = {np.round(sums.numpy(), 5)} vs logit {np.round(logit.numpy(), 5)}")
    if check:
        assert torch.allclose(sums, logit, rtol=1e-3, atol=1e-4), f"{name}: relevance not conserved"


def epsilon_everywhere_conserves(model, x, argmax, name):
    """Bias-free ResNet check of the canonizer machinery: Epsilon(1e-6) on every Conv/Linear plus zennit's
    base map (Norm on the residual Sum and AvgPool, Pass on ReLU/BN) must conserve relevance exactly."""
    import zennit.rules
    import zennit.types
    composite = zennit.composites.LayerMapComposite(
        layer_map=zennit.composites.layer_map_base() + [
            (zennit.types.Convolution, zennit.rules.Epsilon()), (nn.Linear, zennit.rules.Epsilon())],
        canonizers=[zennit.torchvision.ResNetCanonizer()])
    with zennit.attribution.Gradient(model, composite) as attributor:
        y, rel = attributor(x.clone(), lrp_seed("max", argmax, None))
    sums = rel.flatten(1).sum(1)
    logit = y.detach()[torch.arange(len(x)), torch.as_tensor(argmax)]
    print(f"  {name}: sum(Epsilon everywhere + ResNetCanonizer) = {np.round(sums.numpy(), 5)} "
          f"vs logit {np.round(logit.numpy(), 5)}")
    assert torch.allclose(sums, logit, rtol=1e-3, atol=1e-4), f"{name}: relevance not conserved"


# --------------------------------------------------------------------------------------------- main
def versions():
    return (f"zennit {importlib.metadata.version('zennit')} / captum {captum.__version__} / "
            f"torch {torch.__version__}")


COMMON_NOTES = [
    "Maps are computed by the libraries in float64 (model.double(), x.double()) on CPU, single-threaded, and "
    "stored as float32; x, target and logits (from the float32 torch model, == onnxruntime's within a few "
    "1e-6) are the float32 originals. Each entry's fp32_rel_dev is max|m32 - m64| / max|m64| for the same "
    "library call run in float32: the rounding floor any float32 implementation should expect.",
    "Modes: max = argmax of the clean logits per sample; index = the stored target; all = every output.",
    "Gradient family seed: 1 at the selected output(s). For mode 'all' Captum has no such mode: the model is "
    "wrapped as SumOutputs (forward returns the sum of the logits, shape [N,1]) and Captum is called with "
    "target=0, which is the VJP with a ones seed; ReLU hooks of guided_backprop/deconvnet still apply to the "
    "wrapped model's nn.ReLU modules.",
    "LRP seed: the selected logit's value (y*onehot; for 'all' the whole logit vector y), passed to zennit as "
    "attr_output. Every method is linear in the seed.",
    "gradient|*|abs is Captum Saliency(abs=True) = |gradient|.",
    "integrated_gradients: Captum riemann_left, baseline 0, 64 steps: (x-0) * mean_k grad(k/64 * x), k=0..63 "
    "(alpha 1 never evaluated). Verified: captum alphas == [k/64], step sizes 1/64. Near alpha=0 MaxPool windows "
    "tie (all activations = biases): compare with a tolerance relative to the map's max.",
    "guided_backprop (Captum): at each nn.ReLU the input gradient (grad_out * [x>0]) is replaced by relu() of it. "
    "deconvnet (Captum): at each nn.ReLU the input gradient is relu(grad_out) (forward mask ignored). "
    "MaxPool/Linear/Conv/Add use plain gradients.",
    "smoothgrad is statistical: Captum NoiseTunnel draws N(0, 1.0) noise per element per copy (torch RNG, "
    "seed 2024), averages the RAW gradients (Saliency abs=False) over 64 noisy copies; in 'max' mode the "
    "target is the clean input's argmax for every copy. Compare only with a statistical tolerance.",
]


METHOD_NOTES = [
    "noise_tunnel maps are statistical: Captum NoiseTunnel (64 copies, N(0, 1.0) noise, torch.manual_seed(2026) "
    "before each call) with nt_type smoothgrad_sq (mean of the squared raw gradients; onnxattr smoothgrad "
    "nt_type=smoothgrad_sq), vargrad (mean of squares minus the squared mean, population variance; onnxattr "
    "vargrad, tag 'abs' over Saliency(abs=True) = postprocess abs), and smoothgrad over InputXGradient (noisy x "
    "times its gradient; base input_t_gradient) and GuidedBackprop (base guided_backprop). Captum sums in the "
    "model's dtype; onnxattr's vargrad sums in float64.",
    "shapley_values / shapley_value_sampling: Captum ShapleyValues(model).attribute(x, baselines=0.5, target, "
    "feature_mask) walks all 6! orders of the six groups of the stored 'mask:coarse' (three bands of rows times two "
    "of columns shared by the channels, [1, 1, H, W]; six bands [1, 1, L]; six runs of features [1, F]); every "
    "feature of a group gets the group's mean gain. ShapleyValueSampling: the mean over n_samples=25 random "
    "orders (torch.manual_seed(2027) before each call), statistical. Captum sums in float32 "
    "(total_attrib is torch.float) even for the float64 model.",
    "deep_lift_shap: Captum DeepLiftShap(model).attribute(x, baselines=x, target): DeepLift (rescale rule, "
    "multiply_by_inputs) against each of the four samples as a baseline, averaged; the model variants as for "
    "deep_lift.",
    "feature_ablation: Captum FeatureAblation(model).attribute(x, baselines=0.5, target, feature_mask, "
    "perturbations_per_eval=4): every feature of a group gets the drop of the selected output when the group "
    "takes 0.5; tag 'default' (mask None: each feature alone) on flat inputs, 'patches' (the stored "
    "'mask:patches': 4 x 4 spatial patches across all channels, [1, 1, *S], or pairs of a flat input's "
    "features, [1, F]) on every net.",
    "feature_permutation: Captum FeaturePermutation(model).attribute(x, target, feature_mask=the stored "
    "'mask:coarse'): every feature of a group gets the drop of the selected output when the group is taken from "
    "the samples of a random permutation of the batch (torch.randperm, redrawn until it moves a row). Tag 'pair': "
    "the first two samples (entry 'rows': 2), where the swap is the only such permutation (deterministic); tag "
    "'default': all four samples (one draw per group after torch.manual_seed(2028), statistical), with the "
    "expectation over the 23 permutations that move a row stored as 'perm_mean:MODE' (computed by "
    "permutation_mean on the torch model).",
    "kernel_shap: Captum KernelShap(model).attribute(x, baselines=0.5, target, feature_mask=the stored "
    "'mask:coarse'): a linear model of the selected output over coalitions of the six groups, fitted by "
    "scikit-learn's LinearRegression with weight 1e6 on the full and the empty coalition and 1 elsewhere; every "
    "feature gets its group's coefficient. Tag 'coalitions': the 40 coalitions stored as 'coalitions:ks' (drawn "
    "with numpy as Captum draws them), given to Captum by replacing its perturb_func (deterministic); tag "
    "'default': Captum's own 25 draws per sample (torch.manual_seed(2029) before), statistical. Captum hands "
    "scikit-learn float32 data even for the float64 model.",
    "lime: Captum Lime(model).attribute(x, baselines=0.5, target, feature_mask=the stored 'mask:coarse'): a linear "
    "model of the selected output over coalitions of the six groups, each weighted by exp(-d^2 / 2) with d the "
    "cosine distance between x and the perturbed input, fitted by scikit-learn's Lasso(alpha=0.01) (tag "
    "'coalitions') or LinearRegression (tag 'linear'); every feature gets its group's coefficient. Both tags "
    "evaluate the 40 coalitions stored as 'coalitions:lime' (each group held with probability 1/2, numpy's draws), "
    "given to Captum by replacing its perturb_func; tag 'default': Captum's own 25 draws per sample "
    "(torch.manual_seed(2031) before), statistical. Captum hands scikit-learn float32 data, and its Lasso stops at "
    "tol=1e-4 (coordinate descent), where onnxattr's FISTA runs to convergence.",
    "beta_smooth: zennit.composites.BetaSmooth(beta_smooth) hooks every nn.ReLU module (each ReLU of these models "
    "is one, and each is an ONNX Relu node) and replaces its gradient by sigmoid(beta * input) * grad_out; "
    "onnxattr's beta_smooth does that at every Relu node. Seeded with 1 at the selected output(s).",
    "grad_cam / guided_grad_cam (models with feature maps): Captum LayerGradCam at the module whose output is the "
    "last feature map of the input's rank with a spatial axis above 1, in the order modules run "
    "(last_feature_map: onnxattr's default layer), relu_attributions=True, resized by "
    "LayerAttribution.interpolate with 'bilinear' ('linear' for Conv1d models), as the Grad-CAM paper does, and "
    "broadcast over the input's channels; GuidedGradCam(model, layer) with the same interpolate_mode (guided "
    "backprop times the resized cam). Seed 1 at the selected output ('all': SumOutputs, target=0).",
    "deep_lift: Captum DeepLift(model).attribute(x, baselines=0.0, target) (rescale rule, multiply_by_inputs=True: "
    "the map is (x - 0) * multiplier; eps=1e-10: where |x - x0| < 1e-10 the plain gradient), seeded with 1 at the "
    "selected output(s) ('all': SumOutputs, target=0). Captum picks a rule by the module's EXACT type "
    "(SUPPORTED_NON_LINEAR): nn.ReLU/ELU/LeakyReLU/Sigmoid/Tanh/Softplus get the rescale rule "
    "g*(f(x)-f(x0))/(x-x0), nn.MaxPool1d/2d/3d its maxpool rule, every other module (Linear, Conv, BatchNorm, "
    "AvgPool, nn.SiLU, ...) and functional op (+, cat, *) the plain gradient. onnxattr's deep_lift: the same rescale "
    "rule (gradient where |x - x0| < 1e-7) at every element-wise nonlinearity node of the ONNX graph, and MaxPool "
    "keeps its gradient route (the winner at x; onnxattr/methods/deep_lift.py, README). Captum's maxpool rule "
    "instead gives, per window, (max(y, y0) - y0) * g at x's winner i plus (y - max(y, y0)) * g at the "
    "reference's winner j, each divided by that input's own delta (x_i - x0_i): the gradient route only where the "
    "reference's winner is x's winner (or the reference window is flat) and y >= y0.",
    "deep_lift tags: 'default' is the model as is. On a model with a MaxPool or an nn.SiLU the same call is also "
    "made on a copy in the form onnxattr sees (deeplift_onnx_form: nn.MaxPool* -> GradientMaxPool*, a subclass "
    "Captum does not look up, so the plain gradient; nn.SiLU -> x * nn.Sigmoid()(x.clone()), the exported "
    "Sigmoid + Mul, whose Sigmoid Captum rescales), tagged 'maxpool_gradient' or "
    "'maxpool_gradient_silu_product'; that copy's maps are stored only where they differ from 'default'. "
    "(x.clone(): Captum hooks a module's input tensor and replaces the whole gradient arriving there, so a "
    "Sigmoid fed x itself would drop the Mul's direct share g*sigmoid(x).)",
    "excitation_backprop: zennit.composites.ExcitationBackprop(stabilizer=lambda z: z + 1e-7*(z == 0), "
    "zero_params=['bias']) with the 'default' LRP canonizers, seeded with 1 at the selected output(s) (ones for "
    "'all'). The composite maps zennit.types.Linear (Conv*, nn.Linear) to ZPlus (x+W+ + x-W-, each share over "
    "their sum) and Sum/AvgPool/AdaptiveAvgPool to Norm; it has no layer_map_base, so ReLU, BatchNorm, MaxPool "
    "and other activations take the plain gradient (at a ReLU that equals passing: z+ relevance at a ReLU output "
    "is x*(...), already 0 where the ReLU gives 0). onnxattr's excitation_backprop (rules/excitation_backprop.toml):"
    " z_plus (x+W+ + x-W-, no bias, as Zennit's ZPlus) on every kernel layer, z rule on pools, proportional "
    "split at residual adds, "
    "element-wise activations pass, seed 1, iNNvestigate's stabilizer z + 1e-7*[z == 0]. Two Zennit defaults "
    "are set to onnxattr's (and the paper's): zero_params=['bias'] (Zennit's default keeps b+ in the "
    "denominator; Zhang et al. 2016 have no bias) and the stabilizer (Zennit's default z + 1e-6*sign(z) moved "
    "the maps by up to 5e-4 of their max on torch_inception/torch_resnet, 3e-5 on torch_mlp/torch_vgg, when "
    "measured). Where every kernel layer's input is >= 0 (ReLU nets on inputs in [0, 1)) the x-W- term "
    "vanishes and both are the paper's x*W+.",
]

MODEL_METHOD_NOTES = {
    "torch_vgg": ["deep_lift: here Captum's maxpool rule gives exactly the gradient route (the GradientMaxPool2d "
                  "copy's maps are bit-identical; checked by the script), so only tag 'default' is stored."],
    "torch_vggbn": ["deep_lift: here Captum's maxpool rule gives exactly the gradient route (the GradientMaxPool2d "
                    "copy's maps are bit-identical; checked by the script), so only tag 'default' is stored.",
                    "excitation_backprop: the BatchNorm2d on the input has nothing to merge into: Zennit gives it "
                    "no rule (plain gradient), and so does onnxattr's preset (norm = gradient)."],
    "torch_inception": ["deep_lift: tag 'default' (Captum's maxpool rule at the MaxPool2d) differs from the "
                        "gradient route; 'maxpool_gradient' is the map to compare.",
                        "excitation_backprop: torch.cat is a plain gradient in both; the AvgPool2d "
                        "(count_include_pad=False) and AdaptiveAvgPool2d get Norm (= onnxattr's z rule on pools)."],
    "torch_resnet": ["excitation_backprop: on the 'default' LRP variant (BatchNorms folded exactly, "
                     "ResNetCanonizer: the residual Sum gets Norm, as onnxattr's proportional add split); the maps "
                     "hold for torch_resnet_bn.onnx too."],
    "torch_conv1d": ["deep_lift: Captum's maxpool rule gives the gradient route here too (swapping only nn.SiLU "
                     "gave the same map as swapping both, when measured); 'default' differs from "
                     "'maxpool_gradient_silu_product' through the SiLU alone."],
}

NOT_COMPARABLE = {
    "torch_inception": {
        f"deep_lift|{mode}|default": "Captum's DeepLift applies its maxpool rule at nn.MaxPool2d (rescaled by the "
        "reference's window maximum, see the notes); onnxattr's deep_lift keeps MaxPool's gradient route on "
        f"purpose (README, onnxattr/methods/deep_lift.py): {pct} of the map's max apart when measured. Compare "
        "'maxpool_gradient'." for mode, pct in (("max", "18%"), ("index", "14%"), ("all", "39%"))} | {
        f"deep_lift_shap|{mode}|default": "Captum's DeepLiftShap is its DeepLift per baseline: the maxpool rule "
        "at nn.MaxPool2d, as for deep_lift|*|default. Compare 'maxpool_gradient'." for mode in MODES},
    "torch_conv1d": {
        **{f"deep_lift|{mode}|default": "nn.SiLU is not in Captum's SUPPORTED_NON_LINEAR, so Captum takes its plain "
           "gradient; the ONNX export spells SiLU as x * Sigmoid(x) and onnxattr rescales the Sigmoid and takes "
           f"the product rule at the Mul: {pct} of the map's max apart when measured. Compare "
           "'maxpool_gradient_silu_product' (Captum on that exported form)."
           for mode, pct in (("max", "0.07%"), ("index", "0.11%"), ("all", "0.10%"))},
        **{f"deep_lift_shap|{mode}|default": "Captum's DeepLiftShap is its DeepLift per baseline: the plain "
           "gradient at nn.SiLU, as for deep_lift|*|default. Compare 'maxpool_gradient_silu_product'."
           for mode in MODES},
        **{f"excitation_backprop|{mode}|default": "Zennit's ExcitationBackprop composite takes the gradient of "
           "Tanh and SiLU (no rule for them) where onnxattr passes relevance through element-wise activations: "
           "~1x the map's max apart (mode max)." for mode in MODES}},
}


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


def build(name, maker, shape, lo=0.0, hi=1.0):
    """Build a model whose argmax differs between the 4 samples of x (deterministic seed search). x and the
    probes are uniform in [lo, hi) (default [0, 1))."""
    x = torch.from_numpy(np.random.default_rng(0).random(shape, dtype=np.float32))
    probe = torch.from_numpy(np.random.default_rng(1).random((256,) + shape[1:], dtype=np.float32))
    if (lo, hi) != (0.0, 1.0):
        x, probe = lo + (hi - lo) * x, lo + (hi - lo) * probe
    for seed in range(100):
        torch.manual_seed(seed)
        model = maker(probe).eval()
        decorrelate_head(model, torch.cat([probe, x]))
        with torch.no_grad():
            argmax = model(x).argmax(1).numpy()
        if len(set(argmax.tolist())) >= 3:
            print(f"{name}: model seed {seed}, argmax {argmax.tolist()}")
            return model, x, argmax, seed
    raise RuntimeError(f"{name}: no seed gives differing classes")


def make_target(argmax):
    target = (argmax + np.array([1, 2, 0, 3])) % N_CLASSES  # sample 2 keeps its argmax, others differ
    if len(set(target.tolist())) < 2:  # these offsets can map all four to one class; then use others
        target = (argmax + np.array([1, 3, 0, 2])) % N_CLASSES
    assert len(set(target.tolist())) >= 2 and (target != argmax).any()
    return target.astype(np.int64)


FLAT_NOTE = ("Zennit first-layer choice (SpecialFirstLayerMapComposite): the first module in "
             "model.named_modules() order (registration order, depth first) matching the first_map type gets "
             "the special rule; EpsilonPlusFlat/EpsilonAlpha2Beta1Flat match zennit.types.Linear (Conv or "
             "nn.Linear) -> Flat; EpsilonGammaBox matches only Convolution -> ZBox.")


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
