"""Embed every valid epoch of a cohort with a frozen backbone, cached under the storage root.

The CPU stage (``epochs.read_epochs``) and the model stage (``model_stage.EmbedStage``) are
separate so Ray Data sizes them independently (``ray_adapter``); the same two pieces run in
one process for tests and small jobs, a reader thread preparing the next batch while the
model embeds this one. Results are written per recording as soon as its last row arrives
(``collector``), keyed by what produced them (``cache``), so a rerun embeds only what is
new and a crash loses only the nights in flight.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from sleepsound.core.config import Config
from sleepsound.core.prefetch import prefetch
from sleepsound.core.progress import Progress, quiet
from sleepsound.core.records import ManifestRow
from sleepsound.core.storage import RootLike, is_local
from sleepsound.embed.cache import channel_configs, plan_recording
from sleepsound.embed.collector import EmbedStats, RecordingCollector, WorkItem
from sleepsound.embed.epochs import Chunk, night_rows
from sleepsound.embed.model_stage import EmbedStage
from sleepsound.embed.ray_adapter import one_node_without_gpus, ray_pipeline
from sleepsound.embed.transport import table_rows, to_table


def embed_cohort(
    manifest_rows: list[ManifestRow],
    root: RootLike,
    cfg: Config,
    use_ray: bool = True,
    shifted: bool = True,
    progress: Progress = quiet,
    small_job_epochs: int = 0,
) -> EmbedStats:
    """Embed what the cache lacks for the accepted recordings; returns per-recording outcomes.

    ``shifted=False`` skips the shifted training windows (scoring only needs the epochs).
    ``small_job_epochs`` (a flow's ``ray.small_job_epochs``): with ``use_ray``, a job of at most
    that many epochs still runs in this process where Ray Data would gain nothing (``small_job``).
    Every channel of every recording is one work item in one pipeline (one backbone load);
    a recording counts as cached when no channel needs anything. A cache file that fails its
    check is quarantined (``stats.quarantined``) and embedded again. On Ray, a night on local
    disk longer than ``ray.chunk_minutes`` is several work items, chunks of its epochs that
    readers stream side by side (see ``night_chunks``). ``progress`` hears the epochs embedded of
    those to embed (shifted windows not counted).
    """
    stats = EmbedStats()
    items: list[WorkItem] = []
    chunk_epochs = round(cfg.ray.chunk_minutes * 60 / cfg.preprocess.epoch_seconds) if use_ray else 0
    for row in manifest_rows:
        plans = [(c, plan_recording(root, c, row, shifted)) for c in channel_configs(cfg)]
        for _, plan in plans:
            stats.quarantined += plan.quarantined
        todo = [
            WorkItem(row, c, plan, chunk)
            for c, plan in plans
            if not plan.empty
            for chunk in night_chunks(row, chunk_epochs)
        ]
        if todo:
            items += todo
        else:
            stats.cached.append(row["recording_id"])
    if not items:
        return stats
    collector = RecordingCollector(root, items, stats)
    backbone = cfg.backbone.model_dump()
    total = sum(item.plan.epochs * _epochs_in(item) for item in items)
    stats.ray_data = use_ray and not small_job(total, cfg, small_job_epochs)
    if stats.ray_data:
        rows = ray_pipeline(items, cfg, backbone)
    else:
        stage = EmbedStage(backbone, preprocess=cfg.preprocess.model_dump())
        rows = _local_pipeline(items, cfg, stage)
    done = 0
    progress("embed", done, total, "epochs")
    for row in rows:
        collector.add(row)
        if row.get("kind") == "epoch":
            done += 1
            progress("embed", done, total, "epochs")
    collector.finish()
    return stats


def small_job(epochs: int, cfg: Config, limit: int) -> bool:
    """Whether ``epochs`` to embed are better embedded in this process than through Ray Data: at most
    ``limit`` of them, one model actor asked for, and a Ray session of one node without GPUs (in a
    flow's task: its own machine, which the task's process shares with nothing else the flow runs then).
    Ray Data's start and its model actor's imports cost 5-7 s of a 2-core machine, where half an hour of
    audio embeds with a tiny model in 3.5 s; GPUs or other nodes are what Ray Data is for: it keeps them."""
    if epochs > limit or cfg.ray.embed_workers != 1 or cfg.ray.num_gpus_per_worker or cfg.ray.embed_resources:
        return False
    return one_node_without_gpus()


def night_chunks(row: ManifestRow, chunk_epochs: int) -> list[Chunk | None]:
    """How a night is split among readers: ``[None]`` (one reader, the whole night) unless it is
    longer than ``chunk_epochs`` and its files are on local disk or are PSG-Audio EDF parts on
    object storage, then consecutive epoch ranges.

    A chunk's reader opens only the files it needs when they are local, and reads only the byte
    ranges of the records it needs from object storage (``epochs.night_parts``); a plain night on
    object storage would be downloaded whole by each reader, so it stays whole (a cohort still
    spreads over readers night by night).
    """
    n = int(row["n_epochs"])
    where = row["layout"] == "psg-audio" or all(is_local(uri) for uri in row["source_uris"])
    if chunk_epochs <= 0 or n <= chunk_epochs or not where:
        return [None]
    return [(first, min(n, first + chunk_epochs)) for first in range(0, n, chunk_epochs)]


def _epochs_in(item: WorkItem) -> int:
    first, stop = item.chunk if item.chunk is not None else (0, int(item.row["n_epochs"]))
    return stop - first


def _local_pipeline(items: list[WorkItem], cfg: Config, stage: EmbedStage) -> Iterator[dict[str, Any]]:
    """One process: a reader thread decodes and filters the next batch while the model embeds this one."""
    for batch in prefetch(_local_batches(items, cfg.backbone.stream_rows), depth=2):
        yield from table_rows([stage(batch)])


def _local_batches(items: list[WorkItem], rows_per_batch: int) -> Iterator[pa.Table]:
    for item in items:
        buffer: list[dict[str, Any]] = []
        for epoch_row in night_rows(item.row, item.cfg.preprocess, item.plan, item.chunk):
            buffer.append(epoch_row)
            if len(buffer) == rows_per_batch:
                yield to_table(buffer, raw=item.cfg.preprocess.device == "model")
                buffer = []
        if buffer:
            yield to_table(buffer, raw=item.cfg.preprocess.device == "model")
