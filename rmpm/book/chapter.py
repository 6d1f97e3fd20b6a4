"""What every chapter (notebook) does at its top: check its parameters, show the
profile banner, set up its data (:func:`factor_chapter` for chapters 3-5); and the
table of parameters the book build puts in place of papermill's parameter cells."""
from __future__ import annotations

import ast
import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._checks import check_choice, check_names, check_range
from ..pipeline.recipe import FACTORS
from ..analysis.profiles import Profile, get_profile
from .store_notice import notice, remember

if TYPE_CHECKING:
    import pandas as pd

_SMOKE_NOTE = ("**This page was built with the `{name}` profile**: tiny, under-trained models "
               "on small data sets, so that the tests can build the book in minutes. Its numbers only "
               "show that the pipeline runs; they are *not* evidence for or against the paper's "
               "claims. Build with `make book PROFILE=default` (or `paper`) for real results.")


def banner(profile: str | Profile) -> str:
    """Markdown that names the profile a page was built with (and warns for the toy
    profiles, whose numbers are not evidence)."""
    p = get_profile(profile)
    text = f"*Built with profile **`{p.name}`**: {p.description}.*"
    if not p.evidence:
        text += "\n\n```{warning}\n" + _SMOKE_NOTE.format(name=p.name) + "\n```"
    return text


def show_banner(profile: str | Profile) -> None:
    """The chapter's first output: the banner, and outside a book build where its models
    come from (:func:`rmpm.book.store_notice.notice`)."""
    from IPython.display import Markdown, display
    models = notice(profile)
    display(Markdown(banner(profile) + (f"\n\n{models}" if models else "")))


# -- parameters ---------------------------------------------------------------

CONVS = ("pool", "positions")


def resolve_options(profile, datasets=None, factors=None, conv: str = "pool",
                    n_boot: int | None = None, min_factors: int = 1) -> dict[str, Any]:
    """Check a results chapter's parameters against ``profile`` before anything
    is trained: data sets and factors must be the profile's, ``conv`` one of
    :data:`CONVS`, ``n_boot`` (None: the profile's) a positive integer.
    Returns ``{"datasets", "factors", "conv", "n_boot"}`` with defaults filled in."""
    p = get_profile(profile)
    ds = check_names("datasets", datasets, p.datasets)
    fs = check_names("factors", factors, _factors(p))
    if len(fs) < min_factors:
        raise ValueError(f"factors={factors!r}: this chapter needs at least {min_factors} "
                         f"factors; got {len(fs)}")
    check_choice("conv", conv, CONVS)
    nb = p.n_boot if n_boot is None else n_boot
    check_range("n_boot", nb, 1, integer=True)
    return {"datasets": ds, "factors": fs, "conv": conv, "n_boot": nb}



@dataclass(frozen=True)
class FactorChapter:
    """Chapters 3-5's common start: their resolved parameters and the factor table."""

    profile: Profile
    datasets: list[str]
    factors: list[str]
    conv: str
    n_boot: int
    table: pd.DataFrame
    n_models: int   # distinct models behind the table

    @property
    def multi(self) -> bool:
        return len(self.datasets) > 1

    def summary(self, seed: int) -> str:
        return (f"Data sets: {', '.join(f'`{d}`' for d in self.datasets)}; "
                f"{len(self.factors)} factors; {self.profile.replicates} replicates; "
                f"{len(self.table)} populations from {self.n_models} distinct models; "
                f"conv layers: `{self.conv}`; {self.n_boot} bootstrap resamples, seed {seed}.")


