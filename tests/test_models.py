"""Architectures: the channels-last max pooling gives the same bits as NCHW pooling."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rmpm.pipeline.models import MaxPool2d, build_model


def _inputs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    # ReLU outputs: half the values are exact zeros, so many windows tie; rounding to
    # a coarse grid adds ties among positive values too
    x = torch.relu(torch.randn(shape, generator=g))
    x[..., ::3, :] = (x[..., ::3, :] * 4).round() / 4
    return x


@pytest.mark.parametrize("shape,kw", [
    ((16, 8, 28, 28), dict(kernel_size=2)),
    ((5, 3, 7, 9), dict(kernel_size=2)),                      # odd sizes: last row/col dropped
    ((4, 6, 11, 11), dict(kernel_size=2, ceil_mode=True)),
    ((4, 6, 12, 12), dict(kernel_size=3, stride=2, padding=1)),  # overlapping windows
    ((3, 4, 10, 10), dict(kernel_size=(2, 3), stride=(2, 1), dilation=(1, 2))),
])
def test_channels_last_pooling_equals_nchw_forward_and_backward(shape, kw):
    x = _inputs(shape, 0)
    g = torch.randn(F.max_pool2d(x, **kw).shape, generator=torch.Generator().manual_seed(1))
    a = x.clone().requires_grad_()
    ya = F.max_pool2d(a, **kw)
    ya.backward(g)
    b = x.clone().requires_grad_()
    yb = MaxPool2d(**kw)(b)
    yb.backward(g)
    assert yb.is_contiguous() and b.grad.is_contiguous()  # NCHW out, NCHW gradient
    assert torch.equal(ya, yb)
    assert torch.equal(a.grad, b.grad)


def test_all_zero_windows_send_the_gradient_to_the_same_element():
    x = torch.zeros(2, 3, 6, 6, requires_grad=True)
    F.max_pool2d(x, 2).sum().backward()
    want = x.grad.clone()
    x.grad = None
    MaxPool2d(2)(x).sum().backward()
    assert torch.equal(want, x.grad)
    assert want.sum() == 2 * 3 * 9  # one element of each window gets it


def test_a_training_step_of_the_cnn_is_bit_identical_with_either_pooling():
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    y = torch.arange(32) % 10
    grads = []
    for pool in (torch.nn.MaxPool2d, MaxPool2d):
        m = build_model("cnn", (1, 28, 28), 10, width=4, seed=0)
        m.pool1, m.pool2 = pool(2), pool(2)
        F.cross_entropy(m(x), y).backward()
        grads.append([p.grad for p in m.parameters()])
    assert all(torch.equal(u, v) for u, v in zip(*grads))
