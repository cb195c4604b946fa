"""The per-second snoring head's frames as an input of the breathing-event detector.

The detector types each breath sound from the envelope alone: a mostly voiced (periodic) sound is a
snore, the rest plain breath noise, and a hypopnoea must show as a drop of the plain breath noise
(snoring that starts or stops changes the sound far more than the airflow). Noise-like snores
(palatal, tongue-base) are not periodic, so the envelope counts them as plain breaths, and snoring
that pauses for a few breaths reads as a 30% drop: a false hypopnoea. The per-second snoring head
(``train.frames``) hears these snores in the backbone's 0.5-s frames; ``snore_track`` lays its
P(snoring) on the envelope's 10-Hz frames, and ``detector.detect_candidates(..., snoring=track)``
marks a breath whose mean P(snoring) passes ``detector.DetectorSettings.snored_prob`` as snored. Where
most breaths of the two minutes before a hypopnoea snored (70%), the breaths the head does not hear
snoring in must have weakened too (by over 10% in amplitude), or it is a pause of the snoring, no event;
where every breath before snored (none to compare with), a stretch whose breaths have mostly stopped
snoring is that pause too.
Nothing else changes: without a track, or with one that knows nothing (NaN), the detector is the
envelope's alone.

``detect_night`` uses it wherever a night's predictions have the snoring head's frames: ``score``,
``run`` and ``nightly`` (``predict.recordings``), and the bedside service's published night (its live
pause alerts are apnoeas, which the track never changes, and read the envelope alone). Measured by
``sleepsound breathing-eval --backbone`` on held-out styles of three fresh seeds (notes s25-events): on
seed 53 the held-out REI error 3.2 -> 2.7/h, nights within 5/h 83% -> 92%, clean nights' false events
2.3 -> 1.3/h (worst 10 -> 4); on seeds 59 and 61 no change; the development styles unchanged. Fresh
seeds 163 and 167 (README, "Fresh seeds, with trained heads"): until the unsnored breaths had to be
unchanged rather than short of a 30% drop, it lost true events under a TV (seed 163 tv-bedroom
hypopnoea F1 0.67 -> 0.44; now 0.60), while it took false ones from both seeds' development nights.
A first form that took every head-snored breath out of the plain-breath check lost true hypopnoeas of
partial snorers (hypopnoea F1 -0.04 to -0.05 on every set) and was dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from sleepsound.breathing.detector import BreathingEvent, detect_events, events_and_heard
from sleepsound.breathing.envelope import FRAME_HZ


def snore_track(
    epochs: Iterable[tuple[int, Sequence[float] | np.ndarray | None]], n_frames: int, epoch_seconds: float
) -> np.ndarray:
    """P(snoring) per envelope frame (``n_frames`` at ``FRAME_HZ``; NaN where unknown) from each
    epoch's head frames: ``(epoch_index, probabilities)`` pairs, the probabilities spread evenly
    over the epoch (60 frames of 0.5 s in a 30-s epoch), None for an epoch without them."""
    per_epoch = int(round(epoch_seconds * FRAME_HZ))
    track = np.full(n_frames, np.nan, dtype=np.float32)
    for index, probs in epochs:
        if probs is None:
            continue
        p = np.asarray(probs, dtype=np.float32)
        if p.ndim != 1 or not len(p) or per_epoch % len(p):
            raise ValueError(f"epoch {index}: {p.shape} snoring frames do not divide its {per_epoch} envelope frames")
        start = int(index) * per_epoch
        if start >= n_frames:
            continue
        stop = min(n_frames, start + per_epoch)
        track[start:stop] = np.repeat(p, per_epoch // len(p))[: stop - start]
    return track


def night_snore_track(night: object, n_frames: int, epoch_seconds: float) -> np.ndarray | None:
    """``snore_track`` from one night's prediction rows (a DataFrame or Arrow table with ``epoch_index``
    and ``snore_frames``); None when the night has no per-second snoring (no snore head)."""
    import pandas as pd

    frame = night.to_pandas() if hasattr(night, "to_pandas") else night
    if not isinstance(frame, pd.DataFrame) or "snore_frames" not in frame:
        return None
    got = [
        (int(i), None if _missing(p) else p) for i, p in zip(frame["epoch_index"], frame["snore_frames"], strict=True)
    ]
    if all(p is None for _, p in got):
        return None
    return snore_track(got, n_frames, epoch_seconds)


def detect_night(
    env: np.ndarray, valid: np.ndarray, predictions: object | None, epoch_seconds: float
) -> list[BreathingEvent]:
    """The night's events; where its ``predictions`` hold the per-second snoring head's frames, the
    head's P(snoring) tells the detector which breaths snored (``night_snore_track``), so a snorer's
    snoring that pauses is not read as a drop of the breathing."""
    snoring = None if predictions is None else night_snore_track(predictions, len(env), epoch_seconds)
    return detect_events(env, valid, snoring=snoring)


def detect_night_and_heard(
    env: np.ndarray, valid: np.ndarray, predictions: object | None, epoch_seconds: float
) -> tuple[list[BreathingEvent], np.ndarray]:
    """``detect_night``'s events and the night's frames where breathing was heard (``breathing.heard``),
    from one reading of its sounds (reading them twice cost the detector's time again: 1.8x)."""
    snoring = None if predictions is None else night_snore_track(predictions, len(env), epoch_seconds)
    return events_and_heard(env, valid, snoring=snoring)


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))
