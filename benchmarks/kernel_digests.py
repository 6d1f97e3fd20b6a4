"""Which kernel gives other bits on another CPU: SHA-256 of single ops in rmpm's
deterministic worker environment, to compare between machines.

Deterministic mode repeats its bits on one kind of CPU but not across CPU makers
(README, "Same numbers on every machine"). Each op here runs on fixed seeded inputs
in a fresh interpreter started with ``rmpm.pipeline.determinism.kernel_env()`` (the
worker's pins and the notebook kernels' numpy/OpenBLAS ones);
run it on two machines and compare the two JSON files op by op:

    python benchmarks/kernel_digests.py --out here.json
    python benchmarks/kernel_digests.py --compare benchmarks/kernel_digests_intel_xeon.json

The ops: matrix products of the shapes a SmallCNN/MLP step uses (``torch.mm``,
``F.linear`` forward and backward), convolutions with oneDNN on and off, BatchNorm,
an Adam step, and numpy's float64 matmul and SVD (the similarity measures').
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _ops() -> dict[str, str]:
    import numpy as np
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(1)

    def h(t) -> str:
        a = t.detach().contiguous().numpy() if isinstance(t, torch.Tensor) else np.ascontiguousarray(t)
        return hashlib.sha256(a.tobytes()).hexdigest()[:16]

    g = torch.Generator().manual_seed(0)
    def r(*shape, requires_grad=False):
        return torch.randn(*shape, generator=g).requires_grad_(requires_grad)
    out = {}
    for m, k, n in ((128, 64, 10), (128, 784, 128), (128, 1152, 64), (1000, 128, 10)):
        a, b = r(m, k), r(k, n)
        out[f"mm {m}x{k}x{n}"] = h(a @ b)
    x, w, bias = r(128, 256, requires_grad=True), r(64, 256, requires_grad=True), r(64)
    y = F.linear(x, w, bias)
    y.backward(r(128, 64))
    out["linear forward"], out["linear grad x"], out["linear grad w"] = h(y), h(x.grad), h(w.grad)
    img, ker = r(128, 16, 14, 14), r(32, 16, 3, 3)
    for mkldnn in (True, False):
        torch.backends.mkldnn.enabled = mkldnn
        for fmt in ("nchw", "channels_last"):
            i = img.contiguous(memory_format=torch.channels_last) if fmt == "channels_last" else img
            i = i.clone().requires_grad_(True)
            k = ker.clone().requires_grad_(True)
            c = F.conv2d(i, k, padding=1)
            c.backward(torch.ones_like(c))
            tag = f"conv2d {fmt} mkldnn={'on' if mkldnn else 'off'}"
            out[tag], out[tag + " grad w"] = h(c), h(k.grad)
    torch.backends.mkldnn.enabled = True
    bn = torch.nn.BatchNorm2d(16).train()
    out["batchnorm train"] = h(bn(img))
    p = torch.nn.Parameter(r(1000))
    opt = torch.optim.Adam([p], lr=1e-3)
    p.grad = r(1000)
    opt.step()
    out["adam step"] = h(p)
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((500, 128)), rng.standard_normal((128, 96))
    out["numpy matmul f64"] = h(A @ B)
    out["numpy svd f64"] = h(np.linalg.svd(A, compute_uv=False))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="write the digests here (JSON)")
    ap.add_argument("--compare", help="a JSON file of another machine's digests")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_ops()))
        return {}
    sys.path.insert(0, str(REPO))
    from rmpm.pipeline.determinism import cpu_model, kernel_env, library_versions
    # a notebook kernel's environment: the worker's pins and the numpy/OpenBLAS ones
    env = {**os.environ, **kernel_env(True), "PYTHONPATH": str(REPO)}
    got = json.loads(subprocess.run([sys.executable, __file__, "--worker"], env=env, check=True,
                                    capture_output=True, text=True).stdout)
    res = {"cpu": cpu_model(), "libraries": library_versions(), "digests": got}
    for op, d in got.items():
        print(f"{op:34} {d}")
    if args.compare:
        other = json.loads(Path(args.compare).read_text())
        print(f"\nagainst {args.compare} ({other['cpu']}):")
        for op, d in got.items():
            print(f"  {op:34} {'same' if other['digests'].get(op) == d else 'DIFFERENT'}")
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
