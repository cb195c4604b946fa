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

Only usable files are clips (:func:`clip_folder`): hidden files (names starting with '.') are none, and a
file that cannot be read, is empty, too short, holds NaN or Inf samples or (snores) is digitally silent is
skipped by name with its reason; a folder with no usable clip is refused. At most the first
``SNORE_CLIPS.max_seconds`` (10 s) of a file are read: a clip is cut to its breath's inspiration (a few
seconds at most), so a long recording dropped into the folder is never read whole.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soundfile as sf
import soxr

from sleepsound.clips.dataset import (
    TOO_LARGE,
    ClipError,
    check_clip_file,
    check_header,
    mix_to_mono,
    read_dtype,
    sound_source,
    unreadable,
)

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


@dataclass(frozen=True)
class ClipRules:
    """What a folder's clips are for and how much of a file is read: ``min_seconds`` (a shorter file is
    skipped), ``max_seconds`` (only the first this many seconds of a file are read: all such a clip can
    use), ``skip_silent`` (a digitally silent file is skipped)."""

    what: str
    min_seconds: float
    max_seconds: float
    skip_silent: bool


# A snore clip is cut to its breath's inspiration (40% of a breath, a recovery breath's 1.0-1.6 s: a few
# seconds at most) around the clip's centre: 10 s hold every clip of a snore data set (Khan 2019's are 1 s).
SNORE_CLIPS = ClipRules("snore clips", 0.1, 10.0, skip_silent=True)
# Background clips are strung together whole: a longer recording plays its first minute. Silent ones are
# kept in the listing (the night's draw depends on it) and left out when a night strings them together.
BACKGROUND_CLIPS = ClipRules("background clips", 0.25, 60.0, skip_silent=False)
_RULES = {r.what: r for r in (SNORE_CLIPS, BACKGROUND_CLIPS)}
_BLOCK_FRAMES = 1 << 16  # frames per read: a clip of many channels is mixed to mono as it is read
# A damaged float file's samples near the float32 limit overflow when a clip is resampled and normalised.
_MAX_SAMPLE = 1e30


@dataclass(frozen=True)
class ClipFolder:
    """A clip folder's audio files (by suffix, ``AUDIO_SUFFIXES``): the usable ones (sorted; the draws
    depend on this order) and the skipped ones with why; ``len(names) + len(skipped)`` is every file."""

    folder: str
    names: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]  # (file name, reason), sorted by name
    seconds: tuple[float, ...]  # per usable clip: the length read (at most the rules' max_seconds)
    silent: tuple[bool, ...]  # per usable clip: digitally silent

    @property
    def n_files(self) -> int:
        return len(self.names) + len(self.skipped)

    def record(self) -> dict[str, object]:
        """What a cohort records of the listing: files, used, skipped (each with its reason)."""
        return {
            "files": self.n_files,
            "used": len(self.names),
            "skipped": [{"file": name, "reason": why} for name, why in self.skipped],
        }


def _rules(what: str | ClipRules) -> ClipRules:
    return what if isinstance(what, ClipRules) else _RULES.get(what, dataclasses.replace(SNORE_CLIPS, what=what))


def clip_folder(folder: str | Path, what: str | ClipRules = SNORE_CLIPS) -> ClipFolder:
    """The usable and the skipped audio files of a clip folder; ValueError (naming the skipped files
    and why) when no file there is a usable clip.

    Every file is checked as a clip reader checks one (``clips.dataset``: a regular, non-empty file,
    a header within the accepted rates and channels and not belied by the file's length, finite
    samples), reading at most its first ``max_seconds``; the verdicts are kept while a file's size and
    modification time stay the same, so listing a folder again (every night does) reads nothing again.
    """
    rules = _rules(what)
    where = Path(folder)
    if not where.is_dir():
        raise ValueError(f"{where}: not a folder of {rules.what}")
    entries = sorted((p for p in where.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES), key=lambda p: p.name)
    if not entries:
        raise ValueError(f"{where}: no audio clips ({', '.join(AUDIO_SUFFIXES)}) in the folder")
    names, seconds, silent, skipped = [], [], [], []
    for path in entries:
        if path.name.startswith("."):
            skipped.append((path.name, "a hidden file (its name starts with '.'): not a clip"))
            continue
        verdict = _check(str(path), _stamp(path), rules.min_seconds, rules.max_seconds)
        if isinstance(verdict, str):
            skipped.append((path.name, verdict))
        elif verdict[2] and rules.skip_silent:
            skipped.append((path.name, "digitally silent: no sound to use"))
        else:
            names.append(path.name)
            seconds.append(verdict[0] / verdict[1])
            silent.append(verdict[2])
    if not names:
        detail = "; ".join(f"{name}: {why}" for name, why in skipped[:5]) + ("; ..." if len(skipped) > 5 else "")
        raise ValueError(f"{where}: no usable {rules.what} ({len(skipped)} file(s) skipped: {detail})")
    if all(silent):  # background: silent clips are left out of a night, so none would be left
        one = rules.what.removesuffix("s")
        raise ValueError(f"{where}: every {one} is silent ({len(names)} usable, each digitally silent)")
    return ClipFolder(str(where), tuple(names), tuple(skipped), tuple(seconds), tuple(silent))


