"""Oracle maps from Captum and Zennit on a quantized net: torch's fake quantization exported as QDQ.

Run from the repository root with the torch venv (CPU torch 2.13.0, captum, zennit, onnx, onnxruntime):

    /work/venv-torch/bin/python tests/oracles/make_quantized.py

The net (QuantNet below) is what quantization-aware training leaves: activations pass torch's
fake_quantize_per_tensor_affine (uint8 codes; the input at 1/255, each ReLU's output at a scale that saturates
its largest ~3 % of values, the second Conv's output before its ReLU asymmetric with zero point 128, the logits
in int8), and every Conv and Linear weight lies on its per-output-channel int8 grid (symmetric, s = max|w| / 127).
torch.onnx.export writes each fake quantization as a QuantizeLinear -> DequantizeLinear pair; the weights are then
stored as onnxruntime's quantizer stores them, int8 initializers read through DequantizeLinear (axis 0).

torch differentiates fake_quantize with the straight-through estimator (the gradient passes where the value was
inside the quantization range, and stops where it saturated), the backward onnxattr gives QuantizeLinear and
DequantizeLinear (onnxattr/emitters/quantize.py): Captum's gradient methods take it. Zennit's rules apply to the
Convs and Linears, and its Pass rule to the fake quantizations (modules of an activation type, see FakeQuant):
relevance passes a saturated code, as onnxattr's presets pass it. So every method compared here is the library's
own on the same quantized function.

The maps explain the scores before the logits' quantization, as onnxattr looks through a trailing quantization
(QuantizeLinear -> DequantizeLinear) as through a trailing Softmax; "logits" are the quantized outputs.

quant_cnn.npz holds "x" (uniform in [0, 1)), "target", "logits" and "<method>|<mode>|default" maps for Captum's
gradient family (tests/oracles/torch_captum.py) and Zennit's composites (tests/oracles/torch_zennit.py), computed
in float64 and stored as float32; quant_cnn.json is the manifest read by tests/methods/test_oracles.py.

The code is our own; Captum (BSD) and Zennit (LGPL-3) are only called as libraries.
"""

import copy
import importlib.metadata
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper, numpy_helper
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from manifest import write_manifest  # noqa: E402
from torch_captum import run_captum  # noqa: E402
from torch_zennit import run_zennit  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
NAME = "quant_cnn"


class FakeQuant(nn.Hardtanh):
    """torch.fake_quantize_per_tensor_affine with fixed parameters (exported as QuantizeLinear + DequantizeLinear).
    A module of an activation type (nn.Hardtanh, which it is too: a rounded, clipped identity): Zennit's composites
    give it their activations' Pass rule, as onnxattr's presets give QuantizeLinear and DequantizeLinear."""

    def __init__(self, scale: float, zero_point: int, signed: bool = False):
        super().__init__()
        self.scale, self.zero_point = float(scale), int(zero_point)
        self.lo, self.hi = (-128, 127) if signed else (0, 255)

    def forward(self, x):
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, self.lo, self.hi)


class QuantNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_in = FakeQuant(1 / 255, 0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.q1 = FakeQuant(1.0, 0)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.q2_pre = FakeQuant(1.0, 128)
        self.relu2 = nn.ReLU()
        self.q2 = FakeQuant(1.0, 0)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 2 * 2, 16)
        self.relu3 = nn.ReLU()
        self.q3 = FakeQuant(1.0, 0)
        self.fc2 = nn.Linear(16, 5)
        self.q_out = FakeQuant(1.0, 0, signed=True)
        self.scores = False  # True: return the scores before q_out, which onnxattr explains (select.looked_through)

    def forward(self, x):
        h = self.q1(self.relu1(self.conv1(self.q_in(x))))
        h = self.q2(self.relu2(self.q2_pre(self.conv2(h))))
        h = self.q3(self.relu3(self.fc1(self.pool(h).flatten(1))))
        z = self.fc2(h)
        return z if self.scores else self.q_out(z)


def weight_grid(w: torch.Tensor):
    """(int8 codes, per-output-channel scales) of w: symmetric, s = max|w| / 127 along every axis but the first."""
    scale = w.abs().flatten(1).max(1).values / 127
    shape = (-1,) + (1,) * (w.dim() - 1)
    codes = torch.clamp(torch.round(w / scale.view(shape)), -127, 127)
    return codes.to(torch.int8), scale


def calibrate(model, probes):
    """Set each FakeQuant's scale from probe activations: the input's stays 1/255; a ReLU's output saturates above
    its 97th percentile; the pre-ReLU tensor (zero point 128) covers its 1st to 99th percentile; the logits their
    largest magnitude."""
    seen = {}

    def grab(name):
        return lambda mod, i, o: seen.__setitem__(name, i[0].detach())

    hooks = [getattr(model, n).register_forward_hook(grab(n)) for n in ("q1", "q2_pre", "q2", "q3", "q_out")]
    with torch.no_grad():  # one layer at a time: each scale changes what the next quantizer sees
        for name in ("q1", "q2_pre", "q2", "q3", "q_out"):
            model(probes)
            v = seen[name]
            q = getattr(model, name)
            if name == "q2_pre":
                q.scale = float(max(v.quantile(0.99), -v.quantile(0.01))) / 127
            elif name == "q_out":
                q.scale = float(v.abs().max()) / 100
            else:
                q.scale = float(v.flatten().quantile(0.97)) / 255
    for h in hooks:
        h.remove()


