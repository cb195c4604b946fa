"""Apnoeas and hypopnoeas from a night's breathing envelope (``breathing.envelope``), in their audio form.

The AASM's rules read on sound instead of airflow:

* an apnoea is at least 10 s with no breath sound: a gap between breaths whose frames stay at
  the room's noise floor (no more than a hundredth of the usual breath's power above it, a tenth of
  its amplitude);
* a hypopnoea is at least 10 s of breaths at least 30% weaker (in amplitude, the square root
  of their power above the floor) than the usual breath of the two minutes before;
* the breath or snore that ends an event (the recovery, louder than usual) is supporting
  evidence and raises the event's confidence; it is not required;
* an event is a dip, not a step: the breathing must come back after it. A hypopnoea's breaths must be
  30% weaker than the breathing of the minute after it as well, and a gap that is silent only because no
  sound in it stands out of the room (below) is no apnoea when the breathing after it is weaker than
  before, so sound that steps down and stays down (snoring that stops, a sleeper turning away from the
  microphone) is no event; nor is a weak stretch with no breath after it (the recording ends before the
  breathing could come back). A gap silent against the usual breath is not also judged against the
  breathing after it: doing so took as many true apnoeas (a weak minute after a pause with faint TV
  fragments in it) as false ones (a snorer's snoring stopping under a TV that masks the plain breaths;
  README, "Tried and left out").

Robustness:

* steady noise (fan, HVAC, a hum): the noise floor is tracked (a low percentile over a minute),
  and a breath is a modulation above it, so a constant sound adds nothing;
* breaths that run into each other (the fast, loud breathing after an apnoea, whose noise never falls
  back to the floor between breaths): a stretch longer than a breath that is not mostly voiced is cut
  at its deep dips (10 dB under its loud part) into breaths, so the recovery is heard as breathing
  and the next pause has its rhythm before it;
* speech, TV, a voice in the room: a stretch of sound that is mostly voiced (periodic below
  1.5 kHz, more than the night's own level of periodicity) or longer than a breath can be is
  "other sound": it never counts as a breath, so it cannot end a pause nor make a breathing
  rhythm; a pause is called only when a breathing rhythm (three breaths in the 40 s before)
  precedes it, so a lull in the TV with no breathing heard before it is not an apnoea.
  A voiced burst counts as a (snored) breath when breathing follows it within a few seconds:
  the snort that ends an obstructive apnoea.
* a pause under a loud TV: the TV's faint unvoiced fragments pass as breaths, so the pause reads as
  a deep hypopnoea. A weak stretch at least 80% under the baseline (in amplitude) whose sounds are
  far less noise-like than the breaths before it (spectral flatness down by a fifth: speech and music
  are tonal, breath noise is flat) is an apnoea: those sounds are the room's, not breathing;
* a pause in a noisy room: a fan's or HVAC's own swells, just over the floor, pass as faint breaths
  the same way. A weak stretch as deep whose sounds stand less than 3 dB out of the floor (their peak
  power above it under the floor's own) is an apnoea too;
* a low TV or a fan's wander in the pause: the room stays over the silence test all through it, yet no
  sound in it stands out of the room (the segmentation that finds the breaths finds nothing): such a gap
  between breaths is silent too;
* a TV louder in the pause (or quieter breathing before it, as recorded snores are in the breath band):
  the stretch is only half-deep. Under half the baseline, it is an apnoea when its sounds are plainly
  tonal (flatness under 0.6 of the breaths'): the less deep, the less like breath noise they must be;
* talk as noise-like as the breaths (a TV through a small loudspeaker, with recorded snores as flat as
  it): under 0.4 of the baseline, it is an apnoea when its sounds flicker, their breath-band level bending
  from frame to frame twice as much as the breaths' before (syllables; a breath swells and fades smoothly);
* faint sounds inside a pause: a sound under a second long, 13 dB under the usual breath and barely out of
  the room's noise, or one of any length as far under it that is tonal and flickers against the breaths
  before (a TV's speech that only the pause lets through), is no breath heard: it neither ends a pause
  nor starts one, where it would cut the pause into gaps under 10 s.

Plain functions on numpy arrays; one night of 8 h (288,000 frames) takes well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypedDict

import numpy as np
from scipy.ndimage import maximum_filter1d, percentile_filter, uniform_filter1d

from sleepsound.breathing.envelope import FEATURES, FRAME_HZ

EventType = Literal["apnea", "hypopnea"]
EVENT_TYPES: tuple[EventType, ...] = ("apnea", "hypopnea")


class BreathingEvent(TypedDict):
    """One detected event: seconds from the recording's start, its type and a confidence in [0, 1]."""

    start_s: float
    end_s: float
    type: EventType
    confidence: float


