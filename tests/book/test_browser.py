"""The book and the notebooks as a reader meets them, in Debian's chromium driven by
Playwright (``make check-browser``; no browser is downloaded).

1. Every page of the built book loads from file:// with the network blocked, with no
   console error, every image loaded, every formula typeset by the MathJax shipped
   with the book, and the navigation reaching every chapter. The references page lists
   every entry of book/references.bib and every citation lands on its entry; figures
   and the Claims page's verdicts show their provenance, and the reproducibility page's
   links back land on them.
2. JupyterLab opens a chapter on the project kernel "Python (rmpm)", runs all its
   cells from the Run menu, and shows no error output.

Skipped when chromium or Playwright is missing (or, for 1, when no book is built);
``make check-browser`` sets RMPM_BROWSER_REQUIRED=1, which turns those skips into
failures. RMPM_SCREENSHOTS names a folder for screenshots.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml

from rmpm import paths

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("RMPM_CHROMIUM", "/usr/bin/chromium")
# headless, and nothing that phones home (updates, sync, QUIC probes)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
REQUIRED = os.environ.get("RMPM_BROWSER_REQUIRED") == "1"
HTML = paths.repo_root() / "_build" / "html"
LAB_CHAPTER = os.environ.get("RMPM_LAB_CHAPTER", "04_pm_iid_ood")
# TeX that MathJax should have replaced; its presence in visible text means a formula
# was not typeset
RAW_TEX = re.compile(r"\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{")


def _unavailable(why: str) -> None:
    if REQUIRED:
        pytest.fail(why)
    pytest.skip(why)


def _screenshot(page, name: str, **kw) -> None:
    folder = os.environ.get("RMPM_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), **kw)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (make check-browser installs it)")
    if not os.access(CHROMIUM, os.X_OK):
        _unavailable(f"no chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _offline_context(browser, allow_localhost: bool = False):
    """A browser context in which every request that is not a local file (or, when
    asked, this machine's server) is aborted; the URLs it tried are recorded."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.blocked = []
    local = ("file:", "data:", "blob:") + (
        ("http://127.0.0.1", "http://localhost", "ws://127.0.0.1", "ws://localhost")
        if allow_localhost else ())

    def route(r):
        if r.request.url.startswith(local):
            r.continue_()
        else:
            ctx.blocked.append(r.request.url)
            r.abort()
    ctx.route("**/*", route)
    return ctx


# --- 1. the built book ----------------------------------------------------------------

def toc_pages() -> list[str]:
    """The book's pages in reading order, as paths relative to _build/html."""
    toc = yaml.safe_load((paths.repo_root() / "_toc.yml").read_text())
    files = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [f"{f}.html" for f in files]


@pytest.fixture(scope="module")
def book_html():
    if not (HTML / "index.html").exists():
        _unavailable(f"no built book at {HTML} (python -m rmpm book --profile smoke)")
    missing = [p for p in toc_pages() if not (HTML / p).exists()]
    assert not missing, f"pages in _toc.yml that the build did not write: {missing}"
    return HTML


# what a page reports after load: console errors, broken images, untypeset maths
_PAGE_STATE = """() => {
  const main = document.querySelector('main') || document.body;
  const math = [...main.querySelectorAll('.math')];
  const clone = main.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, mjx-container, .math').forEach(e => e.remove());
  return {
    images: [...document.images].length,
    broken: [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src),
    math: math.length,
    untypeset: math.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80)),
    text: clone.textContent,
    mathjax: window.MathJax && window.MathJax.version,
  };
}"""


def _load(page, url: str) -> dict:
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="load")
    # MathJax typesets after load; its startup promise resolves when it is done
    page.wait_for_function("() => !window.MathJax || (MathJax.startup && MathJax.startup.promise)")
    page.evaluate("() => window.MathJax && MathJax.startup.promise")
    page.wait_for_load_state("networkidle")
    state = page.evaluate(_PAGE_STATE)
    state["errors"] = errors
    return state


