"""A run's outputs after prediction: metrics on held-out nights, night summaries, the report.

Every head is scored on the test subjects against its majority baseline; the stage3 metrics
carry subject-resampled confidence intervals. Night by night, the breathing figures (AHI,
severity, snore index) are computed from the scored events and, where a respiratory head
was trained, estimated from its probabilities: an epoch's expected events are
P(apnoea-hypopnoea) x the training side's events per apnoea-hypopnoea epoch, its snoring
share P(snore) x the training side's snoring share of a snore epoch.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sleepsound.breathing.detector import BreathingEvent
from sleepsound.breathing.evaluate import Counts, add_counts, match_counts, scored_events, scores
from sleepsound.breathing.store import read_events
from sleepsound.core import schemas
from sleepsound.core.config import Config
from sleepsound.core.records import HeadInfo, Reported, TrainedModels
from sleepsound.core.storage import (
    RootLike,
    drop_other_partitions,
    full_uri,
    join,
    open_root,
    partition,
    partition_files,
    partitions,
    write_bytes_atomic,
    write_json,
    write_table,
)
from sleepsound.ingest.manifest import read_manifest, read_manifest_rows
from sleepsound.labels.targets import PRIMARY, TARGETS
from sleepsound.labels.vocabulary import EPOCH_SECONDS
from sleepsound.registry import store as model_store
from sleepsound.report.figures import (
    ahi_scatter_figure,
    bland_altman_figure,
    event_timeline_figure,
    hypnogram_figure,
    trend_figure,
)
from sleepsound.report.metrics import (
    ahi_agreement,
    bootstrap_ci,
    confusion_accuracy,
    confusion_kappa,
    confusion_macro_f1,
    evaluate,
)
from sleepsound.report.night import subject_trends
from sleepsound.report.night_reports import start_night_reports
from sleepsound.report.render import ReportInputs, render_report
from sleepsound.report.summaries import (
    breathing_summary,
    event_indices,
    night_summary,
    severity,
    snore_shares,
    snoring_bouts,
)

CI_BOOTSTRAPS = 500
log = logging.getLogger(__name__)


def read_predictions(root: RootLike, run_id: str) -> pd.DataFrame:
    fs, root_path = open_root(root)
    frames = []
    for rec, folder in sorted(partitions(fs, join(root_path, "runs", run_id, "predictions")).items()):
        for path in partition_files(fs, folder):
            with fs.open(path, "rb") as handle:
                frame = pd.read_parquet(handle)
            frame.insert(0, "recording_id", rec)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def read_summaries(summaries_uri: str) -> pd.DataFrame:
    """A run's night summaries (one row per night and source), from the URI ``write_run_outputs`` returned."""
    fs, path = open_root(summaries_uri)
    with fs.open(join(path, "summaries.parquet"), "rb") as handle:
        return pd.read_parquet(handle)


def _stages(values: pd.Series) -> list[str | None]:
    return [v if isinstance(v, str) else None for v in values]


def target_metrics(preds: pd.DataFrame, model: TrainedModels) -> dict[str, dict[str, Any]]:
    """Each trained head on the test subjects' epochs, beside its training-side majority class."""
    out: dict[str, dict[str, Any]] = {}
    for name, info in (model.get("heads") or {PRIMARY: model}).items():
        target = TARGETS[name]
        if target.pred_column not in preds:
            continue
        if target.frames:
            got = _frame_metrics(preds, info)
            if got is not None:
                out[name] = got
            continue
        test = preds[
            (preds["split"] == "test")
            & preds[target.true_column].isin(target.classes)
            & preds[target.pred_column].notna()
        ]
        if not len(test):
            continue
        counts = info.get("class_counts") or [0] * len(target.classes)
        majority = target.classes[int(np.argmax(counts))]
        out[name] = evaluate(
            test[target.true_column].astype(str), test[target.pred_column].astype(str), target.classes, majority
        )
    return out


def _frame_metrics(preds: pd.DataFrame, info: HeadInfo) -> dict[str, Any] | None:
    """The per-second snoring head on the test nights' labelled frames (None without any)."""
    from sleepsound.train.frames import CUT

    if "snore_frames_true" not in preds:
        return None
    test = preds[(preds["split"] == "test") & preds["snore_frames_true"].notna() & preds["snore_frames"].notna()]
    if not len(test):
        return None
    truth = np.concatenate([np.asarray(v, dtype=np.int8) for v in test["snore_frames_true"]])
    called = np.concatenate([np.asarray(v, dtype=np.float32) for v in test["snore_frames"]]) > CUT
    classes = TARGETS["snore"].classes
    counts = info.get("class_counts") or [0] * len(classes)
    return evaluate(
        [classes[int(v)] for v in truth],
        [classes[int(v)] for v in called],
        classes,
        classes[int(np.argmax(counts))],
    )


