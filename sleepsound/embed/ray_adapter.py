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
from sleepsound.embed.rows import batches_to_rows

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
    ds = ray.data.from_items(payload, override_num_blocks=len(payload))
    ds = ds.map_batches(read_items, batch_size=1, batch_format="numpy", num_cpus=cfg.ray.read_cpus)
    ds = ds.map_batches(
        EmbedStage,
        fn_constructor_kwargs={"backbone": backbone, "workers_per_node": cfg.ray.embed_workers},
        batch_size=cfg.backbone.stream_rows,
        batch_format="numpy",
        concurrency=cfg.ray.embed_workers,
        num_gpus=cfg.ray.num_gpus_per_worker or None,
        num_cpus=cfg.ray.embed_cpus,
        resources=cfg.ray.embed_resources or None,
    )
    yield from batches_to_rows(ds.iter_batches(batch_size=64, batch_format="numpy"))


# Every block the reader emits has this schema, so an unlabelled night (all-null stages)
# and a labelled one (strings) form one dataset; the audio travels as a tensor column.
_TRANSPORT_FIELDS: list[tuple[str, pa.DataType]] = [
    ("recording_id", pa.string()),
    ("subject_id", pa.string()),
    ("epoch_index", pa.int32()),
    ("start_s", pa.float64()),
    ("stage5", pa.string()),
    ("stage3", pa.string()),
    ("valid", pa.bool_()),
    ("invalid_reason", pa.string()),
    ("zero_rms_s", pa.float32()),
    ("nonfinite", pa.int32()),
    ("clipped_fraction", pa.float32()),
    ("apnea_frac", pa.float32()),
    ("hypopnea_frac", pa.float32()),
    ("snore_frac", pa.float32()),
    ("n_apnea", pa.int32()),
    ("n_hypopnea", pa.int32()),
    ("resp_label", pa.string()),
    ("kind", pa.string()),
    ("offset_s", pa.float32()),
    ("channel", pa.string()),
    ("n_epochs", pa.int32()),
    ("n_rows", pa.int32()),
    ("error", pa.string()),
]


def _transport_table(rows: list[dict[str, Any]]) -> pa.Table:
    from ray.data.extensions import ArrowTensorArray

    columns = {name: pa.array([r[name] for r in rows], type=kind) for name, kind in _TRANSPORT_FIELDS}
    columns["audio"] = ArrowTensorArray.from_numpy(np.stack([r["audio"] for r in rows]))
    return pa.table(columns)


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
                yield _transport_table(rows)
                rows = []
        if rows:
            yield _transport_table(rows)
