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

The numbers a book's chapters compute from stored arrays (SVCCA, bootstraps,
correlations: float64 numpy, scipy and torch in the notebook kernel) depend on two
more libraries that pick code paths from the CPU: OpenBLAS (numpy's and scipy's
copies; its kernel, e.g. Haswell vs Sandybridge vs SkylakeX, changes matrix
products, QR and SVD in the last bits) and numpy's own SIMD loops, which dispatch
at import time to the best the CPU has. On an AVX-512 machine numpy computes
float64 ``exp``, ``log``, ``power``, ``log1p``, ``expm1``, ``arctan``, ``cbrt``
and the other transcendental functions with its AVX-512 (SVML) loops, one unit in
the last place away from what an AVX2 machine computes (glibc's libm) for a few
inputs in a hundred, and ``argsort``/``argpartition`` with its AVX-512 sorting
networks, which order ties differently. So a process that computes result files
is started with :func:`kernel_env`: the worker pins, OpenBLAS pinned to its
Haswell (AVX2) kernels and one thread, and numpy's dispatch capped at
``X86_V3`` (AVX2 + FMA3, :data:`NUMPY_SIMD_ENV`); :func:`numerics_problems` says
what in a process breaks that, :func:`describe_numerics` records it.

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
#: numpy's SIMD dispatch capped at x86-64-v3 (AVX2, FMA3): what an AVX2 machine runs.
#: numpy (2.x) reads it once, at import; it lists every dispatch target above
#: X86_V3 that numpy 2.4 is built with (``numpy._core._multiarray_umath.__cpu_dispatch__``;
#: a test checks the list is complete for the installed numpy). Disabling a target
#: the CPU lacks is a no-op, so this is safe on every machine, unlike
#: ``NPY_ENABLE_CPU_FEATURES=X86_V3``, which stops numpy's import on a CPU without
#: AVX2 and silently drops to the baseline when it names no known target. numpy
#: refuses to import with both variables set, so the other one is emptied (numpy
#: takes an empty one for unset), in case the machine's environment sets it.
NUMPY_SIMD_ENV: dict[str, str] = {"NPY_DISABLE_CPU_FEATURES": "X86_V4,AVX512_ICL,AVX512_SPR",
                                  "NPY_ENABLE_CPU_FEATURES": ""}
#: numpy's highest dispatch target in a pinned process
NUMPY_PINNED_TARGET = "X86_V3"
#: OpenBLAS's kernels (numpy's and scipy's copies both read it): its AVX2 ones, which
#: OpenBLAS itself chooses on AVX2-only AMD and Intel CPUs
BLAS_ENV: dict[str, str] = {"OPENBLAS_CORETYPE": "Haswell"}
PINNED_BLAS_CORE = "Haswell"
#: what a process computing result files adds to the worker pins (see :func:`kernel_env`)
NUMERICS_ENV: dict[str, str] = {**BLAS_ENV, **NUMPY_SIMD_ENV}
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
    """The environment a process that computes result files from stored arrays (a
    notebook kernel of the book) must be *started* with: the worker's
    (:func:`worker_env`: ATen, oneDNN and MKL pinned to AVX2, one thread each), and
    in deterministic mode :data:`NUMERICS_ENV` too: OpenBLAS on its Haswell kernels
    and numpy's SIMD dispatch capped at X86_V3, so its float64 numbers are the same
    bits on AVX2 and AVX-512 machines, with any number of cores, under any load."""
    env = worker_env(deterministic)
    if deterministic:
        env.update(NUMERICS_ENV)
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


def shell_exports(deterministic: bool = True, kernel: bool = False) -> list[str]:
    """``export K=V`` lines for a job script's prologue (e.g. dask-jobqueue's
    ``job_script_prologue``), so workers of an external cluster start pinned and
    with rmpm's allocator settings; with ``kernel``, those of a process that computes
    result files (:func:`kernel_env`)."""
    env = kernel_env(deterministic) if kernel else worker_env(deterministic)
    return [f"export {k}={v}" for k, v in env.items()]


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


def numpy_simd() -> dict[str, Any]:
    """numpy's SIMD dispatch in this process: its baseline, the targets it is built
    for, and those in use (the CPU has them and the environment did not disable
    them); ``highest``: the last of those in use, or the baseline."""
    try:
        from numpy._core import _multiarray_umath as mu
    except ImportError:  # numpy 1.x
        from numpy.core import _multiarray_umath as mu  # type: ignore[no-redef]
    feats = getattr(mu, "__cpu_features__", {})
    baseline = list(getattr(mu, "__cpu_baseline__", []))
    targets = list(getattr(mu, "__cpu_dispatch__", []))
    active = [t for t in targets if feats.get(t)]
    return {"baseline": baseline, "targets": targets, "active": active,
            "highest": active[-1] if active else (baseline[-1] if baseline else None)}


def blas() -> list[dict[str, Any]]:
    """The BLAS libraries loaded in this process (after importing numpy and scipy):
    library, kernel (``architecture``) and threads, from threadpoolctl."""
    import numpy  # noqa: F401  (loads its OpenBLAS)
    try:
        import scipy.linalg  # noqa: F401  (scipy's own OpenBLAS)
    except ImportError:
        pass
    from threadpoolctl import threadpool_info
    return [{"library": i.get("prefix"), "version": i.get("version"),
             "kernel": i.get("architecture"), "threads": i.get("num_threads"),
             "file": os.path.basename(i.get("filepath") or "")}
            for i in threadpool_info() if i.get("user_api") == "blas"]


def numerics_problems() -> list[str]:
    """Why this process's float64 numerics are not pinned (see :func:`kernel_env`);
    empty: they are the same bits on every x86-64 machine with AVX2."""
    out = problems(True)
    simd = numpy_simd()
    if platform.machine().lower() in ("x86_64", "amd64"):
        above = simd["active"][simd["active"].index(NUMPY_PINNED_TARGET) + 1:] \
            if NUMPY_PINNED_TARGET in simd["active"] else simd["active"]
        if above:
            out.append(f"numpy dispatches to {', '.join(above)} (above {NUMPY_PINNED_TARGET}); "
                       "start the process with NPY_DISABLE_CPU_FEATURES="
                       f"{NUMPY_SIMD_ENV['NPY_DISABLE_CPU_FEATURES']}")
        elif NUMPY_PINNED_TARGET not in simd["active"]:
            out.append(f"numpy cannot dispatch to {NUMPY_PINNED_TARGET} here (highest: "
                       f"{simd['highest']}): this CPU computes other numbers than an AVX2 one")
    for lib in blas():
        if lib["library"] and "openblas" in lib["library"]:
            if (lib["kernel"] or "").lower() != PINNED_BLAS_CORE.lower():
                out.append(f"{lib['file']} uses its {lib['kernel']} kernels, not {PINNED_BLAS_CORE}")
            if lib["threads"] != 1:
                out.append(f"{lib['file']} uses {lib['threads']} threads, not 1")
    return out


def describe_numerics() -> dict[str, Any]:
    """What computes the float64 numbers of this process, for the metadata of each
    result file (and ``rmpm env``): :func:`describe`, numpy's SIMD dispatch, the C
    library (whose libm computes numpy's float64 transcendental functions once the
    dispatch is capped), the BLAS libraries with their kernels and threads, the
    pinning variables as set here, and whether all of it is pinned (``pinned``;
    ``problems`` says what is not)."""
    bad = numerics_problems()
    simd = numpy_simd()
    libc = " ".join(platform.libc_ver()).strip()
    return {**describe(), "pinned": not bad, "problems": bad,
            "numpy_simd": simd["highest"], "numpy_simd_active": simd["active"],
            # capped at X86_V3, numpy's float64 exp, log, power, arctanh, ... are libm's
            "libm": libc or None,
            "blas": [{k: v for k, v in b.items() if k != "file"} for b in blas()],
            "env": {k: os.environ.get(k) for k in kernel_env(True)
                    if k not in ALLOC_ENV and k not in CUDA_ENV}}


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
