"""The transfer evaluation: matching and per-style sums on hand-made nights, the clean nights' false
alarm rate, the confidence fitted on development styles only, and the command on a tiny cohort."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleepsound.breathing.transfer import NightResult, build_cohorts, cohort_speech, group_figures, transfer_report
from sleepsound.cli import app
from tests.synth.bgclips import make_background_clips
from tests.synth.snoreclips import make_snore_clips


def _ev(start: float, end: float, kind: str, conf: float = 0.9) -> dict:
    return {"start_s": start, "end_s": end, "type": kind, "confidence": conf}


def _night(style: str, kind: str, truth: list, found: list, hours: float = 1.0, sleep_h: float = 1.0) -> NightResult:
    return {
        "style": style,
        "kind": kind,
        "recording_id": f"{style}-{kind}-{len(truth)}-{len(found)}",
        "hours": hours,
        "sleep_hours": sleep_h,
        "truth": [{"start_s": s, "end_s": e, "type": t} for s, e, t, *_ in truth],
        "candidates": found,
        "sleep_mask_s": [(0.0, sleep_h * 3600.0)],
    }


# Style "a": 2 apnoeas (one found), 2 hypopnoeas (both found, once typed apnoea), one false hypopnoea.
A_EVENTS = _night(
    "a",
    "events",
    [(100, 120, "apnea"), (300, 315, "apnea"), (600, 620, "hypopnea"), (900, 915, "hypopnea")],
    [_ev(105, 118, "apnea"), _ev(598, 610, "hypopnea"), _ev(905, 920, "apnea"), _ev(1500, 1512, "hypopnea")],
)
# A clean half-hour night in style "b" with two false events: 4 per hour; one at low confidence.
B_CLEAN = _night(
    "b", "clean", [], [_ev(50, 62, "hypopnea"), _ev(400, 415, "apnea"), _ev(700, 711, "hypopnea", 0.3)], 0.5, 0.5
)
B_EVENTS = _night("b", "events", [(100, 120, "apnea")], [_ev(101, 119, "apnea")])


def test_matching_and_sums_per_style():
    g = group_figures([A_EVENTS], 0.5)
    ap, hy, any_ = g["events"]["apnea"], g["events"]["hypopnea"], g["events"]["any"]
    assert (ap["scored"], ap["found"], ap["detected"], ap["correct"]) == (2, 1, 2, 1)
    assert (hy["scored"], hy["found"], hy["detected"], hy["correct"]) == (2, 1, 2, 1)
    assert any_["found"] == 3 and any_["correct"] == 3 and any_["precision"] == pytest.approx(0.75)
    assert ap["f1"] == pytest.approx(0.5)
    assert g["rei_abs_error"] == 0.0 and g["rei_within_5"] == 1.0  # 4 scored, 4 detected in one hour
    assert math.isnan(g["clean_false_per_h"]) and g["clean_nights"] == 0


def test_clean_night_false_alarms_per_hour_and_the_cut():
    g = group_figures([B_CLEAN, B_EVENTS], 0.5)
    assert g["clean_nights"] == 1
    assert g["clean_false_per_h"] == pytest.approx(4.0) and g["clean_max_per_h"] == pytest.approx(4.0)
    assert g["rei_max_error"] == pytest.approx(4.0) and g["rei_within_5"] == 1.0
    assert group_figures([B_CLEAN], 0.2)["clean_false_per_h"] == pytest.approx(6.0)  # the low one counts
    assert group_figures([B_CLEAN], 0.95)["clean_false_per_h"] == 0.0


def test_report_per_style_and_held_out_styles_never_fit_the_cut():
    report = transfer_report([A_EVENTS, B_CLEAN, B_EVENTS], held_out=["b"])
    assert list(report["groups"]) == ["a", "b", "development", "held out", "all"]
    assert report["fitted"] and report["groups"]["held out"]["nights"] == 2
    assert report["groups"]["a"]["events"]["apnea"] == report["groups"]["development"]["events"]["apnea"]
    # A development night whose one true event is at 0.6, a held-out clean night with false alarms at
    # 0.65: fitted on the development style the cut keeps the true event; fitted on both, it would
    # rise above 0.65 to silence the held-out night.
    dev = _night("d", "events", [(100, 120, "apnea")], [_ev(100, 120, "apnea", 0.6)])
    held = _night("h", "clean", [], [_ev(t, t + 12, "hypopnea", 0.65) for t in (100, 300, 500)])
    assert transfer_report([dev, held], held_out=["h"])["min_confidence"] <= 0.6
    assert transfer_report([dev, held], held_out=[])["min_confidence"] > 0.65
    with pytest.raises(ValueError, match="held-out style"):
        transfer_report([A_EVENTS], held_out=["tv-bedroom"])
    with pytest.raises(ValueError, match="every style is held out"):
        transfer_report([A_EVENTS], held_out=["a"])


def test_the_respiratory_heads_errors_and_the_combined_events_per_group():
    # The head expects 0.5 events in each of 8 epochs of a 4-min night (1 in scored sleep): REI 2 over
    # 4 min = 60/h against the truth's 15/h (1 event); on the clean night 0.25 per epoch: 30/h.
    dev = _night("d", "events", [(30, 45, "apnea")], [_ev(30, 45, "apnea")], hours=4 / 60, sleep_h=0.5 / 60)
    dev["sleep_mask_s"] = [(30.0, 60.0)]
    dev["head_epoch_events"] = [0.5] * 8
    dev["combined"] = []  # with the snoring head the detector found nothing
    held = _night("h", "clean", [], [_ev(100, 115, "hypopnea")], hours=4 / 60, sleep_h=4 / 60)
    held["head_epoch_events"] = [0.25] * 8
    held["combined"] = [_ev(100, 115, "hypopnea", 0.6)]  # kept below the cut
    report = transfer_report([dev, held], held_out=["h"], min_confidence=0.7)
    heads = report["head_groups"]
    assert list(heads) == ["d", "h", "development", "held out", "all"]
    assert heads["d"]["rei_abs_error"] == pytest.approx(45.0) and heads["d"]["rei_within_5"] == 0.0
    assert heads["d"]["ahi_abs_error"] == pytest.approx(60.0)  # 0.5 vs 1 event in half a minute of sleep
    assert heads["h"]["clean_false_per_h"] == pytest.approx(30.0) and heads["all"]["nights"] == 2
    both = report["combined"]
    assert both["min_confidence"] == 0.7 and not both["fitted"]
    assert both["groups"]["d"]["events"]["apnea"]["found"] == 0 and both["groups"]["h"]["clean_false_per_h"] == 0.0
    assert report["groups"]["h"]["clean_false_per_h"] == pytest.approx(15.0)  # the detector alone
    # Nights without head outputs: the detector's figures only, as before.
    assert "head_groups" not in transfer_report([A_EVENTS, B_CLEAN], held_out=["b"])


def test_command_on_a_tiny_cohort(tmp_path, tiny_whisper):
    cohorts, root, out = tmp_path / "cohorts", tmp_path / "root", tmp_path / "report.json"
    args = ["breathing-eval", str(cohorts), "--root", str(root), "--build", "--styles", "classic,tv-bedroom"]
    args += ["--held-out", "tv-bedroom", "--nights", "1", "--clean", "1", "--hours", "0.1", "--out", str(out)]
    args += ["--speech", "synth"]  # the same nights whether or not this machine has espeak-ng
    # The held-out style again with "recorded" snores (clips cut from the generator: no outside data),
    # and with a "recorded" background as its TV (+realbg) beside the generator's TV (+tv), and with both (+recorded).
    args += ["--real-snores", str(make_snore_clips(tmp_path / "clips"))]
    args += ["--real-background", str(make_background_clips(tmp_path / "bg"))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "held out" in result.output and "classic" in result.output and "real snores" in result.output
    assert "real background" in result.output and "generator TV" in result.output
    report = json.loads(out.read_text())
    assert report["held_out"] == ["tv-bedroom"] and report["speech"] == ["synth"]
    assert "voiced by the built-in synthesiser" in result.output
    assert report["styles"] == [
        "classic",
        "tv-bedroom",
        "tv-bedroom+real",
        "tv-bedroom+realbg",
        "tv-bedroom+recorded",
        "tv-bedroom+tv",
    ]
    groups = ("classic", "tv-bedroom", "all", "real snores", "real background", "generator TV")
    groups += ("real snores and background",)
    assert {g: report["groups"][g]["nights"] for g in groups} == {
        "classic": 2,
        "tv-bedroom": 2,
        "all": 4,  # the real-snore and real-background nights are summed apart, never fitted on
        "real snores": 2,
        "real background": 2,
        "generator TV": 2,
        "real snores and background": 2,
    }
    realbg = json.loads((cohorts / "tv-bedroom+realbg" / "clean" / "cohort.json").read_text())
    assert realbg["params"]["real_background_sha256"] and realbg["subjects"][0]["real_background"]["clips"] == 3
    real = json.loads((cohorts / "tv-bedroom+real" / "events" / "cohort.json").read_text())
    plain = json.loads((cohorts / "tv-bedroom" / "events" / "cohort.json").read_text())
    assert real["params"]["seed"] == plain["params"]["seed"] and "real_snores" in real["params"]
    both = json.loads((cohorts / "tv-bedroom+recorded" / "events" / "cohort.json").read_text())
    assert both["params"]["seed"] == plain["params"]["seed"]
    assert both["params"]["real_snores_sha256"] == real["params"]["real_snores_sha256"]
    assert both["params"]["real_background_sha256"] == realbg["params"]["real_background_sha256"]
    assert report["groups"]["all"]["clean_nights"] == 2
    clean = [p for p in report["groups"]["all"]["per_night"] if p["kind"] == "clean"]
    assert [sum(p["n_true"].values()) for p in clean] == [0, 0]  # generated with ahi=0: no event at all
    assert report["groups"]["all"]["clean_false_per_h"] is not None
    # The envelopes are cached in the storage root: a second evaluation takes the cohorts as they are.
    again = CliRunner().invoke(app, [*args[:4], "--held-out", "tv-bedroom", "--min-confidence", "0.6", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["min_confidence"] == 0.6 and any((root / "breathing").rglob("*.parquet"))
    # With trained heads: every night embedded, the heads trained on the development style alone (here
    # tv-bedroom, whose night snores), the respiratory head's errors and the detector with the snoring
    # head beside the detector's, per group.
    heads = CliRunner().invoke(
        app,
        [*args[:4], "--held-out", "classic", "--min-confidence", "0.7", "--backbone", tiny_whisper]
        + ["--set", "training.epochs=1", "--out", str(out)],
    )
    assert heads.exit_code == 0, heads.output
    assert "Respiratory head" in heads.output and "snoring head typing breaths" in heads.output
    report = json.loads(out.read_text())
    assert report["heads"]["train_nights"] == 2 and set(report["heads"]["heads"]) == {"stage3", "resp", "snore"}
    assert report["heads"]["backbone"] == tiny_whisper and not report["heads"]["skipped"]
    assert set(report["head_groups"]) == set(report["groups"]) == set(report["combined"]["groups"])
    rei = [p["rei_head"] for p in report["head_groups"]["all"]["per_night"]]
    assert len(rei) == 4 and all(r >= 0 for r in rei)
    assert report["combined"]["groups"]["real snores"]["nights"] == 2
    # Every style held out: nothing to train the heads on, said before any night is embedded.
    none_left = CliRunner().invoke(app, [*args[:4], "--held-out", "classic,tv-bedroom", "--backbone", tiny_whisper])
    assert none_left.exit_code == 2 and "no development nights" in " ".join(none_left.output.split())
    assert "embedding" not in none_left.output
    missing = CliRunner().invoke(app, ["breathing-eval", str(tmp_path / "none"), "--root", str(root)])
    assert missing.exit_code == 2 and "no <style>" in " ".join(missing.output.split())


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_a_cohort_voiced_otherwise_is_written_again(tmp_path, monkeypatch):
    # Results differ between espeak-ng's speech and the built-in synthesiser's (README, "TV speech from
    # espeak-ng"): a styled cohort built with the other is written again, not kept, and the report says which.
    kwargs = dict(styles=("classic", "tv-bedroom"), nights=1, clean_nights=0, hours=0.02, seed=5)
    classic, tv = build_cohorts(tmp_path, **kwargs, speech_source="synth")
    written = {p: (p / "cohort.json").stat().st_mtime_ns for p in (classic, tv)}
    with monkeypatch.context() as m:
        m.setenv("PATH", "/nonexistent")  # no espeak-ng: "auto" is the synthesiser, so both are kept
        build_cohorts(tmp_path, **kwargs)
    assert {p: (p / "cohort.json").stat().st_mtime_ns for p in (classic, tv)} == written
    assert cohort_speech(tmp_path, {"classic", "tv-bedroom"}) == ["synth"]
    build_cohorts(tmp_path, **kwargs)  # espeak-ng here: the styled cohort is voiced again, the classic kept
    assert (classic / "cohort.json").stat().st_mtime_ns == written[classic]
    assert json.loads((tv / "cohort.json").read_text())["params"]["speech"] == "espeak"
    assert cohort_speech(tmp_path, {"classic", "tv-bedroom"}) == ["espeak"]


SMALL_BUILD = ["--build", "--styles", "classic", "--held-out", "classic", "--nights", "1", "--clean", "0"]
SMALL_BUILD += ["--hours", "0.02", "--speech", "synth"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--min-confidence", "nan"], "--min-confidence must be a number from 0 to 1, got nan"),
        (["--min-confidence", "-5"], "--min-confidence must be a number from 0 to 1, got -5"),
        (["--min-confidence", "7"], "--min-confidence must be a number from 0 to 1, got 7"),
        (["--nights", "0"], "--nights must be at least 1, got 0"),
        (["--clean", "-1"], "--clean must be 0 or more, got -1"),
        (["--seed", "-1"], "--seed must be a whole number >= 0, got -1"),
        (["--hours", "nan"], "--hours must be a positive, finite number, got nan"),
        (["--backbone", "./no-such-model"], "no model folder with a config.json"),  # was exit 1 after every night
    ],
)
def test_bad_options_are_refused_in_one_line_before_anything_is_built(tmp_path, args, needle):
    """A NaN cut dropped every event (recall 0, exit 0) and -5 kept every candidate; --nights 0 built nothing
    and was blamed on the folder. Now exit 2, one line naming the option, and nothing built or written."""
    cohorts, root = tmp_path / "cohorts", tmp_path / "root"
    result = CliRunner().invoke(app, ["breathing-eval", str(cohorts), "--root", str(root), *SMALL_BUILD, *args])
    assert result.exit_code == 2 and needle in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and "not expected" not in result.output
    assert not cohorts.exists() and not root.exists()


def test_a_report_path_that_cannot_be_written_is_refused_before_any_night_is_built(tmp_path):
    """An --out that is a folder, or below a file, failed only after every night was built and scored, as
    "This was not expected" (exit 1). Now exit 2 in one line, before anything is built."""
    cohorts, root = tmp_path / "cohorts", tmp_path / "root"
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    for out, needle in (
        (tmp_path / "a-folder", "is a folder: name the report file"),
        (tmp_path / "a-file" / "deeper" / "report.json", "a-file is a file, so the report's folder cannot be made"),
    ):
        args = ["breathing-eval", str(cohorts), "--root", str(root), *SMALL_BUILD, "--out", str(out)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2 and "--out" in result.stderr and needle in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and "not expected" not in result.output
        assert not cohorts.exists() and not root.exists()
    (tmp_path / "root").write_text("x")  # the default report path is under --root: checked the same way
    result = CliRunner().invoke(app, ["breathing-eval", str(cohorts), "--root", str(root), *SMALL_BUILD])
    assert result.exit_code == 2 and "--root" in result.stderr and "is a file" in result.stderr, result.output
    assert not cohorts.exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a device that is always full)")
def test_a_report_that_fails_to_write_is_one_line(tmp_path):
    """A full disk at the report (the last step) was a traceback ending "This was not expected"; now one line
    naming the report's path, exit 2."""
    from sleepsound.synth.writers import generate_cohort

    cohorts, root = tmp_path / "cohorts", tmp_path / "root"
    generate_cohort(cohorts / "classic" / "events", 1, 0.02, 3, sample_rate=16_000, layout="plain", cycle_minutes=3)
    args = ["breathing-eval", str(cohorts), "--root", str(root), "--held-out", "classic", "--min-confidence", "0.7"]
    result = CliRunner().invoke(app, [*args, "--out", "/dev/full"])
    last = result.stderr.strip().splitlines()[-1]  # after the progress lines
    assert result.exit_code == 2 and last == "cannot write the report to /dev/full: No space left on device", last
    assert "Traceback" not in result.output and "not expected" not in result.output
