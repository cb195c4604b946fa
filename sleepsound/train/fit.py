"""Train one head per task on training subjects and predict every accepted recording.

Training reads only cached embeddings, so retraining takes minutes. One subject split
(never by epoch) serves every task (sleepsound.labels.targets: 3-class and 5-class staging,
the respiratory label) and is recorded with each model, together with what produced the
features, so a model can always be traced back to its data. Training adds the cached 15-s
shifted windows of the training subjects (``training.shift_augment``); prediction and
metrics use the epochs only. With enough training subjects some are held back as
validation subjects that pick the best training epoch (early stopping).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sleepsound import __version__
from sleepsound.core import schemas
from sleepsound.core.config import Config
from sleepsound.train.dataset import EmbeddedEpochs, load_embedded
from sleepsound.embed.cache import backbone_key, channel_configs
from sleepsound.registry.evaluation_set import evaluation_subjects
from sleepsound.models.heads.attention import build_context
from sleepsound.models.heads.artifacts import load_head, save_head
from sleepsound.models.heads.layers import layer_weights
from sleepsound.labels.targets import PRIMARY, TASKS, LabelTask
from sleepsound.core.storage import join, open_root, write_json, write_table
from sleepsound.train.loop import TrainConfig, TrainResult, predict_with_weights, split_by_subject, train_head

# Fewer training subjects than this: no validation subjects (each one is too dear to lose).
MIN_SUBJECTS_FOR_VALIDATION = 5


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


class NotTrainable(ValueError):
    """A task whose labels do not allow a head on this training side (the run says why)."""


def subject_split(cfg: Config, manifest: pd.DataFrame, test_subjects: list[str] | None = None) -> dict[str, list[str]]:
    """Train / validation / test subjects of the labelled nights, seeded (the same for every task).

    ``test_subjects``: a fixed evaluation set (sleepsound.registry.evaluation_set) instead of a fresh draw.
    """
    labelled = labelled_manifest(manifest)
    subjects = sorted(labelled["subject_id"].astype(str).unique())
    if len(subjects) < 2:
        raise ValueError(f"training needs labelled nights from at least 2 subjects; found {len(subjects)}")
    if test_subjects is None:
        train, test = split_by_subject(subjects, cfg.training.test_fraction, cfg.training.seed)
    else:
        test = sorted(set(test_subjects) & set(subjects))
        train = sorted(set(subjects) - set(test))
    val: list[str] = []
    if cfg.training.val_fraction > 0 and len(train) >= MIN_SUBJECTS_FOR_VALIDATION:
        train, val = split_by_subject(train, cfg.training.val_fraction, cfg.training.seed + 1)
    return {"train_subjects": train, "val_subjects": val, "test_subjects": test}


def train_models(root: str, cfg: Config, run_id: str, manifest: pd.DataFrame) -> dict[str, Any]:
    """Every configured task's head on one split; the primary (stage3) head's facts at the top level.

    Returns ``{model_dir, version, task, train/val/test_subjects, train_epochs, train_shifted,
    heads: {task: {...}}, skipped: {task: reason}}``: locations and counts, never weights.
    """
    labelled = labelled_manifest(manifest)
    split = subject_split(cfg, manifest, evaluation_subjects(root, cfg, labelled))
    train_rows = labelled[labelled["subject_id"].astype(str).isin(split["train_subjects"])]
    data = load_embedded(root, cfg, train_rows, shifted=cfg.training.shift_augment)
    leaked = set(data.epochs["subject_id"].astype(str)) - set(split["train_subjects"])
    if leaked:  # the split is by subject: nothing of a test subject, shifted windows included
        raise RuntimeError(f"training rows of non-training subjects {sorted(leaked)[:3]}")
    x, mask = _inputs(data, cfg.training.context_epochs)
    val = None
    if split["val_subjects"]:
        val_data = load_embedded(root, cfg, labelled[labelled["subject_id"].astype(str).isin(split["val_subjects"])])
        val = (val_data, *_inputs(val_data, cfg.training.context_epochs))
    tasks = [PRIMARY, *(t for t in cfg.training.tasks if t != PRIMARY)]
    heads, skipped = {}, {}
    for name in tasks:
        try:
            heads[name] = _train_task(root, cfg, run_id, labelled, split, TASKS[name], data, x, mask, val)
        except NotTrainable as exc:
            if name == PRIMARY:
                raise
            skipped[name] = str(exc)
    primary = heads[PRIMARY]
    return {"model_dir": primary["model_dir"], "version": primary["version"], "task": PRIMARY, **split,
            "train_epochs": primary["train_epochs"], "train_shifted": primary["train_shifted"],
            "heads": heads, "skipped": skipped}


def _train_task(root: str, cfg: Config, run_id: str, labelled: pd.DataFrame, split: dict[str, list[str]],
                task: LabelTask, data: EmbeddedEpochs, x: np.ndarray, mask: np.ndarray | None,
                val: tuple[EmbeddedEpochs, np.ndarray, np.ndarray | None] | None) -> dict[str, Any]:
    """Train and save one head; NotTrainable when its labels are missing or of one class only."""
    result, y, keep = fit_task(cfg, task, data, x, mask, val)
    n_shifted = int((keep & data.is_shifted).sum())
    epochs = data.epochs[~data.is_shifted]
    lineage: dict[str, Any] = {
        "task": task.name, "run_id": run_id, "code_version": __version__, "config_hash": cfg.fingerprint(),
        "config": cfg.model_dump(exclude={"report"}),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "manifest_hash": hashlib.sha256(json.dumps(sorted(labelled["sha256"])).encode()).hexdigest()[:16],
        "embedding_cache": [f"{backbone_key(c.backbone)}/{c.preprocess.fingerprint()}" for c in channel_configs(cfg)],
        **split, "train_epochs": int(keep.sum()) - n_shifted, "train_shifted": n_shifted,
        "classes": list(task.classes), "class_counts": np.bincount(y, minlength=len(task.classes)).tolist(),
        "best_epoch": result.best_epoch,
    }
    if task.name == "resp":
        lineage.update(_event_rates(epochs))
    mixed = layer_weights(result.model)
    layer_info = {} if mixed is None else {"layers": list(cfg.backbone.layers), "layer_weights": mixed}
    lineage.update(layer_info)
    digest = {k: v for k, v in lineage.items() if k not in ("created", "config")}
    version = f"{run_id}-{hashlib.sha256(json.dumps(digest, sort_keys=True).encode()).hexdigest()[:8]}"
    fs, root_path = open_root(root)
    model_dir = join(root_path, "models", task.name, version)
    save_head(result.model, fs, model_dir, extra={"task": task.name, **layer_info,
                                                  **{k: lineage[k] for k in _RATE_KEYS if k in lineage}})
    write_json(fs, join(model_dir, "lineage.json"), {**lineage, "history": result.history})
    return {"task": task.name, "model_dir": model_dir, "version": version,
            "train_epochs": lineage["train_epochs"], "train_shifted": n_shifted,
            "class_counts": lineage["class_counts"], **{k: lineage[k] for k in _RATE_KEYS if k in lineage}}


_RATE_KEYS = ("events_per_event_epoch", "snore_share_per_snore_epoch")


def _event_rates(epochs: pd.DataFrame) -> dict[str, float]:
    """How a predicted label turns into counts: scored events per apnoea-hypopnoea epoch, and the
    snoring share of a snore epoch, on the training epochs (an epoch can hold more than one event)."""
    events = epochs["n_apnea"].fillna(0).to_numpy(float) + epochs["n_hypopnea"].fillna(0).to_numpy(float)
    is_event = (epochs["resp_label"] == "apnea_hypopnea").to_numpy()
    is_snore = (epochs["resp_label"] == "snore").to_numpy()
    return {"events_per_event_epoch": float(events.sum() / is_event.sum()) if is_event.any() else 1.0,
            "snore_share_per_snore_epoch": float(epochs["snore_frac"].to_numpy(float)[is_snore].mean())
            if is_snore.any() else 1.0}


def fit_task(cfg: Config, task: LabelTask, data: EmbeddedEpochs, x: np.ndarray, mask: np.ndarray | None,
             val: tuple[EmbeddedEpochs, np.ndarray, np.ndarray | None] | None = None,
             ) -> tuple[TrainResult, np.ndarray, np.ndarray]:
    """One head on the rows that carry the task's labels -> (result, class indices, rows used)."""
    labels = data.epochs[task.column] if task.column in data.epochs else pd.Series([None] * len(data.epochs))
    keep = labels.isin(task.classes).to_numpy()
    present = sorted(set(labels[keep]))
    if len(present) < 2:
        raise NotTrainable(f"{task.name}: the training subjects' epochs carry {len(present)} of its classes "
                           f"({', '.join(task.classes)}); at least 2 are needed")
    y = np.array([task.classes.index(v) for v in labels[keep]])
    val_args = None
    if val is not None:
        val_data, val_x, val_mask = val
        val_labels = val_data.epochs.get(task.column, pd.Series([None] * len(val_data.epochs)))
        vk = val_labels.isin(task.classes).to_numpy()
        if vk.any():
            val_y = np.array([task.classes.index(v) for v in val_labels[vk]])
            val_args = (val_x[vk], val_y) if val_mask is None else (val_x[vk], val_y, val_mask[vk])
    tcfg = TrainConfig(lr=cfg.training.lr, min_lr=cfg.training.min_lr, epochs=cfg.training.epochs,
                       batch_size=cfg.training.batch_size, seed=cfg.training.seed, classes=task.classes)
    if cfg.training.ray_workers > 1:
        from sleepsound.train.distributed import train_head_ray

        result = train_head_ray(x[keep], y, tcfg, head=cfg.training.head, context=cfg.training.context_epochs,
                                mask=None if mask is None else mask[keep], val=val_args,
                                workers=cfg.training.ray_workers, use_gpu=cfg.training.ray_use_gpu)
    else:
        result = train_head(x[keep], y, tcfg, head=cfg.training.head, context=cfg.training.context_epochs,
                            mask=None if mask is None else mask[keep], val=val_args)
    return result, y, keep


