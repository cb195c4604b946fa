"""The manifest: one row per discovered recording, accepted or quarantined with its reason."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa

from sleepsound import schemas
from sleepsound.config import PreprocessConfig
from sleepsound.sources import discover
from sleepsound.storage import join, open_root, read_table, write_table
from sleepsound.validate import validate_recording

MANIFEST_FILE = "manifest/manifest.parquet"


def build_manifest(source: str, cfg: PreprocessConfig, use_ray: bool = False) -> list[dict[str, Any]]:
    """Discover and validate every recording under ``source`` (on Ray workers when asked)."""
    found = discover(source)
    if use_ray and found:
        import ray

        remote = ray.remote(num_cpus=1, max_retries=2)(validate_recording)
        return ray.get([remote.remote(src, cfg) for src in found])
    return [validate_recording(src, cfg) for src in found]


def write_manifest(root: str, rows: list[dict[str, Any]]) -> str:
    """Write the manifest (replacing the previous one: it describes the source as seen now)."""
    fs, root_path = open_root(root)
    path = join(root_path, MANIFEST_FILE)
    table = pa.Table.from_pylist(rows, schema=schemas.MANIFEST) if rows else schemas.MANIFEST.empty_table()
    write_table(fs, path, table)
    return path


def read_manifest(root: str) -> pd.DataFrame:
    fs, root_path = open_root(root)
    return read_table(fs, join(root_path, MANIFEST_FILE)).to_pandas()


def read_manifest_rows(root: str) -> list[dict[str, Any]]:
    """Manifest rows as plain Python values (None stays None, lists stay lists)."""
    fs, root_path = open_root(root)
    return read_table(fs, join(root_path, MANIFEST_FILE)).to_pylist()


def quarantine(rows: list[dict[str, Any]], failed: dict[str, str]) -> list[dict[str, Any]]:
    """Mark recordings that failed after validation (for example while streaming)."""
    for row in rows:
        if row["recording_id"] in failed and row["status"] == "accepted":
            row.update(status="quarantined", reason_code="read_error",
                       reason=f"{row['source_uris'][0]}: {failed[row['recording_id']]}")
    return rows
