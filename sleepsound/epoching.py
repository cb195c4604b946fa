"""The CPU stage: one accepted recording in, a stream of labelled, preprocessed epochs out.

Written as a plain generator so it runs in-process for tests and as a Ray Data
``flat_map`` stage in the flow. Each row carries ``n_epochs`` so a consumer knows when a
recording is complete without waiting for the whole cohort.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from sleepsound.annotations import load_stages
from sleepsound.config import PreprocessConfig
from sleepsound.io.audio import iter_night_blocks
from sleepsound.labels import UNSCORED, to_three_class
from sleepsound.preprocess import iter_epochs
from sleepsound.sources import RecordingSource, local_copies
from sleepsound.validate import probe_parts

# Columns of an epoch row apart from the audio itself (see schemas.EPOCHS).
EPOCH_COLUMNS = ("recording_id", "subject_id", "epoch_index", "start_s", "stage5", "stage3",
                 "valid", "invalid_reason", "zero_rms_s", "nonfinite", "clipped_fraction")


def recording_source(row: dict[str, Any]) -> RecordingSource:
    """Rebuild the source description from a manifest row."""
    n = int(row["n_parts"])
    return RecordingSource(row["recording_id"], row["subject_id"], row["layout"], list(row["source_uris"]),
                           list(range(1, n + 1)), row.get("labels_uri"), row.get("events_uri"))


def read_epochs(row: dict[str, Any], cfg: PreprocessConfig) -> Iterator[dict[str, Any]]:
    """Stream one night into epoch rows; a failure mid-night becomes one ``error`` row.

    A night that breaks while streaming (a truncated part, storage gone) must not stop
    the cohort: the consumer sees the error row, drops that night's partial rows and
    quarantines it with the message.
    """
    try:
        yield from _read_epochs(row, cfg)
    except Exception as exc:  # noqa: BLE001 - any failure is this night's, reported by name
        yield {"recording_id": row["recording_id"], "subject_id": row["subject_id"], "epoch_index": -1,
               "start_s": 0.0, "stage5": None, "stage3": None, "valid": False,
               "invalid_reason": None, "zero_rms_s": 0.0, "nonfinite": 0, "clipped_fraction": 0.0, "n_epochs": int(row["n_epochs"]),
               "audio": np.zeros(int(cfg.epoch_seconds * cfg.target_rate), dtype=np.float32),
               "error": f"{type(exc).__name__}: {exc}"}


def _read_epochs(row: dict[str, Any], cfg: PreprocessConfig) -> Iterator[dict[str, Any]]:
    src = recording_source(row)
    n_epochs = int(row["n_epochs"])
    stages: list[str | None] = [None] * n_epochs
    if src.labels_uri is not None:
        with local_copies([src.labels_uri]) as (label_path,):
            stages = list(load_stages(label_path, row["label_source"], n_epochs))
    empty = np.zeros(int(cfg.epoch_seconds * cfg.target_rate), dtype=np.float32)
    with local_copies(src.audio_uris) as paths:
        parts = probe_parts(src, paths, cfg)
        rate = parts[0].sample_rate
        block = int(round(cfg.epoch_seconds * rate)) * cfg.block_epochs
        emitted = 0
        full_scale = max(p.full_scale for p in parts)
        for epoch in iter_epochs(iter_night_blocks(parts, block, src.layout), rate, cfg, full_scale):
            if epoch.index >= n_epochs:
                break
            emitted += 1
            stage5 = stages[epoch.index]
            yield {
                "recording_id": src.recording_id, "subject_id": src.subject_id,
                "epoch_index": epoch.index, "start_s": epoch.index * cfg.epoch_seconds,
                "stage5": stage5, "stage3": None if stage5 in (None, UNSCORED) else to_three_class(stage5),
                "valid": epoch.valid, "invalid_reason": epoch.reason, "zero_rms_s": epoch.zero_rms_seconds,
                "nonfinite": epoch.quality.nonfinite, "clipped_fraction": epoch.quality.clipped_fraction,
                "n_epochs": n_epochs, "audio": epoch.audio if epoch.valid else empty, "error": None,
            }
    if emitted < n_epochs:
        raise OSError(f"{src.audio_uris[-1]}: audio ended after {emitted} of {n_epochs} epochs")
