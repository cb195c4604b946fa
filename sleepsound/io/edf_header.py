"""Check an EDF/BDF header against the file before pyedflib opens it, to name what is wrong.

pyedflib reads EDF perfectly but refuses a damaged file with one generic message (and
prints to stdout from C, which would corrupt ``sleepsound validate --json``). A lab needs
to know *which* damage: an upload cut short (truncated data records) is re-uploaded, an
inconsistent header goes back to the export software. The fixed-width ASCII header
(EDF spec, section 2) is parsed here to diagnose, and to locate a signal's samples for
``io.audio``'s record-wise reader; scaling always comes from pyedflib.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from datetime import datetime
from typing import NoReturn

import fsspec

from sleepsound.core.findings import Quarantine

FIXED_BYTES = 256
SIGNAL_BYTES = 256


class EdfHeaderError(Quarantine):
    """A header that cannot describe this file; ``code`` is the manifest's fault code."""


@dataclass(frozen=True)
class EdfHeader:
    """The header fields that decide how many bytes the file must hold."""

    is_bdf: bool
    start: datetime | None
    header_bytes: int
    n_records: int
    record_seconds: float
    labels: tuple[str, ...]
    samples_per_record: tuple[int, ...]
    # Per signal (physical minimum, maximum, digital minimum, maximum); NaN where a field is not a
    # number. Read for record-wise reading without pyedflib (a file on object storage, by ranges).
    scaling: tuple[tuple[float, float, float, float], ...] = ()

    @property
    def record_bytes(self) -> int:
        return sum(self.samples_per_record) * (3 if self.is_bdf else 2)

    @property
    def expected_bytes(self) -> int:
        return self.header_bytes + self.n_records * self.record_bytes


def _field(raw: bytes, start: int, width: int) -> str:
    return raw[start : start + width].decode("ascii", errors="replace").strip()


def _number(path: str, text: str, what: str, kind: type = int) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise EdfHeaderError(
            path,
            "inconsistent_edf_header",
            f"header field {what} is {text!r}, not "
            f"{'a whole number' if kind is int else 'a number'}; re-export the file",
        ) from None


