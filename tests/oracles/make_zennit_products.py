"""Oracle maps from Zennit on products: a net whose exports differ in how they write products of activations and
norms (torch_gated), and a net with products by constants (torch_scaled).

Run from the repository root with the torch venv (CPU torch 2.13.0, zennit, onnx, onnxruntime); name one of the two
to write it alone:

    /work/venv-torch/bin/python tests/oracles/make_zennit_products.py [torch_gated] [torch_scaled]

The net (torch_gated): Conv 3->8 + ReLU; a squeeze-excitation block as torchvision writes it (AdaptiveAvgPool2d,
1x1 Conv, ReLU, 1x1 Conv, nn.Sigmoid, then ``scale * input``: the gate is the Mul's first operand); a strided
Conv + nn.SiLU; Linear + LayerNorm (random gamma, beta) + nn.GELU; Linear to 5 logits. Zennit gives its
activation modules (ReLU, Sigmoid, SiLU, GELU) the Pass rule, the AdaptiveAvgPool2d the Norm rule, the Convs and
Linears their composite's rules, and everything else, the LayerNorm and the functional ``*``, its gradient.

One function, four exports (torch.onnx.export, dynamo=False, dynamic batch axis), all checked against the same maps:

    torch_gated.onnx             opset 17: a LayerNormalization node; the SE product Mul(gate, x)
    torch_gated_op14.onnx        opset 14: the LayerNorm written out (ReduceMean, Sub, Pow, Sqrt, Div, Mul, Add)
    torch_gated_xfirst.onnx      opset 17, the SE written ``input * scale``: Mul(x, gate)
    torch_gated_xfirst_op14.onnx both

SiLU is written Sigmoid + Mul and GELU Div, Erf, Add, Mul, Mul in all four. A map that depends on which operand of
a product comes first, or on whether the LayerNorm is one node, fails against at least one of them.

torch_gated.npz holds "x" (uniform in [0, 1)), "target", "logits" and "<method>|max|default" for the Zennit composites
of tests/oracles/torch_zennit.py (LRP_METHODS), computed in float64 and stored as float32; torch_gated.json is the
manifest read by tests/methods/test_oracles.py.

torch_scaled (ScaledNet below): an input normalization, a LayerScale and a residual Add, ops whose gradient Zennit
takes and which the shipped presets pass or split; its entries carry the [nodes] entries (SCALED_NODES,
"<method>|max|named") or the top-level keys (SCALED_KEYS, "<method>|max|keys") that, added to the preset as a
user's rule file, give Zennit's map.

The code is our own; Zennit (LGPL-3) is only called as a library.
"""

import importlib.metadata
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_zennit import LRP_METHODS, zennit_map  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
NAME = "torch_gated"


class ScaledNet(nn.Module):
    """torch_scaled: input normalization (x - mean) / std as buffers, Conv 3->8 + ReLU, a block Conv 3x3 + ReLU +
    Conv 1x1 whose output a LayerScale gamma (per channel, as ConvNeXt's) multiplies, added to the block's input,
    ReLU, AdaptiveAvgPool2d, Linear to 5 logits."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.gamma = nn.Parameter(torch.empty(8, 1, 1).uniform_(0.1, 1.0))
        self.relu3 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        h = self.relu1(self.conv1((x - self.mean) / self.std))
        h = self.relu3(h + self.gamma * self.conv3(self.relu2(self.conv2(h))))
        return self.fc(self.pool(h).flatten(1))


# onnxattr's rule file for torch_scaled: a shipped preset plus these [nodes] entries gives Zennit's map; the presets
# pass relevance through a Mul or Div by a constant and split a residual Add in proportion, where Zennit takes the
# gradient of every functional op (the normalization's Div by std, the LayerScale's Mul, the Add)
SCALED_NODES = {"/Div": {"rule": "gradient"}, "/Mul": {"rule": "gradient"}, "/Add": {"rule": "gradient"}}
# the same without node names: every scaling by a constant and every residual Add take their gradient
SCALED_KEYS = {"scales": "gradient", "add": "gradient"}


class GatedNet(nn.Module):
    def __init__(self, gate_first: bool = True):
        super().__init__()
        self.gate_first = gate_first
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)  # registered first: Zennit's first layer
        self.relu1 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(8, 4, 1)
        self.relu2 = nn.ReLU()
        self.fc2 = nn.Conv2d(4, 8, 1)
        self.sigmoid = nn.Sigmoid()
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.silu = nn.SiLU()
        self.lin1 = nn.Linear(8 * 4 * 4, 16)
        self.norm = nn.LayerNorm(16)
        self.gelu = nn.GELU()
        self.lin2 = nn.Linear(16, 5)

    def forward(self, x):
        h = self.relu1(self.conv1(x))
        scale = self.sigmoid(self.fc2(self.relu2(self.fc1(self.pool(h)))))
        h = scale * h if self.gate_first else h * scale
        h = self.silu(self.conv2(h))
        h = self.gelu(self.norm(self.lin1(h.flatten(1))))
        return self.lin2(h)


def build() -> GatedNet:
    torch.manual_seed(0)
    model = GatedNet()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 1.5)
        model.norm.bias.normal_(0, 0.2)
    return model.eval()


def export(model, x, path, opset):
    torch.onnx.export(model, x, str(path), opset_version=opset, dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


def zennit_entries(model, x, argmax, arrays, tag="default", swapped=None, nodes=None, keys=None):
    """The manifest entries "<method>|max|<tag>" of LRP_METHODS on ``model`` (float64, stored as float32), each
    map put in ``arrays``; ``swapped``: the same net with a product's operands swapped, whose map must be equal;
    ``nodes`` and ``keys``: the [nodes] entries and top-level keys that, added to the preset, give Zennit's map."""
    entries = {}
    for method, (composite, _, params) in LRP_METHODS.items():
        m64 = zennit_map(model.double(), x.double(), method, [], "max", argmax, argmax).detach().numpy()
        m32 = zennit_map(model.float(), x.clone(), method, [], "max", argmax, argmax).detach().numpy()
        if swapped is not None:
            other = zennit_map(swapped.double(), x.double(), method, [], "max", argmax, argmax).detach().numpy()
            swapped.float()
            assert np.array_equal(m64, other), "the operand order of a product changed Zennit's map"
        key = f"{method}|max|{tag}"
        arrays[key] = m64.astype(np.float32)
        entries[key] = {
            "method": method, "params": params, "mode": "max", "seed": "logit", "statistical": False,
            "library_call": f"zennit.attribution.Gradient(model, zennit.composites.{composite}(canonizers=[])) "
                            "with attr_output = y*onehot(argmax)",
            "fp32_rel_dev": float(f"{np.abs(m32 - m64).max() / np.abs(m64).max():.3g}"),
        }
        if nodes:
            entries[key]["nodes"] = nodes
        if keys:
            entries[key]["keys"] = keys
    return entries


