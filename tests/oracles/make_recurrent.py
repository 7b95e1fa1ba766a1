"""Oracle maps for recurrent nets (LSTM, GRU, RNN), which onnxattr differentiates by unrolling them at compile time
(onnxattr/recurrent.py): Captum's gradient methods on three PyTorch nets, and LRP for LSTMs from the reference
implementation of Arras et al. (2017), "Explaining Recurrent Neural Network Predictions in Sentiment Analysis".

Run from the repository root with the torch venv (CPU torch 2.13.0, captum, onnx, onnxruntime), giving a checkout of
https://github.com/ArrasL/LRP_for_LSTM (its code/ folder; the code is read from there, never copied here):

    /work/venv-torch/bin/python tests/oracles/make_recurrent.py --lrp-for-lstm /path/to/LRP_for_LSTM

It writes into tests/oracles/data/, per net NAME, NAME.onnx (torch.onnx.export(dynamo=False, opset 17), input "x"
float32 [batch, 7, 4] batch first, output "logits"), NAME.npz ("x", "target", "logits" and "<method>|<mode>|<tag>"
float32 maps [batch, 7, 4]) and NAME.json, the manifest read by tests/methods/test_oracles.py:

    torch_lstm   a two-layer bidirectional nn.LSTM(4, 6), the last step's output, a Linear head of 3 classes
    torch_gru    nn.GRU(4, 6) (torch writes linear_before_reset=1), its last state, a Linear head
    torch_rnn    a two-layer nn.RNN(4, 6) with tanh, then ReLU, its last step's output, a Linear head
    arras_lstm   a bidirectional nn.LSTM(4, 5) whose two final states feed a bias-free Linear head: the model of
                 LRP_for_LSTM's LSTM_bidi (a left encoder on x, a right encoder on x reversed, logits
                 W_left h_left + W_right h_right)

Captum (float64, stored float32; fp32_rel_dev is the same call's float32 deviation; seed 1 at the selected output,
mode "all" the model wrapped to return the sum of its logits): Saliency (abs=False), InputXGradient,
IntegratedGradients (20 steps, gausslegendre and riemann_left). LSTM_bidi.lrp(w, class, eps, bias_factor=0.0) on
each sample (float64, numpy; the input given as its embedding table E = x with w = 0..T-1, the weights converted
from torch's gate order i, f, g, o to its i, g, f, o): LRP-epsilon on every linear map (the cell's [x_t, h_{t-1}]
[W R]^T + b is one), the epsilon rule on the cell's sum c_t = f c_{t-1} + i g (a layer of identity weights there),
and the gates' products passing all relevance to the signal ("signal-take-all"); the output layer starts from the
selected logit. onnxattr computes it as lrp.epsilon with the same epsilon (onnxattr/recurrent.py writes each step
as one Gemm over a Concat and the cell's sum as a Sum that the LRP rules stabilize as the dense layers). Maps for
LSTM_bidi's default epsilon 1e-3 (tag "eps1e-3") and for 1e-6. Modes max and index (LRP starts at one logit);
LSTM_bidi computes in float64 only, so its entries have no fp32_rel_dev.

The code is our own; Captum (BSD-3) and LRP_for_LSTM (its own license) are only called.
"""

import argparse
import importlib.metadata
import importlib.util
import os
import sys
import types

import numpy as np
import onnxruntime as ort
import torch
from captum.attr import InputXGradient, IntegratedGradients, Saliency
from torch import nn

from manifest import write_manifest  # tests/oracles/manifest.py (this folder is on the path)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
N, T, I, CLASSES, STEPS = 6, 7, 4, 3, 20


class LastStep(nn.Module):
    """A recurrent layer (batch first), then the last step's output or the final state, then a Linear head."""

    def __init__(self, rnn, head, use_state=False, relu=False):
        super().__init__()
        self.rnn, self.head, self.use_state, self.relu = rnn, head, use_state, relu

    def forward(self, x):
        y, state = self.rnn(x)
        if isinstance(state, tuple):
            state = state[0]
        h = torch.cat([state[-2], state[-1]], 1) if self.use_state == "both" else state[-1] if self.use_state \
            else y[:, -1]
        return self.head(torch.relu(h) if self.relu else h)


