"""Findings: what validation saw in a recording, each with a code, a file and what to do.

A finding is an ``error`` (the recording is quarantined, and the first error is its
reason) or a ``warning`` (it is processed; the warning says what was dropped or doubtful).
``level`` is ``recording`` for the night as a whole and ``epoch`` for a run of 30-s
epochs, whose times are in ``start_s`` / ``end_s`` from the start of the night.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

Level = Literal["recording", "epoch"]
Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    level: Level
    code: str
    severity: Severity
    path: str
    message: str
    start_s: float | None = None
    end_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Quarantine(Exception):
    """Raised by a check that makes the night unusable; becomes its error finding."""

    def __init__(self, path: str, code: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.code = code
        self.message = message


def clock(seconds: float) -> str:
    """Seconds from the start of the night as h:mm:ss, the way a sleep lab reads times.

    A time no night can have (beyond a year, or not finite: corrupt annotations) is given as
    plain seconds, so a message never prints a 300-digit hour count."""
    if not math.isfinite(seconds) or abs(seconds) >= 366 * 86400:
        return f"{seconds:g} s"
    whole = int(round(abs(seconds)))
    return f"{'-' if seconds < 0 and whole else ''}{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def epoch_runs(flags: Sequence[bool]) -> list[tuple[int, int]]:
    """Runs of consecutive True flags as (first, last + 1) epoch indices."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for index, flag in enumerate([*flags, False]):
        if flag and start is None:
            start = index
        elif not flag and start is not None:
            runs.append((start, index))
            start = None
    return runs


def epoch_findings(
    flags: Sequence[bool],
    code: str,
    path_at: Callable[[float], str],
    what: str,
    epoch_seconds: float,
    severity: Severity = "warning",
) -> list[Finding]:
    """One epoch-level finding per run of flagged epochs, so a bad hour is one line, not 120."""
    out = []
    for first, stop in epoch_runs(flags):
        count = stop - first
        span = f"epoch {first}" if count == 1 else f"epochs {first}-{stop - 1}"
        out.append(
            Finding(
                "epoch",
                code,
                severity,
                path_at(first * epoch_seconds),
                f"{span} ({clock(first * epoch_seconds)} to {clock(stop * epoch_seconds)}): {what}",
                first * epoch_seconds,
                stop * epoch_seconds,
            )
        )
    return out


def to_records(findings: Iterable[Finding]) -> list[dict[str, Any]]:
    return [f.to_dict() for f in findings]
