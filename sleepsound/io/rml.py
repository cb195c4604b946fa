"""Philips Sleepware RML (PSG-Audio annotations): reader and writer side by side.

The synthetic generator writes RML with :func:`write_rml` and every reader goes through
:func:`parse_rml`, so the two cannot drift apart. The reader never raises on content it
does not know: unknown elements, stage types and event types are kept (events) or
mapped to ``UNS`` (stages) and described in ``RmlAnnotations.unknown``. It raises
:class:`RmlError` only when the file is not RML at all.

Security note: RML is trusted lab data, but it is still parsed defensively. ``xml.etree``
(expat) never fetches external entities or DTDs; on top of that any document with a DTD
(``<!DOCTYPE``) or an entity declaration is refused, so no entity is ever expanded. The check is
made by expat itself on the decoded document (``_refuse_declarations``), so no encoding (UTF-16,
a declared legacy codec) can spell the declaration past it.
"""

from __future__ import annotations

import io
import math
import os
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO
from xml.parsers import expat

from sleepsound.labels.vocabulary import EPOCH_SECONDS, RML_STAGE_TO_5, STAGE5_TO_RML, UNSCORED

RML_NAMESPACE = "http://www.respironics.com/PatientStudy.xsd"
_Q = f"{{{RML_NAMESPACE}}}"
STAGING_ELEMENT = "NeuroAdultAASMStaging"

# Event types the PSG-Audio description names; anything else is kept and reported.
KNOWN_EVENT_TYPES: frozenset[str] = frozenset(
    {
        "ObstructiveApnea",
        "CentralApnea",
        "MixedApnea",
        "Hypopnea",
        "PeriodicRespiration",
        "Snore",
        "RelativeDesaturation",
        "Arousal",
        "RERA",
        "LegMovement",
        "ChannelFail",
    }
)
_KNOWN_TOP_LEVEL = frozenset({"Acquisition", "ChannelConfig", "ScoringData"})
# No recording lasts a week: a time or duration beyond this is corrupt, not late. Such event
# times are dropped (or zeroed) with a note here; stage times are kept for the checks, which
# quarantine the night (``annotation_checks``): a stage time places every later label.
MAX_NIGHT_S = 7 * 24 * 3600.0
_ABSURD = f"more than {MAX_NIGHT_S / 86400:g} days, no night is that long"

RmlSource = str | os.PathLike[str] | bytes | BinaryIO


class RmlError(Exception):
    """An annotation file that is not usable RML at all (bad XML, wrong root or namespace)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class RmlEvent:
    """One scored event; ``machine`` marks device-scored (``Machine="true"``) events."""

    family: str
    type: str
    start_s: float
    duration_s: float
    machine: bool = False

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass
class RmlAnnotations:
    """What an RML file says about one night; times in seconds from the start of part [001]."""

    recording_start: datetime | None = None
    duration_s: float | None = None
    segment_durations_s: list[float] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    stage_changes: list[tuple[float, str]] = field(default_factory=list)  # UserStaging only
    # UserStaging <Stage> elements whose Start is missing or not a finite number of seconds, as
    # (Type, Start as written): left out of ``stage_changes``, where the stage before would have
    # silently run on over their epochs; validation quarantines the night (``invalid_staging``).
    unreadable_stages: list[tuple[str, str]] = field(default_factory=list)
    events: list[RmlEvent] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    # Lights off/on in seconds from the start, when the Session records them (Sleepware may
    # write seconds or a date-time; both are read).
    lights_off_s: float | None = None
    lights_on_s: float | None = None

    def scored_seconds(self) -> float | None:
        """End of the staged night: the last ``Stage`` element marks the end of the recording."""
        return self.stage_changes[-1][0] if self.stage_changes else None


# ----------------------------------------------------------------------------- reading


MAX_RML_BYTES = 32 * 2**20
"""A night's scoring export is a few thousand elements of about a hundred bytes (events, stage
changes, channels): well under a megabyte. Parsing holds about ten times the file in memory (a
padded 44-MB file took 700 MB), so a larger file is refused before it is parsed."""


def _read_source(source: RmlSource) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray):
        data, name = bytes(source), "<bytes>"
    elif hasattr(source, "read"):
        data = source.read(MAX_RML_BYTES + 1)  # type: ignore[union-attr]
        name = str(getattr(source, "name", "<stream>"))
        if isinstance(data, str):
            data = data.encode("utf-8")
    else:
        name = os.fspath(source)  # type: ignore[arg-type]
        try:
            with open(name, "rb") as handle:
                data = handle.read(MAX_RML_BYTES + 1)
        except OSError as exc:
            raise RmlError(name, f"cannot read the RML file ({exc.strerror or exc})") from exc
    if len(data) > MAX_RML_BYTES:
        raise RmlError(
            name,
            f"over {MAX_RML_BYTES >> 20} MB, far more than a night's scoring export holds (well under 1 MB "
            "with every event): not parsed; check what was uploaded, or re-export the night's annotations alone",
        )
    return data, name


def _float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _clock_time(text: str) -> datetime:
    """An ISO date-time as the wall clock it names. EDF headers hold the local clock time without a
    zone, so an offset (``+02:00``) is dropped, not converted: both name the same clock. Kept, it made
    every comparison with the EDF's start a TypeError that blamed the audio. Raises ValueError."""
    return datetime.fromisoformat(text.strip()).replace(tzinfo=None)


