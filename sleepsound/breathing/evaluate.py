"""Detected events against scored ones: event-level precision, recall and F1, and per-night index error.

An event is found when a detected event of the same type overlaps it (any overlap, as the
issue defines it); a detection is right when it overlaps a scored event of its type. Counting
both sides separately keeps one long detection that spans two scored events from counting
twice as a true positive in the precision. ``any`` ignores the type (apnoea for hypopnoea is
still a respiratory event found, and what the REI counts).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypedDict

import numpy as np

from sleepsound.breathing.detector import EVENT_TYPES, BreathingEvent
from sleepsound.labels.vocabulary import APNEA_TYPES, HYPOPNEA_TYPES


class Interval(TypedDict):
    start_s: float
    end_s: float
    type: str


def scored_events(events: Iterable[Any]) -> list[Interval]:
    """A night's scored apnoeas and hypopnoeas (``labels.events.Event``) as typed intervals."""
    out: list[Interval] = []
    for e in events:
        kind = "apnea" if e.type in APNEA_TYPES else "hypopnea" if e.type in HYPOPNEA_TYPES else None
        if kind and e.duration_s > 0:
            out.append({"start_s": float(e.start_s), "end_s": float(e.start_s + e.duration_s), "type": kind})
    return sorted(out, key=lambda e: e["start_s"])


def _overlaps(a: Sequence[Interval | BreathingEvent], b: Sequence[Interval | BreathingEvent]) -> np.ndarray:
    """[len(a)] booleans: does each of ``a`` overlap any of ``b``."""
    if not len(a) or not len(b):
        return np.zeros(len(a), dtype=bool)
    a0 = np.array([e["start_s"] for e in a])[:, None]
    a1 = np.array([e["end_s"] for e in a])[:, None]
    b0 = np.array([e["start_s"] for e in b])[None, :]
    b1 = np.array([e["end_s"] for e in b])[None, :]
    return ((a0 < b1) & (b0 < a1)).any(axis=1)


class Counts(TypedDict):
    scored: int
    found: int  # scored events overlapped by a detection of the type
    detected: int
    correct: int  # detections overlapping a scored event of the type


def match_counts(truth: Sequence[Interval], detected: Sequence[BreathingEvent]) -> dict[str, Counts]:
    """Per type (and ``any``), the counts behind precision and recall of one night."""
    out: dict[str, Counts] = {}
    for kind in (*EVENT_TYPES, "any"):
        t = [e for e in truth if kind in ("any", e["type"])]
        d = [e for e in detected if kind in ("any", e["type"])]
        out[kind] = {
            "scored": len(t),
            "found": int(_overlaps(t, d).sum()),
            "detected": len(d),
            "correct": int(_overlaps(d, t).sum()),
        }
    return out


def add_counts(nights: Iterable[dict[str, Counts]]) -> dict[str, Counts]:
    total: dict[str, Counts] = {}
    for night in nights:
        for kind, c in night.items():
            t = total.setdefault(kind, {"scored": 0, "found": 0, "detected": 0, "correct": 0})
            for key in t:
                t[key] += c[key]  # type: ignore[literal-required]
    return total


def scores(counts: dict[str, Counts]) -> dict[str, dict[str, float | int]]:
    """Precision, recall and F1 per type from summed counts (NaN where a side is empty)."""
    out: dict[str, dict[str, float | int]] = {}
    for kind, c in counts.items():
        precision = c["correct"] / c["detected"] if c["detected"] else float("nan")
        recall = c["found"] / c["scored"] if c["scored"] else float("nan")
        f1 = (
            2 * precision * recall / (precision + recall)
            if np.isfinite(precision) and np.isfinite(recall) and precision + recall > 0
            else (0.0 if c["scored"] and c["detected"] else float("nan"))
        )
        out[kind] = {"precision": precision, "recall": recall, "f1": f1, **c}
    return out
