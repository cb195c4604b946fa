"""A cost-free backbone for measuring the pipeline itself: zeros of the right shape, at once.

``backbone.name=null`` goes through exactly the path a speech model does (the same readers,
batches, model stage, collector and cache writes), but its "forward pass" costs nothing, so
what a benchmark measures with it is the feed: decoding, resampling, filtering, epoch
checks, moving batches and writing the cache. That rate is what a GPU node's CPUs must
sustain to keep its model busy, and it can be measured on any machine.

The output has HuBERT-Base's width (768) and frame rate (50 Hz before pooling), so the
cache files weigh what a real model's would. Nothing it writes means anything: never train
or score with it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np

from sleepsound.models.backbones.pretrained import (
    FRAME_RATE_HZ,
    SAMPLE_RATE,
    _resolve_device,
    weightless_frames_per_pool,
)

NAME = "null"
FAMILY = "null"
DIM = 768
VERSION = 1  # bumped if the output's shape rules change


class NullBackbone:
    """The backbone surface (``embed``, ``dim``, ``fingerprint``, ``auto_batch_size`` ...) with no model."""

    def __init__(
        self,
        *,
        pool_seconds: float = 0.5,
        device: str = "cpu",
        dtype: str = "float32",
        layer: int = -1,
        layers: Sequence[int] | None = None,
        dim: int = DIM,
    ) -> None:
        frames_per_pool = weightless_frames_per_pool("null backbone", layer, layers, dtype, pool_seconds, FRAME_RATE_HZ)
        self.name, self.family = NAME, FAMILY
        self.device = _resolve_device(device)
        self.dtype = dtype
        self.dim = int(dim)
        self.frame_rate_hz = FRAME_RATE_HZ
        self.layer, self.layer_index, self.num_layers = -1, 0, 0
        self.layers: tuple[int, ...] = ()
        self.layer_indices: tuple[int, ...] = ()
        self.n_layers = 1
        self.pool_seconds = float(pool_seconds)
        self.frames_per_pool = frames_per_pool
        self.feature_extractor = None
        self.window_samples = None
        self.model = None
        self.on_cuda = False  # nothing runs on a device, whatever was asked
        settings = {"family": FAMILY, "version": VERSION, "dim": self.dim, "pool_seconds": self.pool_seconds}
        self.fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    def __repr__(self) -> str:
        return f"NullBackbone(dim={self.dim}, pool_seconds={self.pool_seconds}, fingerprint={self.fingerprint!r})"

    def n_output_frames(self, n_samples: int) -> int:
        """Pooled frames for segments of ``n_samples`` 16-kHz samples (50 Hz frames, as the speech models)."""
        return max(1, math.ceil(n_samples / (SAMPLE_RATE / FRAME_RATE_HZ) / self.frames_per_pool))

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """float32 [B, n_samples] -> float16 zeros [B, frames, dim]: the shape a model would return."""
        batch = np.asarray(batch)
        if batch.ndim != 2:
            raise ValueError(f"embed takes a [batch, samples] array, got shape {batch.shape}")
        return np.zeros((batch.shape[0], self.n_output_frames(batch.shape[1]), self.dim), dtype=np.float16)

    def auto_batch_size(self, n_samples: int, memory_fraction: float = 0.7, cap: int = 256, cpu_batch: int = 8) -> int:
        """No memory to size against: the cap."""
        return cap

    def _autocast(self) -> Any:
        return nullcontext()