def nets():
    torch.manual_seed(3)
    return {
        "torch_lstm": LastStep(nn.LSTM(I, 6, num_layers=2, bidirectional=True, batch_first=True),
                               nn.Linear(12, CLASSES)),
        "torch_gru": LastStep(nn.GRU(I, 6, batch_first=True), nn.Linear(6, CLASSES), use_state=True),
        "torch_rnn": LastStep(nn.RNN(I, 6, num_layers=2, batch_first=True), nn.Linear(6, CLASSES), relu=True),
        "arras_lstm": LastStep(nn.LSTM(I, 5, bidirectional=True, batch_first=True),
                               nn.Linear(10, CLASSES, bias=False), use_state="both"),
    }


class SumOutputs(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).sum(1, keepdim=True)


CAPTUM = {  # key tag -> (onnxattr method, its parameters, Captum's call)
    "gradient|captum": ("gradient", {}, "Saliency(model).attribute(x, target, abs=False)"),
    "input_t_gradient|captum": ("input_t_gradient", {}, "InputXGradient(model).attribute(x, target)"),
    "integrated_gradients|gausslegendre": ("integrated_gradients", {"steps": STEPS, "integration": "gausslegendre"},
                                           f"IntegratedGradients(model).attribute(x, target, n_steps={STEPS}, "
                                           "method='gausslegendre')"),
    "integrated_gradients|riemann_left": ("integrated_gradients", {"steps": STEPS, "integration": "riemann_left"},
                                          f"IntegratedGradients(model).attribute(x, target, n_steps={STEPS}, "
                                          "method='riemann_left')"),
}


def captum_maps(model, x, mode, chosen):
    m = SumOutputs(model).eval() if mode == "all" else model
    target = 0 if mode == "all" else chosen.tolist()
    out = {}
    for tag, (method, params, _) in CAPTUM.items():
        if method == "gradient":
            r = Saliency(m).attribute(x, target=target, abs=False)
        elif method == "input_t_gradient":
            r = InputXGradient(m).attribute(x, target=target)
        else:
            r = IntegratedGradients(m).attribute(x, target=target, n_steps=STEPS, method=params["integration"])
        out[tag] = r.detach().double()
    return out


def load_lstm_bidi(folder):
    """LRP_for_LSTM's LSTM_bidi class, loaded from its files (its package is named ``code``, as Python's own
    module is, so it is registered under that name only for this import)."""
    base = os.path.join(folder, "code", "LSTM")
    saved = {k: sys.modules.get(k) for k in ("code", "code.LSTM", "code.LSTM.LRP_linear_layer")}
    try:
        sys.modules["code"] = types.ModuleType("code")
        sys.modules["code.LSTM"] = types.ModuleType("code.LSTM")
        for name in ("LRP_linear_layer", "LSTM_bidi"):
            spec = importlib.util.spec_from_file_location(f"code.LSTM.{name}", os.path.join(base, f"{name}.py"))
            module = importlib.util.module_from_spec(spec)
            sys.modules[f"code.LSTM.{name}"] = module
            spec.loader.exec_module(module)
        return sys.modules["code.LSTM.LSTM_bidi"].LSTM_bidi
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        sys.modules.pop("code.LSTM.LSTM_bidi", None)