def _seconds_or_time(text: str, start: datetime | None) -> float | None:
    """Seconds from the start, given as a number or as an ISO date-time (needs RecordingStart)."""
    value = _float(text)
    if value is not None:
        return value if value >= 0 else None
    try:
        moment = _clock_time(text)
    except ValueError:
        return None
    if start is None or moment < start:
        return None
    return (moment - start).total_seconds()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


class _Declaration(Exception):
    """Raised from expat's handlers: the document has a DTD or declares an entity."""


def _refuse(what: str) -> Callable[..., None]:
    """An expat handler (of any arity) that raises ``_Declaration(what)``."""

    def handler(*_args: object) -> None:
        raise _Declaration(what)

    return handler


def _refuse_declarations(data: bytes, name: str) -> None:
    """Raise RmlError if ``data`` holds a DTD (``<!DOCTYPE``) or an entity declaration, in whatever
    encoding: expat decodes the document (BOM, XML declaration) and calls these handlers before
    anything is expanded. Other faults are left to the real parse, which names them."""
    parser = expat.ParserCreate()
    doctype = "has a DTD (<!DOCTYPE ...>), where XML entities are declared"
    entity = "declares an XML entity (<!ENTITY ...>)"
    parser.StartDoctypeDeclHandler = _refuse(doctype)
    parser.EntityDeclHandler = _refuse(entity)
    parser.UnparsedEntityDeclHandler = _refuse(entity)
    try:
        parser.Parse(data, True)
    except _Declaration as exc:
        raise RmlError(name, f"the document {exc}; refused: RML never needs one; re-export it without") from None
    except (expat.ExpatError, LookupError, ValueError):
        return  # not well-formed, or an unknown encoding: the parse below says which


def parse_rml(source: RmlSource) -> RmlAnnotations:
    """Read an RML file (path, bytes or binary file object) into :class:`RmlAnnotations`."""
    data, name = _read_source(source)
    _refuse_declarations(data, name)
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise RmlError(name, f"not well-formed XML ({exc})") from exc
    except LookupError as exc:  # <?xml encoding="..."?> names a codec Python does not know
        raise RmlError(
            name, f"the XML declaration names an unknown character encoding ({exc}); re-export the RML as UTF-8"
        ) from exc
    if root.tag != f"{_Q}PatientStudy":
        raise RmlError(name, f"root element is {root.tag!r}; expected PatientStudy in namespace {RML_NAMESPACE}")

    ann = RmlAnnotations()
    notes: Counter[str] = Counter()
    for child in root:
        if _local(child.tag) not in _KNOWN_TOP_LEVEL or not child.tag.startswith(_Q):
            notes[f"element <{_local(child.tag)}> under PatientStudy ignored"] += 1

    session = root.find(f"{_Q}Acquisition/{_Q}Sessions/{_Q}Session")
    if session is not None:
        _read_session(session, ann, notes)
    for channel in root.iterfind(f"{_Q}ChannelConfig/{_Q}Channels/{_Q}Channel"):
        label = channel.findtext(f"{_Q}Label")
        if label is None:
            notes["Channel without Label ignored"] += 1
        else:
            ann.channels.append(label.strip())
    scoring = root.find(f"{_Q}ScoringData")
    if scoring is not None:
        _read_events(scoring, ann, notes)
        _read_user_staging(scoring, ann, notes)
    ann.unknown = [f"{text} (x{count})" if count > 1 else text for text, count in notes.items()]
    return ann