def clip_names(folder: str | Path, what: str | ClipRules = SNORE_CLIPS) -> tuple[str, ...]:
    """The usable clips of a clip folder, sorted (the draws depend on this order, not on the listing's);
    ValueError when there is none (:func:`clip_folder`)."""
    return clip_folder(folder, what).names


def skipped_clips(folder: str | Path, what: str | ClipRules = SNORE_CLIPS) -> tuple[tuple[str, str], ...]:
    """(file name, reason) for each audio file of a clip folder that is not used (:func:`clip_folder`)."""
    return clip_folder(folder, what).skipped


def folder_digest(folder: str | Path, what: str | ClipRules = SNORE_CLIPS, names: Sequence[str] | None = None) -> str:
    """SHA-256 over the clips' names and bytes (all of the folder's usable clips, or ``names``): a cohort
    records it, so clips changed later are noticed. Files are hashed in blocks, never held whole."""
    listing = clip_folder(folder, what)
    skipped = dict(listing.skipped)
    missing = sorted(set(names or ()) - set(listing.names))
    if missing or (names is not None and not names):
        named = ", ".join(f"{n} (skipped: {skipped[n]})" if n in skipped else n for n in missing) or "(none given)"
        raise ValueError(f"{folder}: no clip(s) {named} in the folder")
    h = hashlib.sha256()
    for name in listing.names if names is None else sorted(names):
        h.update(name.encode())
        with open(Path(folder) / name, "rb") as handle:
            while block := handle.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _stamp(path: Path) -> tuple[int, int]:
    """(size, modification time) of a file, (-1, -1) when it cannot be stat'ed: a changed file is checked again."""
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=1 << 14)
def _check(path: str, stamp: tuple[int, int], min_seconds: float, max_seconds: float) -> tuple[int, int, bool] | str:
    """(frames read, native rate, digitally silent) of a usable clip, else the reason it is skipped."""
    try:
        x, rate = read_clip(Path(path), max_seconds, min_seconds)
    except ClipError as exc:
        return str(exc)
    except OSError as exc:  # a file gone or locked between the listing and the read
        return f"unreadable ({exc.strerror or exc})"
    return x.size, rate, not np.any(x)


def read_clip(
    path: Path, max_seconds: float = SNORE_CLIPS.max_seconds, min_seconds: float = SNORE_CLIPS.min_seconds
) -> tuple[np.ndarray, int]:
    """(mono samples at the file's own rate less their mean, float32; the rate) of the first
    ``max_seconds`` of a clip file, never more: read in blocks, each mixed to mono as it comes.
    ClipError (a ValueError) with the reason when the file is no usable clip: what ``clips.dataset``
    refuses (not a regular file, empty, an unreadable or belied header, NaN or Inf samples), shorter than
    ``min_seconds``, or samples so large (a damaged float file) that they overflow once resampled."""
    check_clip_file(path)
    try:
        with sf.SoundFile(sound_source(str(path))) as handle:
            rate = int(handle.samplerate)
            check_header(str(path), handle)
            want = min(handle.frames, math.ceil(max_seconds * rate))
            dtype = read_dtype(handle)
            blocks = []
            while want > 0:
                block = handle.read(frames=min(want, _BLOCK_FRAMES), dtype=dtype, always_2d=True)
                if not block.shape[0]:
                    break
                blocks.append(mix_to_mono(block))
                want -= block.shape[0]
    except ClipError:
        raise
    except Exception as exc:  # libsndfile raises several types for corrupt or foreign files
        raise unreadable(str(path), exc) from exc
    mono = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    if mono.size == 0:
        raise ClipError("empty (no samples)")
    if mono.size < min_seconds * rate:
        raise ClipError(f"too short ({mono.size / rate:.3f} s < {min_seconds:g} s)")
    if float(np.abs(mono).max()) > _MAX_SAMPLE:
        raise ClipError(TOO_LARGE)
    return mono - float(mono.mean()), rate


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
