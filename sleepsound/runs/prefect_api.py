"""A local Prefect API for the command line's runs, state under the project.

The ephemeral in-process server would be started again inside every Ray worker (slow,
and its logs never reach the flow's run). One real server on loopback, announced via
``PREFECT_API_URL`` before Ray starts, is shared by the flow and all its workers.
Nothing here imports Prefect: the variables must be set before Prefect reads them.

Starting that server is most of a short command's fixed cost (about 6 s on an idle 2-core
machine, 20 s on a busy one), so the command line keeps it: the server runs under a small
keeper process (``python -m sleepsound.runs.prefect_api``) that stops it once no command has
used it for ``keep_s`` seconds. The next command finds it through ``<home>/server.json`` and
its health check, and starts a new one when it is gone. Commands mark their use by touching
``<home>/last-used`` while they run, so a long run is never cut off.

The terminal stays quiet through the level of Prefect's console handler, not of its loggers: those
also feed the API handler, and a run's INFO records (counts, reason codes, promotion scores) belong
in its logs in Prefect.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from sleepsound.core.ports import free_port

OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Prefect's console handler (logging.yml ``handlers.console.level``); its loggers stay at INFO for the API
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
}
_TOUCH_EVERY_S = 20.0
_LOGS_DRAIN_S = 5.0  # Prefect's own bound for a flush; a log worker stuck longer is not waited for
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_SIGTERM = int(signal.SIGTERM)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _server_command(port: int) -> list[str]:
    return [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def _dies_with_this_process() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send the child SIGTERM when this process dies (Linux), or None.

    The command's own server runs in a session of its own, out of reach of the terminal's Ctrl-C (SIGINT
    goes to the whole foreground process group: it stopped before it was handed the run's pending logs).
    Out of that group, a command killed outright (SIGKILL to its group) no longer takes it along; this
    does. The signal follows the thread that started the server: ``local_prefect_api`` is entered on the
    main thread. The function runs between fork and exec, so it only calls what was looked up before.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, _SIGTERM)
        if os.getppid() != parent:  # this process died before the request: nothing would signal it
            os._exit(1)

    return preexec


def _wait_healthy(url: str, proc: subprocess.Popen, home: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"local Prefect server did not start; see {home / 'server.log'}")
        time.sleep(0.25)


@contextlib.contextmanager
def local_prefect_api(home: Path, timeout_s: float = 90.0, keep_s: float = 0.0) -> Iterator[str]:
    """Yield an API URL: the user's ``PREFECT_API_URL`` if set, else a server on loopback.

    ``keep_s`` 0: the server is started for the body and stopped after it. Above 0: a kept server
    is reused (or started) and left running until it has been idle for ``keep_s`` seconds.
    """
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    existing = os.environ.get("PREFECT_API_URL")
    if existing:
        yield existing
        return
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home))
    if keep_s > 0:
        with _kept_server(home, timeout_s, keep_s) as url:
            yield url
        return
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = (home / "server.log").open("ab")
    tie = _dies_with_this_process()
    proc = subprocess.Popen(
        _server_command(port),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "PREFECT_HOME": str(home)},
        start_new_session=tie is not None,  # Ctrl-C reaches the command, not its server; only where it is tied
        preexec_fn=tie,
    )
    try:
        _wait_healthy(url, proc, home, timeout_s)
        os.environ["PREFECT_API_URL"] = url
        yield url
    finally:
        _send_pending_logs()
        os.environ.pop("PREFECT_API_URL", None)
        _stop(proc)
        log.close()


def _send_pending_logs() -> None:
    """Hand the run logs Prefect still holds to the server while it is up.

    Prefect's API log handler sends them in batches (every 2 s) and at the latest at exit: by then a
    server stopped after the command (``keep_s`` 0) was gone, and the failed run's last records ended
    as "--- Error logging to API ---" on the console, under the command's own error line.
    """
    handlers = sys.modules.get("prefect.logging.handlers")
    if handlers is None:  # Prefect never loaded here: nothing was logged to the API
        return
    handlers.APILogWorker.drain_all(timeout=_LOGS_DRAIN_S)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextlib.contextmanager
def _kept_server(home: Path, timeout_s: float, keep_s: float) -> Iterator[str]:
    used = home / "last-used"
    used.touch()
    with _locked(home / "server.lock"):  # two commands starting at once share one server
        url = _running_url(home)
        if url is None:
            url = _start_keeper(home, timeout_s, keep_s)
        used.touch()  # a server that took long to start is not idle yet
    os.environ["PREFECT_API_URL"] = url
    stop = threading.Event()

    def mark_use() -> None:
        while not stop.wait(min(_TOUCH_EVERY_S, keep_s / 4)):
            used.touch()

    marker = threading.Thread(target=mark_use, name="sleepsound-prefect-use", daemon=True)
    marker.start()
    try:
        yield url
    finally:
        _send_pending_logs()  # before the last mark of use: the keeper never stops a server owed logs
        stop.set()
        marker.join(timeout=5)
        used.touch()
        os.environ.pop("PREFECT_API_URL", None)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _running_url(home: Path) -> str | None:
    """The kept server's URL when its record is readable and it answers its health check."""
    try:
        record = json.loads((home / "server.json").read_text())
        url = str(record["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if url.startswith("http://127.0.0.1:") and _healthy(url) else None


def _start_keeper(home: Path, timeout_s: float, keep_s: float) -> str:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    with (home / "server.log").open("ab") as log:
        keeper = subprocess.Popen(
            [sys.executable, "-m", "sleepsound.runs.prefect_api", "--home", str(home), "--port", str(port)]
            + ["--keep-s", str(keep_s)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PREFECT_HOME": str(home)},
            start_new_session=True,  # outlives this command, and its Ctrl-C
        )
    _wait_healthy(url, keeper, home, timeout_s)
    (home / "server.json").write_text(json.dumps({"url": url, "keeper_pid": keeper.pid, "keep_s": keep_s}))
    return url


def keep(home: Path, port: int, keep_s: float) -> int:
    """The keeper: run the server until nothing has touched ``<home>/last-used`` for ``keep_s`` seconds
    (or the server dies, or the keeper is told to stop); then stop it and forget its record.

    Idleness is checked again under the lock that starting commands take, after they mark their use:
    a command either sees the record gone (and starts a server) or is seen by the keeper."""
    used = home / "last-used"
    server = subprocess.Popen(_server_command(port), env={**os.environ, "PREFECT_HOME": str(home)})
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())

    def idle() -> bool:
        try:
            return time.time() - used.stat().st_mtime >= keep_s
        except OSError:
            return True

    try:
        while not stopping.wait(min(10.0, keep_s / 4)) and server.poll() is None:
            if idle():
                with _locked(home / "server.lock"):
                    if idle():
                        _forget(home)
                        break
    finally:
        with _locked(home / "server.lock"):
            _forget(home)
            _stop(server)
    return 0


def _forget(home: Path) -> None:
    """Remove the server's record if it is this keeper's."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads((home / "server.json").read_text()).get("keeper_pid") == os.getpid():
            (home / "server.json").unlink()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Keep a local Prefect server while commands use it.")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keep-s", type=float, required=True)
    args = parser.parse_args()
    sys.exit(keep(args.home, args.port, args.keep_s))
