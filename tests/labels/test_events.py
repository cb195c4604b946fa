"""Respiratory events -> per-epoch labels: hand-made events, generated RML and CSV nights, bad files."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sleepsound.core.config import PreprocessConfig
from sleepsound.embed.epochs import night_labels, read_epochs
from sleepsound.ingest.manifest import build_manifest
from sleepsound.io.rml import RmlAnnotations, RmlEvent, parse_rml
from sleepsound.labels.annotations import AnnotationError
from sleepsound.labels.events import events_from_rml, read_events_csv, resp_labels, window_labels
from sleepsound.labels.vocabulary import APNEA_TYPES, HYPOPNEA_TYPES
from sleepsound.synth.writers import generate_cohort


def Event(type: str, start_s: float, duration_s: float) -> RmlEvent:
    return RmlEvent("", type, float(start_s), float(duration_s))


CFG = PreprocessConfig()
EPOCHS = [0.0, 30.0, 60.0, 90.0]


def _by_epoch(events: list[Event], min_overlap_s: float = 10.0) -> list[dict]:
    return window_labels(events, EPOCHS, 30.0, min_overlap_s)


def test_fractions_are_the_union_clipped_to_each_epoch() -> None:
    events = [
        Event("ObstructiveApnea", 20, 15),
        Event("CentralApnea", 28, 4),  # overlap: [20, 35) once
        Event("Hypopnea", -5, 8),
        Event("Hypopnea", 25, 20),  # before the night: clipped at 0
        Event("Snore", 61, 1),
        Event("Snore", 61.5, 1),  # overlapping snores: 1.5 s
        Event("Arousal", 0, 120),
        Event("Mystery", 0, 120),
    ]  # no label of their own
    rows = _by_epoch(events)
    assert [r["apnea_frac"] for r in rows] == pytest.approx([10 / 30, 5 / 30, 0, 0])
    assert [r["hypopnea_frac"] for r in rows] == pytest.approx([8 / 30, 15 / 30, 0, 0])
    assert [r["snore_frac"] for r in rows] == pytest.approx([0, 0, 1.5 / 30, 0])
    assert [r["n_apnea"] for r in rows] == [2, 0, 0, 0]
    assert [r["n_hypopnea"] for r in rows] == [2, 0, 0, 0]
    assert [r["resp_label"] for r in rows] == ["apnea_hypopnea", "apnea_hypopnea", "snore", "none"]


def test_counts_sum_to_the_events_and_every_event_marks_its_onset_epoch() -> None:
    rng = np.random.default_rng(0)
    events = [
        Event(str(rng.choice(["ObstructiveApnea", "Hypopnea", "MixedApnea"])), float(s), float(d))
        for s, d in zip(rng.uniform(0, 115, 25), rng.uniform(10, 40, 25), strict=True)
    ]
    rows = _by_epoch(events)
    apneas = sum(e.type in APNEA_TYPES for e in events)
    assert sum(r["n_apnea"] for r in rows) == apneas
    assert sum(r["n_hypopnea"] for r in rows) == len(events) - apneas
    for event in events:
        assert rows[int(event.start_s // 30)]["resp_label"] == "apnea_hypopnea"


def test_label_rule_threshold_and_edges() -> None:
    # 12 s hypopnoea starting 24 s into epoch 0: 6 s in each epoch. Epoch 0 holds its onset;
    # epoch 1 only 6 s (< 10 s), so it is not marked.
    rows = _by_epoch([Event("Hypopnea", 24, 12)])
    assert [r["resp_label"] for r in rows] == ["apnea_hypopnea", "none", "none", "none"]
    assert [r["resp_label"] for r in _by_epoch([Event("Hypopnea", 24, 12)], min_overlap_s=5)][:2] == [
        "apnea_hypopnea",
        "apnea_hypopnea",
    ]
    # A long apnoea fills the next epochs for >= 10 s: they are marked too, counted once.
    long = _by_epoch([Event("ObstructiveApnea", 50, 45)])  # 10 s, 30 s, then 5 s
    assert [r["resp_label"] for r in long] == ["none", "apnea_hypopnea", "apnea_hypopnea", "none"]
    assert [r["n_apnea"] for r in long] == [0, 1, 0, 0]
    # An event starting exactly on a boundary belongs to the later epoch; zero-length events are ignored.
    assert [r["n_apnea"] for r in _by_epoch([Event("CentralApnea", 30, 12), Event("CentralApnea", 70, 0)])] == [
        0,
        1,
        0,
        0,
    ]
    # The rule re-derived from the stored columns agrees, and a night without events is all null.
    stored = _by_epoch([Event("Hypopnea", 24, 12)])
    cols = {k: [r[k] for r in stored] for k in stored[0]}
    again = resp_labels(
        cols["apnea_frac"], cols["hypopnea_frac"], cols["snore_frac"], cols["n_apnea"], cols["n_hypopnea"], 30.0, 5.0
    )
    assert again[:2] == ["apnea_hypopnea", "apnea_hypopnea"]
    assert all(v is None for r in window_labels(None, EPOCHS, 30.0, 10.0) for v in r.values())
    assert resp_labels([None], [None], [None], [None], [None], 30.0, 10.0) == [None]


def test_machine_scored_rml_events_are_left_out() -> None:
    ann = RmlAnnotations(
        events=[
            RmlEvent("Respiratory", "Hypopnea", 10, 12, False),
            RmlEvent("Respiratory", "ObstructiveApnea", 40, 12, True),
        ]
    )
    assert events_from_rml(ann) == [RmlEvent("Respiratory", "Hypopnea", 10, 12)]


def test_malformed_events_csv_raises_bad_events(tmp_path: Path) -> None:
    cases = {
        "columns.csv": "kind,start_s,duration_s\nHypopnea,1,12\n",
        "number.csv": "type,start_s,duration_s\nHypopnea,soon,12\n",
        "empty.csv": "",
        "missing.csv": "type,start_s,duration_s\n,3,12\n",
        "cased.csv": "start_s,duration_s,type,Type\n3,12,Hypopnea,Snore\n",  # was a zip() ValueError
        "absurd.csv": "type,start_s,duration_s\nHypopnea,3,12\nObstructiveApnea,30,1e300\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(AnnotationError) as info:
            read_events_csv(str(tmp_path / name))
        assert info.value.code == "bad_events" and name in str(info.value)
    assert "row 3" in str(info.value) and "1e+300" in str(info.value) and len(str(info.value)) < 300
    (tmp_path / "ok.csv").write_text("start_s,duration_s,type\n3,12,Hypopnea\n5,-1,Snore\n")
    assert read_events_csv(str(tmp_path / "ok.csv")) == [Event("Hypopnea", 3, 12), Event("Snore", 5, -1)]


def test_events_csv_spellings_and_exports_are_read_as_the_rml_types(tmp_path: Path) -> None:
    want = [Event("ObstructiveApnea", 3.5, 12), Event("Hypopnea", 40, 11.25), Event("Snore", 60, 1)]
    exports = {
        "spelled.csv": "Type , Start_S,duration_s\nobstructive apnoea,3.5,12\n Hypopnoea ,40,11.25\nsnoring,60,1\n",
        "excel.csv": b"\xef\xbb\xbftype;start_s;duration_s\r\n"
        b"Obstructive_Apnea;3,5;12\r\nHYPOPNEA;40;11,25\r\nSnore;60;1\r\n",
        "unicode.csv": (
            "type\tstart_s\tduration_s\nObstructiveApnea\t3.5\t12\nHypopnea\t40\t11.25\nSnore\t60\t1\n"
        ).encode("utf-16"),
    }
    for name, data in exports.items():
        (tmp_path / name).write_bytes(data if isinstance(data, bytes) else data.encode())
        assert read_events_csv(str(tmp_path / name)) == want, name
    (tmp_path / "header.csv").write_text("start_s,duration_s,type\n")
    assert read_events_csv(str(tmp_path / "header.csv")) == []  # scored, no events: every epoch "none"


def test_unknown_event_types_in_a_csv_are_kept_and_reported(tmp_path: Path) -> None:
    out = tmp_path / "plain"
    generate_cohort(out, n_subjects=1, hours=2 / 60, seed=8, sample_rate=16_000, layout="plain", cycle_minutes=5)
    (events,) = out.glob("*.events.csv")
    events.write_text("start_s,duration_s,type\n10,12,OA\n50,12,OA\n70,15,Arousal\n90,12,obstructive apnoea\n")
    (row,) = build_manifest(str(out), CFG)
    assert row["status"] == "accepted"
    (note,) = [f for f in row["findings"] if f["code"] == "annotation_notes"]
    assert note["severity"] == "warning" and note["path"] == str(events)
    assert "'OA' (x2)" in note["message"] and "Arousal" not in note["message"]  # RML knows Arousal
    epochs = list(read_epochs(row, CFG))
    assert [e["n_apnea"] for e in epochs] == [0, 0, 0, 1]  # only the apnoea spelled out counts


@pytest.fixture(scope="module")
def rml_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 12-min nights in 6-min parts at AHI 30: twelve events, one across a part boundary."""
    out = tmp_path_factory.mktemp("events-psg")
    generate_cohort(
        out, n_subjects=2, hours=0.2, seed=21, sample_rate=16_000, part_seconds=360, cycle_minutes=6, ahi=30.0
    )
    return out