def factor_chapter(profile: str | Profile, datasets=None, factors=None, conv: str = "pool",
                   n_boot: int | None = None, seed: int = 0, min_factors: int = 1,
                   show: bool = True) -> FactorChapter:
    """Check the parameters, show the banner, build the factor table (training what
    is missing, unless a book build already did) and say what it holds."""
    import pandas as pd

    from ..analysis import populations as X
    from ..analysis.factor_analysis import distinct_models
    p = get_profile(profile)
    opts = resolve_options(p, datasets, factors, conv, n_boot, min_factors)
    if show:
        show_banner(p)
    table = pd.concat([X.factor_table(p, dataset=ds, factors=opts["factors"], conv=conv,
                                      progress=True)  # a bar only when it trains
                       for ds in opts["datasets"]], ignore_index=True)
    n_models = sum(distinct_models(X.factor_populations(p, ds, opts["factors"]))
                   for ds in opts["datasets"])
    ch = FactorChapter(p, opts["datasets"], opts["factors"], conv, opts["n_boot"], table, n_models)
    if show:
        from IPython.display import Markdown, display
        display(Markdown(ch.summary(seed)))
        if not ch.multi:
            display(Markdown(
                f"```{{note}}\nThis build has one data set (`{ch.datasets[0]}`), so whether the "
                "result is the same *across data sets* cannot be tested here; everything below "
                "is across replicates of that one data set. The `paper` profile has four.\n```"))
    return ch


# -- parameters: checked wherever a notebook runs ------------------------------
#
# Each notebook's first code cell after its ``parameters`` cell starts with
#     check_parameters("<notebook>", globals())
# so JupyterLab, plain papermill and ``rmpm book`` all check the same way: names
# against the notebook's declared parameters (papermill only warns about an
# unknown one), values against the rules below and the profile.

#: papermill's injected cell starts with this comment (its Python translator)
_INJECTED_MARK = "# Parameters"


def _int(lo: int, hi: int | None = None):
    def rule(name, v, p):
        check_range(name, v, lo, hi, integer=True)
    return rule


def _num(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    def rule(name, v, p):
        check_range(name, v, lo, hi, lo_open=lo_open)
        if hi_open and v >= hi:
            raise ValueError(f"{name}={v!r} must be < {hi}")
    return rule


def _choice(allowed):
    def rule(name, v, p):
        check_choice(name, v, allowed(p) if callable(allowed) else allowed)
    return rule


def _names(allowed):
    def rule(name, v, p):
        if not (isinstance(v, str) or (isinstance(v, (list, tuple))
                                       and all(isinstance(x, str) for x in v))):
            raise ValueError(f"{name}={v!r} must be a name or a list of names; choose from: "
                             f"{', '.join(map(repr, allowed(p)))}")
        check_names(name, v, allowed(p))
    return rule


def _sizes(name, v, p):
    if not (isinstance(v, (list, tuple)) and v
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 2 for x in v)):
        raise ValueError(f"{name}={v!r} must be a non-empty list of integers >= 2")


def _device(name, v, p):
    from ..pipeline.train import resolve_device
    if not isinstance(v, str):
        raise ValueError(f"{name}={v!r} must be a string: auto, cpu, cuda, cuda:N or mps")
    resolve_device(v, name=name)


def _factors(p):
    """The profile's factors, in the protocol's order."""
    return [f for f in FACTORS if f in p.factors]


def _conv_modes(p):
    from ..measures.similarity import CONV_MODES
    return CONV_MODES


#: name -> (rule, None allowed). Parameters not listed are checked against the type
#: of their declared default.
PARAMETER_RULES = {
    "dataset": (_choice(lambda p: p.datasets), True),
    "datasets": (_names(lambda p: p.datasets), True),
    "factors": (_names(_factors), True),
    "conv": (_choice(_conv_modes), False),
    "device": (_device, False),
    "seed": (_int(0), False),
    "n_models": (_int(2), True),
    "n_boot": (_int(1), True),
    "n_boot_rm": (_int(1), True),
    "n_perm": (_int(0), False),
    "n_inputs": (_int(2), True),
    "n_gallery": (_int(1), False),
    "max_points": (_int(2), False),
    "image_index": (_int(0), False),
    "small_sample": (_int(10), True),
    "sizes": (_sizes, True),
    "keep": (_num(0.0, 1.0, lo_open=True), True),
    "tolerance": (_num(0.0, 1.0, lo_open=True), False),
    "confidence": (_num(0.0, 1.0, lo_open=True), False),
    "alpha": (_num(0.0, 1.0, lo_open=True, hi_open=True), False),
    "min_excess": (_num(0.0, 1.0), False),
    "n_sim": (_int(1), True),
    "corruption": (_choice(lambda p: p.corruptions), True),
    "severity": (_choice(lambda p: p.severities), True),
    "against": (_choice(lambda p: sorted(_profiles())), True),
}


