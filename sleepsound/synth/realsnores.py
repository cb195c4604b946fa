"""Real recorded snores laid on a night's snored breaths, so an evaluation can hear sound the generator never made.

A folder of short snore recordings (any rate, mono or stereo; e.g. the 1-s clips of a public
snoring data set) stands in for the generator's snore models: every snored inspiration of the plan
gets one clip, centred on the inspiration and cut to it with short fades, at the loudness the
generator's own snore would have there (the plan's snore level for the breath, times the same
depth factor and the RMS of the synthetic snore's envelope). The rest of the night (breaths, events,
room, microphone, background) is rendered as before, so the event truth is unchanged, and the clips
go through the same room and microphone as the synthetic snore would.

Each night draws its own few clips (one snorer's repertoire) and each snored breath one of them,
from ``(seed, subject)``: the same folder and arguments give the same files. The clips are
normalised on their sounding part (frames within 20 dB of the clip's loudest), so a clip with a
silent second half is not made louder than one that snores throughout.
Rendering stays chunk-exact: a clip's place is a function of its breath's absolute onset.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import soxr

if TYPE_CHECKING:
    from sleepsound.synth.hypnogram import NightPlan

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
CLIPS_PER_NIGHT = 8  # one snorer's repertoire: a night's snores come from this many clips
FADE_S = 0.02
# RMS of the synthetic snore's envelope over an inspiration (sin(pi u)^0.5 -> sqrt(2/pi)): the real
# clip (unit RMS where it sounds) is scaled by this, so it is as loud as the snore it replaces.
ENVELOPE_RMS = float(np.sqrt(2.0 / np.pi))
_STREAM = 0x5A0E


@dataclass(frozen=True)
class RealSnores:
    """A night's real snores: the clip folder, the night's clips (names) and each breath's clip."""

    folder: str
    clips: tuple[str, ...]  # the night's repertoire, file names in the folder
    clip_of_breath: np.ndarray  # per breath of the plan: index into ``clips``


def clip_names(folder: str | Path, what: str = "snore clips") -> tuple[str, ...]:
    """The audio files of a clip folder, sorted (the draws depend on this order, not on the listing's)."""
    where = Path(folder)
    if not where.is_dir():
        raise ValueError(f"{where}: not a folder of {what}")
    names = tuple(sorted(p.name for p in where.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES))
    if not names:
        raise ValueError(f"{where}: no audio clips ({', '.join(AUDIO_SUFFIXES)}) in the folder")
    return names


def folder_digest(folder: str | Path, what: str = "snore clips", names: Sequence[str] | None = None) -> str:
    """SHA-256 over the clips' names and bytes (all of the folder's, or ``names``): a cohort records
    it, so clips changed later are noticed."""
    listed = clip_names(folder, what)
    missing = sorted(set(names or ()) - set(listed))
    if missing or (names is not None and not names):
        raise ValueError(f"{folder}: no clip(s) {', '.join(missing) or '(none given)'} in the folder")
    h = hashlib.sha256()
    for name in listed if names is None else sorted(names):
        h.update(name.encode())
        h.update((Path(folder) / name).read_bytes())
    return h.hexdigest()


def read_clip(path: Path) -> tuple[np.ndarray, int]:
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as exc:
        raise ValueError(f"{path}: not a readable audio clip ({exc})") from exc
    mono = audio.mean(axis=1)
    if mono.size < int(0.1 * rate):
        raise ValueError(f"{path}: a clip of {mono.size} samples is too short to be a snore")
    return mono - float(mono.mean()), int(rate)


def sounding_rms(x: np.ndarray, rate: int) -> float:
    """RMS over the sounding part of a clip: its 20-ms frames within 20 dB of the loudest (0 when silent),
    so a clip with a silent second half is not taken for a quiet one."""
    frame = max(1, int(0.02 * rate))
    k = x.size // frame
    power = (x[: k * frame].reshape(k, frame) ** 2).mean(axis=1) if k else np.array([float(np.mean(x**2))])
    sounding = power[power >= power.max() * 0.01]
    return float(np.sqrt(sounding.mean())) if sounding.size and sounding.mean() > 0 else 0.0


