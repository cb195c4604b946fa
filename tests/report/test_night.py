"""The night report's numbers (AHI by stage and type, the event table or its per-epoch fallback,
trends) and its files (HTML page and PDF) from small hand-made nights."""

from __future__ import annotations

import html
import io
import math
import re
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyedflib
import pytest
from pypdf import PdfReader

from sleepsound.labels.vocabulary import EPOCH_SECONDS
from sleepsound.report.night import ahi_by_stage, night_figures, read_night_events, recording_start, subject_trends
from sleepsound.report.night_page import (
    _unheard_spans,
    breathing_rows,
    clock_ticks,
    draw_night_chart,
    night_pdf,
    rem_segments,
    render_night_html,
)
from sleepsound.report.night_reports import start_night_reports
from tests.report.conftest import NIGHT_START, write_events

MODEL = {
    "version": "v3",
    "heads": {
        "stage3": {"version": "v3"},
        "stage5": {"version": "v5"},
        "resp": {"version": "vr", "events_per_event_epoch": 1.0, "snore_share_per_snore_epoch": 1.0},
    },
}


def test_ahi_by_stage_by_hand() -> None:
    stages = ["W", "W", "N2", "N2", "R", "R", "N2", "N2", "W", "N2"]  # 5 NREM + 2 REM epochs: 210 s asleep
    starts = 30.0 * np.arange(10)
    onsets = [65.0, 125.0, 130.0, 245.0, 400.0, -5.0]  # N2, REM, REM, Wake (not counted), after, before
    types = ["apnea", "hypopnea", "apnea", "apnea", "apnea", "hypopnea"]
    out = ahi_by_stage(onsets, starts, stages, types=types)
    assert out["events"] == 3
    assert out["ahi"] == pytest.approx(3 / (210 / 3600))
    assert out["ahi_rem"] == pytest.approx(2 / (60 / 3600))
    assert out["ahi_nrem"] == pytest.approx(1 / (150 / 3600))
    assert out["ahi_apnea"] == pytest.approx(2 / (210 / 3600))
    assert out["ahi_hypopnea"] == pytest.approx(1 / (210 / 3600))
    untyped = ahi_by_stage(onsets, starts, [{"W": "Wake", "R": "REM"}.get(s, "NREM") for s in stages])
    assert untyped["ahi"] == out["ahi"] and math.isnan(untyped["ahi_apnea"])  # 3-class names, no types
    weighted = ahi_by_stage([15.0, 75.0], starts[:4], ["W", "N1", "N2", None], weights=[0.5, 0.25])
    assert weighted["events"] == 0.25 and math.isnan(weighted["ahi_rem"])  # no REM: undefined, not 0
    with pytest.raises(ValueError, match="one entry per epoch"):
        ahi_by_stage([1.0], starts, stages[:3])


def test_hypnogram_ticks_fall_on_round_clock_times() -> None:
    assert list(clock_ticks(datetime(2024, 3, 9, 22, 41), 2.0) * 60) == pytest.approx([19, 49, 79, 109])  # 23:00 ...
    assert list(clock_ticks(datetime(2024, 3, 9, 22, 0), 8.0) * 60) == pytest.approx(range(0, 481, 60))
    assert list(clock_ticks(None, 0.25) * 60) == pytest.approx([0, 5, 10, 15])  # from the recording's start


def test_the_rem_bar_is_a_segment_per_run_of_rem_epochs() -> None:
    step = 0.5 / 60.0  # 30-s epochs in hours
    hours = np.arange(8) * step
    rem = np.array([0, 1, 1, 1, 0, 0, 1, 1], dtype=bool)
    xs, ys = rem_segments(hours, rem, step, 2.0)
    np.testing.assert_allclose(xs, [1 * step, 4 * step, np.nan, 6 * step, 8 * step, np.nan])
    np.testing.assert_allclose(ys, [2, 2, np.nan, 2, 2, np.nan])
    gap = np.append(hours[:4], hours[4:] + 10 * step)  # epochs missing between the 4th and 5th: runs end there
    xs, _ = rem_segments(gap, np.ones(8, dtype=bool), step, 2.0)
    np.testing.assert_allclose(xs, [0, 4 * step, np.nan, 14 * step, 18 * step, np.nan])
    assert [len(a) for a in rem_segments(hours, np.zeros(8, dtype=bool), step, 2.0)] == [0, 0]


