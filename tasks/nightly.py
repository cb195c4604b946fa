"""The nightly flow's bookkeeping tasks: which nights are new, and marking them done."""

from __future__ import annotations

from prefect import get_run_logger, task

from sleepsound.core.records import RootHold
from sleepsound.core.storage import open_root
from sleepsound.ingest.manifest import read_manifest_rows
from sleepsound.runs.nightly_state import mark_processed, new_recordings
from sleepsound.runs.root_lock import follow_hold


@task(name="find-new")
def find_new(root: str) -> dict[str, list[str]]:
    """New accepted nights since the last successful nightly run, split by whether they are labelled."""
    store = open_root(root)
    new = new_recordings(store, read_manifest_rows(store))
    labelled = [str(r["recording_id"]) for r in new if r["label_source"] != "none"]
    unlabelled = [str(r["recording_id"]) for r in new if r["label_source"] == "none"]
    get_run_logger().info("%d new nights: %d labelled, %d unlabelled", len(new), len(labelled), len(unlabelled))
    return {"labelled": labelled, "unlabelled": unlabelled}


@task(name="mark-done")
def mark_done(root: str, run_id: str, recordings: list[str], hold: RootHold | None = None) -> int:
    with follow_hold(root, hold):
        store = open_root(root)
        # Accepted ones only: a night quarantined on the way (predict found its source changed) was not
        # scored, and the next run must take it as new again.
        wanted = set(recordings)
        rows = [r for r in read_manifest_rows(store) if str(r["recording_id"]) in wanted and r["status"] == "accepted"]
        mark_processed(store, run_id, rows)
        return len(rows)
