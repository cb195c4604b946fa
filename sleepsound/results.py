"""A run's outputs after prediction: metrics on held-out nights, night summaries, the report."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa

from sleepsound import model_store
from sleepsound.labels import STAGES_3
from sleepsound.manifest import read_manifest
from sleepsound.metrics import evaluate
from sleepsound.report import hypnogram_figure, render_report
from sleepsound.storage import full_uri, join, open_root, read_json, write_bytes_atomic, write_json, write_table
from sleepsound.summaries import night_summary

MAX_HYPNOGRAMS = 12


def read_predictions(root: str, run_id: str) -> pd.DataFrame:
    fs, root_path = open_root(root)
    frames = []
    for path in sorted(fs.glob(join(root_path, "runs", run_id, "predictions", "recording_id=*", "*.parquet"))):
        with fs.open(path, "rb") as handle:
            frame = pd.read_parquet(handle)
        frame.insert(0, "recording_id", path.split("recording_id=")[1].split("/")[0])
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _stages(values: pd.Series) -> list[str | None]:
    return [v if isinstance(v, str) else None for v in values]


def write_run_outputs(root: str, run_id: str, model: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Compute and write metrics.json, summaries and report/index.html for ``run_id``."""
    fs, root_path = open_root(root)
    preds = read_predictions(root, run_id).sort_values(["recording_id", "epoch_index"])
    test = preds[(preds["split"] == "test") & preds["stage_true"].notna() & preds["stage_pred"].notna()]
    lineage = read_json(fs, join(model["model_dir"], "lineage.json"))
    majority = STAGES_3[max(range(3), key=lambda i: lineage["class_counts"][i])]
    metrics = evaluate(test["stage_true"].astype(str), test["stage_pred"].astype(str), STAGES_3, majority) \
        if len(test) else None

    rows, figures = [], []
    for rec, night in preds.groupby("recording_id", sort=True):
        split = str(night["split"].iloc[0])
        for source, column in (("predicted", "stage_pred"), ("scored", "stage_true")):
            if source == "scored" and split == "unlabelled":
                continue
            rows.append({"recording_id": rec, "subject_id": str(night["subject_id"].iloc[0]), "split": split,
                         "source": source, **night_summary(_stages(night[column]))})
        if split == "test" and len(figures) < MAX_HYPNOGRAMS:
            figures.append(hypnogram_figure(rec, night["start_s"].to_numpy(), _stages(night["stage_true"]),
                                            _stages(night["stage_pred"])))
    summaries = pd.DataFrame(rows)
    run_dir = join(root_path, "runs", run_id)
    write_table(fs, join(run_dir, "summaries", "summaries.parquet"), pa.Table.from_pandas(summaries, preserve_index=False))
    write_json(fs, join(run_dir, "metrics.json"), metrics or {})
    if metrics:
        task = model.get("task", "stage3")
        model_store.write_metrics(root, task, model["version"], {**metrics, "run_id": run_id})
        if model_store.champion_version(root, task) is None:
            model_store.set_champion(root, task, model["version"], "first evaluated model of this task")

    manifest = read_manifest(root)
    quarantined = manifest[manifest["status"] != "accepted"][["recording_id", "reason_code", "reason"]]
    meta = {**meta, "model_version": model["version"], "train_subjects": len(model["train_subjects"]),
            "test_subjects": model["test_subjects"]}
    html_text = render_report(meta, metrics, summaries, figures, quarantined.to_dict("records"))
    report_path = join(run_dir, "report", "index.html")
    write_bytes_atomic(fs, report_path, html_text.encode())
    return {"report": full_uri(fs, report_path), "summaries": full_uri(fs, join(run_dir, "summaries")),
            "metrics": _headline(metrics)}


def _headline(metrics: dict[str, Any] | None) -> dict[str, Any]:
    keys = ("accuracy", "kappa", "macro_f1", "baseline_accuracy", "baseline_macro_f1", "n_epochs")
    if not metrics:
        return {k: float("nan") for k in keys}
    return {k: metrics[k] for k in keys}
