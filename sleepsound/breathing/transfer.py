"""Honest transfer evaluation of the breathing-event detector: whole generator styles held out.

A detector (or a threshold, or a head) tuned on the nights it is scored on says nothing about
the nights a clinic will bring. So the cohort is built in several generator styles
(``synth.styles``: other breath and snore models, rooms, microphones, fan, HVAC, TV), the
styles are split into a development set and a held-out set, anything fitted (here the
detector's minimum confidence) is fitted on the development styles only, and the figures are
reported per style, per set and overall:

* per-night REI error (events per hour of recording) and AHI error (per hour of *scored* sleep:
  the detector alone has no sleep estimate, so the scored stages are its denominator);
* event-level precision, recall and F1 per type (found = overlapped by a detection of the type);
* the clean nights' false events per hour: nights generated with no event at all (``ahi=0``),
  in every style, so with the style's fan, HVAC or TV in the background.

With trained heads (``breathing.heads``, ``breathing-eval --backbone``) the same groups also get the
respiratory head's REI/AHI errors and the detector's figures with the snoring head typing its breaths.

Plain functions; the cohorts are ordinary plain-layout synthetic cohorts, one folder per style
and kind, read the way ``score`` reads a night (manifest, epochs, the cached envelope).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import numpy as np

from sleepsound.breathing.detector import (
    DEFAULT,
    EVENT_TYPES,
    BreathingEvent,
    DetectorSettings,
    detect_candidates,
    resolve_events,
)
from sleepsound.breathing.evaluate import Counts, Interval, add_counts, match_counts, scored_events, scores

KINDS = ("events", "clean")  # nights with the drawn AHI, and nights with none
DEFAULT_STYLES = ("classic", "varied", "quiet-electret", "phone-fan", "tv-bedroom", "hvac-hall")
DEFAULT_HELD_OUT = ("phone-fan", "tv-bedroom", "hvac-hall")
CONFIDENCE_GRID = tuple(round(0.4 + 0.05 * k, 2) for k in range(11))  # 0.40 .. 0.90
REAL_SUFFIX = "+real"  # <style>+real: the style's nights again, with recorded snores (never fitted on)
REALBG_SUFFIX = "+realbg"  # <style>+realbg: ... with a recorded background as their TV (never fitted on)
TV_SUFFIX = "+tv"  # <style>+tv: ... with the generator's TV where +realbg has the recorded one (its comparison)
# <style>+recorded: ... with both the recorded snores and the recorded background (the nearest to a real bedroom)
RECORDED_SUFFIX = "+recorded"
APART = {  # summed apart
    REAL_SUFFIX: "real snores",
    REALBG_SUFFIX: "real background",
    TV_SUFFIX: "generator TV",
    RECORDED_SUFFIX: "real snores and background",
}


def recorded_suffix(group: str) -> str | None:
    """The suffix of a group summed apart (``<style>+real``, ``+realbg``, ``+tv``, ``+recorded``), None for a
    plain style."""
    return next((x for x in APART if group.endswith(x)), None)


def recorded_groups(
    styles: Sequence[str], real_styles: Sequence[str], real_snores: object, real_background: object
) -> list[tuple[str, str]]:
    """(style, suffix) of every group written again with recorded sound: ``+real`` with recorded
    snores, ``+realbg`` with a recorded background and ``+tv`` with the generator's TV beside it
    (classic has no TV renderer), and with both folders ``+recorded`` with both recorded sounds, for
    each of ``real_styles`` in ``styles``' order."""
    chosen = [s for s in styles if s in real_styles]
    out = [(s, REAL_SUFFIX) for s in chosen] if real_snores is not None else []
    if real_background is not None:
        out += [(s, REALBG_SUFFIX) for s in chosen] + [(s, TV_SUFFIX) for s in chosen if s != "classic"]
        if real_snores is not None:
            out += [(s, RECORDED_SUFFIX) for s in chosen]
    return out


SLEEP_STAGES = frozenset({"N1", "N2", "N3", "R"})


