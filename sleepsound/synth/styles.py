"""Generator styles: many ways to make the same night sound, so models learn breathing, not the generator.

A night's plan (stages, events, the breath table, transients) is the same in every style, so the
event truth written to the RML is exactly where the silence and the shallow breaths are. A style
changes only how the plan is *rendered*; it is drawn per night from ``(seed, subject, style name)``:

* breath sound model: ``classic`` (today's bright inhale / dark exhale noise), ``tilted`` (noise with
  a drawn spectral slope and band, inhale/exhale envelope asymmetry), ``formant`` (turbulence noise
  through nasal/oral resonances that move from breath to breath);
* snore model: ``classic`` (closed-form harmonic buzz), ``pulse`` (glottal-like pulse train with a
  gliding, wobbling fundamental through vocal-tract resonances), ``palatal`` (soft-palate flutter:
  low-frequency noise gated at the fundamental), ``tongue`` (tongue-base: higher, noise-like, weakly
  periodic);
* room: a synthetic impulse response (direct path, early reflections, exponentially decaying
  two-band noise tail with a drawn RT60) for small, medium and large rooms, one for the sleeper and
  one for the background sources across the room;
* microphone: ``flat``, ``mems`` (phone: high-pass, presence peak, low-pass), ``electret`` (cheap:
  gentle high-pass, early roll-off), with gain, a noise floor and, at high gain, hard clipping;
* background: fan (blade-pass tone + air noise), HVAC (cycling rumble + duct tone), traffic (rumble
  with passing cars), TV (espeak-ng speech, or the formant synthesiser in :mod:`.bedroom` where
  espeak-ng is missing, through a broadcast chain), each at its own level, on and off through the night;
* movement: rustle bursts, more in wake, never inside a breathing event.

``classic`` is not a drawn style: a classic night is rendered by :mod:`.sound` exactly as before.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sleepsound.labels.vocabulary import EPOCH_SECONDS, HYPOPNEA_TYPES

if TYPE_CHECKING:
    from sleepsound.synth.hypnogram import NightPlan

CLASSIC, MIXED = "classic", "mixed"
BREATH_MODELS: tuple[str, ...] = ("classic", "tilted", "formant")
SNORE_MODELS: tuple[str, ...] = ("classic", "pulse", "palatal", "tongue")
ROOM_SIZES: tuple[str, ...] = ("small", "medium", "large")
MIC_KINDS: tuple[str, ...] = ("flat", "mems", "electret")
BACKGROUND_KINDS: tuple[str, ...] = ("fan", "hvac", "traffic", "tv")
SPEECH_SOURCES: tuple[str, ...] = ("auto", "espeak", "synth")


@dataclass(frozen=True)
class Preset:
    """What a named style may draw: allowed choices, backgrounds always on, and those that may be."""

    breath: tuple[str, ...] = BREATH_MODELS
    snore: tuple[str, ...] = SNORE_MODELS
    room: tuple[str, ...] = ROOM_SIZES
    mic: tuple[str, ...] = MIC_KINDS
    forced: tuple[str, ...] = ()
    optional: tuple[str, ...] = BACKGROUND_KINDS


PRESETS: dict[str, Preset] = {
    "varied": Preset(),
    "phone-fan": Preset(mic=("mems",), room=("small", "medium"), forced=("fan",), optional=("traffic",)),
    "tv-bedroom": Preset(mic=("electret", "flat"), room=("small", "medium"), forced=("tv",), optional=("fan",)),
    "hvac-hall": Preset(breath=("tilted", "formant"), room=("large",), forced=("hvac",), optional=("traffic",)),
    "quiet-electret": Preset(
        breath=("tilted", "formant"), snore=("pulse", "palatal", "tongue"), mic=("electret",), optional=("traffic",)
    ),
}
NAMED_STYLES: tuple[str, ...] = (CLASSIC, *PRESETS)

# Room volumes (m^3), RT60 ranges (s) and the span of early reflections (ms) by size.
_ROOMS: dict[str, tuple[float, tuple[float, float], float]] = {
    "small": (30.0, (0.2, 0.4), 12.0),
    "medium": (60.0, (0.3, 0.6), 22.0),
    "large": (150.0, (0.5, 1.0), 40.0),
}
# Background level ranges in dBFS RMS at the microphone (before its gain).
_LEVELS: dict[str, tuple[float, float]] = {
    "fan": (-52.0, -38.0),
    "hvac": (-55.0, -40.0),
    "traffic": (-60.0, -46.0),
    "tv": (-50.0, -36.0),
}
# Movement bursts per 30-s epoch by stage (times the style's movement scale).
MOVES_PER_EPOCH: dict[str, float] = {"W": 0.8, "N1": 0.2, "N2": 0.05, "N3": 0.01, "R": 0.03}


@dataclass(frozen=True)
class RoomSpec:
    """A synthetic room: size, reverberation time, early reflections, and where the sources stand."""

    size: str
    rt60_s: float
    reflections_ms: tuple[float, ...]
    reflection_gains: tuple[float, ...]
    near_drr_db: float  # direct-to-reverberant ratio of the sleeper at the microphone
    far_drr_db: float  # ... of the background sources across the room


@dataclass(frozen=True)
class MicSpec:
    """A microphone: frequency response, gain, self-noise and where it overloads."""

    kind: str
    highpass_hz: float
    presence_hz: float
    presence_db: float
    lowpass_hz: float
    gain_db: float
    noise_dbfs: float
    clip_level: float  # 0: the soft limiter (never clips); else hard clipping at this level


@dataclass(frozen=True)
class BackgroundSpec:
    """One background source: its level, its tone (fan blade pass, duct hum) and when it is on."""

    kind: str
    level_dbfs: float
    tone_hz: float
    harmonics: int
    lowpass_hz: float
    on_s: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class StyleParams:
    """Everything that decides how one night sounds in its style (JSON-able, recorded per night)."""

    name: str
    breath_model: str
    breath_band_hz: tuple[float, float]
    breath_tilt_db_per_octave: float  # tilted
    breath_formants_hz: tuple[float, float, float]  # formant
    exhale_ratio: float
    insp_shape: tuple[float, float]  # rise and fall exponents of the inhalation envelope
    exp_shape: tuple[float, float]
    snore_model: str
    snore_formants_hz: tuple[float, float, float]  # pulse
    snore_glide: float  # relative f0 change over an inspiration
    snore_noise_hz: tuple[float, float]  # palatal, tongue: band of the turbulence
    mic_distance_m: float
    room: RoomSpec
    mic: MicSpec
    backgrounds: tuple[BackgroundSpec, ...]
    movement_scale: float
    speech_source: str

    def to_json(self) -> dict[str, object]:
        """Plain JSON (tuples become lists) for cohort.json."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StyleAssets:
    """Per-night arrays a style renders from (drawn with it, not recorded: they follow from the seed)."""

    breath_mix: np.ndarray  # per breath, 0..1: blend of the two inhalation spectra
    snore: np.ndarray  # per breath: snore loudness as rendered (the plan's, capped in hypopnoeas)
    rustle_keep: np.ndarray  # per plan transient: False for the plan's rustles inside a breathing event
    move_start_s: np.ndarray
    move_duration_s: np.ndarray
    move_level: np.ndarray
    move_phase: np.ndarray
    car_centre_s: np.ndarray  # traffic: passing cars
    car_width_s: np.ndarray
    car_level: np.ndarray
    tv_start_s: np.ndarray  # TV: utterances, each one clip of the night's bank
    tv_clip: np.ndarray


