"""The ingest benchmark runs end to end on a tiny night and reports sane figures (never asserts speed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleepsound.bench import ingest
from sleepsound.bench.ingest import BenchError, night_name, run_ingest_bench
from sleepsound.cli import app

STAGE_KEYS = {"seconds", "cpu_seconds", "x_realtime", "x_realtime_per_core", "peak_rss_mb"}
TOP_KEYS = {
    "benchmark",
    "audio_hours",
    "sample_rate",
    "channels_in_file",
    "epochs",
    "ours",
    "baseline",
    "speedup",
    "goals",
    "seconds",
    "x_realtime_per_core",
    "peak_rss_mb",
    "baseline_seconds",
    "baseline_x_realtime_per_core",
    "baseline_peak_rss_mb",
}


def _check(result: dict, hours: float, sample_rate: int) -> None:
    assert set(result) >= TOP_KEYS
    assert result["benchmark"] == "ingest"
    assert result["audio_hours"] == pytest.approx(hours)
    assert result["sample_rate"] == sample_rate
    assert {"Mic", "Tracheal"} <= set(result["channels_in_file"])
    assert result["epochs"] == round(hours * 120) == result["baseline_epochs"]
    for stage in ("ours", "baseline"):
        assert set(result[stage]) == STAGE_KEYS
        assert all(value > 0 for value in result[stage].values()), result[stage]
    assert result["seconds"] == result["ours"]["seconds"]
    assert result["x_realtime_per_core"] == result["ours"]["x_realtime_per_core"]
    assert result["peak_rss_mb"] == result["ours"]["peak_rss_mb"]
    assert result["baseline_seconds"] == result["baseline"]["seconds"]
    assert result["baseline_x_realtime_per_core"] == result["baseline"]["x_realtime_per_core"]
    assert result["baseline_peak_rss_mb"] == result["baseline"]["peak_rss_mb"]
    assert result["speedup"] > 0
    assert set(result["goals"]) == {
        "peak_rss_mb_under_1500",
        "x_realtime_per_core_at_least_200",
        "faster_than_baseline",
    }
    assert all(isinstance(v, bool) for v in result["goals"].values())


def test_run_ingest_bench_reports_both_stages_and_reuses_the_night(tmp_path: Path) -> None:
    pytest.importorskip("librosa")
    result = run_ingest_bench(hours=0.05, sample_rate=16_000, workdir=tmp_path)
    _check(result, 0.05, 16_000)
    night = tmp_path / night_name(0.05, 16_000, 0)
    assert result["night"]["path"] == str(night) and result["night"]["generated_now"]
    assert (night / "cohort.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [night.name]  # no temporary folder left behind

    again = run_ingest_bench(hours=0.05, sample_rate=16_000, workdir=tmp_path)
    assert not again["night"]["generated_now"]
    assert again["epochs"] == result["epochs"]


def test_cli_bench_ingest_json(tmp_path: Path) -> None:
    pytest.importorskip("librosa")
    out = CliRunner().invoke(
        app, ["bench", "ingest", "--hours", "0.05", "--sample-rate", "16000", "--json", "--workdir", str(tmp_path)]
    )
    assert out.exit_code == 0, out.output
    _check(json.loads(out.stdout.strip().splitlines()[-1]), 0.05, 16_000)


def test_missing_librosa_fails_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = ingest.importlib.util.find_spec
    monkeypatch.setattr(
        ingest.importlib.util, "find_spec", lambda name, *a: None if name == "librosa" else real(name, *a)
    )
    with pytest.raises(BenchError, match=r"librosa.*pip install"):
        run_ingest_bench(hours=0.05, sample_rate=16_000, workdir=tmp_path)
    assert not any(tmp_path.iterdir())  # failed before generating anything
    out = CliRunner().invoke(app, ["bench", "ingest", "--hours", "0.05", "--json", "--workdir", str(tmp_path)])
    assert out.exit_code == 2 and "librosa" in out.output


def _pyedflib_blocks(path: str, chn: int, n_samples: int, block: int) -> list:
    import numpy as np
    import pyedflib

    reader = pyedflib.EdfReader(path)
    try:
        return [
            reader.readSignal(chn, s, min(block, n_samples - s)).astype(np.float32) for s in range(0, n_samples, block)
        ]
    finally:
        reader.close()


def test_streamed_edf_blocks_equal_pyedflib_bit_for_bit(tmp_path: Path) -> None:
    """The benchmark's speed-up (numpy reads of EDF records) must not change a single sample."""
    import numpy as np
    import pyedflib

    from sleepsound.io.audio import iter_part_blocks, probe_edf
    from sleepsound.synth.writers import generate_cohort

    generate_cohort(tmp_path / "night", 1, 0.01, seed=3, sample_rate=16_000)
    paths = [str(p) for p in (tmp_path / "night").rglob("*.edf")]
    # EDF+ with an annotation signal, odd and inverted physical ranges, digital values outside the header's range
    plus = str(tmp_path / "plus.edf")
    writer = pyedflib.EdfWriter(plus, 2, file_type=pyedflib.FILETYPE_EDFPLUS)
    writer.setSignalHeaders(
        [
            {
                "label": "Mic",
                "dimension": "",
                "sample_frequency": 1000,
                "physical_min": -0.37,
                "physical_max": 1.91,
                "digital_min": -2000,
                "digital_max": 30000,
                "transducer": "",
                "prefilter": "",
            },
            {
                "label": "Tracheal",
                "dimension": "",
                "sample_frequency": 500,
                "physical_min": 5.0,
                "physical_max": -5.0,
                "digital_min": -32767,
                "digital_max": 32767,
                "transducer": "",
                "prefilter": "",
            },
        ]
    )
    rng = np.random.default_rng(0)
    for _ in range(9):
        writer.writeSamples(
            [rng.integers(-2000, 30001, 1000).astype(np.int32), rng.integers(-32767, 32768, 500).astype(np.int32)],
            digital=True,
        )
    writer.writeAnnotation(3.0, 1.0, "note")
    writer.close()
    with open(plus, "r+b") as handle:  # sample 0 of the first record's Tracheal: -32768, below its digital minimum
        handle.seek(256 * 4 + 2 * 1000)
        handle.write(np.array([-32768], dtype="<i2").tobytes())
    for path in [*paths, plus]:
        for channel in ("Mic", "Tracheal"):
            part = probe_edf(path, channel)
            for block in (part.n_samples, 4_801, 997):
                ours = list(iter_part_blocks(part, block, "psg-audio"))
                ref = _pyedflib_blocks(path, part.channel_index, part.n_samples, block)
                assert len(ours) == len(ref)
                for a, b in zip(ours, ref, strict=True):
                    assert a.dtype == np.float32 and np.array_equal(a.view(np.uint32), b.view(np.uint32))


