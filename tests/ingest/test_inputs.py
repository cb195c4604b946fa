"""What a source folder really holds reaches the manifest: both layouts side by side, nights reached
through symbolic links, and files that are no audio (a FIFO, a file this process may not read)
named for what they are. Real files, FIFOs and links on local disk; no mocks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sleepsound.core.config import PreprocessConfig
from sleepsound.ingest.discovery import discover
from sleepsound.ingest.manifest import build_manifest
from sleepsound.io.audio import unreadable_reason
from sleepsound.synth.writers import generate_cohort
from tests.ingest.manifests import by_id as _by_id
from tests.ingest.manifests import counts_add_up as _counts_add_up

CFG = PreprocessConfig()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def nights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three PSG-Audio nights and two plain FLAC nights (with their CSVs), each set in its own folder."""
    base = tmp_path_factory.mktemp("inputs")
    generate_cohort(
        base / "psg", n_subjects=3, hours=0.05, seed=5, sample_rate=16_000, part_seconds=90, cycle_minutes=3
    )
    generate_cohort(
        base / "plain", n_subjects=2, hours=0.05, seed=6, sample_rate=16_000, layout="plain", cycle_minutes=3
    )
    return {"psg": base / "psg", "plain": base / "plain"}


def _plain_ids(nights: dict[str, Path]) -> list[str]:
    return sorted(p.stem for p in nights["plain"].glob("*.flac"))


def _psg_ids(nights: dict[str, Path]) -> list[str]:
    return sorted(p.name for p in (nights["psg"] / "APNEA_EDF").iterdir())


def test_psg_audio_and_plain_nights_side_by_side_are_all_found(nights, tmp_path):
    """Issue 15: 3 of 5 were discovered (the plain ones left out silently)."""
    source = tmp_path / "mixed"
    shutil.copytree(nights["psg"], source)
    shutil.copytree(nights["plain"], source, dirs_exist_ok=True)
    found = {src.recording_id: src for src in discover(str(source))}
    assert sorted(found) == sorted(_psg_ids(nights) + _plain_ids(nights))
    assert {found[p].layout for p in _plain_ids(nights)} == {"plain"}
    rows = build_manifest(str(source), CFG)
    _counts_add_up(rows, 5)
    assert all(r["status"] == "accepted" for r in rows)
    assert {r["label_source"] for r in rows} == {"rml", "csv"}


def test_an_id_given_by_both_layouts_is_one_quarantined_row_naming_both(nights, tmp_path):
    source = tmp_path / "clash"
    shutil.copytree(nights["psg"], source)
    patient = _psg_ids(nights)[0]
    shutil.copy(next(nights["plain"].glob("*.flac")), source / f"{patient}.flac")
    rows = build_manifest(str(source), CFG)
    _counts_add_up(rows, 3)
    clash = _by_id(rows)[patient]
    assert clash["reason_code"] == "duplicate_recording"
    assert f"APNEA_EDF/{patient}/" in clash["reason"] and f"{patient}.flac" in clash["reason"]


def test_nights_reached_through_symbolic_links_are_found_and_loops_reported(nights, tmp_path):
    """Issue 15: a folder reached through a link was skipped silently (1 discovered where 2 are reachable)."""
    first, second = _plain_ids(nights)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in nights["plain"].iterdir():
        shutil.copy(name, elsewhere if name.name.startswith(second) else tmp_path)
    source = tmp_path / "source"
    source.mkdir()
    for name in tmp_path.glob(f"{first}*"):
        shutil.move(name, source)
    (source / "site-b").symlink_to(elsewhere, target_is_directory=True)  # a night reached through a link
    (elsewhere / "back").symlink_to(source, target_is_directory=True)  # a loop: site-b/back -> source
    (source / "site-b-again").symlink_to(elsewhere, target_is_directory=True)  # the same folder twice
    (source / "gone.wav").symlink_to(tmp_path / "nowhere.wav")  # a broken link to a night
    through = tmp_path / "through"
    through.symlink_to(source, target_is_directory=True)  # the source itself reached through a link

    rows = _by_id(build_manifest(str(through), CFG))
    _counts_add_up(list(rows.values()), 5)
    assert rows[first]["status"] == rows[second]["status"] == "accepted"
    assert rows[second]["source_uris"] == [str(through / "site-b" / f"{second}.flac")]
    assert rows[second]["label_source"] == "csv"
    loop = rows["site-b/back"]
    assert loop["reason_code"] == "skipped_link" and "a loop" in loop["reason"]
    assert loop["reason"].startswith(str(through / "site-b" / "back"))
    again = rows["site-b-again"]
    assert again["reason_code"] == "skipped_link" and "'site-b', already listed" in again["reason"]
    assert (
        rows["gone"]["reason_code"] == "broken_link"
        and "symbolic link to a file that does not exist" in (rows["gone"]["reason"])
    )


