"""The nightly state (``<root>/state/nightly.json``) is read as untrusted: a damaged, oversized,
mistyped or newer file is refused before the run starts, naming the file and the way out; it used
to surface after validation and embedding as a bare JSONDecodeError/TypeError (or, for a link to
/dev/zero, as the process eating memory)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sleepsound.runs.nightly_state import DamagedState, mark_processed, new_recordings, processed, state_path
from sleepsound.runs.preflight import NotStartable, check_can_start


def _row(recording_id: str, sha: str) -> dict[str, str]:
    return {"recording_id": recording_id, "sha256": sha, "status": "accepted"}


def _state(root: Path, data: bytes) -> Path:
    path = Path(state_path(str(root)))
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "is not JSON"),
        (b'{"recordings": {"a": "ab', "is not JSON"),  # cut short
        (b"\xff\xfe\x00garbage", "is not JSON"),
        (b"[1, 2]", "holds list, not an object"),
        (b'{"last_run": "n1"}', "'recordings' must map recording ids"),
        (b'{"recordings": [["a", "b"]]}', "'recordings' must map recording ids"),
        (b'{"recordings": {"a": 5}}', "'recordings' must map recording ids"),
        (b'{"schema": "sleepsound.nightly/2", "recordings": {}}', "does not know"),
    ],
    ids=["empty", "truncated", "binary", "array", "no-recordings", "pairs", "number", "newer-schema"],
)
def test_a_damaged_state_is_refused_naming_the_file(tmp_path, data, fragment) -> None:
    path = _state(tmp_path / "root", data)
    with pytest.raises(DamagedState, match=fragment) as caught:
        processed(str(tmp_path / "root"))
    assert str(path) in str(caught.value)
    (tmp_path / "nights").mkdir()
    with pytest.raises(NotStartable, match=fragment):  # before Prefect, Ray, validation or embedding
        check_can_start("nightly", str(tmp_path / "nights"), str(tmp_path / "root"))
    assert path.read_bytes() == data  # refused, never rewritten


def test_an_endless_state_is_refused_without_reading_it_whole(tmp_path) -> None:
    path = Path(state_path(str(tmp_path / "root")))
    path.parent.mkdir(parents=True)
    os.symlink("/dev/zero", path)
    with pytest.raises(DamagedState, match="is larger than 64 MiB"):
        processed(str(tmp_path / "root"))


def test_the_state_round_trips_and_keeps_nights_that_left_the_source(tmp_path) -> None:
    root = str(tmp_path / "root")
    mark_processed(root, "n1", [_row("gone", "1" * 64), _row("kept", "2" * 64)])
    assert json.loads(Path(state_path(root)).read_text())["schema"] == "sleepsound.nightly/1"
    rows = [_row("kept", "2" * 64), _row("changed", "3" * 64)]
    assert [r["recording_id"] for r in new_recordings(root, rows)] == ["changed"]
    mark_processed(root, "n2", rows[1:])
    assert processed(root) == {"gone": "1" * 64, "kept": "2" * 64, "changed": "3" * 64}


def test_a_state_written_before_the_schema_field_is_read(tmp_path) -> None:
    _state(tmp_path / "root", b'{"recordings": {"a": "ab"}, "last_run": "n1", "updated": "2026-01-01T00:00:00"}')
    assert processed(str(tmp_path / "root")) == {"a": "ab"}


def test_labels_that_arrive_or_change_make_a_night_new_again(tmp_path) -> None:
    """Same audio, other labels: the night's truth changed, so nightly trains on and scores it again
    (it used to stay "done": labels added to an unlabelled night were never trained on by nightly)."""
    root = str(tmp_path / "root")
    unlabelled, labelled = _row("a", "1" * 64), {**_row("b", "2" * 64), "labels_sha256": "f" * 64}
    mark_processed(root, "n1", [unlabelled, labelled])
    assert json.loads(Path(state_path(root)).read_text())["labels"] == {"a": "", "b": "f" * 64}
    assert new_recordings(root, [unlabelled, labelled]) == []
    arrived, corrected = {**unlabelled, "labels_sha256": "e" * 64}, {**labelled, "labels_sha256": "d" * 64}
    assert [r["recording_id"] for r in new_recordings(root, [arrived, corrected])] == ["a", "b"]
    mark_processed(root, "n2", [arrived, corrected])
    assert new_recordings(root, [arrived, corrected]) == []


def test_a_night_handled_before_labels_were_recorded_stays_done_while_its_audio_is_unchanged(tmp_path) -> None:
    _state(tmp_path / "root", b'{"schema": "sleepsound.nightly/1", "recordings": {"a": "' + b"1" * 64 + b'"}}')
    row = {**_row("a", "1" * 64), "labels_sha256": "e" * 64}
    assert new_recordings(str(tmp_path / "root"), [row]) == []
    assert new_recordings(str(tmp_path / "root"), [{**row, "sha256": "2" * 64}]) == [{**row, "sha256": "2" * 64}]


def test_a_state_with_mistyped_labels_is_refused(tmp_path) -> None:
    _state(tmp_path / "root", b'{"recordings": {"a": "ab"}, "labels": {"a": 5}}')
    with pytest.raises(DamagedState, match="'labels' must map recording ids"):
        processed(str(tmp_path / "root"))
