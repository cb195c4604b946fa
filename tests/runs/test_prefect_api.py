"""The command line's local Prefect API: kept between commands, stopped once idle."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from sleepsound.runs.prefect_api import OFFLINE_ENV, _healthy, local_prefect_api


@pytest.fixture
def no_api_url(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)


def _wait(check, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.25)
    return False


def _ended(pid: int) -> bool:
    """Gone, or a zombie (the keeper is this test's child; a command's keeper is adopted by init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_a_kept_server_serves_the_next_command_then_stops_when_idle(tmp_path: Path, no_api_url) -> None:
    home = tmp_path / "prefect"
    with local_prefect_api(home, keep_s=2) as url:
        assert _healthy(url) and os.environ["PREFECT_API_URL"] == url
    assert "PREFECT_API_URL" not in os.environ
    assert _healthy(url)  # still there for the next command
    started = time.monotonic()
    with local_prefect_api(home, keep_s=2) as again:
        assert again == url and time.monotonic() - started < 2  # reused: no server boot
        time.sleep(3)  # longer than keep_s, but in use: the keeper must not stop it
        with urllib.request.urlopen(f"{again}/health", timeout=2) as response:
            assert response.status == 200
    record = json.loads((home / "server.json").read_text())
    assert _wait(lambda: not _healthy(url), 20), "an idle kept server must stop"
    assert not (home / "server.json").exists()
    assert _wait(lambda: _ended(record["keeper_pid"]), 10)


# A command's body, cut short: it opens a server of its own (keep_s 0) and waits; the hand-over of
# pending logs is timed and asks the server for its health first (Prefect is never loaded here).
_COMMAND = """
import os, sys, time
from pathlib import Path
import sleepsound.runs.prefect_api as api
def hand_over():
    time.sleep(1)  # a real hand-over takes a while: a server that was signalled too is gone by now
    print("handed over:", api._healthy(os.environ["PREFECT_API_URL"]), flush=True)
api._send_pending_logs = hand_over
with api.local_prefect_api(Path(sys.argv[1]), keep_s=0) as url:
    print("serving", os.getpid(), flush=True)
    time.sleep(600)
"""


def _server_of(pid: int) -> int:
    """The pid of the Prefect server that process ``pid`` started."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == pid and b"server" in cmdline and b"start" in cmdline:
            return int(stat.parent.name)
    raise AssertionError(f"process {pid} started no Prefect server")


def _interruptible() -> None:
    """In the command, before it starts: SIGINT handled and not blocked, as a terminal starts a command.
    A child inherits an ignored or blocked SIGINT, and in the suite's Prefect group worker the command
    never saw its Ctrl-C (it slept on past the test's bound, printing nothing)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _signal_state(pid: int) -> str:
    """The process's blocked and ignored signal masks, for a failure's message."""
    return " ".join(
        line.strip()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith(("SigBlk", "SigIgn"))
    )


def _start_command(home: Path) -> tuple[subprocess.Popen[str], int]:
    """The command in a process group of its own, as a terminal runs it; returns it and its server's pid."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])  # this copy's packages
    command = subprocess.Popen(
        [sys.executable, "-c", _COMMAND, str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
        preexec_fn=_interruptible,
    )
    line = command.stdout.readline()  # the server answers its health check before the body starts
    assert line.startswith("serving"), line + command.stdout.read()
    return command, _server_of(command.pid)


# Both start a Prefect server of their own: in the Prefect group, at the usual priority (at the lowest,
# beside the group's flows on 2 cores, the server's start and stop took past a minute).
@pytest.mark.prefect
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the server is tied to its command on Linux")
def test_ctrl_c_leaves_the_commands_own_server_up_for_its_logs_then_stops_it(tmp_path: Path) -> None:
    """SIGINT goes to the terminal's whole foreground process group: the command's own server was in it,
    died with the Ctrl-C before it was handed the run's pending logs, and the command ended with an
    unexpected "ConnectError: Connection refused" instead of its interruption."""
    command, server = _start_command(tmp_path / "prefect")
    state = _signal_state(command.pid)
    os.killpg(command.pid, signal.SIGINT)
    try:
        out, _ = command.communicate(timeout=180)  # a bound, not a speed test: the server's stop waits up to 20 s
    except subprocess.TimeoutExpired:
        command.kill()
        raise AssertionError(f"the command did not end on SIGINT ({state})") from None
    assert "handed over: True" in out, out
    assert "KeyboardInterrupt" in out and "ConnectError" not in out, out
    assert _wait(lambda: _ended(server), 60), "the command stops its server after the hand-over"


@pytest.mark.prefect
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the server is tied to its command on Linux")
def test_a_command_killed_outright_leaves_no_server_behind(tmp_path: Path) -> None:
    """Out of the command's process group, its server is no longer killed with the group: the kernel
    tells it to stop when the command dies (SIGKILL runs no ``finally``)."""
    command, server = _start_command(tmp_path / "prefect")
    os.killpg(command.pid, signal.SIGKILL)
    command.communicate(timeout=30)
    assert _wait(lambda: _ended(server), 30), f"Prefect server {server} outlived its command"


_A_RUN = """
from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

@task
def count() -> int:
    get_run_logger().info("counted 3 nights, 1 quarantined")
    return 3

@flow
def night() -> str:
    count()
    return flow_run.get_id()

print(night())
"""


def test_a_tasks_info_logs_reach_the_api_and_not_the_terminal(prefect_api: str, tmp_path: Path) -> None:
    """``PREFECT_LOGGING_LEVEL=WARNING`` kept the terminal quiet by filtering Prefect's run loggers
    themselves: the API handler behind them never saw a count or a promotion score either."""
    env = {**os.environ, **OFFLINE_ENV, "PREFECT_API_URL": prefect_api}
    out = subprocess.run(
        [sys.executable, "-c", _A_RUN], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr
    assert "counted" not in out.stdout + out.stderr and "INFO" not in out.stderr, out.stderr
    query = {"logs": {"flow_run_id": {"any_": [out.stdout.split()[-1]]}}, "limit": 200, "offset": 0}
    request = urllib.request.Request(
        f"{prefect_api}/logs/filter", data=json.dumps(query).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        logged = [(log["level"], log["message"]) for log in json.load(response)]
    assert (20, "counted 3 nights, 1 quarantined") in logged, logged
