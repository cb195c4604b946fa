"""A model's own files are written by the run that trained it; scoring writes only under its run.

The flows' steps in one process (no Ray, no Prefect): the library functions the train and score
flows' tasks call, on a real synthetic cohort with the tiny random Whisper from conftest. Issue 15:
`sleepsound score` overwrote the champion's models/<task>/<version>/metrics.json with the scored
nights' figures, and `models list` then contradicted promotions.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleepsound.core.config import Config
from sleepsound.embed.cohort import embed_cohort
from sleepsound.ingest.manifest import build_manifest, read_manifest, read_manifest_rows, write_manifest
from sleepsound.predict.recordings import predict_recordings
from sleepsound.registry.promotion import decide_promotions
from sleepsound.registry.serving import serving_with_unseen
from sleepsound.report.outputs import write_run_outputs
from sleepsound.synth.writers import generate_cohort
from sleepsound.train.fit import train_models


def _config(tiny_whisper: str) -> Config:
    return Config.model_validate(
        {
            "backbone": {"name": tiny_whisper, "batch_size": 4},
            "training": {"lr": 3e-3, "min_lr": 1e-4, "epochs": 4, "batch_size": 16},
        }
    )


def _ingest_and_embed(source: Path, root: str, cfg: Config, shifted: bool) -> None:
    """The ingest and embed tasks: the manifest describes ``source``, its nights are embedded."""
    write_manifest(root, build_manifest(str(source), cfg.preprocess, cfg.validation))
    accepted = [r for r in read_manifest_rows(root) if r["status"] == "accepted"]
    assert not embed_cohort(accepted, root, cfg, use_ray=False, shifted=shifted).failed


def _model_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "models").rglob("*")) if p.is_file()}


def test_scoring_other_nights_leaves_every_model_file_as_its_training_run_wrote_it(tiny_whisper, tmp_path):
    cfg = _config(tiny_whisper)
    root = str(tmp_path / "root")
    trained_on = tmp_path / "trained-on"
    generate_cohort(trained_on, n_subjects=4, hours=0.1, seed=21, sample_rate=16_000, part_seconds=360, cycle_minutes=6)

    # the train flow: ingest -> embed -> train -> promote -> predict -> report
    _ingest_and_embed(trained_on, root, cfg, shifted=True)
    model = train_models(root, cfg, "t1", read_manifest(root))
    decisions = decide_promotions(root, model, read_manifest_rows(root))
    predict_recordings(root, cfg, "t1", model, read_manifest(root))
    write_run_outputs(root, "t1", model, {"run_id": "t1"}, cfg, trained=True)
    assert all(d["promoted"] for d in decisions.values())
    metrics_path = Path(root) / "models" / "stage3" / model["version"] / "metrics.json"
    trained_metrics = json.loads(metrics_path.read_text())
    assert trained_metrics["run_id"] == "t1"
    before = _model_files(Path(root))

    # the score flow on other nights (new subjects, labelled): ingest -> embed -> champions -> predict -> report
    scored_nights = tmp_path / "scored"
    generate_cohort(
        scored_nights, n_subjects=2, hours=0.1, seed=77, sample_rate=16_000, part_seconds=360, cycle_minutes=6
    )
    _ingest_and_embed(scored_nights, root, cfg, shifted=False)
    serving = serving_with_unseen(root)
    assert serving["test_subjects"]  # the scored nights count as held-out nights: they have figures
    predict_recordings(root, cfg, "s1", serving, read_manifest(root))
    scored = write_run_outputs(root, "s1", serving, {"run_id": "s1"}, cfg)

    assert _model_files(Path(root)) == before  # byte for byte: nothing under models/ written
    run_metrics = json.loads((Path(root) / "runs" / "s1" / "metrics.json").read_text())
    assert run_metrics["n_epochs"] == scored["metrics"]["n_epochs"] != trained_metrics["n_epochs"]

    listed = CliRunner().invoke(_app(), ["models", "list", "--root", root, "--json"])
    assert listed.exit_code == 0, listed.output
    promotions = json.loads((Path(root) / "models" / "stage3" / "promotions.json").read_text())
    (row,) = [r for r in json.loads(listed.output) if r["task"] == "stage3"]
    assert row["champion"] and row["version"] == promotions[-1]["challenger"]["version"]
    assert row["macro_f1"] == pytest.approx(promotions[-1]["challenger"]["score"])  # the figure it was promoted on


def _app():
    from sleepsound.cli import app

    return app
