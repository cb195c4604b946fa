"""``sleepsound bench clips``: how fast short clips become head inputs, beside a tutorial baseline.

Every clip command (``clips train``, ``cv``, ``evaluate``, ``score``, ``serve``) spends its
time in one stage: decode and resample the clips, then run the frozen backbone once per
clip. This benchmark times that stage on a folder of clips, each side in its own fresh
Python process (``python -m sleepsound.bench.clips --stage ...``) so each peak memory is its own:

* **ours**: ``clips.dataset.load_dataset`` (soundfile, mono mix, soxr HQ to 16 kHz, peak
  normalisation, one fixed length) then ``clips.features.embed_audio`` with every candidate
  layer kept (what ``clips train`` embeds), batches of ``batch_size``; backbone load included.
* **baseline**, as the tutorial writes it, with the same weights: per clip
  ``librosa.load(path, sr=16000)``, the transformers feature extractor, one encoder forward
  under ``torch.no_grad()`` (batch of one), mean over time of the last layer. Model load not
  timed, so ``speedup`` leans against ours.

The clips are the user's (``--data``, a folder of label sub-folders) or, by default, 1-s
48-kHz WAV clips cut from a synthetic night's microphone (``synth.writers.generate_cohort``,
plain layout), written once under the bench cache like the other benchmarks' nights.
Whisper pads every clip to its 30-s window in both, so the encoder dominates either way.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
import time
from pathlib import Path
from typing import Any

from sleepsound.bench.ingest import (
    PEAK_METHOD,
    BenchError,
    check_room,
    ensure_generated,
    package_versions,
    peak_rss_mb,
    require_librosa,
    run_stage,
    significant,
    stage_main,
)

_MODULE = "sleepsound.bench.clips"
DEFAULT_BACKBONE = "whisper-tiny.en-offline"
DEFAULT_CLIPS = 100
CLIP_SECONDS = 1.0
_VERSIONED = ("torch", "transformers", "numpy", "librosa", "soxr", "soundfile")
OURS_METHOD = (
    "clips.dataset.load_dataset (soundfile, mono, soxr HQ to 16 kHz, peak-normalised, fixed length) + "
    "clips.features.embed_audio with every candidate layer (as clips train), batches of batch_size; "
    "backbone load included"
)
BASELINE_METHOD = (
    "per clip: librosa.load(path, sr=16000), the transformers feature extractor, one encoder forward "
    "under torch.no_grad() (batch of one), mean over time of the last layer; model load not timed"
)


def ensure_clip_folder(n_clips: int, seed: int = 0, workdir: Path | None = None) -> Path:
    """``n_clips`` 1-s 48-kHz WAV clips (``<folder>/clips/clip-NNNNN.wav``) cut from a synthetic night, made once."""
    import soundfile as sf

    from sleepsound.synth.writers import GENERATOR_VERSION, generate_cohort

    def generate(out: Path) -> None:
        night = out / "night"
        hours = math.ceil(n_clips * CLIP_SECONDS / 60 + 1) / 60  # whole minutes, one to spare
        generate_cohort(
            night, n_subjects=1, hours=hours, seed=seed, sample_rate=48_000, layout="plain", audio_format="wav"
        )
        source = next(p for p in night.rglob("*.wav"))
        (out / "clips").mkdir()
        with sf.SoundFile(source) as handle:
            block = int(CLIP_SECONDS * handle.samplerate)
            for i in range(n_clips):
                sf.write(
                    out / "clips" / f"clip-{i:05d}.wav",
                    handle.read(block, dtype="float32"),
                    handle.samplerate,
                    subtype="PCM_16",
                )
        (out / "cohort.json").write_text((night / "cohort.json").read_text())  # the "made" marker
        shutil.rmtree(night)  # the night itself is not needed

    name = f"clips-{n_clips}x{CLIP_SECONDS:g}s-48000hz-seed{seed}-gen{GENERATOR_VERSION}"
    folder, _ = ensure_generated(name, generate, workdir)
    return folder


def _clip_files(data: str, limit: int | None) -> list[str]:
    """The first ``limit`` entries of the clip folder, root-relative (``label/file``)."""
    from sleepsound.clips.dataset import discover

    files = [rel for _, rel in discover(data)]
    return files[:limit] if limit else files


def _stage_ours(spec: dict[str, Any]) -> dict[str, Any]:
    from sleepsound.clips.dataset import load_dataset
    from sleepsound.clips.features import FeatureSpec, default_layers, embed_audio, load_clip_backbone

    t0 = time.perf_counter()
    ds = load_dataset(spec["data"], files=_clip_files(spec["data"], spec.get("limit")))
    read_s = time.perf_counter() - t0
    layers = default_layers(spec["backbone"], spec["device"])
    backbone = load_clip_backbone(FeatureSpec(spec["backbone"], layers, 0.1, [0], 1), spec["device"])
    t1 = time.perf_counter()
    emb = embed_audio(backbone, ds.audio, spec["batch_size"])  # None: the clips commands' default
    embed_s = time.perf_counter() - t1
    return {
        "seconds": time.perf_counter() - t0,
        "read_seconds": read_s,
        "embed_seconds": embed_s,
        "clips": len(ds.files),
        "rejected": len(ds.rejected),
        "audio_seconds": float(ds.lengths.sum()) / 16_000,
        "output_shape": list(emb.shape),
        "peak_rss_mb": peak_rss_mb(),
    }


def _stage_baseline(spec: dict[str, Any]) -> dict[str, Any]:
    from sleepsound.bench.embed import tutorial_embed
    from sleepsound.models.backbones.pretrained import load_backbone

    backbone = load_backbone(spec["backbone"], device=spec["device"])
    paths = [str(Path(spec["data"]) / rel) for rel in _clip_files(spec["data"], spec.get("limit"))]
    n, audio_s, seconds = tutorial_embed(paths, backbone)
    return {"seconds": seconds, "clips": n, "audio_seconds": audio_s, "peak_rss_mb": peak_rss_mb()}


_STAGES = {"ours": _stage_ours, "baseline": _stage_baseline}


def run_clips_bench(
    data: Path | None = None,
    n_clips: int = DEFAULT_CLIPS,
    backbone: str = DEFAULT_BACKBONE,
    device: str = "cpu",
    batch_size: int | None = None,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Both stages on the same clips, each in its own process; the JSON object ``bench clips`` prints."""
    if n_clips < 1 or (batch_size is not None and batch_size < 1):
        raise BenchError("--clips and --batch-size must be at least 1")
    if data is None:  # the 48-kHz WAV night, then its clips cut out: 16-bit mono twice over
        check_room(workdir, (n_clips * CLIP_SECONDS + 120) * 48_000 * 2 * 2, f"{n_clips} generated clips")
    require_librosa()
    folder = Path(data) if data is not None else ensure_clip_folder(n_clips, workdir=workdir)
    if not folder.is_dir():
        raise BenchError(f"clip folder not found: {folder}")
    spec = {"data": str(folder), "limit": n_clips, "backbone": backbone, "device": device, "batch_size": batch_size}
    ours = run_stage(_MODULE, "ours", spec)
    base = run_stage(_MODULE, "baseline", spec)
    if ours["clips"] == 0:
        raise BenchError(f"no usable clips in {folder}")
    return {
        "benchmark": "clips",
        "date": dt.date.today().isoformat(),
        "data": str(folder),
        "backbone": backbone,
        "device": device,
        "batch_size": batch_size,
        "clips": ours["clips"],
        "rejected": ours["rejected"],
        "audio_seconds": round(ours["audio_seconds"], 2),
        "seconds": round(ours["seconds"], 2),
        "clips_per_second": significant(ours["clips"] / ours["seconds"]),
        "embed_clips_per_second": significant(ours["clips"] / ours["embed_seconds"]),
        "read_seconds": round(ours["read_seconds"], 2),
        "embed_seconds": round(ours["embed_seconds"], 2),
        "peak_rss_mb": round(ours["peak_rss_mb"], 1),
        "output_shape": ours["output_shape"],
        "baseline_seconds": round(base["seconds"], 2),
        "baseline_clips_per_second": significant(base["clips"] / base["seconds"]),
        "baseline_peak_rss_mb": round(base["peak_rss_mb"], 1),
        "speedup": significant(base["seconds"] / ours["seconds"]),
        "method": {
            "ours": OURS_METHOD,
            "baseline": BASELINE_METHOD,
            "peak_rss_mb": PEAK_METHOD,
        },
        "versions": package_versions(_VERSIONED),
    }


def main(argv: list[str] | None = None) -> None:
    """Child entry point: ``python -m sleepsound.bench.clips --stage ours|baseline --spec JSON``."""
    stage_main(_STAGES, "Run one stage of the clips benchmark and print its figures.", argv)


if __name__ == "__main__":
    main()
