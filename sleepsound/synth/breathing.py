"""Breath-by-breath timing of a night, and the non-breathing transients.

The breathing rate is integrated as a phase on a 10 Hz grid over the whole night (a
few hundred thousand numbers, not audio), so every breath's onset, length, depth and
snore are fixed before any sound is rendered. That keeps rendering chunk-independent:
audio is a function of absolute time and this table.

Stage signatures (the learnable part, blurred by per-breath and slow random drift):
N3 slow, deep and very regular; N2 regular; N1 a little faster and shallower; REM
faster, shallow and irregular; wake irregular with sighs, movement and voices.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.signal import lfilter

from sleepsound.labels.vocabulary import EPOCH_SECONDS, STAGES_5
from sleepsound.synth.hypnogram import (
    SNORE_FAMILY,
    SNORE_TYPE,
    BreathTable,
    SoundParams,
    SynthEvent,
    Transients,
)

GRID_HZ = 10.0
# stage: (rate factor, rate irregularity, depth, per-breath depth spread, snore-episode onset per epoch)
STAGE_BREATHING: dict[str, tuple[float, float, float, float, float]] = {
    "W": (1.12, 0.30, 0.80, 0.35, 0.0),
    "N1": (1.05, 0.15, 0.80, 0.20, 0.12),
    "N2": (1.00, 0.08, 0.95, 0.12, 0.22),
    "N3": (0.92, 0.035, 1.15, 0.06, 0.30),
    "R": (1.12, 0.26, 0.70, 0.30, 0.06),
}
SNORE_EPISODE_STAY = 0.93  # P(snoring episode continues into the next epoch)
SNORE_IN_EPISODE = 0.85  # P(a breath inside an episode is snored)


def _ar1(rng: np.random.Generator, n: int, tau_s: float) -> np.ndarray:
    """Unit-variance low-pass noise with time constant ``tau_s`` on the 10 Hz grid."""
    a = float(np.exp(-1.0 / (GRID_HZ * tau_s)))
    y = lfilter([1.0 - a], [1.0, -a], rng.standard_normal(n))
    return y * np.sqrt((1.0 + a) / (1.0 - a))


def _stage_table(stages: list[str], column: int) -> np.ndarray:
    table = np.array([STAGE_BREATHING[s][column] for s in STAGES_5])
    index = np.array([STAGES_5.index(s) for s in stages])
    return table[index]


def make_breaths(
    stages: list[str], respiratory: list[SynthEvent], sound: SoundParams, rng: np.random.Generator
) -> BreathTable:
    """Breath onsets from an integrated stage-dependent rate, then apnoeas cut and hypopnoeas damped."""
    n_epochs = len(stages)
    n_grid = int(n_epochs * EPOCH_SECONDS * GRID_HZ)
    epoch_of_grid = np.minimum((np.arange(n_grid) / GRID_HZ // EPOCH_SECONDS).astype(int), n_epochs - 1)
    smooth = int(20 * GRID_HZ)  # stage changes blend over about 20 s
    rate_factor = uniform_filter1d(_stage_table(stages, 0)[epoch_of_grid], smooth, mode="nearest")
    irregular = uniform_filter1d(_stage_table(stages, 1)[epoch_of_grid], smooth, mode="nearest")
    depth_grid = uniform_filter1d(_stage_table(stages, 2)[epoch_of_grid], smooth, mode="nearest")
    spread_grid = _stage_table(stages, 3)[epoch_of_grid]

    drift = 0.05 * _ar1(rng, n_grid, 180.0)
    rate_hz = sound.breath_rate_bpm / 60.0 * rate_factor * np.exp(irregular * _ar1(rng, n_grid, 3.0) + drift)
    phase = np.cumsum(rate_hz) / GRID_HZ + rng.uniform(0.0, 1.0)
    ks = np.arange(int(np.ceil(phase[0])), int(np.floor(phase[-1])) + 1)
    pos = np.clip(np.searchsorted(phase, ks), 1, n_grid - 1)
    frac = (ks - phase[pos - 1]) / (phase[pos] - phase[pos - 1])
    onset = (pos - 1 + frac) / GRID_HZ
    period = np.diff(onset, append=onset[-1] + 1.0 / rate_hz[pos[-1]] if onset.size else 0.0)
    n = onset.size
    insp = period * np.clip(rng.normal(0.40, 0.03, n), 0.3, 0.5)
    exp = period * np.clip(rng.normal(0.50, 0.05, n), 0.35, 0.62)
    g = pos - 1
    depth = depth_grid[g] * np.exp(spread_grid[g] * rng.standard_normal(n) + 1.5 * drift[g])
    epoch = np.minimum((onset // EPOCH_SECONDS).astype(int), n_epochs - 1)
    stage_arr = np.array(stages)
    breath_stage = stage_arr[epoch]
    sigh = np.isin(breath_stage, ["W", "N1", "R"]) & (rng.random(n) < 0.02)
    depth[sigh] *= 2.0
    recovery = np.zeros(n, dtype=bool)

    # Snoring episodes: a two-state chain over epochs, entered more readily in deep NREM.
    onset_p = _stage_table(stages, 4)
    draws = rng.random(n_epochs)
    episode = np.zeros(n_epochs, dtype=bool)
    if sound.snorer:
        state = False
        for i in range(n_epochs):  # per epoch (about a thousand), not per sample
            state = (draws[i] < SNORE_EPISODE_STAY) if state else (draws[i] < onset_p[i])
            episode[i] = state and stages[i] != "W"
    snore = np.where(
        episode[epoch] & (rng.random(n) < SNORE_IN_EPISODE), sound.snore_level * rng.lognormal(0.0, 0.3, n), 0.0
    )

    onset, insp, exp, depth, snore, recovery = _apply_events(
        onset, insp, exp, depth, snore, recovery, respiratory, sound, rng
    )
    # No breath may run into the next one.
    room = np.diff(onset, append=np.inf) - insp - 0.05
    exp = np.clip(np.minimum(exp, room), 0.1, None)
    snore[np.array(stages)[np.minimum((onset // EPOCH_SECONDS).astype(int), n_epochs - 1)] == "W"] = 0.0
    f0 = sound.snore_f0_hz * np.exp(rng.normal(0.0, 0.06, onset.size))
    return BreathTable(onset, insp, exp, depth, snore, f0, recovery)


def _apply_events(
    onset: np.ndarray,
    insp: np.ndarray,
    exp: np.ndarray,
    depth: np.ndarray,
    snore: np.ndarray,
    recovery: np.ndarray,
    respiratory: list[SynthEvent],
    sound: SoundParams,
    rng: np.random.Generator,
) -> tuple[np.ndarray, ...]:
    """Silence apnoeas (ended by a loud recovery breath) and damp hypopnoeas."""
    keep = np.ones(onset.size, dtype=bool)
    added: list[tuple[float, float, float, float, float, bool]] = []
    for event in respiratory:  # per event (hundreds), vectorised inside
        s, e = event.start_s, event.end_s
        obstructive = event.type in ("ObstructiveApnea", "MixedApnea", "Hypopnea")
        if event.type == "Hypopnea":
            inside = (onset >= s) & (onset < e)
            depth[inside] *= rng.uniform(0.25, 0.55)
            if sound.snorer:
                snore[inside] = np.where(rng.random(int(inside.sum())) < 0.7, 0.6 * sound.snore_level, 0.0)
            after = np.searchsorted(onset, e)
            if after < onset.size:
                depth[after] *= 1.5
            continue
        rec_insp, rec_exp = rng.uniform(1.0, 1.6), rng.uniform(1.5, 2.5)
        gone = (onset < e + rec_insp + rec_exp + 0.3) & (onset + insp > s)
        keep &= ~gone
        before = np.searchsorted(onset, s) - 1
        while before >= 0 and not keep[before]:
            before -= 1
        if before >= 0:
            exp[before] = max(0.1, min(exp[before], s - onset[before] - insp[before] - 0.05))
            if obstructive and sound.snorer:  # crescendo snoring into the obstruction
                lo = max(0, before - int(rng.integers(2, 6)))
                snore[lo : before + 1] = np.maximum(snore[lo : before + 1], sound.snore_level * 1.2)
        snort = rng.random() < (0.8 if sound.snorer else 0.3) and obstructive
        added.append((e, rec_insp, rec_exp, rng.uniform(2.0, 3.2), sound.snore_level * 1.5 if snort else 0.0, True))
    extra = np.array(added, dtype=float).reshape(-1, 6)
    onset = np.concatenate([onset[keep], extra[:, 0]])
    order = np.argsort(onset, kind="stable")
    return (
        onset[order],
        np.concatenate([insp[keep], extra[:, 1]])[order],
        np.concatenate([exp[keep], extra[:, 2]])[order],
        np.concatenate([depth[keep], extra[:, 3]])[order],
        np.concatenate([snore[keep], extra[:, 4]])[order],
        np.concatenate([recovery[keep], extra[:, 5].astype(bool)])[order],
    )


def snore_events(breaths: BreathTable, night_s: float) -> list[SynthEvent]:
    """One ``Nasal/Snore`` event per snored inspiration, on the 0.1-s grid scorers use, ended with the
    night (``night_s`` seconds): a snore still under way at the end is scored up to it, as a scorer would."""
    out = []
    for i in np.flatnonzero(breaths.snore > 0):
        start = round(float(breaths.onset_s[i]), 1)
        duration = min(max(0.1, round(float(breaths.insp_s[i]), 1)), round(night_s - start, 1))
        if duration >= 0.1:
            out.append(SynthEvent(SNORE_FAMILY, SNORE_TYPE, start, duration))
    return out


# Mean transients per epoch by stage: rustles, voice-like bursts.
RUSTLES_PER_EPOCH: dict[str, float] = {"W": 0.7, "N1": 0.15, "N2": 0.03, "N3": 0.005, "R": 0.01}
VOICES_PER_EPOCH: dict[str, float] = {"W": 0.10, "N1": 0.0, "N2": 0.0, "N3": 0.0, "R": 0.0}
BUMPS_PER_SECOND = 1.0 / 360.0  # room sounds unrelated to the sleeper, any stage


def make_transients(stages: list[str], rng: np.random.Generator) -> Transients:
    """Movement rustles (wake, transitions), voice-like bursts (wake) and stage-blind room bumps."""
    n_epochs = len(stages)
    stage_arr = np.array(stages)
    rustle_mean = np.array([RUSTLES_PER_EPOCH[s] for s in stages])
    changes = np.flatnonzero(stage_arr[1:] != stage_arr[:-1]) + 1
    to_or_from_wake = changes[(stage_arr[changes] == "W") | (stage_arr[changes - 1] == "W")]
    rustle_mean[to_or_from_wake] += 0.5
    voice_mean = np.array([VOICES_PER_EPOCH[s] for s in stages])
    voice_mean[: int(np.argmax(stage_arr != "W"))] *= 0.3  # quieter while trying to fall asleep

    def at(counts: np.ndarray) -> np.ndarray:
        return np.repeat(np.arange(n_epochs), counts) * EPOCH_SECONDS + rng.uniform(0, EPOCH_SECONDS, counts.sum())

    r_start = at(rng.poisson(rustle_mean))
    v_start = at(rng.poisson(voice_mean))
    b_start = rng.uniform(0, n_epochs * EPOCH_SECONDS, rng.poisson(BUMPS_PER_SECOND * n_epochs * EPOCH_SECONDS))
    start = np.concatenate([r_start, v_start, b_start])
    kind = np.concatenate(
        [
            np.full(r_start.size, Transients.RUSTLE),
            np.full(v_start.size, Transients.VOICE),
            np.full(b_start.size, Transients.BUMP),
        ]
    )
    duration = np.concatenate(
        [rng.uniform(0.5, 4.0, r_start.size), rng.uniform(0.8, 3.0, v_start.size), rng.uniform(0.05, 0.4, b_start.size)]
    )
    level = np.concatenate(
        [
            rng.lognormal(np.log(1.2), 0.5, r_start.size),
            rng.lognormal(np.log(1.5), 0.4, v_start.size),
            rng.lognormal(np.log(0.6), 0.6, b_start.size),
        ]
    )
    f0 = np.where(kind == Transients.VOICE, rng.uniform(90.0, 230.0, kind.size), 0.0)
    phase = rng.uniform(0, 2 * np.pi, kind.size)
    order = np.argsort(start, kind="stable")
    return Transients(start[order], duration[order], level[order], kind[order], f0[order], phase[order])
