"""Discover and load a folder dataset of short clips: one sub-folder per label.

Layout: ``ROOT/<label>/<file>``; every non-hidden entry directly inside a label folder is a
candidate (any format soundfile reads; a sub-folder or a broken link is rejected by name).
Each candidate ends either *used* or *rejected* with a reason naming the file, so
``len(clips) + len(rejected) == n_files``. Audio files the layout leaves out (at the top of ROOT,
hidden, or in a hidden folder: ``passed_over``) are rejected too, as "not read" with the reason,
so none is lost unseen. Identical audio under two labels is rejected, every copy naming another.

Fixed-length policy (why: the head and the backbone batch need one length, and the
tutorial detector fed Whisper audio of arbitrary length):

1. read with soundfile, mix to mono (mean of the channels);
2. resample to 16 kHz with soxr (high quality);
3. take out the mean (a DC offset), then peak-normalise to 1.0 (recording gain differs between clips;
   the label should not);
   all-zero clips (digital silence) are kept as they are: silence is a valid "no event";
4. pad with zeros at the end, or keep the first ``clip_samples`` (trim the tail).
   ``clip_samples`` defaults to the longest accepted clip, at most 5 s, rounded up to a
   whole 20-ms backbone frame. ``lengths`` keeps each clip's real length, so padding can
   be masked out of the head's pooling.

Rejected: unreadable files, a header no clip has (a rate outside 8-384 kHz, more than 8 channels,
a length the file belies: cut short by more than ``CLIP_SHORT_SECONDS`` or never finalised), no samples,
shorter than ``min_seconds``,
non-finite samples or finite ones too large for float32,
a label folder not among the expected classes (or, for a file list, a missing file or a name that is not
``label/file`` inside ROOT). Audio is held in memory
(float32, 5 s max per clip), which suits clip datasets of a few thousand files.
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, TypeVar

import numpy as np
import soundfile as sf
import soxr

from sleepsound.io.audio import length_problem, wav_format_problem
from sleepsound.monitor.limits import MAX_CHANNELS, MAX_RATE_HZ, MIN_RATE_HZ

SAMPLE_RATE = 16_000
MAX_CLIP_SECONDS = 5.0
MIN_CLIP_SECONDS = 0.1
FRAME_SAMPLES = 320  # one 20-ms backbone frame at 16 kHz
T = TypeVar("T")
# Finite float samples near the float32 limit can ring past it when resampled (inf, then NaN once normalised).
RESAMPLED_NOT_FINITE = "samples too large to resample (they pass the float32 range: a damaged float file)"
NOT_FINITE = "non-finite samples (NaN or Inf)"
# Finite 64-bit float samples past the float32 range: the clips are float32 from here on.
TOO_LARGE = "samples too large (they pass the float32 range: a damaged float file)"
# A clip WAV may miss at most this much of the audio its header declares (io.audio.wav_length_problem).
# Why 10 ms: the nights' second is all of a 1-s clip (a clip cut in half was read as a whole, shorter one);
# 10 ms is half a 20-ms backbone frame, still more than a header miscounted by a few dozen bytes (e.g.
# counting its own 44) at any clip rate (44 bytes are 5.5 ms of 8-kHz 8-bit mono), and less than any cut.
CLIP_SHORT_SECONDS = 0.01
# Names (by suffix) of audio files the layout leaves out that are reported as not read; other files there
# (a categories.csv or manifest.csv beside the label folders, .DS_Store, a .git folder) are no clips.
AUDIO_SUFFIXES = frozenset(
    {f".{name.lower()}" for name in sf.available_formats()}
    | {".wave", ".bwf", ".oga", ".opus", ".aif", ".aifc", ".snd", ".m4a", ".aac", ".wma", ".mp4", ".webm"}
)


class ClipError(ValueError):
    """A file that cannot be used as a clip; the message is the reason."""


@dataclass(frozen=True)
class Rejected:
    """A file left out, with why (``reason`` starts with the file's path under the root)."""

    file: str
    label: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "label": self.label, "reason": self.reason}


