"""A folder of short "recorded" background clips for tests, made by the project's own generators
(no outside data): TV news and people talking, 1-s files at rates other than the night's, one of
them stereo, one digitally silent (left out of the stream), and a file that is not audio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from sleepsound.synth.bedroom import background

CLIPS = (("tv_speech", 16_000), ("room_speech", 22_050), ("tv_speech", 11_025))  # the second one stereo


def make_background_clips(folder: Path) -> Path:
    """Write ``bg_<k>.wav`` (speech at 0.1 of full scale), ``silent.wav`` and ``notes.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, (category, rate) in enumerate(CLIPS):
        x = 0.1 * background(category, 3, k, seconds=1.0, rate=rate, speech_source="synth")
        sf.write(folder / f"bg_{k}.wav", np.stack([x, 0.7 * x], axis=1) if k == 1 else x, rate, subtype="PCM_16")
    sf.write(folder / "silent.wav", np.zeros(8000, dtype=np.float32), 8000, subtype="PCM_16")
    (folder / "notes.txt").write_text("not audio\n")
    return folder
