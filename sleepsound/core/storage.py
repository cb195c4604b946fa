"""One storage root for every artifact: a local path, ``file://`` or ``s3://``.

Everything goes through fsspec so the same code writes to a laptop disk and to object
storage. What a write guarantees:

- Atomic: a file is written aside and then moved into place (a local rename, or a single PUT
  on object stores, which is atomic per object), so a crash never leaves a half-written
  artifact where a reader would take it for complete.
- Durable on local disk: the aside file is fsynced before the rename and its folder after, so
  a power loss leaves the old file or the new one, never a published empty one. (On an object
  store a PUT is durable once it returns; on NFS fsync is as good as the server's export.)
- Clean on failure: a failed write (a full disk above all) removes its aside file and says
  which file it was writing and that the disk is full; the files written before it are kept.
- Fenced: a run that holds a root (``sleepsound.runs.root_lock``) registers a check here, and
  every write under that root asks it just before it publishes; a run that lost the root
  (its heartbeat could not be written, or another run took over) gets ``RootLost`` instead
  of overwriting the new holder's files. The check runs in this process: it fences the
  writes of the process that holds the root (the flow and its threads); another process
  writing for the run (a Ray worker) is fenced only if it follows the hold
  (``runs.root_lock.follow_hold``). A write already past its check (microseconds on disk,
  one PUT on S3) still lands.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from sleepsound.core.text import without_credentials


@dataclass(frozen=True)
class StorageRoot:
    """A storage root opened once: the URI as the user gave it, its filesystem, its protocol-free path.

    A stage opens the root once and hands this record along, instead of every function re-parsing
    the URI. It unpacks as ``fs, path`` so ``fs, path = open_root(root)`` reads either form.
    """

    uri: str
    fs: fsspec.AbstractFileSystem
    path: str

    def __iter__(self) -> Iterator[Any]:
        return iter((self.fs, self.path))

    def join(self, *parts: str) -> str:
        """A path under the root (protocol-free, for ``fs``)."""
        return join(self.path, *parts)


# What library functions accept as a storage root: a URI (as tasks pass it) or an opened root.
RootLike = str | StorageRoot
# ``scheme://user[:password]@host/...``: credentials written into a storage URL.
_USERINFO = re.compile(r"^(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]*@", re.IGNORECASE)


class CredentialsInUrl(ValueError):
    """A storage URL with ``user:secret@`` in it. s3fs does not read credentials from there (the bucket
    name would be ``KEY:SECRET@bucket``, and botocore's error printed it whole), and the URL travels into
    messages, run records and a flow's parameters: refused, shown masked."""


def refuse_credentials(url: str, what: str = "storage URL") -> None:
    """Raise CredentialsInUrl (its message names ``what`` and the masked URL) if ``url`` carries any."""
    if _USERINFO.match(str(url)):  # a Path too: callers pass them where they mean a local root
        raise CredentialsInUrl(
            f"{what} {without_credentials(str(url))}: credentials in a storage URL are refused (they would be written "
            "wherever the URL is); give them as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile or the "
            "instance's role"
        )


def open_root(root: RootLike) -> StorageRoot:
    """The root's filesystem and protocol-free path; an already opened root is returned as it is."""
    if isinstance(root, StorageRoot):
        return root
    refuse_credentials(root, "storage root")
    fs, path = fsspec.core.url_to_fs(root)
    if isinstance(fs, LocalFileSystem):
        path = posixpath.normpath(path)  # messages name /data/x, not /work/../data/x
    return StorageRoot(str(root), fs, path.rstrip("/") or "/")


def is_local(uri: str) -> bool:
    """Whether ``uri`` is on this machine's disk (a path or ``file://``), so reading it downloads nothing."""
    refuse_credentials(uri)
    fs, _ = fsspec.core.url_to_fs(uri)
    return isinstance(fs, LocalFileSystem)


def join(*parts: str) -> str:
    """Join storage path parts with '/' whatever the platform."""
    return posixpath.join(*parts)


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URI a user (or another process) can open again: keeps ``s3://``."""
    return fs.unstrip_protocol(path) if not isinstance(fs, LocalFileSystem) else path


class RootLost(RuntimeError):
    """This process's run no longer holds the root it is writing to: it must stop, not overwrite."""


class DiskFull(OSError):
    """The disk filled up during a write; the message names the file (``errno`` stays ENOSPC)."""

    def __str__(self) -> str:
        return str(self.strerror)


# Fences of the roots held in this process: root key -> a check returning why the hold is lost (None: held).
_FENCES: dict[tuple[str, str], Callable[[], str | None]] = {}
_FENCES_LOCK = threading.Lock()


def path_key(fs: fsspec.AbstractFileSystem, path: str) -> tuple[str, str]:
    """(protocol, path) naming one place on a filesystem, whichever of its protocol names it goes by."""
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol, path.rstrip("/") or "/"


@contextlib.contextmanager
def fenced(fs: fsspec.AbstractFileSystem, root_path: str, check: Callable[[], str | None]) -> Iterator[None]:
    """While the block runs, every write under ``root_path`` in this process asks ``check`` first.

    ``check`` returns None while the root is held, else why not; the write then raises RootLost.
    Lives here, not with the lock, so the foundations need no import from the runs stage.
    """
    key = path_key(fs, root_path)
    with _FENCES_LOCK:  # a run of this process that took over from another of this process replaces its fence
        _FENCES[key] = check
    try:
        yield
    finally:
        with _FENCES_LOCK:
            if _FENCES.get(key) is check:
                del _FENCES[key]


def is_fenced(fs: fsspec.AbstractFileSystem, root_path: str) -> bool:
    """Whether this process already fences writes under ``root_path`` (it holds the root, or follows the hold)."""
    key = path_key(fs, root_path)
    with _FENCES_LOCK:
        return key in _FENCES


def _check_fence(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """RootLost when ``path`` lies under a root this process held and has lost."""
    protocol, target = path_key(fs, path)
    with _FENCES_LOCK:
        checks = [
            check
            for (proto, root), check in _FENCES.items()
            if proto == protocol and (target == root or target.startswith(root.rstrip("/") + "/"))
        ]
    for check in checks:
        reason = check()
        if reason is not None:
            raise RootLost(f"{reason}; {path} was not written")


@contextlib.contextmanager
def _naming_a_full_disk(path: str) -> Iterator[None]:
    """Re-raise a full disk (or quota) as DiskFull naming the file being written; other errors pass as they are."""
    try:
        yield
    except DiskFull:
        raise
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        message = f"no space left on device writing {path}: free space and rerun; finished work is kept"
        raise DiskFull(errno.ENOSPC, message) from exc


def _fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable; filesystems that cannot sync a folder are left as they are."""
    handle = os.open(folder or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(handle)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(handle)


def write_synced_aside(path: str, data: bytes) -> str:
    """Write ``data`` to a hidden file beside ``path`` and fsync it; the aside file's path.

    On failure the aside file is removed and a full disk is named (DiskFull), so failures
    leave nothing behind to fill the disk further. Local disk only.
    """
    parent = posixpath.dirname(path)
    tmp = posixpath.join(parent, f".{posixpath.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        with _naming_a_full_disk(path), open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return tmp


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes, *, fence: bool = True) -> None:
    """Write aside then move into place, so readers never see a partial file.

    The aside file is hidden (a leading dot), so if the process dies before the move, Parquet
    dataset readers (which skip dot files) and our own listings never take it for data. On
    local disk it is fsynced before the rename and the folder after. Just before publishing,
    a write under a root this process holds checks the hold (``fence=False``: the lock's own
    writes, which must go through to say the run is alive).
    """
    parent = posixpath.dirname(path)
    with _naming_a_full_disk(path):
        if parent:
            fs.makedirs(parent, exist_ok=True)
        if not isinstance(fs, LocalFileSystem):
            if fence:
                _check_fence(fs, path)
            fs.pipe_file(path, data)
            return
        tmp = write_synced_aside(path, data)
        try:
            if fence:
                _check_fence(fs, path)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_folder(parent)


def create_bytes_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Create ``path`` holding ``data`` only if it does not exist (FileExistsError otherwise), atomically.

    On local disk the data is written and fsynced aside and then hard-linked into place: the link
    fails if the name exists, and the file never appears empty (where links are not supported,
    ``O_EXCL`` creates it and a failed write removes it again). fsspec's generic
    ``pipe_file(mode="create")``, which local disk inherits, checks and then writes, so two runs
    could both pass the check. S3 (s3fs) sends ``If-None-Match: *``, atomic on the server; an
    object store that ignores it lets both writers succeed, which no client can detect. Not
    fenced: the root lock itself uses it.
    """
    if not isinstance(fs, LocalFileSystem):
        with _naming_a_full_disk(path):
            fs.pipe_file(path, data, mode="create")
        return
    tmp = write_synced_aside(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        _create_with_o_excl(path, data)  # a filesystem without hard links
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_folder(posixpath.dirname(path))


def _create_with_o_excl(path: str, data: bytes) -> None:
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with _naming_a_full_disk(path), os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        os.unlink(path)  # ours: created above, so no empty file is left to be taken for a lock
        raise


def remove_tree(fs: fsspec.AbstractFileSystem, path: str) -> None:
    """Remove ``path`` and what is under it, fenced like a write: a run that lost its root never
    removes the files of the run that took it over (RootLost).

    The files are listed and removed one by one, never through ``fs.rm``: fsspec reads ``[``, ``*`` and
    ``?`` in a path given to it as a pattern, so removing the night ``n [2] b`` removed ``n 2 b``."""
    _check_fence(fs, path)
    if isinstance(fs, LocalFileSystem):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        return
    for file in sorted(fs.find(path), reverse=True):
        fs.rm_file(file)
    fs.invalidate_cache(path)


def move_file(fs: fsspec.AbstractFileSystem, src: str, dst: str) -> None:
    """Move one file, by its literal name (``fs.mv`` reads the name as a glob pattern, as ``fs.rm`` does)."""
    _check_fence(fs, dst)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
        os.replace(src, dst)
        return
    fs.cp_file(src, dst)
    fs.rm_file(src)


# Runs write each night's outputs as hive partitions (``<folder>/recording_id=<id>/part-0.parquet``).
PARTITION_KEY = "recording_id"


def partition(folder: str, recording_id: str) -> str:
    """A night's partition folder under ``folder``: its id URI-encoded, as pyarrow's hive reading decodes
    it (a raw ``n%41x`` came back as ``nAx``), and with no ``[``, ``*`` or ``?`` for fsspec to read as a
    pattern. Plain ids (letters, digits, ``-``, ``_``, ``.``) are unchanged."""
    return join(folder, f"{PARTITION_KEY}={quote(recording_id, safe='')}")


def partitions(fs: fsspec.AbstractFileSystem, folder: str) -> dict[str, str]:
    """Every night's partition folder directly under ``folder``, by recording id; listed, never globbed
    (the root's or the run's own name may hold ``[`` too). Empty when there is no such folder."""
    try:
        listed = fs.ls(folder, detail=True)  # one listing: the entries' types come with it (no request each)
    except FileNotFoundError:
        return {}
    out = {}
    for entry in listed:
        path = str(entry["name"]).rstrip("/")
        name = path.rsplit("/", 1)[-1]
        if name.startswith(f"{PARTITION_KEY}=") and entry.get("type") == "directory":
            out[unquote(name[len(PARTITION_KEY) + 1 :])] = path
    return out


def drop_other_partitions(fs: fsspec.AbstractFileSystem, folder: str, keep: set[str]) -> None:
    """Remove ``folder``'s partitions of nights not in ``keep``: a rerun of a run leaves its folders holding
    the nights it wrote and no other (not a night quarantined since the first attempt)."""
    for rec, path in partitions(fs, folder).items():
        if rec not in keep:
            remove_tree(fs, path)


def partition_files(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """A partition's Parquet files (not a write's hidden temporary ones), by name."""
    return sorted(
        p for p in fs.ls(folder, detail=False) if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith(".")
    )


def write_json(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    write_bytes_atomic(fs, path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "rb") as handle:
        return json.loads(handle.read())


def read_bytes_capped(fs: fsspec.AbstractFileSystem, path: str, limit: int) -> bytes | None:
    """The whole file, or None when it holds more than ``limit`` bytes (read no further than one byte
    past the limit): files a run did not write itself may be any size."""
    with fs.open(path, "rb") as handle:
        raw = handle.read(limit + 1)
    return None if len(raw) > limit else raw


def free_bytes_at(path: str | os.PathLike[str]) -> tuple[str, int]:
    """The nearest existing folder at or above local ``path`` and the bytes free on its disk: what a
    command about to create ``path`` may write there, asked before it writes anything."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return existing, shutil.disk_usage(existing).free


class NotOurFile(ValueError):
    """A file a reader refuses before using it: larger than it can be, or not the text it must hold."""


class NotOurJson(NotOurFile):
    """A JSON file a reader refuses before using it: larger than any it writes, or not JSON at all."""


def read_json_capped(fs: fsspec.AbstractFileSystem, path: str, limit: int, what: str, shown: str | None = None) -> Any:
    """The JSON value in ``path``, which must hold at most ``limit`` bytes; NotOurJson naming the file
    (``shown``, default ``path``) otherwise: too large to be ``what``, or not JSON (bad text, bad bytes,
    nesting too deep for the parser)."""
    name = shown or path
    raw = read_bytes_capped(fs, path, limit)
    if raw is None:
        raise NotOurJson(f"{name} is larger than {limit >> 20} MiB: not {what}")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise NotOurJson(f"{name} is not JSON: {exc}") from exc


def read_text_capped(fs: fsspec.AbstractFileSystem, path: str, limit: int, what: str, shown: str | None = None) -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark dropped), which must hold at most ``limit``
    bytes; NotOurFile naming the file (``shown``, default ``path``) otherwise: larger than ``limit``, so
    not ``what``, or not UTF-8. Why: a file the user names may be a recording given by mistake or
    ``/dev/zero``, to be refused with its problem, not read whole or met with a decoder's message
    naming no file. A file that cannot be opened raises OSError, for the caller to name."""
    name = shown or path
    raw = read_bytes_capped(fs, path, limit)
    if raw is None:
        raise NotOurFile(f"{name}: larger than {limit} bytes: not {what}")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NotOurFile(f"{name}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None


BULK_ROW_GROUP_BYTES = 8 << 20


def write_table(fs: fsspec.AbstractFileSystem, path: str, table: pa.Table, bulk: Sequence[str] = ()) -> None:
    """Write one Parquet file atomically (zstd; small row groups stay readable by pandas).

    ``bulk``: columns of large numeric arrays (embeddings). They get no dictionary and no
    statistics (neither helps random floats; both cost time and buffers), and the rows go in
    groups of about 8 MB, so the writer holds one group's buffers rather than the whole
    column's: an 8-hour night's HuBERT-sized embeddings (88 MB) were written in 2.1 s with
    750 MB of buffers in one group, and in 0.4 s with under 300 MB in groups.
    """
    buffer = io.BytesIO()
    options: dict[str, Any] = {}
    if bulk and table.num_rows:
        light = [name for name in table.column_names if name not in set(bulk)]
        options = {
            "use_dictionary": light,
            "write_statistics": light,
            "row_group_size": max(1, BULK_ROW_GROUP_BYTES * table.num_rows // max(1, table.nbytes)),
        }
    pq.write_table(table, buffer, compression="zstd", **options)
    write_bytes_atomic(fs, path, buffer.getvalue())


def read_table(fs: fsspec.AbstractFileSystem, path: str) -> pa.Table:
    with fs.open(path, "rb") as handle:
        return pq.read_table(handle)


def read_tables(fs: fsspec.AbstractFileSystem, paths: list[str]) -> pa.Table | None:
    """Concatenate many small Parquet files (None when there are none)."""
    tables = [read_table(fs, p) for p in sorted(paths)]
    return pa.concat_tables(tables, promote_options="default") if tables else None


def list_files(fs: fsspec.AbstractFileSystem, path: str, suffix: str) -> list[str]:
    """Files under ``path`` ending with ``suffix``; an absent folder is simply empty."""
    if not fs.exists(path):
        return []
    return sorted(p for p in fs.find(path) if p.endswith(suffix))


def table_to_pandas(table: pa.Table) -> pd.DataFrame:
    """Plain numpy-backed pandas (Ray and pyarrow may hand back Arrow-backed dtypes)."""
    return table.to_pandas(types_mapper=None)


def values_digest(values: np.ndarray) -> str:
    """SHA-256 of an array's values in row order: recorded beside a cached array when it is
    written, recomputed when it is read, so altered values are caught even where the file parses."""
    return hashlib.sha256(np.ascontiguousarray(values)).hexdigest()
