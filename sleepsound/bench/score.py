"""``sleepsound bench score``: a cohort of short synthetic nights through the ``sleepsound score`` command.

What it answers: how fast a whole cohort is scored end to end (validate, embed, predict,
report) as the number of embedding workers grows, where the time goes per stage, and that
memory stays bounded however many nights there are.

The cohort (``nights`` nights of ``minutes`` each, PSG-Audio layout) is generated once and kept
under ``$SLEEPSOUND_CACHE/bench/`` (or ``workdir``). The first ``train_nights`` nights train the
champion heads once (``sleepsound train``, not timed); then, for each worker count,
``sleepsound score`` runs on a fresh storage root holding only those champions, so nothing is a
cache hit.

Ours is the real command a user runs, as a child process: ``python -m sleepsound.cli score
--source ... --root ... --run-id ... --set ...`` (Prefect, a Ray session started or joined with
``--ray-address``, ``ray.embed_workers`` model actors beside the CPU readers). This module imports
neither ``flows`` nor ``tasks``: the per-stage seconds and the counts are read from the run
record the flow writes (``<root>/runs/<run-id>/run.json``), the promoted heads from
``<root>/models/<target>/champion.json`` and ``promotions.json``. The **baseline** does the same
work as a plain script would: one process (``python -m sleepsound.bench.score --stage
baseline``), no Ray, no Prefect, one night after another (manifest, embed, predict).

Both are measured alike, from this (parent) process: ``seconds`` is the wall time of the whole
child process, from its start to its exit: interpreter start, imports, Ray start (or joining
the cluster), the flow or the script, and shutdown. ``work_seconds`` is the part that is the
work itself (the flow's steps summed, from the run record; the baseline's manifest, embed and
predict, timed inside it). Memory is the peak of the summed proportional set size (PSS:
shared pages such as Ray's object store counted once) of the child's whole process tree (the
command, Ray's daemons and workers it started), sampled every 0.2 s from ``/proc``.

The children share one Prefect API, announced in ``PREFECT_API_URL`` (``sleepsound bench
score`` starts one), so no child pays for starting a server of its own.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from sleepsound.bench.ingest import BenchError, ensure_generated, package_versions, significant, stage_main

BASELINE_RUN = "bench-baseline"
BASELINE_METHOD = (
    "one process, no Ray or Prefect (python -m sleepsound.bench.score --stage baseline): "
    "build_manifest, then embed_cohort one night after another, predict_recordings, and the report "
    "(write_run_outputs: the run's figures, then every night's page and PDF in turn)"
)
OURS_METHOD = (
    "the command a user runs, python -m sleepsound.cli score --source ... --root ... --run-id ... "
    "--set backbone.name=... backbone.batch_size=... training.epochs=... ray.embed_workers=N ray.small_job_epochs=0 "
    "(and --ray-address when given): the score flow on Prefect and Ray; steps and counts from "
    "<root>/runs/<run-id>/run.json"
)
SECONDS_METHOD = (
    "wall time of the whole child process, timed from this process from its start to its exit: "
    "interpreter start, imports, Ray start (or joining --ray-address), the flow or script, "
    "shutdown; work_seconds is the work alone (the flow's steps summed from its run record; the "
    "baseline's manifest, embed and predict timed inside it)"
)
MEMORY_METHOD = (
    "peak summed PSS of the child's process tree (the command, and Ray's daemons and workers it "
    "started), sampled every 0.2 s from /proc by this process"
)
SAMPLE_S = 0.2
_VERSIONED = ("torch", "transformers", "ray", "prefect", "pyarrow")
_MODULE = "sleepsound.bench.score"  # the baseline runs as `python -m` of this module
# The score flow's steps in the order they run (the run record stores them sorted by name).
SCORE_STEPS = ("ingest", "embed", "champions", "predict", "report")


def cohort_name(nights: int, minutes: float, sample_rate: int, seed: int) -> str:
    from sleepsound.synth.writers import GENERATOR_VERSION

    return f"cohort-{nights}x{minutes:g}min-{int(sample_rate)}hz-seed{seed}-gen{GENERATOR_VERSION}"


def ensure_cohort(nights: int, minutes: float, sample_rate: int, seed: int, workdir: Path | None = None) -> Path:
    """The generated cohort's folder, made once."""
    from sleepsound.synth.writers import generate_cohort

    cohort, _ = ensure_generated(
        cohort_name(nights, minutes, sample_rate, seed),
        lambda out: generate_cohort(
            out,
            n_subjects=nights,
            hours=minutes / 60,
            seed=seed,
            sample_rate=sample_rate,
            part_seconds=int(minutes * 60),
            cycle_minutes=max(minutes, 1.0),
        ),
        workdir,
    )
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
    """Samples the summed PSS of process ``pid`` (default: this one) and its descendants; ``peak_mb``
    is the highest seen, ``at_peak`` the largest processes at that moment (MB by name) and
    ``split_at_peak`` the same processes' anonymous / shared-memory / file-backed parts, to say where
    memory went. Pointed at a child's pid, the parent measures the child's tree without its own."""

    def __init__(self, every_s: float = SAMPLE_S, pid: int | None = None) -> None:
        self.every_s, self.peak_mb, self.samples = every_s, 0.0, 0
        self.pid = os.getpid() if pid is None else pid
        self.at_peak: dict[str, float] = {}
        self.split_at_peak: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sleepsound-bench-memory", daemon=True)

    def _run(self) -> None:
        while True:
            sizes = {pid: _pss_kb(pid) for pid in _tree(self.pid)}
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
                self.split_at_peak = {
                    name: {k: round(v, 1) for k, v in parts.items() if k != "pss"} for name, parts in largest[:3]
                }
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


