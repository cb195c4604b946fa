"""Every fault the fault-injecting writer knows is found, named, and counted; healthy nights stay clean."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyedflib
import pytest
from typer.testing import CliRunner

from sleepsound.core.config import PreprocessConfig, ValidationConfig
from sleepsound.core.findings import Quarantine
from sleepsound.ingest.manifest import build_manifest, read_manifest_rows
from sleepsound.io.audio import iter_part_blocks, probe_edf
from sleepsound.synth.faults import FAULTS, Fault, edit_signal_header, fault, part_path
from sleepsound.synth.writers import generate_cohort

CFG = PreprocessConfig()


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, Path]:
    psg = tmp_path_factory.mktemp("psg")
    generate_cohort(psg, n_subjects=2, hours=0.25, seed=5, sample_rate=16_000, part_seconds=300, cycle_minutes=15)
    plain = tmp_path_factory.mktemp("plain")
    generate_cohort(plain, n_subjects=2, hours=0.1, seed=6, sample_rate=16_000, layout="plain", cycle_minutes=10)
    return {"psg-audio": psg, "plain": plain}


def _damaged(cohorts: dict[str, Path], item: Fault, tmp_path: Path) -> tuple[Path, str]:
    cohort = tmp_path / "cohort"
    shutil.copytree(cohorts[item.layout], cohort)
    if item.layout == "psg-audio":
        target = sorted(p.name for p in (cohort / "APNEA_EDF").iterdir())[0]
    else:
        target = sorted(p.stem for p in cohort.glob("*.flac"))[0]
    item.apply(cohort, target)
    return cohort, target


def test_healthy_cohorts_have_no_findings(cohorts):
    for cohort in cohorts.values():
        rows = build_manifest(str(cohort), CFG, deep=True)
        assert [r["status"] for r in rows] == ["accepted", "accepted"]
        assert [r["findings"] for r in rows] == [[], []]


@pytest.mark.parametrize("item", FAULTS, ids=[f.name for f in FAULTS])
def test_each_fault_is_found_and_named(cohorts, item, tmp_path):
    cohort, target = _damaged(cohorts, item, tmp_path)
    rows = {r["recording_id"]: r for r in build_manifest(str(cohort), CFG, deep=True)}
    accepted = sum(r["status"] == "accepted" for r in rows.values())
    assert len(rows) == 2 and accepted + sum(r["status"] == "quarantined" for r in rows.values()) == 2

    row = rows[target]
    codes = {(f["code"], f["severity"]) for f in row["findings"]}
    assert (item.code, item.severity) in codes, row["findings"]
    if item.severity == "error":
        assert row["status"] == "quarantined" and row["reason_code"] == item.code
    else:
        assert row["status"] == "accepted" and not any(f["severity"] == "error" for f in row["findings"])
    named = next(f for f in row["findings"] if f["code"] == item.code)
    assert named["message"] and named["level"] in {"recording", "epoch"}
    assert str(cohort) in named["path"], "a finding names the file it is about"

    other = next(r for rid, r in rows.items() if rid != target)
    assert other["status"] == "accepted" and other["findings"] == []


def test_epoch_findings_carry_times_and_runs(cohorts, tmp_path):
    cohort, target = _damaged(cohorts, fault("3-minute silent gap"), tmp_path)
    row = next(r for r in build_manifest(str(cohort), CFG, deep=True) if r["recording_id"] == target)
    gap = next(f for f in row["findings"] if f["code"] == "silent_gap")
    assert (gap["start_s"], gap["end_s"]) == pytest.approx((60.0, 240.0), abs=0.2)
    assert "0:01:00 to 0:04:00" in gap["message"]
    epochs = [f for f in row["findings"] if f["code"] == "zero_rms_epochs"]
    assert len(epochs) == 1 and epochs[0]["level"] == "epoch"  # one run, not one line per epoch
    assert (epochs[0]["start_s"], epochs[0]["end_s"]) == (60.0, 240.0)  # epochs 2-7 are flat for > 10 s
    assert epochs[0]["path"].endswith(f"{target}[001].edf")


def test_quick_validation_skips_the_audio_scan(cohorts, tmp_path):
    cohort, target = _damaged(cohorts, fault("heavy clipping"), tmp_path)
    quick = next(r for r in build_manifest(str(cohort), CFG) if r["recording_id"] == target)
    assert quick["findings"] == []
    loose = next(
        r
        for r in build_manifest(str(cohort), CFG, ValidationConfig(clip_fraction=1.0), deep=True)
        if r["recording_id"] == target
    )
    assert not any(f["code"] == "clipping" for f in loose["findings"])


def test_truncation_is_named_before_pyedflib_sees_the_file(cohorts, tmp_path, capfd):
    cohort, target = _damaged(cohorts, fault("last part truncated"), tmp_path)
    row = next(r for r in build_manifest(str(cohort), CFG) if r["recording_id"] == target)
    assert "holds" in row["reason"] and "of 300 data records" in row["reason"]
    assert capfd.readouterr().out == ""  # pyedflib prints to stdout on a bad file; we never let it


def test_bdf_is_read_with_its_physical_scaling(tmp_path):
    path = str(tmp_path / "night.bdf")
    rate, seconds = 16_000, 4
    x = np.sin(2 * np.pi * 220 * np.arange(rate * seconds) / rate) * 0.4
    header = {
        "label": "Mic",
        "dimension": "a.u.",
        "sample_frequency": rate,
        "physical_max": 0.5,
        "physical_min": -0.5,
        "digital_max": 8388607,
        "digital_min": -8388608,
        "prefilter": "",
        "transducer": "mic",
    }
    with pyedflib.EdfWriter(path, 1, file_type=pyedflib.FILETYPE_BDFPLUS) as writer:
        writer.setSignalHeaders([header])
        writer.writeSamples([x])
    part = probe_edf(path, "Mic")
    assert (part.sample_rate, part.n_samples, part.full_scale) == (rate, rate * seconds, 0.5)
    with pyedflib.EdfReader(path) as reader:
        np.testing.assert_allclose(reader.readSignal(0), x, atol=1e-6)  # 24-bit: far finer than 16-bit EDF


def test_cli_json_report_and_manifest(cohorts, tmp_path):
    from sleepsound.cli import app

    cohort, target = _damaged(cohorts, fault("middle part missing"), tmp_path)
    shutil.copyfile(part_path(cohorts["psg-audio"], target, 2), part_path(cohort, target, 2))  # restore it
    (cohort / "APNEA_EDF" / target / f"{target}[002].edf").unlink()
    result = CliRunner().invoke(app, ["validate", str(cohort), "--json", "--root", str(tmp_path / "root")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["discovered"], report["accepted"], report["quarantined"]) == (2, 1, 1)
    finding = report["findings"][0]
    assert {"recording", "path", "level", "code", "message"} <= set(finding)
    assert finding["recording"] == target and finding["code"] == "missing_part" and "[2]" in finding["message"]
    stored = {r["recording_id"]: r for r in read_manifest_rows(str(tmp_path / "root"))}
    assert stored[target]["findings"][0]["code"] == "missing_part"

    table = CliRunner().invoke(app, ["validate", str(cohort)])
    assert table.exit_code == 0 and "missing_part" not in table.output and "quarantined" in table.output
    missing = CliRunner().invoke(app, ["validate", str(tmp_path / "nowhere"), "--json"])
    assert missing.exit_code == 2


def test_a_patient_folder_without_parts_is_quarantined(cohorts, tmp_path):
    cohort = tmp_path / "cohort"
    shutil.copytree(cohorts["psg-audio"], cohort)
    target = sorted(p.name for p in (cohort / "APNEA_EDF").iterdir())[0]
    shutil.rmtree(cohort / "APNEA_EDF" / target)
    (cohort / "APNEA_EDF" / target).mkdir()
    rows = {r["recording_id"]: r for r in build_manifest(str(cohort), CFG)}
    assert rows[target]["status"] == "quarantined" and rows[target]["reason_code"] == "no_audio"
    assert sum(r["status"] == "accepted" for r in rows.values()) == 1


def test_plain_channel_choice_and_both_microphones(tmp_path):
    stereo = tmp_path / "stereo"
    generate_cohort(
        stereo,
        n_subjects=1,
        hours=0.05,
        seed=8,
        sample_rate=16_000,
        layout="plain",
        cycle_minutes=10,
        plain_channels=("Mic", "Tracheal"),
    )
    both = PreprocessConfig(channel="both")
    assert build_manifest(str(stereo), both, deep=True)[0]["status"] == "accepted"
    swapped = PreprocessConfig(channel="Tracheal", plain_channel_index={"Mic": 1, "Tracheal": 2})
    row = build_manifest(str(stereo), swapped)[0]
    assert row["reason_code"] == "channel_missing" and "index 2" in row["reason"]

    mono = tmp_path / "mono"
    generate_cohort(mono, n_subjects=1, hours=0.05, seed=8, sample_rate=16_000, layout="plain", cycle_minutes=10)
    row = build_manifest(str(mono), both)[0]
    assert row["status"] == "quarantined" and row["reason_code"] == "channel_missing" and "Tracheal" in row["reason"]


def _psg_copy(cohorts: dict[str, Path], tmp_path: Path) -> tuple[Path, str, Path]:
    """A copy of the PSG-Audio cohort, its first night, and that night's EDF folder."""
    cohort = tmp_path / "cohort"
    shutil.copytree(cohorts["psg-audio"], cohort)
    target = sorted(p.name for p in (cohort / "APNEA_EDF").iterdir())[0]
    return cohort, target, cohort / "APNEA_EDF" / target


