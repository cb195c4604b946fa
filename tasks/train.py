"""Train the staging head from cached embeddings and register it under the storage root."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from sleepsound.config import Config
from sleepsound.manifest import read_manifest
from sleepsound.modelling import train_stage_model


@task(name="train")
def train(root: str, config: dict[str, Any], run_id: str) -> dict[str, Any]:
    """Returns where the model lives and the subject split, not the weights."""
    model = train_stage_model(root, Config.model_validate(config), run_id, read_manifest(root))
    get_run_logger().info("trained %s on %d epochs from %d subjects; %d subjects held out",
                          model["version"], model["train_epochs"], len(model["train_subjects"]),
                          len(model["test_subjects"]))
    return model
