"""Recorded background sound (TV, people talking) in place of the generator's TV, so an evaluation can
hear a background the generator never made.

A folder of short recordings (any rate, mono or stereo; e.g. a public data set's 1-s clips of
television news and people talking) is strung together, clip after clip with short equal-power
crossfades, into one stream that plays wherever the night's TV is on: the style's own TV (its level
and on/off schedule), or, in a style without one, a TV drawn at the ``tv-bedroom`` style's levels and
schedule. The stream goes through the night's far room response and microphone like the generator's
TV would; breaths, snores, events, movement and the other backgrounds are unchanged, so the event
truth is too.

Level: every clip is brought to unit RMS over its sounding part (its 20-ms frames within 20 dB of its
loudest, as a broadcast's loudness riding keeps a programme level), then the whole repertoire gets
one gain so that the stream's long-term RMS in the speech band (300-3400 Hz, where loudness is heard
and breaths are sought) equals that of the night's own generator TV (its clips, unit-RMS utterances of
``TV_CLIP_S`` with half a second between them on average). Matched on the broadband RMS instead, a
recording with much sound under 250 Hz (the Khan 2019 TV and talk clips have 3-13 dB more there than
the generator's speech) would come out quieter than the generator's TV once a phone microphone's
high-pass has removed its lows. The clips themselves are not filtered. Digitally silent clips are
left out.

Only usable files are clips (``realsnores.clip_folder`` with ``BACKGROUND_CLIPS``): hidden files are none,
and a file that cannot be read, is empty, shorter than ``MIN_CLIP_S`` or holds NaN or Inf samples is
skipped by name with its reason. At most the first ``BACKGROUND_CLIPS.max_seconds`` (60 s) of a file are
read and played: a long recording dropped into the folder is never read whole.

Each night plays the folder's clips (at most ``MAX_CLIPS`` of them, drawn from the seed) in its own
order, reshuffled on every pass, from ``(seed, subject)``: the same folder and arguments give the same
files. Rendering is chunk-exact: the pieces' start times are fixed for the whole night when the plan
is made, and a chunk adds only the pieces that overlap it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soxr

from sleepsound.synth.bedroom import _band
from sleepsound.synth.realsnores import BACKGROUND_CLIPS, clip_folder, clip_names, read_clip, sounding_rms
from sleepsound.synth.styles import TV_CLIP_S, TV_CLIPS, BackgroundSpec, StyleParams, _background

if TYPE_CHECKING:
    from sleepsound.synth.hypnogram import NightPlan

XFADE_S = 0.05  # crossfade between consecutive clips (equal power: the stream's level holds through it)
MIN_CLIP_S = BACKGROUND_CLIPS.min_seconds  # 0.25 s: shorter clips cannot crossfade; they are skipped
MAX_CLIP_S = BACKGROUND_CLIPS.max_seconds  # 60 s: only a file's first minute is read and played
MAX_CLIPS = 256  # a night's repertoire: at most this many of the folder's clips
SPEECH_BAND_HZ = (300.0, 3400.0)  # the band the level is matched in
TV_DUTY = TV_CLIP_S / (TV_CLIP_S + 0.5)  # the generator's TV: utterances of TV_CLIP_S, gaps 0.1-0.9 s
_STREAM, _TV_STREAM = 0xB6C0, 0xB6C1


@dataclass(frozen=True)
class RealBackground:
    """A night's recorded background: the folder, the clips it plays, when each piece starts, the TV."""

    folder: str
    clips: tuple[str, ...]  # the night's repertoire, file names in the folder
    start_s: np.ndarray  # per piece: absolute start (s); pieces overlap by XFADE_S
    clip_of_piece: np.ndarray  # per piece: index into ``clips``
    tv: BackgroundSpec  # the level and on/off schedule the stream plays at
    added_tv: bool  # True: the style had no TV, this one was drawn at tv-bedroom's levels and schedule
    band_rms: float  # the generator TV's long-term RMS in SPEECH_BAND_HZ (at unit level): the stream's too


def _durations(folder: str, clips: tuple[str, ...]) -> np.ndarray:
    """Each clip's length in seconds as it is read (its first ``MAX_CLIP_S`` at most); ValueError
    naming a clip that is no usable background clip (``realsnores.clip_folder``)."""
    listing = clip_folder(folder, BACKGROUND_CLIPS)
    seconds = dict(zip(listing.names, listing.seconds, strict=True))
    skipped = dict(listing.skipped)
    for name in clips:
        if name not in seconds:
            raise ValueError(f"{Path(folder) / name}: {skipped.get(name, 'not in the folder')}")
    return np.array([seconds[name] for name in clips])


