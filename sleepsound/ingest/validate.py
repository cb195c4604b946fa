"""Validation of one recording: can it be read, do its labels fit it, what is wrong inside it.

Every recording ends as one manifest row, ``accepted`` or ``quarantined`` with a code
and a message naming the file, so counts always add up and nothing disappears. Findings
(``sleepsound.core.findings``) go into the row: the error that quarantined it, and warnings
about what was dropped or doubtful. A quick validation reads headers and annotations
only (what the flow does before embedding, which measures every epoch anyway); a deep one
also streams the raw audio once, without resampling, for NaN/Inf, clipping, zero-RMS
epochs and long silent gaps (what ``sleepsound validate`` does by default).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from sleepsound.core.config import PreprocessConfig, ValidationConfig
from sleepsound.core.findings import Finding, Quarantine, clock, epoch_findings, to_records
from sleepsound.core.records import ManifestRow
from sleepsound.embed.preprocess import count_epochs
from sleepsound.ingest.discovery import RecordingSource, local_copies
from sleepsound.ingest.label_checks import Tolerances, check_events, check_rml, check_stage_table
from sleepsound.ingest.quality import GapFinder, measure_epoch
from sleepsound.ingest.versions import digest_annotation
from sleepsound.io.audio import AudioError, PartInfo, iter_night_blocks, probe_edf, probe_plain, unreadable_reason
from sleepsound.labels.annotations import read_rml, read_stage_table
from sleepsound.labels.events import read_events_csv, unknown_event_types

MIN_SAMPLE_RATE = 16_000
# The highest rate audio interfaces record at (DXD, 384 kHz). A header declaring more is a corrupt
# field or not a microphone; the deep scan's blocks (epochs at the file's own rate) grow with it,
# to gigabytes at a declared 4 MHz.
MAX_SAMPLE_RATE = 384_000
EDF_CLOCK_RESOLUTION_S = 1.0  # EDF headers give start times to the second
_CHUNK = 8 << 20


def sha256_of(paths: list[str]) -> tuple[str, int]:
    """Checksum and byte count of a night's files, streamed."""
    digest = hashlib.sha256()
    total = 0
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                total += len(chunk)
    return digest.hexdigest(), total


def probe_parts(src: RecordingSource, paths: list[str], cfg: PreprocessConfig) -> list[PartInfo]:
    """Headers of every part for the configured microphone (the first, for ``both``), checked
    for the channel, the rate and gaps in numbering; with ``both`` the other must be there too."""
    channels = cfg.channels()
    for channel in channels[1:]:
        probe_channel(src, paths, cfg, channel)
    return probe_channel(src, paths, cfg, channels[0])


def probe_channel(src: RecordingSource, paths: list[str], cfg: PreprocessConfig, channel: str) -> list[PartInfo]:
    """``probe_parts`` for one microphone."""
    if not paths:
        if src.layout == "psg-audio" and src.labels_uri is not None and not src.audio_uris:
            raise AudioError(
                src.labels_uri,
                "no_audio",
                f"annotations without audio: no EDF parts under APNEA_EDF/{src.recording_id}/; "
                "upload the night's EDF files or remove the RML",
            )
        annotation = src.labels_uri or src.events_uri
        if src.layout == "plain" and annotation is not None:
            raise AudioError(
                annotation,
                "no_audio",
                f"annotations without audio: no {src.recording_id}.wav or .flac beside it; "
                "upload the night's audio or remove the CSV",
            )
        raise AudioError(src.recording_id, "no_audio", "no audio files found for this recording")
    if src.layout == "plain" and len(paths) > 1:
        raise AudioError(
            src.audio_uris[0],
            "duplicate_recording",
            f"{len(paths)} audio files have the name {src.recording_id!r} "
            f"({', '.join(src.audio_uris)}), which is the recording id: keep one, or rename the "
            "others (with their CSVs)",
        )
    expected = list(range(1, len(src.part_numbers) + 1))
    if src.layout == "psg-audio" and src.part_numbers != expected:
        _check_part_numbers(src)
    if src.layout == "psg-audio":
        for path, uri in zip(paths, src.audio_uris, strict=True):
            if os.path.isdir(path):
                raise AudioError(
                    uri,
                    "unreadable_edf",
                    "is a folder, not an EDF/BDF file; remove it or put the part's file in its place",
                )
        parts = [probe_edf(path, channel) for path in paths]
    else:
        parts = [probe_plain(path, channel, cfg.plain_channel_index.get(channel)) for path in paths]
    for part in parts:
        if part.sample_rate < MIN_SAMPLE_RATE:
            raise AudioError(
                part.path,
                "low_sample_rate",
                f"{channel} is sampled at {part.sample_rate:g} Hz; at least {MIN_SAMPLE_RATE} Hz needed",
            )
        if part.sample_rate > MAX_SAMPLE_RATE:
            raise AudioError(
                part.path,
                "high_sample_rate",
                f"{channel} is sampled at {part.sample_rate:g} Hz, above the {MAX_SAMPLE_RATE // 1000} kHz any audio "
                "recorder uses (a corrupt header, or not a microphone): re-export the audio at 16-48 kHz",
            )
    if len({p.sample_rate for p in parts}) > 1:
        rates = ", ".join(f"[{n:03d}] {p.sample_rate:g} Hz" for n, p in zip(src.part_numbers, parts, strict=True))
        raise AudioError(src.audio_uris[0], "inconsistent_parts", f"parts have different sample rates: {rates}")
    return parts