# ----------------------------------------------------------------------------- children, measured from here


def run_measured(command: list[str], logs: Path) -> dict[str, Any]:
    """Run ``command`` as a child process; its wall time from start to exit and its tree's peak PSS,
    measured from this process. stdout and stderr go to ``logs``.out/.err; the stdout is returned."""
    out_path, err_path = logs.with_suffix(".out"), logs.with_suffix(".err")
    with out_path.open("wb") as out, err_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err)
        try:
            with TreeMemory(pid=proc.pid) as memory:
                code = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: take the child (and its Ray) down with us
                proc.terminate()
                proc.wait()
        seconds = time.perf_counter() - started
    stdout = out_path.read_text(errors="replace")
    if code != 0:
        stderr = err_path.read_text(errors="replace")
        shown = " ".join(command[1:4])
        raise BenchError(f"`{shown} ...` failed (exit {code}):\n{stdout[-2000:]}\n{stderr[-4000:]}")
    return {
        "seconds": seconds,
        "stdout": stdout,
        "peak_pss_mb": memory.peak_mb,
        "at_peak_mb": memory.at_peak,
        "split_at_peak_mb": memory.split_at_peak,
    }


def _overrides(
    backbone: str, batch_size: int, train_epochs: int, workers: int, object_store_mb: int | None
) -> list[str]:
    """The ``--set`` items of a run: the backbone (JSON-quoted, so a path stays a string), its batch,
    the training epochs, the embedding model actors and, when given, the local object store size.
    The embedding goes through Ray Data at every size (``ray.small_job_epochs=0``): the benchmark
    measures the flow's pipeline and its scaling over model actors, which a small cohort would skip."""
    items = [
        f"backbone.name={json.dumps(backbone)}",
        f"backbone.batch_size={batch_size}",
        f"training.epochs={train_epochs}",
        f"ray.embed_workers={workers}",
        "ray.small_job_epochs=0",
    ]
    if object_store_mb is not None:
        items.append(f"ray.object_store_mb={object_store_mb}")
    return items


def _command(
    name: str, source: str, root: str, run_id: str, overrides: list[str], ray_address: str | None = None
) -> list[str]:
    """``python -m sleepsound.cli NAME ...``: the command line a user types, in this interpreter."""
    command = [sys.executable, "-m", "sleepsound.cli", name, "--source", source, "--root", root, "--run-id", run_id]
    for item in overrides:
        command += ["--set", item]
    if ray_address:
        command += ["--ray-address", ray_address]
    return command


def _run_record(root: Path, run_id: str) -> dict[str, Any]:
    """``<root>/runs/<run-id>/run.json``, written last by the flow (see sleepsound.runs.run_record)."""
    path = root / "runs" / run_id / "run.json"
    if not path.is_file():
        raise BenchError(f"the run left no record at {path}")
    return json.loads(path.read_text())


def _promoted(root: Path) -> dict[str, Any]:
    """Each target's champion after training, and the heads the promotion log says were promoted."""
    from sleepsound.registry.store import CHAMPION, PROMOTIONS

    champions, promoted = {}, []
    models = root / "models"
    target_dirs = sorted(p for p in models.iterdir() if p.is_dir()) if models.is_dir() else []
    for target_dir in target_dirs:
        if (target_dir / CHAMPION).is_file():
            champions[target_dir.name] = json.loads((target_dir / CHAMPION).read_text())["version"]
        log = json.loads((target_dir / PROMOTIONS).read_text()) if (target_dir / PROMOTIONS).is_file() else []
        if any(decision["promoted"] for decision in log):
            promoted.append(target_dir.name)
    return {"promoted": promoted, "champions": champions}


