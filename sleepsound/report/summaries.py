"""Night-level numbers a clinician reads, from a per-epoch hypnogram (true or predicted).

Definitions (3-class stages, 30-s epochs; the recording's start is taken as lights out
and its end as lights on):

- time in bed (TIB): first to last epoch of the recording, every epoch counted,
  including invalid/missing ones (stage None) and gaps in ``epoch_index``.
- total sleep time (TST): NREM + REM epochs.
- sleep efficiency: TST / TIB (a fraction in [0, 1]).
- sleep onset latency (SOL): start of the recording to the first NREM or REM epoch.
- WASO: Wake epochs from sleep onset to the end of the recording (lights on), the AASM
  reading (TRT - SOL - TST when every epoch is scored). Epochs of unknown stage are not
  counted as wake.
- REM latency: sleep onset to the first REM epoch.
- stage percentages: NREM and REM as % of TST; Wake as % of the epochs with a known stage.
- epochs scored: epochs with a known stage (Wake/NREM/REM).

Latencies are NaN when there is no sleep (or no REM); percentages are NaN when their
denominator is 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from sleepsound.labels.vocabulary import EPOCH_SECONDS, STAGES_3

SLEEP = ("NREM", "REM")
SUMMARY_FIELDS = (
    "n_epochs",
    "n_epochs_scored",
    "time_in_bed_min",
    "total_sleep_time_min",
    "sleep_efficiency",
    "sleep_onset_latency_min",
    "waso_min",
    "rem_latency_min",
    "pct_wake",
    "pct_nrem",
    "pct_rem",
)


def _clean(stage: Any) -> str | None:
    if stage is None or (isinstance(stage, float) and np.isnan(stage)) or stage is pd.NA:
        return None
    if stage not in STAGES_3:
        raise ValueError(f"stage {stage!r} is not one of {STAGES_3} or None")
    return str(stage)


def night_summary(stages: Sequence[str | None], epoch_seconds: float = EPOCH_SECONDS) -> dict[str, Any]:
    """Summary of one night given every epoch's stage in order (None = unknown/invalid)."""
    minutes = epoch_seconds / 60.0
    arr = np.array([_clean(s) or "" for s in stages], dtype=object)
    n = len(arr)
    asleep = np.isin(arr, SLEEP)
    n_sleep = int(asleep.sum())
    n_wake = int((arr == "Wake").sum())
    n_rem = int((arr == "REM").sum())
    scored = n_sleep + n_wake
    onset = int(np.argmax(asleep)) if n_sleep else None
    first_rem = int(np.argmax(arr == "REM")) if n_rem else None
    return {
        "n_epochs": n,
        "n_epochs_scored": scored,
        "time_in_bed_min": n * minutes,
        "total_sleep_time_min": n_sleep * minutes,
        "sleep_efficiency": n_sleep / n if n else float("nan"),
        "sleep_onset_latency_min": onset * minutes if onset is not None else float("nan"),
        "waso_min": int((arr[onset:] == "Wake").sum()) * minutes if onset is not None else float("nan"),
        "rem_latency_min": (first_rem - onset) * minutes if first_rem is not None else float("nan"),
        "pct_wake": 100.0 * n_wake / scored if scored else float("nan"),
        "pct_nrem": 100.0 * (n_sleep - n_rem) / n_sleep if n_sleep else float("nan"),
        "pct_rem": 100.0 * n_rem / n_sleep if n_sleep else float("nan"),
    }


def night_stages(night: pd.DataFrame, stage_column: str = "stage") -> list[str | None]:
    """One recording's stages on a gap-free epoch grid: rows missing between its first
    and last ``epoch_index`` become None."""
    idx = night["epoch_index"].to_numpy(dtype=np.int64)
    if len(np.unique(idx)) != len(idx):
        raise ValueError("duplicate epoch_index within a recording")
    if not len(idx):
        return []
    grid: list[str | None] = [None] * int(idx.max() - idx.min() + 1)
    for i, stage in zip(idx - idx.min(), night[stage_column], strict=True):
        grid[int(i)] = _clean(stage)
    return grid


def summarise_nights(
    epochs: pd.DataFrame, stage_column: str = "stage", epoch_seconds: float = EPOCH_SECONDS
) -> pd.DataFrame:
    """One row per ``recording_id`` (sorted) from a per-epoch table.

    ``epochs`` has columns ``recording_id, epoch_index`` and ``stage_column`` (Wake/NREM/
    REM or None/NaN); rows may come in any order, and epochs absent from the table count
    as unknown. Works for scored and for predicted stages (pass the column name).
    """
    missing = [c for c in ("recording_id", "epoch_index", stage_column) if c not in epochs.columns]
    if missing:
        raise ValueError(f"epoch table lacks columns {missing}")
    rows = []
    for rec, night in epochs.groupby("recording_id", sort=True):
        rows.append({"recording_id": rec, **night_summary(night_stages(night, stage_column), epoch_seconds)})
    return pd.DataFrame(rows, columns=["recording_id", *SUMMARY_FIELDS])


