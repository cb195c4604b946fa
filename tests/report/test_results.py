"""Run outputs from predictions: per-task metrics, subject-resampled intervals, night breathing figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sleepsound.report.attention_view import MEL_BANDS, log_mel, pick_examples
from sleepsound.report.outputs import night_breathing, subject_intervals, target_metrics


def _night(n: int = 120, events_every: int = 10) -> pd.DataFrame:
    """One hour of sleep (NREM), a scored event every ``events_every`` epochs."""
    events = np.zeros(n)
    events[::events_every] = 1.0
    return pd.DataFrame(
        {
            "stage_true": ["NREM"] * n,
            "stage_pred": ["NREM"] * n,
            "events_true": events,
            "snore_frac_true": np.full(n, 0.5),
            "prob_apnea_hypopnea": np.full(n, 0.2),
            "prob_snore": np.full(n, 0.25),
        }
    )


def test_night_breathing_scored_and_estimated() -> None:
    night = _night()
    got = night_breathing(night, {"events_per_event_epoch": 1.5, "snore_share_per_snore_epoch": 0.8})
    assert got["ahi_scored"] == pytest.approx(12.0) and got["severity_scored"] == "mild"
    assert got["snore_index_scored"] == pytest.approx(30.0)  # half of every epoch: 30 min per hour
    assert got["ahi_estimated"] == pytest.approx(120 * 0.2 * 1.5)  # 36 expected events in one hour
    assert got["severity_estimated"] == "severe"
    assert got["snore_index_estimated"] == pytest.approx(0.25 * 0.8 * 60)
    unscored = night.assign(events_true=np.nan)
    assert "ahi_scored" not in night_breathing(unscored, None) and night_breathing(unscored, None) == {}


def test_task_metrics_use_the_training_majority_and_test_rows_only() -> None:
    preds = pd.DataFrame(
        {
            "split": ["test"] * 4 + ["train"] * 2,
            "stage_true": ["Wake", "NREM", "REM", "NREM", "Wake", "Wake"],
            "stage_pred": ["Wake", "NREM", "NREM", "NREM", "REM", "REM"],
            "resp_true": ["none", "snore", None, "apnea_hypopnea", "none", "none"],
            "resp_pred": ["none", "snore", "none", "none", "none", "none"],
        }
    )
    model = {"heads": {"stage3": {"class_counts": [1, 9, 1]}, "resp": {"class_counts": [5, 1, 1]}}}
    got = target_metrics(preds, model)
    assert got["stage3"]["n_epochs"] == 4 and got["stage3"]["baseline_class"] == "NREM"
    assert got["stage3"]["accuracy"] == pytest.approx(0.75)
    assert got["resp"]["n_epochs"] == 3 and got["resp"]["baseline_class"] == "none"


def test_subject_intervals_need_two_subjects_and_bracket_the_estimate() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for subject in range(6):
        truth = rng.choice(["Wake", "NREM", "REM"], size=40)
        pred = np.where(rng.random(40) < 0.7, truth, rng.choice(["Wake", "NREM", "REM"], size=40))
        rows += [
            {"split": "test", "subject_id": f"s{subject}", "stage_true": t, "stage_pred": p}
            for t, p in zip(truth, pred, strict=False)
        ]
    preds = pd.DataFrame(rows)
    ci = subject_intervals(preds)
    accuracy = float((preds["stage_true"] == preds["stage_pred"]).mean())
    assert set(ci) == {"accuracy", "macro_f1", "kappa"}
    assert ci["accuracy"][0] <= accuracy <= ci["accuracy"][1] and ci["accuracy"][1] - ci["accuracy"][0] < 0.3
    assert subject_intervals(preds[preds["subject_id"] == "s0"]) == {}


def test_attention_examples_are_confident_correct_test_epochs_one_stage_at_a_time() -> None:
    preds = pd.DataFrame(
        {
            "split": ["test", "test", "test", "train", "test"],
            "stage_true": ["REM", "NREM", "NREM", "Wake", "Wake"],
            "stage_pred": ["REM", "NREM", "NREM", "Wake", "NREM"],
            "prob_wake": [0.1, 0.1, 0.05, 0.9, 0.3],
            "prob_nrem": [0.2, 0.6, 0.9, 0.05, 0.6],
            "prob_rem": [0.7, 0.3, 0.05, 0.05, 0.1],
            "attention": [[0.5, 0.5]] * 5,
            "epoch_index": range(5),
        }
    )
    picked = pick_examples(preds, 3)
    assert list(picked["epoch_index"]) == [2, 0, 1]  # NREM's most confident, then REM, then NREM again
    assert pick_examples(preds, 0).empty
    mel = log_mel(np.random.default_rng(0).normal(size=16_000 * 3).astype(np.float32) * 0.1)
    assert mel.shape == (MEL_BANDS, 301) and np.isfinite(mel).all()
