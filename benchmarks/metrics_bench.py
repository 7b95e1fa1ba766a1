"""The `metrics` group of bench.py: onnxattr's evaluation metrics against Captum's, on the same model and input.

    onnxattr.sensitivity_max  sensitivity of the gradient map over 10 copies moved by U(-0.02, 0.02): 11 gradient
                              passes, the copies explained draw by draw  | captum.sensitivity_max of Saliency
    onnxattr.infidelity       infidelity of the gradient map (computed once, outside the timing) over 10 draws of
                              N(0, 0.1²) noise read per unit of change: 10 forward passes | captum.infidelity
    onnxattr.region_perturbation  one most-relevant-first curve of the same map, 16 steps of one 16 x 16 region
                              (iNNvestigate's PerturbationAnalysis needs TensorFlow: no reference here)

Setup (sessions, the map, the neurons) happens when the runner is made; only the metric is timed. The metrics'
onnxruntime sessions use every core (onnxruntime's default), so the group runs with --threads = the core count.
"""

from __future__ import annotations

import os

DRAWS = 10
NOISE_SCALE = 0.1
CURVE_STEPS, CURVE_REGION = 16, (16, 16)
CONFIGS = ("sensitivity_max", "infidelity", "region_perturbation")


def ours(name: str, model_path: str, x, threads: int):
    """A zero-argument function computing onnxattr's metric ``name`` on x."""
    import numpy as np

    from onnxattr.api import Analyzer
    from onnxattr.evaluate import CurveSettings, curve
    from onnxattr.metrics import InfidelitySettings, SensitivitySettings, infidelity_of, sensitivity_of
    from onnxattr.scoring import Scorer

    if threads != os.cpu_count():  # the metrics' sessions take onnxruntime's default: every core
        raise SystemExit(f"the metrics group runs with --threads {os.cpu_count()} (this machine's cores)")
    scorer = Scorer(model_path)
    first = scorer.outputs(x).astype(np.float64)
    targets = first.argmax(1)
    f0 = first[np.arange(len(x)), targets]
    analyzer = Analyzer("gradient", model_path, neuron_selection_mode="index")
    r = analyzer.analyze(x, neuron_selection=targets)
    if name == "sensitivity_max":
        st = SensitivitySettings(n_perturb_samples=DRAWS)
        return lambda: sensitivity_of(analyzer, x, targets, st, base=r)
    if name == "infidelity":
        st = InfidelitySettings(n_perturb_samples=DRAWS, noise_scale=NOISE_SCALE, multiply_by_inputs=False)
        return lambda: infidelity_of(scorer, x, r, targets, f0, st)
    settings = CurveSettings(steps=CURVE_STEPS, region=CURVE_REGION)
    return lambda: curve(scorer, x, r, targets, "morf", settings)


def captum(name: str, net, xt, target):
    """A zero-argument function computing Captum's metric ``name`` (Saliency's map for both)."""
    import torch
    from captum.attr import Saliency
    from captum.metrics import infidelity, sensitivity_max

    sal = Saliency(net)
    if name == "sensitivity_max":
        return lambda: sensitivity_max(sal.attribute, xt, n_perturb_samples=DRAWS, target=target, abs=False)
    attr = sal.attribute(xt.clone().requires_grad_(True), target=target, abs=False).detach()
    gen = torch.Generator().manual_seed(0)

    def perturb(inputs):
        noise = torch.randn(inputs.shape, generator=gen) * NOISE_SCALE
        return noise, inputs - noise
    return lambda: infidelity(net, perturb, xt, attr, target=target, n_perturb_samples=DRAWS)
