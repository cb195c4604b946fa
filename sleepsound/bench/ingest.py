"""``sleepsound bench ingest``: how fast and how lean one night's ingest is, beside a simple baseline.

The night is a synthetic PSG-Audio recording (``synth.writers.generate_cohort``): 8 hours by
default, EDF parts of one hour, the two microphones (``Mic``, ``Tracheal``) at 48 kHz beside
slower PSG signals. Generating it takes minutes, so it is cached under
``$SLEEPSOUND_CACHE/bench/`` (default ``~/.cache/sleepsound/bench/``), or under ``workdir``,
keyed by its parameters and written atomically (generated in a temporary folder, then renamed).

Two stages are measured, each in its own fresh Python process (``python -m
sleepsound.bench.ingest --stage ...``) so that each one's peak memory is its own:

* **ours**: what the flow does per night, minus the model: ``ingest.discovery.discover`` +
  ``ingest.validate.validate_recording`` (headers, SHA-256 of every part, labels) + consuming every row
  of ``embed.epochs.read_epochs`` (the ``Mic`` channel streamed in blocks, soxr HQ to 16 kHz,
  50 Hz biquad high-pass, pre-emphasis, per-epoch quality checks and normalisation).
* **baseline**, as a tutorial would write it: each ~1-hour EDF part loaded whole with pyedflib
  (librosa cannot read EDF), ``librosa.resample(..., res_type="soxr_hq")`` to 16 kHz, then the
  same 50 Hz high-pass + pre-emphasis with scipy, cut into 30-s epochs. One part at a time:
  loading all 8 hours at once would need more than 10 GB.

Figures, per stage, for the measured work only (imports and generation excluded):

* ``seconds``: wall-clock seconds; ``x_realtime`` = audio seconds / wall seconds.
* ``cpu_seconds``: user + system CPU seconds of the stage's process (all its threads);
  ``x_realtime_per_core`` = audio seconds / CPU seconds, i.e. how many seconds of audio one
  core gets through per second of its time.
* ``peak_rss_mb``: the process's peak resident set size (``VmHWM``), imports included.

Goals from the issue: ours under 1.5 GB peak, at least 200x real time per core, and faster
(wall clock) than the baseline.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_MODULE = "sleepsound.bench.ingest"  # the child stages run as `python -m` of this module
BASELINE_METHOD = (
    "each ~1-hour EDF part loaded whole with pyedflib (librosa cannot read EDF), "
    "librosa.resample(..., res_type='soxr_hq') to 16 kHz, then the same 50 Hz high-pass + "
    "pre-emphasis with scipy, cut into 30-s epochs; one part at a time"
)
PEAK_METHOD = "VmHWM (peak resident set size) of the stage's own fresh process, imports included"
OURS_METHOD = (
    "ingest.discovery.discover + ingest.validate.validate_recording (headers, SHA-256, labels) + every row of "
    "embed.epochs.read_epochs (streamed blocks, soxr HQ to 16 kHz, 50 Hz high-pass, pre-emphasis, "
    "per-epoch quality checks and normalisation)"
)
GOAL_PEAK_RSS_MB = 1500.0
GOAL_X_REALTIME_PER_CORE = 200.0
_VERSIONED = ("numpy", "scipy", "soxr", "pyedflib", "librosa")


class BenchError(RuntimeError):
    """The benchmark cannot run (a missing dependency, a stage that failed)."""


def require_librosa() -> None:
    """Fail early, with the fix, when the baseline's library is not installed."""
    if importlib.util.find_spec("librosa") is None:
        raise BenchError(
            "the ingest benchmark's baseline needs librosa, which is not installed: "
            "pip install 'sleepsound[bench]' (or: .venv/bin/pip install 'librosa>=0.10')"
        )


def bench_root(workdir: Path | None = None) -> Path:
    """Where generated nights are kept: ``workdir`` or ``$SLEEPSOUND_CACHE/bench``."""
    if workdir is not None:
        return Path(workdir)
    from sleepsound.models.backbones.whisper_ct2 import cache_root

    return cache_root() / "bench"


def check_room(workdir: Path | None, size_bytes: float, what: str) -> None:
    """Refuse, before generating, an input the bench root's disk cannot hold: ``--hours 10000`` or
    ``--clips 100000000`` started writing terabytes with no bound, and NaN sizes failed later as
    unexpected errors."""
    if not (math.isfinite(size_bytes) and size_bytes > 0):
        raise BenchError(f"{what}: needs a positive, finite size")
    from sleepsound.core.storage import free_bytes_at

    existing, free = free_bytes_at(bench_root(workdir).resolve())
    if size_bytes > free:
        raise BenchError(f"{what} needs about {size_bytes / 1e9:.1f} GB; {existing} has {free / 1e9:.1f} GB free")


def night_name(hours: float, sample_rate: int, seed: int) -> str:
    """Cache key of a generated night: every parameter that changes its bytes."""
    from sleepsound.synth.writers import GENERATOR_VERSION

    return f"psg-audio-{hours:g}h-{int(sample_rate)}hz-seed{seed}-gen{GENERATOR_VERSION}"


