"""Write synthetic nights to disk: PSG-Audio layout (EDF parts + RML) or plain (FLAC/WAV + CSV).

Audio is rendered and written a chunk at a time, so memory stays flat whatever the
night's length or sample rate. Every file is written under a temporary name and renamed
when complete, so a reader never sees a half-written part. Same arguments, same bytes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyedflib
import soundfile as sf

from sleepsound.io.rml import (
    RmlAnnotations,
    RmlEvent,
    format_seconds,
    rml_bytes,
    stage_changes_from_epochs,
)
from sleepsound.labels.vocabulary import EPOCH_SECONDS, STAGE5_TO_RML
from sleepsound.synth.hypnogram import NightPlan, make_night_plan, make_recording_start
from sleepsound.synth.sound import AUDIO_CHANNELS, channel_rates, synthesise_chunk

LAYOUTS = ("psg-audio", "plain")
AUDIO_FORMATS = ("flac", "wav")
GENERATOR_VERSION = 1
# Longest sleep cycle accepted, minutes: a real one lasts 70-120, the option only shortens it for short demo
# nights; a day is far past any use and keeps the hypnogram's draws small (1e12 was a MemoryError).
MAX_CYCLE_MINUTES = 24 * 60.0


@dataclass(frozen=True)
class EdfSignalSpec:
    """How one synthesised channel is stored in EDF: 16-bit with a symmetric digital range."""

    label: str
    physical_min: float
    physical_max: float
    dimension: str
    transducer: str


# Order in the file: audio deliberately not first, so readers must pick by label.
EDF_SIGNALS: tuple[EdfSignalSpec, ...] = (
    EdfSignalSpec("SpO2", 0.0, 100.0, "%", "pulse oximeter"),
    EdfSignalSpec("Flow Patient", -2.0, 2.0, "L/s", "nasal cannula"),
    EdfSignalSpec("Snore", -1.0, 1.0, "a.u.", "contact microphone"),
    EdfSignalSpec("Mic", -1.0, 1.0, "a.u.", "ambient microphone"),
    EdfSignalSpec("Tracheal", -1.0, 1.0, "a.u.", "tracheal microphone"),
)
DIGITAL_MIN, DIGITAL_MAX = -32767, 32767  # symmetric, so physical 0 is digital 0


@dataclass(frozen=True)
class Progress:
    """Where generation stands: handed to the optional ``progress`` callback after every chunk."""

    subject_index: int
    n_subjects: int
    subject_id: str
    seconds_done: float
    seconds_total: float

    @property
    def fraction(self) -> float:
        """Fraction of the whole cohort written so far (nights are equally long)."""
        night = self.seconds_done / self.seconds_total if self.seconds_total else 1.0
        return (self.subject_index + night) / self.n_subjects


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class SubjectSummary:
    """One generated night: who, how long, how apnoeic, and which files hold it."""

    subject_id: str
    hours: float
    n_epochs: int
    ahi: float
    target_ahi: float
    severity: str
    snorer: bool
    stage_counts: dict[str, int]
    audio_paths: tuple[str, ...]
    annotation_paths: tuple[str, ...]
    event_counts: dict[str, int] = field(default_factory=dict)
    style: str = "classic"  # the generator style the night was rendered in (see synth.styles)
    style_params: dict[str, object] | None = None  # its drawn parameters; None for classic
    real_snore_clips: tuple[str, ...] | None = None  # the recorded clips its snores were taken from
    real_background: dict[str, object] | None = None  # its recorded TV: clips played, level, schedule

    @property
    def paths(self) -> tuple[str, ...]:
        return self.audio_paths + self.annotation_paths


def patient_id(seed: int, subject_index: int) -> str:
    """PSG-Audio style id ``00000995-100507``: a subject number and the night's date (yymmdd)."""
    rng = np.random.default_rng([seed, 0x5EED])
    number = int(rng.integers(100, 9000)) + 37 * subject_index
    return f"{number:08d}-{make_recording_start(seed, subject_index):%y%m%d}"


