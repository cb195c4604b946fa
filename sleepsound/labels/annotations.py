"""Stage labels per 30-s epoch from whichever annotation a recording has.

RML (PSG-Audio) holds change points; a plain night's ``.stages.csv`` holds either one
row per epoch (``epoch_index,stage``) or change points (``start_s,stage``), optionally
with a ``recording_id`` column that validation checks against the audio's name.
"""

from __future__ import annotations

import codecs
import io
import math

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
    repeated = sorted({c for c in table.columns if list(table.columns).count(c) > 1})
    if repeated:  # "type" and "Type": which one holds the labels is anyone's guess
        raise AnnotationError(
            path, code, f"{what} names the column(s) {repeated} more than once (case aside): keep one of each"
        )
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
    """Stages per epoch from a parsed stage CSV (rows per epoch, or change points)."""
    if "start_s" in table.columns and "epoch_index" not in table.columns:
        return changes_on_grid(table, n_epochs)[0]
    stages = [UNSCORED] * n_epochs
    for index, stage in zip(table["epoch_index"], table["stage"], strict=True):
        if 0 <= int(index) < n_epochs and isinstance(stage, str):
            stages[int(index)] = stage
    return stages


def changes_on_grid(table: pd.DataFrame, n_epochs: int) -> tuple[list[str], list[int]]:
    """Change points (``start_s``, ``stage``) onto the 30-s grid, and the epochs a change splits.

    Each stage holds until the next change point, the last to the end of the night; time before
    the first one is unscored. As AASM scoring does, an epoch takes the stage that covers most of
    it (a tie goes to the earlier stage): a change at 50 s leaves epoch 1 (30-60 s) in the stage
    before it, not the one after. The second list names the epochs more than one stage covers,
    which validation counts, since scorers' exports are normally on the grid.
    """
    rows = table.sort_values("start_s", kind="stable")
    starts = [float(start) for start in rows["start_s"]]
    names = [stage if isinstance(stage, str) else UNSCORED for stage in rows["stage"]]
    if not starts or starts[0] > 0:
        starts, names = [0.0, *starts], [UNSCORED, *names]
    night_s = n_epochs * EPOCH_SECONDS
    cover: list[dict[str, float]] = [{} for _ in range(n_epochs)]
    for start, end, name in zip(starts, [*starts[1:], night_s], names, strict=True):
        first, last = (math.floor(min(max(t, 0.0), night_s) / EPOCH_SECONDS) for t in (start, end))
        for index in range(first, min(n_epochs, last + 1)):
            overlap = min(end, (index + 1) * EPOCH_SECONDS) - max(start, index * EPOCH_SECONDS)
            if overlap > _SLIVER_S:  # float noise at a boundary (30.0000001) is no change
                cover[index][name] = cover[index].get(name, 0.0) + overlap
    # max() keeps the first of equals, and each dict holds its stages in the order they began.
    stages = [max(seconds, key=seconds.__getitem__) if seconds else UNSCORED for seconds in cover]
    return stages, [index for index, seconds in enumerate(cover) if len(seconds) > 1]


_SLIVER_S = 1e-3  # below the millisecond that rml.format_seconds keeps