def ensure_generated(name: str, generate: Callable[[Path], None], workdir: Path | None = None) -> tuple[Path, bool]:
    """A generated source under the bench root, made once: ``generate`` fills a hidden folder that
    is then renamed into place, so a half-made one is never reused. Returns it and whether it was
    made just now."""
    root = bench_root(workdir)
    target = root / name
    if (target / "cohort.json").is_file():
        return target, False
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        generate(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "cohort.json").is_file():  # not another run finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, True


def ensure_night(hours: float, sample_rate: int, seed: int, workdir: Path | None = None) -> tuple[Path, bool]:
    """The generated night's folder (a PSG-Audio source) and whether it was generated just now."""
    from sleepsound.synth.writers import generate_cohort

    return ensure_generated(
        night_name(hours, sample_rate, seed),
        lambda out: generate_cohort(
            out, n_subjects=1, hours=hours, seed=seed, sample_rate=sample_rate, layout="psg-audio", part_seconds=3600
        ),
        workdir,
    )


def run_stage(module: str, stage: str, spec: dict[str, Any]) -> dict[str, Any]:
    """One stage of a benchmark in a fresh interpreter (``python -m module``), so its peak memory
    is its own; its figures come back as the last line of stdout."""
    proc = subprocess.run(
        [sys.executable, "-m", module, "--stage", stage, "--spec", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise BenchError(f"the {stage!r} stage failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stage_main(
    stages: dict[str, Callable[[dict[str, Any]], dict[str, Any]]], description: str, argv: list[str] | None = None
) -> None:
    """Child side of ``run_stage``: ``--stage NAME --spec JSON`` in, one JSON line of figures out."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--stage", choices=sorted(stages), required=True)
    parser.add_argument("--spec", required=True)
    args = parser.parse_args(argv)
    try:
        result = stages[args.stage](json.loads(args.spec))
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    print(json.dumps(result))


# ----------------------------------------------------------------------------- stages (child side)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (imports included).

    Linux's ``VmHWM`` (the high-water mark of this address space, reset at ``exec``), not
    ``ru_maxrss``: that one survives ``execve``, so a stage started by ``subprocess`` from a
    large parent would report at least the parent's peak. ``ru_maxrss`` only where there is no
    ``/proc`` (macOS).
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _stage_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from sleepsound.core.config import PreprocessConfig
    from sleepsound.embed.epochs import read_epochs
    from sleepsound.ingest.discovery import discover
    from sleepsound.ingest.validate import validate_recording

    cfg = PreprocessConfig()
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    epochs, audio_s, rate, channels = 0, 0.0, None, []
    for src in discover(spec["source"]):
        row = validate_recording(src, cfg)
        if row["status"] != "accepted":
            raise BenchError(f"{src.recording_id} quarantined: {row['reason']}")
        audio_s += row["duration_s"]
        rate, channels = row["sample_rate"], list(row["channels"])
        for epoch in read_epochs(row, cfg):
            if epoch["error"]:
                raise BenchError(f"{src.recording_id}: {epoch['error']}")
            epochs += 1
    return {
        "seconds": time.perf_counter() - wall0,
        "cpu_seconds": cpu_seconds() - cpu0,
        "peak_rss_mb": peak_rss_mb(),
        "epochs": epochs,
        "audio_seconds": audio_s,
        "sample_rate": rate,
        "channels_in_file": channels,
    }


def _stage_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    require_librosa()
    import librosa
    import numpy as np
    import pyedflib
    from scipy import signal

    from sleepsound.core.config import PreprocessConfig
    from sleepsound.ingest.discovery import discover, local_copies

    cfg = PreprocessConfig()
    sos = signal.butter(2, cfg.highpass_hz, btype="highpass", fs=cfg.target_rate, output="sos")
    epoch_len = int(round(cfg.epoch_seconds * cfg.target_rate))
    resample = librosa.resample  # librosa loads its submodules lazily: load them before the clock starts
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    epochs, audio_s = 0, 0.0
    for src in discover(spec["source"]):
        with local_copies(src.audio_uris) as paths:
            for path in paths:
                reader = pyedflib.EdfReader(path)
                try:
                    index = [label.strip() for label in reader.getSignalLabels()].index(cfg.channel)
                    rate = float(reader.getSampleFrequency(index))
                    x = reader.readSignal(index)  # the whole ~1-hour part
                finally:
                    reader.close()
                audio_s += len(x) / rate
                y = resample(x, orig_sr=rate, target_sr=cfg.target_rate, res_type="soxr_hq")
                del x
                y = signal.sosfilt(sos, y)
                y = signal.lfilter([1.0, -cfg.preemphasis], [1.0], y)
                n = len(y) // epoch_len
                part_epochs = y[: n * epoch_len].reshape(n, epoch_len).astype(np.float32)
                epochs += len(part_epochs)
                del y, part_epochs
    return {
        "seconds": time.perf_counter() - wall0,
        "cpu_seconds": cpu_seconds() - cpu0,
        "peak_rss_mb": peak_rss_mb(),
        "epochs": epochs,
        "audio_seconds": audio_s,
    }


_STAGES = {"ours": _stage_ours, "baseline": _stage_baseline}


# ----------------------------------------------------------------------------- driver (parent side)


def significant(x: float, digits: int = 3) -> float:
    """``x`` to ``digits`` significant figures: a rate or a ratio rounded to fixed decimals keeps one
    digit when it is small (a loaded machine's 0.07 clips/s is 0.074), and a reader checking it against
    the seconds beside it would find it 5% off."""
    return float(f"{x:.{digits}g}")


def _figures(stage: dict[str, Any], audio_s: float) -> dict[str, float]:
    return {
        "seconds": round(stage["seconds"], 3),
        "cpu_seconds": round(stage["cpu_seconds"], 3),
        "x_realtime": round(audio_s / stage["seconds"], 1),
        "x_realtime_per_core": round(audio_s / stage["cpu_seconds"], 1),
        "peak_rss_mb": round(stage["peak_rss_mb"], 1),
    }


def package_versions(names: tuple[str, ...] = _VERSIONED) -> dict[str, str | None]:
    """Python's and these packages' versions (None when not installed), for a benchmark's record."""
    out: dict[str, str | None] = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def run_ingest_bench(
    hours: float = 8.0, sample_rate: int = 48_000, workdir: Path | None = None, seed: int = 0
) -> dict[str, Any]:
    """Generate (or reuse) a night, measure ours and the baseline in their own processes, return the JSON object.

    ``x_realtime_per_core`` is audio seconds divided by the stage's CPU seconds (user + system);
    ``x_realtime`` is audio seconds divided by wall seconds; ``peak_rss_mb`` is the stage's own
    process peak. Top-level ``seconds``, ``x_realtime_per_core`` and ``peak_rss_mb`` are ours;
    ``baseline_*`` the baseline's.
    """
    if not (math.isfinite(hours) and hours > 0) or sample_rate < 1000:
        raise BenchError(
            f"--hours must be positive and finite and --sample-rate at least 1000, got {hours} and {sample_rate}"
        )
    # Mic and Tracheal at 16 bits are most of the EDF parts' bytes
    check_room(workdir, hours * 3600 * sample_rate * 4, f"a {hours:g}-h night at {sample_rate} Hz")
    require_librosa()
    t0 = time.perf_counter()
    night, generated = ensure_night(hours, sample_rate, seed, workdir)
    generate_s = time.perf_counter() - t0
    raw_ours = run_stage(_MODULE, "ours", {"source": str(night)})
    raw_base = run_stage(_MODULE, "baseline", {"source": str(night)})
    audio_s = raw_ours["audio_seconds"]
    ours, base = _figures(raw_ours, audio_s), _figures(raw_base, audio_s)
    return {
        "benchmark": "ingest",
        "audio_hours": round(audio_s / 3600.0, 4),
        "sample_rate": raw_ours["sample_rate"],
        "channels_in_file": raw_ours["channels_in_file"],
        "channel_read": "Mic",
        "epochs": raw_ours["epochs"],
        "baseline_epochs": raw_base["epochs"],
        "seconds": ours["seconds"],
        "x_realtime_per_core": ours["x_realtime_per_core"],
        "peak_rss_mb": ours["peak_rss_mb"],
        "baseline_seconds": base["seconds"],
        "baseline_x_realtime_per_core": base["x_realtime_per_core"],
        "baseline_peak_rss_mb": base["peak_rss_mb"],
        "ours": ours,
        "baseline": base,
        "speedup": round(base["seconds"] / ours["seconds"], 2),
        "goals": {
            "peak_rss_mb_under_1500": ours["peak_rss_mb"] < GOAL_PEAK_RSS_MB,
            "x_realtime_per_core_at_least_200": ours["x_realtime_per_core"] >= GOAL_X_REALTIME_PER_CORE,
            "faster_than_baseline": ours["seconds"] < base["seconds"],
        },
        "method": {
            "ours": OURS_METHOD,
            "baseline": BASELINE_METHOD,
            "x_realtime_per_core": "audio seconds / (user + system CPU seconds of the stage's process)",
            "x_realtime": "audio seconds / wall seconds",
            "peak_rss_mb": PEAK_METHOD,
        },
        "night": {
            "path": str(night),
            "generated_now": generated,
            "generate_seconds": round(generate_s, 1),
            "seed": seed,
        },
        "versions": package_versions(),
    }


def main(argv: list[str] | None = None) -> None:
    """Child entry point: ``python -m sleepsound.bench.ingest --stage ours|baseline --spec '{"source": DIR}'``."""
    stage_main(_STAGES, "Run one stage of the ingest benchmark and print its figures.", argv)


if __name__ == "__main__":
    main()
