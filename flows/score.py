"""Score a cohort with the registered models: validate -> embed (cache-aware) -> predict -> report.

Nothing is trained: each target's champion (or a named version) predicts every accepted night,
and labelled nights of subjects the models never trained on are scored as held-out nights.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect_ray.context import remote_options

from flows.pipeline import COORDINATOR_CPUS, StepTimer, flow_summary
from sleepsound.core.records import FlowSummary
from sleepsound.core.storage import open_root
from sleepsound.runs.root_lock import hold_root
from sleepsound.runs.run_record import check_run_id, default_run_id, write_run_record
from tasks.champions import champions
from tasks.embed import embed
from tasks.ingest import ingest
from tasks.predict import predict
from tasks.report import report


@flow(name="sleepsound-score", log_prints=True)
def score(
    source: str, root: str, config: dict[str, Any], run_id: str, versions: dict[str, str] | None = None
) -> FlowSummary:
    """Returns the same summary as the pipeline flow; ``model`` names the versions used."""
    timer = StepTimer()
    check_run_id(run_id)  # before anything is written under runs/<id>/
    store = open_root(root)  # opened once for the lock and the run record; tasks get the URI
    with hold_root(store, run_id, "score") as hold, remote_options(num_cpus=COORDINATOR_CPUS):
        ingested = timer.step("ingest", ingest.submit(source, root, config, hold=hold))
        embedded = timer.step("embed", embed.submit(root, config, shifted=False, hold=hold))
        model = timer.step("champions", champions.submit(root, versions))
        predicted = timer.step("predict", predict.submit(root, config, run_id, model, hold=hold))
        reported = timer.step("report", report.submit(root, config, run_id, model, predicted, hold=hold))
        get_run_logger().info("scored %s in %s: report at %s", run_id, timer.seconds, reported["report"])
        summary = flow_summary(run_id, timer.seconds, ingested, embedded, model, predicted, reported)
        summary["run_record"] = write_run_record(store, "score", config, summary)
    return summary


def run_score_on_ray(
    source: str,
    root: str,
    config: dict[str, Any],
    ray_address: str | None = None,
    run_id: str | None = None,
    versions: dict[str, str] | None = None,
) -> FlowSummary:
    """Run the score flow with a Ray task runner: a local Ray unless an address is given."""

    from flows.pipeline import ray_runner

    run_id = run_id or default_run_id("score")
    return score.with_options(task_runner=ray_runner(config, ray_address))(source, root, config, run_id, versions)
