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
    s3fs.S3FileSystem(anon=False).mkdir("storage-test")
    return f"s3://storage-test/{tmp_path.name}"


def test_json_and_parquet_round_trip(root):
    fs, path = open_root(root)
    write_json(fs, f"{path}/runs/r1/meta.json", {"a": 1})
    assert read_json(fs, f"{path}/runs/r1/meta.json") == {"a": 1}
    emb = np.arange(2 * 6, dtype=np.float16)
    table = pa.table({
        "recording_id": ["a", "a"], "epoch_index": [0, 1], "n_frames": [2, 2], "dim": [3, 3], "n_layers": [1, 1],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb), 6),
    })
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
