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


def _stock_features(m, x):
    """SmallCNN's conv part computed module by module (the unfused order)."""
    from rmpm.pipeline.models import _nhwc
    return m.pool2(m.conv2(m.pool1(m.conv1(_nhwc(x)))))


@pytest.mark.parametrize("shape,momentum", [((1, 28, 28), 0.1), ((1, 8, 8), 0.1),
                                            ((3, 7, 9), 0.1),    # odd sizes: floor pooling
                                            ((1, 8, 8), None)])  # cumulative running stats
def test_fused_training_block_computes_the_modules_function(shape, momentum):
    """Training pools before BatchNorm's affine map (conv_bn_relu_pool): the same
    outputs, gradients and running statistics as conv -> BN -> ReLU -> pool, up to
    rounding, including channels whose BN weight is negative (the map decreases
    there, so the window's minimum wins) or zero."""
    import copy
    a = build_model("cnn", shape, 10, width=8, seed=0)
    with torch.no_grad():
        a.conv1[1].weight[::3] *= -1
        a.conv2[1].weight[1] = 0
    for bn in (a.conv1[1], a.conv2[1]):
        bn.momentum = momentum
    b = copy.deepcopy(a)
    x = torch.randn(32, *shape, generator=torch.Generator().manual_seed(1))
    y = torch.arange(32) % 10
    for step in range(2):
        fa = a(x)
        feats = _stock_features(b, x)
        fb = b.logits(b.drop(b.fc(b.flatten(feats))))
        for m, out in ((a, fa), (b, fb)):
            m.zero_grad()
            F.cross_entropy(out, y).backward()
        torch.testing.assert_close(fa, fb, rtol=1e-5, atol=1e-5)
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
        for (name, u), v in zip(a.named_buffers(), b.buffers()):
            if u.is_floating_point():
                torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6, msg=name)
            else:
                assert torch.equal(u, v), name
    # the fused node is what trains, and it keeps the channels-last layout
    from rmpm.pipeline.models import conv_bn_relu_pool, _nhwc
    h = conv_bn_relu_pool(a.conv1, _nhwc(x))
    assert type(h.grad_fn).__name__ == "_ConvBNReLUPoolBackward"
    assert h.is_contiguous(memory_format=CL)


def test_eval_folds_batchnorm_and_probes_see_the_same_maps():
    """Eval mode computes conv+BN as one convolution and pools by two maxima: the
    probe layer still outputs the post-ReLU map, equal to the modules' up to rounding,
    and the pooling is max_pool2d's bits (ties included)."""
    from rmpm.measures.activations import capture
    from rmpm.pipeline.models import MaxPool2x2
    m = build_model("cnn", (1, 28, 28), 10, width=8, seed=0)
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for _ in range(3):
            m(x)  # non-trivial running statistics
    m.eval()
    with torch.no_grad():
        c1 = m.conv1
        ref = torch.relu(F.batch_norm(c1[0](x.contiguous(memory_format=CL)), c1[1].running_mean,
                                      c1[1].running_var, c1[1].weight, c1[1].bias, False,
                                      eps=c1[1].eps))
    acts = capture(m, x, ["conv1"])
    torch.testing.assert_close(acts["conv1"], ref, rtol=1e-5, atol=1e-5)
    pool = MaxPool2x2()
    for shape in ((16, 8, 28, 28), (5, 3, 7, 9)):
        z = _inputs(shape, 0).contiguous(memory_format=CL)
        with torch.no_grad():
            assert torch.equal(pool(z), F.max_pool2d(z, 2))