@dataclass
class ClipDataset:
    """Accepted clips (fixed length) plus the rejected files; ``files`` are root-relative."""

    root: str
    classes: tuple[str, ...]
    files: list[str]
    labels: list[str]
    audio: np.ndarray  # float32 [N, clip_samples], peak-normalised
    lengths: np.ndarray  # int64 [N], real samples before padding (<= clip_samples)
    clip_samples: int
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def n_files(self) -> int:
        return len(self.files) + len(self.rejected)

    def counts(self) -> dict[str, int]:
        """Files discovered, used and rejected (they always add up)."""
        return {"discovered": self.n_files, "used": len(self.files), "rejected": len(self.rejected)}

    def subset(self, files: list[str]) -> ClipDataset:
        """The clips named in ``files`` (root-relative), in that order; unknown names are an error."""
        where = {f: i for i, f in enumerate(self.files)}
        missing = [f for f in files if f not in where]
        if missing:
            raise KeyError(f"not among the accepted clips: {missing[:5]}")
        idx = np.array([where[f] for f in files], dtype=np.int64)
        return ClipDataset(
            self.root,
            self.classes,
            list(files),
            [self.labels[i] for i in idx],
            self.audio[idx],
            self.lengths[idx],
            self.clip_samples,
            [],
        )


def discover(root: str | Path) -> list[tuple[str, str]]:
    """(label, root-relative path) for every non-hidden entry of every label folder, sorted; labels
    are folder names. Entries that cannot be clips (a sub-folder, a broken link) are listed too, so
    loading rejects them by name instead of leaving them out unseen."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {base}")
    found = []
    for folder in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for entry in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
            found.append((folder.name, f"{folder.name}/{entry.name}"))
    return found


def passed_over(root: str | Path) -> list[tuple[str, str, str]]:
    """(label, root-relative path, why) for each audio file (by suffix, ``AUDIO_SUFFIXES``) that
    :func:`discover` leaves out: at the top of ``root`` (label ""), hidden inside a label folder, or
    directly inside a hidden folder (at the top or in a label folder; label "" at the top). Sorted.

    Why: "nothing is lost": a clip dropped beside the label folders or hidden by a copy tool appeared in no
    count. Listed by name only (nothing is opened), one folder level deep, so a ``.git`` folder costs one listing.
    """
    base = Path(root)
    out: list[tuple[str, str, str]] = []

    def audio(entry: Path) -> bool:
        return entry.suffix.lower() in AUDIO_SUFFIXES and not entry.is_dir()

    def hidden_folder(folder: Path, label: str, rel: str) -> None:
        try:
            entries = sorted(folder.iterdir())
        except OSError:  # a hidden folder the user cannot list (a system's trash, say) holds no clip of theirs
            return
        for entry in entries:
            if audio(entry):
                why = f"not read: inside a hidden folder ({folder.name!r}); move it into a label folder to use it"
                out.append((label, f"{rel}/{entry.name}", why))

    for top in sorted(base.iterdir()):
        if top.is_dir():
            if top.name.startswith("."):
                hidden_folder(top, "", top.name)
                continue
            for entry in sorted(top.iterdir()):
                if not entry.name.startswith("."):
                    continue
                rel = f"{top.name}/{entry.name}"
                if entry.is_dir():
                    hidden_folder(entry, top.name, rel)
                elif audio(entry):
                    why = "not read: a hidden file (its name starts with '.'); rename it to use it as a clip"
                    out.append((top.name, rel, why))
        elif audio(top):
            why = "not read: not inside a label folder (clips sit in DATA/<label>/)"
            out.append(("", top.name, why))
    return out


def outside_reason(rel: str) -> str | None:
    """Why the root-relative name ``rel`` (a file list's, e.g. a model's held-out files) is not a
    ``label/file`` name inside the data folder, or None when it is one.

    Why: a model folder from elsewhere lists its held-out files by name; ``snoring/../../x`` or an
    absolute path made ``clips evaluate`` read, score and report on files outside ``--data``. Only the
    shape discovery gives (two parts, neither hidden, ``.`` or ``..``) is read; links inside a label folder
    are followed as discovery follows them.
    """
    if not rel or "\0" in rel or PurePosixPath(rel).is_absolute():
        return "not a file of the data folder (an absolute or empty name): not read"
    parts = rel.split("/")
    if ".." in parts:
        return "not a file of the data folder (the name holds '..'): not read"
    if len(parts) != 2 or any(not part or part.startswith(".") for part in parts):
        return "not a file of the data folder (names are label/file, neither hidden): not read"
    return None


def check_clip_file(path: str | Path) -> None:
    """Why ``path`` is not an audio file to read, as a ClipError; nothing when it is one."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        try:
            path.stat()
        except OSError as exc:  # a loop is no missing file to copy in: say which it is
            if exc.errno == errno.ELOOP:
                raise ClipError("symbolic link loop (the link leads back to itself)") from None
        raise ClipError("broken symbolic link")
    if path.is_dir():
        raise ClipError("a folder, not a clip (clips must sit directly inside their label folder)")
    if not path.exists():
        raise ClipError("file not found")
    if not path.is_file():
        raise ClipError("not a regular file")
    if path.stat().st_size == 0:
        raise ClipError("empty file (0 bytes)")


