"""What the ingest tests ask of a manifest's rows, in one place."""

from __future__ import annotations

from collections import Counter


def by_id(rows: list[dict]) -> dict[str, dict]:
    """The rows by recording id."""
    return {r["recording_id"]: r for r in rows}


def counts_add_up(rows: list[dict], n_inputs: int) -> None:
    """Every input is one row, accepted or quarantined: nothing lost, nothing twice."""
    statuses = Counter(r["status"] for r in rows)
    assert statuses["accepted"] + statuses["quarantined"] == len(rows) == n_inputs
