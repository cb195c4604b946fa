"""Metrics on held-out nights, night summaries and the HTML report for a run."""

from __future__ import annotations

from typing import Any

from prefect import task

from sleepsound.core.config import Config
from sleepsound.core.records import Predicted, Reported, RootHold, TrainedModels
from sleepsound.report.outputs import write_run_outputs
from sleepsound.runs.root_lock import follow_hold


@task(name="report")
def report(
    root: str,
    config: dict[str, Any],
    run_id: str,
    model: TrainedModels,
    predicted: Predicted,
    extra: dict[str, Any] | None = None,
    trained: bool = False,
    hold: RootHold | None = None,
) -> Reported:
    """``extra``: more lines for the report's run table (e.g. promotion decisions). ``trained``: this
    run trained ``model`` (train, run), so the heads' own metrics.json are written; a scoring run
    (score, nightly) writes only under runs/<run_id>/."""
    with follow_hold(root, hold):
        cfg = Config.model_validate(config)
        meta = {
            "run_id": run_id,
            "backbone": cfg.backbone.name,
            "config_hash": cfg.fingerprint(),
            "recordings_accepted": predicted["accepted"],
            "recordings_quarantined": predicted["quarantined"],
            **(extra or {}),
        }
        return write_run_outputs(root, run_id, model, meta, cfg, trained=trained, use_ray=True)
