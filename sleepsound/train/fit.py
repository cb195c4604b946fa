"""Train one head per target on the training subjects and register each under the storage root.

Training reads only cached embeddings, so retraining takes minutes. One subject split
(never by epoch) serves every target (sleepsound.labels.targets: 3-class and 5-class staging,
the respiratory label) and is recorded with each model, together with what produced the
features, so a model can always be traced back to its data. Training adds the cached 15-s
shifted windows of the training subjects (``training.shift_augment``); prediction and
metrics use the epochs only. With enough training subjects some are held back as
validation subjects that pick the best training epoch (early stopping).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from sleepsound import __version__
from sleepsound.core.config import Config
from sleepsound.core.progress import Progress, quiet
from sleepsound.core.records import HeadInfo, TrainedModels
from sleepsound.core.storage import RootLike, join, open_root, write_json
from sleepsound.embed.cache import backbone_key, channel_configs
from sleepsound.ingest.manifest import labelled_manifest
from sleepsound.labels.targets import PRIMARY, TARGETS, Target
from sleepsound.models.heads.artifacts import save_head
from sleepsound.models.heads.layers import layer_weights
from sleepsound.registry.evaluation_set import evaluation_subjects
from sleepsound.train.dataset import EmbeddedEpochs, load_embedded, model_inputs
from sleepsound.train.loop import TrainConfig, TrainResult, split_by_subject, train_head

# Fewer training subjects than this: no validation subjects (each one is too dear to lose).
MIN_SUBJECTS_FOR_VALIDATION = 5


class NotTrainable(ValueError):
    """A target whose labels do not allow a head on this training side (the run says why)."""


def subject_split(cfg: Config, manifest: pd.DataFrame, test_subjects: list[str] | None = None) -> dict[str, list[str]]:
    """Train / validation / test subjects of the labelled nights, seeded (the same for every target).

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


def train_models(
    root: RootLike,
    cfg: Config,
    run_id: str,
    manifest: pd.DataFrame,
    progress: Progress = quiet,
    test_subjects: list[str] | None = None,
) -> TrainedModels:
    """Every configured task's head on one split; the primary (stage3) head's facts at the top level.

    ``test_subjects``: these subjects are the test side instead of the root's evaluation set (the
    transfer evaluation holds out whole generator styles, not a draw of subjects).

    Returns ``{model_dir, version, task (the primary target), train/val/test_subjects, train_epochs, train_shifted,
    heads: {target: {...}}, skipped: {target: reason}}``: locations and counts, never weights.
    """
    labelled = labelled_manifest(manifest)
    held = test_subjects if test_subjects is not None else evaluation_subjects(root, cfg, labelled)
    split = subject_split(cfg, manifest, held)
    train_rows = labelled[labelled["subject_id"].astype(str).isin(split["train_subjects"])]
    data = load_embedded(root, cfg, train_rows, shifted=cfg.training.shift_augment)
    leaked = set(data.epochs["subject_id"].astype(str)) - set(split["train_subjects"])
    if leaked:  # the split is by subject: nothing of a test subject, shifted windows included
        raise RuntimeError(f"training rows of non-training subjects {sorted(leaked)[:3]}")
    x, mask = model_inputs(data, cfg.training.context_epochs)
    val = None
    if split["val_subjects"]:
        val_data = load_embedded(root, cfg, labelled[labelled["subject_id"].astype(str).isin(split["val_subjects"])])
        val = (val_data, *model_inputs(val_data, cfg.training.context_epochs))
    targets = [PRIMARY, *(t for t in cfg.training.targets if t != PRIMARY)]
    heads, skipped = {}, {}
    for name in targets:
        try:
            if TARGETS[name].frames:
                heads[name] = _train_frames(root, cfg, run_id, labelled, split, TARGETS[name], data, val, progress)
                continue
            heads[name] = _train_target(root, cfg, run_id, labelled, split, TARGETS[name], data, x, mask, val, progress)
        except NotTrainable as exc:
            if name == PRIMARY:
                raise
            skipped[name] = str(exc)
    primary = heads[PRIMARY]
    return {
        "model_dir": primary["model_dir"],
        "version": primary["version"],
        "task": PRIMARY,
        **split,
        "train_epochs": primary["train_epochs"],
        "train_shifted": primary["train_shifted"],
        "heads": heads,
        "skipped": skipped,
    }


