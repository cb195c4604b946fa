"""``sleepsound bench embed``: how fast one night goes from audio to cached embeddings, beside a tutorial baseline.

The night is a synthetic PSG-Audio recording (``synth.writers.generate_cohort``, the ``Mic``
microphone at 48 kHz), ``minutes`` long, cached like the ingest benchmark's nights
(``bench.ingest.ensure_night``). Three stages run, each in its own fresh Python process
(``python -m sleepsound.bench.embed --stage ...``) so that each peak memory is its own:

* **ours**: the real pipeline from the manifest row to cached embeddings,
  ``embed.cohort.embed_cohort([row], root, cfg, use_ray=False)`` into a temporary storage root,
  timed end to end: backbone load, EDF decode, soxr resample to 16 kHz, 50 Hz high-pass,
  pre-emphasis, epoch quality checks and normalisation, the model, Parquet writes. Training's
  shifted windows are off (``training.shift_augment=False``): the night's epochs only.
* **model**: the same backbone on ready-made float32 batches of the configured batch size,
  ``Backbone.embed`` alone, for the same number of epochs (after one untimed warm-up batch).
  ``overhead_fraction`` = (ours - model) / model: everything the pipeline adds to the model.
* **baseline**, as a tutorial would write it, with the same weights: the night's ``Mic``
  channel written once (untimed) as 30-s 48 kHz WAV clips, then per clip
  ``librosa.load(path, sr=16000)``, the transformers feature extractor
  (``WhisperFeatureExtractor`` / ``Wav2Vec2FeatureExtractor``), one forward pass of the encoder
  under ``torch.no_grad()`` (batch of one, default threads), mean over time. Its clock starts
  after the model is loaded; ours includes its load, so ``speedup`` leans against ours.

``--workers 1,2`` also runs ours through Ray Data (``use_ray=True``) with N model actors on
this one machine, in the calling process (an existing Ray session is reused; otherwise one is
started with ``num_cpus=os.cpu_count()`` and shut down after). On a CPU machine the N actors
share the same cores (each gets cores / N torch threads), on a one-GPU machine the same GPU
(``ray.num_gpus_per_worker = 1/N``): that measures contention, not scaling across devices,
and the output says so (``scaling_note``).

FLOPs per epoch are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one forward
of a batch of one (plus PyTorch's CPU flash-attention kernel, which the counter leaves out).
``mfu`` divides the achieved rate by the device's dense bf16/fp16 peak where the GPU is known
by name; on CPU it is null, and the achieved GFLOP/s stands beside a measured fp32 GEMM rate
of the same cores (``cpu_gemm_gflops``), the practical ceiling for a float32 model.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from sleepsound.bench.ingest import (
    PEAK_METHOD,
    BenchError,
    cpu_seconds,
    ensure_night,
    package_versions,
    peak_rss_mb,
    require_librosa,
    run_stage,
    significant,
    stage_main,
)

DEFAULT_BACKBONE = "whisper-tiny.en-offline"
_MODULE = "sleepsound.bench.embed"  # the child stages run as `python -m` of this module
DEFAULT_MINUTES = 30.0  # 60 epochs: about 1.5 minutes for the whole benchmark on 2 CPU cores
SAMPLE_RATE = 48_000
EPOCH_SECONDS = 30.0
GOAL_SPEEDUP = 5.0
GOAL_OVERHEAD_FRACTION = 0.20
GOAL_NIGHT_SECONDS = 10.0  # an 8-hour night on one GPU, decode and resample included
GOAL_SCALING_EFFICIENCY = 0.80
GOAL_FEED_X_REALTIME_PER_CORE = 1500.0  # the pipeline alone (null backbone): audio s per CPU s
DEFAULT_FEED_NIGHTS = 8
NIGHT_HOURS = 8.0
# Dense (no sparsity) bf16/fp16 tensor-core peaks in TFLOP/s, matched against the CUDA device name.
PEAK_TFLOPS_BF16: tuple[tuple[str, float], ...] = (
    ("H100 PCIE", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
)
OURS_METHOD = (
    "embed.cohort.embed_cohort([row], root, cfg, use_ray=False) end to end: backbone load, EDF decode, "
    "soxr HQ to 16 kHz, 50 Hz high-pass, pre-emphasis, epoch checks and normalisation, the model "
    "(batches of batch_size), float16 Parquet writes; shifted training windows off"
)
MODEL_METHOD = (
    "Backbone.embed on ready-made float32 [batch_size, 480000] batches, the same number of epochs, "
    "after one untimed warm-up batch; log-Mel (Whisper) or normalisation (waveform models) included"
)
BASELINE_METHOD = (
    "per 30-s 48 kHz WAV clip: librosa.load(path, sr=16000), the transformers feature extractor, "
    "one encoder forward under torch.no_grad() (batch of one, default threads), mean over time; "
    "model load not timed"
)
_VERSIONED = ("torch", "transformers", "numpy", "librosa", "soxr", "ray")


# ----------------------------------------------------------------------------- shared helpers


def bench_config(
    backbone: str,
    device: str,
    dtype: str,
    batch_size: int | str | None,
    compile: bool = False,
    cast_weights: bool = False,
    preprocess_device: str = "cpu",
) -> Any:
    """The pipeline configuration every stage uses: defaults, this backbone, no shifted windows."""
    from sleepsound.core.config import Config

    section: dict[str, Any] = {
        "name": backbone,
        "device": device,
        "dtype": dtype,
        "compile": compile,
        "cast_weights": cast_weights,
    }
    if batch_size is not None:
        section["batch_size"] = batch_size
    return Config.model_validate(
        {"backbone": section, "preprocess": {"device": preprocess_device}, "training": {"shift_augment": False}}
    )


def spec_config(spec: dict[str, Any]) -> Any:
    """``bench_config`` from a stage's spec, as the driver wrote it."""
    return bench_config(
        spec["backbone"],
        spec["device"],
        spec["dtype"],
        spec["batch_size"],
        spec.get("compile", False),
        spec.get("cast_weights", False),
        spec.get("preprocess_device", "cpu"),
    )


