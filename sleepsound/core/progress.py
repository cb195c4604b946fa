"""Progress of a long stage as counts: the library reports, a face shows.

A stage calls ``progress(stage, done, total, unit)`` as its work completes and never cares who
listens: the flows' tasks pass it on to the Prefect API as progress artifacts (which the command
line draws as bars, and the Prefect UI shows), the in-process commands draw bars directly, tests
record the calls. Reports are counts, never names: a recording id is a patient id.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    def __call__(self, stage: str, done: int, total: int, unit: str) -> None: ...


def quiet(stage: str, done: int, total: int, unit: str) -> None:
    """Nobody listens (the default)."""


def throttled(report: Progress, every_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> Progress:
    """Pass on at most one report per stage every ``every_s`` seconds, and always a stage's first
    and last (``done >= total``), so a listener that costs a network round trip is not called per epoch."""
    last: dict[str, float] = {}

    def report_some(stage: str, done: int, total: int, unit: str) -> None:
        now = clock()
        if stage in last and done < total and now - last[stage] < every_s:
            return
        last[stage] = now
        report(stage, done, total, unit)

    return report_some
