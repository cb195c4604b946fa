"""The models that score a cohort and the labelled subjects they never saw.

Library code, so the score flow's ``champions`` task and the score benchmark's one-process
baseline pick the serving models and their held-out subjects in one way.
"""

from __future__ import annotations

from typing import Any

from sleepsound.registry import store as model_store
from sleepsound.ingest.manifest import read_manifest
from sleepsound.train.fit import labelled_manifest


def serving_with_unseen(root: str, versions: dict[str, str] | None = None) -> dict[str, Any]:
    """The serving models, with ``test_subjects``: labelled subjects outside their training side."""
    model = model_store.serving_models(root, versions)
    seen = set(model["train_subjects"]) | set(model["val_subjects"])
    labelled = set(labelled_manifest(read_manifest(root))["subject_id"].astype(str))
    model["test_subjects"] = sorted(labelled - seen)
    return model
