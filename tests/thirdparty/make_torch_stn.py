"""Export a small spatial transformer network (F.affine_grid + F.grid_sample) with PyTorch's TorchScript-based
exporter at opset 20, which writes AffineGrid and GridSample.

Run from the repository root, in a venv with torch 2.13 (CPU), e.g. /work/venv-torch:

    /work/venv-torch/bin/python tests/thirdparty/make_torch_stn.py

Writes tests/thirdparty/data/torch_stn.onnx (random weights, seed 0, dynamic batch) and torch_stn.npz: an input,
torch's output and torch's gradient of the largest logit. The localization net sees the input, so the map
differentiates through the grid too.
"""

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


class STN(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.loc = nn.Linear(3 * 8 * 8, 6)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, classes)
        with torch.no_grad():  # near the identity transform: a slight rotation and shift
            self.loc.weight.mul_(0.05)
            self.loc.bias.copy_(torch.tensor([1.0, 0.1, 0.0, -0.1, 0.9, 0.05]))

    def forward(self, x):
        theta = self.loc(x.flatten(1)).view(-1, 2, 3)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        warped = F.grid_sample(x, grid, align_corners=False, padding_mode="border")
        return self.head(torch.relu(self.conv(warped)).flatten(1))


def main():
    torch.manual_seed(0)
    model = STN().eval()
    x = torch.randn(2, 3, 8, 8)
    path = os.path.join(HERE, "torch_stn.onnx")
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=20, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    print(path, os.path.getsize(path))
    xg = x.clone().requires_grad_(True)
    y = model(xg)
    y.gather(1, y.argmax(1)[:, None]).sum().backward()
    np.savez(os.path.join(HERE, "torch_stn.npz"), x=x.numpy(), y=y.detach().numpy(), g_max=xg.grad.numpy())


if __name__ == "__main__":
    main()