def night_row(night: Path, cfg: Any) -> dict[str, Any]:
    """The night's manifest row (headers, SHA-256, labels), as the flow's ingest writes it."""
    from sleepsound.ingest.discovery import discover
    from sleepsound.ingest.validate import validate_recording

    for legacy in night.glob("clips-*"):  # the baseline's clips lived inside the night once: now a plain night
        shutil.rmtree(legacy, ignore_errors=True)
    sources = discover(str(night))
    if len(sources) != 1:
        raise BenchError(f"{night}: expected one recording, found {len(sources)}")
    row = validate_recording(sources[0], cfg.preprocess)
    if row["status"] != "accepted":
        raise BenchError(f"{row['recording_id']} quarantined: {row['reason']}")
    return row


def ensure_clips(night: Path, cfg: Any) -> Path:
    """The night's ``Mic`` channel as 30-s WAV clips at its own rate (the baseline's input), written once."""
    import soundfile as sf

    from sleepsound.embed.epochs import recording_source
    from sleepsound.ingest.discovery import local_copies
    from sleepsound.ingest.validate import probe_parts
    from sleepsound.io.audio import iter_night_blocks

    # Beside the night, not in it: WAV files in a source folder are nights of their own.
    out = night.parent / f"{night.name}-clips-{cfg.preprocess.channel}"
    if (out / "done").is_file():
        return out
    row = night_row(night, cfg)
    src = recording_source(row)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=night.parent))
    try:
        with local_copies(src.audio_uris) as paths:
            parts = probe_parts(src, paths, cfg.preprocess)
            rate = int(parts[0].sample_rate)
            block = int(round(EPOCH_SECONDS * rate))
            for i, clip in enumerate(iter_night_blocks(parts, block, src.layout)):
                if len(clip) < block or i >= int(row["n_epochs"]):
                    break
                sf.write(tmp / f"clip-{i:05d}.wav", clip, rate, subtype="FLOAT")
        (tmp / "done").write_text("")
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / "done").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def count_flops_per_epoch(backbone: Any, n_samples: int) -> int:
    """FLOPs of one ``Backbone.embed`` of a single segment, counted by PyTorch's FLOP counter.

    The counter knows the CUDA attention kernels but not ``_scaled_dot_product_flash_attention_for_cpu``
    (a third of Whisper tiny's work), so that one is added with the counter's own SDPA formula.
    """
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_flash(
        query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any
    ) -> int:
        return int(sdpa_flop_count(query_shape, key_shape, value_shape))

    extra: dict[Any, Any] = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        extra[op] = cpu_flash
    segment = np.random.default_rng(1).standard_normal((1, n_samples)).astype(np.float32) * 0.1
    with FlopCounterMode(display=False, custom_mapping=extra) as counter:
        backbone.embed(segment)
    return int(counter.get_total_flops())


