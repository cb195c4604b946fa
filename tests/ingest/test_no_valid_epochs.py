"""A night without a single valid epoch (all NaN/Inf or silent) is quarantined `no_valid_epochs` by the
flows too, not only by `sleepsound validate`: their quick validation reads headers only, and such a
night was embedded with nothing in it and scored REI 0, severity "normal" (defect 6).

The decision is `ingest.manifest.nights_without_valid_epochs`, made after the embedding (which
measures every epoch) by the flows' embed task; tested here on the real embedding stage, in one
process (no Ray, no Prefect), with the weightless ``null`` backbone; then once through the flows' own
ingest and embed tasks, as the flow tests run them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from prefect import flow

from sleepsound.core.config import Config
from sleepsound.embed.cohort import embed_cohort
from sleepsound.ingest.manifest import (
    build_manifest,
    nights_without_valid_epochs,
    quarantine,
    read_manifest_rows,
    write_manifest,
)
from sleepsound.synth.writers import generate_cohort

RATE = 16_000


def _source(tmp_path: Path) -> tuple[Path, str]:
    """One healthy plain night, one all NaN, one with Inf in each of its two epochs."""
    source = tmp_path / "nights"
    generate_cohort(
        tmp_path / "good", n_subjects=1, hours=0.05, seed=6, sample_rate=RATE, layout="plain", cycle_minutes=3
    )
    shutil.copytree(tmp_path / "good", source, ignore=shutil.ignore_patterns("*.json"))
    noise = np.random.default_rng(0).normal(0, 0.1, 65 * RATE).astype(np.float32)
    sf.write(source / "nan.wav", np.full(65 * RATE, np.nan, np.float32), RATE, subtype="FLOAT")
    half = noise.copy()
    half[: 31 * RATE] = np.inf  # epoch 0 all Inf, epoch 1 partly: neither is valid
    sf.write(source / "inf.wav", half, RATE, subtype="FLOAT")
    return source, next(source.glob("*.flac")).stem


CONFIG = {"backbone": {"name": "null", "batch_size": 4}}


def test_a_night_without_a_valid_epoch_is_quarantined_after_embedding(tmp_path: Path) -> None:
    (source, good), root = _source(tmp_path), tmp_path / "root"
    cfg = Config.model_validate(CONFIG)

    write_manifest(str(root), build_manifest(str(source), cfg.preprocess, cfg.validation))  # quick, as the flows
    rows = read_manifest_rows(str(root))
    assert {r["recording_id"]: r["status"] for r in rows} == dict.fromkeys([good, "inf", "nan"], "accepted")
    stats = embed_cohort(rows, str(root), cfg, use_ray=False, shifted=False)
    assert not stats.failed

    empty = nights_without_valid_epochs(str(root), cfg, rows)
    assert sorted(empty) == ["inf", "nan"]
    assert "Mic: none of the 2 epochs is usable (all silent or NaN/Inf)" in empty["nan"]
    rows = {r["recording_id"]: r for r in quarantine(rows, empty, "no_valid_epochs")}
    assert rows[good]["status"] == "accepted"
    for rec in ("inf", "nan"):
        assert rows[rec]["status"] == "quarantined" and rows[rec]["reason_code"] == "no_valid_epochs"
        assert rows[rec]["reason"].startswith(str(source / f"{rec}.wav"))
    # the rule `sleepsound validate` applies while it streams the audio: the same code for the same nights
    deep = {r["recording_id"]: r["reason_code"] for r in build_manifest(str(source), cfg.preprocess, deep=True)}
    assert deep == {good: None, "inf": "no_valid_epochs", "nan": "no_valid_epochs"}


@flow(name="no-valid-epochs-probe")
def _ingest_then_embed(source: str, root: str, config: dict) -> dict:
    from tasks.embed import embed
    from tasks.ingest import ingest

    ingested = ingest(source, root, config)
    return {"ingested": ingested, "embedded": embed(root, config, use_ray=False, shifted=False)}


@pytest.mark.usefixtures("ray_session")
def test_the_flows_embed_task_quarantines_it_so_nothing_scores_it(tmp_path: Path) -> None:
    """What `score`, `run`, `train` and `nightly` do: ingest (quick) accepted both bad nights, and they
    were scored REI 0, "normal". Now the embed task rewrites the manifest, so predict never sees them."""
    (source, good), root = _source(tmp_path), tmp_path / "root"
    config = Config.model_validate(CONFIG).model_dump()
    out = _ingest_then_embed(str(source), str(root), config)
    assert out["ingested"]["accepted"] == 3  # quick validation reads headers only
    manifest = pd.read_parquet(root / "manifest" / "manifest.parquet").set_index("recording_id")
    assert manifest["status"].to_dict() == {good: "accepted", "inf": "quarantined", "nan": "quarantined"}
    assert set(manifest.loc[["inf", "nan"], "reason_code"]) == {"no_valid_epochs"}
