"""``sleepsound submit``: a flow runs as a Ray job on a separately started Ray head."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from sleepsound.runs.submit import _submit_when_agent_ready, entrypoint, is_secret, job_environment, withheld_secrets
from sleepsound.synth.writers import generate_cohort


def _quiet_ports(count: int) -> list[int]:
    """Distinct free ports below the system's ephemeral range (32768 up on Linux): a port from
    ``free_port`` lies inside it, where any outgoing connection of the busy test session (its own
    Ray's gRPC above all) may take it in the seconds before the head binds it, and the head dies."""
    rng = random.Random()
    ports: set[int] = set()
    while len(ports) < count:
        port = rng.randrange(20000, 32000)  # above Ray's worker ports (10002-19999)
        try:
            with socket.socket() as probe:
                probe.bind(("0.0.0.0", port))
        except OSError:
            continue
        ports.add(port)
    return sorted(ports)


def _start_head(temp_dir: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``ray start --head --block`` on ports of its own; returns the process and its dashboard's
    address once the jobs API answers, or raises with the tail of the head's log."""
    # The session's own Ray already holds the default agent ports (52365, ...): a second node on
    # this machine needs its own, or its job agent never starts ("No available agent").
    names = (
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
        "ray-client-server-port",
        "node-manager-port",
        "object-manager-port",
    )
    port, dashboard, *others = _quiet_ports(len(names) + 2)
    bin_dir = Path(sys.executable).parent  # the cluster's nodes have sleepsound on PATH, as in infra/
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                str(bin_dir / "ray"),
                "start",
                "--head",
                "--block",
                f"--port={port}",
                f"--dashboard-port={dashboard}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                "--num-cpus=2",
                f"--temp-dir={temp_dir}",
                "--disable-usage-stats",
                *(f"--{name}={p}" for name, p in zip(names, others, strict=True)),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    address = f"http://127.0.0.1:{dashboard}"
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + 90
    while True:
        try:
            JobSubmissionClient(address).list_jobs()
            return proc, address
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                _stop(proc)
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the test's Ray head did not come up; its output ends:\n{tail}") from None
            time.sleep(1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the head's whole process group, which may already be gone."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:  # `ray start --block` rarely exits on SIGTERM in time; the head is throwaway, so kill it soon
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """A Ray head of its own (not the test session's), in the foreground, stopped with its process group.
    A head that dies while starting is started once more on other ports (CI saw one die, once)."""
    # A short folder of its own: Ray's Unix socket paths live under it and may not pass 107 bytes,
    # which pytest's temporary paths can (under pytest-xdist the head never came up).
    temp_dir = tempfile.mkdtemp(prefix="rayhead-")
    log = Path(temp_dir) / "head.log"
    try:
        try:
            proc, address = _start_head(temp_dir, log)
        except RuntimeError:
            proc, address = _start_head(temp_dir, log)
        try:
            yield address
        finally:
            _stop(proc)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_entrypoint_and_environment() -> None:
    assert (
        entrypoint("run", ["--source", "s3://b/x y", "--set", "a.b=1"])
        == "sleepsound run --source 's3://b/x y' --set a.b=1"
    )
    assert entrypoint("run", ["--source", "s"], debug=True) == "sleepsound --debug run --source s"
    # after the flow's name (where no flow takes it) it moves to where the CLI reads it
    assert entrypoint("run", ["--source", "s", "--debug"]) == "sleepsound --debug run --source s"
    with pytest.raises(ValueError, match="unknown flow"):
        entrypoint("validate", [])
    with pytest.raises(ValueError, match="leave --ray-address out"):
        entrypoint("run", ["--ray-address", "auto"])
    env = job_environment({"PREFECT_API_URL": "u", "AWS_DEFAULT_REGION": "r", "HOME": "/root", "SLEEPSOUND_X": "1"})
    assert env == {"PREFECT_API_URL": "u", "AWS_DEFAULT_REGION": "r", "SLEEPSOUND_X": "1"}


def test_secrets_and_this_machines_identity_stay_here_unless_named() -> None:
    here = {
        "PREFECT_API_URL": "http://prefect:4200/api",
        "PREFECT_API_KEY": "pnu_x",
        "PREFECT_API_AUTH_STRING": "admin:pw",
        "AWS_ACCESS_KEY_ID": "AKIA...",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_SESSION_TOKEN": "t",
        "AWS_PROFILE": "laptop",
        "AWS_DEFAULT_REGION": "eu-west-2",
        "AWS_ENDPOINT_URL_S3": "http://minio:9000",
        "SLEEPSOUND_TRAINING__EPOCHS": "3",
        "SLEEPSOUND_DB_PASSWORD": "pw",
        "SLEEPSOUND_MIRROR": "https://user:pw@mirror/x",
        "HF_HOME": "/hf",
        "DO_NOT_TRACK": "1",
        "GITHUB_TOKEN": "g",
    }
    assert job_environment(here) == {
        "PREFECT_API_URL": "http://prefect:4200/api",
        "AWS_DEFAULT_REGION": "eu-west-2",
        "AWS_ENDPOINT_URL_S3": "http://minio:9000",
        "SLEEPSOUND_TRAINING__EPOCHS": "3",
        "HF_HOME": "/hf",
        "DO_NOT_TRACK": "1",
    }
    assert withheld_secrets(here) == sorted(
        [
            "PREFECT_API_KEY",
            "PREFECT_API_AUTH_STRING",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "SLEEPSOUND_DB_PASSWORD",
            "SLEEPSOUND_MIRROR",
        ]
    )
    named = job_environment(here, forward_secrets=["PREFECT_API_KEY"])
    assert named["PREFECT_API_KEY"] == "pnu_x" and "AWS_SECRET_ACCESS_KEY" not in named
    assert "PREFECT_API_KEY" not in withheld_secrets(here, forward_secrets=["PREFECT_API_KEY"])
    with pytest.raises(ValueError, match="--forward-secret AWS_SECURITY_TOKEN: not set"):
        job_environment(here, forward_secrets=["AWS_SECURITY_TOKEN"])
    assert all(is_secret(n) for n in ("AWS_SECURITY_TOKEN", "X_API_KEY", "MY_CREDENTIALS", "X_SECRET_Y"))
    assert not any(is_secret(n) for n in ("AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "PREFECT_API_URL", "HF_HOME"))


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
            "--set",
            "training.snore_clips=[]",
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


def test_a_submitted_job_carries_no_secret_the_jobs_api_would_show(ray_head, monkeypatch) -> None:
    """The Jobs API serves a job's runtime environment to anyone who can reach the dashboard:
    only settings go there, secrets only when named, and then with a warning."""
    from ray.job_submission import JobSubmissionClient
    from typer.testing import CliRunner

    from sleepsound.cli import app

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIADONOTLEAK0000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak-aws-secret")
    monkeypatch.setenv("PREFECT_API_KEY", "do-not-leak-prefect-key")
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-2")

    def submit(*extra: str) -> tuple[str, str]:
        """A job that ends at once (the flow's --help): what matters is what it was given."""
        out = CliRunner().invoke(app, ["submit", "--address", ray_head, "--no-follow", *extra, "--", "run", "--help"])
        assert out.exit_code == 0, out.output[-3000:]
        return re.search(r"Ray job (\S+): SUCCEEDED", out.output).group(1), out.output

    def served(job_id: str) -> tuple[dict, str]:
        with urllib.request.urlopen(f"{ray_head}/api/jobs/{job_id}", timeout=30) as answer:
            body = answer.read().decode()
        return JobSubmissionClient(ray_head).get_job_info(job_id).runtime_env["env_vars"], body

    job_id, said = submit()
    env, body = served(job_id)
    assert "do-not-leak" not in body and "AKIADONOTLEAK" not in body
    assert env["PREFECT_API_URL"] == "http://prefect.example:4200/api" and env["AWS_DEFAULT_REGION"] == "eu-west-2"
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PREFECT_API_KEY"} & set(env)
    assert "not forwarding AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, PREFECT_API_KEY" in said
    assert "do-not-leak" not in said  # names only, never values

    job_id, said = submit("--forward-secret", "PREFECT_API_KEY")
    env, body = served(job_id)
    assert env["PREFECT_API_KEY"] == "do-not-leak-prefect-key" and "do-not-leak-aws" not in json.dumps(env)
    assert "warning: forwarding PREFECT_API_KEY" in said and "Ray dashboard or its Jobs API" in said

    missing = CliRunner().invoke(app, ["submit", "--address", ray_head, "--forward-secret", "NOPE_TOKEN", "run"])
    assert missing.exit_code == 2 and "--forward-secret NOPE_TOKEN: not set" in missing.output


def test_debug_travels_into_the_submitted_jobs_command(ray_head, monkeypatch) -> None:
    """``sleepsound --debug submit`` ran the job's command without --debug: an unexpected error in the
    job showed its one-line error and never its traceback. The job's command now carries it, where the
    CLI reads it (before the flow), and the job runs (here the flow's --help, which ends at once)."""
    from ray.job_submission import JobSubmissionClient
    from typer.testing import CliRunner

    from sleepsound.cli import app

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    jobs = JobSubmissionClient(ray_head)
    for given, command in ((["--debug"], "sleepsound --debug run --help"), ([], "sleepsound run --help")):
        out = CliRunner().invoke(app, [*given, "submit", "--address", ray_head, "--no-follow", "--", "run", "--help"])
        assert out.exit_code == 0, out.output[-3000:]
        job_id = re.search(r"Ray job (\S+): SUCCEEDED", out.output).group(1)
        assert jobs.get_job_info(job_id).entrypoint == command
        assert "--source" in jobs.get_job_logs(job_id)  # the flow's help: the option parsed where it stands
