"""What the nightly flow has already done under a storage root, so the next night does only the new.

``<root>/state/nightly.json`` lists every recording (id and audio SHA-256, and in ``labels`` the
digest of its stage and event files, "" for none) that a successful nightly run processed; it is
written last, after the run's outputs, so a run that fails part way leaves it as it was and the
next run picks the same nights up again (the embedding cache and the model store make that cheap
and free of duplicates). A recording whose audio changed (new SHA-256) counts as new, and so does
one whose labels arrived or changed (same audio): its truth changed, so it is trained on and
scored again. A night handled before ``labels`` was recorded counts as done while its audio is
unchanged.

The file is read as untrusted: at most ``MAX_STATE_BYTES``, JSON of the shape written here, and a
``schema`` this code knows (none: the first one). Anything else is a ``DamagedState`` naming the
file, which ``nightly`` refuses before it starts (exit 2) rather than failing after validating and
embedding the cohort, and never rewrites: a state it cannot read is not replaced by a smaller one.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sleepsound.core.records import ManifestRow
from sleepsound.core.storage import NotOurJson, RootLike, full_uri, join, open_root, read_json_capped, write_json

STATE = "nightly.json"
SCHEMA = "sleepsound.nightly/1"
# ~100 bytes a recording: 64 MiB holds over half a million nights, and stops an endless file
# (a link to /dev/zero) or a misplaced multi-GB one before it is read into memory.
MAX_STATE_BYTES = 64 << 20
_RECOVERY = "restore it from a backup, or move it aside to have the next nightly run handle every night again"


class DamagedState(ValueError):
    """``state/nightly.json`` is not a state this code wrote: the message names the file, what is
    wrong and the way out (a ValueError, so the command refuses it in one line)."""


def state_path(root_path: str) -> str:
    return join(root_path, "state", STATE)


def _parse(path: str, value: Any) -> tuple[dict[str, str], dict[str, str]]:
    """The ``recordings`` and ``labels`` mappings of a state file's JSON; DamagedState naming ``path``
    (its URI) otherwise."""
    if not isinstance(value, dict):
        raise DamagedState(f"{path} holds {type(value).__name__}, not an object: {_RECOVERY}")
    schema = value.get("schema", SCHEMA)
    if schema != SCHEMA:
        raise DamagedState(
            f"{path} has schema {schema!r}, which this sleepsound (reads {SCHEMA!r}) does not know: "
            "run the sleepsound that wrote it, or move the file aside"
        )
    recordings = value.get("recordings")
    if not isinstance(recordings, dict) or not all(isinstance(v, str) for v in recordings.values()):
        raise DamagedState(f"{path}: 'recordings' must map recording ids to SHA-256 strings: {_RECOVERY}")
    labels = value.get("labels", {})  # absent in states written before labels were followed
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise DamagedState(f"{path}: 'labels' must map recording ids to digest strings: {_RECOVERY}")
    return dict(recordings), dict(labels)


def processed(root: RootLike) -> dict[str, str]:
    """{recording_id: sha256} of every night a successful nightly run handled; DamagedState if the
    file is not one this module wrote (oversized, not JSON, wrong types, another schema)."""
    return _read(root)[0]


def _labels_key(row: ManifestRow) -> str:
    """A night's labels as the state records them: their digest, "" for a night without labels."""
    return str(row.get("labels_sha256") or "")


def _read(root: RootLike) -> tuple[dict[str, str], dict[str, str]]:
    """The state's ``recordings`` and ``labels`` (both empty on a root no nightly run finished on)."""
    fs, root_path = open_root(root)
    path = state_path(root_path)
    if not fs.exists(path):
        return {}, {}
    shown = full_uri(fs, path)
    try:
        value = read_json_capped(fs, path, MAX_STATE_BYTES, "a nightly state", shown)
    except NotOurJson as exc:
        raise DamagedState(f"{exc}; {_RECOVERY}") from exc
    return _parse(shown, value)


def new_recordings(root: RootLike, manifest_rows: list[ManifestRow]) -> list[ManifestRow]:
    """Accepted rows not yet processed, or whose audio or labels changed since."""
    done, labels = _read(root)

    def handled(row: ManifestRow) -> bool:
        rec = str(row["recording_id"])
        return done.get(rec) == row["sha256"] and labels.get(rec, _labels_key(row)) == _labels_key(row)

    return [r for r in manifest_rows if r["status"] == "accepted" and not handled(r)]


def mark_processed(root: RootLike, run_id: str, rows: list[ManifestRow]) -> None:
    """Add ``rows`` to the processed set (atomic write), recording the run that did them."""
    fs, root_path = open_root(root)
    done, labels = _read(root)
    done.update({str(r["recording_id"]): str(r["sha256"]) for r in rows})
    labels.update({str(r["recording_id"]): _labels_key(r) for r in rows})
    write_json(
        fs,
        state_path(root_path),
        {
            "schema": SCHEMA,
            "recordings": done,
            "labels": labels,
            "last_run": run_id,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
