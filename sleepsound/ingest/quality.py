"""What the raw samples of an epoch say about the recording: silence, NaN/Inf, clipping, gaps.

Measured on the source samples before any filtering, once per 30-s epoch, by the same
functions whether the caller is ``sleepsound validate`` (a scan without embedding) or the
streaming preprocessor, so both agree on which epochs are invalid and why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sleepsound.core.config import PreprocessConfig

# A sample within 0.1% of full scale counts as clipped (16-bit PCM tops out at 32767/32768).
CLIP_LEVEL = 0.999


@dataclass(frozen=True)
class EpochQuality:
    """One epoch's raw-sample statistics and, when it must be dropped, why."""

    zero_rms_s: float
    nonfinite: int
    clipped_fraction: float
    invalid_reason: str | None

    @property
    def valid(self) -> bool:
        return self.invalid_reason is None


def flat_frames(raw: np.ndarray, in_rate: float, frame_seconds: float) -> np.ndarray:
    """Per frame: True where every sample is equal (zero RMS about the frame's mean).

    Equality, not a threshold: a flat line is exactly flat whatever DC offset EDF scaling
    gives it, while a quiet room is never digitally constant.
    """
    frame = max(1, int(round(frame_seconds * in_rate)))
    n = len(raw) // frame
    if n == 0:
        return np.zeros(0, dtype=bool)
    frames = raw[: n * frame].reshape(n, frame)
    # a run of +inf is equal too, but it is a broken signal (counted as non-finite), not silence
    return (frames.max(axis=1) == frames.min(axis=1)) & np.isfinite(frames[:, 0])


def measure_epoch(
    raw: np.ndarray, in_rate: float, cfg: PreprocessConfig, full_scale: float = 1.0
) -> tuple[EpochQuality, np.ndarray]:
    """Statistics of one epoch of raw samples, and its per-frame flatness (for gap finding)."""
    finite = np.isfinite(raw)
    nonfinite = int(raw.size - np.count_nonzero(finite))
    flat = flat_frames(raw, in_rate, cfg.zero_rms_frame_seconds)
    frame = max(1, int(round(cfg.zero_rms_frame_seconds * in_rate)))
    zero_s = float(np.count_nonzero(flat)) * frame / in_rate
    magnitude = np.abs(np.where(finite, raw, 0.0)) if nonfinite else np.abs(raw)
    clipped = float(np.count_nonzero(magnitude >= CLIP_LEVEL * full_scale)) / max(1, raw.size)
    if nonfinite:
        reason: str | None = f"{nonfinite} NaN/Inf samples"
    elif zero_s > cfg.max_zero_rms_seconds:
        reason = f"zero RMS for {zero_s:.1f} s of {cfg.epoch_seconds:.0f} s"
    else:
        reason = None
    return EpochQuality(zero_s, nonfinite, clipped, reason), flat


def sanitise(block: np.ndarray) -> np.ndarray:
    """NaN/Inf replaced by 0 so one bad sample cannot poison a filter's state for the rest of the night."""
    return block if np.isfinite(block).all() else np.nan_to_num(block, nan=0.0, posinf=0.0, neginf=0.0)


class GapFinder:
    """Runs of flat frames at least ``min_seconds`` long, fed frame flags epoch by epoch."""

    def __init__(self, frame_seconds: float, min_seconds: float) -> None:
        self.frame_seconds = frame_seconds
        self.min_seconds = min_seconds
        self.gaps: list[tuple[float, float]] = []
        self._run_start: int | None = None
        self._frames = 0

    def feed(self, flat: np.ndarray) -> None:
        if flat.size == 0:
            return
        carried, self._run_start = self._run_start, None
        if carried is not None and not flat[0]:
            self._close(carried, self._frames)  # the run ended exactly at this block's start
            carried = None
        rises_falls = np.diff(np.concatenate([[0], flat.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(rises_falls == 1), np.flatnonzero(rises_falls == -1)
        for start, end in zip(starts, ends, strict=True):
            begin = carried if (start == 0 and carried is not None) else self._frames + int(start)
            if end == flat.size:
                self._run_start = begin  # still running at the end of this block
            else:
                self._close(begin, self._frames + int(end))
        self._frames += flat.size

    def finish(self) -> list[tuple[float, float]]:
        if self._run_start is not None:
            self._close(self._run_start, self._frames)
            self._run_start = None
        return self.gaps

    def _close(self, start: int, end: int) -> None:
        if (end - start) * self.frame_seconds >= self.min_seconds:
            self.gaps.append((start * self.frame_seconds, end * self.frame_seconds))