def read_mono_16k(
    path: str | Path, min_seconds: float = MIN_CLIP_SECONDS, max_seconds: float = MAX_CLIP_SECONDS
) -> np.ndarray:
    """float32 mono 16-kHz samples of the first ``max_seconds`` (all a clip can use: a long
    recording dropped into a clip folder is never read whole), peak-normalised; raises
    ClipError with the reason."""
    check_clip_file(path)
    return peak_normalise(decode_mono_16k(str(path), min_seconds, max_seconds))


def sound_source(source: str | BinaryIO) -> str | bytes | BinaryIO:
    """What to hand ``sf.SoundFile``: a path whose name is not valid UTF-8 as its bytes, else as given.

    Why: soundfile encodes a str path strictly, so such a name (Python holds its bytes as surrogate
    escapes) was refused as unreadable audio though the file opens fine. Other paths stay str, so
    libsndfile's messages name them as before.
    """
    if isinstance(source, str) and not source.isascii():
        try:
            source.encode("utf-8")
        except UnicodeEncodeError:
            return os.fsencode(source)
    return source


def decode_mono_16k(
    source: str | BinaryIO, min_seconds: float = MIN_CLIP_SECONDS, max_seconds: float = MAX_CLIP_SECONDS
) -> np.ndarray:
    """float32 mono 16-kHz samples of the first ``max_seconds`` of a file or file-like object
    (any format soundfile reads), not normalised; ClipError with the reason when unusable.
    ValueError (not a ClipError: the caller's setting, not the file, is at fault) when ``max_seconds`` is
    not a finite number above 0: soundfile reads a negative frame count as "all", a whole recording."""
    check_seconds("max_seconds", max_seconds)
    try:
        with sf.SoundFile(sound_source(source)) as handle:
            rate = handle.samplerate
            check_header(source, handle)
            data = handle.read(
                frames=min(handle.frames, math.ceil(max_seconds * rate)), dtype=read_dtype(handle), always_2d=True
            )
    except ClipError:
        raise
    except Exception as exc:  # libsndfile raises several types for corrupt or foreign files
        raise unreadable(source, exc) from exc
    if data.shape[0] == 0:
        raise ClipError("empty (no samples)")
    if data.shape[0] < min_seconds * rate:
        raise ClipError(f"too short ({data.shape[0] / rate:.3f} s < {min_seconds:g} s)")
    mono = mix_to_mono(data)
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ")
        if not np.isfinite(mono).all():  # rejected here by name, not a NaN clip that stops the embedding of all
            raise ClipError(RESAMPLED_NOT_FINITE)
    return mono.astype(np.float32)


def check_seconds(name: str, value: float) -> None:
    """ValueError naming ``name`` unless ``value`` is a finite number of seconds above 0.

    Why: a read limit of -1 read every file whole (a night among the clips: gigabytes), 0 blamed every
    clip for being empty, and NaN failed each file with "cannot convert float NaN to integer"."""
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number of seconds above 0, got {value!r}")


def check_header(source: str | BinaryIO, handle: sf.SoundFile) -> None:
    """ClipError when an open file's header is not a clip's: a rate outside ``MIN_RATE_HZ``-``MAX_RATE_HZ``,
    more than ``MAX_CHANNELS`` channels (the limits of ``monitor.limits``), or a declared length the file
    belies (``io.audio.length_problem``, as ``validate`` says: a WAV or FLAC cut short, a WAV by more than
    ``CLIP_SHORT_SECONDS``, not the nights' second, or a WAV never finalised, its samples outside the data
    chunk its header sizes at 0, which read as "empty").

    Why one check for every clip reader: training and ``clips evaluate`` took a 1-Hz header for a 5-s clip
    and a cut WAV for a whole one, which ``clips score`` and the service refuse; one file, one verdict.
    """
    rate, channels = int(handle.samplerate), int(handle.channels)
    if rate < MIN_RATE_HZ:
        raise ClipError(f"sample rate {rate} Hz is below the {MIN_RATE_HZ} Hz accepted")
    if rate > MAX_RATE_HZ:
        raise ClipError(f"sample rate {rate} Hz is above the {MAX_RATE_HZ} Hz accepted; resample it")
    if channels > MAX_CHANNELS:
        raise ClipError(f"{channels} channels; at most {MAX_CHANNELS} are accepted: keep fewer")
    # Audio outside the data chunk is a clip never finalised once it is as long as the shortest clip.
    problem = _judge_bytes(
        source, lambda raw, size: length_problem(raw, size, handle, MIN_CLIP_SECONDS, CLIP_SHORT_SECONDS)
    )
    if problem is not None:
        raise ClipError(problem[1])


