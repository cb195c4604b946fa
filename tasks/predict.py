"""Predict every accepted recording with the trained heads, and detect its breathing events; Parquet
partitioned by recording."""

from __future__ import annotations

from typing import Any

from prefect import task

from sleepsound.core.config import Config
from sleepsound.core.records import Predicted, RootHold, TrainedModels
from sleepsound.core.storage import full_uri, join, open_root
from sleepsound.ingest.manifest import read_manifest
from sleepsound.predict.recordings import predict_recordings
from sleepsound.runs.root_lock import follow_hold


@task(name="predict")
def predict(
    root: str,
    config: dict[str, Any],
    run_id: str,
    model: TrainedModels,
    recordings: list[str] | None = None,
    hold: RootHold | None = None,
) -> Predicted:
    """``recordings``: only these (the nightly flow's new nights); default every accepted one."""
    with follow_hold(root, hold):
        store = open_root(root)
        manifest = read_manifest(store)
        out = predict_recordings(store, Config.model_validate(config), run_id, model, manifest, recordings)
        accepted = int((manifest["status"] == "accepted").sum())
        return {
            "predictions": full_uri(store.fs, out),
            "events": full_uri(store.fs, join(store.path, "runs", run_id, "events")),
            "accepted": accepted,
            "quarantined": len(manifest) - accepted,
        }
