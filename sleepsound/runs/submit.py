"""Run a sleepsound flow on a Ray cluster as a Ray job, and follow its logs.

The job's driver runs on the cluster (its head node) with the same command a user would type
(``sleepsound run|score|train|nightly ...``), so the flow, its Prefect state and its Ray work
all live on the cluster, and the submitting laptop can disconnect. Settings travel as the
command's arguments; endpoints and other non-secret settings as environment variables of the job
(``PREFECT_API_URL``, ``AWS_DEFAULT_REGION``, ``AWS_ENDPOINT_URL``, ``SLEEPSOUND_*``). A job's
runtime environment is stored by the cluster and served in plain text by its dashboard and Jobs
API (``GET /api/jobs/<id>``), so no secret travels there unless asked for by name
(``forward_secrets``): the job's driver and workers use the cluster's own credentials (the
Kubernetes Secret the KubeRay manifests mount, an instance role, the standard AWS chain).
Clusters with token authentication (Ray's default for ``ray start``) need
``RAY_AUTH_MODE=token`` and the token (``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``) here.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import time
from collections.abc import Callable, Sequence
from typing import Any

FLOWS = ("run", "score", "train", "nightly")
FORWARDED_PREFIXES = ("PREFECT_", "AWS_", "SLEEPSOUND_")
FORWARDED_NAMES = ("HF_HOME", "DO_NOT_TRACK")
# Secrets by name: the AWS credential triple (the key id is only half a secret, but it names whose
# key it is and is useless without the other half), Prefect Cloud's key, and anything whose name
# says password, credential, secret, token, API key or auth (PREFECT_API_AUTH_STRING: a self-hosted
# Prefect server's basic-auth pair); by value, a URL carrying a password (https://user:pass@host).
SECRET_NAMES = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "PREFECT_API_KEY"}
)
SECRET_PATTERN = re.compile(r"PASSWORD|PASSWD|CREDENTIAL|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY|AUTH", re.IGNORECASE)
URL_WITH_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@", re.IGNORECASE)
# Not secrets, but they pick this machine's AWS identity (a profile, a role, a token file here):
# sent along they would override the cluster's own, or point at files the cluster lacks.
LOCAL_IDENTITY = frozenset(
    {
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONFIG_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    }
)
VISIBLE_WHERE = "anyone who can read the Ray dashboard or its Jobs API (GET /api/jobs/<id>) reads it in plain text"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
AGENT_WAIT_S = 120.0


def is_secret(name: str, value: str = "") -> bool:
    """Whether a variable holds a credential, going by its name (``SECRET_NAMES``, ``SECRET_PATTERN``)
    or a password in a URL value."""
    return name.upper() in SECRET_NAMES or bool(SECRET_PATTERN.search(name) or URL_WITH_PASSWORD.match(value))


def stays_here(name: str, value: str = "") -> bool:
    """Whether a variable is left out of a job unless named: a secret, or this machine's AWS identity."""
    return is_secret(name, value) or name.upper() in LOCAL_IDENTITY


def job_environment(environ: dict[str, str] | None = None, forward_secrets: Sequence[str] = ()) -> dict[str, str]:
    """The variables a job needs from here (Prefect, object storage, sleepsound settings), secrets left out.

    A runtime environment is readable by whoever reads the cluster's dashboard, so a secret (or
    this machine's AWS identity, ``stays_here``) goes only when named in ``forward_secrets``; a
    named one that is not set here is an error.
    """
    environ = dict(os.environ if environ is None else environ)
    missing = [name for name in forward_secrets if name not in environ]
    if missing:
        raise ValueError(f"--forward-secret {', '.join(missing)}: not set in this environment, nothing to forward")
    wanted = {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES) or k in FORWARDED_NAMES}
    env = {k: v for k, v in wanted.items() if not stays_here(k, v)}
    return env | {name: environ[name] for name in forward_secrets}


def withheld_secrets(environ: dict[str, str] | None = None, forward_secrets: Sequence[str] = ()) -> list[str]:
    """Names of the variables a job would have carried but does not (``stays_here``), sorted."""
    environ = dict(os.environ if environ is None else environ)
    candidates = {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES) or k in FORWARDED_NAMES}
    return sorted(k for k, v in candidates.items() if stays_here(k, v) and k not in forward_secrets)


def entrypoint(flow: str, args: Sequence[str], debug: bool = False) -> str:
    """The job's command: the sleepsound CLI, quoted for the shell the job runs it in.

    ``debug`` (``sleepsound --debug submit``) goes before the flow, where the CLI reads it: without
    it the job's logs held only the one-line error of an unexpected failure, never its traceback.
    A ``--debug`` among the flow's own options is moved there too: no flow takes one, and the job
    failed on it as an unknown option only once it had started on the cluster.
    """
    debug = debug or "--debug" in args
    args = [a for a in args if a != "--debug"]
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}; submit one of {', '.join(FLOWS)}")
    if any(a == "--ray-address" or a.startswith("--ray-address=") for a in args):
        raise ValueError("a submitted flow runs on the job's own cluster: leave --ray-address out")
    return shlex.join(["sleepsound", *(["--debug"] if debug else []), flow, *args])


def submit_flow(
    address: str,
    flow: str,
    args: Sequence[str],
    *,
    working_dir: str | None = None,
    pip: Sequence[str] = (),
    forward_secrets: Sequence[str] = (),
    follow: bool = True,
    timeout_s: float | None = None,
    echo: Callable[[str], None] = print,
    debug: bool = False,
) -> dict[str, Any]:
    """Submit the flow as a Ray job; with ``follow`` stream its logs until it ends.

    Returns ``{job_id, status, logs}`` (logs only when not followed). ``working_dir`` uploads a
    local folder as the job's code; ``pip`` installs packages into its environment;
    ``forward_secrets`` names secret-looking variables to send anyway (each with a warning);
    ``debug`` runs the job's command with ``--debug`` (an unexpected error's traceback in its logs).
    """
    from ray.job_submission import JobSubmissionClient

    command = entrypoint(flow, args, debug=debug)
    env = job_environment(forward_secrets=forward_secrets)
    withheld = withheld_secrets(forward_secrets=forward_secrets)
    if withheld:
        echo(
            f"not forwarding {', '.join(withheld)} (secrets and this machine's identity stay here): the job uses "
            "the cluster's own credentials; --forward-secret NAME sends one anyway"
        )
    for name in forward_secrets:
        echo(f"warning: forwarding {name} in the job's runtime environment: {VISIBLE_WHERE}")
    runtime_env: dict[str, Any] = {"env_vars": env}
    if working_dir:
        runtime_env["working_dir"] = working_dir
    if pip:
        runtime_env["pip"] = list(pip)
    client = JobSubmissionClient(address)
    job_id = _submit_when_agent_ready(
        lambda: client.submit_job(
            entrypoint=command,
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
