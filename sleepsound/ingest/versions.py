"""Which version of each of a night's files validation saw, and whether a reader still finds it.

Validation hashes a night's audio (the SHA-256 that keys the embedding cache) and checks its
labels; the embed step reads the same files again, minutes or hours later, and a chunk of a long
night may be read by several readers. A file replaced or removed in between must not be embedded
under the checksum of the bytes validation saw: other audio would sit in the cache under the old
key, and other labels would be trained on unvalidated. The one listing of the source that
``build_manifest`` makes anyway gives every file's size and version (an object's ETag; a local
file's modification time, status-change time and inode); they go into the manifest row
(``file_versions``), and each reader compares them with the files before it reads and again once it
has read (``verify_unchanged``): a difference quarantines the night as ``source_changed`` for this
run, and the next run validates it afresh. A few metadata requests per reader; no byte of audio is
read twice.

A local file's modification time alone can be put back (``touch -d``, ``os.utime``, copy tools that
keep times), so a file rewritten with its size and old time would pass. Its status-change time
(``st_ctime``) cannot be set by a user, moves with every write and with every ``utime`` itself,
and a file replaced by another (saved aside and renamed over) gets another inode: both come with
the listing at no extra cost (fsspec's ``created`` and ``ino``), so they are part of the version.
The price: a metadata change alone (``chmod``, ``chown``, a new hard link) now counts as a change,
so such a night is validated again (same checksum, cache hits). A version recorded before these
parts existed (``1733500000.5``, no ``;``) is compared on what it recorded, the modification time:
an upgrade does not turn every night of an old manifest into a changed one.
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
    """A file's version as a listing or ``fs.info`` gives it: an object store's ETag; a local file's
    modification time with its status-change time and inode (``<mtime>;ctime=<s>;ino=<n>``, see the
    module's notes); None when the storage gives neither."""
    version = info.get("ETag") or info.get("mtime") or info.get("LastModified")
    if version is None:
        return None
    if info.get("ETag"):  # an object store's version is its ETag alone: no ctime to put beside it
        return str(version)
    extra = [f"{key}={info[name]}" for key, name in _LOCAL_PARTS if info.get(name) is not None]
    return ";".join([str(version), *extra])


# The parts of a local file's version beyond its modification time: (name in the version, key in fs.info).
_LOCAL_PARTS = (("ctime", "created"), ("ino", "ino"))


def _parts(version: str) -> tuple[str, dict[str, str]]:
    """A version's main part (ETag or modification time) and its named extra parts."""
    head, *rest = version.split(";")
    return head, dict(part.partition("=")[::2] for part in rest)


def same_version(recorded: str | None, current: str | None) -> bool:
    """Whether ``current`` is the version ``recorded`` names, compared on the parts both carry: a
    version recorded before the status-change time and inode were (an older manifest's) is judged by
    its modification time alone, as it was then, rather than found changed after an upgrade."""
    if recorded is None:
        return True  # the storage gave no version when validated: only the size was checked
    if current is None:
        return False
    (head, extra), (now_head, now_extra) = _parts(recorded), _parts(current)
    return head == now_head and all(now_extra.get(key, value) == value for key, value in extra.items())


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
        if size != entry["size"] or not same_version(entry["version"], version):
            what = (
                f"{entry['size']} bytes when validated, {size} now"
                if size != entry["size"]
                else f"same size, but its version (ETag, or modification time;ctime;inode) was {entry['version']} "
                f"when validated, {version} now"
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
