"""The hosted-CI workflow (.github/workflows/book.yml): actionlint reports nothing on it
(and does report a broken one, so the check can fail), and it runs what .ci/run runs,
caches the store under the committed manifest and publishes the book."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
LARGE = ROOT / ".github" / "workflows" / "large.yml"


def actionlint() -> str:
    """The actionlint binary of the dev extra (next to this interpreter, or on PATH)."""
    here = Path(sys.executable).with_name("actionlint")
    found = str(here) if here.is_file() else shutil.which("actionlint")
    if found is None:
        pytest.fail("actionlint is not installed; it comes with the dev extra: "
                    "pip install -e '.[dev]'")
    return found


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([actionlint(), "-no-color", "-oneline", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("path", [WORKFLOW, LARGE], ids=lambda p: p.name)
def test_actionlint_reports_nothing(path):
    r = lint(path)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (
        f"actionlint (exit {r.returncode}):\n{r.stdout}{r.stderr}")


def test_actionlint_does_report_a_broken_workflow(tmp_path):
    """The same workflow with three mistakes: a job that needs one that does not exist,
    an expression on an unknown context and a misspelt input of a known action."""
    text = WORKFLOW.read_text()
    broken = (text.replace("needs: build", "needs: biuld")
                  .replace("${{ runner.os }}", "${{ runer.os }}")
                  .replace("cache-dependency-path:", "cache-dependency-paths:"))
    assert broken.count("biuld") == 1 and "runer.os" in broken and "paths:" in broken
    bad = tmp_path / "book.yml"
    bad.write_text(broken)
    r = lint(bad)
    assert r.returncode != 0
    for what in ("biuld", "runer", "cache-dependency-paths"):
        assert what in r.stdout, r.stdout


@pytest.fixture(scope="module")
def wf():
    return yaml.safe_load(WORKFLOW.read_text())


def _runs(job) -> str:
    return "\n".join(s.get("run", "") for s in job["steps"])


def _uses(job, action) -> list[dict]:
    return [s for s in job["steps"] if s.get("uses", "").startswith(action + "@")]


def test_it_runs_the_readme_commands_and_the_verification(wf):
    build = wf["jobs"]["build"]
    runs = _runs(build)
    for command in ("make test", "make book PROFILE=default", "make check-browser",
                    "apt-get install -y dataset-fashion-mnist",
                    ".venv/bin/python -m rmpm verify _build/html/manifest.json",
                    '.venv/bin/python -m rmpm verify "$COMMITTED_MANIFEST"'):
        assert command in runs, command
    assert build["runs-on"].startswith("ubuntu")
    # the store is cached under the committed manifest's hash, where the build puts it
    (cache,) = _uses(build, "actions/cache")
    assert cache["with"]["path"] == "${{ env.RMPM_STORE }}"
    assert "hashFiles(env.COMMITTED_MANIFEST)" in cache["with"]["key"]
    assert "restore-keys" not in cache["with"]  # a new manifest means a build from nothing
    assert wf["env"]["RMPM_STORE"].endswith("_cache/ci-store")


def test_it_publishes_the_book(wf):
    build, deploy = wf["jobs"]["build"], wf["jobs"]["deploy"]
    kept = [s for s in _uses(build, "actions/upload-artifact") if s["with"]["path"] == "_build/html"]
    assert kept and "if" not in kept[0]
    (pages,) = _uses(build, "actions/upload-pages-artifact")
    assert pages["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build" and _uses(deploy, "actions/deploy-pages")
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert "refs/heads/main" in deploy["if"] and "refs/heads/main" in pages["if"]
    assert wf["permissions"] == {"contents": "read"}  # the rest of the run reads only


def test_the_large_regime_runs_weekly_and_on_demand_and_is_verified():
    wf = yaml.safe_load(LARGE.read_text())
    on = wf[True] if True in wf else wf["on"]  # YAML 1.1 reads the key `on` as True
    assert "workflow_dispatch" in on and on["schedule"][0]["cron"]
    assert "push" not in on and "pull_request" not in on  # too long for every push
    (job,) = wf["jobs"].values()
    runs = _runs(job)
    for command in ("make book PROFILE=large",
                    ".venv/bin/python -m rmpm verify _build/html/manifest.json",
                    '.venv/bin/python -m rmpm verify "$COMMITTED_MANIFEST"'):
        assert command in runs, command
    assert wf["env"]["COMMITTED_MANIFEST"] == "manifests/large.json"
    (cache,) = _uses(job, "actions/cache")
    assert "hashFiles(env.COMMITTED_MANIFEST)" in cache["with"]["key"]
    assert (ROOT / wf["env"]["COMMITTED_MANIFEST"]).is_file()