# AHI severity bands (method.md, "Clinical definitions"): < 5 normal, 5-15 mild, 15-30 moderate, >= 30 severe.
SEVERITY_BANDS: tuple[tuple[float, str], ...] = (
    (5.0, "normal"),
    (15.0, "mild"),
    (30.0, "moderate"),
    (math.inf, "severe"),
)
SEVERITIES = tuple(name for _, name in SEVERITY_BANDS)


def severity(ahi: float) -> str | None:
    """The clinical severity class of an AHI; None when the AHI is unknown (no sleep)."""
    if ahi is None or not math.isfinite(ahi):
        return None
    if ahi < 0:
        raise ValueError(f"AHI cannot be negative, got {ahi}")
    return next(name for bound, name in SEVERITY_BANDS if ahi < bound)


def breathing_summary(
    stages: Sequence[str | None], events: Sequence[float], snore: Sequence[float], epoch_seconds: float = EPOCH_SECONDS
) -> dict[str, Any]:
    """Night-level breathing figures from per-epoch values, counted over sleep epochs only.

    ``events``: apnoeas + hypopnoeas per epoch: scored onsets (``n_apnea + n_hypopnea``) for
    the reference, or a model's expected count (its probability of an event-bearing epoch)
    for an estimate. ``snore``: the share of each epoch with snoring (0-1). AHI is events
    per hour of sleep; the snore index is snoring minutes per hour of sleep.
    """
    if not len(stages) == len(events) == len(snore):
        raise ValueError("stages, events and snore need one value per epoch")
    asleep = np.array([_clean(s) in ("NREM", "REM") for s in stages], dtype=bool)
    sleep_hours = asleep.sum() * epoch_seconds / 3600.0
    ev = np.nan_to_num(np.asarray(events, dtype=np.float64))[asleep]
    sn = np.nan_to_num(np.asarray(snore, dtype=np.float64))[asleep]
    ahi = float(ev.sum() / sleep_hours) if sleep_hours else float("nan")
    return {
        "ahi": ahi,
        "severity": severity(ahi),
        "respiratory_events": float(ev.sum()),
        "snore_index": float(sn.sum() * epoch_seconds / 60.0 / sleep_hours) if sleep_hours else float("nan"),
    }


# Below this much estimated sleep an AHI is flagged: with 2 h of sleep one event more or less moves
# it by 0.5/h, and the sleep estimate itself (from sound alone) can be off by tens of minutes, so
# the ratio mostly reflects the denominator. Home sleep apnoea tests ask for at least 4 h of
# recording for the same reason; 2 h of sleep is the least on which the AASM lets a split-night
# diagnostic part be scored.
MIN_SLEEP_HOURS_FOR_AHI = 2.0

# Below this share of the recording with breathing heard (``breathing.heard``) the indices are flagged:
# events are found only where breath sounds are heard, so a low REI there is no sign of a normal night.
# The generator's nights are heard over 60% of the time (seeds 163 and 181: 144 nights, the least 0.62,
# a twentieth under 0.72), PSG-Audio's ambient microphone all through; a room whose noise buries the
# breaths, not at all. Home sleep apnoea tests likewise report an index only over enough technically
# adequate airflow signal (the AASM asks for 4 h).
MIN_HEARD_SHARE = 0.5


# How the 5-class head's stages (and the 3-class ones) fold into the 3 classes sleep is measured in.
TO_STAGE3 = {
    "W": "Wake",
    "R": "REM",
    "N1": "NREM",
    "N2": "NREM",
    "N3": "NREM",
    "Wake": "Wake",
    "REM": "REM",
    "NREM": "NREM",
}
EVENT_TYPES = ("apnea", "hypopnea")


def stage3_of(stage: Any) -> str | None:
    """A 3- or 5-class stage name in 3 classes (None for anything else)."""
    return TO_STAGE3.get(stage) if isinstance(stage, str) else None


