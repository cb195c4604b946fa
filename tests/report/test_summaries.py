"""Night summaries on a hand-built hypnogram."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sleepsound.report.summaries import SUMMARY_FIELDS, night_summary, summarise_nights

W, N, R = "Wake", "NREM", "REM"
# index:  0  1  2     3  4  5  6  7  8  9  10 11 12
NIGHT = [W, W, None, N, N, W, W, N, R, R, N, W, W]


def test_hand_built_night() -> None:
    s = night_summary(NIGHT)
    assert s["n_epochs"] == 13 and s["n_epochs_scored"] == 12
    assert s["time_in_bed_min"] == 6.5
    assert s["total_sleep_time_min"] == 3.0  # epochs 3 4 7 8 9 10
    assert s["sleep_efficiency"] == pytest.approx(6 / 13)
    assert s["sleep_onset_latency_min"] == 1.5  # first sleep at epoch 3
    assert s["waso_min"] == 2.0  # wake at 5 6 11 12 (to lights on)
    assert s["rem_latency_min"] == 2.5  # REM at 8, 5 epochs after onset
    assert s["pct_rem"] == pytest.approx(100 * 2 / 6) and s["pct_nrem"] == pytest.approx(100 * 4 / 6)
    assert s["pct_wake"] == pytest.approx(100 * 6 / 12)
    assert set(s) == set(SUMMARY_FIELDS)


def test_no_sleep_and_no_rem() -> None:
    s = night_summary([W, None, W])
    assert s["total_sleep_time_min"] == 0 and s["sleep_efficiency"] == 0
    assert math.isnan(s["sleep_onset_latency_min"]) and math.isnan(s["rem_latency_min"])
    assert math.isnan(s["pct_rem"]) and s["pct_wake"] == 100.0
    s = night_summary([N, N, W])
    assert s["sleep_onset_latency_min"] == 0 and math.isnan(s["rem_latency_min"]) and s["waso_min"] == 0.5
    empty = night_summary([])
    assert empty["time_in_bed_min"] == 0 and math.isnan(empty["sleep_efficiency"])


def test_table_form_with_gaps_shuffled_rows_and_predictions() -> None:
    rows = [
        {"recording_id": "night-1", "epoch_index": i, "start_s": 30.0 * i, "stage": s, "stage_pred": N}
        for i, s in enumerate(NIGHT)
        if i != 2
    ]  # epoch 2 missing from the table: a gap
    rows += [
        {"recording_id": "night-0", "epoch_index": i, "start_s": 30.0 * i, "stage": W, "stage_pred": np.nan}
        for i in range(4)
    ]
    table = pd.DataFrame(rows).sample(frac=1.0, random_state=0)
    out = summarise_nights(table)
    assert out["recording_id"].tolist() == ["night-0", "night-1"]
    night1 = out.set_index("recording_id").loc["night-1"]
    expected = night_summary(NIGHT)
    for key in SUMMARY_FIELDS:
        assert night1[key] == pytest.approx(expected[key]), key
    assert math.isnan(out.set_index("recording_id").loc["night-0", "sleep_onset_latency_min"])
    pred = summarise_nights(table, stage_column="stage_pred").set_index("recording_id")
    assert pred.loc["night-1", "total_sleep_time_min"] == 6.0  # 12 predicted NREM epochs, gap unknown
    assert pred.loc["night-0", "n_epochs_scored"] == 0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="N2"):
        night_summary([W, "N2"])
    dup = pd.DataFrame({"recording_id": ["a", "a"], "epoch_index": [0, 0], "stage": [W, W]})
    with pytest.raises(ValueError, match="duplicate"):
        summarise_nights(dup)
    with pytest.raises(ValueError, match="stage"):
        summarise_nights(dup.drop(columns="stage"))
