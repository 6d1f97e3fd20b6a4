"""Architectures with named probe layers.

Every model here is an ``nn.Module`` whose ``probe_layers`` attribute lists the
names of the sub-modules whose *outputs* the experiments compare (post-ReLU
feature maps and hidden vectors, then the logits). :func:`rmpm.measures.activations.capture`
reads them with forward hooks, so it works for any model a user brings, given layer
names (``dict(model.named_modules())``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._checks import check_choice, check_range

ARCHS = ("mlp", "cnn", "resnet")


class MLP(nn.Module):
    """Two hidden layers of ``width * 8`` units (so width 32 → 256 units)."""

    def __init__(self, in_shape: Sequence[int], n_classes: int, width: int = 32,
                 dropout: float = 0.0):
        super().__init__()
        d = int(torch.tensor(in_shape).prod())
        h = 8 * width
        self.flatten = nn.Flatten()
        self.fc1 = nn.Sequential(nn.Linear(d, h), nn.ReLU())
        self.fc2 = nn.Sequential(nn.Linear(h, h), nn.ReLU())
        self.drop = nn.Dropout(dropout)
        self.logits = nn.Linear(h, n_classes)
        self.probe_layers = ("fc1", "fc2", "logits")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.drop(self.fc2(self.fc1(self.flatten(x)))))


def _channels_last(model: nn.Module) -> nn.Module:
    """Lay the model's 4-D weights out channels-last (NHWC); values unchanged."""
    return model.to(memory_format=torch.channels_last)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """The input in channels-last layout, whatever layout the caller gave.

    Why channels-last: on a CPU, oneDNN's convolutions, batch norm and ATen's max
    pooling are vectorised over channels in this layout; NCHW max pooling is not
    vectorised at all. A conv net trains in 0.7x the CPU time of NCHW and is
    evaluated in 0.73x (benchmarks/bench_worker_env.py). Converting here, inside
    the model, makes its numbers independent of the caller's layout: training,
    evaluation, activation capture and a user's own call compute the same bits.
    """
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class SmallCNN(nn.Module):
    """conv(w)-pool-conv(2w)-pool-fc(4w)-fc(classes), BatchNorm after the convs;
    computed channels-last (see :func:`_nhwc`).

    The classic two-conv network for 28x28 inputs (also takes 32x32); ``width``
    scales every layer. Flattening the last feature map (rather than global
    pooling) matters here: it reaches ~0.86 Fashion-MNIST test accuracy from 10k
    examples in 3 epochs where a global-pooling head stays below 0.77.
    """

    def __init__(self, in_shape: Sequence[int], n_classes: int, width: int = 32,
                 dropout: float = 0.0):
        super().__init__()
        c, h, w = in_shape
        self.conv1 = _conv_block(c, width)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = _conv_block(width, 2 * width)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Sequential(nn.Linear(2 * width * (h // 4) * (w // 4), 4 * width), nn.ReLU())
        self.drop = nn.Dropout(dropout)
        self.logits = nn.Linear(4 * width, n_classes)
        self.probe_layers = ("conv1", "conv2", "fc", "logits")
        _channels_last(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(self.conv2(self.pool1(self.conv1(_nhwc(x)))))
        return self.logits(self.drop(self.fc(self.flatten(x))))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(out)) + self.short(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet-(6n+2) (He et al. 2016, sec. 4.2); n=1 gives ResNet-8.

    Three stages of ``width``, ``2*width``, ``4*width`` channels; each stage's
    output is a probe layer. Computed in NCHW layout (see the note in ``__init__``).
    """

    def __init__(self, in_shape: Sequence[int], n_classes: int, width: int = 16,
                 dropout: float = 0.0, blocks_per_stage: int = 1):
        super().__init__()
        c = in_shape[0]
        self.stem = nn.Sequential(nn.Conv2d(c, width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())

        def stage(cin, cout, stride):
            layers = [BasicBlock(cin, cout, stride)]
            layers += [BasicBlock(cout, cout, 1) for _ in range(blocks_per_stage - 1)]
            return nn.Sequential(*layers)

        self.stage1 = stage(width, width, 1)
        self.stage2 = stage(width, 2 * width, 2)
        self.stage3 = stage(2 * width, 4 * width, 2)
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(dropout)
        self.logits = nn.Linear(4 * width, n_classes)
        self.probe_layers = ("stem", "stage1", "stage2", "stage3", "logits")
        # NCHW, unlike SmallCNN: in the pinned AVX2 mode, the channels-last backward
        # pass of a 1x1 stride-2 convolution (the shortcut) with 2 to 6 input channels
        # corrupts the heap in torch 2.14.1's CPU kernels ("corrupted double-linked
        # list"; a width-4 ResNet, as in paper_cpu's width factor, crashes its worker).

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NCHW whatever the caller's layout, so that the numbers do not depend on it
        x = self.stage3(self.stage2(self.stage1(self.stem(x.contiguous()))))
        return self.logits(self.drop(self.gap(x)))


def build_model(arch: str, in_shape: Sequence[int], n_classes: int, width: int,
                dropout: float = 0.0, seed: int | None = None) -> nn.Module:
    """A fresh model; with ``seed`` its initial weights depend on that seed only.

    The seed goes through a private generator (``torch.random.fork_rng``), so
    building a model never disturbs, nor depends on, the global RNG state.
    """
    check_choice("arch", arch, ARCHS)
    check_range("width", width, 1, integer=True)
    cls = {"mlp": MLP, "cnn": SmallCNN, "resnet": ResNet}[arch]
    if seed is None:
        return cls(in_shape, n_classes, width, dropout)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(in_shape, n_classes, width, dropout)
