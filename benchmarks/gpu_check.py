"""GPU evidence in one call (issue 14): batched training, CUDA similarity, the paper
profile's pace, and cross-machine determinism, written to ``<out>/gpu_check.json``
and a short ``<out>/gpu_check.txt``.

Sections (each guarded: a failure or a timeout in one is recorded and the others run):

``train``       the ``paper`` profile's Fashion-MNIST SmallCNN (width 32, batch 128, Adam),
                1 epoch on all 60,000 images: a batched ensemble of 32 members
                (``rmpm.pipeline.ensemble.fit_ensemble``; bf16 autocast on CUDA, its default, and
                again in fp32) against the first 8 members trained one at a time
                (``rmpm.pipeline.train.fit``): model-epochs/s, test accuracy per member, and the
                largest difference between matched members (test accuracy, relative
                weight difference).
``similarity``  all-pairs SVCCA, PWCCA and linear CKA (``rmpm.measures.similarity``) for 32 models
                x 2,000 inputs x 128 neurons on the GPU against the CPU: largest
                difference and speed ratio; peak GPU memory of all-pairs SVCCA at
                64 x 10,000 x 512.
``pace``        as much of ``rmpm train --profile paper --dataset fashion_mnist`` as fits
                in the time left (``rmpm.pipeline.runs.run_recipes`` group by group, the CLI's
                code path, into a fresh store), timed, then extrapolated to the whole
                profile from the dry run's recipe and model-epoch counts. The ResNet
                data sets (CIFAR-10, SVHN) are not carried: a 32-member ResNet group of
                the CIFAR-10 recipe trains briefly on random images of that shape, and
                its seconds per step give a training-only estimate for them.
``digests``     SHA-256 digests of a few smoke-size recipes trained on this machine's
                *CPU* in a pinned deterministic environment (one thread,
                ``ATEN_CPU_CAPABILITY=avx2``, ``DNNL_MAX_CPU_ISA=AVX2``, ``MKL_CBWR=AVX2``,
                set in a subprocess before torch starts), with and without oneDNN
                (mkldnn), compared with ``benchmarks/gpu_check_digests.json``, which
                ``--write-reference`` computed on the development machine with the same
                code. The pinned mode is rmpm's deterministic mode
                (``rmpm.pipeline.determinism.worker_env``).

Every section runs in its own subprocess (a sticky CUDA error or a hang stays in its
section; its time limit is enforced by killing it), except ``--in-process``. The
digest section runs on one CPU core alongside the GPU sections. A global ``--budget``
(seconds) splits the time: train and similarity get fixed shares, pace what is left.

    python3 benchmarks/gpu_check.py --out OUT                 # the real check (GPU)
    python3 benchmarks/gpu_check.py --out OUT --dry-run       # seconds, on the CPU, tiny sizes
    python3 benchmarks/gpu_check.py --write-reference         # refresh the committed digests

See benchmarks/GPU_CHECK.md for the prepared device call.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere: import rmpm from this checkout
    sys.path.insert(0, str(ROOT))

from rmpm.atomic import atomic_write_text  # noqa: E402 (after the path is set)
from rmpm.pipeline.determinism import cpu_flags, cpu_model, library_versions, worker_env  # noqa: E402
from rmpm.pipeline.estimate import cost_key, examples, profile_seconds  # noqa: E402

#: digests computed on the development machine (committed)
REFERENCE = ROOT / "benchmarks" / "gpu_check_digests.json"
#: what prepare_gpu_check.sh fills and the device call carries (ignored by git)
CARRY_DIR = ROOT / ".gpucheck"
REF_WEIGHTS = CARRY_DIR / "digest_ref_weights.pt"
#: source files whose change invalidates the committed digests
FINGERPRINT_FILES = ("rmpm/pipeline/train.py", "rmpm/pipeline/models.py", "rmpm/pipeline/data.py",
                     "rmpm/pipeline/recipe.py")

#: rmpm's deterministic CPU mode (:func:`rmpm.pipeline.determinism.worker_env`), set before
#: torch starts, so only in a subprocess; no GPU for the digests, no hash randomisation
PINNED_ENV = {**worker_env(True), "CUDA_VISIBLE_DEVICES": "", "PYTHONHASHSEED": "0"}
#: digest variants: with oneDNN convolutions (torch's CPU default) and without
VARIANTS = {"avx2": True, "avx2_no_mkldnn": False}
SECTIONS = ("train", "similarity", "pace", "digests")


@dataclass(frozen=True)
class Sizes:
    """Problem sizes: :data:`FULL` for the GPU check, :data:`DRY` for the CPU dry run."""

    train_models: int = 32         # ensemble members
    train_single: int = 8          # members also trained one at a time (timed, compared)
    train_size: int | None = None  # None: all 60,000 images
    train_width: int | None = None  # None: the paper profile's width (32)
    train_test_size: int | None = None  # None: all 10,000 test images
    train_warmup: bool = True      # untimed warm-up of both engines before timing
    train_amp: bool | None = None  # bf16 ensemble first; None: on CUDA only (the engine's default)
    sim_models: int = 32
    sim_inputs: int = 2000
    sim_neurons: int = 128
    mem_models: int = 64
    mem_inputs: int = 10_000
    mem_neurons: int = 512
    pace_profile: str = "paper"
    pace_dataset: str = "fashion_mnist"
    pace_max_group: int = 32
    pace_max_groups: int | None = None  # None: as many as the time allows
    pace_shrink: bool = False      # dry run: 128 examples, 1 epoch, width 4; 100 test inputs
    probe_examples: int = 256 * 12     # ResNet probe: 12 steps at the CIFAR-10 recipe's batch
    probe_members: int = 32
    digest_small: bool = False     # dry run: shrunken digest recipes (no reference)


FULL = Sizes()
DRY = Sizes(train_models=2, train_single=2, train_size=128, train_width=4,
            train_test_size=500, train_warmup=False, train_amp=True,
            sim_models=4, sim_inputs=300, sim_neurons=16, mem_models=4, mem_inputs=500,
            mem_neurons=32, pace_max_group=2, pace_max_groups=1,
            pace_shrink=True, probe_examples=32, probe_members=2,
            digest_small=True)


# ----------------------------------------------------------------------------- small helpers

def _now() -> float:
    return time.perf_counter()


def _sync(dev) -> None:
    import torch
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _write_json(path: Path, obj: Any) -> None:
    """Atomic (:mod:`rmpm.atomic`): a reader (or a kill) never sees half a file."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=str))


