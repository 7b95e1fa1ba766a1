"""Oracle values of Captum's explanation metrics (captum.metrics.infidelity and sensitivity_max), for
tests/test_metrics.py.

Run from the repository root with the torch venv (CPU torch 2.13.0, captum, onnx, onnxruntime):

    /work/venv-torch/bin/python tests/oracles/make_captum_metrics.py

It writes into tests/oracles/data/:

    torch_metrics.onnx  a small CNN (Conv 3->6, ReLU, MaxPool, Conv 6->8, ReLU, Linear -> 5 logits; the first
                        torch seed from 0 under which the samples' largest logits differ),
                        torch.onnx.export(dynamo=False, opset 17), input "x" [batch, 3, 8, 8], output "logits"
    torch_metrics.npz   "x" [4, 3, 8, 8], "target" [4] (each sample's largest logit), "relevance" (a fixed random
                        map of x's shape: the metric, not a method, is checked), draws one per sample and draw
                        [4, S, 3, 8, 8] ("noise": N(0, 0.1²); "masks": 0/1 with probability 1/2; "uniform":
                        U(-0.02, 0.02)), and the metric values [4]:
                          "infidelity|noise|<mbi>|<norm>"  perturb_func returning (noise, x - noise) (mbi 0) or
                              the decorator form infidelity_perturb_func_decorator(True) returning x - noise
                              (mbi 1, baselines 0); normalize False/True
                          "infidelity|subset|1|<norm>"     the decorator form, x - masks * (x - baselines),
                              baselines 0.25
                          "sensitivity|saliency"           sensitivity_max of Saliency(abs=False) with perturb_func
                              returning x + uniform
                          "sensitivity|integrated_gradients"  of IntegratedGradients (riemann_left, 8 steps,
                              baseline 0; onnxattr's integrated_gradients with steps=8)
                        and "manifest": a JSON string with the versions.

The metrics are computed with the model in float64 (its weights are float32 values), so rounding of Captum's
own float32 forward does not enter; the draws are handed to Captum through perturb_func in its repeat_interleave
order (sample-major), which is the layout [N, S, ...] reshaped.

The code is our own; Captum (BSD-3) is only called as a library.
"""

import importlib.metadata
import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch
from captum.attr import IntegratedGradients, Saliency
from captum.metrics import infidelity, infidelity_perturb_func_decorator, sensitivity_max
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
NAME = "torch_metrics"
N, S, CLASSES = 4, 6, 5


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, CLASSES)

    def forward(self, x):
        h = torch.max_pool2d(torch.relu(self.c1(x)), 2)
        return self.head(torch.relu(self.c2(h)).flatten(1))


def queue(rows):
    """A perturb_func source: hands out the stored draws [N·S, ...] in the order Captum asks for rows."""
    state = {"at": 0}

    def take(count):
        out = rows[state["at"]:state["at"] + count]
        assert len(out) == count, "Captum asked for more rows than were drawn"
        state["at"] += count
        return torch.from_numpy(out)
    return take


def main():
    rng = np.random.default_rng(1)
    x = rng.random((N, 3, 8, 8)).astype(np.float32)
    for seed in range(100):  # the first initialization whose largest logits differ between the samples
        torch.manual_seed(seed)
        model = Net().eval()
        if len(set(model(torch.from_numpy(x)).argmax(1).tolist())) >= 2:
            break
    m64 = Net().double().eval()
    m64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    x64 = torch.from_numpy(x.astype(np.float64))
    logits = m64(x64).detach().numpy()
    target = logits.argmax(1)
    assert len(set(target.tolist())) >= 2, logits
    relevance = rng.standard_normal(x.shape).astype(np.float32)
    noise = rng.normal(0.0, 0.1, (N, S, 3, 8, 8))
    masks = (rng.random((N, S, 3, 8, 8)) < 0.5).astype(np.float64)
    uniform = rng.uniform(-0.02, 0.02, (N, S, 3, 8, 8))
    flat = lambda a: a.reshape(N * S, *a.shape[2:])  # noqa: E731  (repeat_interleave order)
    tgt = torch.from_numpy(target)
    attr = torch.from_numpy(relevance.astype(np.float64))
    out = {"x": x, "target": target.astype(np.int64), "relevance": relevance, "noise": noise, "masks": masks,
           "uniform": uniform, "logits": logits.astype(np.float32)}

    for mbi in (0, 1):
        for norm in (0, 1):
            take = queue(flat(noise))
            if mbi:
                @infidelity_perturb_func_decorator(True)
                def perturb(inputs):
                    return inputs - take(len(inputs))
            else:
                def perturb(inputs):
                    xi = take(len(inputs))
                    return xi, inputs - xi
            out[f"infidelity|noise|{mbi}|{norm}"] = infidelity(
                m64, perturb, x64, attr, target=tgt, n_perturb_samples=S, normalize=bool(norm)).numpy()
    for norm in (0, 1):
        take = queue(flat(masks))

        @infidelity_perturb_func_decorator(True)
        def perturb_subset(inputs, baselines):
            return inputs - take(len(inputs)) * (inputs - baselines)
        out[f"infidelity|subset|1|{norm}"] = infidelity(
            m64, perturb_subset, x64, attr, baselines=0.25, target=tgt, n_perturb_samples=S,
            normalize=bool(norm)).numpy()

    for key, explainer, kwargs in (("saliency", Saliency(m64), {"abs": False}),
                                   ("integrated_gradients", IntegratedGradients(m64),
                                    {"n_steps": 8, "method": "riemann_left"})):
        take = queue(flat(uniform))

        def perturb_uniform(inputs):
            return inputs + take(len(inputs))
        out[f"sensitivity|{key}"] = sensitivity_max(
            explainer.attribute, x64, perturb_func=perturb_uniform, n_perturb_samples=S, target=tgt,
            **kwargs).numpy()

    path = os.path.join(OUT, NAME + ".onnx")
    torch.onnx.export(model, torch.from_numpy(x), path, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    err = float(np.abs(got - logits).max())
    assert err < 1e-5, err
    out["manifest"] = np.array(json.dumps({
        "library": f"captum {importlib.metadata.version('captum')}, torch {torch.__version__}",
        "n_perturb_samples": S, "max_abs_err_onnx_vs_torch64": err}, indent=1))
    np.savez_compressed(os.path.join(OUT, NAME + ".npz"), **out)
    print("wrote", ", ".join(out), "to", OUT)


if __name__ == "__main__":
    main()
