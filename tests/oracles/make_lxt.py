"""Oracle maps of AttnLRP and CP-LRP from LXT (LRP-eXplains-Transformers 2.1, "efficient" mode) on two small
transformers.

Run from the repository root with the torch venv (CPU torch 2.13.0, lxt 2.1 installed with --no-deps, onnx,
onnxruntime):

    /work/venv-torch/bin/pip install --no-deps lxt==2.1
    /work/venv-torch/bin/python tests/oracles/make_lxt.py [NAME ...]

It writes into tests/oracles/data/, for NAME in lxt_vit (a ViT: Conv patch embedding, class token, position
embedding, pre-LayerNorm blocks with GELU MLPs, a Tanh pooler) and lxt_llama (a LLaMA-style decoder on token
embeddings: RMSNorm, causal attention, SwiGLU MLP; the logits of the last position):

    NAME.onnx   torch.onnx.export(dynamo=False, opset 17, dynamic batch) of the plain model; lxt_llama_sdpa is
                lxt_llama (the same weights, input and maps) with its plain attention written as
                F.scaled_dot_product_attention and exported by the dynamo exporter at opset 23: one Attention
                node per block, which onnxattr expands into its ONNX definition
    NAME.npz    "x", "target", "logits" and "<method>|<mode>|default" float32 maps shaped like x, for
                attn_lrp (LXT's AttnLRP) and cp_lrp (LXT's CP-LRP); lxt_vit also "<method>|<mode>|gamma",
                the same with zennit's Gamma rule on every Conv2d (0.25) and Linear (0.1), as LXT's ViT
                example adds it (zennit 0.5.1, imported through make_torch.py's torchvision stand-in)
    NAME.json   the manifest read by tests/methods/test_oracles.py

LXT's rules are applied where LXT's own model patches put them (lxt/efficient/models/bert.py, llama.py and
patches.py). Both modes: identity_rule_implicit on the MLP activation and the pooler's Tanh, and LXT's
layer_norm_forward / rms_norm_forward (the std held constant). AttnLRP (forward(x, lxt="attn")):
divide_gradient(., 2) on the attention scores Q K^T, on the context A V and on a gated MLP's product.
CP-LRP (lxt="cp"): stop_gradient on the query and key and on a gated MLP's gate projection, no
divide_gradient. The map is x * x.grad after backward from the selected logit with a gradient of 1 (mode
"all": ones over every logit), so it sums to about the logit; LXT's README seeds with the logit itself,
which only scales the map. Computed in float64, stored as float32; fp32_rel_dev is the same computation's
float32 deviation.

LXT is only called as a library; its package __init__ imports Hugging Face transformers for its model
patches, which these models do not use, so only its rule modules are loaded.
"""

import importlib.metadata
import json
import math
import os
import sys
import types

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def lxt_modules():
    """lxt.efficient.rules and .patches without lxt/efficient/__init__.py (which imports transformers);
    loaded on first use, so the plain models (benchmarks/nets.py builds this ViT) need no LXT."""
    if "lxt.efficient.rules" not in sys.modules:
        import lxt
        pkg = types.ModuleType("lxt.efficient")
        pkg.__path__ = [os.path.join(os.path.dirname(lxt.__file__), "efficient")]
        sys.modules["lxt.efficient"] = pkg
    from lxt.efficient import patches, rules
    return rules, patches


def halve(t, lxt):
    """LXT's uniform rule on a product (AttnLRP only: CP-LRP halves nothing)."""
    return lxt_modules()[0].divide_gradient(t, 2) if lxt == "attn" else t


def held(t, lxt):
    """CP-LRP's stop_gradient (AttnLRP keeps the gradient)."""
    return lxt_modules()[0].stop_gradient(t) if lxt == "cp" else t


def activation(fn, t, lxt):
    return lxt_modules()[0].identity_rule_implicit(fn, t) if lxt else fn(t)


class Attention(nn.Module):
    def __init__(self, dim, heads, bias, causal_len=None):
        super().__init__()
        self.heads, self.dh = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim, bias=bias) for _ in range(4))
        if causal_len is not None:
            mask = torch.triu(torch.full((causal_len, causal_len), -1e4), diagonal=1)
            self.register_buffer("mask", mask)
        else:
            self.mask = None
        self.sdpa = False  # the plain forward through F.scaled_dot_product_attention (lxt_llama_sdpa)

    def split(self, t):
        n, s, _ = t.shape
        return t.reshape(n, s, self.heads, self.dh).transpose(1, 2)

    def forward(self, x, lxt=False):
        q, k, v = held(self.split(self.q(x)), lxt), held(self.split(self.k(x)), lxt), self.split(self.v(x))
        if self.sdpa and not lxt:  # the same softmax(q k^T / sqrt(dh) + mask) v, as one op
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
            n, _, s, _ = ctx.shape
            return self.o(ctx.transpose(1, 2).reshape(n, s, self.heads * self.dh))
        scores = halve(torch.matmul(q, k.transpose(-1, -2)), lxt) / math.sqrt(self.dh)
        if self.mask is not None:
            scores = scores + self.mask
        ctx = halve(torch.matmul(torch.softmax(scores, dim=-1), v), lxt)
        n, _, s, _ = ctx.shape
        return self.o(ctx.transpose(1, 2).reshape(n, s, self.heads * self.dh))


