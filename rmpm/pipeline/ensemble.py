"""Batched ensemble training: many recipes that differ only in seeds or scalar
hyperparameters, trained together as one "packed" network.

Technique
---------
The M member networks are packed side by side into one network of the same
module tree (so the forward code of :mod:`rmpm.pipeline.models` is reused unchanged):

* ``Conv2d(cin, cout)``     -> ``Conv2d(M*cin, M*cout, groups=M)``: a grouped
  convolution whose group ``m`` is member ``m``; activations carry the members'
  channels side by side, ``(B, M*C, H, W)``;
* ``BatchNorm2d(C)``        -> ``BatchNorm2d(M*C)``: BatchNorm is per channel,
  so with channels packed per member the batch statistics *and* the running
  statistics are automatically per member (no cross-member leakage);
* ``Linear(i, o)``          -> a batched matmul (``baddbmm``) over weights of
  shape ``(M, o, i)`` on activations ``(M, B, i)``;
* ``Flatten``               -> ``(B, M*C, H, W) -> (M, B, C*H*W)`` (each member
  flattened in ``nn.Flatten``'s own order);
* ``Dropout``               -> per-member masks from per-member generators.

Why this rather than ``torch.func.stack_module_state`` + ``functional_call`` +
``vmap``: vmap lowers a convolution with batched weights to exactly this grouped
convolution anyway, but BatchNorm under vmap needs special handling of the
in-place running-statistics update (functorch's documented BatchNorm caveat),
and the functional state has to be threaded through every step. Packing keeps
the stock cuDNN/oneDNN BatchNorm and convolution kernels, works with autocast
and channels_last unchanged, makes every member's slice of a packed tensor a
contiguous block (so packing and unpacking to ``build_model`` state dicts are a
stack and a slice), and lets the optimizer run on one flat buffer.

Optimizer. Members may differ in lr, momentum and weight decay (and follow their
own schedule), so the update is implemented here, vectorised over the member
axis: all parameters are views into one flat buffer, their gradients into a
second one, and each step is a handful of element-wise kernels with per-element
hyperparameters gathered from per-member vectors. The formulas (and their order
of operations) are those of ``torch.optim.AdamW`` (decoupled decay) and
``torch.optim.SGD(nesterov=True)`` (L2 decay) as used by :func:`rmpm.pipeline.train.fit`.

Faithfulness to :func:`rmpm.pipeline.train.fit`. Each member gets the initial weights of
``build_model(..., seed=init_seed)``, its own training subset
(:func:`rmpm.pipeline.train.train_indices`), and the data order, augmentation offsets,
mixup permutations (``torch.Generator().manual_seed(order_seed)``) and mixup
coefficients (``np.random.default_rng(order_seed)``) drawn in exactly the order
``fit`` draws them; its own lr schedule (:func:`rmpm.pipeline.train.lr_at`), weight
decay, label smoothing and mixup alpha. On the CPU in fp32 a member therefore
agrees with ``fit`` up to floating-point rounding (grouped vs. single
convolutions sum in a different order). Dropout masks come from a per-member
generator seeded with ``order_seed + 7919`` like ``fit``'s; on the CPU they are
the same masks as ``fit``'s, on CUDA they differ (``fit`` then uses the fused
dropout kernel, which draws differently), so members with dropout are
equivalent in distribution there, not draw for draw.

The engine's timings are shared: ``metrics["train_seconds"]`` (and the history's
``seconds``) are the group's wall-clock time divided by the number of members;
``group_train_seconds`` is the undivided figure.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from . import data as D
from .models import build_model
from .recipe import Recipe
from .train import (CURVE_TEST_SIZE, DROPOUT_SEED_OFFSET, TrainData, TrainResult, crop_and_flip,
                    crop_padding, final_metrics, history_row, lr_at, prepare, resolve_device,
                    steps_per_epoch, train_indices)

#: Recipe fields that must be equal for recipes to train together. Everything
#: else (the three seeds, bootstrap, lr, momentum, weight_decay,
#: label_smoothing, mixup_alpha, dropout) may differ between members.
#: ``train_size`` stands for the number of training examples (None: the whole
#: split, with or without bootstrap), which fixes the steps per epoch.
BATCH_FIELDS = ("dataset", "arch", "width", "epochs", "batch_size", "optimizer", "schedule",
                "warmup_epochs", "augment", "train_size")

# AdamW's defaults, as fit's torch.optim.AdamW uses them
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


def batch_key(recipe: Recipe) -> tuple:
    """Hashable key: recipes with equal keys can be trained together by :func:`fit_ensemble`.

    A tuple of ``(field, value)`` pairs, in :data:`BATCH_FIELDS` order.
    """
    return tuple((f, getattr(recipe, f)) for f in BATCH_FIELDS)


def check_group(recipes: Sequence[Recipe]) -> None:
    """Raise ``ValueError`` naming the first field on which ``recipes`` cannot train together."""
    if not recipes:
        raise ValueError("an ensemble needs at least one recipe")
    for r in recipes:
        if not isinstance(r, Recipe):
            raise TypeError(f"expected Recipe, got {type(r).__name__}")
    first = batch_key(recipes[0])
    for i, r in enumerate(recipes[1:], 1):
        for (name, a), (_, b) in zip(first, batch_key(r)):
            if a != b:
                raise ValueError(
                    f"recipes cannot train as one ensemble: field {name!r} differs "
                    f"(recipe 0 has {a!r}, recipe {i} has {b!r}); group them with batch_key()")


def group_recipes(recipes: Sequence[Recipe], max_group: int = 32) -> list[list[Recipe]]:
    """Split ``recipes`` into trainable groups: equal :func:`batch_key`, at most ``max_group``
    members each, groups in order of first appearance, members in input order."""
    if not isinstance(max_group, int) or max_group < 1:
        raise ValueError(f"max_group={max_group!r} must be a positive integer")
    by_key: dict[tuple, list[Recipe]] = {}
    for r in recipes:
        by_key.setdefault(batch_key(r), []).append(r)
    return [g[i:i + max_group] for g in by_key.values() for i in range(0, len(g), max_group)]


# ----------------------------------------------------------------------------- packed modules

class PackedLinear(nn.Module):
    """M independent ``nn.Linear`` layers applied to ``(M, B, in)`` activations."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight)  # (M, out, in)
        self.bias = nn.Parameter(bias) if bias is not None else None  # (M, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[0] != self.weight.shape[0]:
            raise ValueError(f"PackedLinear expects (M, B, in) input, got {tuple(x.shape)}")
        wt = self.weight.transpose(1, 2)
        if self.bias is None:
            return torch.bmm(x, wt)
        return torch.baddbmm(self.bias.unsqueeze(1), x, wt)


