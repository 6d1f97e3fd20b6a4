"""Every figure and every verdict of a built book says where it came from, and what it
says matches the build's manifest.

- On a synthetic build (tiny notebooks executed by papermill, always run): every
  figure's provenance line names the content digest the manifest lists for its result,
  the build and the commit; a changed result is caught; a result rewritten with the same
  values (a new ``written`` time, so a new file SHA-256) still matches.
- On hand-made HTML: the checker of a built book finds a missing line, a wrong digest,
  a missing verdict row and a link back that lands nowhere.
- On the built book, when there is one (``python -m rmpm book --profile smoke``; like
  tests/book/test_browser.py, skipped when none is built unless RMPM_BOOK_REQUIRED=1): every
  numbered figure of every chapter carries its line, every verdict row its provenance,
  their digests, build and commit are the manifest's, and the reproducibility page links
  back to every one of them.
"""
from __future__ import annotations

import hashlib
import json
import os

import nbformat
import pytest

from rmpm import paths
from rmpm.analysis import verdicts as V
from rmpm.book import build as B, builds as BD, claims_page as CP, manifest as M
from rmpm.book import notebooks as NB, provenance as P, records as R, reproducibility as RP

HTML = paths.repo_root() / "_build" / "html"
REQUIRED = os.environ.get("RMPM_BOOK_REQUIRED") == "1"


# --- a synthetic build --------------------------------------------------------------------

def _notebook(path, *cells):
    """A chapter: a parameters cell, then ``cells`` ((source, figure name or None))."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params]
    for source, fig in cells:
        c = nbformat.v4.new_code_cell(source)
        if fig:
            c.metadata["mystnb"] = {"figure": {"caption": f"Figure {fig}.", "name": fig}}
        nb.cells.append(c)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbformat.write(nb, path)


PLOT = "fig, ax = plt.subplots(figsize=(2, 2))\nax.plot([1, 3, 2])\nplt.show()"


@pytest.fixture()
def built(tmp_path, monkeypatch):
    """Two chapters run by :func:`rmpm.book.build.run_notebooks`: one saves a result and
    has two figures, one has a figure and no result; and the build's manifest."""
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    _notebook(nbs / "01_figs.ipynb",
              ("import matplotlib.pyplot as plt\nfrom rmpm.book import records", None),
              ("records.save('01_figs', profile, {'rm': [0.25, 0.5], 'seconds': 1.5})\n" + PLOT,
               "fig-one"),
              (PLOT, "fig-two"))
    _notebook(nbs / "02_plain.ipynb", ("import matplotlib.pyplot as plt", None),
              (PLOT, "fig-three"))
    monkeypatch.setattr(paths, "notebooks_dir", lambda: nbs)
    monkeypatch.setattr(paths, "executed_dir", lambda: tmp_path / "executed")
    monkeypatch.setattr(NB, "kernel_name", lambda: "python3")
    B.run_notebooks("smoke", builds_dir=tmp_path / "builds")
    build = BD.latest_build("smoke", tmp_path / "builds")
    commit = P.git_commit()
    env = {"profile": "smoke", "build": build.id, "git_commit": commit}
    manifest = M.compute([], "spec", results_dir=build.results_dir, environment=env)
    return build, manifest


def _lines(executed):
    out = {}
    for path in sorted(executed.glob("*.ipynb")):
        for fig, text in P.figure_lines(nbformat.read(path, as_version=4)).items():
            out[f"{path.stem}#{fig}"] = text
    return out