def _normalised(x: np.ndarray, rate: int) -> np.ndarray:
    """Unit RMS over the sounding part, fades at both ends."""
    rms = sounding_rms(x, rate)
    if rms <= 0.0:
        return np.zeros_like(x)
    fade = max(1, int(FADE_S * rate))
    ramp = np.minimum(1.0, np.minimum(np.arange(x.size), np.arange(x.size)[::-1]) / fade)
    return (x / rms * ramp).astype(np.float32)


@lru_cache(maxsize=8)
def _bank(folder: str, clips: tuple[str, ...], rate: int) -> tuple[np.ndarray, ...]:
    """The night's clips at ``rate`` (resampled with soxr as needed), normalised."""
    out = []
    for name in clips:
        x, native = read_clip(Path(folder) / name)
        if native != rate:
            x = soxr.resample(x, native, rate, quality="HQ")
        out.append(_normalised(np.asarray(x, dtype=np.float64), rate))
    return tuple(out)


def lay_real_snores(plan: NightPlan, folder: str | Path) -> NightPlan:
    """The same plan with its snores taken from the clips in ``folder`` (drawn from the plan's seed)."""
    names = clip_names(folder)
    rng = np.random.default_rng([int(plan.seed) & 0x7FFFFFFF, plan.subject_index, _STREAM])
    chosen = rng.choice(len(names), size=min(CLIPS_PER_NIGHT, len(names)), replace=False)
    clips = tuple(names[int(i)] for i in np.sort(chosen))
    clip_of_breath = rng.integers(0, len(clips), len(plan.breaths))
    real = RealSnores(str(Path(folder).resolve()), clips, clip_of_breath)
    _bank(real.folder, clips, 16_000)  # refuse an unreadable clip now, not halfway through a night
    return dataclasses.replace(plan, real_snores=real)


def real_snore_track(plan: NightPlan, levels: np.ndarray, n0: int, n: int, rate: int) -> np.ndarray:
    """Samples ``n0 .. n0+n`` of the night's real snores (float32), one clip per snored breath.

    ``levels``: the snore loudness per breath as the generator would render it (the plan's, or the
    style's capped in hypopnoeas). A clip is centred on its breath's inspiration and cut to it.
    """
    real = plan.real_snores
    out = np.zeros(n, dtype=np.float32)
    if real is None:
        return out
    b = plan.breaths
    t0, t1 = n0 / rate, (n0 + n) / rate
    sel = np.flatnonzero((levels > 0) & (b.onset_s < t1) & (b.onset_s + b.insp_s > t0))
    if not sel.size:
        return out
    bank = _bank(real.folder, real.clips, rate)
    fade = max(1, int(FADE_S * rate))
    for i in sel:
        clip = bank[int(real.clip_of_breath[i])]
        a = round(float(b.onset_s[i]) * rate)
        z = round(float(b.onset_s[i] + b.insp_s[i]) * rate)
        start = (a + z) // 2 - clip.size // 2
        lo, hi = max(a, start), min(z, start + clip.size)
        if hi <= lo:
            continue
        pos = np.arange(lo, hi)
        gate = np.minimum(1.0, np.minimum(pos - a, z - 1 - pos) / fade).clip(0.0, 1.0)
        amp = float(levels[i]) * float(np.sqrt(min(float(b.depth[i]), 1.5))) * ENVELOPE_RMS
        piece = (amp * gate * clip[lo - start : hi - start]).astype(np.float32)
        c0, c1 = max(lo, n0), min(hi, n0 + n)
        if c1 > c0:
            out[c0 - n0 : c1 - n0] += piece[c0 - lo : c1 - lo]
    return out