def _check_part_numbers(src: RecordingSource) -> None:
    """Name what is wrong with a PSG-Audio night's part numbers (not 1, 2, ... n): a part number
    found twice (``[001]`` and ``%5B001%5D``), a number below 1, or gaps; raises AudioError."""
    numbers = src.part_numbers
    repeated = sorted({n for n in numbers if numbers.count(n) > 1})
    if repeated:
        first = repeated[0]
        files = [uri for n, uri in zip(numbers, src.audio_uris, strict=True) if n == first]
        raise AudioError(
            files[-1],
            "inconsistent_parts",
            f"part number(s) {repeated} found more than once (part [{first:03d}]: "
            f"{', '.join(posixpath.basename(f) for f in files)}; brackets URL-encoded or not name the "
            "same part). Keep one file per part",
        )
    unexpected = sorted(n for n in numbers if n < 1)
    if unexpected:
        file = src.audio_uris[numbers.index(unexpected[0])]
        raise AudioError(
            file,
            "missing_part",
            f"part number(s) {unexpected} are not hour parts (parts are numbered from [001]); "
            "rename or remove the file",
        )
    missing = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
    raise AudioError(
        src.audio_uris[0],
        "missing_part",
        f"hour part(s) {missing} missing; the night's time axis would shift. Restore them",
    )


def check_continuity(parts: Sequence[PartInfo], numbers: Sequence[int], tolerance_s: float) -> None:
    """Each part must start where the previous one ended, or the epochs after a gap would shift."""
    if any(p.start is None for p in parts):
        return
    elapsed = 0.0
    for part, number in zip(parts, numbers, strict=True):
        offset = (part.start - parts[0].start).total_seconds()  # type: ignore[operator]
        if abs(offset - elapsed) > tolerance_s + EDF_CLOCK_RESOLUTION_S:
            gap = offset - elapsed
            what = f"a gap of {gap:.0f} s" if gap > 0 else f"an overlap of {-gap:.0f} s"
            raise AudioError(
                part.path,
                "part_discontinuity",
                f"part [{number:03d}] starts {clock(offset)} into the night but the parts before it "
                f"hold {clock(elapsed)}: {what} (a short or missing part?). The time axis would shift; "
                "re-export the night",
            )
        elapsed += part.duration_s


def _label_findings(src: RecordingSource, row: ManifestRow, parts: list[PartInfo], tol: Tolerances) -> list[Finding]:
    """Stage labels (RML or stage CSV) and a plain night's events CSV, checked against the audio.

    Also sets ``row["labels_sha256"]``, the digest of the bytes checked here: the audio's SHA-256
    does not cover the labels, which the embedding cache's epochs file and the nightly state must
    follow too (labels that arrive or are corrected after a night was embedded)."""
    findings: list[Finding] = []
    digest = hashlib.sha256()
    if src.labels_uri is None:
        expected = "APNEA_RML/<patient>.rml" if src.layout == "psg-audio" else f"{src.recording_id}.stages.csv"
        findings.append(
            Finding(
                "recording",
                "annotation_missing",
                "warning",
                src.audio_uris[0],
                f"no annotation file ({expected}): the night is scored but not used for training or metrics",
            )
        )
    else:
        with _named(src.labels_uri) as label_path:
            digest_annotation(digest, b"labels", label_path)
            if row["label_source"] == "rml":
                findings += check_rml(
                    read_rml(label_path), src.labels_uri, parts, src.part_numbers, row["duration_s"], tol
                )
            else:
                findings += check_stage_table(
                    read_stage_table(label_path),
                    src.labels_uri,
                    src.recording_id,
                    row["n_epochs"],
                    row["duration_s"],
                    tol,
                )
    if src.events_uri is not None:
        with _named(src.events_uri) as events_path:
            digest_annotation(digest, b"events", events_path)
            events = read_events_csv(events_path)
        findings += check_events(events, row["duration_s"], src.events_uri)
        unknown = unknown_event_types(events)
        if unknown:
            names = ", ".join(
                f"{name!r} (x{count})" if count > 1 else repr(name) for name, count in unknown.most_common(10)
            )
            findings.append(
                Finding(
                    "recording",
                    "annotation_notes",
                    "warning",
                    src.events_uri,
                    f"event type(s) {names} not known; kept, but they feed no label (apnoea, "
                    "hypopnoea and snore labels need ObstructiveApnea, CentralApnea, MixedApnea, "
                    "Hypopnea or Snore, in any case or spacing)",
                )
            )
    row["labels_sha256"] = digest.hexdigest() if src.labels_uri or src.events_uri else None
    return findings


