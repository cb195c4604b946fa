"""The models that score a cohort and the labelled subjects they never saw.

Library code, so the score flow's ``champions`` task and the score benchmark's one-process
baseline pick the serving models and their held-out subjects in one way.
"""

from __future__ import annotations

from sleepsound.core.records import TrainedModels
from sleepsound.core.storage import RootLike, open_root
from sleepsound.ingest.manifest import labelled_manifest, read_manifest
from sleepsound.registry import store as model_store


def parse_versions(items: list[str] | None) -> dict[str, str]:
    """``--model TASK=VERSION`` options as {task: version}; ValueError naming a malformed one."""
    versions: dict[str, str] = {}
    for item in items or []:
        task, sep, version = item.partition("=")
        if not sep or not task or not version:
            raise ValueError(f"--model takes TASK=VERSION, got {item!r}")
        versions[task] = version
    return versions


def serving_with_unseen(root: RootLike, versions: dict[str, str] | None = None) -> TrainedModels:
    """The serving models, with ``test_subjects``: labelled subjects outside their training side."""
    store = open_root(root)
    model = model_store.serving_models(store, versions)
    seen = set(model["train_subjects"]) | set(model["val_subjects"])
    labelled = set(labelled_manifest(read_manifest(store))["subject_id"].astype(str))
    model["test_subjects"] = sorted(labelled - seen)
    return model
