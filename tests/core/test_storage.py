import numpy as np
import pyarrow as pa
import pytest
import s3fs

from sleepsound.core import schemas
from sleepsound.core.storage import list_files, open_root, read_json, read_table, write_json, write_table


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
