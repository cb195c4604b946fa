"""The paper's preprocessing in torch, on the model's own device (``preprocess.device: model``).

On a GPU node the CPUs that decode and resample are what the model waits on; this moves the
two costly steps, resampling to 16 kHz and the 50 Hz high-pass, onto the model's device. Each
epoch is processed on its own, from its raw samples with a margin on each side (the readers
cut them), so there is no state to carry between epochs and a batch runs as a few batched
convolutions:

* **resampling**: a windowed-sinc polyphase filter (Kaiser window, 64 zero crossings, cutoff at
  95.5% of the lower Nyquist, chosen as the closest to soxr's HQ filter), one strided ``conv1d``
  with a kernel per output phase;
* **high-pass**: the same 2nd-order Butterworth as the CPU path, not run as a recursive filter
  (sample by sample, far too slow on a GPU) but as its impulse response truncated where it has
  decayed below 1e-20 of its peak (0.256 s at 16 kHz), applied by FFT convolution; the margin
  before each epoch holds that much history, so the result is the recursive filter's;
* **pre-emphasis** from the sample before the epoch, then the epoch is cut from the margins.

The CPU path's resampler is soxr's HQ filter, which this one is not: the two differ slightly (see
the README, "The method"), so this path has its own cache (``PreprocessConfig.fingerprint``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from scipy import signal

from sleepsound.core.config import PreprocessConfig
from sleepsound.embed.preprocess import margins, reduced

HIGHPASS_SECONDS = 0.256
ZERO_CROSSINGS = 64
ROLLOFF = 0.955  # with 64 zero crossings: within 1% (RMS) of soxr HQ on white noise, the worst case
KAISER_BETA = 8.6


@lru_cache(maxsize=8)
def resample_kernels(rate: int, target: int) -> tuple[np.ndarray, int]:
    """Kernels [phases, 1, width] of the polyphase sinc resampler and the input padding on the left.

    Output sample ``q * new + j`` sits at input position ``q * old + j * old / new``; phase ``j``'s
    kernel holds the windowed lowpass sinc at the input samples around that position, so a
    ``conv1d`` of stride ``old`` over the padded input yields every phase at once.
    """
    old, new = reduced(rate, target)
    cutoff = ROLLOFF * min(1.0, new / old) / 2.0  # cycles per input sample
    half = math.ceil(ZERO_CROSSINGS / (2.0 * cutoff))  # input samples on each side
    taps = np.arange(-half, half + old + 1)  # input offsets a phase may reach
    kernels = np.zeros((new, 1, len(taps)))
    for j in range(new):
        tau = j * old / new - taps  # distance of each tap from the output position
        window = np.where(np.abs(tau) <= half, np.i0(KAISER_BETA * np.sqrt(np.clip(1 - (tau / half) ** 2, 0, 1))), 0.0)
        kernels[j, 0] = 2 * cutoff * np.sinc(2 * cutoff * tau) * window / np.i0(KAISER_BETA)
    kernels /= kernels.sum(axis=2, keepdims=True)  # unity gain at DC for every phase
    return kernels.astype(np.float32), half


@lru_cache(maxsize=8)
def highpass_response(highpass_hz: float, rate: int) -> np.ndarray:
    """The CPU path's 50 Hz Butterworth biquad as a finite impulse response (float64 -> float32)."""
    sos = signal.butter(2, highpass_hz, btype="highpass", fs=rate, output="sos")
    impulse = np.zeros(round(HIGHPASS_SECONDS * rate))
    impulse[0] = 1.0
    return signal.sosfilt(sos, impulse).astype(np.float32)


class TorchPreprocess:
    """Resample, high-pass and pre-emphasise a batch of epochs with margins, on one device."""

    def __init__(self, cfg: PreprocessConfig, device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.epoch = round(cfg.epoch_seconds * cfg.target_rate)
        fir = highpass_response(cfg.highpass_hz, cfg.target_rate)
        self._fir = torch.from_numpy(fir).to(self.device)

    def resample(self, raw: torch.Tensor, rate: int) -> torch.Tensor:
        """[B, n] at ``rate`` -> [B, n * target / rate] at the target rate (float32)."""
        if rate == self.cfg.target_rate:
            return raw
        old, new = reduced(rate, self.cfg.target_rate)
        kernels, half = resample_kernels(rate, self.cfg.target_rate)
        weight = torch.from_numpy(kernels).to(raw.device)
        n_out = raw.shape[1] * new // old
        padded = torch.nn.functional.pad(raw[:, None, :], (half, half + old))
        out = torch.nn.functional.conv1d(padded, weight, stride=old)  # [B, new, frames]
        return out.transpose(1, 2).reshape(raw.shape[0], -1)[:, :n_out]

    def highpass(self, x: torch.Tensor) -> torch.Tensor:
        """Causal FIR by FFT: y[n] = sum_k h[k] x[n - k], as the recursive filter from rest."""
        n, taps = x.shape[1], self._fir.shape[0]
        size = 1 << (n + taps - 1).bit_length()
        spectrum = torch.fft.rfft(x.double(), size) * torch.fft.rfft(self._fir.double(), size)
        return torch.fft.irfft(spectrum, size)[:, :n].float()

    def __call__(self, raw: torch.Tensor, rate: int) -> torch.Tensor:
        """Epochs with margins ([B, before + epoch + after] raw samples at ``rate``) -> [B, epoch] at 16 kHz,
        filtered and pre-emphasised, not yet normalised."""
        before, _ = margins(rate, self.cfg.target_rate)
        start = before * self.cfg.target_rate // rate
        y = self.highpass(self.resample(raw.to(self.device, torch.float32), rate))
        emphasised = y[:, start : start + self.epoch] - self.cfg.preemphasis * y[:, start - 1 : start + self.epoch - 1]
        return emphasised.contiguous()
