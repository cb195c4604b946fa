"""`sleepsound bench monitor` end to end: a real server subprocess, a synthetic night replayed at 10x."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleepsound.cli import app
from tests.monitor.conftest import Trained, config_overrides


def test_bench_monitor_replays_a_night_and_reports_what_it_held(trained: Trained, tmp_path: Path) -> None:
    sets = [arg for item in config_overrides(trained.tiny_whisper) for arg in ("--set", item)]
    args = ["bench", "monitor", "--root", str(trained.root), "--beds", "1", "--minutes", "1.5", "--speed", "10"]
    result = CliRunner().invoke(app, [*args, *sets, "--workdir", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    (run,) = out["runs"]
    assert run["beds"] == 1 and run["dropped_chunks"] == 0 and run["worst_scoring_lag_epochs"] <= 2
    assert run["chunk_seconds"] == 10.0 and out["most_beds_held_by_chunk"] == {"10": out["most_beds_held"]}
    assert out["most_beds_held"] == (1 if run["held"] else 0)
    for rule in run["alert_latency_by_rule"].values():  # each alert counted once, by the chunks it waited
        assert sum(rule["alerts_by_chunks_waited"].values()) == rule["alerts"]
    assert run["server_idle_mb"] > 50 and run["memory_per_bed_mb"] >= 0


def test_bench_monitor_refuses_chunk_sizes_the_service_refuses(tmp_path: Path) -> None:
    from sleepsound.monitor.bench import run_monitor_bench

    with pytest.raises(ValueError, match="1-30 s"):
        run_monitor_bench(tmp_path, beds=1, chunk_seconds=[10.0, 0.5], workdir=tmp_path)