def test_every_page_loads_offline_with_images_and_typeset_maths(browser, book_html):
    ctx = _offline_context(browser)
    formulas, problems = 0, {}
    for rel in toc_pages():
        page = ctx.new_page()
        s = _load(page, (book_html / rel).as_uri())
        raw = RAW_TEX.findall(s["text"])
        bad = {k: v for k, v in {"console errors": s["errors"], "broken images": s["broken"],
                                 "untypeset formulas": s["untypeset"], "raw TeX": raw}.items() if v}
        if s["math"] and not s["mathjax"]:
            bad["MathJax"] = "formulas but no MathJax loaded"
        if bad:
            problems[rel] = bad
        formulas += s["math"]
        if rel.endswith("00_methods.html"):
            page.locator("div.math").first.scroll_into_view_if_needed()
            _screenshot(page, "book_offline_formulas")
        page.close()
    assert not ctx.blocked, f"pages asked the network for: {sorted(set(ctx.blocked))}"
    assert not problems, problems
    assert formulas > 10, "the methods pages have formulas; none were found"
    ctx.close()


def test_navigation_reaches_every_chapter(browser, book_html):
    ctx = _offline_context(browser)
    page = ctx.new_page()
    # index.html sends the reader to the first page
    page.goto((book_html / "index.html").as_uri())
    page.wait_for_url((book_html / toc_pages()[0]).as_uri())
    page.wait_for_load_state("load")
    want = {(book_html / p).resolve() for p in toc_pages()}

    def local(href: str) -> Path:
        return Path(href.split("#")[0].removeprefix("file://")).resolve()
    # the sidebar lists every page
    sidebar = {local(a) for a in page.eval_on_selector_all(
        "nav.bd-docs-nav a.reference.internal", "as => as.map(a => a.href)")}
    assert want <= sidebar | {local(page.url)}, f"not in the sidebar: {want - sidebar}"
    # and "next" walks through all of them, in the order of _toc.yml
    seen = [local(page.url)]
    for _ in range(len(want) + 1):
        nxt = page.locator("a.right-next")
        if not nxt.count():
            break
        nxt.first.click()
        page.wait_for_load_state("load")
        seen.append(local(page.url))
    assert seen == [(book_html / p).resolve() for p in toc_pages()], seen
    ctx.close()


def test_chapters_show_one_parameter_table_and_numbered_figures(browser, book_html):
    ctx = _offline_context(browser)
    page = ctx.new_page()
    figures = 0
    for rel in toc_pages():
        if "_executed/" not in rel:
            continue
        page.goto((book_html / rel).as_uri())
        tables = page.locator(".rmpm-parameters")
        assert tables.count() == 1, f"{rel}: {tables.count()} parameter tables"
        assert "profile" in tables.first.inner_text()
        # papermill's parameter cells are gone from the page
        code = " ".join(page.eval_on_selector_all("div.cell_input", "cs => cs.map(c => c.textContent)"))
        assert "injected-parameters" not in code and "# Parameters" not in code, rel
        assert not re.search(r"^\s*profile\s*=", code, re.M), f"{rel} shows a parameter cell"
        nums = page.eval_on_selector_all("figure .caption-number", "cs => cs.map(c => c.textContent)")
        figures += len(nums)
        # every numbered reference to a figure resolves to one on the same page
        for ref in page.eval_on_selector_all("a.reference.internal span.std-numref",
                                             "rs => rs.map(r => r.closest('a').getAttribute('href'))"):
            target = ref.split("#")[-1]
            assert page.locator(f"figure[id='{target}']").count() == 1, (rel, ref)
        if rel.endswith("02_populations.html"):
            tables.first.scroll_into_view_if_needed()
            _screenshot(page, "book_parameter_table")
            ref = page.locator("span.std-numref").first
            ref.scroll_into_view_if_needed()
            _screenshot(page, "book_figure_reference")
            ref.click()  # the reference leads to its figure
            page.wait_for_url(re.compile(r"#fig-"))
            _screenshot(page, "book_numbered_figure")
    assert figures > 0, "no numbered figures in the book"
    ctx.close()


# --- references and provenance ---------------------------------------------------------------

