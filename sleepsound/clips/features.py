"""Clip embeddings: one backbone pass, then the layer choice and pooling the head was trained on.

The backbone runs once per clip with every candidate layer kept (``layers``) and frames
mean-pooled to ``base_pool_seconds``; coarser pooling (``pool_factor`` x base) and the
layer pick are cheap numpy steps on top. Training selects among these by validation, and
prediction replays exactly the same steps from the saved :class:`FeatureSpec`, so the
head sees identically computed inputs either way.

The embeddings of a clip set can be cached as ``.npy`` (``read_cached_embeddings``), checked
when read: a truncated or altered file is moved to ``quarantine/`` beside it, named in a
warning, and embedded again instead of failing every rerun.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sleepsound.clips.dataset import FRAME_SAMPLES
from sleepsound.core.storage import values_digest
from sleepsound.models.backbones.pretrained import Backbone, load_backbone

log = logging.getLogger(__name__)


@dataclass
class FeatureSpec:
    """How clip audio becomes head input; saved in the model's config (``extra.features``)."""

    backbone: str
    layers: list[int]  # hidden states the backbone keeps (its ``layers`` argument)
    base_pool_seconds: float = 0.1  # the backbone's own pooling
    pick: list[int] = field(default_factory=list)  # positions into ``layers`` fed to the head (>1: a learned mix)
    pool_factor: int = 1  # further mean pooling, in base pools

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(
            backbone=str(data["backbone"]),
            layers=[int(k) for k in data["layers"]],
            base_pool_seconds=float(data["base_pool_seconds"]),
            pick=[int(k) for k in data["pick"]],
            pool_factor=int(data["pool_factor"]),
        )

    @property
    def pool_seconds(self) -> float:
        return self.base_pool_seconds * self.pool_factor


def default_layers(name: str, device: str = "cpu") -> list[int]:
    """Every transformer layer's output: 1 .. num_layers - 1 and -1 (the normed last one)."""
    probe = load_backbone(name, device=device)
    return [*range(1, int(getattr(probe, "num_layers", 1))), -1]


def load_clip_backbone(spec: FeatureSpec, device: str = "cpu") -> Backbone:
    """The frozen backbone with the spec's layers and base pooling."""
    return load_backbone(
        spec.backbone,
        layers=spec.layers if len(spec.layers) > 1 else None,
        layer=spec.layers[0] if len(spec.layers) == 1 else -1,
        pool_seconds=spec.base_pool_seconds,
        device=device,
    )


def default_batch(backbone: Backbone) -> int:
    """Clips per forward pass: 1 on a CPU, 16 on a GPU. Whisper pads every clip to its 30-s
    window, so each clip's attention is already large; on 2 CPU cores batches of 8 embedded
    about 40% slower than one clip at a time, with more memory (`sleepsound bench clips`)."""
    return 16 if backbone.on_cuda else 1


