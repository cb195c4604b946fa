"""Progress bars for a flow the command line started: its tasks report to the Prefect API
(``tasks/progress.py``), this polls the API and draws one bar per stage with counts and rates.

Plain HTTP (no Prefect import): the same ``POST /artifacts/latest/filter`` the UI uses. Bars are
drawn only on a terminal; piped output and ``--json`` stay clean. ``local_bars`` draws the same bars
for work in this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import TypedDict

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from sleepsound.core.progress import Progress as Report
from sleepsound.core.progress import quiet

_DESCRIPTION = re.compile(r"^(?P<stage>[a-z0-9 _-]+): (?P<done>\d+) of (?P<total>\d+) (?P<unit>[a-z]+)$")
# Artifacts of an earlier attempt under the same run id are older than this command (clocks may
# differ a little between this machine and a remote API).
_CLOCK_SLACK = timedelta(seconds=5)


class StageProgress(TypedDict):
    stage: str
    done: int
    total: int
    unit: str


def progress_key(run_id: str, stage: str) -> str:
    """An artifact key Prefect accepts (lowercase letters, digits, dashes) for a run's stage."""
    return "-".join(("progress", _slug(run_id), _slug(stage)))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def describe(stage: str, done: int, total: int, unit: str) -> str:
    """The artifact's description: counts a person reads in the UI, and this module parses."""
    return f"{stage}: {done} of {total} {unit}"


def parse(description: str | None) -> StageProgress | None:
    match = _DESCRIPTION.match(description or "")
    if match is None:
        return None
    return {
        "stage": match["stage"],
        "done": int(match["done"]),
        "total": int(match["total"]),
        "unit": match["unit"],
    }


def read_progress(api_url: str, run_id: str, since: datetime, timeout_s: float = 2.0) -> list[StageProgress]:
    """Every stage of ``run_id`` reported since ``since``, oldest stage first."""
    body = {
        "artifacts": {"key": {"like_": f"progress-{_slug(run_id)}-%"}, "type": {"any_": ["progress"]}},
        "sort": "CREATED_DESC",
        "limit": 50,
    }
    request = urllib.request.Request(
        f"{api_url.rstrip('/')}/artifacts/latest/filter",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **_auth()},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        rows = json.load(response)
    out = []
    for row in sorted(rows, key=lambda r: str(r.get("created"))):
        updated = _when(row.get("updated"))
        stage = parse(row.get("description"))
        if stage is not None and updated is not None and updated >= since - _CLOCK_SLACK:
            out.append(stage)
    return out


def _auth() -> dict[str, str]:
    key = os.environ.get("PREFECT_API_KEY")  # Prefect Cloud; never printed
    return {"Authorization": f"Bearer {key}"} if key else {}


def _when(text: object) -> datetime | None:
    try:
        when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class _Rate(ProgressColumn):
    """Items per second in the stage's own unit (rich's own speed column speaks bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        unit = task.fields.get("unit", "")
        return Text(f"{speed:,.1f} {unit}/s" if speed else "", style="progress.data.speed")


def bars(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        _Rate(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


def draw(progress: Progress, stages: list[StageProgress], shown: dict[str, int]) -> None:
    """Add or move one bar per stage."""
    for stage in stages:
        if stage["stage"] not in shown:
            shown[stage["stage"]] = progress.add_task(stage["stage"], total=stage["total"] or None, unit=stage["unit"])
        progress.update(shown[stage["stage"]], completed=stage["done"], total=stage["total"] or None)


@contextlib.contextmanager
def progress_bars(console: Console, api_url: str, run_id: str, every_s: float = 0.5) -> Iterator[None]:
    """Draw the run's progress while the body runs (a flow in this process); nothing when the
    console is not a terminal. A poll that fails is tried again; bars are a courtesy."""
    if not console.is_terminal:
        yield
        return
    since = datetime.now(UTC)
    stop = threading.Event()
    shown: dict[str, int] = {}
    with bars(console) as progress:

        def poll() -> None:
            while True:
                with contextlib.suppress(OSError, ValueError):
                    draw(progress, read_progress(api_url, run_id, since), shown)
                if stop.wait(every_s):
                    return

        thread = threading.Thread(target=poll, name="sleepsound-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)
            with contextlib.suppress(OSError, ValueError):
                draw(progress, read_progress(api_url, run_id, since), shown)


@contextlib.contextmanager
def local_bars(console: Console) -> Iterator[Report]:
    """Bars for work in this process (``clips train``): a report function that draws them, or one
    that does nothing when the console is not a terminal."""
    if not console.is_terminal:
        yield quiet
        return
    shown: dict[str, int] = {}
    with bars(console) as progress:

        def report(stage: str, done: int, total: int, unit: str) -> None:
            draw(progress, [{"stage": stage, "done": done, "total": total, "unit": unit}], shown)

        yield report
