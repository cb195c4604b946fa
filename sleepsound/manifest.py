"""The manifest: one row per discovered recording, accepted or quarantined with its reason."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa

from sleepsound import schemas
from sleepsound.config import PreprocessConfig, ValidationConfig
from sleepsound.findings import Finding
from sleepsound.sources import RecordingSource, discover
from sleepsound.storage import join, open_root, read_table, write_table
from sleepsound.validate import apply_findings, manifest_row, validate_recording

MANIFEST_FILE = "manifest/manifest.parquet"


def build_manifest(source: str, cfg: PreprocessConfig, checks: ValidationConfig | None = None, deep: bool = False,
                   use_ray: bool = False) -> list[dict[str, Any]]:
    """Discover and validate every recording under ``source`` (one Ray task each when asked).

    A night whose validator itself dies (a worker killed, out of memory) is retried by Ray,
    then quarantined as ``validator_failed``: one night never takes the cohort down.
    """
    found = discover(source)
    if not use_ray or not found:
        return [validate_recording(src, cfg, checks, deep) for src in found]
    import ray

    remote = ray.remote(num_cpus=1, max_retries=2)(validate_recording)
    refs = [remote.remote(src, cfg, checks, deep) for src in found]
    rows: list[dict[str, Any]] = []
    for src, ref in zip(found, refs, strict=True):
        try:
            rows.append(ray.get(ref))
        except (ray.exceptions.RayError, OSError) as exc:
            rows.append(failed_row(src, "validator_failed", f"validation crashed ({type(exc).__name__}); "
                                   "the file may be malformed in a way that kills its reader"))
    return rows


def failed_row(src: RecordingSource, code: str, message: str) -> dict[str, Any]:
    """A quarantined manifest row for a night that could not even be validated."""
    path = src.audio_uris[0] if src.audio_uris else src.recording_id
    return apply_findings(manifest_row(src), [Finding("recording", code, "error", path, message)])


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
            finding = Finding("recording", "read_error", "error", row["source_uris"][0], failed[row["recording_id"]])
            earlier = [Finding(**f) for f in row.get("findings") or []]
            apply_findings(row, [finding, *earlier])
    return rows
