"""The command line's local Prefect API: kept between commands, stopped once idle."""

import json
import os
import time
import urllib.request
from pathlib import Path

import pytest

from sleepsound.runs.prefect_api import _healthy, local_prefect_api


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