def resolve_styles(spec: str) -> tuple[str, ...]:
    """The style names a ``--style`` value stands for: one name, ``mixed`` (all of them) or a comma list."""
    names = NAMED_STYLES if spec.strip() == MIXED else tuple(s.strip() for s in spec.split(",") if s.strip())
    unknown = [s for s in names if s not in NAMED_STYLES]
    if not names or unknown:
        raise ValueError(f"unknown style {unknown or spec!r}; choose from {', '.join(NAMED_STYLES)}, or {MIXED}")
    return names


def style_for_night(spec: str, subject_index: int) -> str:
    """The style of night ``subject_index``: the list's styles in turn, so a cohort holds each equally."""
    names = resolve_styles(spec)
    return names[subject_index % len(names)]


def _rng(seed: int, subject_index: int, name: str, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0x7FFFFFFF, subject_index, 0x57, zlib.crc32(name.encode()), stream])


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _intervals(rng: np.random.Generator, kind: str, duration_s: float) -> tuple[tuple[float, float], ...]:
    """When a background is on: fans often all night, HVAC cycling, traffic always, TV while falling asleep."""
    if kind == "traffic":
        spans = [(0.0, duration_s)]
    elif kind == "hvac":
        period, duty = rng.uniform(600.0, 2400.0), rng.uniform(0.3, 0.7)
        t = -rng.uniform(0.0, period)
        spans = []
        while t < duration_s:
            spans.append((max(0.0, t), min(duration_s, t + duty * period)))
            t += period
    elif kind == "fan":
        u = rng.random()
        cut = rng.uniform(0.3, 0.9) * duration_s
        spans = [(0.0, duration_s)] if u < 0.6 else [(0.0, cut)] if u < 0.8 else [(cut, duration_s)]
    else:  # tv
        u = rng.random()
        first = min(duration_s, rng.lognormal(math.log(1200.0), 0.6))
        spans = [(0.0, duration_s)] if u < 0.3 else [(0.0, first)]
        if u > 0.7:  # switched on again later in the night
            start = rng.uniform(0.5, 0.9) * duration_s
            spans.append((start, min(duration_s, start + rng.uniform(300.0, 1800.0))))
    return tuple((round(a, 1), round(b, 1)) for a, b in spans if b - a >= 1.0)


