"""``sleepsound bench score``: a cohort of short synthetic nights through the ``score`` flow.

What it answers: how fast a whole cohort is scored end to end (validate, embed, predict,
report) as the number of embedding workers grows, where the time goes per stage, and that
memory stays bounded however many nights there are.

The cohort (``nights`` nights of ``minutes`` each, PSG-Audio layout) is generated once and kept
under ``$SLEEPSOUND_CACHE/bench/`` (or ``workdir``). The first ``train_nights`` nights train the
champion heads once (``sleepsound train``, not timed); then, for each worker count, the score
flow runs on a fresh storage root holding only those champions, so nothing is a cache hit.

Each run is its own Python process (``python -m sleepsound.bench.score --stage ...``) so the
figures are its own. Ours is the real flow: Prefect, a local Ray (``ray.embed_workers`` model
actors beside the CPU readers), per-stage wall times from the flow. The **baseline** does the
same work as a plain script would: one process, no Ray, no Prefect, one night after another
(manifest, embed, predict). Memory is the peak of the summed proportional set size (PSS: shared
pages such as Ray's object store counted once) of the run's whole process tree (the driver,
Ray's daemons and workers), sampled every 0.2 s from ``/proc``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sleepsound.bench.ingest import BenchError, ensure_generated, package_versions, run_stage, stage_main

BASELINE_METHOD = ("one process, no Ray or Prefect: build_manifest, then embed_cohort and predict_recordings "
                   "one night after another")
SAMPLE_S = 0.2
_VERSIONED = ("torch", "transformers", "ray", "prefect", "pyarrow")
_MODULE = "sleepsound.bench.score"  # the child stages run as `python -m` of this module


def cohort_name(nights: int, minutes: float, sample_rate: int, seed: int) -> str:
    from sleepsound.synth.writers import GENERATOR_VERSION

    return f"cohort-{nights}x{minutes:g}min-{int(sample_rate)}hz-seed{seed}-gen{GENERATOR_VERSION}"


def ensure_cohort(nights: int, minutes: float, sample_rate: int, seed: int, workdir: Path | None = None) -> Path:
    """The generated cohort's folder, made once."""
    from sleepsound.synth.writers import generate_cohort

    cohort, _ = ensure_generated(cohort_name(nights, minutes, sample_rate, seed),
                                 lambda out: generate_cohort(out, n_subjects=nights, hours=minutes / 60, seed=seed,
                                                             sample_rate=sample_rate, part_seconds=int(minutes * 60),
                                                             cycle_minutes=max(minutes, 1.0)), workdir)
    return cohort


def subset(cohort: Path, count: int, out: Path) -> Path:
    """A source holding the cohort's first ``count`` nights (their EDF folders and RML files)."""
    patients = sorted(p.name for p in (cohort / "APNEA_EDF").iterdir() if p.is_dir())[:count]
    (out / "APNEA_RML").mkdir(parents=True, exist_ok=True)
    for patient in patients:
        shutil.copytree(cohort / "APNEA_EDF" / patient, out / "APNEA_EDF" / patient)
        rml = cohort / "APNEA_RML" / f"{patient}.rml"
        if rml.is_file():
            shutil.copy2(rml, out / "APNEA_RML" / rml.name)
    return out


# ----------------------------------------------------------------------------- memory of a process tree

def _tree(pid: int) -> list[int]:
    """``pid`` and every live descendant, from /proc (Ray's daemons and workers descend from the driver)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children.get(current, [])
    return out


PSS_KINDS = ("Pss_Anon:", "Pss_Shmem:", "Pss_File:")  # heap and tensors / Ray's object store / mapped files


def _pss_kb(pid: int) -> dict[str, int]:
    """A process's proportional set size (``pss``): a shared page (Ray's object store, shared
    libraries) counts once across all that map it, as summed RSS would not; split into
    ``anon`` (heap, tensors), ``shmem`` (shared memory: Ray's object store) and ``file``
    (libraries, mapped files), so growth can be told apart. VmRSS where smaps_rollup is absent."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            fields = {line.split()[0]: int(line.split()[1]) for line in handle if line.startswith("Pss")}
        if "Pss:" in fields:
            return {"pss": fields["Pss:"], **{k[4:-1].lower(): fields.get(k, 0) for k in PSS_KINDS}}
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/status") as handle:
            return {"pss": next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))}
    except (OSError, StopIteration):
        return {"pss": 0}


