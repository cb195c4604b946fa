"""Entry points for Prefect deployments: thin parent flows that run the real flow on Ray.

A deployment's flow is started by a Prefect worker (or ``prefect deploy``'s runner) with
parameters only, so the Ray address and the run id cannot be baked into the decorated flow.
These parents take them as parameters, name the run, and call the flow with its Ray task
runner as a subflow; the subflow's run, tasks and logs appear under the parent in the UI.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.nightly import nightly
from flows.pipeline import ray_runner
from flows.score import score
from flows.train import train_flow
from sleepsound.runs.run_record import default_run_id


@flow(name="sleepsound-nightly-deployment")
def nightly_deployment(
    source: str,
    root: str,
    config: dict[str, Any] | None = None,
    ray_address: str | None = None,
    metric: str = "macro_f1",
    margin: float = 0.01,
) -> dict[str, Any]:
    config = config or {}
    return nightly.with_options(task_runner=ray_runner(config, ray_address))(
        source, root, config, default_run_id("nightly"), metric, margin
    )


@flow(name="sleepsound-train-deployment")
def train_deployment(
    source: str,
    root: str,
    config: dict[str, Any] | None = None,
    ray_address: str | None = None,
    metric: str = "macro_f1",
    margin: float = 0.01,
) -> dict[str, Any]:
    config = config or {}
    return train_flow.with_options(task_runner=ray_runner(config, ray_address))(
        source, root, config, default_run_id("train"), metric, margin
    )


@flow(name="sleepsound-score-deployment")
def score_deployment(
    source: str,
    root: str,
    config: dict[str, Any] | None = None,
    ray_address: str | None = None,
    versions: dict[str, str] | None = None,
) -> dict[str, Any]:
    config = config or {}
    return score.with_options(task_runner=ray_runner(config, ray_address))(
        source, root, config, default_run_id("score"), versions
    )
