"""Deterministic CPU mode: the same recipe gives the same bits on every x86-64 machine.

PyTorch's CPU kernels pick their code path at run time from the machine's
instruction set (ATen's vectorised kernels, oneDNN's convolutions, MKL's
matrix products) and split reductions over threads; each choice changes the
order of floating-point sums, so the same recipe trained on an AVX-512 machine,
on an AVX2 laptop, or with 1 vs 2 threads gives different weights. Pinning all
three libraries to AVX2 (which every x86-64 CPU since 2013 has) and to one
thread makes the results a function of the recipe alone.

The pins are environment variables that each library reads once, when it
initialises: a process that has already run a torch operation cannot change
them. So deterministic work runs in *worker processes started with*
:func:`worker_env` (see :mod:`rmpm.pipeline.engine`), and each task first calls
:func:`enter`, which refuses to run in a worker whose kernels are not pinned
(a worker of an external cluster started without the environment, say).

Fast mode (``deterministic=False``, ``rmpm train --fast``) leaves the machine's
best ISA on; the numbers are then reproducible only on the same kind of CPU.

GPUs: :func:`enter` turns on ``torch.use_deterministic_algorithms`` (warn-only,
for the few ops without a deterministic CUDA kernel), cuDNN's deterministic
mode without autotuning, and cuBLAS's fixed workspace
(``CUBLAS_WORKSPACE_CONFIG``). That makes reruns on the *same* GPU model, driver
and library versions identical; different GPU models (or a different packing
of a batched ensemble) still sum in a different order, so GPU results are not
bit-identical across GPU models, nor to CPU results.
"""
from __future__ import annotations

import os
import platform
from typing import Any

#: what deterministic mode pins; every library reads its variable at start-up
PINNED_ENV: dict[str, str] = {
    "ATEN_CPU_CAPABILITY": "avx2",   # ATen's vectorised CPU kernels
    "DNNL_MAX_CPU_ISA": "AVX2",      # oneDNN (convolutions, some matmuls)
    "ONEDNN_MAX_CPU_ISA": "AVX2",    # the same, under oneDNN 3's name
    "MKL_CBWR": "AVX2",              # MKL's conditional numerical reproducibility
}
#: one thread per worker in both modes: a reduction split over threads sums in
#: another order, and for models this small processes scale better than threads
THREAD_ENV: dict[str, str] = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                              "OPENBLAS_NUM_THREADS": "1"}
CUDA_ENV: dict[str, str] = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
#: glibc's allocator, read once when a process starts. Dask's nanny would start
#: its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (its
#: ``distributed.nanny.pre-spawn-environ`` default), which turns off glibc's
#: dynamic mmap threshold: every tensor over 128 kB is then mapped from and
#: returned to the OS, and faulted in again page by page, on every training step.
#: That doubled a worker's CPU time (millions of page faults per model; see
#: benchmarks/bench_worker_env.py). Large fixed thresholds keep freed tensors in
#: the heap for reuse; one arena, because a worker computes on one thread. Changes
#: speed only, never a number.
ALLOC_ENV: dict[str, str] = {
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),  # glibc's largest allowed value on 64-bit
    "MALLOC_ARENA_MAX": "1",
}
#: set in every worker rmpm starts; says which mode it was started in
MODE_VAR = "RMPM_MODE"
DETERMINISTIC, FAST = "deterministic", "fast"
#: ATen's name for the pinned capability (torch.backends.cpu.get_cpu_capability())
PINNED_CAPABILITY = "AVX2"


def worker_env(deterministic: bool = True) -> dict[str, str]:
    """The environment a worker process must be *started* with for the mode."""
    env = {**THREAD_ENV, **ALLOC_ENV, **CUDA_ENV,
           MODE_VAR: DETERMINISTIC if deterministic else FAST}
    if deterministic:
        env.update(PINNED_ENV)
    return env


def kernel_env(deterministic: bool = True) -> dict[str, str]:
    """The environment of a process that computes result files from stored arrays (a
    notebook's kernel): in deterministic mode pinned like the workers, plus OpenBLAS
    (numpy's and scipy's linear algebra) pinned to its AVX2 kernels."""
    env = worker_env(deterministic)
    if deterministic:
        env["OPENBLAS_CORETYPE"] = "Haswell"
    return env


