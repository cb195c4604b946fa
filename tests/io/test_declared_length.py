"""A compressed file's length is its header's word, and libsndfile takes it: a FLAC whose STREAMINFO
declared 2^36 - 1 samples (1,193 h at 16 kHz) in 1.5 MB passed quick validation (what `run` and
`score` check) and its night was read as 1,193 h. A length the file's bytes cannot hold even at the
format's densest coding is ``truncated_audio`` from the header alone; real files, long digital
silence included, stay inside the bound. Where a file that passes it stops decoding is named."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sleepsound.core.config import PreprocessConfig
from sleepsound.ingest.manifest import build_manifest
from sleepsound.io.audio import AudioError, iter_part_blocks, probe_plain
from sleepsound.synth.faults import set_flac_total_samples

RATE = 16_000
LIE = 2**36 - 1  # the largest count STREAMINFO's 36 bits hold: 1,193 h at 16 kHz


def _write(
    path: Path,
    seconds: int,
    fmt: str = "FLAC",
    subtype: str = "PCM_16",
    rate: int = RATE,
    channels: int = 1,
    silent: bool = False,
) -> Path:
    """``seconds`` of quiet noise (or digital silence), written a minute at a time."""
    noise = np.random.default_rng(0).normal(0, 0.05, (60 * rate, channels)).astype(np.float32)
    with sf.SoundFile(path, "w", rate, channels, format=fmt, subtype=subtype) as out:
        for start in range(0, seconds, 60):
            minute = noise[: min(60, seconds - start) * rate]
            out.write(np.zeros_like(minute) if silent else minute)
    return path


def _refused(path: Path) -> AudioError:
    with pytest.raises(AudioError) as caught:
        probe_plain(str(path), "Mic")
    assert caught.value.code == "truncated_audio" and caught.value.path == str(path)
    return caught.value


def test_a_flac_declaring_more_than_its_bytes_can_hold_is_truncated_audio(tmp_path: Path) -> None:
    path = _write(tmp_path / "night.flac", 60)
    assert probe_plain(str(path), "Mic").n_samples == 60 * RATE
    set_flac_total_samples(path, LIE)
    message = _refused(path).message
    assert "the header (STREAMINFO) declares 1193:02:47 of audio (68719476735 samples)" in message
    assert "hold at most 12:10:" in message and "re-upload or re-export" in message


def test_quick_validation_quarantines_it_by_name(tmp_path: Path) -> None:
    folder = tmp_path / "cohort"
    folder.mkdir()
    path = _write(folder / "night.flac", 60)
    set_flac_total_samples(path, LIE)
    (row,) = build_manifest(str(folder), PreprocessConfig())  # --quick: headers only
    assert row["status"] == "quarantined" and row["reason_code"] == "truncated_audio"
    assert row["reason"].startswith(f"{path}: truncated: the header (STREAMINFO) declares 1193:02:47")
    assert row["n_epochs"] == 0


@pytest.mark.parametrize(
    ("rate", "channels", "subtype", "minutes"), [(16_000, 1, "PCM_16", 120), (48_000, 2, "PCM_24", 10)]
)
def test_long_flacs_of_digital_silence_pass(
    tmp_path: Path, rate: int, channels: int, subtype: str, minutes: int
) -> None:
    path = _write(tmp_path / "silent.flac", minutes * 60, "FLAC", subtype, rate, channels, silent=True)
    part = probe_plain(str(path), "Mic")
    assert part.n_samples == minutes * 60 * rate
    # the bound (9-10 bytes a 4096-sample frame) is near what libFLAC takes for silence (12-18 bytes):
    # the same bytes declaring twice the length are refused, so the check is not vacuous
    set_flac_total_samples(path, 2 * minutes * 60 * rate)
    assert "even of digital silence" in _refused(path).message


def test_a_flac_behind_an_id3_tag_is_judged_by_its_frames(tmp_path: Path) -> None:
    flac = _write(tmp_path / "plain.flac", 20).read_bytes()
    tag = b"ID3\x04\x00\x00" + bytes([0, 0, 1, 0]) + bytes(128)  # an ID3v2.4 tag of 128 bytes, which libFLAC skips
    tagged = tmp_path / "tagged.flac"
    tagged.write_bytes(tag + flac)
    assert probe_plain(str(tagged), "Mic").n_samples == 20 * RATE
    lying = bytearray(tag + flac)
    at = len(tag) + 18  # STREAMINFO's count, as set_flac_total_samples finds it without a tag
    lying[at : at + 8] = ((int.from_bytes(lying[at : at + 8], "big") & ~(2**36 - 1)) | LIE).to_bytes(8, "big")
    tagged.write_bytes(bytes(lying))
    assert "declares 1193:02:47" in _refused(tagged).message


def _ogg_crc(page: bytes) -> int:
    """An Ogg page's CRC-32 (polynomial 0x04C11DB7, not reflected, initial 0), its CRC field zeroed."""
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1) & 0xFFFFFFFF
    return crc


