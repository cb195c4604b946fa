"""A night's scored events, and the respiratory labels of each 30-s window derived from them.

Events come from the RML (user-scored only: device-scored ``Machine="true"`` events are not
ground truth) or from a plain night's ``<name>.events.csv``. Types not listed in
``sleepsound.labels.vocabulary`` are kept but never feed a label. Events without a positive length are
ignored, and events are clipped to the windows (so to the recording).

Per window (an epoch, or a 15-s shifted training window):

* ``apnea_frac``, ``hypopnea_frac``, ``snore_frac``: share of the window covered by the
  union of that kind's events (overlapping events count once), clipped to the window;
* ``n_apnea``, ``n_hypopnea``: events whose start (clipped to 0) falls in ``[start, end)``
  of the window, so the epochs of a night add up to its event count (the AHI numerator);
* ``resp_label``, one rule: ``"apnea_hypopnea"`` when an apnoea or hypopnoea starts in the
  window, or when apnoeas and hypopnoeas cover at least ``resp_min_overlap_s`` of it
  (``(apnea_frac + hypopnea_frac) * window``; default 10 s, the clinical minimum event
  length). So every event marks the epoch it begins in (its onset, the missing breath, is
  audible there) and every epoch it fills for 10 s or more; ``"snore"`` when
  ``snore_frac > 0`` and not ``apnea_hypopnea``; ``"none"`` otherwise.

The label depends only on the stored columns, so readers re-derive it (``resp_labels``)
when the threshold changes, without re-embedding. All columns are null for a night
without events (unlabelled).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from sleepsound.io.rml import KNOWN_EVENT_TYPES, MAX_NIGHT_S, RmlAnnotations, RmlEvent
from sleepsound.labels.annotations import AnnotationError, read_annotation_csv
from sleepsound.labels.vocabulary import APNEA_TYPES, HYPOPNEA_TYPES, SNORE_TYPES

RESP_COLUMNS = ("apnea_frac", "hypopnea_frac", "snore_frac", "n_apnea", "n_hypopnea", "resp_label")
RESP_LABELS = ("none", "snore", "apnea_hypopnea")
_TOLERANCE_S = 1e-3  # fractions are stored as float32


# One event record for every layout: what the RML reader gives (seconds from the night's start).
Event = RmlEvent


def events_from_rml(ann: RmlAnnotations) -> list[Event]:
    """The user-scored events of a parsed RML (device-scored ones are left out)."""
    return [e for e in ann.events if not e.machine]


def read_events_csv(path: str) -> list[Event]:
    """A plain layout's events CSV (``type,start_s,duration_s`` and optional ``family``), read as
    ``annotations.read_annotation_csv`` reads any annotation CSV; types spelled otherwise than the
    RML's (case, spaces, British spelling) are mapped to them (``event_type_of``).

    Raises ``AnnotationError(path, "bad_events", ...)`` when it cannot be read or a row
    lacks a type or a finite start/duration; a negative duration is not an error (the
    event is ignored by the labels, as validation warns).
    """
    table = read_annotation_csv(path, "events CSV", "bad_events")
    missing = [c for c in ("type", "start_s", "duration_s") if c not in table.columns]
    if missing:
        raise AnnotationError(
            path,
            "bad_events",
            f"events CSV needs columns type,start_s,duration_s; lacks {missing} (has {list(table.columns)[:10]})",
        )
    numbers = table[["start_s", "duration_s"]].apply(pd.to_numeric, errors="coerce")
    values = numbers.to_numpy(dtype=float)
    bad = ~np.isfinite(values).all(axis=1) | table["type"].isna().to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        got = [str(v) for v in table.iloc[row][["type", "start_s", "duration_s"]]]
        raise AnnotationError(
            path, "bad_events", f"row {row + 2} needs a type and numeric start_s and duration_s (got {got})"
        )
    absurd = (np.abs(values) > MAX_NIGHT_S).any(axis=1)  # clipped to the night, it would label every epoch
    if absurd.any():
        row = int(np.flatnonzero(absurd)[0])
        raise AnnotationError(
            path,
            "bad_events",
            f"row {row + 2}: start_s {values[row, 0]:g} / duration_s "
            f"{values[row, 1]:g} reach beyond {MAX_NIGHT_S / 86400:g} days, no night is that "
            "long: a corrupt export; fix the file",
        )
    families = table["family"].fillna("") if "family" in table.columns else [""] * len(table)
    return [
        Event(str(f), event_type_of(str(t)), float(s), float(d))
        for t, s, d, f in zip(table["type"], numbers["start_s"], numbers["duration_s"], families, strict=True)
    ]


def _type_key(name: str) -> str:
    return "".join(name.split()).replace("_", "").replace("-", "").lower().replace("pnoea", "pnea")


# The RML's event types by ``_type_key`` ("obstructive apnoea" -> ObstructiveApnea), and other
# common spellings of them.
_TYPE_SPELLINGS: dict[str, str] = {
    **{_type_key(name): name for name in KNOWN_EVENT_TYPES},
    "snoring": "Snore",
}


def event_type_of(name: str) -> str:
    """The RML type an events-CSV type means (``_TYPE_SPELLINGS``), or ``name`` itself when none."""
    return _TYPE_SPELLINGS.get(_type_key(name), name)


def unknown_event_types(events: Iterable[Event]) -> Counter[str]:
    """Types (after ``event_type_of``) that no RML names: kept, but they feed no label."""
    return Counter(e.type for e in events if e.type not in KNOWN_EVENT_TYPES)


def _intervals(events: Iterable[Event], types: frozenset[str]) -> tuple[np.ndarray, np.ndarray]:
    """Union of the events of ``types`` as sorted disjoint [start, end) arrays, from t = 0 on."""
    spans = sorted(
        (max(0.0, e.start_s), e.end_s) for e in events if e.type in types and e.duration_s > 0 and e.end_s > 0
    )
    merged: list[list[float]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    arr = np.array(merged, dtype=np.float64).reshape(-1, 2)
    return arr[:, 0], arr[:, 1]


def _covered_before(t: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Seconds of [0, t) under the disjoint sorted intervals, for each t."""
    if len(starts) == 0:
        return np.zeros_like(t)
    lengths = ends - starts
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    j = np.searchsorted(starts, t, side="right")  # intervals starting at or before t
    last = np.maximum(j - 1, 0)
    # Intervals before ``last`` end before t (disjoint, sorted); ``last`` may be cut by t.
    partial = np.where(j > 0, np.clip(t - starts[last], 0.0, lengths[last]), 0.0)
    return cum[last] + partial