def predict_recordings(root: str, cfg: Config, run_id: str, model: dict[str, Any],
                       manifest: pd.DataFrame, recordings: list[str] | None = None) -> str:
    """Per-epoch predictions of every trained head for every accepted recording (or only those
    in ``recordings``), one Parquet file each."""
    fs, root_path = open_root(root)
    heads = {name: (TASKS[name], load_head(fs, info["model_dir"]), info)
             for name, info in (model.get("heads") or {PRIMARY: model}).items()}
    out_dir = join(root_path, "runs", run_id, "predictions")
    accepted = manifest[manifest["status"] == "accepted"]
    if recordings is not None:
        accepted = accepted[accepted["recording_id"].astype(str).isin(set(recordings))]
    for row in accepted.itertuples(index=False):
        split = ("unlabelled" if row.label_source == "none"
                 else "test" if str(row.subject_id) in model["test_subjects"]
                 else "validation" if str(row.subject_id) in model.get("val_subjects", []) else "train")
        data = load_embedded(root, cfg, accepted[accepted["recording_id"] == row.recording_id])
        epochs = _all_epochs(root, cfg, row.recording_id)
        table = _prediction_table(heads, data, epochs, cfg, split, model["version"])
        # Hive partitioning: the folder name carries recording_id, so the file must not.
        write_table(fs, join(out_dir, f"recording_id={row.recording_id}", "part-0.parquet"),
                    table.drop_columns(["recording_id"]))
    return out_dir