@dataclass(frozen=True)
class DetectorSettings:
    """The detector's rules; the defaults are the AASM's (10 s, 30%) and physiology; only the confidence
    cut is fitted, on development styles."""

    min_event_s: float = 10.0  # AASM minimum event length
    max_event_s: float = 120.0  # longer "pauses" are someone leaving the bed, not an event
    hypopnea_drop: float = 0.30  # AASM: at least 30% below the baseline
    baseline_s: float = 120.0  # the baseline: breaths of the previous two minutes
    floor_window_s: float = 60.0  # the noise floor: a low percentile over a minute
    floor_percentile: float = 10.0
    sound_over_floor: float = 0.5  # a frame is sound when its power exceeds the floor's by half (1.8 dB)
    quiet_fraction: float = 0.01  # "no breath sound": the AASM's 90% drop in amplitude, 1% in power
    # ... or no sound at all stands out of the room between the two breaths (no frame of any sound, as
    # ``_sounds`` finds them): a low TV or a fan's wander can keep the room over the 1% for the whole
    # pause while nothing in it is heard as a sound. Chosen on 10 cohorts, checked on a fresh one (README,
    # "Where the error is now"); False: off.
    soundless_gap: bool = True
    # ... and a short sound in a pause (under ``faint_in_pause_s``) does not end it where it is both far
    # under the usual breath (its power under ``faint_in_pause`` x the usual breath's, 13 dB) and barely
    # out of the room's noise (under ``faint_over_floor`` x the floor's power, 3 dB): a TV's or the
    # room's faint fragments passing as breaths split a pause into gaps under 10 s, or one pause into two
    # apnoeas. Such a sound starts no gap either. Chosen on five cohorts, checked on a fresh one (README,
    # "Faint sounds in a pause"); 0.0 turns it off.
    faint_in_pause: float = 0.05
    faint_in_pause_s: float = 1.0
    # ... nor does a sound of any length as far under the usual breath that is talk, not breath: tonal (its
    # spectral flatness under ``unlike_breath_flatness`` x that of the breaths of the ``baseline_s`` before
    # it) and flickering (its level bending from frame to frame ``talk_in_pause_flicker`` x as much as
    # theirs). A TV's speech that only a pause lets through, 20-30 dB under the breaths and voiced only in
    # patches, otherwise passes as breaths and splits the pause into gaps under 10 s; a faint breath is
    # noise that swells and fades smoothly, however weak. Chosen on seven cohorts, checked on a fresh one
    # (README, "TV speech from espeak-ng, and talk in a pause"); 0.0 turns it off.
    talk_in_pause_flicker: float = 2.0
    min_breath_s: float = 0.3
    max_breath_s: float = 6.0  # one continuous sound longer than this is not one breath
    rhythm_window_s: float = 40.0
    rhythm_breaths: int = 3
    voiced_excess: float = 0.25  # voicing above the night's rolling median that marks a frame voiced
    voiced_share: float = 0.5  # a sound this much voiced is a snore, or speech when also syllabic
    syllable_jump_db: float = 4.0  # median frame-to-frame level jump of syllabic sound (a breath: 1-2 dB)
    sound_below_loud_db: float = 20.0  # quieter than the loud sounds of the last 2 min by more: silence
    cycle_s: float = 6.0  # one breath cycle at the slowest usual rate (10/min): the amplitude window
    # Events below are left out of the table and the indices. Fitted by `sleepsound breathing-eval` on
    # the development styles (classic, varied, quiet-electret; lowest per-night REI error), checked on
    # held-out styles (phone-fan, tv-bedroom, hvac-hall) and a fresh cohort: README, "Transfer evaluation".
    min_confidence: float = 0.7
    min_weak_breaths: int = 2  # breath sounds that must begin inside a hypopnoea: whole weak cycles
    # A weak stretch this deep (amplitude ratio to the baseline) whose sounds' spectral flatness is under
    # ``unlike_breath_flatness`` x that of the breaths before is an apnoea under other sound (a TV): the
    # sounds are not breath noise. Measured on 9 cohorts' held-out styles, recorded TV and recorded snores
    # (README, "Transfer evaluation"); 0.0 turns it off.
    covered_pause_ratio: float = 0.2
    unlike_breath_flatness: float = 0.8
    # ... or whose sounds barely rise out of the room's noise (their peak power above the floor under
    # ``faint_over_floor`` x the floor's, i.e. 3 dB): a fan's or HVAC's own wander, not breathing; 0.0: off
    # (and then no sound is faint enough for ``faint_in_pause`` either).
    faint_over_floor: float = 1.0
    # A stretch only this deep (half the baseline's amplitude) is an apnoea under other sound when its sounds
    # are plainly tonal: flatness under ``tonal_flatness`` x the breaths'. The less deep, the less like
    # breath noise the sounds must be; 0.0 turns it off. Both rules: chosen on 8 cohorts, checked on a fresh
    # one (README, "... pauses in a noisy room and half-deep pauses under a TV, typed").
    tonal_pause_ratio: float = 0.5
    tonal_flatness: float = 0.6
    # A stretch this deep is an apnoea under other sound when its sounds flicker: their breath-band level
    # bends from frame to frame (median |second difference|) ``flicker_ratio`` x as much as the breaths'
    # before. Speech and a TV change level syllable by syllable; a breath or a snore, even a faint one,
    # swells and fades smoothly. 0.0 turns it off. Chosen on 9 cohorts, checked on a fresh one (README,
    # "Talk as noise-like as breath in a pause, typed").
    flicker_pause_ratio: float = 0.4
    flicker_ratio: float = 2.0
    # A stretch this deep (``faint_pause_ratio``) whose sounds stay faint (peaks under ``faint_pause_over_floor``
    # x the floor's power, 10 dB) is an apnoea under other sound when they flicker even a little more than
    # the breaths before (``faint_flicker_ratio``): breaths weakened that far still swell smoothly, where a
    # TV or talk that only a pause lets through rides up and down. 0.0 turns it off. Chosen on six cohorts,
    # checked on a fresh one (README, "Faint talk in a pause, typed").
    faint_pause_ratio: float = 0.3
    faint_pause_over_floor: float = 9.0
    faint_flicker_ratio: float = 1.2
    # An event is a dip, not a step: the breathing of the minute after it must be louder than a hypopnoea
    # by the same rules, and than the breathing before a soundless gap (snoring that stops for good, a
    # sleeper turning away is no event); False: off.
    after_s: float = 60.0
    step_check: bool = True
    # A sound longer than a breath, not mostly voiced, is cut where it dips this far under its loud part:
    # the fast breaths after a pause run into each other without reaching the floor (notes s24-events).
    split_db: float = 10.0
    # With the per-second snoring head's frames (``breathing.combine``): a breath whose mean P(snoring)
    # passes ``snored_prob`` is snored. Where at least ``snored_share`` of the breaths of the two minutes
    # before a hypopnoea snored, it must also show in the breaths not snored (their baseline from as few as
    # ``unsnored_min_s`` seconds of them: a snorer has few): snoring that pauses is no drop of the airflow.
    # Measured on held-out styles of three fresh seeds (``breathing.combine``; notes s25-events).
    snored_prob: float = 0.5
    snored_share: float = 0.7
    unsnored_min_s: float = 8.0
    # "Unchanged" is within ``unsnored_kept`` of their baseline in power (10% in amplitude): breaths the
    # head does not hear snoring in that weaken by 20-30% while the snoring stops are a hypopnoea's, and
    # the 30% drop the rule asked of them before lost true events under a TV (README, "Fresh seeds,
    # with trained heads").
    unsnored_kept: float = 0.8
    # ... and where there are none to compare with (every breath before snored), a stretch whose breaths
    # have mostly stopped snoring (under 1 - ``snored_share`` of them snored) is the snoring's pause too.
    stopped_snoring: bool = True
    # Neither holds where the snores that go on inside, ``min_weak_breaths`` at least, are under
    # ``like_for_like_drop`` x the median amplitude of the snores in the ``baseline_s`` before: a hypopnoea
    # quietens the snores that go on, where a pause of the snoring only thins them out. 0.0 turns it off.
    # Measured with the scored snores as the snoring track and with the heads' (README, "A snorer's pause
    # told from a hypopnoea, like for like").
    like_for_like_drop: float = 0.5
    # Without the head's frames the envelope's voicing is what it hears of snoring: a snorer's half-voiced
    # snores (under ``voiced_share``, so taken for plain breaths) make a pause of the snoring look like a
    # hypopnoea. Where the breath sounds of the ``baseline_s`` before were at least ``stopped_voicing_before``
    # voiced on average and those inside under ``stopped_voicing`` x that, the snoring stopped: no event, as
    # long as the sounds inside stand clearly out of the room (peaks over the floor at least
    # ``stopped_voicing_over_floor`` x its power, 6 dB; a TV's faint fragments in an apnoea do not). Chosen
    # on four cohorts, checked on a fresh one (README, "Where the error is now"); 0.0 turns it off.
    stopped_voicing: float = 0.33
    stopped_voicing_before: float = 0.2
    stopped_voicing_over_floor: float = 3.0
    # A dip must show in the body of the breath sounds, not only at their peaks: inside a weak stretch (less
    # the cycle window's reach at each end) the ``body_percentile``-th percentile of the breath frames' power
    # must fall under (1 - ``hypopnea_drop``)^2 x that of the breath frames of the ``baseline_s`` before
    # (events left out). A recorded snore on a breath is a short loud spike on a longer sound, so a pause of
    # the snoring drops the peaks and leaves the breath noise: the airflow did not drop. A high percentile,
    # since the frames' levels are cut at the sound threshold: a weakened breath keeps only its loud frames,
    # and the median moves less than the breathing. Chosen on four fresh seeds, checked on eleven older
    # cohorts (README, "The breath sounds' body"); 0.0 turns it off.
    body_percentile: float = 70.0


