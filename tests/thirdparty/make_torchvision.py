"""Export two nets built on torchvision's detection ops, a box head (torchvision.ops.roi_align) and a modulated
deformable convolution (torchvision.ops.deform_conv2d, DCNv2: offsets and a sigmoid mask computed from the input),
a small torchvision VisionTransformer with Grad-CAM computed in torch at its last block's ln_1, and a small video
MViT-v2, whose TorchScript export splits q, k and v into lists (ONNX sequences filled by Loops).

torchvision's operators do not load beside the CPU torch 2.13 wheel ('operator torchvision::nms does not exist'),
so this runs in a venv of its own (torch 2.14.1 and torchvision 0.29.1, which pip takes from this machine's disk;
they run on the CPU):

    python -m venv /work/venv-tv && /work/venv-tv/bin/pip install torch==2.14.1 torchvision==0.29.1 onnx \
        onnxruntime onnxscript numpy
    /work/venv-tv/bin/python tests/thirdparty/make_torchvision.py [box_head] [dcn] [vit] [mvit]   (default: all)

Writes to tests/thirdparty/data (random weights, seed 0, eval mode):
- torchvision_box_head_ts.onnx (the TorchScript exporter, opset 16) and torchvision_box_head_dynamo.onnx (the dynamo
  exporter, opset 18): a convolution's features pooled at the boxes of a second input [R, 5] (the image index,
  then x1, y1, x2, y2 in input pixels) by two RoiAlign nodes, aligned=True (half_pixel) with sampling_ratio 2 and
  aligned=False (output_half_pixel) with torchvision's default -1 (sampling_ratio 0: ceil(bin size) points per
  bin and box), spatial_scale 0.5, then a linear head: logits [R, 4];
- torchvision_box_head.npz: an input x, the boxes, torch's logits and torch's gradient with respect to x of each
  box's largest logit (g_max) and of logit 2 (g_2), summed over the boxes;
- torchvision_dcn.onnx (the dynamo exporter, opset 19: DeformConv) and torchvision_dcn.npz (x, the logits, g_max
  and g_2 as above, one row per image);
- torchvision_vit_ts.onnx (TorchScript, opset 17) and torchvision_vit_dynamo.onnx (dynamo, opset 18): a
  VisionTransformer on 32x32 images in 4x4 patches (an 8x8 grid and a class token), two blocks of width 32, two
  heads; torchvision_vit.npz: x, the logits, g_max and g_2, and cam, Grad-CAM of each image's largest logit at
  encoder.layers[-1].ln_1 (read by a forward hook, as pytorch-grad-cam takes blocks[-1].norm1): the class token
  dropped, the 64 patch tokens read as [N, 32, 8, 8], relu(sum_c mean(dy/dA_c) A_c), bilinear to 32x32
  (align_corners=False) [N, 1, 32, 32];
- torchvision_mvit_ts.onnx (TorchScript, opset 17): torchvision's video MViT (v2 blocks: pooled attention with
  relative positions, residual pooling) of two blocks (8 then 16 channels) on clips [N, 3, 4, 16, 16]; its q, k and v
  pass through Python lists, which the exporter writes as Loops that fill ONNX sequences, read by SequenceAt;
  torchvision_mvit.npz: x, the logits, g_max and g_2.
"""

import os
import sys

import numpy as np
import torch
from torch import nn
from torchvision.models import VisionTransformer
from torchvision.models.video.mvit import MSBlockConfig, MViT
from torchvision.ops import deform_conv2d, roi_align

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


