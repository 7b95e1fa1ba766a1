"""Export a small PaddlePaddle CNN (conv, batch norm, relu, max pool, global average pool, fc) to ONNX.

Run from the repository root in a venv with PaddlePaddle (CPU) and paddle2onnx, e.g.:

    python -m venv /work/venv-paddle && /work/venv-paddle/bin/pip install paddlepaddle paddle2onnx packaging onnxruntime onnx_graphsurgeon sympy
    /work/venv-paddle/bin/python tests/thirdparty/make_paddle.py

Writes tests/thirdparty/data/paddle_cnn.onnx (random weights, seed 0, eval mode, dynamic batch) through
paddle.onnx.export (which calls paddle2onnx).
"""

import os

import numpy as np
import paddle
from paddle import nn

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


class SmallCNN(nn.Layer):
    def __init__(self, classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2D(3, 8, 3, padding=1), nn.BatchNorm2D(8), nn.ReLU(), nn.MaxPool2D(2, 2),
            nn.Conv2D(8, 16, 3, padding=1), nn.BatchNorm2D(16), nn.ReLU(),
            nn.AdaptiveAvgPool2D(1),
        )
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(paddle.flatten(self.features(x), 1))


def main():
    paddle.seed(0)
    np.random.seed(0)
    model = SmallCNN()
    for layer in model.sublayers():
        if isinstance(layer, nn.BatchNorm2D):  # non-trivial running statistics
            c = layer._mean.shape[0]
            layer._mean.set_value(np.random.uniform(-0.5, 0.5, c).astype("float32"))
            layer._variance.set_value(np.random.uniform(0.5, 2.0, c).astype("float32"))
    model.eval()
    prefix = os.path.join(HERE, "paddle_cnn")
    spec = [paddle.static.InputSpec([None, 3, 16, 16], "float32", "image")]
    paddle.onnx.export(model, prefix, input_spec=spec, opset_version=13)
    print(prefix + ".onnx", os.path.getsize(prefix + ".onnx"))


if __name__ == "__main__":
    main()
