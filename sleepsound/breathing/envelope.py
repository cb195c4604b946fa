"""A 10-Hz breathing envelope of an epoch's audio, cheap enough to compute while the night streams.

Why these features (one row per 0.1-s frame):

* ``breath_db``: power in 250-2500 Hz, where the turbulent noise of breathing through nose
  and mouth sits; the detector measures breaths as modulation of it above a tracked floor.
* ``broad_db``: power over the whole band (60 Hz up), to tell a sound that is loud everywhere
  (a door, a voice) from breath noise.
* ``flatness``: spectral flatness in 250-4000 Hz (1: white noise, 0: a pure tone). Breath
  noise is flat; voiced speech, TV and music are harmonic.
* ``voicing``: the highest normalised autocorrelation of the frame below 1.5 kHz at the lags
  of a 90-400 Hz voice pitch: speech and most snores are periodic, breath noise is not.
  A steady hum (fan blade-pass) raises it evenly all night, so the detector reads it
  against its rolling level, never as an absolute.

The features are those of the audio as the embedding stream filters it (16 kHz, 50 Hz high-pass,
pre-emphasis: ``embed.preprocess``), where the detector's rules were measured. Raw audio (the
epochs a model device filters itself) is read through the same filters' frequency response, applied
to each frame's spectrum: a raw night's events are then the filtered night's (the spectra's tilt,
which pre-emphasis changes by 25 dB between 100 Hz and 2.5 kHz, moves the noise floor, the
breaths' levels and their flatness).

One real FFT of 1600 points per frame at 16 kHz (300 frames per epoch) and a 300-point inverse
one for the voicing: about 2-3 ms per 30-s epoch on one core (it was 8 ms with numpy's double
precision FFTs and a full-length inverse), a fraction of the feed's own cost per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.fft
from scipy import signal

from sleepsound.core.config import PreprocessConfig

FRAME_SECONDS = 0.1
FRAME_HZ = 1.0 / FRAME_SECONDS
FEATURES: tuple[str, ...] = ("breath_db", "broad_db", "flatness", "voicing")
BREATH_BAND_HZ = (250.0, 2500.0)
BROAD_LOW_HZ = 60.0
FLATNESS_BAND_HZ = (250.0, 4000.0)
VOICING_MAX_HZ = 1500.0
PITCH_HZ = (90.0, 400.0)
FLOOR_DB = -140.0  # digital silence: log10 of zero power, clipped


@dataclass(frozen=True)
class _Plan:
    """Window, frequency bands (as slices of the rfft's bins) and pitch lags for one frame size."""

    window: np.ndarray
    weight: np.ndarray | None  # per bin: the stream filters' power response (raw audio), None: already filtered
    breath: slice
    broad: slice
    flat: slice
    low_bins: int  # bins below VOICING_MAX_HZ: the autocorrelation is taken of those alone
    acf_n: int  # its (smaller) inverse FFT's length
    lags: slice  # voice-pitch lags at that length's rate


@lru_cache(maxsize=8)
def _plan(n: int, rate: float, filters: tuple[int, float, float] | None = None) -> _Plan:
    """The plan for frames of ``n`` samples at ``rate`` (cached per shape); ``filters`` (target rate,
    high-pass Hz, pre-emphasis) for raw audio that has not been through them."""
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    nyq = rate / 2.0 if filters is None else min(rate, filters[0]) / 2.0  # the resampled stream's band
    weight = None if filters is None else _filters_power(freqs, rate, *filters)

    def band(lo: float, hi: float) -> slice:
        idx = np.flatnonzero((freqs >= lo) & (freqs < min(hi, nyq)))
        if not len(idx):  # a very low rate: fall back to what the band can hold
            idx = np.flatnonzero(freqs >= min(lo, nyq / 2))
        return slice(int(idx[0]), int(idx[-1]) + 1)

    # The low band's autocorrelation needs no more bins than the band holds: an inverse FFT of
    # 2 x those bins gives it at a lower rate (3 kHz for 1.5 kHz at 16 kHz), a tenth of the cost
    # of the full-length one, with lags still finer than a tenth of the shortest voice period.
    low_bins = min(int(np.count_nonzero(freqs < VOICING_MAX_HZ)), len(freqs))
    acf_n = min(n, 2 * low_bins)
    acf_rate = rate * acf_n / n
    lo_lag = max(1, int(acf_rate / PITCH_HZ[1]))
    hi_lag = min(acf_n - 1, int(np.ceil(acf_rate / PITCH_HZ[0])))
    return _Plan(
        np.hanning(n).astype(np.float32),
        weight,
        band(*BREATH_BAND_HZ),
        band(BROAD_LOW_HZ, np.inf),
        band(*FLATNESS_BAND_HZ),
        low_bins,
        acf_n,
        slice(lo_lag, hi_lag + 1),
    )


def _filters_power(freqs: np.ndarray, rate: float, target: int, highpass_hz: float, preemphasis: float) -> np.ndarray:
    """Per rfft bin, the power response of the stream's resampling to ``target``, its Butterworth high-pass
    and its pre-emphasis (``embed.preprocess.StreamingFilter``), scaled so that a sound's per-bin power
    at ``rate`` equals its power at the target rate; zero above the target's Nyquist frequency."""
    inside = freqs < target / 2.0
    sos = signal.butter(2, highpass_hz, btype="highpass", fs=target, output="sos")
    _, response = signal.sosfreqz(sos, worN=np.where(inside, freqs, 0.0), fs=target)
    emphasis = np.abs(1.0 - preemphasis * np.exp(-2j * np.pi * freqs / target)) ** 2
    return np.where(inside, np.abs(response) ** 2 * emphasis * (target / rate), 0.0).astype(np.float32)


def epoch_envelope(audio: np.ndarray, rate: float, raw: PreprocessConfig | None = None) -> np.ndarray:
    """``[frames, len(FEATURES)]`` float32 of one epoch's audio (any rate; a trailing part frame is dropped).

    ``raw``: the audio has not been through the stream's filters: read it through those of this
    preprocessing (its target rate, high-pass and pre-emphasis). None: it has (``embed.preprocess``).
    The audio must not be normalised per epoch: the detector compares levels across epochs.
    Single precision FFTs (``scipy.fft`` keeps float32; numpy's would work in double); levels and
    flatness are averaged in double.
    """
    n = int(round(FRAME_SECONDS * rate))
    frames = len(audio) // n
    if frames == 0:
        return np.zeros((0, len(FEATURES)), dtype=np.float32)
    filters = None if raw is None else (int(raw.target_rate), float(raw.highpass_hz), float(raw.preemphasis))
    plan = _plan(n, float(rate), filters)
    x = np.asarray(audio[: frames * n], dtype=np.float32).reshape(frames, n)
    x = x - x.mean(axis=1, keepdims=True)
    spec = scipy.fft.rfft(x * plan.window, axis=1)
    power = (spec.real**2 + spec.imag**2) / np.float32(n)
    if plan.weight is not None:
        power *= plan.weight
    tiny = 1e-14
    breath_db = 10.0 * np.log10(power[:, plan.breath].mean(axis=1, dtype=np.float64) + tiny)
    broad_db = 10.0 * np.log10(power[:, plan.broad].mean(axis=1, dtype=np.float64) + tiny)
    band = power[:, plan.flat].astype(np.float64) + tiny
    flatness = np.exp(np.log(band).mean(axis=1)) / band.mean(axis=1)
    # Autocorrelation of the low band (Wiener-Khinchin), normalised by lag 0.
    acf = scipy.fft.irfft(power[:, : plan.low_bins], n=plan.acf_n, axis=1)
    zero = acf[:, 0]
    peak = acf[:, plan.lags].max(axis=1)
    voicing = np.where(zero > tiny, peak / np.maximum(zero, tiny), 0.0)
    out = np.stack([np.maximum(breath_db, FLOOR_DB), np.maximum(broad_db, FLOOR_DB), flatness, voicing], axis=1)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


def night_envelope(epochs: list[np.ndarray], frames_per_epoch: int) -> np.ndarray:
    """Stack epochs' envelopes on one grid, padding or cutting each to ``frames_per_epoch`` rows."""
    out = np.zeros((len(epochs) * frames_per_epoch, len(FEATURES)), dtype=np.float32)
    out[:, 0] = out[:, 1] = FLOOR_DB
    for i, env in enumerate(epochs):
        k = min(len(env), frames_per_epoch)
        out[i * frames_per_epoch : i * frames_per_epoch + k] = env[:k]
    return out


def frames_per_epoch(epoch_seconds: float) -> int:
    """Envelope frames in one epoch (300 for 30 s)."""
    return int(round(epoch_seconds * FRAME_HZ))


def empty_envelope(epoch_seconds: float) -> np.ndarray:
    """An epoch's envelope where there is no audio (shifted windows, closing rows): all zeros."""
    return np.zeros((frames_per_epoch(epoch_seconds), len(FEATURES)), dtype=np.float32)
