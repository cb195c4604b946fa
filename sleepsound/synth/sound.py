"""Render any time range of a planned night as microphone and PSG signals.

Sound is a deterministic function of absolute time, so a night can be rendered in
chunks of any size and the pieces join exactly:

* noise comes from 1-s blocks, each seeded by ``(seed, subject, stream, block index)``
  and shaped by FIR filters with overlap-save on that fixed block grid, so the noise at
  a given sample never depends on where a chunk starts;
* envelopes (breaths, snores, rustles, voices) are evaluated on an absolute 1 kHz
  control grid from the plan's breath table and interpolated to the audio rate;
* tones (mains hum, snore and voice buzz) take their phase from absolute sample
  indices or from the onset of their breath.

Channels: ``Mic`` (ambient, about 1 m away: quieter breathing, more room noise),
``Tracheal`` (on the neck: loud, dark breathing, little room), ``Snore`` (500 Hz contact
sensor: snore vibration), ``Flow Patient`` (25 Hz nasal flow) and ``SpO2`` (1 Hz).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from functools import lru_cache

import numpy as np
import scipy.fft as sfft
from scipy.signal import firwin2

from sleepsound.synth.hypnogram import BreathTable, NightPlan, Transients

AUDIO_CHANNELS: tuple[str, ...] = ("Mic", "Tracheal")
PSG_RATES: dict[str, int] = {"Snore": 500, "Flow Patient": 25, "SpO2": 1}
ALL_CHANNELS: tuple[str, ...] = AUDIO_CHANNELS + tuple(PSG_RATES)
CONTROL_HZ = 1000
# Noise stream ids (third element of the block seed).
_BREATH, _ROOM, _RUSTLE, _SELF_NOISE, _SNORE_SENSOR, _FLOW = 11, 12, 13, 14, 15, 16

LIMIT_KNEE = 0.5  # the output is linear below this ...
LIMIT_CEILING = 0.98  # ... and never exceeds this, so 16-bit files never clip


# Further noise filter banks by kind (the generator styles register theirs): (freqs, rate, *params) ->
# (taps, gains); the classic kinds below are never looked up here.
FilterBankDesign = Callable[..., tuple[int, tuple[np.ndarray, ...]]]
EXTRA_BANKS: dict[str, FilterBankDesign] = {}


def channel_rates(sample_rate: int) -> dict[str, int]:
    """Sampling rate of every synthesised channel for a given microphone rate."""
    return {"Mic": sample_rate, "Tracheal": sample_rate, **PSG_RATES}


def _sample_range(start_s: float, n_seconds: float, rate: int) -> tuple[int, int]:
    first, count = start_s * rate, n_seconds * rate
    n0, n = round(first), round(count)
    if abs(first - n0) > 1e-6 or abs(count - n) > 1e-6:
        raise ValueError(f"start {start_s} s and length {n_seconds} s must fall on whole samples at {rate} Hz")
    return n0, n


# ----------------------------------------------------------------------------- noise


def _white(key: tuple[int, ...], b0: int, b1: int, block: int) -> np.ndarray:
    """Rows of unit-variance white noise for blocks ``b0..b1-1``; each row depends only on its block index.

    Uniform rather than Gaussian samples: four times cheaper, and after any of the FIR
    shapings below the noise is Gaussian anyway (central limit over hundreds of taps).
    """
    rows = np.empty((b1 - b0, block), dtype=np.float32)
    for row, b in enumerate(range(b0, b1)):  # per 1-s block, not per sample
        rows[row] = np.random.default_rng([*key, b & 0x7FFFFFFF, int(b < 0)]).random(block, dtype=np.float32)
    rows -= np.float32(0.5)
    rows *= np.float32(np.sqrt(12.0))
    return rows


def _white_noise(key: tuple[int, ...], n0: int, n: int, rate: int) -> np.ndarray:
    b0, b1 = n0 // rate, -(-(n0 + n) // rate)
    return _white(key, b0, b1, rate).reshape(-1)[n0 - b0 * rate : n0 - b0 * rate + n]


def _lp(f: np.ndarray, fc: float) -> np.ndarray:
    return 1.0 / np.sqrt(1.0 + (f / fc) ** 2)


def _hp(f: np.ndarray, fc: float) -> np.ndarray:
    return (f / fc) / np.sqrt(1.0 + (f / fc) ** 2)


def _fir(rate: int, numtaps: int, gain: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    h = firwin2(numtaps, freqs, gain, fs=rate)
    return (h / np.sqrt(np.sum(h**2))).astype(np.float32)  # unit-variance output for white input


@lru_cache(maxsize=64)
def _filters(kind: str, rate: int, *params: float) -> tuple[np.ndarray, ...]:
    """FIR banks per noise stream (same length within a bank, so they share one FFT)."""
    nyq = rate / 2.0
    f = np.linspace(0.0, nyq, 1025)
    if kind == "breath":  # inspiration (bright), expiration (dark), tracheal
        (distance,) = params
        taps = 2 * (rate // 100) + 1
        bright = _hp(f, 250.0) * _lp(f, 2500.0) * _lp(f, 9000.0 / distance)
        dark = _hp(f, 120.0) * _lp(f, 900.0) ** 1.5
        trach = _hp(f, 90.0) * _lp(f, 700.0) ** 2
        gains = (bright, dark, trach)
    elif kind == "room":  # pink floor plus a ventilation rumble
        centre, ratio = params
        taps = 2 * (rate // 24) + 1
        pink = _hp(f, 25.0) ** 2 / np.sqrt(np.maximum(f, 20.0) / 100.0)
        hvac = ratio * 3.0 * np.exp(-0.5 * (np.log(np.maximum(f, 1.0) / centre) / 0.3) ** 2)
        gains = (pink + hvac,)
    elif kind == "rustle":
        taps = 2 * (rate // 100) + 1
        gains = (_hp(f, 150.0) * _lp(f, 5000.0),)
    elif kind in EXTRA_BANKS:
        taps, gains = EXTRA_BANKS[kind](f, rate, *params)
    else:
        raise ValueError(kind)
    out = []
    for gain in gains:
        gain = gain.copy()
        gain[-1] = 0.0
        out.append(_fir(rate, taps, gain, f))
    return tuple(out)


@lru_cache(maxsize=64)
def _spectra(kind: str, rate: int, nfft: int, *params: float) -> tuple[np.ndarray, ...]:
    return tuple(sfft.rfft(h, nfft).astype(np.complex64) for h in _filters(kind, rate, *params))


def _coloured(key: tuple[int, ...], n0: int, n: int, rate: int, kind: str, *params: float) -> list[np.ndarray]:
    """White noise of one stream through a filter bank, by overlap-save on the absolute 1-s block grid."""
    taps = _filters(kind, rate, *params)[0].size
    block = rate
    k0, k1 = n0 // block, -(-(n0 + n) // block)
    white = _white(key, k0 - 1, k1, block)
    x = np.concatenate([white[:-1, block - (taps - 1) :], white[1:]], axis=1)
    nfft = sfft.next_fast_len(x.shape[1], real=True)
    spectrum = sfft.rfft(x, nfft, axis=1)
    offset = n0 - k0 * block
    out = []
    for h_spec in _spectra(kind, rate, nfft, *params):
        y = sfft.irfft(spectrum * h_spec, nfft, axis=1)[:, taps - 1 : taps - 1 + block]
        out.append(np.ascontiguousarray(y.reshape(-1)[offset : offset + n], dtype=np.float32))
    return out


# ----------------------------------------------------------------------------- envelopes


def _breath_state(b: BreathTable, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For each time: breath index, inspiration phase u, expiration phase v (each in [0,1) or -1)."""
    idx = np.searchsorted(b.onset_s, t, side="right") - 1
    safe = np.maximum(idx, 0)
    tau = t - b.onset_s[safe]
    insp, exp = b.insp_s[safe], b.exp_s[safe]
    valid = idx >= 0
    in_insp = valid & (tau < insp)
    in_exp = valid & (tau >= insp) & (tau < insp + exp)
    u = np.where(in_insp, tau / insp, -1.0)
    v = np.where(in_exp, (tau - insp) / np.where(exp > 0, exp, 1.0), -1.0)
    return safe, u, v, tau


