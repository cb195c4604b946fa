from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import s3fs

from sleepsound.core import schemas
from sleepsound.core.storage import (
    NotOurFile,
    list_files,
    open_root,
    read_json,
    read_table,
    read_text_capped,
    write_json,
    write_table,
)
from tests.full_disk import disk_full_on, on_a_small_disk


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path, s3_endpoint):
    if request.param == "local":
        return str(tmp_path / "root")
    fs = s3fs.S3FileSystem(anon=False)
    if not fs.exists("storage-test"):  # the bucket is shared by the s3 cases
        fs.mkdir("storage-test")
    return f"s3://storage-test/{tmp_path.name}"


def test_json_and_parquet_round_trip(root):
    fs, path = open_root(root)
    write_json(fs, f"{path}/runs/r1/meta.json", {"a": 1})
    assert read_json(fs, f"{path}/runs/r1/meta.json") == {"a": 1}
    emb = np.arange(2 * 6, dtype=np.float16)
    table = pa.table(
        {
            "recording_id": ["a", "a"],
            "epoch_index": [0, 1],
            "n_frames": [2, 2],
            "dim": [3, 3],
            "n_layers": [1, 1],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb), 6),
        }
    )
    write_table(fs, f"{path}/embeddings/x.parquet", schemas.conform(table, schemas.embeddings_schema(2, 3)))
    back = read_table(fs, f"{path}/embeddings/x.parquet")
    assert back.schema.field("embedding").type.value_type == pa.float16()
    np.testing.assert_array_equal(back["embedding"].combine_chunks().flatten().to_numpy(), emb)
    assert list_files(fs, f"{path}/embeddings", ".parquet") == [f"{path}/embeddings/x.parquet"]
    assert list_files(fs, f"{path}/absent", ".parquet") == []


