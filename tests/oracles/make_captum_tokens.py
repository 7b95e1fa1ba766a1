"""Oracle maps from Captum's layer methods on a model fed token ids, explained at its embedding with the reference
given as token ids (onnxattr's reference_data; Captum's baselines in the input's space).

Run from the repository root with the torch venv (CPU torch 2.13.0, captum, onnx, onnxruntime):

    /work/venv-torch/bin/python tests/oracles/make_captum_tokens.py

It writes into tests/oracles/data/:

    torch_tokens.onnx   torch.onnx.export(dynamo=False, opset 17), input "ids" int64 [batch, 6], output "logits"
    torch_tokens.npz    "x" (the token ids), "ref" (the reference ids, one row per sample: padding id 1 but for
                        the first token), "target", "logits" and "<method>|<mode>|<tag>" float32 maps shaped like
                        the embedding [batch, 6, 8]
    torch_tokens.json   the manifest read by tests/methods/test_oracles.py ("explain_at": the embedding's
                        tensor in the export, which onnxattr's --input names)

The model: nn.Embedding(20, 8), a Linear(8, 8) with Tanh on each token, a Linear(8, 8) with ReLU, the mean over the
tokens, a Linear head of 4 classes. Captum: LayerIntegratedGradients at the embedding (gausslegendre, its default,
and riemann_left; 20 steps) with baselines = the reference ids. (Captum's LayerConductance and LayerDeepLift
interpolate or perturb the input itself, so they cannot take token ids.) Maps are computed
in float64 and stored as float32; fp32_rel_dev is the same call's float32 deviation. Seed 1 at the selected
output (mode "all": the model wrapped to return the sum of its logits, target 0).

The code is our own; Captum (BSD-3) is only called as a library.
"""

import importlib.metadata
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch
from captum.attr import LayerIntegratedGradients
from torch import nn

from manifest import write_manifest  # tests/oracles/manifest.py (this folder is on the path)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
NAME = "torch_tokens"
VOCAB, S, D, CLASSES, STEPS = 20, 6, 8, 4, 20


class TokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.mix, self.act = nn.Linear(D, D), nn.Tanh()
        self.hidden, self.relu = nn.Linear(D, D), nn.ReLU()
        self.head = nn.Linear(D, CLASSES)

    def forward(self, ids):
        h = self.relu(self.hidden(self.act(self.mix(self.emb(ids)))))
        return self.head(h.mean(1))


class SumOutputs(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.emb = model.emb

    def forward(self, ids):
        return self.model(ids).sum(1, keepdim=True)


CALLS = {  # key tag -> (onnxattr method, its parameters, Captum's call)
    "integrated_gradients|gausslegendre": ("integrated_gradients", {"steps": STEPS, "integration": "gausslegendre"},
                                           "LayerIntegratedGradients(model, model.emb).attribute(ids, baselines=ref, "
                                           f"target, n_steps={STEPS}, method='gausslegendre')"),
    "integrated_gradients|riemann_left": ("integrated_gradients", {"steps": STEPS, "integration": "riemann_left"},
                                          "LayerIntegratedGradients(model, model.emb).attribute(ids, baselines=ref, "
                                          f"target, n_steps={STEPS}, method='riemann_left')"),
}


def maps(model, ids, ref, mode, chosen):
    """{key tag: map at the embedding} by Captum, in the dtype of model."""
    m = SumOutputs(model).eval() if mode == "all" else model
    target = 0 if mode == "all" else chosen.tolist()
    out = {}
    for tag, (method, params, _) in CALLS.items():
        r = LayerIntegratedGradients(m, m.emb).attribute(ids, baselines=ref, target=target, n_steps=STEPS,
                                                         method=params["integration"])
        out[tag] = r.detach().double()
    return out


def embedding_tensor(path):
    """The export's tensor holding the embedding: the output of its one Gather."""
    gathers = [n.output[0] for n in onnx.load(path).graph.node if n.op_type == "Gather"]
    assert len(gathers) == 1, gathers
    return gathers[0]


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(5)
    model = TokenNet().eval()
    ids = torch.randint(2, VOCAB, (4, S))
    ref = torch.ones_like(ids)  # padding id 1, but the first token (a class token) kept
    ref[:, 0] = ids[:, 0]
    with torch.no_grad():
        logits = model(ids)
    path = os.path.join(OUT, f"{NAME}.onnx")
    torch.onnx.export(model, (ids,), path, dynamo=False, opset_version=17, input_names=["ids"],
                      output_names=["logits"], dynamic_axes={"ids": {0: "batch"}, "logits": {0: "batch"}})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert np.allclose(session.run(None, {"ids": ids.numpy()})[0], logits.numpy(), atol=1e-5)
    logits = logits.numpy()
    target = np.array([3, 0, 2, 1], np.int64)
    arrays = {"x": ids.numpy(), "ref": ref.numpy(), "target": target, "logits": logits}
    entries = {}
    for mode in ("max", "index", "all"):
        chosen = logits.argmax(1) if mode == "max" else target
        m64 = maps(model.double(), ids, ref, mode, chosen)
        m32 = maps(model.float(), ids, ref, mode, chosen)
        for tag, r64 in m64.items():
            method, params, call = CALLS[tag]
            name, rule = tag.split("|")
            key = f"{name}|{mode}|{rule}"
            assert r64.abs().max() > 0, key
            arrays[key] = r64.float().numpy()
            entries[key] = {
                "method": method, "params": {**params, "reference_data": "@ref"}, "mode": mode, "seed": "one",
                "statistical": False, "library_call": "captum " + call,
                "fp32_rel_dev": float(f"{float((m32[tag] - r64).abs().max() / r64.abs().max()):.3g}"),
            }
    np.savez_compressed(os.path.join(OUT, f"{NAME}.npz"), **arrays)
    versions = {p: importlib.metadata.version(p) for p in ("captum", "torch")}
    manifest = {
        "model": f"{NAME}.onnx", "library": " / ".join(f"{k} {v}" for k, v in versions.items()),
        "layout": "NTC", "input_name": "ids", "explain_at": embedding_tensor(path), "output_name": "logits",
        "entries": entries,
        "notes": ["Explained at the embedding (explain_at, onnxattr's --input) with the reference given as token ids "
                  "(arrays['ref'], onnxattr's reference_data): the reference embedding is the model's own "
                  "embedding of those ids, as Captum's layer methods compute it from their baselines."],
    }
    write_manifest(OUT, NAME, manifest)
    print(NAME, {k: v["fp32_rel_dev"] for k, v in entries.items()})


if __name__ == "__main__":
    main()
