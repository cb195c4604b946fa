"""Nights' partition folders by their literal names, on local disk and a real S3 (moto's server): fsspec
reads ``[``, ``*`` and ``?`` in a path as a pattern, and pyarrow's hive reading URI-decodes folder names."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from sleepsound.breathing.store import read_events, write_events
from sleepsound.core.storage import (
    join,
    move_file,
    open_root,
    partition,
    partition_files,
    partitions,
    remove_tree,
    write_table,
)
from sleepsound.report.outputs import read_predictions

IDS = ["n [2] b", "n 2 b", "n%41x", "café=é", "00002006-190607", "a*b?"]


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage root whose own name holds a pattern's characters too (``/data/sleep [2026]``)."""
    if request.param == "local":
        return str(tmp_path / "sleep [2026]")
    import s3fs

    request.getfixturevalue("s3_endpoint")
    bucket = f"partitions-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    s3fs.S3FileSystem().mkdir(bucket)
    return f"s3://{bucket}/sleep [2026]"


def _write_nights(root: str, run_id: str) -> None:
    fs, path = open_root(root)
    for rec in IDS:
        table = pa.table({"epoch_index": [0, 1], "stage_pred": ["Wake", "NREM"]})
        write_table(fs, join(partition(join(path, "runs", run_id, "predictions"), rec), "part-0.parquet"), table)
        write_events(root, run_id, rec, [{"start_s": 1.0, "end_s": 12.0, "type": "apnea", "confidence": 0.9}])


def test_every_night_is_read_back_by_its_own_id_and_removed_alone(root: str) -> None:
    _write_nights(root, "r1")
    fs, path = open_root(root)
    folder = join(path, "runs", "r1", "predictions")
    assert sorted(partitions(fs, folder)) == sorted(IDS)
    preds = read_predictions(root, "r1")
    assert sorted(preds["recording_id"].unique()) == sorted(IDS) and len(preds) == 2 * len(IDS)
    assert sorted(read_events(root, "r1")) == sorted(IDS)
    remove_tree(fs, partitions(fs, folder)["n [2] b"])  # a pattern matching "n 2 b" too
    assert sorted(partitions(fs, folder)) == sorted(set(IDS) - {"n [2] b"})
    assert len(partition_files(fs, partitions(fs, folder)["n 2 b"])) == 1


def test_pandas_reads_the_ids_as_written(root: str) -> None:
    """The README's way to read a run's outputs without sleepsound: the folders' ids come back whole."""
    _write_nights(root, "r2")
    fs, path = open_root(root)
    frame = pd.read_parquet(join(path, "runs", "r2", "events"), filesystem=fs)
    assert sorted(frame["recording_id"].astype(str).unique()) == sorted(IDS)  # "n%41x" was read back as "nAx"


def test_a_file_moves_by_its_literal_name(root: str) -> None:
    fs, path = open_root(root)
    fs.makedirs(join(path, "cache"), exist_ok=True)
    for name in ("x [1].parquet", "x 1.parquet"):
        fs.pipe_file(join(path, "cache", name), name.encode())
    move_file(fs, join(path, "cache", "x [1].parquet"), join(path, "quarantine", "x [1].parquet"))
    fs.invalidate_cache()
    assert fs.cat_file(join(path, "cache", "x 1.parquet")) == b"x 1.parquet"  # the other file stays
    assert fs.cat_file(join(path, "quarantine", "x [1].parquet")) == b"x [1].parquet"
    assert not fs.exists(join(path, "cache", "x [1].parquet"))