def layer_norm(module, x, lxt):
    return lxt_modules()[1].layer_norm_forward(module, x) if lxt else module(x)


class ViTBlock(nn.Module):
    def __init__(self, dim, heads=4, mlp=2):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, bias=True)
        self.fc1, self.fc2 = nn.Linear(dim, mlp * dim), nn.Linear(mlp * dim, dim)
        self.act = nn.GELU()

    def forward(self, x, lxt=False):
        x = x + self.attn(layer_norm(self.ln1, x, lxt), lxt)
        return x + self.fc2(activation(self.act, self.fc1(layer_norm(self.ln2, x, lxt)), lxt))


class ViT(nn.Module):
    """The oracle's: 3x16x16 images, 4x4 patches (16 tokens + a class token), width 32, two blocks, 10
    classes; ViT(768, 12, 12, 16, 224, 1000, 4) is ViT-B/16's shape (benchmarks/nets.py)."""

    def __init__(self, dim=32, depth=2, heads=4, patch=4, image=16, classes=10, mlp=2):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.5)
        self.blocks = nn.ModuleList(ViTBlock(dim, heads, mlp) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)
        self.pool = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x, lxt=False):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        for blk in self.blocks:
            t = blk(t, lxt)
        pooled = activation(torch.tanh, self.pool(layer_norm(self.ln, t, lxt)[:, 0]), lxt)
        return self.head(pooled)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.2 * torch.randn(dim))
        self.variance_epsilon = eps

    def forward(self, x, lxt=False):
        if lxt:
            return lxt_modules()[1].rms_norm_forward(self, x)
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


class LlamaBlock(nn.Module):
    def __init__(self, dim, seq):
        super().__init__()
        self.n1, self.n2 = RMSNorm(dim), RMSNorm(dim)
        self.attn = Attention(dim, 4, bias=False, causal_len=seq)
        self.gate, self.up = nn.Linear(dim, 2 * dim, bias=False), nn.Linear(dim, 2 * dim, bias=False)
        self.down = nn.Linear(2 * dim, dim, bias=False)
        self.act = nn.SiLU()

    def forward(self, x, lxt=False):
        x = x + self.attn(self.n1(x, lxt), lxt)
        h = self.n2(x, lxt)
        return x + self.down(halve(activation(self.act, held(self.gate(h), lxt), lxt) * self.up(h), lxt))


class Llama(nn.Module):
    """Token embeddings [N, 6, 32] in, two decoder blocks, the next-token logits (20) of the last position."""

    def __init__(self, dim=32, seq=6):
        super().__init__()
        self.blocks = nn.ModuleList(LlamaBlock(dim, seq) for _ in range(2))
        self.norm = RMSNorm(dim)
        self.head = nn.Linear(dim, 20, bias=False)

    def forward(self, x, lxt=False):
        for blk in self.blocks:
            x = blk(x, lxt)
        return self.head(self.norm(x, lxt)[:, -1])


def build(name):
    torch.manual_seed({"lxt_vit": 11, "lxt_llama": 12, "lxt_llama_sdpa": 12}[name])
    if name == "lxt_vit":
        model, x = ViT(), torch.randn(3, 3, 16, 16)
    else:
        model, x = Llama(), torch.randn(3, 6, 32)
    for m in model.modules():
        if isinstance(m, Attention):
            m.sdpa = name == "lxt_llama_sdpa"
    return model.eval(), x


# LXT's gamma for ViTs: zennit's Gamma rule on every Conv2d and Linear, bridged to x * grad by LXT's patch
CONV_GAMMA, LINEAR_GAMMA = 0.25, 0.1