EMBED_KEYS = {
    "backbone",
    "device",
    "epochs",
    "seconds",
    "epochs_per_s",
    "x_realtime",
    "peak_rss_mb",
    "baseline_epochs_per_s",
    "speedup",
    "model_seconds",
    "overhead_fraction",
    "flops_per_epoch",
    "mfu",
    "scaling",
    "goals",
    "versions",
    "date",
}


def test_cli_bench_embed_json_reports_ours_model_and_baseline(tmp_path: Path, tiny_whisper: str) -> None:
    """A tiny random Whisper on a 2-minute night: every figure is there and consistent (speed never asserted)."""
    pytest.importorskip("librosa")
    out = CliRunner().invoke(
        app,
        [
            "bench",
            "embed",
            "--backbone",
            tiny_whisper,
            "--minutes",
            "1",
            "--sample-rate",
            "16000",
            "--device",
            "cpu",
            "--batch-size",
            "2",
            "--json",
            "--workdir",
            str(tmp_path),
        ],
    )
    assert out.exit_code == 0, out.output
    result = json.loads(out.output.strip().splitlines()[-1])
    assert set(result) >= EMBED_KEYS
    assert (result["backbone"], result["device"], result["epochs"], result["batch_size"]) == (tiny_whisper, "cpu", 2, 2)
    assert result["epochs_per_s"] == pytest.approx(2 / result["seconds"], rel=0.01)
    assert result["speedup"] == pytest.approx(
        result["epochs_per_s"] / result["baseline_epochs_per_s"], rel=0.02, abs=0.006
    )
    assert result["x_realtime"] == pytest.approx(60 / result["seconds"], rel=0.02)
    assert result["flops_per_epoch"] > 0 and result["peak_rss_mb"] > 0 and result["mfu"] is None
    assert set(result["goals"]) == {"speedup_at_least_5", "overhead_under_0.20"}
    assert "eight_hour_night_within_10_s" in result["goals_not_applicable"]