def _chunks(start_s: int, stop_s: int, chunk_s: int) -> list[tuple[int, int]]:
    return [(t, min(chunk_s, stop_s - t)) for t in range(start_s, stop_s, chunk_s)]


def _to_digital(x: np.ndarray, spec: EdfSignalSpec) -> np.ndarray:
    scale = (DIGITAL_MAX - DIGITAL_MIN) / (spec.physical_max - spec.physical_min)
    d = np.rint((x.astype(np.float64) - spec.physical_min) * scale + DIGITAL_MIN)
    return np.clip(d, DIGITAL_MIN, DIGITAL_MAX).astype(np.int32)


def _part_name(patient: str, number: int) -> str:
    return f"{patient}[{number:03d}].edf"


def write_edf_part(
    path: Path,
    plan: NightPlan,
    start_s: int,
    stop_s: int,
    sample_rate: int,
    chunk_seconds: int = 30,
    on_chunk: Callable[[float], None] | None = None,
) -> None:
    """One EDF part holding ``[start_s, stop_s)`` of the night, written a block of records at a time."""
    rates = channel_rates(sample_rate)
    tmp = path.with_name(path.name + ".part")
    writer = pyedflib.EdfWriter(str(tmp), len(EDF_SIGNALS), file_type=pyedflib.FILETYPE_EDF)
    try:
        writer.setSignalHeaders(
            [
                {
                    "label": spec.label,
                    "dimension": spec.dimension,
                    "sample_frequency": rates[spec.label],
                    "physical_min": spec.physical_min,
                    "physical_max": spec.physical_max,
                    "digital_min": DIGITAL_MIN,
                    "digital_max": DIGITAL_MAX,
                    "transducer": spec.transducer,
                    "prefilter": "",
                }
                for spec in EDF_SIGNALS
            ]
        )
        writer.setPatientCode(plan.subject_id)
        writer.setPatientName("synthetic")
        writer.setEquipment("sleepsound_synth")
        writer.setStartdatetime(plan.recording_start + timedelta(seconds=start_s))
        for t, n in _chunks(start_s, stop_s, chunk_seconds):
            signals = synthesise_chunk(plan, t, n, sample_rate)
            writer.writeSamples([_to_digital(signals[spec.label], spec) for spec in EDF_SIGNALS], digital=True)
            if on_chunk:
                on_chunk(t + n)
    finally:
        writer.close()
    os.replace(tmp, path)