def _background(rng: np.random.Generator, kind: str, duration_s: float) -> BackgroundSpec:
    tone = {
        "fan": float(rng.integers(3, 8)) * rng.uniform(10.0, 25.0),  # blades x revolutions per second
        "hvac": float(rng.choice([50.0, 60.0, 100.0, 120.0])) if rng.random() < 0.5 else rng.uniform(40.0, 160.0),
        "traffic": 0.0,
        "tv": 0.0,
    }[kind]
    lowpass = {"fan": (800.0, 5000.0), "hvac": (150.0, 600.0), "traffic": (120.0, 350.0), "tv": (7000.0, 7000.0)}
    return BackgroundSpec(
        kind=kind,
        level_dbfs=round(float(rng.uniform(*_LEVELS[kind])), 2),
        tone_hz=round(float(tone), 2),
        harmonics=int(rng.integers(2, 6)) if tone else 0,
        lowpass_hz=round(float(rng.uniform(*lowpass[kind])), 1),
        on_s=_intervals(rng, kind, duration_s),
    )


def _room(rng: np.random.Generator, size: str, distance_m: float) -> RoomSpec:
    volume, (rt_lo, rt_hi), span_ms = _ROOMS[size]
    rt60 = float(rng.uniform(rt_lo, rt_hi))
    critical = 0.057 * math.sqrt(volume / rt60)  # distance where direct and reverberant sound are equal
    n_refl = int(rng.integers(4, 9))
    return RoomSpec(
        size=size,
        rt60_s=round(rt60, 3),
        reflections_ms=tuple(round(float(d), 2) for d in np.sort(rng.uniform(1.5, span_ms, n_refl))),
        reflection_gains=tuple(
            round(float(g), 3) for g in rng.choice([-1.0, 1.0], n_refl) * rng.uniform(0.2, 0.6, n_refl)
        ),
        near_drr_db=round(20 * math.log10(critical / distance_m), 2),
        far_drr_db=round(20 * math.log10(critical / rng.uniform(2.5, 5.0)), 2),
    )


def _mic(rng: np.random.Generator, kind: str) -> MicSpec:
    if kind == "mems":
        hp, pf, pdb, lp = (
            rng.uniform(100.0, 250.0),
            rng.uniform(2000.0, 5000.0),
            rng.uniform(3.0, 8.0),
            rng.uniform(7000.0, 11000.0),
        )
    elif kind == "electret":
        hp, pf, pdb, lp = (
            rng.uniform(40.0, 90.0),
            rng.uniform(1000.0, 2000.0),
            rng.uniform(0.0, 2.0),
            rng.uniform(2500.0, 5000.0),
        )
    else:
        hp, pf, pdb, lp = rng.uniform(15.0, 30.0), 3000.0, 0.0, 20000.0
    gain_db = float(rng.normal(0.0, 4.0))
    clip = float(rng.uniform(0.3, 0.7)) if gain_db > 3.0 and rng.random() < 0.5 else 0.0
    return MicSpec(
        kind=kind,
        highpass_hz=round(float(hp), 1),
        presence_hz=round(float(pf), 1),
        presence_db=round(float(pdb), 2),
        lowpass_hz=round(float(lp), 1),
        gain_db=round(gain_db, 2),
        noise_dbfs=round(float(rng.uniform(-78.0, -60.0)), 2),
        clip_level=round(clip, 3),
    )


