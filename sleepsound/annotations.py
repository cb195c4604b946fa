"""Stage labels per 30-s epoch from whichever annotation a recording has.

RML (PSG-Audio) holds change points; a plain night's ``.stages.csv`` holds either one
row per epoch (``epoch_index,stage``) or change points (``start_s,stage``), optionally
with a ``recording_id`` column that validation checks against the audio's name.
"""

from __future__ import annotations

import pandas as pd

from sleepsound.findings import Quarantine
from sleepsound.io import rml
from sleepsound.labels import EPOCH_SECONDS, STAGES_5, UNSCORED


class AnnotationError(Quarantine):
    """Labels that exist but cannot be used; the recording is quarantined with this reason."""


def load_stages(path: str, label_source: str, n_epochs: int) -> list[str]:
    """One 5-class stage (or ``UNS``) per epoch, exactly ``n_epochs`` long."""
    if label_source == "rml":
        stages = rml.stages_per_epoch(read_rml(path), n_epochs)
    else:
        stages = stages_from_table(read_stage_table(path), n_epochs)
    return (list(stages) + [UNSCORED] * n_epochs)[:n_epochs]


def read_rml(path: str) -> rml.RmlAnnotations:
    try:
        return rml.parse_rml(path)
    except rml.RmlError as exc:
        raise AnnotationError(path, "bad_annotations", exc.message) from exc


def read_stage_table(path: str) -> pd.DataFrame:
    """A plain layout's stage CSV, its columns and stage names checked."""
    try:
        table = pd.read_csv(path, dtype={"stage": str, "recording_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise AnnotationError(path, "bad_annotations", f"stage CSV is not readable ({exc})") from exc
    if "stage" not in table.columns or not ({"epoch_index", "start_s"} & set(table.columns)):
        raise AnnotationError(path, "bad_annotations",
                              f"stage CSV needs 'stage' and 'epoch_index' or 'start_s'; has {list(table.columns)}")
    unknown = sorted(set(table["stage"].dropna()) - set(STAGES_5) - {UNSCORED})
    if unknown:
        raise AnnotationError(path, "bad_annotations", f"unknown stage names {unknown}; use {list(STAGES_5)}")
    key = "epoch_index" if "epoch_index" in table.columns else "start_s"
    if not pd.api.types.is_numeric_dtype(table[key]) or table[key].isna().any():
        raise AnnotationError(path, "bad_annotations", f"column {key!r} must hold numbers in every row")
    return table


def stages_from_table(table: pd.DataFrame, n_epochs: int) -> list[str]:
    stages = [UNSCORED] * n_epochs
    if "epoch_index" in table.columns:
        for index, stage in zip(table["epoch_index"], table["stage"], strict=True):
            if 0 <= int(index) < n_epochs and isinstance(stage, str):
                stages[int(index)] = stage
        return stages
    changes = table.sort_values("start_s")
    for (start, stage), end in zip(changes[["start_s", "stage"]].itertuples(index=False),
                                   list(changes["start_s"].iloc[1:]) + [n_epochs * EPOCH_SECONDS], strict=True):
        for index in range(max(0, int(start // EPOCH_SECONDS)), min(n_epochs, int(end // EPOCH_SECONDS))):
            stages[index] = stage if isinstance(stage, str) else UNSCORED
    return stages