def embed_audio(
    backbone: Backbone,
    audio: np.ndarray,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """float16 [N, T, L, D] for fixed-length clips [N, S] (L = 1 for a single-layer backbone)."""
    batch_size = batch_size or default_batch(backbone)
    parts = []
    for start in range(0, len(audio), batch_size):
        out = backbone.embed(np.ascontiguousarray(audio[start : start + batch_size], dtype=np.float32))
        parts.append(out if out.ndim == 4 else out[:, :, None, :])
        if progress is not None:
            progress(min(start + batch_size, len(audio)), len(audio))
    if not parts:
        t = backbone.n_output_frames(audio.shape[1])
        return np.zeros((0, t, max(1, len(getattr(backbone, "layers", ()))), backbone.dim), dtype=np.float16)
    return np.concatenate(parts)


def real_mask(lengths: np.ndarray, n_frames: int, samples_per_frame: int) -> np.ndarray:
    """bool [N, n_frames]: frames holding at least one real (unpadded) sample."""
    real = np.ceil(np.asarray(lengths) / samples_per_frame).astype(np.int64)
    return np.arange(n_frames)[None, :] < np.maximum(real, 1)[:, None]


def head_input(emb: np.ndarray, lengths: np.ndarray, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """(x, mask) for the head: picked layers ([N, T, D] for one, [N, T, L, D] for several), pooled."""
    picked = emb[:, :, spec.pick, :] if len(spec.pick) > 1 else emb[:, :, spec.pick[0], :]
    f = int(spec.pool_factor)
    n, t = picked.shape[:2]
    if f > 1:
        groups = math.ceil(t / f)
        pad = [(0, 0), (0, groups * f - t)] + [(0, 0)] * (picked.ndim - 2)
        summed = np.pad(picked.astype(np.float32), pad).reshape(n, groups, f, *picked.shape[2:]).sum(axis=2)
        counts = np.full(groups, float(f), dtype=np.float32)
        counts[-1] = t - (groups - 1) * f
        picked = (summed / counts.reshape(1, groups, *([1] * (picked.ndim - 2)))).astype(np.float16)
    base_samples = int(round(spec.base_pool_seconds * 16_000))
    samples_per_frame = max(FRAME_SAMPLES, base_samples) * f
    return np.ascontiguousarray(picked), real_mask(lengths, picked.shape[1], samples_per_frame)


def layer_names(layers: Sequence[int], pick: Sequence[int]) -> list[int]:
    """The backbone layer numbers a pick refers to."""
    return [int(layers[i]) for i in pick]


def _checksum_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def write_cached_embeddings(path: Path, emb: np.ndarray) -> None:
    """Save ``emb`` as ``.npy`` aside then rename it into place, its SHA-256 beside it (checked on read).

    The checksum file goes first, so a crash between the two leaves a checksum without its
    array (ignored) rather than an array whose check was never recorded.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    checksum = _checksum_path(path)
    tmp = checksum.with_name(f".{checksum.name}.tmp")
    tmp.write_text(values_digest(emb))
    tmp.replace(checksum)
    tmp = path.with_name(f".{path.stem}.tmp.npy")
    np.save(tmp, emb, allow_pickle=False)
    tmp.replace(path)


def read_cached_embeddings(path: Path, n_clips: int) -> np.ndarray | None:
    """The cached embeddings [N, T, L, D] at ``path``, or None when absent or bad.

    Checked: numpy reads the whole array its header announces (a truncated file fails), it
    holds float16 [n_clips, T, L, D], and its values match the SHA-256 recorded at write
    (caches written before the checksum skip that check; hashing costs about 0.5 s a GB,
    small beside the embedding pass it saves). A bad file is quarantined (``quarantine_cached``).
    """
    if not path.exists():
        return None
    try:
        emb = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        quarantine_cached(path, f"unreadable ({type(exc).__name__}: {exc})")
        return None
    if emb.dtype != np.float16 or emb.ndim != 4 or len(emb) != n_clips:
        quarantine_cached(path, f"holds {emb.dtype} {list(emb.shape)}, not float16 embeddings of {n_clips} clips")
        return None
    checksum = _checksum_path(path)
    recorded = checksum.read_text().strip() if checksum.exists() else None
    if recorded and values_digest(emb) != recorded:
        quarantine_cached(path, "its values differ from the checksum recorded when it was written")
        return None
    return emb


def quarantine_cached(path: Path, problem: str) -> Path:
    """Move a bad cache file (and its checksum) to ``quarantine/`` beside it, with a JSON reason, and
    warn naming the file and the problem; returns where it went."""
    folder = path.parent / "quarantine"
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / path.name
    os.replace(path, dest)
    checksum = _checksum_path(path)
    if checksum.exists():
        os.replace(checksum, _checksum_path(dest))
    reason = {"path": str(path), "problem": problem, "quarantined_at": _dt.datetime.now(_dt.UTC).isoformat()}
    dest.with_name(dest.name + ".reason.json").write_text(json.dumps(reason, indent=2))
    log.warning("clip embedding cache %s: %s; moved to %s, embedding again", path, problem, dest)
    return dest