@contextlib.contextmanager
def _named(uri: str) -> Iterator[str]:
    """A local copy of an annotation file whose faults name ``uri``, not the temporary copy."""
    with local_copies([uri]) as (path,):
        reason = unreadable_reason(path)  # before opening: a FIFO would block the read forever
        if reason is not None:
            raise Quarantine(uri, *reason)
        try:
            yield path
        except Quarantine as exc:
            raise Quarantine(uri, exc.code, exc.message) from exc


def scan_audio(
    src: RecordingSource,
    parts: list[PartInfo],
    cfg: PreprocessConfig,
    checks: ValidationConfig,
    n_epochs: int,
    path_at: Callable[[float], str],
    channel: str,
) -> list[Finding]:
    """Stream one microphone's raw audio once: epoch-level faults as runs, silent gaps with their times."""
    rate = parts[0].sample_rate
    raw_epoch = int(round(cfg.epoch_seconds * rate))
    full_scale = max(p.full_scale for p in parts)
    gaps = GapFinder(cfg.zero_rms_frame_seconds, checks.min_silent_gap_s)
    nonfinite: list[bool] = []
    silent: list[bool] = []
    clipped: list[bool] = []
    for block in iter_night_blocks(parts, raw_epoch * cfg.block_epochs, src.layout):
        for start in range(0, len(block) - raw_epoch + 1, raw_epoch):
            if len(nonfinite) == n_epochs:
                break
            quality, flat = measure_epoch(block[start : start + raw_epoch], rate, cfg, full_scale)
            gaps.feed(flat)
            nonfinite.append(quality.nonfinite > 0)
            silent.append(quality.nonfinite == 0 and not quality.valid)
            clipped.append(quality.clipped_fraction >= checks.clip_fraction)
    if len(nonfinite) < n_epochs:  # the decoder stopped early without an error
        raise AudioError(
            path_at(len(nonfinite) * cfg.epoch_seconds),
            "truncated_audio",
            f"{channel}: the audio ends after {len(nonfinite)} of the {n_epochs} epochs its header "
            "declares: cut short; re-upload or re-export it",
        )
    seconds = cfg.epoch_seconds
    findings: list[Finding] = []
    for flags, code, what in (
        (nonfinite, "nonfinite_samples", f"{channel}: NaN/Inf samples; dropped"),
        (
            silent,
            "zero_rms_epochs",
            f"{channel}: zero RMS for more than {cfg.max_zero_rms_seconds:g} s of "
            f"{seconds:g} s (the paper's rule); dropped",
        ),
        (
            clipped,
            "clipping",
            f"{channel}: heavy clipping (at least {checks.clip_fraction:.0%} of samples at full "
            "scale); kept, check the microphone gain",
        ),
    ):
        findings += epoch_findings(flags, code, path_at, what, seconds)
    for begin, end in gaps.finish():
        findings.append(
            Finding(
                "recording",
                "silent_gap",
                "warning",
                path_at(begin),
                f"{channel}: digital silence from {clock(begin)} to {clock(end)} ({(end - begin) / 60:.1f} min): "
                "microphone off or disconnected?",
                begin,
                end,
            )
        )
    if nonfinite and not any(not (a or b) for a, b in zip(nonfinite, silent, strict=True)):
        raise AudioError(
            src.audio_uris[0],
            "no_valid_epochs",
            f"{channel}: none of the {len(nonfinite)} epochs is usable (all silent or NaN/Inf)",
        )
    return findings


def _part_locator(src: RecordingSource, parts: list[PartInfo]) -> Callable[[float], str]:
    """The source URI of the part holding a given second of the night."""
    ends, total = [], 0.0
    for part in parts:
        total += part.duration_s
        ends.append(total)

    def path_at(seconds: float) -> str:
        for uri, end in zip(src.audio_uris, ends, strict=True):
            if seconds < end:
                return uri
        return src.audio_uris[-1]

    return path_at