def _lenient(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan


def _start(path: str, raw: bytes) -> datetime | None:
    """Start date and time (dd.mm.yy hh.mm.ss; years 85-99 are 19xx, the rest 20xx); None when the
    fields are not numbers with dots (pyedflib refuses such a file, and ``explain_refusal`` names the
    field). A field of numbers that is no real date or time (``31.02.20``, ``24.00.00``) passes
    pyedflib, but it would silently turn off every check that needs the start (the RML's start, the
    parts' continuity): raises EdfHeaderError naming the field and its value."""
    date, time = _field(raw, 168, 8), _field(raw, 176, 8)
    try:
        day, month, year = (int(v) for v in date.split("."))
        hour, minute, second = (int(v) for v in time.split("."))
    except ValueError:
        return None
    year += 1900 if year >= 85 else 2000
    for name, form, text, fields in (
        ("start date", "dd.mm.yy date", date, (year, month, day)),
        ("start time", "hh.mm.ss time", time, (2000, 1, 1, hour, minute, second)),
    ):
        try:
            datetime(*fields)
        except ValueError as exc:
            raise EdfHeaderError(
                path,
                "inconsistent_edf_header",
                f"header field '{name}' is {text!r}, not a valid {form} ({exc}); the night's start is unknown, "
                "so its annotations and parts cannot be checked against it: re-export the file",
            ) from None
    return datetime(year, month, day, hour, minute, second)


def read_edf_header(path: str, fs: fsspec.AbstractFileSystem | None = None) -> EdfHeader:
    """Parse and check the header of ``path`` (on ``fs``, e.g. object storage: its first few KB
    read, nothing more); raises EdfHeaderError naming the fault."""
    size = fs.size(path) if fs is not None else os.path.getsize(path)
    with fs.open(path, "rb", block_size=2**16) if fs is not None else open(path, "rb") as handle:
        fixed = handle.read(FIXED_BYTES)
        if len(fixed) < FIXED_BYTES:
            raise EdfHeaderError(
                path,
                "unreadable_edf",
                f"only {len(fixed)} bytes: too short to be EDF/BDF (a header alone is 256 bytes)",
            )
        is_bdf = fixed[:8] == b"\xffBIOSEMI"
        if not is_bdf and fixed[:8] != b"0       ":
            raise EdfHeaderError(
                path,
                "unreadable_edf",
                "does not start like an EDF ('0') or BDF (0xFF 'BIOSEMI') file; is it audio at all?",
            )
        ns = int(_number(path, _field(fixed, 252, 4), "'number of signals'"))
        header_bytes = int(_number(path, _field(fixed, 184, 8), "'header bytes'"))
        n_records = int(_number(path, _field(fixed, 236, 8), "'number of data records'"))
        record_seconds = float(_number(path, _field(fixed, 244, 8), "'duration of a data record'", float))
        if ns < 1 or header_bytes != FIXED_BYTES + ns * SIGNAL_BYTES:
            raise EdfHeaderError(
                path,
                "inconsistent_edf_header",
                f"header declares {ns} signals but {header_bytes} header bytes "
                f"(must be 256 + 256 x signals); re-export the file",
            )
        if n_records < 1 or record_seconds <= 0:
            raise EdfHeaderError(
                path,
                "inconsistent_edf_header",
                f"header declares {n_records} data records of {record_seconds} s; a finished "
                "recording has at least one record of positive length (was the export interrupted?)",
            )
        signals = handle.read(ns * SIGNAL_BYTES)
    if len(signals) < ns * SIGNAL_BYTES:
        raise EdfHeaderError(path, "truncated_edf", "file ends inside its own header; re-upload it")
    labels = tuple(_field(signals, 16 * i, 16) for i in range(ns))
    offset = ns * (16 + 80 + 8 + 8 + 8 + 8 + 8 + 80)  # label .. prefiltering
    samples = tuple(
        int(_number(path, _field(signals, offset + 8 * i, 8), f"'samples per record' of {labels[i]!r}"))
        for i in range(ns)
    )
    for label, count in zip(labels, samples, strict=True):
        if count < 1:
            raise EdfHeaderError(
                path, "inconsistent_edf_header", f"signal {label!r} declares {count} samples per data record"
            )
    scaling = tuple(
        tuple(_lenient(_field(signals, ns * (16 + 80 + 8 + 8 * k) + 8 * i, 8)) for k in range(4)) for i in range(ns)
    )
    header = EdfHeader(is_bdf, _start(path, fixed), header_bytes, n_records, record_seconds, labels, samples, scaling)
    other = EdfHeader(not is_bdf, None, header_bytes, n_records, record_seconds, labels, samples)
    if size != header.expected_bytes and size == other.expected_bytes:
        says, fits = ("BDF (0xFF 'BIOSEMI')", "EDF's 2") if is_bdf else ("EDF ('0')", "BDF's 3")
        raise EdfHeaderError(
            path,
            "inconsistent_edf_header",
            f"the version field says {says} but the file's size fits {fits} bytes a sample "
            "exactly: the version field is wrong; re-export the file",
        )
    if size < header.expected_bytes:
        whole = (size - header_bytes) // header.record_bytes
        raise EdfHeaderError(
            path,
            "truncated_edf",
            f"truncated: holds {whole} complete of {n_records} data records "
            f"({size} of {header.expected_bytes} bytes, {header.expected_bytes - size} missing); "
            "re-upload or re-export it",
        )
    if size > header.expected_bytes:
        raise EdfHeaderError(
            path,
            "inconsistent_edf_header",
            f"{size - header.expected_bytes} bytes more than the header's {n_records} data records "
            "account for; the header's record count is wrong, re-export the file",
        )
    return header


# ----------------------------------------------------------------------------- why pyedflib refused a file

_INTEGER = re.compile(r"[+-]?\d+ *")  # edflib's rule: left-aligned, space-padded
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)? *")
# Main header fields after the version (offset, width, name as in the EDF spec).
_MAIN_FIELDS = (
    (8, 80, "local patient identification"),
    (88, 80, "local recording identification"),
    (168, 8, "start date"),
    (176, 8, "start time"),
    (184, 8, "number of bytes in header record"),
    (192, 44, "reserved"),
    (236, 8, "number of data records"),
    (244, 8, "duration of a data record"),
    (252, 4, "number of signals"),
)
_MAIN_NUMBERS = (
    (184, 8, "number of bytes in header record", _INTEGER),
    (236, 8, "number of data records", _INTEGER),
    (244, 8, "duration of a data record", _NUMBER),
    (252, 4, "number of signals", _INTEGER),
)
# EDF+ subfields (spec 2.1.3): patient 'code sex birthdate name ...', recording 'Startdate date ...'.
_DATE_PLUS = r"(X|(0[1-9]|[12]\d|3[01])-(JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC)-\d{4})"
_PLUS_SUBFIELDS = (
    (
        8,
        "local patient identification",
        re.compile(rf"\S+ [MFX] {_DATE_PLUS} \S.*"),
        "'code sex birthdate name', e.g. 'X X X X'",
    ),
    (
        88,
        "local recording identification",
        re.compile(rf"Startdate {_DATE_PLUS} \S.*"),
        "'Startdate dd-MMM-yyyy admincode technician equipment', e.g. 'Startdate X X X X'",
    ),
)
# Per-signal fields: width and what they must hold; field k of signal i sits at 256 + ns * (sum of the
# widths before k) + i * width.
_SIGNAL_FIELDS = (
    ("label", 16, None),
    ("transducer type", 80, None),
    ("physical dimension", 8, None),
    ("physical minimum", 8, _NUMBER),
    ("physical maximum", 8, _NUMBER),
    ("digital minimum", 8, _INTEGER),
    ("digital maximum", 8, _INTEGER),
    ("prefiltering", 80, None),
    ("number of samples in each data record", 8, _INTEGER),
    ("reserved", 32, None),
)


