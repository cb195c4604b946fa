"""Streaming access to a night of audio, whatever the layout.

A PSG-Audio night is several EDF parts of about an hour, each holding the microphones
as ordinary signals; a plain night is one WAV/FLAC. Both are read block by block so a
48 kHz night never sits in memory whole, and parts are concatenated on one time axis.
"""

from __future__ import annotations

import errno
import math
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol

import fsspec
import numpy as np
import pyedflib
import soundfile as sf

from sleepsound.core.findings import Finding, Quarantine, clock
from sleepsound.io.edf_header import EdfHeaderError, empty_range, explain_refusal, read_edf_header
from sleepsound.labels.vocabulary import EPOCH_SECONDS

# Plain nights in the formats libsndfile decodes (lossy ones too: a phone's OGG or MP3 is still
# a night's sound); other audio suffixes are listed by discovery and refused by name.
PLAIN_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
UNREAD_AUDIO_SUFFIXES = (".m4a", ".mp4", ".aac", ".wma", ".amr", ".webm", ".3gp")

_REMOTE_BLOCK_BYTES = 8 * 2**20  # ranged reads of object storage: a few requests per hour of 48 kHz audio

# Plain files carry no labels: by default channel 0 is the ambient mic, 1 the tracheal
# (``preprocess.plain_channel_index`` changes this).
PLAIN_CHANNEL_INDEX: dict[str, int] = {"Mic": 0, "Tracheal": 1}


class AudioError(Quarantine):
    """A recording that cannot be read as audio; ``code`` names the fault for the manifest."""


@dataclass(frozen=True)
class PartInfo:
    """One file of a night: where it is, its rate and length for the chosen channel."""

    path: str
    sample_rate: float
    n_samples: int
    channel_index: int
    labels: tuple[str, ...]
    full_scale: float = 1.0  # largest magnitude the format can hold, for clipping checks
    start: datetime | None = None  # wall-clock start (EDF header); None for plain audio
    findings: tuple[Finding, ...] = ()  # warnings about this file's header (their path is ``path``)
    # Set for a part read where it lies (object storage, by byte ranges): where its samples sit, and
    # the file's size (its header was checked against it), so nobody asks the store for it again.
    edf_layout: _EdfLayout | None = None
    file_bytes: int | None = None

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.sample_rate


