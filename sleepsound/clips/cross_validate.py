"""Blocked cross-validation of the whole clip-training procedure: every clip scored by a model
that never saw its source recording.

Why: one held-out split of a small clip set holds out only a few source recordings (two per
label on the shared Khan half), so its accuracy moves by several points with which ones they
are. Here the blocks of each label are dealt into ``k`` outer folds (as in validation); for
each fold the full procedure of ``clips train`` (blocked inner validation to choose head,
layers, learning rate and epochs, then the refit) runs on the other folds only, and the fold is
predicted once. The pooled figures cover every clip; the interval resamples whole blocks,
because clips of one block are not independent. Embeddings are computed once for all folds:
the backbone is frozen, so a fold's features do not depend on its training side.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sleepsound.clips.categories import categorise, find_categories, per_category
from sleepsound.clips.dataset import ClipDataset
from sleepsound.clips.features import layer_names
from sleepsound.clips.split import block_folds, blocks_of, group_by_label
from sleepsound.clips.train import (
    GENERATED,
    ClipTrainSettings,
    check_folds,
    check_output_folder,
    decide,
    embed_all,
    extra_rows,
    indices_of,
    load_extra,
    load_labelled,
    resolved_hard_negatives,
    select_and_fit,
    tied_rows,
    untied,
    validation_folds,
    with_backbone_layers,
    with_extra,
)
from sleepsound.report.metrics import bootstrap_ci, confusion_accuracy, confusion_macro_f1, evaluate


def block_ids(ds: ClipDataset, block_size: int) -> list[str]:
    """Each clip's block, as ``label/number`` in recording order (the unit the interval resamples)."""
    out: dict[str, str] = {}
    for label, files in group_by_label(ds.files, ds.labels).items():
        blocks, _ = blocks_of(files, block_size)
        for number, block in enumerate(blocks):
            out.update(dict.fromkeys(block, f"{label}/{number}"))
    return [out[f] for f in ds.files]


def _accuracy(truth: list[Any], pred: list[Any]) -> float:
    return float(np.mean(np.asarray(truth) == np.asarray(pred))) if truth else float("nan")


def cross_validate_clips(
    data: str | Path,
    settings: ClipTrainSettings | None = None,
    k: int = 10,
    progress: Callable[[str], None] | None = None,
    categories: str | Path | None = None,
    positive: str | None = None,
) -> dict[str, Any]:
    """Pooled accuracy, macro-F1, confusion and per-class figures over ``k`` blocked outer folds,
    with 95% block-bootstrap intervals, each fold's figures and choice, the weakest blocks, and every
    source category's figures (``categories``: a mapping file, else ``categories.csv`` in ``data``,
    else the blocks) led by the worst; ``positive`` (when it is a class) adds each category's share
    called positive, the worst false-alarm rate and the worst recall."""
    settings = settings or ClipTrainSettings()
    say = progress or (lambda _msg: None)
    check_folds(k, "--k")
    if settings.cache_dir:
        check_output_folder(settings.cache_dir, "--cache")
    settings = with_backbone_layers(settings)  # a backbone or device that cannot load: refused before the clips
    with resolved_hard_negatives(data, settings, say) as (resolved, made):
        result = _cross_validate(data, resolved, k, say, categories, positive)
    if made is not None:
        result["hard_negatives"], result["hard_negatives_generated"] = GENERATED, made
    return result


