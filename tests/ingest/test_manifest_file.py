"""A root's manifest file that sleepsound did not write is named with what is wrong."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from sleepsound.cli import app
from sleepsound.ingest.manifest import MANIFEST_FILE, DamagedManifest, previous_manifest_rows, read_manifest


def _manifest(root: Path, foreign: bool) -> Path:
    path = root / MANIFEST_FILE
    path.parent.mkdir(parents=True)
    if foreign:  # Parquet, but someone else's table
        pq.write_table(pa.table({"night": ["a"], "ok": [True]}), path)
    else:
        path.write_bytes(b"PAR1 not really parquet PAR1")
    return path


@pytest.mark.parametrize(("foreign", "words"), [(True, "no column recording_id, status"), (False, "not a Parquet")])
def test_a_foreign_or_damaged_manifest_is_named_not_a_key_error(tmp_path, foreign, words) -> None:
    """``cv`` on a root whose manifest lacked sleepsound's columns ended in ``error: KeyError: 'status'``
    (exit 1), and a damaged one in pyarrow's words about '<Buffer>'."""
    path = _manifest(tmp_path / "root", foreign)
    with pytest.raises(DamagedManifest, match=words) as caught:
        read_manifest(tmp_path / "root")
    assert str(path) in str(caught.value)
    # The previous manifest only spares validating unchanged nights again: a damaged one is none.
    assert previous_manifest_rows(tmp_path / "root") == []
    out = CliRunner().invoke(app, ["cv", "--root", str(tmp_path / "root")])
    assert out.exit_code == 2 and "Traceback" not in out.output, out.output
    assert words in out.stderr and str(path) in out.stderr.replace("\n", "")
