"""Generator styles: classic stays byte-for-byte what it was; every style is reproducible, keeps the
event truth in the audio, and colours the sound measurably by its room, microphone and background."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from sleepsound.synth.hypnogram import make_night_plan
from sleepsound.synth.sound import synthesise_chunk
from sleepsound.synth.writers import generate_cohort

# Digests of the classic generator taken before styles existed (commit c66dd34): a change to classic
# (new random draws, a different filter, a reordered sum) changes them, and with them every cache.
CLASSIC_CHUNKS_SHA256 = "6bef74b6ee3beecc49d077edfa878ad8d68c3cd23b33a1619be4145724895702"
CLASSIC_FILES_SHA256 = {
    "psg-audio": "6c0c3c54cadf0d3be2e9be46d1e5fc598726164d306850110c59dd6b5ef9c2d3",
    "plain": "ca36ad5725838c1e6265f3c7c1fb2bcef8560015662fae49a707316327665298",
}


def _chunks_digest(plan, rate: int = 8000) -> str:
    h = hashlib.sha256()
    for start in range(0, int(plan.duration_s), 30):
        signals = synthesise_chunk(plan, start, 30, rate)
        for name in sorted(signals):
            h.update(name.encode())
            h.update(np.ascontiguousarray(signals[name]).tobytes())
    return h.hexdigest()


def _files_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_classic_is_unchanged_sample_for_sample_and_byte_for_byte(tmp_path: Path) -> None:
    plan = make_night_plan("s", 0.05, seed=3, subject_index=1, cycle_minutes=5.0, ahi=40.0)
    assert _chunks_digest(plan) == CLASSIC_CHUNKS_SHA256
    for layout, digest in CLASSIC_FILES_SHA256.items():
        out = tmp_path / layout
        generate_cohort(out, n_subjects=1, hours=0.05, seed=3, sample_rate=8000, layout=layout, cycle_minutes=5.0)
        assert _files_digest(out) == digest, layout
