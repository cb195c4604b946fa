"""The nightly flow's bookkeeping tasks: which nights are new, and marking them done."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from sleepsound.ingest.manifest import read_manifest_rows
from sleepsound.runs.nightly_state import mark_processed, new_recordings


@task(name="find-new")
def find_new(root: str) -> dict[str, Any]:
    """New accepted nights since the last successful nightly run, split by whether they are labelled."""
    new = new_recordings(root, read_manifest_rows(root))
    labelled = [str(r["recording_id"]) for r in new if r["label_source"] != "none"]
    unlabelled = [str(r["recording_id"]) for r in new if r["label_source"] == "none"]
    get_run_logger().info("%d new nights: %d labelled, %d unlabelled", len(new), len(labelled), len(unlabelled))
    return {"labelled": labelled, "unlabelled": unlabelled}


@task(name="mark-done")
def mark_done(root: str, run_id: str, recordings: list[str]) -> int:
    rows = [r for r in read_manifest_rows(root) if str(r["recording_id"]) in set(recordings)]
    mark_processed(root, run_id, rows)
    return len(rows)
