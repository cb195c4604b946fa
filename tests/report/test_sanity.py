"""A run's figures carry their warnings: a one-class head and too few held-out nights (issue 19)."""

from __future__ import annotations

from sleepsound.report.metrics import evaluate
from sleepsound.report.sanity import sanity_warnings

TRUTH = ["Wake"] * 30 + ["NREM"] * 60 + ["REM"] * 10


def test_a_head_that_answers_one_class_is_called_no_better_than_the_baseline() -> None:
    headline = {**evaluate(TRUTH, ["NREM"] * 100, majority_class="NREM"), "held_out_nights": 5}
    [warning] = sanity_warnings(headline)
    assert "no better than always answering the training majority class (kappa 0.00" in warning


def test_a_useful_head_on_enough_nights_carries_no_warning() -> None:
    good = TRUTH[:]
    good[0] = "NREM"  # one mistake
    headline = {**evaluate(TRUTH, good, majority_class="NREM"), "held_out_nights": 4}
    assert sanity_warnings(headline) == []


def test_figures_from_two_nights_are_flagged() -> None:
    headline = {**evaluate(TRUTH, TRUTH, majority_class="NREM"), "held_out_nights": 2}
    [warning] = sanity_warnings(headline)
    assert "rest on 2 nights" in warning and "at least 3" in warning


def test_no_held_out_figures_no_warning() -> None:
    assert sanity_warnings({"macro_f1": float("nan"), "held_out_nights": 0}) == []
