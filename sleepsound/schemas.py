"""Arrow schemas of every Parquet artifact, in one place so writers and readers agree.

Each artifact carries ``schema_version``-free columns; the version of the whole layout
is ``LAYOUT_VERSION``, written into run metadata. Readers need only pandas/pyarrow.
"""

from __future__ import annotations

import pyarrow as pa

LAYOUT_VERSION = 1

MANIFEST = pa.schema([
    ("recording_id", pa.string()),
    ("subject_id", pa.string()),
    ("layout", pa.string()),
    ("source_uris", pa.list_(pa.string())),
    ("n_parts", pa.int32()),
    ("bytes", pa.int64()),
    ("sha256", pa.string()),
    ("duration_s", pa.float64()),
    ("sample_rate", pa.float64()),
    ("channels", pa.list_(pa.string())),
    ("label_source", pa.string()),      # "rml", "csv" or "none"
    ("labels_uri", pa.string()),
    ("events_uri", pa.string()),        # plain layout's <name>.events.csv; PSG-Audio events live in the RML
    ("n_epochs", pa.int32()),
    ("status", pa.string()),            # "accepted" or "quarantined"
    ("reason_code", pa.string()),
    ("reason", pa.string()),
])

EPOCHS = pa.schema([
    ("recording_id", pa.string()),
    ("subject_id", pa.string()),
    ("epoch_index", pa.int32()),
    ("start_s", pa.float64()),
    ("stage5", pa.string()),            # W N1 N2 N3 R, UNS, or null when unlabelled
    ("stage3", pa.string()),            # Wake NREM REM, or null
    ("valid", pa.bool_()),
    ("invalid_reason", pa.string()),
    ("zero_rms_s", pa.float32()),
    ("nonfinite", pa.int32()),          # NaN/Inf samples in the raw epoch
    ("clipped_fraction", pa.float32()), # share of raw samples at full scale
])


def embeddings_schema(n_frames: int, dim: int) -> pa.Schema:
    """Frame embeddings pooled in time, float16, one row per valid epoch."""
    return pa.schema([
        ("recording_id", pa.string()),
        ("epoch_index", pa.int32()),
        ("n_frames", pa.int32()),
        ("dim", pa.int32()),
        ("embedding", pa.list_(pa.float16(), n_frames * dim)),
    ])


# Written hive-partitioned (``predictions/recording_id=<id>/part-0.parquet``): the folder
# carries ``recording_id`` and the files hold the other columns.
PREDICTIONS = pa.schema([
    ("recording_id", pa.string()),
    ("subject_id", pa.string()),
    ("epoch_index", pa.int32()),
    ("start_s", pa.float64()),
    ("stage_true", pa.string()),
    ("stage_pred", pa.string()),
    ("prob_wake", pa.float32()),
    ("prob_nrem", pa.float32()),
    ("prob_rem", pa.float32()),
    ("split", pa.string()),             # "train", "test" or "unlabelled"
    ("model_version", pa.string()),
])

SUMMARIES_FIELDS = [
    "recording_id", "subject_id", "split", "source", "time_in_bed_min", "total_sleep_time_min",
    "sleep_efficiency", "sleep_onset_latency_min", "waso_min", "rem_latency_min",
    "pct_wake", "pct_nrem", "pct_rem",
]


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast a table to ``schema`` (column order and types), failing loudly on a mismatch."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise ValueError(f"table lacks columns {missing}")
    return table.select(schema.names).cast(schema)
