"""Careless or hostile clip folders: each file used or rejected by name, never a silently wrong model."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import typer
from typer.testing import CliRunner

from sleepsound.clips.cli import clips_app
from sleepsound.clips.dataset import ClipError, load_dataset
from sleepsound.clips.scoring import decode_bounded
from sleepsound.models.heads.artifacts import build_head, save_head
from sleepsound.monitor.limits import AudioBuffer, AudioLimits, Refused, probe_audio
from tests.clips.test_clips import make_dataset
from tests.clips.test_model_config_checks import CLASSES, _clips_info


@pytest.fixture(scope="module")
def mel_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained mlp head on the mel front end: enough to score files with (no backbone weights)."""
    directory = tmp_path_factory.mktemp("model") / "model"
    save_head(
        build_head("mlp", dim=64, n_classes=2), None, str(directory), classes=CLASSES, extra={"clips": _clips_info()}
    )
    return directory


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(clips_app, name="clips")
    return app


def test_a_label_folder_with_no_usable_clip_is_refused_not_trained_as_an_empty_class(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", per_label=6)
    (tmp_path / "data" / "Snoring").mkdir()  # a stray folder whose files are all unusable
    (tmp_path / "data" / "Snoring" / "1_0.wav").write_bytes(b"")
    (tmp_path / "data" / "Snoring" / "notes.txt").write_text("not audio")
    args = ["clips", "train", "--data", str(data), "--out", str(tmp_path / "model"), "--backbone", "mel"]
    result = CliRunner().invoke(_cli(), [*args, "--hard-negatives", "none", "--block-size", "2", "--folds", "2"])
    assert result.exit_code == 2, result.output
    assert "label folder 'Snoring' has no usable clip (2 file(s) rejected; first: Snoring/1_0.wav: empty" in (
        result.output
    )
    assert "Traceback" not in result.output and not (tmp_path / "model").exists()


def test_finite_float_samples_that_resample_past_float32_are_rejected_by_name(tmp_path: Path, mel_model: Path) -> None:
    """Samples near the float32 limit ring past it when resampled: inf, then NaN after normalising, which
    stopped the embedding of every clip (train, exit 2 naming no file) instead of rejecting this one."""
    data = make_dataset(tmp_path / "data", per_label=3)
    loud = np.sign(np.random.default_rng(0).standard_normal(22_050)).astype(np.float32) * np.float32(3.3e38)
    sf.write(data / "snoring" / "1_9.wav", loud, 22_050, subtype="FLOAT")
    assert np.isfinite(sf.read(data / "snoring" / "1_9.wav", dtype="float32")[0]).all()

    ds = load_dataset(data)
    assert ds.counts() == {"discovered": 7, "used": 6, "rejected": 1} and np.isfinite(ds.audio).all()
    assert ds.rejected[0].reason.startswith("snoring/1_9.wav: samples too large to resample")

    result = CliRunner().invoke(
        _cli(), ["clips", "score", "--model", str(mel_model), "--json", str(data / "snoring/1_9.wav")]
    )
    assert result.exit_code == 1 and "samples too large to resample" in json.loads(result.stdout)["error"]


def test_two_channels_of_finite_samples_near_the_float32_limit_are_not_called_nan_or_inf(
    tmp_path: Path, mel_model: Path
) -> None:
    """The float32 mean of two channels at 3e38 overflowed to inf, and the clip was rejected for "NaN or
    Inf" that the file does not hold. At 16 kHz (no resampling) it is a clip like its mono twin; at another
    rate it is named for what it is, by training, `clips score` and the service's decoder alike."""
    data = make_dataset(tmp_path / "data", per_label=3)
    loud = np.sign(np.random.default_rng(0).standard_normal(16_000)).astype(np.float32) * np.float32(3e38)
    stereo = np.stack([loud, loud], axis=1)
    sf.write(data / "snoring" / "1_8.wav", stereo, 16_000, subtype="FLOAT")
    sf.write(data / "snoring" / "1_9.wav", stereo, 22_050, subtype="FLOAT")
    assert np.isfinite(sf.read(data / "snoring" / "1_9.wav", dtype="float32")[0]).all()

    ds = load_dataset(data)
    assert ds.counts() == {"discovered": 8, "used": 7, "rejected": 1} and np.isfinite(ds.audio).all()
    assert ds.rejected[0].reason.startswith("snoring/1_9.wav: samples too large to resample"), ds.rejected
    kept = ds.audio[ds.files.index("snoring/1_8.wav")]
    twin = np.sign(loud).astype(np.float64) - np.sign(loud).mean(dtype=np.float64)
    np.testing.assert_allclose(kept[:16_000], twin / np.abs(twin).max(), rtol=0, atol=1e-6)  # its mono twin's

    result = CliRunner().invoke(
        _cli(),
        ["clips", "score", "--model", str(mel_model), "--json", *(str(data / f"snoring/1_{i}.wav") for i in (8, 9))],
    )
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert "error" not in first and "samples too large to resample" in second["error"], result.stdout
    with pytest.raises(ClipError, match="samples too large to resample"):  # the service decodes uploads so
        decode_bounded(AudioBuffer((data / "snoring" / "1_9.wav").read_bytes()), 600.0)


def test_a_64_bit_float_clip_past_the_float32_range_is_named_too_large_not_nan(tmp_path: Path, mel_model: Path) -> None:
    """libsndfile turns a finite double past the float32 range into inf when read as float32, so such a
    clip was rejected for "NaN or Inf" it does not hold. An ordinary double clip is read as it is; a real
    NaN is still named NaN; training, `clips score` and the service's decoder say the same."""
    data = make_dataset(tmp_path / "data", per_label=3)
    rng = np.random.default_rng(0)
    plain = 0.5 * np.sin(np.arange(16_000) / 16_000 * 2 * np.pi * 300)
    sf.write(data / "snoring" / "1_7.wav", plain, 16_000, subtype="DOUBLE")
    sf.write(data / "snoring" / "1_8.wav", np.sign(rng.standard_normal(16_000)) * 1e300, 16_000, subtype="DOUBLE")
    sf.write(data / "snoring" / "1_9.wav", np.full(16_000, np.nan), 16_000, subtype="DOUBLE")
    assert np.isfinite(sf.read(data / "snoring" / "1_8.wav", dtype="float64")[0]).all()

    ds = load_dataset(data)
    assert ds.counts() == {"discovered": 9, "used": 7, "rejected": 2}, ds.rejected
    np.testing.assert_allclose(ds.audio[ds.files.index("snoring/1_7.wav")][:16_000], plain / 0.5, atol=1e-6)
    assert [r.reason for r in ds.rejected] == [
        "snoring/1_8.wav: samples too large (they pass the float32 range: a damaged float file)",
        "snoring/1_9.wav: non-finite samples (NaN or Inf)",
    ]

    files = [str(data / "snoring" / f"1_{i}.wav") for i in (7, 8, 9)]
    result = CliRunner().invoke(_cli(), ["clips", "score", "--model", str(mel_model), "--json", *files])
    scored = [json.loads(line) for line in result.stdout.splitlines()]
    assert "error" not in scored[0] and result.exit_code == 1, result.stdout
    assert scored[1]["error"].endswith("1_8.wav: samples too large (they pass the float32 range: a damaged float file)")
    assert scored[2]["error"].endswith("1_9.wav: non-finite samples (NaN or Inf)")
    with pytest.raises(ClipError, match=r"^samples too large \(they pass"):
        decode_bounded(AudioBuffer((data / "snoring" / "1_8.wav").read_bytes()), 600.0)


def _tone(rate: int, seconds: float = 1.0, channels: int = 1) -> np.ndarray:
    """A 300-Hz tone at half scale, [frames, channels]."""
    wave = 0.5 * np.sin(2 * np.pi * 300 * np.arange(int(rate * seconds)) / rate)
    return np.repeat(wave[:, None], channels, axis=1)


def _patched(path: Path, at: bytes, offset: int, value: bytes) -> Path:
    """``path`` with ``value`` written ``offset`` bytes past the first ``at`` (a header field)."""
    raw = bytearray(path.read_bytes())
    start = raw.index(at) + offset
    raw[start : start + len(value)] = value
    path.write_bytes(bytes(raw))
    return path


def test_every_wav_flavour_reads_as_the_same_tone(tmp_path: Path) -> None:
    """WAVE_FORMAT_EXTENSIBLE, unsigned 8-bit, 24-bit, mu-law, A-law, 64-bit float, RF64 and Wave64 clips
    are read (resampled from their own rates), not rejected: the same tone, within each coding's error."""
    folder = tmp_path / "data" / "snoring"
    folder.mkdir(parents=True)
    flavours = {
        "1_0.wav": ("WAVEX", "PCM_16", 16_000, 2, 1e-3),
        "1_1.wav": ("WAV", "PCM_U8", 22_050, 1, 2e-2),
        "1_2.wav": ("WAV", "PCM_24", 44_100, 1, 1e-3),
        "1_3.wav": ("WAV", "ULAW", 8_000, 1, 6e-2),
        "1_4.wav": ("WAV", "ALAW", 8_000, 1, 6e-2),
        "1_5.wav": ("WAV", "DOUBLE", 16_000, 1, 1e-6),
        "1_6.wav": ("RF64", "FLOAT", 48_000, 2, 1e-3),
        "1_7.wav": ("W64", "PCM_16", 16_000, 1, 1e-3),
        "1_8.wav": ("WAVEX", "FLOAT", 16_000, 6, 1e-6),
    }
    for name, (fmt, subtype, rate, channels, _) in flavours.items():
        sf.write(folder / name, _tone(rate, channels=channels), rate, format=fmt, subtype=subtype)
    ds = load_dataset(tmp_path / "data")
    assert ds.counts() == {"discovered": 9, "used": 9, "rejected": 0}, ds.rejected
    want = _tone(16_000)[:, 0] / 0.5
    for name, (*_, tolerance) in flavours.items():
        got = ds.audio[ds.files.index(f"snoring/{name}")][:16_000]
        assert np.abs(got[200:-200] - want[200:-200]).max() < tolerance, name  # the ends: the resampler's edges


def test_headers_no_clip_has_are_refused_by_name_as_clips_score_and_the_service_refuse_them(
    tmp_path: Path, mel_model: Path
) -> None:
    """Training and `clips evaluate` took a WAV whose rate field says 1 Hz for a 5-s clip (five samples,
    upsampled), trained on 16 channels, a 4-kHz or 1-MHz header, and a WAV or RF64 whose data size claims
    more than the file holds, all of which `clips score` or the service refuse (a 4-kHz clip `clips
    score` scored and the service refused). Each is now rejected by name with its reason by every reader;
    a zero-channel or 0-Hz header, which libsndfile refuses ("SF_INFO struct incomplete" for 0 Hz), is
    named for the field. The counts add up."""
    data = make_dataset(tmp_path / "data", per_label=3)
    folder = data / "snoring"

    def wav(name: str, **options: Any) -> Path:
        rate, channels = options.pop("rate", 16_000), options.pop("channels", 1)
        sf.write(folder / name, _tone(rate, 2.0, channels), rate, **{"subtype": "PCM_16", **options})
        return folder / name

    _patched(wav("1_10.wav"), b"fmt ", 12, (1).to_bytes(4, "little"))  # the rate field: 1 Hz
    _patched(wav("1_11.wav"), b"fmt ", 12, (4_000).to_bytes(4, "little"))
    _patched(wav("1_12.wav"), b"fmt ", 12, (1_000_000).to_bytes(4, "little"))
    wav("1_13.wav", channels=16)
    _patched(wav("1_14.wav"), b"data", 4, (0x7FFFFFF0).to_bytes(4, "little"))  # the data chunk's size
    _patched(wav("1_15.wav", format="RF64"), b"ds64", 16, (1 << 40).to_bytes(8, "little"))  # RF64's data size
    _patched(wav("1_16.wav"), b"fmt ", 10, (0).to_bytes(2, "little"))  # no channels
    _patched(wav("1_17.wav"), b"fmt ", 12, (0).to_bytes(4, "little"))  # 0 Hz
    expected = {
        "1_10.wav": "sample rate 1 Hz is below the 8000 Hz accepted",
        "1_11.wav": "sample rate 4000 Hz is below the 8000 Hz accepted",
        "1_12.wav": "sample rate 1000000 Hz is above the 384000 Hz accepted; resample it",
        "1_13.wav": "16 channels; at most 8 are accepted: keep fewer",
        "1_14.wav": "truncated: the header declares 18:38:29 of audio",
        "1_15.wav": "truncated: the header declares",
        "1_16.wav": "unreadable audio (the header declares 0 channels)",
        "1_17.wav": "unreadable audio (the header declares a sample rate of 0 Hz)",
    }

    ds = load_dataset(data)
    assert ds.counts() == {"discovered": 14, "used": 6, "rejected": 8}, ds.rejected
    reasons = {r.file.split("/")[-1]: r.reason for r in ds.rejected}
    for name, reason in expected.items():
        assert reasons[name].startswith(f"snoring/{name}: {reason}"), reasons[name]

    files = [str(folder / name) for name in expected]
    result = CliRunner().invoke(_cli(), ["clips", "score", "--model", str(mel_model), "--json", *files])
    assert result.exit_code == 1 and "Traceback" not in result.output
    for line, (name, reason) in zip(result.stdout.splitlines(), expected.items(), strict=True):
        assert json.loads(line)["error"].startswith(f"{folder / name}: {reason}"), line
    with pytest.raises(ClipError, match=r"^sample rate 4000 Hz is below the 8000 Hz accepted$"):
        decode_bounded(AudioBuffer((folder / "1_11.wav").read_bytes()), 600.0)
    for name in ("1_16.wav", "1_17.wav"):  # the service names them from the upload's header, as training does
        with pytest.raises(Refused) as refused:
            probe_audio((folder / name).read_bytes(), name, AudioLimits(1 << 20, 600.0))
        assert (refused.value.status, refused.value.message) == (400, f"{name}: {expected[name]}")


def test_a_clip_never_finalised_is_named_so_not_called_empty(tmp_path: Path, mel_model: Path) -> None:
    """A WAV whose recorder stopped before writing the sizes (a data chunk of 0 bytes, the samples after
    it) was rejected as "empty (no samples)" though it holds a second of them, by training, `clips score`
    and the service alike. A clip whose tags (a LIST chunk) follow its samples is still a clip."""
    data = make_dataset(tmp_path / "data", per_label=3)
    folder = data / "snoring"
    sf.write(folder / "1_8.wav", _tone(16_000), 16_000, subtype="PCM_16")
    _patched(folder / "1_8.wav", b"data", 4, (0).to_bytes(4, "little"))
    with sf.SoundFile(folder / "1_9.wav", "w", 16_000, 1, subtype="PCM_16") as tagged:
        tagged.title = "a snore, tagged"
        tagged.write(_tone(16_000))
    assert b"LIST" in (folder / "1_9.wav").read_bytes()
    never = "the header declares 0:00:00 of audio (0 bytes) but 0:00:01 more follows outside any chunk: a recording"

    ds = load_dataset(data)
    assert ds.counts() == {"discovered": 8, "used": 7, "rejected": 1}, ds.rejected
    assert ds.rejected[0].reason.startswith(f"snoring/1_8.wav: {never}"), ds.rejected
    result = CliRunner().invoke(
        _cli(), ["clips", "score", "--model", str(mel_model), "--json", str(folder / "1_8.wav")]
    )
    assert result.exit_code == 1 and json.loads(result.stdout)["error"].startswith(f"{folder / '1_8.wav'}: {never}")
    with pytest.raises(ClipError, match=f"^{re.escape(never)}"):
        decode_bounded(AudioBuffer((folder / "1_8.wav").read_bytes()), 600.0)


def test_a_clip_the_system_will_not_open_is_named_with_the_systems_reason() -> None:
    """libsndfile calls any file the system refuses to open "System error." (a clip without read
    permission, the likeliest); the system's reason is what the user can act on. Tests run as root,
    whom no permission stops, so a Unix socket stands in: it exists, and opening it fails (ENXIO)."""
    import socket
    import tempfile

    from sleepsound.clips.dataset import decode_mono_16k

    folder = tempfile.mkdtemp(prefix="clip-")  # a socket's path may not pass 107 bytes
    try:
        path = os.path.join(folder, "1_1.wav")
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(path)
            with pytest.raises(ClipError) as refused:
                decode_mono_16k(path)
            with pytest.raises(ClipError) as refused_bounded:
                decode_bounded(path, 600.0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    reason = os.strerror(errno.ENXIO)
    assert str(refused.value) == str(refused_bounded.value) == f"unreadable audio ({reason})"
    assert "System error" not in str(refused.value)


def test_a_symbolic_link_loop_and_a_folder_named_like_a_clip_are_rejected_for_what_they_are(
    tmp_path: Path, mel_model: Path
) -> None:
    """A link leading back to itself was called a "broken symbolic link", as if a file were missing; a
    folder named like a .wav is a folder. Neither hangs or raises in training or `clips score`."""
    data = make_dataset(tmp_path / "data", per_label=3)
    folder = data / "snoring"
    (folder / "1_7.wav").symlink_to("1_7.wav")
    (folder / "1_8.wav").symlink_to("1_9.wav")
    (folder / "1_9.wav").symlink_to("1_8.wav")
    (folder / "1_10.wav").mkdir()
    (folder / "1_11.wav").symlink_to("gone.wav")

    ds = load_dataset(data)
    assert ds.counts() == {"discovered": 11, "used": 6, "rejected": 5}
    assert [r.reason for r in ds.rejected] == [
        "snoring/1_10.wav: a folder, not a clip (clips must sit directly inside their label folder)",
        "snoring/1_11.wav: broken symbolic link",
        *(f"snoring/1_{i}.wav: symbolic link loop (the link leads back to itself)" for i in (7, 8, 9)),
    ]
    result = CliRunner().invoke(
        _cli(), ["clips", "score", "--model", str(mel_model), "--json", str(folder / "1_8.wav")]
    )
    assert result.exit_code == 1
    assert (
        json.loads(result.stdout)["error"]
        == f"{folder / '1_8.wav'}: symbolic link loop (the link leads back to itself)"
    )


def test_a_clip_whose_name_is_not_utf8_is_read_and_scored(tmp_path: Path, mel_model: Path) -> None:
    """soundfile encoded str paths strictly, so a readable clip named with invalid UTF-8 bytes was rejected
    as 'unreadable audio (UnicodeEncodeError ...)' by train/evaluate and clips score."""
    data = make_dataset(tmp_path / "data", per_label=3)
    odd = os.fsdecode(os.fsencode(data / "snoring") + b"/1_\xff\xfe_7.wav")
    shutil.copy(data / "snoring" / "1_0.wav", odd)

    ds = load_dataset(data)
    assert ds.counts() == {"discovered": 7, "used": 7, "rejected": 0}, ds.rejected
    assert "snoring/1_\udcff\udcfe_7.wav" in ds.files

    result = CliRunner().invoke(_cli(), ["clips", "score", "--model", str(mel_model), "--json", odd])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["label"] in CLASSES


def test_category_names_from_a_csv_reach_the_terminal_escaped(tmp_path: Path, mel_model: Path) -> None:
    """A category name (a user's CSV) or label (a folder name) with a terminal escape was printed raw by
    `clips evaluate` and `clips cv`, free to clear the screen or retitle the window."""
    data = make_dataset(tmp_path / "data", per_label=3)
    (data / "categories.csv").write_bytes(b"label,first,last,category\nsnoring,0,2,tv\x1b[2J\x1b]0;owned\x07\n")
    result = CliRunner().invoke(_cli(), ["clips", "evaluate", "--model", str(mel_model), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
    assert "| tv\\x1b[2J\\x1b]0;owned\\x07: n 3" in result.output


def test_evaluate_names_every_file_it_does_not_use_and_refuses_a_clip_cut_by_half_a_second(
    tmp_path: Path, mel_model: Path
) -> None:
    """`clips evaluate` and `clips score` took a 1-s clip cut to 0.5 s for a whole, shorter one; a clip at
    the data folder's top level, a hidden one and one in a hidden folder were in no count; and one sound
    under both labels was used twice, once with each label."""
    data = make_dataset(tmp_path / "data", per_label=3)
    sf.write(data / "snoring" / "1_8.wav", _tone(16_000)[:, 0], 16_000, subtype="PCM_16")
    whole = (data / "snoring" / "1_8.wav").read_bytes()
    (data / "snoring" / "1_8.wav").write_bytes(whole[: len(whole) - 16_000])  # 0.5 s of 1 s missing
    shutil.copy(data / "snoring" / "1_0.wav", data / "top_level.wav")
    shutil.copy(data / "snoring" / "1_1.wav", data / "snoring" / ".1_1.wav")
    (data / ".archive").mkdir()
    shutil.copy(data / "snoring" / "1_2.wav", data / ".archive" / "1_2.wav")
    shutil.copy(data / "no_snoring" / "0_0.wav", data / "snoring" / "1_9.wav")

    result = CliRunner().invoke(_cli(), ["clips", "evaluate", "--model", str(mel_model), "--data", str(data), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    reasons = {r["file"]: r["reason"] for r in out["rejected"]}
    assert out["counts"] == {"discovered": 11, "used": 5, "rejected": 6}, reasons
    assert reasons["snoring/1_8.wav"].startswith("snoring/1_8.wav: truncated: the header declares")
    assert "not inside a label folder" in reasons["top_level.wav"]
    assert "a hidden file" in reasons["snoring/.1_1.wav"]
    assert "inside a hidden folder ('.archive')" in reasons[".archive/1_2.wav"]
    assert "the same audio as no_snoring/0_0.wav (label 'no_snoring')" in reasons["snoring/1_9.wav"]
    assert "the same audio as snoring/1_9.wav (label 'snoring')" in reasons["no_snoring/0_0.wav"]

    score = CliRunner().invoke(_cli(), ["clips", "score", "--model", str(mel_model), str(data / "snoring/1_8.wav")])
    assert score.exit_code == 1 and "truncated: the header declares" in score.output, score.output
