"""Retrain and maybe promote: validate -> embed -> train -> promote -> predict -> report.

The new heads are registered as challengers, scored beside the champions on the root's fixed
evaluation set (sleepsound.registry.evaluation_set), and each replaces its champion only when it is
better on the declared metric by the declared margin. The run's predictions and report are the
new heads'; the decisions and both scores are in the result and the report.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect_ray.context import remote_options

from flows.pipeline import COORDINATOR_CPUS, StepTimer, flow_summary, promotion_lines, ray_runner
from sleepsound.core.records import FlowSummary
from sleepsound.core.storage import open_root
from sleepsound.runs.root_lock import hold_root
from sleepsound.runs.run_record import check_run_id, default_run_id, write_run_record
from tasks.embed import embed
from tasks.ingest import ingest
from tasks.predict import predict
from tasks.promote import promote
from tasks.report import report
from tasks.train import train, trainable


@flow(name="sleepsound-train", log_prints=True)
def train_flow(
    source: str, root: str, config: dict[str, Any], run_id: str, metric: str = "macro_f1", margin: float = 0.01
) -> FlowSummary:
    timer = StepTimer()
    check_run_id(run_id)  # before anything is written under runs/<id>/
    store = open_root(root)  # opened once for the lock and the run record; tasks get the URI
    with hold_root(store, run_id, "train") as hold, remote_options(num_cpus=COORDINATOR_CPUS):
        ingested = timer.step("ingest", ingest.submit(source, root, config, hold=hold))
        timer.step("check-trainable", trainable.submit(root))  # before minutes of embedding
        embedded = timer.step("embed", embed.submit(root, config, hold=hold))
        model = timer.step("train", train.submit(root, config, run_id, hold=hold))
        decisions = timer.step("promote", promote.submit(root, model, metric, margin, hold=hold))
        predicted = timer.step("predict", predict.submit(root, config, run_id, model, hold=hold))
        extra = promotion_lines(decisions)
        reported = timer.step(
            "report", report.submit(root, config, run_id, model, predicted, extra, trained=True, hold=hold)
        )
        get_run_logger().info("trained %s in %s: report at %s", run_id, timer.seconds, reported["report"])
        summary = flow_summary(
            run_id, timer.seconds, ingested, embedded, model, predicted, reported, promotions=decisions
        )
        summary["run_record"] = write_run_record(store, "train", config, summary)
    return summary


def run_train_on_ray(
    source: str,
    root: str,
    config: dict[str, Any],
    ray_address: str | None = None,
    run_id: str | None = None,
    metric: str = "macro_f1",
    margin: float = 0.01,
) -> FlowSummary:
    """Run the train flow with a Ray task runner: a local Ray unless an address is given."""
    run_id = run_id or default_run_id("train")
    return train_flow.with_options(task_runner=ray_runner(config, ray_address))(
        source, root, config, run_id, metric, margin
    )