def test_a_long_fragmented_night_draws_no_more_artists_than_a_short_one(three_nights: pd.DataFrame) -> None:
    """A line per REM epoch made an 8-h night's chart hundreds of artists, a third of its page and PDF."""
    from matplotlib.figure import Figure

    night = three_nights[three_nights["recording_id"] == "P1-night1"]
    rng = np.random.default_rng(3)
    counts = []
    for reps in (1, 20):
        long = pd.concat([night] * reps, ignore_index=True)
        long["epoch_index"] = np.arange(len(long))
        long["start_s"] = long["epoch_index"] * 30.0
        long["stage_pred"] = rng.choice(["Wake", "NREM", "REM"], size=len(long))  # REM in many short runs
        fig = Figure()
        draw_night_chart(fig, _figures(long, None))
        counts.append(len(fig.axes[0].lines))
    assert counts[0] == counts[1] <= 2  # the hypnogram's step line and one REM line


def test_event_table_is_read_and_checked(tmp_path: Path) -> None:
    assert read_night_events(tmp_path, "r", "n1") is None
    write_events(tmp_path, "r", "n1", [(300.0, 320.0, "hypopnea", 0.7), (100.0, 130.0, "apnea", 0.9)])
    events = read_night_events(tmp_path, "r", "n1")
    assert events is not None and list(events["start_s"]) == [100.0, 300.0]
    path = write_events(tmp_path, "r", "n2", [(1.0, 2.0, "central", 0.5)])
    with pytest.raises(ValueError, match="unknown event types") as err:
        read_night_events(tmp_path, "r", "n2")
    assert str(path) in str(err.value)


def _figures(night: pd.DataFrame, events: pd.DataFrame | None) -> object:
    return night_figures(
        night,
        events=events,
        start=NIGHT_START,
        data_source="PSG-Audio EDF",
        models={"stage3": "v3"},
        events_per_event_epoch=1.0,
        snore_share_per_snore_epoch=1.0,
    )


def test_night_figures_from_the_event_table_and_without_it(three_nights: pd.DataFrame, tmp_path: Path) -> None:
    night = three_nights[three_nights["recording_id"] == "P1-night1"]
    write_events(tmp_path, "r", "P1-night1", [(1205.0, 1230.0, "apnea", 0.9), (3305.0, 3350.0, "hypopnea", 0.6)])
    nf = _figures(night, read_night_events(tmp_path, "r", "P1-night1"))
    assert nf.stage_head == "stage5" and list(nf.stage_minutes) == ["W", "R", "N1", "N2", "N3"]
    assert sum(nf.stage_minutes.values()) == nf.summary["time_in_bed_min"] == 120.0
    assert nf.summary["sleep_onset_latency_min"] == 10.0 and nf.summary["waso_min"] == 10.0
    # epoch 40 (1205 s) is N2, epoch 110 (3305 s) is N3: two NREM events in 100 min of sleep
    assert nf.ahi["ahi"] == pytest.approx(2 / (100 / 60)) and nf.ahi["ahi_rem"] == 0.0
    assert nf.ahi["ahi_apnea"] == nf.ahi["ahi_hypopnea"] == pytest.approx(1 / (100 / 60))
    assert nf.longest_event_s == 45.0 and "event table" in nf.ahi_source
    assert nf.ahi_scored is not None and nf.ahi_scored["events"] == 5  # the scored onsets, 3 of them in REM
    assert nf.ahi_scored["ahi_rem"] == pytest.approx(3 / (20 / 60))  # 40 REM epochs: 20 min
    assert nf.snore_index > 0 and nf.lights_on == datetime(2024, 3, 10, 0, 41)
    assert nf.rei == pytest.approx(2 / 2.0)  # both events over the 2 h recorded, asleep or not
    assert ("REI (per hour of recording)", "1.0 /h", "–") in breathing_rows(nf)
    assert ("Severity by AHI / by REI", "normal / normal", "–") in breathing_rows(nf)
    assert any("under 2 h" in note and "REI" in note for note in nf.notes)  # 100 min of sleep: read the REI

    assert not any("heard" in note for note in nf.notes)
    older = _figures(night.drop(columns="breath_heard_s"), read_night_events(tmp_path, "r", "P1-night1"))
    assert math.isnan(older.breathing_heard) and older.notes == nf.notes  # a run from before: unknown, no note
    # breathing heard in the first 24 min of the 2 h only: the page says what its indices are worth
    faint = night.assign(breath_heard_s=np.where(np.arange(len(night)) < 48, 30.0, 0.0))
    faint_nf = _figures(faint, read_night_events(tmp_path, "r", "P1-night1"))
    assert faint_nf.breathing_heard == pytest.approx(0.2)
    assert any("heard in 20% of the recording" in note for note in faint_nf.notes)
    assert "heard in 20% of the recording" in render_night_html(faint_nf, "r", "P1-night1")
    hours0, step = faint_nf.start_s / 3600.0, EPOCH_SECONDS / 3600.0
    [(start, width)] = _unheard_spans(faint_nf, hours0, step)  # shaded behind the events' rows
    assert (start, width) == (pytest.approx(0.4), pytest.approx(1.6))
    assert _unheard_spans(nf, hours0, step) == [] and _unheard_spans(older, hours0, step) == []

    fallback = _figures(night, None)
    assert "per-epoch" in fallback.ahi_source and math.isnan(fallback.ahi["ahi_apnea"])
    assert math.isnan(fallback.longest_event_s) and fallback.notes
    three = _figures(three_nights[three_nights["recording_id"] == "P1-night2"], None)
    assert three.stage_head == "stage3" and list(three.stage_minutes) == ["Wake", "REM", "NREM"]