def _read_session(session: ET.Element, ann: RmlAnnotations, notes: Counter[str]) -> None:
    start = session.findtext(f"{_Q}RecordingStart")
    if start is not None:
        try:
            ann.recording_start = _clock_time(start)
        except ValueError:
            notes[f"RecordingStart {start.strip()!r} is not an ISO date-time"] += 1
    duration = session.findtext(f"{_Q}Duration")
    if duration is not None:
        ann.duration_s = _float(duration)
        if ann.duration_s is None:
            notes[f"Session Duration {duration.strip()!r} is not a number"] += 1
        elif abs(ann.duration_s) > MAX_NIGHT_S:
            notes[f"Session Duration {ann.duration_s:g} s ignored ({_ABSURD})"] += 1
            ann.duration_s = None
    for tag, attr in (("LightsOff", "lights_off_s"), ("LightsOn", "lights_on_s")):
        text = session.findtext(f"{_Q}{tag}")
        if text is not None:
            setattr(ann, attr, _seconds_or_time(text, ann.recording_start))
            if (getattr(ann, attr) or 0.0) > MAX_NIGHT_S:
                notes[f"{tag} {getattr(ann, attr):g} s ignored ({_ABSURD})"] += 1
                setattr(ann, attr, None)
            elif getattr(ann, attr) is None:
                notes[f"{tag} {text.strip()!r} is neither seconds nor a date-time after RecordingStart"] += 1
    for number, segment in enumerate(session.iterfind(f"{_Q}Segments/{_Q}Segment"), start=1):
        text = segment.findtext(f"{_Q}Duration")
        value = _float(text)
        if value is None or value <= 0 or value > MAX_NIGHT_S:
            # Segments pair with EDF parts by position: dropping one would pair every later part with
            # the wrong segment, so an unusable one voids the whole list (and the check it feeds).
            what = (
                f"{value:g} s ({_ABSURD})"
                if value is not None and value > 0
                else f"{(text or '').strip()!r} is not a positive number"
            )
            notes[f"Segment {number} Duration {what}: the EDF parts are not checked against the RML segments"] += 1
            ann.segment_durations_s = []
            break
        ann.segment_durations_s.append(value)


def _read_events(scoring: ET.Element, ann: RmlAnnotations, notes: Counter[str]) -> None:
    events = scoring.find(f"{_Q}Events")
    if events is None:
        return
    for element in events:
        if element.tag != f"{_Q}Event":
            notes[f"element <{_local(element.tag)}> under Events ignored"] += 1
            continue
        family = element.get("Family", "")
        etype = element.get("Type", "")
        start = _float(element.get("Start"))
        if start is None:
            notes[f"event {family}/{etype} without a numeric Start dropped"] += 1
            continue
        if abs(start) > MAX_NIGHT_S:
            notes[f"event {family}/{etype} with Start {start:g} s dropped ({_ABSURD})"] += 1
            continue
        duration = _float(element.get("Duration"))
        if duration is not None and duration > MAX_NIGHT_S:
            notes[f"event {family}/{etype} with Duration {duration:g} s kept with duration 0 ({_ABSURD})"] += 1
            duration = 0.0
        elif duration is None or duration < 0:
            notes[f"event {family}/{etype} without a valid Duration kept with duration 0"] += 1
            duration = 0.0
        if etype not in KNOWN_EVENT_TYPES:
            notes[f"event type {etype!r} (family {family!r}) not known; kept"] += 1
        machine = element.get("Machine", "false").strip().lower() == "true"
        ann.events.append(RmlEvent(family, etype, start, duration, machine))


