"""pyproject.toml and environment.yml must list the same packages."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ ;\[]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _spec(req: str) -> str:
    return req.strip()[len(_name(req)):].replace(" ", "")


def _conda_deps() -> dict[str, str]:
    deps = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.match(r"^\s*-\s+([A-Za-z][A-Za-z0-9_.\-]*)\s*([<>=!,.0-9*]*)\s*$", line)
        if m and m.group(1) not in ("python", "pip", "conda-forge"):
            deps[m.group(1).lower()] = m.group(2)
    return deps


def test_pyproject_and_environment_agree():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(py["dependencies"]) + [r for extra in py["optional-dependencies"].values() for r in extra]
    pyreqs = {_name(r): _spec(r) for r in reqs}
    conda = _conda_deps()
    assert set(pyreqs) == set(conda), (
        f"only in pyproject: {sorted(set(pyreqs) - set(conda))}; "
        f"only in environment.yml: {sorted(set(conda) - set(pyreqs))}")
    for name in ("torch", "torchvision"):
        # the pins in environment.yml must satisfy pyproject's lower bound
        assert conda[name].startswith("=="), f"{name} should be pinned in environment.yml"
    for name, spec in pyreqs.items():
        if name not in ("torch", "torchvision"):
            assert conda[name] == spec, f"{name}: pyproject says {spec!r}, environment.yml {conda[name]!r}"


def test_makefile_pins_match_environment():
    make = (ROOT / "Makefile").read_text()
    conda = _conda_deps()
    for name in ("torch", "torchvision"):
        assert f"{name}{conda[name]}" in make


def test_jupyterlab_loads_the_myst_extension():
    """JupyterLab renders the chapters with jupyterlab-myst: installed, enabled, and
    compatible with this JupyterLab (a version built for another one is listed as
    incompatible and not loaded; see pyproject.toml)."""
    import subprocess
    import sys
    jupyter = Path(sys.executable).with_name("jupyter")
    if not jupyter.exists():
        import pytest
        pytest.skip(f"no jupyter next to {sys.executable}")
    out = subprocess.run([str(jupyter), "labextension", "list"], capture_output=True,
                         text=True, timeout=120)
    text = out.stdout + out.stderr
    line = [l for l in text.splitlines() if "jupyterlab-myst" in l]
    assert line, text
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [pin] = [_spec(r) for r in py["optional-dependencies"]["book"] if _name(r) == "jupyterlab-myst"]
    plain = re.sub(r"\x1b\[[0-9;]*m", "", line[0])
    assert re.search(rf"jupyterlab-myst v{re.escape(pin.removeprefix('=='))} .*enabled.*OK", plain), (
        plain, pin)
    assert "incompatible" not in text.lower() and "outdated" not in text.lower(), text
