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