def _read_user_staging(scoring: ET.Element, ann: RmlAnnotations, notes: Counter[str]) -> None:
    user = scoring.find(f"{_Q}StagingData/{_Q}UserStaging")
    if user is None:
        if scoring.find(f"{_Q}StagingData/{_Q}MachineStaging") is not None:
            notes["no UserStaging; MachineStaging is present but never used"] += 1
        return
    staging = user.find(f"{_Q}{STAGING_ELEMENT}")
    if staging is None:
        others = [child for child in user if child.find(f"{_Q}Stage") is not None]
        if not others:
            notes["UserStaging holds no Stage elements"] += 1
            return
        staging = others[0]
        notes[f"UserStaging uses <{_local(staging.tag)}> instead of <{STAGING_ELEMENT}>; read anyway"] += 1
    for stage in staging:
        if stage.tag != f"{_Q}Stage":
            notes[f"element <{_local(stage.tag)}> under {_local(staging.tag)} ignored"] += 1
            continue
        stype = stage.get("Type", "")
        start = _float(stage.get("Start"))
        if start is None:
            ann.unreadable_stages.append((stype, stage.get("Start", "")))
            continue
        if stype not in RML_STAGE_TO_5:
            notes[f"stage type {stype!r} not known; its epochs are marked {UNSCORED}"] += 1
        ann.stage_changes.append((start, stype))
    ann.stage_changes.sort(key=lambda change: change[0])


def stages_per_epoch(ann: RmlAnnotations, n_epochs: int | None = None) -> list[str]:
    """Expand UserStaging change points onto the 30-s grid as 5-class names (``UNS`` where unscored).

    Each Stage holds until the next; the last Stage only marks the end of the recording.
    Without ``n_epochs`` the list covers the staged night; with it, the list is padded
    with ``UNS`` or cut to exactly ``n_epochs``. Unknown types become ``UNS`` and are
    noted in ``ann.unknown``.
    """
    changes = ann.stage_changes
    if not changes:
        return [UNSCORED] * (n_epochs or 0)
    if len(changes) == 1:
        # A single Stage cannot also mark the end; let it hold to the end we are told.
        end_s = (n_epochs if n_epochs is not None else 1) * EPOCH_SECONDS
        bounds = [(changes[0][0], end_s, changes[0][1])]
    else:
        bounds = [(start, nxt, stype) for (start, stype), (nxt, _) in zip(changes[:-1], changes[1:], strict=True)]
        end_s = changes[-1][0]
    total = n_epochs if n_epochs is not None else max(0, math.ceil(end_s / EPOCH_SECONDS - 1e-9))
    stages = [UNSCORED] * total
    off_grid = 0
    for start, stop, stype in bounds:
        if abs(start / EPOCH_SECONDS - round(start / EPOCH_SECONDS)) > 1e-6:
            off_grid += 1
        stage5 = RML_STAGE_TO_5.get(stype, UNSCORED)
        if stype not in RML_STAGE_TO_5:
            note = f"stage type {stype!r} not known; its epochs are marked {UNSCORED}"
            if not any(item.startswith(note) for item in ann.unknown):
                ann.unknown.append(note)
        first = max(0, int(math.floor(start / EPOCH_SECONDS + 1e-6)))
        last = min(total, int(math.ceil(stop / EPOCH_SECONDS - 1e-6)))
        for index in range(first, last):
            stages[index] = stage5
    if off_grid:
        note = f"{off_grid} Stage start(s) not on the 30-s grid; floored to the epoch"
        if note not in ann.unknown:
            ann.unknown.append(note)
    return stages


# ----------------------------------------------------------------------------- writing


