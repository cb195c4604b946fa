"""Register sleepsound's deployments with a Prefect API: nightly on a cron schedule, train and
score on demand, all in one work pool (created as a ``process`` pool when missing).

A worker started on the machines that hold the package runs them:
``prefect worker start --pool <pool>``. ``prefect.yaml`` at the repository root declares the
same deployments for ``prefect deploy --all``.
"""

from __future__ import annotations

from typing import Any

from flows.scheduled import nightly_deployment, score_deployment, train_deployment

DEFAULT_POOL = "sleepsound"
DEFAULT_CRON = "0 2 * * *"  # 02:00 every night, after the night's recordings have been uploaded


def ensure_work_pool(name: str, pool_type: str = "process") -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type=pool_type))


def register_deployments(
    source: str,
    root: str,
    config: dict[str, Any] | None = None,
    *,
    cron: str = DEFAULT_CRON,
    timezone: str = "UTC",
    work_pool: str = DEFAULT_POOL,
    ray_address: str | None = None,
    pool_type: str = "process",
) -> dict[str, str]:
    """Create or update the three deployments; returns {deployment name: id}."""
    from prefect.schedules import Cron

    ensure_work_pool(work_pool, pool_type)
    common = {"source": source, "root": root, "config": config or {}, "ray_address": ray_address}
    specs = [
        (nightly_deployment, "nightly", {"schedules": [Cron(cron, timezone=timezone)]}),
        (train_deployment, "train", {}),
        (score_deployment, "score", {}),
    ]
    out = {}
    for flow_fn, name, schedule in specs:
        deployment = flow_fn.to_deployment(
            name=name, parameters=dict(common), work_pool_name=work_pool, tags=["sleepsound"], **schedule
        )
        out[f"{flow_fn.name}/{name}"] = str(deployment.apply())
    return out
