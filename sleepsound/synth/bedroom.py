"""Bedroom sounds that are not snoring, made here: hard negatives for the clip detector.

Why: a snore detector trained on one TV recording calls another TV snoring (issue 16: 20 of 25
unseen television-news clips, 14 of 25 vibration-motor clips). These generators make many
different TVs, talkers, fans and motors, each clip deterministic from ``(seed, category, index)``:

* ``tv_speech``: TV news: one or two newsreaders with pauses and breaths, studio presence, music beds
  and stings, broadcast compression, limiting and loudness riding, through a TV's small loudspeaker
  (150 Hz-8 kHz, a resonant peak, some distortion, cabinet rumble), in a bedroom;
* ``room_speech``: speech in the room (reverberant, full band) over room tone;
* ``fan_hvac``: shaped broadband air noise plus a blade-pass hum (50-300 Hz) slowly modulated;
* ``motor_hum``: harmonic hum of a motor or transformer (50-300 Hz), slow wow, little noise;
* ``vibration_motor``: near-silence with a phone-like buzz switching on and off;
* household transients (:mod:`sleepsound.synth.household`, ``HOUSEHOLD_CATEGORIES``): ``door``,
  ``footsteps``, ``water_flush``, ``dishes``, ``clock_tick``, ``door_creak``, made from modal, bubble and
  stick-slip acoustics.

Speech comes from Debian's ``espeak-ng`` when it is installed (``speech="espeak"`` requires it,
``"auto"`` uses it when present) and otherwise from :func:`speech_like`, a small formant synthesiser:
a glottal pulse train with a pitch contour through vowel formants, consonant noise bursts, syllables
at 3-6 Hz and pauses between words. Both are aperiodic at breathing rates (0.2-0.5 Hz), unlike snores.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import zlib
from collections.abc import Callable

import numpy as np
import soundfile as sf
import soxr
from scipy.signal import butter, fftconvolve, lfilter, sosfilt

from sleepsound.synth.sound import LIMIT_CEILING, LIMIT_KNEE, soft_limit

SAMPLE_RATE = 16_000
STEADY_CATEGORIES: tuple[str, ...] = ("tv_speech", "room_speech", "fan_hvac", "motor_hum", "vibration_motor")
# household transients (synth.household): doors, footsteps, water, dishes, a clock
HOUSEHOLD_CATEGORIES: tuple[str, ...] = ("door", "footsteps", "water_flush", "dishes", "clock_tick", "door_creak")
ALL_CATEGORIES: tuple[str, ...] = STEADY_CATEGORIES + HOUSEHOLD_CATEGORIES  # every category background() makes
CATEGORIES: tuple[str, ...] = STEADY_CATEGORIES  # the default set (clips' generated negatives, the night's clip epochs)
SPEECH_SOURCES = ("auto", "espeak", "synth")
TV_BAND_HZ = (100.0, 7000.0)  # a broadcast chain's band (also used by synth.styled)
TV_SPEAKER_BAND_HZ = (150.0, 8000.0)  # a TV's small loudspeaker: the band its corners are drawn within

# Vowel formants (F1, F2, F3 in Hz) of an adult male voice (Peterson & Barney averages).
_VOWELS = np.array(
    [
        (730, 1090, 2440),  # a
        (270, 2290, 3010),  # i
        (300, 870, 2240),  # u
        (530, 1840, 2480),  # e
        (570, 840, 2410),  # o
        (660, 1720, 2410),  # ae
        (490, 1350, 1690),  # er
        (440, 1020, 2240),  # uh
    ],
    dtype=np.float64,
)
_WORDS = (  # noqa: SIM905 (one readable block of words)
    "the news tonight weather report market city council minister said people today later game score "
    "team season storm rain cold front north south police road traffic delay hospital school money "
    "price rise fall report live studio back after this break welcome evening good morning new show "
    "film music station story world country house water fire summer winter week year time number"
).split()


def _rng(seed: int, *key: int | str) -> np.random.Generator:
    """A generator for one clip: the same ``(seed, key...)`` always gives the same sound."""
    parts = [int(seed) & 0x7FFFFFFF] + [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in key]
    return np.random.default_rng(parts)


def _unit_rms(x: np.ndarray) -> np.ndarray:
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return (x / rms).astype(np.float32) if rms > 0 else x.astype(np.float32)


def _band(x: np.ndarray, low: float | None, high: float | None, rate: int, order: int = 4) -> np.ndarray:
    """Butterworth band/low/high-pass (why: broadcast and microphone band limits)."""
    nyq = rate / 2.0
    if low and high:
        sos = butter(order, [low / nyq, min(high / nyq, 0.999)], btype="bandpass", output="sos")
    elif low:
        sos = butter(order, low / nyq, btype="highpass", output="sos")
    elif high:
        sos = butter(order, min(high / nyq, 0.999), btype="lowpass", output="sos")
    else:
        return x.astype(np.float32)
    return sosfilt(sos, x).astype(np.float32)


def pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-RMS 1/f noise (spectral shaping of white noise)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spectrum.size, dtype=np.float64)
    spectrum /= np.sqrt(np.maximum(f, 1.0))
    spectrum[0] = 0.0
    return _unit_rms(np.fft.irfft(spectrum, n))


def _envelope(x: np.ndarray, rate: int, seconds: float) -> np.ndarray:
    """RMS envelope with a one-pole smoother of time constant ``seconds``."""
    a = np.exp(-1.0 / (seconds * rate))
    return np.sqrt(lfilter([1 - a], [1, -a], np.square(x, dtype=np.float64)) + 1e-12)


def compress(x: np.ndarray, rate: int, threshold_db: float = -20.0, ratio: float = 4.0) -> np.ndarray:
    """Broadcast-style compression: levels above ``threshold_db`` (re the signal's RMS) are reduced by ``ratio``."""
    x = _unit_rms(x)
    level_db = 20 * np.log10(_envelope(x, rate, 0.01))
    over = np.maximum(level_db - threshold_db, 0.0)
    return _unit_rms(x * 10 ** (-over * (1 - 1 / ratio) / 20))


def _resonators(
    x: np.ndarray, formants: np.ndarray, bandwidths: np.ndarray, weights: np.ndarray, rate: int, hop: int
) -> np.ndarray:
    """Parallel two-pole resonators (unit gain at resonance, weighted, alternating sign so no
    spectral nulls between them) whose frequencies change every ``hop`` samples, state carried over."""
    y = np.zeros(len(x))
    for k in range(formants.shape[1]):
        zi = np.zeros(2)
        for start in range(0, len(x), hop):
            theta = 2 * np.pi * formants[start // hop, k] / rate
            r = np.exp(-np.pi * bandwidths[k] / rate)
            gain = (1 - r) * np.sqrt(1 - 2 * r * np.cos(2 * theta) + r * r)
            a = [1.0, -2 * r * np.cos(theta), r * r]
            part, zi = lfilter([gain], a, x[start : start + hop], zi=zi)
            y[start : start + hop] += (-1) ** k * weights[k] * part
    return y


def speech_like(rng: np.random.Generator, n: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Unit-RMS speech-like sound: voiced syllables at 3-6 Hz through moving formants, consonant bursts,
    a falling-and-rising pitch contour and pauses between words; a different talker for every ``rng``."""
    hop = rate // 200  # formants and pitch move every 5 ms
    frames = -(-n // hop)
    t = np.arange(frames) * hop / rate
    female = rng.random() < 0.5
    f0_base = rng.uniform(165, 240) if female else rng.uniform(85, 140)
    scale = rng.uniform(1.1, 1.25) if female else rng.uniform(0.95, 1.05)
    syllable_hz = rng.uniform(3.0, 6.0)

    # Syllables: each a consonant (noise) then a vowel (voiced), some followed by a pause (word gap).
    voiced = np.zeros(frames)
    noisy = np.zeros(frames)
    accent = np.zeros(frames)
    formants = np.zeros((frames, 3))
    pos = -rng.uniform(0, 1 / syllable_hz)  # start mid-utterance
    vowel = _VOWELS[rng.integers(len(_VOWELS))]
    while pos < t[-1] + 0.01:
        length = rng.uniform(0.8, 1.2) / syllable_hz
        cons = rng.uniform(0.15, 0.3) * length if rng.random() < 0.7 else 0.0
        nxt = _VOWELS[rng.integers(len(_VOWELS))] * scale
        inside = (t >= pos) & (t < pos + length)
        tau = (t[inside] - pos) / length
        c = cons / length
        voiced[inside] = np.where(tau >= c, np.sin(np.pi * np.clip((tau - c) / max(1 - c, 1e-3), 0, 1)) ** 1.5, 0.0)
        noisy[inside] = np.where(tau < c, np.sin(np.pi * tau / max(c, 1e-3)) ** 2, 0.0) * rng.uniform(0.2, 0.6)
        blend = np.clip((tau - c) / 0.3, 0, 1)[:, None]  # formant transition into the vowel
        formants[inside] = (1 - blend) * vowel + blend * nxt
        accent[inside] = rng.normal(0, 0.08) * np.sin(np.pi * tau)
        vowel = nxt
        pos += length
        if rng.random() < 0.12:  # a pause between words or phrases
            pos += rng.uniform(0.08, 0.35)
    # Pauses keep the last vowel's formants (a resonator at 0 Hz would ring at DC across the gap).
    held = np.flatnonzero(formants[:, 0] > 0)
    formants = formants[held[np.clip(np.searchsorted(held, np.arange(frames), side="right") - 1, 0, None)]]
    # Pitch: declination over a phrase, syllable accents, a little jitter.
    phrase = rng.uniform(1.5, 3.0)
    contour = 1 + 0.12 * np.cos(2 * np.pi * (t / phrase + rng.random())) + accent + rng.normal(0, 0.01, frames)
    f0 = np.repeat(f0_base * contour, hop)[:n]
    phase = np.cumsum(f0 / rate) + rng.random()
    frac = phase % 1.0
    open_q = rng.uniform(0.5, 0.7)
    rise, fall = 0.7 * open_q, 0.3 * open_q  # Rosenberg pulse: a slow opening, an abrupt closure (bright)
    glottal = np.where(
        frac < rise,
        0.5 * (1 - np.cos(np.pi * frac / rise)),
        np.where(frac < open_q, np.cos(0.5 * np.pi * (frac - rise) / fall), 0.0),
    )
    source = np.diff(glottal, prepend=glottal[0])  # lip radiation: the derivative of the flow
    source = source / (np.std(source) + 1e-12)
    env_v = np.interp(np.arange(n), np.arange(frames) * hop, voiced)
    env_n = np.interp(np.arange(n), np.arange(frames) * hop, noisy)
    bandwidths, weights = np.array([80.0, 110.0, 160.0]) * scale, np.array([1.0, 0.6, 0.3])
    vowels = _resonators(source * env_v, formants, bandwidths, weights, rate, hop)
    fricative = _band(rng.standard_normal(n), rng.uniform(2000, 4000), 7500, rate) * env_n
    return _unit_rms(_unit_rms(vowels) + rng.uniform(0.1, 0.3) * fricative)


def espeak_available() -> bool:
    """Whether Debian's ``espeak-ng`` is on the PATH."""
    return shutil.which("espeak-ng") is not None


def espeak_speech(rng: np.random.Generator, n: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Unit-RMS speech by ``espeak-ng`` (random words, voice, speed and pitch from ``rng``), a random
    ``n``-sample stretch of it; raises RuntimeError when espeak-ng is missing or fails."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng), or use speech='synth'")
    words = " ".join(str(w) for w in rng.choice(_WORDS, size=int(rng.integers(10, 18))))
    voice = str(rng.choice(["en-us", "en", "en-gb-scotland", "en-us+f3", "en+f2", "en-us+m3", "en+m5"]))
    cmd = [exe, "-v", voice, "-s", str(int(rng.integers(140, 200))), "-p", str(int(rng.integers(25, 75)))]
    done = subprocess.run([*cmd, "--stdout", words], capture_output=True, timeout=60, check=False)
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"espeak-ng failed (exit {done.returncode}): {done.stderr.decode(errors='replace')[:200]}")
    audio, sr = sf.read(io.BytesIO(done.stdout), dtype="float32", always_2d=True)
    audio = soxr.resample(audio.mean(axis=1), sr, rate, quality="HQ")
    if len(audio) < n:  # repeat the utterance with a short pause
        audio = np.tile(np.concatenate([audio, np.zeros(rate // 4, np.float32)]), -(-n // (len(audio) + rate // 4)))
    voiced = np.flatnonzero(_envelope(audio, rate, 0.05) > 0.05 * np.max(np.abs(audio)))
    latest = max(0, min(len(audio) - n, int(voiced[-1]) - n // 2 if voiced.size else len(audio) - n))
    start = int(rng.integers(0, latest + 1))
    return _unit_rms(audio[start : start + n])


def speech(rng: np.random.Generator, n: int, rate: int = SAMPLE_RATE, source: str = "auto") -> np.ndarray:
    """Speech from espeak-ng (``espeak``, or ``auto`` when installed) or from :func:`speech_like` (``synth``)."""
    if source not in SPEECH_SOURCES:
        raise ValueError(f"speech source must be one of {SPEECH_SOURCES}, got {source!r}")
    if source == "espeak" or (source == "auto" and espeak_available()):
        return espeak_speech(rng, n, rate)
    return speech_like(rng, n, rate)


def music_bed(rng: np.random.Generator, n: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Unit-RMS TV-like music: chords of harmonic tones changing every 0.4-1.2 s, with a soft beat."""
    t = np.arange(n) / rate
    out = np.zeros(n)
    pos = -rng.uniform(0, 0.5)
    root = rng.uniform(110, 220)
    while pos < t[-1]:
        length = rng.uniform(0.4, 1.2)
        inside = (t >= pos) & (t < pos + length)
        tau = t[inside] - pos
        chord = root * 2 ** (np.array([0, rng.choice([3, 4]), 7, rng.choice([10, 11, 12])]) / 12)
        note = sum(
            (0.6**h) * np.sin(2 * np.pi * f * (h + 1) * tau + rng.random() * 6.28) for f in chord for h in range(4)
        )
        out[inside] += note * np.exp(-tau / rng.uniform(0.3, 1.5)) * np.minimum(tau / 0.01, 1)
        root *= 2 ** (rng.choice([-5, -2, 0, 2, 5, 7]) / 12)
        root = float(np.clip(root, 90, 300))
        pos += length
    beat_hz = rng.uniform(1.5, 2.5)
    kick = np.exp(-((t * beat_hz + rng.random()) % 1.0) / 0.04) * np.sin(2 * np.pi * 60 * t)
    return _unit_rms(_unit_rms(out) + 0.5 * kick)


def room(
    x: np.ndarray, rng: np.random.Generator, rate: int = SAMPLE_RATE, wet: tuple[float, float] = (0.1, 0.4)
) -> np.ndarray:
    """A small room: ``x`` convolved with exponentially decaying noise (RT60 0.2-0.6 s), mixed wet/dry."""
    rt60 = rng.uniform(0.2, 0.6)
    taps = int(rt60 * rate)
    ir = rng.standard_normal(taps) * np.exp(-6.9 * np.arange(taps) / taps)
    tail = fftconvolve(x, ir)[: len(x)]
    w = rng.uniform(*wet)
    return _unit_rms((1 - w) * _unit_rms(x) + w * _unit_rms(tail))


def room_tone(rng: np.random.Generator, n: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Unit-RMS quiet-room noise: pink, rolled off above 4-8 kHz."""
    return _unit_rms(_band(pink_noise(rng, n), 20.0, rng.uniform(4000, 8000), rate, order=2))


def _harmonic_hum(rng: np.random.Generator, n: int, rate: int, f0: float, n_harm: int, rolloff: float) -> np.ndarray:
    """Unit-RMS hum at ``f0`` and harmonics, with slow amplitude (0.05-0.5 Hz) and slight frequency wow."""
    t = np.arange(n) / rate
    wow = 1 + 0.004 * np.sin(2 * np.pi * rng.uniform(0.05, 0.3) * t + rng.random() * 6.28)
    phase = 2 * np.pi * np.cumsum(f0 * wow) / rate
    tone = sum(rolloff**h * np.sin((h + 1) * phase + rng.random() * 6.28) for h in range(n_harm))
    am = 1 + rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t + rng.random() * 6.28)
    return _unit_rms(tone * am)


def fan(rng: np.random.Generator, n: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Unit-RMS fan or ventilation: broadband air noise shaped by a low-pass and a resonance, plus a
    blade-pass hum (50-300 Hz) at a lower level, both slowly modulated."""
    air = _band(pink_noise(rng, n) + 0.3 * rng.standard_normal(n), rng.uniform(30, 80), rng.uniform(800, 4000), rate)
    centre = rng.uniform(200, 1200)
    res = _band(rng.standard_normal(n), centre / 1.3, centre * 1.3, rate, order=2)
    hum = _harmonic_hum(rng, n, rate, rng.uniform(50, 300), int(rng.integers(2, 6)), rng.uniform(0.3, 0.7))
    t = np.arange(n) / rate
    swell = 1 + rng.uniform(0.02, 0.15) * np.sin(2 * np.pi * rng.uniform(0.1, 0.5) * t + rng.random() * 6.28)
    return _unit_rms(swell * (_unit_rms(air) + rng.uniform(0.1, 0.5) * _unit_rms(res)) + rng.uniform(0.1, 0.6) * hum)


def motor_hum(rng: np.random.Generator, n: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Unit-RMS motor or transformer hum: strong harmonics of 50-300 Hz (mains, fridge, pump), little noise."""
    f0 = float(rng.choice([50.0, 60.0, 100.0, 120.0, rng.uniform(50, 300)]))
    hum = _harmonic_hum(rng, n, rate, f0, int(rng.integers(3, 10)), rng.uniform(0.4, 0.85))
    return _unit_rms(hum + rng.uniform(0.02, 0.2) * room_tone(rng, n, rate))


def vibration_motor(rng: np.random.Generator, n: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Near-silence with a buzzing vibration motor (120-250 Hz, rattly) switching on and off every
    0.15-0.8 s; unit RMS over the clip, so the room tone between buzzes is about 30-45 dB below."""
    t = np.arange(n) / rate
    f0 = rng.uniform(120, 250)
    buzz = np.sign(np.sin(2 * np.pi * f0 * t + rng.random() * 6.28)) * (1 + 0.3 * rng.standard_normal(n))
    buzz = _band(buzz, 80.0, rng.uniform(1500, 5000), rate)
    gate = np.zeros(n)
    pos, on = -rng.uniform(0, 0.5), bool(rng.random() < 0.5)
    while pos < t[-1]:
        length = rng.uniform(0.15, 0.8)
        if on:
            inside = (t >= pos) & (t < pos + length)
            gate[inside] = np.minimum(np.minimum(t[inside] - pos, pos + length - t[inside]) / 0.01, 1.0)
        pos, on = pos + length, not on
    if not gate.any():  # always some buzz in the clip
        start = int(rng.integers(0, max(1, n - rate // 5)))
        gate[start : start + rate // 5] = 1.0
    floor = 10 ** (-rng.uniform(30, 45) / 20)
    return _unit_rms(_unit_rms(buzz) * gate + floor * room_tone(rng, n, rate))


def peaking(x: np.ndarray, f0: float, gain_db: float, q: float, rate: int = SAMPLE_RATE) -> np.ndarray:
    """RBJ peaking equaliser (why: a small loudspeaker's resonance, a bump of ``gain_db`` at ``f0``)."""
    a_gain = 10 ** (gain_db / 40)
    w0 = 2 * np.pi * f0 / rate
    alpha = np.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a_gain, -2 * np.cos(w0), 1 - alpha * a_gain])
    a = np.array([1 + alpha / a_gain, -2 * np.cos(w0), 1 - alpha / a_gain])
    return lfilter(b / a[0], a / a[0], x).astype(np.float32)


def limit(x: np.ndarray, rate: int, ceiling: float, release_s: float = 0.05) -> np.ndarray:
    """Peak limiter: instant attack, exponential release, so no sample exceeds ``ceiling`` (re unit RMS)."""
    peak = np.abs(x).astype(np.float64)
    a = np.exp(-1.0 / (release_s * rate))
    held = lfilter([1 - a], [1, -a], peak)
    env = np.maximum(peak, held)  # never below the peak itself: the attack is instant
    return (x * np.minimum(1.0, ceiling / np.maximum(env, 1e-12))).astype(np.float32)


def loudness_normalise(x: np.ndarray, rate: int, seconds: float = 3.0, max_gain_db: float = 15.0) -> np.ndarray:
    """Long-term loudness riding (broadcast AGC): the gain follows the inverse of a ``seconds``-long RMS, up to
    ``max_gain_db`` of boost, so quiet passages (pauses, breaths) are lifted toward the programme level."""
    env = _envelope(_unit_rms(x), rate, seconds)
    gain = np.minimum(1.0 / env, 10 ** (max_gain_db / 20))
    return _unit_rms(x * gain)


def breath_in(rng: np.random.Generator, n: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Unit-RMS inhalation of a talker between phrases: turbulent noise through a vocal-tract-like band
    (0.4-3 kHz, one broad resonance), rising then falling."""
    noise = _band(rng.standard_normal(n), rng.uniform(300, 600), rng.uniform(2500, 4500), rate, order=2)
    centre = rng.uniform(800, 1800)
    noise = noise + 0.7 * _band(rng.standard_normal(n), centre / 1.25, centre * 1.25, rate, order=2)
    tau = np.linspace(0, 1, n)
    return _unit_rms(noise * np.sin(np.pi * tau) ** rng.uniform(0.8, 2.0))


def music_sting(rng: np.random.Generator, n: int, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Unit-RMS news sting: a bright brass-like chord hit with a low drum boom and a cymbal wash, decaying."""
    t = np.arange(n) / rate
    root = rng.uniform(90, 180)
    chord = root * 2 ** (np.array([0, 4, 7, 12, rng.choice([14, 16, 19])]) / 12)
    brass = sum((0.8**h) * np.sin(2 * np.pi * f * (h + 1) * t + rng.random() * 6.28) for f in chord for h in range(8))
    decay = np.exp(-t / rng.uniform(0.4, 1.2)) * np.minimum(t / 0.005, 1)
    boom = np.sin(2 * np.pi * rng.uniform(50, 90) * t) * np.exp(-t / 0.15)
    cymbal = _band(rng.standard_normal(n), 4000, 7900, rate, order=2) * np.exp(-t / rng.uniform(0.2, 0.8))
    return _unit_rms(_unit_rms(brass) * decay + 0.8 * boom + 0.3 * cymbal)


def news_programme(rng: np.random.Generator, n: int, rate: int = SAMPLE_RATE, source: str = "auto") -> np.ndarray:
    """Unit-RMS broadcast news as it leaves the studio: one or two newsreaders in phrases of 0.6-2.5 s with
    pauses (an audible breath in most), studio presence, sometimes a music bed under the speech and a
    sting between items; then broadcast compression, a peak limiter and long-term loudness riding."""
    talkers = 2 if rng.random() < 0.35 else 1
    voices = [np.random.default_rng(rng.integers(2**32)) for _ in range(talkers)]  # each talker its own voice draws
    out = np.zeros(n)
    pos, who = int(rng.integers(0, rate // 2)), 0
    while pos < n:
        phrase = int(rng.uniform(0.6, 2.5) * rate)
        if rng.random() < 0.12:  # a sting between items
            out[pos : pos + phrase] += 1.2 * music_sting(rng, phrase, rate)[: n - pos]
        else:
            voice = speech(np.random.default_rng(voices[who].integers(2**32)), phrase, rate, source)
            out[pos : pos + phrase] += voice[: n - pos]
            if talkers == 2 and rng.random() < 0.5:
                who = 1 - who
        pos += phrase
        gap = int(rng.uniform(0.15, 0.6) * rate)
        if rng.random() < 0.7 and pos < n:  # the newsreader's breath in the pause
            length = int(rng.uniform(0.2, min(0.45, gap / rate + 0.05)) * rate)
            start = pos + max(0, (gap - length) // 2)
            seg = breath_in(rng, length, rate) * 10 ** (-rng.uniform(12, 24) / 20)
            out[start : start + length] += seg[: max(0, n - start)]
        pos += gap
    studio = room(out, rng, rate, wet=(0.03, 0.12))  # a treated studio: a little presence, short decay
    if rng.random() < 0.5:
        studio = _unit_rms(studio) + 10 ** (-rng.uniform(12, 22) / 20) * music_bed(rng, n, rate)
    chain = compress(_band(studio, 60.0, 7800.0, rate), rate, rng.uniform(-22, -12), rng.uniform(4, 10))
    chain = limit(chain, rate, ceiling=rng.uniform(2.0, 3.0))
    return loudness_normalise(chain, rate, seconds=rng.uniform(2.0, 4.0))


def tv_loudspeaker(x: np.ndarray, rng: np.random.Generator, rate: int = SAMPLE_RATE) -> np.ndarray:
    """Unit-RMS sound of a TV's small loudspeaker: the 150 Hz-8 kHz band of a small driver (TV_SPEAKER_BAND_HZ
    with the corners drawn inside it), its resonant peak (200-600 Hz, +6-12 dB), soft and slightly
    asymmetric distortion, and cabinet rumble (40-140 Hz) that follows the programme's level."""
    low = rng.uniform(TV_SPEAKER_BAND_HZ[0], 200.0)
    high = rng.uniform(6000.0, TV_SPEAKER_BAND_HZ[1] * 0.95)
    y = _band(x, low, high, rate, order=4)
    y = peaking(_unit_rms(y), rng.uniform(200, 600), rng.uniform(6, 12), rng.uniform(1.5, 4.0), rate)
    drive = rng.uniform(0.3, 0.8)
    y = _unit_rms(y)
    y = np.tanh(drive * (y + rng.uniform(0.02, 0.1) * y**2)) / drive  # cone excursion: odd and even harmonics
    y = _band(y - np.mean(y), low, high, rate, order=4)  # the driver cannot reproduce what the clipping made outside
    rumble = _band(rng.standard_normal(len(x)), 40.0, 140.0, rate, order=2)
    rumble = _unit_rms(rumble) * _envelope(_unit_rms(y), rate, 0.05)
    return _unit_rms(_unit_rms(y) + 10 ** (-rng.uniform(20, 30) / 20) * rumble)


def tv_speech(rng: np.random.Generator, n: int, rate: int = SAMPLE_RATE, source: str = "auto") -> np.ndarray:
    """Unit-RMS TV news in a bedroom: :func:`news_programme` through :func:`tv_loudspeaker`, then the room
    it plays in over room tone. The programme runs 3 s longer than the clip (the loudness riding settles)
    and the clip is a random stretch of its last part."""
    warm = 3 * rate
    programme = news_programme(rng, n + warm, rate, source)
    start = int(rng.integers(warm // 2, warm + 1))
    speaker = tv_loudspeaker(programme[start : start + n], rng, rate)
    tone = 10 ** (-rng.uniform(30, 45) / 20) * room_tone(rng, n, rate)
    return _unit_rms(room(speaker, rng, rate, wet=(0.1, 0.35)) + tone)


def room_speech(rng: np.random.Generator, n: int, rate: int = SAMPLE_RATE, source: str = "auto") -> np.ndarray:
    """Unit-RMS people talking in the room: full-band speech, reverberant, over room tone."""
    tone = 10 ** (-rng.uniform(20, 35) / 20) * room_tone(rng, n, rate)
    return _unit_rms(room(speech(rng, n, rate, source), rng, rate) + tone)


def _generators(source: str) -> dict[str, Callable[[np.random.Generator, int, int], np.ndarray]]:
    from sleepsound.synth import household  # it builds on this module's room and noise

    return {
        "tv_speech": lambda r, n, sr: tv_speech(r, n, sr, source),
        "room_speech": lambda r, n, sr: room_speech(r, n, sr, source),
        "fan_hvac": fan,
        "motor_hum": motor_hum,
        "vibration_motor": vibration_motor,
        "door": household.door,
        "door_creak": household.door_creak,
        "footsteps": household.footsteps,
        "water_flush": household.water_flush,
        "dishes": household.dishes,
        "clock_tick": household.clock_tick,
    }


def background(
    category: str, seed: int, index: int, seconds: float = 1.0, rate: int = SAMPLE_RATE, speech_source: str = "auto"
) -> np.ndarray:
    """Unit-RMS float32 clip of one hard-negative ``category``; the same arguments give the same samples
    (espeak-ng's output may differ between its versions; ``speech_source='synth'`` never does)."""
    makers = _generators(speech_source)
    if category not in makers:
        raise ValueError(f"unknown hard-negative category {category!r}; choose from {ALL_CATEGORIES}")
    n = int(round(seconds * rate))
    if n < 1:
        raise ValueError(f"clip length must be positive, got {seconds} s")
    x = makers[category](_rng(seed, category, index), n, rate)
    if not np.all(np.isfinite(x)):
        raise RuntimeError(f"{category} clip {index} (seed {seed}) is not finite")  # a generator bug, never data
    return x


def at_level(x: np.ndarray, rms_dbfs: float) -> np.ndarray:
    """``x`` scaled to an RMS of ``rms_dbfs`` and soft-limited, so a 16-bit file never clips; a sound whose peak
    would pass the limiter's ceiling there (an impulse: a knock, a click) is scaled to a peak at the limiter's
    knee instead, quieter but undistorted (flattening it would make it another sound)."""
    y = _unit_rms(x)
    gain = 10 ** (rms_dbfs / 20)
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    if peak * gain > LIMIT_CEILING:
        gain = LIMIT_KNEE / peak
    return soft_limit(y * np.float32(gain))


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Unit-RMS ``signal + noise`` with the signal ``snr_db`` above the noise (RMS over the clip)."""
    if len(signal) != len(noise):
        raise ValueError(f"signal has {len(signal)} samples, the background {len(noise)}")
    return _unit_rms(_unit_rms(signal) + 10 ** (-snr_db / 20) * _unit_rms(noise))
