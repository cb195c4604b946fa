"""Which source category each clip belongs to, and how often each category was called each label.

Why: a pooled accuracy over hundreds of clips hides the one sound type a model has not learnt
(on the shared Khan half, ten folds averaging 0.97 still called most clips of one unseen TV
recording snoring). A bedside monitor is judged by its worst sound, so the clip evaluations
report every source category and lead with the worst.

Where categories come from, in order:

1. a mapping file: ``--categories FILE``, or ``categories.csv`` in the data folder, with the
   columns ``label,first,last,category`` (one row per inclusive range of the file numbers, the
   last integer of the file stem, as the block split reads it), e.g.::

       label,first,last,category
       no_snoring,0,49,baby crying
       no_snoring,50,99,clock ticking

2. otherwise (and for any clip no row covers), the clip's block of consecutive clips
   (``label/run N (first-last)``): one source recording per block when clips are cut from runs.

Nothing here knows a dataset; a data-description file belongs beside the data or to the user.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from sleepsound.clips.split import blocks_of, file_index, group_by_label
from sleepsound.core.storage import read_text_capped

CATEGORIES_FILE = "categories.csv"
_COLUMNS = ("label", "first", "last", "category")
# A row per range of clips: thousands of rows are a few hundred KB. Read no more (a path to /dev/zero or a
# recording given by mistake would otherwise be read whole into memory).
MAX_CATEGORIES_BYTES = 16 << 20


@dataclass(frozen=True)
class CategoryRange:
    """Clips of ``label`` numbered ``first``..``last`` (inclusive) are of ``category``."""

    label: str
    first: int
    last: int
    category: str


def read_categories(path: str | Path) -> list[CategoryRange]:
    """The ranges of a ``label,first,last,category`` CSV; an error names the file, the row and the problem."""
    path = Path(path)
    try:
        text = read_text_capped(LocalFileSystem(), str(path), MAX_CATEGORIES_BYTES, "a categories file", str(path))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the categories file ({exc.strerror or exc})") from exc
    kept = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip() and not line.startswith("#")]
    reader = csv.DictReader(line for _, line in kept)
    try:
        rows = list(reader)
    except csv.Error as exc:  # e.g. a field over csv's size limit: not a categories file
        raise ValueError(f"{path}: not a categories CSV ({exc})") from None
    if not rows:
        raise ValueError(f"{path}: no category rows (expected the columns {', '.join(_COLUMNS)})")
    header = [h.strip().lower() for h in reader.fieldnames or ()]
    missing = [c for c in _COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(_COLUMNS)})")
    twice = [c for c in _COLUMNS if header.count(c) > 1]
    if twice:  # csv keeps the last of a repeated column: the ranges would silently come from the wrong one
        raise ValueError(f"{path}: column(s) {', '.join(twice)} named more than once")
    out: list[CategoryRange] = []
    for (number, _), row in zip(kept[1:], rows, strict=False):  # line numbers in the file, comments counted
        cells = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        try:
            first, last = int(cells["first"]), int(cells["last"])
        except ValueError:
            raise ValueError(f"{path} line {number}: first and last must be whole numbers") from None
        if last < first or not cells["label"] or not cells["category"]:
            raise ValueError(f"{path} line {number}: needs a label, a category and first <= last")
        rng = CategoryRange(cells["label"], first, last, cells["category"])
        for other in out:
            if other.label == rng.label and other.first <= rng.last and rng.first <= other.last:
                raise ValueError(
                    f"{path} line {number}: {rng.label} {rng.first}-{rng.last} overlaps "
                    f"{other.first}-{other.last} ({other.category})"
                )
        out.append(rng)
    return out


def write_categories(path: str | Path, ranges: Sequence[CategoryRange]) -> None:
    """Write a categories file that :func:`read_categories` reads back."""
    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(_COLUMNS)
        for r in ranges:
            writer.writerow([r.label, r.first, r.last, r.category])


def find_categories(data: str | Path, explicit: str | Path | None = None) -> tuple[list[CategoryRange], str]:
    """The ranges to use and where they came from (the file, or ``blocks`` when there is none)."""
    if explicit is not None:
        return read_categories(explicit), str(explicit)
    beside = Path(data) / CATEGORIES_FILE
    if beside.is_file():
        return read_categories(beside), str(beside)
    return [], "blocks"


def categorise(
    files: Sequence[str], labels: Sequence[str], ranges: Sequence[CategoryRange], block_size: int
) -> list[str]:
    """Each clip's category: the range covering its number, else its block (``label/run N (first-last)``)."""
    by_block: dict[str, str] = {}
    for label, members in group_by_label(files, labels).items():
        blocks, _ = blocks_of(members, block_size)
        for number, block in enumerate(blocks):
            first, last = file_index(block[0]), file_index(block[-1])
            span = f" ({first}-{last})" if first is not None and last is not None else ""
            by_block.update(dict.fromkeys(block, f"{label}/run {number}{span}"))
    out = []
    for f, label in zip(files, labels, strict=True):
        index = file_index(f)
        hit = next(
            (r.category for r in ranges if r.label == label and index is not None and r.first <= index <= r.last),
            None,
        )
        out.append(hit if hit is not None else by_block[f])
    return out


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else float("nan")


def per_category(
    truth: Sequence[str],
    predicted: Sequence[str],
    categories: Sequence[str],
    classes: Sequence[str],
    positive: str | None = None,
) -> dict[str, Any]:
    """Per category: its label, n, accuracy (share called its own label) and counts per predicted
    class; per label, the worst category; with a ``positive`` class, each category's share called
    positive, the worst false-alarm rate over the other labels' categories and the worst recall over
    the positive label's.
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for t, p, c in zip(truth, predicted, categories, strict=True):
        row = rows.setdefault((t, c), {"category": c, "label": t, "n": 0, "called": dict.fromkeys(classes, 0)})
        row["n"] += 1
        row["called"][p] = row["called"].get(p, 0) + 1
    table = []
    for row in rows.values():
        row["accuracy"] = _rate(row["called"].get(row["label"], 0), row["n"])
        if positive is not None:
            row["called_positive"] = _rate(row["called"].get(positive, 0), row["n"])
        table.append(row)
    table.sort(key=lambda r: (r["label"], r["accuracy"], r["category"]))
    worst = {}
    for row in table:  # sorted by accuracy within a label: the first is the worst
        worst.setdefault(row["label"], {k: row[k] for k in ("category", "n", "accuracy")})
    out: dict[str, Any] = {"categories": table, "worst_category": worst}
    if positive is not None and positive in classes:
        negatives = [r for r in table if r["label"] != positive]
        positives = [r for r in table if r["label"] == positive]
        alarm = min(negatives, key=lambda r: (-r["called_positive"], r["category"]), default=None)
        missed = min(positives, key=lambda r: (r["accuracy"], r["category"]), default=None)
        out["positive"] = positive
        out["worst_false_alarm"] = alarm and {
            "category": alarm["category"],
            "n": alarm["n"],
            "rate": alarm["called_positive"],
        }
        out["worst_recall"] = missed and {
            "category": missed["category"],
            "n": missed["n"],
            "recall": missed["accuracy"],
        }
    return out
