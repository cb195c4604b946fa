"""Score one uploaded recording with a clip classifier, window by window.

Why windows: a model is trained on clips of one length (1 s for the Khan set), but what a
user holds is a few seconds to minutes of bedroom audio. The recording is cut into
consecutive windows of the model's clip length, and each window is prepared exactly as a
training clip was (mono, 16 kHz, peak-normalised on its own, zero-padded at the end), so a
window scores as the same sound would in training. A tail shorter than the shortest usable
clip is left out (and said so), unless it is the whole recording.

Shared by ``sleepsound clips score`` (files on disk) and ``sleepsound clips serve`` (HTTP).
"""

from __future__ import annotations

import time
from typing import Any, BinaryIO

import numpy as np

from sleepsound.clips.dataset import (
    MIN_CLIP_SECONDS,
    SAMPLE_RATE,
    ClipError,
    check_clip_file,
    decode_mono_16k,
    fix_length,
    peak_normalise,
)
from sleepsound.clips.evaluate import ClipClassifier
from sleepsound.io.audio import unreadable_reason

MAX_SCORE_SECONDS = 600.0  # longer audio is a night: score it with `sleepsound score`


class TooLong(ClipError):
    """Audio over the scoring limit (the service answers 413, not 400)."""


def windows_of(audio: np.ndarray, clip_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(windows [N, clip_samples] prepared like training clips, real lengths [N], start samples [N])."""
    min_samples = int(round(MIN_CLIP_SECONDS * SAMPLE_RATE))
    starts = [s for s in range(0, len(audio), clip_samples) if s == 0 or len(audio) - s >= min_samples]
    windows = np.stack([fix_length(peak_normalise(audio[s : s + clip_samples]), clip_samples) for s in starts])
    lengths = np.array([min(clip_samples, len(audio) - s) for s in starts], dtype=np.int64)
    return windows, lengths, np.array(starts, dtype=np.int64)


def score_audio(clf: ClipClassifier, audio: np.ndarray, name: str, batch_size: int | None = None) -> dict[str, Any]:
    """Per-window labels and probabilities, and the recording's totals, for 16-kHz mono ``audio``."""
    started = time.perf_counter()
    windows, lengths, starts = windows_of(audio, clf.clip_samples)
    proba = clf.proba(windows, lengths, batch_size)
    classes = list(clf.classes)
    picked = clf.decide(proba)  # the model's calibrated threshold when it has one
    rows = [
        {
            "start_s": round(float(s) / SAMPLE_RATE, 3),
            "end_s": round(float(s + n) / SAMPLE_RATE, 3),
            "label": classes[k],
            "probabilities": {c: round(float(p), 4) for c, p in zip(classes, row, strict=True)},
        }
        for s, n, k, row in zip(starts, lengths, picked, proba, strict=True)
    ]
    seconds = {c: round(float(lengths[picked == i].sum()) / SAMPLE_RATE, 3) for i, c in enumerate(classes)}
    mean = proba.mean(axis=0)
    scored = int(lengths.sum())
    return {
        "file": name,
        "seconds": round(len(audio) / SAMPLE_RATE, 3),
        "classes": classes,
        "clip_seconds": clf.clip_samples / SAMPLE_RATE,
        "label": classes[int(clf.decide(mean[None, :])[0])],  # the mean probabilities, decided as a window's
        "mean_probabilities": {c: round(float(p), 4) for c, p in zip(classes, mean, strict=True)},
        "seconds_by_label": seconds,
        "unscored_tail_s": round((len(audio) - scored) / SAMPLE_RATE, 3),
        "windows": rows,
        "scoring_seconds": round(time.perf_counter() - started, 3),
    }


def score_source(
    clf: ClipClassifier,
    source: str | BinaryIO,
    name: str,
    max_seconds: float = MAX_SCORE_SECONDS,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Decode (any format soundfile reads, any rate, mixed to mono) and score; ClipError naming
    ``name`` and the problem for unusable or over-long audio."""
    try:
        if isinstance(source, str):
            check_clip_file(source)
            reason = unreadable_reason(source)  # a permission or a FIFO, named before libsndfile opens it
            if reason is not None:
                raise ClipError(reason[1])
        audio = decode_mono_16k(source, MIN_CLIP_SECONDS, max_seconds + 1.0)
    except ClipError as exc:
        raise ClipError(f"{name}: {exc}") from None
    except OSError as exc:  # e.g. a folder on the way that may not be searched: this file only
        raise ClipError(f"{name}: {exc.strerror or exc}") from None
    if len(audio) > max_seconds * SAMPLE_RATE:
        raise TooLong(f"{name}: longer than {max_seconds:g} s; score whole nights with `sleepsound score`")
    return score_audio(clf, audio, name, batch_size)