_NOT_REGULAR = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def unreadable_reason(path: str) -> tuple[str, str] | None:
    """Why the local file ``path`` cannot be read at all, as (code, message), or None when it can.

    Checked with ``os.stat`` before anything opens it: opening a FIFO blocks until a writer comes,
    and a decoder's "System error." or an "empty file" would hide the real cause (a FIFO has size
    0; a file the process may not read fails in libsndfile without saying why)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return "broken_link", "a symbolic link to a file that does not exist; fix the link or copy the file in"
        return "file_not_found", "file not found (removed while it was being read?)"
    except PermissionError:
        return "permission_denied", _PERMISSION
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "broken_link", "a symbolic link loop (the link leads back to itself); fix the link"
        raise
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _NOT_REGULAR if test(info.st_mode)), "not a plain file")
        return "not_regular_file", f"not a regular file ({kind}); put the recording's file in its place"
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except PermissionError:
        return "permission_denied", _PERMISSION
    return None


_PERMISSION = (
    "permission denied: this process may not read it; fix the file's (or its folder's) permissions "
    "or run as a user who can read it"
)


def check_readable(path: str) -> None:
    """Raise AudioError naming why ``path`` cannot be read (``unreadable_reason``); nothing when it can."""
    reason = unreadable_reason(path)
    if reason is not None:
        raise AudioError(path, *reason)


# pyedflib reads every EDF+ annotation when it opens a file unless told not to: an annotation signal
# packed with them cost ~80x the file's size in memory (3.5 GB for a 46 MB part). Nothing here reads
# EDF annotations (labels come from the RML), so none are read.
NO_EDF_ANNOTATIONS = pyedflib.DO_NOT_READ_ANNOTATIONS
# Decoded samples (frames x channels) a second of the richest audio any recorder here makes: 48-kHz
# stereo. The one unit of decode budgets: a read of a plain file here, a service's upload (monitor.limits).
SAMPLES_PER_SECOND = 48_000 * 2
# Samples one read of a plain file decodes at most: 30 s of 48-kHz stereo.
DECODE_SAMPLES = 30 * SAMPLES_PER_SECOND
FLOAT32_MAX = float(np.finfo(np.float32).max)  # samples are float32 once scaled


def probe_edf(path: str, channel: str) -> PartInfo:
    """Read an EDF/BDF header and locate ``channel`` by label (never by index)."""
    check_readable(path)
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty_file", "file is empty (0 bytes); re-upload it")
    header = read_edf_header(path)  # names truncation and header faults (EdfHeaderError); pyedflib would not
    try:
        reader = pyedflib.EdfReader(path, annotations_mode=NO_EDF_ANNOTATIONS)
    except OSError as exc:
        explain_refusal(path)  # raises EdfHeaderError naming the field, signal and value when it can
        text = str(exc).removeprefix(f"{path}: ")  # the path may be a temporary download; the finding names the file
        raise AudioError(path, "unreadable_edf", f"not a readable EDF/BDF file ({text})") from exc
    try:
        labels = tuple(label.strip() for label in reader.getSignalLabels())
        if channel not in labels:
            raise AudioError(
                path, "channel_missing", f"audio channel {channel!r} not found; signals are {list(labels)}"
            )
        index = labels.index(channel)
        full_scale = max(abs(reader.getPhysicalMinimum(index)), abs(reader.getPhysicalMaximum(index)))
        twice = ()
        if labels.count(channel) > 1:  # which one is the microphone is the exporter's secret: say which is read
            others = [i + 1 for i, label in enumerate(labels) if label == channel][1:]
            twice = (
                Finding(
                    "recording",
                    "duplicate_channel",
                    "warning",
                    path,
                    f"{labels.count(channel)} signals are labelled {channel!r}: signal {index + 1} is read, "
                    f"signal(s) {others} are not; check the montage",
                ),
            )
        return PartInfo(
            path,
            float(reader.getSampleFrequency(index)),
            int(reader.getNSamples()[index]),
            index,
            labels,
            float(full_scale),
            header.start,
            _scaling_findings(reader, index, path, channel) + twice,
        )
    finally:
        reader.close()


def _scaling_findings(reader: pyedflib.EdfReader, index: int, path: str, channel: str) -> tuple[Finding, ...]:
    """The audio signal's digital-to-physical scaling: undefined (equal minimum and maximum) quarantines
    the night; a digital minimum above the maximum only flips the sign, harmless for sound, so it is a
    warning. pyedflib accepts both and would return raw digital values for the first."""
    dmin, dmax = int(reader.getDigitalMinimum(index)), int(reader.getDigitalMaximum(index))
    pmin, pmax = reader.getPhysicalMinimum(index), reader.getPhysicalMaximum(index)
    for kind, low, high in (("digital", dmin, dmax), ("physical", pmin, pmax)):
        if (problem := empty_range(channel, kind, low, high)) is not None:
            raise AudioError(path, "inconsistent_edf_header", f"{problem}; re-export the file")
    if max(abs(pmin), abs(pmax)) >= FLOAT32_MAX:  # scaled, every sample would read as inf
        raise AudioError(
            path,
            "inconsistent_edf_header",
            f"signal {channel!r}: physical range {pmin:g} to {pmax:g} is beyond what a 32-bit float holds, so "
            "its scaled samples would all be infinite; re-export the file",
        )
    if dmin < dmax:
        return ()
    flipped = pmin < pmax  # the slope (pmax - pmin) / (dmax - dmin) is negative
    effect = (
        "the audio is read sign-inverted, which changes no sound feature"
        if flipped
        else "the physical range is reversed too, so the audio is read with its usual sign"
    )
    return (
        Finding(
            "recording",
            "reversed_digital_range",
            "warning",
            path,
            f"signal {channel!r}: digital minimum {dmin} is above digital maximum {dmax} (physical "
            f"{pmin:g} to {pmax:g}); {effect}. Kept; check the exporter",
        ),
    )


def probe_plain(path: str, channel: str, index: int | None = None) -> PartInfo:
    """Read a plain night's header (WAV, FLAC, OGG, MP3, AIFF); ``channel`` is found at ``index``
    (default: the plain-layout convention).

    Other audio formats are listed by discovery (so the night is counted) and refused here by
    their suffix (a download keeps its source's name)."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in PLAIN_SUFFIXES:
        raise AudioError(
            path,
            "unreadable_audio",
            f"{suffix.lstrip('.').upper()} is not read (libsndfile cannot "
            "decode it): convert it to FLAC, keeping the name",
        )
    check_readable(path)
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty_file", "file is empty (0 bytes); re-upload it")
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as exc:
        reason = getattr(exc, "error_string", None) or str(exc)  # without the (maybe temporary) path
        with open(path, "rb") as handle:  # a 0-Hz header is libsndfile's "SF_INFO struct incomplete"
            reason = wav_format_problem(handle, os.path.getsize(path)) or reason
        raise AudioError(
            path, "unreadable_audio", f"not a readable {suffix.lstrip('.').upper()} file ({reason})"
        ) from exc
    check_declared_length(path, info)
    if info.frames == 0:
        raise AudioError(path, "empty_file", "holds an audio header but no samples; re-upload it")
    index = PLAIN_CHANNEL_INDEX[channel] if index is None else index
    if index >= info.channels:
        raise AudioError(
            path, "channel_missing", f"channel {channel!r} (index {index}) missing: file has {info.channels} channel(s)"
        )
    labels = tuple(f"ch{i}" for i in range(info.channels))
    # Integer and lossy formats hold at most +-1.0; a float file has no full scale (values beyond 1 may
    # just be unnormalised), so clipping cannot be told from its samples and is not checked.
    full_scale = math.inf if info.subtype in ("FLOAT", "DOUBLE") else 1.0
    return PartInfo(path, float(info.samplerate), int(info.frames), index, labels, full_scale)


class AudioHeader(Protocol):
    """What libsndfile says of a file's header: ``soundfile.info``'s answer or an open ``SoundFile``."""

    @property
    def format(self) -> str: ...
    @property
    def subtype(self) -> str: ...
    @property
    def frames(self) -> int: ...
    @property
    def samplerate(self) -> int: ...


# A night's WAV may miss less than this much of the audio its header declares and still be read, as
# it is (see wav_length_problem); a clip reader passes its own, far smaller share.
WAV_SHORT_SECONDS = 1.0


def check_declared_length(path: str, info: AudioHeader) -> None:
    """Raise AudioError when the length ``path``'s header declares cannot fit the file (``length_problem``)."""
    with open(path, "rb") as handle:
        problem = length_problem(handle, os.path.getsize(path), info)
    if problem is not None:
        raise AudioError(path, *problem)


def length_problem(
    handle: BinaryIO,
    size: int,
    info: AudioHeader,
    tail_seconds: float = EPOCH_SECONDS,
    short_seconds: float = WAV_SHORT_SECONDS,
) -> tuple[str, str] | None:
    """(code, message) when the length a file's header declares (``info``, libsndfile's reading of it)
    does not fit the ``size`` bytes of the file in ``handle``, else None: a WAV's ``data`` chunk
    (``wav_length_problem``); a FLAC's STREAMINFO sample count (``flac_length_problem``); an MP3's or
    Ogg stream's length (``stream_length_problem``). Checked from the header alone, before anything is
    decoded: the length sizes what is read and allocated after it. Other formats are not checked
    (libsndfile takes an AIFF's length from the bytes there are). ``tail_seconds`` and ``short_seconds``
    are ``wav_length_problem``'s."""
    if info.format in ("WAV", "RF64"):
        return wav_length_problem(handle, size, tail_seconds, short_seconds)
    if info.format == "FLAC":
        return flac_length_problem(handle, size)
    return stream_length_problem(info, size)


def wav_length_problem(
    handle: BinaryIO, size: int, tail_seconds: float = EPOCH_SECONDS, short_seconds: float = WAV_SHORT_SECONDS
) -> tuple[str, str] | None:
    """(code, message) when the WAV in ``handle`` (``size`` bytes) has a ``data`` chunk size that
    disagrees with the file, else None; libsndfile reads either case without complaint, as a
    shorter recording. Takes a handle so an upload held in memory is checked as a file on disk is:

    * ``truncated_audio``: the header declares more audio than the file holds (an upload or copy
      cut short). Less than ``short_seconds`` missing (a second by default, sized for whole nights) is
      taken for a writer's miscount and read as it is; a clip reader passes a few milliseconds, as a
      second is all of a 1-s clip;
    * ``unfinalised_audio``: the header declares less (0, typically) than the samples that follow,
      and no valid chunk does: a recording never closed properly (the recorder stopped or crashed
      before writing the sizes). At least ``tail_seconds`` of audio must follow (a night's epoch by
      default: a tag or padding is less; a short clip passes its own length, which is more than that).

    RIFF/RIFX WAVE is checked, and RF64 (its 64-bit ``data`` size in the ``ds64`` chunk); Wave64 is
    not. A RIFF ``data`` size of 0xFFFFFFFF is the streaming writers' "to the end of the file" and fine.
    """
    kind = _wave_kind(handle)
    if kind is None:
        return None
    byte_rate, data64, offset, order = 0, None, 0, ">" if kind == b"RIFX" else "<"
    for at, chunk, length in _wave_chunks(handle, size, order):
        if chunk == b"fmt " and length >= 12:
            byte_rate = struct.unpack(f"{order}I", handle.read(12)[8:12])[0]
        if chunk == b"ds64" and length >= 16:  # RF64: riff size, then the data size, 64 bits each
            data64 = struct.unpack("<QQ", handle.read(16))[1]
        if chunk == b"data":
            offset = at
            break
    else:
        return None  # no data chunk: libsndfile's own error, or its 0 frames, says so
    if kind == b"RF64" and length == 0xFFFFFFFF and data64 is not None:
        length = data64
    elif length == 0xFFFFFFFF:
        return None
    if byte_rate == 0:
        return None
    start, held = offset + 8, size - offset - 8
    seconds = f"{clock(length / byte_rate)} of audio"
    if length - held >= max(1.0, short_seconds * byte_rate):
        return (
            "truncated_audio",
            f"truncated: the header declares {seconds} ({length} bytes) but the file holds "
            f"{clock(held / byte_rate)} ({length - held} bytes missing): an upload cut short; "
            "re-upload it",
        )
    end = start + length + (length & 1)
    junk = _unparsed_tail(handle, end, size, order)
    if junk >= tail_seconds * byte_rate:
        return (
            "unfinalised_audio",
            f"the header declares {seconds} ({length} bytes) but {clock(junk / byte_rate)} more "
            "follows outside any chunk: a recording that was never finalised (the recorder "
            "stopped before writing the sizes). Rewrite the header, e.g. `sox --ignore-length "
            "in.wav out.wav`, and re-upload",
        )
    return None


def wav_format_problem(handle: BinaryIO, size: int) -> str | None:
    """What a RIFF/RIFX/RF64 WAVE file's ``fmt `` chunk declares that no audio has: no channels or a sample
    rate of 0 Hz; None otherwise (or for another kind of file). Why: libsndfile refuses a 0-Hz header
    as "Internal error : SF_INFO struct incomplete.", which names neither the field nor the file's fault."""
    kind = _wave_kind(handle)
    if kind is None:
        return None
    order = ">" if kind == b"RIFX" else "<"
    for _, chunk, length in _wave_chunks(handle, size, order):
        body = handle.read(8) if chunk == b"fmt " and length >= 8 else b""
        if len(body) == 8:  # a fmt chunk cut short is libsndfile's to name
            _, channels, rate = struct.unpack(f"{order}HHI", body)
            if channels == 0:
                return "the header declares 0 channels"
            return "the header declares a sample rate of 0 Hz" if rate == 0 else None
    return None


def _wave_kind(handle: BinaryIO) -> bytes | None:
    """``RIFF``, ``RIFX`` or ``RF64`` for a WAVE file in ``handle``, else None."""
    handle.seek(0)
    head = handle.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX", b"RF64") or head[8:12] != b"WAVE":
        return None
    return head[:4]


# A recording's WAVE file holds a handful of chunks (fmt, data, LIST, bext, id3 ...). The walks stop
# after this many: a 60-MB upload of 7.8 million empty chunks kept the header check busy for 10 s,
# on the service's event loop.
MAX_WAVE_CHUNKS = 4096


def _wave_chunks(handle: BinaryIO, size: int, order: str, offset: int = 12) -> Iterator[tuple[int, bytes, int]]:
    """(offset, id, declared size) of each chunk of a WAVE file of ``size`` bytes, in order from
    ``offset`` (the first chunk's, by default), the first ``MAX_WAVE_CHUNKS``; at each, ``handle``
    stands just past the chunk's 8-byte header, so its body can be read."""
    for _ in range(MAX_WAVE_CHUNKS):
        if offset + 8 > size:
            return
        handle.seek(offset)
        chunk, length = struct.unpack(f"{order}4sI", handle.read(8))
        yield offset, chunk, length
        offset += 8 + length + (length & 1)


def _unparsed_tail(handle: BinaryIO, offset: int, size: int, order: str) -> int:
    """Bytes from ``offset`` on that are not inside well-formed chunks (an ASCII id and a size
    that fits the file); 0 when the rest of the file is chunks (``LIST``, ``id3 `` ...), or more than
    ``MAX_WAVE_CHUNKS`` of them (nothing a reader plays: libsndfile stops at the data chunk)."""
    for at, chunk, length in _wave_chunks(handle, size, order, offset):
        if not all(32 <= c < 127 for c in chunk) or at + 8 + length > size:
            return size - at
    return 0


# The least a FLAC frame takes (RFC 9639): a header of at least 6 bytes (sync code, block-size, rate,
# channel and bit-depth codes: 4 bytes; a frame or sample number coded in 1 to 7 bytes; a CRC-8), one
# subframe per channel of at least its 1-byte header, and a CRC-16.
_FLAC_FRAME_BYTES = 6 + 2
_FLAC_LARGEST_BLOCK = 65535  # the most samples a frame header can state
_FLAC_METADATA_BLOCKS = 4096  # beyond this many metadata blocks the file is not judged


def flac_length_problem(handle: BinaryIO, size: int) -> tuple[str, str] | None:
    """(``truncated_audio``, message) when the FLAC in ``handle`` (``size`` bytes) declares in its
    STREAMINFO more samples than its audio frames can hold, else None. libsndfile reports that count as
    it stands, so a header declaring 2^36 samples (1,193 h at 16 kHz) in a 1.3 MB file was taken for a
    1,193-h night.

    The bound is the format's own, so no real file fails it, digital silence included: a frame holds
    at most STREAMINFO's maximum block size of samples (by RFC 9639's definition the largest block the
    stream uses; 65535, the most a frame can state, when the field is no valid size) and takes at least
    8 bytes plus 1 per channel (``_FLAC_FRAME_BYTES``; the constant's own bits and the padding to a
    byte are not even counted), near what digital silence takes as one CONSTANT subframe per channel
    (libFLAC writes 12-14 bytes a 4096-sample mono block). So the audio frames (the bytes after the
    metadata blocks) must hold at least ``ceil(total / block)`` such frames. An ID3v2 tag before the
    ``fLaC`` marker (which libFLAC skips) is skipped; a total of 0 (unknown) is not judged. Only an
    encoder writing blocks above its own STREAMINFO maximum, and then near-silent, could be refused."""
    handle.seek(0)
    offset = _id3v2_length(handle.read(10))
    handle.seek(offset)
    if handle.read(4) != b"fLaC":
        return None
    offset += 4
    streaminfo = None
    for _ in range(_FLAC_METADATA_BLOCKS):
        handle.seek(offset)
        block = handle.read(4)
        if len(block) < 4:
            return None  # the metadata is cut short: libFLAC's own error says so
        kind, length = block[0] & 0x7F, int.from_bytes(block[1:4], "big")
        if kind == 0 and streaminfo is None:
            streaminfo = handle.read(34)
        offset += 4 + length
        if block[0] & 0x80:  # the last metadata block: the audio frames follow
            break
    else:
        return None
    if streaminfo is None or len(streaminfo) < 34:
        return None
    largest = int.from_bytes(streaminfo[2:4], "big")
    fields = int.from_bytes(streaminfo[10:18], "big")  # rate 20 bits, channels-1 3, bits-1 5, samples 36
    rate, channels, total = fields >> 44, (fields >> 41 & 0x7) + 1, fields & (2**36 - 1)
    if total == 0 or rate == 0:
        return None
    block_samples = largest if largest >= 16 else _FLAC_LARGEST_BLOCK
    frame_bytes = _FLAC_FRAME_BYTES + channels
    audio = max(0, size - offset)
    if -(-total // block_samples) * frame_bytes <= audio:
        return None
    most = audio // frame_bytes * block_samples
    return (
        "truncated_audio",
        f"truncated: the header (STREAMINFO) declares {clock(total / rate)} of audio ({total} samples) but "
        f"its {audio} bytes of audio frames hold at most {clock(most / rate)}, even of digital silence (a "
        f"frame of at most {block_samples} samples takes at least {frame_bytes} bytes): a damaged header or "
        "a file cut short; re-upload or re-export it",
    )


def _id3v2_length(head: bytes) -> int:
    """Bytes of the ID3v2 tag that ``head`` (a file's first 10 bytes) begins, 0 when it begins none."""
    if len(head) < 10 or head[:3] != b"ID3" or any(b & 0x80 for b in head[6:10]):
        return 0
    body = (head[6] << 21) | (head[7] << 14) | (head[8] << 7) | head[9]  # "synchsafe": 7 bits a byte
    return 10 + body + (10 if head[5] & 0x10 else 0)  # flag 0x10: a footer follows


# The most samples (of each channel) one byte of a lossy stream can stand for, by its smallest unit:
# an MPEG audio frame has a 4-byte header and decodes to at most 1152 samples (Layer II/III; Layer I
# 384); an Ogg packet takes at least one lacing byte in its page's segment table and decodes to at most
# 4096 samples in Vorbis (half its largest block, 8192) or 120 ms in Opus.
_MPEG_FRAME = (1152 / 4, "an MPEG audio frame of at most 1152 samples takes at least 4 bytes")
_VORBIS_PACKET = (4096.0, "a Vorbis packet of at most 4096 samples takes at least 1 byte")
_OPUS_PACKET_S = 0.120


def stream_length_problem(info: AudioHeader, size: int) -> tuple[str, str] | None:
    """(``truncated_audio``, message) when an MP3 or Ogg (Vorbis, Opus) file of ``size`` bytes declares
    (``info``) more samples than that many bytes can code at the format's densest, else None. Their
    length is the header's word too: mpg123 takes an MP3's from its Xing/Info frame count, libsndfile
    an Ogg stream's from its last page's granule position, and a file declaring 2^40 samples was read
    as if it held them. The bounds are loose (a real file is far below them) but sound: only a length
    the bytes cannot hold is refused; one merely too long is found when the audio is read."""
    if info.format == "MP3":
        kind, (per_byte, why) = "MP3", _MPEG_FRAME
    elif info.format == "OGG" and info.subtype == "VORBIS":
        kind, (per_byte, why) = "Ogg Vorbis", _VORBIS_PACKET
    elif info.format == "OGG" and info.subtype == "OPUS":
        kind, per_byte = "Ogg Opus", _OPUS_PACKET_S * info.samplerate
        why = "an Opus packet of at most 120 ms takes at least 1 byte"
    else:
        return None
    rate, frames = info.samplerate, info.frames
    if rate <= 0 or frames <= per_byte * size:
        return None
    return (
        "truncated_audio",
        f"truncated: the header declares {clock(frames / rate)} of audio ({frames} samples) but "
        f"{size} bytes of {kind} hold at most {clock(per_byte * size / rate)} ({why}): a damaged "
        "header or a file cut short; re-upload or re-export it",
    )


@dataclass(frozen=True)
class _EdfLayout:
    """Where one signal's 16-bit samples sit in an EDF file's data records, and their scaling."""

    data_offset: int  # bytes before the first data record
    record_samples: int  # samples of all signals in one record
    signal_offset: int  # first sample of the signal within a record
    signal_samples: int  # the signal's samples per record
    bitvalue: float
    offset: float


def _edf_layout(reader: pyedflib.EdfReader, path: str, chn: int, n_samples: int) -> _EdfLayout | None:
    """The layout of signal ``chn`` for reading records with numpy, or None to leave it to pyedflib.

    Scaling comes from pyedflib's own parse of the header and is applied as edflib does
    (``bitvalue * (offset + digital)`` in double, digital values outside the header's range
    not clamped), so the samples are bit-identical; only plain 16-bit EDF whose size matches
    its header is taken (BDF and anything unusual stay with pyedflib).
    """
    try:
        header = read_edf_header(path)  # also checks the file size against the header
    except EdfHeaderError:
        return None
    if header.is_bdf:
        return None
    labels, per_record = header.labels, header.samples_per_record
    ordinary = [i for i, label in enumerate(labels) if label != "EDF Annotations"]  # pyedflib hides these
    if chn >= len(ordinary) or len(ordinary) != reader.signals_in_file:
        return None
    raw = ordinary[chn]
    if labels[raw] != reader.getLabel(chn).strip() or per_record[raw] * header.n_records != n_samples:
        return None
    pmin, pmax = reader.getPhysicalMinimum(chn), reader.getPhysicalMaximum(chn)
    dmin, dmax = int(reader.getDigitalMinimum(chn)), int(reader.getDigitalMaximum(chn))
    if not -32768 <= dmin < dmax <= 32767 or pmax == pmin:
        return None
    bitvalue = (pmax - pmin) / (dmax - dmin)
    return _EdfLayout(
        header.header_bytes, sum(per_record), sum(per_record[:raw]), per_record[raw], bitvalue, pmax / bitvalue - dmax
    )


def probe_remote_edf(uri: str, channel: str) -> PartInfo | None:
    """``channel`` of an EDF part on object storage, to be read where it lies by byte ranges: its
    header is fetched (a few KB), never the file. None for anything but plain 16-bit EDF with a
    usable scaling (BDF, odd headers): such a part is downloaded and read as usual.

    Scaling is parsed from the header's ASCII as pyedflib parses it, and applied as
    ``_read_edf_block`` applies pyedflib's, so the samples equal a downloaded copy's."""
    fs, path = fsspec.core.url_to_fs(uri)
    try:
        header = read_edf_header(path, fs)
    except EdfHeaderError:
        return None
    ordinary = [i for i, label in enumerate(header.labels) if label != "EDF Annotations"]
    labels = tuple(header.labels[i] for i in ordinary)
    if header.is_bdf or channel not in labels or not header.scaling:
        return None
    index = labels.index(channel)
    raw = ordinary[index]
    pmin, pmax, dmin, dmax = header.scaling[raw]
    if not (math.isfinite(pmin) and math.isfinite(pmax)) or pmax == pmin or not -32768 <= dmin < dmax <= 32767:
        return None
    bitvalue = (pmax - pmin) / (dmax - dmin)
    per_record = header.samples_per_record
    layout = _EdfLayout(
        header.header_bytes, sum(per_record), sum(per_record[:raw]), per_record[raw], bitvalue, pmax / bitvalue - dmax
    )
    return PartInfo(
        uri,
        per_record[raw] / header.record_seconds,
        per_record[raw] * header.n_records,
        index,
        labels,
        float(max(abs(pmin), abs(pmax))),
        header.start,
        edf_layout=layout,
        file_bytes=header.expected_bytes,  # read_edf_header refused any other size
    )


def _read_edf_block(handle: BinaryIO, layout: _EdfLayout, start: int, n: int) -> np.ndarray:
    """Samples ``[start, start + n)`` of the signal as float32 (whole records read, then sliced;
    ``handle`` a local file or a remote one, where this is one ranged read)."""
    spr = layout.signal_samples
    first, last = start // spr, (start + n - 1) // spr + 1
    handle.seek(layout.data_offset + 2 * first * layout.record_samples)
    count = (last - first) * layout.record_samples
    records = np.frombuffer(handle.read(2 * count), dtype="<i2")
    if len(records) != count:
        name = str(getattr(handle, "name", "") or getattr(handle, "path", ""))
        raise AudioError(name, "truncated_edf", "file ends inside a data record; re-upload it")
    digital = records.reshape(last - first, layout.record_samples)[:, layout.signal_offset : layout.signal_offset + spr]
    skip = start - first * spr
    digital = digital.reshape(-1)[skip : skip + n]
    return (layout.bitvalue * (layout.offset + digital.astype(np.float64))).astype(np.float32)


def iter_part_blocks(part: PartInfo, block_samples: int, layout: str, first: int = 0) -> Iterator[np.ndarray]:
    """Yield float32 blocks of one part's chosen channel, in order, from sample ``first`` on.

    EDF samples are read record-wise with numpy when the file is plain 16-bit EDF: the same
    values as pyedflib's ``readSignal`` (which converts sample by sample, most of a night's
    ingest time at 48 kHz) at a fraction of the cost; anything else is read by pyedflib.
    """
    if part.edf_layout is not None:  # where it lies: ranged reads of the records needed, nothing else
        fs, path = fsspec.core.url_to_fs(part.path)
        with fs.open(path, "rb", block_size=_REMOTE_BLOCK_BYTES, cache_type="readahead") as handle:
            for start in range(first, part.n_samples, block_samples):
                yield _read_edf_block(handle, part.edf_layout, start, min(block_samples, part.n_samples - start))
        return
    if layout == "psg-audio":
        reader = pyedflib.EdfReader(part.path, annotations_mode=NO_EDF_ANNOTATIONS)
        try:
            fast = _edf_layout(reader, part.path, part.channel_index, part.n_samples)
            if fast is None:
                for start in range(first, part.n_samples, block_samples):
                    n = min(block_samples, part.n_samples - start)
                    yield reader.readSignal(part.channel_index, start, n).astype(np.float32)
                return
        finally:
            reader.close()
        with open(part.path, "rb") as handle:
            for start in range(first, part.n_samples, block_samples):
                yield _read_edf_block(handle, fast, start, min(block_samples, part.n_samples - start))
    else:
        yield from _plain_blocks(part, block_samples, first)


def _plain_blocks(part: PartInfo, block_samples: int, first: int = 0) -> Iterator[np.ndarray]:
    """A WAV/FLAC's chosen channel block by block. Data that stops decoding part way (a FLAC
    corrupted or cut short) raises ``unreadable_audio`` with the time it stopped at. Read with
    ``read`` rather than ``blocks``, which refuses files libsndfile cannot seek (GSM 6.10 WAV);
    such a file is read from its start and the samples before ``first`` dropped. Every channel is
    decoded, so reads are cut to ``DECODE_SAMPLES`` samples in all: memory stays one block of the
    chosen channel whatever the rate and channel count (a 689 KB FLAC of 8 channels at 655 kHz took
    630 MB per 30-s block)."""
    with sf.SoundFile(part.path) as handle:
        step = max(1, min(block_samples, DECODE_SAMPLES // max(1, handle.channels)))
        position = 0  # frames of the file read so far: where a failing read began

        def read(frames: int) -> np.ndarray:
            nonlocal position
            try:
                data = handle.read(frames, dtype="float32", always_2d=True)
            except sf.LibsndfileError as exc:
                stopped = _decodes_until(part.path, position, frames)
                raise AudioError(
                    part.path,
                    "unreadable_audio",
                    f"the audio stops decoding after {clock(stopped / part.sample_rate)} of "
                    f"{clock(part.duration_s)} ({exc.error_string.strip()}): the file is corrupt or "
                    "cut short; re-upload or re-export it",
                ) from exc
            position += len(data)
            # of several channels a copy: a view would keep every channel of the read alive
            return data[:, part.channel_index].copy() if data.shape[1] > 1 else data[:, 0]

        skip = first
        if first:
            try:
                handle.seek(first)
                skip, position = 0, first
            except (sf.LibsndfileError, RuntimeError):
                pass
        while skip:
            dropped = len(read(min(skip, step)))
            if not dropped:
                return
            skip -= dropped
        while True:
            block = read(step)
            if not len(block):
                return
            if len(block) == step < block_samples:  # more reads make this block: filled in place
                whole = np.empty(block_samples, dtype=np.float32)
                whole[:step] = block
                got = step
                while got < block_samples:
                    piece = read(min(step, block_samples - got))
                    if not len(piece):
                        break
                    whole[got : got + len(piece)] = piece
                    got += len(piece)
                block = whole[:got]
            yield block


_LOCATE_FRAMES = 4096  # the reads that find where decoding stops: a quarter second at 16 kHz


def _decodes_until(path: str, start: int, frames: int) -> int:
    """Where decoding of ``path`` stops within a read of ``frames`` from frame ``start`` that failed.

    A failed read tells nothing of where it failed (libsndfile's position is gone: ``tell`` gives -1),
    and soundfile drops what it had decoded: a FLAC declaring more samples than it holds decodes to
    its real end, then fails soundfile's seek past it, so a night whose 60 s decode was reported to
    stop "after 0:00:00". The span is read again in small reads on a fresh handle, to the last one
    that succeeds; ``start`` when the file cannot be seeked there (decoding it again from the start
    could take as long as the night)."""
    reached = start
    try:
        with sf.SoundFile(path) as again:
            if start:
                again.seek(start)
            while reached < start + frames:
                got = len(again.read(min(_LOCATE_FRAMES, start + frames - reached), dtype="float32"))
                if not got:
                    break
                reached += got
    except (RuntimeError, OSError):  # LibsndfileError included: the read that fails again
        pass
    return reached


def iter_night_blocks(
    parts: list[PartInfo], block_samples: int, layout: str, start: int = 0, stop: int | None = None
) -> Iterator[np.ndarray]:
    """Concatenate parts on one time axis and re-cut into blocks of exactly ``block_samples``.

    Re-cutting keeps blocks aligned to the epoch grid across part boundaries (a part
    rarely holds a whole number of blocks); only the last block may be shorter.
    ``start``/``stop``: only samples ``[start, stop)`` of the night (a chunk of it; parts
    wholly outside are not opened), the blocks counted from ``start``.
    """
    pending: list[np.ndarray] = []
    filled = 0
    remaining = None if stop is None else max(0, stop - start)
    offset = 0  # the night's sample index where the current part begins
    for part in parts:
        if offset + part.n_samples <= start:
            offset += part.n_samples
            continue
        for block in iter_part_blocks(part, block_samples, layout, first=max(0, start - offset)):
            if remaining is not None:
                block = block[:remaining]
                remaining -= len(block)
            pending.append(block)
            filled += len(block)
            while filled >= block_samples:
                joined = np.concatenate(pending)
                yield joined[:block_samples]
                rest = joined[block_samples:]
                pending, filled = ([rest] if len(rest) else []), len(rest)
            if remaining == 0:
                break
        offset += part.n_samples
        if remaining == 0:
            break
    if filled:
        yield np.concatenate(pending)