def generator_band_rms(plan: NightPlan) -> float:
    """Long-term RMS in SPEECH_BAND_HZ of the night's generator TV (unit RMS per utterance, on)."""
    from sleepsound.synth.bedroom import espeak_available
    from sleepsound.synth.styled import _speech_bank

    source = plan.style.speech_source if plan.style is not None else "espeak" if espeak_available() else "synth"
    _, tv = _speech_bank(plan.seed, plan.subject_index, source, 16_000)
    power = np.mean([np.mean(_band(x.astype(np.float64), *SPEECH_BAND_HZ, 16_000) ** 2) for x in tv])
    return float(np.sqrt(TV_DUTY * power))


@lru_cache(maxsize=4)
def _bank(folder: str, clips: tuple[str, ...], rate: int, band_rms: float = 1.0) -> tuple[np.ndarray, ...]:
    """The clips at ``rate`` (soxr), each at unit RMS over its sounding part, times the repertoire's
    gain (the stream's long-term RMS in SPEECH_BAND_HZ is ``band_rms``), with equal-power fades of
    XFADE_S at both ends."""
    raw = []
    band_energy = 0.0
    for name in clips:
        x, native = read_clip(Path(folder) / name, MAX_CLIP_S, MIN_CLIP_S)
        x = np.asarray(x, dtype=np.float64)
        rms = sounding_rms(x, native)
        x = x / rms if rms > 0 else np.zeros_like(x)
        band_energy += float(np.sum(_band(x, *SPEECH_BAND_HZ, native) ** 2)) * rate / native
        if native != rate:
            x = soxr.resample(x, native, rate, quality="HQ")
        raw.append(np.asarray(x, dtype=np.float64))
    fade = max(1, round(XFADE_S * rate))
    ramp = np.sin(0.5 * np.pi * (np.arange(fade) + 0.5) / fade)
    for x in raw:  # clips are at least MIN_CLIP_S long, so the two fades never meet
        x[:fade] *= ramp
        x[-fade:] *= ramp[::-1]
    # The stream's long-term band power: the pieces' energy over the time each holds (one crossfade less).
    held = sum(x.size - fade for x in raw)
    gain = band_rms / np.sqrt(band_energy / held) if band_energy > 0 else 0.0
    out = tuple((gain * x).astype(np.float32) for x in raw)
    return out


def select_clips(folder: str | Path, categories_file: str | Path, categories: Sequence[str]) -> tuple[str, ...]:
    """The folder's clips whose file number (the last integer of the name, as ``clips`` reads it) falls
    in a range of ``categories`` in a ``label,first,last,category`` file (``sleepsound.clips.categories``)."""
    from sleepsound.clips.categories import read_categories
    from sleepsound.clips.split import file_index

    ranges = read_categories(categories_file)
    known = sorted({r.category for r in ranges})
    unknown = [c for c in categories if c not in known]
    if unknown or not categories:
        raise ValueError(f"{categories_file}: no category {unknown or '(none asked)'}; it names {', '.join(known)}")
    chosen = [r for r in ranges if r.category in categories]
    names = tuple(
        n
        for n in clip_names(folder, BACKGROUND_CLIPS)
        if (i := file_index(n)) is not None and any(r.first <= i <= r.last for r in chosen)
    )
    if not names:
        raise ValueError(f"{folder}: no clip numbered within {', '.join(categories)} of {categories_file}")
    return names


def lay_real_background(plan: NightPlan, folder: str | Path, only: Sequence[str] | None = None) -> NightPlan:
    """The same plan with its TV played from the clips in ``folder`` (or only the files ``only`` of
    it, e.g. from :func:`select_clips`); a TV added where the style has none."""
    names = clip_names(folder, BACKGROUND_CLIPS)
    if only is not None:
        missing = sorted(set(only) - set(names))
        if missing or not only:
            raise ValueError(f"{folder}: no background clip(s) {', '.join(missing) or '(none given)'}")
        names = tuple(sorted(set(only)))
    where = str(Path(folder).resolve())
    rng = np.random.default_rng([int(plan.seed) & 0x7FFFFFFF, plan.subject_index, _STREAM])
    if len(names) > MAX_CLIPS:
        names = tuple(names[int(i)] for i in np.sort(rng.choice(len(names), MAX_CLIPS, replace=False)))
    durations = _durations(where, names)  # lengths as read (a clip no longer usable is refused by name)
    sounding = [np.any(x) for x in _bank(where, names, 16_000)]  # reads every clip now, not mid-night
    names, durations = tuple(n for n, keep in zip(names, sounding, strict=True) if keep), durations[sounding]
    if not names:
        raise ValueError(f"{where}: every background clip is silent")
    order: list[int] = []
    total = 0.0
    while total < plan.duration_s + 1.0:  # passes through the repertoire, each in its own order
        for i in rng.permutation(len(names)):
            order.append(int(i))
            total += float(durations[i]) - XFADE_S
    clip_of_piece = np.array(order, dtype=np.int64)
    start_s = np.concatenate([[0.0], np.cumsum(durations[clip_of_piece] - XFADE_S)[:-1]])
    style, tv, added = _with_tv(plan)
    real = RealBackground(where, names, start_s, clip_of_piece, tv, added, round(generator_band_rms(plan), 6))
    return dataclasses.replace(plan, style=style, real_background=real)


