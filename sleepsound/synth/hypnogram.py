"""A night's plan: hypnogram, scored events and the subject's sound parameters.

Everything audible or annotated is decided here, once per night and deterministically
from ``(seed, subject_index)``; :mod:`sleepsound.synth.sound` then renders any time
range of it. Separate random streams feed the hypnogram, the events, the subject's
parameters and the breathing, so changing one model does not reshuffle the others.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np

from sleepsound.labels.vocabulary import APNEA_TYPES, EPOCH_SECONDS, HYPOPNEA_TYPES, STAGES_5

if TYPE_CHECKING:
    from sleepsound.synth.realbackground import RealBackground
    from sleepsound.synth.realsnores import RealSnores
    from sleepsound.synth.styles import StyleAssets, StyleParams

# Random-stream ids under (seed, subject_index); see make_night_plan.
_STREAM_HYPNOGRAM, _STREAM_EVENTS, _STREAM_PARAMS, _STREAM_BREATHS, _STREAM_EXTRAS = 1, 2, 3, 4, 5

# OSA severity mix of the synthetic cohort, and the AHI range drawn within each class.
SEVERITY_AHI: dict[str, tuple[float, float]] = {
    "normal": (0.5, 5.0),
    "mild": (5.0, 15.0),
    "moderate": (15.0, 30.0),
    "severe": (30.0, 70.0),
}
SEVERITY_PROBS: dict[str, float] = {"normal": 0.15, "mild": 0.20, "moderate": 0.25, "severe": 0.40}

# Relative rate of respiratory events per stage: none awake, few in slow-wave sleep,
# most in REM (atonia of the upper-airway muscles).
EVENT_STAGE_WEIGHT: dict[str, float] = {"W": 0.0, "N1": 1.3, "N2": 1.0, "N3": 0.3, "R": 1.6}

RESPIRATORY_FAMILY = "Respiratory"
SNORE_FAMILY, SNORE_TYPE = "Nasal", "Snore"
AROUSAL_FAMILY, AROUSAL_TYPE = "Neuro", "Arousal"
DESAT_FAMILY, DESAT_TYPE = "SpO2", "RelativeDesaturation"


@dataclass(frozen=True)
class SynthEvent:
    """One scored event, RML-style: family/type names and seconds from the start of the night."""

    family: str
    type: str
    start_s: float
    duration_s: float

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass(frozen=True)
class SoundParams:
    """Per-subject acoustics: the things that differ between people and bedrooms, not stages."""

    breath_rate_bpm: float  # resting rate in N2; stages scale it
    expiration_level: float  # expiration loudness relative to inspiration
    snorer: bool
    snore_f0_hz: float  # fundamental of the snore buzz
    snore_brightness: float  # 0..1: harmonic decay ratio of the buzz
    snore_level: float  # snore loudness relative to a breath
    mic_gain: float  # ambient microphone gain (linear)
    mic_distance_m: float  # mouth-to-microphone distance: level and high-frequency loss
    tracheal_gain: float
    room_level: float  # RMS of room noise at the ambient microphone
    hvac_centre_hz: float  # centre of the ventilation rumble
    hvac_ratio: float  # ventilation rumble against the pink floor
    hvac_period_s: float  # on/off cycle of the ventilation
    hum_level: float  # 50 Hz mains hum amplitude
    hum_harmonics: tuple[float, ...]
    hum_phases: tuple[float, ...]
    spo2_baseline: float


@dataclass(frozen=True)
class BreathTable:
    """Every breath of the night (sorted, non-overlapping): the skeleton of the sound."""

    onset_s: np.ndarray  # start of inspiration
    insp_s: np.ndarray  # inspiration length
    exp_s: np.ndarray  # expiration length (a pause may follow)
    depth: np.ndarray  # airflow amplitude; 1 is an ordinary N2 breath
    snore: np.ndarray  # snore loudness on inspiration; 0 = no snore
    f0_hz: np.ndarray  # snore pitch of the breath
    recovery: np.ndarray  # bool: the gasp that ends an apnoea

    def __len__(self) -> int:
        return int(self.onset_s.size)

    @property
    def end_s(self) -> np.ndarray:
        return self.onset_s + self.insp_s + self.exp_s


@dataclass(frozen=True)
class Transients:
    """Non-breathing sounds: movement rustles, voice-like bursts, room bumps (kind 0, 1, 2)."""

    start_s: np.ndarray
    duration_s: np.ndarray
    level: np.ndarray
    kind: np.ndarray
    f0_hz: np.ndarray  # voices only
    phase: np.ndarray  # per-transient random phase for modulations

    RUSTLE, VOICE, BUMP = 0, 1, 2


@dataclass
class NightPlan:
    """One subject's night: stages per 30-s epoch, events, and what the sound is made of."""

    subject_id: str
    subject_index: int
    seed: int
    stages: list[str]
    events: list[SynthEvent]
    ahi: float  # realised: respiratory events per hour of sleep in ``events``
    target_ahi: float  # drawn from the severity class
    severity: str
    sound: SoundParams
    breaths: BreathTable
    transients: Transients
    spo2_dips: np.ndarray  # (k, 3): centre_s, width_s, drop in % SpO2
    recording_start: datetime
    cycle_minutes: float
    notes: dict[str, float] = field(default_factory=dict)
    style: StyleParams | None = None  # None: the classic generator (sound.py), exactly as it always was
    style_assets: StyleAssets | None = None
    real_snores: RealSnores | None = None  # None: the generator's snores; else recorded clips (synth.realsnores)
    real_background: RealBackground | None = None  # None: the generator's TV; else recordings (synth.realbackground)

    @property
    def n_epochs(self) -> int:
        return len(self.stages)

    @property
    def duration_s(self) -> float:
        return self.n_epochs * EPOCH_SECONDS

    @property
    def sleep_hours(self) -> float:
        return sum(stage != "W" for stage in self.stages) * EPOCH_SECONDS / 3600.0

    def stage_counts(self) -> dict[str, int]:
        counts = Counter(self.stages)
        return {stage: counts.get(stage, 0) for stage in STAGES_5}

    def respiratory_events(self) -> list[SynthEvent]:
        return [e for e in self.events if e.family == RESPIRATORY_FAMILY]


