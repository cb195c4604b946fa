"""Small prediction tables shaped like a run's (``core.schemas.PREDICTIONS``), shared by the night tests."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sleepsound.labels.vocabulary import EPOCH_SECONDS

# A night of 2 h: 10 min awake, then NREM with two 10-min REM periods, 10 min awake near the end.
HYPNOGRAM5 = (
    ["W"] * 20
    + ["N1"] * 10
    + ["N2"] * 60
    + ["R"] * 20
    + ["N3"] * 40
    + ["N2"] * 40
    + ["R"] * 20
    + ["W"] * 20
    + ["N2"] * 10
)
STAGE3 = {"W": "Wake", "R": "REM", "N1": "NREM", "N2": "NREM", "N3": "NREM"}


def night_predictions(recording_id: str, subject_id: str, seed: int, *, five_class: bool = True) -> pd.DataFrame:
    """One predicted night (240 epochs) with scored events in REM and NREM and a snoring stretch."""
    rng = np.random.default_rng(seed)
    n = len(HYPNOGRAM5)
    stage5 = list(HYPNOGRAM5)
    events_true = np.zeros(n, dtype=np.float32)
    events_true[[40, 41, 100, 105, 200]] = 1.0  # 2 in NREM, 3 in REM
    prob_event = np.clip(0.05 + 0.6 * events_true + rng.uniform(0, 0.05, n), 0, 1).astype(np.float32)
    prob_snore = np.where((np.arange(n) > 120) & (np.arange(n) < 180), 0.8, 0.05).astype(np.float32)
    return pd.DataFrame(
        {
            "recording_id": recording_id,
            "subject_id": subject_id,
            "epoch_index": np.arange(n, dtype=np.int32),
            "start_s": np.arange(n) * EPOCH_SECONDS,
            "stage_true": [STAGE3[s] for s in stage5],
            "stage_pred": [STAGE3[s] for s in stage5],
            "stage5_true": stage5,
            "stage5_pred": stage5 if five_class else [None] * n,
            "prob_apnea_hypopnea": prob_event,
            "prob_snore": prob_snore,
            "resp_pred": np.where(prob_event > 0.5, "apnea_hypopnea", "none"),
            "events_true": events_true,
            "snore_frac_true": (prob_snore > 0.5).astype(np.float32),
            "breath_heard_s": np.full(n, EPOCH_SECONDS, dtype=np.float32),  # heard all night
            "split": "test",
        }
    )


def write_events(root: Path, run_id: str, recording_id: str, rows: list[tuple[float, float, str, float]]) -> Path:
    """The per-night event table as the breathing stage writes it."""
    folder = root / "runs" / run_id / "events" / f"recording_id={recording_id}"
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "start_s": [r[0] for r in rows],
            "end_s": [r[1] for r in rows],
            "type": [r[2] for r in rows],
            "confidence": [r[3] for r in rows],
        }
    )
    pq.write_table(table, folder / "part-0.parquet")
    return folder / "part-0.parquet"


NIGHT_START = datetime(2024, 3, 9, 22, 41, 0)


@pytest.fixture(scope="session")
def three_nights() -> pd.DataFrame:
    """Two nights of subject P1 (one with 5-class stages, one 3-class only) and one of P2."""
    return pd.concat(
        [
            night_predictions("P1-night1", "P1", 1),
            night_predictions("P1-night2", "P1", 2, five_class=False),
            night_predictions("P2-night1", "P2", 3),
        ],
        ignore_index=True,
    )