def _only_target_quarantined(cohort: Path, target: str) -> dict:
    rows = {r["recording_id"]: r for r in build_manifest(str(cohort), CFG)}
    assert len(rows) == 2 and [rid for rid, r in rows.items() if r["status"] == "accepted"] == [
        rid for rid in rows if rid != target
    ]
    assert rows[target]["status"] == "quarantined"
    return rows[target]


def test_unusual_part_names_are_named_for_what_they_are(cohorts, tmp_path):
    cohort, target, folder = _psg_copy(cohorts, tmp_path)
    shutil.copyfile(folder / f"{target}[001].edf", folder / f"{target}%5B001%5D.edf")  # the same part twice
    row = _only_target_quarantined(cohort, target)
    assert row["reason_code"] == "inconsistent_parts" and "found more than once" in row["reason"]
    assert f"{target}%5B001%5D.edf" in row["reason"] and "[]" not in row["reason"]

    (folder / f"{target}%5B001%5D.edf").rename(folder / f"{target}[000].edf")  # a part [000]
    row = _only_target_quarantined(cohort, target)
    assert row["findings"][0]["path"].endswith(f"{target}[000].edf") and "numbered from [001]" in row["reason"]

    (folder / f"{target}[000].edf").unlink()
    (folder / f"{target}[002].edf").unlink()
    (folder / f"{target}[002].edf").mkdir()  # a folder named like a part
    row = _only_target_quarantined(cohort, target)
    assert row["reason_code"] == "unreadable_edf" and row["findings"][0]["path"].endswith(f"{target}[002].edf")
    assert "is a folder" in row["reason"]

    (folder / f"{target}[002].edf").rmdir()
    (folder / f"{target}[002].edf").symlink_to(tmp_path / "gone.edf")  # a dangling link
    row = _only_target_quarantined(cohort, target)
    assert row["reason_code"] == "broken_link" and row["findings"][0]["path"].endswith(f"{target}[002].edf")
    assert "symbolic link to a file that does not exist" in row["reason"]