def gamma_composite(conv_gamma, linear_gamma):
    """zennit's LayerMapComposite of Gamma rules, after lxt.efficient.zennit_patches.monkey_patch_zennit (the
    hooks then take R_out = grad * output and return R_in / stabilize(input, 1e-10)), as LXT's ViT example
    sets it up. zennit imports torchvision, which the CPU torch venv cannot hold: make_torch.py's stand-in."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_torch import zennit
    lxt_modules()
    from lxt.efficient.zennit_patches import monkey_patch_zennit
    monkey_patch_zennit()
    return zennit.composites.LayerMapComposite([(nn.Conv2d, zennit.rules.Gamma(conv_gamma)),
                                                (nn.Linear, zennit.rules.Gamma(linear_gamma))])


def relevance(model, x, dtype, mode, target, rules, gammas=None):
    m = model.to(dtype)
    xi = x.to(dtype).clone().requires_grad_(True)
    if gammas is not None:
        with gamma_composite(*gammas).context(m) as hooked:
            return _backward(hooked, xi, mode, target, rules)
    return _backward(m, xi, mode, target, rules)


def _backward(m, xi, mode, target, rules):
    logits = m(xi, lxt=rules)
    if mode == "all":
        seed = torch.ones_like(logits)
    else:
        seed = torch.zeros_like(logits)
        seed[torch.arange(len(seed)), target] = 1
    logits.backward(seed)
    return (xi * xi.grad).detach().double()


def export(model, x, path):
    """The legacy exporter at opset 17; for lxt_llama_sdpa torch's dynamo exporter at opset 23, which writes
    scaled_dot_product_attention as one Attention node."""
    if path.endswith("_sdpa.onnx"):
        program = torch.onnx.export(model.float(), (x,), dynamo=True, opset_version=23, input_names=["input"],
                                    output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))
        program.save(path, external_data=False)
        return
    torch.onnx.export(model.float(), (x,), path, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})


LIBRARY_CALL = {
    "attn_lrp": "x * x.grad after logits.backward(onehot or ones) with lxt.efficient.rules (identity_rule_implicit, "
                "divide_gradient) and lxt.efficient.patches (layer_norm_forward, rms_norm_forward) where LXT's "
                "AttnLRP model patches put them",
    "cp_lrp": "the same with LXT's CP-LRP patches instead: stop_gradient on the attention's query and key "
              "(cp_wrap_attention_forward) and on a gated MLP's gate projection (cp_gated_mlp_forward), no "
              "divide_gradient",
}


GAMMA_CALL = ("; with zennit's LayerMapComposite([(nn.Conv2d, Gamma(0.25)), (nn.Linear, Gamma(0.1))]) registered "
              "after lxt.efficient.zennit_patches.monkey_patch_zennit()")


def make(name):
    model, x = build(name)
    with torch.no_grad():
        plain = model(x)
        for rules in ("attn", "cp"):
            assert torch.allclose(plain, model(x, lxt=rules), atol=1e-6), "LXT's rules must not change the forward"
    path = os.path.join(OUT, f"{name}.onnx")
    export(model, x, path)
    onnx_logits = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert np.allclose(onnx_logits, plain.numpy(), atol=1e-5), "the export must compute the torch model"
    logits = plain.numpy()
    target = np.array([1, 7, 3]) if name == "lxt_vit" else np.array([2, 19, 5])
    arrays = {"x": x.numpy(), "target": target.astype(np.int64), "logits": logits}
    entries = {}
    variants = [("default", None, {})]
    if name == "lxt_vit":
        variants.append(("gamma", (CONV_GAMMA, LINEAR_GAMMA), {"conv_gamma": CONV_GAMMA, "linear_gamma": LINEAR_GAMMA}))
    for tag, gammas, params in variants:
        for method, rules in (("attn_lrp", "attn"), ("cp_lrp", "cp")):
            for mode in ("max", "index", "all"):
                chosen = logits.argmax(1) if mode == "max" else target
                r64 = relevance(model, x, torch.float64, mode, chosen, rules, gammas)
                r32 = relevance(model, x, torch.float32, mode, chosen, rules, gammas)
                key = f"{method}|{mode}|{tag}"
                arrays[key] = r64.float().numpy()
                entries[key] = {
                    "method": method, "params": params, "mode": mode, "seed": "one", "statistical": False,
                    "library_call": LIBRARY_CALL[method] + (GAMMA_CALL if gammas else ""),
                    "fp32_rel_dev": float(f"{float((r32 - r64).abs().max() / r64.abs().max()):.3g}"),
                }
    np.savez_compressed(os.path.join(OUT, f"{name}.npz"), **arrays)
    versions = {p: importlib.metadata.version(p) for p in ("lxt", "torch")}
    manifest = {
        "model": f"{name}.onnx", "library": " / ".join(f"{k} {v}" for k, v in versions.items()),
        "layout": "NCHW" if name == "lxt_vit" else "NTC", "input_name": "input", "output_name": "logits",
        "entries": entries,
    }
    with open(os.path.join(OUT, f"{name}.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")
    print(name, {k: v["fp32_rel_dev"] for k, v in entries.items()})


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    for name in sys.argv[1:] or ("lxt_vit", "lxt_llama", "lxt_llama_sdpa"):
        make(name)
