"""JSON for people's tools: NaN and infinities (undefined figures) become null, never invalid JSON."""

from __future__ import annotations

import json
import math
from typing import Any


def json_text(obj: Any, **dumps: Any) -> str:
    """``obj`` as strict JSON; values json cannot name (dates, paths) as their text."""

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), allow_nan=False, default=str, **dumps)
