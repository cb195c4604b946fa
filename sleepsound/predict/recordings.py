"""Predict every accepted recording with each target's head: one Parquet file of epochs per night,
and the night's breathing events (``sleepsound.breathing``) in a table beside it.

Each row carries the scored side (stages, respiratory label re-derived as in training, event
counts) beside every head's prediction and probabilities, and the stage3 head's attention
weights, so metrics, summaries and the report read nothing else. Invalid epochs are rows
with null predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sleepsound.breathing.combine import detect_night_and_heard
from sleepsound.breathing.heard import with_heard_seconds
from sleepsound.breathing.store import load_envelope, write_events
from sleepsound.core import schemas
from sleepsound.core.config import Config
from sleepsound.core.records import TrainedModels
from sleepsound.core.storage import RootLike, drop_other_partitions, join, open_root, partition, write_table
from sleepsound.embed.cache import channel_configs, epochs_path, read_cached_table
from sleepsound.ingest.versions import SourceChanged
from sleepsound.labels.targets import PRIMARY, TARGETS, Target
from sleepsound.models.heads.artifacts import load_head
from sleepsound.train.dataset import EmbeddedEpochs, load_embedded, model_inputs
from sleepsound.train.loop import predict_with_weights


def predict_recordings(
    root: RootLike,
    cfg: Config,
    run_id: str,
    model: TrainedModels,
    manifest: pd.DataFrame,
    recordings: list[str] | None = None,
    left_out: dict[str, str] | None = None,
) -> str:
    """Per-epoch predictions of every trained head for every accepted recording (or only those
    in ``recordings``), one Parquet file each.

    A night whose breathing envelope had to be made from its audio again, and whose files changed
    since validation (``SourceChanged``), gets no file at all (neither predictions nor events: one
    version per night, the validated one); with ``left_out`` given it is added there (recording id
    -> the message naming the file) and the other nights go on, so the caller can quarantine it as
    ``source_changed`` as the embed step does; without, the ``SourceChanged`` propagates.

    Afterwards the run's prediction and event folders hold the nights predicted here and no other:
    a rerun of the same run id (finishing a killed run, the demo's fixed ``demo``) leaves no file of
    a night quarantined since the first attempt, which its report would otherwise count."""
    fs, root_path = open_root(root)
    heads = {
        name: (TARGETS[name], load_head(fs, info["model_dir"]), info)
        for name, info in (model.get("heads") or {PRIMARY: model}).items()
    }
    out_dir = join(root_path, "runs", run_id, "predictions")
    accepted = manifest[manifest["status"] == "accepted"]
    if recordings is not None:
        accepted = accepted[accepted["recording_id"].astype(str).isin(set(recordings))]
    # The given manifest's rows as plain values (None, not NaN; lists, not arrays), for the event detector.
    typed = pa.Table.from_pandas(accepted, preserve_index=False).to_pylist()
    manifest_rows = {str(r["recording_id"]): r for r in typed}
    predicted: set[str] = set()
    for row in accepted.itertuples(index=False):
        manifest_row = manifest_rows[str(row.recording_id)]
        try:  # first: a night that cannot be read as validated is left out before anything of it is written
            env, valid = load_envelope(root, channel_configs(cfg)[0], manifest_row)
        except SourceChanged as exc:
            if left_out is None:
                raise
            left_out[str(row.recording_id)] = str(exc)
            continue
        split = (
            "unlabelled"
            if row.label_source == "none"
            else "test"
            if str(row.subject_id) in model["test_subjects"]
            else "validation"
            if str(row.subject_id) in model.get("val_subjects", [])
            else "train"
        )
        data = load_embedded(root, cfg, accepted[accepted["recording_id"] == row.recording_id])
        epochs = _all_epochs(root, cfg, row.recording_id)
        truth = None
        if any(target.frames for target, _, _ in heads.values()) and row.label_source != "none":
            from sleepsound.train.frames import frame_labels

            truth = frame_labels(data, manifest_rows, cfg.preprocess.epoch_seconds)
        table = prediction_table(heads, data, epochs, cfg, split, model["version"], truth)
        # The night's apnoeas and hypopnoeas from its breathing envelope (the first channel's, made from
        # its audio if the cache has none), and where in each epoch breathing was heard to find them.
        events, heard = detect_night_and_heard(env, valid, table, cfg.preprocess.epoch_seconds)
        table = with_heard_seconds(table, heard, cfg.preprocess.epoch_seconds)
        # Hive partitioning: the folder name carries recording_id, so the file must not.
        write_table(
            fs,
            join(partition(out_dir, str(row.recording_id)), "part-0.parquet"),
            table.drop_columns(["recording_id"]),
        )
        write_events(root, run_id, str(row.recording_id), events)
        predicted.add(str(row.recording_id))
    for folder in (out_dir, join(root_path, "runs", run_id, "events")):
        drop_other_partitions(fs, folder, predicted)
    return out_dir


def _all_epochs(root: RootLike, cfg: Config, recording_id: str) -> list[dict[str, Any]]:
    store = open_root(root)
    # With two channels the epoch list is the first channel's; only windows valid in both have features.
    return read_cached_table(store, epochs_path(store.path, channel_configs(cfg)[0], recording_id)).to_pylist()


def prediction_table(
    heads: dict[str, tuple[Target, Any, dict[str, Any]]],
    data: EmbeddedEpochs,
    epochs: list[dict[str, Any]],
    cfg: Config,
    split: str,
    version: str,
    frame_truth: np.ndarray | None = None,
) -> pa.Table:
    """One row per epoch of the night: scored labels, each head's prediction, stage3's attention,
    and the per-second snoring head's frames where there is one (``frame_truth``: ``data``'s frame
    targets, ``train.frames.frame_labels``, for labelled nights)."""
    outputs: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    frames: dict[int, np.ndarray] = {}
    truth: dict[int, np.ndarray] = {}
    if len(data.features):
        index = data.epochs["epoch_index"].astype(int).to_numpy()
        epoch_rows = [name for name, (target, _, _) in heads.items() if not target.frames]
        x, mask = model_inputs(data, cfg.training.context_epochs) if epoch_rows else (None, None)
        for name, (target, head, _) in heads.items():
            if target.frames:  # each epoch's own frames (data holds an epoch's context neighbours too)
                from sleepsound.train.frames import frame_probs

                frames = {int(i): p for i, p in zip(index, frame_probs(head, data.features), strict=True)}
                if frame_truth is not None:
                    truth = {int(i): t for i, t in zip(index, frame_truth, strict=True) if (t >= 0).all()}
                continue
            probs, weights = predict_with_weights(head, x, mask=mask)
            outputs[name] = {int(i): (p, w) for i, p, w in zip(index, probs, weights, strict=True)}
    labels = _scored_labels(epochs, cfg)
    rows = []
    for e, scored in zip(epochs, labels, strict=True):
        i = int(e["epoch_index"])
        row: dict[str, Any] = {
            "recording_id": e["recording_id"],
            "subject_id": e["subject_id"],
            "epoch_index": i,
            "start_s": e["start_s"],
            "split": split,
            "model_version": version,
            **scored,
        }
        for name, (target, _, _) in heads.items():
            got = outputs.get(name, {}).get(i)
            row[target.pred_column] = None if got is None else target.classes[int(np.argmax(got[0]))]
            for cls, column in _PROB_COLUMNS.get(name, {}).items():
                row[column] = None if got is None else float(got[0][target.classes.index(cls)])
            if name == PRIMARY:
                row["attention"] = None if got is None else got[1].astype(np.float32).tolist()
        row |= _snore_columns(frames.get(i), truth.get(i), cfg.preprocess.epoch_seconds)
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schemas.PREDICTIONS)


def _snore_columns(probs: np.ndarray | None, truth: np.ndarray | None, epoch_seconds: float) -> dict[str, Any]:
    """The per-second snoring columns of one epoch (all null without the head or the epoch's features)."""
    from sleepsound.train.frames import CUT

    if probs is None:
        return {"snore_s_pred": None, "snore_frames": None, "snore_frames_true": None}
    return {
        "snore_s_pred": float((probs > CUT).sum() * epoch_seconds / len(probs)),
        "snore_frames": probs.astype(np.float32).tolist(),
        "snore_frames_true": None if truth is None else truth.astype(np.int8).tolist(),
    }


_PROB_COLUMNS = {
    "stage3": {"Wake": "prob_wake", "NREM": "prob_nrem", "REM": "prob_rem"},
    "resp": {"snore": "prob_snore", "apnea_hypopnea": "prob_apnea_hypopnea"},
}


def _scored_labels(epochs: list[dict[str, Any]], cfg: Config) -> list[dict[str, Any]]:
    """The scored side of each epoch: stages, respiratory label (re-derived as in training), events."""
    from sleepsound.labels.events import resp_labels
    from sleepsound.labels.vocabulary import STAGES_5

    frame = pd.DataFrame(epochs)
    has_events = "apnea_frac" in frame and frame["apnea_frac"].notna().any()
    resp = (
        resp_labels(
            frame["apnea_frac"],
            frame["hypopnea_frac"],
            frame["snore_frac"],
            frame["n_apnea"],
            frame["n_hypopnea"],
            cfg.preprocess.epoch_seconds,
            cfg.preprocess.resp_min_overlap_s,
        )
        if has_events
        else [None] * len(frame)
    )
    out = []
    for e, r in zip(epochs, resp, strict=True):
        events = None if e.get("n_apnea") is None else float(e["n_apnea"] or 0) + float(e.get("n_hypopnea") or 0)
        out.append(
            {
                "stage_true": e["stage3"],
                "stage5_true": e["stage5"] if e["stage5"] in STAGES_5 else None,
                "resp_true": r if isinstance(r, str) else None,
                "events_true": events,
                "snore_frac_true": e.get("snore_frac"),
            }
        )
    return out