def test_rml_with_an_unknown_encoding_is_bad_annotations(cohorts, tmp_path):
    cohort, target, _ = _psg_copy(cohorts, tmp_path)
    rml = cohort / "APNEA_RML" / f"{target}.rml"
    rml.write_bytes(rml.read_bytes().replace(b"encoding='utf-8'", b"encoding='no-such-codec'", 1))
    row = _only_target_quarantined(cohort, target)
    assert row["reason_code"] == "bad_annotations" and "unknown character encoding" in row["reason"]
    assert row["findings"][0]["path"] == str(rml)


def test_rml_without_its_edf_folder_is_discovered_and_quarantined(cohorts, tmp_path):
    cohort, target, folder = _psg_copy(cohorts, tmp_path)
    shutil.rmtree(folder)
    row = _only_target_quarantined(cohort, target)
    assert row["reason_code"] == "no_audio" and row["findings"][0]["path"].endswith(f"APNEA_RML/{target}.rml")
    assert "annotations without audio" in row["reason"]


def test_a_crashing_check_quarantines_its_night_not_the_cohort(cohorts, tmp_path, monkeypatch):
    import sleepsound.ingest.validate as validate

    cohort, target, _ = _psg_copy(cohorts, tmp_path)
    real = validate.probe_edf

    def probe(path, channel):
        if target in path:
            raise ZeroDivisionError("float division by zero")
        return real(path, channel)

    monkeypatch.setattr(validate, "probe_edf", probe)
    row = _only_target_quarantined(cohort, target)
    assert row["reason_code"] == "validator_failed" and "ZeroDivisionError" in row["reason"]
    assert row["findings"][0]["path"].endswith(f"{target}[001].edf")


