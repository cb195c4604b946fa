"""Score one uploaded recording with a clip classifier, window by window.

Why windows: a model is trained on clips of one length (1 s for the Khan set), but what a
user holds is a few seconds to minutes of bedroom audio. The recording is cut into
consecutive windows of the model's clip length, and each window is prepared exactly as a
training clip was (mono, 16 kHz, peak-normalised on its own, zero-padded at the end), so a
window scores as the same sound would in training. A tail shorter than the shortest usable
clip is left out (and said so), unless it is the whole recording.

Shared by ``sleepsound clips score`` (files on disk) and ``sleepsound clips serve`` (HTTP). The
decode is bounded before it starts (``decode_bounded``): a 476-KB FLAC of near-silence at
192 kHz x 8 channels once took 2.5 GB, and a WAV cut short was scored as if whole.
"""

from __future__ import annotations

import math
import time
from typing import Any, BinaryIO

import numpy as np
import soundfile as sf
import soxr

from sleepsound.clips.dataset import (
    MIN_CLIP_SECONDS,
    RESAMPLED_NOT_FINITE,
    SAMPLE_RATE,
    ClipError,
    check_clip_file,
    check_header,
    fix_length,
    mix_to_mono,
    peak_normalise,
    read_dtype,
    sound_source,
    unreadable,
)
from sleepsound.clips.evaluate import ClipClassifier
from sleepsound.io.audio import unreadable_reason
from sleepsound.monitor.limits import DECODE_BLOCK_FRAMES, SAMPLES_PER_SECOND

MAX_SCORE_SECONDS = 600.0  # longer audio is a night: score it with `sleepsound score`


def check_max_seconds(value: float, option: str = "--max-seconds") -> float:
    """``value`` if it is a finite length in [MIN_CLIP_SECONDS, MAX_SCORE_SECONDS]; ValueError naming ``option``
    otherwise (NaN or inf was blamed on every file as unreadable, and 1e300 lifted every bound)."""
    if not (
        isinstance(value, (int, float)) and math.isfinite(value) and MIN_CLIP_SECONDS <= value <= MAX_SCORE_SECONDS
    ):
        raise ValueError(
            f"{option} must be a number of seconds in {MIN_CLIP_SECONDS:g}..{MAX_SCORE_SECONDS:g} "
            f"(longer audio is a night: `sleepsound score`), got {value!r}"
        )
    return float(value)


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


def decode_bounded(source: str | BinaryIO, max_seconds: float, min_seconds: float = MIN_CLIP_SECONDS) -> np.ndarray:
    """float32 mono 16-kHz samples of a file or file-like object, as ``clips.dataset.decode_mono_16k``
    gives them (channels averaged, soxr HQ; the same values), but refused from the header before
    decoding when it is not a clip's (``clips.dataset.check_header``: a rate outside 8-384 kHz, more
    than 8 channels, more audio declared than the file holds, as ``validate``'s ``truncated_audio``),
    when it declares more than ``max_seconds`` (``TooLong``) or more samples (frames x channels) than
    ``max_seconds`` of 48 kHz stereo; then read in blocks, each mixed to mono and resampled as it
    comes, so memory is one block plus the 16-kHz result. ClipError with the reason."""
    try:
        with sf.SoundFile(sound_source(source)) as handle:
            rate, channels, frames = int(handle.samplerate), int(handle.channels), int(handle.frames)
            check_header(source, handle)
            if frames > max_seconds * rate:
                raise TooLong(
                    f"longer than {max_seconds:g} s ({frames / rate:.1f} s); score whole nights with `sleepsound score`"
                )
            budget = int(max_seconds * SAMPLES_PER_SECOND)
            if frames * channels > budget:
                raise ClipError(
                    f"{frames / rate:.1f} s at {rate} Hz x {channels} channels is {frames * channels} samples to "
                    f"decode, over the {budget} allowed ({max_seconds:g} s of 48 kHz stereo); resample it to "
                    "48 kHz or keep fewer channels"
                )
            stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, "float32", "HQ")
            pieces: list[np.ndarray] = []
            read, dtype = 0, read_dtype(handle)
            limit = math.ceil(max_seconds * rate) + 1  # one frame more tells a header that under-counts
            while read < limit:
                block = handle.read(min(DECODE_BLOCK_FRAMES, limit - read), dtype=dtype, always_2d=True)
                if not len(block):
                    break
                read += len(block)
                mono = mix_to_mono(block)
                pieces.append(mono if stream is None else stream.resample_chunk(mono, last=False))
            if stream is not None:
                pieces.append(stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
                if not all(np.isfinite(piece).all() for piece in pieces):
                    raise ClipError(RESAMPLED_NOT_FINITE)
    except ClipError:
        raise
    except Exception as exc:  # libsndfile raises several types for corrupt or foreign files
        raise unreadable(source, exc) from exc
    if read == 0:
        raise ClipError("empty (no samples)")
    if read < min_seconds * rate:
        raise ClipError(f"too short ({read / rate:.3f} s < {min_seconds:g} s)")
    if read > max_seconds * rate:
        raise TooLong(f"longer than {max_seconds:g} s; score whole nights with `sleepsound score`")
    return np.concatenate(pieces).astype(np.float32, copy=False)


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
        audio = decode_bounded(source, max_seconds, MIN_CLIP_SECONDS)
    except ClipError as exc:
        raise type(exc)(f"{name}: {exc}") from None
    except OSError as exc:  # e.g. a folder on the way that may not be searched: this file only
        raise ClipError(f"{name}: {exc.strerror or exc}") from None
    return score_audio(clf, audio, name, batch_size)
