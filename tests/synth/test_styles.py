"""Generator styles: classic stays what it was (to float rounding); every style is reproducible, keeps the
event truth in the audio, and colours the sound measurably by its room, microphone and background."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.signal import butter, sosfiltfilt, welch

from sleepsound.labels.vocabulary import APNEA_TYPES
from sleepsound.synth.hypnogram import NightPlan, make_night_plan
from sleepsound.synth.sound import synthesise_chunk
from sleepsound.synth.styled import _room_irs
from sleepsound.synth.styles import (
    CLASSIC,
    MIXED,
    NAMED_STYLES,
    BackgroundSpec,
    MicSpec,
    RoomSpec,
    draw_style,
    make_assets,
    resolve_speech_source,
    resolve_styles,
    style_for_night,
)
from sleepsound.synth.writers import generate_cohort, night_styles

# The classic generator as it was before styles existed (commit c66dd34; its byte digests held until
# 2026-12-07): a change to classic (new random draws, a different filter) changes these fingerprints,
# and with them every cache. Audio is compared by its level over each 10 s, not by its bytes: the
# math kernels numpy and scipy pick for the CPU (AVX-512 or not) round the last bits of float32
# samples differently, so the same code writes other bytes on another machine (the byte digest failed on
# an AMD EPYC without AVX-512). Files that are not audio (annotations, stages, cohort.json) stay exact.
CLASSIC_FINGERPRINTS = Path(__file__).with_name("classic_fingerprints.json")
SOUND_FILES = (".flac", ".wav")  # EDF holds its audio among other signals: read apart
BLOCK_S = 10


def _levels(x: np.ndarray, rate: float) -> list[float]:
    """RMS of each ``BLOCK_S`` block (the last one partial)."""
    step = max(1, round(rate * BLOCK_S))
    x = np.asarray(x, dtype=np.float64)
    return [float(np.sqrt(np.mean(x[i : i + step] ** 2))) for i in range(0, len(x), step)]


def _chunks_fingerprint(plan: NightPlan, rate: int = 8000) -> dict[str, list[float]]:
    signals: dict[str, list[np.ndarray]] = {}
    for start in range(0, int(plan.duration_s), 30):
        for name, x in synthesise_chunk(plan, start, 30, rate).items():
            signals.setdefault(name, []).append(np.asarray(x))
    return {name: _levels(np.concatenate(xs), len(xs[0]) / 30) for name, xs in sorted(signals.items())}


def _files_fingerprint(folder: Path) -> dict[str, object]:
    import pyedflib
    import soundfile as sf

    out: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        name = path.relative_to(folder).as_posix()
        if path.suffix == ".edf":
            with pyedflib.EdfReader(str(path)) as edf:
                out[name] = {
                    label: _levels(edf.readSignal(i), edf.getSampleFrequency(i))
                    for i, label in enumerate(edf.getSignalLabels())
                }
        elif path.suffix in SOUND_FILES:
            audio, rate = sf.read(path, dtype="float64", always_2d=True)
            out[name] = {f"channel {c}": _levels(audio[:, c], rate) for c in range(audio.shape[1])}
        else:
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _classic_now(tmp_path: Path) -> dict[str, object]:
    plan = make_night_plan("s", 0.05, seed=3, subject_index=1, cycle_minutes=5.0, ahi=40.0)
    now: dict[str, object] = {"chunks": _chunks_fingerprint(plan)}
    for layout in ("psg-audio", "plain"):
        out = tmp_path / layout
        generate_cohort(out, n_subjects=1, hours=0.05, seed=3, sample_rate=8000, layout=layout, cycle_minutes=5.0)
        now[layout] = _files_fingerprint(out)
    return now


def _assert_same(now: object, then: object, where: str) -> None:
    """Exact for digests and names; levels within a part in 10,000 (float rounding moves them far less,
    a new random draw or filter far more)."""
    if isinstance(then, dict):
        assert isinstance(now, dict) and sorted(now) == sorted(then), f"{where}: {sorted(now)} != {sorted(then)}"
        for key in then:
            _assert_same(now[key], then[key], f"{where}/{key}")
    elif isinstance(then, list):
        assert isinstance(now, list) and len(now) == len(then), where
        np.testing.assert_allclose(now, then, rtol=1e-4, atol=1e-9, err_msg=where)
    else:
        assert now == then, where


def test_classic_is_unchanged_to_the_float_rounding_of_the_cpu(tmp_path: Path) -> None:
    then = json.loads(CLASSIC_FINGERPRINTS.read_text())
    _assert_same(_classic_now(tmp_path), then, "classic")


def test_the_classic_fingerprint_tells_a_changed_draw(tmp_path: Path) -> None:
    """The comparison is not blind: another seed's night (a new draw) fails it."""
    plan = make_night_plan("s", 0.05, seed=4, subject_index=1, cycle_minutes=5.0, ahi=40.0)
    then = json.loads(CLASSIC_FINGERPRINTS.read_text())["chunks"]
    with pytest.raises(AssertionError):
        _assert_same(_chunks_fingerprint(plan), then, "classic/chunks")