def test_apply_findings_records_the_first_error():
    from sleepsound.core.findings import Finding
    from sleepsound.ingest.discovery import RecordingSource
    from sleepsound.ingest.validate import apply_findings, manifest_row

    row = manifest_row(RecordingSource("n1", "n1", "psg-audio", ["/x/n1[001].edf"], [1]))
    warn = Finding("recording", "silent_gap", "warning", "/x/n1[001].edf", "quiet")
    err = Finding("recording", "read_error", "error", "/x/n1[001].edf", "broke")
    apply_findings(row, [warn, err])
    assert (row["status"], row["reason_code"], row["reason"]) == ("quarantined", "read_error", "/x/n1[001].edf: broke")
    assert [f["code"] for f in row["findings"]] == ["silent_gap", "read_error"]


# ----------------------------------------------------------------------------- damaged EDF headers


def _tiny_edf(
    path: Path, file_type: int = pyedflib.FILETYPE_EDFPLUS, rate: int = 16_000, seconds: int = 3
) -> np.ndarray:
    """A small part (SpO2, Mic and, in EDF+, pyedflib's EDF Annotations) written by pyedflib; returns the Mic."""
    mic = 0.5 * np.sin(2 * np.pi * 220 * np.arange(rate * seconds) / rate)
    common = {"prefilter": "", "transducer": "", "digital_max": 32767, "digital_min": -32767}
    headers = [
        {
            **common,
            "label": "SpO2",
            "dimension": "%",
            "sample_frequency": 1,
            "physical_max": 100.0,
            "physical_min": 0.0,
        },
        {
            **common,
            "label": "Mic",
            "dimension": "a.u.",
            "sample_frequency": rate,
            "physical_max": 1.0,
            "physical_min": -1.0,
        },
    ]
    with pyedflib.EdfWriter(str(path), 2, file_type=file_type) as writer:
        writer.setSignalHeaders(headers)
        writer.writeSamples([np.full(seconds, 95.0), mic])
    return mic


def _overwrite(path: Path, offset: int, text: bytes) -> None:
    data = bytearray(path.read_bytes())
    data[offset : offset + len(text)] = text
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (lambda p: _overwrite(p, 8, b"\x01"), "'local patient identification' holds byte 0x01 at position 1"),
        (lambda p: _overwrite(p, 176, b"23.61.00"), "'start time' is '23.61.00', not a valid hh.mm.ss"),
        (
            lambda p: _overwrite(p, 8, b"John Smith".ljust(80)),
            "'local patient identification' does not follow the EDF+ subfields",
        ),
        (
            lambda p: edit_signal_header(p, "Mic", physical_min="abc"),
            "'physical minimum' of signal 2 of 3 ('Mic') is 'abc', not a number",
        ),
        (
            lambda p: edit_signal_header(p, "Mic", physical_min="1", physical_max="1"),
            "signal 'Mic': physical minimum and maximum are both 1, so its samples cannot be scaled",
        ),
        (
            lambda p: edit_signal_header(p, "SpO2", digital_max="99999"),
            "signal 'SpO2': digital maximum 99999 is outside the EDF range -32768 to 32767",
        ),
        (
            lambda p: edit_signal_header(p, "Mic", digital_min="-3e4"),
            "'digital minimum' of signal 2 of 3 ('Mic') is '-3e4', not an integer",
        ),
    ],
    ids=[
        "non-ASCII byte",
        "start time",
        "EDF+ patient subfields",
        "physical min not a number",
        "physical min == max",
        "digital max out of range",
        "digital min not an integer",
    ],
)
def test_an_edf_pyedflib_refuses_is_quarantined_naming_field_signal_and_value(tmp_path, capfd, damage, fragment):
    path = tmp_path / "night[001].edf"
    _tiny_edf(path)
    damage(path)
    with pytest.raises(OSError):
        pyedflib.EdfReader(str(path)).close()  # the damage is one pyedflib refuses, with its generic text
    capfd.readouterr()
    with pytest.raises(Quarantine) as info:
        probe_edf(str(path), "Mic")
    assert info.value.code == "inconsistent_edf_header" and fragment in info.value.message, info.value.message
    assert info.value.path == str(path) and info.value.message.endswith("re-export the file")
    assert "John" not in info.value.message  # patient fields are located, never quoted
    assert capfd.readouterr().out == ""


