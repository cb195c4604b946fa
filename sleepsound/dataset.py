"""Training and scoring arrays assembled from the cached embeddings and the epoch tables."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sleepsound.config import Config
from sleepsound.embedding import embeddings_path, epochs_path
from sleepsound.storage import open_root, read_table


@dataclass
class EmbeddedEpochs:
    """Valid epochs of some recordings: features [N, T, D] float16 and their epoch rows."""

    features: np.ndarray
    epochs: pd.DataFrame  # columns of schemas.EPOCHS, one row per feature row, same order


def load_embedded(root: str, cfg: Config, manifest: pd.DataFrame) -> EmbeddedEpochs:
    """Join each recording's embeddings to its epoch rows (valid epochs only)."""
    fs, root_path = open_root(root)
    features: list[np.ndarray] = []
    frames: list[pd.DataFrame] = []
    for row in manifest.itertuples(index=False):
        epochs = read_table(fs, epochs_path(root_path, cfg, row.recording_id)).to_pandas()
        emb = read_table(fs, embeddings_path(root_path, cfg, row.recording_id, row.sha256))
        if emb.num_rows == 0:
            continue
        n_frames, dim = int(emb["n_frames"][0].as_py()), int(emb["dim"][0].as_py())
        flat = emb["embedding"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        features.append(flat.reshape(emb.num_rows, n_frames, dim))
        order = pd.DataFrame({"epoch_index": emb["epoch_index"].to_numpy()})
        frames.append(order.merge(epochs, on="epoch_index", how="left"))
    if not features:
        return EmbeddedEpochs(np.zeros((0, 1, 1), dtype=np.float16), pd.DataFrame())
    return EmbeddedEpochs(np.concatenate(features), pd.concat(frames, ignore_index=True))
