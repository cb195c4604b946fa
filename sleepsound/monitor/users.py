"""Dashboard users: named logins with salted, slow password hashes at rest, and failed-login limits.

The users file is ``monitor/users.json`` in the storage root (the service's own folder), written
by ``sleepsound monitor users add|remove`` and read by the server at each login, so a user added
or removed takes effect without a restart. It holds, per name, one string
``scrypt$<n>$<r>$<p>$<salt hex>$<hash hex>``: scrypt from the standard library (n = 2^14, r = 8,
p = 1: about 50 ms and 16 MiB per guess), a random 16-byte salt per password, the parameters
stored beside the hash so they can be raised later without breaking old entries. The file is
mode 0600, rewritten atomically (aside, then renamed) under a lock, and never holds a password.

Checking a password costs the same whether the name exists or not (an unknown name is checked
against a dummy hash) and compares digests in constant time (``hmac.compare_digest``), so
neither timing nor messages tell which names exist. ``FailedLogins`` refuses further attempts
for a name, or from an address (the operator token: per address), after too many failures in a
window, reserving each attempt before the password is checked so concurrent guesses count too:
an online guesser gets a handful of tries per quarter hour, not thousands.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

log = logging.getLogger(__name__)
USERS_FILE = "users.json"  # under <root>/monitor/
NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
MIN_PASSWORD = 10
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MAX_MEM = 64 * 2**20


class UserRecord(TypedDict):
    """One user as kept at rest: the password's scrypt hash string and when it was set."""

    hash: str
    created: float


def users_path(root_path: str | Path) -> Path:
    """Where a local storage root keeps its dashboard users."""
    return Path(root_path) / "monitor" / USERS_FILE


def hash_password(password: str) -> str:
    """A fresh salted scrypt hash of ``password`` (parameters included)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=MAX_MEM, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


_DUMMY = hash_password(secrets.token_urlsafe(16))  # what an unknown name is checked against


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time compare; a malformed entry never matches)."""
    try:
        kind, n, r, p, salt, expected = stored.split("$")
        if kind != "scrypt":
            return False
        digest = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), maxmem=MAX_MEM, dklen=32
        )
    except ValueError:
        return False
    return hmac.compare_digest(digest.hex(), expected)


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise ValueError(f"user name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'")
    return name


def load_users(path: Path) -> dict[str, UserRecord]:
    """The users in ``path`` (none when it does not exist); a damaged file is an error naming it."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        users = data["users"]
        if not isinstance(users, dict) or not all(isinstance(u, dict) and "hash" in u for u in users.values()):
            raise ValueError("not a mapping of names to hashes")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a users file ({exc})") from None
    return users


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write(path: Path, users: dict[str, UserRecord]) -> None:
    aside = path.with_suffix(".json.partial")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"format": 1, "users": users}, handle, indent=1, sort_keys=True)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(aside, 0o600)
    os.replace(aside, path)


def add_user(path: Path, name: str, password: str) -> bool:
    """Add ``name`` or set its password; True when the name is new."""
    check_name(name)
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password needs at least {MIN_PASSWORD} characters")
    record: UserRecord = {"hash": hash_password(password), "created": time.time()}
    with _locked(path):
        users = load_users(path)
        new = name not in users
        users[name] = record
        _write(path, users)
    return new


def remove_user(path: Path, name: str) -> bool:
    """Remove ``name``; False when there was no such user."""
    with _locked(path):
        users = load_users(path)
        if name not in users:
            return False
        del users[name]
        _write(path, users)
    return True


class UserStore:
    """The server's view of the users file: re-read when it changes (so ``users add`` needs no restart)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, UserRecord] = {}
        self._damaged = False
        self._lock = threading.Lock()

    def users(self) -> dict[str, UserRecord]:
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._users = load_users(self.path) if stamp is not None else {}
                    self._damaged = False
                except ValueError as exc:  # fail closed: keep the last good users, and the dashboard shut
                    log.error("%s; keeping the users read before", exc)
                    self._damaged = True
            return self._users

    def any(self) -> bool:
        """Whether logins are configured (a damaged users file counts: the dashboard stays shut)."""
        return bool(self.users()) or self._damaged

    def verify(self, name: str, password: str) -> bool:
        """Whether ``name`` is a user with ``password``; as slow for an unknown name as for a known one."""
        record = self.users().get(name)
        ok = verify_password(password, record["hash"] if record else _DUMMY)
        return ok and record is not None