class NightResult(TypedDict):
    """One night's truth and detections, the unit every figure is summed from."""

    style: str
    kind: str  # "events" or "clean"
    recording_id: str
    hours: float  # of recording
    sleep_hours: float  # scored sleep
    truth: list[Interval]
    candidates: list[BreathingEvent]  # every event the detector proposed, before the confidence cut
    sleep_mask_s: list[tuple[float, float]]  # scored sleep as (start, end) seconds, for the AHI
    # With trained heads (``breathing.heads``): the candidates with the snoring head typing the breaths,
    # and the respiratory head's expected events per epoch.
    combined: NotRequired[list[BreathingEvent]]
    head_epoch_events: NotRequired[list[float]]


class GroupFigures(TypedDict):
    """The figures of a set of nights (a style, the development or held-out set, all)."""

    nights: int
    clean_nights: int
    events: dict[str, dict[str, float | int]]  # per type and "any": precision, recall, f1 and counts
    rei_abs_error: float  # mean over nights, events/h
    rei_max_error: float
    rei_within_5: float  # share of nights within 5 events/h of the truth
    ahi_abs_error: float  # per hour of scored sleep
    clean_false_per_h: float  # events per hour on the clean nights (NaN without clean nights)
    clean_max_per_h: float  # the worst clean night
    per_night: list[dict[str, Any]]


class HeadFigures(TypedDict):
    """The respiratory head's per-night REI and AHI errors over a set of nights (its expected events)."""

    nights: int
    rei_abs_error: float
    rei_max_error: float
    rei_within_5: float
    ahi_abs_error: float
    clean_false_per_h: float
    clean_max_per_h: float
    per_night: list[dict[str, Any]]


class CombinedFigures(TypedDict):
    """The detector with the snoring head typing its breaths: its own cut and figures per group."""

    min_confidence: float
    fitted: bool
    calibration: list[dict[str, float]]
    groups: dict[str, GroupFigures]


class TransferReport(TypedDict):
    styles: list[str]
    held_out: list[str]
    min_confidence: float  # the cut applied (fitted on the development styles, or given)
    fitted: bool
    calibration: list[dict[str, float]]  # the development styles' criterion per candidate cut
    groups: dict[str, GroupFigures]  # each style, "development", "held out", "all"
    heads: NotRequired[dict[str, Any]]  # with trained heads: what was trained (``breathing.heads``)
    head_groups: NotRequired[dict[str, HeadFigures]]  # the respiratory head's errors, same groups
    combined: NotRequired[CombinedFigures]  # the detector + the snoring head, same groups
    speech: NotRequired[list[str]]  # what voiced the styled cohorts' TVs and sleep talk (espeak, synth)


# --- building the cohorts -------------------------------------------------------------------------


def cohort_dir(root: str | os.PathLike[str], style: str, kind: str) -> Path:
    return Path(root) / style / kind


