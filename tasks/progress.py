"""A task's progress as Prefect progress artifacts: the command line draws them as bars, the Prefect
UI shows them, and a run on a cluster reports through the same API.

One artifact per run and stage, keyed ``progress-<run>-<stage>`` (what ``runs.progress_view``
polls), updated at most once a second. Its description holds counts only (``312 of 960 epochs``),
never a name: a recording id is a patient id. Progress is a courtesy: if the API refuses an
update, the run goes on and the bar stops.
"""

from __future__ import annotations

import logging
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

from sleepsound.core.progress import Progress, quiet, throttled
from sleepsound.core.records import RootHold
from sleepsound.runs.progress_view import describe, progress_key

log = logging.getLogger(__name__)


def run_progress(hold: RootHold | None) -> Progress:
    """Progress reports for the run holding the root (nothing when a task is called without one)."""
    if hold is None:
        return quiet
    run_id = hold["run_id"]
    ids: dict[str, UUID] = {}
    broken: list[str] = []

    def report(stage: str, done: int, total: int, unit: str) -> None:
        if broken:
            return
        percent = 100.0 * done / total if total else 100.0
        text = describe(stage, done, total, unit)
        try:
            if stage not in ids:
                ids[stage] = create_progress_artifact(percent, key=progress_key(run_id, stage), description=text)
            else:
                update_progress_artifact(ids[stage], percent, description=text)
        except Exception as exc:  # the API is gone or refuses: the run matters, the bar does not
            broken.append(type(exc).__name__)
            log.warning("progress reports stopped (%s); the run goes on", type(exc).__name__)

    return throttled(report)
