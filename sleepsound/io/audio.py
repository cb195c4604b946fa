"""Streaming access to a night of audio, whatever the layout.

A PSG-Audio night is several EDF parts of about an hour, each holding the microphones
as ordinary signals; a plain night is one WAV/FLAC. Both are read block by block so a
48 kHz night never sits in memory whole, and parts are concatenated on one time axis.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyedflib
import soundfile as sf

# Plain files carry no labels: by convention channel 0 is the ambient mic, 1 the tracheal.
PLAIN_CHANNEL_INDEX: dict[str, int] = {"Mic": 0, "Tracheal": 1}


class AudioError(Exception):
    """A recording that cannot be read as audio; ``code`` names the fault for the manifest."""

    def __init__(self, path: str, code: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PartInfo:
    """One file of a night: where it is, its rate and length for the chosen channel."""

    path: str
    sample_rate: float
    n_samples: int
    channel_index: int
    labels: tuple[str, ...]
    full_scale: float = 1.0  # largest magnitude the format can hold, for clipping checks

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate


def probe_edf(path: str, channel: str) -> PartInfo:
    """Read an EDF/BDF header and locate ``channel`` by label (never by index)."""
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty_file", "file is empty (0 bytes); re-upload it")
    try:
        reader = pyedflib.EdfReader(path)
    except OSError as exc:
        raise AudioError(path, "unreadable_edf", f"not a readable EDF/BDF file ({exc})") from exc
    try:
        labels = tuple(label.strip() for label in reader.getSignalLabels())
        if channel not in labels:
            raise AudioError(path, "channel_missing",
                             f"audio channel {channel!r} not found; signals are {list(labels)}")
        index = labels.index(channel)
        full_scale = max(abs(reader.getPhysicalMinimum(index)), abs(reader.getPhysicalMaximum(index)))
        return PartInfo(path, float(reader.getSampleFrequency(index)),
                        int(reader.getNSamples()[index]), index, labels, float(full_scale))
    finally:
        reader.close()


def probe_plain(path: str, channel: str) -> PartInfo:
    """Read a WAV/FLAC header; the channel is chosen by the plain-layout convention."""
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty_file", "file is empty (0 bytes); re-upload it")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(path, "unreadable_audio", f"not a readable WAV/FLAC file ({exc})") from exc
    index = PLAIN_CHANNEL_INDEX[channel]
    if index >= info.channels:
        raise AudioError(path, "channel_missing",
                         f"channel {channel!r} (index {index}) missing: file has {info.channels} channel(s)")
    labels = tuple(f"ch{i}" for i in range(info.channels))
    return PartInfo(path, float(info.samplerate), int(info.frames), index, labels)


def iter_part_blocks(part: PartInfo, block_samples: int, layout: str) -> Iterator[np.ndarray]:
    """Yield float32 blocks of one part's chosen channel, in order."""
    if layout == "psg-audio":
        reader = pyedflib.EdfReader(part.path)
        try:
            for start in range(0, part.n_samples, block_samples):
                n = min(block_samples, part.n_samples - start)
                yield reader.readSignal(part.channel_index, start, n).astype(np.float32)
        finally:
            reader.close()
    else:
        with sf.SoundFile(part.path) as handle:
            for block in handle.blocks(blocksize=block_samples, dtype="float32", always_2d=True):
                yield np.ascontiguousarray(block[:, part.channel_index])


def iter_night_blocks(parts: list[PartInfo], block_samples: int, layout: str) -> Iterator[np.ndarray]:
    """Concatenate parts on one time axis and re-cut into blocks of exactly ``block_samples``.

    Re-cutting keeps blocks aligned to the epoch grid across part boundaries (a part
    rarely holds a whole number of blocks); only the last block may be shorter.
    """
    pending: list[np.ndarray] = []
    filled = 0
    for part in parts:
        for block in iter_part_blocks(part, block_samples, layout):
            pending.append(block)
            filled += len(block)
            while filled >= block_samples:
                joined = np.concatenate(pending)
                yield joined[:block_samples]
                rest = joined[block_samples:]
                pending, filled = ([rest] if len(rest) else []), len(rest)
    if filled:
        yield np.concatenate(pending)
