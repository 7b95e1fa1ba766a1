"""Export a small residual CNN with PyTorch's dynamo-based ONNX exporter (torch.onnx.export(dynamo=True)).

Run from the repository root, in a venv with torch 2.13 (CPU) and onnxscript, e.g. /work/venv-torch:

    /work/venv-torch/bin/python tests/thirdparty/make_torch_dynamo.py

Writes tests/thirdparty/data/torch_dynamo_rescnn.onnx (exporter's optimizer on: BatchNorm folded),
torch_dynamo_rescnn_raw.onnx (optimize=False: BatchNormalization kept), both with random weights, seed 0, eval mode, dynamic batch)
and torch_dynamo_rescnn.npz (an input and torch's outputs for it); and torch_dynamo_modern.onnx, opset 23: the ops
the exporter writes for newer layers (GroupNormalization, RMSNormalization, Resize with an axes attribute, a
channels-last LayerNormalization, SiLU, GELU), with torch_dynamo_modern.npz (an input, torch's output and torch's
gradient of the largest logit and of logit 2); and torch_dynamo_attention_op18.onnx / _op23.onnx, one causal
self-attention block exported at both opsets (23 writes scaled_dot_product_attention as one Attention node), with
torch_dynamo_attention.npz; and torch_dynamo_spectrogram_op18.onnx / _op20.onnx, a waveform classifier with its
front end inside (a spectral gain through rfft and irfft, torch.stft with a Hann window and reflect padding, a
triangular filterbank, log power), written as DFT and STFT nodes (DFT takes its axis as an input from opset 20),
with torch_dynamo_spectrogram.npz; and torch_dynamo_gnn.onnx, two message-passing layers on a fixed 6-node graph
(scatter_reduce amax and index_add: ScatterElements with reduction max, ScatterND with add), with
torch_dynamo_gnn.npz.
"""

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(h)))  # residual add


class ResCNN(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = Block(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        h = self.pool(self.block(self.stem(x)))
        return self.fc(torch.flatten(h, 1))


class Modern(nn.Module):
    """Conv-GroupNorm-SiLU, a ConvNeXt-style block (depthwise 7x7, channels-last LayerNorm, GELU), bilinear
    upsampling, RMSNorm on the pooled features."""

    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.gn = nn.GroupNorm(2, 8)
        self.dw = nn.Conv2d(8, 8, 7, padding=3, groups=8)
        self.ln = nn.LayerNorm(8)
        self.pw = nn.Linear(8, 16)
        self.rms = nn.RMSNorm(16)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        h = F.silu(self.gn(self.stem(x)))
        h = h + self.dw(h)
        h = self.pw(self.ln(h.permute(0, 2, 3, 1)))  # channels last
        h = F.gelu(h).permute(0, 3, 1, 2)
        h = F.interpolate(h, scale_factor=2, mode="bilinear")
        return self.fc(self.rms(h.mean((2, 3))))


class Attention(nn.Module):
    """A pre-norm causal self-attention block with grouped-query attention (two query heads share one key/value
    head: F.scaled_dot_product_attention(enable_gqa=True)) and a residual, mean-pooled into a linear classifier:
    x [N, 5, 8] -> logits [N, 3]."""

    def __init__(self, width=8, head=4, classes=3):
        super().__init__()
        self.head = head
        self.ln = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, width + 2 * head)  # two query heads, one key and one value head
        self.out = nn.Linear(width, width)
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = (h.reshape(n, t, -1, self.head).transpose(1, 2)
                   for h in self.qkv(self.ln(x)).split([c, self.head, self.head], dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2).reshape(n, t, c)
        return self.fc((x + self.out(a)).mean(1))


def export_attention():
    """The Attention block at opset 23 (scaled_dot_product_attention becomes one Attention node) and at opset 18
    (the exporter spells it out: MatMul, Softmax, a Trilu mask, the key/value head repeated through an Unsqueeze of a
    scalar axis), with torch's output and gradients."""
    torch.manual_seed(0)
    model = Attention().eval()
    x = torch.randn(2, 5, 8)
    for opset in (18, 23):
        path = os.path.join(HERE, f"torch_dynamo_attention_op{opset}.onnx")
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["x"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                                    opset_version=opset)
        program.save(path, external_data=False)
        print(path, os.path.getsize(path))
    np.savez(os.path.join(HERE, "torch_dynamo_attention.npz"), **reference(model, x))


class Spectrogram(nn.Module):
    """Waveform [N, 512] -> spectral gain (rfft, times a learned gain per bin, irfft) -> |stft|^2 (n_fft 64, hop 16,
    Hann window, centred with reflect padding) -> 12 triangular bands -> log -> Conv1d, ReLU, mean over time ->
    Linear."""

    def __init__(self, classes=6):
        super().__init__()
        self.gain = nn.Parameter(torch.rand(257) + 0.5)
        self.register_buffer("window", torch.hann_window(64))
        edges = torch.linspace(0, 32, 14)
        bins = torch.arange(33.0)
        rise = (bins[None] - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None])
        fall = (edges[2:, None] - bins[None]) / (edges[2:, None] - edges[1:-1, None])
        self.register_buffer("bands", torch.clamp(torch.minimum(rise, fall), min=0.0))  # [12, 33]
        self.conv = nn.Conv1d(12, 16, 3, padding=1)
        self.fc = nn.Linear(16, classes)

    def forward(self, wave):
        filtered = torch.fft.irfft(torch.fft.rfft(wave) * self.gain, n=wave.shape[-1])
        spec = torch.stft(filtered, n_fft=64, hop_length=16, window=self.window, center=True, pad_mode="reflect",
                          return_complex=True)
        power = spec.real ** 2 + spec.imag ** 2  # [N, 33, frames]
        logmel = torch.log(self.bands @ power + 1e-3)
        h = torch.relu(self.conv(logmel)).mean(-1)
        return self.fc(h)


def export_spectrogram():
    """The Spectrogram classifier at opsets 18 and 20, with torch's output and gradients."""
    torch.manual_seed(0)
    model = Spectrogram().eval()
    x = torch.randn(2, 512)
    for opset in (18, 20):
        path = os.path.join(HERE, f"torch_dynamo_spectrogram_op{opset}.onnx")
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["wave"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},),
                                    opset_version=opset)
        program.save(path, external_data=False)
        print(path, os.path.getsize(path))
    np.savez(os.path.join(HERE, "torch_dynamo_spectrogram.npz"), **reference(model, x))