def subject_intervals(preds: pd.DataFrame, seed: int = 0) -> dict[str, tuple[float, float]]:
    """95% bootstrap intervals of the stage3 accuracy, macro-F1 and kappa, subjects resampled."""
    test = preds[(preds["split"] == "test") & preds["stage_true"].notna() & preds["stage_pred"].notna()]
    if test["subject_id"].nunique() < 2:
        return {}
    args = (
        test["stage_true"].astype(str).tolist(),
        test["stage_pred"].astype(str).tolist(),
        test["subject_id"].astype(str).tolist(),
    )
    metrics = (("accuracy", confusion_accuracy), ("macro_f1", confusion_macro_f1), ("kappa", confusion_kappa))
    return {
        name: bootstrap_ci(*args, metric=fn, classes=TARGETS[PRIMARY].classes, n_boot=CI_BOOTSTRAPS, seed=seed)
        for name, fn in metrics
    }


# The detector's figures in the summaries (beside the snore index and the head's estimate).
EVENT_FIELDS = (
    "ahi",
    "severity",
    "rei",
    "severity_rei",
    "n_apnea",
    "n_hypopnea",
    "ahi_warning",
    "breathing_heard",
    "events_warning",
)


def night_breathing(
    night: pd.DataFrame, resp: HeadInfo | None, detected: list[BreathingEvent] | None = None
) -> dict[str, Any]:
    """Scored and estimated breathing figures of one night (None where unknown).

    ``_estimated``: AHI and REI from the detector's events (``detected``) on the predicted
    hypnogram, the headline; ``ahi_head_estimated``: the respiratory head's expected events per
    hour of predicted sleep, as before the detector (kept for comparison). ``_scored``: from the
    scored events (AHI per hour of scored sleep, REI per hour of recording)."""
    out: dict[str, Any] = {}
    epoch = EPOCH_SECONDS
    if night["events_true"].notna().any():
        scored = breathing_summary(
            _stages(night["stage_true"]), night["events_true"].to_numpy(float), night["snore_frac_true"].to_numpy(float)
        )
        out |= {f"{k}_scored": scored[k] for k in ("ahi", "severity", "snore_index")}
        rei = float(np.nansum(night["events_true"].to_numpy(float))) / (len(night) * epoch / 3600.0)
        out |= {"rei_scored": rei, "severity_rei_scored": severity(rei)}
    if resp is not None and night["prob_apnea_hypopnea"].notna().any():
        events = night["prob_apnea_hypopnea"].to_numpy(float) * resp.get("events_per_event_epoch", 1.0)
        snore = night["prob_snore"].to_numpy(float) * resp.get("snore_share_per_snore_epoch", 1.0)
        estimated = breathing_summary(_stages(night["stage_pred"]), events, snore)
        out |= {f"{k}_estimated": estimated[k] for k in ("ahi", "severity", "snore_index")}
        out |= {"ahi_head_estimated": estimated["ahi"], "snore_index_epoch_estimated": estimated["snore_index"]}
    # The snore index: the per-second head's where the predictions have it, else the per-epoch estimate.
    shares, source = snore_shares(night, resp.get("snore_share_per_snore_epoch", 1.0) if resp else None)
    if shares is not None:
        stages = _stages(night["stage_pred"])
        out["snore_index_estimated"] = breathing_summary(stages, np.zeros(len(stages)), shares)["snore_index"]
        out["snore_source"] = source
    if detected is not None:
        heard = night["breath_heard_s"].tolist() if "breath_heard_s" in night else None  # older runs: none
        indices = event_indices(detected, _stages(night["stage_pred"]), epoch, heard_s=heard)
        out |= {f"{k}_estimated": indices[k] for k in EVENT_FIELDS}
    return out


def _write_snoring(fs: Any, root_path: str, run_id: str, rec: str, night: pd.DataFrame) -> None:
    """The night's snoring bouts (``schemas.SNORING``) beside its event table."""
    from sleepsound.train.frames import CUT

    rows = snoring_bouts(night, CUT)
    path = join(partition(join(root_path, "runs", run_id, "snoring"), rec), "part-0.parquet")
    write_table(fs, path, pa.Table.from_pylist(rows, schema=schemas.SNORING))