def test_a_refusal_no_check_explains_keeps_pyedflibs_words_without_a_temporary_path(tmp_path):
    path = tmp_path / "night[001].edf"
    _tiny_edf(path)
    _overwrite(path, 88, b"Startdate 02-MAR-2002 X X X".ljust(80))  # EDF+ date differs from the header's
    with pytest.raises(Quarantine) as info:
        probe_edf(str(path), "Mic")
    assert info.value.code == "unreadable_edf" and "not EDF(+) or BDF(+) compliant" in info.value.message
    assert str(path) not in info.value.message  # the finding's path names the file (the source, not a copy)


def test_header_fields_that_contradict_the_file_name_the_bytes(tmp_path):
    path = tmp_path / "night[001].edf"
    _tiny_edf(path)
    good = path.read_bytes()
    path.write_bytes(good[:-1000])
    with pytest.raises(Quarantine, match="1000 missing"):
        probe_edf(str(path), "Mic")
    path.write_bytes(b"\xffBIOSEMI" + good[8:])  # an EDF whose version says BDF
    with pytest.raises(Quarantine, match=r"the version field says BDF .* fits EDF's 2 bytes a sample"):
        probe_edf(str(path), "Mic")


@pytest.mark.parametrize("file_type", [pyedflib.FILETYPE_EDF, pyedflib.FILETYPE_EDFPLUS], ids=["EDF", "EDF+"])
def test_an_empty_digital_range_of_the_microphone_quarantines_its_night(tmp_path, file_type):
    path = tmp_path / "night[001].edf"
    _tiny_edf(path, file_type)
    edit_signal_header(path, "Mic", digital_min="32767", digital_max="32767")  # pyedflib opens the EDF, not the EDF+
    with pytest.raises(Quarantine) as info:
        probe_edf(str(path), "Mic")
    assert info.value.code == "inconsistent_edf_header" and info.value.path == str(path)
    assert "signal 'Mic': digital minimum and maximum are both 32767" in info.value.message

    _tiny_edf(path, file_type)
    edit_signal_header(path, "SpO2", digital_min="0", digital_max="0")
    if file_type == pyedflib.FILETYPE_EDF:  # a signal never read may be broken: not the audio's fault
        assert probe_edf(str(path), "Mic").findings == ()
    else:  # ... but pyedflib refuses the whole EDF+ file for it
        with pytest.raises(Quarantine, match="signal 'SpO2': digital minimum and maximum are both 0"):
            probe_edf(str(path), "Mic")


def test_a_reversed_digital_range_is_a_warning_and_the_audio_is_read_sign_inverted(tmp_path):
    path = tmp_path / "night[001].edf"
    mic = _tiny_edf(path, pyedflib.FILETYPE_EDF)
    edit_signal_header(path, "Mic", digital_min="32767", digital_max="-32767")
    part = probe_edf(str(path), "Mic")
    (note,) = part.findings
    assert (note.code, note.severity, note.path) == ("reversed_digital_range", "warning", str(path))
    assert "signal 'Mic': digital minimum 32767 is above digital maximum -32767" in note.message
    assert "sign-inverted" in note.message
    audio = np.concatenate(list(iter_part_blocks(part, 10_000, "psg-audio")))
    np.testing.assert_allclose(audio, -mic, atol=1e-4)  # exactly the sign flip, nothing clamped

    _tiny_edf(path, pyedflib.FILETYPE_EDFPLUS)  # EDF+ forbids it, and pyedflib refuses it
    edit_signal_header(path, "Mic", digital_min="32767", digital_max="-32767")
    with pytest.raises(Quarantine, match=r"digital minimum 32767 is above digital maximum -32767, which EDF\+ forbids"):
        probe_edf(str(path), "Mic")


def test_clock_never_prints_a_300_digit_hour():
    from sleepsound.core.findings import clock

    assert (clock(0), clock(3661), clock(-30)) == ("0:00:00", "1:01:01", "-0:00:30")
    assert clock(1e300) == "1e+300 s" and clock(float("nan")) == "nan s"


# ----------------------------------------------------------------------------- plain WAV files