def _rng(seed: int, subject_index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, subject_index, stream])


# ----------------------------------------------------------------------------- hypnogram


def make_hypnogram(
    n_epochs: int,
    rng: np.random.Generator,
    cycle_minutes: float = 90.0,
    fragmentation: float = 0.0,
    n3_scale: float = 1.0,
) -> list[str]:
    """A night of 5-class stages built from NREM-REM cycles of about ``cycle_minutes``.

    Slow-wave sleep falls off and REM grows across the night; wake opens the night
    (sleep-onset latency) and appears as brief awakenings, mostly at cycle ends;
    N1 marks transitions. ``fragmentation`` (0..1, e.g. from OSA severity) adds
    awakenings and N1 and takes slow-wave sleep away.
    """
    if n_epochs <= 0:
        return []
    scale = cycle_minutes / 90.0
    per_cycle = cycle_minutes * 60.0 / EPOCH_SECONDS
    seq: list[str] = []

    def add(stage: str, count: int) -> None:
        """``count`` epochs of ``stage``, never past the night: the lists grew with ``cycle_minutes`` before the
        night was cut to length (4 GB for a 6-minute night at 1e10), and the same draws give the same night."""
        seq.extend([stage] * max(0, min(count, n_epochs - len(seq))))

    latency = int(np.clip(round(rng.lognormal(math.log(24 * scale), 0.5)), 1, max(1, n_epochs // 8)))
    add("W", latency)
    add("N1", int(rng.integers(1, max(1, round(3 * scale)) + 1)))
    while len(seq) < n_epochs:
        length = max(8, round(per_cycle * rng.uniform(0.85, 1.15)))
        pos = min(1.0, (len(seq) + length / 2) / n_epochs)
        rem = float(np.clip(0.08 + 0.32 * pos + rng.normal(0, 0.03) - 0.05 * fragmentation, 0.04, 0.45))
        n3 = float(
            np.clip(n3_scale * (1 - 0.5 * fragmentation) * 0.5 * (1 - pos) ** 2 + rng.normal(0, 0.02), 0.0, 0.55)
        )
        n_rem = max(1, round(rem * length))
        n_n3 = round(n3 * length)
        # N1 opens a cycle only after REM or wake; the first cycle follows sleep-onset N1.
        n_n1 = 0 if seq[-1] == "N1" else max(1, round((0.02 + 0.03 * fragmentation) * length))
        n_n2 = max(2, length - n_rem - n_n3 - n_n1)
        descent = math.ceil(0.6 * n_n2)
        for stage, count in (("N1", n_n1), ("N2", descent), ("N3", n_n3), ("N2", n_n2 - descent), ("R", n_rem)):
            add(stage, count)
        if rng.random() < 0.3 + 0.3 * fragmentation + 0.2 * pos:
            wake = 1 + int(rng.poisson(1.5 * (1 + fragmentation)))
            if rng.random() < 0.08 + 0.1 * pos:
                wake += int(rng.integers(4, 20))  # a longer wake bout
            add("W", wake)
            add("N1", int(rng.integers(1, 3)))
    stages = np.array(seq[:n_epochs], dtype=object)

    # Scattered transitions, after sleep onset only.
    onset = latency
    u = rng.random(n_epochs)
    body = np.arange(n_epochs) >= onset
    n2 = (stages == "N2") & body
    brief_wake = n2 & (u > 1 - (0.006 + 0.02 * fragmentation))
    stages[n2 & (u < 0.025)] = "N1"
    stages[(stages == "N3") & (u < 0.04)] = "N2"
    rem = (stages == "R") & body
    stages[rem & (u < 0.015 + 0.02 * fragmentation)] = "W"
    stages[rem & (u > 0.975)] = "N1"
    stages[brief_wake] = "W"
    after = np.flatnonzero(brief_wake[:-1]) + 1
    after = after[stages[after] == "N2"]
    stages[after] = "N1"  # falling back asleep goes through N1
    if rng.random() < 0.7:  # final awakening before lights-on
        tail = int(rng.integers(1, max(2, round(6 * scale)) + 1))
        stages[max(onset + 1, n_epochs - tail) :] = "W"
    return [str(stage) for stage in stages]


# ----------------------------------------------------------------------------- events


def draw_severity(rng: np.random.Generator) -> tuple[str, float]:
    """An OSA severity class and an AHI inside it."""
    names = list(SEVERITY_PROBS)
    severity = names[int(rng.choice(len(names), p=[SEVERITY_PROBS[n] for n in names]))]
    low, high = SEVERITY_AHI[severity]
    return severity, float(rng.uniform(low, high))


def _draw_event(rng: np.random.Generator, ahi: float, stage: str) -> tuple[str, float]:
    """Type and duration of one respiratory event; apnoeas dominate in severe OSA, longer in REM."""
    p_apnoea = float(np.clip(0.2 + 0.006 * ahi, 0.2, 0.65))
    rem_factor = 1.2 if stage == "R" else 1.0
    if rng.random() < p_apnoea:
        etype = ("ObstructiveApnea", "CentralApnea", "MixedApnea")[int(rng.choice(3, p=[0.75, 0.12, 0.13]))]
        duration = min(60.0, 10.0 + rem_factor * rng.gamma(2.0, 6.0))
    else:
        etype = "Hypopnea"
        duration = min(40.0, 10.0 + rem_factor * rng.gamma(2.0, 4.5))
    return etype, round(duration, 1)


def _walk_events(stages: list[str], rate: float, ahi: float, entropy: list[int]) -> list[SynthEvent]:
    """Place events by a stage-modulated Poisson walk with a recovery gap after each event."""
    rng = np.random.default_rng(entropy)
    weights = np.array([EVENT_STAGE_WEIGHT[s] for s in stages])
    sleep = weights > 0
    w_max = float(weights.max()) if weights.size else 0.0
    total = len(stages) * EPOCH_SECONDS
    events: list[SynthEvent] = []
    if w_max <= 0 or rate <= 0:
        return events
    t = 0.0
    while True:
        t += rng.exponential(1.0 / (rate * w_max))
        if t >= total:
            break
        epoch = int(t // EPOCH_SECONDS)
        if rng.random() >= weights[epoch] / w_max:
            continue
        etype, duration = _draw_event(rng, ahi, stages[epoch])
        start = round(t, 1)
        end = start + duration
        last = int((end - 1e-9) // EPOCH_SECONDS)
        if end > total - 10.0 or not sleep[epoch : last + 1].all():
            continue
        events.append(SynthEvent(RESPIRATORY_FAMILY, etype, start, duration))
        t = end + rng.uniform(6.0, 15.0)  # recovery breathing before the next event can start
    return events


def place_respiratory_events(stages: list[str], target_ahi: float, entropy: list[int]) -> list[SynthEvent]:
    """Apnoeas and hypopnoeas inside sleep, never overlapping, numbering about AHI x sleep hours.

    The walk's base rate is calibrated by a few deterministic reruns (same random
    stream each time) so that the count lands near the target despite dead time.
    """
    sleep_s = sum(s != "W" for s in stages) * EPOCH_SECONDS
    target = target_ahi * sleep_s / 3600.0
    if target <= 0 or sleep_s <= 0:
        return []
    mean_weight = np.mean([EVENT_STAGE_WEIGHT[s] for s in stages if s != "W"])
    r = target / sleep_s / mean_weight
    rate = r / max(0.1, 1.0 - r * 35.0)
    best: list[SynthEvent] = []
    for _ in range(6):
        events = _walk_events(stages, rate, target_ahi, entropy)
        if not best or abs(len(events) - target) < abs(len(best) - target):
            best = events
        if abs(len(events) - target) <= max(1.0, 0.03 * target):
            break
        rate *= float(np.clip(target / max(len(events), 0.5), 0.5, 3.0))
    return best


def _arousals_and_desaturations(
    respiratory: list[SynthEvent], stages: list[str], rng: np.random.Generator
) -> tuple[list[SynthEvent], np.ndarray]:
    """Arousals after some events (plus a few spontaneous ones) and the SpO2 dips they cause."""
    total = len(stages) * EPOCH_SECONDS
    extra: list[SynthEvent] = []
    dips: list[tuple[float, float, float]] = []
    for event in respiratory:
        apnoea = event.type in APNEA_TYPES
        if rng.random() < (0.45 if apnoea else 0.25):
            extra.append(
                SynthEvent(
                    AROUSAL_FAMILY,
                    AROUSAL_TYPE,
                    round(event.end_s + rng.uniform(0, 2), 1),
                    round(rng.uniform(3.0, 12.0), 1),
                )
            )
        if rng.random() < (0.85 if apnoea else 0.6):
            drop = rng.uniform(3.0, 9.0) if apnoea else rng.uniform(2.0, 4.5)
            start = event.end_s + rng.uniform(3.0, 10.0)
            duration = min(rng.uniform(12.0, 35.0), total - start)
            if duration > 3:
                extra.append(SynthEvent(DESAT_FAMILY, DESAT_TYPE, round(start, 1), round(duration, 1)))
                dips.append((start + duration / 2, duration / 3, drop))
    sleep_epochs = np.flatnonzero(np.isin(np.array(stages), ["N1", "N2", "R"]))
    n_spont = int(rng.poisson(4.0 * sleep_epochs.size * EPOCH_SECONDS / 3600.0)) if sleep_epochs.size else 0
    for epoch in rng.choice(sleep_epochs, size=n_spont) if n_spont else []:
        extra.append(
            SynthEvent(
                AROUSAL_FAMILY,
                AROUSAL_TYPE,
                round(float(epoch) * EPOCH_SECONDS + rng.uniform(0, 25), 1),
                round(rng.uniform(3.0, 10.0), 1),
            )
        )
    return extra, np.array(dips, dtype=float).reshape(-1, 3)


# ----------------------------------------------------------------------------- subject


def draw_sound_params(rng: np.random.Generator, severity: str) -> SoundParams:
    """One subject's voice, snoring and bedroom; snoring is likelier with worse OSA."""
    p_snore = {"normal": 0.3, "mild": 0.55, "moderate": 0.8, "severe": 0.92}[severity]
    n_hum = 4
    return SoundParams(
        breath_rate_bpm=float(rng.uniform(12.0, 17.5)),
        expiration_level=float(rng.uniform(0.35, 0.7)),
        snorer=bool(rng.random() < p_snore),
        snore_f0_hz=float(rng.uniform(70.0, 160.0)),
        snore_brightness=float(rng.uniform(0.72, 0.9)),
        snore_level=float(rng.uniform(1.0, 3.0)),
        mic_gain=float(rng.lognormal(0.0, 0.3)),
        mic_distance_m=float(rng.uniform(0.7, 1.5)),
        tracheal_gain=float(rng.lognormal(0.0, 0.25)),
        room_level=float(rng.lognormal(math.log(0.003), 0.35)),
        hvac_centre_hz=float(rng.uniform(80.0, 300.0)),
        hvac_ratio=float(rng.uniform(0.2, 1.5)),
        hvac_period_s=float(rng.uniform(900.0, 2400.0)),
        hum_level=float(rng.uniform(0.0003, 0.003)),
        hum_harmonics=tuple(float(a) for a in np.concatenate([[1.0], rng.uniform(0.1, 0.6, n_hum - 1)])),
        hum_phases=tuple(float(p) for p in rng.uniform(0, 2 * np.pi, n_hum)),
        spo2_baseline=float(rng.uniform(94.5, 98.0)),
    )


def make_recording_start(seed: int, subject_index: int) -> datetime:
    """Lights-off between 21:30 and 23:30 on a date spread over 2019-2020."""
    rng = _rng(seed, subject_index, _STREAM_EXTRAS)
    day = datetime(2019, 1, 7) + timedelta(days=int(rng.integers(0, 700)))
    return day + timedelta(hours=21, minutes=30 + int(rng.integers(0, 121)))


def make_night_plan(
    subject_id: str,
    hours: float,
    seed: int,
    subject_index: int = 0,
    cycle_minutes: float = 90.0,
    ahi: float | None = None,
    recording_start: datetime | None = None,
    style: str = "classic",
    speech_source: str = "auto",
    snoring: bool = True,
) -> NightPlan:
    """Everything about one night, deterministic from ``(seed, subject_index)``.

    ``hours`` is rounded to whole 30-s epochs. ``ahi`` overrides the AHI drawn from the
    severity mix. Snore events are breath-level: one per snored inspiration. ``snoring``
    False: a night without a single snore (nor the snort that may end an apnoea), every other
    draw as it would be, to measure what a snore detector makes of the rest (TV, fan).
    """
    from sleepsound.synth.breathing import make_breaths, make_transients, snore_events

    if hours <= 0:
        raise ValueError(f"hours must be positive, got {hours}")
    if cycle_minutes <= 0:
        raise ValueError(f"cycle_minutes must be positive, got {cycle_minutes}")
    n_epochs = max(1, round(hours * 3600.0 / EPOCH_SECONDS))
    params_rng = _rng(seed, subject_index, _STREAM_PARAMS)
    severity, target = draw_severity(params_rng)
    if ahi is not None:
        target = float(ahi)
        severity = next(
            name for name, (low, high) in reversed(SEVERITY_AHI.items()) if target >= low or name == "normal"
        )
    fragmentation = float(np.clip(target / 60.0, 0.0, 1.0))
    hyp_rng = _rng(seed, subject_index, _STREAM_HYPNOGRAM)
    stages = make_hypnogram(
        n_epochs, hyp_rng, cycle_minutes, fragmentation, n3_scale=float(hyp_rng.lognormal(0.0, 0.3))
    )
    sound = draw_sound_params(params_rng, severity)

    respiratory = place_respiratory_events(stages, target, [seed, subject_index, _STREAM_EVENTS])
    extra, dips = _arousals_and_desaturations(respiratory, stages, _rng(seed, subject_index, _STREAM_EVENTS + 10))
    breath_rng = _rng(seed, subject_index, _STREAM_BREATHS)
    breaths = make_breaths(stages, respiratory, sound, breath_rng)
    if not snoring:
        sound = dataclasses.replace(sound, snorer=False)
        breaths = dataclasses.replace(breaths, snore=np.zeros_like(breaths.snore))
    transients = make_transients(stages, breath_rng)
    events = sorted(
        respiratory + extra + snore_events(breaths, n_epochs * EPOCH_SECONDS),
        key=lambda e: (e.start_s, e.family, e.type, e.duration_s),
    )
    sleep_h = sum(s != "W" for s in stages) * EPOCH_SECONDS / 3600.0
    realised = len(respiratory) / sleep_h if sleep_h > 0 else 0.0
    plan = NightPlan(
        subject_id=subject_id,
        subject_index=subject_index,
        seed=seed,
        stages=stages,
        events=events,
        ahi=realised,
        target_ahi=target,
        severity=severity,
        sound=sound,
        breaths=breaths,
        transients=transients,
        spo2_dips=dips,
        recording_start=recording_start or make_recording_start(seed, subject_index),
        cycle_minutes=cycle_minutes,
        notes={
            "n_apnoeas": float(sum(e.type in APNEA_TYPES for e in respiratory)),
            "n_hypopnoeas": float(sum(e.type in HYPOPNEA_TYPES for e in respiratory)),
        },
    )
    if style == "classic":
        return plan
    from sleepsound.synth.styles import apply_style

    return apply_style(plan, style, speech_source)