def arras_maps(LSTM_bidi, model, x, chosen, eps):
    """LSTM_bidi.lrp per sample; the weights of ``model`` (torch gate order i, f, g, o) in its order i, g, f, o."""
    rnn, head = model.rnn, model.head
    hidden = rnn.hidden_size

    def order(w):
        i, f, g, o = np.split(w.detach().double().numpy(), 4, axis=0)
        return np.concatenate([i, g, f, o], axis=0)

    net = object.__new__(LSTM_bidi)  # its __init__ reads a pickled model; the fields are set here instead
    net.Wxh_Left, net.Whh_Left = order(rnn.weight_ih_l0), order(rnn.weight_hh_l0)
    net.bxh_Left, net.bhh_Left = order(rnn.bias_ih_l0), order(rnn.bias_hh_l0)
    net.Wxh_Right, net.Whh_Right = order(rnn.weight_ih_l0_reverse), order(rnn.weight_hh_l0_reverse)
    net.bxh_Right, net.bhh_Right = order(rnn.bias_ih_l0_reverse), order(rnn.bias_hh_l0_reverse)
    why = head.weight.detach().double().numpy()
    net.Why_Left, net.Why_Right = why[:, :hidden], why[:, hidden:]
    maps, scores = [], []
    for sample, c in zip(x.double().numpy(), chosen):
        net.E = sample  # the "embedding table": word w is step w
        Rx, Rx_rev, _ = net.lrp(np.arange(len(sample)), int(c), eps=eps, bias_factor=0.0)
        maps.append(Rx + Rx_rev)
        scores.append(net.s.copy())
    return np.stack(maps), np.stack(scores)


def export(model, x, name):
    path = os.path.join(OUT, f"{name}.onnx")
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    with torch.no_grad():
        want = model(x).numpy()
    got = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert np.allclose(got, want, atol=1e-5), np.abs(got - want).max()
    return want


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lrp-for-lstm", required=True, help="a checkout of github.com/ArrasL/LRP_for_LSTM")
    args = parser.parse_args()
    LSTM_bidi = load_lstm_bidi(args.lrp_for_lstm)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    versions = {p: importlib.metadata.version(p) for p in ("captum", "torch")}
    for name, model in nets().items():
        model = model.eval()
        torch.manual_seed(11)
        x = torch.randn(N, T, I)
        logits = export(model.float(), x, name)
        target = np.arange(N, dtype=np.int64) % CLASSES
        arrays = {"x": x.numpy(), "target": target, "logits": logits}
        entries = {}
        for mode in ("max", "index", "all"):
            chosen = logits.argmax(1) if mode == "max" else target
            if name != "arras_lstm":
                m64 = captum_maps(model.double(), x.double(), mode, chosen)
                m32 = captum_maps(model.float(), x.float(), mode, chosen)
                for tag, r64 in m64.items():
                    method, params, call = CAPTUM[tag]
                    key = f"{method}|{mode}|{tag.split('|')[1]}"
                    arrays[key] = r64.float().numpy()
                    entries[key] = {
                        "method": method, "params": params, "mode": mode, "seed": "one", "statistical": False,
                        "library_call": "captum " + call,
                        "fp32_rel_dev": float(f"{float((m32[tag] - r64).abs().max() / r64.abs().max()):.3g}"),
                    }
            elif mode != "all":
                model.double()
                for eps, tag in ((1e-6, "eps1e-6"), (1e-3, "eps1e-3")):
                    r, scores = arras_maps(LSTM_bidi, model, x, chosen, eps)
                    assert np.allclose(scores, logits, atol=1e-5), "LSTM_bidi's forward differs from the model's"
                    key = f"lrp.epsilon|{mode}|{tag}"
                    arrays[key] = r.astype(np.float32)
                    entries[key] = {
                        "method": "lrp.epsilon", "params": {"epsilon": eps}, "mode": mode, "seed": "logit",
                        "statistical": False,
                        "library_call": f"LRP_for_LSTM LSTM_bidi.lrp(w, class, eps={eps}, bias_factor=0.0)",
                    }
                model.float()
        np.savez_compressed(os.path.join(OUT, f"{name}.npz"), **arrays)
        library = " / ".join(f"{k} {v}" for k, v in versions.items())
        manifest = {
            "model": f"{name}.onnx", "layout": "NTC", "input_name": "x", "output_name": "logits",
            "library": "LRP_for_LSTM (Arras et al. 2017) / torch " + versions["torch"] if name == "arras_lstm"
            else library,
            "entries": entries,
        }
        write_manifest(OUT, name, manifest)
        print(name, {k: v.get("fp32_rel_dev") for k, v in entries.items()})


if __name__ == "__main__":
    main()