@pytest.mark.trains
def test_the_lines_of_a_build_match_its_manifest(built):
    build, manifest = built
    lines = _lines(paths.executed_dir())
    assert set(lines) == {"01_figs#fig-one", "01_figs#fig-two", "02_plain#fig-three"}
    assert P.check_lines(lines, manifest) == []
    # the line names the manifest's content digest, not the file's SHA-256
    content = manifest["results"]["01_figs"]["digest"]
    file_sha = hashlib.sha256((build.results_dir / "01_figs.json").read_bytes()).hexdigest()
    assert content != file_sha
    assert f"content SHA-256 `{content[:16]}…`" in lines["01_figs#fig-one"]
    assert file_sha[:16] not in lines["01_figs#fig-one"]
    # a chapter without a result file names none
    assert P.parse_line(lines["02_plain#fig-three"])["result"] is None
    # the reproducibility page's table names the same digest and links every figure
    with BD.build_env(build):
        rows = "\n".join(RP.backlinks_section({"build": build.id, "git_commit": P.git_commit()}))
    for fig in ("fig-one", "fig-two", "fig-three"):
        assert f"| {{numref}}`{fig}` <br>in [" in rows
    assert rows.count(f">{content[:16]}…</code>") == 2
    for claim in V.CHAPTER:  # no chapter of this build wrote a claim's result
        assert f'08_claims.html#{P.verdict_anchor(claim)}">verdict {claim}</a>' in rows
    assert rows.count("not written") == len(V.CHAPTER)


@pytest.mark.trains
def test_a_changed_result_is_caught_and_a_rewritten_one_is_not(built):
    build, manifest = built
    lines = _lines(paths.executed_dir())
    path = build.results_dir / "01_figs.json"
    doc = json.loads(path.read_text())
    # the same values written again later: another file, the same content
    path.write_text(json.dumps({**doc, "written": "2030-01-01T00:00:00+0000"}))
    again = M.compute([], "spec", results_dir=build.results_dir,
                    environment=manifest["environment"])
    assert P.check_lines(lines, again) == []
    # changed values: both figures of that chapter are caught, the other is not
    path.write_text(json.dumps({**doc, "values": {**doc["values"], "rm": [0.25, 0.51]}}))
    changed = M.compute([], "spec", results_dir=build.results_dir,
                      environment=manifest["environment"])
    problems = P.check_lines(lines, changed)
    assert len(problems) == 2 and all("is not the manifest's" in p for p in problems)
    assert {p.split(":")[0] for p in problems} == {"01_figs#fig-one", "01_figs#fig-two"}
    # another build's or commit's manifest does not match either
    other = {**manifest, "environment": {**manifest["environment"], "build": "elsewhere",
                                         "git_commit": "f" * 40}}
    problems = P.check_lines(lines, other)
    assert sum("build" in p for p in problems) == 3 and sum("commit" in p for p in problems) == 3
    # ...unless the build is the one that ran the chapter (an --only build reused it)
    assert not [p for p in P.check_lines(lines, other, builds={"01_figs": build.id,
                                                                "02_plain": build.id})
                if "build" in p]


def test_verdict_rows_carry_their_provenance(tmp_path):
    for chapter in ("03_rm_by_factor", "05_rm_vs_pm"):
        (tmp_path / f"{chapter}.json").write_text(json.dumps(
            {"name": chapter, "profile": "smoke", "values": {"x": chapter}}))
    prov = CP.verdict_provenance("b-1", "0123456789abcdef (with uncommitted changes)", tmp_path)
    assert set(prov) == set(V.CLAIMS)
    assert prov["C1"]["evidence"] == "rmpm.analysis.evidence.c1_evidence"
    assert prov["C1"]["rules"] == ["rmpm.analysis.verdicts.verdict_c1", "rmpm.analysis.verdicts.c1_level"]
    assert prov["C2"]["digest"] is None  # chapter 6 did not run
    manifest = M.compute([], "spec", results_dir=tmp_path,
                       environment={"build": "b-1", "git_commit": "0123456789abcdef"})
    assert prov["C1"]["digest"] == manifest["results"]["03_rm_by_factor"]["digest"]
    verdicts = [V.Verdict(V.CLAIMS[c], "not evidence", "a | b", "why") for c in V.CLAIMS]
    table = CP.verdict_table(verdicts, prov).splitlines()
    assert len(table) == 2 + len(V.CLAIMS)
    row = table[2]
    assert row.startswith('| <span id="verdict-c1"></span>C1: ')
    assert "a \\| b" in row and row.count(" | ") == 3  # the pipe in the text is escaped
    assert "**not evidence** <br>why" in row
    assert "{download}`03_rm_by_factor.ipynb <03_rm_by_factor.ipynb>`" in row
    text = P.plain(row)
    assert "evidence rmpm.analysis.evidence.c1_evidence rule rmpm.analysis.verdicts.verdict_c1, " \
           "rmpm.analysis.verdicts.c1_level result 03_rm_by_factor.json (content SHA-256 " \
           f"{prov['C1']['digest'][:16]}…) build b-1 commit 0123456789ab " \
           "(with uncommitted changes)" in text
    # dotted names may break after their dots in the narrow column
    assert "rmpm.<wbr>analysis.<wbr>evidence.<wbr>c1_evidence" in row
    assert P.check_lines({"C1": row.split(" | ")[3], "C2": table[3].split(" | ")[3]},
                         manifest) == [
        "C2: result 06_finite_samples is not in the manifest"]


