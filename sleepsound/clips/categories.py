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
from bisect import bisect_right
from collections.abc import Callable, Sequence
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


def read_csv_rows(
    path: str | Path,
    what: str,
    required: Sequence[str],
    *,
    comments: bool = False,
    max_bytes: int | None = None,
) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) of each data row of a CSV the user hands over (``what``: its kind, as errors name
    it, e.g. ``categories``); the row's keys are the header's names stripped and lower-cased, its values as
    written ("" for a missing cell). Blank lines are skipped, and lines starting with ``#`` when
    ``comments``. With rows, each ``required`` column must be there once; no rows is ``[]``, for the caller
    to judge. At most ``max_bytes`` (default ``MAX_CATEGORIES_BYTES``) are read.

    Why: a file in a data folder someone hands over may be a recording given by mistake, ``/dev/zero``,
    not UTF-8 or hold a field past csv's limit; each is a ValueError naming the file (the CLI's exit 2),
    never all the memory, a decoder's message naming no file, or "This was not expected".
    """
    path = Path(path)
    limit = MAX_CATEGORIES_BYTES if max_bytes is None else max_bytes
    try:
        text = read_text_capped(LocalFileSystem(), str(path), limit, f"a {what} file", str(path))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from exc
    kept = [
        (n, line)
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not (comments and line.startswith("#"))
    ]
    reader = csv.DictReader(line for _, line in kept)
    try:
        rows = list(reader)
    except csv.Error as exc:  # e.g. a field over csv's size limit: not the file asked for
        raise ValueError(f"{path}: not a {what} CSV ({exc})") from None
    if not rows:
        return []
    header = [h.strip().lower() for h in reader.fieldnames or ()]
    missing = [c for c in required if c not in header]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(required)})")
    twice = [c for c in required if header.count(c) > 1]
    if twice:  # csv keeps the last of a repeated column: the values would silently come from the wrong one
        raise ValueError(f"{path}: column(s) {', '.join(twice)} named more than once")
    return [  # line numbers in the file, comments and blank lines counted
        (number, {k.strip().lower(): v or "" for k, v in row.items() if isinstance(k, str)})
        for (number, _), row in zip(kept[1:], rows, strict=False)
    ]


def read_categories(path: str | Path) -> list[CategoryRange]:
    """The ranges of a ``label,first,last,category`` CSV; an error names the file, the row and the problem."""
    rows = read_csv_rows(path, "categories", _COLUMNS, comments=True)
    if not rows:
        raise ValueError(f"{path}: no category rows (expected the columns {', '.join(_COLUMNS)})")
    out: list[CategoryRange] = []
    lines: list[int] = []
    for number, row in rows:
        cells = {k: v.strip() for k, v in row.items()}
        try:
            first, last = int(cells["first"]), int(cells["last"])
        except ValueError:
            _check_overlaps(path, out, lines)  # an overlap above this line is the file's first problem
            raise ValueError(f"{path} line {number}: first and last must be whole numbers") from None
        if last < first or not cells["label"] or not cells["category"]:
            _check_overlaps(path, out, lines)
            raise ValueError(f"{path} line {number}: needs a label, a category and first <= last")
        out.append(CategoryRange(cells["label"], first, last, cells["category"]))
        lines.append(number)
    _check_overlaps(path, out, lines)
    return out


def _check_overlaps(path: str | Path, ranges: Sequence[CategoryRange], lines: Sequence[int]) -> None:
    """ValueError naming a row of ``ranges`` (``lines``: each one's line in the file) that overlaps an
    earlier row of the same label.

    Why sorted: comparing each row with every earlier one took hours on a 16-MiB file (600 k rows) in
    a data folder someone hands over. Sorted per label by ``first``, a range overlaps one before it exactly
    when it starts at or before the furthest ``last`` so far, so one pass finds every row that overlaps
    (O(n log n)). Of the pairs found, the one whose later row comes first in the file is named (that row's
    line, and the range it overlaps): for one overlapping pair, the message the row-by-row check gave.
    """
    order = sorted(range(len(ranges)), key=lambda i: (ranges[i].label, ranges[i].first, ranges[i].last, i))
    found: tuple[int, int] | None = None  # (later row, earlier row) with the lowest later row
    reach = -1  # the row reaching furthest so far within the label
    for n, i in enumerate(order):
        if n and ranges[order[n - 1]].label != ranges[i].label:
            reach = -1
        if reach >= 0 and ranges[i].first <= ranges[reach].last:
            pair = (max(i, reach), min(i, reach))
            found = pair if found is None or pair < found else found
        if reach < 0 or ranges[i].last > ranges[reach].last:
            reach = i
    if found is not None:
        rng, other = ranges[found[0]], ranges[found[1]]
        raise ValueError(
            f"{path} line {lines[found[0]]}: {rng.label} {rng.first}-{rng.last} overlaps "
            f"{other.first}-{other.last} ({other.category})"
        )


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
    find = _range_finder(ranges)
    out = []
    for f, label in zip(files, labels, strict=True):
        index = file_index(f)
        hit = find(label, index) if index is not None else None
        out.append(hit if hit is not None else by_block[f])
    return out


def _range_finder(ranges: Sequence[CategoryRange]) -> Callable[[str, int], str | None]:
    """``find(label, index)``: the category of the first of ``ranges`` covering clip ``index`` of ``label``.

    Why: scanning every range for every clip is clips x ranges (hours for a 16-MiB categories file and a few
    thousand clips). Per label, ranges that do not overlap (as :func:`read_categories` gives them) are
    searched by bisection; a label whose ranges overlap (a list built by hand) is scanned in order as before.
    """
    by_label: dict[str, list[CategoryRange]] = {}
    for r in ranges:
        by_label.setdefault(r.label, []).append(r)
    sorted_firsts: dict[str, tuple[list[int], list[CategoryRange]]] = {}
    for label, members in by_label.items():
        ordered = sorted(members, key=lambda r: (r.first, r.last))
        if all(a.last < b.first for a, b in zip(ordered, ordered[1:], strict=False)):
            sorted_firsts[label] = ([r.first for r in ordered], ordered)

    def find(label: str, index: int) -> str | None:
        if label in sorted_firsts:
            firsts, ordered = sorted_firsts[label]
            at = bisect_right(firsts, index) - 1
            return ordered[at].category if at >= 0 and index <= ordered[at].last else None
        return next((r.category for r in by_label.get(label, ()) if r.first <= index <= r.last), None)

    return find


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