DEFAULT = DetectorSettings()


@dataclass
class _Sound:
    """One stretch of sound above the floor (frames [start, stop))."""

    start: int
    stop: int
    peak: float  # the highest smoothed power above the floor
    over_floor: float  # that power over the floor's own (1.0: the sound stands 3 dB above the room)
    voiced: float  # share of voiced frames
    flatness: float  # mean spectral flatness (breath noise is flat, speech and music are tonal)
    flicker: float  # median |second difference| of the breath-band level, dB (a breath swells smoothly)
    breath: bool = False  # counts as a breath (plain breath, or a snore followed by breathing)
    clean: bool = False  # a plain (unvoiced) breath
    snored: bool = False  # the snoring head hears a snore in it (only with its frames)


@dataclass(frozen=True)
class _NightSounds:
    """What the rules read of a night: its valid frames, the room's floor, each frame's power above it, and
    the stretches of sound (breaths and other sounds)."""

    n: int
    valid: np.ndarray
    floor: np.ndarray
    excess: np.ndarray
    sounds: list[_Sound]
    heard_before: np.ndarray  # per frame: sound against the loud sounds of the two minutes before only
    heard_after: np.ndarray  # per frame: sound against the loud sounds of the two minutes after only


def _night_sounds(envelope: np.ndarray, valid: np.ndarray | None, settings: DetectorSettings) -> _NightSounds | None:
    """The night's sounds over its tracked noise floor (``_sounds``); None when it is shorter than an event."""
    if envelope.ndim != 2 or envelope.shape[1] != len(FEATURES):
        raise ValueError(f"an envelope has {len(FEATURES)} features per frame, got shape {envelope.shape}")
    n = len(envelope)
    if n < settings.min_event_s * FRAME_HZ:
        return None
    valid = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    db = np.where(valid, envelope[:, FEATURES.index("breath_db")].astype(np.float64), np.nan)
    floor_db = _rolling_floor(db, settings)
    power = np.where(valid, 10.0 ** (np.nan_to_num(db, nan=-140.0) / 10.0), 0.0)
    floor = 10.0 ** (floor_db / 10.0)
    smooth = uniform_filter1d(power, size=max(1, int(0.5 * FRAME_HZ)), mode="nearest")
    excess = np.where(valid, np.maximum(smooth - floor, 0.0), 0.0)
    voicing = envelope[:, FEATURES.index("voicing")].astype(np.float64)
    typical = percentile_filter(voicing[:: int(FRAME_HZ)], 50, size=121, mode="nearest")
    voiced = voicing - np.repeat(typical, int(FRAME_HZ))[:n] > settings.voiced_excess
    broad_db = envelope[:, FEATURES.index("broad_db")].astype(np.float64)
    flatness = envelope[:, FEATURES.index("flatness")].astype(np.float64)
    sounds = _sounds(excess, floor, voiced, broad_db, flatness, np.nan_to_num(db, nan=-140.0), settings)
    half = (int(settings.baseline_s) | 1) // 2
    before = _sound_frames(excess, floor, settings, origin=half)
    after = _sound_frames(excess, floor, settings, origin=-half)
    return _NightSounds(n, valid, floor, excess, sounds, before, after)


def _sound_frames(excess: np.ndarray, floor: np.ndarray, settings: DetectorSettings, origin: int = 0) -> np.ndarray:
    """Frames of sound: over the floor by ``sound_over_floor``, and within ``sound_below_loud_db`` of the loud
    sounds (80th percentile of each second's peak) of a ``baseline_s`` window, centred on the second
    (``origin`` 0) or shifted (``origin`` plus or minus half the window: the window before or after it).

    ``_sounds`` uses the centred window. Where the sound steps by 30 dB for good (a recorder's gain, a quiet
    start, a sleeper turning to or from the microphone) the quieter breaths within a minute of the step
    stop counting as sounds against the louder ones on its other side, and the gap they leave passed for
    an apnoea. A one-sided window for the segmentation itself lost pauses and typings the centred one
    finds (two of the detector's tests, and the cohorts' figures mixed), so the one-sided frames only
    judge such a gap again (``_silent_part``)."""
    block = int(FRAME_HZ)
    loud = np.repeat(
        percentile_filter(
            np.maximum.reduceat(excess, np.arange(0, len(excess), block)),
            80,
            size=int(settings.baseline_s) | 1,
            mode="nearest",
            origin=origin,
        ),
        block,
    )[: len(excess)]
    return (excess > settings.sound_over_floor * floor) & (
        excess > loud * 10.0 ** (-settings.sound_below_loud_db / 10.0)
    )