def test_a_symlinked_patient_folder_of_a_psg_audio_night_is_found(nights, tmp_path):
    source = tmp_path / "psg"
    shutil.copytree(nights["psg"], source)
    patient = _psg_ids(nights)[0]
    shutil.move(source / "APNEA_EDF" / patient, tmp_path / patient)
    (source / "APNEA_EDF" / patient).symlink_to(tmp_path / patient, target_is_directory=True)
    rows = build_manifest(str(source), CFG)
    _counts_add_up(rows, 3)
    assert _by_id(rows)[patient]["status"] == "accepted"


@pytest.mark.timeout(60)  # opening a FIFO blocks: on a regression this fails instead of hanging
def test_a_fifo_named_like_audio_or_labels_is_named_for_what_it_is(nights, tmp_path):
    """Issue 15: a FIFO named x.wav was reported as 'empty_file ... re-upload it'."""
    source = tmp_path / "fifo"
    shutil.copytree(nights["plain"], source)
    os.mkfifo(source / "x.wav")
    night = _plain_ids(nights)[0]
    (source / f"{night}.stages.csv").unlink()
    os.mkfifo(source / f"{night}.stages.csv")  # labels that would block a reader forever
    rows = _by_id(build_manifest(str(source), CFG))
    _counts_add_up(list(rows.values()), 3)
    for rec, name in (("x", "x.wav"), (night, f"{night}.stages.csv")):
        assert rows[rec]["reason_code"] == "not_regular_file", rows[rec]
        assert (
            rows[rec]["reason"].startswith(str(source / name)) and "not a regular file (a FIFO)" in rows[rec]["reason"]
        )
        assert "empty" not in rows[rec]["reason"]


_MANIFEST_SCRIPT = """
import json, sys
from sleepsound.core.config import PreprocessConfig
from sleepsound.ingest.manifest import build_manifest
print(json.dumps(build_manifest(sys.argv[1], PreprocessConfig()), default=str))
"""


def _without_root_privileges() -> list[str]:
    """A command prefix under which permissions are enforced: nothing for an ordinary user; as root,
    setpriv drops the capabilities that let root read any file (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: root reads a mode-000 file, so no permission error occurs")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def test_a_file_that_may_not_be_read_is_named_permission_denied(nights, tmp_path):
    """Issue 15: a mode-000 file was 'not a readable WAV file (System error.)'. Run in a process that
    really lacks the permission (as root: without the capabilities that bypass it)."""
    source = tmp_path / "locked"
    shutil.copytree(nights["plain"], source)
    locked = source / "locked.flac"
    shutil.copy(next(nights["plain"].glob("*.flac")), locked)
    locked.chmod(0)
    hidden = source / "closed"
    hidden.mkdir()
    shutil.copy(next(nights["plain"].glob("*.flac")), hidden / "inside.flac")
    hidden.chmod(0)  # a folder that may not be listed
    try:
        out = subprocess.run(
            [*_without_root_privileges(), sys.executable, "-c", _MANIFEST_SCRIPT, str(source)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            check=False,
        )
    finally:
        hidden.chmod(0o755)
    assert out.returncode == 0, out.stderr
    rows = _by_id(json.loads(out.stdout))
    _counts_add_up(list(rows.values()), 4)
    assert rows["locked"]["reason_code"] == "permission_denied"
    assert rows["locked"]["reason"].startswith(str(locked)) and "permission denied" in rows["locked"]["reason"]
    assert "System error" not in rows["locked"]["reason"]
    assert rows["closed"]["reason_code"] == "unlisted_folder" and "Permission denied" in rows["closed"]["reason"]


def test_unreadable_reason_from_the_operating_system(tmp_path):
    """The check itself, on real files: a FIFO, a folder, a broken link; permission denied where the OS says so."""
    os.mkfifo(tmp_path / "pipe.wav")
    (tmp_path / "dir.wav").mkdir()
    (tmp_path / "dangling.wav").symlink_to(tmp_path / "missing.wav")
    (tmp_path / "fine.wav").write_bytes(b"RIFF")
    assert unreadable_reason(str(tmp_path / "pipe.wav")) == (
        "not_regular_file",
        "not a regular file (a FIFO); put the recording's file in its place",
    )
    assert unreadable_reason(str(tmp_path / "dir.wav"))[1].startswith("not a regular file (a folder)")
    assert unreadable_reason(str(tmp_path / "dangling.wav"))[0] == "broken_link"
    assert unreadable_reason(str(tmp_path / "fine.wav")) is None
    (tmp_path / "fine.wav").chmod(0)
    try:
        with open(tmp_path / "fine.wav", "rb"):
            pass
    except PermissionError:  # the OS enforces it here (not root): the check must say so
        assert unreadable_reason(str(tmp_path / "fine.wav"))[0] == "permission_denied"
