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

import numpy as np

from sleepsound.core.config import Config
from sleepsound.core.prefetch import prefetch
from sleepsound.core.records import ManifestRow
from sleepsound.core.storage import RootLike
from sleepsound.embed.cache import channel_configs, plan_recording
from sleepsound.embed.collector import EmbedStats, RecordingCollector, WorkItem
from sleepsound.embed.epochs import night_rows
from sleepsound.embed.model_stage import EmbedStage
from sleepsound.embed.ray_adapter import ray_pipeline
from sleepsound.embed.rows import batches_to_rows, to_batch


def embed_cohort(
    manifest_rows: list[ManifestRow], root: RootLike, cfg: Config, use_ray: bool = True, shifted: bool = True
) -> EmbedStats:
    """Embed what the cache lacks for the accepted recordings; returns per-recording outcomes.

    ``shifted=False`` skips the shifted training windows (scoring only needs the epochs).
    Every channel of every recording is one work item in one pipeline (one backbone load);
    a recording counts as cached when no channel needs anything.
    """
    stats = EmbedStats()
    items: list[WorkItem] = []
    for row in manifest_rows:
        todo = [
            WorkItem(row, c, plan)
            for c in channel_configs(cfg)
            if not (plan := plan_recording(root, c, row, shifted)).empty
        ]
        if todo:
            items += todo
        else:
            stats.cached.append(row["recording_id"])
    if not items:
        return stats
    collector = RecordingCollector(root, items, stats)
    backbone = cfg.backbone.model_dump()
    if use_ray:
        rows = ray_pipeline(items, cfg, backbone)
    else:
        stage = EmbedStage(backbone)
        rows = _local_pipeline(items, cfg, stage)
    for row in rows:
        collector.add(row)
    collector.finish()
    return stats


def _local_pipeline(items: list[WorkItem], cfg: Config, stage: EmbedStage) -> Iterator[dict[str, Any]]:
    """One process: a reader thread decodes and filters the next batch while the model embeds this one."""
    for batch in prefetch(_local_batches(items, cfg.backbone.stream_rows), depth=2):
        yield from batches_to_rows([stage(batch)])


def _local_batches(items: list[WorkItem], rows_per_batch: int) -> Iterator[dict[str, np.ndarray]]:
    for item in items:
        buffer: list[dict[str, Any]] = []
        for epoch_row in night_rows(item.row, item.cfg.preprocess, item.plan):
            buffer.append(epoch_row)
            if len(buffer) == rows_per_batch:
                yield to_batch(buffer)
                buffer = []
        if buffer:
            yield to_batch(buffer)
