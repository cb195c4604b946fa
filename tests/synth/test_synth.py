"""Synthetic cohort generator: realism of the plan, sound that follows it, files readers can trust."""

from __future__ import annotations

import csv
import filecmp
import json
import xml.etree.ElementTree as ET
from collections import Counter
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyedflib
import pytest
import soundfile as sf

from sleepsound.io.rml import RML_NAMESPACE, RmlEvent, parse_rml, stages_per_epoch
from sleepsound.labels.vocabulary import APNEA_TYPES, EPOCH_SECONDS, RML_STAGE_TO_5, STAGES_5
from sleepsound.synth.hypnogram import RESPIRATORY_FAMILY, SNORE_TYPE, make_night_plan
from sleepsound.synth.sound import LIMIT_CEILING, channel_rates, soft_limit, synthesise_chunk
from sleepsound.synth.writers import EDF_SIGNALS, Progress, expected_parts, generate_cohort, patient_id

RATE = 16_000
HOURS = 0.25  # 900 s: two parts of 600 + 300 s
PART_S = 600
COHORT = dict(n_subjects=2, hours=HOURS, seed=5, sample_rate=RATE, part_seconds=PART_S, cycle_minutes=10.0)


@pytest.fixture(scope="module")
def psg_cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list, list[Progress]]:
    out = tmp_path_factory.mktemp("psg")
    seen: list[Progress] = []
    summaries = generate_cohort(out, **COHORT, progress=seen.append)
    return out, summaries, seen


# ----------------------------------------------------------------------------- plans