def test_citations_lead_to_the_references_page(browser, book_html):
    """The references page lists every entry of book/references.bib, every chapter cites
    some, and every citation link lands on its entry."""
    from pybtex.database import parse_file
    n_entries = len(parse_file(str(paths.repo_root() / "book" / "references.bib")).entries)
    ctx = _offline_context(browser)
    page = ctx.new_page()
    refs = (book_html / "book" / "references.html").resolve()
    page.goto(refs.as_uri())
    ids = set(page.eval_on_selector_all("div.citation[role='doc-biblioentry']",
                                        "es => es.map(e => e.id)"))
    assert len(ids) == n_entries, f"{len(ids)} entries shown, {n_entries} in references.bib"
    _screenshot(page, "references_page")
    uncited = []
    for rel in toc_pages():
        if "_executed/" not in rel and not rel.endswith("intro.html"):
            continue
        page.goto((book_html / rel).as_uri())
        hrefs = page.eval_on_selector_all("span.bibtex-citation a.reference.internal",
                                          "as => as.map(a => a.href)")
        if not hrefs:
            uncited.append(rel)
        for h in hrefs:
            target, _, anchor = h.partition("#")
            assert Path(target.removeprefix("file://")).resolve() == refs, (rel, h)
            assert anchor in ids, f"{rel}: citation {h} has no entry on the references page"
    assert not uncited, f"pages that cite nothing: {uncited}"
    # as a reader: from a chapter's citation to its entry
    page.goto((book_html / "book" / "_executed" / "01_svcca_checked.html").as_uri())
    cite = page.locator("span.bibtex-citation a").first
    cite.scroll_into_view_if_needed()
    _screenshot(page, "chapter_with_citations")
    # the cell tests/book/test_browser.py shows in JupyterLab too (jupyterlab_citations)
    page.locator("section#our-choices").scroll_into_view_if_needed()
    page.evaluate("() => document.querySelector('section#our-choices').scrollIntoView()")
    _screenshot(page, "book_citations")
    anchor = cite.get_attribute("href").split("#")[1]
    cite.click()
    page.wait_for_url(re.compile(f"references.html#{anchor}$"))
    assert page.locator(f"div.citation[id='{anchor}']").is_visible()
    _screenshot(page, "citation_entry")
    ctx.close()


def test_figures_and_verdicts_show_where_they_came_from(browser, book_html):
    """A figure's provenance line and the Claims page's per-verdict provenance are
    visible, and the reproducibility page's links back land on them."""
    ctx = _offline_context(browser)
    page = ctx.new_page()
    page.goto((book_html / "book" / "_executed" / "03_rm_by_factor.html").as_uri())
    # the line is the first "Provenance:" after the figure (the paragraph after its cell)
    line = page.locator("xpath=//figure[starts-with(@id,'fig-')]/following::small"
                        "[starts-with(normalize-space(.),'Provenance:')][1]").first
    assert line.is_visible()
    assert "content SHA-256" in line.inner_text() and "commit" in line.inner_text()
    page.locator("figure[id^='fig-']").first.scroll_into_view_if_needed()
    _screenshot(page, "figure_with_provenance")
    page.goto((book_html / "book" / "_executed" / "08_claims.html").as_uri())
    rows = page.locator("tr:has(span[id^='verdict-c'])")
    assert rows.count() == 4
    for i in range(rows.count()):
        assert "Provenance:" in rows.nth(i).inner_text()
    # the table fits the page: no column is cut off behind a scroll bar
    fits = page.evaluate("""() => { const t = document.querySelector('span#verdict-c1');
      const c = t.closest('.pst-scrollable-table-container') || t.closest('table').parentElement;
      return [c.scrollWidth, c.clientWidth]; }""")
    assert fits[0] <= fits[1] + 1, f"the verdict table is {fits[0]} px wide in {fits[1]} px"
    rows.first.scroll_into_view_if_needed()
    _screenshot(page, "claims_verdict_provenance", full_page=False)
    # the reproducibility page links back to a verdict's row
    page.goto((book_html / "book" / "_generated" / "reproducibility.html").as_uri())
    back = page.locator("a[href$='08_claims.html#verdict-c3']").first
    back.scroll_into_view_if_needed()
    _screenshot(page, "reproducibility_backlinks")
    back.click()
    page.wait_for_url(re.compile(r"08_claims.html#verdict-c3$"))
    assert page.locator("tr:has(span#verdict-c3)").is_visible()
    ctx.close()


