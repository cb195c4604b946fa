"""A weightless log-Mel front end with the backbone surface, for end-to-end baselines.

SoundSleepNet-style models learn everything from the spectrogram, so "embedding" an
epoch here means computing its log-Mel spectrogram (64 bands, 25 ms Hann window, 10 ms
hop, 0-8 kHz, Slaney filters as librosa's defaults) and mean-pooling the frames to
``pool_seconds``. Going through the same cache and pipeline as the speech models keeps
the comparison fair: same epochs, same preprocessing, same splits, same training loop.

Per segment the log-Mel values (dB, floored 80 dB below the segment's peak) are shifted
and scaled to zero mean and unit variance over all bands and frames together: that
removes the microphone's gain (an additive offset in dB) but keeps the spectral shape,
which per-band normalisation would erase.

The computation is a small torch module (``MelFrontEnd``: STFT, filterbank, log,
normalisation, pooling), so it runs batched on a GPU and ``torch.compile`` can wrap it.
It always computes in float32 (an STFT under fp16/bf16 autocast loses the quiet bands
that breathing lives in); the output is float16, the cache's storage type.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from sleepsound.models.backbones.pretrained import SAMPLE_RATE, _resolve_device, pool_frames, weightless_frames_per_pool

NAME = "mel"
FAMILY = "mel"
N_MELS = 64
WIN_LENGTH = 400  # 25 ms at 16 kHz
HOP_LENGTH = 160  # 10 ms at 16 kHz
N_FFT = 400
F_MIN, F_MAX = 0.0, 8000.0
TOP_DB = 80.0  # floor below each segment's peak, as librosa.power_to_db(top_db=80)
AMIN = 1e-10  # power floor before the log
NORM_EPS = 1e-5  # keeps silence (constant dB) finite after normalisation
FRAME_RATE_HZ = SAMPLE_RATE / HOP_LENGTH  # 100 frames per second
# Bumped whenever the numbers change for the same settings, so fingerprints change too.
FRONT_END_VERSION = 1


def mel_filters(
    n_mels: int = N_MELS, n_fft: int = N_FFT, sample_rate: int = SAMPLE_RATE, f_min: float = F_MIN, f_max: float = F_MAX
) -> np.ndarray:
    """[n_mels, n_fft // 2 + 1] Slaney-scale, Slaney-normalised triangles (librosa's defaults)."""
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(
        num_frequency_bins=n_fft // 2 + 1,
        num_mel_filters=n_mels,
        min_frequency=f_min,
        max_frequency=f_max,
        sampling_rate=sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return np.ascontiguousarray(bank.T, dtype=np.float32)


class MelFrontEnd(nn.Module):
    """float32 audio [B, n] -> pooled normalised log-Mel [B, T, n_mels] float32 (no parameters)."""

    def __init__(self, frames_per_pool: int, n_mels: int = N_MELS) -> None:
        super().__init__()
        self.frames_per_pool = int(frames_per_pool)
        self.register_buffer("window", torch.hann_window(WIN_LENGTH), persistent=False)
        self.register_buffer("filters", torch.from_numpy(mel_filters(n_mels)), persistent=False)

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """[B, n] -> per-segment-normalised log-Mel [B, n // hop, n_mels] at 100 frames/s.

        Centred frames (reflect padding) with the last one dropped, so a segment of n samples
        gives exactly n // hop frames, frame k covering [k, k + 1) hops around its centre.
        """
        stft = torch.stft(
            audio.float(),
            N_FFT,
            HOP_LENGTH,
            WIN_LENGTH,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        power = stft[..., : audio.shape[1] // HOP_LENGTH].abs().pow(2)  # [B, F, T]
        mel = torch.matmul(self.filters, power)  # [B, M, T]
        db = 10.0 * torch.log10(mel.clamp(min=AMIN))
        db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - TOP_DB)
        mean = db.mean(dim=(1, 2), keepdim=True)
        std = db.var(dim=(1, 2), keepdim=True, unbiased=False).add(NORM_EPS).sqrt()
        return ((db - mean) / std).transpose(1, 2)  # [B, T, M]

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return pool_frames(self.log_mel(audio), self.frames_per_pool)


class MelBackbone:
    """The log-Mel front end dressed as a backbone (see module docstring).

    Same attributes the pipeline, cache and benchmark read from ``registry.Backbone``:
    ``name``, ``family`` ("mel"), ``dim`` (64), ``frame_rate_hz`` (100), ``layer`` (-1),
    ``layers`` (()), ``n_layers`` (1), ``num_layers`` (0: nothing to pick from),
    ``pool_seconds``, ``frames_per_pool``, ``device``, ``dtype`` (always "float32"),
    ``fingerprint``, ``model``, ``on_cuda``, ``feature_extractor`` (None).
    """

    def __init__(
        self,
        *,
        pool_seconds: float = 0.5,
        device: str = "cpu",
        dtype: str = "float32",
        layer: int = -1,
        layers: Sequence[int] | None = None,
        n_mels: int = N_MELS,
    ) -> None:
        frames_per_pool = weightless_frames_per_pool(
            "mel front end", layer, layers, dtype, pool_seconds, FRAME_RATE_HZ, step=f"the {1 / FRAME_RATE_HZ:g} s hop"
        )
        if not 1 <= n_mels <= N_FFT // 2 + 1:
            raise ValueError(f"n_mels must be in 1..{N_FFT // 2 + 1}, got {n_mels}")
        self.name, self.family = NAME, FAMILY
        self.device = _resolve_device(device)
        self.dtype = "float32"  # whatever was asked: see the module docstring
        self.dim = int(n_mels)
        self.frame_rate_hz = FRAME_RATE_HZ
        self.layer, self.layer_index, self.num_layers = -1, 0, 0
        self.layers: tuple[int, ...] = ()
        self.layer_indices: tuple[int, ...] = ()
        self.n_layers = 1
        self.pool_seconds = float(pool_seconds)
        self.frames_per_pool = frames_per_pool
        self.feature_extractor = None
        self.window_samples = None
        settings = {
            "family": FAMILY,
            "version": FRONT_END_VERSION,
            "sample_rate": SAMPLE_RATE,
            "n_mels": self.dim,
            "n_fft": N_FFT,
            "win_length": WIN_LENGTH,
            "hop_length": HOP_LENGTH,
            "f_min": F_MIN,
            "f_max": F_MAX,
            "top_db": TOP_DB,
            "norm": "segment",
            "pool_seconds": self.pool_seconds,
        }
        self.fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
        self.model: nn.Module = MelFrontEnd(self.frames_per_pool, self.dim).to(self.device).eval()
        self.on_cuda = torch.device(self.device).type == "cuda"

    def __repr__(self) -> str:
        return (
            f"MelBackbone(dim={self.dim}, pool_seconds={self.pool_seconds}, device={self.device!r}, "
            f"fingerprint={self.fingerprint!r})"
        )

    def n_output_frames(self, n_samples: int) -> int:
        """Pooled frames :meth:`embed` returns for segments of ``n_samples`` samples."""
        return math.ceil((n_samples // HOP_LENGTH) / self.frames_per_pool)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """float32 [B, n_samples] at 16 kHz -> float16 [B, ceil((n // 160) / frames_per_pool), n_mels]."""
        batch = np.asarray(batch)
        if batch.ndim != 2:
            raise ValueError(f"embed takes a [batch, samples] array, got shape {batch.shape}")
        n, n_samples = batch.shape
        if n_samples < N_FFT:
            raise ValueError(f"the mel front end needs at least {N_FFT} samples per segment, got {n_samples}")
        if n == 0:
            return np.zeros((0, self.n_output_frames(n_samples), self.dim), dtype=np.float16)
        if not np.isfinite(batch).all():
            raise ValueError("embed got NaN or infinite samples")
        audio = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.on_cuda:
            audio = audio.pin_memory().to(self.device, non_blocking=True)
        else:
            audio = audio.to(self.device)
        with torch.inference_mode():
            pooled = self.model(audio)
        return pooled.to(torch.float16).cpu().numpy()

    def auto_batch_size(self, n_samples: int, memory_fraction: float = 0.7, cap: int = 256, cpu_batch: int = 8) -> int:
        """Segments per forward pass: on CUDA what ``memory_fraction`` of the free memory holds
        (measured by a probe pass of two segments), capped; on CPU ``cpu_batch``."""
        if not self.on_cuda:
            return cpu_batch
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        self.embed(np.zeros((2, max(n_samples, N_FFT)), dtype=np.float32))
        per_segment = max(1.0, (torch.cuda.max_memory_allocated(self.device) - base) / 2)
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(max(1, min(cap, memory_fraction * free // per_segment)))

    def _autocast(self) -> Any:
        """Never autocast (the benchmark asks for this context): the front end stays float32."""
        return nullcontext()


def load_mel_backbone(
    *,
    pool_seconds: float = 0.5,
    device: str = "cpu",
    dtype: str = "float32",
    layer: int = -1,
    layers: Sequence[int] | None = None,
    compile: bool = False,
    compile_backend: str = "inductor",
) -> MelBackbone:
    """The ``load_backbone("mel", ...)`` path: no weights to load, so nothing to fail offline."""
    backbone = MelBackbone(pool_seconds=pool_seconds, device=device, dtype=dtype, layer=layer, layers=layers)
    if compile:
        backbone.model = torch.compile(backbone.model, dynamic=False, backend=compile_backend)
    return backbone