def cpu_gemm_gflops(seconds: float = 1.0, size: int = 2048) -> float:
    """Measured float32 matrix-multiply rate of this process's torch threads: a float32 model's ceiling."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2.0 * size**3 * n / (time.perf_counter() - t0) / 1e9


def device_name(device: str) -> str:
    """The device in words: the GPU's name, or the CPU model and its core count."""
    import torch

    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def peak_tflops(name: str, dtype: str) -> float | None:
    """Dense bf16/fp16 peak of a GPU known by name; None for CPUs, float32 runs and unknown GPUs."""
    if dtype not in ("bfloat16", "float16"):
        return None
    upper = name.upper()
    for key, peak in PEAK_TFLOPS_BF16:
        if key in upper:
            return peak
    return None


# ----------------------------------------------------------------------------- stages (child side)


def timed_embed(row: dict[str, Any], cfg: Any, use_ray: bool, what: str) -> tuple[Any, float]:
    """``embed_cohort`` of one night into a throwaway storage root -> (stats, wall seconds)."""
    from sleepsound.embed.cohort import embed_cohort

    root = tempfile.mkdtemp(prefix="sleepsound-bench-embed-")
    try:
        t0 = time.perf_counter()
        stats = embed_cohort([row], root, cfg, use_ray=use_ray)
        seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if stats.failed:
        raise BenchError(f"{what} failed: {stats.failed}")
    return stats, seconds


def _stage_ours(spec: dict[str, Any]) -> dict[str, Any]:
    cfg = spec_config(spec)
    row = night_row(Path(spec["night"]), cfg)
    cpu0 = cpu_seconds()
    stats, seconds = timed_embed(row, cfg, use_ray=False, what="embedding")
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds() - cpu0,
        "epochs": stats.epochs,
        "audio_seconds": float(row["duration_s"]),
        "n_epochs": int(row["n_epochs"]),
        "peak_rss_mb": peak_rss_mb(),
    }


