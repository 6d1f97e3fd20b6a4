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