def _bump(x: np.ndarray, power: float) -> np.ndarray:
    """sin(pi x)^power on [0,1), zero elsewhere: a smooth breath-shaped envelope."""
    inside = (x >= 0.0) & (x < 1.0)
    return np.where(inside, np.abs(np.sin(np.pi * np.clip(x, 0.0, 1.0))) ** power, 0.0)


def _control_envelopes(plan: NightPlan, t0: float, t1: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Envelopes on the absolute 1 kHz grid covering [t0, t1] (one point of margin each side)."""
    c0, c1 = int(np.floor(t0 * CONTROL_HZ)) - 1, int(np.ceil(t1 * CONTROL_HZ)) + 2
    tc = np.arange(c0, c1) / CONTROL_HZ
    b, s = plan.breaths, plan.sound
    idx, u, v, _ = _breath_state(b, tc)
    depth = b.depth[idx]
    env = {
        "insp": depth * _bump(u, 0.7),
        "exp": depth * s.expiration_level * _bump(v, 1.3),
        "snore": b.snore[idx] * np.sqrt(np.minimum(depth, 1.5)) * _bump(u, 0.5),
    }
    tr = plan.transients
    rustle, voice = np.zeros_like(tc), np.zeros_like(tc)
    near = np.flatnonzero((tr.start_s < tc[-1]) & (tr.start_s + tr.duration_s + 0.5 > tc[0]))
    for i in near:  # the few transients touching this chunk
        tau = tc - tr.start_s[i]
        x = tau / tr.duration_s[i]
        if tr.kind[i] == Transients.RUSTLE:
            crackle = 0.3 + 0.7 * np.abs(np.sin(2 * np.pi * 2.7 * tau + tr.phase[i])) ** 3
            rustle += tr.level[i] * _bump(x, 0.5) * crackle
        elif tr.kind[i] == Transients.BUMP:
            rustle += tr.level[i] * np.where(
                (tau >= 0) & (tau < tr.duration_s[i] + 0.5), np.exp(-np.maximum(tau, 0) / 0.06), 0.0
            )
        else:
            syllables = (0.5 + 0.5 * np.sin(2 * np.pi * 4.2 * tau + tr.phase[i])) ** 2
            voice += tr.level[i] * _bump(x, 0.3) * syllables
    env["rustle"], env["voice"] = rustle, voice
    # Ventilation cycling on and off: loudness of the room, unrelated to sleep.
    env["hvac"] = 1.0 + 0.3 * np.tanh(3.0 * np.sin(2 * np.pi * tc / s.hvac_period_s + s.hum_phases[0]))
    return tc, env


def _buzz(phi: np.ndarray, r: float) -> np.ndarray:
    """Unit-RMS harmonic buzz sum_k r^k cos(k phi), in closed form (no per-harmonic loop)."""
    c = np.cos(phi)
    y = (r * c - r * r) / (1.0 - 2.0 * r * c + r * r)
    return y / np.sqrt(r * r / (2.0 * (1.0 - r * r)))


def _snore_phase(b: BreathTable, idx: np.ndarray, tau: np.ndarray) -> np.ndarray:
    """Snore phase from the breath's onset, pitch gliding 5% down over the inspiration."""
    return 2 * np.pi * b.f0_hz[idx] * (tau - 0.025 * tau * tau / b.insp_s[idx])


def _hum(plan: NightPlan, n0: int, n: int, rate: int) -> np.ndarray:
    """Mains hum at 50 Hz and harmonics, phase from absolute sample index (exact)."""
    s = plan.sound
    harmonics = [h for h in range(1, len(s.hum_harmonics) + 1) if 50 * h < rate / 2]
    if rate % 50 == 0:  # one period is a whole number of samples: render it once and tile
        period = rate // 50
        k = np.arange(period)
        table = sum(
            s.hum_harmonics[h - 1] * np.sin(2 * np.pi * h * k / period + s.hum_phases[h - 1]) for h in harmonics
        )
        return (s.hum_level * np.asarray(table)[(n0 + np.arange(n)) % period]).astype(np.float32)
    k = n0 + np.arange(n, dtype=np.int64)
    out = sum(
        s.hum_harmonics[h - 1] * np.sin(2 * np.pi * ((50 * h * k) % rate) / rate + s.hum_phases[h - 1])
        for h in harmonics
    )
    return (s.hum_level * np.asarray(out)).astype(np.float32)


def soft_limit(x: np.ndarray) -> np.ndarray:
    """Linear below the knee, smoothly saturating above it, never beyond the ceiling."""
    out = np.asarray(x, dtype=np.float32).copy()
    loud = np.flatnonzero(np.abs(out) > LIMIT_KNEE)
    if loud.size:
        span = LIMIT_CEILING - LIMIT_KNEE
        mag = np.abs(out[loud])
        out[loud] = np.sign(out[loud]) * (LIMIT_KNEE + span * np.tanh((mag - LIMIT_KNEE) / span))
    return out


# ----------------------------------------------------------------------------- channels


def _audio(
    plan: NightPlan, key: tuple[int, ...], n0: int, n: int, rate: int, want: Collection[str]
) -> dict[str, np.ndarray]:
    s, b = plan.sound, plan.breaths
    t = (n0 + np.arange(n)) / rate
    tc, env_c = _control_envelopes(plan, t[0], t[-1])
    env = {
        name: (np.interp(t, tc, values).astype(np.float32) if np.any(values) else np.zeros(n, np.float32))
        for name, values in env_c.items()
    }
    bright, dark, trach_noise = _coloured((*key, _BREATH), n0, n, rate, "breath", round(s.mic_distance_m, 3))
    (room,) = _coloured((*key, _ROOM), n0, n, rate, "room", round(s.hvac_centre_hz, 1), round(s.hvac_ratio, 3))
    if np.any(env["rustle"] > 0):
        (rustle,) = _coloured((*key, _RUSTLE), n0, n, rate, "rustle")
    else:
        rustle = np.zeros(n, dtype=np.float32)

    snore_src = np.zeros(n, dtype=np.float32)
    snore_trach = np.zeros(n, dtype=np.float32)
    mask = np.flatnonzero(env["snore"] > 0)
    if mask.size:
        idx, _, _, tau = _breath_state(b, t[mask])
        phi = _snore_phase(b, idx, tau)
        snore_src[mask] = _buzz(phi, s.snore_brightness) * (0.8 + 0.2 * bright[mask])
        snore_trach[mask] = _buzz(phi, 0.85 * s.snore_brightness)
    voice_src = np.zeros(n, dtype=np.float32)
    vmask = np.flatnonzero(env["voice"] > 0)
    if vmask.size:
        tr = plan.transients
        voices = np.flatnonzero(tr.kind == Transients.VOICE)  # the latest voice started at each sample
        vi = voices[np.clip(np.searchsorted(tr.start_s[voices], t[vmask], side="right") - 1, 0, None)]
        tau = t[vmask] - tr.start_s[vi]
        phi = 2 * np.pi * tr.f0_hz[vi] * (tau + 0.08 / (2 * np.pi * 0.6) * np.sin(2 * np.pi * 0.6 * tau + tr.phase[vi]))
        voice_src[vmask] = _buzz(phi, 0.75)
    hum = _hum(plan, n0, n, rate)
    if plan.real_snores is not None:  # recorded clips in place of the buzz (synth.realsnores)
        from sleepsound.synth.realsnores import real_snore_track

        real = real_snore_track(plan, b.snore, n0, n, rate)
        snore_src = snore_trach = real
        env["snore"] = np.ones(n, dtype=np.float32)
    if plan.real_background is not None:  # a recorded TV in the room (synth.realbackground)
        from sleepsound.synth.realbackground import classic_tv

        tv = classic_tv(plan, n0, n, rate)
    else:
        tv = np.zeros(n, dtype=np.float32)

    out: dict[str, np.ndarray] = {}
    if "Mic" in want:
        d = s.mic_distance_m
        sources = (
            (0.025 / d) * (env["insp"] * bright + env["exp"] * dark)
            + (0.05 / d) * env["snore"] * snore_src
            + (0.05 / d) * env["voice"] * voice_src
            + 0.03 * env["rustle"] * rustle
        )
        out["Mic"] = soft_limit(s.mic_gain * sources + s.room_level * env["hvac"] * room + tv + hum)
    if "Tracheal" in want:
        sources = (
            0.08 * (env["insp"] + 0.7 * env["exp"]) * trach_noise
            + 0.15 * env["snore"] * snore_trach
            + 0.12 * env["voice"] * voice_src
            + 0.05 * env["rustle"] * rustle
        )
        self_noise = 0.0004 * _white_noise((*key, _SELF_NOISE), n0, n, rate)
        out["Tracheal"] = soft_limit(
            s.tracheal_gain * sources + 0.1 * s.room_level * env["hvac"] * room + 0.05 * tv + 0.3 * hum + self_noise
        )
    return out


def _snore_sensor(plan: NightPlan, key: tuple[int, ...], start_s: float, n_seconds: float) -> np.ndarray:
    rate = PSG_RATES["Snore"]
    n0, n = _sample_range(start_s, n_seconds, rate)
    t = (n0 + np.arange(n)) / rate
    b = plan.breaths
    idx, u, v, tau = _breath_state(b, t)
    phi = _snore_phase(b, idx, tau)
    second = np.where(2 * b.f0_hz[idx] < 0.48 * rate, 0.3 * np.sin(2 * phi), 0.0)
    vib = b.snore[idx] * _bump(u, 0.5) * (np.sin(phi) + second)
    breath = 0.03 * b.depth[idx] * (_bump(u, 0.7) + 0.5 * _bump(v, 1.3))
    noise = 0.002 * _white_noise((*key, _SNORE_SENSOR), n0, n, rate)
    return soft_limit(0.25 * vib + breath + noise)


def _flow(plan: NightPlan, key: tuple[int, ...], start_s: float, n_seconds: float) -> np.ndarray:
    rate = PSG_RATES["Flow Patient"]
    n0, n = _sample_range(start_s, n_seconds, rate)
    t = (n0 + np.arange(n)) / rate
    b = plan.breaths
    idx, u, v, _ = _breath_state(b, t)
    flow = 0.35 * b.depth[idx] * (_bump(u, 1.0) - 0.8 * _bump(v, 1.0))
    return (flow + 0.01 * _white_noise((*key, _FLOW), n0, n, rate)).astype(np.float32)


def _spo2(plan: NightPlan, start_s: float, n_seconds: float) -> np.ndarray:
    n0, n = _sample_range(start_s, n_seconds, PSG_RATES["SpO2"])
    t = (n0 + np.arange(n)).astype(float)
    level = np.full(n, plan.sound.spo2_baseline)
    dips = plan.spo2_dips
    if dips.size and n:
        near = dips[(dips[:, 0] + 5 * dips[:, 1] > t[0]) & (dips[:, 0] - 5 * dips[:, 1] < t[-1])]
        for centre, width, drop in near:
            level -= drop * np.exp(-0.5 * ((t - centre) / width) ** 2)
    return np.round(np.clip(level, 50.0, 100.0)).astype(np.float32)


def synthesise_chunk(
    plan: NightPlan,
    start_s: float,
    n_seconds: float,
    sample_rate: int,
    seed: int | None = None,
    channels: Collection[str] | None = None,
) -> dict[str, np.ndarray]:
    """Signals for ``[start_s, start_s + n_seconds)`` of the night, float32, by channel label.

    The result is the same whether a range is rendered at once or in pieces. ``seed``
    defaults to the plan's; ``channels`` limits the work to some of :data:`ALL_CHANNELS`.
    ``start_s`` and ``n_seconds`` must fall on whole samples of every requested rate
    (whole seconds always do).
    """
    want = set(ALL_CHANNELS if channels is None else channels)
    unknown = want - set(ALL_CHANNELS)
    if unknown:
        raise ValueError(f"unknown channels {sorted(unknown)}; choose from {ALL_CHANNELS}")
    if n_seconds <= 0 or start_s < 0 or start_s + n_seconds > plan.duration_s + 1e-9:
        raise ValueError(f"range [{start_s}, {start_s + n_seconds}) s is outside the night (0..{plan.duration_s} s)")
    key = (plan.seed if seed is None else int(seed), plan.subject_index)
    out: dict[str, np.ndarray] = {}
    if want & set(AUDIO_CHANNELS):
        n0, n = _sample_range(start_s, n_seconds, sample_rate)
        if plan.style is None:
            out.update(_audio(plan, key, n0, n, sample_rate, want))
        else:  # a generator style: same plan, other sound models, room, microphone and background
            from sleepsound.synth.styled import styled_audio

            out.update(styled_audio(plan, key, n0, n, sample_rate, want))
    if "Snore" in want:
        out["Snore"] = _snore_sensor(plan, key, start_s, n_seconds)
    if "Flow Patient" in want:
        out["Flow Patient"] = _flow(plan, key, start_s, n_seconds)
    if "SpO2" in want:
        out["SpO2"] = _spo2(plan, start_s, n_seconds)
    return {name: out[name] for name in ALL_CHANNELS if name in out}
