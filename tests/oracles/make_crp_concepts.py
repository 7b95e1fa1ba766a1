"""Oracle for `onnxattr concepts` (onnxattr/concepts.py): zennit-crp's FeatureVisualization on a small residual CNN.

Run from the repository root with the torch venv (torch 2.13.0 CPU, zennit 0.5.1, and zennit-crp installed with
`pip install --no-deps zennit-crp==0.6.0`: its metadata pins zennit<=0.4.6, but this code runs on 0.5.1):

    /work/venv-torch/bin/python tests/oracles/make_crp_concepts.py

It writes into tests/oracles/data/:

    crp_cnn.onnx          torch.onnx.export (opset 17, dynamic batch) of the net below
    crp_concepts.npz      "x" [24, 3, 12, 12], "labels" [24] (the dataset's targets), and for each layer L (the
                          export's tensor name of a module's output) zennit-crp's relevance maximization and
                          activation maximization with its defaults (max_target "sum", abs_norm True), every sample
                          ranked: "rel_idx:L" / "rel_val:L" [24, C] (sample indices, largest first, and their
                          shares) and "act_idx:L" / "act_val:L"; "tensors" lists the layers, "modules" the modules;
                          "ref:L:C" [3, 12, 12] the reference heatmaps of channels C = 0, 3 on their 3 most relevant
                          samples (FeatureVisualization._attribution_on_reference, which get_max_reference calls:
                          started at the layer from its activation, conditioned on the channel, summed over the
                          input's channels) and "ref_rf:L:C" the same conditioned on each sample's most relevant
                          unit of the channel (rf=True, ChannelConcept.mask_rf).

FeatureVisualization explains each sample at its target with EpsilonPlusFlat (exclude_parallel=False: the
relevance at a module's output is all that reaches it) and records the relevance and the activation at the modules'
outputs; ranking all 24 samples takes its SAMPLE_SIZE (40) above the dataset's size. The layers are a Conv output
inside the residual block (relevance also goes around it) and a ReLU output after the block. Maps are computed in
float64 (model.double()); everything is seeded and single-threaded. The code is our own; zennit and zennit-crp
(LGPL-3 / BSD-3) are only called as libraries.
"""

import glob
import os
import sys
import tempfile
import types

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
N, CLASSES = 24, 5


def stub_torchvision():
    """zennit imports torchvision's ResNet blocks at import time; torchvision cannot sit beside this torch.
    crp.visualization's plotting helpers (crp.image) are left out too: run() does not use them."""
    tv, models, resnet = (types.ModuleType(n) for n in ("torchvision", "torchvision.models",
                                                         "torchvision.models.resnet"))
    resnet.Bottleneck = type("Bottleneck", (nn.Module,), {})
    resnet.BasicBlock = type("BasicBlock", (nn.Module,), {})
    tv.models, models.resnet = models, resnet
    sys.modules.update({"torchvision": tv, "torchvision.models": models, "torchvision.models.resnet": resnet})
    # crp.visualization imports its image helpers (torchvision's transforms, matplotlib) for plotting only
    image = types.ModuleType("crp.image")
    image.vis_img_heatmap = image.vis_opaque_img = None
    sys.modules["crp.image"] = image


class Net(nn.Module):
    """conv-relu-pool, a residual block (conv-relu-conv + skip, relu), pool, linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.stem_relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv1 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.block_relu = nn.ReLU()
        self.head_pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(24, CLASSES)

    def forward(self, x):
        h = self.pool(self.stem_relu(self.stem(x)))
        h = self.block_relu(self.conv2(self.relu1(self.conv1(h))) + h)
        return self.fc(torch.flatten(self.head_pool(h), 1))


MODULES = ("conv1", "block_relu")
REFERENCE_CHANNELS, REFERENCES = (0, 3), 3


class Samples(torch.utils.data.Dataset):
    def __init__(self, x, labels):
        self.x, self.labels = x, labels

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.labels[i])


def tensor_names(path, model, x):
    """{module: the export's tensor holding its output at x} (the first node output that matches it)."""
    import onnx

    values = {}
    hooks = [getattr(model, m).register_forward_hook(lambda mod, i, o, m=m: values.update({m: o.detach()}))
             for m in MODULES]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    proto = onnx.load(path)
    names = [o for n in proto.graph.node for o in n.output]
    for name in names:
        proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    found = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x.numpy()})))
    out = {}
    for m, want in values.items():
        out[m] = next(n for n in names if found[n].shape == tuple(want.shape)
                      and np.abs(found[n] - want.numpy()).max() <= 1e-5 * np.abs(want.numpy()).max())
    return out


def main():
    stub_torchvision()
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.visualization import FeatureVisualization
    from zennit.composites import EpsilonPlusFlat

    torch.manual_seed(0)
    model = Net().eval()
    x = torch.rand(N, 3, 12, 12)
    labels = np.random.default_rng(0).integers(0, CLASSES, N)
    path = os.path.join(DATA, "crp_cnn.onnx")
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    tensors = tensor_names(path, model, x)
    wide = model.double()
    out = {"x": x.numpy(), "labels": labels, "tensors": np.array([tensors[m] for m in MODULES]),
           "modules": np.array(MODULES)}
    with tempfile.TemporaryDirectory() as folder:
        fv = FeatureVisualization(CondAttribution(wide), Samples(x.double(), labels),
                                  {m: ChannelConcept() for m in MODULES}, path=folder)
        fv.run(EpsilonPlusFlat(), 0, N, batch_size=8)
        for kind, sub in (("rel", "RelMax_sum_normed"), ("act", "ActMax_sum_normed")):
            for m in MODULES:
                (idx_file,) = glob.glob(os.path.join(folder, sub, f"{m}_*data.npy"))
                (val_file,) = glob.glob(os.path.join(folder, sub, f"{m}_*rel.npy"))
                (rf_file,) = glob.glob(os.path.join(folder, sub, f"{m}_*rf.npy"))
                out[f"{kind}_idx:{tensors[m]}"] = np.load(idx_file).astype(np.int64)
                out[f"{kind}_val:{tensors[m]}"] = np.load(val_file).astype(np.float64)
                if kind == "rel":  # the reference heatmaps of channels 0 and 3: their top 3 samples by relevance
                    idx, rf = np.load(idx_file).astype(np.int64), np.load(rf_file).astype(np.int64)
                    for c in REFERENCE_CHANNELS:
                        data = x.double()[idx[:REFERENCES, c]]
                        out[f"ref:{tensors[m]}:{c}"] = fv._attribution_on_reference(
                            data, c, m, EpsilonPlusFlat()).numpy()
                        out[f"ref_rf:{tensors[m]}:{c}"] = fv._attribution_on_reference(
                            data, c, m, EpsilonPlusFlat(), rf=True, neuron_ids=list(rf[:REFERENCES, c])).numpy()
    np.savez_compressed(os.path.join(DATA, "crp_concepts.npz"), **out)
    print({k: v.shape for k, v in out.items()})


if __name__ == "__main__":
    main()
