"""Files a source holds that no recording reads are listed with the reason, never silently lost: a
file name that is not UTF-8, files in the PSG-Audio folders that are neither parts nor RML, and
stage or event CSVs filed away from their audio. Real files in tmp_path; no mocks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleepsound.core.config import PreprocessConfig
from sleepsound.ingest.discovery import discover
from sleepsound.ingest.manifest import build_manifest, read_manifest_rows, write_manifest
from sleepsound.synth.writers import generate_cohort
from tests.ingest.manifests import by_id as _by_id
from tests.ingest.manifests import counts_add_up as _counts_add_up

CFG = PreprocessConfig()


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One PSG-Audio night (two parts) and one plain FLAC night with its CSVs."""
    base = tmp_path_factory.mktemp("stray")
    generate_cohort(
        base / "psg", n_subjects=1, hours=0.05, seed=5, sample_rate=16_000, part_seconds=90, cycle_minutes=3
    )
    generate_cohort(
        base / "plain", n_subjects=1, hours=0.05, seed=6, sample_rate=16_000, layout="plain", cycle_minutes=3
    )
    return {"psg": base / "psg", "plain": base / "plain"}


def _plain_audio(nights: dict[str, Path]) -> Path:
    return next(nights["plain"].glob("*.flac"))


def test_a_recording_id_too_long_to_name_a_cache_file_is_quarantined(nights, tmp_path):
    """A 180-byte file name was accepted, though its night's cache files, written aside first
    (``.<id>-<digest>.shifted-Wake.parquet.tmp-<uuid>``), cannot be named (ENAMETOOLONG): it is quarantined
    as found, the rest goes on."""
    source = tmp_path / "long"
    source.mkdir()
    shutil.copy(_plain_audio(nights), source / "ok.flac")
    long_id = "n" * 60 + "é" * 60  # 180 bytes in UTF-8, 120 characters: its cache files' names would pass 255
    shutil.copy(_plain_audio(nights), source / f"{long_id}.flac")
    rows = build_manifest(str(source), CFG)
    _counts_add_up(rows, 2)
    by_id = _by_id(rows)
    assert by_id["ok"]["status"] == "accepted"
    row = by_id[long_id]
    assert row["reason_code"] == "bad_file_name" and "180 bytes" in row["reason"] and "rename it" in row["reason"]


def test_a_file_name_that_is_not_utf8_is_quarantined_and_the_rest_of_the_cohort_goes_on(nights, tmp_path):
    """Defect 3: pyarrow's UnicodeEncodeError in write_manifest stopped `validate --root` and the flow's ingest."""
    source = tmp_path / "names"
    source.mkdir()
    shutil.copy(_plain_audio(nights), source / "ok.flac")
    shutil.copy(_plain_audio(nights), os.fsencode(source) + b"/bad\xff\xfe.flac")
    (source / "sub\udcff").mkdir()  # a folder whose name is not UTF-8: what is under it is listed the same way
    shutil.copy(_plain_audio(nights), source / "sub\udcff" / "inner.flac")
    shutil.copy(_plain_audio(nights), os.fsencode(source) + b"/notes\xff.txt")  # not a recording: not listed

    rows = build_manifest(str(source), CFG)
    _counts_add_up(rows, 3)
    by_id = _by_id(rows)
    assert by_id["ok"]["status"] == "accepted"
    for rec in ("bad\\udcff\\udcfe.flac", "sub\\udcff/inner.flac"):
        row = by_id[rec]
        assert row["reason_code"] == "bad_file_name" and "not valid UTF-8" in row["reason"], row
        assert "rename it" in row["reason"] and rec in row["findings"][0]["path"]
    root = tmp_path / "root"
    write_manifest(str(root), rows)  # raised UnicodeEncodeError before
    written = _by_id(read_manifest_rows(str(root)))
    assert set(written) == set(by_id) and written["bad\\udcff\\udcfe.flac"]["reason_code"] == "bad_file_name"

    from sleepsound.cli import app

    out = CliRunner().invoke(app, ["validate", str(source), "--quick", "--json", "--root", str(tmp_path / "r2")])
    assert out.exit_code == 0, out.output
    assert '"discovered": 3, "accepted": 1, "quarantined": 2' in out.output


def test_a_surrogate_that_reaches_the_manifest_is_escaped_not_fatal(tmp_path):
    """The last guard: whatever path a row names, the manifest is written (escaped), never refused."""
    from sleepsound.ingest.discovery import RecordingSource
    from sleepsound.ingest.validate import validate_recording

    src = RecordingSource("x", "x", "plain", [], [], problem=("/data/x\udcff.wav", "io_error", "gone"))
    write_manifest(str(tmp_path), [validate_recording(src, CFG)])
    (row,) = read_manifest_rows(str(tmp_path))
    assert row["findings"][0]["path"] == "/data/x\\udcff.wav"