def test_trends_keep_subjects_with_several_nights(three_nights: pd.DataFrame) -> None:
    nights = [_figures(n, None) for _, n in three_nights.groupby("recording_id")]
    trends = subject_trends(nights)
    assert list(trends["recording_id"]) == ["P1-night1", "P1-night2"]
    assert {"ahi", "snore_index", "sleep_efficiency", "study_date"} <= set(trends.columns)


def test_recording_start_from_the_edf_header(tmp_path: Path) -> None:
    path = str(tmp_path / "night[001].edf")
    writer = pyedflib.EdfWriter(path, 1, file_type=pyedflib.FILETYPE_EDFPLUS)
    writer.setSignalHeaders(
        [
            {
                "label": "Mic",
                "dimension": "uV",
                "sample_frequency": 100,
                "physical_max": 100,
                "physical_min": -100,
                "digital_max": 32767,
                "digital_min": -32768,
            }
        ]
    )
    writer.setStartdatetime(datetime(2024, 3, 9, 22, 41, 0))
    writer.writeSamples([np.zeros(200)])
    writer.close()
    assert recording_start([path], "psg-audio") == datetime(2024, 3, 9, 22, 41, 0)
    assert recording_start([path], "plain") is None  # plain audio records no trustworthy clock
    (tmp_path / "bad.edf").write_bytes(b"\x00garbage")
    assert recording_start([str(tmp_path / "bad.edf")], "psg-audio") is None
    assert recording_start(["s3://bucket/night.edf"], "psg-audio") is None


def test_night_page_and_pdf_say_what_they_are(three_nights: pd.DataFrame) -> None:
    nf = _figures(three_nights[three_nights["recording_id"] == "P1-night1"], None)
    page = render_night_html(nf, "run-1", "P1-night1")
    needles = ("not a diagnosis", "22:41", "00:41", "2024-03-09", "AHI in REM", "SpO2", "not measurable from audio")
    for needle in (*needles, "Sleep onset latency", "per-epoch probabilities", "P1-night1.pdf", "@media print"):
        assert needle in page, needle
    assert "<script" not in page and "http" not in page  # self-contained: nothing fetched

    reader = PdfReader(io.BytesIO(night_pdf(nf, "run-1")))
    assert len(reader.pages) == 1
    box = reader.pages[0].mediabox
    assert (round(float(box.width)), round(float(box.height))) == (595, 842)  # A4 in points
    text = reader.pages[0].extract_text()
    for needle in ("Night report: P1-night1", "not a diagnosis", "AHI in NREM", "Sleep efficiency", "SpO2", "22:41"):
        assert needle in text, needle


def test_every_night_gets_a_page_and_a_pdf(three_nights: pd.DataFrame, tmp_path: Path) -> None:
    write_events(tmp_path, "r1", "P2-night1", [(1205.0, 1230.0, "apnea", 0.9)])
    links, nights = start_night_reports(tmp_path, "r1", three_nights, MODEL, "/models/hubert-base")()
    assert [link["recording_id"] for link in links] == ["P1-night1", "P1-night2", "P2-night1"]
    assert [link["source"] for link in links] == ["per-epoch", "per-epoch", "event table"]
    folder = tmp_path / "runs" / "r1" / "report"
    for link in links:
        assert (folder / link["html"]).read_text().startswith("<!doctype html>")
        assert (folder / link["pdf"]).read_bytes()[:5] == b"%PDF-"
    assert nights[0].models == {"stage3": "v3", "stage5": "v5", "resp": "vr", "backbone": "hubert-base"}
    assert nights[0].start is None  # no manifest: times are from the recording's start, and the page says so
    assert "from the recording's start" in html.unescape((folder / links[0]["html"]).read_text())
    # the same run again after a night was quarantined: its pages go with it, the others are written again
    rerun = three_nights[three_nights["recording_id"] != "P1-night2"]
    (folder / "nights" / "notes.txt").write_text("not a night's page")
    again, _ = start_night_reports(tmp_path, "r1", rerun, MODEL, "/models/hubert-base")()
    assert sorted(p.name for p in (folder / "nights").iterdir()) == sorted(
        [*(link["html"].split("/")[1] for link in again), *(link["pdf"].split("/")[1] for link in again), "notes.txt"]
    )
    assert not (folder / links[1]["html"]).exists() and not (folder / links[1]["pdf"]).exists()


