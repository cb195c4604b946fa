"""Discover and validate a source, and write the manifest under the storage root.

Its logs (Prefect's, readable by whoever reads the Prefect API) carry counts and reason codes,
never a recording id: in PSG-Audio those are patient ids. The manifest names them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from prefect import get_run_logger, task

from sleepsound.core.config import Config
from sleepsound.core.records import Ingested, RootHold
from sleepsound.core.storage import open_root
from sleepsound.ingest.manifest import build_manifest, previous_manifest_rows, write_manifest
from sleepsound.runs.root_lock import follow_hold
from tasks.progress import run_progress


@task(name="ingest", retries=2, retry_delay_seconds=[2, 10])
def ingest(source: str, root: str, config: dict[str, Any], hold: RootHold | None = None) -> Ingested:
    """Returns counts only; the manifest itself stays in storage."""
    with follow_hold(root, hold):
        cfg = Config.model_validate(config)
        store = open_root(root)
        previous = previous_manifest_rows(store)
        rows = build_manifest(
            source, cfg.preprocess, cfg.validation, use_ray=True, previous=previous, progress=run_progress(hold)
        )
        kept = {id(row) for row in previous}
        reused = sum(id(row) in kept for row in rows)
        path = write_manifest(store, rows)
        quarantined = [r for r in rows if r["status"] != "accepted"]
        logger = get_run_logger()
        if quarantined:  # counts by reason code: ids (patient ids) and reasons (file paths) stay in the manifest
            codes = Counter(str(row["reason_code"]) for row in quarantined)
            logger.warning(
                "quarantined %d recordings (%s); which ones and why: status and reason in %s",
                len(quarantined),
                ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())),
                path,
            )
        logger.info(
            "manifest: %d discovered, %d accepted, %d quarantined; %d unchanged since the last manifest",
            len(rows),
            len(rows) - len(quarantined),
            len(quarantined),
            reused,
        )
        return {
            "manifest": path,
            "discovered": len(rows),
            "accepted": len(rows) - len(quarantined),
            "quarantined": len(quarantined),
            "unchanged": reused,
        }
