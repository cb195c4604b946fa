"""The model stage: a frozen backbone turns batches of preprocessed epochs into frame embeddings.

One ``EmbedStage`` per worker loads the backbone once; Ray Data runs it as an actor pool
(``ray_adapter``) and the one-process path calls it directly, on the same batches.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from sleepsound.core.config import BackboneConfig, PreprocessConfig
from sleepsound.embed.transport import AUDIO, EMBEDDING, fixed_size_rows, rows_array, rows_list


def resolve_device(device: str) -> str:
    """``auto`` means the GPU when there is one; never assume CUDA."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def forward_batches(rows: np.ndarray, size: int) -> list[np.ndarray]:
    """``rows`` in forward passes of ``size``, the remainder in power-of-two pieces (13 -> 8, 4, 1).

    A model worker sees batches of every length (nights end mid-block, invalid epochs drop out).
    Each new input shape costs: a torch.compile'd model recompiles, and CPU kernels keep per-shape
    buffers (one process fed random lengths 1..16 grew from 870 to 1040 MB in 40 passes; with
    power-of-two lengths it stayed at ~700 MB). At most log2(size) + 1 lengths bound both.
    """
    out: list[np.ndarray] = []
    start = 0
    while start < len(rows):
        left = len(rows) - start
        step = size if left >= size else 1 << (left.bit_length() - 1)
        out.append(rows[start : start + step])
        start += step
    return out


class EmbedStage:
    """Model stage: loads the backbone once per worker, embeds the valid rows of a batch."""

    def __init__(
        self, backbone: dict[str, Any], workers_per_node: int = 1, preprocess: dict[str, Any] | None = None
    ) -> None:
        from sleepsound.models.backbones.pretrained import load_configured

        cfg = BackboneConfig.model_validate(backbone)
        device = resolve_device(cfg.device)
        if device == "cpu":
            # Ray pins OMP_NUM_THREADS to the actor's logical CPUs (1); the model is the heavy
            # part of the pipeline, so give it the node's cores shared among its actors.
            import torch

            torch.set_num_threads(cfg.cpu_threads or max(1, (os.cpu_count() or 1) // max(1, workers_per_node)))
        self.backbone = load_configured(cfg, device)
        # preprocess.device model: the readers send raw epochs with margins; resample and filter here.
        self.prepare = None
        prep = None if preprocess is None else PreprocessConfig.model_validate(preprocess)
        if prep is not None and prep.device == "model":
            from sleepsound.embed.preprocess_torch import TorchPreprocess

            self.prepare = TorchPreprocess(prep, self.backbone.device)
        # 'auto' is sized on the first batch, from its real segment length.
        self.batch_size: int | None = None if cfg.batch_size == "auto" else int(cfg.batch_size)
        self.stream_rows = cfg.stream_rows

    def __call__(self, batch: pa.Table) -> pa.Table:
        """A transport table in (``embed.transport``), the same rows out with their embeddings
        (zeros for invalid rows) in place of the audio."""
        valid = batch["valid"].to_numpy(zero_copy_only=False) & batch["error"].is_null().to_numpy(zero_copy_only=False)
        audio = rows_array(batch[AUDIO]) if self.prepare is None else self._prepared(batch, valid)
        rows = np.flatnonzero(valid)
        if self.batch_size is None and len(rows):
            self.batch_size = self.backbone.auto_batch_size(audio.shape[1], cap=self.stream_rows)
        per_frame = (self.backbone.n_layers, self.backbone.dim) if self.backbone.layers else (self.backbone.dim,)
        # Every batch's rows have one width, invalid ones included, so batches concatenate.
        out = np.zeros((len(audio), self.backbone.n_output_frames(audio.shape[1]), *per_frame), dtype=np.float16)
        for take in forward_batches(rows, self.batch_size or 1):
            out[take] = self.backbone.embed(np.ascontiguousarray(audio[take], dtype=np.float32))
        n = len(audio)
        return (
            batch.drop_columns([AUDIO])
            .append_column(EMBEDDING, fixed_size_rows(out.reshape(n, -1)))
            .append_column("n_frames", pa.array(np.full(n, out.shape[1], dtype=np.int32)))
            .append_column("dim", pa.array(np.full(n, out.shape[-1], dtype=np.int32)))  # [B, T, D] or [B, T, L, D]
        )

    def _prepared(self, batch: pa.Table, valid: np.ndarray) -> np.ndarray:
        """Raw epochs with margins -> normalised 16-kHz epochs [rows, samples] (zeros where invalid),
        resampled and filtered on the model's device, one source rate at a time."""
        import torch

        assert self.prepare is not None
        raw, rates = rows_list(batch[AUDIO]), batch["rate"].to_numpy(zero_copy_only=False)
        out = np.zeros((len(raw), self.prepare.epoch), dtype=np.float32)
        for rate in sorted({float(r) for r, ok in zip(rates, valid, strict=True) if ok}):
            rows = np.flatnonzero(valid & (rates == rate))
            with torch.inference_mode():
                x = self.prepare(torch.from_numpy(np.stack([raw[i] for i in rows])), int(rate))
                std = x.std(dim=1, unbiased=False, keepdim=True)
                x = (x - x.mean(dim=1, keepdim=True)) / torch.where(std > 1e-8, std, torch.ones_like(std))
            out[rows] = x.cpu().numpy()
        return out
