"""The small PyTorch nets of the oracles (random weights, a seed search for differing classes) and the copies
of them that the references need (BatchNorms folded exactly, biases zeroed)."""

import copy

import numpy as np
import torch
from torch import nn

N_CLASSES = 5


class BasicBlock(nn.Module):
    """A torchvision-style residual block (conv-bn-relu-conv-bn + shortcut, relu).

    Attribute names follow torchvision's BasicBlock (conv1, bn1, relu, conv2, bn2, downsample), because
    zennit's ResNetBasicBlockCanonizer swaps in its own forward that uses exactly those attributes (and uses
    `self.relu` twice). Our own forward uses a second ReLU module `relu2` after the addition so that
    Captum's per-module ReLU hooks see each ReLU call on its own module. Children are declared in forward
    order because zennit's SequentialMergeBatchNorm pairs a Conv with the BatchNorm that follows it in
    module-registration order.
    """

    expansion = 1

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + shortcut)


class _PlaceholderBottleneck(nn.Module):
    """Never instantiated; stands in for torchvision's Bottleneck in the import shim."""


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.layer1 = BasicBlock(8, 8, 1)
        self.layer2 = BasicBlock(8, 16, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, N_CLASSES)

    def features(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        return self.flatten(self.avgpool(self.layer2(self.layer1(x))))

    def forward(self, x):
        return self.fc(self.features(x))


def make_mlp(probe=None):
    return nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, N_CLASSES))


def make_vgg(probe=None):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 32), nn.ReLU(),
        nn.Linear(32, N_CLASSES),
    )


def make_resnet(probe):
    """ResNet with BatchNorm statistics like a trained net's: running stats first set to the probe batch's
    statistics (one train-mode pass with momentum 1), then perturbed; random affine parameters. (With
    arbitrary running stats on uniform-noise inputs most channels die and the pooled features barely vary,
    which makes the logits ill-conditioned in float32.)"""
    return calibrate_bns(ResNet(), probe, 1234)