def write_manifest(name, model_file, arrays, entries, notes, also_valid_for=()):
    np.savez_compressed(DATA / f"{name}.npz", **arrays)
    versions = f"zennit {importlib.metadata.version('zennit')} / torch {torch.__version__}"
    manifest = {
        "model": model_file, "library": versions, "layout": "NCHW", "input_name": "input", "output_name": "logits",
        "entries": entries, "notes": ["Maps in float64 (model.double()), stored as float32; seed y*onehot(argmax) "
                                      "as attr_output."] + notes,
    }
    if also_valid_for:
        manifest["also_valid_for"] = list(also_valid_for)
    (DATA / f"{name}.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def make_scaled():
    torch.manual_seed(2)
    model = ScaledNet().eval()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    export(model, x, DATA / "torch_scaled.onnx", 17)
    with torch.no_grad():
        logits = model(x)
    argmax = logits.argmax(1)
    arrays = {"x": x.numpy(), "target": argmax.numpy().astype(np.int64), "logits": logits.numpy()}
    entries = zennit_entries(model, x, argmax, arrays, tag="named", nodes=SCALED_NODES)
    entries.update(zennit_entries(model, x, argmax, arrays, tag="keys", keys=SCALED_KEYS))
    write_manifest("torch_scaled", "torch_scaled.onnx", arrays, entries, [
        "Zennit takes the gradient of the functional ops: the input normalization's division by std, the "
        "LayerScale's product, the residual sum. The shipped presets pass relevance through a Mul or Div by a "
        "constant and split a residual Add in proportion to its operands; each entry's nodes, added to its "
        "preset as a [nodes] table (a user's rule file), give those three nodes their gradient, and so do the "
        "keys scales = gradient and add = gradient of the entries tagged keys.",
    ])
    print("wrote torch_scaled.onnx, torch_scaled.npz, torch_scaled.json in", os.path.relpath(DATA))


def make_gated():
    model = build()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    swapped = GatedNet(gate_first=False)
    swapped.load_state_dict(model.state_dict())
    swapped.eval()
    files = {(True, 17): f"{NAME}.onnx", (True, 14): f"{NAME}_op14.onnx", (False, 17): f"{NAME}_xfirst.onnx",
             (False, 14): f"{NAME}_xfirst_op14.onnx"}
    for (gate_first, opset), name in files.items():
        export(model if gate_first else swapped, x, DATA / name, opset)
    with torch.no_grad():
        logits = model(x)
    argmax = logits.argmax(1)
    arrays = {"x": x.numpy(), "target": argmax.numpy().astype(np.int64), "logits": logits.numpy()}
    entries = zennit_entries(model, x, argmax, arrays, swapped=swapped)
    write_manifest(NAME, files[True, 17], arrays, entries, [
        "Zennit: activation modules (ReLU, Sigmoid, SiLU, GELU) Pass, AdaptiveAvgPool2d Norm; the LayerNorm and "
        "the SE's functional product take their gradient. onnxattr: an activation written out as x * h(x) "
        "(SiLU, GELU) passes relevance to x; any other product of two activations, a LayerNorm written out "
        "(with its gamma) and its centring take the gradient; so all four exports give Zennit's map.",
    ], also_valid_for=[files[k] for k in ((True, 14), (False, 17), (False, 14))])
    print("wrote", ", ".join(files.values()), f"{NAME}.npz", f"{NAME}.json", "in", os.path.relpath(DATA))


def main():
    torch.set_num_threads(1)
    wanted = sys.argv[1:] or ["torch_gated", "torch_scaled"]
    for name in wanted:
        {"torch_gated": make_gated, "torch_scaled": make_scaled}[name]()


if __name__ == "__main__":
    main()
