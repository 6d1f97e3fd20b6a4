"""Command line: ``python -m rmpm <command>`` (or ``rmpm <command>``).

Commands:
  book      execute the notebooks under a profile and build the HTML book
  train     train (and evaluate) a profile's model populations, resumably
  data      make sure a data set is present (offline files or download)
  store     list the store or sweep temporary folders left by killed runs
  verify    check a store and result files against a published manifest
  env       print the environment deterministic workers must start with
"""
from __future__ import annotations

import argparse
import sys

from .profiles import PROFILES


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rmpm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("book", help="execute notebooks and build the HTML book")
    _add_profile(p)
    p.add_argument("--only", nargs="*", help="notebook names (e.g. 02_populations) to execute")
    p.add_argument("--no-strict", action="store_true", help="do not fail on Sphinx warnings")
    p.add_argument("--clean", action="store_true", help="drop previously executed notebooks first")
    _add_engine(p, scheduler=False)

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

    p = sub.add_parser("data", help="make sure a data set is present")
    p.add_argument("names", nargs="+", help="data set names")
    p.add_argument("--offline", action="store_true",
                   help="never download (default: use local files, download what is missing)")

    p = sub.add_parser("store", help="inspect the result store")
    p.add_argument("action", choices=["ls", "sweep"])
    p.add_argument("--store", default=None)

    p = sub.add_parser("verify", help="check a store and result files against a manifest")
    p.add_argument("manifest", help="a manifest.json published with a book build")
    p.add_argument("--store", default=None, help="store folder (default: rmpm.paths.store_root())")
    p.add_argument("--results", default=None,
                   help="result folder (default: the book's, book/_generated/results)")

    p = sub.add_parser("env", help="print `export` lines for deterministic workers' job scripts")
    p.add_argument("--fast", action="store_true", help="the fast mode's environment instead")

    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, KeyError, RuntimeError) as e:
        print(f"rmpm {args.command}: error: {e}", file=sys.stderr)
        return 2


def _parse_shard(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    if not (sep and i.strip().isdigit() and n.strip().isdigit()):
        raise ValueError(f"--shard={text!r} must look like I/N with whole numbers "
                         "0 <= I < N, e.g. 0/8")
    return int(i), int(n)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "book":
        from .book import build
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers={args.workers} must be >= 1")
        build(args.profile, only=args.only, strict=not args.no_strict, clean=args.clean,
              workers=args.workers, deterministic=not args.fast)
        return 0
    if args.command == "train":
        from .experiments import eval_spec, profile_recipes
        from .runs import plan_table, run_recipes, shard, summary_table
        recipes = profile_recipes(args.profile, datasets=args.dataset, factors=args.factor,
                                  reference_only=args.reference)
        if args.shard is not None:
            recipes = shard(recipes, *_parse_shard(args.shard))
        spec = eval_spec(args.profile)
        if args.dry_run:
            print(plan_table(recipes, spec, args.store))
            return 0
        from .data import ensure
        ensure([r.dataset for r in recipes])  # fail now, not after hours on the others
        if args.workers is not None and args.workers < 1:
            raise ValueError(f"--workers={args.workers} must be >= 1")
        results = run_recipes(recipes, spec, args.store, device=args.device,
                              workers=args.workers, scheduler=args.scheduler,
                              deterministic=not args.fast)
        print(summary_table(results))
        return 0
    if args.command == "data":
        from . import data as D
        sizes = D.ensure(args.names, download=False if args.offline else None)
        for name, (n_train, n_test) in sizes.items():
            print(f"{name}: {n_train} training and {n_test} test images")
        return 0
    if args.command == "store":
        from .store import Store
        store = Store(args.store)
        if args.action == "sweep":
            print(f"removed {store.sweep()} temporary folder(s) from {store.root}")
        else:
            for e in store.models():
                r, m = e.recipe, e.metrics
                print(f"{e.path.name[:12]} {r.dataset:14} {r.arch:6} w={r.width:<3} "
                      f"ep={r.epochs:<3} test_acc={m['test_acc']:.4f}")
        return 0
    if args.command == "verify":
        from pathlib import Path

        from . import manifest as M
        report = M.verify(M.load(args.manifest), args.store,
                          Path(args.results) if args.results else None)
        print(report.text())
        return 0 if report.identical else 1
    if args.command == "env":
        from .determinism import shell_exports
        print("\n".join(shell_exports(not args.fast)))
        return 0
    raise AssertionError(args.command)
