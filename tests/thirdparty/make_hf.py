"""Export tiny Hugging Face models (random weights, built from their configs: nothing is downloaded): a LLaMA
sequence classifier with PyTorch's dynamo exporter at opset 23, on its token embeddings and an attention mask
(``llama``, the default), and an EfficientNet image classifier with the TorchScript exporter (``efficientnet``).

Run from the repository root, in a venv with torch 2.13 (CPU), onnxscript and transformers, without torchvision
(transformers imports it when it is there, and a torchvision built for another torch fails), e.g.:

    /work/venv-torch/bin/pip install transformers && /work/venv-torch/bin/pip uninstall -y torchvision
    /work/venv-torch/bin/python tests/thirdparty/make_hf.py [llama] [efficientnet] [glpn]

Writes tests/thirdparty/data/hf_llama_op23.onnx (inputs "embeds" [N, 6, 16] float and "mask" [N, 6] int64,
output the 3 logits; dynamic batch) and hf_llama.npz: an input with one padded sample, torch's output and
torch's gradient of the largest logit and of logit 2 with respect to the embeddings. What it exercises: the
library's RMSNorm (exported as RMSNormalization), its rotary embedding (hand-written ops), grouped-query
attention (two query heads, one key/value head) through scaled_dot_product_attention, which opset 23 writes as
one Attention node, with a causal and padding mask computed from the mask input at run time, a SwiGLU MLP, and
the classifier's pick of
the last position (given embeddings rather than token ids, the library cannot find the padding: the padded
sample's map covers its padded positions too, in torch as here).
"""

import os

import numpy as np
import torch
import transformers

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


class OnEmbeddings(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, embeds, mask):
        return self.model(inputs_embeds=embeds, attention_mask=mask).logits


def llama():
    config = transformers.LlamaConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, intermediate_size=32, vocab_size=50,
                                      max_position_embeddings=16, num_labels=3, pad_token_id=0)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = OnEmbeddings(transformers.LlamaForSequenceClassification(config).eval())
    embeds = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.int64)
    mask[0, 4:] = 0  # the first sample is padded after four tokens
    path = os.path.join(HERE, "hf_llama_op23.onnx")
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.onnx.export(model, (embeds, mask), dynamo=True, opset_version=23, input_names=["embeds", "mask"],
                                output_names=["logits"], dynamic_shapes=({0: batch}, {0: batch}))
    program.save(path, external_data=False)
    print(path, os.path.getsize(path))
    grads = {}
    for key, pick in (("g_max", lambda y: y.argmax(1)), ("g_2", lambda y: torch.full((len(y),), 2))):
        x = embeds.clone().requires_grad_(True)
        y = model(x, mask)
        y.gather(1, pick(y)[:, None]).sum().backward()
        grads[key] = x.grad.numpy()
    np.savez(os.path.join(HERE, "hf_llama.npz"), x=embeds.numpy(), mask=mask.numpy(), y=y.detach().numpy(), **grads)


class OnPixels(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


def efficientnet():
    config = transformers.EfficientNetConfig(image_size=32, width_coefficient=0.125, depth_coefficient=0.25,
                                             hidden_dim=160, num_labels=4)
    torch.manual_seed(0)
    model = transformers.EfficientNetForImageClassification(config).eval()
    with torch.no_grad():  # weights of unit scale: the library zeroes parts of its own initialisation
        for name, p in model.named_parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=(2.0 / p[0].numel()) ** 0.5)
            elif name.endswith("weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.1)
    model = OnPixels(model).eval()
    x = torch.randn(2, 3, 32, 32)
    path = os.path.join(HERE, "hf_efficientnet_ts.onnx")
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["x"], output_names=["logits"],
                      dynamic_axes={"x": {0: "N"}, "logits": {0: "N"}})
    print(path, os.path.getsize(path))
    xg = x.clone().requires_grad_(True)
    y = model(xg)
    y[:, 0].sum().backward()
    np.savez(os.path.join(HERE, "hf_efficientnet.npz"), x=x.numpy(), y=y.detach().numpy(), g_0=xg.grad.numpy())


class MeanDepth(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).predicted_depth.mean(dim=(-2, -1)).unsqueeze(-1)


def glpn():
    config = transformers.GLPNConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                                     patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                                     decoder_hidden_size=16)
    torch.manual_seed(0)
    model = MeanDepth(transformers.GLPNForDepthEstimation(config).eval()).eval()
    path = os.path.join(HERE, "hf_glpn_ts.onnx")
    torch.onnx.export(model, (torch.randn(2, 3, 32, 32),), path, dynamo=False, opset_version=17, input_names=["x"],
                      output_names=["depth"], dynamic_axes={"x": {0: "N"}, "depth": {0: "N"}})
    print(path, os.path.getsize(path))


if __name__ == "__main__":
    import sys

    for net in sys.argv[1:] or ["llama"]:
        {"llama": llama, "efficientnet": efficientnet, "glpn": glpn}[net]()
