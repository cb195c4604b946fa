"""What the clip readers read: clips cut short by under a second, read limits that are no limit, names
from a file list that lead out of the data folder, audio the layout leaves out, and one sound under two
labels. Real files written with soundfile; nothing mocked."""

from __future__ import annotations

import io
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sleepsound.clips.dataset import (
    ClipError,
    decode_mono_16k,
    load_dataset,
    passed_over,
    read_mono_16k,
)
from sleepsound.clips.scoring import decode_bounded
from sleepsound.io.audio import wav_length_problem
from sleepsound.monitor.limits import AudioLimits, Refused, probe_audio

RATE = 16_000


def _tone(seconds: float, freq: float = 220.0, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _wav(path: Path, seconds: float, freq: float = 220.0, fmt: str = "WAV") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _tone(seconds, freq), RATE, format=fmt, subtype="PCM_16")
    return path


def _cut(path: Path, missing_bytes: int) -> Path:
    """The file less its last ``missing_bytes``: a copy cut short, the header left as it was."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - missing_bytes])
    return path


def _data(root: Path, per_label: int = 3) -> Path:
    for label, freq in (("snoring", 100.0), ("no_snoring", 900.0)):
        for i in range(per_label):
            _wav(root / label / f"{int(label == 'snoring')}_{i}.wav", 0.5, freq + 37 * i)
    return root


# ----------------------------------------------------------------------------- #4: cut short by under a second


@pytest.mark.parametrize(("seconds", "missing_seconds"), [(1.0, 0.5), (5.0, 0.94), (1.0, 0.02)])
def test_a_clip_wav_cut_short_by_under_a_second_is_truncated_not_a_shorter_clip(
    tmp_path: Path, seconds: float, missing_seconds: float
) -> None:
    """The nights' tolerance (a second) took a 1-s clip cut in half for a whole 0.5-s one, in every reader."""
    path = _cut(_wav(tmp_path / "clip.wav", seconds), int(missing_seconds * RATE) * 2)
    for read in (lambda: read_mono_16k(path), lambda: decode_bounded(str(path), max_seconds=30.0)):
        with pytest.raises(ClipError, match=r"^truncated: the header declares"):
            read()
    _data(tmp_path / "data")
    shutil.copy(path, tmp_path / "data" / "snoring" / "1_cut.wav")
    ds = load_dataset(tmp_path / "data")
    assert [r.file for r in ds.rejected] == ["snoring/1_cut.wav"] and "truncated" in ds.rejected[0].reason
    assert ds.counts() == {"discovered": 7, "used": 6, "rejected": 1}


def test_a_clip_missing_a_few_bytes_and_whole_rf64_and_flac_clips_still_read(tmp_path: Path) -> None:
    """A writer's miscount of a few dozen bytes (under ``CLIP_SHORT_SECONDS``) is read as it is; RF64 and FLAC too."""
    few = _cut(_wav(tmp_path / "few.wav", 1.0), 44)
    assert len(read_mono_16k(few)) == RATE - 22
    for name, fmt in (("whole.rf64.wav", "RF64"), ("whole.flac", "FLAC")):
        assert len(read_mono_16k(_wav(tmp_path / name, 1.0, fmt=fmt))) == RATE
    rf64 = _cut(_wav(tmp_path / "cut.rf64.wav", 1.0, fmt="RF64"), int(0.3 * RATE) * 2)
    assert rf64.read_bytes()[:4] == b"RF64"
    with pytest.raises(ClipError, match=r"^truncated"):
        read_mono_16k(rf64)


def test_whole_nights_keep_their_second_of_tolerance(tmp_path: Path) -> None:
    """The nights' check is unchanged: under a second missing is a writer's miscount, a second is a cut."""
    path = _cut(_wav(tmp_path / "night.wav", 3.0), int(0.5 * RATE) * 2)
    with path.open("rb") as handle:
        assert wav_length_problem(handle, path.stat().st_size) is None
        assert wav_length_problem(handle, path.stat().st_size, short_seconds=0.01)[0] == "truncated_audio"  # type: ignore[index]
    cut = _cut(_wav(tmp_path / "cut.wav", 3.0), RATE * 2)
    with cut.open("rb") as handle:
        assert wav_length_problem(handle, cut.stat().st_size)[0] == "truncated_audio"  # type: ignore[index]
    # The service's upload check (monitor.limits, not a clip reader) keeps the nights' second.
    assert probe_audio(path.read_bytes(), "night.wav", AudioLimits(max_bytes=8 << 20, max_seconds=30.0)) is not None