def _declare_more(path: Path) -> None:
    """Make an MP3's Xing frame count, or an Ogg stream's last granule position, declare far more."""
    data = bytearray(path.read_bytes())
    if path.suffix == ".mp3":
        at = data.index(b"Xing")
        assert struct.unpack(">I", data[at + 4 : at + 8])[0] & 1  # the frame count is there
        data[at + 8 : at + 12] = struct.pack(">I", 2**31)
    else:
        last = data.rindex(b"OggS")
        data[last + 6 : last + 14] = struct.pack("<q", 2**40)
        data[last + 22 : last + 26] = bytes(4)
        data[last + 22 : last + 26] = struct.pack("<I", _ogg_crc(bytes(data[last:])))
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("name", "fmt", "subtype", "kind"),
    [
        ("a.mp3", "MP3", "MPEG_LAYER_III", "MP3"),
        ("a.ogg", "OGG", "VORBIS", "Ogg Vorbis"),
        ("b.ogg", "OGG", "OPUS", "Ogg Opus"),
    ],
)
def test_an_mp3_or_ogg_declaring_more_than_its_bytes_can_hold_is_truncated_audio(
    tmp_path: Path, name: str, fmt: str, subtype: str, kind: str
) -> None:
    path = _write(tmp_path / name, 20, fmt, subtype)
    assert probe_plain(str(path), "Mic").n_samples == pytest.approx(20 * RATE, abs=RATE // 10)
    _declare_more(path)
    assert sf.info(str(path)).frames > 10**11  # libsndfile takes the header at its word
    message = _refused(path).message
    assert f"bytes of {kind} hold at most" in message and message.startswith("truncated: the header declares")


def test_clips_and_the_monitor_refuse_it_as_validate_does(tmp_path: Path) -> None:
    from sleepsound.clips.dataset import ClipError
    from sleepsound.clips.scoring import decode_bounded
    from sleepsound.monitor.limits import AudioLimits, Refused, probe_audio

    path = _write(tmp_path / "clip.flac", 5)
    set_flac_total_samples(path, LIE)
    expected = "truncated: the header (STREAMINFO) declares 1193:02:47 of audio"
    with pytest.raises(ClipError) as clip:
        decode_bounded(str(path), max_seconds=30.0)
    assert str(clip.value).startswith(expected)  # not "longer than 30 s": the file is damaged
    with pytest.raises(Refused) as upload:
        probe_audio(path.read_bytes(), "clip.flac", AudioLimits(max_bytes=8 << 20, max_seconds=30.0))
    assert upload.value.status == 400 and upload.value.message.startswith(f"clip.flac: {expected}")


# ----------------------------------------------------------------------------- where decoding stops


def _stops_at(path: Path) -> str:
    part = probe_plain(str(path), "Mic")
    with pytest.raises(AudioError) as caught:
        for _ in iter_part_blocks(part, 30 * RATE, "plain"):
            pass
    assert caught.value.code == "unreadable_audio" and caught.value.path == str(path)
    return caught.value.message


def test_a_flac_declaring_twice_its_length_is_said_to_stop_where_its_audio_ends(tmp_path: Path) -> None:
    """The audio decodes to its real end (60 s); the read past it fails. It was said to stop "after
    0:00:00": soundfile drops a failed read's samples and libsndfile's position is then -1."""
    path = _write(tmp_path / "night.flac", 60)
    set_flac_total_samples(path, 120 * RATE)  # within the bound: found when read
    assert "stops decoding after 0:01:00 of 0:02:00" in _stops_at(path)
    (row,) = build_manifest(str(tmp_path), PreprocessConfig(), deep=True)
    assert row["reason_code"] == "unreadable_audio" and "stops decoding after 0:01:00 of 0:02:00" in row["reason"]


def test_an_mp3_damaged_half_way_is_said_to_stop_half_way(tmp_path: Path) -> None:
    path = _write(tmp_path / "night.mp3", 60, "MP3", "MPEG_LAYER_III")
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = np.random.default_rng(1).integers(0, 256, 4000, np.uint8).tobytes()
    path.write_bytes(bytes(data))
    message = _stops_at(path)
    stopped = message.split("stops decoding after ")[1].split(" of ")[0]
    assert stopped in ("0:00:29", "0:00:30", "0:00:31"), message


def test_a_night_whose_wav_header_declares_0_hz_is_named_for_the_field(tmp_path: Path) -> None:
    """libsndfile refuses a 0-Hz WAV header as "Internal error : SF_INFO struct incomplete.", which names
    no field; the night's header check names it, as the clip readers do."""
    path = _write(tmp_path / "night.wav", 60, fmt="WAV")
    raw = bytearray(path.read_bytes())
    fmt = raw.index(b"fmt ")
    raw[fmt + 12 : fmt + 16] = (0).to_bytes(4, "little")  # the sample rate field
    path.write_bytes(bytes(raw))
    with pytest.raises(AudioError) as caught:
        probe_plain(str(path), "Mic")
    assert caught.value.code == "unreadable_audio" and caught.value.path == str(path)
    assert "the header declares a sample rate of 0 Hz" in caught.value.message
    assert "SF_INFO" not in caught.value.message
