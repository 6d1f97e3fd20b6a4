"""Atomic file writes: how rmpm writes every file a reader or another process may
open while it is being written (store entries, results, pages, reports): to a
temporary sibling first, then renamed into place, so a crash leaves the old file
or none, never half of one."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[Any], None]) -> Path:
    """Write file ``path`` atomically: ``write(f)`` fills a temp sibling opened in
    binary mode, which then replaces ``path``; on failure nothing is left behind."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))
