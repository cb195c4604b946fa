"""Champion/challenger: score the new heads and the champions on the evaluation set, promote or not."""

from __future__ import annotations

from prefect import get_run_logger, task

from sleepsound.core.records import PromotionDecision, RootHold, TrainedModels
from sleepsound.ingest.manifest import read_manifest_rows
from sleepsound.registry.promotion import decide_promotions
from sleepsound.runs.root_lock import follow_hold


@task(name="promote")
def promote(
    root: str,
    model: TrainedModels,
    metric: str = "macro_f1",
    margin: float = 0.01,
    hold: RootHold | None = None,
) -> dict[str, PromotionDecision]:
    """Returns each task's decision with both scores (also logged in models/<task>/promotions.json)."""
    with follow_hold(root, hold):
        decisions = decide_promotions(root, model, read_manifest_rows(root), metric=metric, margin=margin)
        for name, decision in decisions.items():
            get_run_logger().info(
                "%s: %s (%s)", name, "promoted" if decision["promoted"] else "kept the champion", decision["reason"]
            )
        return decisions
