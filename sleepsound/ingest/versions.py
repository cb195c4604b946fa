"""Which version of each of a night's files validation saw, and whether a reader still finds it.

Validation hashes a night's audio (the SHA-256 that keys the embedding cache) and checks its
labels; the embed step reads the same files again, minutes or hours later, and a chunk of a long
night may be read by several readers. A file replaced or removed in between must not be embedded
under the checksum of the bytes validation saw: other audio would sit in the cache under the old
key, and other labels would be trained on unvalidated. The one listing of the source that
``build_manifest`` makes anyway gives every file's size and version (an object's ETag, a local
file's modification time); they go into the manifest row (``file_versions``), and each reader
compares them with the files before it reads and again once it has read (``verify_unchanged``):
a difference quarantines the night as ``source_changed`` for this run, and the next run
validates it afresh. A few metadata requests per reader; no byte of audio is read twice.

Not caught: a local file rewritten with the same size and its old modification time put back
(``touch -d``, some copy tools), as the manifest's reuse of unchanged rows does not catch it either.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

import fsspec

from sleepsound.core.findings import Quarantine
from sleepsound.core.records import FileVersion, ManifestRow
from sleepsound.io.transfer import RetryPolicy, is_transient

SOURCE_CHANGED = "source_changed"


class SourceChanged(Quarantine):
    """A night's file is not the one validation saw any more (replaced, resized or removed)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, SOURCE_CHANGED, message)


def digest_annotation(digest: Any, kind: bytes, path: str) -> None:
    """Add one annotation file to a night's labels digest (``labels_sha256``), tagged with its role
    (``labels`` or ``events``) so a stage file and an events file of the same bytes do not hash alike."""
    digest.update(kind + b"\0")
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)


def file_version(info: Mapping[str, Any]) -> str | None:
    """A file's version as a listing or ``fs.info`` gives it: an object store's ETag, a local
    file's modification time; None when the storage gives neither."""
    version = info.get("ETag") or info.get("mtime") or info.get("LastModified")
    return None if version is None else str(version)


def night_file_versions(uris: list[str | None], listing: Mapping[str, Mapping[str, Any]]) -> list[FileVersion]:
    """Size and version of each of ``uris`` (None skipped) from ``listing`` (path -> info), asking the
    storage for a file the listing lacks; a file it cannot describe is left out (not checked)."""
    out: list[FileVersion] = []
    for uri in uris:
        if uri is None:
            continue
        fs, path = fsspec.core.url_to_fs(uri)
        info = listing.get(path.rstrip("/"))
        if info is None:
            try:
                info = fs.info(path)
            except OSError:
                continue
        out.append({"uri": uri, "size": int(info.get("size") or 0), "version": file_version(info)})
    return out


def current_info(uri: str, policy: RetryPolicy = RetryPolicy()) -> Mapping[str, Any]:
    """``fs.info`` of ``uri`` as the storage has it now (not an object store client's cached listing),
    retried with backoff on transient errors as downloads are; a missing file raises at once."""
    fs, path = fsspec.core.url_to_fs(uri)
    rng = random.Random()
    for attempt in range(1, policy.attempts + 1):
        fs.invalidate_cache(path)
        try:
            return dict(fs.info(path))
        except Exception as exc:
            if not is_transient(exc) or attempt == policy.attempts:
                raise
            time.sleep(policy.delay(attempt, rng))
    raise AssertionError("unreachable")


def first_change(row: ManifestRow) -> SourceChanged | None:
    """The first of ``row``'s files found removed or other than validation saw it, or None (also for
    a row recorded without versions). Storage errors propagate: a file that cannot be asked about now
    is not taken for a changed one."""
    for entry in row.get("file_versions") or []:
        uri = entry["uri"]
        try:
            info = current_info(uri)
        except FileNotFoundError:
            return SourceChanged(uri, "removed after the night was validated: not read; the next run lists it again")
        size, version = int(info.get("size") or 0), file_version(info)
        if size != entry["size"] or (entry["version"] is not None and version != entry["version"]):
            what = (
                f"{entry['size']} bytes when validated, {size} now"
                if size != entry["size"]
                else f"same size, but its version (ETag or modification time) was {entry['version']} when "
                f"validated, {version} now"
            )
            return SourceChanged(
                uri,
                f"changed since the night was validated ({what}): not read, so nothing unvalidated is embedded "
                "under the validated checksum; the next run validates it again",
            )
    return None


def verify_unchanged(row: ManifestRow) -> None:
    """Raise ``SourceChanged`` when one of ``row``'s files is no longer the version validation saw."""
    change = first_change(row)
    if change is not None:
        raise change