def unreadable(source: str | BinaryIO, exc: Exception) -> ClipError:
    """The ClipError for a file libsndfile would not open: what its WAV header declares that no audio
    has (``io.audio.wav_format_problem``: no channels, 0 Hz), the system's reason where the file cannot
    be opened at all (permission denied), else libsndfile's own message.

    Why: libsndfile refuses a 0-Hz header as "Internal error : SF_INFO struct incomplete.", and any file
    the system will not open as "System error.", which names no cause.
    """
    try:
        problem = _judge_bytes(source, wav_format_problem)
    except OSError as denied:  # the system's own reason (errno's), which libsndfile's "System error." hides
        problem = denied.strerror
    return ClipError(f"unreadable audio ({problem or f'{type(exc).__name__}: {exc}'})")


def _judge_bytes(source: str | BinaryIO, judge: Callable[[BinaryIO, int], T]) -> T:
    """``judge(handle, size)`` on the raw bytes of a path or of a file-like object (left where it was)."""
    if isinstance(source, str):
        with open(source, "rb") as raw:
            return judge(raw, os.fstat(raw.fileno()).st_size)
    where = source.tell()
    size = source.seek(0, os.SEEK_END)
    try:
        return judge(source, size)
    finally:
        source.seek(where)


def read_dtype(handle: sf.SoundFile) -> str:
    """The dtype to read ``handle`` in: float64 for a 64-bit float file, else float32.

    Why: libsndfile turns a finite double past the float32 range into inf when asked for float32, and
    the clip was then rejected for "NaN or Inf" it does not hold; read as it is, it is named for what it is.
    """
    return "float64" if handle.subtype == "DOUBLE" else "float32"


def mix_to_mono(block: np.ndarray) -> np.ndarray:
    """float32 mono of a [frames, channels] block: the mean of the channels, taken in float64.

    Why: the float32 mean of finite samples near the float32 limit overflows (two channels at 3e38 sum
    to inf), and such a clip was rejected for "NaN or Inf" it does not hold. Only samples that are
    themselves NaN or Inf are named so; finite ones too large for float32 (a double file's) are
    ``TOO_LARGE`` (ClipError).
    """
    if not np.isfinite(block).all():
        raise ClipError(NOT_FINITE)
    # Each channel's share, summed: a mean that cannot overflow, the same float32 values for one or two channels.
    mono = np.divide(block, block.shape[1], dtype=np.float64).sum(axis=1)
    with np.errstate(over="ignore"):
        out = mono.astype(np.float32)
    if not np.isfinite(out).all():
        raise ClipError(TOO_LARGE)
    return out


def peak_normalise(audio: np.ndarray) -> np.ndarray:
    """Its mean taken out, then scaled to peak 1 (recording gain should not decide the label); digital
    silence (or a constant) is a valid example of "no event" and is kept as silence.

    Why the mean first: a microphone's or converter's DC offset set the peak, so a quiet clip over an
    offset of a few percent of full scale was scaled by the offset and reached the backbone as near-silence
    (a float clip at +1000 read as silence). The Khan clips' offsets are at most 0.5% of their peaks."""
    if not audio.size:
        return audio.astype(np.float32)
    centred = np.asarray(audio, dtype=np.float64) - float(np.mean(audio, dtype=np.float64))
    peak = float(np.abs(centred).max())
    return np.zeros(audio.shape, dtype=np.float32) if peak == 0.0 else (centred / peak).astype(np.float32)


def default_clip_samples(lengths: list[int], max_seconds: float = MAX_CLIP_SECONDS) -> int:
    """The longest clip, at most ``max_seconds``, rounded up to a whole 20-ms frame."""
    longest = min(max(lengths), int(round(max_seconds * SAMPLE_RATE)))
    return int(math.ceil(longest / FRAME_SAMPLES) * FRAME_SAMPLES)


def fix_length(audio: np.ndarray, clip_samples: int) -> np.ndarray:
    """Zero-pad at the end or keep the first ``clip_samples`` samples."""
    out = np.zeros(clip_samples, dtype=np.float32)
    n = min(len(audio), clip_samples)
    out[:n] = audio[:n]
    return out


