"""Zennit's maps: the LRP composites, the relevance at a hidden tensor, zennit-crp's conditioned maps, BetaSmooth,
ExcitationBackprop, and the conservation checks."""

import sys
import types

import numpy as np
import torch
from torch import nn

from torch_common import MODES, middle_relu, onnx_tensor_of
from torch_nets import BasicBlock, _PlaceholderBottleneck


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
