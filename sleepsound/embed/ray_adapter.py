"""The one place sleepsound calls Ray Data: the embedding pipeline as a Ray Data dataset.

CPU readers (``read_items``: stream, resample, filter, epoch) and the model stage
(``EmbedStage`` as an actor pool, on GPUs when asked) are separate ``map_batches`` stages,
sized independently, so the model never waits on one reader.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from sleepsound.core.config import Config, PreprocessConfig
from sleepsound.embed.cache import EmbedPlan
from sleepsound.embed.epochs import night_rows
from sleepsound.embed.model_stage import EmbedStage
from sleepsound.embed.transport import table_rows, to_table

if TYPE_CHECKING:
    from sleepsound.embed.collector import WorkItem


def import_ray_data() -> None:
    """Import Ray Data now (a few seconds the first time), e.g. before a benchmark's clock starts."""
    import ray.data  # noqa: F401


def ray_pipeline(items: list[WorkItem], cfg: Config, backbone: dict[str, Any]) -> Iterator[dict[str, Any]]:
    import ray

    # Manifest rows hold lists; Ray Data items must be plain dicts of plain values.
    payload = [
        {
            "item": json.dumps(
                {
                    "row": item.row,
                    "preprocess": item.cfg.preprocess.model_dump(),
                    "epochs": item.plan.epochs,
                    "shift": list(item.plan.shift_classes),
                    "chunk": item.chunk,
                },
                default=str,
            )
        }
        for item in items
    ]
    # Ray Data's own progress bars draw in whatever process runs this (a flow's embed task: a Ray
    # worker whose output nobody sees); the command line draws its own from the task's counts.
    ray.data.DataContext.get_current().enable_progress_bars = False
    ds = ray.data.from_items(payload, override_num_blocks=len(payload))
    ds = ds.map_batches(read_items, batch_size=1, batch_format="numpy", num_cpus=cfg.ray.read_cpus)
    # Arrow tables from here on: the model stage and the driver read columns, never cells.
    ds = ds.map_batches(
        EmbedStage,
        fn_constructor_kwargs={
            "backbone": backbone,
            "workers_per_node": cfg.ray.embed_workers,
            "preprocess": cfg.preprocess.model_dump(),
        },
        batch_size=cfg.backbone.stream_rows,
        batch_format="pyarrow",
        concurrency=cfg.ray.embed_workers,
        num_gpus=cfg.ray.num_gpus_per_worker or None,
        num_cpus=cfg.ray.embed_cpus,
        resources=cfg.ray.embed_resources or None,
    )
    yield from table_rows(ds.iter_batches(batch_size=64, batch_format="pyarrow"))


def read_items(items: dict[str, np.ndarray]) -> Iterator[pa.Table]:
    """Ray Data CPU stage: work items in, blocks of ``block_epochs`` preprocessed rows out."""
    for text in items["item"]:
        item = json.loads(str(text))
        cfg = PreprocessConfig.model_validate(item["preprocess"])
        plan = EmbedPlan(bool(item["epochs"]), tuple(item["shift"]))
        rows: list[dict[str, Any]] = []
        chunk = tuple(item["chunk"]) if item.get("chunk") else None
        for row in night_rows(item["row"], cfg, plan, chunk):
            rows.append(row)
            if len(rows) == cfg.block_epochs:
                yield to_table(rows, raw=cfg.device == "model")
                rows = []
        if rows:
            yield to_table(rows, raw=cfg.device == "model")
