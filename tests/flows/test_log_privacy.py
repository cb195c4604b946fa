"""Prefect's logs name no recording: in PSG-Audio a recording id is a patient id, and whoever
reads the Prefect API reads the logs. Counts and reason codes are logged; the manifest (data
under the root, access-controlled like the recordings) says which recordings and why."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from prefect import flow

from sleepsound.core.config import Config
from sleepsound.synth.writers import generate_cohort
from tasks.embed import embed
from tasks.ingest import ingest

pytestmark = pytest.mark.usefixtures("ray_session")


@flow(name="log-privacy-probe")
def _ingest_then_embed(source: str, root: str, config: dict, lost: list[str]) -> dict:
    """Validate, lose one accepted night's files (as a failing disk would), embed what is left."""
    ingest(source, root, config)
    for path in lost:
        Path(path).write_bytes(b"\x00gone" * 16)
    return embed(root, config, use_ray=False)


def test_prefect_logs_of_quarantined_nights_carry_counts_and_codes_not_recording_ids(
    tiny_whisper, tmp_path, caplog
) -> None:
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, n_subjects=3, hours=0.1, seed=5, sample_rate=16_000, part_seconds=360, cycle_minutes=6)
    patients = sorted(p.name for p in (cohort / "APNEA_EDF").iterdir())
    (cohort / "APNEA_EDF" / patients[0] / f"{patients[0]}[001].edf").write_bytes(b"\x00garbage" * 64)
    lost = sorted(str(p) for p in (cohort / "APNEA_EDF" / patients[1]).glob("*.edf"))
    root = tmp_path / "root"
    config = Config.model_validate({"backbone": {"name": tiny_whisper, "batch_size": 4}}).model_dump()

    with caplog.at_level(logging.INFO):
        embedded = _ingest_then_embed(str(cohort), str(root), config, lost)
    assert embedded["failed"] == 1 and embedded["embedded"] == 1

    logged = [r.getMessage() for r in caplog.records]  # what Prefect's API handler was handed, and more
    for patient in patients:
        assert not [m for m in logged if patient in m], patient
    assert any("quarantined 1 recordings (unreadable_edf: 1)" in m for m in logged), logged
    assert any("quarantined 1 recordings while streaming (source_changed: 1)" in m for m in logged), logged
    # The manifest still names them, with their reasons: it is data, not a log.
    manifest = pd.read_parquet(root / "manifest" / "manifest.parquet").set_index("recording_id")
    assert manifest.loc[patients[0], "reason_code"] == "unreadable_edf"
    assert manifest.loc[patients[1], "reason_code"] == "source_changed"  # its files changed after validation