def test_generated_rml_counts_match_its_respiratory_events(rml_cohort: Path) -> None:
    rows = build_manifest(str(rml_cohort), CFG)
    total = 0
    for row in rows:
        epochs = list(read_epochs(row, CFG))
        assert all(e["error"] is None for e in epochs) and len(epochs) == row["n_epochs"]
        user = [e for e in parse_rml(row["labels_uri"]).events if not e.machine]
        want = Counter(
            "apnea" if e.type in APNEA_TYPES else "hypopnea" for e in user if e.type in APNEA_TYPES | HYPOPNEA_TYPES
        )
        assert sum(e["n_apnea"] for e in epochs) == want["apnea"]
        assert sum(e["n_hypopnea"] for e in epochs) == want["hypopnea"]
        assert {e["resp_label"] for e in epochs} <= {"none", "snore", "apnea_hypopnea"}
        for e in epochs:
            if e["n_apnea"] + e["n_hypopnea"]:
                assert e["resp_label"] == "apnea_hypopnea"
        total += sum(want.values())
    assert total > 0  # the generator did synthesise events to check against


def test_plain_events_csv_and_unlabelled_nights(tmp_path: Path) -> None:
    out = tmp_path / "plain"
    generate_cohort(out, n_subjects=2, hours=0.1, seed=8, sample_rate=16_000, layout="plain", cycle_minutes=5)
    rows = sorted(build_manifest(str(out), CFG), key=lambda r: r["recording_id"])
    labelled, bare = rows
    Path(bare["labels_uri"]).unlink()
    Path(bare["events_uri"]).unlink()
    # The row as validation would now write it: no annotation files (versions and digest included).
    audio_only = [v for v in bare["file_versions"] if v["uri"] in bare["source_uris"]]
    bare.update(labels_uri=None, events_uri=None, label_source="none", labels_sha256=None, file_versions=audio_only)
    labels = night_labels(labelled, labelled["n_epochs"])
    assert labels.events == read_events_csv(labelled["events_uri"]) and all(labels.stages)
    epochs = list(read_epochs(labelled, CFG))
    assert sum(e["n_apnea"] + e["n_hypopnea"] for e in epochs) == sum(
        e.type in APNEA_TYPES | HYPOPNEA_TYPES for e in labels.events
    )
    assert all(e["resp_label"] is not None for e in epochs)
    unlabelled = list(read_epochs(bare, CFG))
    assert unlabelled[-1]["error"] is None
    assert all(e["resp_label"] is None and e["apnea_frac"] is None for e in unlabelled)
    Path(labelled["events_uri"]).write_text("type;start\nbroken\n")
    # How the reader reports a broken events CSV; the check that files are still as validated (a file
    # changed since ends the night as source_changed: tests/embed/test_changed_source.py) is set aside.
    labelled = {**labelled, "file_versions": None, "labels_sha256": None}
    out_rows = list(read_epochs(labelled, CFG))
    assert len(out_rows) == 1 and out_rows[0]["epoch_index"] == -1
    assert "AnnotationError" in out_rows[0]["error"] and "events CSV" in out_rows[0]["error"]