class BoxHead(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.head = nn.Linear(2 * 6 * 3 * 3, classes)

    def forward(self, x, boxes):
        f = torch.relu(self.conv(x))
        a = roi_align(f, boxes, (3, 3), spatial_scale=0.5, sampling_ratio=2, aligned=True)
        b = roi_align(f, boxes, (3, 3), spatial_scale=0.5, aligned=False)  # sampling_ratio -1: adaptive
        return self.head(torch.cat([a, b], 1).flatten(1))


class DCN(nn.Module):
    """3x3 DCNv2 with two offset groups, stride 2, its offsets and mask from a plain convolution of x."""

    def __init__(self, classes=4):
        super().__init__()
        self.offsets = nn.Conv2d(4, 2 * 3 * 9, 3, stride=2, padding=1)  # 2 groups x (18 offsets + 9 mask values)
        self.weight = nn.Parameter(torch.randn(6, 4, 3, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(6) * 0.1)
        self.head = nn.Linear(6 * 5 * 5, classes)
        with torch.no_grad():
            self.offsets.weight.mul_(3.0)  # offsets of a few pixels, some taps beyond the border

    def forward(self, x):
        o = self.offsets(x)
        offset, mask = o[:, :36], torch.sigmoid(o[:, 36:])
        h = deform_conv2d(x, offset, self.weight, self.bias, stride=2, padding=1, mask=mask)
        return self.head(torch.relu(h).flatten(1))


def gradients(model, *inputs):
    x = inputs[0].clone().requires_grad_(True)
    y = model(x, *inputs[1:])
    out = {"y": y.detach().numpy()}
    for key, pick in (("g_max", y.argmax(1)), ("g_2", torch.full((len(y),), 2))):
        x.grad = None
        y.gather(1, pick[:, None]).sum().backward(retain_graph=True)
        out[key] = x.grad.numpy().copy()
    return out


def vit_grad_cam(model, x):
    """Grad-CAM at the last block's ln_1, computed in torch, upsampled to x's size: [N, 1, H, W]."""
    seen = {}
    hook = model.encoder.layers[-1].ln_1.register_forward_hook(lambda mod, args, out: seen.update(a=out))
    y = model(x)
    hook.remove()
    a = seen["a"]
    g, = torch.autograd.grad(y.gather(1, y.argmax(1)[:, None]).sum(), a)
    n, tokens, width = a.shape
    side = int(round((tokens - 1) ** 0.5))
    grid_a, grid_g = (t[:, 1:].transpose(1, 2).reshape(n, width, side, side) for t in (a, g))
    cam = torch.relu((grid_g.mean((2, 3), keepdim=True) * grid_a).sum(1, keepdim=True))
    return nn.functional.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False).detach().numpy()


def box_head():
    torch.manual_seed(0)
    head = BoxHead().eval()
    x = torch.randn(2, 3, 12, 12)
    boxes = torch.tensor([[0, 1.0, 2.0, 9.0, 7.0], [1, 0.0, 0.0, 12.0, 11.0], [1, -2.0, 4.5, 5.5, 13.0],
                          [0, 6.2, 1.1, 6.9, 1.8], [1, 8.5, 7.0, 14.0, 12.5]])
    names = {"input_names": ["image", "boxes"], "output_names": ["logits"]}
    torch.onnx.export(head, (x, boxes), os.path.join(HERE, "torchvision_box_head_ts.onnx"), dynamo=False,
                      opset_version=16, dynamic_axes={"image": {0: "batch"}, "boxes": {0: "rois"},
                                                      "logits": {0: "rois"}}, **names)
    program = torch.onnx.export(head, (x, boxes), dynamo=True, opset_version=18, **names)
    program.save(os.path.join(HERE, "torchvision_box_head_dynamo.onnx"), external_data=False)
    np.savez(os.path.join(HERE, "torchvision_box_head.npz"), x=x.numpy(), boxes=boxes.numpy(),
             **gradients(head, x, boxes))


def dcn():
    torch.manual_seed(0)
    BoxHead()  # the weights drawn before the DCN's when one function made both
    torch.randn(2, 3, 12, 12)
    dcn = DCN().eval()
    x = torch.randn(2, 4, 9, 9)
    program = torch.onnx.export(dcn, (x,), dynamo=True, opset_version=19, input_names=["image"],
                                output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},))
    program.save(os.path.join(HERE, "torchvision_dcn.onnx"), external_data=False)
    np.savez(os.path.join(HERE, "torchvision_dcn.npz"), x=x.numpy(), **gradients(dcn, x))


def vit():
    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=5)
    nn.init.normal_(model.heads.head.weight, std=0.2)  # torchvision zero-inits the head: every logit would be 0
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    names = {"input_names": ["image"], "output_names": ["logits"]}
    torch.onnx.export(model, (x,), os.path.join(HERE, "torchvision_vit_ts.onnx"), dynamo=False, opset_version=17,
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, **names)
    program = torch.onnx.export(model, (x,), dynamo=True, opset_version=18,
                                dynamic_shapes=({0: torch.export.Dim("batch", max=1024)},), **names)
    program.save(os.path.join(HERE, "torchvision_vit_dynamo.onnx"), external_data=False)
    np.savez(os.path.join(HERE, "torchvision_vit.npz"), x=x.numpy(), cam=vit_grad_cam(model, x),
             **gradients(model, x))


def mvit():
    torch.manual_seed(0)
    blocks = [MSBlockConfig(num_heads=1, input_channels=8, output_channels=8, kernel_q=[3, 3, 3], kernel_kv=[3, 3, 3],
                            stride_q=[1, 1, 1], stride_kv=[1, 2, 2]),
              MSBlockConfig(num_heads=2, input_channels=8, output_channels=16, kernel_q=[3, 3, 3],
                            kernel_kv=[3, 3, 3], stride_q=[1, 2, 2], stride_kv=[1, 1, 1])]
    model = MViT(spatial_size=(16, 16), temporal_size=4, block_setting=blocks, residual_pool=True,
                 residual_with_cls_embed=False, rel_pos_embed=True, proj_after_attn=True, dropout=0.0,
                 num_classes=5).eval()
    x = torch.randn(2, 3, 4, 16, 16)
    torch.onnx.export(model, (x,), os.path.join(HERE, "torchvision_mvit_ts.onnx"), dynamo=False, opset_version=17,
                      input_names=["clip"], output_names=["logits"],
                      dynamic_axes={"clip": {0: "batch"}, "logits": {0: "batch"}})
    np.savez(os.path.join(HERE, "torchvision_mvit.npz"), x=x.numpy(), **gradients(model, x))


def main(nets):
    for net in nets:
        {"box_head": box_head, "dcn": dcn, "vit": vit, "mvit": mvit}[net]()
    for name in sorted(os.listdir(HERE)):
        if name.startswith("torchvision_"):
            print(name, os.path.getsize(os.path.join(HERE, name)))


if __name__ == "__main__":
    main(sys.argv[1:] or ["box_head", "dcn", "vit", "mvit"])