# ----------------------------------------------------------------------------- styled nights

RATE = 8000
DRAWN = tuple(s for s in NAMED_STYLES if s != CLASSIC)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _restyle(plan: NightPlan, **changes: object) -> NightPlan:
    """The plan in its style with some parameters changed (assets drawn again to match)."""
    style = dataclasses.replace(plan.style, **changes)
    return dataclasses.replace(plan, style=style, style_assets=make_assets(style, plan))


@pytest.fixture(scope="module")
def severe_plans() -> dict[str, NightPlan]:
    """One severe 20-min night per style (subject varies, so snorers and non-snorers both appear)."""
    return {
        style: make_night_plan("s", 1 / 3, seed=11, subject_index=i, cycle_minutes=8.0, ahi=45.0, style=style)
        for i, style in enumerate(NAMED_STYLES)
    }


def test_styles_resolve_and_refuse_unknown_names() -> None:
    assert resolve_styles(MIXED) == NAMED_STYLES
    assert [style_for_night("classic,varied", i) for i in range(4)] == ["classic", "varied"] * 2
    with pytest.raises(ValueError, match="unknown style"):
        resolve_styles("classic,loud")
    with pytest.raises(ValueError, match="not a drawn style"):
        draw_style("classic", 0, 0, 60.0)


def test_every_style_is_reproducible_by_seed_and_keeps_the_plan(severe_plans) -> None:
    classic = make_night_plan("s", 0.05, seed=4, subject_index=0, cycle_minutes=5.0, ahi=30.0)
    mics = {CLASSIC: synthesise_chunk(classic, 30, 10, RATE, channels=["Mic"])["Mic"]}
    for style in DRAWN:
        a = make_night_plan("s", 0.05, seed=4, subject_index=0, cycle_minutes=5.0, ahi=30.0, style=style)
        b = make_night_plan("s", 0.05, seed=4, subject_index=0, cycle_minutes=5.0, ahi=30.0, style=style)
        other = make_night_plan("s", 0.05, seed=5, subject_index=0, cycle_minutes=5.0, ahi=30.0, style=style)
        assert a.style == b.style and a.style.name == style and a.style != other.style
        assert (a.stages, a.events) == (classic.stages, classic.events)  # events placed exactly as classic's
        assert np.array_equal(a.breaths.onset_s, classic.breaths.onset_s)
        x, y = (synthesise_chunk(p, 30, 10, RATE, channels=["Mic", "Tracheal"]) for p in (a, b))
        assert all(np.array_equal(x[k], y[k]) for k in x)
        assert not np.allclose(x["Mic"], synthesise_chunk(other, 30, 10, RATE, channels=["Mic"])["Mic"])
        assert np.all(np.isfinite(x["Mic"])) and np.abs(x["Mic"]).max() < 1.0 and _rms(x["Mic"]) > 1e-3
        mics[style] = x["Mic"]
    names = list(mics)
    assert all(not np.allclose(mics[p], mics[q]) for i, p in enumerate(names) for q in names[i + 1 :])