def write_run_outputs(
    root: RootLike,
    run_id: str,
    model: TrainedModels,
    meta: dict[str, Any],
    cfg: Config | None = None,
    trained: bool = False,
    use_ray: bool = False,
) -> Reported:
    """Compute and write metrics.json, summaries and report/index.html under ``runs/<run_id>/``.

    ``trained``: this run trained ``model``'s heads (train, run), so their test-subject figures
    are also their own ``models/<task>/<version>/metrics.json``, and a task without a champion
    gets its first. A scoring run (score, nightly) writes nothing under ``models/``: a model's
    files belong to the run that trained it, and other nights' figures would pass for its own.
    ``use_ray``: the nights' pages render as Ray tasks (``night_reports``), beside this process's own
    figures."""
    cfg = cfg or Config()
    fs, root_path = open_root(root)
    preds = read_predictions(root, run_id).sort_values(["recording_id", "epoch_index"])
    heads = model.get("heads") or {PRIMARY: model}
    # on Ray the nights' pages render in tasks from here on, while this process draws the run's figures
    night_pages = start_night_reports(root, run_id, preds, model, meta.get("backbone"), use_ray=use_ray)
    by_target = target_metrics(preds, model)
    metrics = by_target.get(PRIMARY)
    resp = heads.get("resp")

    detected = read_events(root, run_id)
    manifest_rows = {str(r["recording_id"]): r for r in read_manifest_rows(root)}
    rows, breathing, hypnograms, timelines, event_counts = [], [], [], [], []
    snored: set[str] = set()
    for rec, night in preds.groupby("recording_id", sort=True):
        split = str(night["split"].iloc[0])
        subject = str(night["subject_id"].iloc[0])
        figures = night_breathing(night, resp, detected.get(str(rec)))
        if "snore_frames" in night and night["snore_frames"].notna().any():
            _write_snoring(fs, root_path, run_id, str(rec), night)
            snored.add(str(rec))
        if split == "test" and str(rec) in detected and night["events_true"].notna().any():
            event_counts.append(_event_counts(manifest_rows.get(str(rec)), detected[str(rec)]))
        for source, column in (("predicted", "stage_pred"), ("scored", "stage_true")):
            if source == "scored" and split == "unlabelled":
                continue
            suffix = "_estimated" if source == "predicted" else "_scored"
            rows.append(
                {
                    "recording_id": rec,
                    "subject_id": subject,
                    "split": split,
                    "source": source,
                    **night_summary(_stages(night[column])),
                    **{k: figures.get(f"{k}{suffix}") for k in ("ahi", "severity", "snore_index", *EVENT_FIELDS)},
                    "ahi_head": figures.get(f"ahi_head{suffix}"),
                    "snore_source": figures.get("snore_source") if source == "predicted" else "scored events",
                }
            )
        if figures:
            breathing.append({"recording_id": rec, "split": split, **figures})
        if split in ("test", "unlabelled") and len(hypnograms) < cfg.report.hypnograms:
            hypnograms.append(
                hypnogram_figure(
                    rec, night["start_s"].to_numpy(), _stages(night["stage_true"]), _stages(night["stage_pred"])
                )
            )
        if resp is not None and split in ("test", "unlabelled") and len(timelines) < cfg.report.hypnograms:
            timelines.append(
                event_timeline_figure(
                    rec,
                    night["start_s"].to_numpy(float),
                    night["events_true"].to_numpy(float),
                    night["prob_apnea_hypopnea"].to_numpy(float),
                    _stages(night["stage_pred"]),
                )
            )
    # the snoring folder holds the nights snored in this run and no other (a rerun after a night was
    # quarantined left its first attempt's bouts), as the predict step's folders do
    drop_other_partitions(fs, join(root_path, "runs", run_id, "snoring"), snored)
    summaries = pd.DataFrame(rows)
    breathing_frame = pd.DataFrame(breathing)
    ahi, ahi_figures = None, []
    if {"ahi_scored", "ahi_estimated"} <= set(breathing_frame.columns):
        test = breathing_frame[breathing_frame["split"] == "test"]
        if len(test):
            ahi = ahi_agreement(test["ahi_scored"].to_numpy(float), test["ahi_estimated"].to_numpy(float))
            ahi_figures = [
                ahi_scatter_figure(test["ahi_scored"].to_numpy(float), test["ahi_estimated"].to_numpy(float)),
                bland_altman_figure(test["ahi_scored"].to_numpy(float), test["ahi_estimated"].to_numpy(float), ahi),
            ]
    intervals = subject_intervals(preds, cfg.training.seed) if metrics else {}
    breathing_metrics = _breathing_metrics(breathing_frame, event_counts)

    run_dir = join(root_path, "runs", run_id)
    write_table(
        fs, join(run_dir, "summaries", "summaries.parquet"), pa.Table.from_pandas(summaries, preserve_index=False)
    )
    everything = {
        **(metrics or {}),
        "tasks": {k: v for k, v in by_target.items() if k != PRIMARY},
        "ahi": ahi,
        "breathing_events": breathing_metrics,
        "subject_ci": {k: list(v) for k, v in intervals.items()},
        "skipped_tasks": model.get("skipped", {}),
    }
    write_json(fs, join(run_dir, "metrics.json"), everything if metrics else {})
    for name, target_result in by_target.items() if trained else ():
        info = heads[name]
        model_store.write_metrics(root, name, info["version"], {**target_result, "run_id": run_id})
        if model_store.champion_version(root, name) is None:
            model_store.set_champion(root, name, info["version"], "first evaluated model of this task")

    from sleepsound.report.attention_view import attention_views

    manifest = read_manifest(root)
    quarantined = manifest[manifest["status"] != "accepted"][["recording_id", "reason_code", "reason"]]
    held_out_nights = int(preds.loc[preds["split"] == "test", "recording_id"].nunique())
    meta = {
        **meta,
        "written": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "held_out_nights": held_out_nights,
        "model_version": model["version"],
        "train_subjects": len(model["train_subjects"]),
        "test_subjects": model["test_subjects"],
        **{f"{name} model": info["version"] for name, info in heads.items() if name != PRIMARY},
        **{f"{name} skipped": reason for name, reason in model.get("skipped", {}).items()},
    }
    views = attention_views(preds, read_manifest_rows(root), cfg, cfg.report.attention_examples)
    night_links, nights = night_pages()
    trends = subject_trends(nights)
    trend_figures = [trend_figure(str(subject), rows) for subject, rows in trends.groupby("subject_id", sort=True)][
        : cfg.report.hypnograms
    ]
    html_text = render_report(
        ReportInputs(
            meta,
            metrics,
            summaries,
            hypnograms,
            quarantined.to_dict("records"),
            target_metrics={k: v for k, v in by_target.items() if k != PRIMARY},
            subject_ci=intervals,
            breathing=breathing_frame if len(breathing_frame) else None,
            ahi=ahi,
            ahi_figures=ahi_figures,
            attention_views=views,
            event_timelines=timelines,
            night_links=night_links,
            trends=trends if len(trends) else None,
            trend_figures=trend_figures,
        )
    )
    report_path = join(run_dir, "report", "index.html")
    write_bytes_atomic(fs, report_path, html_text.encode())
    return {
        "report": full_uri(fs, report_path),
        "summaries": full_uri(fs, join(run_dir, "summaries")),
        "metrics": {
            **_headline(metrics, by_target, ahi),
            "held_out_nights": held_out_nights,
        },
    }


