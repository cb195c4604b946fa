"""The CPU stage: one accepted recording in, a stream of labelled, preprocessed windows out.

Written as a plain generator so it runs in-process for tests and as a Ray Data stage in
the flow. It yields the night's epochs and, when asked, the 15-s shifted training windows
between consecutive same-stage valid epochs (method.md, "Class imbalance"), both from one
streaming pass. Each row carries ``n_epochs``; the embedding stage adds a closing row with
the night's row count (``end_row``), so a consumer knows when a night is complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np

from sleepsound.breathing.envelope import empty_envelope, frames_per_epoch
from sleepsound.core.config import PreprocessConfig
from sleepsound.core.findings import Quarantine
from sleepsound.core.records import ManifestRow
from sleepsound.core.storage import is_local
from sleepsound.embed.cache import EmbedPlan
from sleepsound.embed.preprocess import iter_epochs, iter_raw_epochs, margins
from sleepsound.ingest.discovery import RecordingSource, local_copies
from sleepsound.ingest.validate import probe_parts
from sleepsound.ingest.versions import SOURCE_CHANGED, SourceChanged, digest_annotation, first_change, verify_unchanged
from sleepsound.io import rml
from sleepsound.io.audio import PartInfo, iter_night_blocks, probe_remote_edf
from sleepsound.labels.annotations import load_stages, read_rml
from sleepsound.labels.events import RESP_COLUMNS, Event, events_from_rml, read_events_csv, window_labels
from sleepsound.labels.vocabulary import UNSCORED, to_three_class

# Columns of an epoch row apart from the audio itself (see schemas.EPOCHS).
EPOCH_COLUMNS = (
    "recording_id",
    "subject_id",
    "epoch_index",
    "start_s",
    "stage5",
    "stage3",
    "valid",
    "invalid_reason",
    "zero_rms_s",
    "nonfinite",
    "clipped_fraction",
    *RESP_COLUMNS,
)
# Row kinds: a scored epoch, a shifted training window, the night's closing (or error) row.
KINDS = ("epoch", "shifted", "end")


@dataclass
class NightLabels:
    """What a night's annotations say per epoch: 5-class stages (None when unlabelled) and events."""

    stages: list[str | None]
    events: list[Event] | None  # None: no events source, so respiratory labels are null

    @property
    def stage3(self) -> list[str | None]:
        return [None if s in (None, UNSCORED) else to_three_class(s) for s in self.stages]


def recording_source(row: ManifestRow) -> RecordingSource:
    """Rebuild the source description from a manifest row."""
    n = int(row["n_parts"])
    return RecordingSource(
        row["recording_id"],
        row["subject_id"],
        row["layout"],
        list(row["source_uris"]),
        list(range(1, n + 1)),
        row.get("labels_uri"),
        row.get("events_uri"),
    )


def night_labels(row: ManifestRow, n_epochs: int) -> NightLabels:
    """Stages and events of a night; an RML is parsed once for both.

    The train, predict and report steps read a night's annotation files again after it was embedded,
    so the bytes read are checked against the digest validation recorded (``labels_sha256``) before
    they are parsed: a file changed or removed since raises ``SourceChanged`` naming it, and never
    yields labels nobody validated (a row recorded without the digest is read as it is)."""
    labels = NightLabels([None] * n_epochs, None)
    files = [
        (kind, uri) for kind, uri in ((b"labels", row.get("labels_uri")), (b"events", row.get("events_uri"))) if uri
    ]
    if not files:
        return labels
    try:
        with local_copies([uri for _, uri in files]) as paths:
            digest = hashlib.sha256()
            for (kind, _), path in zip(files, paths, strict=True):
                digest_annotation(digest, kind, path)
            validated = row.get("labels_sha256")
            if validated and digest.hexdigest() != validated:
                raise SourceChanged(
                    ", ".join(uri for _, uri in files),
                    "changed since the night was validated (the labels' SHA-256 differs): not read; "
                    "the next run validates the night again",
                )
            by_kind = {kind: path for (kind, _), path in zip(files, paths, strict=True)}
            if b"labels" in by_kind:
                path = by_kind[b"labels"]
                if row["label_source"] == "rml":
                    ann = read_rml(path)
                    labels.stages = (list(rml.stages_per_epoch(ann, n_epochs)) + [UNSCORED] * n_epochs)[:n_epochs]
                    labels.events = events_from_rml(ann)
                else:
                    labels.stages = list(load_stages(path, row["label_source"], n_epochs))
            if b"events" in by_kind:
                labels.events = read_events_csv(by_kind[b"events"])
    except FileNotFoundError as exc:
        gone = next((uri for _, uri in files if not _exists(uri)), files[0][1])
        raise SourceChanged(
            gone, "removed after the night was validated: not read; the next run lists it again"
        ) from exc
    return labels


