"""The manifest: one row per discovered recording, accepted or quarantined with its reason."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sleepsound import __version__
from sleepsound.core import schemas
from sleepsound.core.config import Config, PreprocessConfig, ValidationConfig
from sleepsound.core.findings import Finding
from sleepsound.core.progress import Progress, quiet
from sleepsound.core.records import ManifestRow
from sleepsound.core.storage import RootLike, join, open_root, read_table, write_table
from sleepsound.core.text import printable
from sleepsound.ingest.discovery import RecordingSource, discover
from sleepsound.ingest.validate import apply_findings, manifest_row, validate_recording
from sleepsound.ingest.versions import file_version, night_file_versions

MANIFEST_FILE = "manifest/manifest.parquet"


def build_manifest(
    source: str,
    cfg: PreprocessConfig,
    checks: ValidationConfig | None = None,
    deep: bool = False,
    use_ray: bool = False,
    previous: list[ManifestRow] | None = None,
    found: list[RecordingSource] | None = None,
    progress: Progress = quiet,
) -> list[ManifestRow]:
    """Discover and validate every recording under ``source`` (one Ray task each when asked);
    ``found``: what ``discover(source)`` already returned, so the source is not listed twice.

    With ``previous`` (the root's last manifest), an accepted night whose files (sizes and
    versions: S3 ETag or modification time) and validation settings are unchanged keeps its row:
    a nightly run over a growing source downloads and hashes only what is new or changed.
    Quarantined nights are always validated again (the fault may have been transient).

    A night whose validator itself dies (a worker killed, out of memory) is retried by Ray,
    then quarantined as ``validator_failed``: one night never takes the cohort down.

    Every row records its files' sizes and versions from that same listing (``file_versions``), which
    the embed step's readers check before and after they read (``ingest.versions``).
    """
    found = discover(source) if found is None else found
    listing = source_listing(source)
    stamps = source_stamps(source, found, _settings(cfg, checks, deep), listing)
    kept = {r["recording_id"]: r for r in previous or [] if r.get("status") == "accepted" and r.get("source_stamp")}
    reused = {
        src.recording_id: kept[src.recording_id]
        for src in found
        if stamps[src.recording_id] and kept.get(src.recording_id, {}).get("source_stamp") == stamps[src.recording_id]
    }
    todo = [src for src in found if src.recording_id not in reused]
    fresh = {row["recording_id"]: row for row in _validate(todo, cfg, checks, deep, use_ray, progress)}
    for rec, row in fresh.items():
        row["source_stamp"] = stamps[rec]
    rows = [reused.get(src.recording_id) or fresh[src.recording_id] for src in found]
    for src, row in zip(found, rows, strict=True):  # a reused row's files are unchanged: listed as they are
        row["file_versions"] = night_file_versions([*src.audio_uris, src.labels_uri, src.events_uri], listing)
    return rows


def _validate(
    found: list[RecordingSource],
    cfg: PreprocessConfig,
    checks: ValidationConfig | None,
    deep: bool,
    use_ray: bool,
    progress: Progress = quiet,
) -> list[ManifestRow]:
    rows: list[ManifestRow] = []
    progress("validate", 0, len(found), "recordings")
    if not use_ray or not found:
        for src in found:
            rows.append(validate_recording(src, cfg, checks, deep))
            progress("validate", len(rows), len(found), "recordings")
        return rows
    import ray

    remote = ray.remote(num_cpus=1, max_retries=2)(validate_recording)
    refs = [remote.remote(src, cfg, checks, deep) for src in found]
    for src, ref in zip(found, refs, strict=True):
        try:
            rows.append(ray.get(ref))
        except (ray.exceptions.RayError, OSError) as exc:
            rows.append(
                failed_row(
                    src,
                    "validator_failed",
                    f"validation crashed ({type(exc).__name__}); "
                    "the file may be malformed in a way that kills its reader",
                )
            )
        progress("validate", len(rows), len(found), "recordings")
    return rows


def _settings(cfg: PreprocessConfig, checks: ValidationConfig | None, deep: bool) -> str:
    """Everything besides the files that a manifest row depends on (the code's version included)."""
    return json.dumps(
        {
            "preprocess": cfg.model_dump(),
            "checks": (checks or ValidationConfig()).model_dump(),
            "deep": deep,
            "code": __version__,
        },
        sort_keys=True,
        default=str,
    )


def source_listing(source: str) -> dict[str, dict[str, Any]]:
    """Every file under ``source`` with its size and version (path -> info), from one listing (no
    request per file on object storage); empty when the source cannot be listed."""
    fs, root = open_root(source)
    fs.invalidate_cache(root)  # an object store's client keeps listings: the source as it is now
    try:
        return {info["name"].rstrip("/"): info for info in fs.find(root, detail=True).values()}
    except OSError:
        return {}


def source_stamps(
    source: str, found: list[RecordingSource], settings: str, listing: dict[str, dict[str, Any]] | None = None
) -> dict[str, str | None]:
    """Per recording, a hash of its files' paths, sizes and versions and of ``settings``; None
    when a file's version cannot be read (that night is then always validated afresh).
    One listing of the source (``source_listing``, or ``listing`` when given) serves every night."""
    listing = source_listing(source) if listing is None else listing
    out: dict[str, str | None] = {}
    for src in found:
        parts: list[Any] = [settings]
        for uri in [*src.audio_uris, src.labels_uri, src.events_uri]:
            if uri is None:
                parts.append(None)
                continue
            info = listing.get(fsspec.core.url_to_fs(uri)[1].rstrip("/"))
            version = None if info is None else file_version(info)
            if version is None:
                parts = []
                break
            parts.append([uri, info.get("size"), version])
        out[src.recording_id] = hashlib.sha256(json.dumps(parts).encode()).hexdigest() if parts else None
    return out


def failed_row(src: RecordingSource, code: str, message: str) -> ManifestRow:
    """A quarantined manifest row for a night that could not even be validated."""
    path = src.audio_uris[0] if src.audio_uris else src.recording_id
    return apply_findings(manifest_row(src), [Finding("recording", code, "error", path, message)])


def write_manifest(root: RootLike, rows: list[ManifestRow]) -> str:
    """Write the manifest (replacing the previous one: it describes the source as seen now)."""
    fs, root_path = open_root(root)
    path = join(root_path, MANIFEST_FILE)
    rows = [_encodable(row) for row in rows]
    table = pa.Table.from_pylist(rows, schema=schemas.MANIFEST) if rows else schemas.MANIFEST.empty_table()
    write_table(fs, path, table)
    return path


def _encodable(value: Any) -> Any:
    """``value`` with every text that is not valid UTF-8 (a file name's undecodable bytes, kept by
    Python as lone surrogates) written with ``\\udcXX`` escapes: Parquet holds UTF-8 only, and one
    such name must not stop the manifest of the whole cohort (discovery already lists such files
    as ``bad_file_name``; this is the last guard)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return printable(value)
        return value
    if isinstance(value, dict):
        return {key: _encodable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_encodable(item) for item in value]
    return value


# Columns every manifest has had (later ones, such as ``source_stamp``, are missing from older roots').
MANIFEST_KEYS = ("recording_id", "status", "subject_id")


class DamagedManifest(ValueError):
    """The root's manifest is not one ``write_manifest`` wrote: not Parquet, or without its columns."""


def _manifest_table(root: RootLike) -> pa.Table:
    """The root's manifest, checked to be Parquet holding the manifest's columns, so a damaged or foreign
    file is named with what is wrong rather than failing later as a missing column (KeyError) or as
    pyarrow's "<Buffer>"; a missing file stays FileNotFoundError (a new root)."""
    fs, root_path = open_root(root)
    path = join(root_path, MANIFEST_FILE)
    try:
        table = read_table(fs, path)
    except (pa.ArrowInvalid, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DamagedManifest(f"{path}: not a Parquet manifest ({exc}); run `sleepsound validate` again") from exc
    missing = [name for name in MANIFEST_KEYS if name not in table.column_names]
    if missing:
        raise DamagedManifest(
            f"{path}: not a sleepsound manifest (no column {', '.join(missing)}); run `sleepsound validate` again"
        )
    return table


def read_manifest(root: RootLike) -> pd.DataFrame:
    return _manifest_table(root).to_pandas()


def read_manifest_rows(root: RootLike) -> list[ManifestRow]:
    """Manifest rows as plain Python values (None stays None, lists stay lists)."""
    return _manifest_table(root).to_pylist()


def previous_manifest_rows(root: RootLike) -> list[ManifestRow]:
    """The root's last manifest, or nothing on a new root (or one written before ``source_stamp``); a
    damaged one is nothing too: it only spares validating unchanged nights again, and this run rewrites it."""
    try:
        return read_manifest_rows(root)
    except (FileNotFoundError, DamagedManifest):
        return []


def quarantine(rows: list[ManifestRow], failed: dict[str, str], code: str = "read_error") -> list[ManifestRow]:
    """Mark recordings that failed after validation (for example while streaming: ``read_error``)."""
    for row in rows:
        if row["recording_id"] in failed and row["status"] == "accepted":
            path = row["source_uris"][0] if row["source_uris"] else str(row["recording_id"])
            finding = Finding("recording", code, "error", path, failed[row["recording_id"]])
            earlier = [Finding(**f) for f in row.get("findings") or []]
            apply_findings(row, [finding, *earlier])
    return rows


def nights_without_valid_epochs(root: RootLike, cfg: Config, rows: list[ManifestRow]) -> dict[str, str]:
    """Accepted nights of ``rows`` whose embedded epochs (the cache's epochs file, one row per epoch
    with its ``valid`` flag) hold no valid epoch in some channel, with the reason: every epoch
    silent or NaN/Inf. Such a night has nothing to score, and scored it would read as a night
    without a single breathing event (REI 0, "normal"): the flow quarantines it as
    ``no_valid_epochs``, the rule ``sleepsound validate`` applies while it streams the audio
    (quick validation, the flow's, reads headers only; the embedding measures every epoch).
    A night without an epochs file (not embedded: it failed) is left to its own reason."""
    from sleepsound.embed.cache import channel_configs, epochs_path

    fs, root_path = open_root(root)
    empty: dict[str, str] = {}
    for row in rows:
        if row["status"] != "accepted":
            continue
        for channel_cfg in channel_configs(cfg):
            path = epochs_path(root_path, channel_cfg, str(row["recording_id"]))
            if not fs.exists(path):
                continue
            with fs.open(path, "rb") as handle:
                valid = pq.read_table(handle, columns=["valid"])["valid"]
            if pc.any(valid).as_py():
                continue
            empty[str(row["recording_id"])] = (
                f"{channel_cfg.preprocess.channel}: none of the {len(valid)} epochs is usable (all silent or "
                "NaN/Inf); nothing to score"
            )
            break
    return empty


def labelled_manifest(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest[(manifest["status"] == "accepted") & (manifest["label_source"] != "none")]