def _event_counts(row: Any, detected: list[BreathingEvent]) -> dict[str, Counts]:
    """A test night's scored events (read again from its annotation files) against the detected ones;
    none for a night whose annotation files changed or went since validation (``night_labels``)."""
    from sleepsound.embed.epochs import night_labels
    from sleepsound.ingest.versions import SourceChanged

    if row is None:
        return {}
    try:
        truth = scored_events(night_labels(row, int(row["n_epochs"])).events or [])
    except SourceChanged as exc:  # no recording id in the log (a patient id): the code only
        log.warning(
            "a test night's annotation files changed or went since validation (%s): its events are left out "
            "of the breathing figures; the next run validates it again",
            exc.code,
        )
        return {}
    return match_counts(truth, detected)


def _breathing_metrics(breathing: pd.DataFrame, counts: list[dict[str, Counts]]) -> dict[str, Any] | None:
    """The detector on the test nights with scored events: event-level precision/recall/F1 per type
    (an event is found when a detection of its type overlaps it), and the per-night AHI and REI
    errors of the detector and of the respiratory head's estimate (the figures before it)."""
    if not counts or not len(breathing) or "rei_scored" not in breathing:
        return None
    test = breathing[(breathing["split"] == "test") & breathing["rei_scored"].notna()]
    out: dict[str, Any] = {"nights": len(test), "events": scores(add_counts(c for c in counts if c))}
    for name, estimate, truth in (
        ("rei", "rei_estimated", "rei_scored"),
        ("ahi", "ahi_estimated", "ahi_scored"),
        ("ahi_head", "ahi_head_estimated", "ahi_scored"),
    ):
        if estimate in test and truth in test:
            error = (test[estimate].astype(float) - test[truth].astype(float)).dropna()
            if len(error):
                out[f"{name}_mean_abs_error"] = float(error.abs().mean())
                out[f"{name}_bias"] = float(error.mean())
                out[f"{name}_within_5"] = float((error.abs() < 5).mean())
    return out


def _headline(
    metrics: dict[str, Any] | None, by_target: dict[str, dict[str, Any]], ahi: dict[str, Any] | None
) -> dict[str, Any]:
    keys = ("accuracy", "kappa", "macro_f1", "baseline_accuracy", "baseline_macro_f1", "n_epochs")
    if not metrics:
        return {k: float("nan") for k in keys}
    out = {k: metrics[k] for k in keys}
    for name, result in by_target.items():
        if name != PRIMARY:
            out[f"{name}_macro_f1"] = result["macro_f1"]
    if ahi is not None:
        out["ahi_pearson_r"] = ahi["pearson_r"]
        out["ahi_bias"] = ahi["bias"]
    return out
