"""Do a night's annotations belong to its audio, and do they make sense?

Labels that describe another night, or a night of another length, teach a model the wrong
thing silently; so those faults quarantine the night (``Quarantine``). Doubtful events
(outside the recording, negative, respiratory events on top of each other) are reported as
warnings and ignored by the label builders, which clip events to the recording anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from sleepsound.core.findings import Finding, Quarantine, clock
from sleepsound.io.audio import PartInfo
from sleepsound.io.rml import MAX_NIGHT_S, RmlAnnotations, RmlEvent
from sleepsound.labels.annotations import changes_on_grid
from sleepsound.labels.vocabulary import APNEA_TYPES, EPOCH_SECONDS, HYPOPNEA_TYPES

RESPIRATORY_TYPES = APNEA_TYPES | HYPOPNEA_TYPES


@dataclass(frozen=True)
class Tolerances:
    """How far annotations and audio may disagree before it is a fault."""

    start_s: float = 60.0  # RML RecordingStart vs the EDF header's start
    part_s: float = 1.0  # an EDF part vs the RML segment it should fill
    staging_s: float = EPOCH_SECONDS  # staged length vs audio length ("more than one epoch")


def check_rml(
    ann: RmlAnnotations,
    path: str,
    parts: Sequence[PartInfo],
    part_numbers: Sequence[int],
    audio_s: float,
    tol: Tolerances = Tolerances(),
) -> list[Finding]:
    """All RML checks; raises Quarantine for a fault that makes the labels unusable."""
    findings: list[Finding] = []
    first = parts[0].start if parts else None
    if ann.recording_start is not None and first is not None:
        offset = abs((ann.recording_start - first).total_seconds())
        if offset > tol.start_s:
            raise Quarantine(
                path,
                "annotation_mismatch",
                f"RecordingStart {ann.recording_start:%Y-%m-%d %H:%M:%S} but the EDF part "
                f"[{part_numbers[0]:03d}] starts {first:%Y-%m-%d %H:%M:%S} ({offset:.0f} s apart): "
                "this RML belongs to another recording; find the right one",
            )
    _check_segments(ann.segment_durations_s, path, parts, part_numbers, tol)
    if ann.unreadable_stages:
        stype, start = ann.unreadable_stages[0]
        more = f" (and {len(ann.unreadable_stages) - 1} more)" if len(ann.unreadable_stages) > 1 else ""
        raise Quarantine(
            path,
            "invalid_staging",
            f"UserStaging <Stage Type={stype[:40]!r}> has Start={start[:40]!r}{more}, not a "
            "number of seconds: the stages after it cannot be placed; fix the scoring export",
        )
    _check_stage_changes(
        [start for start, _ in ann.stage_changes],
        path,
        [f"UserStaging <Stage Type={stype!r}>" for _, stype in ann.stage_changes],
    )
    staged = ann.scored_seconds()
    if staged is None or len(ann.stage_changes) < 2:
        findings.append(
            Finding(
                "recording",
                "no_staging",
                "warning",
                path,
                "no user staging (UserStaging holds fewer than two Stage elements): the night is "
                "scored but not used for training or metrics",
            )
        )
    else:
        _check_length(staged, audio_s, path, tol, "the last Stage (end of recording)")
    findings += check_events([e for e in ann.events if not e.machine], audio_s, path)
    if ann.unknown:
        findings.append(
            Finding(
                "recording",
                "annotation_notes",
                "warning",
                path,
                "kept or ignored while reading: " + "; ".join(ann.unknown),
            )
        )
    return findings


def _check_segments(
    segments: Sequence[float], path: str, parts: Sequence[PartInfo], numbers: Sequence[int], tol: Tolerances
) -> None:
    """Each EDF part must fill its RML segment: a short middle part would shift every later epoch."""
    if not segments:
        return
    if max(numbers) < len(segments):
        missing = list(range(max(numbers) + 1, len(segments) + 1))
        raise Quarantine(
            path,
            "missing_part",
            f"the RML lists {len(segments)} segments but EDF parts {missing} are missing; restore them",
        )
    if len(parts) > len(segments):
        raise Quarantine(
            path,
            "annotation_mismatch",
            f"{len(parts)} EDF parts but the RML lists only {len(segments)} segments: "
            "this RML may belong to another recording",
        )
    for index, (part, number, segment) in enumerate(zip(parts, numbers, segments, strict=False)):
        last = index == len(parts) - 1
        if part.duration_s < segment - tol.part_s and not last:
            raise Quarantine(
                part.path,
                "short_part",
                f"part [{number:03d}] holds {part.duration_s:.1f} s but its RML segment lasted "
                f"{segment:.1f} s; every later epoch would shift by {segment - part.duration_s:.1f} s. "
                "Re-export the part",
            )


def _check_stage_changes(starts: Sequence[float], path: str, names: Sequence[str] | None = None) -> None:
    """Stage change points must lie in the night and not clash; ``names`` says what each one is, for
    the message (``<Stage Type='REM'>``, ``row 12``)."""
    absurd = [i for i, s in enumerate(starts) if s > MAX_NIGHT_S]
    if absurd:
        first, more = absurd[0], f" (and {len(absurd) - 1} more)" if len(absurd) > 1 else ""
        raise Quarantine(
            path,
            "invalid_staging",
            f"{names[first] if names else 'a stage'} starts at {starts[first]:g} s{more}, more than "
            f"{MAX_NIGHT_S / 86400:g} days into the night: a corrupt time, not a late one; "
            "fix the scoring export",
        )
    negative = [s for s in starts if s < 0]
    if negative:
        raise Quarantine(
            path,
            "invalid_staging",
            f"{len(negative)} stage(s) start before the recording (first at {negative[0]:g} s); fix the scoring export",
        )
    ordered = sorted(starts)
    repeated = sorted({a for a, b in zip(ordered, ordered[1:], strict=False) if a == b})
    if repeated:
        raise Quarantine(
            path,
            "invalid_staging",
            f"{len(repeated)} time(s) carry two stages (first at {clock(repeated[0])}); fix the scoring export",
        )


def _check_length(staged_s: float, audio_s: float, path: str, tol: Tolerances, what: str) -> None:
    if abs(staged_s - audio_s) > tol.staging_s:
        longer = "longer" if staged_s > audio_s else "shorter"
        raise Quarantine(
            path,
            "staging_length_mismatch",
            f"staging ends at {clock(staged_s)} ({what}) but the audio lasts {clock(audio_s)}: "
            f"{abs(staged_s - audio_s):.6g} s {longer}, more than one epoch. A part may be missing "
            "or the annotations belong to another recording",
        )


def check_events(events: Sequence[RmlEvent], audio_s: float, path: str) -> list[Finding]:
    """Warnings for events outside the recording, without a positive length, or overlapping."""
    findings: list[Finding] = []
    invalid = [e for e in events if not e.duration_s > 0]
    outside = [e for e in events if e.duration_s > 0 and (e.start_s < 0 or e.end_s > audio_s + 1e-6)]
    if invalid:
        e = invalid[0]
        findings.append(
            Finding(
                "recording",
                "invalid_events",
                "warning",
                path,
                f"{len(invalid)} event(s) without a positive duration, ignored "
                f"(first: {e.type} at {clock(e.start_s)}, {e.duration_s:g} s)",
            )
        )
    if outside:
        e = outside[0]
        findings.append(
            Finding(
                "recording",
                "events_out_of_range",
                "warning",
                path,
                f"{len(outside)} event(s) reach outside the recording (0 to {clock(audio_s)}), "
                f"clipped to it (first: {e.type} at {e.start_s:g} s for {e.duration_s:g} s)",
            )
        )
    breathing = sorted((e for e in events if e.type in RESPIRATORY_TYPES and e.duration_s > 0), key=lambda e: e.start_s)
    overlaps = [(a, b) for a, b in zip(breathing, breathing[1:], strict=False) if b.start_s < a.end_s - 1e-6]
    if overlaps:
        a, b = overlaps[0]
        findings.append(
            Finding(
                "recording",
                "overlapping_events",
                "warning",
                path,
                f"{len(overlaps)} apnoea/hypopnoea event(s) overlap the previous one (first: {b.type} "
                f"at {clock(b.start_s)} inside {a.type} from {clock(a.start_s)}); AHI counts each "
                "event, so check the scoring",
                a.start_s,
                b.end_s,
            )
        )
    return findings


def _start_disagreements(table: pd.DataFrame, path: str) -> list[Finding]:
    """A table with both ``epoch_index`` and ``start_s`` is read by its epoch_index; a start_s that
    says otherwise (another time origin, or rows shifted by an edit) is worth a look."""
    if "start_s" not in table.columns:
        return []
    starts = pd.to_numeric(table["start_s"], errors="coerce")
    off = (starts - table["epoch_index"] * EPOCH_SECONDS).abs() > 1.0
    if not off.any():
        return []
    row = int(off.to_numpy().argmax())
    return [
        Finding(
            "recording",
            "annotation_notes",
            "warning",
            path,
            f"{int(off.sum())} row(s) whose start_s is not epoch_index x {EPOCH_SECONDS:g} s (first: row "
            f"{row + 2}, epoch {int(table['epoch_index'].iloc[row])} at start_s {starts.iloc[row]:g}); the "
            "stages are placed by epoch_index: check the export",
        )
    ]


def check_stage_table(
    table: pd.DataFrame, path: str, recording_id: str, n_epochs: int, audio_s: float, tol: Tolerances = Tolerances()
) -> list[Finding]:
    """Checks of a plain layout's ``.stages.csv`` (already parsed by ``annotations.read_stage_table``)."""
    if table.empty:  # a header without rows: like an RML without UserStaging
        return [
            Finding(
                "recording",
                "no_staging",
                "warning",
                path,
                "the stage CSV has a header but no rows: the night is scored but not used for training or metrics",
            )
        ]
    if "recording_id" in table.columns:
        others = sorted({str(v) for v in table["recording_id"].dropna()} - {recording_id})
        if others:
            raise Quarantine(
                path,
                "annotation_mismatch",
                f"stage file names recording(s) {others[:3]}, not {recording_id!r}: it belongs to another recording",
            )
    if "epoch_index" in table.columns:
        index = table["epoch_index"]
        if (index < 0).any():
            raise Quarantine(path, "invalid_staging", f"negative epoch_index {int(index.min())}; fix the file")
        clashes = table.groupby("epoch_index")["stage"].nunique()
        if (clashes > 1).any():
            raise Quarantine(
                path,
                "invalid_staging",
                f"epoch {int(clashes[clashes > 1].index[0])} has two different stages; fix the file",
            )
        _check_length(
            (int(index.max()) + 1) * EPOCH_SECONDS, n_epochs * EPOCH_SECONDS, path, tol, "the last epoch_index"
        )
        return _start_disagreements(table, path)
    starts = table["start_s"]
    _check_stage_changes(list(starts), path, [f"row {i + 2}" for i in range(len(starts))])
    if float(starts.max()) > audio_s + tol.staging_s:
        _check_length(float(starts.max()), audio_s, path, tol, "the last change point")
    return _split_epochs(table, path, n_epochs)


def _split_epochs(table: pd.DataFrame, path: str, n_epochs: int) -> list[Finding]:
    """Change points off the 30-s grid put two stages in one epoch; the epoch takes the one that
    covers most of it (``annotations.changes_on_grid``), which is worth saying: an export on
    another grid (20-s epochs, a start offset) would be read that way throughout."""
    stages, split = changes_on_grid(table, n_epochs)
    if not split:
        return []
    first = split[0]
    return [
        Finding(
            "recording",
            "annotation_notes",
            "warning",
            path,
            f"{len(split)} epoch(s) hold a stage change part-way through (first: epoch {first} at "
            f"{clock(first * EPOCH_SECONDS)}, scored {stages[first]}); each takes the stage that covers "
            f"most of its {EPOCH_SECONDS:g} s, as AASM scoring does. Change points are expected on the "
            f"{EPOCH_SECONDS:g}-s grid: check the export",
            first * EPOCH_SECONDS,
            (first + 1) * EPOCH_SECONDS,
        )
    ]