def _exists(uri: str) -> bool:
    fs, path = fsspec.core.url_to_fs(uri)
    fs.invalidate_cache(path)
    return bool(fs.exists(path))


def shift_pairs(stage3: Sequence[str | None], classes: Collection[str]) -> set[int]:
    """First epochs ``i`` of consecutive pairs with the same enabled 3-class stage (validity is
    checked while streaming, in ``preprocess.iter_epochs``)."""
    return {
        i
        for i in range(len(stage3) - 1)
        if stage3[i] is not None and stage3[i] == stage3[i + 1] and stage3[i] in classes
    }


def _blank(row: ManifestRow, cfg: PreprocessConfig) -> dict[str, Any]:
    """A row with no audio behind it (closing and error rows)."""
    return {
        "recording_id": row["recording_id"],
        "subject_id": row["subject_id"],
        "epoch_index": -1,
        "start_s": 0.0,
        "stage5": None,
        "stage3": None,
        "valid": False,
        "invalid_reason": None,
        "zero_rms_s": 0.0,
        "nonfinite": 0,
        "clipped_fraction": 0.0,
        **dict.fromkeys(RESP_COLUMNS),
        "kind": "end",
        "offset_s": 0.0,
        "n_epochs": int(row["n_epochs"]),
        "n_rows": -1,
        # No audio behind it: in the CPU path a silent epoch (the transport's audio has one length),
        # with preprocess.device model nothing (raw epochs travel as lists of any length).
        "audio": np.zeros(0 if cfg.device == "model" else int(cfg.epoch_seconds * cfg.target_rate), dtype=np.float32),
        "rate": float(cfg.target_rate),
        "envelope": empty_envelope(cfg.epoch_seconds),
        "error": None,
    }


def end_row(row: ManifestRow, cfg: PreprocessConfig, n_rows: int) -> dict[str, Any]:
    """The night's closing row: ``n_rows`` counts every row of the night, this one included."""
    return {**_blank(row, cfg), "n_rows": int(n_rows)}


# A chunk of a night: epochs [first, stop) of it (see ``read_epochs``).
Chunk = tuple[int, int]


def read_epochs(
    row: ManifestRow,
    cfg: PreprocessConfig,
    shift_classes: Collection[str] = (),
    epochs: bool = True,
    chunk: Chunk | None = None,
) -> Iterator[dict[str, Any]]:
    """Stream one night into epoch rows (and shifted rows); a failure mid-night becomes one ``error`` row.

    ``shift_classes``: 3-class stages whose same-stage valid pairs also yield a shifted
    window (``kind`` "shifted", ``epoch_index`` the pair's first epoch, ``offset_s`` 15);
    ``epochs`` False streams the night for its shifted windows only (a cache that already
    holds the epochs). A night that breaks while streaming (a truncated part, storage gone)
    must not stop the cohort: the consumer sees the error row, drops that night's partial
    rows and quarantines it with the message.

    ``chunk`` (first, stop): only epochs ``first .. stop - 1`` and the shifted windows of the
    pairs starting among them, so several readers can share one night. The reader starts one
    epoch early and stops one epoch late (pre- and post-roll: the resampler and the high-pass
    carry state across epochs, and the resampler looks a few milliseconds ahead); the filters'
    memory is far shorter than an epoch, so a chunk's rows equal the whole night's to float
    rounding (tests/embed/test_preprocess.py).

    Before it reads and again after, the night's files are compared with the sizes and versions
    validation listed (``ingest.versions``): a file replaced or removed since ends the night with a
    ``SourceChanged`` error row, so nothing unvalidated reaches the cache under the validated checksum.
    """
    try:
        verify_unchanged(row)  # before anything is read: the files validation saw, not others since
        yield from _read_epochs(row, cfg, shift_classes, epochs, chunk)
        verify_unchanged(row)  # and still them once read: the consumer writes the night only after this
    except Exception as exc:
        if not isinstance(exc, Quarantine):  # a file that changed mid-read can fail in any way: say why
            exc = _changed_or(row, exc)
        if isinstance(exc, Quarantine):  # a named fault, naming the source's file rather than its local copy
            error = f"{_quarantine_prefix(type(exc).__name__, exc.code)}{_source_of(row, exc.path)}: {exc.message}"
        else:
            error = f"{type(exc).__name__}: {exc}"
        yield {**_blank(row, cfg), "error": error}


