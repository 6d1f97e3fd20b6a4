"""Out-of-distribution test sets: seeded image corruptions at five severities.

In the spirit of MNIST-C and CIFAR-10-C, but generated on the fly from the
i.i.d. test images, so that every machine builds bit-for-bit the same OOD sets
without downloading anything. Labels are untouched: a corrupted image keeps
the label of the image it came from, so OOD accuracy is defined.

Severity table
--------------
One parameter per corruption, monotone in the severity (larger = stronger
shift). Lengths are in pixels of a 28-pixel image and are scaled by
``min(H, W) / 28`` for other sizes (so 32x32 CIFAR images get slightly larger
shifts and 8x8 digits much smaller ones, keeping the *relative* strength).

==================  ==========================================  ===================================
corruption          parameter (unit)                            severity 1 .. 5
==================  ==========================================  ===================================
gaussian_noise      std of added N(0, s^2) noise (intensity)    0.08  0.16  0.26  0.38  0.52
shot_noise          photons at intensity 1, x ~ Poisson(l x)/l  60    25    12    6     3
impulse_noise       fraction of values set to 0 or 1            0.03  0.06  0.10  0.16  0.24
gaussian_blur       std of the Gaussian kernel (px)             0.6   0.9   1.2   1.6   2.1
contrast            factor c: x -> m + c (x - m), m image mean  0.60  0.45  0.32  0.20  0.12
brightness          intensity added to every value              0.10  0.20  0.30  0.40  0.50
rotate              angle, random sign per image (degrees)      10    20    30    45    60
translate           shift length, random direction (px)         2     3.5   5     6.5   8
zoom                scale factor, zoom in or out at random      1.15  1.30  1.45  1.65  1.90
elastic             RMS displacement of a smooth field (px)     0.5   0.8   1.2   1.6   2.1
==================  ==========================================  ===================================

Geometric corruptions resample with bilinear ``grid_sample`` and fill what
comes from outside the image with 0 (black), as MNIST-C's translations do.
The elastic field is uniform noise smoothed by a Gaussian of std 3 px,
rescaled per image to the RMS above.

Determinism
-----------
Each call draws its randomness from one CPU ``torch.Generator`` seeded from a
SHA-256 hash of ``(seed, kind)``; random tensors are made on the CPU and moved
to ``x``'s device, so CPU and GPU runs corrupt alike. The severity is left out
of the hash on purpose (common random numbers): an image gets the same noise
pattern, rotation sign, shift direction, zoom direction and displacement field
at every severity, only scaled up, so a curve over severities compares like
with like and is monotone image by image, not just on average.

The corruption of an image depends on (seed, kind, severity, its index in the
batch *and the batch size*): corrupt a whole split once (as :func:`ood_sets`
does) and index the result, rather than corrupting subsets separately.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Callable

import torch
import torch.nn.functional as F

from .._checks import check_choice, check_range
from .data import DataSplit, _generator

SEVERITIES = (1, 2, 3, 4, 5)

#: kind -> (parameter description, values for severities 1..5); see the module docstring.
SEVERITY_TABLE: dict[str, tuple[str, tuple[float, ...]]] = {
    "gaussian_noise": ("noise std (intensity)", (0.08, 0.16, 0.26, 0.38, 0.52)),
    "shot_noise": ("photons at intensity 1", (60, 25, 12, 6, 3)),
    "impulse_noise": ("fraction of values set to 0 or 1", (0.03, 0.06, 0.10, 0.16, 0.24)),
    "gaussian_blur": ("kernel std (px at 28x28)", (0.6, 0.9, 1.2, 1.6, 2.1)),
    "contrast": ("contrast factor", (0.60, 0.45, 0.32, 0.20, 0.12)),
    "brightness": ("added intensity", (0.10, 0.20, 0.30, 0.40, 0.50)),
    "rotate": ("angle (degrees, random sign)", (10, 20, 30, 45, 60)),
    "translate": ("shift (px at 28x28, random direction)", (2.0, 3.5, 5.0, 6.5, 8.0)),
    "zoom": ("scale factor (in or out at random)", (1.15, 1.30, 1.45, 1.65, 1.90)),
    "elastic": ("RMS displacement (px at 28x28)", (0.5, 0.8, 1.2, 1.6, 2.1)),
}
CORRUPTIONS = tuple(SEVERITY_TABLE)

_REFERENCE_SIDE = 28.0
_ELASTIC_SMOOTHING_PX = 3.0


# ----------------------------------------------------------------------------- helpers

def _cpu_draw(fn: Callable[..., torch.Tensor], *args, like: torch.Tensor, **kwargs) -> torch.Tensor:
    """Draw on the CPU (the generator lives there) and move to ``like``'s device and dtype."""
    return fn(*args, **kwargs).to(device=like.device, dtype=like.dtype)


