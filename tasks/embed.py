"""Embed every accepted recording not yet in the cache (Ray Data inside the task).

Its logs carry counts, never a recording id (a patient id in PSG-Audio); the manifest names them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from prefect import get_run_logger, task

from sleepsound.core.config import Config
from sleepsound.core.records import Embedded, RootHold
from sleepsound.core.storage import open_root
from sleepsound.embed.cache import channel_configs, embeddings_dir
from sleepsound.embed.cohort import embed_cohort
from sleepsound.ingest.manifest import nights_without_valid_epochs, quarantine, read_manifest_rows, write_manifest
from sleepsound.runs.root_lock import follow_hold
from tasks.progress import run_progress


@task(name="embed", retries=1, retry_delay_seconds=5)
def embed(
    root: str, config: dict[str, Any], use_ray: bool = True, shifted: bool = True, hold: RootHold | None = None
) -> Embedded:
    """A retry is cheap: recordings finished before a failure are cache hits. ``shifted=False``
    for flows that train nothing (score): the shifted training windows are not embedded."""
    with follow_hold(root, hold):
        cfg = Config.model_validate(config)
        store = open_root(root)
        rows = read_manifest_rows(store)
        accepted = [r for r in rows if r["status"] == "accepted"]
        stats = embed_cohort(
            accepted,
            store,
            cfg,
            use_ray=use_ray,
            shifted=shifted,
            progress=run_progress(hold),
            small_job_epochs=cfg.ray.small_job_epochs,
        )
        # Quick validation reads headers only; the embedding measured every epoch: a night with none
        # valid (all silent or NaN/Inf) has nothing to score and is quarantined as `validate` would.
        empty = nights_without_valid_epochs(store, cfg, [r for r in accepted if r["recording_id"] not in stats.failed])
        if stats.failed or empty:  # counts only: ids (patient ids) and reasons (file paths) go to the manifest
            codes = Counter(stats.failure_codes.values())
            for code in sorted(codes):  # read_error, or source_changed: a file replaced or removed since validation
                rows = quarantine(rows, {r: m for r, m in stats.failed.items() if stats.failure_codes[r] == code}, code)
            path = write_manifest(store, quarantine(rows, empty, "no_valid_epochs"))
            if stats.failed:
                get_run_logger().warning(
                    "quarantined %d recordings while streaming (%s); which ones and why: status and reason in %s",
                    len(stats.failed),
                    ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())),
                    path,
                )
            if empty:
                get_run_logger().warning(
                    "quarantined %d recordings without a single valid epoch (no_valid_epochs); which ones and why: "
                    "status and reason in %s",
                    len(empty),
                    path,
                )
        get_run_logger().info(
            "embedded %d recordings (%d epochs, %d shifted windows%s), %d from cache, %d failed; "
            "%d bad cache files quarantined and embedded again",
            len(stats.embedded),
            stats.epochs,
            stats.shifted,
            "; a small job: in this task's process, not through Ray Data"
            if use_ray and (stats.embedded or stats.failed) and not stats.ray_data
            else "",
            len(stats.cached),
            len(stats.failed),
            len(stats.quarantined),
        )
        still = sum(r["status"] == "accepted" for r in rows)  # quarantine() marks the rows in place
        return {
            "embedded": len(stats.embedded),
            "cached": len(stats.cached),
            "failed": len(stats.failed),
            # What the manifest says now, so a run's counts add up whether or not it goes on to predict
            # (a nightly run with nothing new reported ingest's, the nights quarantined here still accepted).
            "accepted": still,
            "quarantined": len(rows) - still,
            "epochs": stats.epochs,
            "shifted": stats.shifted,
            "cache_files_quarantined": len(stats.quarantined),
            "cache": [embeddings_dir(store.path, channel_cfg) for channel_cfg in channel_configs(cfg)],
        }