def _profiles():
    from ..analysis.profiles import PROFILES
    return PROFILES

_DECLARED: dict[str, dict] = {}


def declared_parameters(notebook: "str | Path") -> dict:
    """``name -> default`` of the notebook's ``parameters`` cell (read from the file):
    a book chapter by name, or any notebook by its path."""
    key = str(notebook)
    if key not in _DECLARED:
        import nbformat

        from .. import paths
        path = notebook if isinstance(notebook, Path) else \
            paths.notebooks_dir() / f"{notebook}.ipynb"
        nb = nbformat.read(path, as_version=4)
        [cell] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        _DECLARED[key] = _assignments(cell.source, literal=True)
    return _DECLARED[key]


def _assignments(source: str, literal: bool = False) -> dict:
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    try:
                        out[t.id] = ast.literal_eval(node.value) if literal else None
                    except ValueError:
                        out[t.id] = None
    return out


def injected_names(namespace: dict) -> list[str]:
    """Names papermill injected in this kernel (its last ``# Parameters`` cell in
    IPython's input history ``In``); none in a plain JupyterLab session."""
    for src in reversed(namespace.get("In") or []):
        if src.lstrip().startswith(_INJECTED_MARK):
            return list(_assignments(src))
    return []


class ParameterError(ValueError):
    """A notebook's parameter is wrong. In a kernel (JupyterLab, papermill) it shows as
    its one line, naming the parameter and what is allowed, in place of a traceback:
    the fault is in the value given, not in the code that found it."""

    def _render_traceback_(self) -> list[str]:  # IPython's hook for an exception's display
        return [f"{type(self).__name__}: {self}"]


def check_parameters(notebook: str, namespace: dict) -> None:
    """Check a notebook's parameters where it runs: every injected name must be
    declared, and every declared parameter's value must fit its rule and the
    profile. One :class:`ParameterError` (a ``ValueError``) names the parameter and
    what is allowed."""
    remember(notebook, namespace)  # for the banner's word on the chapter's models
    declared = declared_parameters(notebook)
    unknown = sorted(set(injected_names(namespace)) - set(declared))
    if unknown:
        raise ParameterError(f"{notebook} has no parameter(s) {', '.join(unknown)}; "
                             f"its parameters are: {', '.join(sorted(declared))}")
    try:
        check_values(notebook, {k: namespace.get(k, v) for k, v in declared.items()})
    except ValueError as e:
        raise ParameterError(str(e)) from None


def check_values(notebook: "str | Path", values: dict) -> None:
    """Check the values of a notebook's declared parameters (``values``: name ->
    value) against :data:`PARAMETER_RULES` (or the type of the default) and the profile.
    ``notebook``: a book chapter's name, or a notebook's path."""
    from ..analysis.profiles import PROFILES
    declared = declared_parameters(notebook)
    notebook = notebook.stem if isinstance(notebook, Path) else notebook
    check_choice("profile", values.get("profile"), PROFILES)
    p = get_profile(values["profile"])
    for name, default in declared.items():
        if name == "profile":
            continue
        v = values.get(name, default)
        rule, none_ok = PARAMETER_RULES.get(name, (None, default is None))
        if v is None:
            if not none_ok:
                raise ValueError(f"{notebook}: parameter {name}=None is not allowed "
                                 f"(default: {default!r})")
            continue
        try:
            if rule is not None:
                rule(name, v, p)
            else:
                _same_type(name, v, default)
        except ValueError as e:
            extra = " (or None for the default)" if none_ok else ""
            raise ValueError(f"{notebook}: parameter {e}{extra}") from None


