"""Which models score a cohort: each target's champion (or named versions), and the nights they never saw."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from sleepsound.core.records import TrainedModels
from sleepsound.registry import store as model_store
from sleepsound.ingest.manifest import read_manifest
from sleepsound.ingest.manifest import labelled_manifest


def serving_with_unseen(root: str, versions: dict[str, str] | None = None) -> dict[str, Any]:
    """The serving models, with ``test_subjects``: labelled subjects outside their training side."""
    model = model_store.serving_models(root, versions)
    seen = set(model["train_subjects"]) | set(model["val_subjects"])
    labelled = set(labelled_manifest(read_manifest(root))["subject_id"].astype(str))
    model["test_subjects"] = sorted(labelled - seen)
    return model


@task(name="champions")
def champions(root: str, versions: dict[str, str] | None = None) -> TrainedModels:
    """The serving models; labelled subjects outside their training side are scored as test nights."""
    model = serving_with_unseen(root, versions)
    get_run_logger().info("scoring with %s", {name: head["version"] for name, head in model["heads"].items()})
    return model