def _px_scale(x: torch.Tensor) -> float:
    return min(x.shape[-2:]) / _REFERENCE_SIDE


def _gaussian_kernel(sigma: float, dtype, device) -> torch.Tensor:
    radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every channel; edges replicated so borders don't darken."""
    n, c, h, w = x.shape
    k = _gaussian_kernel(sigma, x.dtype, x.device)
    r = (k.numel() - 1) // 2
    flat = x.reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample each image with its own affine map (output -> input, normalised coords)."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _affine(x: torch.Tensor, linear_px: torch.Tensor, shift_px: torch.Tensor) -> torch.Tensor:
    """Affine maps given in pixel units, turned into ``affine_grid``'s normalised ones.

    ``linear_px`` (N, 2, 2) and ``shift_px`` (N, 2) map output pixel offsets from
    the centre to input ones; the conversion keeps non-square images undistorted.
    """
    h, w = x.shape[-2:]
    s = torch.tensor([2.0 / w, 2.0 / h], dtype=linear_px.dtype)
    theta = torch.empty(x.shape[0], 2, 3, dtype=linear_px.dtype)
    theta[:, :, :2] = s.view(1, 2, 1) * linear_px / s.view(1, 1, 2)
    theta[:, :, 2] = s.view(1, 2) * shift_px
    return _warp(x, theta.to(device=x.device, dtype=x.dtype))


def _random_signs(n: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, (n,), generator=g).to(torch.float64) * 2 - 1


# ----------------------------------------------------------------------------- corruptions
# Each takes (x float in [0,1] on any device, parameter, CPU generator) and may
# return values outside [0, 1]; corrupt() clips.

def _gaussian_noise(x, sigma, g):
    return x + sigma * _cpu_draw(torch.randn, x.shape, generator=g, like=x)


def _shot_noise(x, photons, g):
    rate = (x.detach().to("cpu", torch.float32).clamp(0, 1) * photons)
    return _cpu_draw(torch.poisson, rate, generator=g, like=x) / photons


def _impulse_noise(x, amount, g):
    u = torch.rand(x.shape, generator=g)
    hit = (u < amount).to(x.device)
    # the same uniform decides salt vs pepper, so one draw suffices
    salt = (u < amount / 2).to(device=x.device, dtype=x.dtype)
    return torch.where(hit, salt, x)


def _gaussian_blur(x, sigma_px, g):
    return _blur(x, sigma_px * _px_scale(x))


def _contrast(x, factor, g):
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean + factor * (x - mean)


def _brightness(x, delta, g):
    return x + delta


def _rotate(x, degrees, g):
    n = x.shape[0]
    a = math.radians(degrees) * _random_signs(n, g)
    c, s = torch.cos(a), torch.sin(a)
    linear = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    return _affine(x, linear, torch.zeros(n, 2, dtype=torch.float64))


def _translate(x, shift_px, g):
    n = x.shape[0]
    phi = torch.rand(n, generator=g, dtype=torch.float64) * (2 * math.pi)
    d = shift_px * _px_scale(x)
    # output pixel p shows input pixel p - d: the content moves by +d
    shift = -d * torch.stack([torch.cos(phi), torch.sin(phi)], -1)
    return _affine(x, torch.eye(2, dtype=torch.float64).expand(n, 2, 2), shift)


def _zoom(x, factor, g):
    n = x.shape[0]
    # zoom in (content grows by `factor`) or out (shrinks by it): sample at p / z
    z = factor ** _random_signs(n, g)
    linear = torch.eye(2, dtype=torch.float64) / z.view(n, 1, 1)
    return _affine(x, linear, torch.zeros(n, 2, dtype=torch.float64))


def _elastic(x, rms_px, g):
    n, _, h, w = x.shape
    scale = _px_scale(x)
    field = torch.rand((n, 2, h, w), generator=g) * 2 - 1
    field = _blur(field, _ELASTIC_SMOOTHING_PX * scale)
    rms = field.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
    disp_px = field * (rms_px * scale / rms)
    # pixels -> normalised coordinates (x uses the width, y the height)
    disp = disp_px.permute(0, 2, 3, 1) * torch.tensor([2.0 / w, 2.0 / h])
    identity = torch.eye(2, 3).expand(n, 2, 3)
    grid = F.affine_grid(identity, [n, 1, h, w], align_corners=False) + disp
    grid = grid.to(device=x.device, dtype=x.dtype)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


