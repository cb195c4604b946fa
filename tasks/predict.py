"""Predict every accepted recording with the trained head; Parquet partitioned by recording."""

from __future__ import annotations

from typing import Any

from prefect import task

from sleepsound.core.config import Config
from sleepsound.ingest.manifest import read_manifest
from sleepsound.predict.recordings import predict_recordings
from sleepsound.core.storage import full_uri, open_root


@task(name="predict")
def predict(root: str, config: dict[str, Any], run_id: str, model: dict[str, Any],
            recordings: list[str] | None = None) -> dict[str, Any]:
    """``recordings``: only these (the nightly flow's new nights); default every accepted one."""
    manifest = read_manifest(root)
    out = predict_recordings(root, Config.model_validate(config), run_id, model, manifest, recordings)
    accepted = int((manifest["status"] == "accepted").sum())
    fs, _ = open_root(root)
    return {"predictions": full_uri(fs, out), "accepted": accepted, "quarantined": len(manifest) - accepted}