def test_the_service_still_refuses_a_cut_of_a_second(tmp_path: Path) -> None:
    cut = _cut(_wav(tmp_path / "cut.wav", 3.0), RATE * 2)
    with pytest.raises(Refused, match="truncated"):
        probe_audio(cut.read_bytes(), "cut.wav", AudioLimits(max_bytes=8 << 20, max_seconds=30.0))


# ----------------------------------------------------------------------------- #1: a read limit that is no limit


@pytest.mark.parametrize("seconds", [-1.0, 0.0, -1e-5, math.nan, math.inf])
def test_a_read_limit_that_is_no_limit_is_refused_naming_it_never_a_whole_file(tmp_path: Path, seconds: float) -> None:
    """soundfile reads a negative frame count as "everything": -1 read a 1-hour night among the clips whole."""
    path = _wav(tmp_path / "clip.wav", 1.0)
    for source in (str(path), io.BytesIO(path.read_bytes())):
        with pytest.raises(ValueError, match="max_seconds must be a finite number of seconds above 0") as err:
            decode_mono_16k(source, max_seconds=seconds)
        assert not isinstance(err.value, ClipError)  # the setting's fault: not one rejected clip per file
    data = _data(tmp_path / "data")
    with pytest.raises(ValueError, match="clip_seconds must be a finite number") as err:
        load_dataset(data, clip_seconds=seconds)
    assert not isinstance(err.value, ClipError)


# ----------------------------------------------------------------------------- #3: names leading out of the data


def test_a_file_list_cannot_lead_out_of_the_data_folder(tmp_path: Path) -> None:
    """A model's held-out list made ``clips evaluate`` read and score ``snoring/../../outside/x.wav``."""
    data = _data(tmp_path / "data")
    outside = _wav(tmp_path / "outside" / "patient_recording.wav", 0.5)
    names = [
        "snoring/../../outside/patient_recording.wav",
        str(outside),
        "snoring/../snoring/1_0.wav",
        "../data/snoring/1_1.wav",
        "snoring/.hidden.wav",
        "snoring/sub/1_0.wav",
        "",
        "snoring/1_0.wav",
        "snoring/gone.wav",
    ]
    ds = load_dataset(data, files=names)
    assert ds.files == ["snoring/1_0.wav"]
    reasons = {r.file: r.reason for r in ds.rejected}
    assert len(reasons) == len(names) - 1 and ds.n_files == len(names)
    for name in names[:7]:
        assert reasons[name].startswith(f"{name}: not a file of the data folder"), reasons[name]
        assert reasons[name].endswith("not read")
    assert "(the name holds '..')" in reasons[names[0]] and "absolute" in reasons[str(outside)]
    assert reasons["snoring/gone.wav"] == "snoring/gone.wav: file not found"


def test_a_link_inside_a_label_folder_is_read_from_a_list_as_discovery_reads_it(tmp_path: Path) -> None:
    """Data folders built of links (to a store elsewhere) read the same from a held-out list as in training."""
    data = _data(tmp_path / "data")
    store = _wav(tmp_path / "store" / "clip.wav", 0.5, 555.0)
    (data / "snoring" / "1_9.wav").symlink_to(store)
    assert "snoring/1_9.wav" in load_dataset(data).files
    assert load_dataset(data, files=["snoring/1_9.wav"]).files == ["snoring/1_9.wav"]


# ----------------------------------------------------------------------------- #13: nothing lost