def _stage_model(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    from sleepsound.embed.model_stage import resolve_device
    from sleepsound.models.backbones.pretrained import load_configured

    cfg = spec_config(spec)
    b = cfg.backbone
    device = resolve_device(b.device)
    t0 = time.perf_counter()
    backbone = load_configured(b, device)
    load_seconds = time.perf_counter() - t0
    n_samples = int(round(EPOCH_SECONDS * cfg.preprocess.target_rate))
    epochs = int(spec["epochs"])
    size = backbone.auto_batch_size(n_samples, cap=b.stream_rows) if b.batch_size == "auto" else int(b.batch_size)
    batch = np.random.default_rng(0).standard_normal((size, n_samples)).astype(np.float32) * 0.1
    backbone.embed(batch)  # warm-up: kernel selection, allocator, lazy initialisation
    t0 = time.perf_counter()
    for start in range(0, epochs, size):
        backbone.embed(batch[: min(size, epochs - start)])  # returns host memory: CUDA work has finished
    seconds = time.perf_counter() - t0
    flops = count_flops_per_epoch(backbone, n_samples)
    gemm = cpu_gemm_gflops() if device == "cpu" else None
    return {
        "seconds": seconds,
        "epochs": epochs,
        "load_seconds": load_seconds,
        "flops_per_epoch": flops,
        "cpu_gemm_gflops": gemm,
        "device": device,
        "device_name": device_name(device),
        "dtype": backbone.dtype,
        "batch_size": size,
        "family": backbone.family,
        "torch_threads": _torch_threads(),
        "peak_rss_mb": peak_rss_mb(),
    }


def tutorial_embed(paths: list[str], backbone: Any) -> tuple[int, float, float]:
    """The tutorial's loop with ``backbone``'s frozen weights: per file ``librosa.load(path, sr=16000)``,
    the transformers feature extractor, one forward under ``torch.no_grad()`` (batch of one), mean over
    time. Returns (files embedded, audio seconds, wall seconds); the clock starts after the set-up."""
    require_librosa()
    import librosa
    import torch

    model, family, device = backbone.model, backbone.family, backbone.device
    if family == "null":  # no model: the tutorial's data path (per-clip decode and resample) alone
        load = librosa.load
        t0 = time.perf_counter()
        audio_s = 0.0
        for path in paths:
            audio, _ = load(str(path), sr=16_000)
            audio_s += len(audio) / 16_000
            backbone.embed(audio[None, :]).mean(axis=1)
        return len(paths), audio_s, time.perf_counter() - t0
    if family == "whisper":
        extractor, field = backbone.feature_extractor, "input_features"
    else:
        from transformers import Wav2Vec2FeatureExtractor

        extractor = Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True, return_attention_mask=False
        )
        field = "input_values"
    autocast = backbone._autocast  # ours' precision (float32 on CPU), so the comparison is the pipeline's
    load, _ = librosa.load, librosa.resample  # librosa loads its submodules lazily: before the clock starts
    t0 = time.perf_counter()
    pooled, audio_s = [], 0.0
    for path in paths:
        audio, _ = load(str(path), sr=16_000)
        audio_s += len(audio) / 16_000
        inputs = getattr(extractor(audio, sampling_rate=16_000, return_tensors="pt"), field).to(device)
        with torch.no_grad(), autocast():
            hidden = model(inputs).last_hidden_state
        pooled.append(hidden.mean(dim=1).float().cpu().numpy())
    return len(pooled), audio_s, time.perf_counter() - t0


def _stage_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    from sleepsound.embed.model_stage import resolve_device
    from sleepsound.models.backbones.pretrained import load_configured

    cfg = spec_config(spec)
    b = cfg.backbone
    backbone = load_configured(b, resolve_device(b.device), compile=False)
    clips = sorted(Path(spec["clips"]).glob("clip-*.wav"))[: int(spec["epochs"])]
    n, _, seconds = tutorial_embed([str(c) for c in clips], backbone)
    return {"seconds": seconds, "epochs": n, "torch_threads": _torch_threads(), "peak_rss_mb": peak_rss_mb()}


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _stage_feed(spec: dict[str, Any]) -> dict[str, Any]:
    """Ours through Ray Data on a cohort, this process (so Ray and every worker it starts) pinned to
    ``cores`` CPU cores and Ray given as many logical CPUs: the feed's rate on that many cores."""
    import ray

    from sleepsound.embed.cohort import embed_cohort
    from sleepsound.embed.ray_adapter import import_ray_data
    from sleepsound.ingest.manifest import build_manifest

    cores = int(spec["cores"])
    available = sorted(os.sched_getaffinity(0))
    if cores > len(available):
        raise BenchError(f"--cores {cores}: this process may use {len(available)} cores")
    os.sched_setaffinity(0, set(available[:cores]))
    cfg = bench_config(spec["backbone"], spec["device"], spec["dtype"], spec["batch_size"])
    # The readers share the cores; the (cost-free) model actor keeps a sliver.
    cfg = cfg.model_copy(
        update={"ray": cfg.ray.model_copy(update={"read_cpus": round((cores - 0.05) / cores, 3), "embed_cpus": 0.05})}
    )
    rows = [r for r in build_manifest(spec["cohort"], cfg.preprocess) if r["status"] == "accepted"]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A new local session always: with a cluster already running on the machine (``ray start``, another
    # run's), a plain init would join it, unpinned, and refuse num_cpus.
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False)
    import_ray_data()  # before the clock, as the flow's long-lived driver has it
    root = tempfile.mkdtemp(prefix="sleepsound-bench-feed-")
    try:
        t0 = time.perf_counter()
        stats = embed_cohort(rows, root, cfg, use_ray=True, shifted=False)
        seconds = time.perf_counter() - t0
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)
    if stats.failed:
        raise BenchError(f"feed run on {cores} core(s) failed: {stats.failed}")
    return {
        "cores": cores,
        "seconds": seconds,
        "epochs": stats.epochs,
        "nights": len(stats.embedded),
        "audio_seconds": float(sum(r["duration_s"] for r in rows)),
    }