def build():
    torch.manual_seed(0)
    model = QuantNet().eval()
    with torch.no_grad():
        for layer in (model.conv1, model.conv2, model.fc1, model.fc2):
            codes, scale = weight_grid(layer.weight)
            layer.weight.copy_(codes.float() * scale.view((-1,) + (1,) * (layer.weight.dim() - 1)))
    probes = torch.rand(256, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    calibrate(model, probes)
    return model


def int8_weights(path: Path, model) -> None:
    """Store each Conv and Linear weight of the export as int8 codes read through DequantizeLinear (axis 0)."""
    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    nodes = []
    for name in ("conv1", "conv2", "fc1", "fc2"):
        w = getattr(model, name).weight.detach()
        codes, scale = weight_grid(w)
        key = f"{name}.weight"
        assert key in inits, f"{key} is not an initializer of {path.name}"
        back = numpy_helper.to_array(inits[key])
        assert np.array_equal(back, (codes.float() * scale.view((-1,) + (1,) * (w.dim() - 1))).numpy()), key
        m.graph.initializer.remove(inits[key])
        m.graph.initializer.extend([
            numpy_helper.from_array(codes.numpy(), f"{key}_quantized"),
            numpy_helper.from_array(scale.numpy().astype(np.float32), f"{key}_scale"),
            numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{key}_zero_point")])
        nodes.append(helper.make_node("DequantizeLinear", [f"{key}_quantized", f"{key}_scale", f"{key}_zero_point"],
                                      [key], name=f"{key}_DequantizeLinear", axis=0))
    old = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(nodes + old)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, str(path))


def export(model, x, path: Path):
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    int8_weights(path, model)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    # the logits are int8 codes times q_out's scale: equal, or one code apart where a rounding tie falls otherwise
    err = float(np.abs(got - want).max())
    assert err <= model.q_out.scale * 1.001, f"onnxruntime vs torch logits differ by {err}"
    ops = sorted({n.op_type for n in onnx.load(str(path)).graph.node})
    print(f"  exported {path.name}: ops {ops}, max |ort - torch| = {err:.2e}")


def maps(model, x, argmax, target):
    """The maps of the scores before the output's quantization: onnxattr explains those (a trailing
    QuantizeLinear -> DequantizeLinear is looked through as a trailing Softmax is)."""
    results = {}
    for dtype in (torch.float64, torch.float32):
        m = copy.deepcopy(model).to(dtype).eval()
        m.scores = True
        xd = x.to(dtype)
        with torch.no_grad():
            assert np.array_equal(m(xd).argmax(1).numpy(), argmax), "argmax differs between float32/64"
        found = run_captum(m, xd, argmax, target)
        found.update(run_zennit({"default": (m, [], "model as is")}, xd, argmax, target))
        results[dtype] = found
    out = {}
    for key, (m64, entry) in results[torch.float64].items():
        m32 = results[torch.float32][key][0].double()
        dev = ((m32 - m64).abs().max() / m64.abs().max()).item()
        out[key] = (m64, dict(entry, fp32_rel_dev=float(f"{dev:.2e}")))
    return out


def main():
    DATA.mkdir(exist_ok=True)
    torch.set_num_threads(1)
    model = build()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(x)
        model.scores = True
        argmax = model(x).argmax(1).numpy()  # of the scores explained (quantized logits can tie)
        model.scores = False
    target = (argmax + 1) % logits.shape[1]
    export(model, x, DATA / f"{NAME}.onnx")
    arrays = {"x": x.numpy(), "target": target.astype(np.int64), "logits": logits.numpy()}
    entries = {}
    for key, (value, entry) in sorted(maps(model, x, argmax, target).items()):
        arr = value.detach().numpy().astype(np.float32)
        assert np.isfinite(arr).all() and np.abs(arr).max() > 0, key
        arrays[key], entries[key] = arr, entry
    np.savez_compressed(DATA / f"{NAME}.npz", **arrays)
    versions = (f"zennit {importlib.metadata.version('zennit')} / captum {importlib.metadata.version('captum')} / "
                f"torch {torch.__version__}")
    saturated = {}

    def share_clipped(name):  # how much a quantizer clips on x: the straight-through mask is not all ones
        def hook(mod, i, o):
            level = (i[0] / mod.scale + mod.zero_point).round()
            saturated[name] = float(((level > mod.hi) | (level < mod.lo)).float().mean())
        return hook

    names = ("q1", "q2_pre", "q2", "q3", "q_out")
    hooks = [getattr(model, n).register_forward_hook(share_clipped(n)) for n in names]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    manifest = {
        "model": f"{NAME}.onnx", "library": versions, "layout": "NCHW", "input_name": "input",
        "output_name": "logits", "entries": entries,
        "notes": ["Maps in float64 (model.double()), stored as float32. Gradient methods seeded with 1 at the "
                  "selected score(s), LRP with the selected score's value (y * onehot); the scores are fc2's output "
                  "before the logits' fake quantization q_out, which onnxattr looks through; argmax of the scores.",
                  "Quantization-aware net: torch's fake_quantize (straight-through gradient) exported as "
                  "QuantizeLinear/DequantizeLinear, weights as int8 + DequantizeLinear. Share of each quantizer's "
                  "inputs outside its range on x (the gradient stops there): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in saturated.items()) + ".",
                  "Zennit: the Convs and Linears take the composite's rules (the first Conv Flat or ZBox in the "
                  "*_flat and gamma_box composites), ReLU and the fake quantizations (nn.Hardtanh modules) Pass, "
                  "MaxPool its gradient."],
    }
    write_manifest(str(DATA), NAME, manifest)
    print(f"wrote {NAME}.onnx, {NAME}.npz ({len(entries)} maps), {NAME}.json in {os.path.relpath(DATA)}")


if __name__ == "__main__":
    main()
