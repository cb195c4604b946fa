"""The root's backbone and champion heads, loaded once, scoring streamed epochs like batch ``score``.

Embedding is ``embed.model_stage.EmbedStage`` on the transport table the batch readers build
(``embed.transport.to_table``); prediction is ``predict.recordings.prediction_table``, the batch
predictions' own row builder, over the epoch and its context neighbours. So a streamed epoch's
row has the batch predictions' columns and values.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sleepsound.core.config import Config
from sleepsound.core.records import TrainedModels
from sleepsound.core.storage import RootLike, open_root
from sleepsound.embed.preprocess import Epoch
from sleepsound.embed.transport import epoch_row, row_frames, table_rows, to_table
from sleepsound.labels.targets import TARGETS
from sleepsound.predict.recordings import prediction_table
from sleepsound.train.dataset import EmbeddedEpochs

SPLIT = "unlabelled"  # a bedside night has no scoring to compare with


class Scorer:
    """Loaded once per server; used from the scoring thread only (one forward pass at a time)."""

    def __init__(self, root: RootLike, cfg: Config, versions: dict[str, str] | None = None) -> None:
        from sleepsound.embed.model_stage import EmbedStage
        from sleepsound.models.heads.artifacts import load_head
        from sleepsound.registry.store import serving_models

        if cfg.preprocess.device != "cpu":
            raise ValueError("monitor serve streams with preprocess.device cpu (set --set preprocess.device=cpu)")
        if len(cfg.preprocess.channels()) != 1:
            raise ValueError("monitor serve scores one microphone: set preprocess.channel to Mic or Tracheal")
        self.cfg = cfg
        self.model: TrainedModels = serving_models(root, versions)
        fs = open_root(root).fs
        self.heads = {
            name: (TARGETS[name], load_head(fs, info["model_dir"]), info) for name, info in self.model["heads"].items()
        }
        self.stage = EmbedStage(cfg.backbone.model_dump(), preprocess=cfg.preprocess.model_dump())
        self.half_context = cfg.training.context_epochs // 2

    @property
    def channel_index(self) -> int:
        channel = self.cfg.preprocess.channels()[0]
        return int(self.cfg.preprocess.plain_channel_index[channel])  # type: ignore[index]

    def describe(self) -> dict[str, Any]:
        return {
            "backbone": self.cfg.backbone.name,
            "heads": {name: info["version"] for name, info in self.model["heads"].items()},
            "context_epochs": self.cfg.training.context_epochs,
            "epoch_seconds": self.cfg.preprocess.epoch_seconds,
        }

    def embed(self, recording_id: str, epochs: list[Epoch]) -> dict[int, np.ndarray | None]:
        """Each epoch's frame embeddings ([T, D] or [T, L, D], float16), None for an invalid one."""
        out: dict[int, np.ndarray | None] = {e.index: None for e in epochs}
        valid = [e for e in epochs if e.valid]
        if not valid:
            return out
        pre = self.cfg.preprocess
        rows = [epoch_row(recording_id, e, pre.epoch_seconds, pre.channel, float(pre.target_rate)) for e in valid]
        backbone = self.stage.backbone
        n_layers = backbone.n_layers if backbone.layers else 0
        for row in table_rows([self.stage(to_table(rows))]):
            out[int(row["epoch_index"])] = row_frames(row, n_layers)
        return out

    def predict(
        self, recording_id: str, subject_id: str, index: int, features: dict[int, np.ndarray | None]
    ) -> dict[str, Any]:
        """Epoch ``index``'s prediction row (schemas.PREDICTIONS, as a dict), from the embeddings of it
        and its context neighbours in ``features`` (None or absent: invalid or beyond the night)."""
        h = self.half_context
        window = [i for i in range(index - h, index + h + 1) if features.get(i) is not None]
        if window:
            data = EmbeddedEpochs(
                np.stack([features[i] for i in window]),  # type: ignore[misc]
                pd.DataFrame({"recording_id": recording_id, "epoch_index": window, "offset_s": 0.0}),
            )
        else:
            data = EmbeddedEpochs(np.zeros((0, 1, 1), dtype=np.float16), pd.DataFrame())
        epoch = {
            "recording_id": recording_id,
            "subject_id": subject_id,
            "epoch_index": index,
            "start_s": index * self.cfg.preprocess.epoch_seconds,
            "stage3": None,
            "stage5": None,
        }
        table = prediction_table(self.heads, data, [epoch], self.cfg, SPLIT, self.model["version"])
        return table.to_pylist()[0]
