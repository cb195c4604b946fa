"""A recorded background as the night's TV: only the TV changes, at the generator TV's level (in the
speech band), the same files from the same folder and seed, chunk-exact, a TV added where the style
has none, and a bad folder refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import butter, sosfilt
from typer.testing import CliRunner

from sleepsound.cli import app
from sleepsound.synth.hypnogram import NightPlan, make_night_plan
from sleepsound.synth.realbackground import add_generator_tv, lay_real_background, select_clips
from sleepsound.synth.sound import synthesise_chunk
from sleepsound.synth.writers import generate_cohort
from tests.synth.bgclips import make_background_clips

RATE = 8000
ON = ((30.0, 70.0),)  # the TV's schedule in these tests: on for 40 s inside a 100-s render


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_background_clips(tmp_path_factory.mktemp("clips") / "background")


def _tv_on(plan: NightPlan, on: tuple[tuple[float, float], ...] = ON) -> NightPlan:
    """The plan with its TV (the style's, and the recorded one's) on only during ``on``."""
    style = plan.style
    if style is not None:
        tvs = tuple(dataclasses.replace(b, on_s=on) if b.kind == "tv" else b for b in style.backgrounds)
        style = dataclasses.replace(style, backgrounds=tvs)
    real = plan.real_background
    if real is not None:
        real = dataclasses.replace(real, tv=dataclasses.replace(real.tv, on_s=on))
    return dataclasses.replace(plan, style=style, real_background=real)


def _mic(plan: NightPlan, start: float = 0, seconds: float = 100) -> np.ndarray:
    return synthesise_chunk(plan, start, seconds, RATE, channels=["Mic"])["Mic"]


def _speech_band_db(x: np.ndarray) -> float:
    sos = butter(4, [300.0, 3400.0], btype="bandpass", fs=RATE, output="sos")
    return float(10 * np.log10(np.mean(sosfilt(sos, x) ** 2)))


@pytest.mark.parametrize("style", ["classic", "phone-fan", "tv-bedroom"])
def test_the_recorded_tv_replaces_only_the_tv_at_its_level(clips: Path, style: str) -> None:
    plan = make_night_plan("s", 0.05, seed=5, subject_index=1, cycle_minutes=5.0, style=style, speech_source="synth")
    real = lay_real_background(plan, clips)
    again = lay_real_background(plan, clips)
    rb = real.real_background
    assert rb.clips == again.real_background.clips == ("bg_0.wav", "bg_1.wav", "bg_2.wav")  # silent.wav left out
    assert np.array_equal(rb.start_s, again.real_background.start_s) and rb.start_s[-1] > plan.duration_s - 1.0
    assert rb.added_tv == (style != "tv-bedroom")
    if style != "classic":  # the TV is one of the style's backgrounds, recorded in its parameters
        assert [b.kind for b in real.style.backgrounds].count("tv") == 1
    real, plain = _tv_on(real), _tv_on(plan)
    recorded = _mic(real)
    assert np.array_equal(recorded, _mic(_tv_on(again)))
    halves = [_mic(real, t, 50) for t in (0, 50)]  # chunk-exact: two chunks are the one render
    assert np.allclose(np.concatenate(halves), recorded, atol=1e-6)
    synthetic = _mic(plain)  # classic, phone-fan: no TV; tv-bedroom: the generator's TV, on alike
    t = np.arange(recorded.size) / RATE
    off = (t < ON[0][0] - 0.1) | (t > ON[0][1] + 1.0)  # the room's tail carries the TV on for under a second
    if style == "classic":  # no room: away from the TV nothing changed at all
        assert np.array_equal(recorded[off], synthetic[off])
    else:  # the room is one FFT convolution per chunk: rounding changes, nothing more
        diff = recorded - synthetic
        assert np.sum(diff[off] ** 2) < 1e-6 * np.sum(diff**2)
    inside = (t > ON[0][0] + 1.0) & (t < ON[0][1] - 1.0)
    assert _speech_band_db(recorded[inside] - synthetic[inside]) > _speech_band_db(synthetic[inside]) - 25.0
    if style == "classic":  # no room or microphone: the stream reaches the Mic at the TV's level
        tv = recorded[inside] - synthetic[inside]
        assert abs(20 * np.log10(np.sqrt(np.mean(tv**2))) - rb.tv.level_dbfs) < 4.0
        return
    generator = _tv_on(add_generator_tv(plan)) if style != "tv-bedroom" else plain
    no_tv = _mic(_tv_on(plan, ()))
    reference, ours = _mic(generator) - no_tv, recorded - no_tv
    # Level-matched in the speech band: as loud there as the generator's TV would have been, within 3 dB.
    assert abs(_speech_band_db(ours[inside]) - _speech_band_db(reference[inside])) < 3.0


def test_a_folder_without_clips_or_with_a_broken_or_silent_one_is_refused(tmp_path: Path) -> None:
    plan = make_night_plan("s", 0.05, seed=5, subject_index=1, cycle_minutes=5.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio clips"):
        lay_real_background(plan, tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.wav").write_bytes(b"not a wave file")
    with pytest.raises(ValueError, match=r"bad\.wav"):
        lay_real_background(plan, broken)
    silent = make_background_clips(tmp_path / "silent")
    for name in ("bg_0.wav", "bg_1.wav", "bg_2.wav"):
        (silent / name).unlink()
    with pytest.raises(ValueError, match="every background clip is silent"):
        lay_real_background(plan, silent)
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "out"), "--real-background", str(tmp_path / "none")])
    assert result.exit_code == 2 and "not a folder of background clips" in " ".join(result.output.split())


def test_a_cohort_records_its_background_and_the_command_takes_it(tmp_path: Path, clips: Path) -> None:
    args = ["--subjects", "1", "--hours", "0.05", "--sample-rate", "8000", "--layout", "plain", "--seed", "5"]
    args += ["--cycle-minutes", "5", "--style", "hvac-hall", "--speech", "synth"]
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "a"), *args, "--real-background", str(clips)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "a" / "cohort.json").read_text())
    params, subject = doc["params"], doc["subjects"][0]
    assert params["real_background"] == str(clips.resolve()) and len(params["real_background_sha256"]) == 64
    assert subject["real_background"]["clips"] == 3 and subject["real_background"]["tv_added"] is True
    tv = [b for b in subject["style_params"]["backgrounds"] if b["kind"] == "tv"]
    assert len(tv) == 1 and tv[0]["level_dbfs"] == subject["real_background"]["tv_level_dbfs"]
    again = generate_cohort(tmp_path / "b", 1, 0.05, 5, sample_rate=8000, layout="plain", cycle_minutes=5.0,
                            style="hvac-hall", speech_source="synth", real_background=clips)  # fmt: skip
    audio = sorted((tmp_path / "a").glob("*.flac"))[0]
    assert audio.read_bytes() == Path(again[0].audio_paths[0]).read_bytes()


def test_a_categories_file_picks_the_clips_to_play(tmp_path: Path, clips: Path) -> None:
    table = tmp_path / "categories.csv"
    table.write_text("label,first,last,category\nbackground,0,0,tv\nbackground,1,1,talk\nbackground,2,2,tv\n")
    assert select_clips(clips, table, ["tv"]) == ("bg_0.wav", "bg_2.wav")
    with pytest.raises(ValueError, match=r"categories\.csv: no category \['news'\]; it names talk, tv"):
        select_clips(clips, table, ["news"])
    args = ["--subjects", "1", "--hours", "0.05", "--sample-rate", "8000", "--layout", "plain", "--seed", "5"]
    args += ["--cycle-minutes", "5", "--style", "classic", "--real-background", str(clips)]
    pick = ["--background-categories", str(table), "--background-only", "tv"]
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "a"), *args, *pick])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "a" / "cohort.json").read_text())
    assert doc["params"]["real_background_files"] == ["bg_0.wav", "bg_2.wav"]
    assert doc["subjects"][0]["real_background"]["clips"] == 2
    assert CliRunner().invoke(app, ["synth", str(tmp_path / "b"), *args]).exit_code == 0  # the whole folder
    whole = json.loads((tmp_path / "b" / "cohort.json").read_text())
    assert whole["params"]["real_background_sha256"] != doc["params"]["real_background_sha256"]
    assert "real_background_files" not in whole["params"] and whole["subjects"][0]["real_background"]["clips"] == 3
    alone = CliRunner().invoke(app, ["synth", str(tmp_path / "c"), "--background-only", "tv"])
    assert alone.exit_code == 2 and "need --real-background" in " ".join(alone.output.split())
