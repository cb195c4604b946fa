"""Write a folder of generated hard negatives (and snoring mixed over them) for the clip detector.

Why: the sounds a snore detector confuses with snoring in a bedroom (a TV, people talking, fans,
motors; issue 16) are few in any public clip set, one recording each. Here many different ones are
made (:mod:`sleepsound.synth.bedroom`), deterministically from a seed, in the layout every
``clips`` command reads, with a ``categories.csv`` so ``clips cv``/``evaluate`` report each kind:

    OUT/no_snoring/0_<n>.wav   n = 10000 * category + clip            (one category per run of numbers)
    OUT/snoring/1_<n>.wav      n = 10000 * category + 1000 * snr + clip (a snoring clip over that background)
    OUT/categories.csv         label,first,last,category
    OUT/manifest.csv           one row per file: label, category, seed, index, SNR, speech source, snore file

The folder is built beside ``OUT`` and renamed into place when complete, so a crash never leaves a
folder that looks whole.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from sleepsound.clips.categories import CategoryRange, write_categories
from sleepsound.clips.dataset import SAMPLE_RATE, ClipError, discover, fix_length, read_mono_16k
from sleepsound.synth import bedroom
from sleepsound.synth.styles import resolve_speech_source

RUN = 10_000  # file numbers of one category: a gap between categories starts a new block
SNR_RUN = 1_000
LEVEL_DBFS = (-35.0, -20.0)  # RMS of a written clip (the loader peak-normalises; the level only needs to be sane)
# Longest clip written: the clip readers use at most 5 s of a clip and a model at most 60 s, so a longer one only
# costs memory and disk (--seconds 600 took 1.3 GB for five clips).
MAX_SECONDS = 60.0
# Snore-to-background ratios accepted, dB. At -30 dB the snore is 1/32 of the background's RMS (under a TV it
# is gone: a "snoring" clip no one could hear), at 60 dB the background is 1/1000 of the snore's (a clean
# snore); outside that a mix only mislabels or repeats. NaN and -inf wrote constant -32768 clips.
SNR_RANGE_DB = (-30.0, 60.0)


def check_options(seed: int, seconds: float, snrs_db: Sequence[float]) -> None:
    """Refuse a bad --seed, --seconds or --snr (ValueError naming the option and its range) before anything is
    read or made: unchecked, a NaN SNR wrote clips of one constant sample as snoring training data, and a bad
    length or seed failed only after the ``.partial`` folder was made."""
    if seed < 0:
        raise ValueError(f"--seed must be a whole number >= 0, got {seed}")
    if not (math.isfinite(seconds) and round(seconds * SAMPLE_RATE) >= 1 and seconds <= MAX_SECONDS):
        raise ValueError(
            f"--seconds must be more than 0 (at least one sample) and at most {MAX_SECONDS:g}, got {seconds:g}"
        )
    low, high = SNR_RANGE_DB
    bad = [snr for snr in snrs_db if not (math.isfinite(snr) and low <= snr <= high)]
    if bad:
        raise ValueError(f"--snr must be from {low:g} to {high:g} dB, got {bad[0]:g}")


def _share(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def _snoring_clips(folder: str | Path, seconds: float) -> tuple[list[tuple[str, np.ndarray]], list[str]]:
    """(name, audio) of every readable snoring clip in ``folder`` (``folder/snoring/*`` when it is a clip
    dataset, else the audio files directly in it), and the reasons the others were skipped."""
    base = Path(folder)
    names = [rel for label, rel in discover(base) if label == "snoring"] or sorted(
        p.name for p in base.iterdir() if p.is_file() and not p.name.startswith(".")
    )
    clips, skipped = [], []
    for name in names:
        try:
            clips.append((name, read_mono_16k(base / name, max_seconds=seconds)))
        except ClipError as exc:
            skipped.append(f"{name}: {exc}")
    if not clips:
        raise ValueError(f"{base}: no readable snoring clips (expected {base}/snoring/*.wav or audio files in it)")
    return clips, skipped


def write_hard_negatives(
    out: str | Path,
    n: int = 200,
    seed: int = 0,
    seconds: float = 1.0,
    categories: Sequence[str] = bedroom.CATEGORIES,
    speech_source: str = "auto",
    snoring: str | Path | None = None,
    n_snoring: int | None = None,
    snrs_db: Sequence[float] = (0.0, 5.0, 10.0),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``n`` hard negatives spread evenly over ``categories`` and, given a folder of ``snoring`` clips,
    ``n_snoring`` (default ``n``) of them mixed over fresh backgrounds of the same categories at ``snrs_db``;
    returns the counts per category and where the speech came from."""
    out = Path(out)
    unknown = [c for c in categories if c not in bedroom.ALL_CATEGORIES]
    if unknown or not categories or len(set(categories)) != len(categories):
        raise ValueError(
            f"hard-negative categories {list(categories)}: give each once, from {bedroom.ALL_CATEGORIES}"
            + (f" (unknown: {unknown})" if unknown else "")
        )
    if n < len(categories) or n >= RUN * len(categories):
        raise ValueError(f"--n must be between {len(categories)} (one per category) and {RUN * len(categories) - 1}")
    if len(snrs_db) > RUN // SNR_RUN or not snrs_db:
        raise ValueError(f"give 1 to {RUN // SNR_RUN} SNRs")
    check_options(seed, seconds, snrs_db)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out} already exists and is not an empty folder: choose a new --out")
    used_speech = resolve_speech_source(speech_source)
    say = progress or (lambda _msg: None)

    snores, skipped = _snoring_clips(snoring, seconds) if snoring is not None else ([], [])
    n_pos = (n if n_snoring is None else n_snoring) if snores else 0
    if snores and (n_pos < len(categories) * len(snrs_db) or n_pos >= SNR_RUN * len(categories) * len(snrs_db)):
        raise ValueError(
            f"--n-snoring must be between {len(categories) * len(snrs_db)} (one per category and SNR) and "
            f"{SNR_RUN * len(categories) * len(snrs_db) - 1}"
        )

    samples = int(round(seconds * SAMPLE_RATE))
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        (partial / "no_snoring").mkdir(parents=True)
        rows: list[dict[str, Any]] = []
        ranges: list[CategoryRange] = []
        level_rng = np.random.default_rng([seed, 7])

        def write(label: str, number: int, audio: np.ndarray, **info: Any) -> None:
            name = f"{label}/{'1' if label == 'snoring' else '0'}_{number}.wav"
            clip = bedroom.at_level(audio, float(level_rng.uniform(*LEVEL_DBFS)))
            sf.write(partial / name, clip, SAMPLE_RATE, subtype="PCM_16")
            rows.append({"file": name, "label": label, "seed": seed, **info})

        for ci, (category, count) in enumerate(zip(categories, _share(n, len(categories)), strict=True)):
            for j in range(count):
                clip = bedroom.background(category, seed, j, seconds, SAMPLE_RATE, used_speech)
                write("no_snoring", RUN * ci + j, clip, category=category, index=j, snr_db="", snore_file="")
            ranges.append(CategoryRange("no_snoring", RUN * ci, RUN * ci + count - 1, category))
            say(f"{category}: {count} clips")
        if snores:
            (partial / "snoring").mkdir()
            pick = np.random.default_rng([seed, 11])
            shares = _share(n_pos, len(categories) * len(snrs_db))
            for ci, category in enumerate(categories):
                for si, snr in enumerate(snrs_db):
                    count = shares[ci * len(snrs_db) + si]
                    first = RUN * ci + SNR_RUN * si
                    for j in range(count):
                        source, audio = snores[int(pick.integers(len(snores)))]
                        snore = fix_length(audio, samples)
                        # the background of a mix is a different clip from every negative: index past them
                        noise = bedroom.background(
                            category, seed, RUN + SNR_RUN * si + j, seconds, SAMPLE_RATE, used_speech
                        )
                        write(
                            "snoring",
                            first + j,
                            bedroom.mix_at_snr(snore, noise, snr),
                            category=f"snoring over {category} at {snr:g} dB",
                            index=j,
                            snr_db=snr,
                            snore_file=source,
                        )
                    ranges.append(
                        CategoryRange("snoring", first, first + count - 1, f"snoring over {category} at {snr:g} dB")
                    )
                say(f"snoring over {category}: {sum(shares[ci * len(snrs_db) : (ci + 1) * len(snrs_db)])} clips")
        write_categories(partial / "categories.csv", ranges)
        with (partial / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
            fields = ["file", "label", "category", "seed", "index", "snr_db", "snore_file"]
            writer = csv.DictWriter(fh, fieldnames=[*fields, "speech_source"])
            writer.writeheader()
            for row in rows:
                writer.writerow({**{k: row[k] for k in fields}, "speech_source": used_speech})
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(partial, out)
    except BaseException:  # a failed or interrupted run leaves no half-written folder beside OUT
        shutil.rmtree(partial, ignore_errors=True)
        raise
    per_category: dict[str, int] = {}
    for row in rows:
        per_category[row["category"]] = per_category.get(row["category"], 0) + 1
    return {
        "out": str(out),
        "seed": seed,
        "seconds": seconds,
        "speech_source": used_speech,
        "counts": {"no_snoring": n, "snoring": n_pos},
        "per_category": per_category,
        "snrs_db": list(snrs_db) if snores else [],
        "snoring_clips": {"used": len(snores), "skipped": skipped},
    }
