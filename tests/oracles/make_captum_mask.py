"""Oracle maps from Captum on a transformer encoder fed token embeddings and a padding mask: the mask is a
second graph input with one row per sample, which the gradient methods pass through and the many-point
methods (integrated gradients, SmoothGrad) must give each of a sample's points.

Run from the repository root with the torch venv (CPU torch 2.13.0, captum, onnx, onnxruntime):

    /work/venv-torch/bin/python tests/oracles/make_captum_mask.py

It writes into tests/oracles/data/:

    torch_masked_encoder.onnx   torch.onnx.export(dynamo=False, opset 17), inputs "emb" [batch, 7, 16] and
                                "mask" [batch, 7] (1 = token, 0 = padding), both with the dynamic axis "batch"
    torch_masked_encoder.npz    "x" (the embeddings), "feed:mask", "target", "logits" and
                                "<method>|<mode>|default" float32 maps shaped like x
    torch_masked_encoder.json   the manifest read by tests/methods/test_oracles.py ("feeds": ["mask"])

The model: the mask becomes an additive bias (1 - mask) * -1e4 on the attention scores, expanded to
[batch * heads, S, S] from the mask's own shape as Hugging Face models build it; one
nn.TransformerEncoderLayer (4 heads, ReLU MLP, post-norm); the mean over the unmasked positions; a Linear
head. Captum gets the mask through additional_forward_args, which it repeats for every point of
IntegratedGradients and NoiseTunnel. Maps are computed in float64 and stored as float32; fp32_rel_dev is the
same call's float32 deviation. Seed 1 at the selected output (mode "all": the model wrapped to return the
sum of its logits, target 0).

The code is our own; Captum (BSD-3) is only called as a library.
"""

import importlib.metadata
import os

import numpy as np
import onnxruntime as ort
import torch
from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency
from torch import nn

from manifest import write_manifest  # tests/oracles/manifest.py (this folder is on the path)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
NAME = "torch_masked_encoder"
HEADS, S, D, CLASSES = 4, 7, 16, 3
IG_STEPS, SG_SAMPLES, SG_STD = 64, 64, 0.5


class MaskedEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(D, HEADS, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(D, CLASSES)

    def forward(self, emb, mask):
        seq = mask.shape[1]
        bias = ((1.0 - mask)[:, None, None, :] * -1e4).expand(-1, HEADS, seq, -1).reshape(-1, seq, seq)
        h = self.layer(emb, src_mask=bias)
        keep = mask[..., None]
        return self.head((h * keep).sum(1) / keep.sum(1))


class SumOutputs(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, emb, mask):
        return self.model(emb, mask).sum(1, keepdim=True)


def maps(model, x, mask, mode, chosen):
    """{method: map} by Captum, in the dtype of model, x and mask."""
    m = SumOutputs(model) if mode == "all" else model
    target = 0 if mode == "all" else chosen.tolist()
    xi = x.clone().requires_grad_()
    args = (mask,)
    out = {
        "gradient": Saliency(m).attribute(xi, target=target, abs=False, additional_forward_args=args),
        "input_t_gradient": InputXGradient(m).attribute(xi, target=target, additional_forward_args=args),
        "integrated_gradients": IntegratedGradients(m).attribute(
            xi, baselines=0.0, target=target, n_steps=IG_STEPS, method="riemann_left", additional_forward_args=args),
    }
    torch.manual_seed(2024)
    out["smoothgrad"] = NoiseTunnel(Saliency(m)).attribute(
        xi, nt_type="smoothgrad", nt_samples=SG_SAMPLES, stdevs=SG_STD, target=target, abs=False,
        additional_forward_args=args)
    return {k: v.detach().double() for k, v in out.items()}


PARAMS = {
    "gradient": {},
    "input_t_gradient": {},
    "integrated_gradients": {"reference_inputs": 0.0, "steps": IG_STEPS,
                             "alphas": "k/steps for k=0..steps-1 (left Riemann)"},
    "smoothgrad": {"augment_by_n": SG_SAMPLES, "noise_scale": SG_STD},
}
LIBRARY_CALL = {
    "gradient": "captum Saliency(model).attribute(x, target, abs=False, additional_forward_args=(mask,))",
    "input_t_gradient": "captum InputXGradient(model).attribute(x, target, additional_forward_args=(mask,))",
    "integrated_gradients": "captum IntegratedGradients(model).attribute(x, baselines=0.0, target, n_steps=64, "
                            "method='riemann_left', additional_forward_args=(mask,))",
    "smoothgrad": "captum NoiseTunnel(Saliency(model)).attribute(x, nt_type='smoothgrad', nt_samples=64, "
                  "stdevs=0.5, target, abs=False, additional_forward_args=(mask,)); torch.manual_seed(2024) before",
}


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(13)
    model = MaskedEncoder().eval()
    x = torch.randn(3, S, D)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1] * S, [1, 1, 1, 1, 1, 1, 0]], dtype=torch.float32)
    with torch.no_grad():
        logits = model(x, mask)
        unmasked = model(x, torch.ones_like(mask))
    assert (logits - unmasked).abs().max() > 1e-2, "the mask must matter"
    path = os.path.join(OUT, f"{NAME}.onnx")
    torch.onnx.export(model, (x, mask), path, dynamo=False, opset_version=17, input_names=["emb", "mask"],
                      output_names=["logits"],
                      dynamic_axes={"emb": {0: "batch"}, "mask": {0: "batch"}, "logits": {0: "batch"}})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"emb": x.numpy(), "mask": mask.numpy()})[0]
    assert np.allclose(onnx_logits, logits.numpy(), atol=1e-5), "the export must compute the torch model"
    logits = logits.numpy()
    target = np.array([2, 0, 1], np.int64)
    arrays = {"x": x.numpy(), "feed:mask": mask.numpy(), "target": target, "logits": logits}
    entries = {}
    for mode in ("max", "index", "all"):
        chosen = logits.argmax(1) if mode == "max" else target
        m64 = maps(model.double(), x.double(), mask.double(), mode, chosen)
        m32 = maps(model.float(), x, mask, mode, chosen)
        for method, r64 in m64.items():
            key = f"{method}|{mode}|default"
            arrays[key] = r64.float().numpy()
            entries[key] = {
                "method": method, "params": PARAMS[method], "mode": mode, "seed": "one",
                "statistical": method == "smoothgrad", "library_call": LIBRARY_CALL[method],
                "fp32_rel_dev": float(f"{float((m32[method] - r64).abs().max() / r64.abs().max()):.3g}"),
            }
    np.savez_compressed(os.path.join(OUT, f"{NAME}.npz"), **arrays)
    versions = {p: importlib.metadata.version(p) for p in ("captum", "torch")}
    manifest = {
        "model": f"{NAME}.onnx", "library": " / ".join(f"{k} {v}" for k, v in versions.items()),
        "layout": "NTC", "input_name": "emb", "output_name": "logits", "feeds": ["mask"], "entries": entries,
        "notes": ["The padding mask is the graph input 'mask', fed as arrays['feed:mask']; Captum repeats it "
                  "for every point of IntegratedGradients and NoiseTunnel (additional_forward_args).",
                  "smoothgrad is statistical: Captum's noise comes from torch's RNG (seed 2024), N(0, 0.5) per "
                  "element per copy, mean of the raw gradients."],
    }
    write_manifest(OUT, NAME, manifest)
    print(NAME, {k: v["fp32_rel_dev"] for k, v in entries.items()})


if __name__ == "__main__":
    main()
