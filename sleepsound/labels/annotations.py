"""Stage labels per 30-s epoch from whichever annotation a recording has.

RML (PSG-Audio) holds change points; a plain night's ``.stages.csv`` holds either one
row per epoch (``epoch_index,stage``) or change points (``start_s,stage``), optionally
with a ``recording_id`` column that validation checks against the audio's name.
"""

from __future__ import annotations

import codecs
import io

import numpy as np
import pandas as pd

from sleepsound.core.findings import Quarantine
from sleepsound.io import rml
from sleepsound.labels.vocabulary import EPOCH_SECONDS, STAGES_5, UNSCORED, stage5_of


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


def read_annotation_csv(path: str, what: str, code: str) -> pd.DataFrame:
    """A plain night's annotation CSV as spreadsheets and scoring programs write it, every cell a
    stripped string (blank: missing) and column names in lower case.

    Accepted: UTF-8 with or without a BOM, UTF-16 with a BOM (Excel's "Unicode text"), anything
    else read as Latin-1 (the names that matter are ASCII); comma, semicolon or tab separated
    (the one the header uses most, or Excel's ``sep=;`` first line), and with semicolons or tabs,
    decimal commas (``812,5``); lines starting with ``#`` are comments.
    Raises ``AnnotationError(path, code, ...)`` naming ``what`` when it is no such table.
    """
    with open(path, "rb") as handle:
        raw = handle.read()
    if not raw.strip():
        raise AnnotationError(
            path, code, f"{what} is empty ({len(raw)} bytes): re-upload it, or remove it to score the night without it"
        )
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = raw.decode("utf-16", errors="replace")
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
    if "\x00" in text:
        raise AnnotationError(path, code, f"{what} is not text (it holds NUL bytes): export it as CSV")
    lines = [line for line in text.lstrip().splitlines() if not line.lstrip().startswith("#")]  # comments
    declared = lines[0].strip().lower() if lines else ""
    if declared.startswith("sep=") and len(declared) == 5:  # Excel's "sep=;" first line
        sep, lines = lines[0].strip()[4], lines[1:]
    else:
        sep = max((",", ";", "\t"), key=(lines[0] if lines else "").count)
    text = "\n".join(lines)
    try:
        table = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise AnnotationError(path, code, f"{what} is not readable ({str(exc).strip()})") from exc
    table.columns = [str(c).strip().lower() for c in table.columns]
    table = table.apply(lambda column: column.str.strip()).replace("", None)
    if sep != ",":
        table = table.replace(r"^([+-]?\d+),(\d+)$", r"\1.\2", regex=True)
    return table


def read_stage_table(path: str) -> pd.DataFrame:
    """A plain layout's stage CSV, its columns checked and stage names mapped to the 5 classes
    (``labels.stage5_of``; blank cells stay missing, so unscored)."""
    table = read_annotation_csv(path, "stage CSV", "bad_annotations")
    if "stage" not in table.columns or not ({"epoch_index", "start_s"} & set(table.columns)):
        raise AnnotationError(
            path,
            "bad_annotations",
            f"stage CSV needs 'stage' and 'epoch_index' or 'start_s'; has {list(table.columns)}",
        )
    names = table["stage"].dropna()
    unknown = sorted({name for name in names if stage5_of(name) is None})
    if unknown:
        raise AnnotationError(
            path,
            "bad_annotations",
            f"unknown stage names {unknown[:10]}; use "
            f"{' '.join(STAGES_5)} (or Wake, REM, S1-S4, Stage 2, ...), or {UNSCORED}, ? or "
            "Movement for epochs without a stage",
        )
    table["stage"] = table["stage"].map(stage5_of, na_action="ignore")
    key = "epoch_index" if "epoch_index" in table.columns else "start_s"
    numbers = pd.to_numeric(table[key], errors="coerce")
    if numbers.isna().any():
        row = int(numbers.isna().to_numpy().argmax())
        raise AnnotationError(
            path,
            "bad_annotations",
            f"column {key!r} must hold numbers in every row (row {row + 2}: {table[key].iloc[row]!r})",
        )
    # inf equals its own rounding: without the finiteness test an ``inf`` (or ``1e400``) epoch_index
    # passed here and crashed validation later (int(inf)) as validator_failed, naming the audio.
    whole = np.isfinite(numbers) & (numbers == numbers.round())
    if key == "epoch_index" and not whole.all():
        row = int((~whole).to_numpy().argmax())
        raise AnnotationError(
            path,
            "bad_annotations",
            f"epoch_index must be whole numbers (row {row + 2}: {table[key].iloc[row]}); is this column epochs?",
        )
    table[key] = numbers
    return table


def stages_from_table(table: pd.DataFrame, n_epochs: int) -> list[str]:
    stages = [UNSCORED] * n_epochs
    if "epoch_index" in table.columns:
        for index, stage in zip(table["epoch_index"], table["stage"], strict=True):
            if 0 <= int(index) < n_epochs and isinstance(stage, str):
                stages[int(index)] = stage
        return stages
    changes = table.sort_values("start_s")
    for (start, stage), end in zip(
        changes[["start_s", "stage"]].itertuples(index=False),
        list(changes["start_s"].iloc[1:]) + [n_epochs * EPOCH_SECONDS],
        strict=True,
    ):
        for index in range(max(0, int(start // EPOCH_SECONDS)), min(n_epochs, int(end // EPOCH_SECONDS))):
            stages[index] = stage if isinstance(stage, str) else UNSCORED
    return stages
