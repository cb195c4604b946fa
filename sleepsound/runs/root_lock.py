"""One writing run per storage root at a time.

Two runs writing the same root would race on the manifest, the model store and the nightly
state. A run therefore holds ``<root>/state/lock.json`` while it writes: it is created with an
atomic create-if-absent (a hard link on disk, ``If-None-Match: *`` on S3), so of two runs
starting together exactly one gets it; the other is refused at once with a message naming the
holder. The holder rewrites the lock every ``heartbeat_s``; a lock the storage last wrote more
than ``stale_after_s`` ago belongs to a run that died (killed, machine lost) and is taken over,
so a crash never locks a root for good. A holder on this same machine whose process is gone is
known dead at once: "this same machine" is the hostname, the boot id and the PID namespace the
lock records, as one hostname is shared by containers with host networking (Kubernetes
``hostNetwork`` pods), whose processes one another cannot see; a holder in another PID namespace
or booted kernel is left to go stale like another machine's, and the process's start time tells a
reused pid from the holder's (a lock written before these were recorded is judged by hostname and
pid). Taking over is atomic too: the runs that find the same dead lock race to create a claim
named after that lock's bytes, and only the one that creates it replaces the lock. A create whose
answer was lost after the storage made it (a dropped response: the retried ``If-None-Match: *``
PUT is refused, 412) finds the lock, or the claim, holding this attempt's own record, and counts as
made, so one dropped response neither refuses the run nor leaves its lock behind.

What is guaranteed, and what is not:

- Staleness is judged by the storage's own clock: the lock's modification time against that of
  a probe file written beside it a moment before, never the holder's clock against ours, so
  hosts whose clocks disagree neither steal a live lock nor wait on a dead one. An empty or
  unreadable lock (a run that died between creating and writing it) ages the same way. S3 keeps
  modification times to the second, far finer than the ten minutes that matter here.
- Fencing: every write under the root by the holding process checks the hold just before it
  publishes (``sleepsound.core.storage.fenced``). A holder stops writing (``RootLost``, naming
  the root, the run and the cause) once a heartbeat could not be written (a full disk, lost
  credentials), once another run took the lock over, or once it has gone 90% of
  ``stale_after_s`` without renewing (a stalled process), which is before anyone else may
  judge it dead; the block then ends with ``RootLost`` rather than as if it had finished.
  Writes made for the run by other processes (Ray workers) are fenced only where that
  process follows the hold (``follow_hold`` with the token ``hold_root`` yields): each of its
  writes under the root then first reads the lock and stops (``RootLost``) once it is not
  this run's; it cannot see the holder's failed heartbeats until the lock changes hands.
- On object stores that ignore conditional writes (``If-None-Match``), two runs starting in
  the same instant can both believe they hold the root; AWS S3 honours it.
- A command takes the hold before it starts Prefect and Ray, so of two started together the
  loser is refused before it has done anything; the flow it then runs, in the same process and
  for the same run, carries on under that hold (``hold_root`` of a run this process already holds
  the root for yields the same token and neither takes nor frees the lock). A flow started
  another way (a deployment) takes the lock itself, as its first step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import fsspec

from sleepsound.core.records import RootHold
from sleepsound.core.storage import (
    RootLike,
    RootLost,
    StorageRoot,
    create_bytes_exclusive,
    fenced,
    is_fenced,
    join,
    open_root,
    path_key,
    write_bytes_atomic,
)

__all__ = ["RootBusy", "RootLost", "follow_hold", "hold_root", "holder", "lock_path"]

LOCK = "lock.json"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
CLAIM_STALE_S = 60.0  # a takeover takes milliseconds: an older claim was left by a run that died in it
LEASE_FRACTION = 0.9  # a holder stops writing this far into stale_after_s without a renewal: margin for slow clocks
UNREADABLE = "(unknown: lock file empty or unreadable)"


class RootBusy(RuntimeError):
    """Another run holds the storage root."""


# The holds this process has taken, by lock (protocol, path): the run, the token it yielded and how to
# ask whether it still holds, so a flow run for that run in this process carries on under it.
_HELD: dict[tuple[str, str], tuple[str, RootHold, Callable[[], str | None]]] = {}
_HELD_LOCK = threading.Lock()


def lock_path(root_path: str) -> str:
    return join(root_path, "state", LOCK)


def _now() -> datetime:
    return datetime.now(UTC)


def _boot_id() -> str | None:
    """This kernel since it booted: the hostname alone does not tell two machines (or VMs) apart."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip() or None
    except OSError:  # no /proc (macOS): the hostname and pid are all there is
        return None


