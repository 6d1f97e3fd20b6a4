"""Command line: ``python -m rmpm <command>`` (or ``rmpm <command>``).

Commands:
  book      execute the notebooks under a profile and build the HTML book
  train     train (and evaluate) a profile's model populations, resumably
  data      make sure a data set is present (offline files or download)
  store     list the store, verify (and repair) it, sweep temporary folders, or export
            a build's entries to an archive and import one
  calibrate false-positive rate and power of every verdict rule, by simulation
  verify    check a store and result files against a published manifest
  env       print the environment deterministic workers must start with
"""
from __future__ import annotations

import argparse
import errno
import signal
import sys

from .analysis.profiles import PROFILES

#: what a stopped command can say about its work, set by the command while it runs
_PROGRESS: list = []
#: OS errors no retry fixes (a full disk, a read-only file system, no permission, a
#: file where a folder must be): one line, not a traceback
_FATAL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.ENOTDIR}


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's ``KeyboardInterrupt`` so that every clean-up that
    Ctrl-C runs (``finally`` blocks, cancelled tasks, killed subprocesses) runs for it."""

    signum = signal.SIGTERM


def _raise_terminated(signum, frame):
    raise Terminated()


def _stop_signals(handler) -> None:
    """Install ``handler`` for SIGTERM (and SIG_IGN for both, while stopping); only the
    main thread may, so ``main`` called from another thread leaves them alone."""
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        if handler is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _add_profile(p: argparse.ArgumentParser, default: str = "default") -> None:
    p.add_argument("--profile", default=default, choices=sorted(PROFILES),
                   help=f"run size (default: {default})")


def _add_engine(p: argparse.ArgumentParser, scheduler: bool = True) -> None:
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes of the embedded Dask cluster (default: the cores "
                        "available)")
    if scheduler:
        p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="use the Dask cluster at ADDRESS (default: $RMPM_SCHEDULER, else "
                            "an embedded one); its workers must start with `rmpm env`")
    p.add_argument("--fast", action="store_true",
                   help="opt out of deterministic mode: use this CPU's fastest kernels (the "
                        "numbers then match only on the same kind of CPU)")


def _calibration_progress(no_cache: bool):
    """What a stopped `rmpm calibrate` has stored: the scenarios it finished are cached."""
    import time

    from . import paths
    from .analysis.calibration import CACHE_SUFFIX
    started, folder = time.time(), paths.calibration_dir()

    def progress() -> str:
        if no_cache:
            return "nothing was stored (--no-cache)"
        done = sum(f.stat().st_mtime >= started for f in folder.glob(f"*{CACHE_SUFFIX}"))
        return (f"{done} scenario(s) simulated in this run are cached in {folder} (a rerun "
                "reuses them); the others were not finished")
    return progress


def _calibrate(args) -> int:
    import pandas as pd

    from ._checks import check_range
    from .analysis import calibration as C
    from .analysis.evidence import ALPHA
    check_range("--n-sim", args.n_sim, 1, integer=True)
    if args.alpha is None:
        args.alpha = ALPHA
    check_range("--alpha", args.alpha, 0.0, 1.0, lo_open=True)
    d = C.design(args.profile)
    if args.datasets is not None:
        if len(set(args.datasets)) != len(args.datasets):
            raise ValueError(f"--datasets {' '.join(args.datasets)} names a data set twice")
        d = d.replace(datasets=tuple(args.datasets))
    if args.replicates is not None:
        check_range("--replicates", args.replicates, 2, integer=True)
        d = d.replace(replicates=args.replicates)
    what_if = " (what if: " + ", ".join(
        x for x in (args.datasets and "--datasets", args.replicates and "--replicates") if x) \
        + ")" if args.datasets or args.replicates else ""
    print(f"profile {args.profile}{what_if}: {d.n_datasets} data set(s) "
          f"({', '.join(d.datasets)}) x {d.replicates} replicates x {len(d.factors)} factors "
          f"({int(d.shared_init.sum())} sharing initial weights); {d.n_models} reference "
          f"models on {d.n_inputs} inputs; C2 small sample {d.n_small}; {args.n_sim} "
          f"simulations per scenario, alpha = {args.alpha}")
    with pd.option_context("display.width", 250, "display.max_colwidth", 90,
                           "display.max_columns", 30):
        print("\nScenarios (every null is required to stay at or below alpha):")
        print(C.scenario_table().to_string(index=False))
        _PROGRESS.append(_calibration_progress(args.no_cache))
        cal = C.calibrate(d, n_sim=args.n_sim, seed=args.seed, alpha=args.alpha,
                          cache=not args.no_cache, progress=True)
        fmt = {"rate": "{:.3f}".format, "se": "{:.3f}".format, "seconds": "{:.1f}".format}
        print("\nEvery scenario and level (rate: false-positive rate under a null, power "
              "under an alternative):")
        shown = cal.drop(columns=["description"])
        shown["level"] = [C.level_label(c, lv) for c, lv in zip(shown["claim"], shown["level"])]
        print(shown.to_string(index=False, formatters=fmt))
        print("\nSummary:")
        print(C.summary_table(cal).drop(columns=["alternative"], errors="ignore").to_string(
            index=False, float_format=lambda v: f"{v:.3f}"))
    c = C.cost(cal)
    print(f"\ncost: {c['scenarios']} scenarios took {c['seconds_to_compute']:.1f} s to simulate; "
          f"{c['cached']} reused from the cache, {c['seconds_computed_now']:.1f} s computed now")
    bad = C.failures(cal, args.alpha)
    if len(bad):
        print("false-positive rate above alpha (beyond 2 SE):", file=sys.stderr)
        print(bad.to_string(index=False), file=sys.stderr)
        return 1
    print(f"every required false-positive rate is at most alpha = {args.alpha} within 2 SE")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rmpm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_book, _add_train, _add_data, _add_calibrate, _add_store, _add_verify,
                _add_env):
        add(sub)
    return parser


def _add_book(sub) -> None:
    p = sub.add_parser("book", help="execute notebooks and build the HTML book")
    _add_profile(p)
    p.add_argument("--only", nargs="*", help="notebook names (e.g. 02_populations) to execute")
    p.add_argument("--no-strict", action="store_true", help="do not fail on Sphinx warnings")
    p.add_argument("--clean", action="store_true", help="drop previously executed notebooks first")
    _add_engine(p, scheduler=False)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a profile's populations (finished models are reused)")
    _add_profile(p)
    p.add_argument("--dataset", nargs="*", help="data sets (default: the profile's)")
    p.add_argument("--factor", nargs="*", help="factors (default: all of the profile's)")
    p.add_argument("--reference", action="store_true",
                   help="train only the reference population (experiment 2)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--store", default=None, help="store folder (default: rmpm.paths.store_root())")
    p.add_argument("--shard", default=None, metavar="I/N",
                   help="run only part I of N (0 <= I < N) of the recipes, e.g. one job of a "
                        "job array; all parts may run at once on one shared store")
    p.add_argument("--dry-run", action="store_true",
                   help="print what would be trained and evaluated, and stop")
    _add_engine(p)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="make sure a data set is present")
    p.add_argument("names", nargs="+", help="data set names")
    p.add_argument("--offline", action="store_true",
                   help="never download (default: use local files, download what is missing)")


def _add_calibrate(sub) -> None:
    p = sub.add_parser("calibrate", help="false-positive rate and power of the verdict rules "
                                         "for a profile's design, by simulation")
    _add_profile(p)
    p.add_argument("--n-sim", type=int, default=1000,
                   help="simulations per scenario (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=None,
                   help="significance level of the rules (default: theirs, "
                        "rmpm.analysis.evidence.ALPHA)")
    p.add_argument("--datasets", nargs="+", default=None, metavar="NAME",
                   help="what if: the profile's design with these data sets instead")
    p.add_argument("--replicates", type=int, default=None, metavar="N",
                   help="what if: the profile's design with N replicates instead")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute every scenario instead of reusing cached simulations")


def _add_store(sub) -> None:
    p = sub.add_parser("store", help="inspect, verify, repair, export or import the result store")
    p.add_argument("action", choices=["ls", "verify", "sweep", "export", "import"],
                   help="ls: list trained models; verify: check every entry against its "
                        "manifest (exit 1 naming each damaged one); sweep: remove temporary "
                        "folders left by killed runs and old lock files nobody holds; export "
                        "--profile NAME FILE: one build's entries, result files and manifest "
                        "into archive FILE (.tar, .tar.gz, .tar.xz); import FILE: check every "
                        "digest of archive FILE, then add it to the store")
    p.add_argument("file", nargs="?", metavar="FILE", help="the archive (export and import)")
    p.add_argument("--store", default=None, help="store folder (default: rmpm.paths.store_root())")
    p.add_argument("--repair", action="store_true",
                   help="with verify: move damaged entries to the store's quarantine/ folder "
                        "(the next run recomputes them) and add manifests to legacy entries")
    p.add_argument("--profile", default=None, choices=sorted(PROFILES),
                   help="export: the profile whose build to export; import: refuse an archive "
                        "of any other profile")
    p.add_argument("--build", default=None, metavar="ID",
                   help="export: this build of the profile (default: its latest)")


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check a store and result files against a manifest")
    p.add_argument("manifest", help="a manifest.json published with a book build")
    p.add_argument("--store", default=None, help="store folder (default: rmpm.paths.store_root())")
    p.add_argument("--results", default=None,
                   help="result folder (default: the manifest's own build if it is here, "
                        "else the latest build of its profile)")


def _add_env(sub) -> None:
    p = sub.add_parser("env", help="print `export` lines for deterministic workers' job scripts")
    p.add_argument("--fast", action="store_true", help="the fast mode's environment instead")
    p.add_argument("--kernel", action="store_true",
                   help="the environment of a process that computes result files (a notebook "
                        "kernel): the workers' plus numpy's SIMD dispatch and OpenBLAS pinned")
    p.add_argument("--numerics", action="store_true",
                   help="instead: what computes this process's numbers (JSON), as each result "
                        "file records it; run under the kernel's exports to check them")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line's arguments, with the checks argparse cannot make itself."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if (extra and args.command == "store" and args.file is None and len(extra) == 1
            and not extra[0].startswith("-")):
        args.file = extra[0]  # argparse fills an optional positional only before options
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "repair", False) and args.action != "verify":
        parser.error("--repair only goes with `store verify`")
    if args.command == "store":
        _check_store_args(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import threading
    main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.getsignal(signal.SIGTERM) if main_thread else None
    old_int = signal.getsignal(signal.SIGINT) if main_thread else None
    _stop_signals(_raise_terminated)
    _PROGRESS.clear()
    try:
        from . import paths
        paths.check_folders(getattr(args, "store", None))  # every command, --dry-run too
        return COMMANDS[args.command](args)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (Terminated)
        return _interrupted(args.command, e)
    except (ValueError, KeyError, RuntimeError) as e:  # incl. StoreWriteError, DamagedEntryError
        print(f"rmpm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _FATAL_ERRNOS:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"rmpm {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_term)
            signal.signal(signal.SIGINT, old_int)


def _interrupted(command: str, e: KeyboardInterrupt) -> int:
    """One line saying what was stored and what was not; no workers left; 130 or 143."""
    signum = getattr(e, "signum", signal.SIGINT)
    _stop_signals(signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
    from .pipeline.engine import close_clients
    close_clients()  # the embedded cluster's workers end with it
    said = []
    for progress in _PROGRESS:
        try:
            said.append(progress())
        except Exception as err:  # noqa: BLE001 - the line must come out whatever happens
            said.append(f"(what is stored could not be told: {type(err).__name__})")
    note = getattr(e, "note", "")
    what = "; ".join([*said, *([note] if note else [])]) or "nothing was stored"
    print(f"rmpm {command}: stopped by {signal.Signals(signum).name}: {what}", file=sys.stderr)
    return 128 + signum


def _check_store_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Which of FILE, --profile and --build each `store` action takes."""
    a = args.action
    if a in ("export", "import") and not args.file:
        parser.error(f"`store {a}` needs FILE, the archive")
    if a not in ("export", "import") and args.file:
        parser.error(f"`store {a}` takes no FILE (only export and import do)")
    if a == "export" and not args.profile:
        parser.error(f"`store export` needs --profile, one of: {', '.join(sorted(PROFILES))}")
    if args.profile and a not in ("export", "import"):
        parser.error("--profile only goes with `store export` and `store import`")
    if args.build and a != "export":
        parser.error("--build only goes with `store export`")