def empty_range(label: str, kind: str, low: float, high: float) -> str | None:
    """Why signal ``label`` cannot be scaled when its ``kind`` ("digital" or "physical") minimum
    equals its maximum (the scaling divides by their difference); None when they differ."""
    if low != high:
        return None
    value = int(low) if kind == "digital" else format(low, "g")
    return (
        f"signal {label!r}: {kind} minimum and maximum are both {value}, so its samples cannot be scaled to "
        "physical values (division by zero)"
    )


def explain_refusal(path: str) -> None:
    """Raise EdfHeaderError naming the first header field of ``path`` that breaks the EDF/BDF spec.

    Called only after pyedflib has refused a file (it is never stricter than pyedflib, so it
    cannot reject a readable file): pyedflib's message says "contains format errors" or at
    best the field, never which signal or what value, and a lab needs that to fix an export.
    Returns without raising when it finds nothing; the caller then reports pyedflib's text.
    Text fields (patient, recording) are never quoted, only the position of a bad byte.
    """
    header = read_edf_header(path)  # version, sizes and the record count against the file, first
    ns = len(header.labels)
    with open(path, "rb") as handle:
        raw = handle.read(header.header_bytes)

    def fail(message: str) -> NoReturn:
        raise EdfHeaderError(path, "inconsistent_edf_header", f"{message}; re-export the file")

    def check_ascii(data: bytes, what: str) -> None:
        bad = next((i for i, byte in enumerate(data) if not 32 <= byte <= 126), None)
        if bad is not None:
            fail(
                f"header field {what} holds byte 0x{data[bad]:02x} at position {bad + 1}; "
                "EDF headers are printable ASCII"
            )

    for offset, width, name in _MAIN_FIELDS:
        check_ascii(raw[offset : offset + width], f"'{name}'")
    for offset, fmt, name, limits in (
        (168, "dd.mm.yy", "start date", ((1, 31), (1, 12), (0, 99))),
        (176, "hh.mm.ss", "start time", ((0, 23), (0, 59), (0, 59))),
    ):
        text = raw[offset : offset + 8].decode("ascii")
        parts = re.fullmatch(r"(\d\d)\.(\d\d)\.(\d\d)", text)
        if parts is None or not all(lo <= int(v) <= hi for v, (lo, hi) in zip(parts.groups(), limits, strict=True)):
            fail(f"header field '{name}' is {text!r}, not a valid {fmt} (with dots)")
    for offset, width, name, pattern in _MAIN_NUMBERS:
        text = raw[offset : offset + width].decode("ascii")
        if not pattern.fullmatch(text):
            fail(f"header field '{name}' is {text.rstrip()!r}, not a number (left-aligned, space-padded)")

    fields: dict[str, list[str]] = {}
    start = FIXED_BYTES
    for name, width, pattern in _SIGNAL_FIELDS:
        fields[name] = []
        for i in range(ns):
            data = raw[start + i * width : start + (i + 1) * width]
            where = f"'{name}' of signal {i + 1} of {ns}"
            check_ascii(data, where if name == "label" else f"{where} ({header.labels[i]!r})")
            text = data.decode("ascii")
            if pattern is not None and not pattern.fullmatch(text):
                fail(
                    f"header field {where} ({header.labels[i]!r}) is {text.rstrip()!r}, not "
                    f"{'an integer' if pattern is _INTEGER else 'a number'} (left-aligned, space-padded)"
                )
            fields[name].append(text.strip())
        start += ns * width
    digital = (-8388608, 8388607) if header.is_bdf else (-32768, 32767)
    for i, label in enumerate(header.labels):
        pmin, pmax = (float(fields[f"physical {m}"][i]) for m in ("minimum", "maximum"))
        dmin, dmax = (int(fields[f"digital {m}"][i]) for m in ("minimum", "maximum"))
        if (problem := empty_range(label, "physical", pmin, pmax)) is not None:
            fail(problem)
        for name, value in (("minimum", dmin), ("maximum", dmax)):
            if not digital[0] <= value <= digital[1]:
                fail(
                    f"signal {label!r}: digital {name} {value} is outside the {'BDF' if header.is_bdf else 'EDF'} "
                    f"range {digital[0]} to {digital[1]}"
                )
        if (problem := empty_range(label, "digital", dmin, dmax)) is not None:
            fail(problem)
    plus = raw[192:197].decode("ascii")
    if plus in ("EDF+C", "EDF+D", "BDF+C", "BDF+D"):
        annotations = "BDF Annotations" if header.is_bdf else "EDF Annotations"
        if annotations not in header.labels:
            fail(f"the header says {plus} but no signal is labelled {annotations!r}")
        for i, label in enumerate(header.labels):  # plain EDF allows it (pyedflib reads it sign-flipped)
            dmin, dmax = int(fields["digital minimum"][i]), int(fields["digital maximum"][i])
            if dmin > dmax:
                fail(
                    f"signal {label!r}: digital minimum {dmin} is above digital maximum {dmax}, which {plus[:4]} "
                    "forbids"
                )
        for offset, name, pattern, form in _PLUS_SUBFIELDS:
            if not pattern.fullmatch(raw[offset : offset + 80].decode("ascii")):
                fail(f"the header says {plus} but its '{name}' does not follow the EDF+ subfields {form}")