def _stage_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    """Child side of the baseline: the same work in one plain process; its figures as one JSON line."""
    from sleepsound.core.config import load_config
    from sleepsound.embed.cohort import embed_cohort
    from sleepsound.ingest.manifest import build_manifest, read_manifest, write_manifest
    from sleepsound.predict.recordings import predict_recordings
    from sleepsound.registry.serving import serving_with_unseen
    from sleepsound.report.outputs import write_run_outputs

    cfg = load_config(None, spec["overrides"])  # the settings the command children get from --set
    started = time.perf_counter()
    rows = build_manifest(spec["source"], cfg.preprocess, cfg.validation)
    write_manifest(spec["root"], rows)
    accepted = [r for r in rows if r["status"] == "accepted"]
    epochs = 0
    for row in accepted:  # one night at a time, as a plain script would
        epochs += embed_cohort([row], spec["root"], cfg, use_ray=False, shifted=False).epochs
    model = serving_with_unseen(spec["root"])
    predict_recordings(spec["root"], cfg, BASELINE_RUN, model, read_manifest(spec["root"]))
    reporting = time.perf_counter()
    meta = {
        "run_id": BASELINE_RUN,
        "backbone": cfg.backbone.name,
        "config_hash": cfg.fingerprint(),
        "recordings_accepted": len(accepted),
        "recordings_quarantined": len(rows) - len(accepted),
    }
    write_run_outputs(spec["root"], BASELINE_RUN, model, meta, cfg)  # every night's page, one after another
    done = time.perf_counter()
    return {
        "work_seconds": done - started,
        "report_seconds": round(done - reporting, 2),
        "epochs": epochs,
        "nights": len(accepted),
    }


_STAGES = {"baseline": _stage_baseline}


# ----------------------------------------------------------------------------- driver (parent side)


def _fresh_root(models_from: Path, out: Path) -> Path:
    """A storage root holding only the champions: every night is embedded again."""
    shutil.copytree(models_from / "models", out / "models")
    return out


def check_score_options(
    nights: int,
    minutes: float,
    train_nights: int,
    batch_size: int,
    sample_rate: int,
    workdir: Path | None,
    object_store_mb: int | None,
) -> None:
    """BenchError naming the option, before a Prefect API is started or a night generated: NaN minutes failed
    as an unexpected error after the API, a million nights started writing petabytes, and a bad batch size
    or object store was found by the child runs after the cohort was generated."""
    from sleepsound.bench.ingest import check_room

    if nights < 2 or train_nights < 2 or train_nights > nights:
        raise BenchError(f"need 2 <= --train-nights <= --nights; got {train_nights} and {nights}")
    if not (math.isfinite(minutes) and minutes > 0):
        raise BenchError(f"--minutes must be a positive, finite number, got {minutes:g}")
    if batch_size < 1:
        raise BenchError(f"--batch-size must be at least 1, got {batch_size}")
    if object_store_mb is not None and object_store_mb < 1:
        raise BenchError(f"--object-store-mb must be at least 1, got {object_store_mb}")
    size = nights * minutes * 60 * sample_rate * 2 * 2  # two 16-bit microphones per night
    check_room(workdir, size, f"--nights {nights} --minutes {minutes:g}")


