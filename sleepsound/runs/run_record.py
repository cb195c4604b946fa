"""``runs/<run-id>/run.json``: what a flow run did, readable without sleepsound.

Written last by every flow, so its presence says the run finished: which flow, which Prefect
flow run, the configuration's hash, the code version, the model versions that predicted, the
per-stage wall times and the counts (discovered = accepted + quarantined, embedded, cached).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sleepsound import __version__
from sleepsound.core.config import Config
from sleepsound.core.records import FlowSummary, TrainedModels
from sleepsound.core.schemas import LAYOUT_VERSION, PREDICTIONS_VERSION
from sleepsound.core.storage import RootLike, full_uri, join, open_root, write_json

SCHEMA = "sleepsound.run/1"
_RUN_ID_PREFIX = {"pipeline": "", "score": "score-", "train": "train-", "nightly": "nightly-"}


# A run id names the folder ``runs/<id>/`` under the root: one plain path segment, as model versions are.
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_run_id(run_id: str) -> str:
    """``run_id`` if it is a plain name, else ValueError saying what one is: ``../x`` or ``/abs`` wrote a
    whole run outside the root (and removed other nights' files where it landed), ``r[1]`` is a pattern."""
    if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
        raise ValueError(
            f"run id {run_id!r} is not a plain name: letters, digits, '.', '_', '+' and '-', starting with a "
            "letter or digit, at most 128 (it names the run's folder runs/<id>/ under the root)"
        )
    return run_id


def default_run_id(flow: str) -> str:
    """A run's id when the user names none: the flow and the UTC second it started."""
    return datetime.now(UTC).strftime(_RUN_ID_PREFIX[flow] + "%Y%m%dT%H%M%SZ")


def model_versions(model: TrainedModels | None) -> dict[str, str]:
    """Each task's version in a flow's model summary (trained or serving); empty when none."""
    heads = (model or {}).get("heads") or {}
    return {name: str(head["version"]) for name, head in heads.items() if head.get("version")}


def write_run_record(root: RootLike, flow: str, config: dict[str, Any], summary: FlowSummary) -> str:
    """Write the record of a finished flow run from its summary; returns its URI."""
    fs, root_path = open_root(root)
    record = {
        "schema": SCHEMA,
        "layout_version": LAYOUT_VERSION,
        "predictions_schema_version": PREDICTIONS_VERSION,
        "run_id": summary["run_id"],
        "flow": flow,
        "prefect_flow_run": summary.get("prefect_flow_run"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "config_hash": Config.model_validate(config).fingerprint(),
        "code_version": __version__,
        "models": model_versions(summary.get("model")),
        "seconds": summary.get("seconds", {}),
        "counts": summary.get("counts", {}),
        "outputs": {k: summary.get(k) for k in ("predictions", "summaries", "report")},
    }
    path = join(root_path, "runs", summary["run_id"], "run.json")
    write_json(fs, path, record)
    return full_uri(fs, path)