_STAGES = {"ours": _stage_ours, "model": _stage_model, "baseline": _stage_baseline, "feed": _stage_feed}


def measure_feed_scaling(cohort: Path, spec: dict[str, Any], cores: list[int]) -> list[dict[str, Any]]:
    """The Ray path on a cohort with 1..N cores, each run in its own pinned process (see ``_stage_feed``)."""
    out = []
    for n in cores:
        run = run_stage(_MODULE, "feed", {**spec, "cohort": str(cohort), "cores": n})
        out.append(
            {
                "cores": n,
                "seconds": round(run["seconds"], 3),
                "nights": run["nights"],
                "epochs": run["epochs"],
                "x_realtime": significant(run["audio_seconds"] / run["seconds"], 4),
                "epochs_per_s": round(run["epochs"] / run["seconds"], 2),
            }
        )
    one = next((r["x_realtime"] for r in out if r["cores"] == 1), None)
    for r in out:
        r["efficiency"] = round(r["x_realtime"] / (r["cores"] * one), 3) if one else None
    return out


# ----------------------------------------------------------------------------- Ray scaling (calling process)


def measure_ray_scaling(night: Path, cfg: Any, workers: list[int], device: str) -> list[dict[str, Any]]:
    """Ours through Ray Data with N model actors on this machine, for each N in ``workers``.

    Reuses a running Ray session; otherwise starts one with ``num_cpus=os.cpu_count()`` and
    shuts it down after. Logical CPUs are split so the reader (``ray.read_cpus``) and N actors
    fit; on CUDA each actor holds 1/N of the one GPU.
    """
    import ray

    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        cpus = float(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        row = night_row(night, cfg)
        out: list[dict[str, Any]] = []
        for n in workers:
            embed_cpus = max(0.05, min(1.0, (cpus - cfg.ray.read_cpus - 0.05) / n))
            ray_cfg = cfg.model_copy(
                update={
                    "ray": cfg.ray.model_copy(
                        update={
                            "embed_workers": n,
                            "embed_cpus": round(embed_cpus, 3),
                            "num_gpus_per_worker": (1.0 / n) if device.startswith("cuda") else 0.0,
                        }
                    )
                }
            )
            stats, seconds = timed_embed(row, ray_cfg, use_ray=True, what=f"Ray embedding with {n} workers")
            out.append(
                {
                    "workers": n,
                    "seconds": round(seconds, 3),
                    "epochs": stats.epochs,
                    "epochs_per_s": round(stats.epochs / seconds, 3),
                    "embed_cpus_per_worker": round(embed_cpus, 3),
                    "gpus_per_worker": ray_cfg.ray.num_gpus_per_worker,
                }
            )
    finally:
        if started:
            ray.shutdown()
    base = next((s["epochs_per_s"] for s in out if s["workers"] == 1), None)
    for s in out:
        s["efficiency"] = round(s["epochs_per_s"] / (s["workers"] * base), 3) if base else None
    return out


def scaling_note(device: str, workers: list[int]) -> str:
    """What the scaling figures mean on this machine."""
    if device.startswith("cuda"):
        return (
            f"simulated: {max(workers)} Ray model actors share this machine's one GPU (num_gpus_per_worker = 1/N); "
            "efficiency here is contention on one GPU, not scaling across GPUs"
        )
    return (
        f"simulated on CPU: {max(workers)} Ray model actors share this machine's {os.cpu_count()} cores "
        "(each actor gets cores / N torch threads), so efficiency measures CPU contention, not scaling "
        "across devices; timings include actor start-up and each actor's model load"
    )


# ----------------------------------------------------------------------------- driver (parent side)


def _goals(
    device: str,
    speedup: float,
    overhead: float | None,
    x_realtime: float,
    scaling: list[dict[str, Any]],
    per_core: float | None = None,
    feed: list[dict[str, Any]] | None = None,
) -> tuple[dict[str, bool], dict[str, str]]:
    """The issue's goals that apply on this device and backbone, and why the others do not.

    ``overhead`` and ``per_core`` are None / given with the null backbone: then the goals are the
    feed's own (per-core rate, scaling over cores), since there is no model to keep busy."""
    skipped: dict[str, str] = {}
    if overhead is None:
        goals = {"feed_x_realtime_per_core_at_least_1500": (per_core or 0.0) >= GOAL_FEED_X_REALTIME_PER_CORE}
        multi = [r for r in feed or [] if r["cores"] > 1 and r["efficiency"] is not None]
        if multi:
            goals["feed_scaling_at_least_0.8"] = all(r["efficiency"] >= GOAL_SCALING_EFFICIENCY for r in multi)
        else:
            skipped["feed_scaling_at_least_0.8"] = "no --cores run with N > 1 (and 1)"
        skipped["speedup_at_least_5"] = skipped["overhead_under_0.20"] = "goals of a real model; this is null"
        return goals, skipped
    goals = {"speedup_at_least_5": speedup >= GOAL_SPEEDUP, "overhead_under_0.20": overhead < GOAL_OVERHEAD_FRACTION}
    if device.startswith("cuda"):
        goals["eight_hour_night_within_10_s"] = NIGHT_HOURS * 3600.0 / x_realtime <= GOAL_NIGHT_SECONDS
        multi = [s for s in scaling if s["workers"] > 1 and s["efficiency"] is not None]
        if multi:
            goals["scaling_efficiency_at_least_0.8"] = all(s["efficiency"] >= GOAL_SCALING_EFFICIENCY for s in multi)
        else:
            skipped["scaling_efficiency_at_least_0.8"] = "no --workers run with N > 1"
    else:
        skipped["eight_hour_night_within_10_s"] = "a one-GPU goal; this run is on CPU"
        skipped["scaling_efficiency_at_least_0.8"] = "a multi-GPU goal; this run is on CPU"
    return goals, skipped


def run_embed_bench(
    backbone: str = DEFAULT_BACKBONE,
    minutes: float = DEFAULT_MINUTES,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int | str | None = None,
    workers: list[int] | None = None,
    workdir: Path | None = None,
    sample_rate: int = SAMPLE_RATE,
    seed: int = 0,
    compile: bool = False,
    cores: list[int] | None = None,
    feed_nights: int = DEFAULT_FEED_NIGHTS,
    feed_minutes: float = DEFAULT_MINUTES,
    cast_weights: bool = False,
    preprocess_device: str = "cpu",
) -> dict[str, Any]:
    """Generate (or reuse) a night, measure ours, the bare model and the baseline, return the JSON object.

    ``cores``: also run ours through Ray Data on a cohort of ``feed_nights`` nights of ``feed_minutes``,
    pinned to each of these core counts (the feed's scaling; meant for the null backbone).

    Top-level ``seconds``, ``epochs_per_s``, ``x_realtime`` (audio seconds / wall seconds) and
    ``peak_rss_mb`` are ours; ``model_*`` the bare model's; ``baseline_*`` the baseline's.
    """
    if minutes < EPOCH_SECONDS / 60.0:
        raise BenchError("minutes must cover at least one 30-s epoch")
    if workers is not None and (not workers or min(workers) < 1):
        raise BenchError("workers must be positive counts, e.g. 1,2")
    if preprocess_device not in ("cpu", "model"):
        raise BenchError(f"--preprocess-device is cpu or model, got {preprocess_device!r}")
    if cores is not None and (not cores or min(cores) < 1 or max(cores) > len(os.sched_getaffinity(0))):
        raise BenchError(f"cores must be counts from 1 to {len(os.sched_getaffinity(0))}, e.g. 1,2")
    if backbone == "mel":
        raise BenchError(
            "the baseline runs a transformers model clip by clip; 'mel' has no model to compare "
            "(its front end costs about 8 ms per epoch)"
        )
    require_librosa()
    from sleepsound.embed.model_stage import resolve_device

    resolved = resolve_device(device)
    cfg = bench_config(backbone, resolved, dtype, batch_size, compile, cast_weights, preprocess_device)
    t0 = time.perf_counter()
    night, generated = ensure_night(minutes / 60.0, sample_rate, seed, workdir)
    clips = ensure_clips(night, cfg)
    prepare_s = time.perf_counter() - t0

    spec = {
        "night": str(night),
        "clips": str(clips),
        "backbone": backbone,
        "device": resolved,
        "dtype": dtype,
        "batch_size": batch_size,
        "compile": compile,
        "cast_weights": cast_weights,
        "preprocess_device": preprocess_device,
    }
    ours = run_stage(_MODULE, "ours", spec)
    epochs = int(ours["epochs"])
    model = run_stage(_MODULE, "model", {**spec, "epochs": epochs})
    base = run_stage(_MODULE, "baseline", {**spec, "epochs": epochs})
    scaling = measure_ray_scaling(night, cfg, sorted(set(workers)), resolved) if workers else []
    feed: list[dict[str, Any]] = []
    if cores:
        from sleepsound.bench.score import ensure_cohort

        cohort = ensure_cohort(feed_nights, feed_minutes, sample_rate, seed, workdir)
        feed = measure_feed_scaling(cohort, spec, sorted(set(cores)))
    null = backbone == "null"

    audio_s = float(ours["audio_seconds"])
    eps = epochs / ours["seconds"]
    base_eps = base["epochs"] / base["seconds"]
    overhead = None if null else (ours["seconds"] - model["seconds"]) / model["seconds"]
    per_core = audio_s / ours["cpu_seconds"]
    flops = int(model["flops_per_epoch"])
    model_tflops = flops * epochs / model["seconds"] / 1e12
    peak = peak_tflops(model["device_name"], model["dtype"])
    x_realtime = audio_s / ours["seconds"]
    speedup = eps / base_eps
    goals, skipped = _goals(resolved, speedup, overhead, x_realtime, scaling, per_core, feed)
    gemm = model["cpu_gemm_gflops"]
    return {
        "benchmark": "embed",
        "backbone": backbone,
        "device": resolved,
        "device_name": model["device_name"],
        "dtype": model["dtype"],
        "batch_size": model["batch_size"],
        "compile": compile,
        "cast_weights": cast_weights,
        "preprocess_device": preprocess_device,
        "torch_threads": model["torch_threads"],
        "audio_minutes": round(audio_s / 60.0, 3),
        "sample_rate": sample_rate,
        "epochs": epochs,
        "seconds": round(ours["seconds"], 3),
        "epochs_per_s": significant(eps, 4),
        "x_realtime": significant(x_realtime, 4),
        "cpu_seconds": round(ours["cpu_seconds"], 3),
        "x_realtime_per_core": significant(per_core, 4),
        "peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "eight_hour_night_seconds": round(NIGHT_HOURS * 3600.0 / x_realtime, 1),
        "model_seconds": round(model["seconds"], 3),
        "model_epochs_per_s": significant(epochs / model["seconds"], 4),
        "backbone_load_seconds": round(model["load_seconds"], 3),
        "overhead_fraction": None if overhead is None else round(overhead, 3),
        "overhead_fraction_after_load": None
        if overhead is None
        else round(overhead - model["load_seconds"] / model["seconds"], 3),
        "baseline_epochs_per_s": significant(base_eps, 4),
        "baseline_seconds": round(base["seconds"], 3),
        "baseline_peak_rss_mb": round(base["peak_rss_mb"], 1),
        "speedup": significant(speedup),
        "flops_per_epoch": flops,
        "model_tflops_per_s": round(model_tflops, 4),
        "model_gflops_per_s": round(model_tflops * 1e3, 1),
        "ours_gflops_per_s": round(flops * epochs / ours["seconds"] / 1e9, 1),
        "baseline_gflops_per_s": round(flops * base["epochs"] / base["seconds"] / 1e9, 1),
        "cpu_gemm_gflops": None if gemm is None else round(gemm, 1),
        "peak_tflops": peak,
        "mfu": None if peak is None else round(model_tflops / peak, 4),
        "scaling": scaling,
        "scaling_note": scaling_note(resolved, workers) if workers else None,
        "feed_scaling": feed,
        "feed_nights": feed_nights if cores else None,
        "feed_minutes_per_night": feed_minutes if cores else None,
        "goals": goals,
        "goals_not_applicable": skipped,
        "method": {
            "ours": OURS_METHOD,
            "model": MODEL_METHOD,
            "baseline": BASELINE_METHOD,
            "x_realtime": "audio seconds / wall seconds of ours",
            "x_realtime_per_core": "audio seconds / CPU seconds (user + system, every thread) of ours' process",
            "feed_scaling": "ours through Ray Data (use_ray=True) on a cohort of feed_nights nights, in a fresh "
            "process pinned to N cores (sched_setaffinity, inherited by Ray's workers) with a Ray session of N "
            "CPUs: readers hold (N - 0.05) / N CPUs each, the model actor 0.05; wall time from the manifest "
            "rows to the cache, Ray Data's start-up included (its import not); "
            "efficiency = rate on N / (N x rate on 1)",
            "overhead_fraction": "(ours seconds - model seconds) / model seconds; ours includes its backbone load",
            "overhead_fraction_after_load": "the same less the backbone load (paid once per worker, not per night)",
            "peak_rss_mb": PEAK_METHOD + "; Ray scaling runs are not measured (their memory is in the Ray workers)",
            "flops_per_epoch": "torch FlopCounterMode on one Backbone.embed of a single 30-s segment "
            "(+ CPU flash attention by the counter's SDPA formula)",
            "mfu": "model_tflops_per_s / the GPU's dense bf16/fp16 peak; null on CPU (see cpu_gemm_gflops)",
        },
        "night": {"path": str(night), "generated_now": generated, "prepare_seconds": round(prepare_s, 1), "seed": seed},
        "versions": package_versions(_VERSIONED),
        "date": dt.date.today().isoformat(),
    }


def parse_workers(text: str | None, option: str = "--workers") -> list[int] | None:
    """``"1,2"`` -> ``[1, 2]``; None or empty -> None."""
    if not text:
        return None
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise BenchError(f"{option} takes comma-separated counts such as 1,2; got {text!r}") from exc
    if not values or min(values) < 1:
        raise BenchError(f"{option} takes positive counts such as 1,2; got {text!r}")
    return values


def main(argv: list[str] | None = None) -> None:
    """Child entry point: ``python -m sleepsound.bench.embed --stage ours|model|baseline --spec JSON``."""
    stage_main(_STAGES, "Run one stage of the embedding benchmark and print its figures.", argv)


if __name__ == "__main__":
    main()
