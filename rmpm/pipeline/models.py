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
import torch.nn.functional as F
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


def _conv_block(cin: int, cout: int) -> "ConvBlock":
    return ConvBlock(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                     nn.ReLU())


def _folded(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of the one convolution that computes ``bn(conv(x))`` in eval mode."""
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    weight = conv.weight * scale.view(-1, 1, 1, 1)
    return weight.contiguous(memory_format=torch.channels_last), bn.bias - bn.running_mean * scale


class ConvBlock(nn.Sequential):
    """conv - BatchNorm - ReLU (an ``nn.Sequential``: the same state-dict keys and probe
    output as before). In eval mode the BatchNorm, a fixed per-channel affine map
    there, is folded into the convolution's weights and bias, and the ReLU works in
    place: one pass over the feature map instead of three. Training mode computes the
    three modules as they are (SmallCNN's CPU training fuses the block with its
    pooling instead, see :func:`conv_bn_relu_pool`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn, relu = self
        if self.training or not bn.track_running_stats:
            return relu(bn(conv(x)))
        w, b = _folded(conv, bn)
        return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups).relu_()


class MaxPool2x2(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` whose forward, where no gradient is taken (evaluation),
    is two element-wise maxima over views of the channels-last map: rows, then
    columns. A maximum selects, so the outputs are ``max_pool2d``'s bits (NaNs
    propagate in both); it is 4x faster than the pooling kernel, whose indices only a
    backward pass needs."""

    def __init__(self):
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if (torch.is_grad_enabled() and x.requires_grad) or h % 2 or w % 2 \
                or not x.is_contiguous(memory_format=torch.channels_last):
            return super().forward(x)
        rows = x.permute(0, 2, 3, 1).reshape(n * h // 2, 2, w * c)      # a view
        cols = torch.maximum(rows[:, 0], rows[:, 1]).view(-1, 2, c)
        return torch.maximum(cols[:, 0], cols[:, 1]).view(n, h // 2, w // 2, c).permute(0, 3, 1, 2)


def _fusable(x: torch.Tensor) -> bool:
    """SmallCNN trains through :func:`conv_bn_relu_pool` on the CPU in fp32; on a GPU
    (cuDNN's kernels) and under autocast it computes its modules as they are."""
    return x.device.type == "cpu" and x.dtype == torch.float32 \
        and not torch.is_autocast_enabled("cpu")


def conv_bn_relu_pool(block: ConvBlock, x: torch.Tensor) -> torch.Tensor:
    """``max_pool2d(block(x), 2)`` in training mode as one autograd node, updating
    the BatchNorm's running statistics as ``nn.BatchNorm2d`` does."""
    conv, bn, _ = block
    bn.num_batches_tracked.add_(1)
    momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
    return _ConvBNReLUPool.apply(x, conv.weight, bn.weight, bn.bias, bn.running_mean,
                                 bn.running_var, momentum, bn.eps, conv)


def _view(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)


class _ConvBNReLUPool(torch.autograd.Function):
    """conv -> BatchNorm (batch statistics) -> ReLU -> 2x2 max pool, pooling first.

    BatchNorm's affine map is monotone in each channel (increasing where its weight
    is >= 0, decreasing where < 0) and ReLU commutes with a maximum, so
    ``pool(relu(bn(c))) = relu(bn(pool(+-c)))``: the block pools the convolution's
    output (negated in channels whose BatchNorm weight is negative) and applies the
    affine map and the ReLU to a quarter of the values. The backward pass is
    BatchNorm's, written out: its two per-channel sums are over the pooled winners
    (the only inputs with a gradient), and the gradient of the convolution's output
    is ``a * c + b`` with per-channel ``a`` and ``b``, plus ``scale * g`` at each
    window's winner (written by one scatter).
    Why: in the stock order a default training step spends about 30% of its time in
    BatchNorm, ReLU and pooling passes over the full-resolution map
    (``benchmarks/bench_train_speed.py --profile``). Same mathematics, other rounding;
    a tie in a pooling window (an exact equality) goes to the first element of the
    window in both orders unless the affine map's rounding creates the tie.
    """

    @staticmethod
    def forward(ctx, x, weight, gamma, beta, running_mean, running_var, momentum, eps, conv):
        c = F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        c = c.contiguous(memory_format=torch.channels_last)  # a no-op for SmallCNN's layers
        # the batch's mean and biased variance; updates the running statistics like
        # nn.BatchNorm2d (unbiased variance, the same momentum)
        mean, var = torch.batch_norm_update_stats(c, running_mean, running_var, momentum)
        invstd = torch.rsqrt(var + eps)
        scale = gamma * invstd
        negative = gamma < 0
        if bool(negative.any()):
            sign = _view(torch.where(negative, -1.0, 1.0))
            pooled, idx = F.max_pool2d_with_indices(c * sign, 2)
            pooled = pooled * sign      # the winners' own values of c
        else:
            pooled, idx = F.max_pool2d_with_indices(c, 2)
        out = torch.addcmul(_view(beta - mean * scale), pooled, _view(scale)).clamp_min_(0)
        ctx.save_for_backward(x, weight, gamma, c, mean, invstd, pooled, idx, out)
        ctx.conv = conv
        return out

    @staticmethod
    def backward(ctx, g):
        x, weight, gamma, c, mean, invstd, pooled, idx, out = ctx.saved_tensors
        conv = ctx.conv
        n = c.shape[0] * c.shape[2] * c.shape[3]   # values per channel in the batch
        g = torch.ops.aten.threshold_backward(g, out, 0)        # through the ReLU
        sum_g = g.sum((0, 2, 3))                                 # d loss / d beta
        dot = ((pooled - _view(mean)) * g).sum((0, 2, 3))        # sum g * (c - mean)
        scale = gamma * invstd
        k = dot * invstd * invstd / n
        a, b = -scale * k, scale * (mean * k - sum_g / n)
        # d loss / d c: a * c + b everywhere, plus scale * g at each window's winner
        dc = torch.addcmul(_view(b), c, _view(a))
        winners = torch.addcmul(torch.addcmul(_view(b), pooled, _view(a)), g, _view(scale))
        batch, channels = c.shape[:2]
        dc.permute(0, 2, 3, 1).view(batch, -1, channels).scatter_(   # (N, H*W, C) views
            1, idx.permute(0, 2, 3, 1).reshape(batch, -1, channels),
            winners.permute(0, 2, 3, 1).reshape(batch, -1, channels))
        dx, dw, _ = torch.ops.aten.convolution_backward(
            dc, x, weight, None, conv.stride, conv.padding, conv.dilation, False, [0, 0],
            conv.groups, [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        return dx, dw, dot * invstd, sum_g, None, None, None, None, None


class SmallCNN(nn.Module):
    """conv(w)-pool-conv(2w)-pool-fc(4w)-fc(classes), BatchNorm after the convs;
    computed channels-last (see :func:`_nhwc`). Training on the CPU computes each
    conv block with its pooling as one fused step (:func:`conv_bn_relu_pool`);
    evaluation folds BatchNorm into the convolutions (:class:`ConvBlock`).

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
        self.pool1 = MaxPool2x2()
        self.conv2 = _conv_block(width, 2 * width)
        self.pool2 = MaxPool2x2()
        self.flatten = nn.Flatten()
        self.fc = nn.Sequential(nn.Linear(2 * width * (h // 4) * (w // 4), 4 * width), nn.ReLU())
        self.drop = nn.Dropout(dropout)
        self.logits = nn.Linear(4 * width, n_classes)
        self.probe_layers = ("conv1", "conv2", "fc", "logits")
        _channels_last(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _nhwc(x)
        if self.training and _fusable(x):
            x = conv_bn_relu_pool(self.conv2, conv_bn_relu_pool(self.conv1, x))
        else:
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
