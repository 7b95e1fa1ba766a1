"""Make the shipped example: a small CNN trained on scikit-learn's bundled 8x8 handwritten digits.

    /path/to/venv-with-torch/bin/python models/make_digits.py     # torch==2.13.0, scikit-learn, onnx

Writes models/digits_cnn.onnx (input "image" [batch, 1, 8, 8] in [0, 1], output "logits" [batch, 10],
opset 17, dynamic batch) and models/digits_sample.npy (eight held-out digits, one of each class 0-7).
Deterministic: fixed seeds, CPU, one thread. The data ship inside scikit-learn; nothing is downloaded.
"""

from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

HERE = Path(__file__).resolve().parent


def build() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:1500], order[1500:]
    net = build()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    for epoch in range(30):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(torch.from_numpy(x[test])).argmax(1).numpy() == y[test]).mean()
    print(f"held-out accuracy: {acc:.3f} on {len(test)} digits")
    torch.onnx.export(net, torch.from_numpy(x[:1]), HERE / "digits_cnn.onnx", dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    sample = np.stack([x[test][y[test] == c][0] for c in range(8)])
    np.save(HERE / "digits_sample.npy", sample)
    print(f"wrote {HERE / 'digits_cnn.onnx'} and {HERE / 'digits_sample.npy'} {sample.shape}")


if __name__ == "__main__":
    main()