def nanny_pre_spawn_env(deterministic: bool = True) -> dict[str, str]:
    """Dask's ``distributed.nanny.pre-spawn-environ`` with the mode's environment on
    top: what a nanny puts in place just before it spawns (or restarts) its worker.
    A variable already set in the nanny's own environment takes precedence over
    this setting in distributed, so exporting :func:`worker_env` before ``dask
    worker`` is enough; the embedded cluster sets both."""
    import dask
    current = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    return {**{k: str(v) for k, v in current.items()}, **worker_env(deterministic)}


def shell_exports(deterministic: bool = True) -> list[str]:
    """``export K=V`` lines for a job script's prologue (e.g. dask-jobqueue's
    ``job_script_prologue``), so workers of an external cluster start pinned and
    with rmpm's allocator settings."""
    return [f"export {k}={v}" for k, v in worker_env(deterministic).items()]


def cpu_capability() -> str:
    """The ISA ATen dispatches to in this process (``AVX512``, ``AVX2``, ``DEFAULT``, ...)."""
    import torch
    return torch.backends.cpu.get_cpu_capability()


def problems(deterministic: bool = True) -> list[str]:
    """Why this process is not in the mode (empty: it is)."""
    import torch
    out = []
    if deterministic:
        cap = cpu_capability()
        if cap != PINNED_CAPABILITY:
            out.append(f"ATen dispatches to {cap}, not {PINNED_CAPABILITY}")
        for k, v in PINNED_ENV.items():
            if os.environ.get(k) != v:
                out.append(f"{k}={os.environ.get(k)!r}, not {v!r}")
    if torch.get_num_threads() != 1:
        out.append(f"torch uses {torch.get_num_threads()} threads, not 1")
    return out


def is_pinned() -> bool:
    """True if this process was started in deterministic mode (see :func:`worker_env`)."""
    return not problems(True)


def enter(deterministic: bool = True) -> None:
    """Make this (worker) process ready for a task in the mode, or refuse.

    Deterministic mode cannot be switched on here (the ISA pins had to be in the
    environment before torch initialised), only checked; the thread count and
    the GPU switches can be set, so they are.
    """
    import torch
    torch.set_num_threads(1)
    if deterministic:
        bad = problems(True)
        if bad:
            raise RuntimeError(
                f"worker pid {os.getpid()} on {platform.node()} is not in deterministic mode ("
                + "; ".join(bad) + "): start workers with rmpm.pipeline.determinism.worker_env() in their "
                "environment (`python -m rmpm env` prints it), or pass deterministic=False "
                "(rmpm train --fast)")
    if torch.cuda.is_available():
        # same GPU model + same library versions -> same bits (see the module docstring)
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic


def describe() -> dict[str, Any]:
    """The mode this process computes in, for the metadata of what it stores."""
    import torch
    mode = os.environ.get(MODE_VAR)
    if mode == DETERMINISTIC and not is_pinned():
        mode = "broken"  # claimed but not in effect: never label such numbers deterministic
    return {"mode": mode or "in-process", "cpu_capability": cpu_capability(),
            "threads": torch.get_num_threads(),
            "cuda_deterministic": bool(torch.are_deterministic_algorithms_enabled())}


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU's vector instruction sets (Linux: /proc/cpuinfo's ``avx*``, ``fma``,
    ``amx*`` flags): what decides which kernels an unpinned library picks."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split()
                              if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def library_versions() -> dict[str, str]:
    """Versions of what computes the numbers: Python, torch and its kernel libraries,
    numpy, and the engine."""
    import re

    import numpy
    import torch
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "numpy": numpy.__version__}
    cfg = torch.__config__.show()
    for name, pat in (("oneDNN", r"(?:oneDNN|MKL-DNN) v([\w.]+)"),
                      ("MKL", r"Math Kernel Library Version ([\w.]+)")):
        m = re.search(pat, cfg)
        if m:
            out[name] = m.group(1)
    for mod in ("dask", "distributed", "torchvision"):
        try:
            out[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return out