def _quarantine_prefix(kind: str, code: str) -> str:
    """How an error row begins for a named fault (``failure_code`` reads the code back from it)."""
    return f"{kind} ({code}): "


def failure_code(message: str) -> str:
    """The manifest reason code of a night whose error row is ``message``: ``source_changed`` when a
    reader found its files other than validated (``ingest.versions``), else ``read_error``."""
    return SOURCE_CHANGED if source_change_in(message) is not None else "read_error"


def source_change_in(message: str) -> SourceChanged | None:
    """The ``SourceChanged`` an error row reports (its file and message, as ``read_epochs`` wrote
    them), or None for any other error: lets a caller that re-reads a night's audio outside the
    embed step (the breathing envelope) leave that night out with the same reason."""
    prefix = _quarantine_prefix(SourceChanged.__name__, SOURCE_CHANGED)
    if not message.startswith(prefix):
        return None
    path, _, text = message.removeprefix(prefix).partition(": ")
    return SourceChanged(path, text)


def _changed_or(row: ManifestRow, exc: Exception) -> Exception:
    """``SourceChanged`` when one of the night's files changed since validation (the likely cause of
    ``exc``), else ``exc``; a storage that cannot be asked leaves ``exc`` as it is."""
    try:
        return first_change(row) or exc
    except OSError:
        return exc


def _source_of(row: ManifestRow, path: str) -> str:
    """The source URI a local copy at ``path`` was made from (copies keep their file names)."""
    uris = [*row.get("source_uris", []), row.get("labels_uri"), row.get("events_uri")]
    return next((uri for uri in uris if uri and posixpath.basename(uri) == os.path.basename(path)), path)


@contextlib.contextmanager
def night_parts(src: RecordingSource, row: ManifestRow, cfg: PreprocessConfig, chunk: bool) -> Iterator[list[PartInfo]]:
    """The night's parts to stream. A chunk of a PSG-Audio night on object storage reads its EDF
    parts where they lie, by byte ranges of the records it needs (each part's header fetched to place
    it on the night's time axis), so readers sharing a night never download it whole; anything else
    (a whole night, plain audio, a part that is not plain 16-bit EDF) is read from local files or
    verified downloads. Either way the files must still hold the bytes that were validated."""
    if chunk and src.layout == "psg-audio" and not all(is_local(uri) for uri in src.audio_uris):
        remote = [probe_remote_edf(uri, cfg.channels()[0]) for uri in src.audio_uris]
        parts = [p for p in remote if p is not None]
        if len(parts) == len(remote) and len({p.sample_rate for p in parts}) == 1:
            _same_bytes(src, row, sum(int(p.file_bytes or 0) for p in parts))  # sizes the headers were checked against
            yield parts
            return
    with local_copies(src.audio_uris) as paths:
        _same_bytes(src, row, sum(os.path.getsize(p) for p in paths))
        yield probe_parts(src, paths, cfg)


def _same_bytes(src: RecordingSource, row: ManifestRow, size: int) -> None:
    if row.get("bytes") and size != int(row["bytes"]):  # the cache key is the validated audio's checksum
        raise OSError(
            f"{src.audio_uris[0]}: the night's files hold {size} bytes, {row['bytes']} when validated: "
            "they changed since; validate again"
        )