class PackedFlatten(nn.Module):
    """``(B, M*C, H, W)`` -> ``(M, B, C*H*W)``: ``nn.Flatten`` per member."""

    def __init__(self, members: int):
        super().__init__()
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"PackedFlatten expects a packed (B, M*C, H, W) input, got {tuple(x.shape)}")
        b = x.shape[0]
        return x.reshape(b, self.members, -1).transpose(0, 1)


class PackedDropout(nn.Module):
    """Dropout on ``(M, B, F)`` with member ``m``'s rate and its own generator.

    Reproduces ``F.dropout``'s CPU path (a Bernoulli(1-p) mask, divided by 1-p,
    times the input), so on the CPU a member draws the same masks as ``fit``.
    """

    def __init__(self, ps: Sequence[float], generators: Sequence[torch.Generator]):
        super().__init__()
        self.ps = [float(p) for p in ps]
        self.generators = list(generators)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not any(self.ps):
            return x
        outs = []
        for m, (p, g) in enumerate(zip(self.ps, self.generators)):
            if p == 0:
                outs.append(x[m])
                continue
            noise = torch.empty_like(x[m]).bernoulli_(1 - p, generator=g)
            noise.div_(1 - p)
            outs.append(x[m] * noise)
        return torch.stack(outs)


# layers without parameters that act per channel or per element, hence per member
_PASS_THROUGH = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity)


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Members' tensors stacked, then merged into the leading dim (packed layout)."""
    s = torch.stack([t.detach() for t in tensors])
    return s.reshape(-1, *s.shape[2:]) if s.dim() > 1 else s