def _with_tv(plan: NightPlan) -> tuple[StyleParams | None, BackgroundSpec, bool]:
    """The plan's style with a TV: its own, or one drawn at the tv-bedroom style's levels and schedule
    (added to the style's backgrounds); the TV; whether it was added."""
    style = plan.style
    tv = next((b for b in style.backgrounds if b.kind == "tv"), None) if style is not None else None
    if tv is not None:
        return style, tv, False
    tv_rng = np.random.default_rng([int(plan.seed) & 0x7FFFFFFF, plan.subject_index, _TV_STREAM])
    tv = _background(tv_rng, "tv", plan.duration_s)
    if style is not None:
        style = dataclasses.replace(style, backgrounds=(*style.backgrounds, tv))
    return style, tv, True


def add_generator_tv(plan: NightPlan) -> NightPlan:
    """The same styled plan with the generator's own TV where its style has none, at the level and on
    the schedule :func:`lay_real_background` would play the recorded one: the comparison for it."""
    if plan.style is None or plan.style_assets is None:
        raise ValueError("the generator's TV needs a generator style (classic nights have no TV renderer)")
    style, tv, added = _with_tv(plan)
    if not added:
        return plan
    rng = np.random.default_rng([int(plan.seed) & 0x7FFFFFFF, plan.subject_index, _TV_STREAM, 1])
    starts: list[float] = []
    for a, b in tv.on_s:  # utterances as styles.make_assets places them
        t = a + rng.uniform(0.0, 1.0)
        while t < b:
            starts.append(t)
            t += TV_CLIP_S + rng.uniform(0.1, 0.9)
    assets = dataclasses.replace(
        plan.style_assets, tv_start_s=np.array(starts, dtype=float), tv_clip=rng.integers(0, TV_CLIPS, len(starts))
    )
    return dataclasses.replace(plan, style=style, style_assets=assets)


def real_background_track(plan: NightPlan, n0: int, n: int, rate: int) -> np.ndarray:
    """Samples ``n0 .. n0+n`` of the night's recorded stream (float32, always playing; the TV's
    level and schedule are applied by the renderer)."""
    real = plan.real_background
    out = np.zeros(n, dtype=np.float32)
    if real is None:
        return out
    bank = _bank(real.folder, real.clips, rate, real.band_rms)
    longest = max(x.size for x in bank)
    starts = np.round(real.start_s * rate).astype(np.int64)
    lo = int(np.searchsorted(starts, n0 - longest, side="left"))
    hi = int(np.searchsorted(starts, n0 + n, side="left"))
    for k in range(lo, hi):
        clip, s = bank[int(real.clip_of_piece[k])], int(starts[k])
        a, b = max(s, n0), min(s + clip.size, n0 + n)
        if b > a:
            out[a - n0 : b - n0] += clip[a - s : b - s]
    return out


def classic_tv(plan: NightPlan, n0: int, n: int, rate: int) -> np.ndarray:
    """The recorded TV of a classic night (no room model there): the stream at the TV's level, on
    and off on its schedule, as it reaches the microphone."""
    from sleepsound.synth.styled import _control, _schedule

    real = plan.real_background
    if real is None:
        return np.zeros(n, dtype=np.float32)
    t = (n0 + np.arange(n)) / rate
    tc = _control(t[0], t[-1])
    env_c = _schedule(tc, real.tv.on_s, 0.05)
    if not env_c.any():
        return np.zeros(n, dtype=np.float32)
    env = (10 ** (real.tv.level_dbfs / 20) * np.interp(t, tc, env_c)).astype(np.float32)
    return env * real_background_track(plan, n0, n, rate)


def describe(real: RealBackground) -> dict[str, object]:
    """What cohort.json records of a night's recorded background (JSON-able)."""
    return {
        "clips": len(real.clips),
        "tv_added": real.added_tv,
        "tv_level_dbfs": real.tv.level_dbfs,
        "tv_on_s": [list(span) for span in real.tv.on_s],
    }
