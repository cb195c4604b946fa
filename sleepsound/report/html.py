"""The report's HTML building blocks: escaping, cell formatting, tables, the style sheet, and
the check that an embedded figure is one this package drew.

Every string from data goes through ``esc`` (tables escape every cell), so a recording id or
a reason text cannot inject markup. Figures are the one thing embedded verbatim, which is why
``img_tags`` accepts only the exact ``<img>`` data-URI shape ``figures`` writes.
"""

from __future__ import annotations

import html
import math
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

MAX_LIST_ITEMS = 20
# What figures._png writes and nothing else: render_report embeds figures verbatim, so only this shape passes.
_IMG_TAG = re.compile(r'<img alt="[^"<>]*" src="data:image/png;base64,[A-Za-z0-9+/]+={0,2}">')

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;padding:0 1em;color:#222}
body{line-height:1.4}
table{border-collapse:collapse;margin:0.6em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3;vertical-align:bottom;max-width:9em;white-space:normal;font-weight:600}
td{overflow-wrap:break-word}td:first-child,th:first-child{text-align:left}h2{margin-top:1.6em}
.scroll{overflow-x:auto;max-width:100%}img{max-width:100%;height:auto}
.muted{color:#666}figure{margin:1em 0}figcaption{font-size:0.9em;color:#555}
.warning{background:#fff4e5;border-left:4px solid #e8a33d;padding:0.5em 0.8em}.subtitle{color:#555;margin-top:-0.4em}
nav ul{margin:0.3em 0;padding-left:1.2em}nav li{margin:0.1em 0}
@media print{body{margin:0;max-width:none;font-size:10pt}nav{display:none}.scroll{overflow:visible}
figure,table{break-inside:avoid}h2,h3{break-after:avoid}a{color:inherit}}"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell's text (not yet escaped): numbers rounded, NaN/None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes omitted>"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return "–" if math.isnan(float(value)) else f"{float(value):.{digits}f}"
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        items = [fmt(v, digits) for v in list(value)]
        more = f", … ({len(items)} in all)" if len(items) > MAX_LIST_ITEMS else ""
        return ", ".join(items[:MAX_LIST_ITEMS]) + more
    try:
        if pd.isna(value):
            return "–"
    except (TypeError, ValueError):
        pass
    return str(value)


def table(
    frame: pd.DataFrame,
    digits: int | Mapping[str, int] = 2,
    index: bool = True,
    labels: Mapping[str, str] | None = None,
) -> str:
    """An escaped HTML table in a scroll container (a wide table scrolls on its own, not the page);
    ``digits`` per column name or for all; ``labels``: a column's heading in words (by column name)."""

    def places(col: Any) -> int:
        return digits.get(str(col), 2) if isinstance(digits, Mapping) else digits

    words = labels or {}
    names = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    head = "".join(f"<th scope='col'>{esc(words.get(c, c))}</th>" for c in names)
    rows = []
    columns = list(frame.columns)
    for idx, *values in frame.itertuples(index=True, name=None):  # per-column dtypes survive (ints stay ints)
        cells = [f"<td>{esc(fmt(idx))}</td>"] if index else []
        cells += [f"<td>{esc(fmt(v, places(c)))}</td>" for c, v in zip(columns, values, strict=True)]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(rows)}</table></div>"


def img_tags(items: Iterable[str], what: str, source: str) -> list[str]:
    """The <img> tags as ``figures`` draws them; anything else would be embedded unescaped, so it is refused."""
    if isinstance(items, str):
        raise ValueError(f"{what} must be a list of <img> tags from {source}, not a single string")
    figures = list(items)
    for fig in figures:
        if not isinstance(fig, str) or not _IMG_TAG.fullmatch(fig):
            raise ValueError(f"{what} must be <img> data-URI tags from {source}")
    return figures