def _pack_leaf(mods: list[nn.Module], drop_gens: list[torch.Generator]) -> nn.Module:
    first, m = mods[0], len(mods)
    if isinstance(first, nn.Conv2d):
        if first.padding_mode != "zeros":
            raise NotImplementedError("packed Conv2d supports padding_mode='zeros' only")
        # skip_init: no random initialisation (it would draw from the global RNG)
        conv = skip_init(nn.Conv2d, m * first.in_channels, m * first.out_channels,
                         first.kernel_size, first.stride, first.padding, first.dilation,
                         m * first.groups, bias=first.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(_stack([c.weight for c in mods]))
            if first.bias is not None:
                conv.bias.copy_(_stack([c.bias for c in mods]))
        return conv
    if isinstance(first, nn.BatchNorm2d):
        bn = skip_init(nn.BatchNorm2d, m * first.num_features, first.eps, first.momentum,
                       first.affine, first.track_running_stats)
        with torch.no_grad():
            for name, t in list(bn.named_parameters()) + list(bn.named_buffers()):
                src = [getattr(b, name) for b in mods]
                # num_batches_tracked is a scalar, equal for all members (same steps)
                t.copy_(src[0] if t.dim() == 0 else _stack(src))
        return bn
    if isinstance(first, nn.Linear):
        return PackedLinear(torch.stack([l.weight.detach() for l in mods]).clone(),
                            None if first.bias is None
                            else torch.stack([l.bias.detach() for l in mods]).clone())
    if isinstance(first, nn.Flatten):
        if (first.start_dim, first.end_dim) != (1, -1):
            raise NotImplementedError("packed Flatten supports nn.Flatten() defaults only")
        return PackedFlatten(m)
    if isinstance(first, nn.Dropout):
        return PackedDropout([d.p for d in mods], drop_gens)
    if isinstance(first, _PASS_THROUGH):
        return copy.deepcopy(first)
    raise NotImplementedError(f"no packed version of {type(first).__name__}")


def pack_models(models: Sequence[nn.Module], drop_gens: Sequence[torch.Generator]) -> nn.Module:
    """One packed network computing all ``models`` (same architecture) side by side.

    Input: ``(B, M*C, H, W)`` (see :func:`pack_input`); output: ``(M, B, classes)``.
    The packed network has the same parameter and buffer *names* as each member.
    """
    models = list(models)
    skeleton = copy.deepcopy(models[0])
    for name, mod in list(skeleton.named_modules()):
        if not name or list(mod.children()):
            continue  # containers keep their own forward; only leaves change
        new = _pack_leaf([mm.get_submodule(name) for mm in models], list(drop_gens))
        parent, _, attr = name.rpartition(".")
        setattr(skeleton.get_submodule(parent) if parent else skeleton, attr, new)
    want = set(models[0].state_dict())
    got = set(skeleton.state_dict())
    if want != got:
        raise NotImplementedError(f"could not pack the model: state differs in {sorted(want ^ got)}")
    return skeleton


def unpack_state(packed: nn.Module, template: dict[str, torch.Tensor], m: int,
                 members: int) -> dict[str, torch.Tensor]:
    """Member ``m``'s state dict (CPU, fp32, ``template``'s shapes) from the packed network."""
    out = {}
    for k, t in packed.state_dict().items():
        ref = template[k]
        t = t.detach()
        if ref.dim() == 0:
            out[k] = t.clone().cpu()
        else:
            out[k] = t.reshape(members, -1)[m].reshape(ref.shape).to("cpu", ref.dtype, copy=True)
    return out


def pack_input(x: torch.Tensor) -> torch.Tensor:
    """``(M, B, C, H, W)`` per-member batches -> ``(B, M*C, H, W)``."""
    m, b = x.shape[:2]
    return x.transpose(0, 1).reshape(b, m * x.shape[2], *x.shape[3:])


# ----------------------------------------------------------------------------- optimizer

class _MemberOptimizer:
    """AdamW / nesterov SGD over all members at once, on one flat parameter buffer.

    Every parameter of the packed network becomes a view into ``self.flat`` and
    its gradient a view into ``self.grad``; ``member`` maps each element of the
    buffer to its member, so per-member hyperparameters broadcast with a gather.
    """

    def __init__(self, params: list[nn.Parameter], members: int, recipes: Sequence[Recipe],
                 dev: torch.device):
        self.params = params
        sizes = [p.numel() for p in params]
        total = sum(sizes)
        self.flat = torch.empty(total, device=dev)
        self.grad = torch.zeros(total, device=dev)
        member = []
        off = 0
        self._views = []
        for p, n in zip(params, sizes):
            if n % members:
                raise ValueError(f"parameter of shape {tuple(p.shape)} is not packed over {members} members")
            self.flat[off:off + n].copy_(p.detach().reshape(-1))
            p.data = self.flat[off:off + n].view_as(p)
            p.grad = self.grad[off:off + n].view_as(p)
            self._views.append((off, n))
            member.append(torch.arange(members, device=dev).repeat_interleave(n // members))
            off += n
        self.member = torch.cat(member)
        self.kind = recipes[0].optimizer

        def per_element(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=dev)[self.member]

        if self.kind == "adam":
            self.exp_avg = torch.zeros_like(self.flat)
            self.exp_avg_sq = torch.zeros_like(self.flat)
        else:
            self.buf = torch.zeros_like(self.flat)
            self.wd = per_element([r.weight_decay for r in recipes])
            self.momentum = per_element([r.momentum for r in recipes])

    def zero_grad(self) -> None:
        self.grad.zero_()

    def sync_grads(self) -> None:
        """Autograd accumulates into an existing ``.grad`` in place, so the gradients
        are normally already in the flat buffer; copy them in if some were replaced."""
        for p, (off, n) in zip(self.params, self._views):
            g = p.grad
            if g is None:
                self.grad[off:off + n].zero_()  # an unused parameter: no gradient, like fit
            elif g.data_ptr() != self.grad[off:off + n].data_ptr():
                self.grad[off:off + n].copy_(g.reshape(-1))
            p.grad = self.grad[off:off + n].view_as(p)

    @torch.no_grad()
    def step(self, hp: dict[str, torch.Tensor], row: int, step: int) -> None:
        """One update; ``hp[name][row]`` holds this step's per-member values."""
        member = self.member
        p, g = self.flat, self.grad
        if self.kind == "adam":
            # torch.optim.AdamW (single-tensor path), element-wise per member
            p.mul_(hp["decay"][row][member])
            self.exp_avg.lerp_(g, 1 - _BETA1)
            self.exp_avg_sq.mul_(_BETA2).addcmul_(g, g, value=1 - _BETA2)
            bc2_sqrt = (1 - _BETA2 ** step) ** 0.5
            denom = (self.exp_avg_sq.sqrt() / bc2_sqrt).add_(_EPS)
            p.add_(hp["neg_step_size"][row][member] * self.exp_avg / denom)
        else:
            # torch.optim.SGD(momentum, nesterov=True, weight_decay) with dampening 0;
            # with momentum 0 this is plain SGD, as fit's nesterov=False optimizer
            d = g + self.wd * p
            self.buf.mul_(self.momentum).add_(d)  # first step: 0 * m + d == clone(d)
            d = d + self.momentum * self.buf
            p.sub_(hp["lr"][row][member] * d)


def _hyper_schedule(recipes: Sequence[Recipe], total: int, per_epoch: int,
                    dev: torch.device) -> dict[str, torch.Tensor]:
    """Every step's per-member optimizer scalars, computed in float64 on the host as
    ``fit``'s optimizer computes them, then sent to the device once."""
    lr = np.array([[lr_at(r, s, total, per_epoch) for r in recipes] for s in range(total)])
    out: dict[str, np.ndarray] = {}
    if recipes[0].optimizer == "adam":
        wd = np.array([r.weight_decay for r in recipes])
        t = np.arange(1, total + 1, dtype=np.float64)[:, None]
        out["decay"] = 1 - lr * wd
        out["neg_step_size"] = -(lr / (1 - _BETA1 ** t))
    else:
        out["lr"] = lr
    return {k: torch.tensor(v, dtype=torch.float32, device=dev) for k, v in out.items()}


# ----------------------------------------------------------------------------- data draws

def _epoch_draws(recipes: Sequence[Recipe], idxs: Sequence[torch.Tensor], gens, mix_rngs,
                 per_epoch: int, in_hw: tuple[int, int], dev: torch.device) -> dict[str, Any]:
    """One epoch's random choices for every member, drawn in ``fit``'s order.

    ``fit`` draws, per epoch, ``randperm(n)``; then per batch the augmentation
    offsets (``randint`` dy, dx, then ``rand`` flips) and, with mixup, a Beta
    draw from the numpy generator and ``randperm(batch)``. All on CPU generators,
    so the draws are the same whatever the device.
    """
    r0 = recipes[0]
    n, bs = len(idxs[0]), r0.batch_size
    used = min(n, per_epoch * bs)
    sizes = [min(bs, n - b * bs) for b in range(per_epoch)]
    aug, mixing = r0.augment, [r.mixup_alpha > 0 for r in recipes]
    p = crop_padding(in_hw[0])
    order, dy, dx, flip, lam, jperm = [], [], [], [], [], []
    for r, idx, g, rng, mix in zip(recipes, idxs, gens, mix_rngs, mixing):
        order.append(idx[torch.randperm(n, generator=g)][:used])
        if aug == "none" and not mix:
            lam.append([1.0] * per_epoch)
            jperm.append(torch.cat([torch.arange(s) for s in sizes]))
            continue
        mdy, mdx, mflip, mlam, mj = [], [], [], [], []
        for s in sizes:
            if aug != "none":
                mdy.append(torch.randint(0, 2 * p + 1, (s,), generator=g))
                mdx.append(torch.randint(0, 2 * p + 1, (s,), generator=g))
                if aug == "crop_flip":
                    mflip.append(torch.rand(s, generator=g) < 0.5)
            if mix:
                mlam.append(float(rng.beta(r.mixup_alpha, r.mixup_alpha)))
                mj.append(torch.randperm(s, generator=g))
            else:
                mlam.append(1.0)
                mj.append(torch.arange(s))
        if aug != "none":
            dy.append(torch.cat(mdy))
            dx.append(torch.cat(mdx))
            if aug == "crop_flip":
                flip.append(torch.cat(mflip))
        lam.append(mlam)
        jperm.append(torch.cat(mj))
    lam64 = np.array(lam, dtype=np.float64)  # (M, per_epoch)
    out: dict[str, Any] = {"order": torch.stack(order).to(dev), "sizes": sizes, "pad": p}
    if aug != "none":
        out["dy"], out["dx"] = torch.stack(dy).to(dev), torch.stack(dx).to(dev)
        out["flip"] = torch.stack(flip).to(dev) if aug == "crop_flip" else None
    if any(mixing):
        # fit computes lam * x + (1 - lam) * x[j] with Python floats: 1 - lam in float64
        out["lam"] = torch.tensor(lam64.T, dtype=torch.float32, device=dev)  # (per_epoch, M)
        out["one_minus_lam"] = torch.tensor((1 - lam64).T, dtype=torch.float32, device=dev)
        out["j"] = torch.stack(jperm).to(dev)
    return out


def _augment(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor | None,
             p: int) -> torch.Tensor:
    """:func:`rmpm.pipeline.train.augment` for ``(M, B, C, H, W)`` with given offsets: the same
    zero-padded crop (one gather) and flips."""
    m, b, c, h, w = x.shape
    out = crop_and_flip(x.reshape(m * b, c, h, w), dy.reshape(-1), dx.reshape(-1),
                        None if flip is None else flip.reshape(-1), p)
    return out.reshape(m, b, c, h, w)


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def _evaluate_members(packed: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      index: torch.Tensor, valid: torch.Tensor | None, autocast,
                      channels_last: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-member (accuracy, mean cross-entropy) in eval mode; member ``m`` sees
    ``x[index[m]]`` where ``valid[m]`` (padding elsewhere).

    Summed per chunk in float32 and accumulated in float64, like
    :func:`rmpm.pipeline.train.evaluate_split`; chunks of 1000 per member unless memory asks
    for fewer.
    """
    packed.eval()
    m, length = index.shape
    chunk = max(1, min(1000, 32768 // m))
    loss = torch.zeros(m, dtype=torch.float64, device=x.device)
    correct = torch.zeros(m, dtype=torch.int64, device=x.device)
    for i in range(0, length, chunk):
        ii = index[:, i:i + chunk]
        xx, yy = x[ii], y[ii]
        inp = pack_input(xx)
        if channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with autocast():
            out = packed(inp)
        out = out.float()
        ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), yy.reshape(-1),
                             reduction="none").view_as(yy)
        hit = out.argmax(-1) == yy
        if valid is not None:
            vv = valid[:, i:i + chunk]
            ce, hit = ce * vv, hit & vv
        loss += ce.sum(1).double()
        correct += hit.sum(1)
    count = length if valid is None else valid.sum(1).cpu().numpy()
    return correct.cpu().numpy() / count, loss.cpu().numpy() / count


def _padded(index_lists: Sequence[torch.Tensor], dev: torch.device
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    lengths = [len(i) for i in index_lists]
    if len(set(lengths)) == 1:
        return torch.stack(list(index_lists)).to(dev), None
    top = max(lengths)
    index = torch.zeros(len(index_lists), top, dtype=torch.int64)
    valid = torch.zeros(len(index_lists), top, dtype=torch.bool)
    for m, ix in enumerate(index_lists):
        index[m, :len(ix)] = ix
        valid[m, :len(ix)] = True
    return index.to(dev), valid.to(dev)


# ----------------------------------------------------------------------------- training

@contextlib.contextmanager
def _cudnn_benchmark(on: bool) -> Iterator[None]:
    """Turn cuDNN autotuning on for the block and restore the caller's setting.

    Never in deterministic mode (``cudnn.deterministic``, see :mod:`rmpm.pipeline.determinism`):
    autotuning picks kernels by timing, so two runs could sum in different orders."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = old or (on and not torch.backends.cudnn.deterministic)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def _member_losses(out: torch.Tensor, y: torch.Tensor, y2: torch.Tensor | None,
                   lam: torch.Tensor | None, one_minus_lam: torch.Tensor | None,
                   keep: torch.Tensor, eps_over_k: torch.Tensor) -> torch.Tensor:
    """Per-member loss ``(M,)``: ``F.cross_entropy(out, y, label_smoothing=eps)`` written out
    (``(1 - eps) * nll + eps / K * mean(-sum log p)``, as ATen computes it) so that eps can
    differ per member, and mixed ``lam * CE(y) + (1 - lam) * CE(y[j])`` as in ``fit``."""
    logp = F.log_softmax(out.float(), dim=-1)
    smooth = -logp.sum(-1).mean(1) * eps_over_k

    def ce(target: torch.Tensor) -> torch.Tensor:
        nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).mean(1)
        return keep * nll + smooth

    if y2 is None:
        return ce(y)
    return lam * ce(y) + one_minus_lam * ce(y2)


@dataclass
class _Group:
    """The packed members of one :func:`fit_ensemble` call and what every step needs."""

    recipes: list[Recipe]
    packed: nn.Module
    opt: _MemberOptimizer
    hp: dict[str, torch.Tensor]      # per-step optimizer scalars (see _hyper_schedule)
    keep: torch.Tensor               # 1 - label smoothing, per member
    eps_over_k: torch.Tensor         # label smoothing / classes, per member
    autocast: Any
    channels_last: bool

    @property
    def m(self) -> int:
        return len(self.recipes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = pack_input(x)
        if self.channels_last:
            inp = inp.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return self.packed(inp)                # (M, size, K)


def _train_epoch(g: _Group, data: TrainData, dr: dict[str, Any], bs: int, step: int
                 ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """One epoch of every member over the draws ``dr`` (see :func:`_epoch_draws`);
    returns per-member summed loss and correct counts, examples seen, and the step."""
    dev = data.x_train.device
    run_loss = torch.zeros(g.m, dtype=torch.float64, device=dev)
    run_correct = torch.zeros(g.m, dtype=torch.int64, device=dev)
    seen = 0
    for b, size in enumerate(dr["sizes"]):
        sl = slice(b * bs, b * bs + size)
        bi = dr["order"][:, sl]                      # (M, size)
        x, y = data.x_train[bi], data.y_train[bi]    # (M, size, C, H, W), (M, size)
        if "dy" in dr:
            x = _augment(x, dr["dy"][:, sl], dr["dx"][:, sl],
                         None if dr["flip"] is None else dr["flip"][:, sl], dr["pad"])
        y2 = lam = oml = None
        if "lam" in dr:
            j = dr["j"][:, sl]
            lam, oml = dr["lam"][b], dr["one_minus_lam"][b]
            xj = torch.take_along_dim(x, j[:, :, None, None, None], dim=1)
            x = lam.view(-1, 1, 1, 1, 1) * x + oml.view(-1, 1, 1, 1, 1) * xj
            y2 = torch.take_along_dim(y, j, dim=1)
        out = g.forward(x)
        loss = _member_losses(out, y, y2, lam, oml, g.keep, g.eps_over_k)
        g.opt.zero_grad()
        # members are independent, so the gradient of the sum is each member's own
        loss.sum().backward()
        g.opt.sync_grads()
        step += 1
        g.opt.step(g.hp, step - 1, step)
        with torch.no_grad():
            run_loss += loss.detach().double() * size
            run_correct += (out.detach().argmax(-1) == y).sum(1)
        seen += size
    losses = run_loss.cpu().numpy()
    bad = [i for i in range(g.m) if not math.isfinite(losses[i])]
    if bad:  # fit raises at the end of the epoch; so does the group
        more = f" (and {len(bad) - 1} other member(s))" if len(bad) > 1 else ""
        raise FloatingPointError(f"training diverged (loss {losses[bad[0]]}) for recipe "
                                 f"{g.recipes[bad[0]]}{more}")
    return losses, run_correct.cpu().numpy(), seen, step


def fit_ensemble(recipes: Sequence[Recipe], device: str | torch.device | None = "auto",
                 data: TrainData | None = None, amp: bool | None = None,
                 progress: bool = False, channels_last: bool = False) -> list[TrainResult]:
    """Train ``recipes`` (equal :func:`batch_key`) together; one :class:`TrainResult` each.

    Each result holds an ordinary ``build_model`` network (CPU, eval mode) and
    metrics/history with ``fit``'s keys, plus ``engine="ensemble"``, ``amp``,
    ``channels_last``, ``group_size`` and ``group_train_seconds``.

    ``amp``: bf16 autocast (default: on for CUDA, off elsewhere). ``channels_last``:
    feed convolutions NHWC inputs (CUDA tuning knob; off by default).
    """
    recipes = list(recipes)
    check_group(recipes)
    dev = resolve_device(device)
    amp = (dev.type == "cuda") if amp is None else bool(amp)
    r0, m = recipes[0], len(recipes)
    if data is None:
        data = prepare(r0.dataset, dev)
    elif data.x_train.device != dev:
        data = TrainData(data.x_train.to(dev), data.y_train.to(dev), data.x_test.to(dev),
                         data.y_test.to(dev), data.n_classes, data.in_shape)
    idxs = [train_indices(r, len(data.x_train)) for r in recipes]  # CPU, sorted or natural
    n, bs = len(idxs[0]), r0.batch_size
    per_epoch = steps_per_epoch(n, bs)
    total = per_epoch * r0.epochs
    curve_idx = D.sample_indices(len(data.x_test), min(CURVE_TEST_SIZE, len(data.x_test)), 0)
    k = data.n_classes

    # initial weights: each member exactly as fit builds it, then packed
    members = [build_model(r.arch, data.in_shape, k, r.width, r.dropout, seed=r.init_seed)
               for r in recipes]
    templates = [mm.state_dict() for mm in members]
    # dropout generators must live on the tensors' device (with its index made explicit)
    gen_dev = (torch.device("cuda", torch.cuda.current_device())
               if dev.type == "cuda" and dev.index is None else dev)
    drop_gens = [torch.Generator(device=gen_dev).manual_seed(r.order_seed + DROPOUT_SEED_OFFSET)
                 for r in recipes]
    packed = pack_models(members, drop_gens).to(dev)
    f32 = dict(dtype=torch.float32, device=dev)
    eps = [r.label_smoothing for r in recipes]
    g = _Group(recipes, packed, _MemberOptimizer(list(packed.parameters()), m, recipes, dev),
               _hyper_schedule(recipes, total, per_epoch, dev),
               torch.tensor([1.0 - e for e in eps], **f32), torch.tensor([e / k for e in eps], **f32),
               (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if amp
               else contextlib.nullcontext, channels_last and dev.type == "cuda")
    gens = [torch.Generator().manual_seed(r.order_seed) for r in recipes]
    mix_rngs = [np.random.default_rng(r.order_seed) for r in recipes]
    curve_index = curve_idx.to(dev).expand(m, -1)

    history: list[list[dict[str, float]]] = [[] for _ in recipes]
    step, t0 = 0, time.perf_counter()
    epochs: Any = range(r0.epochs)
    if progress:
        from tqdm.auto import tqdm
        epochs = tqdm(epochs, desc=f"ensemble of {m}", leave=False)
    with _cudnn_benchmark(dev.type == "cuda"):
        for epoch in epochs:
            packed.train()
            dr = _epoch_draws(recipes, idxs, gens, mix_rngs, per_epoch, data.in_shape[-2:], dev)
            losses, correct, seen, step = _train_epoch(g, data, dr, bs, step)
            acc, tl = _evaluate_members(packed, data.x_test, data.y_test, curve_index, None,
                                        g.autocast, g.channels_last)
            elapsed = (time.perf_counter() - t0) / m
            for i in range(m):
                history[i].append(history_row(epoch + 1, float(losses[i] / seen),
                                              float(correct[i] / seen), float(acc[i]),
                                              float(tl[i]), elapsed))
            packed.train()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        group_time = time.perf_counter() - t0
        index, valid = _padded([ix.unique() for ix in idxs], dev)
        tr_acc, tr_loss = _evaluate_members(packed, data.x_train, data.y_train, index, valid,
                                            g.autocast, g.channels_last)
        test_index = torch.arange(len(data.x_test), device=dev).expand(m, -1)
        te_acc, te_loss = _evaluate_members(packed, data.x_test, data.y_test, test_index, None,
                                            g.autocast, g.channels_last)

    results = []
    for i, r in enumerate(recipes):
        model = members[i]
        model.load_state_dict(unpack_state(packed, templates[i], i, m))
        metrics = final_metrics(float(tr_acc[i]), float(tr_loss[i]), float(te_acc[i]),
                                float(te_loss[i]), total, n, group_time / m, dev, "ensemble",
                                amp=amp, channels_last=g.channels_last, group_size=m,
                                group_train_seconds=group_time)
        results.append(TrainResult(model.cpu().eval(), metrics, history[i]))
    return results