def state_digest(state: dict) -> str:
    """SHA-256 over a state dict's names, dtypes, shapes and raw bytes, in name order.

    Independent of ``torch.save``'s container format, which may change between versions.
    """
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def rel_diff(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over the floating-point tensors of two state dicts."""
    keys = [k for k in b if b[k].is_floating_point()]
    num = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in keys)
    den = sum(float(b[k].double().pow(2).sum()) for k in keys)
    return (num / den) ** 0.5 if den else float(num > 0)


def code_fingerprint() -> str:
    h = hashlib.sha256()
    for f in FINGERPRINT_FILES:
        h.update(f.encode() + b"\0" + (ROOT / f).read_bytes() + b"\0")
    return h.hexdigest()


def environment() -> dict[str, Any]:
    """Versions and hardware, so that numbers from different machines can be told apart:
    what computes the numbers (:func:`rmpm.pipeline.determinism.library_versions`), and
    whether the packages these sections import are there."""
    info: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine(),
                            "cpu_count": os.cpu_count(), "cpu": cpu_model(),
                            "cpu_flags": cpu_flags()}
    try:
        info.update(library_versions())
    except Exception as e:  # torch or numpy missing: a finding, not a crash
        info["libraries_error"] = f"{type(e).__name__}: {e}"
    for name in ("torchvision", "scipy", "pandas", "sklearn", "tqdm", "matplotlib"):
        try:
            mod = __import__(name)
            info[name] = getattr(mod, "__version__", "?")
        except Exception as e:  # a missing package is a finding, not a crash
            info[name] = f"missing ({type(e).__name__}: {e})"
    try:
        import torch
        info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_threads"] = torch.get_num_threads()
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                        gpu_sms=p.multi_processor_count, cuda=torch.version.cuda,
                        cudnn=torch.backends.cudnn.version())
    except Exception as e:
        info["torch_error"] = f"{type(e).__name__}: {e}"
    return info


# ----------------------------------------------------------------------------- 1. training

def section_train(sz: Sizes, dev, part: dict, save) -> None:
    """Batched ensemble vs one model at a time on the paper profile's Fashion-MNIST CNN."""
    import statistics

    from rmpm.pipeline.ensemble import fit_ensemble
    from rmpm.analysis.profiles import PROFILES
    from rmpm.pipeline.train import TrainData, fit, prepare

    base = PROFILES["paper"].base["fashion_mnist"].replace(epochs=1)
    if sz.train_size is not None:
        base = base.replace(train_size=sz.train_size)
    if sz.train_width is not None:
        base = base.replace(width=sz.train_width)
    m, k = sz.train_models, min(sz.train_single, sz.train_models)
    recipes = [base.replace(init_seed=i, order_seed=i) for i in range(m)]
    t = _now()
    data = prepare("fashion_mnist", dev)
    if sz.train_test_size is not None:
        data = TrainData(data.x_train, data.y_train, data.x_test[:sz.train_test_size],
                         data.y_test[:sz.train_test_size], data.n_classes, data.in_shape)
    _sync(dev)
    n = base.train_size or len(data.x_train)
    part.update(recipe=base.to_dict(), members=m, single_members=k, train_examples=n,
                test_examples=len(data.x_test), data_seconds=_now() - t)
    save()

    if sz.train_warmup:  # untimed: CUDA context, cuDNN autotuning (both batch shapes), allocator
        warm = base.replace(train_size=min(2048 + n % base.batch_size, len(data.x_train)))
        fit(warm, dev, data=data)
        fit_ensemble([warm.replace(init_seed=i) for i in range(m)], dev, data=data)
        fit_ensemble([warm.replace(init_seed=i) for i in range(m)], dev, data=data, amp=False)
        _sync(dev)
    part["warmup"] = sz.train_warmup

    def run_ensemble(amp: bool):
        t = _now()
        res = fit_ensemble(recipes, dev, data=data, amp=amp)
        _sync(dev)
        return res, _now() - t

    # bf16 as the engine runs by default on CUDA (the dry run takes this branch on the CPU)
    amp_default = dev.type == "cuda" if sz.train_amp is None else sz.train_amp
    first = "ensemble_amp" if amp_default else "ensemble_fp32"
    batched, seconds = run_ensemble(amp_default)
    part["engines"] = {}

    def summarise(name: str, res, seconds: float, members: int) -> None:
        acc = [r.metrics["test_acc"] for r in res]
        loop = (res[0].metrics.get("group_train_seconds")
                or sum(r.metrics["train_seconds"] for r in res))
        part["engines"][name] = {
            "members": members, "seconds": seconds,
            "model_epochs_per_s": members * base.epochs / seconds,
            "loop_model_epochs_per_s": members * base.epochs / loop,
            "test_acc": acc, "test_acc_mean": statistics.fmean(acc), "test_acc_min": min(acc),
            "amp": res[0].metrics.get("amp", False)}

    summarise(first, batched, seconds, m)
    save()
    t = _now()
    single = []
    for r in recipes[:k]:
        single.append(fit(r, dev, data=data))
        _sync(dev)
    summarise("single", single, _now() - t, k)
    part["match"] = {}

    def match(name: str, res) -> None:
        part["match"][name] = {
            "max_abs_test_acc_diff": max(abs(a.metrics["test_acc"] - b.metrics["test_acc"])
                                         for a, b in zip(res, single)),
            "max_rel_weight_diff": max(rel_diff(a.model.state_dict(), b.model.state_dict())
                                       for a, b in zip(res, single)),
            "members_compared": k}

    match(first, batched)
    rate_b = part["engines"][first]
    part["speedup"] = rate_b["model_epochs_per_s"] / part["engines"]["single"]["model_epochs_per_s"]
    part["goal_50_model_epochs_per_s"] = rate_b["model_epochs_per_s"] >= 50
    save()
    if amp_default:  # fp32 ensemble too: the comparison with fit without bf16 rounding
        res, seconds = run_ensemble(False)
        summarise("ensemble_fp32", res, seconds, m)
        match("ensemble_fp32", res)


# ----------------------------------------------------------------------------- 2. similarity

def _population(n_models: int, n: int, p: int, seed: int, device="cpu", dtype=None):
    """Low-rank-plus-noise ReLU activations sharing a latent code, like real layers."""
    import torch
    g = torch.Generator(device=device).manual_seed(seed)
    kw = dict(generator=g, device=device)
    z = torch.randn(n, 48, **kw)
    return [torch.relu(z @ torch.randn(48, p, **kw) + 0.3 * torch.randn(n, p, **kw)).to(dtype or torch.float32)
            for _ in range(n_models)]


def section_similarity(sz: Sizes, dev, part: dict, save) -> None:
    import numpy as np
    import torch

    from rmpm.measures.similarity import pairwise_similarity

    acts_cpu = _population(sz.sim_models, sz.sim_inputs, sz.sim_neurons, seed=0)
    acts_dev = [a.to(dev) for a in acts_cpu]
    _sync(dev)
    pairwise_similarity(acts_dev[:3], "svcca", device=dev)  # warm-up: cuSOLVER/cuBLAS handles
    pairwise_similarity(acts_dev[:3], "cka", device=dev)
    _sync(dev)
    part.update(models=sz.sim_models, inputs=sz.sim_inputs, neurons=sz.sim_neurons,
                device=str(dev), measures={},
                note="inputs already on the device (as captured activations would be); "
                     "float64 arithmetic on both sides")
    for measure in ("svcca", "pwcca", "cka"):
        t = _now()
        s_cpu = pairwise_similarity(acts_cpu, measure, device="cpu")
        t_cpu = _now() - t
        t = _now()
        s_dev = pairwise_similarity(acts_dev, measure, device=dev)
        _sync(dev)
        t_dev = _now() - t
        off = ~np.eye(len(s_cpu), dtype=bool)
        part["measures"][measure] = {
            "cpu_seconds": t_cpu, "device_seconds": t_dev, "cpu_over_device": t_cpu / t_dev,
            "max_abs_diff": float(np.abs(s_cpu - s_dev).max()),
            "mean_offdiag": float(s_cpu[off].mean()), "finite": bool(np.isfinite(s_dev).all())}
        save()
    part["max_abs_diff"] = max(v["max_abs_diff"] for v in part["measures"].values())
    part["within_1e-6"] = part["max_abs_diff"] <= 1e-6
    del acts_dev
    save()

    # peak memory of all-pairs SVCCA at 64 x 10,000 x 512 (activations generated on the device)
    mem: dict[str, Any] = {"models": sz.mem_models, "inputs": sz.mem_inputs,
                           "neurons": sz.mem_neurons}
    part["memory"] = mem
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        acts = _population(sz.mem_models, sz.mem_inputs, sz.mem_neurons, seed=1, device=dev)
        _sync(dev)
        act_bytes = sum(a.numel() * a.element_size() for a in acts)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        t = _now()
        sim = pairwise_similarity(acts, "svcca", device=dev)
        _sync(dev)
        mem.update(seconds=_now() - t, activations_gib=act_bytes / 2**30,
                   allocated_before_gib=before / 2**30,
                   peak_gib=torch.cuda.max_memory_allocated(dev) / 2**30,
                   peak_reserved_gib=torch.cuda.max_memory_reserved(dev) / 2**30,
                   mean_offdiag=float(sim[~np.eye(len(sim), dtype=bool)].mean()))
        mem["growth_over_activations"] = (mem["peak_gib"] - mem["allocated_before_gib"]) / mem["activations_gib"]
        del acts
        torch.cuda.empty_cache()
    else:
        import resource
        acts = _population(sz.mem_models, sz.mem_inputs, sz.mem_neurons, seed=1)
        t = _now()
        pairwise_similarity(acts, "svcca")
        mem.update(seconds=_now() - t, peak_rss_gib=resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss / 2**20, note="CPU run: process peak RSS, not GPU memory")
    save()


# ----------------------------------------------------------------------------- 3. the paper profile's pace

def _coverage_order(groups: list[list]) -> list[list]:
    """The largest group first, then the first group of every other batch key, then the rest:
    a run cut short has still timed each kind of group once."""
    from rmpm.pipeline.ensemble import batch_key
    if not groups:
        return []
    first = max(range(len(groups)), key=lambda i: len(groups[i]))
    order, seen = [first], {batch_key(groups[first][0])}
    for i, g in enumerate(groups):
        if batch_key(g[0]) not in seen:
            order.append(i)
            seen.add(batch_key(g[0]))
    order += [i for i in range(len(groups)) if i not in order]
    return [groups[i] for i in order]


def _resnet_probe(sz: Sizes, dev, part: dict, save) -> None:
    """Seconds per training step of a ResNet group of the CIFAR-10 recipe, on random images.

    CIFAR-10 and SVHN are not on the device; step time does not depend on pixel values.
    """
    import torch

    from rmpm.pipeline.ensemble import fit_ensemble, group_recipes
    from rmpm.analysis.populations import profile_recipes
    from rmpm.pipeline.train import TrainData

    group = group_recipes(profile_recipes("paper", datasets=["cifar10"]), sz.probe_members)[0]
    g = torch.Generator().manual_seed(0)
    n = sz.probe_examples
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    data = TrainData(x.to(dev), y.to(dev), x[:256].to(dev), y[:256].to(dev), 10, (3, 32, 32))
    if sz.train_warmup:  # cuDNN autotuning, allocator
        fit_ensemble([r.replace(epochs=1, train_size=min(n, 2 * r.batch_size)) for r in group],
                     dev, data=data)
    timed = [r.replace(epochs=1, train_size=n) for r in group]
    res = fit_ensemble(timed, dev, data=data)
    _sync(dev)
    bs = group[0].batch_size
    steps = n // bs + (1 if n % bs >= 2 else 0)
    part["resnet_probe"] = {
        "members": len(group), "width": group[0].width, "batch_size": bs,
        "augment": group[0].augment, "steps": steps,
        "seconds_per_step": res[0].metrics["group_train_seconds"] / steps,
        "note": f"random 3x32x32 images; seconds per step of the training loop (includes the "
                f"per-epoch curve evaluation on {len(data.x_test)} images)"}
    save()


def section_pace(sz: Sizes, dev, part: dict, save, deadline: float) -> None:
    """Train (and evaluate) the profile's groups of one data set until the deadline."""
    import math

    from rmpm.pipeline.ensemble import batch_key, group_recipes
    from rmpm.analysis.populations import eval_spec, profile_recipes
    from rmpm.pipeline.recipe import dedupe
    from rmpm.pipeline.runs import resolve_engine, run_recipes
    from rmpm.pipeline.store import Store

    t_section = _now()
    profile, ds = sz.pace_profile, sz.pace_dataset
    all_recipes = profile_recipes(profile)
    plan: dict[str, dict[str, Any]] = {}
    for r in all_recipes:
        p = plan.setdefault(r.dataset, {"arch": r.arch, "recipes": 0, "model_epochs": 0})
        p["recipes"] += 1
        p["model_epochs"] += r.epochs
    part.update(profile=profile, dataset=ds, engine=resolve_engine("auto", dev), plan=plan,
                groups=[])
    save()
    if any(p["arch"] == "resnet" for p in plan.values()):
        try:  # guarded on its own: the Fashion-MNIST timing matters more
            _resnet_probe(sz, dev, part, save)
        except Exception as e:
            part["resnet_probe"] = {"error": f"{type(e).__name__}: {e}",
                                    "traceback": traceback.format_exc()[-2000:]}
    recipes = profile_recipes(profile, datasets=[ds])
    spec = eval_spec(profile)
    if sz.pace_shrink:
        recipes = dedupe(r.replace(train_size=128, epochs=1, width=4) for r in recipes)
        spec = dataclasses.replace(spec, n_test=100, n_probe=50, corruptions=spec.corruptions[:1],
                                   severities=spec.severities[:1])
    groups = _coverage_order(group_recipes(recipes, sz.pace_max_group))
    store = Store(tempfile.mkdtemp(prefix="gpucheck-store-"))
    part["store"] = str(store.root)
    measured: dict[tuple, dict] = {}  # batch key -> its first measured group's timings
    try:
        for g in groups:
            if sz.pace_max_groups is not None and len(part["groups"]) >= sz.pace_max_groups:
                break
            me = sum(r.epochs for r in g)
            guess = estimate_group(measured, g, batch_key) if measured else 0.0
            if part["groups"] and _now() + guess > deadline:
                break  # would not finish: stop here rather than be killed half-way
            # if the section is killed inside this group, the report still says where
            part["in_progress"] = {"members": len(g), "model_epochs": me,
                                   "started_at_section_seconds": _now() - t_section}
            save()
            t = _now()
            run_recipes(g, spec, store, device=dev, progress=False, max_group=sz.pace_max_group)
            _sync(dev)
            total = _now() - t
            metrics = [store.model(r).metrics for r in g]
            train = (metrics[0]["group_train_seconds"] if "group_train_seconds" in metrics[0]
                     else sum(mm["train_seconds"] for mm in metrics))
            measured.setdefault(batch_key(g[0]), {"members": len(g), "seconds": total,
                                                  "train": train})
            part.pop("in_progress")
            part["groups"].append({
                "members": len(g), "model_epochs": me, "seconds": total,
                "train_loop_seconds": train, "rest_seconds": total - train,
                "key": {k: v for k, v in batch_key(g[0]) if k in
                        ("width", "batch_size", "augment", "train_size", "epochs")},
                "test_acc_mean": sum(mm["test_acc"] for mm in metrics) / len(g)})
            save()
    finally:
        shutil.rmtree(store.root, ignore_errors=True)

    # extrapolation: the measured groups, then every other group from a measured group of
    # its batch key (or the slowest measured one), then the other data sets
    done = len(part["groups"])
    if not done:
        raise RuntimeError("no group finished in the time given to this section")
    rest = sum(estimate_group(measured, g, batch_key) for g in groups[done:])
    measured_s = sum(x["seconds"] for x in part["groups"])
    ds_total = measured_s + rest
    part["dataset_estimate"] = {
        "groups": len(groups), "groups_measured": done,
        "model_epochs_measured": sum(x["model_epochs"] for x in part["groups"]),
        "model_epochs": plan[ds]["model_epochs"], "measured_seconds": measured_s,
        "estimated_rest_seconds": rest, "total_minutes": ds_total / 60,
        "rule": "an unmeasured group takes its key's measured training-loop time (times "
                "members / measured members when it has more), plus the measured seconds "
                "per model for evaluation and the rest; an upper-side estimate for the "
                "smaller groups, whose loop is launch-bound"}
    rows, total_h = {}, 0.0
    probe = part.get("resnet_probe", {})
    # seconds per training example-epoch of this data set's recipes, as measured
    per_example = ds_total / sum(r.epochs * examples(r) for r in all_recipes if r.dataset == ds)
    for name, p in plan.items():
        theirs = [r for r in all_recipes if r.dataset == name]
        if name == ds:
            hours, how = ds_total / 3600, "measured groups, the rest estimated as above"
        elif p["arch"] == plan[ds]["arch"]:
            cost = {cost_key(r): per_example for r in theirs}
            hours = profile_seconds(theirs, cost, workers=1)["train_core_s"] / 3600
            how = f"{ds}'s time (same architecture), scaled by model-epochs and training-set size"
        elif p["arch"] == "resnet" and "seconds_per_step" in probe:
            steps = sum(g[0].epochs * math.ceil(examples(g[0]) / g[0].batch_size)
                        for g in group_recipes(theirs, sz.pace_max_group))
            hours = steps * probe["seconds_per_step"] / 3600
            how = (f"ResNet probe ({probe['members']} members, width {probe['width']}): "
                   f"{steps} group steps at its seconds per step; training only, no evaluation")
        else:
            rows[name] = {"hours": None, "how": "no estimate"}
            continue
        rows[name] = {"hours": hours, "how": how, "model_epochs": p["model_epochs"]}
        total_h += hours
    part["profile_estimate"] = {"datasets": rows, "total_hours": total_h,
                                "complete": all(r["hours"] is not None for r in rows.values())}
    save()


def estimate_group(measured: dict, group: list, batch_key) -> float:
    """Seconds for an unmeasured group, from the measured group of the same batch key."""
    key = batch_key(group[0])
    ref = measured.get(key) or max(measured.values(), key=lambda m: m["seconds"] / m["members"])
    m = len(group)
    return (ref["train"] * max(1.0, m / ref["members"])
            + (ref["seconds"] - ref["train"]) / ref["members"] * m)


# ----------------------------------------------------------------------------- 4. digests

def digest_recipes(small: bool = False) -> dict:
    """A few smoke-size recipes that between them run most of ``fit``'s code paths."""
    from rmpm.analysis.profiles import PROFILES
    f = PROFILES["smoke"].base["fashion_mnist"]
    d = PROFILES["smoke_multi"].base["digits"]
    out = {
        "smoke_cnn": f,
        "smoke_cnn_crop_flip_dropout_ls": f.replace(init_seed=1, order_seed=1, augment="crop_flip",
                                                    dropout=0.25, label_smoothing=0.1),
        "smoke_cnn_sgd_mixup_wd": f.replace(init_seed=2, order_seed=2, optimizer="sgd", lr=0.05,
                                            weight_decay=5e-4, mixup_alpha=0.2),
        "smoke_mlp_digits": d,
    }
    if small:  # dry run: seconds, not minutes; no reference exists for these
        out = {"smoke_cnn_small": f.replace(train_size=256)}
    return out


def digest_worker(small: bool, ref_weights: str | None, save_weights: str | None) -> dict:
    """Runs in the pinned subprocess: train each recipe under each variant, digest it."""
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    from rmpm.pipeline.train import fit

    version = str(torch.__version__)  # a plain str: TorchVersion does not unpickle weights-only
    refs: dict[str, dict] = {}  # torch version -> "variant/name" -> state dict
    ref_error = None
    if ref_weights and Path(ref_weights).is_file():
        try:  # only a diagnostic: the digests do not need it
            refs = torch.load(ref_weights, map_location="cpu", weights_only=True)
        except Exception as e:
            ref_error = f"{type(e).__name__}: {str(e)[:300]}"
    # compare weights with the reference of the same torch version, else of any version
    ref_torch = version if version in refs else next(iter(refs), None)
    out: dict[str, Any] = {
        "env": {k: os.environ.get(k) for k in PINNED_ENV},
        "torch": version, "reference_weights_error": ref_error, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(), "python": platform.python_version(),
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "weights_compared_with_torch": ref_torch,
        "variants": {}}
    weights: dict[str, dict] = {}
    for variant, mkldnn in VARIANTS.items():
        torch.backends.mkldnn.enabled = mkldnn
        rows = {}
        for name, r in digest_recipes(small).items():
            t = _now()
            res = fit(r, "cpu")
            sd = res.model.state_dict()
            row = {"recipe_key": r.key(), "sha256": state_digest(sd),
                   "test_acc": res.metrics["test_acc"], "train_loss": res.metrics["train_loss"],
                   "seconds": _now() - t}
            ref = refs.get(ref_torch, {}).get(f"{variant}/{name}")
            if ref is not None:
                row["rel_weight_diff_vs_reference"] = rel_diff(sd, ref)
            rows[name] = row
            weights[f"{variant}/{name}"] = sd
        out["variants"][variant] = rows
    torch.backends.mkldnn.enabled = True
    if save_weights:  # add this torch version's weights to the file's others
        torch.save({**refs, version: weights}, save_weights)
    return out


def run_pinned_worker(small: bool, timeout: float, save_weights: str | None = None) -> dict:
    """Start a fresh interpreter with :data:`PINNED_ENV`, collect its JSON."""
    env = {**os.environ, **PINNED_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        res_path = Path(tmp) / "digests.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--digest-worker", str(res_path)]
        if small:
            cmd.append("--dry-run")
        if save_weights:
            cmd += ["--save-weights", save_weights]
        subprocess.run(cmd, env=env, timeout=timeout, check=True)
        return json.loads(res_path.read_text())


def compare_digests(got: dict, references: dict | None, fingerprint: str) -> dict:
    """Compare with the reference of the same torch version (the cross-machine question
    proper) and with every other one (machine and torch version both differ)."""
    refs = (references or {}).get("references", {})
    if not refs:
        return {"reference": "none", "all_match": None}
    torch_version = got.get("torch")
    out = {"same_torch_reference": torch_version in refs, "by_reference_torch": {
        v: compare_one(got, ref, fingerprint) for v, ref in refs.items()}}
    primary = out["by_reference_torch"].get(torch_version)
    out["all_match"] = primary["all_match"] if primary else None
    out["all_match_any_torch"] = {v: c["all_match"] for v, c in out["by_reference_torch"].items()}
    return out


def compare_one(got: dict, reference: dict, fingerprint: str) -> dict:
    """Per variant and recipe: does the digest match the reference's? Plus what differs
    between the two environments (torch, CPU), so a mismatch can be read."""
    out: dict[str, Any] = {
        "reference_fresh": reference.get("code_fingerprint") == fingerprint,
        "same_torch": reference.get("torch") == got.get("torch"),
        "reference_torch": reference.get("torch"), "torch": got.get("torch"),
        "reference_cpu": reference.get("cpu"), "cpu": got.get("cpu"), "variants": {}}
    flags = []
    for variant, rows in got.get("variants", {}).items():
        ref_rows = reference.get("variants", {}).get(variant, {})
        res = {}
        for name, row in rows.items():
            ref = ref_rows.get(name)
            if ref is None:
                res[name] = "no reference"
                continue
            if ref.get("recipe_key") != row["recipe_key"]:
                res[name] = "recipe changed"
                flags.append(False)
                continue
            same = ref["sha256"] == row["sha256"]
            flags.append(same)
            res[name] = "match" if same else "DIFFERENT"
        out["variants"][variant] = res
    out["all_match"] = all(flags) if flags else None
    return out


def section_digests(sz: Sizes, part: dict, save, timeout: float) -> None:
    got = run_pinned_worker(sz.digest_small, timeout,
                            save_weights=None)  # weights stay on the device machine
    part["computed"] = got
    refs = None if sz.digest_small or not REFERENCE.is_file() else json.loads(REFERENCE.read_text())
    part["comparison"] = compare_digests(got, refs, code_fingerprint())
    save()


def write_reference(timeout: float = 1200) -> dict:
    """Compute the digests here and write :data:`REFERENCE` (and the weights into
    :data:`CARRY_DIR`, so that the device can report how far apart differing weights are)."""
    CARRY_DIR.mkdir(exist_ok=True)
    got = run_pinned_worker(False, timeout, save_weights=str(REF_WEIGHTS))
    # the worker compared against the previous weights file, if any; the new one is the reference
    for rows in got["variants"].values():
        for row in rows.values():
            row.pop("rel_weight_diff_vs_reference", None)
            row.pop("seconds", None)
    got.pop("weights_compared_with_torch", None)
    got.pop("reference_weights_error", None)
    got["code_fingerprint"] = code_fingerprint()
    got["fingerprint_files"] = list(FINGERPRINT_FILES)
    got["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else {}
    refs = doc.setdefault("references", {})
    old = refs.get(got["torch"])

    def digests(ref: dict) -> dict:
        return {v: {n: r["sha256"] for n, r in rows.items()} for v, rows in ref["variants"].items()}

    changed = old is None or digests(old) != digests(got)
    if changed or old.get("code_fingerprint") != got["code_fingerprint"]:
        doc["note"] = ("SHA-256 of state dicts trained by benchmarks/gpu_check.py's pinned CPU "
                       "worker on the development machine, one entry per torch version; "
                       "refresh with benchmarks/prepare_gpu_check.sh")
        refs[got["torch"]] = got
        REFERENCE.write_text(json.dumps(doc, indent=1) + "\n")
    got["changed"] = changed
    return got


# ----------------------------------------------------------------------------- orchestration

def _device(name: str):
    from rmpm.pipeline.train import resolve_device
    return resolve_device(name)


def run_section_here(name: str, sz: Sizes, device: str, part_path: Path, limit: float) -> None:
    """Run one section in this process, saving its part (partial results too) to ``part_path``."""
    part: dict[str, Any] = {"status": "running"}

    def save() -> None:
        _write_json(part_path, part)

    t = _now()
    try:
        if name == "digests":
            section_digests(sz, part, save, limit)
        else:
            dev = _device(device)
            part["device"] = str(dev)
            if name == "train":
                section_train(sz, dev, part, save)
            elif name == "similarity":
                section_similarity(sz, dev, part, save)
            elif name == "pace":
                section_pace(sz, dev, part, save, deadline=t + limit)
            else:
                raise ValueError(f"section={name!r} is not allowed; choose one of: {SECTIONS}")
        part["status"] = "ok"
    except subprocess.TimeoutExpired as e:
        part.update(status="timeout", error=f"pinned worker exceeded {e.timeout:.0f} s")
    except Exception as e:
        part.update(status="error", error=f"{type(e).__name__}: {e}",
                    traceback=traceback.format_exc()[-4000:])
    part["seconds"] = _now() - t
    save()


class Runner:
    """Starts sections (as subprocesses or in this process), enforces their limits,
    merges their parts into the report and rewrites the report after each."""

    def __init__(self, args, sz: Sizes, report: dict, out: Path, parts: Path):
        self.args, self.sz, self.report, self.out, self.parts = args, sz, report, out, parts
        self.procs: dict[str, tuple[subprocess.Popen, float, float]] = {}

    def _cmd(self, name: str, limit: float) -> list[str]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name,
               "--part", str(self.parts / f"{name}.json"), "--limit", f"{limit:.1f}",
               "--device", self.args.device]
        return cmd + (["--dry-run"] if self.args.dry_run else [])

    def start(self, name: str, limit: float) -> None:
        limit = max(1.0, limit)
        self.report["sections"][name] = {"status": "running", "limit_seconds": limit}
        self.write()
        if self.args.in_process:
            run_section_here(name, self.sz, self.args.device, self.parts / f"{name}.json", limit)
            self.finish(name, limit)
            return
        print(f"[gpu_check] section {name}: limit {limit:.0f} s", flush=True)
        proc = subprocess.Popen(self._cmd(name, limit))
        self.procs[name] = (proc, _now(), limit)

    def wait(self, name: str) -> None:
        if name not in self.procs:
            return
        proc, t0, limit = self.procs.pop(name)
        # the section stops itself at its limit; the kill is for hangs (5 s grace + startup)
        try:
            proc.wait(timeout=max(1.0, t0 + limit + 20 - _now()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.finish(name, limit, killed=True)
            return
        self.finish(name, limit, returncode=proc.returncode)

    def finish(self, name: str, limit: float, killed: bool = False,
               returncode: int | None = 0) -> None:
        path = self.parts / f"{name}.json"
        part = json.loads(path.read_text()) if path.is_file() else {}
        part["limit_seconds"] = limit
        if killed:
            part.update(status="timeout", error=f"killed after its {limit:.0f} s limit "
                                                "(partial results above, if any)")
        elif part.get("status") in (None, "running"):
            part.update(status="error", error=f"section process ended with code {returncode} "
                                              "before reporting (crash?)")
        self.report["sections"][name] = part
        self.write()
        print(f"[gpu_check] section {name}: {part['status']}"
              + (f" ({part.get('error')})" if part["status"] != "ok" else "")
              + f", {part.get('seconds', float('nan')):.1f} s", flush=True)

    def write(self) -> None:
        self.report["elapsed_seconds"] = _now() - self.report["_t0"]
        clean = {k: v for k, v in self.report.items() if not k.startswith("_")}
        _write_json(self.out / "gpu_check.json", clean)
        (self.out / "gpu_check.txt").write_text(summary(clean))


def run_check(args) -> dict:
    sz = DRY if args.dry_run else FULL
    wanted = [s for s in SECTIONS if s in args.sections.split(",")]
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--sections: unknown {sorted(unknown)}; allowed: {','.join(SECTIONS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = _now()
    report: dict[str, Any] = {
        "_t0": t0, "check": "gpu_check", "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mode": "dry-run" if args.dry_run else "full", "budget_seconds": args.budget,
        "sizes": dataclasses.asdict(sz), "environment": environment(),
        "isolation": "in-process" if args.in_process else "one subprocess per section",
        "sections": {}}
    deadline = t0 + args.budget
    left = lambda: deadline - _now()  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="gpucheck-parts-") as tmp:
        runner = Runner(args, sz, report, out, Path(tmp))
        runner.write()
        # digests: one CPU core, concurrently with the GPU sections (not with --in-process)
        if "digests" in wanted and not args.in_process:
            runner.start("digests", 0.6 * args.budget)
        if "train" in wanted:
            runner.start("train", min(0.25 * args.budget, left() - 10))
            runner.wait("train")
        if "similarity" in wanted:
            runner.start("similarity", min(0.2 * args.budget, left() - 10))
            runner.wait("similarity")
        if "pace" in wanted:
            # leave time for the digest section to be collected and the report written
            runner.start("pace", left() - 15)
            runner.wait("pace")
        if "digests" in wanted:
            if args.in_process:
                runner.start("digests", max(30.0, left()))
            runner.wait("digests")
    report["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runner.write()
    return {k: v for k, v in report.items() if not k.startswith("_")}


# ----------------------------------------------------------------------------- summary

def _f(x, fmt=".3g") -> str:
    return "n/a" if x is None else format(x, fmt)


def summary(rep: dict) -> str:
    """The short text version of the report (the figures issue 14 asks for)."""
    env = rep.get("environment", {})
    lines = [f"gpu_check ({rep.get('mode')}), {rep.get('started')}, "
             f"{env.get('gpu', 'no GPU')} / {env.get('cpu')}; torch {env.get('torch')}, "
             f"python {env.get('python')}; {_f(rep.get('elapsed_seconds'), '.0f')} s of "
             f"{rep.get('budget_seconds')} s budget"]
    secs = rep.get("sections", {})
    for name in SECTIONS:
        s = secs.get(name)
        if s is None:
            continue
        head = f"[{name}] {s.get('status')}" + (f": {s.get('error')}" if s.get("error") else "")
        lines.append(head)
        try:
            lines += _summary_lines(name, s)
        except Exception as e:  # a partial section must not break the summary
            lines.append(f"  (summary incomplete: {type(e).__name__}: {e})")
    return "\n".join(lines) + "\n"


def _summary_lines(name: str, s: dict) -> list[str]:
    out = []
    if name == "train":
        for eng, e in s.get("engines", {}).items():
            out.append(f"  {eng:14} {e['model_epochs_per_s']:8.3g} model-epochs/s "
                       f"(loop only {e['loop_model_epochs_per_s']:.3g}; {e['members']} models, "
                       f"{e['seconds']:.1f} s) test acc mean {e['test_acc_mean']:.4f} "
                       f"min {e['test_acc_min']:.4f}")
        for eng, mm in s.get("match", {}).items():
            out.append(f"  {eng} vs single ({mm['members_compared']} members): max |test acc "
                       f"diff| {mm['max_abs_test_acc_diff']:.4f}, max rel weight diff "
                       f"{mm['max_rel_weight_diff']:.2e}")
        if "speedup" in s:
            out.append(f"  speed-up {s['speedup']:.1f}x; goal >= 50 model-epochs/s: "
                       f"{'met' if s['goal_50_model_epochs_per_s'] else 'NOT met'}")
    elif name == "similarity":
        for meas, m in s.get("measures", {}).items():
            out.append(f"  {meas:6} CPU {m['cpu_seconds']:.3f} s, {s.get('device')} "
                       f"{m['device_seconds']:.3f} s, ratio {m['cpu_over_device']:.1f}x, "
                       f"max |diff| {m['max_abs_diff']:.1e}")
        mem = s.get("memory", {})
        if "peak_gib" in mem:
            out.append(f"  memory {mem['models']}x{mem['inputs']}x{mem['neurons']}: peak "
                       f"{mem['peak_gib']:.2f} GiB allocated ({mem['activations_gib']:.2f} GiB "
                       f"activations), {mem['seconds']:.1f} s")
        elif "peak_rss_gib" in mem:
            out.append(f"  memory (CPU): peak RSS {mem['peak_rss_gib']:.2f} GiB, "
                       f"{mem['seconds']:.1f} s")
    elif name == "pace":
        for g in s.get("groups", []):
            out.append(f"  group of {g['members']:2d} {g['key']}: {g['model_epochs']} model-epochs "
                       f"in {g['seconds']:.1f} s (training loop {g['train_loop_seconds']:.1f} s)")
        d = s.get("dataset_estimate")
        if d:
            out.append(f"  {s['dataset']}: {d['groups_measured']}/{d['groups']} groups measured; "
                       f"whole data set about {d['total_minutes']:.1f} min")
        pe = s.get("profile_estimate")
        if pe:
            for ds, row in pe["datasets"].items():
                out.append(f"  {ds:14} {_f(row['hours'], '.2f')} h  ({row['how']})")
            out.append(f"  whole {s['profile']} profile: about {pe['total_hours']:.2f} h on this device")
    elif name == "digests":
        c = s.get("comparison", {})
        got = s.get("computed", {})
        by = c.get("by_reference_torch", {})
        out.append(f"  here: torch {got.get('torch')}, capability {got.get('cpu_capability')}, "
                   f"threads {got.get('threads')}, {got.get('cpu')}; references: "
                   + (", ".join(f"torch {v} (fresh {r.get('reference_fresh')})"
                                for v, r in by.items()) or "none"))
        for variant, rows in got.get("variants", {}).items():
            for n, row in rows.items():
                res = " ".join(f"{v}:{r.get('variants', {}).get(variant, {}).get(n, '-')}"
                               for v, r in by.items())
                extra = row.get("rel_weight_diff_vs_reference")
                out.append(f"  {variant:15} {n:32} {row['sha256'][:16]} {res or '-'}"
                           + (f" (rel weight diff {extra:.1e} vs torch "
                              f"{got.get('weights_compared_with_torch')})" if extra else ""))
        out.append(f"  all match, same torch: {c.get('all_match')}; by reference torch: "
                   f"{c.get('all_match_any_torch')}")
    return out


# ----------------------------------------------------------------------------- main

def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="folder for gpu_check.json and gpu_check.txt")
    ap.add_argument("--dry-run", action="store_true",
                    help="tiny sizes, seconds on a CPU (what the test suite runs)")
    ap.add_argument("--budget", type=float, default=330.0,
                    help="seconds for all sections together (default 330)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cuda, cpu")
    ap.add_argument("--in-process", action="store_true",
                    help="run the sections in this process (no isolation, no hard kill)")
    ap.add_argument("--write-reference", action="store_true",
                    help=f"compute the digests here and write {REFERENCE.relative_to(ROOT)}")
    # internal: one section in a child process, and the pinned digest worker
    ap.add_argument("--section", help=argparse.SUPPRESS)
    ap.add_argument("--part", help=argparse.SUPPRESS)
    ap.add_argument("--limit", type=float, default=60.0, help=argparse.SUPPRESS)
    ap.add_argument("--digest-worker", metavar="RESULT_JSON", help=argparse.SUPPRESS)
    ap.add_argument("--save-weights", help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> dict | None:
    ap = parser()
    args = ap.parse_args(argv)
    if args.budget <= 0:
        ap.error(f"--budget={args.budget} must be > 0 seconds")

    if args.digest_worker:
        ref = None if args.dry_run else str(REF_WEIGHTS)
        _write_json(Path(args.digest_worker), digest_worker(args.dry_run, ref, args.save_weights))
        return None
    if args.section:
        run_section_here(args.section, DRY if args.dry_run else FULL, args.device,
                         Path(args.part), args.limit)
        return None
    if args.write_reference:
        got = write_reference()
        print(f"{REFERENCE.relative_to(ROOT)}: "
              + ("written (digests changed: commit it)" if got["changed"] else "unchanged"))
        for variant, rows in got["variants"].items():
            for n, row in rows.items():
                print(f"  {variant:15} {n:32} {row['sha256']}")
        return got
    if not args.out:
        ap.error("--out is required (where gpu_check.json and gpu_check.txt go)")
    report = run_check(args)
    print(summary(report), end="", flush=True)
    return report


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        main(sys.argv[1:])