def run_score_bench(
    nights: int = 100,
    minutes: float = 6.0,
    workers: list[int] | None = None,
    backbone: str | None = None,
    batch_size: int = 16,
    train_nights: int = 8,
    train_epochs: int = 5,
    sample_rate: int = 16_000,
    seed: int = 0,
    workdir: Path | None = None,
    ray_address: str | None = None,
    baseline: bool = True,
    object_store_mb: int | None = None,
) -> dict[str, Any]:
    """Score ``nights`` generated nights with 1.. embedding workers, and the baseline; one JSON-able dict.

    Needs ``PREFECT_API_URL`` (``sleepsound bench score`` starts a local API): every child shares it."""
    from sleepsound.core.config import BackboneConfig

    check_score_options(nights, minutes, train_nights, batch_size, sample_rate, workdir, object_store_mb)
    if not os.environ.get("PREFECT_API_URL"):
        raise BenchError("set PREFECT_API_URL (sleepsound bench score starts a local Prefect API for its runs)")
    workers = workers or [1, 2]
    backbone = backbone or BackboneConfig().name
    cohort = ensure_cohort(nights, minutes, sample_rate, seed, workdir)

    def settings(count: int) -> list[str]:
        return _overrides(backbone, batch_size, train_epochs, count, object_store_mb)

    with tempfile.TemporaryDirectory(prefix="sleepsound-bench-score-") as scratch_dir:
        scratch = Path(scratch_dir)
        trained = scratch / "trained"
        train_source = subset(cohort, train_nights, scratch / "train-source")
        training = run_measured(
            _command("train", str(train_source), str(trained), "bench-train", settings(1)), scratch / "train"
        )
        champions = _promoted(trained)
        if not champions["champions"]:
            raise BenchError(f"training promoted no champion:\n{training['stdout'][-2000:]}")
        runs = []
        for count in workers:
            root = _fresh_root(trained, scratch / f"score-w{count}")
            run_id = f"bench-w{count}"
            stage = run_measured(
                _command("score", str(cohort), str(root), run_id, settings(count), ray_address), scratch / run_id
            )
            record = _run_record(root, run_id)
            counts = record["counts"]
            steps = dict(
                sorted(
                    record["seconds"].items(),
                    key=lambda kv: SCORE_STEPS.index(kv[0]) if kv[0] in SCORE_STEPS else len(SCORE_STEPS),
                )
            )
            stage.update(
                steps=steps,
                work_seconds=round(sum(steps.values()), 2),
                epochs=counts["epochs"],
                nights=counts["accepted"],
                cached=counts["cached"],
            )
            runs.append({"embed_workers": count, "run_id": run_id, **_figures(stage, minutes)})
            shutil.rmtree(root, ignore_errors=True)
        reference = None
        if baseline:
            root = _fresh_root(trained, scratch / "baseline")
            spec = {"source": str(cohort), "root": str(root), "overrides": settings(1)}
            stage = run_measured(
                [sys.executable, "-m", _MODULE, "--stage", "baseline", "--spec", json.dumps(spec)], scratch / "baseline"
            )
            stage.update(json.loads(stage["stdout"].strip().splitlines()[-1]))
            reference = {"method": BASELINE_METHOD, **_figures(stage, minutes)}
    best = max(runs, key=lambda r: r["nights_per_s"])
    one = next((r for r in runs if r["embed_workers"] == 1), None)
    return {
        "benchmark": "score",
        "nights": nights,
        "minutes_per_night": minutes,
        "sample_rate": sample_rate,
        "backbone": backbone,
        "batch_size": batch_size,
        "cpus": os.cpu_count(),
        "ray_address": ray_address or "local",
        "object_store_mb": object_store_mb,
        "method": {
            "seconds": SECONDS_METHOD,
            "ours": OURS_METHOD,
            "baseline": BASELINE_METHOD,
            "memory": MEMORY_METHOD,
            "train": f"sleepsound train on the first {train_nights} nights first, not in any figure",
        },
        "train": {"nights": train_nights, "seconds": round(training["seconds"], 2), **champions},
        "runs": runs,
        "baseline": reference,
        "speedup": round(best["nights_per_s"] / reference["nights_per_s"], 2) if reference else None,
        "scaling_efficiency": {
            str(r["embed_workers"]): round(r["nights_per_s"] / (one["nights_per_s"] * r["embed_workers"]), 2)
            for r in runs
        }
        if one
        else None,
        "versions": package_versions(_VERSIONED),
    }


def _figures(stage: dict[str, Any], minutes: float) -> dict[str, Any]:
    out = {
        "seconds": round(stage["seconds"], 2),
        "nights": stage["nights"],
        "epochs": stage["epochs"],
        # three significant figures: whole nights take minutes, so three decimals could leave one digit
        "nights_per_s": significant(stage["nights"] / stage["seconds"]),
        "epochs_per_s": round(stage["epochs"] / stage["seconds"], 2),
        "x_realtime": round(stage["nights"] * minutes * 60 / stage["seconds"], 1),
        "peak_pss_mb": round(stage["peak_pss_mb"], 1),
        "at_peak_mb": stage["at_peak_mb"],
        "split_at_peak_mb": stage.get("split_at_peak_mb", {}),
        "work_seconds": round(stage["work_seconds"], 2),
    }
    if "steps" in stage:
        out["steps"] = stage["steps"]
        out["cached"] = stage["cached"]
    if "report_seconds" in stage:  # the baseline's report, beside the flow's report step
        out["report_seconds"] = stage["report_seconds"]
    return out


def main(argv: list[str] | None = None) -> None:
    """Child entry point of the baseline: ``python -m sleepsound.bench.score --stage baseline --spec JSON``."""
    stage_main(_STAGES, "Run one stage of the score benchmark and print its figures.", argv)


if __name__ == "__main__":
    main()
