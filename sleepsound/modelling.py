"""Train the staging head on training subjects and predict every accepted recording.

Training reads only cached embeddings, so retraining takes minutes. The split is by
subject (never by epoch) and recorded with the model, together with what produced the
features, so a model can always be traced back to its data. Training adds the cached 15-s
shifted windows of the training subjects (``training.shift_augment``); prediction and
metrics use the epochs only.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sleepsound import __version__, schemas
from sleepsound.config import Config
from sleepsound.dataset import EmbeddedEpochs, load_embedded
from sleepsound.embedding import backbone_key, channel_configs
from sleepsound.heads.attention import build_context
from sleepsound.heads.io import load_head, save_head
from sleepsound.heads.layers import layer_weights
from sleepsound.labels import STAGES_3
from sleepsound.storage import join, open_root, write_json, write_table
from sleepsound.training import TrainConfig, predict_proba, split_by_subject, train_head

TASK = "stage3"


def _inputs(data: EmbeddedEpochs, context: int) -> tuple[np.ndarray, np.ndarray | None]:
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
        return build_context(data.features, data.epochs["recording_id"].to_numpy(),
                             data.epochs["epoch_index"].to_numpy(), context)
    n, t = data.features.shape[:2]
    x = np.zeros((n, context * t, *data.features.shape[2:]), dtype=data.features.dtype)
    mask = np.zeros((n, context * t), dtype=bool)
    for part in (~shifted, shifted):
        rows = data.epochs[part]
        x[part], mask[part] = build_context(data.features[part], rows["recording_id"].to_numpy(),
                                            rows["epoch_index"].to_numpy(), context)
    return x, mask


def labelled_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest[(manifest["status"] == "accepted") & (manifest["label_source"] != "none")]


def train_stage_model(root: str, cfg: Config, run_id: str, manifest: pd.DataFrame) -> dict[str, Any]:
    """Split subjects, train on the training side, save the head with its lineage.

    With several backbone layers (4-D features) the head learns their weighting; the
    softmaxed weights, one per entry of ``backbone.layers``, go into lineage.json and the
    head config's ``extra`` as ``layer_weights`` (beside ``layers``), so users see which
    layers the model relies on.
    """
    labelled = labelled_manifest(manifest)
    subjects = sorted(labelled["subject_id"].unique())
    if len(subjects) < 2:
        raise ValueError(f"training needs labelled nights from at least 2 subjects; found {len(subjects)}")
    train_subjects, test_subjects = split_by_subject(subjects, cfg.training.test_fraction, cfg.training.seed)
    train_rows = labelled[labelled["subject_id"].isin(train_subjects)]
    data = load_embedded(root, cfg, train_rows, shifted=cfg.training.shift_augment)
    leaked = set(data.epochs["subject_id"].astype(str)) - set(map(str, train_subjects))
    if leaked:  # the split is by subject: nothing of a test subject, shifted windows included
        raise RuntimeError(f"training rows of non-training subjects {sorted(leaked)[:3]}")
    keep = data.epochs["stage3"].isin(STAGES_3).to_numpy()
    n_shifted = int((keep & data.is_shifted).sum())
    x, mask = _inputs(data, cfg.training.context_epochs)
    y = np.array([STAGES_3.index(s) for s in data.epochs["stage3"][keep]])
    tcfg = TrainConfig(lr=cfg.training.lr, min_lr=cfg.training.min_lr, epochs=cfg.training.epochs,
                       batch_size=cfg.training.batch_size, seed=cfg.training.seed)
    result = train_head(x[keep], y, tcfg, head=cfg.training.head, context=cfg.training.context_epochs,
                        mask=None if mask is None else mask[keep])
    lineage = {
        "run_id": run_id, "code_version": __version__, "config_hash": cfg.fingerprint(),
        "manifest_hash": hashlib.sha256(json.dumps(sorted(labelled["sha256"])).encode()).hexdigest()[:16],
        "embedding_cache": [f"{backbone_key(c.backbone)}/{c.preprocess.fingerprint()}" for c in channel_configs(cfg)],
        "train_subjects": train_subjects, "test_subjects": test_subjects,
        "train_epochs": int(keep.sum()) - n_shifted, "train_shifted": n_shifted,
        "class_counts": np.bincount(y, minlength=3).tolist(),
    }
    mixed = layer_weights(result.model)
    layer_info = {} if mixed is None else {"layers": list(cfg.backbone.layers), "layer_weights": mixed}
    lineage.update(layer_info)
    version = f"{run_id}-{hashlib.sha256(json.dumps(lineage, sort_keys=True).encode()).hexdigest()[:8]}"
    fs, root_path = open_root(root)
    model_dir = join(root_path, "models", TASK, version)
    save_head(result.model, fs, model_dir, extra=layer_info)
    write_json(fs, join(model_dir, "lineage.json"), {**lineage, "history": result.history})
    return {"model_dir": model_dir, "version": version, "train_subjects": train_subjects,
            "test_subjects": test_subjects, "train_epochs": int(keep.sum()) - n_shifted, "train_shifted": n_shifted}


def predict_recordings(root: str, cfg: Config, run_id: str, model: dict[str, Any],
                       manifest: pd.DataFrame) -> str:
    """Per-epoch predictions for every accepted recording, one Parquet file per recording."""
    fs, root_path = open_root(root)
    head = load_head(fs, model["model_dir"])
    out_dir = join(root_path, "runs", run_id, "predictions")
    accepted = manifest[manifest["status"] == "accepted"]
    for row in accepted.itertuples(index=False):
        split = ("unlabelled" if row.label_source == "none"
                 else "train" if row.subject_id in model["train_subjects"] else "test")
        data = load_embedded(root, cfg, accepted[accepted["recording_id"] == row.recording_id])
        epochs = _all_epochs(root, cfg, row.recording_id)
        table = _prediction_table(head, data, epochs, cfg, split, model["version"])
        # Hive partitioning: the folder name carries recording_id, so the file must not.
        write_table(fs, join(out_dir, f"recording_id={row.recording_id}", "part-0.parquet"),
                    table.drop_columns(["recording_id"]))
    return out_dir


def _all_epochs(root: str, cfg: Config, recording_id: str) -> list[dict[str, Any]]:
    from sleepsound.embedding import epochs_path
    from sleepsound.storage import read_table

    fs, root_path = open_root(root)
    # With two channels the epoch list is the first channel's; only windows valid in both have features.
    return read_table(fs, epochs_path(root_path, channel_configs(cfg)[0], recording_id)).to_pylist()


def _prediction_table(head: Any, data: EmbeddedEpochs, epochs: list[dict[str, Any]], cfg: Config,
                      split: str, version: str) -> pa.Table:
    probs: dict[int, np.ndarray] = {}
    if len(data.features):
        x, mask = _inputs(data, cfg.training.context_epochs)
        p = predict_proba(head, x, mask=mask)
        probs = dict(zip(data.epochs["epoch_index"].astype(int), p, strict=True))
    rows = []
    for e in epochs:
        pr = probs.get(int(e["epoch_index"]))
        rows.append({
            "recording_id": e["recording_id"], "subject_id": e["subject_id"], "epoch_index": e["epoch_index"],
            "start_s": e["start_s"], "stage_true": e["stage3"],
            "stage_pred": None if pr is None else STAGES_3[int(np.argmax(pr))],
            "prob_wake": None if pr is None else float(pr[0]), "prob_nrem": None if pr is None else float(pr[1]),
            "prob_rem": None if pr is None else float(pr[2]), "split": split, "model_version": version,
        })
    return pa.Table.from_pylist(rows, schema=schemas.PREDICTIONS)