def load_dataset(
    root: str | Path,
    *,
    clip_seconds: float | None = None,
    classes: tuple[str, ...] | None = None,
    files: list[str] | None = None,
    min_seconds: float = MIN_CLIP_SECONDS,
    max_seconds: float = MAX_CLIP_SECONDS,
) -> ClipDataset:
    """Load every clip under ``root`` (or only the root-relative ``files``, e.g. a held-out list).

    ``classes`` (a trained model's) rejects files of other labels; when None the label
    folders found are the classes. ``clip_seconds`` None applies the default policy; otherwise
    it must be a finite number of seconds above 0 (ValueError naming it). A name in ``files`` that
    is not ``label/file`` inside ``root`` (absolute, with ``..``) is rejected by name, never read.
    Without ``files``, audio files the layout leaves out (:func:`passed_over`) are rejected as not read.
    """
    if clip_seconds is not None:
        check_seconds("clip_seconds", clip_seconds)
    check_seconds("max_seconds", max_seconds)
    found = discover(root)
    rejected: list[Rejected] = []
    if files is not None:
        by_name = {rel: label for label, rel in found}
        found = []
        for rel in files:
            problem = None if rel in by_name else outside_reason(rel)
            if problem is None:
                found.append((by_name.get(rel, rel.split("/", 1)[0]), rel))
            else:
                rejected.append(Rejected(rel, "", f"{rel}: {problem}"))
    else:
        rejected += [Rejected(rel, label, f"{rel}: {why}") for label, rel, why in passed_over(root)]
    names = tuple(classes) if classes is not None else tuple(sorted({label for label, _ in found}))
    kept: list[tuple[str, str, np.ndarray]] = []
    base = Path(root)
    read_seconds = clip_seconds if clip_seconds is not None else max_seconds  # no clip uses more than this
    for label, rel in found:
        try:
            if label not in names:
                raise ClipError(f"label folder {label!r} is not one of the classes {list(names)}")
            kept.append((label, rel, read_mono_16k(base / rel, min_seconds, read_seconds)))
        except ClipError as exc:
            rejected.append(Rejected(rel, label, f"{rel}: {exc}"))
    kept, rejected = _without_label_conflicts(kept, rejected)
    if clip_seconds is not None:
        clip_samples = int(round(clip_seconds * SAMPLE_RATE))
    else:
        clip_samples = default_clip_samples([len(a) for _, _, a in kept], max_seconds) if kept else FRAME_SAMPLES
    audio = (
        np.stack([fix_length(a, clip_samples) for _, _, a in kept])
        if kept
        else np.zeros((0, clip_samples), dtype=np.float32)
    )
    lengths = np.array([min(len(a), clip_samples) for _, _, a in kept], dtype=np.int64)
    return ClipDataset(
        str(root), names, [r for _, r, _ in kept], [lb for lb, _, _ in kept], audio, lengths, clip_samples, rejected
    )


def audio_digest(audio: np.ndarray) -> str:
    """A digest of a clip's samples as the model gets them (peak-normalised float32, read up to the clip
    length), their count included: two files that decode to the same clip are one sound."""
    samples = np.ascontiguousarray(audio, dtype=np.float32)
    return hashlib.blake2b(samples.tobytes(), digest_size=16, person=len(samples).to_bytes(8, "little")).hexdigest()


def _without_label_conflicts(
    kept: list[tuple[str, str, np.ndarray]], rejected: list[Rejected]
) -> tuple[list[tuple[str, str, np.ndarray]], list[Rejected]]:
    """``kept`` less every clip whose audio (as read) is also kept under another label; each of those is
    added to ``rejected``, naming a copy under another label.

    Why every copy, not the second: one sound under two labels is a labelling mistake, and which label is
    right is the data team's call; keeping the first (by sort order, i.e. by label name) would train or
    score on a label chosen by its spelling. Copies under one label are kept (a duplicate, not a contradiction),
    and so are clips without any variation (digital silence, a constant offset): no sound, so nothing a label
    could be wrong about, and a silent clip is a valid example wherever it sits.
    """
    by_digest: dict[str, list[int]] = {}
    for i, (_, _, audio) in enumerate(kept):
        if audio.size and audio.min() != audio.max():
            by_digest.setdefault(audio_digest(audio), []).append(i)
    conflicts: dict[int, str] = {}
    for members in by_digest.values():
        if len({kept[i][0] for i in members}) < 2:
            continue
        for i in members:
            other = next(j for j in members if kept[j][0] != kept[i][0])
            more = len(members) - 2
            also = f" and {more} more cop{'y' if more == 1 else 'ies'}" if more > 0 else ""
            conflicts[i] = (
                f"the same audio as {kept[other][1]} (label {kept[other][0]!r}){also}: one sound cannot be "
                "two labels; keep it under the right one only"
            )
    if not conflicts:
        return kept, rejected
    out = [row for i, row in enumerate(kept) if i not in conflicts]
    return out, rejected + [Rejected(kept[i][1], kept[i][0], f"{kept[i][1]}: {why}") for i, why in conflicts.items()]