def build_cohorts(
    root: str | os.PathLike[str],
    styles: Sequence[str] = DEFAULT_STYLES,
    nights: int = 2,
    clean_nights: int = 1,
    hours: float = 1.0,
    seed: int = 17,
    sample_rate: int = 16_000,
    cycle_minutes: float = 30.0,
    speech_source: str = "auto",
    progress: Callable[[str], None] | None = None,
    real_snores: str | os.PathLike[str] | None = None,
    real_styles: Sequence[str] = (),
    real_background: str | os.PathLike[str] | None = None,
    real_background_only: Sequence[str] | None = None,
) -> list[Path]:
    """Write (or keep, when already written with these settings) one plain cohort per style and kind.

    Each style gets its own seeds, so development and held-out styles share no night plan: a
    threshold fitted on one set has not seen the other set's event times. With ``real_snores`` (a
    folder of recorded snore clips), each of ``real_styles`` is written a second time as
    ``<style>+real``: the same night plans, with the recorded snores laid on the snored breaths; with
    ``real_background`` (recorded TV or talk), as ``<style>+realbg``: the same plans with the recorded
    background as the night's TV (a TV added at tv-bedroom's levels where the style has none), and as
    ``<style>+tv``: the same TV made by the generator (what the recorded one is compared with); with
    both, also as ``<style>+recorded``: the same plans with the recorded snores and the recorded TV.
    """
    from sleepsound.synth.realsnores import folder_digest
    from sleepsound.synth.styles import CLASSIC, resolve_speech_source
    from sleepsound.synth.writers import generate_cohort

    speech = resolve_speech_source(speech_source)  # a cohort voiced otherwise is written again, not kept
    digest = folder_digest(real_snores) if real_snores is not None else None
    bg_digest = (
        folder_digest(real_background, "background clips", real_background_only)
        if real_background is not None
        else None
    )
    jobs: list[tuple[int, str, str, str]] = [(i, s, s, "") for i, s in enumerate(styles)]
    jobs += [
        (list(styles).index(s), s, s + x, x)
        for s, x in recorded_groups(styles, real_styles, real_snores, real_background)
    ]
    out = []
    for index, style, group, suffix in jobs:
        real, real_bg = suffix in (REAL_SUFFIX, RECORDED_SUFFIX), suffix in (REALBG_SUFFIX, RECORDED_SUFFIX)
        for kind, count in (("events", nights), ("clean", clean_nights)):
            if count < 1:
                continue
            where = cohort_dir(root, group, kind)
            night_seed = seed * 1000 + 10 * index + (5 if kind == "clean" else 0)
            wanted: dict[str, Any] = {
                "seed": night_seed,
                "n_subjects": count,
                "hours": hours,
                "sample_rate": sample_rate,
                "real_snores_sha256": digest if real else None,
                "real_background_sha256": bg_digest if real_bg else None,
                "generator_tv": True if suffix == TV_SUFFIX else None,
                "speech": speech if style != CLASSIC else None,
            }
            if _written_with(where, wanted):
                out.append(where)
                continue
            if progress:
                what = {
                    REAL_SUFFIX: " with real snores",
                    REALBG_SUFFIX: " with a real background",
                    TV_SUFFIX: " with the generator's TV",
                    RECORDED_SUFFIX: " with real snores and a real background",
                }.get(suffix, "")
                progress(f"writing {count} {kind} night(s) in style {style}{what}")
            generate_cohort(
                where,
                count,
                hours,
                night_seed,
                sample_rate=sample_rate,
                layout="plain",
                cycle_minutes=cycle_minutes,
                style=style,
                speech_source=speech,
                ahi=0.0 if kind == "clean" else None,
                real_snores=real_snores if real else None,
                real_background=real_background if real_bg else None,
                generator_tv=suffix == TV_SUFFIX,
                real_background_only=real_background_only if real_bg else None,
            )
            out.append(where)
    return out


def _written_with(where: Path, wanted: dict[str, Any]) -> bool:
    path = where / "cohort.json"
    if not path.exists():
        return False
    params = json.loads(path.read_text()).get("params", {})
    return all(params.get(k) == v for k, v in wanted.items())


def find_cohorts(root: str | os.PathLike[str]) -> list[tuple[str, str, Path]]:
    """(style, kind, folder) of every ``<root>/<style>/<kind>/cohort.json`` written by ``build_cohorts``."""
    found = []
    for path in sorted(Path(root).glob("*/*/cohort.json")):
        style, kind = path.parent.parent.name, path.parent.name
        if kind in KINDS:
            found.append((style, kind, path.parent))
    if not found:
        raise FileNotFoundError(f"{root}: no <style>/<events|clean>/cohort.json found (build them with --build)")
    return found


# --- reading the nights ---------------------------------------------------------------------------


def cohort_speech(root: str | os.PathLike[str], styles: set[str]) -> list[str]:
    """The speech sources that voiced these styles' cohorts under ``root`` (their ``cohort.json``): results
    differ between espeak-ng's speech and the built-in synthesiser's, so a report says which it had. A
    cohort written before cohorts recorded it counts as ``unrecorded``."""
    from sleepsound.synth.styles import CLASSIC

    found = set()
    for style, _kind, folder in find_cohorts(root):
        params = json.loads((folder / "cohort.json").read_text()).get("params", {})
        if style in styles and params.get("style", CLASSIC) != CLASSIC:
            found.add(str(params.get("speech", "unrecorded")))
    return sorted(found)