def _parse_shard(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    if not (sep and i.strip().isdigit() and n.strip().isdigit()):
        raise ValueError(f"--shard={text!r} must look like I/N with whole numbers "
                         "0 <= I < N, e.g. 0/8")
    return int(i), int(n)


def _names_given(option: str, names: list[str] | None, allowed) -> None:
    """``--option`` with no names after it is a mistake, not "all" or "none"."""
    if names is not None and not names:
        raise ValueError(f"{option} needs at least one name; choose from: "
                         f"{', '.join(allowed)} (or leave {option} out for all)")


def _book(args: argparse.Namespace) -> int:
    from .analysis.populations import eval_spec, profile_recipes
    from .book.build import build_book
    from .book.notebooks import notebook_paths
    from .pipeline.store import Store
    _names_given("--only", args.only, [p.stem for p in notebook_paths()])
    _check_workers(args.workers)
    _PROGRESS.append(lambda: Store().progress(profile_recipes(args.profile),
                                              eval_spec(args.profile).key()))
    build_book(args.profile, only=args.only, strict=not args.no_strict, clean=args.clean,
               workers=args.workers, deterministic=not args.fast)
    return 0


def _train(args: argparse.Namespace) -> int:
    from .analysis.populations import eval_spec, profile_recipes, train_profile
    from .analysis.profiles import get_profile
    from .pipeline.recipe import FACTORS
    from .pipeline.runs import plan_table, preflight, summary_table
    p = get_profile(args.profile)
    _names_given("--dataset", args.dataset, p.datasets)
    _names_given("--factor", args.factor, [f for f in FACTORS if f in p.factors])
    _check_workers(args.workers)
    which = dict(datasets=args.dataset, factors=args.factor, reference_only=args.reference,
                 shard=_parse_shard(args.shard) if args.shard is not None else None)
    recipes, spec = profile_recipes(p, **which), eval_spec(p)
    if args.dry_run:
        print(plan_table(recipes, spec, args.store))
        return 0
    # a missing device, a read-only or full store or a data set that cannot be had
    # stops the run here, not after hours on the others
    store = preflight([r.dataset for r in recipes], args.store, args.device, "--device")
    _PROGRESS.append(lambda: store.progress(recipes, spec.key())
                     + "; the rest was not computed, and a rerun continues from there")
    results = train_profile(p, **which, device=args.device, store=store, workers=args.workers,
                            scheduler=args.scheduler, deterministic=not args.fast)
    print(summary_table(results))
    return 0


def _data(args: argparse.Namespace) -> int:
    from .pipeline import data as D
    sizes = D.ensure(args.names, download=False if args.offline else None)
    for name, (n_train, n_test) in sizes.items():
        print(f"{name}: {n_train} training and {n_test} test images")
    return 0


def _store(args: argparse.Namespace) -> int:
    from .pipeline.store import Store
    if args.action in ("export", "import"):
        from .book import archive
        if args.action == "export":
            archive.compression(args.file)  # a bad FILE name stops here, before any work
            rep = archive.export(args.profile, args.file, Store(args.store).require_existing(),
                                 build_id=args.build)
        else:
            rep = archive.import_archive(args.file, Store(args.store), profile=args.profile)
        print(rep.text())
        return 0
    store = Store(args.store).require_existing()
    if args.action == "sweep":
        from .pipeline.locks import sweep as sweep_locks
        print(f"removed {store.sweep()} temporary folder(s) and "
              f"{sweep_locks(store.root)} unused lock file(s) from {store.root}")
        return 0
    if args.action == "verify":
        return _store_verify(store, args.repair)
    return _ls(store)


def _verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .book import manifest as M
    report = M.verify(M.load(args.manifest), args.store,
                      Path(args.results) if args.results else None)
    print(report.text())
    return 0 if report.identical else 1


def _env(args: argparse.Namespace) -> int:
    from .pipeline import determinism as DT
    if args.numerics:
        import json
        print(json.dumps(DT.describe_numerics(), indent=1, default=str))
        return 0
    print("\n".join(DT.shell_exports(not args.fast, kernel=args.kernel)))
    return 0


def _check_workers(workers: int | None) -> None:
    if workers is not None and workers < 1:
        raise ValueError(f"--workers={workers} must be >= 1")


def _ls(store) -> int:
    """One row per trained model; a damaged entry is a DAMAGED row (not a crash)."""
    from .pipeline.store import ModelEntry, check_entry
    damaged = 0
    for d in store.entry_dirs("models"):
        problems, _ = check_entry(d, "models")
        if problems:
            damaged += 1
            print(f"{d.name[:12]} DAMAGED: {'; '.join(problems)}")
            continue
        e = ModelEntry(d)
        r, m = e.recipe, e.metrics
        print(f"{d.name[:12]} {r.dataset:14} {r.arch:6} w={r.width:<3} "
              f"ep={r.epochs:<3} test_acc={m['test_acc']:.4f}")
    if damaged:
        print(f"rmpm store: {damaged} damaged model entr{'y' if damaged == 1 else 'ies'}; "
              "`python -m rmpm store verify --repair` moves them to quarantine and the next "
              "run recomputes them", file=sys.stderr)
    return 1 if damaged else 0


def _store_verify(store, repair: bool) -> int:
    reports = store.verify(repair=repair)
    bad = [r for r in reports if not r.ok]
    for r in bad:
        rel = r.path.relative_to(store.root)
        where = f" -> moved to {r.moved_to}" if r.moved_to else ""
        print(f"DAMAGED {rel}: {'; '.join(r.problems)}{where}")
    legacy = sum(r.legacy and r.ok for r in reports)
    print(f"checked {len(reports)} entries in {store.root}: {len(bad)} damaged, "
          f"{legacy} legacy (no manifest; {'manifest added' if repair else 'checked by parsing'})")
    if bad:
        print("the damaged entries " + ("were moved to quarantine/; the next run recomputes them"
                                        if repair else "are recomputed by the next run (which "
                                        "moves them to quarantine/), or run `python -m rmpm store "
                                        "verify --repair` now"), file=sys.stderr)
    return 1 if bad else 0


#: what each command runs
COMMANDS = {"book": _book, "train": _train, "data": _data, "calibrate": _calibrate,
            "store": _store, "verify": _verify, "env": _env}
