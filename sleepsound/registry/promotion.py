"""Champion/challenger for a training run: score both on the root's evaluation set, promote or not.

Each model is re-scored here, on the same evaluation subjects, with the features it was
trained on (the configuration stored in its lineage: a champion from another backbone is
embedded with that backbone, from the cache when it is there). The rule itself is
``model_store.promote_if_better``: the challenger must beat the champion on the declared
metric by the declared margin.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sleepsound.core.config import Config
from sleepsound.core.records import ManifestRow, PromotionDecision, TrainedModels
from sleepsound.core.storage import RootLike, join, open_root, read_json
from sleepsound.embed.cohort import embed_cohort
from sleepsound.labels.targets import TARGETS
from sleepsound.models.heads.artifacts import load_head
from sleepsound.registry import store as model_store
from sleepsound.report.metrics import evaluate
from sleepsound.train.dataset import load_embedded, model_inputs
from sleepsound.train.loop import predict_proba


def evaluate_on_subjects(
    root: RootLike, target: str, model_dir: str, manifest_rows: list[ManifestRow], subjects: list[str]
) -> dict[str, Any]:
    """``metrics.evaluate`` of one stored head on the scored epochs of ``subjects``' labelled nights."""
    fs, _ = open_root(root)
    lineage = read_json(fs, join(model_dir, model_store.LINEAGE))
    if "config" not in lineage:
        raise ValueError(f"{model_dir} predates stored configurations: it cannot be re-scored")
    cfg = Config.model_validate(lineage["config"])
    spec = TARGETS[target]
    rows = [
        r
        for r in manifest_rows
        if r["status"] == "accepted" and r["label_source"] != "none" and str(r["subject_id"]) in set(subjects)
    ]
    if not rows:
        raise ValueError(f"no labelled nights of the evaluation subjects {subjects}")
    stats = embed_cohort(rows, root, cfg, use_ray=False, shifted=False)  # cache hits unless the features differ
    if stats.failed:
        raise RuntimeError(f"evaluation nights failed to embed: {stats.failed}")
    head = load_head(fs, model_dir)
    data = load_embedded(root, cfg, pd.DataFrame(rows))
    if spec.frames:  # the per-second snoring head: every labelled frame of the evaluation nights
        from sleepsound.train.frames import CUT, frame_labels, frame_probs, manifest_lookup

        y = frame_labels(data, manifest_lookup(pd.DataFrame(rows)), cfg.preprocess.epoch_seconds)
        known = y >= 0
        called = frame_probs(head, data.features)[known] > CUT
        counts = lineage.get("class_counts") or [0] * len(spec.classes)
        return evaluate(
            [spec.classes[int(v)] for v in y[known]],
            [spec.classes[int(v)] for v in called],
            spec.classes,
            spec.classes[int(np.argmax(counts))],
        )
    x, mask = model_inputs(data, int(head.meta["context_epochs"]))
    truth = data.epochs.get(spec.column, pd.Series([None] * len(data.epochs)))
    keep = truth.isin(spec.classes).to_numpy()
    probs = predict_proba(head, x[keep], mask=None if mask is None else mask[keep])
    counts = lineage.get("class_counts") or [0] * len(spec.classes)
    return evaluate(
        truth[keep].astype(str).tolist(),
        [spec.classes[i] for i in probs.argmax(axis=1)],
        spec.classes,
        spec.classes[int(np.argmax(counts))],
    )


def decide_promotions(
    root: RootLike,
    model: TrainedModels,
    manifest_rows: list[ManifestRow],
    metric: str = "macro_f1",
    margin: float = 0.01,
) -> dict[str, PromotionDecision]:
    """For each head just trained: its score, the champion's on the same subjects, the decision."""
    _, root_path = open_root(root)
    subjects = model["test_subjects"]
    decisions = {}
    for target, head in model["heads"].items():
        evaluated = evaluate_on_subjects(root, target, head["model_dir"], manifest_rows, subjects)
        # A nightly run's report scores with the serving models, so the challenger's own figures
        # are these; a train run's report writes its fuller ones over them afterwards.
        model_store.write_first_metrics(root, target, head["version"], evaluated)
        challenger = evaluated[metric]
        current = model_store.champion_version(root, target)
        champion = None
        if current is not None and current != head["version"]:
            champion_dir = model_store.model_dir(root_path, target, current)
            champion = evaluate_on_subjects(root, target, champion_dir, manifest_rows, subjects)[metric]
        decisions[target] = model_store.promote_if_better(
            root,
            target,
            head["version"],
            float(challenger),
            None if champion is None else float(champion),
            metric=metric,
            margin=margin,
        )
    return decisions
