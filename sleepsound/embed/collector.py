"""Collect the model stage's rows per recording and write each night to the cache once it is whole.

Rows may arrive in any order (Ray reorders them, and a long night may be read as chunks by
several readers at once); each chunk's closing row says how many rows it sent, so a night is
written only when every chunk has closed and all their rows are in, and a night that broke
while streaming is failed as a whole, never written in part.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from sleepsound.breathing.store import envelope_table, write_envelope
from sleepsound.core import schemas
from sleepsound.core.config import Config
from sleepsound.core.records import ManifestRow
from sleepsound.core.storage import RootLike, open_root, values_digest, write_table
from sleepsound.embed.cache import (
    EmbedPlan,
    embeddings_path,
    epochs_path,
    night_identity,
    shifted_path,
    with_cache_meta,
)
from sleepsound.embed.epochs import EPOCH_COLUMNS, Chunk, failure_code
from sleepsound.labels.events import RESP_COLUMNS


@dataclass
class EmbedStats:
    """What the embedding stage did, recording by recording (a recording counts once, whatever
    its channels); ``epochs`` and ``shifted`` count rows embedded over all channels."""

    embedded: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    failure_codes: dict[str, str] = field(default_factory=dict)  # per failed recording: the manifest's reason code
    quarantined: list[str] = field(default_factory=list)  # bad cache files moved aside: "path: problem"
    epochs: int = 0
    shifted: int = 0
    ray_data: bool = False  # embedded through Ray Data (False: in the calling process, or nothing to embed)


@dataclass(frozen=True)
class WorkItem:
    """One channel of one recording (or a chunk of its epochs) to stream, and what to embed from it."""

    row: ManifestRow
    cfg: Config  # single channel
    plan: EmbedPlan
    chunk: Chunk | None = None  # None: the whole night

    @property
    def key(self) -> tuple[str, str]:
        return self.cfg.preprocess.channel, str(self.row["recording_id"])


class RecordingCollector:
    """Gathers rows per (channel, recording) and writes them once every chunk's closing row has
    said how many rows it sent and they have all arrived (Ray may reorder rows)."""

    def __init__(self, root: RootLike, items: list[WorkItem], stats: EmbedStats) -> None:
        self.fs_root = open_root(root)
        self.fs, self.root_path = self.fs_root
        self.items = {item.key: item for item in items}
        self.chunks: dict[tuple[str, str], int] = defaultdict(int)
        for item in items:
            self.chunks[item.key] += 1
        self.stats = stats
        self.multi = len({item.key[0] for item in items}) > 1
        self.pending: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self.seen: dict[tuple[str, str], int] = defaultdict(int)
        self.expected: dict[tuple[str, str], int] = defaultdict(int)  # rows announced by closed chunks
        self.closed: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, row: dict[str, Any]) -> None:
        key = (str(row["channel"]), str(row["recording_id"]))
        if key[1] in self.stats.failed or key not in self.items:
            return
        if row.get("error"):
            self._fail(key, str(row["error"]))
            return
        self.seen[key] += 1
        if row["kind"] == "end":
            self.expected[key] += int(row["n_rows"])
            self.closed[key] += 1
        else:
            self.pending[key].append(row)
        if self.closed[key] == self.chunks[key] and self.seen[key] == self.expected[key]:
            self._flush(key, self.pending.pop(key, []))

    def _fail(self, key: tuple[str, str], message: str) -> None:
        self.stats.failed[key[1]] = f"{key[0]}: {message}" if self.multi else message
        self.stats.failure_codes[key[1]] = failure_code(message)
        for other in [k for k in self.items if k[1] == key[1]]:
            self.pending.pop(other, None)
            self.items.pop(other)

    def _flush(self, key: tuple[str, str], rows: list[dict[str, Any]]) -> None:
        item = self.items.pop(key)
        rec, sha, cfg = key[1], item.row["sha256"], item.cfg
        n_layers = cfg.backbone.n_layers  # EmbedStage's rows say frames and width, not layers
        rows.sort(key=lambda r: int(r["epoch_index"]))
        shifted = [r for r in rows if r["kind"] == "shifted"]
        for stage in item.plan.shift_classes:
            windows = [r for r in shifted if r["stage3"] == stage]
            labels = night_identity(item.row)["labels_sha256"]  # the windows' stages come from them
            write_table(
                self.fs,
                shifted_path(self.root_path, cfg, rec, sha, stage),
                with_cache_meta(_shifted_table(rec, windows, n_layers), labels_sha256=labels),
                bulk=("embedding",),
            )
        epochs = [r for r in rows if r["kind"] == "epoch"]
        if item.plan.epochs:
            # Embeddings first, epochs last: the epochs file is the recording's completion mark.
            write_table(
                self.fs,
                embeddings_path(self.root_path, cfg, rec, sha),
                _embeddings_table(rec, [r for r in epochs if r["valid"]], n_layers),
                bulk=("embedding",),
            )
            # The breathing envelope came down the same stream (breathing.store): written before the
            # epochs file too, so a night marked complete has it.
            if epochs and "envelope" in epochs[0]:
                write_envelope(self.fs_root, cfg, item.row, envelope_table(epochs, cfg.preprocess.epoch_seconds))
            table = pa.Table.from_pylist([{k: r[k] for k in EPOCH_COLUMNS} for r in epochs])
            n_valid = sum(bool(r["valid"]) for r in epochs)  # the embeddings file's row count, checked on a cache hit
            # What the night was made from, so a later version of it is never paired with this file (cache.py).
            table = with_cache_meta(schemas.conform(table, schemas.EPOCHS), n_valid=n_valid, **night_identity(item.row))
            write_table(self.fs, epochs_path(self.root_path, cfg, rec), table)
        if rec not in self.stats.embedded:
            self.stats.embedded.append(rec)
        self.stats.epochs += len(epochs)
        self.stats.shifted += len(shifted)

    def finish(self) -> None:
        for key in list(self.items):
            if key not in self.items:  # failed with its recording's other channel
                continue
            got, closed, chunks = len(self.pending.get(key, [])), self.closed[key], self.chunks[key]
            if closed == chunks:
                self._fail(key, f"only {got} rows arrived of {self.expected[key] - closed}")
            else:
                closing = f" ({closed} of {chunks} chunks closed)" if closed else ""
                self._fail(key, f"only {got} rows arrived{closing}")
        self.pending.clear()


def _frames(rows: list[dict[str, Any]], n_layers: int) -> tuple[int, int, pa.Array, str]:
    """(n_frames, dim, flat embeddings, their digest) of rows that each hold [n_frames, n_layers, dim] values."""
    n_frames, dim = int(rows[0]["n_frames"]), int(rows[0]["dim"])
    emb = np.stack([np.asarray(r["embedding"], dtype=np.float16) for r in rows])
    if emb.shape[1] != n_frames * n_layers * dim:
        raise ValueError(
            f"embedding rows of {emb.shape[1]} values are not {n_frames} frames x {n_layers} layers x {dim} dims"
        )
    flat = emb.ravel()
    array = pa.FixedSizeListArray.from_arrays(pa.array(flat), n_frames * n_layers * dim)
    return n_frames, dim, array, values_digest(flat)


def _embeddings_table(rec: str, valid: list[dict[str, Any]], n_layers: int = 1) -> pa.Table:
    """A recording's valid epochs' embeddings (an empty table when none is valid)."""
    if not valid:
        return schemas.embeddings_schema(1, 1).empty_table()
    n_frames, dim, emb, digest = _frames(valid, n_layers)
    table = pa.table(
        {
            "recording_id": [rec] * len(valid),
            "epoch_index": [int(r["epoch_index"]) for r in valid],
            "n_frames": [n_frames] * len(valid),
            "dim": [dim] * len(valid),
            "n_layers": [n_layers] * len(valid),
            "embedding": emb,
        }
    )
    return with_cache_meta(schemas.conform(table, schemas.embeddings_schema(n_frames, dim, n_layers)), sha256=digest)


def _shifted_table(rec: str, windows: list[dict[str, Any]], n_layers: int = 1) -> pa.Table:
    """One stage's shifted windows of a recording (an empty table marks "none there")."""
    if not windows:
        return schemas.shifted_embeddings_schema(1, 1).empty_table()
    n_frames, dim, emb, digest = _frames(windows, n_layers)
    columns: dict[str, Any] = {
        name: [r[name] for r in windows] for name in ("epoch_index", "offset_s", "stage5", "stage3", *RESP_COLUMNS)
    }
    table = pa.table(
        {
            "recording_id": [rec] * len(windows),
            **columns,
            "n_frames": [n_frames] * len(windows),
            "dim": [dim] * len(windows),
            "n_layers": [n_layers] * len(windows),
            "embedding": emb,
        }
    )
    return with_cache_meta(
        schemas.conform(table, schemas.shifted_embeddings_schema(n_frames, dim, n_layers)), sha256=digest
    )
