"""An RF64 WAV (the 64-bit WAV for files over 4 GB) is checked against its size as a RIFF WAV is: its
data size lives in the ``ds64`` chunk, which the check skipped, so a copy cut short read as a short night."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from sleepsound.io.audio import AudioError, probe_plain


def _rf64(path: Path, seconds: int) -> Path:
    sf.write(path, np.zeros(16_000 * seconds, dtype=np.float32), 16_000, format="RF64", subtype="PCM_16")
    return path


def test_a_whole_rf64_file_reads(tmp_path: Path) -> None:
    assert probe_plain(str(_rf64(tmp_path / "whole.wav", 60)), "Mic").n_samples == 16_000 * 60


@pytest.mark.parametrize("damage", ["cut", "declared"])
def test_an_rf64_file_shorter_than_its_header_is_truncated_audio(tmp_path: Path, damage: str) -> None:
    path = _rf64(tmp_path / "night.wav", 60)
    data = bytearray(path.read_bytes())
    assert data[12:16] == b"ds64"
    if damage == "cut":  # a copy stopped half way
        data = data[: len(data) // 2]
    else:  # the ds64 chunk declares a terabyte of audio
        data[28:36] = struct.pack("<Q", 2**40)
    path.write_bytes(bytes(data))
    with pytest.raises(AudioError) as caught:
        probe_plain(str(path), "Mic")
    assert caught.value.code == "truncated_audio" and "bytes missing" in str(caught.value)
