"""A flow's Ray session carries its settings to the workers but never its secrets: a runtime
environment is stored by the cluster and shown in plain text by its dashboard and state API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# A fresh local session, started the way a flow starts it (RayTaskRunner.__enter__ with
# ray_runner's arguments), in a process of its own: the test session's Ray is already up.
_PROBE = """
import json, os, ray
from flows.pipeline import ray_runner

@ray.remote
def probe():
    return {
        "runtime_env": ray.get_runtime_context().runtime_env.get("env_vars") or {},
        "worker_env": {k: os.environ.get(k) for k in ("AWS_SECRET_ACCESS_KEY", "PREFECT_API_KEY", "AWS_REGION")},
    }

with ray_runner({"ray": {"num_cpus": 1, "object_store_mb": 100}}):
    print("PROBE", json.dumps(ray.get(probe.remote())))
"""


@pytest.mark.ray
def test_a_local_flow_session_keeps_secrets_out_of_its_runtime_env_and_workers_still_have_them(
    tmp_path: Path,
) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[2]),
        "RAY_ADDRESS": "local",  # a session of its own, never a cluster some other process started here
        "AWS_SECRET_ACCESS_KEY": "do-not-leak-aws",
        "PREFECT_API_KEY": "do-not-leak-prefect",
        "AWS_DEFAULT_REGION": "eu-west-2",
        "AWS_REGION": "eu-west-2",
        "SLEEPSOUND_TRAINING__EPOCHS": "3",
    }
    env.pop("RAY_JOB_CONFIG_JSON_ENV_VAR", None)  # set in a Ray job's driver, which adds no runtime env
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("PROBE "))[6:])
    carried = seen["runtime_env"]
    assert carried["AWS_DEFAULT_REGION"] == "eu-west-2" and carried["SLEEPSOUND_TRAINING__EPOCHS"] == "3"
    assert "AWS_SECRET_ACCESS_KEY" not in carried and "PREFECT_API_KEY" not in carried
    assert "AWS_ACCESS_KEY_ID" not in carried  # the test session's key id (conftest) stays too
    assert "do-not-leak" not in json.dumps(carried)
    # ...and a local session's workers still reach storage: they inherit the driver's environment.
    assert seen["worker_env"] == {
        "AWS_SECRET_ACCESS_KEY": "do-not-leak-aws",
        "PREFECT_API_KEY": "do-not-leak-prefect",
        "AWS_REGION": "eu-west-2",
    }