def test_nights_rendered_as_ray_tasks_are_the_pages_one_process_writes(
    ray_session, three_nights: pd.DataFrame, tmp_path: Path
) -> None:
    """A cohort's pages render as Ray tasks (one night a task, and the default: a small run shared over
    the session's free CPUs, at least four nights a task, so one task here) and come back to be written
    by the caller: the same files, in the same order, as rendering them in one process."""
    for root in (tmp_path / "one", tmp_path / "ray", tmp_path / "shared"):
        write_events(root, "r1", "P2-night1", [(1205.0, 1230.0, "apnea", 0.9)])
    alone, _ = start_night_reports(tmp_path / "one", "r1", three_nights, MODEL, "hubert-base")()
    shared, _ = start_night_reports(str(tmp_path / "shared"), "r1", three_nights, MODEL, "hubert-base", use_ray=True)()
    fanned, nights = start_night_reports(
        str(tmp_path / "ray"), "r1", three_nights, MODEL, "hubert-base", use_ray=True, nights_per_task=1
    )()
    assert fanned == alone == shared and [n.recording_id for n in nights] == ["P1-night1", "P1-night2", "P2-night1"]
    written = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC")  # "Report written": each page says when

    def same(text: str) -> str:
        return written.sub("<written>", text)

    for link in fanned:
        one, ray = (tmp_path / side / "runs" / "r1" / "report" for side in ("one", "ray"))
        assert written.search((one / link["html"]).read_text())  # the time is there, and only it may differ
        assert same((ray / link["html"]).read_text()) == same((one / link["html"]).read_text())
        pdfs = [PdfReader(io.BytesIO((side / link["pdf"]).read_bytes())) for side in (one, ray)]
        assert same(pdfs[0].pages[0].extract_text()) == same(pdfs[1].pages[0].extract_text())
        assert "Night report" in pdfs[1].pages[0].extract_text()


def test_a_very_long_recording_id_still_gets_its_page_and_pdf(tmp_path: Path) -> None:
    """A 220-character id (a long plain-audio file name) made a report name longer than the disk takes:
    OSError 'File name too long' stopped the night reports. Now cut, with a digest of the whole id."""
    from tests.report.conftest import night_predictions

    long_a, long_b = "n" * 219 + "a", "n" * 219 + "b"  # differ only past the cut
    preds = pd.concat([night_predictions(long_a, "S", 1), night_predictions(long_b, "S", 2)], ignore_index=True)
    links, _ = start_night_reports(tmp_path, "r1", preds, MODEL, None)()
    folder = tmp_path / "runs" / "r1" / "report"
    assert len({link["html"] for link in links}) == 2
    for link in links:
        assert len(Path(link["html"]).name) <= 130
        assert (folder / link["pdf"]).read_bytes()[:5] == b"%PDF-"
        assert html.escape(link["recording_id"]) in (folder / link["html"]).read_text()  # the page names the whole id


def test_an_epoch_with_no_time_in_the_night_is_left_off_its_page(tmp_path: Path) -> None:
    """One NaN start_s in a damaged predictions file stopped every night's report (ValueError in the tick
    formatter); 1e9 s drew a tick an hour for thirty years. Such epochs cannot be placed: left off."""
    from tests.report.conftest import night_predictions

    good = night_predictions("good", "S", 1)
    nights = []
    for n, bad in enumerate((float("nan"), float("inf"), 1e9)):
        night = night_predictions(f"bad{n}", "S", 1)
        night.loc[5, "start_s"] = bad
        nights.append(night)
    links, figures = start_night_reports(tmp_path, "r1", pd.concat([good, *nights], ignore_index=True), MODEL, None)()
    assert sorted(link["recording_id"] for link in links) == ["bad0", "bad1", "bad2", "good"]
    by_id = {f.recording_id: f for f in figures}
    assert all(len(by_id[f"bad{n}"].start_s) == len(by_id["good"].start_s) - 1 for n in range(3))
    assert np.isfinite(by_id["bad2"].start_s).all() and by_id["bad2"].start_s.max() < 86_400