def manifest_row(src: RecordingSource) -> ManifestRow:
    """A manifest row for ``src`` before anything is known of its contents."""
    return {
        "recording_id": src.recording_id,
        "subject_id": src.subject_id,
        "layout": src.layout,
        "source_uris": src.audio_uris,
        "n_parts": len(src.audio_uris),
        "bytes": 0,
        "sha256": None,
        "duration_s": None,
        "sample_rate": None,
        "channels": [],
        "label_source": "none" if src.labels_uri is None else ("rml" if src.layout == "psg-audio" else "csv"),
        "labels_uri": src.labels_uri,
        "events_uri": src.events_uri,
        "n_epochs": 0,
        "status": "accepted",
        "reason_code": None,
        "reason": None,
        "findings": [],
        "source_stamp": None,
        "labels_sha256": None,
        "file_versions": None,
    }


def apply_findings(row: ManifestRow, findings: Sequence[Finding]) -> ManifestRow:
    """Record ``findings`` in ``row``; the first error quarantines it and is its reason."""
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        row.update(status="quarantined", reason_code=errors[0].code, reason=f"{errors[0].path}: {errors[0].message}")
    row["findings"] = to_records(findings)
    return row


def validate_recording(
    src: RecordingSource, cfg: PreprocessConfig, checks: ValidationConfig | None = None, deep: bool = False
) -> ManifestRow:
    """One manifest row for ``src`` (see ``schemas.MANIFEST``); never raises for bad data."""
    checks = checks or ValidationConfig()
    tol = Tolerances(start_s=checks.start_tolerance_s, part_s=checks.part_tolerance_s)
    row = manifest_row(src)
    # What discovery saw about this night's files (a CSV of its name filed elsewhere): kept whatever follows.
    findings: list[Finding] = [
        Finding("recording", code, "warning", path, message) for path, code, message in src.notes
    ]
    uri_of: dict[str, str] = {}
    try:
        if src.problem is not None:  # found by discovery (a skipped link, a clash of ids): nothing to open
            raise Quarantine(*src.problem)
        with local_copies(src.audio_uris) as paths:
            uri_of = dict(zip(paths, src.audio_uris, strict=True))
            parts = probe_parts(src, paths, cfg)
            by_channel = {
                channel: parts if channel == cfg.channels()[0] else probe_channel(src, paths, cfg, channel)
                for channel in cfg.channels()
            }
            findings += [
                replace(f, path=uri_of.get(f.path, f.path))  # header warnings, naming the source file
                for channel_parts in by_channel.values()
                for part in channel_parts
                for f in part.findings
            ]
            if src.layout == "psg-audio":
                check_continuity(parts, src.part_numbers, checks.part_tolerance_s)
            row["sha256"], row["bytes"] = sha256_of(paths)
            row["sample_rate"] = parts[0].sample_rate
            row["channels"] = list(parts[0].labels)
            row["duration_s"] = sum(p.duration_s for p in parts)
            row["n_epochs"] = count_epochs(sum(p.n_samples for p in parts), parts[0].sample_rate, cfg)
            if row["n_epochs"] == 0:
                raise AudioError(
                    src.audio_uris[0],
                    "too_short",
                    "shorter than one 30-s epoch, so it has no sleep stage; "
                    "label a short clip's windows with `sleepsound clips score`",
                )
            findings += _label_findings(src, row, parts, tol)
            if deep:
                for channel, channel_parts in by_channel.items():
                    findings += scan_audio(
                        src, channel_parts, cfg, checks, row["n_epochs"], _part_locator(src, channel_parts), channel
                    )
    except Quarantine as exc:
        path = uri_of.get(exc.path, exc.path)  # name the source, never a temporary download
        findings.insert(0, Finding("recording", exc.code, "error", path, exc.message))
    except OSError as exc:  # storage trouble for this one night must not stop the others
        findings.insert(
            0,
            Finding(
                "recording",
                "io_error",
                "error",
                _failed_uri(src, uri_of, exc),
                f"could not read from storage ({exc}); check access and retry",
            ),
        )
    except Exception as exc:
        findings.insert(
            0,
            Finding(
                "recording",
                "validator_failed",
                "error",
                _failed_uri(src, uri_of, exc),
                f"validation crashed ({type(exc).__name__}: {exc}); the file may be malformed "
                "in a way no check names yet: inspect it or re-export it",
            ),
        )
    return apply_findings(row, findings)


def _failed_uri(src: RecordingSource, uri_of: dict[str, str], exc: BaseException) -> str:
    """The source URI an exception is about: the file it names when it names one of the night's
    files (an OSError's ``filename``), else the night's first file (or labels, for a night without audio)."""
    filename = getattr(exc, "filename", None)
    if isinstance(filename, str):
        if filename in uri_of:
            return uri_of[filename]
        if filename in src.audio_uris or filename in (src.labels_uri, src.events_uri):
            return filename
    return src.audio_uris[0] if src.audio_uris else (src.labels_uri or src.recording_id)
