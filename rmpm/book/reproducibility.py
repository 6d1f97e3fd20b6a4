"""The reproducibility page: how the book was built (commands, environment, the
profile, how the numbers were computed), what ran, every result file with its
digests, and a link back to every figure and verdict with where it came from.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import paths
from ..analysis.populations import eval_spec
from ..analysis.profiles import Profile, get_profile
from ..atomic import atomic_write_text
from . import records
from .claims_page import verdict_provenance
from .notebooks import notebook_paths
from .provenance import BACKLINKS_TITLE, figure_records, ident, verdict_anchor


def reproducibility_page(info: dict[str, Any], p: Profile | None = None) -> str:
    """Markdown for the reproducibility page, from the build info and the result files."""
    p = p or get_profile(info["profile"])
    lines = [
        "# Reproducibility", "",
        f"This book was built with profile **`{p.name}`** ({p.description}) on "
        f"{info['built']}, from git commit `{info['git_commit']}`.", "",
        "## Commands", "",
        "```bash",
        f"make book PROFILE={p.name}      # set up, execute every notebook, build this book",
        "make test                       # set up, run the tests",
        f"python -m rmpm book --profile {p.name}   # the same build inside the environment",
        f"python -m rmpm train --profile {p.name}  # only train the profile's models",
        "```", "",
        "## Environment", "",
        "| component | version |", "|---|---|",
        f"| Python | {info['python']} |", f"| PyTorch | {info['torch']} |",
        f"| platform | {info['platform']} |", f"| CPU cores | {info['cpu_count']} |",
        f"| CUDA available | {info['cuda']} |", "",
        *compute_section(info),
        "## Profile", "",
        "| setting | value |", "|---|---|",
        f"| data sets | {', '.join(p.datasets)} |",
        f"| replicates per population | {p.replicates} |",
        f"| reference population size | {p.reference_seeds} |",
        f"| SVCCA variance kept | {p.svcca_keep} |",
        f"| bootstrap resamples | {p.n_boot} |",
        f"| evaluation spec | `{json.dumps(eval_spec(p).to_dict())}` |",
        f"| evaluation spec key | `{eval_spec(p).key()}` |",
        "", "Base recipe of the factor populations, and the reference recipe, per data set:", "",
    ]
    for ds in p.datasets:
        lines += [f"- `{ds}` base: `{json.dumps(p.base[ds].to_dict())}`",
                  f"- `{ds}` reference: `{json.dumps(p.reference[ds].to_dict())}`"]
    lines += ["", "Factors and their values (seed-like factors: offsets added to the "
              "replicate's seed):", "", "| factor | values |", "|---|---|"]
    lines += [f"| {f} | {', '.join(map(str, v))} |" for f, v in p.factors.items()]
    lines += execution_section(info)
    lines += ["", "## Timings", "", "| notebook | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in info["timings_s"].items()]
    where = (f"build `{info['build']}`, `book/_generated/builds/{p.name}/{info['build']}/results/`"
             if info.get("build") else f"`{records.results_dir()}`")
    content = records.content_digests()
    lines += [f"| **total** | **{info['total_s']:.1f}** |", "",
              "## Result files", "",
              f"Every number in the Claims page is read from one of these files ({where}; "
              "runs outside a book build write elsewhere and cannot change them); the build "
              "that wrote each, and two digests: the **content** SHA-256 of its values, "
              "which the manifest lists, `rmpm verify` compares and every provenance line "
              "names, and the SHA-256 of the file, which also covers when it was written "
              "(so it differs between two builds of the same numbers):", "",
              "| result | written by build | content SHA-256 | file SHA-256 |",
              "|---|---|---|---|"]
    lines += [f"| {k} | `{records.load(k).get('build', '?')}` | `{content.get(k)}` | `{v}` |"
              for k, v in records.file_digests().items()]
    lines += ["", "Trained models and evaluations live in the content-addressed store "
              "(`rmpm.paths.store_root()`), keyed by the SHA-256 of their recipe; the "
              "result files list the keys of the models they used.", ""]
    lines += backlinks_section(info)
    return "\n".join(lines)


def backlinks_section(info: dict[str, Any]) -> list[str]:
    """The page's table of every numbered figure and every verdict, each linked to where
    it stands in the book, with what computed it and the result file it depends on
    (what its provenance line says; :mod:`rmpm.book.provenance`)."""
    figures = figure_records([paths.executed_dir() / p.name for p in notebook_paths()])
    verdicts = verdict_provenance(info.get("build"), info.get("git_commit"))

    def result(name: str | None, digest: str | None) -> str:
        if not name:
            return "none (the chapter saves no result)"
        return ident(f"{name}.json") + " <br>" + (ident(f"{digest[:16]}…") if digest
                                                  else "not written")
    # three columns, names that break after their dots (ident): five did not fit the page
    lines = [f"## {BACKLINKS_TITLE}", "",
             "Every numbered figure has a provenance line under it, and every verdict on the "
             "Claims page one in its row: the notebook (with its executed `.ipynb` to "
             "download), the `rmpm` functions that computed it, the result file it depends on "
             "and that file's content SHA-256 (as in the manifest), the build and the commit. "
             "They are all listed here, each linked to where it stands:", "",
             "| figure or verdict | computed by | result, content SHA-256 |",
             "|---|---|---|"]
    for f in figures:
        calls = ", ".join(ident(c) for c in f.get("calls") or []) or "(no rmpm call)"
        lines.append(f"| {{numref}}`{f['figure']}` <br>in [{f['notebook']}](../_executed/"
                     f"{f['notebook']}.ipynb) | {calls} | "
                     f"{result(f.get('result'), f.get('digest'))} |")
    for c, v in verdicts.items():
        # a raw link: a table row cannot carry a Sphinx label
        link = f'<a href="../_executed/08_claims.html#{verdict_anchor(c)}">verdict {c}</a>'
        lines.append(f"| {link} <br>evidence from [{v['chapter']}](../_executed/"
                     f"{v['chapter']}.ipynb) | evidence {ident(v['evidence'])}; "
                     f"rule {', '.join(ident(r) for r in v['rules'])} | "
                     f"{result(v['result'], v['digest'])} |")
    return lines + [""]


def execution_section(info: dict[str, Any]) -> list[str]:
    """The page's "Execution status": per notebook, whether it ran in this build or was
    reused from an earlier one (an ``--only`` build), its run time and papermill's status."""
    status = info.get("execution")
    if not status:
        return []
    here = status.get("build")
    lines = ["", "## Execution status", "",
             f"Every chapter is a notebook executed by papermill. Build `{here}` "
             + ("executed all of them." if all(e["state"] == "ran" for e in
                                               status["notebooks"].values())
                else "executed those marked *ran*; the others are *reused*: their results "
                     "and pages come from the earlier build named (an `--only` build)."), "",
             "| notebook | in this build | executed by build | run time (s) | papermill status |",
             "|---|---|---|---|---|"]
    for name, e in status["notebooks"].items():
        secs = "" if e.get("seconds") is None else f"{e['seconds']:.1f}"
        lines.append(f"| [{name}](../_executed/{name}.ipynb) | {e['state']} | "
                     f"`{e.get('build') or '?'}` | {secs} | {e.get('papermill') or 'unknown'} |")
    return lines


