"""Discovery, validation and streaming of real files written by the project's generator."""

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sleepsound.core.config import PreprocessConfig
from sleepsound.embed.epochs import read_epochs
from sleepsound.ingest.discovery import discover
from sleepsound.ingest.manifest import build_manifest
from sleepsound.synth.writers import generate_cohort

CFG = PreprocessConfig()


@pytest.fixture(scope="module")
def psg_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("psg")
    generate_cohort(out, n_subjects=2, hours=0.25, seed=3, sample_rate=16_000, part_seconds=300, cycle_minutes=15)
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "cohort"
    shutil.copytree(src, dst)
    return dst


def _by_id(rows):
    return {r["recording_id"]: r for r in rows}


def test_discovers_parts_in_order_with_their_annotations(psg_cohort):
    found = discover(str(psg_cohort))
    assert len(found) == 2
    for src in found:
        assert src.layout == "psg-audio" and src.part_numbers == [1, 2, 3]
        assert [Path(u).name for u in src.audio_uris] == [f"{src.recording_id}[00{i}].edf" for i in (1, 2, 3)]
        assert src.labels_uri.endswith(f"APNEA_RML/{src.recording_id}.rml")


def test_url_encoded_part_names_are_understood(psg_cohort, tmp_path):
    cohort = _copy(psg_cohort, tmp_path)
    for edf in cohort.glob("APNEA_EDF/*/*.edf"):
        edf.rename(edf.with_name(edf.name.replace("[", "%5B").replace("]", "%5D")))
    rows = build_manifest(str(cohort), CFG)
    assert [r["status"] for r in rows] == ["accepted", "accepted"]
    assert all(r["n_epochs"] == 30 for r in rows)


def test_every_recording_is_accepted_or_quarantined_with_a_reason(psg_cohort, tmp_path):
    cohort = _copy(psg_cohort, tmp_path)
    first, second = sorted(p.name for p in (cohort / "APNEA_EDF").iterdir())
    (cohort / "APNEA_EDF" / first / f"{first}[002].edf").write_bytes(b"this is not an EDF file at all" * 10)
    (cohort / "APNEA_RML" / f"{second}.rml").unlink()
    empty = cohort / "APNEA_EDF" / "00000001-000001"
    empty.mkdir()
    (empty / "00000001-000001[001].edf").write_bytes(b"")
    gap = cohort / "APNEA_EDF" / "00000002-000002"
    shutil.copytree(cohort / "APNEA_EDF" / second, gap)
    for edf in gap.iterdir():
        edf.rename(gap / edf.name.replace(second, "00000002-000002"))
    (gap / "00000002-000002[002].edf").unlink()

    rows = _by_id(build_manifest(str(cohort), CFG))
    assert len(rows) == 4
    assert Counter(r["status"] for r in rows.values()) == {"accepted": 1, "quarantined": 3}
    assert rows[first]["reason_code"] == "unreadable_edf" and f"{first}[002].edf" in rows[first]["reason"]
    assert rows[second]["status"] == "accepted" and rows[second]["label_source"] == "none"
    assert rows["00000001-000001"]["reason_code"] == "empty_file"
    assert rows["00000002-000002"]["reason_code"] == "missing_part" and "[2]" in rows["00000002-000002"]["reason"]


def test_plain_layout_faults(tmp_path):
    out = tmp_path / "plain"
    generate_cohort(out, n_subjects=1, hours=0.05, seed=4, sample_rate=16_000, layout="plain", cycle_minutes=10)
    sf.write(out / "lowrate.wav", np.zeros(8000 * 40, dtype=np.float32), 8000)
    (out / "broken.flac").write_bytes(b"fLaC-but-not-really")
    rows = _by_id(build_manifest(str(out), CFG))
    good = next(r for r in rows.values() if r["recording_id"] not in {"lowrate", "broken"})
    assert good["status"] == "accepted" and good["label_source"] == "csv" and good["n_epochs"] == 6
    assert rows["lowrate"]["reason_code"] == "low_sample_rate"
    assert rows["broken"]["reason_code"] == "unreadable_audio" and "broken.flac" in rows["broken"]["reason"]
    tracheal = _by_id(build_manifest(str(out), PreprocessConfig(channel="Tracheal")))
    assert tracheal[good["recording_id"]]["reason_code"] == "channel_missing"


