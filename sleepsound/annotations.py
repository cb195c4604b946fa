"""Stage labels per 30-s epoch from whichever annotation a recording has.

RML (PSG-Audio) holds change points; a plain night's ``.stages.csv`` holds either one
row per epoch (``epoch_index,stage``) or change points (``start_s,stage``).
"""

from __future__ import annotations

import pandas as pd

from sleepsound.io import rml
from sleepsound.labels import EPOCH_SECONDS, STAGES_5, UNSCORED


class AnnotationError(Exception):
    """Labels that exist but cannot be used; the recording is quarantined with this reason."""

    def __init__(self, path: str, code: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.code = code
        self.message = message


def load_stages(path: str, label_source: str, n_epochs: int) -> list[str]:
    """One 5-class stage (or ``UNS``) per epoch, exactly ``n_epochs`` long."""
    if label_source == "rml":
        try:
            stages = rml.stages_per_epoch(rml.parse_rml(path), n_epochs)
        except rml.RmlError as exc:
            raise AnnotationError(path, "bad_annotations", str(exc)) from exc
    else:
        stages = _csv_stages(path, n_epochs)
    return (list(stages) + [UNSCORED] * n_epochs)[:n_epochs]


def _csv_stages(path: str, n_epochs: int) -> list[str]:
    try:
        table = pd.read_csv(path, dtype={"stage": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, "bad_annotations", f"stage CSV is not readable ({exc})") from exc
    if "stage" not in table.columns or not ({"epoch_index", "start_s"} & set(table.columns)):
        raise AnnotationError(path, "bad_annotations",
                              f"stage CSV needs 'stage' and 'epoch_index' or 'start_s'; has {list(table.columns)}")
    unknown = sorted(set(table["stage"].dropna()) - set(STAGES_5) - {UNSCORED})
    if unknown:
        raise AnnotationError(path, "bad_annotations", f"unknown stage names {unknown}; use {list(STAGES_5)}")
    stages = [UNSCORED] * n_epochs
    if "epoch_index" in table.columns:
        for index, stage in zip(table["epoch_index"], table["stage"], strict=True):
            if 0 <= int(index) < n_epochs:
                stages[int(index)] = stage
        return stages
    changes = table.sort_values("start_s")
    for (start, stage), end in zip(changes[["start_s", "stage"]].itertuples(index=False),
                                   list(changes["start_s"].iloc[1:]) + [n_epochs * EPOCH_SECONDS], strict=True):
        for index in range(int(start // EPOCH_SECONDS), min(n_epochs, int(end // EPOCH_SECONDS))):
            stages[index] = stage
    return stages
