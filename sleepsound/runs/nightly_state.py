"""What the nightly flow has already done under a storage root, so the next night does only the new.

``<root>/state/nightly.json`` lists every recording (id and audio SHA-256) that a successful
nightly run processed; it is written last, after the run's outputs, so a run that fails part
way leaves it as it was and the next run picks the same nights up again (the embedding cache
and the model store make that cheap and free of duplicates). A recording whose audio changed
(new SHA-256) counts as new.

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


def _parse(path: str, value: Any) -> dict[str, str]:
    """The ``recordings`` mapping of a state file's JSON; DamagedState naming ``path`` (its URI) otherwise."""
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
    return dict(recordings)


def processed(root: RootLike) -> dict[str, str]:
    """{recording_id: sha256} of every night a successful nightly run handled; DamagedState if the
    file is not one this module wrote (oversized, not JSON, wrong types, another schema)."""
    fs, root_path = open_root(root)
    path = state_path(root_path)
    if not fs.exists(path):
        return {}
    shown = full_uri(fs, path)
    try:
        value = read_json_capped(fs, path, MAX_STATE_BYTES, "a nightly state", shown)
    except NotOurJson as exc:
        raise DamagedState(f"{exc}; {_RECOVERY}") from exc
    return _parse(shown, value)


def new_recordings(root: RootLike, manifest_rows: list[ManifestRow]) -> list[ManifestRow]:
    """Accepted rows not yet processed (or whose audio changed since)."""
    done = processed(root)
    return [r for r in manifest_rows if r["status"] == "accepted" and done.get(str(r["recording_id"])) != r["sha256"]]


def mark_processed(root: RootLike, run_id: str, rows: list[ManifestRow]) -> None:
    """Add ``rows`` to the processed set (atomic write), recording the run that did them."""
    fs, root_path = open_root(root)
    done = processed(root)
    done.update({str(r["recording_id"]): str(r["sha256"]) for r in rows})
    write_json(
        fs,
        state_path(root_path),
        {
            "schema": SCHEMA,
            "recordings": done,
            "last_run": run_id,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
