"""Metrics against hand-computed small examples."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score

from sleepsound.report.metrics import (
    PAPER_30S_HUBERT,
    confusion_counts,
    evaluate,
    majority_class,
    per_class_table,
    row_normalise,
)

C = ["Wake", "NREM", "REM"]
# Counts, rows true: Wake [1 1 0], NREM [1 3 0], REM [0 2 0]; REM is never predicted.
TRUE = ["Wake", "Wake", "NREM", "NREM", "NREM", "NREM", "REM", "REM"]
PRED = ["Wake", "NREM", "NREM", "NREM", "NREM", "Wake", "NREM", "NREM"]


def test_confusion_counts_and_row_normalised() -> None:
    counts = confusion_counts(TRUE, PRED, C)
    assert counts.tolist() == [[1, 1, 0], [1, 3, 0], [0, 2, 0]]
    norm = row_normalise(counts)
    assert norm.tolist() == [[0.5, 0.5, 0.0], [0.25, 0.75, 0.0], [0.0, 1.0, 0.0]]
    empty_row = row_normalise(np.array([[2, 0], [0, 0]]))
    assert empty_row[0].tolist() == [1.0, 0.0] and np.isnan(empty_row[1]).all()


def test_per_class_table_by_hand() -> None:
    table = per_class_table(TRUE, PRED, C)
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == ["SE", "SP", "PPV", "NPV"] and list(table.index) == C
    # Wake: TP 1, FN 1, FP 1, TN 5
    assert table.loc["Wake"].tolist() == pytest.approx([1 / 2, 5 / 6, 1 / 2, 5 / 6])
    # NREM: TP 3, FN 1, FP 3, TN 1
    assert table.loc["NREM"].tolist() == pytest.approx([3 / 4, 1 / 4, 3 / 6, 1 / 2])
    # REM: TP 0, FN 2, FP 0, TN 6 -> PPV is 0/0: NaN, not an exception
    rem = table.loc["REM"]
    assert rem["SE"] == 0.0 and rem["SP"] == 1.0 and rem["NPV"] == pytest.approx(6 / 8)
    assert math.isnan(rem["PPV"])


def test_class_absent_from_truth_gives_nan_sensitivity() -> None:
    table = per_class_table(["Wake", "NREM"], ["Wake", "REM"], C)
    assert math.isnan(table.loc["REM", "SE"]) and table.loc["REM", "PPV"] == 0.0


def test_evaluate_by_hand() -> None:
    m = evaluate(TRUE, PRED, C, majority_class="NREM")
    assert m["n_epochs"] == 8 and m["support"] == [2, 4, 2]
    assert m["accuracy"] == pytest.approx(0.5)
    # po = 0.5; pe = (2*2 + 4*6 + 2*0) / 64 = 0.4375; kappa = 0.0625 / 0.5625
    assert m["kappa"] == pytest.approx(1 / 9)
    assert m["kappa"] == pytest.approx(cohen_kappa_score(TRUE, PRED, labels=C))
    # F1: Wake 0.5, NREM 2*0.5*0.75/1.25 = 0.6, REM 0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.6 + 0.0) / 3)
    # Baseline predicts NREM everywhere: accuracy 4/8, F1 NREM = 2*0.5*1/1.5, others 0
    assert m["baseline_class"] == "NREM" and m["baseline_from"] == "training"
    assert m["baseline_accuracy"] == pytest.approx(0.5)
    assert m["baseline_macro_f1"] == pytest.approx((2 / 3) / 3)
    assert m["baseline_kappa"] == pytest.approx(0.0)
    assert m["confusion"] == [[1, 1, 0], [1, 3, 0], [0, 2, 0]]
    assert m["confusion_normalised"][1] == [0.25, 0.75, 0.0]
    rem = next(r for r in m["per_class"] if r["class"] == "REM")
    assert math.isnan(rem["PPV"])


def test_baseline_uses_the_training_majority() -> None:
    # Training majority Wake, although NREM dominates the held-out labels.
    m = evaluate(TRUE, PRED, C, majority_class=majority_class(["Wake", "Wake", "REM"], C))
    assert m["baseline_class"] == "Wake" and m["baseline_accuracy"] == pytest.approx(2 / 8)
    assert evaluate(TRUE, PRED, C)["baseline_from"] == "held-out"
    assert majority_class(["REM", "Wake"], C) == "Wake"  # ties go to the earlier class


def test_undefined_kappa_and_bad_labels() -> None:
    m = evaluate(["NREM"] * 4, ["NREM"] * 4, C, "NREM")
    assert m["accuracy"] == 1.0 and math.isnan(m["kappa"])
    with pytest.raises(ValueError, match="N2"):
        evaluate(["Wake", "N2"], ["Wake", "Wake"], C, "Wake")
    with pytest.raises(ValueError):
        confusion_counts(["Wake"], ["Wake", "REM"], C)
    assert confusion_counts([], [], C).sum() == 0


def test_kappa_matches_sklearn_on_random_labels() -> None:
    rng = np.random.default_rng(0)
    t, p = rng.choice(C, 300, p=[0.2, 0.7, 0.1]), rng.choice(C, 300)
    assert evaluate(t, p, C, "NREM")["kappa"] == pytest.approx(cohen_kappa_score(t, p))


def test_paper_reference_row() -> None:
    assert PAPER_30S_HUBERT["Wake"] == {"SE": 0.81, "SP": 0.76, "PPV": 0.24, "NPV": 0.98}
    assert PAPER_30S_HUBERT["NREM"]["NPV"] == 0.17 and PAPER_30S_HUBERT["REM"]["PPV"] == 0.06


def test_ahi_agreement_by_hand() -> None:
    from sleepsound.report.metrics import ahi_agreement

    scored = [2.0, 8.0, 20.0, 40.0, 12.0]
    estimate = [4.0, 6.0, 25.0, 45.0, 16.0]  # differences 2, -2, 5, 5, 4
    out = ahi_agreement(scored, estimate)
    diff = np.array([2, -2, 5, 5, 4], dtype=float)
    assert out["bias"] == pytest.approx(2.8)
    assert out["loa_high"] - out["loa_low"] == pytest.approx(2 * 1.96 * diff.std(ddof=1))
    assert out["pearson_r"] == pytest.approx(np.corrcoef(scored, estimate)[0, 1])
    # bands: normal->normal, mild->mild, moderate->moderate, severe->severe, mild->gets 16 = moderate
    assert out["severity_agreement"] == pytest.approx(0.8)
    assert out["screening"]["15"] == {"SE": 1.0, "SP": pytest.approx(2 / 3), "positives": 2}
    assert out["screening"]["5"]["SE"] == 1.0 and out["screening"]["5"]["SP"] == 1.0
    with_gap = ahi_agreement(scored + [float("nan")], estimate + [3.0])
    assert with_gap["n_nights"] == 5


def test_bootstrap_resamples_subjects_not_epochs() -> None:
    from sleepsound.report.metrics import bootstrap_ci, confusion_accuracy, per_subject

    # subject a is always right, subject b always wrong: the CI must span both extremes' mixtures
    true = ["Wake"] * 10 + ["NREM"] * 10
    pred = ["Wake"] * 10 + ["REM"] * 10
    groups = ["a"] * 10 + ["b"] * 10
    low, high = bootstrap_ci(true, pred, groups, confusion_accuracy, C, n_boot=400, seed=1)
    assert low == 0.0 and high == 1.0  # draws of (b, b) and (a, a) happen
    assert all(math.isnan(v) for v in bootstrap_ci(true, pred, ["a"] * 20, confusion_accuracy, C))
    with pytest.raises(ValueError, match="N9"):
        bootstrap_ci(true, pred[:-1] + ["N9"], groups, confusion_accuracy, C)
    table = per_subject(true, pred, groups)
    assert table.set_index("subject")["accuracy"].to_dict() == {"a": 1.0, "b": 0.0}


def test_bootstrap_from_subject_matrices_equals_scoring_each_draws_epochs() -> None:
    """Summing each subject's confusion matrix per draw gives the interval that pooling the drawn
    subjects' epochs and scoring them with scikit-learn gives, draw for draw."""
    from sklearn.metrics import accuracy_score, f1_score

    from sleepsound.report.metrics import (
        bootstrap_ci,
        confusion_accuracy,
        confusion_kappa,
        confusion_macro_f1,
    )

    rng = np.random.default_rng(11)
    groups = np.repeat([f"s{i:02d}" for i in range(9)], rng.integers(5, 40, size=9))
    true = rng.choice(C, size=len(groups), p=[0.2, 0.6, 0.2])
    pred = np.where(rng.random(len(groups)) < 0.6, true, rng.choice(C, size=len(groups)))
    pred[groups == "s03"] = "REM"  # a subject the model calls one class throughout
    scorers = {
        "accuracy": (confusion_accuracy, lambda t, p: accuracy_score(t, p)),
        "macro_f1": (confusion_macro_f1, lambda t, p: f1_score(t, p, labels=C, average="macro", zero_division=0)),
        "kappa": (confusion_kappa, lambda t, p: cohen_kappa_score(t, p, labels=C)),
    }
    subjects = np.unique(groups)
    for name, (from_counts, from_labels) in scorers.items():
        draws = np.random.default_rng(4)
        values = []
        for _ in range(200):
            take = np.concatenate([np.flatnonzero(groups == s) for s in subjects[draws.choice(len(subjects), 9)]])
            values.append(from_labels(true[take], pred[take]))
        expected = (np.quantile(values, 0.025), np.quantile(values, 0.975))
        got = bootstrap_ci(true.tolist(), pred.tolist(), groups.tolist(), from_counts, C, n_boot=200, seed=4)
        assert got == pytest.approx(expected, abs=1e-12), name


def test_severity_and_breathing_summary() -> None:
    from sleepsound.report.summaries import breathing_summary, severity

    assert [severity(v) for v in (0, 4.99, 5, 14.9, 15, 29.9, 30, 90)] == [
        "normal",
        "normal",
        "mild",
        "mild",
        "moderate",
        "moderate",
        "severe",
        "severe",
    ]
    assert severity(float("nan")) is None
    stages = ["Wake"] * 20 + ["NREM"] * 100 + ["REM"] * 20 + [None] * 10  # 120 sleep epochs: 1 h
    events = [1.0] * 20 + [0.0, 1.0] * 50 + [1.0] * 20 + [1.0] * 10  # wake/unknown events don't count
    out = breathing_summary(stages, events, [0.25] * 150)
    assert out["respiratory_events"] == 70 and out["ahi"] == pytest.approx(70.0)
    assert out["severity"] == "severe" and out["snore_index"] == pytest.approx(15.0)
    assert math.isnan(breathing_summary(["Wake"] * 4, [1] * 4, [0] * 4)["ahi"])
