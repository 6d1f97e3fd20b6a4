"""Activations of named layers of any torch model: what the similarity measures
compare. Knows nothing of how the model was trained."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


@torch.no_grad()
def capture(model: nn.Module, x: torch.Tensor, layers: Sequence[str] | None = None,
            batch_size: int = 1000) -> dict[str, torch.Tensor]:
    """Outputs of the named sub-modules of ``model`` on inputs ``x``, in eval mode.

    ``layers`` defaults to ``model.probe_layers``. Returns a dict layer ->
    tensor of shape (N, ...) on the CPU, in float32. The model's train/eval
    mode is restored afterwards.
    """
    if layers is None:
        layers = getattr(model, "probe_layers", None)
        if layers is None:
            raise ValueError("layers must be given for a model without a probe_layers attribute")
    modules = dict(model.named_modules())
    missing = [l for l in layers if l not in modules]
    if missing:
        raise ValueError(f"layers {missing} not in the model; available: "
                         f"{', '.join(n for n in modules if n)}")
    out: dict[str, list[torch.Tensor]] = {l: [] for l in layers}
    hooks = [modules[l].register_forward_hook(
        lambda _m, _i, o, l=l: out[l].append(o.detach().float().cpu())) for l in layers]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {l: torch.cat(v) for l, v in out.items()}