@pytest.mark.ray  # the --cores run starts its own Ray in a pinned child process
def test_bench_embed_null_measures_the_pipeline_alone_and_its_scaling_over_cores(tmp_path: Path) -> None:
    """The null backbone: the same pipeline with zeros for a model, so the figures are the feed's own: its
    rate per CPU core and, on a cohort through Ray Data pinned to one core, its rate there."""
    pytest.importorskip("librosa")
    out = CliRunner().invoke(
        app,
        [
            "bench",
            "embed",
            "--backbone",
            "null",
            "--minutes",
            "1",
            "--sample-rate",
            "16000",
            "--device",
            "cpu",
            "--cores",
            "1",
            "--feed-nights",
            "2",
            "--feed-minutes",
            "1",
            "--json",
            "--workdir",
            str(tmp_path),
        ],
    )
    assert out.exit_code == 0, out.output
    result = json.loads(out.output.strip().splitlines()[-1])
    assert set(result) >= EMBED_KEYS | {"cpu_seconds", "x_realtime_per_core", "feed_scaling"}
    assert result["epochs"] == 2 and result["flops_per_epoch"] == 0 and result["overhead_fraction"] is None
    assert result["x_realtime_per_core"] == pytest.approx(60 / result["cpu_seconds"], rel=0.02)
    [feed] = result["feed_scaling"]
    assert (feed["cores"], feed["nights"], feed["epochs"], feed["efficiency"]) == (1, 2, 4, 1.0)
    assert feed["x_realtime"] == pytest.approx(120 / feed["seconds"], rel=0.02)
    assert set(result["goals"]) == {"feed_x_realtime_per_core_at_least_1500"}
    assert "feed_scaling_at_least_0.8" in result["goals_not_applicable"]
    refused = CliRunner().invoke(app, ["bench", "embed", "--backbone", "null", "--cores", "0"])
    assert refused.exit_code == 2 and "--cores takes positive counts" in refused.output


def test_bench_embed_refuses_bad_workers() -> None:
    from sleepsound.bench.embed import parse_workers

    assert parse_workers("1,2") == [1, 2] and parse_workers(None) is None
    with pytest.raises(BenchError, match="positive"):
        parse_workers("0")
    with pytest.raises(BenchError, match="comma-separated"):
        parse_workers("one")


