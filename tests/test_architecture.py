"""The package's four layers and the rules between them (see README, "Architecture").

measures <- pipeline <- analysis <- book: a layer imports only from the layers to its
left and from the shared top-level modules; the shared modules import from no layer;
and no modules import each other in a circle, counting imports inside functions.

``python tests/test_architecture.py`` prints the layers, their modules with
their lines, the imports between layers and the circles (none).
"""
import ast
from pathlib import Path

import pytest

import rmpm

PKG = Path(rmpm.__file__).parent
LAYERS = ("measures", "pipeline", "analysis", "book")
#: may import from (besides itself and the shared modules)
ALLOWED = {"measures": set(), "pipeline": {"measures"}, "analysis": {"measures", "pipeline"},
           "book": {"measures", "pipeline", "analysis"}}
#: modules at the top of the package: shared by every layer, or the command line
SHARED = {"__init__", "_checks", "atomic", "jsonable", "paths"}
ENTRY = {"__main__", "cli"}


def imported_modules(source: str, module: str) -> set[str]:
    """Dotted names of the rmpm modules that ``source`` (module ``module``, e.g.
    ``rmpm.analysis.verdicts``) imports, at top level or inside functions."""
    package = module if module in PACKAGES else module.rsplit(".", 1)[0]
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


PACKAGES = {"rmpm", *(f"rmpm.{layer}" for layer in LAYERS)}


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
    assert violations("from ..book import records\n", "rmpm.analysis.verdicts") == ["rmpm.book.records"]
    assert violations("def f():\n    from ..book.provenance import qualname\n",
                      "rmpm.analysis.verdicts") == ["rmpm.book.provenance"]
    assert violations("def f():\n    from ..book.plots import x\n", "rmpm.pipeline.train") == ["rmpm.book.plots"]
    assert violations("import rmpm.analysis.verdicts\n", "rmpm.measures.stats") == ["rmpm.analysis.verdicts"]
    assert violations("from rmpm.pipeline import runs\n", "rmpm.measures.stats") == ["rmpm.pipeline.runs"]
    assert violations("from .pipeline import store\n", "rmpm.paths") == ["rmpm.pipeline.store"]
    assert violations("from .. import cli\n", "rmpm.book.build") == ["rmpm.cli"]
    # allowed: down the layers, the shared modules, the layer itself
    assert violations("from ..measures import stats\nfrom .. import paths\nfrom . import records\n",
                      "rmpm.analysis.verdicts") == []
    assert violations("from .analysis.profiles import get_profile\n", "rmpm.cli") == []
    assert violations("from ..analysis import populations as X\n", "rmpm.book.build") == []


# -- no circles ---------------------------------------------------------------

def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (inside functions too)."""
    mods = package_modules()
    graph = {}
    for name, path in mods.items():
        found = imported_modules(path.read_text(), name)
        # ``from ..pipeline.store import Store`` names a module; ``from . import x`` too
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: every strongly connected set of two or more
    modules (Tarjan's algorithm), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_another_in_a_circle():
    assert circles(import_graph()) == []


def test_the_circle_check_sees_a_circle_through_a_function_import():
    graph = {"rmpm.book.a": {"rmpm.book.b"}, "rmpm.book.b": {"rmpm.book.c"},
             "rmpm.book.c": set(), "rmpm.book.d": {"rmpm.book.a"}}
    assert circles(graph) == []
    # c imports a inside a function: a -> b -> c -> a
    found = imported_modules("def f():\n    from . import a\n", "rmpm.book.c")
    assert found == {"rmpm.book.a"}
    graph["rmpm.book.c"] = found
    assert circles(graph) == [["rmpm.book.a", "rmpm.book.b", "rmpm.book.c"]]


def report() -> str:
    """The house: each layer's modules with their lines, the imports between layers
    (how many module-to-module arrows run from one to the other) and the circles."""
    mods, graph = package_modules(), import_graph()

    def room(name: str) -> str:
        return layer_of(name) or ("entry" if name.split(".")[-1] in ENTRY else "shared")
    lines = []
    for layer in ("shared", *LAYERS, "entry"):
        members = sorted(m for m in mods if room(m) == layer and m not in PACKAGES - {"rmpm"})
        sizes = {m: len(mods[m].read_text().splitlines()) for m in members}
        lines.append(f"{layer:9} {sum(sizes.values()):6} lines  " + ", ".join(
            f"{m.rsplit('.', 1)[-1]} {n}" for m, n in sorted(sizes.items(), key=lambda t: -t[1])))
    arrows: dict[tuple[str, str], int] = {}
    for a, targets in graph.items():
        for b in targets:
            if room(a) != room(b):
                arrows[(room(a), room(b))] = arrows.get((room(a), room(b)), 0) + 1
    lines.append("imports between layers: " + ", ".join(
        f"{a} -> {b} {n}" for (a, b), n in sorted(arrows.items())))
    found = circles(graph)
    lines.append("circles: " + ("; ".join(" <-> ".join(c) for c in found) if found else "none"))
    return "\n".join(lines)


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


if __name__ == "__main__":
    print(report())