def _pid_ns() -> int | None:
    """This process's PID namespace: containers sharing a hostname (host networking) have their own."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _started(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, /proc/<pid>/stat field 22), to tell a reused pid
    from the process that held the lock; None when unknown (gone, no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            stat = handle.read()
        return int(stat[stat.rindex(")") + 2 :].split()[19])  # after "pid (comm) ": fields 3 onwards
    except (OSError, ValueError, IndexError):
        return None


def _record(run_id: str, purpose: str, acquired: str) -> bytes:
    """The lock's content: who holds it, for people and for the holder to recognise its own lock.

    ``heartbeat`` is the holder's wall clock, shown to people only: staleness is judged by the
    storage's modification time of the file. ``boot_id``, ``pid_ns`` and ``started`` say which
    process on which kernel ``pid`` is, so only a run that can see it judges it dead at once.
    """
    return json.dumps(
        {
            "run_id": run_id,
            "purpose": purpose,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "boot_id": _boot_id(),
            "pid_ns": _pid_ns(),
            "started": _started(os.getpid()),
            "acquired": acquired,
            "heartbeat": _now().isoformat(),
        }
    ).encode()


def _is_this_attempts(raw: bytes | None, record: bytes) -> bool:
    """True when ``raw`` (what the storage holds) is ``record``, this attempt's own: a create whose answer
    was lost after the storage made it is retried and refused (the file exists), yet it is ours."""
    if raw is None:
        return False
    if raw == record:
        return True
    found, mine = _parse(raw), _parse(record)
    return all(found.get(key) == mine.get(key) for key in ("run_id", "acquired", "pid", "host"))


def _read(fs: fsspec.AbstractFileSystem, path: str) -> bytes | None:
    try:
        return bytes(fs.cat_file(path))
    except FileNotFoundError:
        return None


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        record = json.loads(raw)
    except ValueError:  # created and not (yet) written: its age is the file's
        return {"run_id": UNREADABLE, "purpose": "unknown"}
    return record if isinstance(record, dict) else {"run_id": UNREADABLE, "purpose": "unknown"}


def holder(root: RootLike) -> dict[str, Any] | None:
    """The current lock record, or None when the root is free."""
    fs, root_path = open_root(root)
    raw = _read(fs, lock_path(root_path))
    return None if raw is None else _parse(raw)


def _modified(fs: fsspec.AbstractFileSystem, path: str) -> float | None:
    """When the storage last wrote ``path`` (seconds since the epoch, by the storage's clock); None if absent."""
    fs.invalidate_cache(path)  # s3fs answers from its listing cache otherwise
    try:
        stamp = fs.modified(path)
    except FileNotFoundError:
        return None
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()


def _storage_now(fs: fsspec.AbstractFileSystem, folder: str) -> float:
    """The storage's clock now: the modification time of a probe file written (and removed) in ``folder``.

    The same clock stamped the lock, so on local disk, NFS and S3 alike the lock's age needs no
    two hosts' clocks to agree.
    """
    probe = join(folder, f".clock-{uuid.uuid4().hex}")
    fs.pipe_file(probe, b"")
    try:
        stamp = _modified(fs, probe)
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(probe)
    if stamp is None:
        raise OSError(f"{probe} vanished as it was written: cannot read the storage's clock")
    return stamp


def _age_s(fs: fsspec.AbstractFileSystem, path: str) -> float | None:
    """Seconds since the storage last wrote ``path``; None when it is gone."""
    modified = _modified(fs, path)
    if modified is None:
        return None
    return max(0.0, _storage_now(fs, os.path.dirname(path)) - modified)


def _died_here(record: dict[str, Any]) -> bool:
    """True when the holder ran where this process can see it and its process is gone (killed,
    crashed) or its pid now names another process: no need to wait for its lock to go stale.

    "Where" is the hostname, the boot id and the PID namespace, all three this process's: containers
    with host networking share a hostname, and from another PID namespace a live holder's pid looks
    gone. A holder elsewhere only goes stale. A record written before boot id and namespace were
    kept is judged by hostname and pid alone, as then.
    """
    pid = record.get("pid")
    if record.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    if ("boot_id" in record or "pid_ns" in record) and (record.get("boot_id"), record.get("pid_ns")) != (
        _boot_id(),
        _pid_ns(),
    ):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's: the holder, unless its pid was reused
        pass
    started = record.get("started")
    if not isinstance(started, int):
        return False
    now = _started(pid)
    return now is not None and now != started


def _refuse_if_live(store: StorageRoot, current: dict[str, Any], age_s: float, stale_after_s: float) -> None:
    if age_s < stale_after_s and not _died_here(current):
        raise RootBusy(
            f"{store.uri} is in use by run {current.get('run_id')!r} ({current.get('purpose')}, "
            f"on {current.get('host')}, since {current.get('acquired')}); wait for it to finish. "
            f"If that run died, its lock expires {stale_after_s:.0f} s after it was last renewed "
            f"({age_s:.0f} s ago by the storage's clock), or remove {lock_path(store.path)}"
        )


def _take_over(fs: fsspec.AbstractFileSystem, path: str, dead: bytes, record: bytes) -> bool:
    """Replace the dead run's lock (its bytes ``dead``) with ``record``; False when another run won.

    Every run that judged the same lock dead races to create one claim named after its bytes;
    the winner checks the lock is still those bytes (a winner before it has removed its claim
    only after writing its own lock), replaces it, and removes the claim.
    """
    claim = f"{path}.takeover-{hashlib.sha256(dead).hexdigest()[:16]}"
    try:
        create_bytes_exclusive(fs, claim, record)
    except FileExistsError:
        if _is_this_attempts(_read(fs, claim), record):  # ours: its answer was lost and the retry refused
            return _replace(fs, path, claim, dead, record)
        age = _age_s(fs, claim)
        if age is not None and age > CLAIM_STALE_S:  # its taker died mid-takeover
            with contextlib.suppress(FileNotFoundError):
                fs.rm_file(claim)
        return False
    return _replace(fs, path, claim, dead, record)


def _replace(fs: fsspec.AbstractFileSystem, path: str, claim: str, dead: bytes, record: bytes) -> bool:
    """With the claim made: replace the lock if it still holds ``dead``, then remove the claim."""
    try:
        if _read(fs, path) != dead:
            return False
        write_bytes_atomic(fs, path, record, fence=False)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(claim)


def _acquire(store: StorageRoot, path: str, record: bytes, stale_after_s: float) -> None:
    """Create the lock, or take over a dead run's; RootBusy when a live run (or a faster taker) has it.

    ``record`` is built once for the attempt, so a lock (or claim) holding it is known to be this
    attempt's own even when the storage's answer to creating it was lost.
    """
    for _ in range(3):  # the lock may vanish (holder finished) or change hands between the steps
        try:
            create_bytes_exclusive(store.fs, path, record)
            return
        except FileExistsError:
            pass
        raw = _read(store.fs, path)
        if _is_this_attempts(raw, record):  # created by us: the answer was lost, and the retry refused
            return
        age = None if raw is None else _age_s(store.fs, path)
        if raw is None or age is None or _read(store.fs, path) != raw:
            continue  # the lock changed while its age was read: the age may be another record's
        _refuse_if_live(store, _parse(raw), age, stale_after_s)
        if _take_over(store.fs, path, raw, record):
            return
        time.sleep(0.05)  # the winner writes its lock within milliseconds: then it is named below
    current = holder(store) or {}
    raise RootBusy(
        f"{store.uri}: another run took over the expired lock first "
        f"(now held by {current.get('run_id', 'nobody')!r}); try again"
    )


def _is_mine(raw: bytes | None, run_id: str, acquired: str) -> bool:
    record = {} if raw is None else _parse(raw)
    return (record.get("run_id"), record.get("acquired")) == (run_id, acquired)


@contextlib.contextmanager
def hold_root(
    root: RootLike, run_id: str, purpose: str, stale_after_s: float = STALE_AFTER_S, heartbeat_s: float = HEARTBEAT_S
) -> Iterator[RootHold]:
    """Hold the root for the duration of the block; RootBusy when a live run holds it.

    While held, this process's writes under the root raise RootLost once the hold is lost
    (see the module's notes), and so does the end of the block. When this process already holds the
    root for ``run_id`` (the command line took it before starting the flow), the block runs under
    that hold: the same token, no lock taken or freed here, RootLost at its end if it was lost.
    """
    store = open_root(root)
    fs, path = store.fs, lock_path(store.path)
    key = path_key(fs, path)
    with _HELD_LOCK:
        outer = _HELD.get(key)
    if outer is not None and outer[0] == run_id:
        yield outer[1]
        reason = outer[2]()
        if reason is not None:
            raise RootLost(f"{reason}; what it wrote before is kept, rerun it to finish")
        return
    fs.makedirs(store.join("state"), exist_ok=True)
    acquired = _now().isoformat()
    hold: dict[str, Any] = {"renewed": time.monotonic(), "lost": None}  # renewed: when the last good write began
    _acquire(store, path, _record(run_id, purpose, acquired), stale_after_s)
    stop = threading.Event()

    def lost() -> str | None:
        """None while this run holds the root, else why not (the fence asks before every write)."""
        if hold["lost"] is None:
            silent = time.monotonic() - hold["renewed"]
            if silent > LEASE_FRACTION * stale_after_s:
                hold["lost"] = f"its lock was not renewed for {silent:.0f} s (another run may take it over)"
        return None if hold["lost"] is None else f"run {run_id!r} no longer holds {store.uri}: {hold['lost']}"

    def beat_loop() -> None:
        while not stop.wait(heartbeat_s):
            began = time.monotonic()
            if lost() is not None:
                return
            try:
                raw = _read(fs, path)
                if not _is_mine(raw, run_id, acquired):  # taken over after we stalled: never overwrite it
                    taker = "its lock file was removed" if raw is None else None
                    if taker is None:
                        current = _parse(raw or b"")
                        taker = f"run {current.get('run_id')!r} on {current.get('host')} took it over"
                    hold["lost"] = taker
                    return
                if stop.is_set():
                    return
                write_bytes_atomic(fs, path, _record(run_id, purpose, acquired), fence=False)
                hold["renewed"] = began
            except Exception as exc:  # any failure to renew ends the hold, with its cause
                hold["lost"] = f"its heartbeat could not be written: {exc}"
                return

    thread = threading.Thread(target=beat_loop, name="sleepsound-root-lock", daemon=True)
    thread.start()
    token: RootHold = {"run_id": run_id, "path": path, "acquired": acquired}
    with _HELD_LOCK:
        _HELD[key] = (run_id, token, lost)
    try:
        with fenced(fs, store.path, lost):
            yield token
        reason = lost()
    finally:
        with _HELD_LOCK:
            held = _HELD.get(key)
            if held is not None and held[1] is token:
                del _HELD[key]
        stop.set()
        thread.join(timeout=5)
        if _is_mine(_read(fs, path), run_id, acquired):
            with contextlib.suppress(OSError):  # a lock that cannot be removed expires after stale_after_s
                fs.rm_file(path)
    if reason is not None:
        raise RootLost(f"{reason}; what it wrote before is kept, rerun it to finish")


@contextlib.contextmanager
def follow_hold(root: RootLike, token: RootHold | None) -> Iterator[None]:
    """Fence this process's writes under ``root`` by another process's hold (``token``: what hold_root yielded).

    For a worker (a Ray task) writing for the run that holds the root: before each write under
    the root it reads the lock (one small read: a GET on S3) and raises RootLost once the lock is
    gone or another run's, so a worker never writes over a run that took the root over. No token
    (a task called outside a flow), or a process that holds the root itself (a task run in the
    flow's own process): nothing to add.
    """
    store = open_root(root)
    if token is None or is_fenced(store.fs, store.path):
        yield
        return
    path = lock_path(store.path)
    run_id, acquired = token["run_id"], token["acquired"]

    def lost() -> str | None:
        raw = _read(store.fs, path)
        if _is_mine(raw, run_id, acquired):
            return None
        other = None if raw is None else _parse(raw).get("run_id")
        now = "its lock file was removed" if raw is None else f"the lock is now held by run {other!r}"
        return f"run {run_id!r} no longer holds {store.uri}: {now}"

    with fenced(store.fs, store.path, lost):
        yield
