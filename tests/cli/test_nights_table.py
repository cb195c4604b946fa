"""The nights table `run`, `score` and `nightly` print: both indices, and the AHI's warning."""

from pathlib import Path

import pandas as pd

from sleepsound.cli import _print_nights, console


def _night(rec: str, source: str, sleep_min: float, ahi: float, rei: float, warning: str | None) -> dict:
    return {
        "recording_id": rec,
        "source": source,
        "time_in_bed_min": 60.0,
        "total_sleep_time_min": sleep_min,
        "sleep_efficiency": sleep_min / 60.0,
        "pct_rem": 20.0,
        "ahi": ahi,
        "rei": rei,
        "severity": "moderate",
        "snore_index": 3.0,
        "ahi_warning": warning,
    }


def test_the_table_shows_the_rei_and_says_when_the_ahi_is_unreliable(tmp_path: Path) -> None:
    short = "estimated sleep 0.5 h is under 2 h: the AHI is unreliable, read the REI"
    rows = [
        _night("night-a", "predicted", 30.0, 24.0, 12.5, short),
        _night("night-a", "scored", 50.0, 14.0, 13.0, None),
        _night("night-b", "predicted", 55.0, 3.3, 3.0, None),
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "summaries.parquet")
    with console.capture() as shown:
        _print_nights(str(tmp_path))
    text = shown.get()
    assert "REI" in text and "12.5" in text and "3.0" in text
    assert "13.0" not in text  # the scored row is not a prediction
    assert "AHI unreliable on 1 of 2 nights" in text


def test_no_warning_line_when_every_night_slept_long_enough(tmp_path: Path) -> None:
    pd.DataFrame([_night("night-b", "predicted", 300.0, 3.3, 3.0, None)]).to_parquet(tmp_path / "summaries.parquet")
    with console.capture() as shown:
        _print_nights(str(tmp_path))
    assert "unreliable" not in shown.get()


def test_the_table_shows_where_breathing_was_heard_and_warns_where_too_little(tmp_path: Path) -> None:
    unheard = "breathing was heard in 12% of the recording: ..."
    rows = [
        {**_night("night-a", "predicted", 300.0, 0.0, 0.0, None), "breathing_heard": 0.12, "events_warning": unheard},
        {**_night("night-b", "predicted", 300.0, 3.3, 3.0, None), "breathing_heard": 0.97, "events_warning": None},
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "summaries.parquet")
    with console.capture() as shown:
        _print_nights(str(tmp_path))
    text = shown.get()
    assert "heard" in text and "12%" in text and "97%" in text
    assert "breathing heard in under 50% of the recording on 1 of 2 nights" in text
    assert "does not rule out apnoea" in " ".join(text.split())


def test_an_older_run_without_the_heard_figures_still_prints(tmp_path: Path) -> None:
    pd.DataFrame([_night("night-b", "predicted", 300.0, 3.3, 3.0, None)]).to_parquet(tmp_path / "summaries.parquet")
    with console.capture() as shown:
        _print_nights(str(tmp_path))
    assert "night-b" in shown.get() and "breathing heard in under" not in shown.get()