_FUNCTIONS = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise, "gaussian_blur": _gaussian_blur,
    "contrast": _contrast, "brightness": _brightness, "rotate": _rotate,
    "translate": _translate, "zoom": _zoom, "elastic": _elastic,
}
assert set(_FUNCTIONS) == set(CORRUPTIONS)

#: corruptions whose output depends on the seed
RANDOM_CORRUPTIONS = tuple(k for k in CORRUPTIONS if k not in ("gaussian_blur", "contrast", "brightness"))


# ----------------------------------------------------------------------------- public API

def _check_kind_severity(kind: str, severity: int) -> None:
    check_choice("kind", kind, CORRUPTIONS)
    # bools compare equal to 0/1 and 2.0 to 2: accept only the integers themselves
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        allowed = ", ".join(str(s) for s in SEVERITIES)
        raise ValueError(f"severity={severity!r} is not allowed; choose one of: {allowed}")


def _as_float_images(x) -> torch.Tensor:
    if isinstance(x, DataSplit):
        x = x.x
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be an image tensor of shape (N, C, H, W); got {shape}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise ValueError(f"x must be uint8 or float in [0, 1]; got dtype {x.dtype}")
    return x


def corrupt(x: torch.Tensor, kind: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Corrupt a batch of images.

    ``x``: float in [0, 1] (or uint8, or a :class:`~rmpm.pipeline.data.DataSplit`) of
    shape (N, C, H, W), on any device. Returns a new float tensor of the same
    shape and device, clipped to [0, 1]. ``kind`` is one of
    :data:`CORRUPTIONS`, ``severity`` one of :data:`SEVERITIES`; see the
    module docstring for what each severity means and for the determinism
    guarantee.
    """
    _check_kind_severity(kind, severity)
    check_range("seed", seed, 0, integer=True)
    x = _as_float_images(x)
    if x.shape[0] == 0:
        return x.clone()
    # the severity is deliberately not hashed: see "Determinism" above
    g = _generator("corrupt", seed, kind)
    value = SEVERITY_TABLE[kind][1][severity - 1]
    with torch.no_grad():
        return _FUNCTIONS[kind](x, value, g).clamp(0.0, 1.0)


def severity_table() -> list[dict]:
    """The severity table as rows (kind, parameter, s1..s5), e.g. for ``pandas.DataFrame``."""
    return [{"corruption": k, "parameter": desc, **{f"s{s}": v for s, v in zip(SEVERITIES, vals)}}
            for k, (desc, vals) in SEVERITY_TABLE.items()]


def gallery(x, kinds: Iterable[str] = CORRUPTIONS, severities: Iterable[int] = SEVERITIES,
            index: int = 0, seed: int = 0):
    """A figure with one image under every corruption (rows) and severity (columns).

    The first column is the clean image. The whole batch ``x`` is corrupted so
    that the picture shows exactly what ``corrupt(x, kind, severity, seed=seed)`` gives at
    row ``index``; pass a small batch if only the picture matters.
    """
    import matplotlib.pyplot as plt

    kinds, severities = tuple(kinds), tuple(severities)
    for k in kinds:
        for s in severities:
            _check_kind_severity(k, s)
    xf = _as_float_images(x)
    if not -xf.shape[0] <= index < xf.shape[0]:
        raise ValueError(f"index={index} is outside the batch of {xf.shape[0]} images")

    def show(ax, img):
        img = img.detach().cpu()
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(img.permute(1, 2, 0).numpy(), vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])

    ncols = len(severities) + 1
    fig, axes = plt.subplots(len(kinds), ncols, figsize=(1.3 * ncols + 1.2, 1.3 * len(kinds)),
                             squeeze=False)
    for r, kind in enumerate(kinds):
        show(axes[r, 0], xf[index])
        axes[r, 0].set_ylabel(kind, rotation=0, ha="right", va="center", fontsize=8)
        for c, sev in enumerate(severities, start=1):
            show(axes[r, c], corrupt(xf, kind, sev, seed=seed)[index])
            if r == 0:
                axes[r, c].set_title(f"severity {sev}", fontsize=8)
    axes[0, 0].set_title("clean", fontsize=8)
    fig.tight_layout()
    return fig
