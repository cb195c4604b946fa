"""Which models score a cohort: each target's champion (or named versions), and the nights they never saw."""

from __future__ import annotations

from prefect import get_run_logger, task

from sleepsound.core.records import TrainedModels
from sleepsound.registry.serving import serving_with_unseen


@task(name="champions")
def champions(root: str, versions: dict[str, str] | None = None) -> TrainedModels:
    """The serving models; labelled subjects outside their training side are scored as test nights."""
    model = serving_with_unseen(root, versions)
    get_run_logger().info("scoring with %s", {name: head["version"] for name, head in model["heads"].items()})
    return model