def _silent_part(
    night: _NightSounds, heard: np.ndarray, start: int, stop: int, usual: float, settings: DetectorSettings
) -> tuple[int, int]:
    """The part of the gap [start, stop) silent against ``heard`` (one of the one-sided sound frames): the
    whole gap, unless a breathing rhythm sounds in it there (``rhythm_breaths`` sounds of a breath's length,
    none faint against ``usual``, the breathing on the window's side: a TV's or the room's fragments in a
    pause are faint); then only the longest stretch between those breaths, as the gap was silent only
    against the louder sound on the other side of a step."""
    shortest = settings.min_breath_s * FRAME_HZ
    faint = settings.faint_in_pause * usual
    runs = [
        (start + a, start + b)
        for a, b in _runs(heard[start:stop])
        if b - a >= shortest and float(night.excess[start + a : start + b].max()) >= faint
    ]
    if len(runs) < settings.rhythm_breaths:
        return start, stop
    edges = [start, *(edge for run in runs for edge in run), stop]
    return max(zip(edges[::2], edges[1::2], strict=True), key=lambda gap: gap[1] - gap[0])


def heard_frames(
    envelope: np.ndarray,
    valid: np.ndarray | None = None,
    events: list[BreathingEvent] | None = None,
    settings: DetectorSettings = DEFAULT,
) -> np.ndarray:
    """Per frame, whether breathing was heard around it: the night's share where an event could be found.

    A pause counts only after a breathing rhythm (``rhythm_breaths`` breath sounds in ``rhythm_window_s``),
    so where no rhythm is heard, before or after, the detector is blind: breathing too faint for the
    microphone (a sleeper far from it, a loud room) gives no events, and an REI of 0 there says nothing.
    A frame is heard when that many breath sounds begin in the window before it or in the window after it
    (so a pause's own frames count), or it lies in one of ``events``; never where ``valid`` is False.
    """
    return _heard(_night_sounds(envelope, valid, settings), len(envelope), valid, events, settings)


def events_and_heard(
    envelope: np.ndarray,
    valid: np.ndarray | None = None,
    settings: DetectorSettings = DEFAULT,
    snoring: np.ndarray | None = None,
) -> tuple[list[BreathingEvent], np.ndarray]:
    """``detect_events`` and ``heard_frames`` of one envelope from one reading of its sounds (the bedside
    asks both after every chunk: reading them twice doubled its cost)."""
    if snoring is not None and len(snoring) != len(envelope):
        raise ValueError(f"the snoring track has {len(snoring)} frames, the envelope {len(envelope)}")
    night = _night_sounds(envelope, valid, settings)
    events = resolve_events(_candidates(night, settings, snoring), settings.min_confidence)
    return events, _heard(night, len(envelope), valid, events, settings)


def _heard(
    night: _NightSounds | None,
    n: int,
    valid: np.ndarray | None,
    events: list[BreathingEvent] | None,
    settings: DetectorSettings,
) -> np.ndarray:
    heard = np.zeros(n, dtype=bool)
    if night is not None:
        window = int(settings.rhythm_window_s * FRAME_HZ)
        begins = np.zeros(night.n + 1, dtype=np.int64)
        np.add.at(begins, [s.start + 1 for s in night.sounds if s.breath], 1)
        upto = np.cumsum(begins)  # upto[f]: breaths beginning before frame f
        frame = np.arange(night.n)
        before = upto[frame + 1] - upto[np.maximum(frame + 1 - window, 0)]  # in [f - window, f]
        after = upto[np.minimum(frame + window, night.n)] - upto[frame]  # in [f, f + window)
        heard = (before >= settings.rhythm_breaths) | (after >= settings.rhythm_breaths)
    for event in events or []:
        heard[int(round(event["start_s"] * FRAME_HZ)) : int(round(event["end_s"] * FRAME_HZ))] = True
    if valid is not None:
        heard &= np.asarray(valid, dtype=bool)
    return heard


def _rolling_floor(db: np.ndarray, settings: DetectorSettings) -> np.ndarray:
    """The noise floor in dB per frame: a low percentile of 1-s block minima over ``floor_window_s``."""
    block = int(FRAME_HZ)
    n_blocks = int(np.ceil(len(db) / block))
    padded = np.full(n_blocks * block, np.nan)
    padded[: len(db)] = db
    blocks = np.nanmin(np.where(np.isnan(padded), np.inf, padded).reshape(n_blocks, block), axis=1)
    known = np.isfinite(blocks)
    if not known.any():
        return np.full(len(db), np.nan)
    blocks = np.interp(np.arange(n_blocks), np.flatnonzero(known), blocks[known])
    size = max(3, int(settings.floor_window_s) | 1)
    floor = percentile_filter(blocks, settings.floor_percentile, size=size, mode="nearest")
    return np.repeat(floor, block)[: len(db)]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def _sounds(
    excess: np.ndarray,
    floor: np.ndarray,
    voiced: np.ndarray,
    broad_db: np.ndarray,
    flatness: np.ndarray,
    breath_db: np.ndarray,
    settings: DetectorSettings,
) -> list[_Sound]:
    """Stretches of sound (gaps under 0.2 s bridged), each marked breath or other sound.

    A frame is sound when it stands above the floor by ``sound_over_floor`` and is within
    ``sound_below_loud_db`` of the loud sounds of the last two minutes (so the faint tail of a
    breath does not join it to the next). A stretch longer than a breath, not mostly voiced, is
    first cut at its deep dips (``_split_long``). A stretch is other sound (speech, TV, movement)
    when it is still longer than one breath can be, or voiced and syllabic: its level jumps between
    frames as syllables do (4-5 per second), where a breath or a snore swells and fades smoothly.
    """
    mask = _sound_frames(excess, floor, settings)
    bridge = int(0.2 * FRAME_HZ)
    merged = _bridged_runs(mask, bridge)
    jumps = np.abs(np.diff(broad_db, prepend=broad_db[:1]))
    bends = np.abs(np.diff(breath_db, n=2, prepend=breath_db[:1], append=breath_db[-1:]))  # bends[i]: at frame i
    longest = settings.max_breath_s * FRAME_HZ
    if settings.split_db > 0:
        merged = _split_long(merged, excess, voiced, longest, bridge, settings)
    out = []
    for start, stop in merged:
        if stop - start < settings.min_breath_s * FRAME_HZ:
            continue
        share = float(voiced[start:stop].mean())
        top = start + int(np.argmax(excess[start:stop]))
        peak = float(excess[top])
        flicker = float(np.median(bends[start + 1 : stop - 1])) if stop - start >= 3 else 0.0
        s = _Sound(
            start, stop, peak, peak / max(float(floor[top]), 1e-30), share, float(flatness[start:stop].mean()), flicker
        )
        syllabic = stop - start >= 5 and float(np.median(jumps[start + 1 : stop])) > settings.syllable_jump_db
        s.breath = stop - start <= longest and not (share >= settings.voiced_share and syllabic)
        s.clean = s.breath and share < settings.voiced_share
        out.append(s)
    return out


