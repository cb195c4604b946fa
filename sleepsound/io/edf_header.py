"""Check an EDF/BDF header against the file before pyedflib opens it, to name what is wrong.

pyedflib reads EDF perfectly but refuses a damaged file with one generic message (and
prints to stdout from C, which would corrupt ``sleepsound validate --json``). A lab needs
to know *which* damage: an upload cut short (truncated data records) is re-uploaded, an
inconsistent header goes back to the export software. The fixed-width ASCII header
(EDF spec, section 2) is parsed here to diagnose, and to locate a signal's samples for
``io.audio``'s record-wise reader; scaling always comes from pyedflib.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

from sleepsound.findings import Quarantine

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

    @property
    def record_bytes(self) -> int:
        return sum(self.samples_per_record) * (3 if self.is_bdf else 2)

    @property
    def expected_bytes(self) -> int:
        return self.header_bytes + self.n_records * self.record_bytes


def _field(raw: bytes, start: int, width: int) -> str:
    return raw[start:start + width].decode("ascii", errors="replace").strip()


def _number(path: str, text: str, what: str, kind: type = int) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise EdfHeaderError(path, "inconsistent_edf_header",
                             f"header field {what} is {text!r}, not a number; re-export the file") from None


def _start(raw: bytes) -> datetime | None:
    """Start date and time (dd.mm.yy hh.mm.ss; years 85-99 are 19xx, the rest 20xx)."""
    try:
        day, month, year = (int(v) for v in _field(raw, 168, 8).split("."))
        hour, minute, second = (int(v) for v in _field(raw, 176, 8).split("."))
        return datetime(1900 + year if year >= 85 else 2000 + year, month, day, hour, minute, second)
    except ValueError:
        return None


def read_edf_header(path: str) -> EdfHeader:
    """Parse and check the header of ``path``; raises EdfHeaderError naming the fault."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        fixed = handle.read(FIXED_BYTES)
        if len(fixed) < FIXED_BYTES:
            raise EdfHeaderError(path, "unreadable_edf",
                                 f"only {len(fixed)} bytes: too short to be EDF/BDF (a header alone is 256 bytes)")
        is_bdf = fixed[:8] == b"\xffBIOSEMI"
        if not is_bdf and fixed[:8] != b"0       ":
            raise EdfHeaderError(path, "unreadable_edf",
                                 "does not start like an EDF ('0') or BDF (0xFF 'BIOSEMI') file; is it audio at all?")
        ns = int(_number(path, _field(fixed, 252, 4), "'number of signals'"))
        header_bytes = int(_number(path, _field(fixed, 184, 8), "'header bytes'"))
        n_records = int(_number(path, _field(fixed, 236, 8), "'number of data records'"))
        record_seconds = float(_number(path, _field(fixed, 244, 8), "'duration of a data record'", float))
        if ns < 1 or header_bytes != FIXED_BYTES + ns * SIGNAL_BYTES:
            raise EdfHeaderError(path, "inconsistent_edf_header",
                                 f"header declares {ns} signals but {header_bytes} header bytes "
                                 f"(must be 256 + 256 x signals); re-export the file")
        if n_records < 1 or record_seconds <= 0:
            raise EdfHeaderError(path, "inconsistent_edf_header",
                                 f"header declares {n_records} data records of {record_seconds} s; a finished "
                                 "recording has at least one record of positive length (was the export interrupted?)")
        signals = handle.read(ns * SIGNAL_BYTES)
    if len(signals) < ns * SIGNAL_BYTES:
        raise EdfHeaderError(path, "truncated_edf", "file ends inside its own header; re-upload it")
    labels = tuple(_field(signals, 16 * i, 16) for i in range(ns))
    offset = ns * (16 + 80 + 8 + 8 + 8 + 8 + 8 + 80)  # label .. prefiltering
    samples = tuple(int(_number(path, _field(signals, offset + 8 * i, 8), f"'samples per record' of {labels[i]!r}"))
                    for i in range(ns))
    for (label, count) in zip(labels, samples, strict=True):
        if count < 1:
            raise EdfHeaderError(path, "inconsistent_edf_header",
                                 f"signal {label!r} declares {count} samples per data record")
    header = EdfHeader(is_bdf, _start(fixed), header_bytes, n_records, record_seconds, labels, samples)
    if size < header.expected_bytes:
        whole = (size - header_bytes) // header.record_bytes
        raise EdfHeaderError(path, "truncated_edf",
                             f"truncated: holds {whole} complete of {n_records} data records "
                             f"({size} of {header.expected_bytes} bytes); re-upload or re-export it")
    if size > header.expected_bytes:
        raise EdfHeaderError(path, "inconsistent_edf_header",
                             f"{size - header.expected_bytes} bytes more than the header's {n_records} data records "
                             "account for; the header's record count is wrong, re-export the file")
    return header
