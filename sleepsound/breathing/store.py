"""Where a night's breathing envelope and its events live, and how they are read, checked and rebuilt.

The envelope is a cache artifact keyed like the epochs it comes from (audio checksum and
preprocessing settings, not the backbone: every backbone shares it)::

    breathing/<preproc>/<rec>-<sha>.parquet      one row per 0.1-s frame (schemas.ENVELOPE)

It is written by the embedding stage from the same stream as the epochs. A night embedded
before envelopes existed, or whose envelope file fails its check (unreadable, not one row per
frame of the night, or made from raw audio before ``ENVELOPE_VERSION`` 2), gets one by
re-reading its audio without running the model (``load_envelope``); a bad file is quarantined
like any cache file. The events of a run::

    runs/<run-id>/events/recording_id=<rec>/part-0.parquet   (schemas.EVENTS)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sleepsound.breathing.detector import BreathingEvent
from sleepsound.breathing.envelope import FEATURES, frames_per_epoch, night_envelope
from sleepsound.core import schemas
from sleepsound.core.config import Config
from sleepsound.core.records import ManifestRow
from sleepsound.core.storage import RootLike, join, open_root, partition, partition_files, partitions, write_table
from sleepsound.embed.cache import _footer, cache_meta, quarantine_cache_file, with_cache_meta

log = logging.getLogger(__name__)

# 2: a night read raw (``preprocess.device: model``) has its envelope read through the stream's filters,
# as the CPU stream's is; such a night's envelope from before (version 1) is rebuilt.
ENVELOPE_VERSION = 2


def envelope_path(root: str, cfg: Config, recording_id: str, sha256: str) -> str:
    return join(root, "breathing", cfg.preprocess.fingerprint(), f"{recording_id}-{sha256[:16]}.parquet")


def events_path(root: str, run_id: str, recording_id: str) -> str:
    return join(partition(join(root, "runs", run_id, "events"), recording_id), "part-0.parquet")


def envelope_table(epochs: Sequence[dict[str, Any]], epoch_seconds: float) -> pa.Table:
    """A night's envelope table from its epoch rows (``epoch_index``, ``valid``, flat ``envelope``), in order."""
    per = frames_per_epoch(epoch_seconds)
    rows = sorted(epochs, key=lambda r: int(r["epoch_index"]))
    env = night_envelope([np.asarray(r["envelope"], np.float32).reshape(per, len(FEATURES)) for r in rows], per)
    columns: dict[str, Any] = {
        "epoch_index": np.repeat(np.array([int(r["epoch_index"]) for r in rows], dtype=np.int32), per),
        "valid": np.repeat(np.array([bool(r["valid"]) for r in rows]), per),
    }
    columns |= {name: env[:, i] for i, name in enumerate(FEATURES)}
    table = pa.table(columns)
    return with_cache_meta(
        schemas.conform(table, schemas.ENVELOPE), n_epochs=len(rows), frames_per_epoch=per, version=ENVELOPE_VERSION
    )


def write_envelope(root: RootLike, cfg: Config, row: ManifestRow, table: pa.Table) -> str:
    store = open_root(root)
    path = envelope_path(store.path, cfg, str(row["recording_id"]), str(row["sha256"]))
    write_table(store.fs, path, table)
    return path


def envelope_problem(root: RootLike, cfg: Config, row: ManifestRow) -> str | None:
    """What is wrong with a present envelope file (footer only), or None when it is fine."""
    store = open_root(root)
    path = envelope_path(store.path, cfg, str(row["recording_id"]), str(row["sha256"]))
    problems: dict[str, str] = {}
    meta = _footer(store.fs, path, problems)
    if meta is None:
        return problems.get(path, "unreadable")
    want = int(row["n_epochs"]) * frames_per_epoch(cfg.preprocess.epoch_seconds)
    if meta.num_rows != want:
        return f"holds {meta.num_rows} envelope frames, the night has {want}"
    recorded = cache_meta(meta.metadata)
    per = recorded.get("frames_per_epoch")
    if per is not None and int(per) != frames_per_epoch(cfg.preprocess.epoch_seconds):
        return f"written with {per} frames per epoch"
    if cfg.preprocess.device == "model" and int(recorded.get("version", 1)) < 2:
        return "made from raw audio not read through the stream's filters (envelope version 1)"
    return None


