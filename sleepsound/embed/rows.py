"""Batches of numpy columns and plain row dicts, in both directions.

Ray Data hands batches back as numpy arrays of objects, with nulls sometimes turned into
NaN; the collector wants plain Python rows with None for null.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

# Text columns of an epoch row; Ray's Arrow -> numpy conversion may turn their nulls into NaN.
_TEXT_COLUMNS = frozenset(
    {"recording_id", "subject_id", "stage5", "stage3", "invalid_reason", "error", "resp_label", "kind", "channel"}
)


# Nullable numbers (null for unlabelled nights); Ray may hand them back as NaN floats.
_NULLABLE_INTS = frozenset({"n_apnea", "n_hypopnea"})


_NULLABLE_FLOATS = frozenset({"apnea_frac", "hypopnea_frac", "snore_frac"})


def text_cell(value: Any) -> str | None:
    """A text cell as ``str``, or None for null (None, NaN, empty)."""
    return value if isinstance(value, str) and value else None


def _nullable(value: Any, integer: bool) -> Any:
    """None for null (None or NaN), else the number (as int for integer columns)."""
    value = _scalar(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return int(value) if integer else float(value)


def _cell(name: str, value: Any) -> Any:
    if name in _TEXT_COLUMNS:
        return text_cell(value)
    if name in _NULLABLE_INTS or name in _NULLABLE_FLOATS:
        return _nullable(value, name in _NULLABLE_INTS)
    return _scalar(value)


def batches_to_rows(batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, Any]]:
    for batch in batches:
        names = list(batch)
        for i in range(len(batch[names[0]])):
            yield {name: _cell(name, batch[name][i]) for name in names}


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0] if k != "audio"}
    batch["valid"] = batch["valid"].astype(bool)
    batch["audio"] = np.stack([r["audio"] for r in rows])
    return batch