def _thirds(stages: list[str], stage: str) -> tuple[float, float]:
    n = len(stages)
    first, last = stages[: n // 3], stages[2 * n // 3 :]
    return first.count(stage) / len(first), last.count(stage) / len(last)


@pytest.mark.parametrize("index", range(4))
def test_eight_hour_hypnogram_is_realistic(index: int) -> None:
    plan = make_night_plan("s", 8.0, seed=42, subject_index=index)
    assert plan.n_epochs == 960
    counts = Counter(plan.stages)
    assert set(counts) == set(STAGES_5)
    n3_first, n3_last = _thirds(plan.stages, "N3")
    rem_first, rem_last = _thirds(plan.stages, "R")
    assert n3_first > n3_last + 0.05
    assert rem_last > rem_first + 0.05
    assert plan.stages[0] == "W"  # sleep-onset latency
    assert 0.35 < counts["N2"] / plan.n_epochs < 0.75
    assert counts["W"] / plan.n_epochs < 0.3
    # Sleep cycles: REM comes back several times, roughly every 90 minutes.
    rem_starts = [i for i in range(1, plan.n_epochs) if plan.stages[i] == "R" and plan.stages[i - 1] != "R"]
    rem_periods = [i for i in rem_starts if not any(0 < i - j < 30 for j in rem_starts)]
    assert 3 <= len(rem_periods) <= 7


@pytest.mark.parametrize("ahi", [3.0, 12.0, 25.0, 50.0])
def test_event_count_follows_ahi_and_events_respect_sleep(ahi: float) -> None:
    plan = make_night_plan("s", 8.0, seed=7, subject_index=1, ahi=ahi)
    respiratory = plan.respiratory_events()
    expected = ahi * plan.sleep_hours
    assert abs(len(respiratory) - expected) <= max(3.0, 0.1 * expected)
    assert plan.ahi == pytest.approx(len(respiratory) / plan.sleep_hours)
    ordered = sorted(respiratory, key=lambda e: e.start_s)
    for a, b in zip(ordered, ordered[1:], strict=False):
        assert a.end_s <= b.start_s, "respiratory events overlap"
    for e in respiratory:
        epochs = range(int(e.start_s // EPOCH_SECONDS), int((e.end_s - 1e-9) // EPOCH_SECONDS) + 1)
        assert all(plan.stages[i] != "W" for i in epochs), f"{e} touches wake"
        limit = (10.0, 60.0) if e.type in APNEA_TYPES else (10.0, 40.0)
        assert limit[0] <= e.duration_s <= limit[1]
    for e in plan.events:
        if e.type == SNORE_TYPE:
            assert plan.stages[int(e.start_s // EPOCH_SECONDS)] != "W"
            assert not any(a.start_s < e.start_s < a.end_s - 1e-6 for a in respiratory if a.type in APNEA_TYPES)


def test_a_snore_under_way_at_the_end_of_the_night_is_scored_up_to_the_end() -> None:
    """This night's last snored inspiration starts 0.4 s before the end: its event ends with the night
    (it ran 1.7 s past it, which validation then reported as an event outside the recording)."""
    plan = make_night_plan("s", 10 / 60, seed=5, subject_index=1, cycle_minutes=10)
    night_s = plan.n_epochs * EPOCH_SECONDS
    last = max((e for e in plan.events if e.type == SNORE_TYPE), key=lambda e: e.start_s)
    assert (last.start_s, last.end_s) == (pytest.approx(night_s - 0.4), pytest.approx(night_s))
    for index in range(6):
        for e in make_night_plan("s", 0.2, seed=index, subject_index=index, cycle_minutes=6).events:
            assert e.start_s >= 0.0 and e.end_s <= 0.2 * 3600 + 1e-6 and e.duration_s >= 0.1, e


def test_events_cluster_in_light_and_rem_sleep() -> None:
    per_hour: dict[str, list[float]] = {s: [] for s in STAGES_5}
    for index in range(3):
        plan = make_night_plan("s", 8.0, seed=3, subject_index=index, ahi=40.0)
        starts = Counter(plan.stages[int(e.start_s // EPOCH_SECONDS)] for e in plan.respiratory_events())
        counts = Counter(plan.stages)
        for stage in STAGES_5:
            if counts[stage]:
                per_hour[stage].append(starts[stage] / (counts[stage] * EPOCH_SECONDS / 3600))
    assert max(per_hour["W"]) == 0
    assert np.mean(per_hour["N3"]) < 0.6 * np.mean(per_hour["N2"])
    assert np.mean(per_hour["R"]) > np.mean(per_hour["N2"])
    types = Counter(e.type for e in plan.respiratory_events())
    assert {"ObstructiveApnea", "Hypopnea"} <= set(types)


def test_cohort_mixes_severities_and_snorers() -> None:
    plans = [make_night_plan("s", 0.5, seed=9, subject_index=i) for i in range(16)]
    assert len({p.severity for p in plans}) >= 3
    assert len({p.sound.snorer for p in plans}) == 2
    assert len({round(p.sound.snore_f0_hz) for p in plans}) == 16  # per-subject pitch
    snorer = next(p for p in plans if p.sound.snorer)
    assert any(e.type == SNORE_TYPE for e in snorer.events)


@pytest.mark.parametrize("index", range(5))
def test_short_demo_night_holds_every_stage(index: int) -> None:
    plan = make_night_plan("s", 1.5, seed=1, subject_index=index, cycle_minutes=30.0)
    assert set(plan.stages) == set(STAGES_5)


def test_plans_are_deterministic_and_seed_dependent() -> None:
    a = make_night_plan("s", 2.0, seed=4, subject_index=0)
    b = make_night_plan("s", 2.0, seed=4, subject_index=0)
    c = make_night_plan("s", 2.0, seed=5, subject_index=0)
    assert a.stages == b.stages and a.events == b.events and a.sound == b.sound
    assert np.array_equal(a.breaths.onset_s, b.breaths.onset_s)
    assert (a.stages, a.events) != (c.stages, c.events)


# ----------------------------------------------------------------------------- sound


@pytest.fixture(scope="module")
def severe_plan():
    return make_night_plan("s", 1.5, seed=11, subject_index=1, cycle_minutes=30.0, ahi=40.0)


def test_synthesis_is_independent_of_chunking(severe_plan) -> None:
    whole = synthesise_chunk(severe_plan, 600, 120, 8000)
    pieces = [synthesise_chunk(severe_plan, start, n, 8000) for start, n in ((600, 60), (660, 37), (697, 23))]
    for name, signal in whole.items():
        np.testing.assert_allclose(np.concatenate([p[name] for p in pieces]), signal, rtol=0, atol=1e-6)
        assert signal.size == channel_rates(8000)[name] * 120
    other = synthesise_chunk(severe_plan, 600, 120, 8000, seed=severe_plan.seed + 1)
    assert not np.allclose(other["Mic"], whole["Mic"])


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def test_apnoeas_are_near_silence_ended_by_breathing(severe_plan) -> None:
    apnoeas = [e for e in severe_plan.respiratory_events() if e.type in APNEA_TYPES and e.start_s >= 30][:8]
    assert len(apnoeas) >= 5
    mic_ratios, trach_ratios = [], []
    for e in apnoeas:
        start = int(e.start_s) - 25
        sig = synthesise_chunk(severe_plan, start, int(e.end_s) + 1 - start, 8000, channels=["Mic", "Tracheal"])
        inside = slice(int((e.start_s + 1 - start) * 8000), int((e.end_s - 0.5 - start) * 8000))
        before = slice(0, int((e.start_s - 1 - start) * 8000))
        mic_ratios.append(_rms(sig["Mic"][inside]) / _rms(sig["Mic"][before]))
        trach_ratios.append(_rms(sig["Tracheal"][inside]) / _rms(sig["Tracheal"][before]))
        flow = synthesise_chunk(severe_plan, start, int(e.end_s) + 1 - start, 8000, channels=["Flow Patient"])
        flow_in = flow["Flow Patient"][int((e.start_s + 1 - start) * 25) : int((e.end_s - 0.5 - start) * 25)]
        assert np.abs(flow_in).max() < 0.05  # no airflow
    assert np.median(mic_ratios) < 0.3
    assert np.median(trach_ratios) < np.median(mic_ratios)  # the neck microphone hears less room


def _envelope_regularity(x: np.ndarray, rate: int) -> float:
    """Peak autocorrelation of the 100 Hz loudness envelope at breathing lags (1.5-7 s)."""
    env = np.sqrt(np.mean(x.reshape(-1, rate // 100) ** 2, axis=1))
    env = env - env.mean()
    ac = np.correlate(env, env, "full")[env.size - 1 :]
    return float(ac[150:700].max() / ac[0])


def test_breathing_sound_follows_the_stage(severe_plan) -> None:
    """N3 breathing is more regular than REM and wake; wake is irregular; all at the same microphone."""
    regularity: dict[str, list[float]] = {s: [] for s in ("W", "N3", "R")}
    for stage in regularity:
        epochs = [i for i, s in enumerate(severe_plan.stages) if s == stage and i > 0][:8]
        for i in epochs:
            mic = synthesise_chunk(severe_plan, i * 30, 30, 8000, channels=["Mic"])["Mic"]
            regularity[stage].append(_envelope_regularity(mic, 8000))
    assert np.mean(regularity["N3"]) > np.mean(regularity["R"]) + 0.1
    assert np.mean(regularity["N3"]) > np.mean(regularity["W"]) + 0.1


def test_snore_sensor_and_spo2_follow_events(severe_plan) -> None:
    b = severe_plan.breaths
    snored = np.flatnonzero((b.snore > 0) & (b.onset_s > 5))[:20]
    quiet = np.flatnonzero((b.snore == 0) & ~b.recovery & (b.onset_s > 5))[:20]
    assert snored.size and quiet.size

    def snore_rms(i: int) -> float:
        start = int(b.onset_s[i])
        x = synthesise_chunk(severe_plan, start, 3, 8000, channels=["Snore"])["Snore"]
        lo = int((b.onset_s[i] - start) * 500)
        return _rms(x[lo : lo + int(b.insp_s[i] * 500)])

    assert np.median([snore_rms(i) for i in snored]) > 3 * np.median([snore_rms(i) for i in quiet])
    spo2 = synthesise_chunk(severe_plan, 0, int(severe_plan.duration_s), 8000, channels=["SpO2"])["SpO2"]
    assert spo2.min() <= severe_plan.sound.spo2_baseline - 3 and spo2.max() <= 100


def test_soft_limit_never_clips() -> None:
    x = np.linspace(-50, 50, 10001, dtype=np.float32)
    y = soft_limit(x)
    assert np.abs(y).max() <= LIMIT_CEILING < 1.0
    small = np.abs(x) <= 0.5
    assert np.array_equal(y[small], x[small])
    assert np.all(np.diff(y) >= 0)


def test_synthesise_chunk_rejects_bad_ranges(severe_plan) -> None:
    with pytest.raises(ValueError, match="outside"):
        synthesise_chunk(severe_plan, severe_plan.duration_s - 10, 20, 8000)
    with pytest.raises(ValueError, match="whole samples"):
        synthesise_chunk(severe_plan, 0.0001, 1, 8000)
    with pytest.raises(ValueError, match="unknown channels"):
        synthesise_chunk(severe_plan, 0, 1, 8000, channels=["EEG"])


# ----------------------------------------------------------------------------- files


def test_psg_audio_layout_and_edf_parts(psg_cohort) -> None:
    out, summaries, _ = psg_cohort
    assert len(summaries) == 2 and summaries[0].subject_id == patient_id(5, 0)
    assert summaries[0].subject_id != summaries[1].subject_id
    for summary in summaries:
        pid = summary.subject_id
        assert len(pid) == 15 and pid[8] == "-" and pid.replace("-", "").isdigit()
        parts = sorted((out / "APNEA_EDF" / pid).iterdir())
        assert [p.name for p in parts] == [f"{pid}[001].edf", f"{pid}[002].edf"]
        assert len(parts) == expected_parts(HOURS, PART_S) == 2
        assert [Path(p) for p in summary.audio_paths] == parts
        assert (out / "APNEA_RML" / f"{pid}.rml").is_file()
        starts, durations = [], []
        for path in parts:
            with pyedflib.EdfReader(str(path)) as reader:
                labels = reader.getSignalLabels()
                assert labels == [spec.label for spec in EDF_SIGNALS]
                rates = dict(zip(labels, reader.getSampleFrequencies(), strict=True))
                assert rates == {"SpO2": 1, "Flow Patient": 25, "Snore": 500, "Mic": RATE, "Tracheal": RATE}
                assert reader.datarecord_duration == 1
                durations.append(reader.file_duration)
                starts.append(reader.getStartdatetime())
                mic = labels.index("Mic")
                assert reader.getNSamples()[mic] == RATE * reader.file_duration
                digital = reader.readSignal(mic, 0, RATE * 30, digital=True)
                assert np.abs(digital).max() < 32767  # no clipping
                assert _rms(digital.astype(float)) > 30  # and not silent
        assert durations == [600, 300]
        assert starts[1] - starts[0] == timedelta(seconds=PART_S)


def test_edf_audio_matches_the_synthesiser(psg_cohort) -> None:
    _out, summaries, _ = psg_cohort
    summary = summaries[1]
    plan = make_night_plan(
        summary.subject_id, HOURS, COHORT["seed"], subject_index=1, cycle_minutes=COHORT["cycle_minutes"]
    )
    expected = synthesise_chunk(plan, 610, 5, RATE)  # 10 s into part [002]
    with pyedflib.EdfReader(summary.audio_paths[1]) as reader:
        for name in ("Mic", "Tracheal", "Snore", "Flow Patient"):
            index = reader.getSignalLabels().index(name)
            rate = int(reader.getSampleFrequency(index))
            got = reader.readSignal(index, 10 * rate, 5 * rate)
            step = (reader.getPhysicalMaximum(index) - reader.getPhysicalMinimum(index)) / 65534
            np.testing.assert_allclose(got, expected[name], atol=step)


def test_rml_from_the_writer_round_trips_the_plan(psg_cohort) -> None:
    _out, summaries, _ = psg_cohort
    for index, summary in enumerate(summaries):
        plan = make_night_plan(
            summary.subject_id, HOURS, COHORT["seed"], subject_index=index, cycle_minutes=COHORT["cycle_minutes"]
        )
        ann = parse_rml(summary.annotation_paths[0])
        assert ann.unknown == []
        assert ann.recording_start == plan.recording_start
        assert ann.duration_s == 900 and ann.segment_durations_s == [600, 300]
        assert ann.channels == [spec.label for spec in EDF_SIGNALS]
        assert stages_per_epoch(ann) == plan.stages
        assert stages_per_epoch(ann, plan.n_epochs + 2)[-2:] == ["UNS", "UNS"]
        user_events = [e for e in ann.events if not e.machine]
        assert user_events == [RmlEvent(e.family, e.type, e.start_s, e.duration_s) for e in plan.events]
        assert any(e.machine for e in ann.events)
        assert sum(e.family == RESPIRATORY_FAMILY for e in user_events) == len(plan.respiratory_events())
        # A MachineStaging block exists and disagrees with the user's scoring.
        root = ET.parse(summary.annotation_paths[0]).getroot()
        q = f"{{{RML_NAMESPACE}}}"
        machine = root.findall(f"{q}ScoringData/{q}StagingData/{q}MachineStaging/{q}NeuroAdultAASMStaging/{q}Stage")
        machine_changes = [(float(s.get("Start")), s.get("Type")) for s in machine]
        assert machine_changes and machine_changes != ann.stage_changes
        assert all(t in RML_STAGE_TO_5 for _, t in machine_changes)


def test_cohort_json_and_progress(psg_cohort) -> None:
    out, summaries, seen = psg_cohort
    doc = json.loads((out / "cohort.json").read_text())
    assert doc["seed"] == COHORT["seed"] and doc["params"]["sample_rate"] == RATE
    assert [s["subject_id"] for s in doc["subjects"]] == [s.subject_id for s in summaries]
    for entry, summary in zip(doc["subjects"], summaries, strict=True):
        assert entry["stage_counts"] == summary.stage_counts
        assert sum(entry["stage_counts"].values()) == summary.n_epochs == 30
        assert entry["ahi"] == summary.ahi
        assert all((out / p).is_file() for p in entry["audio_paths"] + entry["annotation_paths"])
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert {p.subject_id for p in seen} == {s.subject_id for s in summaries}


def test_same_arguments_give_identical_files(psg_cohort, tmp_path: Path) -> None:
    out, _, _ = psg_cohort
    again = tmp_path / "again"
    generate_cohort(again, **COHORT)
    first = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    second = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert first == second and len(first) == 2 * 3 + 1
    for rel in first:
        assert filecmp.cmp(out / rel, again / rel, shallow=False), f"{rel} differs"


def test_plain_layout(tmp_path: Path) -> None:
    summaries = generate_cohort(
        tmp_path,
        n_subjects=1,
        hours=0.1,
        seed=2,
        sample_rate=8000,
        layout="plain",
        audio_format="wav",
        plain_channels=("Mic", "Tracheal"),
        cycle_minutes=5.0,
    )
    (summary,) = summaries
    pid = summary.subject_id
    audio = tmp_path / f"{pid}.wav"
    assert summary.audio_paths == (str(audio),)
    info = sf.info(str(audio))
    assert (info.samplerate, info.channels, info.frames) == (8000, 2, 8000 * 360)
    plan = make_night_plan(pid, 0.1, 2, subject_index=0, cycle_minutes=5.0)
    with sf.SoundFile(str(audio)) as handle:
        handle.seek(8000 * 100)
        block = handle.read(8000 * 2, dtype="float32")
    expected = synthesise_chunk(plan, 100, 2, 8000, channels=["Mic", "Tracheal"])
    np.testing.assert_allclose(block[:, 0], expected["Mic"], atol=2 / 32767)
    np.testing.assert_allclose(block[:, 1], expected["Tracheal"], atol=2 / 32767)

    with open(tmp_path / f"{pid}.stages.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch_index", "start_s", "stage"]
    assert [r["stage"] for r in rows] == plan.stages
    assert [float(r["start_s"]) for r in rows] == [30.0 * i for i in range(plan.n_epochs)]
    with open(tmp_path / f"{pid}.events.csv", newline="") as handle:
        events = list(csv.DictReader(handle))
    assert list(events[0]) == ["start_s", "duration_s", "family", "type"] if events else True
    assert [(float(e["start_s"]), float(e["duration_s"]), e["family"], e["type"]) for e in events] == [
        (e.start_s, e.duration_s, e.family, e.type) for e in plan.events
    ]

    flac = generate_cohort(tmp_path / "flac", n_subjects=1, hours=0.05, seed=2, sample_rate=16000, layout="plain")
    assert sf.info(flac[0].audio_paths[0]).format == "FLAC" and sf.info(flac[0].audio_paths[0]).channels == 1


def test_generate_cohort_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        generate_cohort(tmp_path, 1, 0.1, 0, layout="edf")
    with pytest.raises(ValueError, match="audio_format"):
        generate_cohort(tmp_path, 1, 0.1, 0, sample_rate=8000, layout="plain", audio_format="mp3")
    with pytest.raises(ValueError, match="sample_rate"):
        generate_cohort(tmp_path, 1, 0.1, 0, sample_rate=16000.5)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--hours", "nan"], "finite number of hours"),
        (["--hours", "inf"], "finite number of hours"),
        (["--subjects", "0"], "at least one subject"),
        (["--cycle-minutes", "nan"], "cycle_minutes"),
        (["--cycle-minutes", "inf"], "cycle_minutes"),
        (["--cycle-minutes", "1e12"], "cycle_minutes must be positive, finite and at most 1440 (a day), got 1e+12"),
        (["--cycle-minutes", "1441"], "at most 1440"),
        (["--seed", "-5"], "seed must be a whole number >= 0, got -5"),
        (["--sample-rate", "0"], "sample_rate"),
        (["--layout", "edf"], "layout"),
    ],
)
def test_synth_refuses_bad_shapes_in_one_line_before_writing(tmp_path: Path, args: list[str], needle: str) -> None:
    """Bad counts, NaN or infinite lengths, a negative seed and a cycle of 1e12 minutes were exit 1 ('not
    expected', 'cannot convert float NaN to integer', 'expected non-negative integer', a MemoryError) and left
    the output folder behind; now exit 2, one line, nothing written."""
    from typer.testing import CliRunner

    from sleepsound.cli import app

    small = ["--subjects", "1", "--hours", "0.02", "--sample-rate", "8000"]
    out = CliRunner().invoke(app, ["synth", str(tmp_path / "c"), *small, *args])
    assert out.exit_code == 2 and needle in out.stderr and "not expected" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_a_long_cycle_never_builds_stages_past_the_night() -> None:
    """The hypnogram's lists grew with the cycle before the night was cut to length (a 6-minute night took
    4 GB at 1e10 minutes); now they stop at the night's end, so memory follows the night alone."""
    import tracemalloc

    from sleepsound.synth.hypnogram import make_hypnogram

    tracemalloc.start()
    try:
        stages = make_hypnogram(12, np.random.default_rng(3), cycle_minutes=1e8)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(stages) == 12 and set(stages) <= set(STAGES_5)
    assert peak < 200_000, peak  # was 9.6 MB: a list of a million epochs of sleep-onset N1


def test_synth_refuses_a_target_that_is_no_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from sleepsound.cli import app

    (tmp_path / "file").write_text("x")
    small = ["--subjects", "1", "--hours", "0.02", "--sample-rate", "8000"]
    for target in (tmp_path / "file", tmp_path / "file" / "below"):
        out = CliRunner().invoke(app, ["synth", str(target), *small])
        assert out.exit_code == 2 and "cannot write a cohort into" in out.stderr, out.stderr


def test_synth_refuses_a_folder_holding_a_different_cohort(tmp_path: Path) -> None:
    """A second cohort written into the first's folder left the first's nights beside its own while
    cohort.json named only the second; now refused (exit 2, nothing touched). The same arguments
    again still rewrite the same files."""
    from typer.testing import CliRunner

    from sleepsound.cli import app

    small = [str(tmp_path / "c"), "--subjects", "1", "--hours", "0.02", "--sample-rate", "8000", "--cycle-minutes", "5"]
    assert CliRunner().invoke(app, ["synth", *small, "--seed", "1"]).exit_code == 0
    before = sorted(p.name for p in (tmp_path / "c").rglob("*"))
    other = CliRunner().invoke(app, ["synth", *small, "--seed", "2"])
    assert other.exit_code == 2 and "already holds a different synthetic cohort (seed 1" in other.stderr, other.stderr
    assert sorted(p.name for p in (tmp_path / "c").rglob("*")) == before
    assert CliRunner().invoke(app, ["synth", *small, "--seed", "1"]).exit_code == 0  # same cohort: fine
