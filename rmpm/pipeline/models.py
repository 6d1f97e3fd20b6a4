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


class _ChannelsLastMaxPool(torch.autograd.Function):
    """``max_pool2d`` computed on a channels-last copy of its input, gradient returned
    in the input's own (NCHW) layout.

    Why: ATen's NCHW max-pooling kernel is not vectorised over channels; on a
    channels-last tensor the same kernel runs about 4x faster. Max pooling only
    selects values, and both kernels pick the same element of every window (the
    first maximum), so outputs, indices and gradients are the same bits as NCHW
    pooling (tests/test_models.py checks forward and backward). The rest of the
    network stays NCHW, so no other kernel changes.
    """

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode):
        xc = x.contiguous(memory_format=torch.channels_last)
        y, idx = torch.ops.aten.max_pool2d_with_indices(xc, kernel_size, stride, padding,
                                                        dilation, ceil_mode)
        ctx.save_for_backward(xc, idx)
        ctx.args = (kernel_size, stride, padding, dilation, ceil_mode)
        return y.contiguous()

    @staticmethod
    def backward(ctx, grad):
        xc, idx = ctx.saved_tensors
        gx = torch.ops.aten.max_pool2d_with_indices_backward(
            grad.contiguous(memory_format=torch.channels_last), xc, *ctx.args, idx)
        return gx.contiguous(), None, None, None, None, None


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(t) for t in v]


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (same arguments, same numbers, no parameters) that pools
    4-D CPU tensors in channels-last layout, for speed (see
    :class:`_ChannelsLastMaxPool`). Other devices use the standard kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4 or self.return_indices:
            return super().forward(x)
        stride = self.stride if self.stride is not None else self.kernel_size
        return _ChannelsLastMaxPool.apply(x, _pair(self.kernel_size), _pair(stride),
                                          _pair(self.padding), _pair(self.dilation),
                                          bool(self.ceil_mode))


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU())


class SmallCNN(nn.Module):
    """conv(w)-pool-conv(2w)-pool-fc(4w)-fc(classes), BatchNorm after the convs.

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
        self.pool1 = MaxPool2d(2)
        self.conv2 = _conv_block(width, 2 * width)
        self.pool2 = MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Sequential(nn.Linear(2 * width * (h // 4) * (w // 4), 4 * width), nn.ReLU())
        self.drop = nn.Dropout(dropout)
        self.logits = nn.Linear(4 * width, n_classes)
        self.probe_layers = ("conv1", "conv2", "fc", "logits")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
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
    output is a probe layer.
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
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
