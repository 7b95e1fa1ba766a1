"""Oracle maps from Captum on models whose output is one number for the whole batch: a classification loss,
the mean negative log-likelihood of labels given as a second graph input. Captum's perturbation methods then
perturb every sample at once and attribute the loss's change (their "single scalar per batch" mode, which needs
perturbations_per_eval=1 and returns one row); its Saliency gives each sample's gradient of the loss.

Run from the repository root with the torch venv (CPU torch 2.13.0, captum, scikit-learn, onnx, onnxruntime):

    /work/venv-torch/bin/python tests/oracles/make_captum_loss.py

It writes into tests/oracles/data/, for NAME in torch_tabular_loss ([batch, 8] features), torch_cnn_loss
([batch, 3, 8, 8] images) and torch_ce_loss (the tabular net under torch's cross_entropy with class weights and
an ignored label, which the exporter writes as one SoftmaxCrossEntropyLoss node):

    NAME.onnx   torch.onnx.export(dynamo=False, opset 17), inputs "x" and "labels" [batch] (int64), both with
                the dynamic axis "batch"; output "loss", a scalar
    NAME.npz    "x", "feed:labels", "target" (the labels; unused: a scalar has no neuron to pick), "logits"
                (the loss, [1]), "mask:groups" (the feature groups), "perm_mean:max" (feature_permutation's exact
                expectation) and "<method>|max|<tag>" float32 maps; Captum's one row is stored repeated for
                every sample, as onnxattr returns it
    NAME.json   the manifest read by tests/methods/test_oracles.py ("feeds": ["labels"])

Maps are computed in float64 and stored as float32. Entries: gradient (Saliency), feature_ablation (baselines
0.5, the groups), occlusion (baselines 0.5), shapley_values (the groups), feature_permutation on the first two
samples (tag 'pair', entry 'rows': 2: the swap is the only permutation Captum accepts there, so the map is
deterministic) and on all four (tag 'default', statistical: one draw per group after torch.manual_seed(2029),
with the exact expectation over the 23 permutations that move a row, computed here from the torch model), and
kernel_shap (Captum's KernelShap on 20 coalitions of the groups stored as "coalitions:ks", given to Captum as its
perturb_func: deterministic) and lime on the same coalitions (Captum's Lasso with alpha 1e-4, tag 'coalitions', and
SkLearnLinearRegression, tag 'linear'; the similarity taken over the whole batch, as for a scalar output).

The code is our own; Captum (BSD-3) is only called as a library.
"""

import importlib.metadata
import os

import numpy as np
import onnxruntime as ort
import torch
from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearRegression
from captum.attr import FeatureAblation, FeaturePermutation, KernelShap, Lime, Occlusion, Saliency, ShapleyValues
from torch import nn

# this folder is on the path: tests/oracles/manifest.py and permutations.py
from manifest import write_manifest
from permutations import given_as_perturb_func, kernel_shap_coalitions, permutation_mean

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
N = 4
AUX = {}  # arrays the entries name besides the maps
IGNORED = 1  # the label torch_ce_loss's cross entropy ignores (the third sample's)


class Loss(nn.Module):
    """The mean negative log-likelihood of the labels under the net's softmax: one number for the batch."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, labels):
        return -self.net(x).log_softmax(1).gather(1, labels[:, None]).mean()


class CrossEntropy(nn.Module):
    """torch's cross_entropy with class weights and an ignored label (exported as SoftmaxCrossEntropyLoss): the
    weighted mean over the samples whose label is not IGNORED."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.register_buffer("weight", torch.tensor([0.5, 1.0, 2.0]))

    def forward(self, x, labels):
        return nn.functional.cross_entropy(self.net(x), labels, weight=self.weight.to(x.dtype), ignore_index=IGNORED)


