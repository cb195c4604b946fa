"""Champion/challenger for a training run: score both on the root's evaluation set, promote or not.

Each model is re-scored here, on the same evaluation subjects, with the features it was
trained on (the configuration stored in its lineage: a champion from another backbone is
embedded with that backbone, from the cache when it is there). The rule itself is
``model_store.promote_if_better``: the challenger must beat the champion on the declared
metric by the declared margin.

Re-scoring a model of other features embeds its evaluation nights again, reading their audio: a
night whose files changed since validation (``source_changed``), or that can no longer be read
(``read_error``), cannot be scored as validated for either model. Such nights are left out of the
comparison for both models alike (scores on different nights would not compare), and the decision
says how many and why (``left_out``, reason codes only: no recording id, a patient id). When
fewer than ``MIN_EVALUATED_SHARE`` of the evaluation nights are left, or none, the challenger is
not compared at all: a refusal recorded like any decision (not promoted, no scores, the reason),
so the champion keeps serving and the run goes on; the next run validates those nights again.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sleepsound.core.config import Config
from sleepsound.core.records import LeftOut, ManifestRow, PromotionDecision, TrainedModels
from sleepsound.core.storage import RootLike, join, open_root, read_json
from sleepsound.embed.cohort import embed_cohort
from sleepsound.labels.targets import TARGETS
from sleepsound.models.heads.artifacts import load_head
from sleepsound.registry import store as model_store
from sleepsound.report.metrics import evaluate
from sleepsound.train.dataset import load_embedded, model_inputs
from sleepsound.train.loop import predict_proba

# A comparison stands on at least this share of the evaluation nights (those left out changed since
# validation): on fewer it would judge the models on a different, smaller set than every earlier
# decision in promotions.json, so the challenger is refused rather than promoted or rejected on it.
MIN_EVALUATED_SHARE = 0.5


class EvaluationNightsUnread(Exception):
    """Evaluation nights a model's features could not be made for from the validated audio (recording
    id -> the manifest's reason code: ``source_changed``, ``read_error``). The message gives the count
    and the codes only: it may reach a log, and recording ids are patient ids."""

    def __init__(self, codes: dict[str, str]) -> None:
        super().__init__(f"{len(codes)} evaluation nights could not be read again ({_codes(codes)})")
        self.codes = codes


def _codes(codes: dict[str, str]) -> str:
    return ", ".join(sorted(set(codes.values())))


def evaluation_nights(manifest_rows: list[ManifestRow], subjects: list[str]) -> list[ManifestRow]:
    """The accepted, labelled nights of the evaluation ``subjects``: what every model is scored on."""
    wanted = set(subjects)
    return [
        r
        for r in manifest_rows
        if r["status"] == "accepted" and r["label_source"] != "none" and str(r["subject_id"]) in wanted
    ]


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
    rows = evaluation_nights(manifest_rows, subjects)
    if not rows:
        raise ValueError(f"no labelled nights of the evaluation subjects {subjects}")
    stats = embed_cohort(rows, root, cfg, use_ray=False, shifted=False)  # cache hits unless the features differ
    if stats.failed:  # the caller leaves them out for every model alike
        raise EvaluationNightsUnread({rec: stats.failure_codes.get(rec, "read_error") for rec in stats.failed})
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
    """For each head just trained: its score, the champion's on the same nights, the decision.

    Every score is computed before any decision is written, on one set of nights: evaluation nights
    found changed or unreadable while a model's features are made are left out for all (and every score made
    again without them), or, when too few are left, each head's promotion is refused (see the
    module's notes)."""
    subjects = model["test_subjects"]
    nights = evaluation_nights(manifest_rows, subjects)
    unread: dict[str, str] = {}  # recording id -> reason code
    while True:  # each pass leaves out at least one more night, so this ends
        usable = [r for r in manifest_rows if str(r["recording_id"]) not in unread]
        left = len(nights) - len(unread)
        if unread and left < MIN_EVALUATED_SHARE * len(nights):  # (the unread are evaluation nights: none left counts)
            why = _refusal(len(unread), len(nights), _codes(unread))
            return {
                target: model_store.refuse_promotion(root, target, head["version"], why, metric=metric, margin=margin)
                for target, head in model["heads"].items()
            }
        try:
            scores = _scores(root, model, usable, subjects, metric)
            break
        except EvaluationNightsUnread as exc:
            unread |= exc.codes
    left_out: LeftOut | None = {"nights": len(unread), "of": len(nights), "reason": _codes(unread)} if unread else None
    decisions = {}
    for target, (version, evaluated, champion) in scores.items():
        # A nightly run's report scores with the serving models, so the challenger's own figures
        # are these; a train run's report writes its fuller ones over them afterwards.
        model_store.write_first_metrics(root, target, version, evaluated)
        decisions[target] = model_store.promote_if_better(
            root,
            target,
            version,
            float(evaluated[metric]),
            champion,
            metric=metric,
            margin=margin,
            left_out=left_out,
        )
    return decisions


def _scores(
    root: RootLike, model: TrainedModels, manifest_rows: list[ManifestRow], subjects: list[str], metric: str
) -> dict[str, tuple[str, dict[str, Any], float | None]]:
    """Per head: its version, its figures, and the champion's ``metric`` on the same nights (None
    without another champion). ``EvaluationNightsUnread`` when a model's nights cannot be read as
    validated."""
    _, root_path = open_root(root)
    out: dict[str, tuple[str, dict[str, Any], float | None]] = {}
    for target, head in model["heads"].items():
        evaluated = evaluate_on_subjects(root, target, head["model_dir"], manifest_rows, subjects)
        current = model_store.champion_version(root, target)
        champion = None
        if current is not None and current != head["version"]:
            champion_dir = model_store.model_dir(root_path, target, current)
            champion = float(evaluate_on_subjects(root, target, champion_dir, manifest_rows, subjects)[metric])
        out[target] = (head["version"], evaluated, champion)
    return out


def _refusal(unread: int, nights: int, codes: str) -> str:
    """Why a challenger was not compared: too few evaluation nights left to judge both models on."""
    return (
        f"not compared: {unread} of {nights} evaluation nights changed since validation or could not be read "
        f"again ({codes}), "
        f"too few left to score the challenger and the champion on the same nights (at least "
        f"{MIN_EVALUATED_SHARE:.0%} needed); the champion stays, and the next run validates those nights again"
    )