def test_each_claims_evidence_function_is_what_its_chapter_calls():
    for claim, chapter in V.CHAPTER.items():
        nb = nbformat.read(paths.notebooks_dir() / f"{chapter}.ipynb", as_version=4)
        code = [c.source for c in nb.cells if c.cell_type == "code"]
        imports = P.notebook_imports(code)
        calls = {f for src in code for f in P.rmpm_calls(src, imports)}
        assert P.qualname(V.EVIDENCE_FUNCTIONS[claim]) in calls, (claim, chapter)


# --- the checker of a built book, on hand-made HTML ---------------------------------------

def _html_line(line: str, download: str) -> str:
    """A provenance line as the book renders it (the download role as a link)."""
    import re
    text = re.sub(r"\{download\}`([^`<]*?) <[^`]*>`",
                  rf'<a class="reference download internal" href="{download}">\1</a>', line)
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", text)


def _fake_book(root, manifest, *, drop_line=False, backlink_to="fig-a"):
    """A minimal ``_build/html``: one chapter with two figures, the Claims page with one
    verdict row, the reproducibility page linking back to them."""
    env = manifest["environment"]
    exe, gen, dl = root / "book" / "_executed", root / "book" / "_generated", root / "_downloads"
    for d in (exe, gen, dl / "x", dl / "y"):
        d.mkdir(parents=True)
    for sub, name in (("x", "01_figs"), ("y", "03_rm_by_factor")):
        nb = nbformat.v4.new_notebook()
        nb.metadata["papermill"] = {"exception": None}
        nbformat.write(nb, dl / sub / f"{name}.ipynb")
    digest = manifest["results"]["01_figs"]["digest"]
    line = P.line("01_figs", ["rmpm.book.plots.f"], "01_figs", digest, env["build"],
                  env["git_commit"])
    small = f"<p>{_html_line(line, '../../_downloads/x/01_figs.ipynb')}</p>"
    (exe / "01_figs.html").write_text(
        f'<figure id="fig-a"><img/></figure>{small}'
        f'<figure id="fig-b"><img/></figure>{"" if drop_line else small}')
    pv = CP.verdict_provenance(env["build"], env["git_commit"], root / "results")
    vline = P.verdict_line(pv["C1"]["chapter"], pv["C1"]["evidence"], pv["C1"]["rules"],
                           "01_figs", digest, env["build"], env["git_commit"])
    (exe / "08_claims.html").write_text(
        '<table><tbody><tr><td><span id="verdict-c1"></span>C1</td><td>'
        + _html_line(vline, "../../_downloads/y/03_rm_by_factor.ipynb")
        + "</td></tr></tbody></table>")
    rows = "".join(
        f'<tr><td><a href="../_executed/{page}.html#{anchor}">x</a></td><td>01_figs</td>'
        f"<td><code>f</code></td><td><code>01_figs.<wbr>json</code> "
        f"<code>{digest[:16]}…</code></td></tr>"
        for page, anchor in (("01_figs", backlink_to), ("01_figs", "fig-b"),
                             ("08_claims", "verdict-c1")))
    (gen / "reproducibility.html").write_text(
        f"<h2>{P.BACKLINKS_TITLE}</h2><table><tbody>{rows}</tbody></table>")