def compute_section(info: dict[str, Any]) -> list[str]:
    """The page's "How the numbers were computed" and "Manifest" sections."""
    eng = info.get("engine") or {}
    if not eng:
        return []
    det = eng.get("deterministic", True)
    env = info.get("worker_env", {})
    lines = [
        "## How the numbers were computed", "",
        "| setting | value |", "|---|---|",
        f"| CPU | {info.get('cpu_model', 'unknown')} (native ISA: "
        f"{info.get('cpu_capability_native', 'unknown')}) |",
        f"| mode | {'deterministic: CPU kernels pinned to AVX2, one thread' if det else 'fast: this CPU’s own kernels (numbers match only on the same kind of CPU)'} |",
        f"| engine | Dask, {eng.get('scheduler')}, {eng.get('workers')} worker process(es) "
        f"× {eng.get('threads_per_worker', 1)} thread |",
        f"| worker and kernel environment | `{' '.join(f'{k}={v}' for k, v in env.items())}` |",
    ]
    lines += [f"| {k} | {v} |" for k, v in (info.get("libraries") or {}).items()]
    lines += ["", ("In deterministic mode every model is trained and evaluated in a worker "
                   "process started with this environment, so the stored weights and arrays "
                   "are the same bits on any x86-64 CPU with AVX2, whatever its own ISA, "
                   "core count, worker count or the order of the recipes (tested in "
                   "`tests/pipeline/test_engine.py`). On a GPU, deterministic algorithms make reruns on "
                   "the same GPU model and library versions identical, not runs on different "
                   "GPU models.") if det else "", "",
              "## Manifest", "",
              "`manifest.json`, published next to this book (and in `book/_generated/`), "
              "holds a content digest of every stored model (its weights), evaluation (its "
              "arrays) and result file (its values) this build used, with their numbers. "
              "Check your store or rebuilt book against it:", "",
              "```bash", "python -m rmpm verify manifest.json", "```", ""]
    mpath = paths.generated_dir() / "manifest.json"
    if mpath.is_file():
        m = json.loads(mpath.read_text())
        lines += [f"It lists {len(m['models'])} models, {len(m['evals'])} evaluations and "
                  f"{len(m['results'])} result files.", "",
                  "| entry | kind | SHA-256 of its content |", "|---|---|---|"]
        for kind, sec in (("result", "results"), ("model", "models"), ("evaluation", "evals")):
            lines += [f"| `{k if kind == 'result' else k[:12]}` | {kind} | `{v['digest']}` |"
                      for k, v in m[sec].items()]
        lines.append("")
    return lines


def write_reproducibility_page(info: dict[str, Any], p: Profile | None = None) -> Path:
    path = paths.generated_dir() / "reproducibility.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, reproducibility_page(info, p))
    return path
