"""Session-wide real services for the tests: one Prefect API, one S3 server, one Ray session.

Environment variables are set before Prefect or Ray start, because Ray workers inherit
the driver's environment at ``ray.init`` and Prefect reads its settings on import.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="sleepsound-tests-"))
# Each pytest process (the controller and every xdist worker) makes its own; removed when it exits,
# after the session fixtures have stopped the servers and Ray that wrote into it.
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)
os.environ.update(
    {
        "PREFECT_HOME": str(_SESSION_DIR / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "SLEEPSOUND_CACHE": str(_SESSION_DIR / "cache"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "TOKENIZERS_PARALLELISM": "false",
    }
)
os.environ.pop("PREFECT_API_URL", None)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API (moto's server) on loopback, reachable from Ray workers too."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def prefect_api(session_dir: Path) -> Iterator[str]:
    from sleepsound.runs.prefect_api import local_prefect_api

    with local_prefect_api(session_dir / "prefect") as url:
        yield url


@pytest.fixture(scope="session")
def ray_session(s3_endpoint: str, prefect_api: str) -> Iterator[None]:
    """One Ray session per test run, started after the endpoints are announced."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"AWS_ENDPOINT_URL": s3_endpoint, "PREFECT_API_URL": prefect_api}},
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_whisper(session_dir: Path) -> str:
    from sleepsound.models.backbones.tiny import save_tiny_random_backbone

    return str(save_tiny_random_backbone("whisper", session_dir / "tiny-whisper"))


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",  # the machine's closed network: no background connections
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module (Debian's, driven by Playwright; `make test` installs it),
    for the reports' and the dashboard's page tests. Not per session: Playwright's sync API keeps an
    event loop on this thread while it is open, and later tests call asyncio.run (sleepsound submit)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (as root: apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as play:
        chromium = play.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where page tests save screenshots: $SLEEPSOUND_TEST_ARTEFACTS when set, else a temporary folder."""
    folder = os.environ.get("SLEEPSOUND_TEST_ARTEFACTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


# Tests that start or join real Ray, or run flows against the Prefect API, are marked by the
# fixtures they use, so `pytest -m "not ray and not prefect"` runs the fast unit tests alone.
_MARKS_BY_FIXTURE = {"ray_session": "ray", "ray_head": "ray", "prefect_api": "prefect"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the group marks into the test ids
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, mark in _MARKS_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(mark)
        if item.get_closest_marker("ray") or item.get_closest_marker("prefect"):
            # Under pytest-xdist (`make test` runs two workers) every test of Ray or Prefect runs on one
            # worker, so a run keeps one Ray session and one Prefect API; the other tests share out.
            item.add_marker(pytest.mark.xdist_group("ray"))


# The Ray and Prefect group is the run's critical path, yet leaves about half the CPU idle while it waits on
# workers, servers and flows (measured alone: 593 s wall, 724 CPU-s on 2 cores). At equal priority the other
# worker's unit tests slowed it by about 250 s; at the lowest priority they take the idle CPU and yield the
# rest, even to Ray's workers, which Ray itself starts at niceness 15 (its raylet's `worker_niceness`).
OTHER_TESTS_NICENESS = 19


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under pytest-xdist, a test outside the Ray and Prefect group runs at lower priority; a test of the
    group at the usual one, set before its fixtures start Ray or Prefect. Linux keeps a priority per
    thread, and new threads and child processes inherit their creator's: every thread of the worker is
    set (torch's pools were made at the old one). Lowering is always allowed; raising again needs root,
    else the worker stays lower (as both were before)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    grouped = item.get_closest_marker("ray") or item.get_closest_marker("prefect")
    if grouped and item.config.getvalue("loadgroup") and not item.nodeid.endswith("@ray"):
        # Until 2026-12-06 the marks came after pytest-xdist had read them: both workers started a Ray session.
        pytest.fail(
            f"{item.nodeid} uses Ray or Prefect but is not in the 'ray' group of pytest-xdist "
            "(pytest 9.2 and later drop the group: see the test extra in pyproject.toml)"
        )
    want = 0 if grouped else OTHER_TESTS_NICENESS
    if os.getpriority(os.PRIO_PROCESS, 0) == want:
        return
    threads = [int(t) for t in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]
    for thread in threads:
        with contextlib.suppress(PermissionError, ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, thread, want)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A test that starts Ray without saying so (no ``ray_session``) would slip into the fast run: fail it.
    Prefect stops the temporary servers that flows run outside ``prefect_api`` start at exit, saying so at INFO
    (and at times warning that its events worker is still sending to one) on a stream pytest has closed by
    then: a "Logging error" traceback each. Once the session is over, only errors are logged."""
    import logging
    import sys

    logging.disable(logging.WARNING)
    markexpr = session.config.option.markexpr or ""
    ray = sys.modules.get("ray")
    if "not ray" in markexpr and ray is not None and ray.is_initialized():
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        print("\nRay was started by a test not marked 'ray': give it the ray_session fixture", file=sys.stderr)