def _frames_of(sounds: list[_Sound], n: int) -> np.ndarray:
    """Which of ``n`` frames lie inside one of ``sounds``."""
    mask = np.zeros(n, dtype=bool)
    for s in sounds:
        mask[s.start : s.stop] = True
    return mask


def _mark_snored(sounds: list[_Sound], snoring: np.ndarray, cut: float) -> None:
    """Mark the sounds whose mean P(snoring) over their frames (those known) passes ``cut``."""
    for s in sounds:
        p = snoring[s.start : s.stop]
        p = p[np.isfinite(p)]
        s.snored = bool(len(p)) and float(p.mean()) > cut


def _bridged_runs(mask: np.ndarray, bridge: int) -> list[list[int]]:
    """Runs of ``mask`` as [start, stop), joined across gaps shorter than ``bridge`` frames."""
    out: list[list[int]] = []
    for start, stop in _runs(mask):
        if out and start - out[-1][1] < bridge:
            out[-1][1] = stop
        else:
            out.append([start, stop])
    return out


def _split_long(
    merged: list[list[int]],
    excess: np.ndarray,
    voiced: np.ndarray,
    longest: float,
    bridge: int,
    settings: DetectorSettings,
) -> list[list[int]]:
    """Stretches longer than one breath, not mostly voiced, cut at their deep dips (``split_db`` under
    their loud part): fast breaths after a pause run into each other without reaching the floor, and
    are still breaths one by one."""
    out: list[list[int]] = []
    for start, stop in merged:
        if stop - start <= longest or float(voiced[start:stop].mean()) >= settings.voiced_share:
            out.append([start, stop])
            continue
        part = excess[start:stop]
        keep = part > np.percentile(part, 90) * 10.0 ** (-settings.split_db / 10.0)
        pieces = _bridged_runs(keep, bridge)
        out.extend([[start + a, start + b] for a, b in pieces] if len(pieces) > 1 else [[start, stop]])
    return out


def detect_events(
    envelope: np.ndarray,
    valid: np.ndarray | None = None,
    settings: DetectorSettings = DEFAULT,
    snoring: np.ndarray | None = None,
) -> list[BreathingEvent]:
    """Apnoeas and hypopnoeas of one night from its envelope ``[frames, FEATURES]`` at ``FRAME_HZ``.

    ``valid``: per frame, False where the audio is not to be read (invalid epochs); no event
    spans such frames. ``snoring``: optional P(snoring) per frame from the per-second snoring head
    (``breathing.combine.snore_track``; NaN where unknown), which marks snored breaths the envelope
    takes for plain ones. Events are sorted by start and never overlap (an apnoea wins over a
    hypopnoea on the same breaths).
    """
    return resolve_events(detect_candidates(envelope, valid, settings, snoring), settings.min_confidence)


def detect_candidates(
    envelope: np.ndarray,
    valid: np.ndarray | None = None,
    settings: DetectorSettings = DEFAULT,
    snoring: np.ndarray | None = None,
) -> list[BreathingEvent]:
    """Every event the rules propose, overlapping and at any confidence: ``resolve_events`` keeps the
    confident ones, so an evaluation can try several confidence cuts without re-running the rules."""
    if snoring is not None and len(snoring) != len(envelope):
        raise ValueError(f"the snoring track has {len(snoring)} frames, the envelope {len(envelope)}")
    return _candidates(_night_sounds(envelope, valid, settings), settings, snoring)


