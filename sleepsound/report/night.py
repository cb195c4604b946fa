"""The numbers of one night's clinical report: stages on the clock, sleep measures, and the AHI
overall, in REM vs NREM and by event type.

A sleep service's night report reads like this (AASM manual's summary statistics): time in bed
from lights off to lights on, minutes and percentages of every stage, latencies, WASO,
efficiency, and the respiratory events per hour of sleep. Here every figure is an estimate
from the audio heads' predictions; the page and the PDF (``night_page``) say so.

Breathing events come from the run's per-night event table
(``runs/<run-id>/events/recording_id=<rec>/part-0.parquet``: start_s, end_s, type, confidence)
when the run wrote one; older runs have only per-epoch probabilities, and the AHI is then the
expected count of events per epoch (P(apnoea-hypopnoea) x events per event epoch), with no
split by event type and no event durations. ``NightFigures.ahi_source`` says which.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from sleepsound.breathing.store import events_path
from sleepsound.core.storage import RootLike, open_root
from sleepsound.io.edf_header import EdfHeaderError, read_edf_header
from sleepsound.io.rml import MAX_NIGHT_S
from sleepsound.labels.vocabulary import EPOCH_SECONDS
from sleepsound.report.summaries import (
    EVENT_TYPES,
    MIN_SLEEP_HOURS_FOR_AHI,
    SNORE_FROM_FRAMES,
    ahi_by_stage,
    breathing_heard,
    breathing_summary,
    events_warning,
    night_summary,
    severity,
    snore_shares,
    stage3_of,
)

# The five AASM stages as the 5-class head names them, in the report's order (W, R, N1, N2, N3),
# and how each folds into the 3-class stages the sleep measures are defined on.
STAGE5_ORDER: tuple[str, ...] = ("W", "R", "N1", "N2", "N3")
STAGE3_ORDER: tuple[str, ...] = ("Wake", "REM", "NREM")
STAGE_NAMES = {
    "W": "Wake",
    "R": "REM",
    "N1": "N1",
    "N2": "N2",
    "N3": "N3",
    "Wake": "Wake",
    "REM": "REM",
    "NREM": "NREM",
}
EVENT_COLUMNS = ("recording_id", "start_s", "end_s", "type", "confidence")
NOT_FROM_AUDIO = {
    "SpO2 (oxygen saturation)": "needs a pulse oximeter",
    "ODI (oxygen desaturation index)": "needs a pulse oximeter",
    "arousal index": "needs EEG",
    "periodic limb movements": "needs leg EMG",
}


def read_night_events(root: RootLike, run_id: str, recording_id: str) -> pd.DataFrame | None:
    """The run's detected breathing events of one night, or None when the run wrote no event table."""
    fs, root_path = open_root(root)
    path = events_path(root_path, run_id, recording_id)
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as handle:
        frame = pd.read_parquet(handle)
    if "recording_id" not in frame.columns:  # hive partitions may keep the id in the folder only
        frame.insert(0, "recording_id", recording_id)
    missing = [c for c in EVENT_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: the event table lacks columns {missing}")
    bad = set(frame["type"].dropna().astype(str)) - set(EVENT_TYPES)
    if bad:
        raise ValueError(f"{path}: unknown event types {sorted(bad)}; expected {list(EVENT_TYPES)}")
    if ((frame["end_s"] < frame["start_s"]) | frame["start_s"].isna()).any():
        raise ValueError(f"{path}: an event ends before it starts or has no start")
    return frame.sort_values("start_s", kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class NightFigures:
    """Everything one night's report shows, computed once for the HTML page and the PDF alike."""

    recording_id: str
    subject_id: str
    split: str
    start: datetime | None  # the recording's clock start (lights off), when its files record it
    data_source: str
    models: dict[str, str]
    stage_head: Literal["stage5", "stage3"]
    start_s: np.ndarray  # per epoch, seconds from the recording's start
    stages: list[str | None]  # the shown head's stages (5-class names when stage_head is stage5)
    prob_event: np.ndarray  # per epoch P(apnoea-hypopnoea); NaN when no respiratory head
    prob_snore: np.ndarray  # per epoch P(snoring); NaN when no respiratory head
    events: pd.DataFrame | None  # the detected events (event table), None for older runs
    summary: dict[str, Any]  # summaries.night_summary of the stages folded to 3 classes
    stage_minutes: dict[str, float]
    ahi: dict[str, float]  # ahi_by_stage's dict (estimate)
    ahi_scored: dict[str, float] | None  # the same from the scored events (labelled nights)
    ahi_source: str
    snore_index: float
    longest_event_s: float
    epoch_seconds: float = EPOCH_SECONDS
    notes: list[str] = field(default_factory=list)
    # Where the snoring row and the snore index come from: the per-second head (``prob_snore`` then
    # holds each epoch's share of seconds called snoring) or the per-epoch P(snore) (None: neither).
    snore_source: str | None = None
    breathing_heard: float = math.nan  # share of the recording with breathing heard (NaN: older runs)
    heard_s: np.ndarray | None = None  # per epoch, seconds with breathing heard (NaN unknown; None: older runs)

    @property
    def rei(self) -> float:
        """Every detected event per hour of recording (what home sleep apnoea tests report, sleep
        unseen); NaN without an event table."""
        hours = self.duration_s / 3600.0
        return len(self.events) / hours if self.events is not None and hours > 0 else math.nan

    @property
    def lights_on(self) -> datetime | None:
        return self.start + timedelta(seconds=self.duration_s) if self.start is not None else None

    @property
    def duration_s(self) -> float:
        return float(self.start_s.max() + self.epoch_seconds - self.start_s.min()) if len(self.start_s) else 0.0

    @property
    def severity(self) -> str | None:
        return severity(self.ahi["ahi"])

    @property
    def stage_order(self) -> tuple[str, ...]:
        return STAGE5_ORDER if self.stage_head == "stage5" else STAGE3_ORDER


def _strings(values: pd.Series) -> list[str | None]:
    return [v if isinstance(v, str) else None for v in values]


def night_figures(
    night: pd.DataFrame,
    *,
    events: pd.DataFrame | None,
    start: datetime | None,
    data_source: str,
    models: dict[str, str],
    events_per_event_epoch: float | None,
    snore_share_per_snore_epoch: float | None,
    epoch_seconds: float = EPOCH_SECONDS,
) -> NightFigures:
    """One night's report figures from its prediction rows (``predictions`` schema).

    The 5-class head's stages are shown where it predicted every scored epoch of the night,
    the 3-class head's otherwise; the sleep measures are those stages folded to Wake/NREM/REM,
    so the table and the hypnogram never disagree. ``events_per_event_epoch`` /
    ``snore_share_per_snore_epoch``: the respiratory head's training-side factors (None when
    the run has no respiratory head).
    """
    placed = night["start_s"].to_numpy(np.float64, na_value=np.nan)
    # an epoch with no time in the night (NaN, inf, 1e9 s in a damaged predictions file) cannot be
    # drawn: NaN stopped every night's report, 1e9 s drew a tick an hour for 30 years
    night = night[np.isfinite(placed) & (np.abs(placed) <= MAX_NIGHT_S)].sort_values("start_s", kind="stable")
    starts = night["start_s"].to_numpy(np.float64)
    five = _strings(night["stage5_pred"]) if "stage5_pred" in night else []
    three = _strings(night["stage_pred"])
    use5 = bool(five) and any(five) and all(f is not None for f, t in zip(five, three, strict=True) if t is not None)
    stages = five if use5 else three
    folded = [stage3_of(s) for s in stages]
    summary = night_summary(folded, epoch_seconds)
    names = STAGE5_ORDER if use5 else STAGE3_ORDER
    stage_minutes = {s: sum(1 for x in stages if x == s) * epoch_seconds / 60.0 for s in names}

    resp = events_per_event_epoch is not None and night["prob_apnea_hypopnea"].notna().any()
    prob_event = night["prob_apnea_hypopnea"].to_numpy(np.float64, na_value=np.nan)
    prob_snore = night["prob_snore"].to_numpy(np.float64, na_value=np.nan)
    notes: list[str] = []
    longest = math.nan
    if events is not None:
        ahi = ahi_by_stage(
            events["start_s"].to_numpy(np.float64),
            starts,
            stages,
            types=_strings(events["type"]),
            epoch_seconds=epoch_seconds,
        )
        longest = float((events["end_s"] - events["start_s"]).max()) if len(events) else 0.0
        source = "the run's detected events (event table)"
    elif resp:
        ahi = ahi_by_stage(
            starts + epoch_seconds / 2.0,
            starts,
            stages,
            weights=np.nan_to_num(prob_event) * float(events_per_event_epoch or 1.0),
            epoch_seconds=epoch_seconds,
        )
        source = "per-epoch probabilities (this run wrote no event table): expected events per epoch"
        notes.append(
            "event types and durations need the event table: apnoea/hypopnoea split and longest event not shown"
        )
    else:
        ahi = ahi_by_stage([], starts, stages, epoch_seconds=epoch_seconds)
        ahi = dict.fromkeys(ahi, math.nan)
        source = "none: this run has no respiratory head and no event table"
    snore_index = math.nan
    shares, snore_source = snore_shares(night, snore_share_per_snore_epoch if resp else None, epoch_seconds)
    if shares is not None:
        snore_index = breathing_summary(folded, np.zeros(len(folded)), np.nan_to_num(shares), epoch_seconds)[
            "snore_index"
        ]
    recording_hours = float(starts.max() + epoch_seconds - starts.min()) / 3600.0 if len(starts) else 0.0
    heard_s = night["breath_heard_s"].to_numpy(np.float64, na_value=np.nan) if "breath_heard_s" in night else None
    heard = breathing_heard(None if heard_s is None else heard_s.tolist(), recording_hours)
    if (unheard := events_warning(heard)) is not None:
        notes.append(unheard)
    sleep_hours = summary["total_sleep_time_min"] / 60.0
    if sleep_hours < MIN_SLEEP_HOURS_FOR_AHI:
        notes.append(
            f"{sleep_hours:.1f} h of estimated sleep (under {MIN_SLEEP_HOURS_FOR_AHI:g} h): read the REI, not the AHI"
        )
    scored = None
    if "events_true" in night and night["events_true"].notna().any() and night["stage_true"].notna().any():
        scored = ahi_by_stage(
            starts + epoch_seconds / 2.0,
            starts,
            _strings(night["stage_true"]),
            weights=night["events_true"].to_numpy(np.float64, na_value=0.0),
            epoch_seconds=epoch_seconds,
        )
    return NightFigures(
        recording_id=str(night["recording_id"].iloc[0]),
        subject_id=str(night["subject_id"].iloc[0]),
        split=str(night["split"].iloc[0]),
        start=start,
        data_source=data_source,
        models=models,
        stage_head="stage5" if use5 else "stage3",
        start_s=starts,
        stages=stages,
        prob_event=prob_event if resp else np.full(len(starts), np.nan),
        prob_snore=shares
        if snore_source == SNORE_FROM_FRAMES and shares is not None
        else prob_snore
        if resp
        else np.full(len(starts), np.nan),
        events=events,
        summary=summary,
        stage_minutes=stage_minutes,
        ahi=ahi,
        ahi_scored=scored,
        ahi_source=source,
        snore_index=float(snore_index),
        longest_event_s=longest,
        epoch_seconds=epoch_seconds,
        notes=notes,
        snore_source=snore_source,
        breathing_heard=heard,
        heard_s=heard_s,
    )


def recording_start(source_uris: Sequence[str], layout: str) -> datetime | None:
    """The clock time a night's first EDF part starts at (its header), or None when unknown.

    Plain audio files carry no trustworthy start time, and remote parts are not opened just
    for a header: their reports give times from the recording's start instead.
    """
    if layout != "psg-audio" or not source_uris:
        return None
    first = str(source_uris[0])
    if "://" in first and not first.startswith("file://"):
        return None
    try:
        return read_edf_header(first.removeprefix("file://")).start
    except (OSError, EdfHeaderError):
        return None


def subject_trends(nights: Sequence[NightFigures]) -> pd.DataFrame:
    """One row per night of every subject with two or more nights in the run, in date order:
    AHI, snore index and sleep efficiency (the figures home snore trackers follow)."""
    rows = [
        {
            "subject_id": n.subject_id,
            "recording_id": n.recording_id,
            "study_date": n.start.date().isoformat() if n.start is not None else None,
            "start": n.start,
            "ahi": n.ahi["ahi"],
            "snore_index": n.snore_index,
            "sleep_efficiency": n.summary["sleep_efficiency"],
        }
        for n in nights
    ]
    frame = pd.DataFrame(
        rows, columns=["subject_id", "recording_id", "study_date", "start", "ahi", "snore_index", "sleep_efficiency"]
    )
    if frame.empty:
        return frame
    several = frame.groupby("subject_id")["recording_id"].transform("size") >= 2
    frame = frame[several].copy()
    frame["_order"] = frame["start"].map(lambda t: t.timestamp() if t is not None and not pd.isna(t) else math.inf)
    return (
        frame.sort_values(["subject_id", "_order", "recording_id"])
        .drop(columns=["_order", "start"])
        .reset_index(drop=True)
    )