def _cross_validate(
    data: str | Path,
    settings: ClipTrainSettings,
    k: int,
    say: Callable[[str], None],
    categories: str | Path | None,
    positive: str | None,
) -> dict[str, Any]:
    started = time.perf_counter()
    ds = load_labelled(data, settings)
    warnings = positive_warnings(positive, ds.classes)
    ranges, category_source = find_categories(data, categories)
    outer = block_folds(group_by_label(ds.files, ds.labels), block_size=settings.block_size, k=k, seed=settings.seed)
    extra = load_extra(settings, ds)
    spec, emb = embed_all(ds, settings, extra)
    full = with_extra(ds, extra)  # the data's rows first (same numbers), then clips added to every training side
    tied = tied_rows(full, settings.hard_negatives)  # mixes of the data's own snores: kept off their held-out folds
    say(
        f"{len(ds.files)} clips used, {len(ds.rejected)} rejected; {k} outer folds of whole blocks; "
        + (f"{len(extra.files)} added to every training side; " if extra else "")
        + f"embedded in {time.perf_counter() - started:.0f} s"
    )

    predicted: list[str | None] = [None] * len(ds.files)
    probabilities: list[list[float]] = [[] for _ in ds.files]  # each clip's, from the model that never saw it
    folds = []
    for number, test_files in enumerate(outer):
        test_idx = indices_of(ds, test_files)
        train_files = sorted(set(ds.files) - set(test_files))
        fitted = select_and_fit(
            emb,
            full,
            untied(indices_of(full, train_files + extra_rows(full)), test_idx, tied),
            validation_folds(full, train_files, settings),  # the data's training blocks only
            spec,
            settings,
            tied=tied,
        )
        proba = fitted.proba(emb[test_idx], ds.lengths[test_idx])
        names = [ds.classes[c] for c in decide(proba, fitted.decision)]
        for i, name, row in zip(test_idx, names, proba, strict=True):
            predicted[int(i)] = name
            probabilities[int(i)] = [round(float(v), 5) for v in row]
        truth = [ds.labels[i] for i in test_idx]
        folds.append(
            {
                "fold": number,
                "n": len(test_idx),
                "accuracy": _accuracy(truth, names),
                "chosen": {
                    "head": fitted.best.head,
                    "layers": layer_names(spec.layers, fitted.best.pick),
                    "pool_seconds": fitted.spec.pool_seconds,
                    "lr": fitted.best.lr,
                    "c": fitted.best.c,
                    "epochs": fitted.best.best_epoch + 1,
                    "threshold": None if fitted.decision is None else fitted.decision["threshold"],
                },
            }
        )
        say(f"fold {number + 1}/{k}: {len(test_idx)} clips, accuracy {folds[-1]['accuracy']:.4f}")

    pred = [p for p in predicted if p is not None]
    assert len(pred) == len(ds.files), "every clip lies in exactly one outer fold"
    groups = block_ids(ds, settings.block_size)
    metrics = evaluate(ds.labels, pred, ds.classes)  # baseline: the majority of all clips (each held out once)
    acc_ci = bootstrap_ci(ds.labels, pred, groups, confusion_accuracy, ds.classes, seed=settings.seed)
    f1_ci = bootstrap_ci(ds.labels, pred, groups, confusion_macro_f1, ds.classes, seed=settings.seed)
    by_block: dict[str, list[bool]] = {}
    for g, t, p in zip(groups, ds.labels, pred, strict=True):
        by_block.setdefault(g, []).append(t == p)
    weakest = sorted(
        ({"block": g, "n": len(hits), "accuracy": float(np.mean(hits))} for g, hits in by_block.items()),
        key=lambda b: (b["accuracy"], b["block"]),
    )[:5]
    cats = categorise(ds.files, ds.labels, ranges, settings.block_size)
    by_category = per_category(ds.labels, pred, cats, ds.classes, positive if positive in ds.classes else None)
    return {
        "kind": "blocked cross-validation",
        "k": k,
        "inner_folds": settings.folds,
        "block_size": settings.block_size,
        "seed": settings.seed,
        "backbone": settings.backbone,
        "hard_negatives": settings.hard_negatives,
        "added_to_training": len(extra.files) if extra else 0,
        "n": len(pred),
        "n_blocks": len(by_block),
        # the worst source category first: a pooled mean hides the one sound type not learnt
        **{key: by_category[key] for key in ("worst_false_alarm", "worst_recall") if key in by_category},
        "worst_category": by_category["worst_category"],
        **{
            key: metrics[key]
            for key in ("accuracy", "macro_f1", "kappa", "classes", "confusion", "per_class", "baseline_accuracy")
        },
        "ci95": {"accuracy": list(acc_ci), "macro_f1": list(f1_ci), "resampled": "blocks"},
        "folds": folds,
        "weakest_blocks": weakest,
        "category_source": category_source,
        "positive": by_category.get("positive"),
        "categories": by_category["categories"],
        "target_recall": settings.target_recall,
        # every clip's out-of-fold probabilities: other thresholds can be studied without retraining
        "clips": [
            {"file": f, "label": t, "predicted": p, "probabilities": dict(zip(ds.classes, q, strict=True))}
            for f, t, p, q in zip(ds.files, ds.labels, pred, probabilities, strict=True)
        ],
        "counts": ds.counts(),
        "rejected": [r.as_dict() for r in ds.rejected],
        "warnings": warnings,
        "seconds": round(time.perf_counter() - started, 1),
    }


def positive_warnings(positive: str | None, classes: tuple[str, ...]) -> list[str]:
    """A warning when ``positive`` is given but is none of ``classes``: the per-category alarm and recall
    figures are then left out, which used to happen without a word (a name differing only in case, say)."""
    if positive is None or positive in classes:
        return []
    return [
        f"--positive {positive!r} is none of the classes {', '.join(classes)}: no false-alarm or recall "
        "figures per category, only each category's accuracy"
    ]
