"""One writing run per storage root at a time.

Two runs writing the same root would race on the manifest, the model store and the nightly
state. A run therefore holds ``<root>/state/lock.json`` while it writes: it is created with an
atomic create-if-absent (``O_EXCL`` on disk, ``If-None-Match: *`` on S3), so of two runs
starting together exactly one gets it; the other is refused at once with a message naming the
holder. The holder refreshes the lock's heartbeat while it runs; a lock whose heartbeat is
older than ``stale_after_s`` belongs to a run that died (killed, machine lost) and is taken
over, so a crash never locks a root for good. A holder on this same machine whose process is
gone is known dead at once. Taking over is atomic too: the runs that find the same dead lock race
to create a claim named after that lock's bytes, and only the one that creates it replaces the lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from sleepsound.core.storage import RootLike, StorageRoot, join, open_root, write_bytes_atomic

LOCK = "lock.json"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
CLAIM_STALE_S = 60.0  # a takeover takes milliseconds: an older claim was left by a run that died in it


class RootBusy(RuntimeError):
    """Another run holds the storage root."""


def lock_path(root_path: str) -> str:
    return join(root_path, "state", LOCK)


def _now() -> datetime:
    return datetime.now(UTC)


def _record(run_id: str, purpose: str, acquired: str) -> bytes:
    return json.dumps(
        {
            "run_id": run_id,
            "purpose": purpose,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired": acquired,
            "heartbeat": _now().isoformat(),
        }
    ).encode()


def _read(fs: fsspec.AbstractFileSystem, path: str) -> bytes | None:
    try:
        return bytes(fs.cat_file(path))
    except FileNotFoundError:
        return None


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        return json.loads(raw)
    except ValueError:  # created a moment ago and not yet written: held, and fresh
        return {"run_id": "(starting)", "purpose": "unknown", "heartbeat": _now().isoformat()}


def holder(root: RootLike) -> dict[str, Any] | None:
    """The current lock record, or None when the root is free."""
    fs, root_path = open_root(root)
    raw = _read(fs, lock_path(root_path))
    return None if raw is None else _parse(raw)


def _died_here(record: dict[str, Any]) -> bool:
    """True when the holder ran on this machine and its process is gone (killed, crashed):
    no need to wait for its heartbeat to go stale. Other machines' runs only go stale."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def check_free(root: RootLike, stale_after_s: float = STALE_AFTER_S) -> None:
    """RootBusy when a live run holds the root; lets a command refuse before it starts anything."""
    store = open_root(root)
    current = holder(store)
    if current is not None:
        _refuse_if_live(store, current, stale_after_s)


def _refuse_if_live(store: StorageRoot, current: dict[str, Any], stale_after_s: float) -> None:
    beat = datetime.fromisoformat(current.get("heartbeat", "1970-01-01T00:00:00+00:00"))
    if _now() - beat < timedelta(seconds=stale_after_s) and not _died_here(current):
        raise RootBusy(
            f"{store.uri} is in use by run {current.get('run_id')!r} ({current.get('purpose')}, "
            f"on {current.get('host')}, since {current.get('acquired')}); wait for it to finish. "
            f"If that run died, its lock expires {stale_after_s:.0f} s after its last "
            f"heartbeat ({current.get('heartbeat')}), or remove {lock_path(store.path)}"
        )


def _create_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Create ``path`` with ``data`` only if it does not exist (FileExistsError otherwise), atomically.

    fsspec's generic ``pipe_file(mode="create")``, which local disk inherits, checks and then
    writes, so two runs starting together could both pass the check; ``O_EXCL`` cannot race. S3
    (s3fs) sends ``If-None-Match: *``, which is atomic on the server.
    """
    if isinstance(fs, LocalFileSystem):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        return
    fs.pipe_file(path, data, mode="create")


def _take_over(fs: fsspec.AbstractFileSystem, path: str, dead: bytes, record: bytes) -> bool:
    """Replace the dead run's lock (its bytes ``dead``) with ``record``; False when another run won.

    Every run that judged the same lock dead races to create one claim named after its bytes;
    the winner checks the lock is still those bytes (a winner before it has removed its claim
    only after writing its own lock), replaces it, and removes the claim.
    """
    claim = f"{path}.takeover-{hashlib.sha256(dead).hexdigest()[:16]}"
    try:
        _create_exclusive(fs, claim, record)
    except FileExistsError:
        left = _read(fs, claim)
        beat = datetime.fromisoformat(_parse(left).get("heartbeat", _now().isoformat())) if left else _now()
        if _now() - beat > timedelta(seconds=CLAIM_STALE_S):  # its taker died mid-takeover
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(claim)
        return False
    try:
        if _read(fs, path) != dead:
            return False
        write_bytes_atomic(fs, path, record)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(claim)


def _acquire(store: StorageRoot, path: str, record: Callable[[], bytes], stale_after_s: float) -> None:
    """Create the lock, or take over a dead run's; RootBusy when a live run (or a faster taker) has it."""
    for _ in range(3):  # the lock may vanish (holder finished) or change hands between the steps
        try:
            _create_exclusive(store.fs, path, record())
            return
        except FileExistsError:
            pass
        raw = _read(store.fs, path)
        if raw is None:
            continue
        _refuse_if_live(store, _parse(raw), stale_after_s)
        if _take_over(store.fs, path, raw, record()):
            return
        time.sleep(0.05)  # the winner writes its lock within milliseconds: then it is named below
    current = holder(store) or {}
    raise RootBusy(
        f"{store.uri}: another run took over the expired lock first "
        f"(now held by {current.get('run_id', 'nobody')!r}); try again"
    )


@contextlib.contextmanager
def hold_root(
    root: RootLike, run_id: str, purpose: str, stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S
) -> Iterator[dict[str, Any]]:
    """Hold the root for the duration of the block; RootBusy when a live run holds it."""
    store = open_root(root)
    fs, path = store.fs, lock_path(store.path)
    fs.makedirs(store.join("state"), exist_ok=True)
    acquired = _now().isoformat()
    _acquire(store, path, lambda: _record(run_id, purpose, acquired), stale_after_s)
    stop = threading.Event()

    def beat_loop() -> None:
        while not stop.wait(heartbeat_s):
            with contextlib.suppress(OSError):
                current = holder(store)
                if current is None or (current.get("run_id"), current.get("acquired")) != (run_id, acquired):
                    return  # taken over after we stalled: never overwrite the new holder's lock
                write_bytes_atomic(fs, path, _record(run_id, purpose, acquired))

    thread = threading.Thread(target=beat_loop, name="sleepsound-root-lock", daemon=True)
    thread.start()
    try:
        yield {"run_id": run_id, "path": path, "acquired": acquired}
    finally:
        stop.set()
        thread.join(timeout=5)
        current = holder(store)
        if current is not None and current.get("run_id") == run_id and current.get("acquired") == acquired:
            fs.rm_file(path)
