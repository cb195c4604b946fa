"""Render a night's microphone audio in its generator style (the parameters: :mod:`.styles`).

Chunk-exact like :mod:`.sound`: every source is a function of absolute time (noise from the 1-s
block grid, envelopes from the breath table, tones from absolute sample indices, TV clips from their
scheduled starts), and the filters with memory (the snore's vocal tract, the room with the
microphone, the neck contact) are FIRs applied to a range rendered that many samples early, keeping
only the samples the range fully determines. So a night streams to disk in 30-s chunks (never a
whole night in memory) and the pieces join into the same signal as one long render.

Signal chain of ``Mic``: sleeper (breath, snore, sleep talk, movement; level 1/distance) through
the near room response, background (fan, HVAC, traffic, TV) through the far one, both responses
including the microphone's; then the microphone's gain, self-noise, the night's mains hum, and
either the soft limiter or, for an overloaded microphone, hard clipping. ``Tracheal`` hears the
sleeper through a neck contact (no room) and a little of the background.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import lru_cache

import numpy as np
import scipy.fft as sfft
import soxr
from scipy.signal import fftconvolve, firwin2, oaconvolve

from sleepsound.synth import bedroom
from sleepsound.synth.hypnogram import NightPlan, Transients
from sleepsound.synth.sound import (
    CONTROL_HZ,
    EXTRA_BANKS,
    _breath_state,
    _bump,
    _buzz,
    _coloured,
    _hp,
    _hum,
    _lp,
    _white_noise,
    soft_limit,
)
from sleepsound.synth.styles import BREATH_MODELS, TV_CLIP_S, TV_CLIPS, MicSpec, RoomSpec, StyleAssets, StyleParams

# Noise stream ids (the classic generator uses 11-16).
_S_SOURCE, _S_MIC, _S_RUSTLE = 21, 25, 27
_S_BACKGROUND = {"fan": 22, "hvac": 23, "traffic": 24}
_BG_CODE = {"fan": 0.0, "hvac": 1.0, "traffic": 2.0}
SPEECH_RATE = bedroom.SAMPLE_RATE
MAX_IR_S = 0.8  # room tails are cut here (a 1-s RT60 has decayed by 48 dB)


# ----------------------------------------------------------------------------- filter designs


def _peaks(f: np.ndarray, centres: tuple[float, ...], weights: tuple[float, ...]) -> np.ndarray:
    """Sum of broad resonances (magnitude of a Lorentzian), bandwidth growing with frequency."""
    return sum(w / np.sqrt(1.0 + ((f - c) / (60.0 + 0.12 * c)) ** 2) for c, w in zip(centres, weights, strict=True))


def _source_bank(
    f: np.ndarray, rate: int, model: float, lo: float, hi: float, tilt: float, *rest: float
) -> tuple[int, tuple[np.ndarray, ...]]:
    """Inhalation (two spectra a breath blends between), exhalation, snore turbulence."""
    f1, f2, f3, s_lo, s_hi = rest
    band = _hp(f, lo) ** 2 * _lp(f, hi) ** 2
    if model == 0:  # classic spectra, at 1 m
        a = _hp(f, 250.0) * _lp(f, 2500.0) * _lp(f, 9000.0)
        b, exp = a, _hp(f, 120.0) * _lp(f, 900.0) ** 1.5
    elif model == 1:  # a drawn slope in dB/octave, a nasal bump on some breaths, a darker exhalation
        slope = (np.maximum(f, 50.0) / 500.0) ** (tilt / 6.02)
        a = band * slope
        b = a * (1.0 + 1.5 * np.exp(-0.5 * (np.log2(np.maximum(f, 1.0) / f1) / 0.4) ** 2))
        exp = a * _lp(f, 0.5 * hi)
    else:  # turbulence through nasal/oral resonances that move between breaths
        formants = (f1, f2, f3)
        a = band * (0.15 + _peaks(f, formants, (1.0, 0.7, 0.4)))
        b = band * (0.15 + _peaks(f, tuple(1.12 * x for x in formants), (1.0, 0.7, 0.4)))
        exp = band * _lp(f, 0.6 * hi) * (0.15 + _peaks(f, tuple(0.9 * x for x in formants), (1.0, 0.5, 0.2)))
    snore_noise = _hp(f, s_lo) ** 2 * _lp(f, s_hi) ** 2
    return 2 * (rate // 100) + 1, (a, b, exp, snore_noise)


def _rustle_bank(f: np.ndarray, rate: int) -> tuple[int, tuple[np.ndarray, ...]]:
    """Bedding and body movement: broadband, lighter than the classic rustle in the lows."""
    return 2 * (rate // 100) + 1, (_hp(f, 300.0) * _lp(f, 6000.0),)


def _background_bank(f: np.ndarray, rate: int, code: float, lowpass: float) -> tuple[int, tuple[np.ndarray, ...]]:
    """Fan air (pinkish, broad), HVAC rumble, traffic rumble (low, steep)."""
    if code == 0:
        gain = _hp(f, 30.0) ** 2 * _lp(f, lowpass) ** 2 / np.sqrt(np.maximum(f, 20.0) / 100.0)
    elif code == 1:
        gain = _hp(f, 20.0) ** 2 * _lp(f, lowpass) ** 3
    else:
        gain = _hp(f, 15.0) ** 2 * _lp(f, lowpass) ** 4
    return 2 * (rate // 25) + 1, (gain,)


EXTRA_BANKS["style_source"] = _source_bank
EXTRA_BANKS["style_background"] = _background_bank
EXTRA_BANKS["style_rustle"] = _rustle_bank


def _design(rate: int, taps: int, gain: np.ndarray, f: np.ndarray) -> np.ndarray:
    gain = gain.copy()
    gain[-1] = 0.0
    return firwin2(taps, f, gain, fs=rate)


def _gain_at(h: np.ndarray, freq: float, rate: int) -> float:
    return float(np.abs(h @ np.exp(-2j * np.pi * freq / rate * np.arange(h.size))))


@lru_cache(maxsize=32)
def _mic_fir(mic: MicSpec, rate: int) -> np.ndarray:
    """The microphone's frequency response, unity at 1 kHz."""
    f = np.linspace(0.0, rate / 2.0, 2049)
    presence = 1.0 + (10 ** (mic.presence_db / 20) - 1.0) * np.exp(
        -0.5 * (np.log2(np.maximum(f, 1.0) / mic.presence_hz) / 0.6) ** 2
    )
    rolloff = _lp(f, min(mic.lowpass_hz, 0.45 * rate)) ** (2 if mic.kind == "electret" else 4)
    h = _design(rate, 2 * (rate // 50) + 1, _hp(f, mic.highpass_hz) ** 2 * rolloff * presence, f)
    return h / _gain_at(h, 1000.0, rate)


@lru_cache(maxsize=8)
def _contact_fir(rate: int) -> np.ndarray:
    """A neck contact microphone: body-conducted sound, dark (unity at 200 Hz)."""
    f = np.linspace(0.0, rate / 2.0, 1025)
    h = _design(rate, 2 * (rate // 100) + 1, _hp(f, 80.0) * _lp(f, 800.0) ** 2, f)
    return (h / _gain_at(h, 200.0, rate)).astype(np.float32)


@lru_cache(maxsize=16)
def _tract_fir(formants: tuple[float, float, float], rate: int) -> np.ndarray:
    """Vocal-tract resonances a snore's pulse train passes through (unit gain for white input)."""
    f = np.linspace(0.0, rate / 2.0, 1025)
    gain = (0.1 + _peaks(f, formants, (1.0, 0.6, 0.35))) * _lp(f, 4000.0)
    h = _design(rate, 2 * (rate // 200) + 1, gain, f)
    return (h / np.sqrt(np.sum(h**2))).astype(np.float32)


@lru_cache(maxsize=16)
def _room_irs(room: RoomSpec, mic: MicSpec, rate: int, key: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Near (sleeper) and far (background) responses: direct path, early reflections and a two-band
    exponentially decaying noise tail (highs die twice as fast), unit energy, then the microphone."""
    rng = np.random.default_rng([*key, 0x1B])
    n = max(2, int(min(room.rt60_s, MAX_IR_S) * rate))
    t = np.arange(n) / rate
    spectrum = sfft.rfft(rng.standard_normal(n))
    low = sfft.rfftfreq(n, 1.0 / rate) < 2000.0
    tail = sfft.irfft(spectrum * low, n) * np.exp(-6.91 * t / room.rt60_s)
    tail += sfft.irfft(spectrum * ~low, n) * np.exp(-6.91 * t / (0.5 * room.rt60_s))
    tail *= np.clip((t - room.reflections_ms[0] / 1000.0) / 0.01, 0.0, 1.0)  # diffuse sound builds up
    out = []
    for drr_db, scale in ((room.near_drr_db, 1.0), (room.far_drr_db, 1.5)):
        h = np.zeros(n)
        h[0] = 1.0
        for delay_ms, gain in zip(room.reflections_ms, room.reflection_gains, strict=True):
            h[min(n - 1, round(delay_ms * rate / 1000.0))] += scale * gain
        h += tail * np.sqrt(np.sum(h**2) * 10 ** (-drr_db / 10) / np.sum(tail**2))
        out.append(fftconvolve(h / np.sqrt(np.sum(h**2)), _mic_fir(mic, rate)))
    return out[0], out[1]


@lru_cache(maxsize=16)
def _room_spectra(
    room: RoomSpec, mic: MicSpec, rate: int, key: tuple[int, ...], nfft: int
) -> tuple[np.ndarray, np.ndarray]:
    near, far = _room_irs(room, mic, rate, key)
    return sfft.rfft(near, nfft).astype(np.complex64), sfft.rfft(far, nfft).astype(np.complex64)


# ----------------------------------------------------------------------------- speech


@lru_cache(maxsize=4)
def _speech_bank(
    seed: int, subject: int, source: str, rate: int
) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """The night's talkers: clips of room speech (sleep talk) and of TV (broadcast band, compressed,
    sometimes over music), made once per night at 16 kHz by espeak-ng or the formant synthesiser."""
    length = round(TV_CLIP_S * SPEECH_RATE)
    fade = np.minimum(1.0, np.minimum(np.arange(length), np.arange(length)[::-1]) / (0.02 * SPEECH_RATE))
    raw, tv = [], []
    for k in range(TV_CLIPS):
        rng = bedroom._rng(seed, "night-speech", subject, k)
        voice = bedroom.speech(rng, length, SPEECH_RATE, source)
        broadcast = voice + (
            10 ** (-rng.uniform(8, 20) / 20) * bedroom.music_bed(rng, length) if rng.random() < 0.4 else 0
        )
        broadcast = bedroom.compress(bedroom._band(broadcast, *bedroom.TV_BAND_HZ, SPEECH_RATE), SPEECH_RATE)
        broadcast = bedroom._band(broadcast, *bedroom.TV_BAND_HZ, SPEECH_RATE)
        for clip, bank in ((voice, raw), (broadcast, tv)):
            x = clip * fade
            if rate != SPEECH_RATE:
                x = soxr.resample(x.astype(np.float32), SPEECH_RATE, rate, quality="HQ")
            want = round(TV_CLIP_S * rate)
            bank.append(np.pad(x, (0, max(0, want - x.size)))[:want].astype(np.float32))
    return tuple(raw), tuple(tv)


def _place(out: np.ndarray, a: int, clip: np.ndarray, start: int) -> None:
    """Add ``clip`` (starting at absolute sample ``start``) to ``out`` (starting at ``a``), where they overlap."""
    lo, hi = max(start, a), min(start + clip.size, a + out.size)
    if hi > lo:
        out[lo - a : hi - a] += clip[lo - start : hi - start]


# ----------------------------------------------------------------------------- envelopes


def _asym(x: np.ndarray, rise: float, fall: float) -> np.ndarray:
    """x^rise (1-x)^fall on [0,1), peak 1, zero elsewhere: a breath envelope with its own asymmetry."""
    inside = (x >= 0.0) & (x < 1.0)
    xc = np.clip(x, 0.0, 1.0)
    top = rise / (rise + fall)
    return np.where(inside, xc**rise * (1.0 - xc) ** fall / (top**rise * (1.0 - top) ** fall), 0.0)


def _schedule(tc: np.ndarray, spans: tuple[tuple[float, float], ...], ramp_s: float) -> np.ndarray:
    env = np.zeros_like(tc)
    for a, b in spans:
        if a < tc[-1] and b > tc[0]:
            env += np.clip((tc - a) / ramp_s, 0.0, 1.0) * np.clip((b - tc) / ramp_s, 0.0, 1.0)
    return env


def _control(t0: float, t1: float) -> np.ndarray:
    return np.arange(int(np.floor(t0 * CONTROL_HZ)) - 1, int(np.ceil(t1 * CONTROL_HZ)) + 2) / CONTROL_HZ


def _envelopes(plan: NightPlan, st: StyleParams, assets: StyleAssets, tc: np.ndarray) -> dict[str, np.ndarray]:
    b = plan.breaths
    idx, u, v, _ = _breath_state(b, tc)
    depth = b.depth[idx]
    insp = depth * _asym(u, *st.insp_shape)
    mix = assets.breath_mix[idx] if st.breath_model != "classic" else np.zeros_like(tc)
    env = {
        "insp_a": insp * (1.0 - mix),
        "insp_b": insp * mix,
        "exp": depth * st.exhale_ratio * _asym(v, *st.exp_shape),
        "snore": assets.snore[idx] * np.sqrt(np.minimum(depth, 1.5)) * _bump(u, 0.5),
    }
    rustle = np.zeros_like(tc)
    tr = plan.transients
    for i in np.flatnonzero((tr.start_s < tc[-1]) & (tr.start_s + tr.duration_s + 0.5 > tc[0])):
        tau = tc - tr.start_s[i]
        if tr.kind[i] == Transients.RUSTLE and assets.rustle_keep[i]:
            crackle = 0.3 + 0.7 * np.abs(np.sin(2 * np.pi * 2.7 * tau + tr.phase[i])) ** 3
            rustle += tr.level[i] * _bump(tau / tr.duration_s[i], 0.5) * crackle
        elif tr.kind[i] == Transients.BUMP:
            rustle += tr.level[i] * np.where(
                (tau >= 0) & (tau < tr.duration_s[i] + 0.5), np.exp(-np.maximum(tau, 0) / 0.06), 0.0
            )
    a = assets
    for i in np.flatnonzero((a.move_start_s < tc[-1]) & (a.move_start_s + a.move_duration_s > tc[0])):
        tau = tc - a.move_start_s[i]
        crackle = 0.2 + 0.8 * np.abs(np.sin(2 * np.pi * 3.7 * tau + a.move_phase[i])) ** 4
        rustle += a.move_level[i] * _bump(tau / a.move_duration_s[i], 0.7) * crackle
    env["rustle"] = rustle
    return env


# ----------------------------------------------------------------------------- sources


_OPEN, _RISE = 0.6, 0.42  # Rosenberg pulse: open quotient, opening part


def _pulse(frac: np.ndarray) -> np.ndarray:
    """Derivative of a Rosenberg glottal pulse (slow opening, abrupt closure), unit RMS over a period."""
    fall = _OPEN - _RISE
    d = np.where(
        frac < _RISE,
        0.5 * np.pi / _RISE * np.sin(np.pi * frac / _RISE),
        np.where(frac < _OPEN, -0.5 * np.pi / fall * np.sin(0.5 * np.pi * (frac - _RISE) / fall), 0.0),
    )
    return d / _PULSE_RMS


_PULSE_RMS = 1.0
_PULSE_RMS = float(np.sqrt(np.mean(_pulse(np.arange(100_000) / 100_000) ** 2)))


def _snore(plan: NightPlan, st: StyleParams, t: np.ndarray, env: np.ndarray, src: tuple[np.ndarray, ...]) -> np.ndarray:
    out = np.zeros(t.size, dtype=np.float32)
    mask = np.flatnonzero(env > 0)
    if not mask.size:
        return out
    b = plan.breaths
    idx, _, _, tau = _breath_state(b, t[mask])
    phi = 2 * np.pi * b.f0_hz[idx] * (tau + st.snore_glide * tau * tau / (2 * b.insp_s[idx]))
    phi += 0.5 * np.sin(2 * np.pi * 4.3 * tau + idx)  # a wobbling fundamental
    noise = src[3][mask]
    if st.snore_model == "classic":
        x = _buzz(phi, plan.sound.snore_brightness) * (0.8 + 0.2 * src[0][mask])
    elif st.snore_model == "pulse":
        x = _pulse((phi / (2 * np.pi)) % 1.0) + 0.15 * noise
    elif st.snore_model == "palatal":  # the soft palate flapping: turbulence gated at the fundamental
        x = noise * (0.3 + 2.2 * ((1.0 + np.cos(phi)) / 2) ** 4) + 0.5 * _buzz(phi, 0.9)
    else:  # tongue base: noisy, weakly periodic
        x = noise * (0.8 + 0.6 * (1.0 + np.cos(phi)) / 2)
    out[mask] = x * env[mask]
    return out


def _voices(plan: NightPlan, st: StyleParams, key: tuple[int, ...], a: int, m: int, rate: int) -> np.ndarray:
    """Sleep talk: the plan's voice transients spoken by the night's talker."""
    out = np.zeros(m, dtype=np.float32)
    tr = plan.transients
    sel = np.flatnonzero(
        (tr.kind == Transients.VOICE) & (tr.start_s * rate < a + m) & ((tr.start_s + tr.duration_s) * rate > a)
    )
    if sel.size:
        raw, _ = _speech_bank(key[0], key[1], st.speech_source, rate)
        for i in sel:
            length = min(round(tr.duration_s[i] * rate), raw[0].size)
            clip = raw[i % len(raw)][:length] * (tr.level[i] * _bump(np.arange(length) / length, 0.3)).astype(
                np.float32
            )
            _place(out, a, clip, round(tr.start_s[i] * rate))
    return out


# Background noise is made on a coarser absolute grid and interpolated: rumbles (HVAC, traffic, below
# 600 Hz) at 4 kHz, fan air (below 5 kHz) at 16 kHz; linear interpolation's images stay >= 20 dB down.
LOW_RATES: dict[str, int] = {"hvac": 4000, "traffic": 4000, "fan": 16000}


def _rumble(key: tuple[int, ...], kind: str, lowpass_hz: float, b0: int, bm: int, rate: int) -> np.ndarray:
    """Shaped background noise of one kind for samples ``b0 .. b0+bm``, chunk-exact."""
    stream, code, low_rate = (*key, _S_BACKGROUND[kind]), _BG_CODE[kind], LOW_RATES[kind]
    if rate % low_rate or rate < 2 * low_rate:
        return _coloured(stream, b0, bm, rate, "style_background", code, lowpass_hz)[0]
    step = rate // low_rate
    l0, l1 = b0 // step - 1, -(-(b0 + bm) // step) + 2
    (low,) = _coloured(stream, l0, l1 - l0, low_rate, "style_background", code, min(lowpass_hz, 0.3 * low_rate))
    fine = (b0 + np.arange(bm)) / step
    return np.interp(fine, np.arange(l0, l1), low).astype(np.float32)


def _tones(
    f0: float, harmonics: int, amp: float, key: tuple[int, ...], k: int, b0: int, bm: int, rate: int
) -> np.ndarray:
    """Blade-pass or duct hum: harmonics of ``f0`` falling 0.6 per step, phase from the absolute sample
    index (in float64 at every 1024th sample, rotated in complex64 between and to the harmonics)."""
    phases = np.random.default_rng([*key, 0xB6, k]).uniform(0, 2 * np.pi, harmonics)
    block = 1024  # exact phase at each block start, a shared rotation table within blocks
    heads = b0 + block * np.arange(-(-bm // block), dtype=np.float64)
    head = np.exp(2j * np.pi * ((f0 * heads / rate) % 1.0)).astype(np.complex64)
    step = np.exp(2j * np.pi * f0 * np.arange(block) / rate).astype(np.complex64)
    z = (head[:, None] * step[None, :]).reshape(-1)[:bm]
    zh = z.copy()
    out = np.zeros(bm, dtype=np.float32)
    for h in range(1, harmonics + 1):
        if h * f0 >= 0.45 * rate:
            break
        out += (np.float32(amp * 0.6 ** (h - 1)) * zh * np.complex64(np.exp(1j * phases[h - 1]))).imag
        zh *= z
    return out


def _backgrounds(plan: NightPlan, key: tuple[int, ...], b0: int, bm: int, rate: int) -> np.ndarray | None:
    """Fan, HVAC, traffic and TV at their levels, each on and off through the night (the TV from
    recorded clips where the plan has them: synth.realbackground)."""
    st, assets = plan.style, plan.style_assets
    assert st is not None and assets is not None
    if not st.backgrounds:
        return None
    t = (b0 + np.arange(bm)) / rate
    tc = _control(t[0], t[-1])
    out = np.zeros(bm, dtype=np.float32)
    for k, bg in enumerate(st.backgrounds):
        env_c = _schedule(tc, bg.on_s, 0.05 if bg.kind == "tv" else 3.0)
        if not env_c.any():
            continue
        if bg.kind == "traffic":
            near = np.flatnonzero(
                np.abs(assets.car_centre_s - 0.5 * (tc[0] + tc[-1])) < 5 * assets.car_width_s + (tc[-1] - tc[0])
            )
            cars = sum(
                (
                    assets.car_level[j] * np.exp(-0.5 * ((tc - assets.car_centre_s[j]) / assets.car_width_s[j]) ** 2)
                    for j in near
                ),
                np.zeros_like(tc),
            )
            env_c = env_c * (0.4 + cars)
        if bg.kind == "fan":
            env_c = env_c * (1.0 + 0.05 * np.sin(2 * np.pi * 0.2 * tc + k))
        env = (10 ** (bg.level_dbfs / 20) * np.interp(t, tc, env_c)).astype(np.float32)
        if bg.kind == "tv" and plan.real_background is not None:
            from sleepsound.synth.realbackground import real_background_track

            sig = real_background_track(plan, b0, bm, rate)
        elif bg.kind == "tv":
            _, tv = _speech_bank(key[0], key[1], st.speech_source, rate)
            sig = np.zeros(bm, dtype=np.float32)
            starts = np.round(assets.tv_start_s * rate).astype(np.int64)
            for i in np.flatnonzero((starts < b0 + bm) & (starts + tv[0].size > b0)):
                _place(sig, b0, tv[int(assets.tv_clip[i])], int(starts[i]))
        else:
            sig = _rumble(key, bg.kind, bg.lowpass_hz, b0, bm, rate)
            if bg.tone_hz:
                sig = sig + _tones(bg.tone_hz, bg.harmonics, 0.6 if bg.kind == "fan" else 0.4, key, k, b0, bm, rate)
        out += env * sig
    return out


# ----------------------------------------------------------------------------- channels


def styled_audio(
    plan: NightPlan, key: tuple[int, ...], n0: int, n: int, rate: int, want: Collection[str]
) -> dict[str, np.ndarray]:
    """``Mic`` and/or ``Tracheal`` samples ``n0 .. n0+n`` of a styled night (float32)."""
    st, assets = plan.style, plan.style_assets
    if st is None or assets is None:
        raise ValueError("plan has no generator style (render it with sound.synthesise_chunk)")
    near_ir, _ = _room_irs(st.room, st.mic, rate, key)
    pr = near_ir.size - 1
    tract = _tract_fir(st.snore_formants_hz, rate) if st.snore_model == "pulse" else None
    ps = 0 if tract is None else tract.size - 1
    a0, m = n0 - pr - ps, n + pr + ps  # the sleeper's sources start this early ...
    b0, bm = n0 - pr, n + pr  # ... so that the room's input starts here, and its output at n0
    t = (a0 + np.arange(m)) / rate
    tc = _control(t[0], t[-1])
    env = {
        name: (np.interp(t, tc, e).astype(np.float32) if np.any(e) else np.zeros(m, np.float32))
        for name, e in _envelopes(plan, st, assets, tc).items()
    }
    model = float(BREATH_MODELS.index(st.breath_model))
    src = _coloured(
        (*key, _S_SOURCE), a0, m, rate, "style_source", model, *st.breath_band_hz, st.breath_tilt_db_per_octave,
        *st.breath_formants_hz, *st.snore_noise_hz,
    )  # fmt: skip
    breath = (env["insp_a"] * src[0] + env["insp_b"] * src[1] + env["exp"] * src[2])[ps:]
    if plan.real_snores is not None:  # recorded clips in place of the snore model (synth.realsnores)
        from sleepsound.synth.realsnores import real_snore_track

        snore = real_snore_track(plan, assets.snore, b0, bm, rate)
    else:
        snore = _snore(plan, st, t, env["snore"], src)
        snore = oaconvolve(snore, tract, mode="valid").astype(np.float32) if tract is not None else snore[ps:]
    voice = _voices(plan, st, key, b0, bm, rate)
    if np.any(env["rustle"] > 0):
        (rustle,) = _coloured((*key, _S_RUSTLE), a0, m, rate, "style_rustle")
        rustle = (env["rustle"] * rustle)[ps:]
    else:
        rustle = np.zeros(m - ps, dtype=np.float32)
    far = _backgrounds(plan, key, b0, bm, rate)
    hum = _hum(plan, n0, n, rate)

    out: dict[str, np.ndarray] = {}
    if "Mic" in want:
        d = st.mic_distance_m
        near = (0.025 / d) * breath + (0.05 / d) * snore + (0.05 / d) * voice + 0.03 * rustle
        nfft = sfft.next_fast_len(bm, real=True)  # circular wrap only touches the discarded first pr samples
        h_near, h_far = _room_spectra(st.room, st.mic, rate, key, nfft)
        spectrum = sfft.rfft(near, nfft) * h_near
        if far is not None:
            spectrum += sfft.rfft(far, nfft) * h_far
        y = sfft.irfft(spectrum, nfft)[pr:bm] * np.float32(10 ** (st.mic.gain_db / 20))
        y += np.float32(10 ** (st.mic.noise_dbfs / 20)) * _white_noise((*key, _S_MIC), n0, n, rate)
        y += hum
        c = st.mic.clip_level
        out["Mic"] = np.clip(y, -c, c).astype(np.float32) if c > 0 else soft_limit(y)
    if "Tracheal" in want:
        contact = _contact_fir(rate)
        pc = contact.size - 1
        sources = 0.08 * breath + 0.15 * snore + 0.12 * voice + 0.05 * rustle
        trach = oaconvolve(sources[pr - pc :], contact, mode="valid")
        if far is not None:
            trach += 0.05 * far[pr:]
        trach += 0.0004 * _white_noise((*key, _S_MIC + 1), n0, n, rate)
        out["Tracheal"] = soft_limit(plan.sound.tracheal_gain * trach + 0.3 * hum)
    return out
