"""Arrow schemas of every Parquet artifact, in one place so writers and readers agree.

Each artifact carries ``schema_version``-free columns; the version of the whole layout
is ``LAYOUT_VERSION``, written into run metadata. Readers need only pandas/pyarrow.
"""

from __future__ import annotations

import pyarrow as pa

LAYOUT_VERSION = 1

# One validation finding (see sleepsound.core.findings): level recording|epoch, severity error|warning.
FINDING = pa.struct(
    [
        ("level", pa.string()),
        ("code", pa.string()),
        ("severity", pa.string()),
        ("path", pa.string()),
        ("message", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
    ]
)

# One of a night's files as validation listed it (sleepsound.ingest.versions): readers check it is still so.
FILE_VERSION = pa.struct([("uri", pa.string()), ("size", pa.int64()), ("version", pa.string())])

MANIFEST = pa.schema(
    [
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
        ("label_source", pa.string()),  # "rml", "csv" or "none"
        ("labels_uri", pa.string()),
        ("events_uri", pa.string()),  # plain layout's <name>.events.csv; PSG-Audio events live in the RML
        ("n_epochs", pa.int32()),
        ("status", pa.string()),  # "accepted" or "quarantined"
        ("reason_code", pa.string()),
        ("reason", pa.string()),
        ("findings", pa.list_(FINDING)),  # errors and warnings (sleepsound.core.findings.Finding)
        ("source_stamp", pa.string()),  # files' sizes and versions + settings: unchanged -> row reused
        ("labels_sha256", pa.string()),  # of the stage and event files as validated; null without labels
        ("file_versions", pa.list_(FILE_VERSION)),  # audio, stage and event files: size and ETag/mtime
    ]
)

EPOCHS = pa.schema(
    [
        ("recording_id", pa.string()),
        ("subject_id", pa.string()),
        ("epoch_index", pa.int32()),
        ("start_s", pa.float64()),
        ("stage5", pa.string()),  # W N1 N2 N3 R, UNS, or null when unlabelled
        ("stage3", pa.string()),  # Wake NREM REM, or null
        ("valid", pa.bool_()),
        ("invalid_reason", pa.string()),
        ("zero_rms_s", pa.float32()),
        ("nonfinite", pa.int32()),  # NaN/Inf samples in the raw epoch
        ("clipped_fraction", pa.float32()),  # share of raw samples at full scale
        # Respiratory labels from the scored events (sleepsound.labels.events); all null when the night
        # has no events file. Fractions: share of the epoch under the union of that kind's events.
        ("apnea_frac", pa.float32()),
        ("hypopnea_frac", pa.float32()),
        ("snore_frac", pa.float32()),
        ("n_apnea", pa.int32()),  # apnoeas starting in the epoch (sum over a night = count)
        ("n_hypopnea", pa.int32()),
        ("resp_label", pa.string()),  # "none", "snore", "apnea_hypopnea", or null
    ]
)


def embeddings_schema(n_frames: int, dim: int, n_layers: int = 1) -> pa.Schema:
    """Frame embeddings pooled in time, float16, one row per valid epoch.

    ``embedding`` is a row-major [n_frames, n_layers, dim] array, flattened (``backbone.layers``
    keeps several hidden states). Caches written before ``n_layers`` existed lack the column
    and hold one layer: read a missing column as 1.
    """
    return pa.schema(
        [
            ("recording_id", pa.string()),
            ("epoch_index", pa.int32()),
            ("n_frames", pa.int32()),
            ("dim", pa.int32()),
            ("n_layers", pa.int32()),
            ("embedding", pa.list_(pa.float16(), n_frames * n_layers * dim)),
        ]
    )


# Respiratory columns shared by epochs and shifted windows (labels over each row's own window).
_RESP_FIELDS = [
    field
    for field in EPOCHS
    if field.name in ("apnea_frac", "hypopnea_frac", "snore_frac", "n_apnea", "n_hypopnea", "resp_label")
]


def shifted_embeddings_schema(n_frames: int, dim: int, n_layers: int = 1) -> pa.Schema:
    """15-s shifted training windows, one row per same-stage valid pair of epochs.

    ``epoch_index`` is the pair's first epoch; the window starts ``offset_s`` into it.
    ``embedding`` and ``n_layers`` as in :func:`embeddings_schema`.
    """
    return pa.schema(
        [
            ("recording_id", pa.string()),
            ("epoch_index", pa.int32()),
            ("offset_s", pa.float32()),
            ("stage5", pa.string()),  # the pair's 5-class stage, null when the two differ (N2/N3)
            ("stage3", pa.string()),
            *_RESP_FIELDS,
            ("n_frames", pa.int32()),
            ("dim", pa.int32()),
            ("n_layers", pa.int32()),
            ("embedding", pa.list_(pa.float16(), n_frames * n_layers * dim)),
        ]
    )


# Written hive-partitioned (``predictions/recording_id=<id>/part-0.parquet``): the folder
# carries ``recording_id`` and the files hold the other columns.
PREDICTIONS = pa.schema(
    [
        ("recording_id", pa.string()),
        ("subject_id", pa.string()),
        ("epoch_index", pa.int32()),
        ("start_s", pa.float64()),
        ("stage_true", pa.string()),
        ("stage_pred", pa.string()),
        ("prob_wake", pa.float32()),
        ("prob_nrem", pa.float32()),
        ("prob_rem", pa.float32()),
        ("stage5_true", pa.string()),  # W, N1, N2, N3, R where the scoring has them
        ("stage5_pred", pa.string()),  # null when no 5-class head was trained
        ("resp_true", pa.string()),  # none / snore / apnea_hypopnea; null for nights without events
        ("resp_pred", pa.string()),
        ("prob_snore", pa.float32()),
        ("prob_apnea_hypopnea", pa.float32()),
        ("events_true", pa.float32()),  # scored apnoea + hypopnoea onsets in the epoch
        ("snore_frac_true", pa.float32()),  # scored share of the epoch with snoring
        ("attention", pa.list_(pa.float32())),  # the stage3 head's weights over its input frames
        # The per-second snoring head's (null without one): seconds of the epoch called snoring, each
        # pooled frame's P(snoring), and the frames' scored truth (1 snoring; null for unlabelled nights).
        ("snore_s_pred", pa.float32()),
        ("snore_frames", pa.list_(pa.float32())),
        ("snore_frames_true", pa.list_(pa.int8())),
        # Seconds of the epoch in which breathing was heard (``breathing.heard``): null without an envelope.
        ("breath_heard_s", pa.float32()),
        ("split", pa.string()),  # "train", "validation", "test" or "unlabelled"
        ("model_version", pa.string()),  # the stage3 head's; the run's metadata names every head
    ]
)
PREDICTIONS_VERSION = 4  # 3: the per-second snoring columns; 4: breath_heard_s

# A night's breathing envelope (cache: <root>/breathing/<preproc>/<rec>-<sha>.parquet), one row per
# 0.1-s frame from the recording's start; the features are those of sleepsound.breathing.envelope.
ENVELOPE = pa.schema(
    [
        ("epoch_index", pa.int32()),
        ("valid", pa.bool_()),  # the epoch's validity (an invalid epoch's frames are not read as breathing)
        ("breath_db", pa.float32()),
        ("broad_db", pa.float32()),
        ("flatness", pa.float32()),
        ("voicing", pa.float32()),
    ]
)

# A night's breathing events (runs/<run-id>/events/recording_id=<rec>/part-0.parquet): the detector's
# apnoeas and hypopnoeas, times in seconds from the recording's start. The night report reads these columns.
# As in predictions/, the recording id is the folder's (hive partition), not a column: with it in both,
# pandas and pyarrow refuse to read the folder as one dataset (string vs dictionary).
EVENTS = pa.schema(
    [
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("type", pa.string()),  # "apnea" or "hypopnea"
        ("confidence", pa.float32()),  # in [0, 1]
    ]
)

# A night's snoring bouts from the per-second snoring head (runs/<run-id>/snoring/recording_id=<rec>/
# part-0.parquet, beside the event table): runs of consecutive frames called snoring, in seconds
# from the recording's start. Written for runs whose predictions have the per-second columns. The
# recording id is the folder's, as for the events.
SNORING = pa.schema(
    [
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("mean_prob", pa.float32()),  # the bout's mean P(snoring)
    ]
)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast a table to ``schema`` (column order and types), failing loudly on a mismatch."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise ValueError(f"table lacks columns {missing}")
    return table.select(schema.names).cast(schema)
