"""``sleepsound bench``: the benchmarks' command face, beside the commands it measures.

Registered by sleepsound/cli.py as ``app.add_typer(bench_app, name="bench")``. Heavy imports
happen inside the commands so ``--help`` stays instant. Nothing here imports ``flows`` or
``tasks``: ``bench score`` runs the real ``sleepsound train`` and ``sleepsound score`` commands as
child processes, sharing the one Prefect API it starts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sleepsound.core.text import printable

console = Console()
err_console = Console(stderr=True)  # refusals: stdout holds the table or the one JSON object
RayOpt = Annotated[
    Optional[str], typer.Option("--ray-address", help="Existing Ray cluster (default: start a local one).")
]

bench_app = typer.Typer(
    help="Benchmarks: throughput and peak memory beside a simple baseline, in one run.", no_args_is_help=True
)
BenchJsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
BenchWorkdirOpt = Annotated[
    Optional[Path],
    typer.Option(help="Folder for the generated input (default: $SLEEPSOUND_CACHE/bench, reused across runs)."),
]


def _run_bench(as_json: bool, intro: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """A benchmark's shared frame: its intro line (table mode), a BenchError as exit 2, ``--json`` as one
    printed line. Returns the result for the caller's table, or None once the JSON is printed."""
    from sleepsound.bench.ingest import BenchError

    try:
        if not as_json:
            console.print(intro)
        result = run()
    except BenchError as exc:
        err_console.print(f"[red]benchmark failed:[/red] {escape(printable(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from exc
    if as_json:
        print(json.dumps(result))
        return None
    return result


@bench_app.command("ingest")
def bench_ingest(
    hours: Annotated[float, typer.Option(help="Length of the synthetic night in hours.")] = 8.0,
    sample_rate: Annotated[int, typer.Option(help="Microphone sample rate of the night in Hz.")] = 48_000,
    as_json: BenchJsonOpt = False,
    workdir: BenchWorkdirOpt = None,
) -> None:
    """Read, validate, resample, filter and epoch one synthetic night, beside a load-whole-file baseline."""
    from sleepsound.bench.ingest import run_ingest_bench

    result = _run_bench(
        as_json,
        f"ingest benchmark: {hours:g} h at {sample_rate} Hz (the night is generated once, then reused)",
        lambda: run_ingest_bench(hours=hours, sample_rate=sample_rate, workdir=workdir),
    )
    if result is None:
        return
    ours, base = result["ours"], result["baseline"]
    table = Table(
        "figure",
        "ours (streamed)",
        "baseline (whole part)",
        title=f"ingest: {result['audio_hours']:g} h at {result['sample_rate']:g} Hz, {result['epochs']} epochs",
    )
    table.add_row("seconds", f"{ours['seconds']:.1f}", f"{base['seconds']:.1f}")
    table.add_row("CPU seconds", f"{ours['cpu_seconds']:.1f}", f"{base['cpu_seconds']:.1f}")
    table.add_row("x real time", f"{ours['x_realtime']:.0f}", f"{base['x_realtime']:.0f}")
    table.add_row("x real time per core", f"{ours['x_realtime_per_core']:.0f}", f"{base['x_realtime_per_core']:.0f}")
    table.add_row("peak RSS (MB)", f"{ours['peak_rss_mb']:.0f}", f"{base['peak_rss_mb']:.0f}")
    console.print(table)
    console.print(
        f"speedup {result['speedup']:.2f}x; goals: "
        + ", ".join(f"{name} {'met' if ok else 'MISSED'}" for name, ok in result["goals"].items())
    )
    console.print(f"baseline: {result['method']['baseline']}")


def _positive_int(text: str) -> int:
    from sleepsound.bench.ingest import BenchError

    if not text.isdigit() or int(text) < 1:
        raise BenchError(f"--batch-size takes a positive count or 'auto', got {text!r}")
    return int(text)


@bench_app.command("embed")
def bench_embed(
    backbone: Annotated[
        str, typer.Option(help="Backbone name, local folder or Hugging Face id.")
    ] = "whisper-tiny.en-offline",
    minutes: Annotated[float, typer.Option(help="Length of the synthetic night in minutes.")] = 30.0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    batch_size: Annotated[
        Optional[str],
        typer.Option(help="Epochs per forward pass, or 'auto' (from free GPU memory); default: the config's."),
    ] = None,
    compile_model: Annotated[bool, typer.Option("--compile", help="torch.compile the backbone.")] = False,
    cast_weights: Annotated[
        bool, typer.Option("--cast-weights", help="Cast the weights to --dtype instead of autocast (GPU).")
    ] = False,
    preprocess_device: Annotated[
        str, typer.Option(help="Where resampling and filtering run: cpu (readers) or model (the model's device).")
    ] = "cpu",
    workers: Annotated[
        Optional[str],
        typer.Option(
            help="Also run through Ray Data with these model-actor counts, e.g. 1,2 (simulated on one machine)."
        ),
    ] = None,
    sample_rate: Annotated[int, typer.Option(help="Microphone sample rate of the night in Hz.")] = 48_000,
    cores: Annotated[
        Optional[str],
        typer.Option(
            help="Also run the Ray path on a cohort pinned to these core counts, e.g. 1,2 (the feed's scaling; "
            "with --backbone null the pipeline alone is measured)."
        ),
    ] = None,
    feed_nights: Annotated[int, typer.Option(help="Nights in the --cores cohort.")] = 8,
    feed_minutes: Annotated[float, typer.Option(help="Length of each --cores cohort night in minutes.")] = 30.0,
    as_json: BenchJsonOpt = False,
    workdir: BenchWorkdirOpt = None,
) -> None:
    """Embed one synthetic night end to end, beside the bare model and a clip-by-clip tutorial baseline.

    --backbone null measures the pipeline alone (zeros at no cost in place of a model): its rate per
    CPU core, and with --cores 1,2 how the Ray path scales over cores on a cohort.
    """
    from sleepsound.bench.embed import parse_workers, run_embed_bench

    def run() -> dict[str, Any]:
        size: int | str | None = batch_size if batch_size in (None, "auto") else _positive_int(batch_size)
        return run_embed_bench(
            backbone=backbone,
            minutes=minutes,
            device=device,
            dtype=dtype,
            batch_size=size,
            workers=parse_workers(workers),
            workdir=workdir,
            sample_rate=sample_rate,
            compile=compile_model,
            cast_weights=cast_weights,
            preprocess_device=preprocess_device,
            cores=parse_workers(cores, option="--cores"),
            feed_nights=feed_nights,
            feed_minutes=feed_minutes,
        )

    result = _run_bench(as_json, f"embed benchmark: {backbone}, {minutes:g} min at {sample_rate} Hz on {device}", run)
    if result is None:
        return
    table = Table(
        "figure",
        "ours (pipeline)",
        "model alone",
        "baseline (clip by clip)",
        title=f"embed: {result['backbone']} on {result['device_name']} ({result['dtype']}), {result['epochs']} epochs",
    )
    table.add_row(
        "seconds", f"{result['seconds']:.2f}", f"{result['model_seconds']:.2f}", f"{result['baseline_seconds']:.2f}"
    )
    table.add_row(
        "epochs / s",
        f"{result['epochs_per_s']:.2f}",
        f"{result['model_epochs_per_s']:.2f}",
        f"{result['baseline_epochs_per_s']:.2f}",
    )
    table.add_row(
        "GFLOP / s",
        f"{result['ours_gflops_per_s']:.0f}",
        f"{result['model_gflops_per_s']:.0f}",
        f"{result['baseline_gflops_per_s']:.0f}",
    )
    table.add_row("x real time per core", f"{result['x_realtime_per_core']:.0f}", "", "")
    table.add_row("peak RSS (MB)", f"{result['peak_rss_mb']:.0f}", "", f"{result['baseline_peak_rss_mb']:.0f}")
    console.print(table)
    for row in result["feed_scaling"]:
        console.print(
            f"Ray path, cohort of {row['nights']} nights on {row['cores']} core(s): {row['x_realtime']:.0f}x real "
            f"time ({row['epochs_per_s']:.1f} epochs/s), efficiency {row['efficiency']}"
        )
    for row in result["scaling"]:
        console.print(
            f"Ray, {row['workers']} model actor(s): {row['epochs_per_s']:.2f} epochs/s, efficiency {row['efficiency']}"
        )
    if result["scaling_note"]:
        console.print(result["scaling_note"])
    mfu = "" if result["mfu"] is None else f", MFU {result['mfu']:.1%}"
    console.print(
        f"speedup {result['speedup']:.2f}x, {result['x_realtime']:.0f}x real time (an 8-h night in "
        f"{result['eight_hour_night_seconds']:.0f} s), pipeline overhead "
        f"{'n/a' if result['overhead_fraction'] is None else format(result['overhead_fraction'], '.0%')}"
        f"{mfu}; goals: " + ", ".join(f"{name} {'met' if ok else 'MISSED'}" for name, ok in result["goals"].items())
    )
    console.print(f"baseline: {result['method']['baseline']}")


@bench_app.command("score")
def bench_score(
    nights: Annotated[int, typer.Option(help="Synthetic nights in the cohort.")] = 100,
    minutes: Annotated[float, typer.Option(help="Length of each night in minutes.")] = 6.0,
    workers: Annotated[str, typer.Option(help="Embedding model-actor counts to run the flow with, e.g. 1,2.")] = "1,2",
    backbone: Annotated[Optional[str], typer.Option(help="Backbone (default: the config's).")] = None,
    batch_size: Annotated[int, typer.Option(help="Epochs per forward pass.")] = 16,
    train_nights: Annotated[int, typer.Option(help="Nights the champions are trained on first (not timed).")] = 8,
    baseline: Annotated[bool, typer.Option(help="Also run the one-process baseline.")] = True,
    ray_address: RayOpt = None,
    object_store_mb: Annotated[
        Optional[int], typer.Option(help="Local Ray object store size in MB (ray.object_store_mb; default Ray's own).")
    ] = None,
    as_json: BenchJsonOpt = False,
    workdir: BenchWorkdirOpt = None,
) -> None:
    """Score a cohort of short synthetic nights with the score flow: per-stage times, scaling, peak memory."""
    from sleepsound.bench.embed import parse_workers
    from sleepsound.bench.score import check_score_options, run_score_bench
    from sleepsound.runs.prefect_api import local_prefect_api

    def run() -> dict[str, Any]:
        check_score_options(
            nights, minutes, train_nights, batch_size, 16_000, workdir, object_store_mb
        )  # before the API
        with local_prefect_api(Path(".prefect").resolve()):
            return run_score_bench(
                nights=nights,
                minutes=minutes,
                workers=parse_workers(workers) or [1],
                backbone=backbone,
                batch_size=batch_size,
                train_nights=train_nights,
                workdir=workdir,
                ray_address=ray_address,
                baseline=baseline,
                object_store_mb=object_store_mb,
            )

    result = _run_bench(
        as_json, f"score benchmark: {nights} nights of {minutes:g} min, embedding workers {workers}", run
    )
    if result is None:
        return
    table = Table(
        "run",
        "seconds",
        "nights / s",
        "epochs / s",
        "x real time",
        "peak PSS (MB)",
        title=f"score: {result['nights']} nights x {result['minutes_per_night']:g} min, "
        f"{result['backbone']}, {result['cpus']} CPUs",
    )
    rows = [(f"flow, {r['embed_workers']} embedding worker(s)", r) for r in result["runs"]]
    if result["baseline"]:
        rows.append(("baseline (one process)", result["baseline"]))
    for name, r in rows:
        table.add_row(
            name,
            f"{r['seconds']:.1f}",
            f"{r['nights_per_s']:.2f}",
            f"{r['epochs_per_s']:.1f}",
            f"{r['x_realtime']:.0f}",
            f"{r['peak_pss_mb']:.0f}",
        )
    console.print(table)
    console.print(f"seconds: {result['method']['seconds']}")
    for r in result["runs"]:
        console.print(
            f"stages with {r['embed_workers']} worker(s), seconds: "
            + ", ".join(f"{k} {v:.1f}" for k, v in r["steps"].items())
        )
    if result["baseline"] and "report_seconds" in result["baseline"]:
        console.print(
            "report, seconds: "
            + ", ".join(f"{r['embed_workers']} worker(s) {r['steps'].get('report', 0.0):.1f}" for r in result["runs"])
            + f"; baseline (one process) {result['baseline']['report_seconds']:.1f}"
        )
    if result["scaling_efficiency"]:
        console.print(
            "scaling efficiency: "
            + ", ".join(f"{k} worker(s) {v:.0%}" for k, v in result["scaling_efficiency"].items())
        )
    if result["speedup"] is not None:
        console.print(f"best flow vs baseline: {result['speedup']:.2f}x; baseline: {result['baseline']['method']}")


@bench_app.command("clips")
def bench_clips(
    data: Annotated[
        Optional[Path],
        typer.Option(help="Folder of clips in label sub-folders (default: 1-s clips cut from a synthetic night)."),
    ] = None,
    clips: Annotated[int, typer.Option("--clips", help="How many clips (the first ones of --data).")] = 100,
    backbone: Annotated[str, typer.Option(help="Backbone name or local model folder.")] = "whisper-tiny.en-offline",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    batch_size: Annotated[
        Optional[int],
        typer.Option(help="Clips per forward pass (ours; default the clips commands' own: 1 on CPU, 16 on GPU)."),
    ] = None,
    as_json: BenchJsonOpt = False,
    workdir: BenchWorkdirOpt = None,
) -> None:
    """Decode and embed short clips (every clips command's heavy stage), beside a clip-by-clip tutorial baseline."""
    from sleepsound.bench.clips import run_clips_bench

    result = _run_bench(
        as_json,
        f"clips benchmark: {clips} clips, {backbone} on {device}",
        lambda: run_clips_bench(
            data=data, n_clips=clips, backbone=backbone, device=device, batch_size=batch_size, workdir=workdir
        ),
    )
    if result is None:
        return
    table = Table(
        "figure",
        "ours",
        "baseline (clip by clip)",
        title=f"clips: {result['clips']} clips ({result['audio_seconds']:g} s of audio), {result['backbone']}",
    )
    table.add_row("seconds", f"{result['seconds']:.2f}", f"{result['baseline_seconds']:.2f}")
    table.add_row("clips / s", f"{result['clips_per_second']:.2f}", f"{result['baseline_clips_per_second']:.2f}")
    table.add_row("peak RSS (MB)", f"{result['peak_rss_mb']:.0f}", f"{result['baseline_peak_rss_mb']:.0f}")
    console.print(table)
    console.print(
        f"speedup {result['speedup']:.2f}x (ours: read {result['read_seconds']:.1f} s, embed "
        f"{result['embed_seconds']:.1f} s = {result['embed_clips_per_second']:.2f} clips/s, backbone load "
        f"in the total); baseline: {result['method']['baseline']}"
    )


@bench_app.command("monitor")
def bench_monitor(
    root: Annotated[str, typer.Option(help="Storage root holding the champions (local disk; copied per run).")],
    beds: Annotated[int, typer.Option(help="Most beds to try (runs 1, 2, 4, ... up to this).")] = 20,
    minutes: Annotated[float, typer.Option(help="Length of each bed's synthetic night in minutes.")] = 10.0,
    speed: Annotated[float, typer.Option(help="Replay speed: 1 is real time, 10 ten times faster.")] = 1.0,
    chunk_seconds: Annotated[
        Optional[list[float]],
        typer.Option(help="Audio per chunk, 1-30 s (repeatable: the runs again per chunk size; default 10)."),
    ] = None,
    overrides: Annotated[
        Optional[list[str]], typer.Option("--set", help="A setting for the server: section.key=value (repeatable).")
    ] = None,
    as_json: BenchJsonOpt = False,
    workdir: BenchWorkdirOpt = None,
    ramp: Annotated[bool, typer.Option(help="Run 1, 2, 4, ... beds up to --beds; --no-ramp: --beds only.")] = True,
) -> None:
    """Replay synthetic nights against a live monitor server: beds held in real time, alert latency, memory."""
    from sleepsound.bench.ingest import BenchError, check_room
    from sleepsound.monitor.bench import NIGHT_RATE, check_servable, run_monitor_bench

    def run() -> dict[str, Any]:
        """Bad sizes were unexpected errors (exit 1) after the nights were generated, --speed 0 a
        division by zero in the replay threads; now one line and exit 2 before anything is made."""
        import math

        sizes = list(chunk_seconds or [10.0])
        if beds < 1 or not all(math.isfinite(x) and x > 0 for x in (minutes, speed)):
            raise BenchError(
                f"--beds must be at least 1 and --minutes, --speed positive and finite, "
                f"got {beds}, {minutes:g}, {speed:g}"
            )
        if not all(1.0 <= c <= 30.0 for c in sizes):
            raise BenchError(f"--chunk-seconds {sizes}: the service takes chunks of 1-30 s")
        # Every bed's night is generated to disk, then held decoded (float32) while it is replayed.
        samples = beds * minutes * 60 * NIGHT_RATE
        check_room(workdir, samples * 2, f"--beds {beds} --minutes {minutes:g}")
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if samples * 4 > memory / 2:
            raise BenchError(
                f"--beds {beds} --minutes {minutes:g} would hold {samples * 4 / 1e9:.1f} GB of decoded audio, over "
                f"half of this machine's {memory / 1e9:.1f} GB: fewer beds or shorter nights"
            )
        try:  # the root's champions, before any night is generated (the server found none only at its start)
            check_servable(root)
        except (OSError, ValueError, LookupError) as exc:
            raise BenchError(f"nothing for the monitor server to serve: {exc}") from exc
        return run_monitor_bench(
            root, beds, minutes, speed, sizes, overrides=list(overrides or []), workdir=workdir, ramp=ramp
        )

    result = _run_bench(
        as_json, f"monitor benchmark: up to {beds} beds, {minutes:g}-min nights at {speed:g}x real time", run
    )
    if result is None:
        return
    table = Table(
        "chunk s",
        "beds",
        "held",
        "worst ack delay s",
        "scoring lag (epochs)",
        "dropped",
        "alerts",
        "latency p50 s",
        "p95 s",
        "pause p95 s",
        "MB / bed",
        title=f"monitor at {speed:g}x real time",
    )
    for run in result["runs"]:
        pause = run["alert_latency_by_rule"].get("breathing_pause")
        table.add_row(
            f"{run['chunk_seconds']:g}",
            str(run["beds"]),
            "yes" if run["held"] else "no",
            f"{run['worst_ack_delay_s']:.2f}",
            str(run["worst_scoring_lag_epochs"]),
            str(run["dropped_chunks"]),
            str(run["alerts"]),
            "-" if run["alert_latency_p50_s"] is None else f"{run['alert_latency_p50_s']:.2f}",
            "-" if run["alert_latency_p95_s"] is None else f"{run['alert_latency_p95_s']:.2f}",
            "-" if pause is None else f"{pause['p95_s']:.2f}",
            f"{run['memory_per_bed_mb']:.1f}",
        )
    console.print(table)
    by_chunk = ", ".join(f"{k} s chunks: {v}" for k, v in result["most_beds_held_by_chunk"].items())
    console.print(f"most beds held in real time: {result['most_beds_held']} ({by_chunk})")