# The attempt ``FailedLogins.wait`` reserved for the request being handled (its keys and time): the
# login handler calls wait, then failed or succeeded, in one task, so each sees its own reservation.
_ATTEMPT: ContextVar[tuple[tuple[str, ...], float] | None] = ContextVar("login_attempt", default=None)


@dataclass
class FailedLogins:
    """Failed logins per key (a user name, a client address, the operator token from an address) over a
    sliding window: after ``limit`` failures inside ``window_s`` the key is refused until the oldest
    failure leaves the window.

    Why attempts are reserved: ``wait`` counts the attempt as a failure *before* the password is
    checked (atomically with the check of the limit), ``failed`` keeps it and ``succeeded`` takes it
    back; otherwise 30 guesses sent at once all pass ``wait`` before the first failure is recorded.
    Why the token is counted per address: a bare ``token`` key (the operator-token login) is scoped
    to the address it comes with, so a guesser elsewhere cannot lock the operator out.
    """

    limit: int = 5
    window_s: float = 900.0
    address_factor: int = 4  # an address (``address:...`` keys) may fail this many times more: a ward shares one
    max_keys: int = 10_000  # a flood of names: the oldest keys are forgotten rather than grow without bound
    _seen: dict[str, list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def _scoped(keys: tuple[str, ...]) -> tuple[str, ...]:
        address = next((k for k in keys if k.startswith("address:")), None)
        if address is None:
            return keys
        return tuple(f"token:{address.removeprefix('address:')}" if k == "token" else k for k in keys)

    def wait(self, *keys: str) -> float:
        """0 when these keys may try now (the attempt is then reserved, counted as a failure until
        ``succeeded``), else the seconds until they may (nothing reserved)."""
        keys = self._scoped(keys)
        now = time.monotonic()
        longest = 0.0
        with self._lock:
            for key in keys:
                recent = [t for t in self._seen.get(key, []) if now - t < self.window_s]
                if recent:
                    self._seen[key] = recent
                else:
                    self._seen.pop(key, None)
                limit = self.limit * (self.address_factor if key.startswith("address:") else 1)
                if len(recent) >= limit:
                    longest = max(longest, recent[-limit] + self.window_s - now)
            if longest > 0:
                _ATTEMPT.set(None)
                return longest
            if len(self._seen) > self.max_keys:
                for key in sorted(self._seen, key=lambda k: self._seen[k][-1])[: self.max_keys // 2]:
                    del self._seen[key]
            for key in keys:
                self._seen.setdefault(key, []).append(now)
        _ATTEMPT.set((keys, now))
        return 0.0

    def failed(self, *keys: str) -> None:
        """The attempt failed: the reservation ``wait`` made stands (keys not reserved are counted now)."""
        keys = self._scoped(keys)
        attempt = _ATTEMPT.get()
        _ATTEMPT.set(None)
        reserved = attempt[0] if attempt else ()
        now = time.monotonic()
        with self._lock:
            for key in keys:
                if key not in reserved:
                    self._seen.setdefault(key, []).append(now)

    def succeeded(self, *keys: str) -> None:
        """The attempt succeeded: its reservation is taken back, and ``keys`` (the name) start afresh."""
        attempt = _ATTEMPT.get()
        _ATTEMPT.set(None)
        with self._lock:
            if attempt is not None:
                reserved, stamp = attempt
                for key in reserved:
                    stamps = self._seen.get(key)
                    if stamps and stamp in stamps:
                        stamps.remove(stamp)
                        if not stamps:
                            del self._seen[key]
                keys = self._scoped((*keys, *(k for k in reserved if k.startswith("address:"))))
            for key in keys:
                if not key.startswith("address:"):
                    self._seen.pop(key, None)
