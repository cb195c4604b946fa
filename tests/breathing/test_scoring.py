"""The event table and the indices on the score path, and a cache made before envelopes existed.

The steps of the train and score flows in one process (no Ray, no Prefect), on two tiny synthetic
nights with the tiny random Whisper from conftest: embed, train, predict (which detects events),
then the run's outputs. Then the nights' envelope files are removed, as in a cache written before
this change, and scoring again makes them from the audio without embedding anything again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sleepsound.breathing.combine import detect_night, detect_night_and_heard
from sleepsound.breathing.detector import detect_events
from sleepsound.breathing.envelope import FEATURES, epoch_envelope
from sleepsound.breathing.store import envelope_problem, envelope_table, load_envelope, write_envelope
from sleepsound.core import schemas
from sleepsound.core.config import Config, PreprocessConfig
from sleepsound.embed.cohort import embed_cohort
from sleepsound.embed.epochs import read_epochs
from sleepsound.ingest.manifest import build_manifest, read_manifest, read_manifest_rows, write_manifest
from sleepsound.predict.recordings import predict_recordings
from sleepsound.report.outputs import read_summaries, write_run_outputs
from sleepsound.synth.writers import generate_cohort
from sleepsound.train.fit import train_models
from tests.breathing.signals import RATE, fan, snorer_whose_snoring_pauses


def test_scoring_writes_the_event_table_and_rebuilds_missing_envelopes(tiny_whisper, tmp_path):
    cfg = Config.model_validate(
        {"backbone": {"name": tiny_whisper, "batch_size": 4}, "training": {"epochs": 2, "batch_size": 16}}
    )
    source, root = tmp_path / "nights", tmp_path / "root"
    generate_cohort(source, n_subjects=3, hours=0.1, seed=21, sample_rate=16_000, part_seconds=360, cycle_minutes=6)
    write_manifest(str(root), build_manifest(str(source), cfg.preprocess, cfg.validation))
    rows = [r for r in read_manifest_rows(str(root)) if r["status"] == "accepted"]
    assert not embed_cohort(rows, str(root), cfg, use_ray=False).failed
    envelopes = sorted((root / "breathing").rglob("*.parquet"))
    assert len(envelopes) == len(rows)  # written by the embed stream, one per night
    model = train_models(str(root), cfg, "t1", read_manifest(str(root)))
    predict_recordings(str(root), cfg, "t1", model, read_manifest(str(root)))

    tables = sorted((root / "runs" / "t1" / "events").glob("recording_id=*/part-0.parquet"))
    assert {p.parent.name.split("=")[1] for p in tables} == {r["recording_id"] for r in rows}
    for path in tables:
        table = pq.read_table(path)
        assert table.schema.equals(schemas.EVENTS, check_metadata=False)
        assert set(table["type"].to_pylist()) <= {"apnea", "hypopnea"}
    # One dataset for tools without sleepsound, the id from the folders (with it also a column inside each
    # file, pandas refused the folder: string vs dictionary).
    whole = pd.read_parquet(root / "runs" / "t1" / "events")
    assert len(whole) == sum(pq.read_metadata(p).num_rows for p in tables)
    assert set(whole["recording_id"].astype(str)) <= {r["recording_id"] for r in rows}
    written = {p.name: pq.read_table(p) for p in envelopes}

    reported = write_run_outputs(str(root), "t1", model, {"run_id": "t1"}, cfg, trained=True)
    summaries = read_summaries(reported["summaries"])
    predicted = summaries[summaries["source"] == "predicted"]
    assert {"ahi", "rei", "severity", "severity_rei", "n_apnea", "n_hypopnea", "ahi_warning", "ahi_head"} <= set(
        summaries.columns
    )
    events = pd.concat([pq.read_table(p).to_pandas() for p in tables])
    assert int(predicted["n_apnea"].sum()) == int((events["type"] == "apnea").sum())
    hours = predicted["time_in_bed_min"] / 60.0
    assert ((predicted["rei"] * hours).round(6) == (predicted["n_apnea"] + predicted["n_hypopnea"])).all()
    assert predicted["ahi_warning"].notna().all()  # six-minute nights: far under 2 h of sleep
    # where breathing was heard, per epoch in the predictions and per night in the summaries
    preds = pd.read_parquet(root / "runs" / "t1" / "predictions")
    assert preds["breath_heard_s"].between(0.0, cfg.preprocess.epoch_seconds).all()
    heard = preds.groupby("recording_id", observed=True)["breath_heard_s"].sum()
    nights = predicted.set_index("recording_id")
    for rec, seconds in heard.items():
        assert nights.loc[str(rec), "breathing_heard"] == pytest.approx(
            seconds / nights.loc[str(rec), "time_in_bed_min"] / 60.0
        )
    assert (predicted["breathing_heard"] > 0.6).all()  # the generator's breathing is heard
    assert predicted["events_warning"].isna().all()
    metrics = json.loads((root / "runs" / "t1" / "metrics.json").read_text())
    assert "breathing_events" in metrics
    # a night quarantined since a first attempt of the run: its snoring bouts do not outlive it
    stale = root / "runs" / "t1" / "snoring" / "recording_id=gone-night" / "part-0.parquet"
    stale.parent.mkdir(parents=True)
    pq.write_table(pa.table({"start_s": [1.0], "end_s": [2.0], "mean_prob": [0.9]}), stale)
    write_run_outputs(str(root), "t1", model, {"run_id": "t1"}, cfg, trained=True)
    assert not stale.parent.exists()

    # A cache from before envelopes: scoring makes them again from the audio, the same as the stream's.
    shutil.rmtree(root / "breathing")
    assert embed_cohort(rows, str(root), cfg, use_ray=False, shifted=False).cached == [r["recording_id"] for r in rows]
    predict_recordings(str(root), cfg, "s1", model, read_manifest(str(root)))
    rebuilt = {p.name: pq.read_table(p) for p in sorted((root / "breathing").rglob("*.parquet"))}
    assert rebuilt.keys() == written.keys()
    for name, table in rebuilt.items():
        assert table.num_rows == written[name].num_rows
        for column in ("breath_db", "voicing"):
            a, b = table[column].to_numpy(), written[name][column].to_numpy()
            assert abs(a - b).max() < 1e-3, (name, column)
    assert len(list((root / "runs" / "s1" / "events").glob("recording_id=*/part-0.parquet"))) == len(rows)


def test_a_nights_events_do_not_depend_on_where_its_audio_is_filtered(tmp_path):
    # ``preprocess.device: model`` hands the model stage raw epochs (here at 44.1 kHz) to resample and filter
    # on its device; their envelope is read through the stream's filters, so the detector sees what the
    # CPU stream's envelope shows (raw, the levels were 14-20 dB apart and the events differed).
    generate_cohort(tmp_path, n_subjects=1, hours=0.15, seed=5, sample_rate=44_100, layout="plain", ahi=40.0)
    cfg = PreprocessConfig()
    [row] = build_manifest(str(tmp_path), cfg)
    tables = {
        device: envelope_table(
            [r for r in read_epochs(row, cfg.model_copy(update={"device": device})) if r["kind"] == "epoch"],
            cfg.epoch_seconds,
        )
        for device in ("cpu", "model")
    }
    (cpu, valid), (model, model_valid) = (
        (np.stack([t[name].to_numpy() for name in FEATURES], axis=1), t["valid"].to_numpy(zero_copy_only=False))
        for t in tables.values()
    )
    np.testing.assert_array_equal(valid, model_valid)
    gap = np.abs(cpu[valid] - model[valid])
    for name, most in (("breath_db", 0.1), ("broad_db", 0.5), ("flatness", 0.01), ("voicing", 0.01)):
        assert np.percentile(gap[:, FEATURES.index(name)], 99) < most, name  # measured: 0.014, 0.32, 0.002, 0.002
    events = detect_events(cpu, valid)
    assert len(events) >= 2
    assert [(e["type"], e["start_s"], e["end_s"]) for e in detect_events(model, valid)] == [
        (e["type"], e["start_s"], e["end_s"]) for e in events
    ]

    # A raw night's envelope cached before (no version): named, quarantined and made again through the filters.
    store, raw = tmp_path / "root", Config.model_validate({"preprocess": {"device": "model"}})
    path = write_envelope(str(store), raw, row, tables["model"].replace_schema_metadata(None))
    assert (
        envelope_problem(str(store), raw, row)
        == "made from raw audio not read through the stream's filters (envelope version 1)"
    )
    rebuilt, _ = load_envelope(str(store), raw, row)
    np.testing.assert_array_equal(rebuilt, model)
    assert envelope_problem(str(store), raw, row) is None
    assert (store / "quarantine" / "cache" / Path(path).relative_to(store)).exists()


def test_the_snoring_heads_frames_in_the_predictions_type_the_detectors_breaths():
    # A snorer (3 breaths in 4 noise-like snores) whose snoring pauses for 22 s, the airflow unchanged:
    # the envelope alone calls the pause a hypopnoea; the night's predictions, whose per-second snoring
    # head hears the snores, tell the detector so, and the pause is no event.
    audio, snores = snorer_whose_snoring_pauses(300.0, (150.0, 172.0))
    env = epoch_envelope(audio + fan(300.0, 0.003), RATE)
    valid = np.ones(len(env), dtype=bool)
    times = np.arange(10)[:, None] * 30.0 + np.arange(60)[None, :] * 0.5 + 0.25  # each 0.5-s frame's middle
    heard = np.zeros(times.shape, dtype=bool)
    for a, b in snores:
        heard |= (times >= a) & (times < b)
    preds = pd.DataFrame({"epoch_index": range(10), "snore_frames": list(np.where(heard, 0.9, 0.05))})
    alone = detect_night(env, valid, None, 30.0)
    assert [e["type"] for e in alone] == ["hypopnea"]
    assert detect_night(env, valid, preds, 30.0) == []
    assert detect_night(env, valid, pa.Table.from_pandas(preds), 30.0) == []
    # Heads without a snoring head (frames null): the envelope's events, as before.
    assert detect_night(env, valid, preds.assign(snore_frames=None), 30.0) == alone
    # the events of one reading with where breathing was heard (score and the bedside): the same events
    for given, expected in ((None, alone), (preds, [])):
        events, heard_frames = detect_night_and_heard(env, valid, given, 30.0)
        assert events == expected and heard_frames.shape == (len(env),) and heard_frames.mean() > 0.9
