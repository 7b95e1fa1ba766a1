"""Captum's perturbation maps over groups of features: FeatureAblation, ShapleyValues and ShapleyValueSampling,
FeaturePermutation, KernelShap and Lime (the coalitions and masks go into AUX, stored beside the maps)."""

import numpy as np
import torch

from permutations import given_as_perturb_func, kernel_shap_coalitions, permutation_mean  # (on the path)
from torch_common import AUX, MODES, captum_call


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