def test_local_writes_leave_no_temporary_files(tmp_path):
    fs, path = open_root(str(tmp_path))
    write_json(fs, f"{path}/m.json", {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_a_capped_text_read_names_the_file_and_never_reads_past_its_limit(tmp_path: Path) -> None:
    """The one capped text read (the clips categories CSV): a file over the limit, an endless one
    (/dev/zero) or one that is not UTF-8 is refused naming the file as the user gave it; a missing one
    is the caller's OSError to name."""
    fs, base = open_root(str(tmp_path))
    (tmp_path / "ok.csv").write_bytes(b"\xef\xbb\xbfa,b\n")
    assert read_text_capped(fs, f"{base}/ok.csv", 7, "a table") == "a,b\n"  # the byte-order mark dropped
    (tmp_path / "long.csv").write_bytes(b"x" * 8)
    with pytest.raises(NotOurFile, match=r"^long\.csv: larger than 7 bytes: not a table$"):
        read_text_capped(fs, f"{base}/long.csv", 7, "a table", "long.csv")
    (tmp_path / "endless.csv").symlink_to("/dev/zero")
    with pytest.raises(NotOurFile, match=r"endless\.csv: larger than 1048576 bytes: not a table$"):
        read_text_capped(fs, f"{base}/endless.csv", 1 << 20, "a table")
    (tmp_path / "latin.csv").write_bytes(b"caf\xe9\n")
    with pytest.raises(NotOurFile, match=r"latin\.csv: not UTF-8 text \(byte 3: invalid continuation byte\)$"):
        read_text_capped(fs, f"{base}/latin.csv", 64, "a table")
    with pytest.raises(FileNotFoundError):
        read_text_capped(fs, f"{base}/missing.csv", 64, "a table")


def test_conform_refuses_missing_columns():
    with pytest.raises(ValueError, match="lacks columns"):
        schemas.conform(pa.table({"recording_id": ["a"]}), schemas.EPOCHS)


def test_a_root_is_opened_once_and_handed_along(root):
    store = open_root(root)
    assert open_root(store) is store  # an opened root is not parsed again
    assert store.uri == root  # messages name the root as the user gave it
    fs, path = store  # and it unpacks as (filesystem, path)
    assert (fs, path) == (store.fs, store.path)
    assert store.join("state", "lock.json") == f"{store.path}/state/lock.json"
    write_json(store.fs, store.join("m.json"), {"x": 1})
    assert read_json(store.fs, store.join("m.json")) == {"x": 1}


def test_the_manifest_row_record_matches_the_manifest_schema():
    from typing import get_type_hints

    from sleepsound.core.records import FindingRecord, ManifestRow

    assert list(get_type_hints(ManifestRow)) == schemas.MANIFEST.names
    assert list(get_type_hints(FindingRecord)) == [f.name for f in schemas.FINDING]


def test_bulk_columns_are_written_in_row_groups_without_dictionary_or_statistics(tmp_path):
    """A night's embeddings go in groups of about 8 MB (the writer holds one group, not the night)."""
    import pyarrow.parquet as pq

    from sleepsound.core.storage import BULK_ROW_GROUP_BYTES

    rows, width = 200, 46_080  # 200 epochs of 60 frames x 768 dims, float16: 18 MB
    emb = np.random.default_rng(0).standard_normal((rows, width)).astype(np.float16)
    table = pa.table(
        {
            "recording_id": ["r"] * rows,
            "epoch_index": np.arange(rows, dtype=np.int32),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), width),
        }
    )
    fs, path = open_root(str(tmp_path))
    write_table(fs, f"{path}/e.parquet", table, bulk=("embedding",))
    meta = pq.ParquetFile(f"{path}/e.parquet").metadata
    assert meta.num_row_groups == -(-table.nbytes // BULK_ROW_GROUP_BYTES) >= 2
    column = meta.row_group(0).column(2)
    assert column.statistics is None and "PLAIN_DICTIONARY" not in column.encodings
    assert read_table(fs, f"{path}/e.parquet").equals(table)


@pytest.mark.parametrize("kind", ["json", "parquet"])
def test_a_full_disk_leaves_no_hidden_file_and_names_the_file_and_the_cause(kind, tmp_path, monkeypatch):
    import errno

    fs, path = open_root(str(tmp_path))
    write_json(fs, f"{path}/kept.json", {"done": 1})
    failed = disk_full_on(monkeypatch, ".tmp-")
    target = f"{path}/out.{kind}"
    with pytest.raises(OSError) as caught:
        if kind == "json":
            write_json(fs, target, {"x": 1})
        else:
            write_table(fs, target, pa.table({"x": [1, 2, 3]}))
    assert failed, "the injected full disk was not reached"
    assert caught.value.errno == errno.ENOSPC
    assert str(caught.value) == f"no space left on device writing {target}: free space and rerun; finished work is kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json"]  # no hidden temp file, the old file kept
    monkeypatch.undo()  # space freed: the rerun writes it
    write_json(fs, target, {"x": 1}) if kind == "json" else write_table(fs, target, pa.table({"x": [1]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json", f"out.{kind}"]


_FILL_A_SMALL_DISK = """
import errno, json, os, sys
import pyarrow as pa
import numpy as np
from sleepsound.core.storage import open_root, write_json, write_table
disk = sys.argv[1]
fs, path = open_root(disk)
write_json(fs, f"{path}/kept.json", {"done": 1})
big = pa.table({"x": np.random.default_rng(0).random(200_000)})  # ~1.6 MB of incompressible floats
try:
    write_table(fs, f"{path}/big.parquet", big)
    error = None
except OSError as exc:
    error = {"errno": exc.errno, "message": str(exc)}
left = sorted(os.listdir(disk))
try:
    write_table(fs, f"{path}/small.parquet", pa.table({"x": [1, 2]}))  # the next write is not blocked
    blocked = None
except OSError as exc:
    blocked = str(exc)
print(json.dumps({"error": error, "left": left, "blocked": blocked, "after": sorted(os.listdir(disk))}))
"""


def test_a_real_full_disk_is_reported_and_cleaned_up(tmp_path):
    """A 512 KiB tmpfs: the write that fills it fails naming the file, leaves nothing, and the next one works."""
    result = on_a_small_disk(tmp_path, _FILL_A_SMALL_DISK)
    target = f"{tmp_path}/disk/big.parquet"
    assert result["error"] == {
        "errno": 28,
        "message": f"no space left on device writing {target}: free space and rerun; finished work is kept",
    }
    assert result["left"] == ["kept.json"]
    assert result["blocked"] is None
    assert result["after"] == ["kept.json", "small.parquet"]


def test_a_local_write_is_fsynced_before_it_is_published_and_its_folder_after(tmp_path, monkeypatch):
    """A power loss cannot be simulated here; what can be checked is the order of the calls that make it safe."""
    import os

    fs, _ = open_root(str(tmp_path))
    target = tmp_path / "sub" / "m.json"
    synced: list[tuple[str, bool]] = []  # (what was fsynced, was the file published yet)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), target.exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_json(fs, str(target), {"x": 1})
    assert len(synced) == 2, synced
    (aside, published_then), (folder, published_after) = synced
    assert aside.startswith(str(target.parent) + "/.m.json.tmp-") and not published_then  # the data, before the rename
    assert folder == str(target.parent) and published_after  # the rename itself, after it


def test_removing_a_tree_under_a_lost_root_is_refused_like_a_write(tmp_path) -> None:
    """A stalled run that lost its root to another must not delete that run's files either."""
    from sleepsound.core.storage import RootLost, fenced, open_root, remove_tree

    store = open_root(str(tmp_path / "root"))
    kept = tmp_path / "root" / "runs" / "r" / "predictions" / "recording_id=a"
    kept.mkdir(parents=True)
    (kept / "part-0.parquet").write_bytes(b"x")
    with fenced(store.fs, store.path, lambda: "run 'r' no longer holds the root"):
        with pytest.raises(RootLost, match="no longer holds"):
            remove_tree(store.fs, str(kept))
    assert (kept / "part-0.parquet").exists()
    with fenced(store.fs, store.path, lambda: None):  # held: removed
        remove_tree(store.fs, str(kept))
    assert not kept.exists()