def test_styled_sound_does_not_depend_on_chunking(severe_plans) -> None:
    plan = severe_plans["tv-bedroom"]
    whole = synthesise_chunk(plan, 300, 40, RATE, channels=["Mic", "Tracheal"])
    pieces = [synthesise_chunk(plan, s, n, RATE, channels=["Mic", "Tracheal"]) for s, n in ((300, 13), (313, 27))]
    for name, signal in whole.items():
        np.testing.assert_allclose(np.concatenate([p[name] for p in pieces]), signal, rtol=0, atol=1e-6)


def _event_ratios(plan: NightPlan) -> tuple[list[float], list[float]]:
    """Breath-band (200-3000 Hz) RMS during each event over the breathing just before it (>= 8 s, after
    the previous event's recovery): (apnoeas, hypopnoeas)."""
    sos = butter(4, [200, 3000], btype="bandpass", fs=RATE, output="sos")
    apnoea, hypopnoea = [], []
    events = plan.respiratory_events()
    for j, e in enumerate(events):
        start = int(max(events[j - 1].end_s + 8 if j else 0, e.start_s - 20))
        if e.start_s - start < 8:
            continue
        y = sosfiltfilt(sos, synthesise_chunk(plan, start, int(e.end_s) + 1 - start, RATE, channels=["Mic"])["Mic"])
        inside = y[int((e.start_s + 1 - start) * RATE) : int((e.end_s - 0.5 - start) * RATE)]
        before = y[: int((e.start_s - 1 - start) * RATE)]
        (apnoea if e.type in APNEA_TYPES else hypopnoea).append(_rms(inside) / _rms(before))
    return apnoea, hypopnoea


@pytest.mark.parametrize("style", DRAWN)
def test_event_truth_is_in_the_audio_of_every_style(severe_plans, style: str) -> None:
    """Apnoeas silent of breath (the background goes on), hypopnoeas at least 30% quieter, in the mix and
    in the sleeper's sound alone (backgrounds off)."""
    plan = severe_plans[style]
    apnoea, hypopnoea = _event_ratios(plan)
    assert len(apnoea) >= 2 and len(hypopnoea) >= 2 and len(apnoea) + len(hypopnoea) >= 6, (len(apnoea), len(hypopnoea))
    assert np.median(apnoea) < 0.5
    sleeper = _restyle(plan, backgrounds=())
    apnoea, hypopnoea = _event_ratios(sleeper)
    assert np.median(apnoea) < 0.1 and max(apnoea) < 0.5
    assert np.median(hypopnoea) <= 0.7
    b = plan.breaths
    for e in plan.respiratory_events():  # and the recovery: a breath starts right at the event's end
        assert np.min(np.abs(b.onset_s - e.end_s)) < 3.0


def _band_db(x: np.ndarray, low: float, high: float) -> float:
    f, p = welch(x, RATE, nperseg=4096)
    return float(10 * np.log10(p[(f >= low) & (f < high)].mean()))


def test_microphones_colour_the_spectrum_measurably(severe_plans) -> None:
    plan = severe_plans["varied"]
    tilt = {}
    for kind, (hp, pf, pdb, lp) in {
        "mems": (200.0, 3000.0, 8.0, 3900.0),
        "electret": (60.0, 1500.0, 0.0, 1500.0),
    }.items():
        mic = MicSpec(kind, hp, pf, pdb, lp, gain_db=0.0, noise_dbfs=-75.0, clip_level=0.0)
        x = synthesise_chunk(_restyle(plan, mic=mic, backgrounds=()), 240, 60, RATE, channels=["Mic"])["Mic"]
        tilt[kind] = _band_db(x, 2000, 3500) - _band_db(x, 300, 800)
    assert tilt["mems"] > tilt["electret"] + 6.0
    loud = dataclasses.replace(plan.style.mic, gain_db=12.0, clip_level=0.1)  # an overloaded input clips hard
    x = synthesise_chunk(_restyle(plan, mic=loud), 240, 60, RATE, channels=["Mic"])["Mic"]
    assert np.abs(x).max() == pytest.approx(0.1, abs=1e-6) and 0 < np.mean(np.abs(x) >= 0.1 - 1e-6) < 0.2


