"""A folder of short "recorded" snore clips for tests, cut from the project's own generator (no outside data).

The clips play the part of a real data set's: 1-s files at rates other than the night's, one of
them stereo, cut around snored inspirations of a generated snorer's night.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from sleepsound.synth.hypnogram import make_night_plan
from sleepsound.synth.sound import synthesise_chunk

CLIP_RATES = (16_000, 22_050, 16_000)  # the second one stereo


def make_snore_clips(folder: Path) -> Path:
    """Write three 1-s snore clips (``snore_<k>.wav``) and a non-audio file the reader must skip."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = make_night_plan("clips", 0.05, seed=4, subject_index=0, cycle_minutes=5.0, ahi=40.0, style="quiet-electret")
    b = plan.breaths
    snored = np.flatnonzero((b.snore > 0) & (b.onset_s > 1.0) & (b.onset_s + 1.0 < plan.duration_s))
    assert snored.size >= len(CLIP_RATES), "the clip night must snore"
    for k, (i, rate) in enumerate(zip(snored[:: max(1, snored.size // len(CLIP_RATES))], CLIP_RATES, strict=False)):
        start = float(np.floor(b.onset_s[i]))
        mic = synthesise_chunk(plan, start, 1.0, rate, channels=["Mic"])["Mic"]
        data = np.stack([mic, 0.8 * mic], axis=1) if k == 1 else mic
        sf.write(folder / f"snore_{k}.wav", data, rate, subtype="PCM_16")
    (folder / "notes.txt").write_text("not audio\n")
    return folder
