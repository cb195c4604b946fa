"""Training and scoring arrays assembled from the cached embeddings and the epoch tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from sleepsound.core.config import Config
from sleepsound.core.storage import RootLike, open_root
from sleepsound.embed.cache import (
    channel_configs,
    embeddings_path,
    epochs_path,
    read_cached_table,
    shifted_path,
    wanted_shift_classes,
)
from sleepsound.labels.events import resp_labels
from sleepsound.models.heads.attention import build_context


@dataclass
class EmbeddedEpochs:
    """Valid epochs (and shifted windows) of some recordings: features [N, T, D] float16 and their rows.

    With several backbone layers in the cache (``backbone.layers``) the features are
    [N, T, L, D], the layers in the configured order.

    ``epochs`` holds the columns of schemas.EPOCHS plus ``offset_s`` (0 for an epoch, 15 for
    a shifted training window, whose ``epoch_index`` is its pair's first epoch), one row per
    feature row, same order.
    """

    features: np.ndarray
    epochs: pd.DataFrame

    @property
    def is_shifted(self) -> np.ndarray:
        if "offset_s" not in self.epochs:
            return np.zeros(len(self.epochs), dtype=bool)
        return self.epochs["offset_s"].to_numpy(dtype=float) > 0


def load_embedded(root: RootLike, cfg: Config, manifest: pd.DataFrame, shifted: bool = False) -> EmbeddedEpochs:
    """Join each recording's embeddings to its epoch rows (valid epochs only).

    ``shifted``: add the cached 15-s shifted windows of ``training.shift_classes`` (training
    only; prediction and metrics never ask for them). With ``preprocess.channel`` "both"
    each channel's embeddings are loaded and concatenated along the feature axis, keeping
    only windows present (so valid) in both. ``resp_label`` is re-derived with the current
    ``preprocess.resp_min_overlap_s`` from the stored event coverage.
    """
    parts = [_load_channel(root, c, manifest, shifted) for c in channel_configs(cfg)]
    data = parts[0] if len(parts) == 1 else _join_channels(parts)
    if "apnea_frac" in data.epochs:
        e = data.epochs
        e["resp_label"] = resp_labels(
            e["apnea_frac"],
            e["hypopnea_frac"],
            e["snore_frac"],
            e["n_apnea"],
            e["n_hypopnea"],
            cfg.preprocess.epoch_seconds,
            cfg.preprocess.resp_min_overlap_s,
        )
    return data


_SIZE_COLUMNS = ("n_frames", "dim", "n_layers", "embedding")


def _features(table: pa.Table) -> np.ndarray:
    """Embeddings [rows, frames, dim] (or [rows, frames, layers, dim]) from a cache table's
    fixed-size list column; a cache without ``n_layers`` (written before it existed) holds one layer."""
    n_frames, dim = int(table["n_frames"][0].as_py()), int(table["dim"][0].as_py())
    n_layers = int(table["n_layers"][0].as_py()) if "n_layers" in table.column_names else 1
    flat = table["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    if n_layers == 1:
        return flat.reshape(table.num_rows, n_frames, dim)
    return flat.reshape(table.num_rows, n_frames, n_layers, dim)


def _load_channel(root: RootLike, cfg: Config, manifest: pd.DataFrame, shifted: bool) -> EmbeddedEpochs:
    store = open_root(root)  # cache files are read checked: a bad one is named and quarantined
    fs, root_path = store
    features: list[np.ndarray] = []
    frames: list[pd.DataFrame] = []
    for row in manifest.itertuples(index=False):
        epochs = read_cached_table(store, epochs_path(root_path, cfg, row.recording_id)).to_pandas()
        emb = read_cached_table(store, embeddings_path(root_path, cfg, row.recording_id, row.sha256))
        if emb.num_rows:
            features.append(_features(emb))
            order = pd.DataFrame({"epoch_index": emb["epoch_index"].to_numpy()})
            frames.append(order.merge(epochs, on="epoch_index", how="left").assign(offset_s=0.0))
        for stage in wanted_shift_classes(cfg, row._asdict()) if shifted else ():
            path = shifted_path(root_path, cfg, row.recording_id, row.sha256, stage)
            if not fs.exists(path):
                raise FileNotFoundError(
                    f"{path}: shifted {stage} windows are not in the cache; "
                    "run the embed step with this configuration first"
                )
            table = read_cached_table(store, path)
            if table.num_rows:
                features.append(_features(table))
                sizes = [c for c in _SIZE_COLUMNS if c in table.column_names]
                frames.append(
                    _shifted_rows(table.drop_columns(sizes).to_pandas(), row.subject_id, cfg.preprocess.epoch_seconds)
                )
    if not features:
        return EmbeddedEpochs(np.zeros((0, 1, 1), dtype=np.float16), pd.DataFrame())
    return EmbeddedEpochs(np.concatenate(features), pd.concat(frames, ignore_index=True))


def _shifted_rows(windows: pd.DataFrame, subject_id: str, epoch_seconds: float) -> pd.DataFrame:
    """Shifted windows as epoch-like rows: valid, starting ``offset_s`` into their first epoch."""
    windows["offset_s"] = windows["offset_s"].astype(float)
    return windows.assign(
        subject_id=subject_id,
        valid=True,
        invalid_reason=None,
        start_s=windows["epoch_index"] * epoch_seconds + windows["offset_s"],
    )


def _join_channels(parts: list[EmbeddedEpochs]) -> EmbeddedEpochs:
    """Windows present in every channel, features concatenated on the last axis (rows: first channel's);
    with several layers each layer's vector is the channels' side by side."""
    if any(len(p.epochs) == 0 for p in parts):
        return EmbeddedEpochs(np.zeros((0, 1, 1), dtype=np.float16), pd.DataFrame())
    keys = [
        pd.MultiIndex.from_arrays(
            [
                p.epochs["recording_id"].astype(str).to_numpy(),
                p.epochs["epoch_index"].astype(np.int64).to_numpy(),
                p.epochs["offset_s"].astype(float).to_numpy(),
            ]
        )
        for p in parts
    ]
    common = keys[0]
    for other in keys[1:]:
        common = common[common.isin(other)]
    rows = [key.get_indexer(common) for key in keys]
    features = np.concatenate([p.features[r] for p, r in zip(parts, rows, strict=True)], axis=-1)
    return EmbeddedEpochs(features, parts[0].epochs.iloc[rows[0]].reset_index(drop=True))


def model_inputs(data: EmbeddedEpochs, context: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Model inputs (and frame mask) for the 30-s or 90-s configuration.

    With 90-s context, epochs take their neighbouring epochs and a shifted window takes
    the neighbouring shifted windows (those of pairs i - 1 and i + 1): together the same
    90 s moved by 15 s. A neighbour that is not there (the night's edges, an invalid epoch,
    a stage change or a stage without shifted windows) is zeros with its frames masked.
    """
    if context == 1:
        return data.features, None
    shifted = data.is_shifted
    if not shifted.any():
        return build_context(
            data.features, data.epochs["recording_id"].to_numpy(), data.epochs["epoch_index"].to_numpy(), context
        )
    n, t = data.features.shape[:2]
    x = np.zeros((n, context * t, *data.features.shape[2:]), dtype=data.features.dtype)
    mask = np.zeros((n, context * t), dtype=bool)
    for part in (~shifted, shifted):
        rows = data.epochs[part]
        x[part], mask[part] = build_context(
            data.features[part], rows["recording_id"].to_numpy(), rows["epoch_index"].to_numpy(), context
        )
    return x, mask