def _coverage(events: Sequence[Event], types: frozenset[str], starts: np.ndarray, length: float) -> np.ndarray:
    a, b = _intervals(events, types)
    return (_covered_before(starts + length, a, b) - _covered_before(starts, a, b)) / length


def _starts_in(events: Sequence[Event], types: frozenset[str], starts: np.ndarray, length: float) -> np.ndarray:
    onsets = np.sort([max(0.0, e.start_s) for e in events if e.type in types and e.duration_s > 0 and e.end_s > 0])
    return (
        np.searchsorted(onsets, starts + length, side="left") - np.searchsorted(onsets, starts, side="left")
    ).astype(np.int64)


def resp_labels(
    apnea_frac: Sequence[float],
    hypopnea_frac: Sequence[float],
    snore_frac: Sequence[float],
    n_apnea: Sequence[float],
    n_hypopnea: Sequence[float],
    window_s: float,
    min_overlap_s: float,
) -> list[str | None]:
    """The module's ``resp_label`` rule on stored columns; null where the fractions are null."""
    ap, hy, sn = (
        pd.to_numeric(pd.Series(v, dtype=object), errors="coerce").to_numpy(dtype=float)
        for v in (apnea_frac, hypopnea_frac, snore_frac)
    )
    na, nh = (
        pd.to_numeric(pd.Series(v, dtype=object), errors="coerce").fillna(0).to_numpy(dtype=float)
        for v in (n_apnea, n_hypopnea)
    )
    breathing = (na + nh > 0) | ((ap + hy) * window_s >= min_overlap_s - _TOLERANCE_S)
    out: list[str | None] = []
    for i in range(len(ap)):
        if math.isnan(ap[i]):
            out.append(None)
        else:
            out.append("apnea_hypopnea" if breathing[i] else "snore" if sn[i] > 0 else "none")
    return out


def window_labels(
    events: Sequence[Event] | None, starts_s: Sequence[float], length_s: float, min_overlap_s: float
) -> list[dict[str, object]]:
    """Respiratory columns (``RESP_COLUMNS``) for windows ``[start, start + length_s)``.

    ``events`` None (a night without an events source) gives all-null columns.
    """
    if events is None:
        return [dict.fromkeys(RESP_COLUMNS) for _ in starts_s]
    starts = np.asarray(starts_s, dtype=np.float64)
    ap = _coverage(events, APNEA_TYPES, starts, length_s)
    hy = _coverage(events, HYPOPNEA_TYPES, starts, length_s)
    sn = _coverage(events, SNORE_TYPES, starts, length_s)
    na = _starts_in(events, APNEA_TYPES, starts, length_s)
    nh = _starts_in(events, HYPOPNEA_TYPES, starts, length_s)
    labels = resp_labels(ap, hy, sn, na, nh, length_s, min_overlap_s)
    return [
        {
            "apnea_frac": float(ap[i]),
            "hypopnea_frac": float(hy[i]),
            "snore_frac": float(sn[i]),
            "n_apnea": int(na[i]),
            "n_hypopnea": int(nh[i]),
            "resp_label": labels[i],
        }
        for i in range(len(starts))
    ]


def snore_frames(
    events: Sequence[Event] | None, starts_s: Sequence[float], window_s: float, n_frames: int, min_share: float = 0.5
) -> np.ndarray | None:
    """Per-frame snoring targets of windows ``[start, start + window_s)``: [windows, n_frames] bool, a
    frame (``window_s / n_frames`` long: 0.5 s for the cache's pooled frames of an epoch) snoring when
    snore events cover more than ``min_share`` of it. None for a night without an events source."""
    if events is None:
        return None
    frame_s = window_s / n_frames
    starts = np.asarray(starts_s, dtype=np.float64)[:, None] + np.arange(n_frames) * frame_s
    share = _coverage(events, SNORE_TYPES, starts.ravel(), frame_s).reshape(starts.shape)
    return share > min_share + _TOLERANCE_S
