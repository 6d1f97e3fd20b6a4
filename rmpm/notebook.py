"""Helpers every notebook uses at its top: the profile banner and the seed line."""
from __future__ import annotations

from .profiles import Profile, get_profile

_SMOKE_NOTE = ("**This page was built with the `{name}` profile**: tiny, under-trained models "
               "on small data sets, so that CI can build the book in minutes. Its numbers only "
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
    from IPython.display import Markdown, display
    display(Markdown(banner(profile)))


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
        from ._checks import check_range
        check_range(name, v, lo, hi, integer=True)
    return rule


def _num(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False):
    def rule(name, v, p):
        from ._checks import check_range
        check_range(name, v, lo, hi, lo_open=lo_open)
        if hi_open and v >= hi:
            raise ValueError(f"{name}={v!r} must be < {hi}")
    return rule


def _choice(allowed):
    def rule(name, v, p):
        from ._checks import check_choice
        check_choice(name, v, allowed(p) if callable(allowed) else allowed)
    return rule


def _names(allowed):
    def rule(name, v, p):
        from .analysis import resolve_names
        if not (isinstance(v, str) or (isinstance(v, (list, tuple))
                                       and all(isinstance(x, str) for x in v))):
            raise ValueError(f"{name}={v!r} must be a name or a list of names; choose from: "
                             f"{', '.join(map(repr, allowed(p)))}")
        resolve_names(name, v, allowed(p))
    return rule


def _sizes(name, v, p):
    if not (isinstance(v, (list, tuple)) and v
            and all(isinstance(x, int) and not isinstance(x, bool) and x >= 2 for x in v)):
        raise ValueError(f"{name}={v!r} must be a non-empty list of integers >= 2")


def _device(name, v, p):
    from .train import resolve_device
    if not isinstance(v, str):
        raise ValueError(f"{name}={v!r} must be a string: auto, cpu, cuda, cuda:N or mps")
    resolve_device(v, name=name)


def _factors(p):
    from .recipe import FACTORS
    return [f for f in FACTORS if f in p.factors]


def _conv_modes(p):
    from .similarity import CONV_MODES
    return CONV_MODES


#: name -> (rule, None allowed). Parameters not listed are checked against the type
#: of their declared default.
RULES = {
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
}

_DECLARED: dict[str, dict] = {}


def declared_parameters(notebook: str) -> dict:
    """``name -> default`` of the notebook's ``parameters`` cell (read from the file)."""
    if notebook not in _DECLARED:
        import nbformat

        from . import paths
        path = paths.notebooks_dir() / f"{notebook}.ipynb"
        nb = nbformat.read(path, as_version=4)
        [cell] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        _DECLARED[notebook] = _assignments(cell.source, literal=True)
    return _DECLARED[notebook]


def _assignments(source: str, literal: bool = False) -> dict:
    import ast
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


def check_parameters(notebook: str, namespace: dict) -> None:
    """Check a notebook's parameters where it runs: every injected name must be
    declared, and every declared parameter's value must fit its rule and the
    profile. One ``ValueError`` names the parameter and what is allowed."""
    declared = declared_parameters(notebook)
    unknown = sorted(set(injected_names(namespace)) - set(declared))
    if unknown:
        raise ValueError(f"{notebook} has no parameter(s) {', '.join(unknown)}; "
                         f"its parameters are: {', '.join(sorted(declared))}")
    check_values(notebook, {k: namespace.get(k, v) for k, v in declared.items()})


def check_values(notebook: str, values: dict) -> None:
    """Check the values of a notebook's declared parameters (``values``: name ->
    value) against :data:`RULES` (or the type of the default) and the profile."""
    from ._checks import check_choice
    from .profiles import PROFILES, get_profile
    declared = declared_parameters(notebook)
    check_choice("profile", values.get("profile"), PROFILES)
    p = get_profile(values["profile"])
    for name, default in declared.items():
        if name == "profile":
            continue
        v = values.get(name, default)
        rule, none_ok = RULES.get(name, (None, default is None))
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
