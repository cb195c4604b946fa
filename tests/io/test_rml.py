"""RML reader/writer: round trip, change-point expansion, tolerance of the unknown, clear errors."""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from sleepsound.io.rml import (
    RML_NAMESPACE,
    RmlAnnotations,
    RmlError,
    RmlEvent,
    parse_rml,
    rml_bytes,
    stage_changes_from_epochs,
    stages_per_epoch,
    write_rml,
)
from sleepsound.labels.vocabulary import STAGES_5, UNSCORED

NS = RML_NAMESPACE

# The example from psg-audio-format.md, completed where it elides.
SPEC_EXAMPLE = f"""<?xml version="1.0" encoding="utf-8"?>
<PatientStudy xmlns="{NS}">
 <Acquisition><Sessions><Session>
   <RecordingStart>2019-03-04T22:10:00</RecordingStart>
   <Duration>25200</Duration>
   <Segments><Segment><Duration>3600</Duration></Segment><Segment><Duration>3600</Duration></Segment></Segments>
 </Session></Sessions></Acquisition>
 <ChannelConfig><Channels><Channel EdfSignal="18"><Label>Mic</Label></Channel>
   <Channel EdfSignal="19"><Label>Tracheal</Label></Channel></Channels></ChannelConfig>
 <ScoringData>
  <Events>
   <Event Family="Respiratory" Type="ObstructiveApnea" Start="2888.5" Duration="13.5"/>
   <Event Family="Respiratory" Type="Hypopnea" Start="3120.0" Duration="21.0"/>
   <Event Family="Nasal" Type="Snore" Start="3301.2" Duration="1.4"/>
   <Event Family="Neuro" Type="Arousal" Start="3400" Duration="5" Machine="true"/>
  </Events>
  <StagingData StagingDisplay="NeuroAdultAASM">
   <UserStaging><NeuroAdultAASMStaging>
    <Stage Type="Wake" Start="0"/>
    <Stage Type="NonREM1" Start="630"/>
    <Stage Type="NonREM2" Start="720"/>
    <Stage Type="NonREM4" Start="780"/>
    <Stage Type="REM" Start="840"/>
    <Stage Type="NotScored" Start="870"/>
    <Stage Type="Wake" Start="900"/>
   </NeuroAdultAASMStaging></UserStaging>
   <MachineStaging><NeuroAdultAASMStaging>
    <Stage Type="REM" Start="0"/>
    <Stage Type="REM" Start="900"/>
   </NeuroAdultAASMStaging></MachineStaging>
  </StagingData>
 </ScoringData>
</PatientStudy>
"""


def test_spec_example_parses_with_user_staging_only(tmp_path: Path) -> None:
    path = tmp_path / "x.rml"
    path.write_text(SPEC_EXAMPLE)
    ann = parse_rml(path)
    assert ann.recording_start == datetime(2019, 3, 4, 22, 10)
    assert ann.duration_s == 25200
    assert ann.segment_durations_s == [3600, 3600]
    assert ann.channels == ["Mic", "Tracheal"]
    assert ann.events[0] == RmlEvent("Respiratory", "ObstructiveApnea", 2888.5, 13.5, False)
    assert ann.events[3].machine and not ann.events[2].machine
    assert ann.stage_changes[0] == (0.0, "Wake") and ann.stage_changes[-1] == (900.0, "Wake")
    stages = stages_per_epoch(ann)
    # 630 s of wake = 21 epochs, then N1 x3, N2 x2, N3 (NonREM4) x2, REM x1, NotScored x1; the last Stage ends it.
    assert stages == ["W"] * 21 + ["N1"] * 3 + ["N2"] * 2 + ["N3"] * 2 + ["R"] + [UNSCORED]
    assert "R" not in stages[:21]  # MachineStaging (all REM) was not used
    assert ann.unknown == []


@pytest.mark.parametrize("bad", ["-60", "nan", "0", "one hour"])
def test_an_unusable_segment_duration_voids_the_segment_list_and_says_so(bad: str) -> None:
    """Segments pair with EDF parts by position, so one bad Duration must not shift the rest."""
    xml = SPEC_EXAMPLE.replace(
        "<Segment><Duration>3600</Duration></Segment><Segment>",
        f"<Segment><Duration>{bad}</Duration></Segment><Segment>",
        1,
    )
    ann = parse_rml(xml.encode())
    assert ann.segment_durations_s == []
    assert any(f"Segment 1 Duration {bad!r}" in note and "not checked" in note for note in ann.unknown)
    assert ann.stage_changes and ann.events  # the rest of the RML is still read