def _read_epochs(
    row: ManifestRow, cfg: PreprocessConfig, shift_classes: Collection[str], epochs: bool, chunk: Chunk | None
) -> Iterator[dict[str, Any]]:
    src = recording_source(row)
    n_epochs = int(row["n_epochs"])
    lo, hi = chunk if chunk is not None else (0, n_epochs)
    if not 0 <= lo < hi <= n_epochs:
        raise ValueError(f"chunk {chunk} is not a range of the night's {n_epochs} epochs")
    first = max(0, lo - 1)  # pre-roll: one epoch settles the filters' state
    labels = night_labels(row, n_epochs)
    stage3 = labels.stage3
    pairs = shift_pairs(stage3, shift_classes)
    length = cfg.epoch_seconds
    resp = window_labels(labels.events, [i * length for i in range(n_epochs)], length, cfg.resp_min_overlap_s)
    shifted_resp = (
        window_labels(labels.events, [i * length + length / 2 for i in range(n_epochs)], length, cfg.resp_min_overlap_s)
        if pairs
        else []
    )
    with night_parts(src, row, cfg, chunk is not None) as parts:
        rate = parts[0].sample_rate
        raw_epoch = int(round(length * rate))
        block = raw_epoch * cfg.block_epochs
        emitted = 0
        full_scale = max(p.full_scale for p in parts)
        # Post-roll: read through epoch ``hi`` (the look-ahead of epoch hi - 1's last samples, and the
        # second half of the pair hi - 1, hi); the night's last chunk reads to the end, as a whole night does.
        stop = None if hi >= n_epochs else (hi + 1) * raw_epoch
        blocks = iter_night_blocks(parts, block, src.layout, start=first * raw_epoch, stop=stop)
        # The breathing envelope rides with the epochs (not the shifted windows), from the same stream.
        chunk_args = {"first_index": first, "emit_from": lo, "emit_until": hi, "envelope": epochs}
        no_envelope = empty_envelope(length)
        n_frames = frames_per_epoch(length)
        if cfg.device == "model":  # raw epochs with margins: the model stage resamples and filters them
            window = margins(int(rate), cfg.target_rate)
            stream = iter_raw_epochs(blocks, rate, cfg, window, full_scale, pairs, **chunk_args)
            audio_rate, empty = float(rate), np.zeros(raw_epoch + sum(window), dtype=np.float32)
        else:
            stream = iter_epochs(blocks, rate, cfg, full_scale, pairs, **chunk_args)
            audio_rate, empty = float(cfg.target_rate), np.zeros(int(length * cfg.target_rate), dtype=np.float32)
        for epoch in stream:
            i = epoch.index
            if i >= n_epochs:
                break
            shifted = epoch.offset_s > 0
            if not shifted:
                emitted += 1
                if not epochs:
                    continue
            stage5 = labels.stages[i]
            if shifted and stage5 != labels.stages[i + 1]:
                stage5 = None  # same 3-class stage, different 5-class ones (N2 then N3)
            yield {
                "recording_id": src.recording_id,
                "subject_id": src.subject_id,
                "epoch_index": i,
                "start_s": i * length + epoch.offset_s,
                "stage5": stage5,
                "stage3": stage3[i],
                "valid": epoch.valid,
                "invalid_reason": epoch.reason,
                "zero_rms_s": epoch.zero_rms_seconds,
                "nonfinite": epoch.quality.nonfinite,
                "clipped_fraction": epoch.quality.clipped_fraction,
                **(shifted_resp[i] if shifted else resp[i]),
                "kind": "shifted" if shifted else "epoch",
                "offset_s": epoch.offset_s,
                "n_epochs": n_epochs,
                "n_rows": -1,
                "audio": epoch.audio if epoch.valid else empty,
                "rate": audio_rate,
                "envelope": _frames(epoch.envelope, n_frames) if epoch.envelope is not None else no_envelope,
                "error": None,
            }
    if emitted < hi - lo:
        raise OSError(f"{src.audio_uris[-1]}: audio ended after {lo + emitted} of {n_epochs} epochs")


def _frames(envelope: np.ndarray, n: int) -> np.ndarray:
    """An epoch's envelope on exactly ``n`` frames (a source rate that does not divide 0.1 s evenly
    can leave one frame short; the last frame is repeated)."""
    if len(envelope) == n:
        return envelope
    if len(envelope) > n:
        return envelope[:n]
    return np.concatenate([envelope, np.repeat(envelope[-1:], n - len(envelope), axis=0)])


def night_rows(
    row: ManifestRow, cfg: PreprocessConfig, plan: EmbedPlan, chunk: Chunk | None = None
) -> Iterator[dict[str, Any]]:
    """A night's (or a chunk's) rows for the embedding stage, tagged with the channel, closed by
    ``end_row`` (which counts this chunk's rows: the collector adds up every chunk's)."""
    sent = 0
    for out in read_epochs(row, cfg, plan.shift_classes, plan.epochs, chunk):
        sent += 1
        yield {**out, "channel": cfg.channel}
        if out["error"]:
            return
    yield {**end_row(row, cfg, sent + 1), "channel": cfg.channel}