def rebuild_envelope(root: RootLike, cfg: Config, row: ManifestRow) -> pa.Table:
    """Re-read a night's audio (no model) for its envelope, and cache it.

    ``SourceChanged`` (naming the file) when one of the night's files is no longer the version
    validation saw: the reader checks them as the embed step's do, so no envelope of other audio is
    cached under the validated checksum, and the caller can leave the night out with that reason.
    """
    from sleepsound.embed.epochs import read_epochs, source_change_in

    epochs = []
    for out in read_epochs(row, cfg.preprocess):
        if out["error"]:
            changed = source_change_in(out["error"])
            if changed is not None:
                raise changed
            raise OSError(f"re-reading the audio for its breathing envelope: {out['error']}")
        if out["kind"] == "epoch":
            epochs.append(out)
    table = envelope_table(epochs, cfg.preprocess.epoch_seconds)
    write_envelope(root, cfg, row, table)
    return table


def load_envelope(root: RootLike, cfg: Config, row: ManifestRow) -> tuple[np.ndarray, np.ndarray]:
    """A night's envelope ``[frames, FEATURES]`` and per-frame validity, from the cache or rebuilt.

    ``cfg`` is a single channel's configuration (the first channel when several are read). Rebuilding
    raises ``SourceChanged`` when the night's files changed since validation (``rebuild_envelope``).
    """
    store = open_root(root)
    path = envelope_path(store.path, cfg, str(row["recording_id"]), str(row["sha256"]))
    table = None
    if store.fs.exists(path):
        problem = envelope_problem(store, cfg, row)
        if problem is None:
            with store.fs.open(path, "rb") as handle:
                table = pq.read_table(handle)
        else:
            quarantine_cache_file(store, path, problem)
    if table is None:
        log.info("a night has no breathing envelope in the cache: re-reading its audio (no model)")
        table = rebuild_envelope(store, cfg, row)
    env = np.stack([table[name].to_numpy() for name in FEATURES], axis=1).astype(np.float32)
    return env, table["valid"].to_numpy(zero_copy_only=False).astype(bool)


def events_table(events: Sequence[BreathingEvent]) -> pa.Table:
    """A night's events as written (``schemas.EVENTS``; its recording id is the folder's)."""
    table = pa.table(
        {
            "start_s": [float(e["start_s"]) for e in events],
            "end_s": [float(e["end_s"]) for e in events],
            "type": [e["type"] for e in events],
            "confidence": [float(e["confidence"]) for e in events],
        }
    )
    return schemas.conform(table, schemas.EVENTS)


def write_events(root: RootLike, run_id: str, recording_id: str, events: Sequence[BreathingEvent]) -> str:
    """A night's event table (written even when empty: no events is a finding)."""
    store = open_root(root)
    path = events_path(store.path, run_id, recording_id)
    write_table(store.fs, path, events_table(events))
    return path


def read_events(root: RootLike, run_id: str) -> dict[str, list[BreathingEvent]]:
    """Every night's events of a run, by recording id (nights without a table are absent)."""
    store = open_root(root)
    out: dict[str, list[BreathingEvent]] = {}
    nights = partitions(store.fs, join(store.path, "runs", run_id, "events"))
    for rec, folder in sorted(nights.items()):
        files = partition_files(store.fs, folder)
        if not files:
            continue
        rows = []
        for path in files:
            with store.fs.open(path, "rb") as handle:
                rows += pq.read_table(handle).to_pylist()
        out[rec] = [
            {"start_s": r["start_s"], "end_s": r["end_s"], "type": r["type"], "confidence": r["confidence"]}
            for r in rows
        ]
    return out