# --- 2. a chapter in JupyterLab ----------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _jupyterlab(root: Path, tmp: Path, **env_extra: str):
    """JupyterLab serving folder ``root``, as root too, with its own configuration,
    settings and workspaces under ``tmp`` (nothing of the user's); yields its URL and
    token. RMPM_LAB_DISABLE names extensions to disable (comma-separated), to see what
    the Lab shows without one (e.g. jupyterlab-myst)."""
    jupyter = Path(sys.executable).with_name("jupyter")
    if not jupyter.exists():
        _unavailable(f"no jupyter next to {sys.executable}")
    config, settings = tmp / "config", tmp / "settings"
    # every cell in the page (not only those scrolled into view), so all are checked
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True, exist_ok=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    disabled = [x for x in os.environ.get("RMPM_LAB_DISABLE", "").split(",") if x]
    if disabled:
        (config / "labconfig").mkdir(parents=True, exist_ok=True)
        (config / "labconfig" / "page_config.json").write_text(
            json.dumps({"disabledExtensions": {x: True for x in disabled}}))
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, RMPM_RESULTS=str(tmp / "results"),
               JUPYTER_CONFIG_DIR=str(config), JUPYTERLAB_SETTINGS_DIR=str(settings),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp / "workspaces"),
               PYTHONPATH=os.pathsep.join([str(paths.repo_root()), os.environ.get("PYTHONPATH", "")]),
               **env_extra)
    cmd = [str(jupyter), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
           "--ServerApp.allow_root=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = open(tmp / "lab.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, (tmp / "lab.log").read_text()
                time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not start in 60 s: " + (tmp / "lab.log").read_text())
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def lab(tmp_path):
    """JupyterLab serving a copy of one chapter (so that autosave never writes
    outputs into notebooks/); yields (url, notebook path)."""
    root = tmp_path / "lab"
    root.mkdir()
    nb = root / f"{LAB_CHAPTER}.ipynb"
    shutil.copy(paths.notebooks_dir() / nb.name, nb)
    with _jupyterlab(root, tmp_path) as (url, token):
        yield f"{url}/lab/tree/{nb.name}?token={token}", nb


def _run_all_cells(page) -> None:
    """Run > Run All Cells, as a person would; again if nothing started (once, of three
    runs, the click came before the Lab was ready and nothing ran)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    def run_all():
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    run_all()
    started = ("() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]"
               ".some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))")
    try:
        page.wait_for_function(started, timeout=60_000)
    except PlaywrightTimeout:
        run_all()


_CELL_STATE = """() => {
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
    .map(p => p.textContent.trim());
  return {prompts,
          status: (document.querySelector('.jp-Notebook-ExecutionIndicator') || {}).title || ''};
}"""


def test_jupyterlab_runs_a_chapter_on_the_project_kernel(browser, lab):
    url, nb_path = lab
    ctx = _offline_context(browser, allow_localhost=True)
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    page.locator(".jp-NotebookPanel").first.wait_for()
    kernel = page.locator(".jp-NotebookPanel-toolbar .jp-KernelName").first
    page.wait_for_function("() => { const k = document.querySelector("
                           "'.jp-NotebookPanel-toolbar .jp-KernelName');"
                           " return k && k.textContent.includes('rmpm'); }")
    assert kernel.inner_text().strip() == "Python (rmpm)"
    t0 = time.monotonic()
    _run_all_cells(page)
    n_code = len(nbformat.read(nb_path, as_version=4).cells) - sum(
        c.cell_type != "code" for c in nbformat.read(nb_path, as_version=4).cells)
    # done when every code cell has a number in its prompt ("[*]" while queued/running)
    page.wait_for_function(
        "n => { const ps = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]"
        ".map(p => p.textContent); return ps.length === n && ps.every(t => /\\[\\d+\\]/.test(t)); }",
        arg=n_code, timeout=600_000)
    took = time.monotonic() - t0
    # save, and read what the Lab holds from disk: the notebook's own outputs
    page.keyboard.press("Control+s")
    page.wait_for_timeout(1500)
    # out of the screenshot's way: the "Jupyter news?" toast
    page.add_style_tag(content=".Toastify { display: none !important; }")
    page.locator(".jp-OutputArea-output img").first.scroll_into_view_if_needed()
    _screenshot(page, "jupyterlab_after_run_all")
    shown = page.eval_on_selector_all(
        ".jp-OutputArea-output", "os => os.map(o => o.textContent)")
    assert not [t for t in shown if "Traceback" in t or re.search(r"\w+Error\b", t)], shown
    assert page.locator(".jp-OutputArea-output img").count() > 0, "the chapter shows figures"
    # its first output says where its models come from: the store a smoke book build
    # filled, or (as in .ci/run, whose store holds the default book's models) the
    # store it names, how many it lacks, and that it trains them now
    first = page.locator(".jp-NotebookPanel .jp-CodeCell .jp-OutputArea-output").first.inner_text()
    assert re.search(r"Models: (this chapter reads its \d+ models from the store at .*it trains "
                     r"none|the store at \S+ holds \d+ of the \d+ models this chapter needs\. "
                     r"It will now train the other \d+)", first, re.S), first
    # outputs and text as the book shows them: the banner's admonition rendered, no raw MyST
    from rmpm.book import readable
    numbers = readable.figure_numbers()
    bad = _lab_problems(page.evaluate(_LAB_PAGE), readable.bibliography(),
                        {k for v in numbers.values() for k in v})
    assert not bad, bad
    nb = nbformat.read(nb_path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code), "not every cell ran"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, [e.get("ename") for e in errors]
    assert nb.metadata.kernelspec.name == "rmpm"
    print(f"[browser] {nb_path.name}: Run All took {took:.0f} s in JupyterLab")
    ctx.close()


# --- 3. every chapter, as JupyterLab shows it ---------------------------------------------

# What a reader would see as MyST source rather than its rendering: a role's name (the
# backticks are gone once Markdown has rendered it), a directive's fence, a target, a
# definition list's ": " line
ROLE_TEXT = re.compile(r"\{[a-z]+(?::[a-z]+)?\}")
DIRECTIVE_TEXT = re.compile(r"^\s*(?:```|:::)\s*\{.*|^\s*\([\w-]+\)=\s*$|^: .{0,40}", re.M)
# TeX left as text: $...$, $$, \( \) \[ \], \begin{...}
RAW_MATH = re.compile(r"\$[^$\n]+\$|\$\$|\\\(|\\\)|\\\[|\\\]|\\begin\{")

# the active notebook's rendered markdown cells and outputs, without code and typeset maths
_LAB_PAGE = """() => {
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const cells = [...nb.querySelectorAll('.jp-MarkdownCell')];
  const shown = [...nb.querySelectorAll(
    '.jp-MarkdownCell .jp-MarkdownOutput, .jp-MarkdownCell .myst, .jp-OutputArea-output')];
  const text = shown.map(e => { const c = e.cloneNode(true);
    c.querySelectorAll('pre, code, script, style, .katex, mjx-container, .MathJax')
      .forEach(x => x.remove());
    return c.innerText; }).join('\\n');
  return {cells: cells.length, myst: !!nb.querySelector('.jp-MarkdownCell .myst'),
          unrendered: cells.filter(c => !c.classList.contains('jp-mod-rendered')).length,
          text,
          math: nb.querySelectorAll('.jp-MarkdownCell .katex, .jp-MarkdownCell mjx-container').length,
          fences: [...nb.querySelectorAll('code[class*="language-{"]')].map(c => c.className),
          // jupyterlab-myst marks what it could not resolve (a citation, a reference)
          unresolved: [...nb.querySelectorAll('.text-yellow-600, .myst-error, .myst-warning')]
            .map(e => e.textContent.trim()).filter(t => t),
          links: [...nb.querySelectorAll('.jp-MarkdownCell a')]
            .map(a => [a.textContent.replace(/\\s+/g, ' ').trim(), a.getAttribute('href') || ''])};
}"""


def _lab_problems(state: dict, bib, labels: set[str]) -> dict:
    """What a JupyterLab page shows that the book would not: raw MyST, untypeset maths,
    citations and figure references left unresolved."""
    text = state["text"]
    shown_keys = sorted({k for k in bib if re.search(rf"\b{re.escape(k)}\b", text)})
    shown_labels = sorted({k for k in labels if re.search(rf"(?<![\w-]){re.escape(k)}\b", text)})
    bad = {"raw roles": ROLE_TEXT.findall(text), "raw directives": DIRECTIVE_TEXT.findall(text)
           + state["fences"], "untypeset maths": RAW_MATH.findall(text),
           "unresolved": state["unresolved"], "bibliography keys shown": shown_keys,
           "figure labels shown": shown_labels}
    if state.get("unrendered"):
        bad["unrendered cells"] = [state["unrendered"]]
    return {k: v for k, v in bad.items() if v}


def _summary(problems: dict) -> str:
    """One line per chapter and kind of problem: how many, and the first few."""
    lines = []
    for chapter, bad in problems.items():
        for kind, found in bad.items():
            found = found if isinstance(found, list) else [found]
            lines.append(f"  {chapter}: {kind}: {len(found)}, e.g. "
                         + "; ".join(repr(f) for f in dict.fromkeys(map(str, found)))[:160])
    return "\n".join(lines)


def _lab_target(href: str) -> str:
    """A link's target as the notebook wrote it: JupyterLab turns ``references.md#key``
    into ``<server>/files/references.md?<token>#key``."""
    if "/files/" not in href:
        return href
    path = href.split("/files/", 1)[1].split("?")[0].split("#")[0]
    return path + ("#" + href.split("#", 1)[1] if "#" in href else "")


def _open_in_lab(page, url: str, token: str, name: str) -> None:
    # ?reset: a fresh workspace, so that only this notebook is open
    page.goto(f"{url}/lab/tree/{name}?reset&token={token}")
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-MarkdownCell").first.wait_for()
    # rendered once every markdown cell holds its rendering
    page.wait_for_function("""() => { const nb = document.querySelector(
        '.jp-NotebookPanel:not(.lm-mod-hidden)'); const cs = [...nb.querySelectorAll('.jp-MarkdownCell')];
        return cs.length && cs.every(c => c.classList.contains('jp-mod-rendered')
          && c.querySelector('.jp-MarkdownOutput, .myst')); }""")
    page.wait_for_load_state("networkidle")
    page.add_style_tag(content=".Toastify { display: none !important; }")


def _stop_kernels(page, url: str, token: str) -> None:
    """Opening a notebook starts its kernel; this test runs none of them."""
    for s in page.request.get(f"{url}/api/sessions?token={token}").json():
        page.request.delete(f"{url}/api/sessions/{s['id']}?token={token}")


@pytest.fixture(scope="module")
def lab_chapters(tmp_path_factory):
    """JupyterLab serving a copy of notebooks/ (the chapters and their references page)."""
    tmp = tmp_path_factory.mktemp("lab-chapters")
    root = tmp / "notebooks"
    shutil.copytree(paths.notebooks_dir(), root,
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    with _jupyterlab(root, tmp) as (url, token):
        yield url, token, root


def test_jupyterlab_shows_every_chapter_rendered(browser, lab_chapters):
    """Every chapter opened in JupyterLab reads as in the book: citations are author-year
    links to their entry (its DOI, or the references page next to the notebooks),
    figure references read "Fig. N" as the book numbers them, formulas are typeset,
    and no role, directive or bibliography key shows; nothing is fetched from the
    network."""
    from rmpm.book import readable
    url, token, root = lab_chapters
    bib = readable.bibliography()
    labels = {e.target: e for e in bib.values()}
    numbers = readable.figure_numbers()
    all_labels = {k for v in numbers.values() for k in v}
    ctx = _offline_context(browser, allow_localhost=True)
    page = ctx.new_page()
    page.set_default_timeout(120_000)
    problems, cited, chapters = {}, 0, readable.toc_notebooks()
    assert len(chapters) >= 9
    for path in chapters:
        _open_in_lab(page, url, token, path.name)
        state = page.evaluate(_LAB_PAGE)
        bad = _lab_problems(state, bib, all_labels)
        if not state["myst"]:
            bad["not rendered by jupyterlab-myst"] = ["is it installed, and compatible with "
                                                      "this JupyterLab? (jupyter labextension list)"]
        source = nbformat.read(path, as_version=4)
        md = "\n".join(c.source for c in source.cells if c.cell_type == "markdown")
        if "$" in md and not state["math"]:
            bad["maths"] = "the chapter has formulas; none was typeset"
        # every citation shows as its entry's label, linked to its entry
        want = [(m.group("text"), m.group("target")) for m in readable.LINK.finditer(md)
                if m.group("target") in labels]
        got = []
        for text, href in state["links"]:
            target = _lab_target(href)
            if target in labels:
                got.append((text, target))
                if text not in (labels[target].text(), labels[target].text(textual=True)):
                    bad.setdefault("citation labels", []).append((text, target))
            elif href.startswith("#fig-") and text != f"Fig. {numbers[path.stem][href[1:]]}":
                bad.setdefault("figure references", []).append((text, href))
        if [t for _, t in got] != [t for _, t in want]:
            bad["citation links"] = {"in the notebook": len(want), "shown as links": len(got)}
        cited += len(got)
        if bad:
            problems[path.stem] = bad
        if path.stem == "01_svcca_checked":
            cell = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-MarkdownCell",
                                has_text="Our choices").first
            cell.scroll_into_view_if_needed()
            _screenshot(page, "jupyterlab_citations")
        _stop_kernels(page, url, token)
    assert not problems, "what JupyterLab shows that the book does not:\n" + _summary(problems)
    assert cited > 50, f"only {cited} citations shown as links in all chapters"
    # a citation without a DOI opens the references page, which has the entry
    _open_in_lab(page, url, token, "01_svcca_checked.ipynb")
    link = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-MarkdownCell "
                        f"a[href*='{readable.REFERENCES_PAGE}']").first
    key = link.get_attribute("href").rsplit("#", 1)[1]
    link.click()
    page.locator(f".jp-MarkdownViewer:not(.lm-mod-hidden) [id='{key}']").wait_for(state="attached")
    _stop_kernels(page, url, token)
    assert not ctx.blocked, f"JupyterLab asked the network for: {sorted(set(ctx.blocked))}"
    ctx.close()


