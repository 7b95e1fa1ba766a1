"""VGG16 and ResNet50 written out by hand (torchvision cannot be installed next to the pinned torch).

The layer layout is the standard one (Simonyan & Zisserman 2014, configuration D; He et al. 2016,
bottleneck v1.5 with the stride on the 3x3 conv, as torchvision builds them). Weights are random with a
fixed seed: timings do not depend on the values. Conv and BatchNorm sit next to each other inside
nn.Sequential containers so that Zennit's SequentialMergeBatchNorm canonizer can merge them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        layers, c = [], 3
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
                c = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def conv_bn(cin, cout, k, stride=1, relu=True):
    mods = [nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        mods.append(nn.ReLU())
    return nn.Sequential(*mods)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            conv_bn(cin, width, 1), conv_bn(width, width, 3, stride), conv_bn(width, cout, 1, relu=False),
        )
        self.shortcut = conv_bn(cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU()

    def forward(self, x):
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.body(x) + identity)


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, padding=1))
        blocks, cin = [], 64
        for width, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(n):
                blocks.append(Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x):
        x = self.pool(self.layers(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def vit_b16() -> nn.Module:
    """ViT-B/16's shape (width 768, 12 blocks of 12 heads, MLP 3072, 16x16 patches of 224x224 images), as
    the AttnLRP oracle's ViT class (tests/oracles/make_lxt.py) writes it, with LXT's rules switchable by
    forward(x, lxt="attn")."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "oracles"))
    from make_lxt import ViT

    return ViT(dim=768, depth=12, heads=12, patch=16, image=224, classes=1000, mlp=4)


class SequenceLSTM(nn.Module):
    """A sequence classifier: two bidirectional LSTM layers (64 features in, 128 hidden units per direction), the
    last step's output, a Linear head of 10 classes; input [N, 100, 64] (configs.RECURRENT_SHAPE), batch first."""

    def __init__(self, features: int = 64, hidden: int = 128, classes: int = 10):
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


class SequenceGRU(SequenceLSTM):
    """SequenceLSTM with two bidirectional GRU layers (torch's GRU: linear_before_reset) in place of the LSTM's."""

    def __init__(self, features: int = 64, hidden: int = 128, classes: int = 10):
        super().__init__(features, hidden, classes)
        self.rnn = nn.GRU(features, hidden, num_layers=2, bidirectional=True, batch_first=True)


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = {"vgg16": VGG16, "resnet50": ResNet50, "vit_b16": vit_b16, "lstm": SequenceLSTM,
             "gru": SequenceGRU}[name]()
    if name == "resnet50":  # give BatchNorm non-trivial statistics, as a trained net has
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.normal_(0, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
    return model.eval()


def export(model: nn.Module, path: str, shape: tuple = (3, 224, 224)) -> None:
    """torch.onnx.export with a dynamic batch; ``shape``: one sample's (a recurrent net's sequence length stays
    fixed, so that onnxattr can unroll it)."""
    x = torch.randn(1, *shape)
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