def _train_target(
    root: RootLike,
    cfg: Config,
    run_id: str,
    labelled: pd.DataFrame,
    split: dict[str, list[str]],
    target: Target,
    data: EmbeddedEpochs,
    x: np.ndarray,
    mask: np.ndarray | None,
    val: tuple[EmbeddedEpochs, np.ndarray, np.ndarray | None] | None,
    progress: Progress = quiet,
) -> HeadInfo:
    """Train and save one head; NotTrainable when its labels are missing or of one class only."""
    result, y, keep = fit_target(cfg, target, data, x, mask, val, progress)
    n_shifted = int((keep & data.is_shifted).sum())
    epochs = data.epochs[~data.is_shifted]
    lineage = _lineage(cfg, run_id, labelled, split, target) | {
        "train_epochs": int(keep.sum()) - n_shifted,
        "train_shifted": n_shifted,
        "classes": list(target.classes),
        "class_counts": np.bincount(y, minlength=len(target.classes)).tolist(),
        "best_epoch": result.best_epoch,
    }
    if target.name == "resp":
        lineage.update(_event_rates(epochs))
    rates = {k: lineage[k] for k in _RATE_KEYS if k in lineage}
    model_dir, version = _save(root, cfg, run_id, target, result, lineage, extra=rates)
    return {
        "task": target.name,
        "model_dir": model_dir,
        "version": version,
        "train_epochs": lineage["train_epochs"],
        "train_shifted": n_shifted,
        "class_counts": lineage["class_counts"],
        **rates,
    }


_RATE_KEYS = ("events_per_event_epoch", "snore_share_per_snore_epoch")


def _train_frames(
    root: RootLike,
    cfg: Config,
    run_id: str,
    labelled: pd.DataFrame,
    split: dict[str, list[str]],
    target: Target,
    data: EmbeddedEpochs,
    val: tuple[EmbeddedEpochs, np.ndarray, np.ndarray | None] | None,
    progress: Progress = quiet,
) -> HeadInfo:
    """Train and save the per-frame snoring head (``train.frames``); NotTrainable without snoring frames."""
    from sleepsound.train.clip_epochs import ClipFrames, ClipSourceError, snore_clip_frames
    from sleepsound.train.frames import fit_frames, manifest_lookup

    def clip_epochs() -> ClipFrames | None:  # asked for only once the nights can train the head
        return snore_clip_frames(root, cfg, int((~data.is_shifted).sum()), progress)

    try:
        result, y, extra = fit_frames(
            cfg, data, manifest_lookup(labelled), None if val is None else val[0], progress, clip_epochs
        )
    except ClipSourceError:
        raise  # a configured clip source that cannot be read stops the run, never skips the head quietly
    except ValueError as exc:
        raise NotTrainable(f"{target.name}: {exc}") from exc
    labelled_frames = y[y >= 0]
    lineage = _lineage(cfg, run_id, labelled, split, target) | {
        "train_epochs": int((y >= 0).any(axis=1).sum()),
        "train_shifted": 0,
        "classes": list(target.classes),
        "class_counts": np.bincount(labelled_frames.astype(np.int64), minlength=2).tolist(),  # frames, not epochs
        "frame_seconds": cfg.preprocess.epoch_seconds / y.shape[1],
        "best_epoch": result.best_epoch,
        # the clip epochs beside the nights' frames (training side only): what was laid, how many frames
        "snore_clips": None if extra is None else {"epochs": len(extra.features), **extra.info},
    }
    model_dir, version = _save(
        root,
        cfg,
        run_id,
        target,
        result,
        lineage,
        extra={"frames": True},
        classes=target.classes,
        context=1,
        training={"frames": True, "frame_seconds": lineage["frame_seconds"]},
    )
    return {
        "task": target.name,
        "model_dir": model_dir,
        "version": version,
        "train_epochs": lineage["train_epochs"],
        "train_shifted": 0,
        "class_counts": lineage["class_counts"],
    }


def _lineage(
    cfg: Config, run_id: str, labelled: pd.DataFrame, split: dict[str, list[str]], target: Target
) -> dict[str, Any]:
    """What every head's lineage.json starts with: the run, code, settings, nights and split it came from."""
    return {
        "task": target.name,
        "run_id": run_id,
        "code_version": __version__,
        "config_hash": cfg.fingerprint(),
        "config": cfg.model_dump(exclude={"report"}),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "manifest_hash": hashlib.sha256(json.dumps(sorted(labelled["sha256"])).encode()).hexdigest()[:16],
        "embedding_cache": [f"{backbone_key(c.backbone)}/{c.preprocess.fingerprint()}" for c in channel_configs(cfg)],
        **split,
    }


