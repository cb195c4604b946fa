"""The scheduled job: pick up what is new, retrain and maybe promote, score the new nights.

validate the source -> embed (only new nights miss the cache) -> find the nights no successful
nightly run has handled -> if some are labelled: train challengers, promote on the fixed
evaluation set -> score the new nights with the (possibly new) champions -> report -> mark
them done. A failed run marks nothing, so the next one redoes the same nights from the caches.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect_ray.context import remote_options

from flows.pipeline import COORDINATOR_CPUS, StepTimer, flow_run_ref, flow_summary, promotion_lines, ray_runner
from sleepsound.core.records import FlowSummary
from sleepsound.core.storage import open_root
from sleepsound.runs.root_lock import hold_root
from sleepsound.runs.run_record import check_run_id, default_run_id, write_run_record
from tasks.champions import champions
from tasks.embed import embed
from tasks.ingest import ingest
from tasks.nightly import find_new, mark_done
from tasks.predict import predict
from tasks.promote import promote
from tasks.report import report
from tasks.train import train


@flow(name="sleepsound-nightly", log_prints=True)
def nightly(
    source: str, root: str, config: dict[str, Any], run_id: str, metric: str = "macro_f1", margin: float = 0.01
) -> FlowSummary:
    timer = StepTimer()
    logger = get_run_logger()
    out: FlowSummary = {
        "run_id": run_id,
        "prefect_flow_run": flow_run_ref(),
        "seconds": timer.seconds,
        "trained": False,
        "promotions": {},
        "report": None,
        "predictions": None,
        "summaries": None,
        "metrics": None,
    }
    check_run_id(run_id)  # before anything is written under runs/<id>/
    store = open_root(root)  # opened once for the lock and the run record; tasks get the URI
    with hold_root(store, run_id, "nightly") as hold, remote_options(num_cpus=COORDINATOR_CPUS):
        ingested = timer.step("ingest", ingest.submit(source, root, config, hold=hold))
        embedded = timer.step("embed", embed.submit(root, config, hold=hold))
        new = timer.step("find-new", find_new.submit(root))
        out["new"] = new
        out["counts"] = {**ingested, **embedded}
        if new["labelled"]:
            model = timer.step("train", train.submit(root, config, run_id, hold=hold))
            out["promotions"] = timer.step("promote", promote.submit(root, model, metric, margin, hold=hold))
            out["trained"] = True
        to_score = [*new["labelled"], *new["unlabelled"]]
        if not to_score:
            logger.info("nothing new under %s: nothing trained or scored", source)
            out["run_record"] = write_run_record(store, "nightly", config, out)
            return out
        serving = timer.step("champions", champions.submit(root))
        predicted = timer.step("predict", predict.submit(root, config, run_id, serving, to_score, hold=hold))
        extra = promotion_lines(out["promotions"])
        reported = timer.step("report", report.submit(root, config, run_id, serving, predicted, extra, hold=hold))
        timer.step("mark-done", mark_done.submit(root, run_id, to_score, hold=hold))
        out.update(
            flow_summary(
                run_id, timer.seconds, ingested, embedded, serving, predicted, reported, promotions=out["promotions"]
            )
        )
        out["run_record"] = write_run_record(store, "nightly", config, out)
    logger.info("nightly %s: %d new nights scored in %s", run_id, len(to_score), timer.seconds)
    return out


def run_nightly_on_ray(
    source: str,
    root: str,
    config: dict[str, Any],
    ray_address: str | None = None,
    run_id: str | None = None,
    metric: str = "macro_f1",
    margin: float = 0.01,
) -> FlowSummary:
    """Run the nightly flow with a Ray task runner: a local Ray unless an address is given."""
    run_id = run_id or default_run_id("nightly")
    return nightly.with_options(task_runner=ray_runner(config, ray_address))(
        source, root, config, run_id, metric, margin
    )