def test_room_reverberation_follows_its_rt60() -> None:
    for rt60 in (0.3, 0.7):
        room = RoomSpec("medium", rt60, (3.0, 7.0), (0.4, -0.3), near_drr_db=0.0, far_drr_db=-10.0)
        mic = MicSpec("flat", 20.0, 3000.0, 0.0, 20000.0, 0.0, -75.0, 0.0)
        near, far = _room_irs(room, mic, 16000, (1, 2))
        for h in (near, far):
            decay = 10 * np.log10(np.cumsum((h**2)[::-1])[::-1] / np.sum(h**2))  # Schroeder integral
            t5, t25 = np.argmax(decay < -5) / 16000, np.argmax(decay < -25) / 16000
            assert 3 * (t25 - t5) == pytest.approx(rt60, rel=0.3)  # T20 extrapolated to 60 dB
        assert np.sum(far[: 16 * 5] ** 2) < np.sum(near[: 16 * 5] ** 2)  # less direct sound from across the room


def test_fan_and_tv_backgrounds_are_there_and_carry_their_signatures(severe_plans) -> None:
    plan = severe_plans["varied"]
    whole = ((0.0, plan.duration_s),)
    fan = BackgroundSpec("fan", -40.0, 170.0, 3, 2000.0, whole)
    tv = BackgroundSpec("tv", -36.0, 0.0, 0, 7000.0, whole)
    quiet = synthesise_chunk(_restyle(plan, backgrounds=()), 600, 30, RATE, channels=["Mic"])["Mic"]
    with_fan = synthesise_chunk(_restyle(plan, backgrounds=(fan,)), 600, 30, RATE, channels=["Mic"])["Mic"]
    f, p = welch(with_fan - quiet, RATE, nperseg=8192)  # what the fan added
    peak = f[np.argmax(p * (f > 100))]  # its blade-pass tone (or a harmonic, after the microphone's high-pass)
    assert abs(peak - 170.0 * round(peak / 170.0)) < 2.0 and round(peak / 170.0) <= 3
    assert _rms(with_fan - quiet) > 0.003
    with_tv = synthesise_chunk(_restyle(plan, backgrounds=(tv,)), 600, 30, RATE, channels=["Mic"])["Mic"]
    env = np.sqrt(np.mean((with_tv - quiet).reshape(-1, RATE // 100) ** 2, axis=1))  # 100 Hz envelope
    spectrum = np.abs(np.fft.rfft(env - env.mean())) ** 2
    fm = np.fft.rfftfreq(env.size, 0.01)
    assert spectrum[(fm >= 2) & (fm <= 8)].sum() > 2 * spectrum[(fm >= 0.1) & (fm <= 0.6)].sum()  # syllables


def test_movement_comes_more_in_wake_and_never_inside_events() -> None:
    plan = make_night_plan("s", 2.0, seed=2, subject_index=3, cycle_minutes=30.0, ahi=30.0, style="varied")
    assets = plan.style_assets
    stage = np.array(plan.stages)[(assets.move_start_s // 30).astype(int)]
    per_epoch = {s: np.sum(stage == s) / max(1, plan.stages.count(s)) for s in ("W", "N2")}
    assert per_epoch["W"] > 3 * per_epoch["N2"]
    for e in plan.respiratory_events():
        assert not np.any((assets.move_start_s < e.end_s) & (assets.move_start_s + assets.move_duration_s > e.start_s))


def test_speech_falls_back_to_the_formant_synthesiser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert draw_style("tv-bedroom", 1, 0, 60.0).speech_source == "synth"
    with pytest.raises(ValueError, match="speech source"):
        draw_style("tv-bedroom", 1, 0, 60.0, speech_source="festival")


def test_a_styled_cohort_records_the_speech_that_voiced_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "auto" is espeak-ng on one machine and the formant synthesiser on another: the same seed, other audio.
    kwargs = dict(n_subjects=1, hours=0.02, seed=3, sample_rate=RATE, layout="plain", cycle_minutes=5.0)
    generate_cohort(tmp_path / "a", **kwargs, style="tv-bedroom", speech_source="synth")
    assert json.loads((tmp_path / "a" / "cohort.json").read_text())["params"]["speech"] == "synth"
    generate_cohort(tmp_path / "c", **kwargs)  # classic nights do not talk: their cohort.json is as before
    assert "speech" not in json.loads((tmp_path / "c" / "cohort.json").read_text())["params"]
    monkeypatch.setenv("PATH", "/nonexistent")  # a machine without espeak-ng
    assert resolve_speech_source("auto") == "synth" and resolve_speech_source("synth") == "synth"
    with pytest.raises(ValueError, match="espeak-ng is not installed"):
        generate_cohort(tmp_path / "b", **kwargs, style="tv-bedroom", speech_source="espeak")
    assert not (tmp_path / "b").exists()  # refused before anything was written

    from typer.testing import CliRunner

    from sleepsound.cli import app

    args = ["--subjects", "1", "--hours", "0.02", "--sample-rate", "8000", "--layout", "plain"]
    out = CliRunner().invoke(app, ["synth", str(tmp_path / "d"), *args, "--style", "varied", "--speech", "espeak"])
    assert out.exit_code == 2 and "espeak-ng is not installed" in out.stderr and not (tmp_path / "d").exists()


def test_a_mixed_cohort_records_each_nights_style(tmp_path: Path) -> None:
    kwargs = dict(n_subjects=3, hours=0.05, seed=3, sample_rate=RATE, layout="plain", cycle_minutes=5.0)
    summaries = generate_cohort(tmp_path / "a", **kwargs, style="classic,varied,tv-bedroom", speech_source="synth")
    assert [s.style for s in summaries] == ["classic", "varied", "tv-bedroom"]
    doc = json.loads((tmp_path / "a" / "cohort.json").read_text())
    assert doc["params"]["style"] == "classic,varied,tv-bedroom"
    assert doc["subjects"][0]["style_params"] is None
    assert doc["subjects"][2]["style_params"]["backgrounds"][-1]["kind"] == "tv"
    assert night_styles(tmp_path / "a") == {s.subject_id: s.style for s in summaries}
    classic = generate_cohort(tmp_path / "c", **kwargs)
    assert set(night_styles(tmp_path / "c").values()) == {"classic"}
    for styled, plain in zip(summaries, classic, strict=True):  # same truth, other sound
        assert Path(styled.annotation_paths[1]).read_bytes() == Path(plain.annotation_paths[1]).read_bytes()
        same_audio = Path(styled.audio_paths[0]).read_bytes() == Path(plain.audio_paths[0]).read_bytes()
        assert same_audio == (styled.style == "classic")
    again = generate_cohort(tmp_path / "b", **kwargs, style="classic,varied,tv-bedroom", speech_source="synth")
    assert [Path(s.audio_paths[0]).read_bytes() for s in again] == [
        Path(s.audio_paths[0]).read_bytes() for s in summaries
    ]
    with pytest.raises(ValueError, match="unknown style"):
        generate_cohort(tmp_path / "d", **kwargs, style="loud")
    with pytest.raises(ValueError, match="not a readable"):
        night_styles(tmp_path / "d")


def test_the_synth_command_takes_a_style(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sleepsound.cli import app

    args = ["--subjects", "2", "--hours", "0.02", "--sample-rate", "8000", "--cycle-minutes", "5", "--layout", "plain"]
    out = CliRunner().invoke(app, ["synth", str(tmp_path / "c"), *args, "--style", "mixed", "--speech", "synth"])
    assert out.exit_code == 0, out.output
    assert "classic" in out.stdout and "varied" in out.stdout
    assert list(night_styles(tmp_path / "c").values()) == ["classic", "varied"]
    out = CliRunner().invoke(app, ["synth", str(tmp_path / "d"), *args, "--style", "loud"])
    assert out.exit_code == 2 and "unknown style" in out.stderr and not (tmp_path / "d").exists()
    out = CliRunner().invoke(app, ["synth", str(tmp_path / "d"), *args, "--style", "varied", "--speech", "festival"])
    assert out.exit_code == 2 and "--speech must be one of" in out.stderr