def _same_type(name, v, default) -> None:
    if default is None:
        return
    if isinstance(default, bool) or isinstance(v, bool):
        ok = isinstance(v, bool) and isinstance(default, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(v, (int, float)) and (isinstance(v, int) or isinstance(default, float))
    else:
        ok = isinstance(v, type(default))
    if not ok:
        raise ValueError(f"{name}={v!r} must be a {type(default).__name__} like its "
                         f"default {default!r}")

# --- the parameter table of an executed chapter --------------------------------------
# papermill leaves two cells in its output: the notebook's own defaults (tagged
# ``parameters``) and the values it injected (``injected-parameters``), one after the
# other. A reader of the book would see ``profile = "smoke"`` followed by
# ``profile = "default"``. The book shows one table of the values the page ran with
# instead, and hides both cells (Jupyter Book's ``remove-cell`` tag).

PARAMETER_TAGS = ("parameters", "injected-parameters")
PARAMETER_CELL_ID = "rmpm-parameter-table"

# "None: <phrase>" in a parameter's comment -> the value it stands for under a profile
_PROFILE_PHRASES = {
    "the profile's first data set": lambda p: p.datasets[0],
    "the profile's data sets": lambda p: list(p.datasets),
    "every factor of the profile": lambda p: list(p.factors),
    "the profile's first corruption": lambda p: p.corruptions[0] if p.corruptions else None,
    "the profile's highest severity": lambda p: max(p.severities),
}
_PROFILE_FIELDS = ("reference_seeds", "n_probe", "n_boot", "svcca_keep", "replicates", "n_test")


def resolve_default(help_text: str, profile: str | Profile) -> tuple[bool, Any]:
    """What a parameter left at ``None`` stands for, read from its comment
    (``None: the profile's n_boot``); ``(False, None)`` when the comment names no
    profile value this function knows."""
    p = get_profile(profile)
    after = help_text.split("None:", 1)[1].strip() if "None:" in help_text else ""
    for phrase, get in _PROFILE_PHRASES.items():
        if after.startswith(phrase):
            return True, get(p)
    m = re.match(r"the profile's (\w+)", after)
    if m and m.group(1) in _PROFILE_FIELDS:
        return True, getattr(p, m.group(1))
    return False, None


def _literal(source: str) -> str:
    """A default as the same repr as an injected value ('smoke', not "smoke")."""
    try:
        return repr(ast.literal_eval(source))
    except (ValueError, SyntaxError):
        return source


def _cell_text(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def parameter_table(declared: dict[str, dict[str, Any]], params: dict[str, Any]) -> str:
    """Markdown for the values a chapter ran with and where each came from.

    ``declared`` is papermill's ``inspect_notebook`` of the source notebook (name ->
    ``default`` as source text, ``help`` from its comment); ``params`` are the values
    the build passed (they win over the defaults).
    """
    profile = params["profile"] if "profile" in params else ast.literal_eval(
        declared["profile"]["default"])
    p = get_profile(profile)
    rows = []
    for name, spec in declared.items():
        if name in params:
            value, source = f"`{params[name]!r}`", "this build"
        else:
            value, source = f"`{_literal(spec['default'])}`", "notebook default"
            if spec["default"] == "None":
                known, resolved = resolve_default(spec.get("help") or "", p)
                if known:
                    value, source = f"`{resolved!r}`", f"profile `{p.name}`"
        rows.append(f"| `{name}` | {_cell_text(value)} | {source} | "
                    f"{_cell_text(spec.get('help') or '')} |")
    return "\n".join([
        ":::{admonition} Parameters of this page",
        ":class: note rmpm-parameters",
        "",
        f"This page ran with profile **`{p.name}`**. Rerun it with other values in "
        "JupyterLab (its first code cell) or with papermill's `-p name value`.",
        "",
        "| parameter | value | from | meaning |",
        "|---|---|---|---|",
        *rows,
        ":::",
    ])


def present_parameters(nb: Any, declared: dict[str, dict[str, Any]],
                       params: dict[str, Any]) -> Any:
    """A copy of an executed notebook whose two parameter cells are removed from the
    rendered page (tag ``remove-cell``) and followed by one :func:`parameter_table`."""
    import nbformat
    nb = copy.deepcopy(nb)
    idx = [i for i, c in enumerate(nb.cells)
           if set(c.metadata.get("tags", [])) & set(PARAMETER_TAGS)]
    if not idx:
        raise ValueError("the notebook has no cell tagged 'parameters' or 'injected-parameters'")
    for i in idx:
        tags = nb.cells[i].metadata.setdefault("tags", [])
        if "remove-cell" not in tags:
            tags.append("remove-cell")
    nb.cells = [c for c in nb.cells if c.get("id") != PARAMETER_CELL_ID]  # idempotent
    idx = [i for i, c in enumerate(nb.cells)
           if set(c.metadata.get("tags", [])) & set(PARAMETER_TAGS)]
    cell = nbformat.v4.new_markdown_cell(parameter_table(declared, params))
    cell["id"] = PARAMETER_CELL_ID
    nb.cells.insert(idx[-1] + 1, cell)
    return nb


# --- numbered figures -----------------------------------------------------------------
# A chapter's figure is a code cell whose metadata carries a MyST-NB caption and label,
#   "mystnb": {"figure": {"name": "fig-<chapter>-<what>", "caption": "..."}}
# which the text cites as {numref}`fig-<chapter>-<what>`. MyST-NB wraps *every* display
# output of such a cell in a figure with that label, so a cell that also shows a table
# would give two figures with one label. The build therefore splits such a cell of the
# executed copy in two or three: the outputs before the image, the image (the only
# output of the figure cell), the outputs after it; only the first piece shows the input.

def _is_display(output: Any) -> bool:
    return output.get("output_type") in ("display_data", "execute_result")


def _is_image(output: Any) -> bool:
    return _is_display(output) and any(k.startswith("image/") for k in output.get("data", {}))


def split_figure_outputs(nb: Any) -> Any:
    """A copy of an executed notebook in which every captioned figure cell shows exactly
    one image and no other display output (see the comment above). A captioned cell
    that showed no image loses its caption; one that showed several is refused."""
    nb = copy.deepcopy(nb)
    cells = []
    for i, cell in enumerate(nb.cells):
        fig = cell.metadata.get("mystnb", {}).get("figure") if cell.cell_type == "code" else None
        if not fig:
            cells.append(cell)
            continue
        outputs = cell.get("outputs", [])
        images = [j for j, o in enumerate(outputs) if _is_image(o)]
        if len(images) > 1:
            raise ValueError(f"cell {i} (figure {fig.get('name')!r}) shows {len(images)} images; "
                             "a captioned figure cell must show exactly one")
        if not images:
            cell.metadata["mystnb"] = {k: v for k, v in cell.metadata["mystnb"].items()
                                       if k != "figure"}
            cells.append(cell)
            continue
        if sum(map(_is_display, outputs)) == 1:
            cells.append(cell)
            continue
        j = images[0]
        pieces = [(outputs[:j], False), ([outputs[j]], True), (outputs[j + 1:], False)]
        shown_input = False
        for k, (outs, is_fig) in enumerate(pieces):
            if not outs:
                continue
            piece = copy.deepcopy(cell)
            piece["id"] = f"{cell.get('id', i)}-{k}"
            piece.outputs = outs
            if not is_fig:
                piece.metadata["mystnb"] = {kk: v for kk, v in piece.metadata["mystnb"].items()
                                            if kk != "figure"}
            if shown_input:
                tags = piece.metadata.setdefault("tags", [])
                if "remove-input" not in tags:
                    tags.append("remove-input")
            shown_input = True
            cells.append(piece)
    nb.cells = cells
    return nb
