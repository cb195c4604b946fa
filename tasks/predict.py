"""Predict every accepted recording with the trained heads, and detect its breathing events; Parquet
partitioned by recording."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from sleepsound.core.config import Config
from sleepsound.core.records import Predicted, RootHold, TrainedModels
from sleepsound.core.storage import full_uri, join, open_root
from sleepsound.ingest.manifest import quarantine, read_manifest, read_manifest_rows, write_manifest
from sleepsound.ingest.versions import SOURCE_CHANGED
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
    """``recordings``: only these (the nightly flow's new nights); default every accepted one.

    A night whose audio had to be read again (for its breathing envelope) and had changed since
    validation is quarantined as ``source_changed``, as the embed step does, and the others are
    scored: the counts are the manifest's after that, and the next run validates the night again.
    The log gives the count and the code, never a recording id (a patient id): the manifest names
    the night and the file."""
    with follow_hold(root, hold):
        store = open_root(root)
        manifest = read_manifest(store)
        left_out: dict[str, str] = {}
        out = predict_recordings(
            store, Config.model_validate(config), run_id, model, manifest, recordings, left_out=left_out
        )
        if left_out:
            path = write_manifest(store, quarantine(read_manifest_rows(store), left_out, SOURCE_CHANGED))
            get_run_logger().warning(
                "left %d recordings out of the predictions: a file changed since validation when the audio was "
                "read again for the breathing envelope (%s); which ones and why: status and reason in %s",
                len(left_out),
                SOURCE_CHANGED,
                path,
            )
            manifest = read_manifest(store)
        accepted = int((manifest["status"] == "accepted").sum())
        return {
            "predictions": full_uri(store.fs, out),
            "events": full_uri(store.fs, join(store.path, "runs", run_id, "events")),
            "accepted": accepted,
            "quarantined": len(manifest) - accepted,
        }