@pytest.fixture(scope="module")
def plain_night(tmp_path_factory) -> Path:
    """One 2-minute plain night (FLAC with its stage and event CSVs)."""
    out = tmp_path_factory.mktemp("plain")
    generate_cohort(out, n_subjects=1, hours=2 / 60, seed=4, sample_rate=16_000, layout="plain", cycle_minutes=10)
    return out


def test_plain_discovery_lists_every_night_once_and_skips_hidden_files(plain_night, tmp_path):
    cohort = _copy(plain_night, tmp_path)
    (night,) = sorted(cohort.glob("*.flac"))
    stem = night.stem
    shutil.copy(night, cohort / "twice.flac")  # one name in two folders ...
    (cohort / "site-b").mkdir()
    shutil.copy(night, cohort / "site-b" / "twice.flac")
    shutil.copy(night, cohort / "both.flac")  # ... or as FLAC and WAV
    sf.write(cohort / "both.wav", sf.read(night)[0], 16_000)
    shutil.copy(night, cohort / "Loud Night.FLAC")  # suffixes in any case
    shutil.copy(cohort / f"{stem}.stages.csv", cohort / "Loud Night.Stages.CSV")
    (cohort / "lost.stages.csv").write_text("epoch_index,stage\n0,W\n")  # annotations without audio
    (cohort / "lost-too.events.csv").write_text("start_s,duration_s,type\n1,12,Hypopnea\n")
    audio, rate = sf.read(night, dtype="float32")
    with sf.SoundFile(cohort / "phone.ogg", "w", rate, 1, format="OGG", subtype="VORBIS") as out:
        for start in range(0, len(audio), rate):  # lossy formats libsndfile decodes are read
            out.write(audio[start : start + rate])  # (in chunks: one big Vorbis write can crash)
    (cohort / "tablet.m4a").write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(100))  # a format that is not read
    (cohort / f"._{stem}.flac").write_bytes(b"\x00\x05\x16\x07Mac OS X")  # never recordings:
    (cohort / "__MACOSX").mkdir()
    shutil.copy(night, cohort / "__MACOSX" / "old.flac")
    (cohort / ".Trash-1000").mkdir()
    shutil.copy(night, cohort / ".Trash-1000" / "deleted.flac")

    found = {src.recording_id: src for src in discover(str(cohort))}
    assert sorted(found) == sorted([stem, "twice", "both", "Loud Night", "lost", "lost-too", "phone", "tablet"])
    assert found["Loud Night"].labels_uri.endswith("Loud Night.Stages.CSV")
    rows = _by_id(build_manifest(str(cohort), CFG))
    assert len(rows) == len(found) and all(r["status"] in ("accepted", "quarantined") for r in rows.values())
    assert rows[stem]["status"] == rows["Loud Night"]["status"] == "accepted"
    assert rows["Loud Night"]["label_source"] == "csv" and not rows["Loud Night"]["findings"]
    for name in ("twice", "both"):
        assert rows[name]["reason_code"] == "duplicate_recording" and len(rows[name]["source_uris"]) == 2
    assert "site-b/twice.flac" in rows["twice"]["reason"]
    assert rows["lost"]["reason_code"] == "no_audio" and "lost.stages.csv" in rows["lost"]["reason"]
    assert rows["lost-too"]["reason_code"] == "no_audio" and "lost-too.events.csv" in rows["lost-too"]["reason"]
    assert rows["phone"]["status"] == "accepted" and rows["phone"]["duration_s"] == pytest.approx(len(audio) / rate)
    assert rows["tablet"]["reason_code"] == "unreadable_audio" and "M4A is not read" in rows["tablet"]["reason"]