def test_stages_per_epoch_pads_and_truncates() -> None:
    ann = RmlAnnotations(stage_changes=[(0.0, "Wake"), (60.0, "NonREM2"), (120.0, "NonREM2")])
    assert stages_per_epoch(ann) == ["W", "W", "N2", "N2"]
    assert stages_per_epoch(ann, 6) == ["W", "W", "N2", "N2", UNSCORED, UNSCORED]
    assert stages_per_epoch(ann, 3) == ["W", "W", "N2"]
    assert stages_per_epoch(RmlAnnotations(), 2) == [UNSCORED, UNSCORED]


def test_unknown_stage_type_becomes_unscored_and_is_reported() -> None:
    xml = SPEC_EXAMPLE.replace('Type="NonREM1" Start="630"', 'Type="Movement" Start="630"')
    ann = parse_rml(xml.encode())
    stages = stages_per_epoch(ann)
    assert stages[21:24] == [UNSCORED] * 3
    assert any("Movement" in note for note in ann.unknown)


def test_unknown_elements_and_events_are_kept_or_reported_never_raised() -> None:
    xml = SPEC_EXAMPLE.replace(
        "<Events>",
        '<Events><Event Family="User" Type="Comment" Start="10" Duration="0"/>'
        '<Event Family="Respiratory" Type="Hypopnea" Duration="12"/>'
        '<Event Family="Respiratory" Type="Hypopnea" Start="50" Duration="oops"/><Marker/>',
    ).replace("<Acquisition>", "<Patient><Name>x</Name></Patient><Acquisition>")
    ann = parse_rml(io.BytesIO(xml.encode()))
    types = [e.type for e in ann.events]
    assert "Comment" in types  # unknown type kept
    assert RmlEvent("Respiratory", "Hypopnea", 50.0, 0.0) in ann.events  # bad duration -> 0, kept
    assert len(ann.events) == 4 + 2  # the event without a Start was dropped
    joined = " | ".join(ann.unknown)
    for fragment in ("'Comment'", "without a numeric Start", "valid Duration", "<Marker>", "<Patient>"):
        assert fragment in joined


@pytest.mark.parametrize(
    "payload, fragment",
    [
        (b"<PatientStudy><unclosed></PatientStudy>", "not well-formed"),
        (b'<PatientStudy xmlns="http://example.com/other.xsd"/>', "PatientStudy"),
        (f'<Study xmlns="{NS}"/>'.encode(), "root element"),
        (b"<PatientStudy/>", "namespace"),
        (f'<!DOCTYPE x [<!ENTITY a "b">]><PatientStudy xmlns="{NS}">&a;</PatientStudy>'.encode(), "entities"),
        (b"", "not well-formed"),
    ],
)
def test_not_rml_raises_rml_error_naming_the_file(tmp_path: Path, payload: bytes, fragment: str) -> None:
    path = tmp_path / "broken.rml"
    path.write_bytes(payload)
    with pytest.raises(RmlError) as info:
        parse_rml(path)
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert fragment in info.value.message