def ahi_by_stage(
    onset_s: Sequence[float] | np.ndarray,
    epoch_start_s: Sequence[float] | np.ndarray,
    stages: Sequence[str | None],
    *,
    types: Sequence[str | None] | None = None,
    weights: Sequence[float] | np.ndarray | None = None,
    epoch_seconds: float = EPOCH_SECONDS,
) -> dict[str, float]:
    """Events per hour of sleep overall, in REM, in NREM and per event type.

    An event counts in the stage of the epoch holding its onset, and only when that epoch is
    sleep (AASM: events are scored during sleep); events outside every epoch are dropped.
    ``stages``: 3- or 5-class names (None unknown). ``weights``: an event's count (1 for a
    detected event; an epoch's expected count when the events are per-epoch estimates).
    ``types``: 'apnea' / 'hypopnea' per event; without them the per-type AHIs are NaN.
    An AHI whose hours of sleep are 0 is NaN.
    """
    onsets = np.asarray(onset_s, dtype=np.float64)
    starts = np.asarray(epoch_start_s, dtype=np.float64)
    if len(starts) != len(stages):
        raise ValueError(f"epoch_start_s and stages need one entry per epoch: {len(starts)} and {len(stages)}")
    w = np.ones(len(onsets)) if weights is None else np.nan_to_num(np.asarray(weights, dtype=np.float64))
    if len(w) != len(onsets) or (types is not None and len(types) != len(onsets)):
        raise ValueError("onset_s, weights and types need one entry per event")
    order = np.argsort(starts, kind="stable")
    starts = starts[order]
    stage3 = np.array([stage3_of(stages[i]) or "" for i in order], dtype=object)
    hours = {s: float((stage3 == s).sum()) * epoch_seconds / 3600.0 for s in ("REM", "NREM")}
    hours["sleep"] = hours["REM"] + hours["NREM"]

    event_stage = np.full(len(onsets), "", dtype=object)
    if len(starts):
        where = np.searchsorted(starts, onsets, side="right") - 1
        idx = np.clip(where, 0, len(starts) - 1)
        inside = (where >= 0) & (onsets < starts[idx] + epoch_seconds)
        event_stage[inside] = stage3[idx[inside]]
    counts = {s: float(w[event_stage == s].sum()) for s in ("REM", "NREM")}
    asleep = np.isin(event_stage, ("REM", "NREM"))

    def rate(n: float, h: float) -> float:
        return n / h if h > 0 else math.nan

    out = {
        "events": counts["REM"] + counts["NREM"],
        "sleep_hours": hours["sleep"],
        "ahi": rate(counts["REM"] + counts["NREM"], hours["sleep"]),
        "ahi_rem": rate(counts["REM"], hours["REM"]),
        "ahi_nrem": rate(counts["NREM"], hours["NREM"]),
    }
    kinds = np.array([t if isinstance(t, str) else "" for t in types], dtype=object) if types is not None else None
    for kind in EVENT_TYPES:
        n = float(w[asleep & (kinds == kind)].sum()) if kinds is not None else math.nan
        out[f"events_{kind}"] = n
        out[f"ahi_{kind}"] = rate(n, hours["sleep"]) if kinds is not None else math.nan
    return out


def event_indices(
    events: Sequence[dict[str, Any]],
    stages: Sequence[str | None],
    epoch_seconds: float = EPOCH_SECONDS,
    recording_seconds: float | None = None,
    heard_s: Sequence[float | None] | None = None,
) -> dict[str, Any]:
    """AHI and REI of one night from its detected events and its (estimated) hypnogram.

    * ``ahi``: events starting in an epoch of estimated sleep per hour of estimated sleep;
      ``severity`` its class (< 5, 5-15, 15-30, >= 30).
    * ``rei`` (respiratory event index): every event per hour of recording, as home sleep
      apnoea tests report it (they cannot see sleep); ``severity_rei`` its class.
    * ``n_apnea``, ``n_hypopnea``: all events of the night by type.
    * ``ahi_warning``: a sentence when estimated sleep is under ``MIN_SLEEP_HOURS_FOR_AHI``
      (then read the REI), else None.
    * ``breathing_heard``: the share of the recording in which breathing was heard (``heard_s``: seconds
      per epoch, ``breathing.heard``; NaN without them), and ``events_warning``: a sentence when it is under
      ``MIN_HEARD_SHARE`` (a low index there is no sign of a normal night), else None.
    """
    n = len(stages)
    hours = (recording_seconds if recording_seconds is not None else n * epoch_seconds) / 3600.0
    checked = [_clean(s) for s in stages]
    onsets = [float(e["start_s"]) for e in events]
    during_sleep = ahi_by_stage(onsets, np.arange(n) * epoch_seconds, checked, epoch_seconds=epoch_seconds)
    sleep_hours, ahi = during_sleep["sleep_hours"], during_sleep["ahi"]
    rei = len(events) / hours if hours else float("nan")
    warning = (
        f"estimated sleep {sleep_hours:.1f} h is under {MIN_SLEEP_HOURS_FOR_AHI:g} h: "
        "the AHI is unreliable, read the REI"
        if sleep_hours < MIN_SLEEP_HOURS_FOR_AHI
        else None
    )
    heard = breathing_heard(heard_s, hours)
    return {
        "ahi": float(ahi),
        "severity": severity(ahi),
        "rei": float(rei),
        "severity_rei": severity(rei),
        "n_apnea": sum(e["type"] == "apnea" for e in events),
        "n_hypopnea": sum(e["type"] == "hypopnea" for e in events),
        "ahi_warning": warning,
        "breathing_heard": heard,
        "events_warning": events_warning(heard),
    }