def read_nights(
    cohort_root: str | os.PathLike[str],
    storage_root: str | os.PathLike[str],
    settings: DetectorSettings = DEFAULT,
    styles: Iterable[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[NightResult]:
    """Every night of the cohorts with its truth and the detector's candidate events.

    The envelope comes from the storage root's cache (``breathing.store``), computed from the
    audio the way ``score`` computes it when it is missing, so a second evaluation of the same
    cohorts costs only the detector.
    """
    from sleepsound.breathing.store import load_envelope
    from sleepsound.core.config import Config
    from sleepsound.embed.cache import channel_configs
    from sleepsound.embed.epochs import night_labels
    from sleepsound.ingest.manifest import build_manifest

    cfg = channel_configs(Config())[0]
    keep = set(styles) if styles is not None else None
    out: list[NightResult] = []
    for style, kind, folder in find_cohorts(cohort_root):
        if keep is not None and style not in keep:
            continue
        rows = [r for r in build_manifest(str(folder), cfg.preprocess, cfg.validation) if r["status"] == "accepted"]
        if not rows:
            raise ValueError(f"{folder}: no accepted recording")
        for row in rows:
            if progress:
                progress(f"{style}/{kind}: a night of {row['n_epochs']} epochs")
            env, valid = load_envelope(str(storage_root), cfg, row)
            labels = night_labels(row, int(row["n_epochs"]))
            epoch = cfg.preprocess.epoch_seconds
            sleep = [(i * epoch, (i + 1) * epoch) for i, stage in enumerate(labels.stages) if stage in SLEEP_STAGES]
            out.append(
                {
                    "style": style,
                    "kind": kind,
                    "recording_id": str(row["recording_id"]),
                    "hours": len(env) / 36_000.0,
                    "sleep_hours": len(sleep) * epoch / 3600.0,
                    "truth": scored_events(labels.events or []),
                    "candidates": detect_candidates(env, valid, settings),
                    "sleep_mask_s": sleep,
                }
            )
    return out


# --- the figures ----------------------------------------------------------------------------------


Source = str  # which candidates of a night are read: "candidates" (the detector) or "combined"


def detections(night: NightResult, min_confidence: float, source: Source = "candidates") -> list[BreathingEvent]:
    got = night.get(source)
    if got is None:
        raise ValueError(f"night {night['recording_id']} has no {source!r} events")
    return resolve_events(got, min_confidence)  # type: ignore[arg-type]


def _in_sleep(events: Sequence[Interval | BreathingEvent], sleep: Sequence[tuple[float, float]]) -> int:
    if not sleep:
        return 0
    starts = np.array([s for s, _ in sleep])
    ends = np.array([e for _, e in sleep])
    count = 0
    for e in events:
        k = int(np.searchsorted(starts, e["start_s"], side="right")) - 1
        count += int(k >= 0 and e["start_s"] < ends[k])
    return count


def night_figures(night: NightResult, min_confidence: float, source: Source = "candidates") -> dict[str, Any]:
    """One night's indices (truth and detected) and its per-type match counts."""
    found = detections(night, min_confidence, source)
    hours, sleep_h = night["hours"], night["sleep_hours"]
    rei_true = len(night["truth"]) / hours if hours else math.nan
    rei_det = len(found) / hours if hours else math.nan
    ahi_true = _in_sleep(night["truth"], night["sleep_mask_s"]) / sleep_h if sleep_h else math.nan
    ahi_det = _in_sleep(found, night["sleep_mask_s"]) / sleep_h if sleep_h else math.nan
    return {
        "style": night["style"],
        "kind": night["kind"],
        "recording_id": night["recording_id"],
        "hours": hours,
        "rei_true": rei_true,
        "rei_detected": rei_det,
        "ahi_true": ahi_true,
        "ahi_detected": ahi_det,
        "n_true": {t: sum(e["type"] == t for e in night["truth"]) for t in EVENT_TYPES},
        "n_detected": {t: sum(e["type"] == t for e in found) for t in EVENT_TYPES},
        "counts": match_counts(night["truth"], found),
    }


def group_figures(nights: Sequence[NightResult], min_confidence: float, source: Source = "candidates") -> GroupFigures:
    """Summed event counts and averaged per-night errors of a set of nights."""
    per = [night_figures(n, min_confidence, source) for n in nights]
    rei_err = np.array([abs(p["rei_detected"] - p["rei_true"]) for p in per], dtype=float)
    ahi_err = np.array([abs(p["ahi_detected"] - p["ahi_true"]) for p in per], dtype=float)
    clean = [p for p in per if p["kind"] == "clean"]
    clean_hours = sum(p["hours"] for p in clean)
    clean_events = sum(sum(p["n_detected"].values()) for p in clean)
    counts: dict[str, Counts] = add_counts(p["counts"] for p in per)
    return {
        "nights": len(per),
        "clean_nights": len(clean),
        "events": scores(counts) if counts else {},
        "rei_abs_error": float(np.mean(rei_err)) if len(per) else math.nan,
        "rei_max_error": float(np.max(rei_err)) if len(per) else math.nan,
        "rei_within_5": float(np.mean(rei_err <= 5.0)) if len(per) else math.nan,
        "ahi_abs_error": float(np.nanmean(ahi_err)) if np.isfinite(ahi_err).any() else math.nan,
        "clean_false_per_h": clean_events / clean_hours if clean_hours else math.nan,
        "clean_max_per_h": max((sum(p["n_detected"].values()) / p["hours"] for p in clean), default=math.nan),
        "per_night": per,
    }


def head_figures(nights: Sequence[NightResult]) -> HeadFigures:
    """The respiratory head's REI (expected events per hour of recording) and AHI (in scored sleep, per
    hour of scored sleep, as the detector's here) against the truth, per night and summed."""
    per = []
    for n in nights:
        events = np.asarray(n.get("head_epoch_events", []), dtype=float)
        epoch = n["hours"] * 3600.0 / len(events) if len(events) else math.nan
        asleep = {round(s / epoch) for s, _ in n["sleep_mask_s"]} if len(events) else set()
        in_sleep = float(sum(events[i] for i in asleep if i < len(events)))
        hours, sleep_h = n["hours"], n["sleep_hours"]
        per.append(
            {
                "style": n["style"],
                "kind": n["kind"],
                "recording_id": n["recording_id"],
                "rei_true": len(n["truth"]) / hours if hours else math.nan,
                "rei_head": float(events.sum()) / hours if hours else math.nan,
                "ahi_true": _in_sleep(n["truth"], n["sleep_mask_s"]) / sleep_h if sleep_h else math.nan,
                "ahi_head": in_sleep / sleep_h if sleep_h else math.nan,
                "hours": hours,
            }
        )
    rei = np.array([abs(p["rei_head"] - p["rei_true"]) for p in per], dtype=float)
    ahi = np.array([abs(p["ahi_head"] - p["ahi_true"]) for p in per], dtype=float)
    clean = [p for p in per if p["kind"] == "clean"]
    clean_h = sum(p["hours"] for p in clean)
    return {
        "nights": len(per),
        "rei_abs_error": float(np.mean(rei)) if len(per) else math.nan,
        "rei_max_error": float(np.max(rei)) if len(per) else math.nan,
        "rei_within_5": float(np.mean(rei <= 5.0)) if len(per) else math.nan,
        "ahi_abs_error": float(np.nanmean(ahi)) if np.isfinite(ahi).any() else math.nan,
        "clean_false_per_h": sum(p["rei_head"] * p["hours"] for p in clean) / clean_h if clean_h else math.nan,
        "clean_max_per_h": max((p["rei_head"] for p in clean), default=math.nan),
        "per_night": per,
    }


def calibrate(
    nights: Sequence[NightResult], grid: Sequence[float] = CONFIDENCE_GRID, source: Source = "candidates"
) -> tuple[float, list[dict[str, float]]]:
    """The minimum confidence that best serves the development nights: the lowest mean per-night
    REI error (which counts both missed events and false alarms on clean nights), ties to the
    higher event F1 of both types. Only development nights may be passed here."""
    table = []
    for cut in grid:
        g = group_figures(nights, cut, source)
        f1 = [g["events"].get(t, {}).get("f1", math.nan) for t in EVENT_TYPES]
        table.append(
            {
                "min_confidence": float(cut),
                "rei_abs_error": g["rei_abs_error"],
                "mean_f1": float(np.nanmean(f1)) if np.isfinite(f1).any() else 0.0,
                "clean_false_per_h": g["clean_false_per_h"],
            }
        )
    best = min(table, key=lambda r: (round(r["rei_abs_error"], 6), -r["mean_f1"]))
    return best["min_confidence"], table


def _grouped(
    nights: Sequence[NightResult], held_out: Sequence[str], figures: Callable[[list[NightResult]], Any]
) -> dict[str, Any]:
    """``figures`` of each style (its recorded-sound groups too), the development and held-out sets,
    all, and each recorded-sound kind summed apart (out of "held out" and "all")."""
    styles = list(dict.fromkeys(n["style"] for n in nights))
    plain = [n for n in nights if recorded_suffix(n["style"]) is None]
    out: dict[str, Any] = {s: figures([n for n in nights if n["style"] == s]) for s in styles}
    dev = [n for n in plain if n["style"] not in held_out]
    held = [n for n in plain if n["style"] in held_out]
    for name, chosen in (("development", dev), ("held out", held), ("all", plain)):
        if chosen:
            out[name] = figures(chosen)
    for suffix, name in APART.items():
        chosen = [n for n in nights if recorded_suffix(n["style"]) == suffix]
        if chosen:
            out[name] = figures(chosen)
    return out


def _cut(
    dev: Sequence[NightResult], min_confidence: float | None, source: Source
) -> tuple[float, list[dict[str, float]]]:
    """The given cut, or the one fitted on the development nights (``calibrate``)."""
    if min_confidence is not None:
        if not (math.isfinite(min_confidence) and 0.0 <= min_confidence <= 1.0):  # NaN dropped every event
            raise ValueError(f"min_confidence must be a number from 0 to 1, got {min_confidence:g}")
        return min_confidence, []
    if not dev:
        raise ValueError("every style is held out: nothing to fit the confidence cut on (give --min-confidence)")
    return calibrate(dev, source=source)


def transfer_report(
    nights: Sequence[NightResult],
    held_out: Sequence[str],
    min_confidence: float | None = None,
) -> TransferReport:
    """Per style, development set, held-out set and all: the figures at one confidence cut.

    With ``min_confidence`` None the cut is fitted on the development styles (every style not in
    ``held_out``) and only then applied to the held-out ones. Groups named ``<style>+real`` (recorded
    snores), ``<style>+realbg`` (a recorded background as the TV) and ``<style>+tv`` (the generator's
    TV in its place) are never fitted on and are summed apart, as "real snores", "real background" and
    "generator TV", out of "held out" and "all", so those stay comparable with evaluations made
    without them. Nights scored with trained heads (``breathing.heads``) add the respiratory head's
    errors (``head_groups``) and the detector with the snoring head (``combined``, its cut fitted the
    same way), over the same groups.
    """
    styles = list(dict.fromkeys(n["style"] for n in nights))
    synthetic = [s for s in styles if recorded_suffix(s) is None]
    unknown = sorted(set(held_out) - set(synthetic))
    if unknown:
        raise ValueError(f"held-out style(s) {', '.join(unknown)} have no nights; styles here: {', '.join(synthetic)}")
    dev = [n for n in nights if recorded_suffix(n["style"]) is None and n["style"] not in held_out]
    cut, calibration = _cut(dev, min_confidence, "candidates")
    report: TransferReport = {
        "styles": styles,
        "held_out": list(held_out),
        "min_confidence": float(cut),
        "fitted": min_confidence is None,
        "calibration": calibration,
        "groups": _grouped(nights, held_out, lambda chosen: group_figures(chosen, cut)),
    }
    if nights and all("head_epoch_events" in n for n in nights):
        report["head_groups"] = _grouped(nights, held_out, head_figures)
    if nights and all("combined" in n for n in nights):
        both_cut, both_calibration = _cut(dev, min_confidence, "combined")
        report["combined"] = {
            "min_confidence": float(both_cut),
            "fitted": min_confidence is None,
            "calibration": both_calibration,
            "groups": _grouped(nights, held_out, lambda chosen: group_figures(chosen, both_cut, "combined")),
        }
    return report


def _fmt(x: float, spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def format_report(report: TransferReport) -> str:
    """The report as plain-text tables: one row per style, then the sets; with trained heads, the
    detector with the snoring head typing its breaths, and the respiratory head's errors beside the
    detector's."""
    how = "fitted on the development styles" if report["fitted"] else "given"
    lines = [
        f"Held out: {', '.join(report['held_out']) or 'none'}; min confidence {report['min_confidence']:.2f} ({how}).",
        *_event_table(report["groups"]),
    ]
    if report.get("speech"):
        voices = {"espeak": "espeak-ng", "synth": "the built-in synthesiser"}
        lines.append("TVs and sleep talk voiced by " + ", ".join(voices.get(v, v) for v in report["speech"]) + ".")
    combined = report.get("combined")
    if combined is not None:
        how = "fitted on the development styles" if combined["fitted"] else "given"
        lines += [
            "",
            f"Detector + the snoring head typing breaths; min confidence {combined['min_confidence']:.2f} ({how}).",
            *_event_table(combined["groups"]),
        ]
    info = report.get("heads", {})
    for name, why in info.get("skipped", {}).items():
        lines.append(f"Head {name} not trained: {why}")
    heads = report.get("head_groups")
    if heads is not None:
        w = _name_width(heads)
        columns = (
            f"{'group':<{w}}{'nights':>7}{'head REI':>10}{'max':>7}{'<=5/h':>7}{'AHI':>7}{'clean/h':>9}"
            f"{'detector REI':>14}{'<=5/h':>7}{'AHI':>7}{'clean/h':>9}"
        )
        lines += [
            "",
            f"Respiratory head ({info.get('backbone', '?')}, trained on {info.get('train_nights', '?')} development "
            "nights) beside the detector: per-night REI and AHI |error|, events/h.",
            columns,
        ]
        for name, h in heads.items():
            if name in ("development", "held out", "all", *APART.values()):
                lines.append("-" * len(columns))
            d = report["groups"][name]
            lines.append(
                f"{name:<{w}}{h['nights']:>7}{_fmt(h['rei_abs_error'], '.1f'):>10}{_fmt(h['rei_max_error'], '.1f'):>7}"
                f"{_fmt(100 * h['rei_within_5'], '.0f') + '%':>7}{_fmt(h['ahi_abs_error'], '.1f'):>7}"
                f"{_fmt(h['clean_false_per_h'], '.1f'):>9}{_fmt(d['rei_abs_error'], '.1f'):>14}"
                f"{_fmt(100 * d['rei_within_5'], '.0f') + '%':>7}{_fmt(d['ahi_abs_error'], '.1f'):>7}"
                f"{_fmt(d['clean_false_per_h'], '.1f'):>9}"
            )
    return "\n".join(lines)


def _name_width(groups: dict[str, Any]) -> int:
    """The group column's width: 16, or the longest name and a space (``real snores and background``)."""
    return max(16, *(len(name) + 1 for name in groups))


def _event_table(groups: dict[str, GroupFigures]) -> list[str]:
    """One row per group: event P/R/F1 per type, REI and AHI errors, the clean nights' false events."""
    w = _name_width(groups)
    head = (
        f"{'group':<{w}}{'nights':>7}{'clean':>6}  {'apnoea P/R/F1':<17}{'hypopnoea P/R/F1':<19}"
        f"{'REI |err|':>10}{'max':>7}{'<=5/h':>7}{'AHI |err|':>10}{'clean ev/h':>11}{'worst':>7}"
    )
    lines = [head]
    for name, g in groups.items():
        if name in ("development", "held out", "all", *APART.values()):
            lines.append("-" * len(head))
        ev = g["events"]

        def prf(t: str, ev: dict[str, dict[str, float | int]] = ev) -> str:
            s = ev.get(t)
            if not s:
                return "-"
            return f"{_fmt(float(s['precision']))}/{_fmt(float(s['recall']))}/{_fmt(float(s['f1']))}"

        lines.append(
            f"{name:<{w}}{g['nights']:>7}{g['clean_nights']:>6}  {prf('apnea'):<17}{prf('hypopnea'):<19}"
            f"{_fmt(g['rei_abs_error'], '.1f'):>10}{_fmt(g['rei_max_error'], '.1f'):>7}"
            f"{_fmt(100 * g['rei_within_5'], '.0f') + '%':>7}{_fmt(g['ahi_abs_error'], '.1f'):>10}"
            f"{_fmt(g['clean_false_per_h'], '.1f'):>11}{_fmt(g['clean_max_per_h'], '.1f'):>7}"
        )
    return lines


def report_json(report: TransferReport) -> str:
    """JSON with NaN written as null (a strict reader's JSON)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        if isinstance(x, np.integer | np.floating):
            return clean(x.item())
        return x

    return json.dumps(clean(report), indent=2)


def with_settings(settings: DetectorSettings, **changes: Any) -> DetectorSettings:
    return replace(settings, **changes)


def check_transfer_options(
    nights: int, clean_nights: int, hours: float, seed: int, min_confidence: float | None, build: bool
) -> None:
    """Refuse a bad count, length, seed or cut (ValueError naming the option and its range) before anything
    is built: a NaN cut dropped every event (recall 0, exit 0), -5 kept every candidate, and ``--nights 0``
    built nothing and was then blamed on the folder (``build them with --build``)."""
    if min_confidence is not None and not (math.isfinite(min_confidence) and 0.0 <= min_confidence <= 1.0):
        raise ValueError(f"--min-confidence must be a number from 0 to 1, got {min_confidence:g}")
    if nights < 1:
        raise ValueError(f"--nights must be at least 1, got {nights}")
    if clean_nights < 0:
        raise ValueError(f"--clean must be 0 or more, got {clean_nights}")
    if seed < 0:
        raise ValueError(f"--seed must be a whole number >= 0, got {seed}")
    if build and not (math.isfinite(hours) and hours > 0):
        raise ValueError(f"--hours must be a positive, finite number, got {hours:g}")


def check_report_path(path: Path, option: str) -> None:
    """Refuse a report path that cannot be written (ValueError naming ``option``) before any night is built or
    scored: a folder, or a folder that cannot be made (a file in the way, no permission), failed only at the
    end, after all the work, as an unexpected error. Nothing is created here."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder: name the report file, e.g. {path / 'breathing-transfer.json'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:  # the nearest folder that is there
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{option} {path}: {parent} is a file, so the report's folder cannot be made")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: {parent} is not writable")


def run_transfer(
    cohorts: str | os.PathLike[str],
    root: str | os.PathLike[str],
    held_out: Sequence[str] = DEFAULT_HELD_OUT,
    build: bool = False,
    styles: Sequence[str] = DEFAULT_STYLES,
    nights: int = 2,
    clean_nights: int = 1,
    hours: float = 1.0,
    seed: int = 17,
    min_confidence: float | None = None,
    out: str | os.PathLike[str] | None = None,
    progress: Callable[[str], None] | None = None,
    real_snores: str | os.PathLike[str] | None = None,
    real_background: str | os.PathLike[str] | None = None,
    real_background_only: Sequence[str] | None = None,
    backbone: str | None = None,
    head_overrides: Sequence[str] | None = None,
    speech_source: str = "auto",
) -> tuple[TransferReport, Path]:
    """Build (with ``build``) or take the cohorts, score every night, report, and write the JSON to
    ``out`` or ``<root>/transfer/breathing-transfer.json``. With ``real_snores`` (and ``build``) the
    held-out styles are also written with the folder's recorded snores (``<style>+real``), with
    ``real_background`` with the folder's recorded background as their TV (``<style>+realbg``). With
    ``backbone`` the nights are also embedded with it and the project's heads trained on the
    development styles score every night (``breathing.heads``; ``head_overrides``: ``section.key=value``
    settings for them)."""
    check_transfer_options(nights, clean_nights, hours, seed, min_confidence, build)
    path = Path(out) if out is not None else Path(root) / "transfer" / "breathing-transfer.json"
    check_report_path(path, "--out" if out is not None else "--root")
    if backbone is not None:  # a name that cannot be loaded (a typo, offline): refused now, not after every night
        from sleepsound.models.backbones.pretrained import BackboneLoadError, load_backbone

        try:
            load_backbone(backbone)
        except BackboneLoadError as exc:
            raise ValueError(str(exc)) from None
    wanted = list(styles)
    if build:
        real_styles = [s for s in held_out if s in styles]
        build_cohorts(
            cohorts,
            styles,
            nights,
            clean_nights,
            hours,
            seed,
            progress=progress,
            real_snores=real_snores,
            real_styles=real_styles,
            real_background=real_background,
            real_background_only=real_background_only,
            speech_source=speech_source,
        )
        wanted += [s + x for s, x in recorded_groups(styles, real_styles, real_snores, real_background)]
    nights_read = read_nights(cohorts, root, styles=wanted if build else None, progress=progress)
    heads = None
    if backbone is not None:
        from sleepsound.breathing.heads import score_with_heads

        heads = score_with_heads(cohorts, root, nights_read, held_out, backbone, DEFAULT, head_overrides, progress)
    report = transfer_report(nights_read, held_out, min_confidence)
    report["speech"] = cohort_speech(cohorts, {n["style"] for n in nights_read})
    if heads is not None:
        report["heads"] = dict(heads)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(report_json(report))
    except OSError as exc:  # a full disk, a folder made there meanwhile: one line, not an unexpected error
        raise OSError(f"cannot write the report to {path}: {exc.strerror or exc}") from exc
    return report, path
