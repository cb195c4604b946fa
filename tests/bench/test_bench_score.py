"""The score benchmark: a small cohort through the real score flow and the one-process baseline.

Figures are checked for consistency, never for speed. The stages join the test session's Ray
(``--ray-address``) instead of starting one each, to keep the suite fast.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleepsound.bench.score import TreeMemory, cohort_name, ensure_cohort
from sleepsound.cli import app

pytestmark = pytest.mark.usefixtures("ray_session")


def test_bench_score_json_times_every_stage_and_the_baseline(
    tiny_whisper, prefect_api, tmp_path: Path, monkeypatch
) -> None:
    import ray

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    out = CliRunner().invoke(
        app,
        [
            "bench",
            "score",
            "--nights",
            "3",
            "--minutes",
            "2",
            "--train-nights",
            "3",
            "--workers",
            "1",
            "--backbone",
            tiny_whisper,
            "--batch-size",
            "4",
            "--ray-address",
            ray.get_runtime_context().gcs_address,
            "--workdir",
            str(tmp_path),
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output[-3000:]
    result = json.loads(out.output.strip().splitlines()[-1])
    assert (result["benchmark"], result["nights"], result["minutes_per_night"]) == ("score", 3, 2.0)
    [run] = result["runs"]
    assert run["embed_workers"] == 1 and run["nights"] == 3 and run["cached"] == 0  # nothing reused
    assert run["epochs"] == result["baseline"]["epochs"] == 3 * 4
    assert set(run["steps"]) == {"ingest", "embed", "champions", "predict", "report"}
    assert sum(run["steps"].values()) <= run["seconds"]
    # the real `sleepsound score` command, measured whole from the parent; its steps from the run record
    assert list(run["steps"]) == ["ingest", "embed", "champions", "predict", "report"] and run["run_id"] == "bench-w1"
    assert any("sleepsound.cli" in name for name in run["at_peak_mb"]), run["at_peak_mb"]
    assert run["work_seconds"] == pytest.approx(sum(run["steps"].values()), abs=0.05)
    assert 0 < result["baseline"]["work_seconds"] <= result["baseline"]["seconds"]
    assert 0 < result["baseline"]["report_seconds"] < result["baseline"]["work_seconds"]  # it renders the report too
    assert {"seconds", "ours", "baseline", "memory"} <= set(result["method"])
    assert "stage3" in result["train"]["promoted"] and "stage3" in result["train"]["champions"]
    for figures in (run, result["baseline"]):
        assert figures["seconds"] > 0 and figures["peak_pss_mb"] > 0 and figures["at_peak_mb"]
        for name, parts in figures["split_at_peak_mb"].items():  # anon + shmem + file make up a process's PSS
            assert set(parts) <= {"anon", "shmem", "file"}
            assert sum(parts.values()) <= figures["at_peak_mb"][name] + 1.0
        assert figures["nights_per_s"] == pytest.approx(figures["nights"] / figures["seconds"], rel=0.01)
    assert result["scaling_efficiency"] == {"1": 1.0}
    assert result["speedup"] > 0
    assert (tmp_path / cohort_name(3, 2.0, 16_000, 0) / "cohort.json").is_file()  # generated once, kept


def test_the_cohort_is_generated_once(tmp_path: Path) -> None:
    first = ensure_cohort(2, 0.5, 16_000, 1, tmp_path)
    stamp = (first / "cohort.json").stat().st_mtime_ns
    assert ensure_cohort(2, 0.5, 16_000, 1, tmp_path) == first
    assert (first / "cohort.json").stat().st_mtime_ns == stamp
    assert len(list((first / "APNEA_EDF").iterdir())) == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-made cohort left


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_tree_memory_sees_a_child_process() -> None:
    import subprocess
    import sys
    import time

    with TreeMemory(every_s=0.05) as alone:
        time.sleep(0.2)
    with TreeMemory(every_s=0.05) as with_child:
        child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(200 * 2**20); time.sleep(1.5)"])
        child.wait()
    assert with_child.samples > 3
    assert with_child.peak_mb > alone.peak_mb + 150  # the child's 200 MB counted with ours
    assert max(with_child.at_peak.values()) > 150  # and named among the largest processes
    child_split = max(with_child.split_at_peak.values(), key=lambda parts: parts.get("anon", 0.0))
    if "anon" in child_split:  # kernels with smaps_rollup's Pss_* split
        assert child_split["anon"] > 150  # a bytearray is anonymous memory
        assert child_split["shmem"] < 50


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_tree_memory_of_another_pid_leaves_the_sampler_out() -> None:
    """The score benchmark samples each child from the parent: the child's tree, not the parent's."""
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(200 * 2**20); time.sleep(1.5)"])
    with TreeMemory(every_s=0.05, pid=child.pid) as memory:
        child.wait()
    assert memory.peak_mb > 150
    assert not any("pytest" in name for name in memory.at_peak)  # the sampling process is not counted
