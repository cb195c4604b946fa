"""JSON for people's tools: NaN and infinities (undefined figures) become null, never invalid JSON."""

from __future__ import annotations

import json
import math
from typing import Any


def undefined_as_null(value: Any) -> Any:
    """``value`` with every NaN or infinite float (nested in dicts, lists, tuples) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: undefined_as_null(x) for k, x in value.items()}
    if isinstance(value, (list, tuple)):
        return [undefined_as_null(x) for x in value]
    return value


def json_text(obj: Any, **dumps: Any) -> str:
    """``obj`` as strict JSON; values json cannot name (dates, paths) as their text."""
    return json.dumps(undefined_as_null(obj), allow_nan=False, default=str, **dumps)


def figures_json(obj: Any, **dumps: Any) -> str:
    """``obj`` as strict JSON where its numbers may be numpy's (metrics tables): each becomes a plain number,
    an undefined one (NaN, a class never predicted) null. ``json.dumps(default=float)`` wrote bare ``NaN``,
    which ``jq`` and ``JSON.parse`` refuse."""
    return json_text(json.loads(json.dumps(obj, default=float)), **dumps)