def _candidates(
    night: _NightSounds | None, settings: DetectorSettings, snoring: np.ndarray | None
) -> list[BreathingEvent]:
    if night is None:
        return []
    n, valid, floor, excess, sounds = night.n, night.valid, night.floor, night.excess, night.sounds
    heard_snoring = snoring is not None and bool(np.isfinite(snoring).any())  # NaN: the envelope alone
    if heard_snoring:
        _mark_snored(sounds, np.asarray(snoring, dtype=np.float64), settings.snored_prob)
    breaths = [s for s in sounds if s.breath]
    if len(breaths) < settings.rhythm_breaths + 1:
        return []
    starts = np.array([b.start for b in breaths])
    stops = np.array([b.stop for b in breaths])
    peaks = np.array([b.peak for b in breaths])
    amps = np.sqrt(peaks)
    # sounds a pause may hold if faint enough (``faint_in_pause``): short and barely out of the room's noise
    slight = np.array(
        [
            b.stop - b.start < settings.faint_in_pause_s * FRAME_HZ and b.over_floor < settings.faint_over_floor
            for b in breaths
        ]
    )
    breath_flicker = np.array([b.flicker for b in breaths])
    breath_flatness = np.array([b.flatness for b in breaths])
    first_before = np.searchsorted(starts, starts - settings.baseline_s * FRAME_HZ)
    talk: dict[int, bool] = {}

    def talk_like(k: int) -> bool:
        """Breath k is tonal and flickers against the breaths of the ``baseline_s`` before it (asked only of
        sounds far under the usual breath, so worked out once for each of those few)."""
        if k not in talk:
            lo = first_before[k]
            talk[k] = (
                settings.talk_in_pause_flicker > 0
                and k - lo >= settings.rhythm_breaths
                and breath_flatness[k] < settings.unlike_breath_flatness * float(np.median(breath_flatness[lo:k]))
                and breath_flicker[k] > settings.talk_in_pause_flicker * float(np.median(breath_flicker[lo:k]))
            )
        return talk[k]

    def unheard(k: int, faint: float) -> bool:
        """Breath k neither ends nor starts a pause: far under the usual breath (``faint``), and either short
        and barely out of the room's noise, or talk."""
        return bool(peaks[k] < faint) and (bool(slight[k]) or talk_like(k))

    invalid_before = np.concatenate([[0], np.cumsum(~valid)])
    min_len = settings.min_event_s * FRAME_HZ
    max_len = settings.max_event_s * FRAME_HZ

    def rhythm_before(k: int) -> bool:
        """At least ``rhythm_breaths`` breaths in the window before breath k's end."""
        lo = stops[k] - settings.rhythm_window_s * FRAME_HZ
        return int(np.count_nonzero((starts <= stops[k]) & (starts >= lo))) >= settings.rhythm_breaths

    def rhythm_at(frame: int) -> bool:
        """At least ``rhythm_breaths`` breaths in the window before ``frame``."""
        lo = frame - settings.rhythm_window_s * FRAME_HZ
        return int(np.count_nonzero((starts < frame) & (starts >= lo))) >= settings.rhythm_breaths

    in_sound = _frames_of(sounds, n)  # any sound, breath or other: a gap without any is silent
    # The breath cycles' amplitude: the loudest breath within half a cycle window either side.
    breath_frames = _frames_of(breaths, n)
    clean_frames = _frames_of([b for b in breaths if b.clean], n)
    width = int(settings.cycle_s * FRAME_HZ) | 1
    cycle = maximum_filter1d(np.where(breath_frames, excess, 0.0), size=width)
    # The same from plain (unvoiced) breath noise alone: snoring that starts or stops changes the
    # sound far more than the airflow, so a dip must show in the plain breaths too, where heard.
    plain = maximum_filter1d(np.where(clean_frames, excess, 0.0), size=width)
    # With the snoring head: the plain breaths it does not hear snoring in (noise-like snores are not voiced).
    # Without its track nothing is snored: no frame to take out, no cycle amplitude to compute again.
    snored = np.array([b.snored for b in breaths], dtype=bool)
    unsnored_frames, unsnored = clean_frames, plain
    if heard_snoring:
        unsnored_frames = clean_frames & ~_frames_of([b for b in breaths if b.snored], n)
        unsnored = maximum_filter1d(np.where(unsnored_frames, excess, 0.0), size=width)
    in_frames = np.zeros(n, dtype=bool)
    events: list[BreathingEvent] = []
    for _ in range(2):  # the second pass leaves the first pass's events out of the baseline
        after_blocks = _blocks(cycle, breath_frames & ~in_frames)  # the baseline's, and the after-check's
        cycle_base = _frame_baseline(after_blocks, n, settings)
        plain_base = _frame_baseline(_blocks(plain, clean_frames & ~in_frames), n, settings)
        if heard_snoring:
            few = max(1, int(settings.unsnored_min_s))
            unsnored_base = _frame_baseline(_blocks(unsnored, unsnored_frames & ~in_frames), n, settings, few)
        events = []
        in_frames = np.zeros(n, dtype=bool)
        # Apnoeas: gaps between breaths, where faint sounds that are no breath neither end nor start one.
        for k in range(len(breaths) - 1):
            usual = cycle_base[int(stops[k])]  # the usual breath cycle's power above the floor, before the gap
            if not np.isfinite(usual):
                continue
            faint = settings.faint_in_pause * usual  # a sound under this may be no breath heard (`unheard`)
            if unheard(k, faint):
                continue
            m = k + 1  # the next breath heard
            while m < len(breaths) and unheard(m, faint) and starts[m] - stops[k] <= max_len:
                m += 1
            if m == len(breaths):
                continue
            gap_start, gap_stop = int(stops[k]), int(starts[m])
            length = gap_stop - gap_start
            if length < min_len or length > max_len or invalid_before[gap_stop] != invalid_before[gap_start]:
                continue
            if not rhythm_before(k):
                continue
            # Quiet breathing hidden only by the louder sound after it (a step up) or before it (a step
            # down: the breathing after is too weak to count as sound beside the breathing before, so
            # only a window after the gap hears it) is no pause: what is left silent may be.
            gap_start, gap_stop = _silent_part(night, night.heard_before, gap_start, gap_stop, usual, settings)
            later = _after_base(after_blocks, gap_stop, settings)
            if not np.isfinite(later):  # too little breathing after it yet (the bedside's newest gap): the
                later = float(peaks[m])  # breath that ended it (a true pause's recovery breath is no weaker)
            if later < usual * 10.0 ** (-settings.sound_below_loud_db / 10.0):
                gap_start, gap_stop = _silent_part(night, night.heard_after, gap_start, gap_stop, later, settings)
            length = gap_stop - gap_start
            if length < min_len:
                continue
            # No breath sound: 90% under the usual breath in amplitude, or lost in the room's noise; or,
            # where the room stays above that, no sound standing out of it at all.
            silent = np.maximum(settings.quiet_fraction * usual, settings.sound_over_floor * floor[gap_start:gap_stop])
            quiet = float(np.mean(excess[gap_start:gap_stop] < silent))
            soundless = settings.soundless_gap and not in_sound[gap_start:gap_stop].any()
            if quiet < 0.6 and not soundless:
                continue
            if settings.step_check and quiet < 0.6:  # silent only as a soundless gap
                later = _after_base(after_blocks, gap_stop, settings)
                if np.isfinite(later) and later < usual:
                    continue  # before weaker breathing: the step's start, no event
            recovery = amps[m] / np.sqrt(usual)
            confidence = (
                0.45
                + 0.2 * min(1.0, (length - min_len) / min_len)
                + 0.2 * quiet
                + 0.15 * float(min(1.0, max(0.0, (recovery - 1.0) / 0.5)))
                - (0.1 if not breaths[m].clean else 0.0)
            )
            events.append(_event(gap_start, gap_stop, "apnea", confidence))
            in_frames[gap_start:gap_stop] = True
        # Hypopnoeas: at least 10 s where the breath cycles' amplitude stays 30% under the baseline.
        limit = (1.0 - settings.hypopnea_drop) ** 2
        for start, stop, ratio in _weak_stretches(excess, cycle, cycle_base, breath_frames, settings):
            if invalid_before[stop] != invalid_before[start] or not rhythm_at(start):
                continue
            heard = plain_base[start:stop]
            if np.isfinite(heard).all() and np.median(plain[start:stop] / np.maximum(heard, 1e-30)) >= limit:
                continue  # only the snoring changed
            if _body_kept(start, stop, excess, breath_frames, in_frames, settings):
                continue  # only the peaks dropped: snoring that paused over breathing that went on
            if heard_snoring and _snoring_paused(
                start, stop, starts, stops, amps, snored, unsnored, unsnored_base, settings
            ):
                continue
            after = int(np.searchsorted(starts, stop))
            if after == len(breaths):
                continue  # no breath after it: the recording ends before the breathing is seen coming back
            if settings.step_check:
                later = _after_base(after_blocks, stop, settings)
                half = int(settings.cycle_s * FRAME_HZ) // 2
                if np.isfinite(later) and np.median(cycle[start + half : stop - half]) >= limit * later:
                    continue  # a step down that stays, not a dip: the breathing never came back
            recovery = amps[after] / np.sqrt(cycle_base[start])
            # Mostly the depth of the dip: breath sounds vary by 30% from breath to breath in REM and
            # wake, so a dip just past the rule is a hypopnoea only with a long stretch or a recovery.
            confidence = (
                0.25
                + 0.5 * min(1.0, max(0.0, (1.0 - settings.hypopnea_drop - ratio) / 0.35))
                + 0.15 * min(1.0, (stop - start - min_len) / min_len)
                + 0.15 * float(min(1.0, max(0.0, (recovery - 1.0) / 0.5)))
            )
            kind: EventType = "apnea" if _covered_pause(start, stop, ratio, breaths, starts, settings) else "hypopnea"
            if kind == "hypopnea" and _voicing_stopped(start, stop, starts, breaths, settings):
                continue  # a pause of a snorer's half-voiced snoring
            events.append(_event(start, stop, kind, confidence))
            in_frames[start:stop] = True
    return events