def test_a_file_far_larger_than_any_night_is_refused_before_parsing(tmp_path: Path) -> None:
    """A valid RML padded with events to 33 MB took about ten times that to parse: refused, read no further."""
    from sleepsound.io.rml import MAX_RML_BYTES

    event = b'<Event Family="Respiratory" Type="Hypopnea" Start="50" Duration="12"/>'
    padded = SPEC_EXAMPLE.encode().replace(b"<Events>", b"<Events>" + event * (MAX_RML_BYTES // len(event) + 1))
    path = tmp_path / "padded.rml"
    path.write_bytes(padded)
    for source in (path, io.BytesIO(padded), padded):
        with pytest.raises(RmlError, match="far more than a night's scoring export"):
            parse_rml(source)
    parse_rml(SPEC_EXAMPLE.encode())  # the usual size reads as before


def test_missing_file_is_an_rml_error(tmp_path: Path) -> None:
    with pytest.raises(RmlError, match=r"missing\.rml"):
        parse_rml(tmp_path / "missing.rml")


def test_write_then_parse_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    stages = [STAGES_5[i] for i in rng.integers(0, 5, 200)]
    events = [
        RmlEvent("Respiratory", "ObstructiveApnea", 100.5, 23.4),
        RmlEvent("Respiratory", "Hypopnea", 1234.567, 10.0),
        RmlEvent("Nasal", "Snore", 2000.1, 1.4),
        RmlEvent("Limb", "LegMovement", 3000.0, 2.0, machine=True),
    ]
    ann = RmlAnnotations(
        recording_start=datetime(2020, 5, 7, 23, 1, 2),
        duration_s=6000.0,
        segment_durations_s=[3600.0, 2400.0],
        channels=["SpO2", "Mic", "Tracheal"],
        stage_changes=stage_changes_from_epochs(stages),
        events=events,
    )
    machine = stage_changes_from_epochs(["W"] * 200)
    path = tmp_path / "rt.rml"
    write_rml(path, ann, machine)
    back = parse_rml(path)
    assert back == ann
    assert stages_per_epoch(back) == stages
    assert rml_bytes(ann, machine) == path.read_bytes()  # deterministic serialisation
    assert b"<MachineStaging>" in path.read_bytes()


def test_stage_changes_end_with_the_end_of_recording() -> None:
    changes = stage_changes_from_epochs(["W", "W", "N1", "R"])
    assert changes == [(0.0, "Wake"), (60.0, "NonREM1"), (90.0, "REM"), (120.0, "REM")]
    assert stage_changes_from_epochs([]) == []


def test_lights_off_and_on_as_seconds_or_date_times():
    from datetime import datetime

    from sleepsound.io.rml import RmlAnnotations, parse_rml, rml_bytes

    ann = RmlAnnotations(recording_start=datetime(2019, 3, 4, 22, 10), lights_off_s=120.0, lights_on_s=25_080.0)
    back = parse_rml(rml_bytes(ann))
    assert (back.lights_off_s, back.lights_on_s) == (120.0, 25_080.0)
    text = rml_bytes(ann).replace(b">120<", b">2019-03-04T22:15:00<").replace(b">25080<", b">yesterday<")
    odd = parse_rml(text)
    assert odd.lights_off_s == 300.0 and odd.lights_on_s is None
    assert any("LightsOn" in note for note in odd.unknown)
    # a zone offset names the same wall clock as the EDF header's zone-less time: dropped, not a TypeError
    zoned = rml_bytes(ann).replace(b">120<", b">2019-03-04T22:15:00+02:00<")
    zoned = zoned.replace(b"2019-03-04T22:10:00<", b"2019-03-04T22:10:00+00:00<")
    back = parse_rml(zoned)
    assert back.recording_start == datetime(2019, 3, 4, 22, 10) and back.lights_off_s == 300.0


def test_absurd_times_give_short_notes_and_a_stage_time_quarantines() -> None:
    """1e300 is finite, so it parses; no message may print it as a 300-digit number."""
    from sleepsound.core.findings import Quarantine
    from sleepsound.ingest.label_checks import check_events, check_rml

    xml = (
        SPEC_EXAMPLE.replace(
            "<Events>",
            '<Events><Event Family="Respiratory" Type="Hypopnea" Start="1e300" Duration="12"/>'
            '<Event Family="Respiratory" Type="CentralApnea" Start="100" Duration="1e300"/>',
            1,
        )
        .replace("<Duration>25200</Duration>", "<Duration>1e300</Duration>", 1)
        .replace("<Segment><Duration>3600</Duration>", "<Segment><Duration>1e300</Duration>", 1)
        .replace('<Stage Type="REM" Start="840"/>', '<Stage Type="REM" Start="1e300"/>', 1)
    )
    ann = parse_rml(xml.encode())
    assert all(abs(e.start_s) < 1e6 for e in ann.events)  # the absurd Start is dropped ...
    assert RmlEvent("Respiratory", "CentralApnea", 100.0, 0.0) in ann.events  # ... an absurd Duration zeroed
    assert ann.duration_s is None and ann.segment_durations_s == []
    joined = " | ".join(ann.unknown)
    for fragment in (
        "event Respiratory/Hypopnea with Start 1e+300 s dropped",
        "event Respiratory/CentralApnea with Duration 1e+300 s kept with duration 0",
        "Session Duration 1e+300 s ignored",
        "Segment 1 Duration 1e+300 s",
    ):
        assert fragment in joined, joined
    assert max(len(note) for note in ann.unknown) < 200

    assert ann.stage_changes[-1] == (1e300, "REM")  # kept, for the check to quarantine
    with pytest.raises(Quarantine) as info:
        check_rml(ann, "/data/APNEA_RML/night.rml", [], [1], 900.0)
    assert info.value.code == "invalid_staging" and info.value.path == "/data/APNEA_RML/night.rml"
    assert "UserStaging <Stage Type='REM'> starts at 1e+300 s, more than 7 days into the night" in info.value.message
    assert len(info.value.message) < 200

    import pandas as pd

    from sleepsound.ingest.label_checks import check_stage_table

    with pytest.raises(Quarantine, match=r"row 3 starts at 1e\+300 s, more than 7 days"):  # a plain night's CSV
        check_stage_table(
            pd.DataFrame({"start_s": [0.0, 1e300], "stage": ["W", "N2"]}), "/data/n.stages.csv", "n", 30, 900.0
        )
    (note,) = check_events([RmlEvent("Respiratory", "Hypopnea", 1e300, 0.0)], 900.0, "/data/n.events.csv")
    assert note.code == "invalid_events" and "at 1e+300 s" in note.message and len(note.message) < 200


def _with_declaration(doctype: str, stage: str = "Wake") -> str:
    return SPEC_EXAMPLE.replace('encoding="utf-8"?>', f'encoding="utf-16"?>\n{doctype}', 1).replace(
        'Type="Wake" Start="0"', f'Type="{stage}" Start="0"', 1
    )


@pytest.mark.parametrize(
    "text, fragment",
    [
        # Entities that expand to 100,000 characters, in UTF-16: b"<!ENTITY" is not in the bytes.
        (
            _with_declaration(
                '<!DOCTYPE PatientStudy [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
                '<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">'
                '<!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">]>',
                "&e;",
            ),
            "DTD",
        ),
        # Wake turned into REM through an entity.
        (_with_declaration('<!DOCTYPE PatientStudy [<!ENTITY w "REM">]>', "&w;"), "DTD"),
        # A DTD naming an external file: expat never fetches it, and RML never needs one.
        (_with_declaration('<!DOCTYPE PatientStudy SYSTEM "file:///etc/passwd">'), "DTD"),
    ],
    ids=["entity-expansion", "entity-renames-a-stage", "external-dtd"],
)
def test_declarations_are_refused_in_any_encoding(tmp_path: Path, text: str, fragment: str) -> None:
    """The guard was `b"<!ENTITY" in data` on the raw bytes: UTF-16 walked past it."""
    path = tmp_path / "night.rml"
    path.write_bytes(text.encode("utf-16"))
    assert b"<!ENTITY" not in path.read_bytes()
    with pytest.raises(RmlError) as info:
        parse_rml(path)
    assert fragment in info.value.message and "refused" in info.value.message


def test_an_rml_in_utf16_without_declarations_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "night.rml"
    path.write_bytes(SPEC_EXAMPLE.replace('encoding="utf-8"', 'encoding="utf-16"', 1).encode("utf-16"))
    assert parse_rml(path).stage_changes[0] == (0.0, "Wake")


def test_an_rml_with_entities_is_quarantined_as_bad_annotations(tmp_path: Path) -> None:
    from sleepsound.core.config import PreprocessConfig
    from sleepsound.ingest.manifest import build_manifest
    from sleepsound.synth.faults import rml_path
    from sleepsound.synth.writers import generate_cohort

    generate_cohort(tmp_path, n_subjects=1, hours=0.05, seed=5, sample_rate=16_000, part_seconds=90, cycle_minutes=3)
    patient = next((tmp_path / "APNEA_EDF").iterdir()).name
    path = rml_path(tmp_path, patient)
    text = path.read_text().replace("?>", '?>\n<!DOCTYPE PatientStudy [<!ENTITY w "REM">]>', 1)
    path.write_bytes(text.replace("encoding='utf-8'", "encoding='utf-16'").encode("utf-16"))
    (row,) = build_manifest(str(tmp_path), PreprocessConfig())
    assert row["reason_code"] == "bad_annotations" and str(path) in row["reason"] and "DTD" in row["reason"]
