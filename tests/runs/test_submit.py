"""``sleepsound submit``: a flow runs as a Ray job on a separately started Ray head."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from sleepsound.runs.submit import _submit_when_agent_ready, entrypoint, job_environment
from sleepsound.synth.writers import generate_cohort


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory) -> Iterator[str]:
    """A Ray head of its own (not the test session's), in the foreground, stopped with its process group."""
    port, dashboard = _free_port(), _free_port()
    # The session's own Ray already holds the default agent ports (52365, ...): a second node on
    # this machine needs its own, or its job agent never starts ("No available agent").
    agent_ports = [
        f"--{name}={_free_port()}"
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "ray-client-server-port",
            "node-manager-port",
            "object-manager-port",
        )
    ]
    bin_dir = Path(sys.executable).parent  # the cluster's nodes have sleepsound on PATH, as in infra/
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    ray = bin_dir / "ray"
    proc = subprocess.Popen(
        [
            str(ray),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            f"--dashboard-port={dashboard}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=2",
            f"--temp-dir={tmp_path_factory.mktemp('rayhead')}",
            "--disable-usage-stats",
            *agent_ports,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        from ray.job_submission import JobSubmissionClient

        deadline = time.monotonic() + 90
        while True:
            try:
                JobSubmissionClient(address).list_jobs()
                break
            except Exception:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the test's Ray head did not come up") from None
                time.sleep(1)
        yield address
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:  # `ray start --block` rarely exits on SIGTERM in time; the head is throwaway, so kill it soon
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_entrypoint_and_environment() -> None:
    assert (
        entrypoint("run", ["--source", "s3://b/x y", "--set", "a.b=1"])
        == "sleepsound run --source 's3://b/x y' --set a.b=1"
    )
    with pytest.raises(ValueError, match="unknown flow"):
        entrypoint("validate", [])
    with pytest.raises(ValueError, match="leave --ray-address out"):
        entrypoint("run", ["--ray-address", "auto"])
    env = job_environment({"PREFECT_API_URL": "u", "AWS_ACCESS_KEY_ID": "k", "HOME": "/root", "SLEEPSOUND_X": "1"})
    assert env == {"PREFECT_API_URL": "u", "AWS_ACCESS_KEY_ID": "k", "SLEEPSOUND_X": "1"}


def test_submission_waits_for_a_starting_job_agent_but_not_for_other_refusals() -> None:
    answers = [RuntimeError("Request failed with status code 500: No available agent to submit job"), "raysubmit_1"]

    def submit() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    said: list[str] = []
    assert _submit_when_agent_ready(submit, "http://head:8265", said.append, wait_s=5, pause_s=0) == "raysubmit_1"
    assert said == ["the job agent at http://head:8265 is not ready yet; retrying"]

    def refuse() -> str:
        raise RuntimeError("Request failed with status code 400: bad runtime_env")

    with pytest.raises(RuntimeError, match="bad runtime_env"):
        _submit_when_agent_ready(refuse, "http://head:8265", said.append, wait_s=5, pause_s=0)

    def never_ready() -> str:
        raise RuntimeError("No available agent to submit job, please try again later..")

    with pytest.raises(RuntimeError, match="No available agent"):
        _submit_when_agent_ready(never_ready, "http://head:8265", said.append, wait_s=0, pause_s=0)


def test_submit_runs_a_flow_on_the_cluster_and_follows_its_logs(
    ray_head, tiny_whisper, prefect_api, tmp_path, monkeypatch
) -> None:
    from typer.testing import CliRunner

    from sleepsound.cli import app

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, n_subjects=3, hours=0.1, seed=4, sample_rate=16_000, part_seconds=360, cycle_minutes=6)
    root = tmp_path / "root"
    out = CliRunner().invoke(
        app,
        [
            "submit",
            "--address",
            ray_head,
            "run",
            "--source",
            str(cohort),
            "--root",
            str(root),
            "--run-id",
            "job",
            "--set",
            f"backbone.name={tiny_whisper}",
            "--set",
            "training.epochs=1",
            "--set",
            "training.test_fraction=0.34",
        ],
    )
    assert out.exit_code == 0, out.output[-3000:]
    assert "submitted run as Ray job" in out.output and "SUCCEEDED" in out.output
    assert "held-out figure" in out.output  # the flow's own summary, from the job's logs
    preds = pd.read_parquet(root / "runs" / "job" / "predictions")
    assert preds["recording_id"].nunique() == 3

    bad = CliRunner().invoke(
        app,
        [
            "submit",
            "--address",
            ray_head,
            "run",
            "--source",
            str(tmp_path / "nothing-here"),
            "--root",
            str(tmp_path / "root2"),
        ],
    )
    assert bad.exit_code == 1 and "FAILED" in bad.output
