"""The end-to-end flow: validate -> embed -> train -> predict -> report, executed on Ray.

Each step is one coarse task passing URIs and counts; the heavy steps use Ray inside
their task. Coordinating tasks hold only a sliver of a CPU so the Ray Data workers
they start are never starved of the cores they need.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect_ray import RayTaskRunner
from prefect_ray.context import remote_options

from sleepsound.core.records import (
    Embedded,
    FlowSummary,
    Ingested,
    Predicted,
    PromotionDecision,
    Reported,
    TrainedModels,
)
from sleepsound.core.storage import open_root
from sleepsound.runs.root_lock import hold_root
from sleepsound.runs.run_record import check_run_id, default_run_id, write_run_record
from sleepsound.runs.submit import job_environment
from tasks.embed import embed
from tasks.ingest import ingest
from tasks.predict import predict
from tasks.report import report
from tasks.train import train, trainable

COORDINATOR_CPUS = 0.1
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray for a submitted job's driver


class StepTimer:
    """Waits for each submitted task in turn and keeps its wall time, for the run's summary."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def step(self, name: str, submitted: Any) -> Any:
        started = time.perf_counter()
        result = submitted.result()
        self.seconds[name] = round(time.perf_counter() - started, 2)
        return result


def promotion_lines(decisions: dict[str, PromotionDecision]) -> dict[str, str]:
    """The report's run-table lines for each head's promotion decision."""
    return {
        f"promotion {name}": f"{'promoted' if d['promoted'] else 'not promoted'}: {d['reason']}"
        for name, d in decisions.items()
    }


def flow_run_ref() -> dict[str, str]:
    """The current Prefect flow run's id and name, so a summary leads back to its run in the Prefect UI."""
    return {"id": str(flow_run.id), "name": flow_run.name}


def flow_summary(
    run_id: str,
    seconds: dict[str, float],
    ingested: Ingested,
    embedded: Embedded,
    model: TrainedModels,
    predicted: Predicted,
    reported: Reported,
    promotions: dict[str, PromotionDecision] | None = None,
) -> FlowSummary:
    """The summary a scoring flow returns and records, built in one place so every flow's keys stay the same."""
    summary: FlowSummary = {
        "run_id": run_id,
        "prefect_flow_run": flow_run_ref(),
        "seconds": seconds,
        "counts": {**ingested, **embedded, "quarantined": predicted["quarantined"], "accepted": predicted["accepted"]},
        "model": model,
    }
    if promotions is not None:
        summary["promotions"] = promotions
    summary.update(
        metrics=reported["metrics"],
        report=reported["report"],
        predictions=predicted["predictions"],
        summaries=reported["summaries"],
    )
    return summary


@flow(name="sleepsound-pipeline", log_prints=True)
def pipeline(source: str, root: str, config: dict[str, Any], run_id: str) -> FlowSummary:
    """Score a source end to end; returns the small summary the CLI prints."""
    logger = get_run_logger()
    timer = StepTimer()
    seconds = timer.seconds
    check_run_id(run_id)  # before anything is written under runs/<id>/
    store = open_root(root)  # opened once for the lock and the run record; tasks get the URI
    with hold_root(store, run_id, "run") as hold, remote_options(num_cpus=COORDINATOR_CPUS):
        ingested = timer.step("ingest", ingest.submit(source, root, config, hold=hold))
        timer.step("check-trainable", trainable.submit(root))  # before minutes of embedding
        embedded = timer.step("embed", embed.submit(root, config, hold=hold))
        model = timer.step("train", train.submit(root, config, run_id, hold=hold))
        predicted = timer.step("predict", predict.submit(root, config, run_id, model, hold=hold))
        reported = timer.step("report", report.submit(root, config, run_id, model, predicted, trained=True, hold=hold))
        logger.info("run %s finished in %s: report at %s", run_id, seconds, reported["report"])
        summary = flow_summary(run_id, seconds, ingested, embedded, model, predicted, reported)
        summary["run_record"] = write_run_record(store, "run", config, summary)
    return summary


def run_pipeline_on_ray(
    source: str, root: str, config: dict[str, Any], ray_address: str | None = None, run_id: str | None = None
) -> FlowSummary:
    """Run the flow with a Ray task runner: a local Ray unless an address is given."""
    run_id = run_id or default_run_id("pipeline")
    return pipeline.with_options(task_runner=ray_runner(config, ray_address))(source, root, config, run_id)


def ray_runner(config: dict[str, Any], ray_address: str | None = None) -> RayTaskRunner:
    """A Ray task runner for a flow: this run's settings (endpoints, region, ``SLEEPSOUND_*``)
    travel to the workers, its secrets do not.

    A runtime environment is stored by the cluster and shown by its dashboard and state API, so
    secrets stay out of it (``sleepsound.runs.submit.job_environment``). A local session started
    here needs none: its raylet and workers inherit this process's environment. A cluster's
    workers (``--ray-address``; ``auto`` for one ``ray start`` left on this machine) use the cluster's
    own credentials: the Secret the KubeRay manifests mount, an instance role, the AWS chain.
    Inside a Ray job (``sleepsound submit``) the job's runtime environment already carries the
    settings, and Ray refuses a second one that differs, so none is added there.
    """
    init_kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if JOB_CONFIG_ENV not in os.environ:
        init_kwargs["runtime_env"] = {"env_vars": job_environment()}
    ray_cfg = config.get("ray", {})
    if not (ray_address or ray_cfg.get("address")):  # sizes of a local session; a cluster keeps its own
        if "RAY_ADDRESS" not in os.environ:
            # Ray's own default for a new local session, said explicitly: token authentication on,
            # without the warning Ray prints at every start when the mode is left unset.
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        if ray_cfg.get("num_cpus"):
            init_kwargs["num_cpus"] = ray_cfg["num_cpus"]
        if ray_cfg.get("object_store_mb"):
            init_kwargs["object_store_memory"] = int(ray_cfg["object_store_mb"]) * 2**20
    address = ray_address or ray_cfg.get("address")
    if not address and "RAY_ADDRESS" not in os.environ and JOB_CONFIG_ENV not in os.environ:
        # A session of this run's own: Ray's bare ``init()`` joins any cluster ``ray start`` left on
        # this machine, whose workers have another folder, code and environment (``auto`` asks for that).
        address = "local"
    return RayTaskRunner(address=address, init_kwargs=init_kwargs)