def test_files_in_the_psg_audio_folders_that_no_night_reads_are_listed(nights, tmp_path):
    """Defect 4: loose files in APNEA_EDF/, misnamed parts, audio in APNEA_RML/ and a file where a patient
    folder belongs vanished without a line. A part named for another patient was read as this night's."""
    source = tmp_path / "psg"
    shutil.copytree(nights["psg"], source)
    patient = next((source / "APNEA_EDF").iterdir()).name
    part = source / "APNEA_EDF" / patient / f"{patient}[001].edf"
    audio = _plain_audio(nights)
    strays = {
        "APNEA_EDF/loose.flac": audio,
        "APNEA_EDF/orphan.edf": part,
        f"APNEA_EDF/{patient}/{patient}.edf": part,  # no part number
        f"APNEA_EDF/{patient}/{patient}[1].edf": part,  # not three digits
        f"APNEA_EDF/{patient}/extra.flac": audio,
        f"APNEA_EDF/{patient}/99999999-000000[003].edf": part,  # another patient's name: not this night's part
        "APNEA_RML/misplaced.flac": audio,
        "APNEA_EDF/00000232-200808": part,  # a file where a patient folder belongs
    }
    for relative, content in strays.items():
        shutil.copy(content, source / relative)
    (source / "APNEA_EDF" / patient / f"._{patient}[003].edf").write_bytes(b"\x00")  # macOS fork: hidden, skipped

    rows = build_manifest(str(source), CFG)
    _counts_add_up(rows, 1 + len(strays))
    by_id = _by_id(rows)
    assert by_id[patient]["status"] == "accepted", by_id[patient]  # its own parts read as before
    for relative in strays:
        row = by_id[relative]
        assert row["status"] == "quarantined" and row["reason_code"] == "unrecognised_file", row
        assert row["findings"][0]["path"] == str(source / relative)
    assert "only patient folders belong" in by_id["APNEA_EDF/00000232-200808"]["reason"]
    assert f"not named like a part of night '{patient}'" in by_id[f"APNEA_EDF/{patient}/{patient}[1].edf"]["reason"]
    assert by_id[patient]["n_parts"] == len(list(nights["psg"].glob(f"APNEA_EDF/{patient}/*.edf")))
    assert "not an RML file" in by_id["APNEA_RML/misplaced.flac"]["reason"]


def test_stage_and_event_csvs_away_from_their_audio_are_named(nights, tmp_path):
    """Defect 5: b/n.stages.csv beside no audio but named like a/n.flac was never mentioned, and of
    a/x.stages.csv, b/x.stages.csv and b/x.events.csv (no audio) only the first was."""
    source = tmp_path / "sidecars"
    (source / "a").mkdir(parents=True)
    (source / "b").mkdir()
    shutil.copy(_plain_audio(nights), source / "a" / "n.flac")
    (source / "b" / "n.stages.csv").write_text("epoch_index,stage\n0,W\n1,N1\n")
    (source / "a" / "x.stages.csv").write_text("epoch_index,stage\n0,W\n")
    (source / "b" / "x.stages.csv").write_text("epoch_index,stage\n0,W\n")
    (source / "b" / "x.events.csv").write_text("start_s,duration_s,type\n1,10,Hypopnea\n")

    rows = build_manifest(str(source), CFG)
    _counts_add_up(rows, 2)
    by_id = _by_id(rows)
    night = by_id["n"]
    assert night["status"] == "accepted"
    misplaced = [f for f in night["findings"] if f["code"] == "misplaced_annotations"]
    assert len(misplaced) == 1 and misplaced[0]["severity"] == "warning"
    assert misplaced[0]["path"] == str(source / "b" / "n.stages.csv")
    assert str(source / "a" / "n.flac") in misplaced[0]["message"]
    orphan = by_id["x"]
    assert orphan["reason_code"] == "no_audio"
    for csv in ("a/x.stages.csv", "b/x.stages.csv", "b/x.events.csv"):
        assert str(source / csv) in orphan["reason"], orphan["reason"]


def test_csvs_beside_a_duplicates_audio_are_named_too(nights, tmp_path):
    """a/n.flac and b/n.flac with their CSVs: the night is quarantined (one id) and b's CSVs, which were
    dropped, are named in its findings."""
    source = tmp_path / "dup"
    for folder in ("a", "b"):
        (source / folder).mkdir(parents=True)
        shutil.copy(_plain_audio(nights), source / folder / "n.flac")
        (source / folder / "n.stages.csv").write_text("epoch_index,stage\n0,W\n")
    (row,) = build_manifest(str(source), CFG)
    assert row["reason_code"] == "duplicate_recording"
    named = {f["path"] for f in row["findings"] if f["code"] == "misplaced_annotations"}
    assert named == {str(source / "b" / "n.stages.csv")} and row["labels_uri"] == str(source / "a" / "n.stages.csv")


def test_discover_refuses_a_file_as_the_source(nights):
    with pytest.raises(NotADirectoryError, match="is a file: give the folder"):
        discover(str(_plain_audio(nights)))