def test_a_flac_corrupted_mid_file_is_named_with_the_time_it_stops(plain_night, tmp_path):
    cohort = _copy(plain_night, tmp_path)
    (night,) = cohort.glob("*.flac")
    data = bytearray(night.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 50_000] = (
        np.random.default_rng(1).integers(0, 256, 50_000, np.uint8).tobytes()
    )
    night.write_bytes(bytes(data))
    (quick,) = build_manifest(str(cohort), CFG)  # headers only: looks fine
    assert quick["status"] == "accepted"
    out = list(read_epochs(quick, CFG))  # the stream breaks: one error row, by name
    assert out[-1]["epoch_index"] == -1 and night.name in out[-1]["error"]
    assert "of 0:02:00" in out[-1]["error"] and "stops decoding after 0:00:00" not in out[-1]["error"]  # mid-night
    (deep,) = build_manifest(str(cohort), CFG, deep=True)
    assert deep["reason_code"] == "unreadable_audio" and deep["reason"].startswith(str(night))
    assert "corrupt or cut short" in deep["reason"]


def test_a_stream_that_breaks_names_the_source_file_not_its_temporary_copy(plain_night, tmp_path, s3_endpoint):
    import s3fs

    cohort = _copy(plain_night, tmp_path)
    (night,) = cohort.glob("*.flac")
    data = bytearray(night.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 50_000] = bytes(50_000)
    night.write_bytes(bytes(data))
    s3fs.S3FileSystem().put(str(cohort) + "/", "sleepsound-stream/source/", recursive=True)
    (row,) = build_manifest("s3://sleepsound-stream/source", CFG)
    error = list(read_epochs(row, CFG))[-1]["error"]
    assert f"s3://sleepsound-stream/source/{night.name}:" in error and "unreadable_audio" in error
    assert "/tmp" not in error


def test_streamed_epochs_carry_labels_across_parts(psg_cohort):
    rows = build_manifest(str(psg_cohort), CFG)
    epochs = list(read_epochs(rows[0], CFG))
    assert [e["epoch_index"] for e in epochs] == list(range(rows[0]["n_epochs"]))
    assert all(e["error"] is None and e["audio"].shape == (480_000,) for e in epochs)
    assert {e["stage3"] for e in epochs} <= {"Wake", "NREM", "REM"}
    assert all(e["valid"] for e in epochs)


def test_a_night_that_breaks_while_streaming_yields_one_error_row(psg_cohort, tmp_path):
    cohort = _copy(psg_cohort, tmp_path)
    rows = build_manifest(str(cohort), CFG)
    part = Path(rows[0]["source_uris"][1])
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # truncated after validation
    out = list(read_epochs(rows[0], CFG))
    assert out[-1]["error"] and out[-1]["epoch_index"] == -1
    assert "changed since" in out[-1]["error"] and len(out) == 1  # caught before any epoch is emitted


def _damage_in_place(path: Path) -> None:
    """Overwrite bytes without changing the size or the modification time."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[:256] = b"\x00" * 256  # the EDF header: unreadable if looked at
    path.write_bytes(bytes(data))
    import os

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_unchanged_nights_keep_their_rows_and_changed_ones_are_validated_again(psg_cohort, tmp_path):
    cohort = _copy(psg_cohort, tmp_path)
    first = build_manifest(str(cohort), CFG)
    assert all(r["status"] == "accepted" and r["source_stamp"] for r in first)
    patient = first[0]["recording_id"]
    part = cohort / "APNEA_EDF" / patient / f"{patient}[001].edf"

    again = build_manifest(str(cohort), CFG, previous=first)  # nothing changed: every row kept
    assert again == first and again[0] is first[0]

    # Same size, its old mtime put back: the status-change time still moved (ingest.versions), so the
    # night is validated again (it was taken as unchanged, its damaged header never looked at).
    _damage_in_place(part)
    changed = _by_id(build_manifest(str(cohort), CFG, previous=first))
    assert changed[patient]["status"] == "quarantined" and changed[patient]["source_stamp"] != first[0]["source_stamp"]
    assert changed[first[1]["recording_id"]] is first[1]

    deeper = build_manifest(str(cohort), PreprocessConfig(highpass_hz=60.0), previous=first)
    assert all(row is not old for row, old in zip(deeper, first, strict=False))  # other settings: everything again


def test_quarantined_nights_are_always_validated_again(psg_cohort, tmp_path):
    cohort = _copy(psg_cohort, tmp_path)
    first = build_manifest(str(cohort), CFG)
    stale = [{**first[0], "status": "quarantined", "reason_code": "io_error"}, first[1]]
    again = build_manifest(str(cohort), CFG, previous=stale)
    assert again[0]["status"] == "accepted" and again[0] is not stale[0] and again[1] is stale[1]