def stage_changes_from_epochs(stages: Sequence[str], epoch_seconds: float = EPOCH_SECONDS) -> list[tuple[float, str]]:
    """5-class stages per epoch -> RML change points, ending with the end-of-recording Stage."""
    changes: list[tuple[float, str]] = []
    previous: str | None = None
    for index, stage in enumerate(stages):
        if stage != previous:
            changes.append((index * epoch_seconds, STAGE5_TO_RML[stage]))
            previous = stage
    if stages:
        changes.append((len(stages) * epoch_seconds, STAGE5_TO_RML[stages[-1]]))
    return changes


def format_seconds(value: float) -> str:
    """Compact decimal text for seconds ("2888.5", "30"), exact to the millisecond."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _staging(parent: ET.Element, tag: str, changes: Sequence[tuple[float, str]]) -> None:
    block = ET.SubElement(ET.SubElement(parent, f"{_Q}{tag}"), f"{_Q}{STAGING_ELEMENT}")
    for start, stype in changes:
        ET.SubElement(block, f"{_Q}Stage", {"Type": stype, "Start": format_seconds(start)})


def rml_bytes(ann: RmlAnnotations, machine_stage_changes: Sequence[tuple[float, str]] | None = None) -> bytes:
    """Serialise annotations as RML (UTF-8, indented); deterministic for the same input."""
    ET.register_namespace("", RML_NAMESPACE)
    root = ET.Element(f"{_Q}PatientStudy")
    session = ET.SubElement(ET.SubElement(ET.SubElement(root, f"{_Q}Acquisition"), f"{_Q}Sessions"), f"{_Q}Session")
    if ann.recording_start is not None:
        ET.SubElement(session, f"{_Q}RecordingStart").text = ann.recording_start.isoformat(timespec="seconds")
    if ann.duration_s is not None:
        ET.SubElement(session, f"{_Q}Duration").text = format_seconds(ann.duration_s)
    for tag, value in (("LightsOff", ann.lights_off_s), ("LightsOn", ann.lights_on_s)):
        if value is not None:
            ET.SubElement(session, f"{_Q}{tag}").text = format_seconds(value)
    segments = ET.SubElement(session, f"{_Q}Segments")
    for duration in ann.segment_durations_s:
        ET.SubElement(ET.SubElement(segments, f"{_Q}Segment"), f"{_Q}Duration").text = format_seconds(duration)
    channels = ET.SubElement(ET.SubElement(root, f"{_Q}ChannelConfig"), f"{_Q}Channels")
    for index, label in enumerate(ann.channels):
        ET.SubElement(ET.SubElement(channels, f"{_Q}Channel", {"EdfSignal": str(index)}), f"{_Q}Label").text = label
    scoring = ET.SubElement(root, f"{_Q}ScoringData")
    events = ET.SubElement(scoring, f"{_Q}Events")
    for event in ann.events:
        attrs = {
            "Family": event.family,
            "Type": event.type,
            "Start": format_seconds(event.start_s),
            "Duration": format_seconds(event.duration_s),
        }
        if event.machine:
            attrs["Machine"] = "true"
        ET.SubElement(events, f"{_Q}Event", attrs)
    staging = ET.SubElement(scoring, f"{_Q}StagingData", {"StagingDisplay": "NeuroAdultAASM"})
    _staging(staging, "UserStaging", ann.stage_changes)
    if machine_stage_changes is not None:
        _staging(staging, "MachineStaging", machine_stage_changes)
    ET.indent(root, space=" ")
    buffer = io.BytesIO()
    ET.ElementTree(root).write(buffer, encoding="utf-8", xml_declaration=True)
    return buffer.getvalue() + b"\n"


def write_rml(
    path: str | os.PathLike[str], ann: RmlAnnotations, machine_stage_changes: Sequence[tuple[float, str]] | None = None
) -> None:
    """Write ``ann`` as an RML file (``unknown`` is not written: it describes a reading)."""
    with open(path, "wb") as handle:
        handle.write(rml_bytes(ann, machine_stage_changes))