class GraphNet(nn.Module):
    """Node features [6, 4] of a fixed directed graph (10 edges): messages lin2(relu(lin1(x))) along the edges,
    aggregated per target node by max (scatter_reduce amax, include_self=False), sum (index_add) and mean (the sum
    over the in-degree), then a graph readout (mean over nodes) -> [1, classes]. torch writes scatter_reduce's
    'mean' with include_self=False as a plain overwrite (reduction none) in its dynamo export, so the mean is spelled
    out here."""

    def __init__(self, classes=3):
        super().__init__()
        self.lin1, self.lin2, self.out = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(24, classes)
        self.register_buffer("src", torch.tensor([0, 1, 2, 3, 4, 0, 2, 5, 1, 3]))
        self.register_buffer("dst", torch.tensor([1, 0, 3, 2, 0, 5, 4, 2, 4, 5]))

    def forward(self, x):
        msg = self.lin2(torch.relu(self.lin1(x)))[self.src]
        index = self.dst[:, None].expand(-1, msg.shape[1])
        top = torch.zeros(6, 8).scatter_reduce(0, index, msg, "amax", include_self=False)
        total = torch.zeros(6, 8).index_add(0, self.dst, msg)
        degree = torch.zeros(6).index_add(0, self.dst, torch.ones(len(self.dst))).clamp(min=1)
        z = torch.cat([top, total, total / degree[:, None]], 1)
        return self.out(torch.relu(z)).mean(0, keepdim=True)


def export_gnn():
    torch.manual_seed(0)
    model = GraphNet().eval()
    x = torch.randn(6, 4)
    path = os.path.join(HERE, "torch_dynamo_gnn.onnx")
    program = torch.onnx.export(model, (x,), dynamo=True, input_names=["nodes"], output_names=["logits"],
                                opset_version=18)
    program.save(path, external_data=False)
    print(path, os.path.getsize(path))
    np.savez(os.path.join(HERE, "torch_dynamo_gnn.npz"), **reference(model, x))


def reference(model, x) -> dict:
    """x, the model's output y for it, and the gradients of its largest logit (g_max) and of logit 2 (g_2)."""
    grads = {}
    for key, pick in (("g_max", lambda y: y.argmax(1)), ("g_2", lambda y: torch.full((len(y),), 2))):
        xg = x.clone().requires_grad_(True)
        y = model(xg)
        y.gather(1, pick(y)[:, None]).sum().backward()
        grads[key] = xg.grad.numpy()
    return {"x": x.numpy(), "y": y.detach().numpy(), **grads}


def export_modern():
    torch.manual_seed(0)
    model = Modern().eval()
    with torch.no_grad():  # affine parameters away from their initial 1 and 0
        for m in (model.gn, model.ln, model.rms):
            m.weight.uniform_(0.5, 1.5)
            if getattr(m, "bias", None) is not None:
                m.bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, 3, 16, 16)
    path = os.path.join(HERE, "torch_dynamo_modern.onnx")
    program = torch.onnx.export(model, (x,), dynamo=True, input_names=["image"], output_names=["logits"],
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},), opset_version=23)
    program.save(path, external_data=False)
    print(path, os.path.getsize(path))
    np.savez(os.path.join(HERE, "torch_dynamo_modern.npz"), **reference(model, x))


def main():
    torch.manual_seed(0)
    model = ResCNN()
    # give BatchNorm non-trivial running statistics
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    batch = torch.export.Dim("batch", min=1, max=1024)
    # optimize=True (the default) folds BatchNorm into the convolutions; optimize=False keeps the raw
    # translation (BatchNormalization nodes, the exporter's own shape arithmetic) — ship both.
    for name, optimize in (("torch_dynamo_rescnn.onnx", True), ("torch_dynamo_rescnn_raw.onnx", False)):
        path = os.path.join(HERE, name)
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["image"], output_names=["logits"],
                                    dynamic_shapes={"x": {0: batch}}, optimize=optimize)
        program.save(path, external_data=False)
        print(path, os.path.getsize(path))
    with torch.no_grad():
        y = model(x).numpy()
    np.savez(os.path.join(HERE, "torch_dynamo_rescnn.npz"), x=x.numpy(), y=y)
    export_modern()
    export_attention()
    export_spectrogram()
    export_gnn()


if __name__ == "__main__":
    main()
