"""Faults that happen at scale, each against the real components: a Ray worker killed while
embedding, the flow's process killed mid-run and rerun, and object storage that drops and
delays requests under a whole flow (then the score flow on the same S3 root). (Two runs on one
root: tests/runs/test_root_lock.py; a worse challenger refused: tests/registry/test_model_store.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import s3fs

from sleepsound.core.config import Config, PreprocessConfig
from sleepsound.embed.cohort import embed_cohort
from sleepsound.embed.collector import EmbedStats
from sleepsound.ingest.manifest import build_manifest
from sleepsound.synth.writers import generate_cohort
from tests.flaky_s3 import FlakyS3Proxy

pytestmark = pytest.mark.usefixtures("ray_session")


def _cfg(tiny_whisper: str) -> Config:
    return Config.model_validate(
        {  # tiny: no clip epochs for the snore head (tests/train covers them)
            "backbone": {"name": tiny_whisper, "batch_size": 4},
            "training": {"epochs": 2, "test_fraction": 0.34, "snore_clips": []},
        }
    )


def _embed_actor_pid(timeout_s: float = 120) -> int:
    """The process of the live Ray Data actor running the embedding stage."""
    import ray._private.state as ray_state

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for actor in ray_state.actors().values():
            if "MapWorker" in actor["ActorClassName"] and actor["State"] == "ALIVE" and actor.get("Pid"):
                return int(actor["Pid"])
        time.sleep(0.05)
    raise AssertionError("no embedding actor came up")


def test_a_killed_embedding_worker_is_replaced_and_every_night_is_embedded(tiny_whisper, tmp_path) -> None:
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, n_subjects=4, hours=0.1, seed=31, sample_rate=16_000, part_seconds=360, cycle_minutes=6)
    rows = build_manifest(str(cohort), PreprocessConfig())
    cfg = _cfg(tiny_whisper)
    reference = embed_cohort(rows, str(tmp_path / "reference"), cfg, use_ray=False)

    outcome: list[EmbedStats] = []
    worker = threading.Thread(target=lambda: outcome.append(embed_cohort(rows, str(tmp_path / "root"), cfg)))
    worker.start()
    pid = _embed_actor_pid()
    os.kill(pid, signal.SIGKILL)  # the actor holding the model dies mid-stream
    killed_while_running = worker.is_alive()
    worker.join(timeout=300)
    assert killed_while_running and not worker.is_alive()
    stats = outcome[0]
    assert stats.failed == {}
    assert sorted(stats.embedded) == sorted(reference.embedded) == sorted(r["recording_id"] for r in rows)
    assert stats.epochs == reference.epochs  # every epoch once: none lost, none doubled
    ours = sorted((tmp_path / "root").glob("epochs/*/*.parquet"))
    theirs = sorted((tmp_path / "reference").glob("epochs/*/*.parquet"))
    assert [p.name for p in ours] == [p.name for p in theirs]
    for mine, ref in zip(ours, theirs, strict=False):
        pd.testing.assert_frame_equal(pd.read_parquet(mine), pd.read_parquet(ref))


def _sleepsound(*args: str, env: dict[str, str]) -> subprocess.Popen:
    """The CLI in a process of its own (its own session, so it and its children die together)."""
    exe = Path(sys.executable).parent / "sleepsound"
    return subprocess.Popen(
        [str(exe), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def _cli_env(prefect_api: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PREFECT_API_URL": prefect_api, **extra}


def _ray_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address


def test_a_flow_killed_mid_run_is_finished_by_a_rerun_that_redoes_nothing(tiny_whisper, prefect_api, tmp_path) -> None:
    from flows.pipeline import run_pipeline_on_ray

    cohort = tmp_path / "cohort"
    generate_cohort(cohort, n_subjects=6, hours=0.1, seed=32, sample_rate=16_000, part_seconds=360, cycle_minutes=6)
    root = tmp_path / "root"
    cfg = _cfg(tiny_whisper)
    proc = _sleepsound(
        "run",
        "--source",
        str(cohort),
        "--root",
        str(root),
        "--run-id",
        "crash",
        "--ray-address",
        _ray_address(),
        "--set",
        f"backbone.name={tiny_whisper}",
        "--set",
        "backbone.batch_size=4",
        env=_cli_env(prefect_api),
    )
    deadline = time.monotonic() + 300
    while not list(root.glob("epochs/*/*.parquet")):
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, "no night was embedded in time"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the flow's process dies mid-embedding, lock and all
    proc.wait(timeout=30)
    done_before = {p.stem for p in root.glob("epochs/*/*.parquet")}
    assert 0 < len(done_before) < 6

    result = run_pipeline_on_ray(str(cohort), str(root), cfg.model_dump(), run_id="crash")
    counts = result["counts"]
    assert counts["discovered"] == counts["accepted"] + counts["quarantined"] == 6
    assert counts["cached"] >= len(done_before)  # finished nights are not embedded again
    assert counts["embedded"] == 6 - counts["cached"]
    assert sorted(p.stem for p in root.glob("epochs/*/*.parquet")) == sorted(
        r["recording_id"] for r in build_manifest(str(cohort), PreprocessConfig())
    )
    preds = pd.read_parquet(root / "runs" / "crash" / "predictions")
    assert preds["recording_id"].nunique() == 6
    assert not preds.duplicated(["recording_id", "epoch_index"]).any()
    manifest = pd.read_parquet(root / "manifest" / "manifest.parquet")
    assert len(manifest) == manifest["recording_id"].nunique() == 6


def test_storage_that_drops_and_delays_requests_under_the_nightly_flow(
    tiny_whisper, prefect_api, s3_endpoint, tmp_path
) -> None:
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, n_subjects=3, hours=0.1, seed=33, sample_rate=16_000, part_seconds=360, cycle_minutes=6)
    s3 = s3fs.S3FileSystem()
    s3.mkdir("sleepsound-faults")
    s3.put(str(cohort) + "/", "sleepsound-faults/source/", recursive=True)
    with FlakyS3Proxy(s3_endpoint, drop_every=13, delay_every=5, delay_s=0.05) as proxy:
        proc = _sleepsound(
            "nightly",
            "--source",
            "s3://sleepsound-faults/source",
            "--root",
            "s3://sleepsound-faults/root",
            "--run-id",
            "flaky",
            "--ray-address",
            _ray_address(),
            "--set",
            f"backbone.name={tiny_whisper}",
            "--set",
            "training.epochs=2",
            "--set",
            "training.test_fraction=0.34",
            "--set",
            "training.snore_clips=[]",
            env=_cli_env(prefect_api, AWS_ENDPOINT_URL=proxy.url),
        )
        output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    assert proxy.dropped >= 5 and proxy.delayed >= 5, (proxy.requests, proxy.dropped)
    assert "3 discovered, 3 accepted, 0 quarantined" in output and "retrained: yes" in output
    assert "nights (predicted), 3 in all" in output  # the summaries, read back through the flaky proxy
    preds = pd.read_parquet("s3://sleepsound-faults/root/runs/flaky/predictions")
    assert preds["recording_id"].nunique() == 3
    assert not preds.duplicated(["recording_id", "epoch_index"]).any()
    night = cohort / "APNEA_EDF"
    for local in night.rglob("*.edf"):  # nothing damaged on the way in or out
        assert s3.cat_file(f"sleepsound-faults/source/APNEA_EDF/{local.parent.name}/{local.name}") == local.read_bytes()

    # `sleepsound score` on the same S3 root (no proxy), as a user runs it: its preflight reads the
    # champions nightly promoted from the root's filesystem, and the nights score from the cache, nothing
    # embedded or re-read.
    root = "s3://sleepsound-faults/root"
    proc = _sleepsound(
        "score",
        "--source",
        "s3://sleepsound-faults/source",
        "--root",
        root,
        "--run-id",
        "s3score",
        "--ray-address",
        _ray_address(),
        "--set",
        f"backbone.name={tiny_whisper}",
        env=_cli_env(prefect_api),
    )
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    record = json.loads(s3.cat_file("sleepsound-faults/root/runs/s3score/run.json"))
    assert record["counts"]["cached"] == 3 and record["counts"]["unchanged"] == 3
    assert pd.read_parquet(f"{root}/runs/s3score/predictions")["recording_id"].nunique() == 3