def _wav_bytes(seconds: float = 70.0, rate: int = 16_000, subtype: str = "PCM_16") -> bytes:
    """A mono WAV of quiet noise (never silent, so never a zero-RMS epoch)."""
    import io

    import soundfile as sf

    audio = np.random.default_rng(3).normal(0, 0.05, int(seconds * rate)).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def _one_wav(tmp_path: Path, name: str, data: bytes) -> dict:
    folder = tmp_path / name
    folder.mkdir()
    (folder / f"{name}.wav").write_bytes(data)
    (row,) = build_manifest(str(folder), CFG, deep=True)
    return row


def test_a_wav_whose_header_sizes_disagree_with_the_file_is_named(tmp_path):
    import struct

    wav = _wav_bytes()
    at = wav.index(b"data")

    def with_sizes(riff: int, data: int, body: bytes = wav) -> bytes:
        return body[:4] + struct.pack("<I", riff) + body[8 : at + 4] + struct.pack("<I", data) + body[at + 8 :]

    cut = _one_wav(tmp_path, "cut", wav[: len(wav) // 2])  # upload cut short
    assert cut["reason_code"] == "truncated_audio" and "0:01:10 of audio" in cut["reason"]
    assert "0:00:35" in cut["reason"] and "bytes missing" in cut["reason"]
    header = _one_wav(tmp_path, "header", wav[: at + 8])  # a header and nothing else
    assert header["reason_code"] == "truncated_audio"
    open_ended = _one_wav(tmp_path, "unfinalised", with_sizes(0, 0))  # the recorder never wrote the sizes
    assert open_ended["reason_code"] == "unfinalised_audio" and "sox --ignore-length" in open_ended["reason"]
    assert "0:01:10 more" in open_ended["reason"]
    empty = _one_wav(tmp_path, "empty", with_sizes(at, 0, wav[: at + 8]))  # sizes right, no samples
    assert empty["reason_code"] == "empty_file" and "no samples" in empty["reason"]

    streaming = _one_wav(tmp_path, "streaming", with_sizes(0xFFFFFFFF, 0xFFFFFFFF))  # "to the end of the file"
    tag = b"LIST" + struct.pack("<I", 12) + b"INFOISFT" + bytes(4)
    tagged = wav + tag + b"TAG" + bytes(125)  # a chunk, then a raw ID3v1 tag
    tagged = _one_wav(tmp_path, "tagged", tagged[:4] + struct.pack("<I", len(wav) + len(tag) - 8) + tagged[8:])
    for row in (streaming, tagged):
        assert row["status"] == "accepted" and row["n_epochs"] == 2, row["reason"]


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_24", "DOUBLE", "ALAW", "GSM610"])
def test_wav_encodings_are_read_and_streamed(tmp_path, subtype):
    from sleepsound.embed.epochs import read_epochs

    row = _one_wav(tmp_path, subtype.lower(), _wav_bytes(subtype=subtype))
    assert row["status"] == "accepted" and row["n_epochs"] == 2, row["reason"]
    epochs = list(read_epochs(row, CFG))  # GSM 6.10 cannot be seeked: read block by block anyway
    assert [e["error"] for e in epochs] == [None, None] and all(e["valid"] for e in epochs)


def test_a_float_wav_beyond_full_scale_is_not_called_clipped_but_an_integer_one_is(tmp_path):
    """A float file has no full scale (values past 1.0 may just be unnormalised): no clipping warning;
    the same waveform clipped into 16-bit PCM is."""
    import soundfile as sf

    rate, seconds = 16_000, 90
    t = np.arange(rate * seconds) / rate
    loud = (3.0 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)  # peaks at 3.0
    (tmp_path / "float").mkdir()
    (tmp_path / "pcm").mkdir()
    sf.write(tmp_path / "float" / "night.wav", loud, rate, subtype="FLOAT")
    sf.write(tmp_path / "pcm" / "night.wav", np.clip(loud, -1, 1), rate, subtype="PCM_16")
    (floating,) = build_manifest(str(tmp_path / "float"), CFG, deep=True)
    (pcm,) = build_manifest(str(tmp_path / "pcm"), CFG, deep=True)
    assert floating["status"] == pcm["status"] == "accepted"
    assert not any(f["code"] == "clipping" for f in floating["findings"])
    assert any(f["code"] == "clipping" for f in pcm["findings"])
