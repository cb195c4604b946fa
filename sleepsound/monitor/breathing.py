"""Breathing pauses in a stretch of audio, and the tutorial's one-clip answer built on them.

``breathing_pauses`` is the one door to pause detection: today a plain energy-envelope rule
(the stand-in), tomorrow ``sleepsound.breathing``'s event detector behind the same signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MIN_PAUSE_S = 10.0  # the scoring manual's apnoea: at least 10 s of cessation
FRAME_S = 0.1


@dataclass(frozen=True)
class Pause:
    """A breathing pause: from the last breath's end to the recovery breath's start, in seconds."""

    start_s: float
    end_s: float

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s


def breathing_pauses(audio: np.ndarray, rate: int, min_pause_s: float = MIN_PAUSE_S) -> list[Pause]:
    """Pauses of at least ``min_pause_s`` ended by a recovery breath (a quiet stretch still running
    at the end of ``audio`` is not reported: its end is not known yet).

    Stand-in rule: 0.1-s RMS frames; a frame "breathes" when it is above the floor (10th
    percentile) by 30% of the range to the 95th percentile, in dB; audio whose range is under
    6 dB shows no breathing at all and yields nothing rather than one long pause.
    """
    frame = max(1, int(round(FRAME_S * rate)))
    n = len(audio) // frame
    if n == 0:
        return []
    x = np.asarray(audio[: n * frame], dtype=np.float64).reshape(n, frame)
    db = 10 * np.log10(np.mean((x - x.mean(axis=1, keepdims=True)) ** 2, axis=1) + 1e-12)
    floor, peak = np.percentile(db, 10), np.percentile(db, 95)
    if peak - floor < 6.0:
        return []
    breathing = db > floor + 0.3 * (peak - floor)
    pauses: list[Pause] = []
    last_breath = None
    for i in np.flatnonzero(breathing):
        if last_breath is not None and (i - last_breath - 1) * FRAME_S >= min_pause_s:
            pauses.append(Pause(round((last_breath + 1) * FRAME_S, 2), round(i * FRAME_S, 2)))
        last_breath = i
    return pauses


def detection(pauses: list[Pause], windows: list[dict[str, Any]]) -> str:
    """The tutorial's label: any pause or apnoea-hypopnoea window is an alert; else snoring if a window snores."""
    if pauses or any(w.get("resp_pred") == "apnea_hypopnea" for w in windows):
        return "Apnea Alert"
    if any(w.get("resp_pred") == "snore" for w in windows):
        return "Snoring"
    return "Normal"