@pytest.fixture()
def manifest(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "01_figs.json").write_text(json.dumps({"values": {"a": 1}}))
    return M.compute([], "spec", results_dir=tmp_path / "results",
                   environment={"build": "b-1", "git_commit": "0123456789abcdef0123"})


def test_the_book_checker_passes_a_good_book(tmp_path, manifest):
    _fake_book(tmp_path / "html", manifest)
    report = P.check_html_book(tmp_path / "html", manifest, claims=("C1",))
    assert report["problems"] == []
    assert (report["figures"], report["verdicts"], report["backlinks"]) == (2, 1, 3)
    assert report["lines_with_digest"] == report["backlinks_with_digest"] == 3


def test_the_book_checker_finds_what_is_wrong(tmp_path, manifest):
    _fake_book(tmp_path / "html", manifest, drop_line=True, backlink_to="fig-nowhere")
    wrong = {**manifest, "results": {"01_figs": {"digest": "0" * 64}}}
    problems = P.check_html_book(tmp_path / "html", wrong, claims=("C1", "C2"))["problems"]
    text = "\n".join(problems)
    assert "01_figs#fig-b: no provenance line under the figure" in text
    assert "08_claims#verdict-c2: no verdict row with a provenance line" in text
    assert "01_figs#fig-a: digest" in text and "08_claims#verdict-c1: digest" in text
    assert "the link ../_executed/01_figs.html#fig-nowhere lands nowhere" in text
    assert "no link back to 01_figs#fig-a" in text
    assert "the digest of 01_figs in the row of" in text


# --- the built book --------------------------------------------------------------------------

def _book_figures() -> set[str]:
    return {c.metadata["mystnb"]["figure"]["name"]
            for path in NB.notebook_paths()
            for c in nbformat.read(path, as_version=4).cells
            if c.metadata.get("mystnb", {}).get("figure")}


def test_the_built_book_carries_provenance_that_matches_its_manifest():
    if not (HTML / "index.html").is_file() or not (HTML / "manifest.json").is_file():
        why = f"no built book with a manifest at {HTML} (python -m rmpm book --profile smoke)"
        if REQUIRED:
            pytest.fail(why)
        pytest.skip(why)
    manifest = json.loads((HTML / "manifest.json").read_text())
    info = paths.generated_dir() / "build_info.json"
    status = json.loads(info.read_text()).get("execution") if info.is_file() else None
    # chapters an --only build reused name the build that ran them
    builds = {k: v["build"] for k, v in ((status or {}).get("notebooks") or {}).items()
              if v.get("build")}
    report = P.check_html_book(HTML, manifest, builds)
    assert report["problems"] == [], "\n".join(report["problems"])
    assert report["figures"] == len(_book_figures()) >= 20
    assert report["verdicts"] == len(V.CLAIMS)
    assert report["backlinks"] == report["figures"] + report["verdicts"]
    assert report["lines"] == report["figures"] + report["verdicts"]
    # the page names the same digests as the lines (every claim's chapter ran, so every
    # verdict names one)
    assert report["backlinks_with_digest"] == report["lines_with_digest"] >= report["verdicts"]
    # every result a line names has the content digest of the build's own result file
    with BD.build_env(BD.Build(manifest["environment"]["profile"], manifest["environment"]["build"],
                             BD.builds_root() / manifest["environment"]["profile"]
                             / manifest["environment"]["build"])):
        here = R.content_digests()
    if here:  # the build's folder is on this machine (not an imported book)
        assert {k: v["digest"] for k, v in manifest["results"].items()} == here