def test_jupyterlab_says_what_it_will_train_on_an_empty_store(browser, tmp_path):
    """On an empty store a chapter says first how many models it will train, about how
    long that takes here and that make book fills the store; then a progress bar shows
    the training (chapter 7 trains its reference population; the smoke profile's are
    tiny)."""
    name = "07_exposing_multiplicity"
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(paths.notebooks_dir() / f"{name}.ipynb", root)
    store = tmp_path / "empty-store"
    ctx = _offline_context(browser, allow_localhost=True)
    page = ctx.new_page()
    page.set_default_timeout(120_000)
    with _jupyterlab(root, tmp_path, RMPM_STORE=str(store)) as (url, token):
        _open_in_lab(page, url, token, f"{name}.ipynb")
        page.wait_for_function("() => { const k = document.querySelector("
                               "'.jp-NotebookPanel-toolbar .jp-KernelName');"
                               " return k && k.textContent.includes('rmpm'); }")
        _run_all_cells(page)
        cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell")
        train = cells.filter(has_text="reference_runs(").first
        # done training once the cell has its number; the rest of the chapter need not run
        from playwright.sync_api import TimeoutError as PlaywrightTimeout
        try:
            train.locator(".jp-InputPrompt", has_text=re.compile(r"\[\d+\]")).wait_for(
                timeout=600_000)
        except PlaywrightTimeout:
            _screenshot(page, "jupyterlab_training_timeout")
            pytest.fail("the training cell did not finish in 10 min; prompts "
                        f"{page.evaluate(_CELL_STATE)['prompts']}, its outputs "
                        f"{train.locator('.jp-OutputArea-output').all_inner_texts()}")
        banner = cells.locator(".jp-OutputArea-output").first
        first = banner.inner_text()
        banner.scroll_into_view_if_needed()
        _screenshot(page, "jupyterlab_empty_store_notice")
        bar = train.locator(".jp-OutputArea-output").all_inner_texts()
        train.scroll_into_view_if_needed()
        _screenshot(page, "jupyterlab_training_on_an_empty_store")
        _stop_kernels(page, url, token)
    m = re.search(r"Models: the store at .* holds 0 of the (\d+) models this chapter needs\. It "
                  r"will now train the other (\d+) and evaluate them: about (\d+ (s|min|h)) on "
                  r"this machine", first, re.S)
    assert m and m.group(1) == m.group(2), first
    assert "make book PROFILE=smoke fills the store for every chapter at once, on every core" in first
    n = int(m.group(2))  # the bar counts trainings and evaluations
    assert any(re.search(rf"{n} to train, {n} to evaluate on \d+ worker.*100%.*{2 * n}/{2 * n}",
                         b, re.S) for b in bar), bar
    assert not [b for b in bar if "Warning" in b or "Traceback" in b], bar
    assert len(list((store / "models").glob("*/*"))) == n
    assert not ctx.blocked, f"JupyterLab asked the network for: {sorted(set(ctx.blocked))}"
    ctx.close()