def _breaths_before(starts: np.ndarray, start: int, settings: DetectorSettings) -> np.ndarray:
    """Which breaths (by their start frames) begin in the ``baseline_s`` before frame ``start``."""
    return (starts >= start - settings.baseline_s * FRAME_HZ) & (starts < start)


def _before_and_inside(
    starts: np.ndarray, start: int, stop: int, settings: DetectorSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the breaths beginning in the ``baseline_s`` before a stretch [start, stop) and inside it."""
    return np.flatnonzero(_breaths_before(starts, start, settings)), np.flatnonzero((starts >= start) & (starts < stop))


def _covered_pause(
    start: int, stop: int, ratio: float, breaths: list[_Sound], starts: np.ndarray, settings: DetectorSettings
) -> bool:
    """A weak stretch that is a pause under other sound: deep (``covered_pause_ratio``) and its sounds either
    far less noise-like than the breaths of the ``baseline_s`` before (a TV's fragments taken for faint
    breaths) or barely above the room's floor (a fan's blips: under ``faint_over_floor`` x its power); or
    its sounds flicker where the breaths swelled smoothly (``flicker_pause_ratio``, ``flicker_ratio``: speech
    and a TV change level syllable by syllable), or, faint, flicker only a little (``faint_pause_ratio``,
    ``faint_pause_over_floor``, ``faint_flicker_ratio``); or only half-deep (``tonal_pause_ratio``) with plainly tonal
    sounds (``tonal_flatness``)."""
    rule_depths = (
        settings.covered_pause_ratio,
        settings.tonal_pause_ratio,
        settings.flicker_pause_ratio,
        settings.faint_pause_ratio,
    )
    if ratio >= max(rule_depths):
        return False  # too shallow for every rule
    before, inside = _before_and_inside(starts, start, stop, settings)
    if not len(before) or not len(inside):
        return False
    deep = ratio < settings.covered_pause_ratio
    over_floor = float(np.median([breaths[i].over_floor for i in inside]))
    if deep and over_floor < settings.faint_over_floor:
        return True
    smooth = max(float(np.median([breaths[i].flicker for i in before])), 1e-6)
    flicker = float(np.median([breaths[i].flicker for i in inside])) / smooth  # x the breaths' before
    if ratio < settings.flicker_pause_ratio and flicker > settings.flicker_ratio:
        return True
    faint = ratio < settings.faint_pause_ratio and over_floor < settings.faint_pause_over_floor
    if faint and flicker > settings.faint_flicker_ratio:
        return True
    usual = float(np.median([breaths[i].flatness for i in before]))
    heard = float(np.median([breaths[i].flatness for i in inside]))
    if deep:
        return heard < settings.unlike_breath_flatness * usual
    return ratio < settings.tonal_pause_ratio and heard < settings.tonal_flatness * usual


def _body_kept(
    start: int,
    stop: int,
    excess: np.ndarray,
    breath_frames: np.ndarray,
    in_frames: np.ndarray,
    settings: DetectorSettings,
) -> bool:
    """Whether the body of the breath sounds (``body_percentile`` of the breath frames' power above the
    floor) held inside a weak stretch, against the ``baseline_s`` before it (events there left out). Too
    few frames on either side to tell (under a second inside, ten seconds before): not held, the rule stands."""
    if settings.body_percentile <= 0.0:
        return False
    half = int(settings.cycle_s * FRAME_HZ) // 2
    lo = max(0, start - int(settings.baseline_s * FRAME_HZ))
    inside = excess[start + half : stop - half][breath_frames[start + half : stop - half]]
    before = excess[lo:start][breath_frames[lo:start] & ~in_frames[lo:start]]
    if len(inside) < FRAME_HZ or len(before) < 10 * FRAME_HZ:
        return False
    q = settings.body_percentile
    kept = (1.0 - settings.hypopnea_drop) ** 2
    return bool(np.percentile(inside, q) >= kept * np.percentile(before, q))


def _snoring_paused(
    start: int,
    stop: int,
    starts: np.ndarray,
    stops: np.ndarray,
    amps: np.ndarray,
    snored: np.ndarray,
    unsnored: np.ndarray,
    unsnored_base: np.ndarray,
    settings: DetectorSettings,
) -> bool:
    """A snorer's weak stretch that is only a pause of the snoring: most breaths of the two minutes
    before snored (by the snoring head), the snores that go on inside are not much quieter than those
    before, and the breaths it does not hear snoring in are no weaker inside than before (the airflow
    did not drop), or, with none before, the snoring stopped inside."""
    before = _breaths_before(starts, start, settings)
    if not before.any() or snored[before].mean() < settings.snored_share:
        return False
    inside = (starts >= start) & (starts < stop)
    if _snores_quietened(amps, snored & before, snored & inside & (stops <= stop), settings):
        return False  # a hypopnoea in a snorer (the recovery breath the stretch ends in left out)
    heard = unsnored_base[start:stop]
    if np.isfinite(heard).all():
        return bool(np.median(unsnored[start:stop] / np.maximum(heard, 1e-30)) >= settings.unsnored_kept)
    # No plain breaths before to compare with (a snorer who snores every breath): where the breaths inside
    # have mostly stopped snoring, what dropped is the snoring; sound cannot tell the airflow's part.
    return (
        settings.stopped_snoring and bool(inside.any()) and float(snored[inside].mean()) < 1.0 - settings.snored_share
    )


def _voicing_stopped(
    start: int, stop: int, starts: np.ndarray, breaths: list[_Sound], settings: DetectorSettings
) -> bool:
    """Whether a weak stretch's breath sounds stopped being voiced where those of the ``baseline_s``
    before were (``stopped_voicing_before``; inside under ``stopped_voicing`` x that), with the sounds
    inside standing clearly out of the room's floor (``stopped_voicing_over_floor``): the snoring
    stopped, heard plainly, where a hypopnoea quietens snores and breaths alike."""
    if settings.stopped_voicing <= 0.0:
        return False
    before, inside = _before_and_inside(starts, start, stop, settings)
    if not len(before) or not len(inside):
        return False
    then = float(np.mean([breaths[i].voiced for i in before]))
    now = float(np.mean([breaths[i].voiced for i in inside]))
    heard = float(np.median([breaths[i].over_floor for i in inside]))
    return (
        then >= settings.stopped_voicing_before
        and now < settings.stopped_voicing * then
        and heard >= settings.stopped_voicing_over_floor
    )


def _snores_quietened(amps: np.ndarray, then: np.ndarray, now: np.ndarray, settings: DetectorSettings) -> bool:
    """Whether the snores ``now`` (at least ``min_weak_breaths``) are under ``like_for_like_drop`` x the
    median amplitude of the snores ``then``. Snores are far louder than plain breaths, so a stretch where
    the snoring thins out looks weak taken all together; compared like for like, snores with snores,
    only a quieter snore is a weaker breath (one alone is no trend)."""
    if settings.like_for_like_drop <= 0.0 or int(now.sum()) < settings.min_weak_breaths or not then.any():
        return False
    return bool(np.median(amps[now]) < settings.like_for_like_drop * np.median(amps[then]))


def _blocks(cycle: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Per second, the highest breath-cycle power among usable frames (NaN where none)."""
    block = int(FRAME_HZ)
    n_blocks = int(np.ceil(len(cycle) / block))
    values = np.full(n_blocks * block, np.nan)
    values[: len(cycle)] = np.where(usable, cycle, np.nan)
    per_block = values.reshape(n_blocks, block)
    seen = np.isfinite(per_block).any(axis=1)
    blocks = np.full(n_blocks, np.nan)
    blocks[seen] = np.nanmax(per_block[seen], axis=1)
    return blocks


