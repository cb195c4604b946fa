"""Epoch rows as Arrow tables and back: how rows travel from the CPU stage to the model and on.

The readers, the model stage and the collector hand each other Arrow tables of one schema
(``TRANSPORT_FIELDS`` plus the audio, then the embedding), in one process as on Ray Data, so
nothing is converted cell by cell on the way: text stays Arrow strings, nulls stay nulls, and
the audio and embeddings are fixed-size lists that numpy views without copying.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

if TYPE_CHECKING:
    from sleepsound.embed.preprocess import Epoch

AUDIO = "audio"
EMBEDDING = "embedding"
ENVELOPE = "envelope"  # an epoch's breathing envelope, [frames x features] flattened (breathing.envelope)

# Every table the CPU stage emits has this schema (and the audio), so an unlabelled night
# (all-null stages) and a labelled one (strings) form one dataset.
TRANSPORT_FIELDS: list[tuple[str, pa.DataType]] = [
    ("recording_id", pa.string()),
    ("subject_id", pa.string()),
    ("epoch_index", pa.int32()),
    ("start_s", pa.float64()),
    ("stage5", pa.string()),
    ("stage3", pa.string()),
    ("valid", pa.bool_()),
    ("invalid_reason", pa.string()),
    ("zero_rms_s", pa.float32()),
    ("nonfinite", pa.int32()),
    ("clipped_fraction", pa.float32()),
    ("apnea_frac", pa.float32()),
    ("hypopnea_frac", pa.float32()),
    ("snore_frac", pa.float32()),
    ("n_apnea", pa.int32()),
    ("n_hypopnea", pa.int32()),
    ("resp_label", pa.string()),
    ("kind", pa.string()),
    ("offset_s", pa.float32()),
    ("channel", pa.string()),
    ("n_epochs", pa.int32()),
    ("n_rows", pa.int32()),
    ("error", pa.string()),
    ("rate", pa.float64()),  # of the audio: the target rate, or the source's (preprocess.device model)
]


def fixed_size_rows(array: np.ndarray) -> pa.FixedSizeListArray:
    """A 2-D numpy array as a fixed-size-list column, one list per row."""
    array = np.ascontiguousarray(array)
    return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), int(array.shape[1]))


def rows_array(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A fixed-size-list column as a 2-D numpy array [rows, list size]: a view of one chunk, or one
    copy joining several (a batch gathered from several readers' blocks)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    views = [c.flatten().to_numpy(zero_copy_only=False).reshape(len(c), c.type.list_size) for c in chunks if len(c)]
    if len(views) == 1:
        return views[0]
    return np.concatenate(views) if views else np.zeros((0, column.type.list_size), dtype=np.float32)


def to_table(rows: list[dict[str, Any]], raw: bool = False) -> pa.Table:
    """The CPU stage's rows as one transport table: 16-kHz epochs of one length as fixed-size lists,
    or with ``raw`` (preprocess.device model) raw epochs with margins as lists of any length."""
    columns = {name: pa.array([r[name] for r in rows], type=kind) for name, kind in TRANSPORT_FIELDS}
    if raw:
        columns[AUDIO] = pa.array([np.asarray(r[AUDIO], dtype=np.float32) for r in rows], type=pa.list_(pa.float32()))
    else:
        columns[AUDIO] = fixed_size_rows(np.stack([r[AUDIO] for r in rows]).astype(np.float32, copy=False))
    if ENVELOPE in rows[0]:
        columns[ENVELOPE] = fixed_size_rows(np.stack([np.asarray(r[ENVELOPE], np.float32).ravel() for r in rows]))
    return pa.table(columns)


def rows_list(column: pa.Array | pa.ChunkedArray) -> list[np.ndarray]:
    """A list column as one numpy array per row (views of Arrow's buffers)."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out: list[np.ndarray] = []
    for chunk in chunks:
        values = chunk.values.to_numpy(zero_copy_only=False)
        offsets = chunk.offsets.to_numpy()
        out += [values[offsets[i] : offsets[i + 1]] for i in range(len(chunk))]
    return out


def table_rows(tables: Iterable[pa.Table]) -> Iterator[dict[str, Any]]:
    """The model stage's tables as plain rows for the collector: Python values, None for null,
    the embedding (and the breathing envelope, flat) as numpy rows."""
    for table in tables:
        if not table.num_rows:
            continue
        arrays = [name for name in (EMBEDDING, ENVELOPE) if name in table.column_names]
        values = {name: rows_array(table[name]) for name in arrays}
        for i, row in enumerate(table.drop_columns(arrays).to_pylist()):
            for name in arrays:
                row[name] = values[name][i]
            yield row


def epoch_row(recording_id: str, epoch: Epoch, epoch_seconds: float, channel: str, rate: float) -> dict[str, Any]:
    """The transport row of a valid epoch cut outside a night's readers (a live stream, clips laid into
    epochs): no labels, no night length (``n_epochs``/``n_rows`` -1), so the model stage takes it as
    it takes a reader's."""
    row: dict[str, Any] = dict.fromkeys(name for name, _ in TRANSPORT_FIELDS)
    return row | {
        "recording_id": recording_id,
        "subject_id": recording_id,
        "epoch_index": epoch.index,
        "start_s": epoch.index * epoch_seconds,
        "valid": True,
        "zero_rms_s": epoch.zero_rms_seconds,
        "nonfinite": epoch.quality.nonfinite,
        "clipped_fraction": epoch.quality.clipped_fraction,
        "kind": "epoch",
        "offset_s": 0.0,
        "channel": channel,
        "n_epochs": -1,
        "n_rows": -1,
        "rate": rate,
        AUDIO: epoch.audio,
    }


def row_frames(row: dict[str, Any], n_layers: int) -> np.ndarray:
    """An embedded row's frames: [T, D], or [T, L, D] for a backbone that keeps ``n_layers`` layers (0: one)."""
    n_frames, dim = int(row["n_frames"]), int(row["dim"])
    flat = np.asarray(row[EMBEDDING])
    return flat.reshape((n_frames, n_layers, dim) if n_layers else (n_frames, dim))
