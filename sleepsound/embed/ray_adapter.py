"""The one place sleepsound calls Ray Data: the embedding pipeline as a Ray Data dataset.

CPU readers (``read_items``: stream, resample, filter, epoch) and the model stage
(``EmbedStage`` as an actor pool, on GPUs when asked) are separate ``map_batches`` stages,
sized independently, so the model never waits on one reader.
"""

from __future__ import annotations

import json
import math
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


# Ray Data's autoscaling coordinator packs the stages' CPU requests into each node's CPUs in binary
# floating point: on 2 CPUs, 2.0 - 0.975 - 0.975 leaves 0.04999999999999993, so a 0.05 model actor no
# longer fits beside two 0.975 readers, the dataset is granted 1.95 CPUs, and from the coordinator's
# first answer on (about 10 s into a run) only one reader runs beside the actor. Ray core counts in
# steps of 1/10000, where they fit.
RAY_RESOURCE_STEP = 1e-4


def packable_cpus(cpus: float) -> float:
    """``cpus`` as Ray is asked for them. Multiples of 1/16 add up exactly in binary and stay; other
    fractions go down to Ray's 1/10000 step and one step more, so that the floating-point sums Ray
    Data makes of them stay under the whole CPUs their exact values fit into (the slack, 1/10000 a
    request, is far above the rounding error), and no more of them fit than before."""
    if float(cpus * 16).is_integer():
        return float(cpus)
    return round(max(1, math.floor(cpus / RAY_RESOURCE_STEP + 1e-6) - 1) * RAY_RESOURCE_STEP, 4)


def import_ray_data() -> None:
    """Import Ray Data now (a few seconds the first time), e.g. before a benchmark's clock starts."""
    import ray.data  # noqa: F401


def one_node_without_gpus() -> bool:
    """Whether the connected Ray session is one live node with no GPUs (False without a session)."""
    import ray

    if not ray.is_initialized():
        return False
    alive = [node for node in ray.nodes() if node.get("Alive")]
    return len(alive) == 1 and not ray.cluster_resources().get("GPU")


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
    ds = ds.map_batches(read_items, batch_size=1, batch_format="numpy", num_cpus=packable_cpus(cfg.ray.read_cpus))
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
        num_cpus=packable_cpus(cfg.ray.embed_cpus),
        resources=cfg.ray.embed_resources or None,
    )
    yield from table_rows(ds.iter_batches(batch_size=64, batch_format="pyarrow"))


# Rows per Arrow table a reader hands Ray Data: whatever the decode block, enough that per-table costs
# (building the columns, Ray Data's per-batch bookkeeping) stay small beside the rows' own.
READ_TABLE_ROWS = 4


def read_items(items: dict[str, np.ndarray]) -> Iterator[pa.Table]:
    """Ray Data CPU stage: work items in, tables of ``READ_TABLE_ROWS`` preprocessed rows out."""
    for text in items["item"]:
        item = json.loads(str(text))
        cfg = PreprocessConfig.model_validate(item["preprocess"])
        plan = EmbedPlan(bool(item["epochs"]), tuple(item["shift"]))
        rows: list[dict[str, Any]] = []
        chunk = tuple(item["chunk"]) if item.get("chunk") else None
        for row in night_rows(item["row"], cfg, plan, chunk):
            rows.append(row)
            if len(rows) == READ_TABLE_ROWS:
                yield to_table(rows, raw=cfg.device == "model")
                rows = []
        if rows:
            yield to_table(rows, raw=cfg.device == "model")
