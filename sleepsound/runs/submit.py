"""Run a sleepsound flow on a Ray cluster as a Ray job, and follow its logs.

The job's driver runs on the cluster (its head node) with the same command a user would type
(``sleepsound run|score|train|nightly ...``), so the flow, its Prefect state and its Ray work
all live on the cluster, and the submitting laptop can disconnect. Settings travel as the
command's arguments; credentials and endpoints as environment variables of the job
(``PREFECT_API_URL``, ``AWS_*``, ``SLEEPSOUND_*``), never in the command line that the Ray
dashboard shows. Clusters with token authentication (Ray's default for ``ray start``) need
``RAY_AUTH_MODE=token`` and the token (``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``) here.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import time
from collections.abc import Callable, Sequence
from typing import Any

FLOWS = ("run", "score", "train", "nightly")
FORWARDED_PREFIXES = ("PREFECT_", "AWS_", "SLEEPSOUND_")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
AGENT_WAIT_S = 120.0


def job_environment(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables a job needs from here: Prefect, object storage, sleepsound settings."""
    environ = dict(os.environ if environ is None else environ)
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES) or k in ("HF_HOME", "DO_NOT_TRACK")}


def entrypoint(flow: str, args: Sequence[str]) -> str:
    """The job's command: the sleepsound CLI, quoted for the shell the job runs it in."""
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}; submit one of {', '.join(FLOWS)}")
    if any(a == "--ray-address" or a.startswith("--ray-address=") for a in args):
        raise ValueError("a submitted flow runs on the job's own cluster: leave --ray-address out")
    return shlex.join(["sleepsound", flow, *args])


def submit_flow(
    address: str,
    flow: str,
    args: Sequence[str],
    *,
    working_dir: str | None = None,
    pip: Sequence[str] = (),
    follow: bool = True,
    timeout_s: float | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Submit the flow as a Ray job; with ``follow`` stream its logs until it ends.

    Returns ``{job_id, status, logs}`` (logs only when not followed). ``working_dir`` uploads a
    local folder as the job's code; ``pip`` installs packages into its environment.
    """
    from ray.job_submission import JobSubmissionClient

    runtime_env: dict[str, Any] = {"env_vars": job_environment()}
    if working_dir:
        runtime_env["working_dir"] = working_dir
    if pip:
        runtime_env["pip"] = list(pip)
    client = JobSubmissionClient(address)
    job_id = _submit_when_agent_ready(
        lambda: client.submit_job(
            entrypoint=entrypoint(flow, args),
            runtime_env=runtime_env,
            metadata={"submitted_by": "sleepsound submit", "flow": flow},
        ),
        address,
        echo,
    )
    echo(f"submitted {flow} as Ray job {job_id} to {address}")
    if follow:
        asyncio.run(_follow(client, job_id, echo, timeout_s))
    status = _wait(client, job_id, timeout_s)
    return {"job_id": job_id, "status": status, "logs": None if follow else client.get_job_logs(job_id)}


def _submit_when_agent_ready(
    submit: Callable[[], str],
    address: str,
    echo: Callable[[str], None],
    wait_s: float = AGENT_WAIT_S,
    pause_s: float = 2.0,
) -> str:
    """Submit, retrying while the cluster's job agent is still starting.

    A head that has just come up (``ray up``, a restarted head pod) answers on its dashboard
    before its job agent registers, and refuses jobs with "No available agent"; that is worth
    waiting for, any other refusal is not.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return submit()
        except RuntimeError as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise
            echo(f"the job agent at {address} is not ready yet; retrying")
            time.sleep(pause_s)


async def _follow(client: Any, job_id: str, echo: Callable[[str], None], timeout_s: float | None) -> None:
    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            for line in chunk.splitlines():
                echo(line)

    await asyncio.wait_for(tail(), timeout=timeout_s)


def _wait(client: Any, job_id: str, timeout_s: float | None) -> str:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        reported = client.get_job_status(job_id)
        status = str(getattr(reported, "value", reported))
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            client.stop_job(job_id)
            raise TimeoutError(f"Ray job {job_id} still {status} after {timeout_s} s; stopped it")
        time.sleep(1.0)
