"""Breathing pauses in a stretch of audio, and the tutorial's one-clip answer built on them.

``breathing_pauses`` is the one door to pause detection for the bedside: the batch pipeline's own
detector (``sleepsound.breathing``) on the audio as the embed stream sees it, so a pause alerted
at the bedside is an apnoea the night's report counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sleepsound.breathing.detector import detect_events
from sleepsound.breathing.envelope import epoch_envelope
from sleepsound.core.config import PreprocessConfig
from sleepsound.embed.preprocess import StreamingFilter
from sleepsound.ingest.quality import sanitise

MIN_PAUSE_S = 10.0  # the scoring manual's apnoea: at least 10 s of cessation
# The detector judges a pause against the breathing before it (its noise floor over a minute, the
# breaths of the last two minutes, a rhythm in the 40 s before): it needs this much audio.
CONTEXT_S = 90.0


@dataclass(frozen=True)
class Pause:
    """A breathing pause: from the last breath's end to the recovery breath's start, in seconds."""

    start_s: float
    end_s: float
    confidence: float = 1.0

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s


def breathing_pauses(
    audio: np.ndarray, rate: int, min_pause_s: float = MIN_PAUSE_S, preprocess: PreprocessConfig | None = None
) -> list[Pause]:
    """The detector's apnoeas of at least ``min_pause_s`` in ``audio`` (hypopnoeas are not a pause).

    The audio goes through the batch stream's resampler and filter and becomes the same 10-Hz
    envelope the embed stage caches, so the rules and the confidence cut are the batch ones. An
    apnoea ends at its recovery breath: one still running at the end of ``audio`` is not reported.
    With less than ``CONTEXT_S`` of audio before a pause there is too little breathing to judge it.
    """
    cfg = preprocess or PreprocessConfig()
    if len(audio) < MIN_PAUSE_S * rate:
        return []
    filtered = StreamingFilter(rate, cfg).process(sanitise(np.asarray(audio, dtype=np.float32)), last=True)
    events = detect_events(epoch_envelope(filtered, cfg.target_rate))
    return [
        Pause(float(e["start_s"]), float(e["end_s"]), float(e["confidence"]))
        for e in events
        if e["type"] == "apnea" and e["end_s"] - e["start_s"] >= min_pause_s
    ]


def detection(pauses: list[Pause], windows: list[dict[str, Any]]) -> str:
    """The tutorial's label: any pause or apnoea-hypopnoea window is an alert; else snoring if a window snores."""
    if pauses or any(w.get("resp_pred") == "apnea_hypopnea" for w in windows):
        return "Apnea Alert"
    if any(w.get("resp_pred") == "snore" for w in windows):
        return "Snoring"
    return "Normal"