def test_audio_the_layout_leaves_out_is_counted_as_not_read_by_name(tmp_path: Path) -> None:
    data = _data(tmp_path / "data")
    _wav(data / "clip_at_top_level.wav", 0.5)
    _wav(data / ".hidden_at_top.flac", 0.5, fmt="FLAC")
    _wav(data / "snoring" / ".hidden_1_1.wav", 0.5)
    _wav(data / ".archive" / "1_2.wav", 0.5)
    _wav(data / "snoring" / ".old" / "1_3.wav", 0.5)
    (data / "categories.csv").write_text("label,first,last,category\nsnoring,0,9,x\n")  # no clip: not listed
    (data / "snoring" / ".DS_Store").write_bytes(b"\0" * 64)
    (data / ".git").mkdir()
    (data / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    expected = {
        ".archive/1_2.wav": "not read: inside a hidden folder ('.archive')",
        ".hidden_at_top.flac": "not read: not inside a label folder",
        "clip_at_top_level.wav": "not read: not inside a label folder",
        "snoring/.hidden_1_1.wav": "not read: a hidden file",
        "snoring/.old/1_3.wav": "not read: inside a hidden folder ('.old')",
    }
    assert {rel: why for _, rel, why in passed_over(data)}.keys() == expected.keys()
    ds = load_dataset(data)
    assert ds.classes == ("no_snoring", "snoring") and len(ds.files) == 6
    reasons = {r.file: r.reason for r in ds.rejected}
    assert reasons.keys() == expected.keys()
    for rel, why in expected.items():
        assert reasons[rel].startswith(f"{rel}: {why}"), reasons[rel]
    assert ds.counts() == {"discovered": 11, "used": 6, "rejected": 5}
    # A held-out list names its files: nothing else is read or counted.
    assert load_dataset(data, files=["snoring/1_0.wav"]).counts() == {"discovered": 1, "used": 1, "rejected": 0}


def test_one_sound_under_two_labels_is_rejected_every_copy_naming_another(tmp_path: Path) -> None:
    """Every no_snoring clip copied into snoring/ trained silently (held-out accuracy 0.33, no word)."""
    data = _data(tmp_path / "data")
    shutil.copy(data / "no_snoring" / "0_0.wav", data / "snoring" / "1_100.wav")
    shutil.copy(data / "no_snoring" / "0_0.wav", data / "snoring" / "1_101.wav")
    shutil.copy(data / "no_snoring" / "0_1.wav", data / "snoring" / "1_102.wav")
    shutil.copy(data / "snoring" / "1_1.wav", data / "snoring" / "1_200.wav")  # one label: a duplicate, kept
    for silent in (data / "snoring" / "1_300.wav", data / "no_snoring" / "0_300.wav"):  # no sound: kept
        sf.write(silent, np.zeros(RATE // 2, dtype=np.float32), RATE, subtype="PCM_16")
    ds = load_dataset(data)
    reasons = {r.file: r.reason for r in ds.rejected}
    assert sorted(reasons) == [
        "no_snoring/0_0.wav",
        "no_snoring/0_1.wav",
        "snoring/1_100.wav",
        "snoring/1_101.wav",
        "snoring/1_102.wav",
    ]
    assert reasons["snoring/1_100.wav"] == (
        "snoring/1_100.wav: the same audio as no_snoring/0_0.wav (label 'no_snoring') and 1 more copy: "
        "one sound cannot be two labels; keep it under the right one only"
    )
    assert reasons["no_snoring/0_0.wav"].startswith("no_snoring/0_0.wav: the same audio as snoring/1_100.wav (label")
    assert reasons["snoring/1_102.wav"].startswith("snoring/1_102.wav: the same audio as no_snoring/0_1.wav (label")
    assert {"snoring/1_200.wav", "snoring/1_1.wav", "snoring/1_300.wav", "no_snoring/0_300.wav"} <= set(ds.files)
    assert ds.counts() == {"discovered": 12, "used": 7, "rejected": 5}
    assert len(ds.audio) == len(ds.files) == len(ds.labels) == len(ds.lengths)


def test_a_clip_over_a_dc_offset_reaches_the_model_as_loud_as_without_it(tmp_path: Path) -> None:
    """A quiet sound over a converter's offset was scaled by the offset: a float clip at +1000 with a
    sound of 0.5 reached the backbone at a two-thousandth of full scale, near-silence (audit of 2026-12-07)."""
    sound = 0.5 * _tone(1.0)
    sf.write(tmp_path / "plain.wav", sound, RATE, subtype="FLOAT")
    sf.write(tmp_path / "offset.wav", sound + 1000.0, RATE, subtype="FLOAT")
    sf.write(tmp_path / "constant.wav", np.full(RATE, 0.25, dtype=np.float32), RATE, subtype="FLOAT")
    plain, offset = read_mono_16k(tmp_path / "plain.wav"), read_mono_16k(tmp_path / "offset.wav")
    assert abs(np.abs(offset).max() - 1.0) < 1e-6 and abs(float(offset.mean())) < 1e-3
    np.testing.assert_allclose(offset, plain, atol=2e-3)  # the same clip, whatever the offset
    assert not read_mono_16k(tmp_path / "constant.wav").any()  # an offset alone is silence, kept as silence