def test_cli_bench_clips_json_times_ours_and_the_baseline_on_the_same_clips(tmp_path: Path, tiny_whisper: str) -> None:
    """Synthetic 1-s clips (made once, then reused) and a folder of the user's own: both sides embed the same
    clips, each in its own process; every figure is there and consistent (speed never asserted)."""
    pytest.importorskip("librosa")
    args = ["bench", "clips", "--backbone", tiny_whisper, "--clips", "6", "--json", "--workdir", str(tmp_path)]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    result = json.loads(out.output.strip().splitlines()[-1])
    assert result["benchmark"] == "clips" and result["clips"] == 6 and result["rejected"] == 0
    assert result["audio_seconds"] == pytest.approx(6.0)
    assert result["output_shape"][0] == 6 and result["output_shape"][2] >= 1  # every candidate layer kept
    assert result["speedup"] == pytest.approx(result["baseline_seconds"] / result["seconds"], rel=0.02, abs=0.01)
    assert result["clips_per_second"] == pytest.approx(6 / result["seconds"], rel=0.02)
    assert result["peak_rss_mb"] > 0 and result["baseline_peak_rss_mb"] > 0
    made = Path(result["data"])
    assert made.parent == tmp_path and len(list((made / "clips").glob("*.wav"))) == 6

    again = CliRunner().invoke(
        app, ["bench", "clips", "--backbone", tiny_whisper, "--data", str(made), "--clips", "4", "--batch-size", "2"]
    )
    assert again.exit_code == 0, again.output
    assert "4 clips (4 s of audio)" in again.output and "speedup" in again.output
    missing = CliRunner().invoke(app, ["bench", "clips", "--data", str(tmp_path / "nowhere"), "--json"])
    assert missing.exit_code == 2 and "clip folder not found" in missing.output


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_a_stage_reports_its_own_peak_memory_not_its_parents() -> None:
    """ru_maxrss survives execve (a child would report at least this process's peak); VmHWM does not."""
    import subprocess
    import sys

    from sleepsound.bench.ingest import peak_rss_mb

    ballast = bytearray(400 * 2**20)  # touched: 400 MB resident in this process
    ballast[::4096] = b"x" * len(ballast[::4096])
    assert peak_rss_mb() > 400
    child = subprocess.run(
        [sys.executable, "-c", "from sleepsound.bench.ingest import peak_rss_mb; print(peak_rss_mb())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert float(child.stdout) < 300  # the child's own imports, far below the parent's 400 MB of ballast
    del ballast


def test_bench_monitor_refuses_nights_no_disk_or_memory_holds(tmp_path: Path) -> None:
    """Every bed's night is generated, then held decoded: 20 nights of 1.9 years were started regardless."""
    args = ["bench", "monitor", "--root", str(tmp_path), "--beds", "20", "--minutes", "1000000"]
    out = CliRunner().invoke(app, [*args, "--workdir", str(tmp_path / "w")])
    assert out.exit_code == 2 and "--beds 20 --minutes 1e+06 needs about" in out.stderr, out.output
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("champion", [None, "v1"], ids=["no-models", "champion-without-its-model"])
def test_bench_monitor_refuses_a_root_without_champions_before_generating(tmp_path: Path, champion: str | None) -> None:
    """The nights were generated (minutes, for many beds) before the server found nothing to serve."""
    root = tmp_path / "root"
    root.mkdir()
    if champion is not None:  # champion.json names a version that is not there
        (root / "models" / "stage3").mkdir(parents=True)
        (root / "models" / "stage3" / "champion.json").write_text(json.dumps({"version": champion}))
    args = ["bench", "monitor", "--root", str(root), "--beds", "1", "--minutes", "0.5", "--no-ramp"]
    out = CliRunner().invoke(app, [*args, "--workdir", str(tmp_path / "w")])
    assert out.exit_code == 2, out.output
    assert "benchmark failed: nothing for the monitor server to serve: no" in out.stderr
    assert ("no stage3 champion" if champion is None else f"stage3/{champion}") in out.stderr
    assert not (tmp_path / "w").exists()


def test_run_monitor_bench_checks_the_champions_before_generating(tmp_path: Path) -> None:
    from sleepsound.monitor.bench import run_monitor_bench

    with pytest.raises(LookupError, match="no stage3 champion"):
        run_monitor_bench(tmp_path / "root", beds=1, minutes=0.5, workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["ingest", "--hours", "nan"],
        ["ingest", "--hours", "100000"],  # about 69 TB of EDF: more than any disk the tests run on
        ["ingest", "--sample-rate", "0"],
        ["clips", "--clips", "1000000000"],  # a 48-kHz night of 10^9 s and its clips
        ["monitor", "--root", "r", "--speed", "0"],
        ["monitor", "--root", "r", "--beds", "0"],
        ["monitor", "--root", "r", "--minutes", "nan"],
        ["monitor", "--root", "r", "--chunk-seconds", "0"],
        ["score", "--minutes", "nan"],  # these three: before its Prefect API starts, too
        ["score", "--nights", "1000000", "--minutes", "600"],  # about 2.3 PB of nights
        ["score", "--batch-size", "0"],
    ],
)
def test_bench_refuses_bad_or_unbounded_sizes_before_generating(tmp_path: Path, args: list[str]) -> None:
    """These were exit 1 ('not expected'), or started generating terabytes with no bound (ingest --hours
    100000, clips --clips 10^9); now exit 2 with one line, and nothing is generated."""
    out = CliRunner().invoke(app, ["bench", *args, "--workdir", str(tmp_path / "w")])
    assert out.exit_code == 2 and "benchmark failed" in out.stderr, out.output
    assert "benchmark failed" not in out.stdout  # refusals on stderr: stdout is the table or one JSON object
    assert not (tmp_path / "w").exists()
