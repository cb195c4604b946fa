"""The score flow across a real multi-node Ray cluster on this one machine.

A child process holds a ``ray.cluster_utils.Cluster``: a head (the flow's coordinating tasks),
a model node (the only one advertising ``model_node``, the model actor's resource, whose one CPU
the actor fills) and two reader nodes (CPUs only), so by Ray's scheduling the readers and the
model actor run on different nodes. The flow runs there as ``sleepsound score --ray-address``,
a user's command; its outputs are compared with the same flow on the test session's single
node, with a reader node removed while the run embeds: no night is lost.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sleepsound.core.config import Config
from sleepsound.synth.writers import generate_cohort

pytestmark = pytest.mark.usefixtures("ray_session")

NIGHTS = 8
MODEL_RESOURCE = "model_node"
CLUSTER = """
import json, sys
from ray.cluster_utils import Cluster

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
cluster.add_node(num_cpus=1, resources={"MODEL_RESOURCE": 1})
readers = [cluster.add_node(num_cpus=1) for _ in range(2)]
cluster.wait_for_nodes()
print(json.dumps({"address": cluster.address}), flush=True)
for line in sys.stdin:
    if line.strip() == "remove-reader":
        cluster.remove_node(readers.pop(), allow_graceful=False)  # as a machine lost mid-run
        print(json.dumps({"removed": True}), flush=True)
    elif line.strip() == "stop":
        break
cluster.shutdown()
""".replace("MODEL_RESOURCE", MODEL_RESOURCE)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multinode-cohort")
    generate_cohort(out, n_subjects=NIGHTS, hours=0.1, seed=31, sample_rate=48_000, part_seconds=360, cycle_minutes=6)
    return out


class Cluster:
    """The child process holding the cluster; its address is read when first asked for, so the
    nodes start while the cohort is made and the champions trained."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLUSTER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self._address: str | None = None

    @property
    def address(self) -> str:
        if self._address is None:
            self._address = json.loads(self.stdout.readline())["address"]
        return self._address


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    started = Cluster()
    yield started
    proc = started.proc
    assert proc.stdin is not None
    proc.stdin.write("stop\n")
    proc.stdin.flush()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def _settings(tiny_whisper: str) -> list[str]:
    return [
        f"backbone.name={json.dumps(tiny_whisper)}",
        "backbone.batch_size=4",
        "training.epochs=2",
        "ray.read_cpus=1",
        "ray.embed_cpus=1",
        f"ray.embed_resources={{{MODEL_RESOURCE}: 1}}",
    ]


def _score_command(source: Path, root: Path, address: str, tiny_whisper: str, run_id: str) -> list[str]:
    sets = [arg for setting in _settings(tiny_whisper) for arg in ("--set", setting)]
    return [
        sys.executable,
        "-m",
        "sleepsound.cli",
        "score",
        "--source",
        str(source),
        "--root",
        str(root),
        "--ray-address",
        address,
        "--run-id",
        run_id,
        *sets,
    ]


@pytest.fixture(scope="module")
def champions(cohort, tiny_whisper, prefect_api, tmp_path_factory) -> Path:
    """Heads trained once on the test session's single node; every score run starts from a copy."""
    from flows.train import run_train_on_ray

    os.environ["PREFECT_API_URL"] = prefect_api
    from sleepsound.bench.score import subset

    root = tmp_path_factory.mktemp("multinode-train")
    source = subset(cohort, 3, tmp_path_factory.mktemp("multinode-train-source"))  # 3 nights are enough
    config = Config.model_validate(
        {"backbone": {"name": tiny_whisper, "batch_size": 4}, "training": {"epochs": 2, "snore_clips": []}}
    ).model_dump()
    run_train_on_ray(str(source), str(root), config, run_id="train")
    return root / "models"


def _fresh_root(champions: Path, path: Path) -> Path:
    shutil.copytree(champions, path / "models")
    return path


def test_score_across_nodes_equals_one_node_even_when_a_reader_node_is_lost(
    cluster, cohort, champions, tiny_whisper, prefect_api, tmp_path
):
    """One multi-node run (a reader node removed while it embeds) against the same flow on one node:
    no night lost, counts add up, and the outputs are the one-node run's. (One run for both checks:
    each multi-node run costs about 30 s of the suite.)"""
    from flows.score import run_score_on_ray

    one = _fresh_root(champions, tmp_path / "one-node")
    config = Config.model_validate(
        {"backbone": {"name": tiny_whisper, "batch_size": 4}, "training": {"epochs": 2}}
    ).model_dump()
    run_score_on_ray(str(cohort), str(one), config, run_id="one")

    many = _fresh_root(champions, tmp_path / "nodes")
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    run = subprocess.Popen(
        _score_command(cohort, many, cluster.address, tiny_whisper, "nodes"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    cache = many / "embeddings"
    deadline = time.monotonic() + 300
    while not (cache.exists() and any(cache.rglob("*.parquet"))):  # embedding under way: nights in flight
        assert run.poll() is None, "the run ended before the embedding began"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    cluster.stdin.write("remove-reader\n")
    cluster.stdin.flush()
    assert json.loads(cluster.stdout.readline()) == {"removed": True}
    removed_while_running = run.poll() is None
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out[-4000:]
    assert removed_while_running, "the node went only after the run had ended: nothing was tested"

    record = json.loads((many / "runs" / "nodes" / "run.json").read_text())
    counts = record["counts"]
    assert counts["accepted"] + counts["quarantined"] == counts["discovered"] == NIGHTS
    assert counts["accepted"] == NIGHTS and counts["failed"] == 0 and counts["embedded"] == NIGHTS
    a = pd.read_parquet(one / "runs" / "one" / "predictions").sort_values(["recording_id", "epoch_index"])
    b = pd.read_parquet(many / "runs" / "nodes" / "predictions").sort_values(["recording_id", "epoch_index"])
    assert len(a) == len(b) == NIGHTS * 12
    assert b.groupby("recording_id").size().to_dict() == dict.fromkeys(b["recording_id"].unique(), 12)
    assert list(a["recording_id"]) == list(b["recording_id"]) and list(a["epoch_index"]) == list(b["epoch_index"])
    assert list(a["stage_true"]) == list(b["stage_true"])
    np.testing.assert_allclose(a["prob_wake"].to_numpy(float), b["prob_wake"].to_numpy(float), atol=1e-3)
    assert (a["stage_pred"].to_numpy() == b["stage_pred"].to_numpy()).mean() > 0.99
