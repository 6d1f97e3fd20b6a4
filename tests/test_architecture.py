"""The package's three layers and the rule between them (see README, "Architecture").

measures <- pipeline <- book: a layer imports only from the layers to its left and
from the shared top-level modules; the shared modules import from no layer.
"""
import ast
from pathlib import Path

import pytest

import rmpm

PKG = Path(rmpm.__file__).parent
LAYERS = ("measures", "pipeline", "book")
#: may import from (besides itself and the shared modules)
ALLOWED = {"measures": set(), "pipeline": {"measures"}, "book": {"measures", "pipeline"}}
#: modules at the top of the package: shared by every layer, or the command line
SHARED = {"__init__", "_checks", "atomic", "paths"}
ENTRY = {"__main__", "cli"}


def imported_modules(source: str, module: str) -> set[str]:
    """Dotted names of the rmpm modules that ``source`` (module ``module``, e.g.
    ``rmpm.book.claims``) imports, at top level or inside functions."""
    package = module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "rmpm"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.split(".")[0] != "rmpm":
                continue
            if node.module is None or name in ("rmpm", *(f"rmpm.{l}" for l in LAYERS)):
                found |= {f"{name}.{a.name}" for a in node.names}  # from . import x
            else:
                found.add(name)
    return found


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def violations(source: str, module: str) -> list[str]:
    own = layer_of(module)
    bad = []
    for name in sorted(imported_modules(source, module)):
        target = layer_of(name)
        if target is None:
            if name.split(".")[1] in ENTRY and module.split(".")[1] not in ENTRY:
                bad.append(name)
            continue
        if own is None:
            if module.split(".")[1] not in ENTRY:
                bad.append(name)  # a shared module must not depend on a layer
        elif target != own and target not in ALLOWED[own]:
            bad.append(name)
    return bad


def package_modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(["rmpm", *parts])] = path
    return out


def test_every_module_sits_in_a_layer_or_is_shared():
    top = {p.stem for p in PKG.glob("*.py")}
    assert top <= SHARED | ENTRY, f"modules outside the layers: {sorted(top - SHARED - ENTRY)}"
    assert {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()} == set(LAYERS)


@pytest.mark.parametrize("module", sorted(package_modules()))
def test_layer_rule(module):
    path = package_modules()[module]
    assert violations(path.read_text(), module) == []


def test_the_rule_catches_upward_and_shared_imports():
    assert violations("from ..pipeline import store\n", "rmpm.measures.report") == ["rmpm.pipeline.store"]
    assert violations("def f():\n    from ..book.plots import x\n", "rmpm.pipeline.train") == ["rmpm.book.plots"]
    assert violations("import rmpm.book.claims\n", "rmpm.measures.stats") == ["rmpm.book.claims"]
    assert violations("from rmpm.pipeline import runs\n", "rmpm.measures.stats") == ["rmpm.pipeline.runs"]
    assert violations("from .pipeline import store\n", "rmpm.paths") == ["rmpm.pipeline.store"]
    assert violations("from .. import cli\n", "rmpm.book.build") == ["rmpm.cli"]
    # allowed: down the layers, the shared modules, the layer itself
    assert violations("from ..measures import stats\nfrom .. import paths\nfrom . import records\n",
                      "rmpm.book.claims") == []
    assert violations("from .book.profiles import get_profile\n", "rmpm.cli") == []


# -- notebooks: parameters, calls, tables and figures; the logic lives in rmpm ---

NOTEBOOKS = sorted((PKG.parent / "notebooks").glob("*.ipynb"))


def _loop_depth(node: ast.AST, depth: int = 0) -> int:
    """How deeply loops nest in ``node`` (a comprehension counts its ``for`` clauses)."""
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
        depth += len(node.generators)
    else:
        depth += isinstance(node, (ast.For, ast.While))
    return max([depth, *(_loop_depth(c, depth) for c in ast.iter_child_nodes(node))])


def notebook_code(path: Path) -> list[ast.Module]:
    import json
    cells = json.loads(path.read_text())["cells"]
    return [ast.parse("".join(c["source"])) for c in cells if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_hold_no_models_or_nested_analysis_loops(path):
    for tree in notebook_code(path):
        classes = [n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
        assert classes == [], f"{path.name} defines {classes}: models and types belong in rmpm"
        assert _loop_depth(tree) <= 2, f"{path.name} nests loops 3 deep: move the analysis into rmpm"


def test_the_notebook_rule_catches_classes_and_nested_loops():
    assert _loop_depth(ast.parse("for a in x:\n    for b in y:\n        pass\n")) == 2
    assert _loop_depth(ast.parse("[f(a, b) for a in x for b in y]")) == 2
    assert _loop_depth(ast.parse("for a in x:\n    f(a)\n")) == 1
    assert _loop_depth(ast.parse("for a in x:\n    for b in a:\n        g = [c for c in b]\n")) == 3


def _module_attributes_used(code: str) -> list[tuple[str, str, object]]:
    """(alias, attribute, module) for every ``alias.attribute`` in ``code`` where the
    alias is an rmpm module imported by ``from rmpm... import``."""
    import importlib
    import re
    aliases = {}
    for m in re.finditer(r"from (rmpm[\w.]*) import ([\w ,]+)", code):
        for item in m.group(2).split(","):
            name, _, alias = item.strip().partition(" as ")
            try:
                aliases[alias or name] = importlib.import_module(f"{m.group(1)}.{name}")
            except ImportError:
                pass  # a function or class, not a module
    return [(a, attr, mod) for a, mod in aliases.items()
            for attr in sorted(set(re.findall(rf"(?<![\w.]){re.escape(a)}\.(\w+)", code)))]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebooks_call_only_what_rmpm_has(path):
    # catches a moved or renamed function without executing the notebook
    import json
    code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"]
                     if c["cell_type"] == "code")
    missing = [f"{a}.{attr}" for a, attr, mod in _module_attributes_used(code) if not hasattr(mod, attr)]
    assert missing == [], f"{path.name} uses {missing}, which rmpm does not have"


def test_the_attribute_check_sees_a_missing_function():
    used = _module_attributes_used("from rmpm.book import plots, records as R\nplots.nope(1)\nR.save(2)\n")
    assert [(a, attr, hasattr(m, attr)) for a, attr, m in used] == [("plots", "nope", False),
                                                                    ("R", "save", True)]