def _process_name(pid: int) -> str:
    """Ray names its workers by what they run (``ray::IDLE``, ``ray::MapWorker(...)``)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = handle.read().split(b"\0")
    except OSError:
        return "?"
    text = args[0].decode(errors="replace")
    if not text.startswith("ray::") and len(args) > 1:
        text = " ".join(a.decode(errors="replace").rsplit("/", 1)[-1] for a in args[:3] if a)
    return text[:60]


class TreeMemory:
    """Samples the summed PSS of this process and its descendants; ``peak_mb`` is the highest seen,
    ``at_peak`` the largest processes at that moment (MB by name) and ``split_at_peak`` the same
    processes' anonymous / shared-memory / file-backed parts, to say where memory went."""

    def __init__(self, every_s: float = SAMPLE_S) -> None:
        self.every_s, self.peak_mb, self.samples = every_s, 0.0, 0
        self.at_peak: dict[str, float] = {}
        self.split_at_peak: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sleepsound-bench-memory", daemon=True)

    def _run(self) -> None:
        while True:
            sizes = {pid: _pss_kb(pid) for pid in _tree(os.getpid())}
            total = sum(size["pss"] for size in sizes.values()) / 1024
            if total > self.peak_mb:
                self.peak_mb = total
                by_name: dict[str, dict[str, float]] = {}
                for pid, size in sizes.items():
                    parts = by_name.setdefault(_process_name(pid), {})
                    for kind, kb in size.items():
                        parts[kind] = parts.get(kind, 0.0) + kb / 1024
                largest = sorted(by_name.items(), key=lambda kv: -kv[1]["pss"])[:8]
                self.at_peak = {name: round(parts["pss"], 1) for name, parts in largest}
                self.split_at_peak = {name: {k: round(v, 1) for k, v in parts.items() if k != "pss"}
                                      for name, parts in largest[:3]}
            self.samples += 1
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> TreeMemory:
        if os.path.isdir("/proc"):
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


# ----------------------------------------------------------------------------- stages (child side)

def _config(spec: dict[str, Any], workers: int) -> dict[str, Any]:
    from sleepsound.core.config import Config

    raw = {"backbone": {"name": spec["backbone"], "batch_size": spec["batch_size"]},
           "training": {"epochs": spec["train_epochs"]},
           "ray": {"embed_workers": workers, "object_store_mb": spec.get("object_store_mb")}}
    return Config.model_validate(raw).model_dump()


def _stage_train(spec: dict[str, Any]) -> dict[str, Any]:
    from flows.train import run_train_on_ray

    result = run_train_on_ray(spec["train_source"], spec["root"], _config(spec, 1), run_id="bench-train")
    return {"promoted": sorted(name for name, d in result["promotions"].items() if d["promoted"])}


def _stage_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from flows.score import run_score_on_ray

    with TreeMemory() as memory:
        started = time.perf_counter()
        result = run_score_on_ray(spec["source"], spec["root"], _config(spec, spec["workers"]),
                                  ray_address=spec.get("ray_address"), run_id=f"bench-w{spec['workers']}")
        seconds = time.perf_counter() - started
    counts = result["counts"]
    return {"seconds": seconds, "steps": result["seconds"], "epochs": counts["epochs"],
            "nights": counts["accepted"], "cached": counts["cached"], "peak_pss_mb": memory.peak_mb,
            "at_peak_mb": memory.at_peak, "split_at_peak_mb": memory.split_at_peak}


def _stage_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    from sleepsound.core.config import Config
    from sleepsound.embed.cohort import embed_cohort
    from sleepsound.ingest.manifest import build_manifest, read_manifest, write_manifest
    from sleepsound.train.fit import predict_recordings
    from sleepsound.registry.serving import serving_with_unseen

    cfg = Config.model_validate(_config(spec, 1))
    with TreeMemory() as memory:
        started = time.perf_counter()
        rows = build_manifest(spec["source"], cfg.preprocess, cfg.validation)
        write_manifest(spec["root"], rows)
        accepted = [r for r in rows if r["status"] == "accepted"]
        epochs = 0
        for row in accepted:                        # one night at a time, as a plain script would
            epochs += embed_cohort([row], spec["root"], cfg, use_ray=False, shifted=False).epochs
        predict_recordings(spec["root"], cfg, "bench-baseline", serving_with_unseen(spec["root"]),
                           read_manifest(spec["root"]))
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "epochs": epochs, "nights": len(accepted), "peak_pss_mb": memory.peak_mb,
            "at_peak_mb": memory.at_peak, "split_at_peak_mb": memory.split_at_peak}


