"""Architectures: channels-last computation (pooling bit-identical to NCHW pooling;
numbers independent of the caller's input layout)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rmpm.pipeline.models import build_model

CL = torch.channels_last


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
def test_channels_last_pooling_equals_nchw_pooling_forward_and_backward(shape, kw):
    """Max pooling selects; both layouts' kernels pick the same element of every
    window (ties included), so the vectorised channels-last pooling the CNN uses
    gives the NCHW kernel's outputs and gradients bit for bit."""
    x = _inputs(shape, 0)
    g = torch.randn(F.max_pool2d(x, **kw).shape, generator=torch.Generator().manual_seed(1))
    a = x.clone().requires_grad_()
    ya = F.max_pool2d(a, **kw)
    ya.backward(g)
    b = x.clone().contiguous(memory_format=CL).requires_grad_()
    yb = F.max_pool2d(b, **kw)
    yb.backward(g.contiguous(memory_format=CL))
    assert yb.is_contiguous(memory_format=CL)  # really the channels-last kernel
    assert torch.equal(ya, yb)
    assert torch.equal(a.grad, b.grad)


def test_all_zero_windows_send_the_gradient_to_the_same_element():
    grads = []
    for fmt in (torch.contiguous_format, CL):
        x = torch.zeros(2, 3, 6, 6).contiguous(memory_format=fmt).requires_grad_()
        F.max_pool2d(x, 2).sum().backward()
        grads.append(x.grad)
    assert torch.equal(*grads)
    assert grads[0].sum() == 2 * 3 * 9  # one element of each window gets it


@pytest.mark.parametrize("arch,shape", [("cnn", (1, 28, 28)), ("resnet", (3, 16, 16))])
def test_conv_nets_give_the_same_bits_whatever_the_input_layout(arch, shape):
    m = build_model(arch, shape, 10, width=4, seed=0)
    convs = [p for p in m.parameters() if p.dim() == 4]
    # the CNN computes channels-last; the ResNet NCHW (a channels-last kernel of its
    # shortcut corrupts memory, see models.ResNet)
    layout = CL if arch == "cnn" else torch.contiguous_format
    assert convs and all(p.is_contiguous(memory_format=layout) for p in convs)
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(2))
    y = torch.arange(8) % 10
    outs, grads = [], []
    for inp in (x, x.contiguous(memory_format=CL)):
        m.zero_grad()
        out = m(inp)
        F.cross_entropy(out, y).backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in m.parameters()])
    assert torch.equal(*outs)
    assert all(torch.equal(u, v) for u, v in zip(*grads))


def test_initial_weights_do_not_depend_on_the_layout():
    """The layout is applied after initialisation: a model's starting point is the
    one its seed always drew."""
    torch.manual_seed(0)
    ref = build_model("cnn", (1, 28, 28), 10, width=4, seed=3).state_dict()
    again = build_model("cnn", (1, 28, 28), 10, width=4, seed=3).state_dict()
    assert all(torch.equal(ref[k], again[k]) for k in ref)
    # the first draw is the first conv's weight, as for an NCHW network
    torch.manual_seed(3)
    conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)
    assert torch.equal(conv.weight, ref["conv1.0.weight"])


@pytest.mark.trains
def test_a_narrow_resnet_trains_and_evaluates_without_corrupting_memory():
    """A width-4 ResNet (paper_cpu's smallest width) in a fresh process in the pinned
    deterministic environment, under glibc's strictest heap checks: it crashed there
    while the ResNet computed channels-last."""
    import os
    import subprocess
    import sys
    from rmpm.pipeline.determinism import worker_env
    code = ("import torch, torch.nn.functional as F\n"
            "from rmpm.pipeline.models import build_model\n"
            "m = build_model('resnet', (1, 8, 8), 10, width=4, seed=0)\n"
            "x, y = torch.randn(64, 1, 8, 8), torch.arange(64) % 10\n"
            "for _ in range(20):\n"
            "    F.cross_entropy(m(x), y).backward()\n"
            "print('ok')\n")
    env = {**os.environ, **worker_env(True), "MALLOC_CHECK_": "3"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