def _after_base(blocks: np.ndarray, stop: int, settings: DetectorSettings) -> float:
    """The median breath-cycle power of the ``after_s`` after frame ``stop`` (NaN with under a quarter of
    it breathing): an event is a dip of the breathing, so the breathing must come back after it."""
    k = int(np.ceil(stop / FRAME_HZ))
    after = blocks[k : k + int(settings.after_s)]
    after = after[np.isfinite(after)]
    return float(np.median(after)) if len(after) >= settings.after_s / 4 else float("nan")


_BASELINE_ROWS = 4096  # seconds of baseline worked out at once: their windows sorted together stay a few MB


def _frame_baseline(
    blocks: np.ndarray, n: int, settings: DetectorSettings, min_blocks: int | None = None
) -> np.ndarray:
    """Per frame (``n`` of them), the median breath-cycle power over the previous ``baseline_s``, from
    ``_blocks`` of the frames that are breathing and not already in an event; NaN until there are
    ``min_blocks`` seconds of them (default a quarter of ``baseline_s``).

    Each second's window is sorted as one row of a block of rows (NaN sorts last), and its median read
    at the middle of its finite values: the median of each window's finite values, as ``np.median``
    takes it, without a Python step per second (that loop was most of the detector's time)."""
    block = int(FRAME_HZ)
    n_blocks = len(blocks)
    width = int(settings.baseline_s)
    need = width // 4 if min_blocks is None else min_blocks
    out = np.full(n_blocks, np.nan)
    if width > 0 and n_blocks:
        padded = np.concatenate([np.full(width, np.nan), np.asarray(blocks, dtype=np.float64)])
        windows = np.lib.stride_tricks.sliding_window_view(padded, width)  # row k: blocks[k - width : k]
        for first in range(0, n_blocks, _BASELINE_ROWS):
            rows = np.sort(windows[first : min(n_blocks, first + _BASELINE_ROWS)], axis=1)
            count = np.isfinite(rows).sum(axis=1)
            at = np.arange(len(rows))
            low = rows[at, np.maximum(count - 1, 0) // 2]
            high = rows[at, np.minimum(count // 2, width - 1)]
            known = count >= max(need, 1)
            out[first : first + len(rows)] = np.where(known, (low + high) / 2.0, np.nan)
    return np.repeat(out, block)[:n]


def _weak_stretches(
    excess: np.ndarray,
    cycle: np.ndarray,
    base: np.ndarray,
    breath_frames: np.ndarray,
    settings: DetectorSettings,
) -> list[tuple[int, int, float]]:
    """(start, stop, amplitude ratio) of stretches whose breath cycles are weaker than the baseline by
    ``hypopnea_drop`` in amplitude ((1 - drop)^2 in power), at least ``min_event_s`` long once the
    cycle window's reach (half a window each side) is given back, with breathing still heard."""
    limit = (1.0 - settings.hypopnea_drop) ** 2
    weak = np.isfinite(base) & (cycle < limit * base) & (cycle > 0)
    half = int(settings.cycle_s * FRAME_HZ) // 2
    out = []
    for start, stop in _runs(weak):
        lo, hi = max(0, start - half), min(len(cycle), stop + half)
        if not settings.min_event_s * FRAME_HZ <= hi - lo <= settings.max_event_s * FRAME_HZ:
            continue
        if breath_frames[lo:hi].mean() < 0.1:  # no breathing heard: an apnoea or silence, not a hypopnoea
            continue
        # Whole weak cycles: at least this many breath sounds begin inside the event (one faint breath
        # between two short pauses is no sustained drop of the breathing, only a gap).
        onsets = np.diff(breath_frames[lo:hi].astype(np.int8), prepend=np.int8(breath_frames[max(0, lo - 1)]))
        if int(np.count_nonzero(onsets == 1)) < settings.min_weak_breaths:
            continue
        ratio = float(np.sqrt(np.median(cycle[start:stop] / base[start:stop])))
        out.append((lo, hi, ratio))
    return out


def _event(start: int, stop: int, kind: EventType, confidence: float) -> BreathingEvent:
    return {
        "start_s": start / FRAME_HZ,
        "end_s": stop / FRAME_HZ,
        "type": kind,
        "confidence": float(np.clip(confidence, 0.0, 1.0)),
    }


def resolve_events(events: list[BreathingEvent], min_confidence: float) -> list[BreathingEvent]:
    """Confident events, sorted, without overlaps: an apnoea beats a hypopnoea, then the more confident."""
    order = sorted(
        (e for e in events if e["confidence"] >= min_confidence),
        key=lambda e: (e["type"] != "apnea", -e["confidence"]),
    )
    kept: list[BreathingEvent] = []
    for e in order:
        if all(e["end_s"] <= k["start_s"] or e["start_s"] >= k["end_s"] for k in kept):
            kept.append(e)
    return sorted(kept, key=lambda e: e["start_s"])
