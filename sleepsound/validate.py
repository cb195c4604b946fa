"""Basic validation of one recording: can it be read, does it have what scoring needs.

Every recording ends as one manifest row, ``accepted`` or ``quarantined`` with a code
and a message naming the file, so counts always add up and nothing disappears.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sleepsound.annotations import AnnotationError, load_stages
from sleepsound.config import PreprocessConfig
from sleepsound.io.audio import AudioError, PartInfo, probe_edf, probe_plain
from sleepsound.preprocess import count_epochs
from sleepsound.sources import RecordingSource, local_copies

MIN_SAMPLE_RATE = 16_000
_CHUNK = 8 << 20


def sha256_of(paths: list[str]) -> tuple[str, int]:
    """Checksum and byte count of a night's files, streamed."""
    digest = hashlib.sha256()
    total = 0
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                total += len(chunk)
    return digest.hexdigest(), total


def probe_parts(src: RecordingSource, paths: list[str], cfg: PreprocessConfig) -> list[PartInfo]:
    """Headers of every part, checked for the channel, the rate and gaps in numbering."""
    if not paths:
        raise AudioError(src.recording_id, "no_audio", "no audio files found for this recording")
    expected = list(range(1, len(src.part_numbers) + 1))
    if src.layout == "psg-audio" and src.part_numbers != expected:
        missing = sorted(set(range(1, max(src.part_numbers) + 1)) - set(src.part_numbers))
        raise AudioError(src.audio_uris[0], "missing_part",
                         f"hour part(s) {missing} missing; the night's time axis would shift. Restore them")
    probe = probe_edf if src.layout == "psg-audio" else probe_plain
    parts = [probe(path, cfg.channel) for path in paths]
    for part in parts:
        if part.sample_rate < MIN_SAMPLE_RATE:
            raise AudioError(part.path, "low_sample_rate",
                             f"{cfg.channel} is sampled at {part.sample_rate:g} Hz; at least {MIN_SAMPLE_RATE} Hz needed")
    if len({p.sample_rate for p in parts}) > 1:
        raise AudioError(src.audio_uris[0], "inconsistent_parts", "parts have different sample rates")
    return parts


def validate_recording(src: RecordingSource, cfg: PreprocessConfig) -> dict[str, Any]:
    """One manifest row for ``src`` (see ``schemas.MANIFEST``); never raises for bad data."""
    row: dict[str, Any] = {
        "recording_id": src.recording_id, "subject_id": src.subject_id, "layout": src.layout,
        "source_uris": src.audio_uris, "n_parts": len(src.audio_uris), "bytes": 0, "sha256": None,
        "duration_s": None, "sample_rate": None, "channels": [],
        "label_source": "none" if src.labels_uri is None else ("rml" if src.layout == "psg-audio" else "csv"),
        "labels_uri": src.labels_uri, "events_uri": src.events_uri, "n_epochs": 0, "status": "accepted", "reason_code": None, "reason": None,
    }
    try:
        with local_copies(src.audio_uris) as paths:
            parts = probe_parts(src, paths, cfg)
            row["sha256"], row["bytes"] = sha256_of(paths)
        row["sample_rate"] = parts[0].sample_rate
        row["channels"] = list(parts[0].labels)
        row["duration_s"] = sum(p.duration_s for p in parts)
        row["n_epochs"] = count_epochs(sum(p.n_samples for p in parts), parts[0].sample_rate, cfg)
        if row["n_epochs"] == 0:
            raise AudioError(src.audio_uris[0], "too_short", "shorter than one 30-s epoch")
        if src.labels_uri is not None:
            with local_copies([src.labels_uri]) as (label_path,):
                load_stages(label_path, row["label_source"], row["n_epochs"])
    except (AudioError, AnnotationError) as exc:
        row.update(status="quarantined", reason_code=exc.code, reason=str(exc))
    except OSError as exc:  # storage trouble for this one night must not stop the others
        row.update(status="quarantined", reason_code="io_error", reason=str(exc))
    return row