def resolve_speech_source(source: str) -> str:
    """The speech that will voice styled nights, ``espeak`` or ``synth``: ``auto`` is espeak-ng where it
    is installed and the built-in formant synthesiser elsewhere, so the same seed gives other audio on
    another machine; a cohort records what it got. ``espeak`` without espeak-ng is refused up front."""
    from sleepsound.synth import bedroom

    if source not in SPEECH_SOURCES:
        raise ValueError(f"speech source must be one of {', '.join(SPEECH_SOURCES)}, got {source!r}")
    if source == "auto":
        return "espeak" if bedroom.espeak_available() else "synth"
    if source == "espeak" and not bedroom.espeak_available():
        raise ValueError("speech 'espeak': espeak-ng is not installed (apt-get install espeak-ng); or use 'synth'")
    return source


def draw_style(name: str, seed: int, subject_index: int, duration_s: float, speech_source: str = "auto") -> StyleParams:
    """The parameters of night ``subject_index`` in style ``name`` (any of :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"{name!r} is not a drawn style; choose from {', '.join(PRESETS)}")
    speech_source = resolve_speech_source(speech_source)
    preset = PRESETS[name]
    rng = _rng(seed, subject_index, name, 1)
    distance = float(rng.uniform(0.4, 2.0))
    kinds = [k for k in BACKGROUND_KINDS if k in preset.forced or (k in preset.optional and rng.random() < 0.35)]
    bg_rng = _rng(seed, subject_index, name, 2)
    return StyleParams(
        name=name,
        breath_model=_pick(rng, preset.breath),
        breath_band_hz=(round(float(rng.uniform(80.0, 300.0)), 1), round(float(rng.uniform(1500.0, 6000.0)), 1)),
        breath_tilt_db_per_octave=round(float(rng.uniform(-9.0, 1.0)), 2),
        breath_formants_hz=(
            round(float(rng.uniform(400.0, 900.0)), 1),
            round(float(rng.uniform(1100.0, 2000.0)), 1),
            round(float(rng.uniform(2300.0, 3500.0)), 1),
        ),
        exhale_ratio=round(float(rng.uniform(0.3, 1.2)), 3),
        insp_shape=(round(float(rng.uniform(0.4, 2.0)), 2), round(float(rng.uniform(0.4, 2.0)), 2)),
        exp_shape=(round(float(rng.uniform(0.3, 1.5)), 2), round(float(rng.uniform(0.8, 3.0)), 2)),
        snore_model=_pick(rng, preset.snore),
        snore_formants_hz=(
            round(float(rng.uniform(300.0, 700.0)), 1),
            round(float(rng.uniform(900.0, 1600.0)), 1),
            round(float(rng.uniform(2000.0, 3000.0)), 1),
        ),
        snore_glide=round(float(rng.uniform(-0.2, 0.15)), 3),
        snore_noise_hz=(round(float(rng.uniform(60.0, 200.0)), 1), round(float(rng.uniform(600.0, 2500.0)), 1)),
        mic_distance_m=round(distance, 3),
        room=_room(rng, _pick(rng, preset.room), distance),
        mic=_mic(rng, _pick(rng, preset.mic)),
        backgrounds=tuple(_background(bg_rng, k, duration_s) for k in kinds),
        movement_scale=round(float(rng.lognormal(0.0, 0.5)), 3),
        speech_source=speech_source,
    )


TV_CLIPS, TV_CLIP_S = 6, 4.0  # each night's TV speaks from a bank of this many clips of this length


def make_assets(style: StyleParams, plan: NightPlan) -> StyleAssets:
    """Movement (by stage, outside breathing events), passing cars, the TV's utterances, and how loud
    each breath snores: inside a hypopnoea no louder than half the snoring of the 30 s before it.

    Why the cap: the plan lets some hypopnoea breaths snore even after quiet breathing; rendered as
    such (as ``classic`` does) a hypopnoea can be louder than the breathing before it, while the
    AASM's audio form of the rule, which the detector follows, needs a drop of at least 30%.
    """
    seed, subject_index, stages = plan.seed, plan.subject_index, plan.stages
    respiratory = [(e.start_s, e.end_s) for e in plan.respiratory_events()]
    rng = _rng(seed, subject_index, style.name, 3)
    duration = len(stages) * EPOCH_SECONDS
    breath_mix = rng.random(len(plan.breaths))
    b = plan.breaths
    in_event = np.zeros(len(b), dtype=bool)
    for start_s, end_s in respiratory:
        in_event |= (b.onset_s >= start_s) & (b.onset_s < end_s)
    snore = b.snore.copy()
    for e in plan.respiratory_events():  # in time order, so earlier caps feed later baselines
        if e.type not in HYPOPNEA_TYPES:
            continue
        inside = (b.onset_s >= e.start_s) & (b.onset_s < e.end_s)
        before = (b.onset_s >= e.start_s - 20.0) & (b.onset_s < e.start_s) & ~in_event
        baseline = float(np.sqrt(np.mean(snore[before] ** 2))) if before.any() else 0.0
        snore[inside] = np.minimum(snore[inside], 0.5 * baseline)
    tr = plan.transients
    rustle_keep = np.ones(tr.start_s.size, dtype=bool)
    for start_s, end_s in respiratory:  # the sleeper does not move during an event (truth stays clean)
        rustle_keep &= (
            (tr.kind != tr.RUSTLE) | (tr.start_s + tr.duration_s < start_s - 1.0) | (tr.start_s > end_s + 1.0)
        )
    mean = np.array([MOVES_PER_EPOCH[s] for s in stages]) * style.movement_scale
    counts = rng.poisson(mean)
    start = np.repeat(np.arange(len(stages)), counts) * EPOCH_SECONDS + rng.uniform(0, EPOCH_SECONDS, counts.sum())
    length = rng.uniform(0.3, 3.0, start.size)
    level = rng.lognormal(0.0, 0.5, start.size)
    phase = rng.uniform(0, 2 * np.pi, start.size)
    clear = np.ones(start.size, dtype=bool)
    for s, e in respiratory:
        clear &= (start + length < s - 1.0) | (start > e + 1.0)
    clear &= start + length < duration
    order = np.argsort(start[clear], kind="stable")

    n_cars = int(rng.poisson(rng.uniform(5.0, 60.0) * duration / 3600.0))
    cars = rng.uniform(0, duration, n_cars)
    car_order = np.argsort(cars)

    tv_start: list[float] = []
    tv = next((b for b in style.backgrounds if b.kind == "tv"), None)
    for a, b in tv.on_s if tv else ():
        t = a + rng.uniform(0.0, 1.0)
        while t < b:
            tv_start.append(t)
            t += TV_CLIP_S + rng.uniform(0.1, 0.9)
    return StyleAssets(
        breath_mix=breath_mix,
        snore=snore,
        rustle_keep=rustle_keep,
        move_start_s=start[clear][order],
        move_duration_s=length[clear][order],
        move_level=level[clear][order],
        move_phase=phase[clear][order],
        car_centre_s=cars[car_order],
        car_width_s=rng.uniform(2.0, 8.0, n_cars)[car_order],
        car_level=rng.lognormal(0.0, 0.4, n_cars)[car_order],
        tv_start_s=np.array(tv_start, dtype=float),
        tv_clip=rng.integers(0, TV_CLIPS, len(tv_start)),
    )


def apply_style(plan: NightPlan, name: str, speech_source: str = "auto") -> NightPlan:
    """The same plan rendered in style ``name``; ``classic`` returns it untouched."""
    if name == CLASSIC:
        return dataclasses.replace(plan, style=None, style_assets=None)
    style = draw_style(name, plan.seed, plan.subject_index, plan.duration_s, speech_source)
    assets = make_assets(style, plan)
    return dataclasses.replace(plan, style=style, style_assets=assets)