_STAGES = {"train": _stage_train, "ours": _stage_ours, "baseline": _stage_baseline}


# ----------------------------------------------------------------------------- driver (parent side)

def _fresh_root(models_from: Path, out: Path) -> Path:
    """A storage root holding only the champions: every night is embedded again."""
    shutil.copytree(models_from / "models", out / "models")
    return out


def run_score_bench(nights: int = 100, minutes: float = 6.0, workers: list[int] | None = None,
                    backbone: str | None = None, batch_size: int = 16, train_nights: int = 8, train_epochs: int = 5,
                    sample_rate: int = 16_000, seed: int = 0, workdir: Path | None = None,
                    ray_address: str | None = None, baseline: bool = True,
                    object_store_mb: int | None = None) -> dict[str, Any]:
    """Score ``nights`` generated nights with 1.. embedding workers, and the baseline; one JSON-able dict."""
    from sleepsound.core.config import BackboneConfig

    if nights < 2 or train_nights < 2 or train_nights > nights:
        raise BenchError(f"need 2 <= --train-nights <= --nights; got {train_nights} and {nights}")
    workers = workers or [1, 2]
    backbone = backbone or BackboneConfig().name
    cohort = ensure_cohort(nights, minutes, sample_rate, seed, workdir)
    with tempfile.TemporaryDirectory(prefix="sleepsound-bench-score-") as scratch_dir:
        scratch = Path(scratch_dir)
        base = {"backbone": backbone, "batch_size": batch_size, "train_epochs": train_epochs,
                "object_store_mb": object_store_mb}
        trained = scratch / "trained"
        train_source = subset(cohort, train_nights, scratch / "train-source")
        run_stage(_MODULE, "train", {**base, "train_source": str(train_source), "root": str(trained)})
        runs = []
        for count in workers:
            root = _fresh_root(trained, scratch / f"score-w{count}")
            stage = run_stage(_MODULE, "ours", {**base, "source": str(cohort), "root": str(root), "workers": count,
                                                 "ray_address": ray_address})
            runs.append({"embed_workers": count, **_figures(stage, minutes)})
            shutil.rmtree(root, ignore_errors=True)
        reference = None
        if baseline:
            root = _fresh_root(trained, scratch / "baseline")
            reference = {"method": BASELINE_METHOD,
                         **_figures(run_stage(_MODULE, "baseline", {**base, "source": str(cohort), "root": str(root)}),
                                    minutes)}
    best = max(runs, key=lambda r: r["nights_per_s"])
    one = next((r for r in runs if r["embed_workers"] == 1), None)
    return {
        "benchmark": "score", "nights": nights, "minutes_per_night": minutes, "sample_rate": sample_rate,
        "backbone": backbone, "batch_size": batch_size, "cpus": os.cpu_count(),
        "ray_address": ray_address or "local", "object_store_mb": object_store_mb, "runs": runs, "baseline": reference,
        "speedup": round(best["nights_per_s"] / reference["nights_per_s"], 2) if reference else None,
        "scaling_efficiency": {str(r["embed_workers"]): round(r["nights_per_s"] / (one["nights_per_s"]
                                                                                     * r["embed_workers"]), 2)
                               for r in runs} if one else None,
        "versions": package_versions(_VERSIONED),
    }


def _figures(stage: dict[str, Any], minutes: float) -> dict[str, Any]:
    out = {"seconds": round(stage["seconds"], 2), "nights": stage["nights"], "epochs": stage["epochs"],
           "nights_per_s": round(stage["nights"] / stage["seconds"], 3),
           "epochs_per_s": round(stage["epochs"] / stage["seconds"], 2),
           "x_realtime": round(stage["nights"] * minutes * 60 / stage["seconds"], 1),
           "peak_pss_mb": round(stage["peak_pss_mb"], 1), "at_peak_mb": stage["at_peak_mb"],
           "split_at_peak_mb": stage.get("split_at_peak_mb", {})}
    if "steps" in stage:
        out["steps"] = stage["steps"]
        out["cached"] = stage["cached"]
    return out


def main(argv: list[str] | None = None) -> None:
    """Child entry point: ``python -m sleepsound.bench.score --stage train|ours|baseline --spec JSON``."""
    stage_main(_STAGES, "Run one stage of the score benchmark and print its figures.", argv)


if __name__ == "__main__":
    main()
