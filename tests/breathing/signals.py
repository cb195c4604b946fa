"""Tiny breathing signals with known pauses, made with numpy (8 kHz: the breath band fits under 4 kHz)."""

from __future__ import annotations

import numpy as np
from scipy import signal

RATE = 8000


def _band_noise(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    sos = signal.butter(4, [lo, hi], btype="bandpass", fs=RATE, output="sos")
    return signal.sosfilt(sos, rng.standard_normal(n))


def breathing(
    seconds: float,
    pauses: tuple[tuple[float, float], ...] = (),
    weak: tuple[tuple[float, float], ...] = (),
    weak_gain: float = 0.35,
    period_s: float = 4.0,
    seed: int = 0,
    band: tuple[float, float] = (300.0, 1800.0),
) -> np.ndarray:
    """Breaths every ``period_s`` (1.4 s inspiration, 1.8 s expiration of noise in ``band``, +-10% in
    depth), none starting inside a ``pauses`` interval, ``weak_gain`` times as loud inside ``weak``; the
    first breath after a pause or a weak stretch is 1.5 times as loud (the recovery)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    out = np.zeros(n)
    t, recovering = 1.0, False
    while t < seconds - 4:
        paused = any(a <= t < b for a, b in pauses)
        soft = any(a <= t < b for a, b in weak)
        if paused:
            t, recovering = next(b for a, b in pauses if a <= t < b), True
            continue
        gain = rng.uniform(0.9, 1.1) * (weak_gain if soft else 1.5 if recovering else 1.0)
        recovering = soft
        for offset, length, level in ((0.0, 1.4, 1.0), (1.5, 1.8, 0.6)):
            k0, k = int((t + offset) * RATE), int(length * RATE)
            out[k0 : k0 + k] += gain * level * np.hanning(k) * _band_noise(rng, k, *band)
        t += period_s * rng.uniform(0.95, 1.05)
    return 0.05 * out


def fan(seconds: float, level: float, seed: int = 1) -> np.ndarray:
    """Steady broadband air noise with a 120-Hz blade hum, at ``level`` RMS."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    x = _band_noise(rng, n, 60, 3500) + 0.3 * np.sin(2 * np.pi * 120 * np.arange(n) / RATE)
    return level * x / x.std()


def speech(seconds: float, start: float, length: float, level: float = 0.05) -> np.ndarray:
    """A voiced, syllabic burst (150 Hz and its harmonics, 4.2 syllables per second) at ``start``."""
    n = int(seconds * RATE)
    out = np.zeros(n)
    k0, k = int(start * RATE), int(length * RATE)
    t = np.arange(k) / RATE
    voice = sum(np.sin(2 * np.pi * 150 * h * t) / h for h in range(1, 12))
    syllables = (0.5 + 0.5 * np.sin(2 * np.pi * 4.2 * t)) ** 2
    out[k0 : k0 + k] = level * voice * syllables / np.std(voice)
    return out


def one_sound_breaths(
    seconds: float, gaps: tuple[tuple[float, float], ...], faint_at: float, gain: float
) -> np.ndarray:
    """Breaths of one 2.5-s sound every 4 s, none inside ``gaps``, and one faint breath (``gain``) at
    ``faint_at``: a single weak breath between two pauses, each too short for an apnoea."""
    rng = np.random.default_rng(3)
    out = np.zeros(int(seconds * RATE))
    t, k = 1.0, int(2.5 * RATE)
    while t < seconds - 4:
        if any(a <= t < b for a, b in gaps):
            t = next(b for a, b in gaps if a <= t < b)
            continue
        k0 = int(t * RATE)
        out[k0 : k0 + k] += rng.uniform(0.9, 1.1) * np.hanning(k) * _band_noise(rng, k, 300, 1800)
        t += 4.0
    k0 = int(faint_at * RATE)
    out[k0 : k0 + k] += gain * np.hanning(k) * _band_noise(rng, k, 300, 1800)
    return 0.05 * out


def fast_breaths_between_pauses(
    seconds: float, pauses: tuple[tuple[float, float], ...], period_s: float = 2.0
) -> np.ndarray:
    """Breaths every 4 s, none inside ``pauses``; for 30 s after each pause the breathing runs fast
    (every ``period_s``) with breath noise never ceasing in between (15 dB under the breaths' peaks),
    as it does after an apnoea: one stretch of sound that never falls back to the room's floor."""
    rng = np.random.default_rng(5)
    out = np.zeros(int(seconds * RATE))
    t = 1.0
    while t < seconds - 4:
        pause = next(((a, b) for a, b in pauses if a <= t < b), None)
        if pause:
            t = pause[1]
            k0, k = int(t * RATE), int(min(30.0, seconds - t) * RATE)
            out[k0 : k0 + k] += 0.18 * _band_noise(rng, k, 300, 1800)  # the noise between fast breaths
            stop = min(t + 30.0, next((a for a, _ in pauses if a > t), seconds) - 0.5)
            while t < stop - period_s:
                k0, k = int(t * RATE), int(period_s * 0.8 * RATE)
                out[k0 : k0 + k] += rng.uniform(0.9, 1.1) * np.hanning(k) * _band_noise(rng, k, 300, 1800)
                t += period_s
            continue
        k0, k = int(t * RATE), int(3.0 * RATE)
        out[k0 : k0 + k] += rng.uniform(0.9, 1.1) * np.hanning(k) * _band_noise(rng, k, 300, 1800)
        t += 4.0
    return 0.05 * out


def snorer_whose_snoring_pauses(
    seconds: float,
    pause: tuple[float, float],
    plain_every: int = 4,
    plain_gain: float = 0.35,
    weak: tuple[float, float] | None = None,
    weak_plain: bool = True,
    snoring_in_pause: int = 0,
    weak_gain: float = 0.4,
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Breaths every 4 s, all of band noise; every breath but each ``plain_every``-th is a snore (noise-like,
    as palatal and tongue-base snores are, ``1 / plain_gain`` times as loud as a plain breath), none inside
    ``pause``, where the snoring stops for a few plain breaths and comes back: the airflow never changes,
    no event (but each ``snoring_in_pause``-th breath there still snores, when given). Inside ``weak`` every
    breath, snored or plain (only the snores without ``weak_plain``), is ``weak_gain`` x as loud (0.4: 60% weaker):
    a hypopnoea in a snorer. -> (audio, the snores' (start, end) seconds)."""
    rng = np.random.default_rng(7)
    out = np.zeros(int(seconds * RATE))
    snores = []
    t, k = 1.0, 0
    while t < seconds - 4:
        paused = pause[0] <= t < pause[1] and not (snoring_in_pause and k % snoring_in_pause == 0)
        snored = k % plain_every != 0 and not paused
        n = int(2.5 * RATE)
        k0 = int(t * RATE)
        gain = rng.uniform(0.9, 1.1) * (1.0 if snored else plain_gain)
        if weak is not None and weak[0] <= t < weak[1] and (snored or weak_plain):
            gain *= weak_gain
        out[k0 : k0 + n] += gain * np.hanning(n) * _band_noise(rng, n, 300, 1800)
        if snored:
            snores.append((t, t + 2.5))
        t, k = t + 4.0, k + 1
    return 0.05 * out, snores


def snorer_with_short_snores(
    seconds: float,
    pause: tuple[float, float] = (0.0, 0.0),
    weak: tuple[float, float] | None = None,
    weak_gain: float = 0.4,
    seed: int = 5,
) -> np.ndarray:
    """Breaths every 4 s (1.4 s inspiration, 1.8 s expiration of band noise), each inspiration outside
    ``pause`` carrying a short snore: 0.4 s of noise-like sound four times as loud in the middle of it, as
    a recorded snore laid on a breath is. Inside ``pause`` the snoring stops and the breaths go on
    unchanged: no event. Inside ``weak`` every sound, snores going on, is ``weak_gain`` x as loud."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE))
    t = 1.0
    while t < seconds - 4:
        gain = rng.uniform(0.9, 1.1) * (weak_gain if weak and weak[0] <= t < weak[1] else 1.0)
        for offset, length, level in ((0.0, 1.4, 1.0), (1.5, 1.8, 0.6)):
            k0, k = int((t + offset) * RATE), int(length * RATE)
            out[k0 : k0 + k] += gain * level * np.hanning(k) * _band_noise(rng, k, 300, 1800)
        if not pause[0] <= t < pause[1]:
            k0, k = int((t + 0.5) * RATE), int(0.4 * RATE)
            out[k0 : k0 + k] += gain * 4.0 * np.hanning(k) * _band_noise(rng, k, 300, 1800)
        t += 4.0
    return 0.05 * out


def half_voiced_snorer(
    seconds: float, pause: tuple[float, float], weak: tuple[float, float] | None = None, seed: int = 7
) -> np.ndarray:
    """Breaths every 4 s of band noise, each snored but inside ``pause``, where the snoring stops for a few
    plain breaths (0.35 x as loud) and comes back, the airflow unchanged. A snore is the breath's noise
    with the palate's flutter (90 Hz and its harmonics) in its first 0.9 s: about a quarter of its frames
    voiced, under the half that makes a sound voiced, so the envelope takes it for a plain breath. Inside
    ``weak`` every breath, snores going on, is 60% weaker: a hypopnoea in that snorer."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE))
    t, n, m = 1.0, int(2.5 * RATE), int(0.9 * RATE)
    while t < seconds - 4:
        snored = not pause[0] <= t < pause[1]
        gain = rng.uniform(0.9, 1.1) * (1.0 if snored else 0.35) * (0.4 if weak and weak[0] <= t < weak[1] else 1.0)
        sound = np.hanning(n) * _band_noise(rng, n, 300, 1800)
        if snored:
            tt = np.arange(m) / RATE
            flutter = sum(np.sin(2 * np.pi * 90 * rng.uniform(0.95, 1.05) * h * tt) / h for h in range(1, 10))
            sound[:m] += 1.5 * np.std(sound) * np.hanning(m) * flutter / np.std(flutter)
        k0 = int(t * RATE)
        out[k0 : k0 + n] += gain * sound
        t += 4.0
    return 0.05 * out


def tonal_fragments(seconds: float, span: tuple[float, float], level: float, seed: int = 11) -> np.ndarray:
    """Short tonal sounds (0.6 s of a tone near 2 kHz) at irregular times inside ``span``, ``level`` x the
    breaths' amplitude: what is left of a TV in a pause, unvoiced below 1.5 kHz (so not speech to the
    detector) but far less noise-like than breath noise."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE))
    k = int(0.6 * RATE)
    t = span[0] + 0.5
    while t < span[1] - 1.0:
        k0 = int(t * RATE)
        tone = np.sin(2 * np.pi * (2000.0 + rng.uniform(-40, 40)) * np.arange(k) / RATE)
        out[k0 : k0 + k] += level * np.hanning(k) * tone
        t += rng.uniform(1.6, 3.0)
    return 0.05 * out


def faint_fragments(seconds: float, times: tuple[float, ...], level: float, seed: int = 23) -> np.ndarray:
    """Half-second sounds in the breaths' band at ``times``, ``level`` x the breaths' amplitude: what a TV or
    the room leaves in a pause, faint enough to pass as breaths yet far under them."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE))
    k = int(0.5 * RATE)
    for t in times:
        k0 = int(t * RATE)
        out[k0 : k0 + k] += level * np.hanning(k) * _band_noise(rng, k, 300, 1800)
    return 0.05 * out


def hiss(seconds: float, level: float = 1e-4, seed: int = 2) -> np.ndarray:
    """A quiet microphone's white self-noise at ``level`` RMS: a floor that is flat, not a fan's."""
    return level * np.random.default_rng(seed).standard_normal(int(seconds * RATE))


def fan_blips(seconds: float, span: tuple[float, float], level: float, rise_db: float, seed: int = 13) -> np.ndarray:
    """Short swells of a fan of ``level`` RMS (0.5 s at irregular times inside ``span``), each raising the
    room's noise by about ``rise_db``: a fan's own wander, which stands a little out of its floor."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE))
    k = int(0.5 * RATE)
    gain = level * np.sqrt(10.0 ** (rise_db / 10.0) - 1.0)
    t = span[0] + 0.5
    while t < span[1] - 1.0:
        k0 = int(t * RATE)
        x = _band_noise(rng, k, 60, 3500)
        out[k0 : k0 + k] += gain * np.sqrt(np.hanning(k)) * x / x.std()
        t += rng.uniform(1.6, 3.0)
    return out


def syllabic_noise(
    seconds: float,
    span: tuple[float, float],
    level: float,
    seed: int = 17,
    depth: float = 1.0,
    tonal: bool = False,
) -> np.ndarray:
    """Bursts of 1.5-3 s inside ``span`` of the breaths' own band noise, its level riding up and down at
    4-6 syllables a second (``level`` x the breaths' amplitude at the peaks): a TV's unvoiced, noise-like
    talk as a cheap loudspeaker plays it, as noise-like as breath but changing level as speech does. A
    ``depth`` under 1 keeps that share of the level's swing: talk heard from further off, its syllables
    blurred. ``tonal``: a voice's harmonics from 1.6 to 3.9 kHz instead of the noise (above the voicing's
    band, so never voiced to the detector): what a pause lets through of a TV's speech, tonal and syllabic."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE))
    t = span[0] + 0.5
    while t < span[1] - 2.0:
        k0, k = int(t * RATE), int(rng.uniform(1.5, 3.0) * RATE)
        k = min(k, int((span[1] - 0.5 - t) * RATE))
        time = np.arange(k) / RATE
        rate, phase = rng.uniform(4.0, 6.0), rng.uniform(0, 2 * np.pi)
        syllables = 1.0 - depth + depth * (0.5 + 0.5 * np.sin(2 * np.pi * rate * time + phase)) ** 3
        if tonal:  # the harmonics of a voice's pitch above the voicing's band
            pitch = rng.uniform(180.0, 220.0)
            harmonics = np.arange(np.ceil(1600.0 / pitch), np.floor(3900.0 / pitch) + 1) * pitch
            carrier = sum(np.sin(2 * np.pi * f * time + rng.uniform(0, 2 * np.pi)) for f in harmonics)
            carrier *= 0.61 / np.sqrt(len(harmonics) / 2)  # the band noise's RMS
        else:
            carrier = _band_noise(rng, k, 300, 1800)
        out[k0 : k0 + k] += level * syllables * np.hanning(k) ** 0.2 * carrier
        t += k / RATE + rng.uniform(0.4, 1.5)
    return 0.05 * out


def murmur(seconds: float, span: tuple[float, float], level: float, seed: int = 19) -> np.ndarray:
    """A steady, low murmur inside ``span`` only (band noise at ``level`` x the breaths' amplitude): a TV
    turned low, heard in a pause and lost under the breathing elsewhere."""
    rng = np.random.default_rng(seed)
    out = np.zeros(int(seconds * RATE))
    k0, k1 = int(span[0] * RATE), int(span[1] * RATE)
    out[k0:k1] = level * _band_noise(rng, k1 - k0, 300, 1800)
    return 0.05 * out