def _save(
    root: RootLike,
    cfg: Config,
    run_id: str,
    target: Target,
    result: Any,
    lineage: dict[str, Any],
    extra: dict[str, Any],
    **head_meta: Any,
) -> tuple[str, str]:
    """Write a trained head and its lineage under a version named by the run and the lineage's digest
    (time and settings left out, so a rerun of the same run on the same nights gets the same version)."""
    mixed = layer_weights(result.model)
    layer_info = {} if mixed is None else {"layers": list(cfg.backbone.layers), "layer_weights": mixed}
    lineage.update(layer_info)
    digest = {k: v for k, v in lineage.items() if k not in ("created", "config")}
    version = f"{run_id}-{hashlib.sha256(json.dumps(digest, sort_keys=True).encode()).hexdigest()[:8]}"
    fs, root_path = open_root(root)
    model_dir = join(root_path, "models", target.name, version)
    save_head(result.model, fs, model_dir, extra={"task": target.name, **extra, **layer_info}, **head_meta)
    write_json(fs, join(model_dir, "lineage.json"), {**lineage, "history": result.history})
    return model_dir, version


def _event_rates(epochs: pd.DataFrame) -> dict[str, float]:
    """How a predicted label turns into counts: scored events per apnoea-hypopnoea epoch, and the
    snoring share of a snore epoch, on the training epochs (an epoch can hold more than one event)."""
    events = epochs["n_apnea"].fillna(0).to_numpy(float) + epochs["n_hypopnea"].fillna(0).to_numpy(float)
    is_event = (epochs["resp_label"] == "apnea_hypopnea").to_numpy()
    is_snore = (epochs["resp_label"] == "snore").to_numpy()
    return {
        "events_per_event_epoch": float(events.sum() / is_event.sum()) if is_event.any() else 1.0,
        "snore_share_per_snore_epoch": float(epochs["snore_frac"].to_numpy(float)[is_snore].mean())
        if is_snore.any()
        else 1.0,
    }


def fit_target(
    cfg: Config,
    target: Target,
    data: EmbeddedEpochs,
    x: np.ndarray,
    mask: np.ndarray | None,
    val: tuple[EmbeddedEpochs, np.ndarray, np.ndarray | None] | None = None,
    progress: Progress = quiet,
) -> tuple[TrainResult, np.ndarray, np.ndarray]:
    """One head on the rows that carry the task's labels -> (result, class indices, rows used);
    ``progress`` hears its training epochs (in this process; Ray Train workers report nothing)."""
    labels = data.epochs[target.column] if target.column in data.epochs else pd.Series([None] * len(data.epochs))
    keep = labels.isin(target.classes).to_numpy()
    present = sorted(set(labels[keep]))
    if len(present) < 2:
        raise NotTrainable(
            f"{target.name}: the training subjects' epochs carry {len(present)} of its classes "
            f"({', '.join(target.classes)}); at least 2 are needed"
        )
    y = np.array([target.classes.index(v) for v in labels[keep]])
    val_args = None
    if val is not None:
        val_data, val_x, val_mask = val
        val_labels = val_data.epochs.get(target.column, pd.Series([None] * len(val_data.epochs)))
        vk = val_labels.isin(target.classes).to_numpy()
        if vk.any():
            val_y = np.array([target.classes.index(v) for v in val_labels[vk]])
            val_args = (val_x[vk], val_y) if val_mask is None else (val_x[vk], val_y, val_mask[vk])
    tcfg = TrainConfig(
        lr=cfg.training.lr,
        min_lr=cfg.training.min_lr,
        epochs=cfg.training.epochs,
        batch_size=cfg.training.batch_size,
        seed=cfg.training.seed,
        classes=target.classes,
    )
    shape = {"head": cfg.training.head, "context": cfg.training.context_epochs}
    masked = None if mask is None else mask[keep]
    if cfg.training.ray_workers > 1:
        from sleepsound.train.distributed import train_head_ray

        result = train_head_ray(
            x[keep],
            y,
            tcfg,
            **shape,
            mask=masked,
            val=val_args,
            workers=cfg.training.ray_workers,
            use_gpu=cfg.training.ray_use_gpu,
        )
    else:
        stage = f"train {target.name}"
        progress(stage, 0, tcfg.epochs, "epochs")
        result = train_head(
            x[keep],
            y,
            tcfg,
            **shape,
            mask=masked,
            val=val_args,
            progress=lambda record: progress(stage, int(record["epoch"]) + 1, tcfg.epochs, "epochs"),
        )
        if len(result.history) < tcfg.epochs:  # stopped early: the bar ends where training did
            progress(stage, len(result.history), len(result.history), "epochs")
    return result, y, keep
