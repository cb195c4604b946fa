"""Champion/challenger: score the new heads and the champions on the evaluation set, promote or not."""

from __future__ import annotations

import logging

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
    """Returns each task's decision with both scores (also logged in models/<task>/promotions.json).

    Evaluation nights whose files changed since validation, or that can no longer be read, are left
    out of both scores, with a warning giving their count and reason codes; with too few left the
    challengers are not compared and the reason says so (``registry.promotion``). The log names no
    night (a patient id)."""
    with follow_hold(root, hold):
        decisions = decide_promotions(root, model, read_manifest_rows(root), metric=metric, margin=margin)
        left_out = next((d["left_out"] for d in decisions.values() if "left_out" in d), None)
        if left_out is not None:
            get_run_logger().warning(
                "%d of %d evaluation nights left out of the champion/challenger comparison: their files changed "
                "since validation or could not be read again (%s); both models are scored on the rest",
                left_out["nights"],
                left_out["of"],
                left_out["reason"],
            )
        for name, decision in decisions.items():
            compared = decision["challenger"]["score"] is not None  # None: refused, too few nights to compare on
            get_run_logger().log(
                logging.INFO if compared else logging.WARNING,
                "%s: %s (%s)",
                name,
                "promoted" if decision["promoted"] else "kept the champion",
                decision["reason"],
            )
        return decisions
