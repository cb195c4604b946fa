"""Copy an object from storage to local disk so that a partial copy is never taken for a whole one.

Object stores fail transiently at cohort scale (throttling, dropped connections, a
proxy timing out). Each download lands under a temporary name, is checked against the
object's size and, where the store gives one, its MD5 (a plain S3 ETag), and only then
renamed into place. Transient failures are retried with exponential backoff and jitter;
permanent ones (no such object, no permission) fail at once with the object's name.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import re
import time
from dataclasses import dataclass

import fsspec

log = logging.getLogger(__name__)
_CHUNK = 8 << 20
_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})"?$')  # multipart ETags ("...-N") are not an MD5


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 20.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Backoff before retry ``attempt`` (1-based): doubling, capped, with full jitter's upper half."""
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return rng.uniform(ceiling / 2, ceiling)


class IncompleteDownload(OSError):
    """The bytes that arrived are not the object (short, or a checksum mismatch); worth retrying."""


def is_transient(exc: BaseException) -> bool:
    """Errors a retry may cure: network and throttling; not a missing object or a refusal."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    return isinstance(exc, (OSError, TimeoutError, ConnectionError)) or type(exc).__module__.startswith(
        ("aiohttp", "botocore", "urllib3")
    )


def _md5(path: str) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _expected(fs: fsspec.AbstractFileSystem, path: str) -> tuple[int, str | None]:
    info = fs.info(path)
    match = _MD5_ETAG.match(str(info.get("ETag") or info.get("etag") or ""))
    return int(info["size"]), match.group(1) if match else None


def download(uri: str, local: str, policy: RetryPolicy = RetryPolicy(), seed: int | None = None) -> str:
    """Copy ``uri`` to ``local`` (verified, atomic); returns ``local``."""
    fs, path = fsspec.core.url_to_fs(uri)
    rng = random.Random(seed)
    partial = f"{local}.part"
    for attempt in range(1, policy.attempts + 1):
        try:
            size, md5 = _expected(fs, path)
            fs.get_file(path, partial)
            got = os.path.getsize(partial)
            if got != size:
                raise IncompleteDownload(f"{uri}: download incomplete ({got} of {size} bytes)")
            if md5 is not None and _md5(partial) != md5:
                raise IncompleteDownload(f"{uri}: downloaded bytes do not match the object's MD5 (ETag)")
            os.replace(partial, local)
            return local
        except Exception as exc:
            if os.path.exists(partial):
                os.remove(partial)
            if not is_transient(exc) or attempt == policy.attempts:
                if isinstance(exc, OSError) and uri in str(exc):
                    raise
                kind = type(exc) if isinstance(exc, (FileNotFoundError, PermissionError)) else OSError
                raise kind(
                    f"{uri}: {type(exc).__name__}: {exc}" + (f" (after {attempt} attempts)" if attempt > 1 else "")
                ) from exc
            wait = policy.delay(attempt, rng)
            log.warning(
                "retrying %s in %.1f s after %s (attempt %d of %d)",
                uri,
                wait,
                type(exc).__name__,
                attempt,
                policy.attempts,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")