class Inception(nn.Module):
    """Stem conv, then three branches joined by torch.cat (zennit has no rule for cat: plain gradient):
    1x1 conv; 3x3 conv; AvgPool2d(3, 1, 1, count_include_pad=False) + 1x1 conv; then MaxPool, a conv,
    AdaptiveAvgPool2d(1), Flatten, Linear."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.stem_relu = nn.ReLU()
        self.b1 = nn.Conv2d(6, 4, 1)
        self.b1_relu = nn.ReLU()
        self.b2 = nn.Conv2d(6, 4, 3, padding=1)
        self.b2_relu = nn.ReLU()
        self.b3_pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        self.b3 = nn.Conv2d(6, 4, 1)
        self.b3_relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv = nn.Conv2d(12, 8, 3, padding=1)
        self.conv_relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, N_CLASSES)

    def features(self, x):
        h = self.stem_relu(self.stem(x))
        h = torch.cat([self.b1_relu(self.b1(h)), self.b2_relu(self.b2(h)), self.b3_relu(self.b3(self.b3_pool(h)))], 1)
        h = self.conv_relu(self.conv(self.pool(h)))
        return self.flatten(self.avgpool(h))

    def forward(self, x):
        return self.fc(self.features(x))


def make_inception(probe=None):
    return Inception()


def make_conv1d(probe=None):
    """Conv1d, MaxPool1d, a strided valid Conv1d, Tanh, Dropout, SiLU (zennit: Pass on Tanh/SiLU)."""
    return nn.Sequential(
        nn.Conv1d(4, 6, 5, padding=2), nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(6, 8, 3, stride=2), nn.Tanh(),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(32, 8), nn.SiLU(),
        nn.Linear(8, N_CLASSES),
    )


def make_strided(probe=None):
    """Asymmetric ZeroPad2d, stride-2 convs (one padded), LeakyReLU, AvgPool2d(3, 2, 1, count_include_pad=True),
    AdaptiveAvgPool2d(1) + Flatten."""
    return nn.Sequential(
        nn.ZeroPad2d((0, 1, 1, 0)),
        nn.Conv2d(3, 6, 3, stride=2), nn.LeakyReLU(0.1),
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=True),
        nn.Conv2d(8, 8, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, N_CLASSES),
    )


def calibrate_bns(model, probe, seed):
    """BatchNorm statistics like a trained net's (as make_resnet does): running stats of the probe batch, then
    perturbed; random affine parameters with a few negative gammas."""
    bns = [mod for mod in model.modules() if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d))]
    for bn in bns:
        bn.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(probe)
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in bns:
            bn.momentum = 0.1
            c = bn.num_features
            std = bn.running_var.sqrt()
            bn.running_mean += 0.2 * std * torch.randn(c, generator=gen)
            bn.running_var *= 0.6 + 0.8 * torch.rand(c, generator=gen)
            scale = 0.5 + torch.rand(c, generator=gen)
            flip = torch.rand(c, generator=gen) < 0.15
            bn.weight.copy_(torch.where(flip, -scale, scale))
            bn.bias.copy_(0.2 * torch.randn(c, generator=gen))
    return model


def make_vggbn(probe):
    """A BatchNorm on the input (nothing to merge into: zennit's Pass), Conv-BN-ReLU blocks, Linear-BN1d-ReLU,
    Dropout."""
    model = nn.Sequential(
        nn.BatchNorm2d(3),
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 16), nn.BatchNorm1d(16), nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(16, N_CLASSES),
    )
    return calibrate_bns(model, probe, 4321)


def make_mlp_nobias(probe=None):
    return nn.Sequential(nn.Linear(16, 12, bias=False), nn.ReLU(), nn.Linear(12, 8, bias=False), nn.ReLU(),
                         nn.Linear(8, N_CLASSES, bias=False))


def features_and_head(model):
    """(function giving the input of the last Linear, the last Linear)."""
    if isinstance(model, (ResNet, Inception)):
        return model.features, model.fc
    return model[:-1], model[-1]


def decorrelate_head(model, probe):
    """Remove the final layer's component along the mean feature direction and centre its bias over the probes,
    so that different inputs get different classes."""
    feats_fn, head = features_and_head(model)
    with torch.no_grad():
        feats = feats_fn(probe)
        m = feats.mean(0)
        m = m / m.norm()
        head.weight -= torch.outer(head.weight @ m, m)
        if head.bias is None:  # bias-free head: only rescale
            head.weight /= head(feats).std()
            return
        # centre every class's logit over the probes (so no class wins by its bias), then rescale to O(1)
        head.bias.copy_(-(feats @ head.weight.T).mean(0))
        logits = head(feats)
        head.weight /= logits.std()
        head.bias /= logits.std()
        head.bias += 0.1 * torch.randn(head.bias.shape)  # keep a non-zero bias in the last layer


def prefold_bn(model):
    """Copy of `model` with every BatchNorm that directly follows a Conv folded EXACTLY into that Conv
    (W*g/sqrt(var+eps), (b-mean)*g/sqrt(var+eps)+beta, computed in float64) and replaced by nn.Identity.
    zennit's own SequentialMergeBatchNorm does the same fold but leaves the BN computing x/sqrt(1+eps)
    (running_var=1 with eps kept), a ~5e-6 relative change per BN that the residual Norm rule amplifies."""
    clone = copy.deepcopy(model)
    leaves = [(n, m) for n, m in clone.named_modules() if not list(m.children())]
    with torch.no_grad():
        for (_, conv), (bn_name, bn) in zip(leaves, leaves[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
                bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
                new_bias = (bias - bn.running_mean.double()) * scale + bn.bias.double()
                conv.weight.copy_((conv.weight.double() * scale[:, None, None, None]).to(conv.weight.dtype))
                conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
                parent_name, _, attr = bn_name.rpartition(".")
                setattr(clone.get_submodule(parent_name) if parent_name else clone, attr, nn.Identity())
    return clone.eval()


def bias_free_clone(model):
    """Copy with all biases zero and BatchNorms reduced to pure scales (mean 0, beta 0): LRP with
    ZPlus/Epsilon(1e-6)/Norm on such a ReLU net conserves relevance (sum of map == logit), up to eps."""
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for mod in clone.modules():
            if isinstance(mod, (nn.Linear, nn.Conv2d)) and mod.bias is not None:
                mod.bias.zero_()
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.zero_()
                mod.bias.zero_()
    return clone.eval()


def build(name, maker, shape, lo=0.0, hi=1.0):
    """Build a model whose argmax differs between the 4 samples of x (deterministic seed search). x and the
    probes are uniform in [lo, hi) (default [0, 1))."""
    x = torch.from_numpy(np.random.default_rng(0).random(shape, dtype=np.float32))
    probe = torch.from_numpy(np.random.default_rng(1).random((256,) + shape[1:], dtype=np.float32))
    if (lo, hi) != (0.0, 1.0):
        x, probe = lo + (hi - lo) * x, lo + (hi - lo) * probe
    for seed in range(100):
        torch.manual_seed(seed)
        model = maker(probe).eval()
        decorrelate_head(model, torch.cat([probe, x]))
        with torch.no_grad():
            argmax = model(x).argmax(1).numpy()
        if len(set(argmax.tolist())) >= 3:
            print(f"{name}: model seed {seed}, argmax {argmax.tolist()}")
            return model, x, argmax, seed
    raise RuntimeError(f"{name}: no seed gives differing classes")


def make_target(argmax):
    target = (argmax + np.array([1, 2, 0, 3])) % N_CLASSES  # sample 2 keeps its argmax, others differ
    if len(set(target.tolist())) < 2:  # these offsets can map all four to one class; then use others
        target = (argmax + np.array([1, 3, 0, 2])) % N_CLASSES
    assert len(set(target.tolist())) >= 2 and (target != argmax).any()
    return target.astype(np.int64)