def _all_epochs(root: str, cfg: Config, recording_id: str) -> list[dict[str, Any]]:
    from sleepsound.embed.cache import epochs_path
    from sleepsound.core.storage import read_table

    fs, root_path = open_root(root)
    # With two channels the epoch list is the first channel's; only windows valid in both have features.
    return read_table(fs, epochs_path(root_path, channel_configs(cfg)[0], recording_id)).to_pylist()


def _prediction_table(heads: dict[str, tuple[LabelTask, Any, dict[str, Any]]], data: EmbeddedEpochs,
                      epochs: list[dict[str, Any]], cfg: Config, split: str, version: str) -> pa.Table:
    """One row per epoch of the night: scored labels, each head's prediction, stage3's attention."""
    outputs: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    if len(data.features):
        x, mask = _inputs(data, cfg.training.context_epochs)
        index = data.epochs["epoch_index"].astype(int).to_numpy()
        for name, (_, head, _) in heads.items():
            probs, weights = predict_with_weights(head, x, mask=mask)
            outputs[name] = {int(i): (p, w) for i, p, w in zip(index, probs, weights, strict=True)}
    labels = _scored_labels(epochs, cfg)
    rows = []
    for e, scored in zip(epochs, labels, strict=True):
        i = int(e["epoch_index"])
        row: dict[str, Any] = {
            "recording_id": e["recording_id"], "subject_id": e["subject_id"], "epoch_index": i,
            "start_s": e["start_s"], "split": split, "model_version": version, **scored}
        for name, (task, _, _) in heads.items():
            got = outputs.get(name, {}).get(i)
            row[task.pred_column] = None if got is None else task.classes[int(np.argmax(got[0]))]
            for cls, column in _PROB_COLUMNS.get(name, {}).items():
                row[column] = None if got is None else float(got[0][task.classes.index(cls)])
            if name == PRIMARY:
                row["attention"] = None if got is None else got[1].astype(np.float32).tolist()
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schemas.PREDICTIONS)


_PROB_COLUMNS = {"stage3": {"Wake": "prob_wake", "NREM": "prob_nrem", "REM": "prob_rem"},
                 "resp": {"snore": "prob_snore", "apnea_hypopnea": "prob_apnea_hypopnea"}}


def _scored_labels(epochs: list[dict[str, Any]], cfg: Config) -> list[dict[str, Any]]:
    """The scored side of each epoch: stages, respiratory label (re-derived as in training), events."""
    from sleepsound.labels.events import resp_labels
    from sleepsound.labels.vocabulary import STAGES_5

    frame = pd.DataFrame(epochs)
    has_events = "apnea_frac" in frame and frame["apnea_frac"].notna().any()
    resp = (resp_labels(frame["apnea_frac"], frame["hypopnea_frac"], frame["snore_frac"], frame["n_apnea"],
                        frame["n_hypopnea"], cfg.preprocess.epoch_seconds, cfg.preprocess.resp_min_overlap_s)
            if has_events else [None] * len(frame))
    out = []
    for e, r in zip(epochs, resp, strict=True):
        events = None if e.get("n_apnea") is None else float(e["n_apnea"] or 0) + float(e.get("n_hypopnea") or 0)
        out.append({"stage_true": e["stage3"], "stage5_true": e["stage5"] if e["stage5"] in STAGES_5 else None,
                    "resp_true": r if isinstance(r, str) else None, "events_true": events,
                    "snore_frac_true": e.get("snore_frac")})
    return out
