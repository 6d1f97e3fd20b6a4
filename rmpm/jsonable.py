"""What rmpm writes as JSON: plain Python values, the same way everywhere (result
files, the chapters' evidence records)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


def jsonable(obj: Any) -> Any:
    """A JSON-safe copy of ``obj``: numpy scalars and arrays become Python numbers and
    lists, tuples lists, dict keys strings, NaN and infinities None (JSON has no NaN),
    and a dataclass record with a ``to_dict`` (an evidence record) its dict."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type) and hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
