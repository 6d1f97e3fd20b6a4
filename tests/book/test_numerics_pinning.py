"""The float64 numbers of result files are the same bits whatever the machine
(issue 26): a chapter run twice, under different BLAS threads and kernels, numpy
SIMD dispatch and with a busy core, writes the same result digests, and the
environment that pins it (:func:`rmpm.pipeline.determinism.kernel_env`) says what
it pins."""
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from rmpm.pipeline import determinism as DT

X86 = platform.machine().lower() in ("x86_64", "amd64")
REPO = Path(__file__).resolve().parents[2]


def _run(code: str, env: dict[str, str]) -> str:
    full = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                          check=True, timeout=300).stdout


def test_kernel_env_is_the_worker_env_plus_the_numerics_pins():
    env = DT.kernel_env(True)
    assert DT.worker_env(True).items() <= env.items()
    assert env["OPENBLAS_CORETYPE"] == "Haswell" and env["OPENBLAS_NUM_THREADS"] == "1"
    assert env["NPY_DISABLE_CPU_FEATURES"] and env["NPY_ENABLE_CPU_FEATURES"] == ""
    fast = DT.kernel_env(False)
    assert fast == DT.worker_env(False)  # fast mode: the machine's best kernels, one thread


@pytest.mark.skipif(not X86, reason="numpy's x86 dispatch targets")
def test_the_numpy_pin_names_every_dispatch_target_above_x86_v3():
    """A numpy that dispatches to a new target (AVX10, say) must be added to the pin."""
    simd = DT.numpy_simd()
    assert DT.NUMPY_PINNED_TARGET in simd["targets"]
    above = simd["targets"][simd["targets"].index(DT.NUMPY_PINNED_TARGET) + 1:]
    assert set(above) <= set(DT.NUMPY_SIMD_ENV["NPY_DISABLE_CPU_FEATURES"].split(","))


@pytest.mark.skipif(not X86, reason="x86 pins")
def test_a_process_started_with_kernel_env_is_pinned_even_if_the_machine_sets_otherwise():
    machine = {"OPENBLAS_CORETYPE": "Sandybridge", "OPENBLAS_NUM_THREADS": "2",
               "OMP_NUM_THREADS": "2", "NPY_ENABLE_CPU_FEATURES": "X86_V3"}
    code = "import json; from rmpm.pipeline import determinism as DT; print(json.dumps(DT.describe_numerics()))"
    d = json.loads(_run(code, {**machine, **DT.kernel_env(True)}))
    if d["cpu_capability"] != "AVX2":
        pytest.skip("this CPU has no AVX2")
    assert d["pinned"], d["problems"]
    assert d["numpy_simd"] == "X86_V3" and d["threads"] == 1
    assert {b["kernel"] for b in d["blas"]} == {"Haswell"} and {b["threads"] for b in d["blas"]} == {1}
    # and a process started without it says what is not pinned
    plain = json.loads(_run(code, {"OPENBLAS_NUM_THREADS": "2", "OPENBLAS_CORETYPE": "Sandybridge"}))
    assert not plain["pinned"] and any("Sandybridge" in p for p in plain["problems"])


# numpy float64 functions whose AVX-512 loops differ from the AVX2 path (glibc's libm)
# in the last bit for some inputs, and an unstable argsort whose AVX-512 sorting
# network orders ties otherwise: what chapter 1's `0.85 ** arange(32)` ran into
_OPS = """
import hashlib, json, numpy as np
r = np.random.default_rng(1); v = np.abs(r.standard_normal(20000)) + 0.01
i = r.integers(0, 100, 20000); m = r.standard_normal((200, 40))
h = lambda x: hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()
print(json.dumps({"power": h(0.85 ** np.arange(32)), "exp": h(np.exp(v)), "log": h(np.log(v)),
                  "argsort": h(np.argsort(i)), "svd": h(np.linalg.svd(m, compute_uv=False)),
                  "qr": h(np.linalg.qr(m)[0]), "gram": h(m.T @ m)}))
"""

MACHINES = {
    # what this machine does by itself, only the BLAS kernel left to OpenBLAS
    "native": {"OPENBLAS_CORETYPE": ""},
    # an AVX2 machine (numpy's dispatch capped), another BLAS kernel, two threads
    "avx2, Sandybridge, 2 threads": {"NPY_DISABLE_CPU_FEATURES": "X86_V4,AVX512_ICL,AVX512_SPR",
                                     "OPENBLAS_CORETYPE": "Sandybridge", "OPENBLAS_NUM_THREADS": "2",
                                     "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
}


@pytest.mark.skipif(not X86, reason="x86 pins")
def test_numpy_and_blas_numbers_are_the_same_bits_under_kernel_env():
    outs = {name: json.loads(_run(_OPS, {**m, **DT.kernel_env(True)})) for name, m in MACHINES.items()}
    a, b = outs.values()
    assert a == b, {k: (a[k][:8], b[k][:8]) for k in a if a[k] != b[k]}


@pytest.fixture
def busy_core():
    """A second process spinning on one core while the test runs."""
    p = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        yield
    finally:
        p.kill()
        p.wait()


@pytest.mark.notebook
@pytest.mark.skipif(not X86, reason="x86 pins")
def test_a_chapter_writes_the_same_result_digest_on_every_machine(tmp_path, busy_core):
    """Chapter 1 under smoke, as ``rmpm book`` runs it (its kernel started with the
    book's ``kernel_env`` on top of the machine's environment), once as this machine
    is and once as an AVX2 machine with another BLAS kernel and two threads would run
    it, beside a busy core: the same result digest (what ``rmpm verify`` compares).

    On an AVX-512 machine this failed before issue 26 (numpy's AVX-512 ``power`` made
    ``invertible_map_keep_cut`` differ in its last bit); on an AVX2 machine only the
    BLAS half of the check has anything to vary."""
    from rmpm.book import notebooks as NB
    from rmpm.book.records import content_digest
    from rmpm.pipeline.engine import environ
    path = next(p for p in NB.notebook_paths() if p.stem == "01_svcca_checked")
    digests, values = {}, {}
    for i, (name, machine) in enumerate(MACHINES.items()):
        results = tmp_path / f"r{i}"
        with environ({**machine, **DT.kernel_env(True), "RMPM_RESULTS": str(results)}):
            NB.execute(path, tmp_path / f"{i}.ipynb", {"profile": "smoke"})
        values[name] = json.loads((results / "01_svcca_checked.json").read_text())["values"]
        digests[name] = content_digest(values[name])
    (a, va), (b, vb) = [(digests[n], values[n]) for n in MACHINES]
    assert a == b, {k: (va[k], vb[k]) for k in va if va[k] != vb[k]}