class AsOneRow(nn.Module):
    """The loss as a [1] tensor, the shape Captum's Saliency takes for a scalar output (target None)."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def forward(self, x, labels):
        return self.loss(x, labels).reshape(1)


def tabular():
    torch.manual_seed(21)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(N, 8)
    groups = (np.arange(8) // 2).reshape(1, 8).astype(np.int64)  # four pairs of features
    return net, x, groups, {"sliding_window_shapes": (2,), "strides": (1,)}


def cnn():
    torch.manual_seed(22)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    x = torch.rand(N, 3, 8, 8)
    rows, cols = np.indices((8, 8)) // 4
    groups = (rows * 2 + cols).reshape(1, 1, 8, 8).astype(np.int64)  # four quadrants, shared by the channels
    return net, x, groups, {"sliding_window_shapes": (3, 4, 4), "strides": (3, 2, 2)}


def maps(loss, x, labels, groups, occlusion):
    """{key: (map [rows, ...], entry)} by Captum, in float64."""
    fm = torch.from_numpy(groups)
    args = (labels,)
    out = {}

    def add(key, value, method, params, call, **extra):
        rows = extra.get("rows", N)
        out[key] = (value.detach().expand((rows,) + tuple(x.shape[1:])).clone(), {
            "method": method, "mode": "max", "seed": "one", "statistical": extra.get("statistical", False),
            "params": params, "library_call": call, **{k: v for k, v in extra.items() if k != "statistical"}})

    xi = x.clone().requires_grad_()
    add("gradient|max|default", Saliency(AsOneRow(loss)).attribute(xi, abs=False, additional_forward_args=args),
        "gradient", {}, "captum Saliency(loss as [1]).attribute(x, abs=False, additional_forward_args=(labels,))")
    with torch.no_grad():
        for method, cls in (("feature_ablation", FeatureAblation), ("shapley_values", ShapleyValues)):
            add(f"{method}|max|default",
                cls(loss).attribute(x, baselines=0.5, feature_mask=fm, additional_forward_args=args,
                                    perturbations_per_eval=1),
                method, {"baselines": 0.5, "feature_mask": "@mask:groups"},
                f"captum {cls.__name__}(loss).attribute(x, baselines=0.5, feature_mask=the stored mask:groups, "
                "additional_forward_args=(labels,), perturbations_per_eval=1)")
        add("occlusion|max|default",
            Occlusion(loss).attribute(x, baselines=0.5, additional_forward_args=args, perturbations_per_eval=1,
                                      **occlusion),
            "occlusion", {"baselines": 0.5, **{k: list(v) for k, v in occlusion.items()}},
            f"captum Occlusion(loss).attribute(x, baselines=0.5, {occlusion}, additional_forward_args=(labels,), "
            "perturbations_per_eval=1)")
        add("feature_permutation|max|pair",
            FeaturePermutation(loss).attribute(x[:2], feature_mask=fm, additional_forward_args=(labels[:2],)),
            "feature_permutation", {"feature_mask": "@mask:groups"},
            "captum FeaturePermutation(loss).attribute(x[:2], feature_mask=the stored mask:groups, "
            "additional_forward_args=(labels[:2],))", rows=2)
        coalitions = kernel_shap_coalitions(int(groups.max()) + 1, 20, np.random.default_rng(2030))
        AUX["coalitions:ks"] = coalitions
        stored = given_as_perturb_func(coalitions)

        given = KernelShap(loss)
        given.perturb_func = stored
        add("kernel_shap|max|coalitions",
            given.attribute(x, baselines=0.5, feature_mask=fm, additional_forward_args=args, n_samples=20),
            "kernel_shap", {"baselines": 0.5, "feature_mask": "@mask:groups", "coalitions": "@coalitions:ks"},
            "captum KernelShap(loss) with perturb_func replaced by a generator of the stored coalitions:ks, "
            ".attribute(x, baselines=0.5, feature_mask=the stored mask:groups, additional_forward_args=(labels,), "
            "n_samples=20)")
        # the loss moves by less than the Lasso's default alpha (0.01) would let through: alpha 1e-4
        for tag, surrogate, extra in (("coalitions", SkLearnLasso(alpha=1e-4), {"alpha": 1e-4}),
                                      ("linear", SkLearnLinearRegression(), {"interpretable_model": "linear"})):
            lime = Lime(loss, interpretable_model=surrogate)
            lime.perturb_func = stored
            add(f"lime|max|{tag}",
                lime.attribute(x, baselines=0.5, feature_mask=fm, additional_forward_args=args, n_samples=20),
                "lime", {"baselines": 0.5, "feature_mask": "@mask:groups", "coalitions": "@coalitions:ks", **extra},
                f"captum Lime(loss, {type(surrogate).__name__}({'alpha=1e-4' if tag == 'coalitions' else ''})) with "
                "perturb_func replaced by a generator of the stored coalitions:ks, .attribute(x, baselines=0.5, "
                "feature_mask=the stored mask:groups, additional_forward_args=(labels,), n_samples=20)")
        torch.manual_seed(2029)
        add("feature_permutation|max|default",
            FeaturePermutation(loss).attribute(x, feature_mask=fm, additional_forward_args=args),
            "feature_permutation", {"feature_mask": "@mask:groups"},
            "captum FeaturePermutation(loss).attribute(x, feature_mask=the stored mask:groups, "
            "additional_forward_args=(labels,)); torch.manual_seed(2029) before", statistical=True,
            exact="perm_mean:max")
    return out


def make(name, build, loss_of=Loss):
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    net, x, groups, occlusion = build()
    net.eval()
    labels = torch.tensor([0, 2, 1, 2])
    loss = loss_of(net).eval()
    path = os.path.join(OUT, f"{name}.onnx")
    torch.onnx.export(loss, (x, labels), path, dynamo=False, opset_version=17, input_names=["x", "labels"],
                      output_names=["loss"], dynamic_axes={"x": {0: "batch"}, "labels": {0: "batch"}})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        value = loss(x, labels)
    onnx_value = session.run(None, {"x": x.numpy(), "labels": labels.numpy()})[0]
    assert onnx_value.shape == () and abs(float(onnx_value) - float(value)) < 1e-5, "the export computes the loss"
    loss64, x64 = loss_of(net.double()).eval(), x.double()
    found = maps(loss64, x64, labels, groups, occlusion)
    arrays = {"x": x.numpy(), "feed:labels": labels.numpy(), "target": labels.numpy(),
              "logits": np.array([float(value)], np.float32), "mask:groups": groups,
              "perm_mean:max": permutation_mean(lambda v: loss64(v, labels), x64, groups).expand_as(x64).numpy()
              .astype(np.float32), **AUX}
    entries = {}
    for key, (value, entry) in sorted(found.items()):
        arr = value.numpy().astype(np.float32)
        assert np.isfinite(arr).all() and np.abs(arr).max() > 0, key
        arrays[key], entries[key] = arr, entry
    np.savez_compressed(os.path.join(OUT, f"{name}.npz"), **arrays)
    versions = {p: importlib.metadata.version(p) for p in ("captum", "torch")}
    manifest = {
        "model": f"{name}.onnx", "library": " / ".join(f"{k} {v}" for k, v in versions.items()),
        "layout": "NC" if x.ndim == 2 else "NCHW", "input_name": "x", "output_name": "loss", "feeds": ["labels"],
        "entries": entries,
        "notes": ["The output is a loss over the batch (a scalar). The labels are the graph input 'labels', fed as "
                  "arrays['feed:labels'] and given to Captum as additional_forward_args (never perturbed).",
                  "Captum's perturbation methods return one row for a scalar output; it is stored repeated for "
                  "every sample, as onnxattr returns it."],
    }
    write_manifest(OUT, name, manifest)
    print(name, sorted(entries))


if __name__ == "__main__":
    make("torch_tabular_loss", tabular)
    make("torch_cnn_loss", cnn)
    make("torch_ce_loss", tabular, CrossEntropy)
