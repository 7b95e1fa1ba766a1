"""Captum's gradient-family maps: Saliency, InputXGradient, IntegratedGradients (and its quadratures), Guided
Backprop, Deconvolution, NoiseTunnel, DeepLift and DeepLiftShap, Occlusion, GradientShap, Grad-CAM and
conductance."""

import copy

import numpy as np
import torch
from torch import nn

from captum.attr import (
    DeepLift, Deconvolution, GradientShap, GuidedBackprop, GuidedGradCam, InputXGradient, IntegratedGradients,
    LayerAttribution, LayerGradCam, NoiseTunnel, Occlusion, Saliency)
from captum.attr._utils.approximation_methods import approximation_parameters

from torch_common import MODES, _module_output, captum_call, captum_target, middle_relu, onnx_tensor_of

IG_STEPS = 64
SG_SAMPLES = 64
SG_STD = 1.0


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


CONDUCTANCE_STEPS = 20


class InputLayer(nn.Module):
    """The model behind an nn.Identity whose output is x: Captum's LayerConductance at it is the input's map."""

    def __init__(self, model):
        super().__init__()
        self.inp, self.model = nn.Identity(), model

    def forward(self, x):
        return self.model(self.inp(x))


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
                ".attribute(x, baselines=0.0, target, " + call})
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
