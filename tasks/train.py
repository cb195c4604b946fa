"""Train the heads (staging, 5-class, respiratory) from cached embeddings and register them under the root."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from sleepsound.core.config import Config
from sleepsound.core.records import RootHold, TrainedModels
from sleepsound.ingest.manifest import labelled_manifest, read_manifest
from sleepsound.registry.evaluation_set import check_trainable
from sleepsound.runs.root_lock import follow_hold
from sleepsound.train.fit import train_models
from tasks.progress import run_progress


@task(name="train")
def train(root: str, config: dict[str, Any], run_id: str, hold: RootHold | None = None) -> TrainedModels:
    """Returns where the model lives and the subject split, not the weights."""
    with follow_hold(root, hold):
        model = train_models(root, Config.model_validate(config), run_id, read_manifest(root), run_progress(hold))
        logger = get_run_logger()
        for name, head in model["heads"].items():
            logger.info(
                "trained %s %s on %d epochs from %d subjects (%d for validation); %d subjects held out",
                name,
                head["version"],
                head["train_epochs"],
                len(model["train_subjects"]),
                len(model["val_subjects"]),
                len(model["test_subjects"]),
            )
        for name, reason in model["skipped"].items():
            logger.info("skipped %s: %s", name, reason)
        return model


@task(name="check-trainable")
def trainable(root: str) -> None:
    """Right after validation: CannotTrain (one line at the command) before minutes of embedding
    when the labelled nights cannot train and evaluate on this root."""
    check_trainable(root, labelled_manifest(read_manifest(root)))
