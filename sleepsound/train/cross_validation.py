"""Subject-wise k-fold cross-validation of the heads, from the embedding cache alone.

With a few dozen subjects one 80/20 split leaves a handful of test subjects and a noisy
figure; k folds test every subject once. Folds are whole subjects (seeded permutation cut
into k near-equal parts), each fold's heads train on the other folds (shifted windows
included, as in a run) and predict the fold's epochs. Nothing is registered: the result is
per-fold metrics, their mean and SD, and metrics pooled over all folds' predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sleepsound.core.config import Config
from sleepsound.core.storage import RootLike
from sleepsound.ingest.manifest import labelled_manifest
from sleepsound.labels.targets import PRIMARY, TARGETS
from sleepsound.report.metrics import evaluate, majority_class
from sleepsound.train.dataset import EmbeddedEpochs, load_embedded, model_inputs
from sleepsound.train.fit import NotTrainable, fit_target
from sleepsound.train.loop import predict_proba


def kfold_subjects(subjects: list[str], k: int, seed: int = 0) -> list[list[str]]:
    """Test subjects of each fold: a seeded permutation of the sorted ids cut into ``k`` parts."""
    unique = sorted({str(s) for s in subjects})
    if not 2 <= k <= len(unique):
        raise ValueError(f"k-fold needs 2 <= k <= subjects; got k={k} with {len(unique)} labelled subjects")
    order = np.random.default_rng(seed).permutation(len(unique))
    return [sorted(unique[i] for i in part) for part in np.array_split(order, k)]


def score_split(
    root: RootLike, cfg: Config, labelled: pd.DataFrame, test_subjects: list[str], targets: list[str]
) -> dict[str, dict[str, Any]]:
    """Train each task's head on every labelled subject not in ``test_subjects`` and predict the
    test subjects' scored epochs: ``{target: {"true", "pred", "metrics"}}`` or ``{target: {"skipped"}}``."""
    subject = labelled["subject_id"].astype(str)
    train_data = load_embedded(root, cfg, labelled[~subject.isin(test_subjects)], shifted=cfg.training.shift_augment)
    test_data = load_embedded(root, cfg, labelled[subject.isin(test_subjects)])
    x, mask = model_inputs(train_data, cfg.training.context_epochs)
    tx, tmask = model_inputs(test_data, cfg.training.context_epochs)
    out: dict[str, dict[str, Any]] = {}
    for name in targets:
        target = TARGETS[name]
        if target.frames:
            out[name] = _score_frames(root, cfg, labelled, train_data, test_data)
            continue
        try:
            result, y, _ = fit_target(cfg, target, train_data, x, mask)
        except NotTrainable as exc:
            out[name] = {"skipped": str(exc)}
            continue
        truth = test_data.epochs.get(target.column, pd.Series([None] * len(test_data.epochs)))
        scored = truth.isin(target.classes).to_numpy()
        if not scored.any():
            out[name] = {"skipped": "no scored test epochs"}
            continue
        probs = predict_proba(result.model, tx[scored], mask=None if tmask is None else tmask[scored])
        pred = [target.classes[i] for i in probs.argmax(axis=1)]
        true = truth[scored].astype(str).tolist()
        majority = majority_class([target.classes[i] for i in y], target.classes)
        out[name] = {
            "true": true,
            "pred": pred,
            "metrics": evaluate(true, pred, target.classes, majority),
            "train_epochs": len(y),
        }
    return out


def _score_frames(
    root: RootLike, cfg: Config, labelled: pd.DataFrame, train_data: EmbeddedEpochs, test_data: EmbeddedEpochs
) -> dict[str, Any]:
    """The per-second snoring head's fold: trained on the training side (with the run's clip epochs,
    ``training.snore_clips``), every labelled test frame scored."""
    from sleepsound.train.clip_epochs import ClipSourceError, snore_clip_frames
    from sleepsound.train.frames import CUT, fit_frames, frame_labels, frame_probs, manifest_lookup

    rows = manifest_lookup(labelled)
    n_epochs = int((~train_data.is_shifted).sum())
    try:
        result, y, _ = fit_frames(cfg, train_data, rows, extra=lambda: snore_clip_frames(root, cfg, n_epochs))
    except ClipSourceError:
        raise
    except ValueError as exc:
        return {"skipped": f"snore: {exc}"}
    ty = frame_labels(test_data, rows, cfg.preprocess.epoch_seconds)
    known = ty >= 0
    if not known.any():
        return {"skipped": "no labelled test frames"}
    called = frame_probs(result.model, test_data.features)[known] > CUT
    classes = TARGETS["snore"].classes
    true = [classes[int(v)] for v in ty[known]]
    pred = [classes[int(v)] for v in called]
    majority = majority_class([classes[int(v)] for v in y[y >= 0]], classes)
    return {"true": true, "pred": pred, "metrics": evaluate(true, pred, classes, majority), "train_epochs": len(y)}


def cross_validate(root: RootLike, cfg: Config, manifest: pd.DataFrame, k: int = 5) -> dict[str, Any]:
    """Train and test each configured target k times; returns per-fold and pooled figures."""
    labelled = labelled_manifest(manifest)
    folds = kfold_subjects(list(labelled["subject_id"].astype(str)), k, cfg.training.seed)
    targets = [PRIMARY, *(t for t in cfg.training.targets if t != PRIMARY)]
    pooled: dict[str, tuple[list[str], list[str]]] = {t: ([], []) for t in targets}
    per_fold: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
    skipped: dict[str, list[str]] = {t: [] for t in targets}
    for n, test_subjects in enumerate(folds):
        for name, got in score_split(root, cfg, labelled, test_subjects, targets).items():
            if "skipped" in got:
                skipped[name].append(f"fold {n}: {got['skipped']}")
                continue
            per_fold[name].append({"fold": n, "test_subjects": test_subjects, **_brief(got["metrics"])})
            pooled[name][0].extend(got["true"])
            pooled[name][1].extend(got["pred"])
    out: dict[str, Any] = {"k": k, "seed": cfg.training.seed, "fold_subjects": folds, "tasks": {}}
    for name in targets:
        if not per_fold[name]:
            out["tasks"][name] = {"skipped": skipped[name]}
            continue
        f1 = np.array([f["macro_f1"] for f in per_fold[name]])
        acc = np.array([f["accuracy"] for f in per_fold[name]])
        out["tasks"][name] = {
            "per_fold": per_fold[name],
            "skipped": skipped[name],
            "macro_f1_mean": float(f1.mean()),
            "macro_f1_sd": float(f1.std(ddof=1)) if len(f1) > 1 else 0.0,
            "accuracy_mean": float(acc.mean()),
            "accuracy_sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "pooled": evaluate(*pooled[name], TARGETS[name].classes),
        }
    return out


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("n_epochs", "accuracy", "macro_f1", "kappa", "baseline_accuracy", "baseline_macro_f1")
    return {k: metrics[k] for k in keys if k in metrics}