def _machine_staging(plan: NightPlan) -> list[tuple[float, str]]:
    """A device's staging: the user's with a share of epochs nudged to a neighbouring class."""
    rng = np.random.default_rng([plan.seed, plan.subject_index, 0xAC])
    neighbour = {"W": "N1", "N1": "N2", "N2": "N1", "N3": "N2", "R": "N1"}
    stages = list(plan.stages)
    flip = rng.random(len(stages)) < 0.15
    flip[len(stages) // 2] = True  # always differs from the user's
    return stage_changes_from_epochs([neighbour[s] if f else s for s, f in zip(stages, flip, strict=True)])


def _machine_events(plan: NightPlan) -> list[RmlEvent]:
    """A few device-scored events (leg movements), which readers must be able to tell apart."""
    rng = np.random.default_rng([plan.seed, plan.subject_index, 0xAD])
    n = max(1, int(rng.poisson(6.0 * plan.duration_s / 3600.0)))
    starts = np.sort(rng.uniform(0, max(1.0, plan.duration_s - 5.0), n))
    return [
        RmlEvent("Limb", "LegMovement", round(float(s), 1), round(float(rng.uniform(0.5, 4.0)), 1), True)
        for s in starts
    ]


def night_annotations(plan: NightPlan, segment_durations_s: Sequence[float], channels: Sequence[str]) -> RmlAnnotations:
    """The RML content for a plan: the events it synthesised, user staging, session layout."""
    events = [RmlEvent(e.family, e.type, e.start_s, e.duration_s, False) for e in plan.events]
    events += _machine_events(plan)
    events.sort(key=lambda e: (e.start_s, e.family, e.type, e.duration_s, e.machine))
    return RmlAnnotations(
        recording_start=plan.recording_start,
        duration_s=plan.duration_s,
        segment_durations_s=[float(d) for d in segment_durations_s],
        channels=list(channels),
        stage_changes=stage_changes_from_epochs(plan.stages),
        events=events,
    )


def write_psg_audio_night(
    plan: NightPlan,
    out_dir: str | os.PathLike[str],
    sample_rate: int = 48_000,
    part_seconds: int = 3600,
    chunk_seconds: int = 30,
    on_chunk: Callable[[float], None] | None = None,
) -> tuple[list[Path], Path]:
    """``APNEA_EDF/<id>/<id>[001].edf``... and ``APNEA_RML/<id>.rml`` for one night."""
    out = Path(out_dir)
    total = int(round(plan.duration_s))
    edf_dir = out / "APNEA_EDF" / plan.subject_id
    rml_dir = out / "APNEA_RML"
    edf_dir.mkdir(parents=True, exist_ok=True)
    rml_dir.mkdir(parents=True, exist_ok=True)
    stale = re.compile(re.escape(plan.subject_id) + r"\[\d{3}\]\.edf(\.part)?$")
    for old in edf_dir.iterdir():  # a previous, longer night must not leave extra parts behind
        if stale.match(old.name):
            old.unlink()
    paths: list[Path] = []
    durations: list[int] = []
    for number, start in enumerate(range(0, total, part_seconds), start=1):
        stop = min(total, start + part_seconds)
        path = edf_dir / _part_name(plan.subject_id, number)
        write_edf_part(path, plan, start, stop, sample_rate, chunk_seconds, on_chunk)
        paths.append(path)
        durations.append(stop - start)
    rml_path = rml_dir / f"{plan.subject_id}.rml"
    ann = night_annotations(plan, durations, [spec.label for spec in EDF_SIGNALS])
    tmp = rml_path.with_name(rml_path.name + ".part")
    tmp.write_bytes(rml_bytes(ann, _machine_staging(plan)))
    os.replace(tmp, rml_path)
    return paths, rml_path


def write_plain_night(
    plan: NightPlan,
    out_dir: str | os.PathLike[str],
    sample_rate: int = 48_000,
    audio_format: str = "flac",
    channels: Sequence[str] = ("Mic",),
    chunk_seconds: int = 30,
    on_chunk: Callable[[float], None] | None = None,
) -> tuple[Path, Path, Path]:
    """``<id>.flac`` (or .wav; channel 0 Mic, 1 Tracheal) with ``<id>.stages.csv`` and ``<id>.events.csv``."""
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"audio_format must be one of {AUDIO_FORMATS}, got {audio_format!r}")
    if not channels or any(c not in AUDIO_CHANNELS for c in channels):
        raise ValueError(f"plain channels must be taken from {AUDIO_CHANNELS}, got {tuple(channels)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    audio_path = out / f"{plan.subject_id}.{audio_format}"
    tmp = out / f"{plan.subject_id}.part.{audio_format}"
    with sf.SoundFile(
        tmp, "w", samplerate=sample_rate, channels=len(channels), format=audio_format.upper(), subtype="PCM_16"
    ) as handle:
        for t, n in _chunks(0, int(round(plan.duration_s)), chunk_seconds):
            signals = synthesise_chunk(plan, t, n, sample_rate, channels=channels)
            handle.write(np.stack([signals[c] for c in channels], axis=1))
            if on_chunk:
                on_chunk(t + n)
    os.replace(tmp, audio_path)

    stages_path = out / f"{plan.subject_id}.stages.csv"
    with open(stages_path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["epoch_index", "start_s", "stage"])
        for index, stage in enumerate(plan.stages):
            writer.writerow([index, format_seconds(index * EPOCH_SECONDS), stage])
    events_path = out / f"{plan.subject_id}.events.csv"
    with open(events_path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["start_s", "duration_s", "family", "type"])
        for event in plan.events:
            writer.writerow([format_seconds(event.start_s), format_seconds(event.duration_s), event.family, event.type])
    return audio_path, stages_path, events_path


class CohortRefused(ValueError):
    """What ``generate_cohort`` refuses before it writes anything (bad arguments, a target that is
    no folder), so the synth command can say it in one line with exit 2 while a ValueError raised
    half-way through writing stays an unexpected error."""


def check_cohort_args(
    n_subjects: int, hours: float, sample_rate: float, layout: str, cycle_minutes: float, seed: int
) -> None:
    """Refuse a cohort's shape before anything is sized or written: NaN and infinite lengths passed
    the old ``<= 0`` checks and failed later (``cannot convert float NaN to integer``) after the
    output folder had been made, and so did a negative seed (numpy's ``expected non-negative
    integer``) and a huge cycle (a MemoryError: the hypnogram's lists grew with it)."""
    if layout not in LAYOUTS:
        raise CohortRefused(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if n_subjects < 1 or not (math.isfinite(hours) and hours > 0):
        raise CohortRefused(
            f"need at least one subject and a positive, finite number of hours, got {n_subjects} and {hours}"
        )
    if not math.isfinite(sample_rate) or int(sample_rate) != sample_rate or sample_rate < 1000:
        raise CohortRefused(f"sample_rate must be a whole number of Hz >= 1000, got {sample_rate}")
    if not (math.isfinite(cycle_minutes) and 0 < cycle_minutes <= MAX_CYCLE_MINUTES):
        raise CohortRefused(
            f"cycle_minutes must be positive, finite and at most {MAX_CYCLE_MINUTES:g} (a day), got {cycle_minutes:g}"
        )
    if seed < 0:
        raise CohortRefused(f"seed must be a whole number >= 0, got {seed}")


def _refuse_other_cohort(out: Path, params: dict[str, object]) -> None:
    """Refuse a folder whose ``cohort.json`` says it holds a cohort made with other arguments: writing
    over it left the old nights' files beside the new ones while ``cohort.json`` named only the new,
    so the folder read as a cohort it was not."""
    path = out / "cohort.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("params")
    except (OSError, ValueError, AttributeError):
        old = None
    if old != json.loads(json.dumps(params)):
        shape = (
            f"seed {old.get('seed')}, {old.get('n_subjects')} night(s) of {old.get('hours')} h"
            if isinstance(old, dict)
            else "an unreadable cohort.json"
        )
        raise CohortRefused(
            f"{out} already holds a different synthetic cohort ({shape}); choose an empty folder or delete it first"
        )


def generate_cohort(
    out_dir: str | os.PathLike[str],
    n_subjects: int,
    hours: float,
    seed: int,
    sample_rate: int = 48_000,
    layout: str = "psg-audio",
    part_seconds: int = 3600,
    cycle_minutes: float = 90.0,
    audio_format: str = "flac",
    plain_channels: Sequence[str] = ("Mic",),
    chunk_seconds: int = 30,
    progress: ProgressFn | None = None,
    style: str = "classic",
    speech_source: str = "auto",
    ahi: float | None = None,
    snoring: bool = True,
    real_snores: str | os.PathLike[str] | None = None,
    real_background: str | os.PathLike[str] | None = None,
    generator_tv: bool = False,
    real_background_only: Sequence[str] | None = None,
    refuse_other: bool = False,
) -> list[SubjectSummary]:
    """Write ``n_subjects`` synthetic nights and ``cohort.json``; same arguments, same bytes.

    ``layout`` is ``"psg-audio"`` (EDF parts of ``part_seconds`` + RML) or ``"plain"``
    (one ``audio_format`` file per night + stage/event CSVs). ``cycle_minutes`` shortens
    sleep cycles so short demo nights still hold every stage. ``style`` is a generator
    style, ``mixed`` or a comma list (nights take the listed styles in turn); each night's
    style and parameters go into ``cohort.json``. The default ``classic`` writes exactly
    the files it always did. ``speech_source`` (auto, espeak, synth) voices styled TVs.
    ``ahi`` overrides every night's drawn AHI (0: nights without a breathing event, to measure
    false alarms); recorded in ``cohort.json`` only when given. ``snoring`` False: nights
    without any snore (``make_night_plan``), recorded in ``cohort.json`` only then.
    ``real_snores``: a folder of recorded snore clips laid on the snored breaths instead of the
    generator's snore (``synth.realsnores``); the folder, its digest and each night's clips go
    into ``cohort.json``. ``real_background``: a folder of recorded background clips (TV, talk)
    strung together as the night's TV instead of the generator's speech, a TV added at the
    tv-bedroom style's levels and schedule where the style has none (``synth.realbackground``);
    the folder, its digest and each night's TV go into ``cohort.json``; ``real_background_only``: play
    only these files of it (recorded in ``cohort.json``). ``generator_tv``: the same
    TV where a style has none, but the generator's own (the comparison for ``real_background``).
    ``refuse_other``: raise ``CohortRefused`` before writing when ``out_dir`` already holds a
    ``cohort.json`` made with other arguments (the synth command; same arguments rewrite the same bytes).
    """
    from sleepsound.synth.realbackground import add_generator_tv, describe, lay_real_background
    from sleepsound.synth.realsnores import BACKGROUND_CLIPS, SNORE_CLIPS, clip_folder, folder_digest, lay_real_snores
    from sleepsound.synth.styles import CLASSIC, resolve_speech_source, resolve_styles, style_for_night

    resolve_styles(style)  # refuse an unknown style before writing anything
    real_digest = folder_digest(real_snores) if real_snores is not None else None  # refuse a bad folder now
    bg_digest = (
        folder_digest(real_background, "background clips", real_background_only)
        if real_background is not None
        else None
    )
    check_cohort_args(n_subjects, hours, sample_rate, layout, cycle_minutes, seed)
    if (
        int(part_seconds) != part_seconds
        or part_seconds < 1
        or int(chunk_seconds) != chunk_seconds
        or chunk_seconds < 1
    ):
        raise ValueError("part_seconds and chunk_seconds must be positive whole seconds")
    params: dict[str, object] = dict(
        seed=seed,
        n_subjects=n_subjects,
        hours=hours,
        sample_rate=int(sample_rate),
        layout=layout,
        part_seconds=int(part_seconds),
        cycle_minutes=cycle_minutes,
        audio_format=audio_format,
        plain_channels=list(plain_channels),
        chunk_seconds=int(chunk_seconds),
    )
    if style != CLASSIC:  # a classic cohort's cohort.json stays byte-identical to before styles
        params["style"] = style
        speech_source = resolve_speech_source(speech_source)  # what voices its TVs and sleep talk
        params["speech"] = speech_source
    if ahi is not None:
        params["ahi"] = float(ahi)
    if not snoring:
        params["snoring"] = False
    if real_snores is not None:
        params["real_snores"] = str(Path(real_snores).resolve())
        params["real_snores_sha256"] = real_digest
        # the unusable files, by name, only where there are some: other cohorts' cohort.json stays as it was
        if (listing := clip_folder(real_snores, SNORE_CLIPS).record())["skipped"]:
            params["real_snores_clips"] = listing
    if real_background is not None:
        params["real_background"] = str(Path(real_background).resolve())
        params["real_background_sha256"] = bg_digest
        if (listing := clip_folder(real_background, BACKGROUND_CLIPS).record())["skipped"]:
            params["real_background_clips"] = listing
        if real_background_only is not None:
            params["real_background_files"] = sorted(real_background_only)
    if generator_tv:
        params["generator_tv"] = True
    out = Path(out_dir)
    if refuse_other:
        _refuse_other_cohort(out, params)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission: nothing written yet
        raise CohortRefused(f"cannot write a cohort into {out}: {exc.strerror or exc}") from exc
    summaries: list[SubjectSummary] = []
    for index in range(n_subjects):
        pid = patient_id(seed, index)
        night_style = style_for_night(style, index)
        plan = make_night_plan(
            pid,
            hours,
            seed,
            subject_index=index,
            cycle_minutes=cycle_minutes,
            ahi=ahi,
            style=night_style,
            speech_source=speech_source,
            snoring=snoring,
        )
        if real_snores is not None:
            plan = lay_real_snores(plan, real_snores)
        if real_background is not None:
            plan = lay_real_background(plan, real_background, real_background_only)
        elif generator_tv:
            plan = add_generator_tv(plan)

        def on_chunk(done: float, index: int = index, pid: str = pid, total: float = plan.duration_s) -> None:
            if progress is not None:
                progress(Progress(index, n_subjects, pid, float(done), total))

        if layout == "psg-audio":
            edfs, rml_path = write_psg_audio_night(
                plan, out, sample_rate, int(part_seconds), int(chunk_seconds), on_chunk
            )
            audio, annotations = tuple(map(str, edfs)), (str(rml_path),)
        else:
            audio_path, stages_path, events_path = write_plain_night(
                plan, out, sample_rate, audio_format, plain_channels, int(chunk_seconds), on_chunk
            )
            audio, annotations = (str(audio_path),), (str(stages_path), str(events_path))
        summaries.append(
            SubjectSummary(
                subject_id=pid,
                hours=plan.duration_s / 3600.0,
                n_epochs=plan.n_epochs,
                ahi=round(plan.ahi, 2),
                target_ahi=round(plan.target_ahi, 2),
                severity=plan.severity,
                snorer=plan.sound.snorer,
                stage_counts=plan.stage_counts(),
                audio_paths=audio,
                annotation_paths=annotations,
                event_counts=dict(sorted(Counter(e.type for e in plan.events).items())),
                style=night_style,
                style_params=plan.style.to_json() if plan.style is not None else None,
                real_snore_clips=plan.real_snores.clips if plan.real_snores is not None else None,
                real_background=describe(plan.real_background) if plan.real_background is not None else None,
            )
        )
    _write_cohort_json(out, summaries, params)
    return summaries


def _write_cohort_json(out: Path, summaries: list[SubjectSummary], params: dict[str, object]) -> None:
    def rel(path: str) -> str:
        return Path(path).relative_to(out).as_posix() if Path(path).is_relative_to(out) else path

    doc = {
        "generator": "sleepsound.synth",
        "version": GENERATOR_VERSION,
        "seed": params["seed"],
        "params": params,
        "stage_names": {stage: STAGE5_TO_RML[stage] for stage in ("W", "N1", "N2", "N3", "R")},
        "subjects": [
            {
                "subject_id": s.subject_id,
                "hours": s.hours,
                "n_epochs": s.n_epochs,
                "ahi": s.ahi,
                "target_ahi": s.target_ahi,
                "severity": s.severity,
                "snorer": s.snorer,
                "stage_counts": s.stage_counts,
                "event_counts": s.event_counts,
                "audio_paths": [rel(p) for p in s.audio_paths],
                "annotation_paths": [rel(p) for p in s.annotation_paths],
                **({"style": s.style, "style_params": s.style_params} if "style" in params else {}),
                **({"real_snore_clips": list(s.real_snore_clips)} if s.real_snore_clips is not None else {}),
                **({"real_background": s.real_background} if s.real_background is not None else {}),
            }
            for s in summaries
        ],
    }
    tmp = out / "cohort.json.part"
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / "cohort.json")


def night_styles(cohort_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Subject id -> generator style of a written cohort (``classic`` for cohorts made before styles),
    so an evaluation can hold styles out of training."""
    path = Path(cohort_dir) / "cohort.json"
    try:
        doc = json.loads(path.read_text())
        return {s["subject_id"]: s.get("style", "classic") for s in doc["subjects"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable synthetic cohort description ({exc})") from exc


def expected_parts(hours: float, part_seconds: int = 3600) -> int:
    """Number of EDF parts a night of ``hours`` is split into (after rounding to 30-s epochs)."""
    total = max(1, round(hours * 3600.0 / EPOCH_SECONDS)) * EPOCH_SECONDS
    return math.ceil(total / part_seconds)