def breathing_heard(heard_s: Sequence[float | None] | None, recording_hours: float) -> float:
    """The share of a recording in which breathing was heard, from its epochs' seconds heard (None or NaN
    where unknown); NaN when none is known (a run from before ``breath_heard_s``)."""
    if heard_s is None or recording_hours <= 0:
        return math.nan
    known = np.array([math.nan if v is None else float(v) for v in heard_s], dtype=np.float64)
    if not np.isfinite(known).any():
        return math.nan
    return min(1.0, float(np.nansum(known)) / 3600.0 / recording_hours)


def events_warning(heard: float) -> str | None:
    """A sentence when breathing was heard in under ``MIN_HEARD_SHARE`` of the recording, else None."""
    if not heard < MIN_HEARD_SHARE:  # NaN: unknown, no warning
        return None
    return (
        f"breathing was heard in {heard:.0%} of the recording: events are found only where it is heard, "
        "so a low REI or AHI does not rule out apnoea (a microphone nearer the sleeper hears more)"
    )


SNORE_FROM_FRAMES = "per-second snoring head"
SNORE_FROM_EPOCHS = "per-epoch estimate (no per-second snoring head: P(snore) x snoring share of a snore epoch)"


def snore_shares(
    night: pd.DataFrame, snore_share_per_snore_epoch: float | None, epoch_seconds: float = EPOCH_SECONDS
) -> tuple[np.ndarray | None, str | None]:
    """Each epoch's estimated snoring share (0-1) and where it comes from: the per-second head's
    seconds called snoring where the predictions have them, else the respiratory head's
    P(snore) x the training side's snoring share of a snore epoch (``snore_share_per_snore_epoch``,
    None when there is no respiratory head), else (None, None)."""
    if "snore_s_pred" in night and night["snore_s_pred"].notna().any():
        return night["snore_s_pred"].to_numpy(np.float64, na_value=np.nan) / epoch_seconds, SNORE_FROM_FRAMES
    if snore_share_per_snore_epoch is not None and "prob_snore" in night and night["prob_snore"].notna().any():
        return night["prob_snore"].to_numpy(
            np.float64, na_value=np.nan
        ) * snore_share_per_snore_epoch, SNORE_FROM_EPOCHS
    return None, None


def snoring_bouts(night: pd.DataFrame, cut: float, epoch_seconds: float = EPOCH_SECONDS) -> list[dict[str, float]]:
    """Runs of consecutive frames called snoring (P > ``cut``) in one night's predictions, across epoch
    boundaries where the epochs follow each other: ``{start_s, end_s, mean_prob}`` each, by time."""
    bouts: list[dict[str, float]] = []
    open_bout: list[float] | None = None  # [start, end, sum of P, frames]
    for start, frames in zip(night["start_s"].to_numpy(float), night["snore_frames"], strict=True):
        if frames is None or (isinstance(frames, float) and math.isnan(frames)):
            continue
        probs = np.asarray(frames, dtype=np.float64)
        step = epoch_seconds / len(probs)
        for k, p in enumerate(probs):
            t = float(start + k * step)
            if p > cut and open_bout is not None and abs(open_bout[1] - t) < 1e-6:
                open_bout[1], open_bout[2], open_bout[3] = t + step, open_bout[2] + p, open_bout[3] + 1
            elif p > cut:
                if open_bout is not None:
                    bouts.append(_bout(open_bout))
                open_bout = [t, t + step, p, 1.0]
    if open_bout is not None:
        bouts.append(_bout(open_bout))
    return bouts


def _bout(b: list[float]) -> dict[str, float]:
    return {"start_s": b[0], "end_s": b[1], "mean_prob": b[2] / b[3]}
