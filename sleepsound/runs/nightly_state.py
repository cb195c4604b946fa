"""What the nightly flow has already done under a storage root, so the next night does only the new.

``<root>/state/nightly.json`` lists every recording (id and audio SHA-256) that a successful
nightly run processed; it is written last, after the run's outputs, so a run that fails part
way leaves it as it was and the next run picks the same nights up again (the embedding cache
and the model store make that cheap and free of duplicates). A recording whose audio changed
(new SHA-256) counts as new.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sleepsound.core.records import ManifestRow
from sleepsound.core.storage import RootLike, join, open_root, read_json, write_json

STATE = "nightly.json"


def state_path(root_path: str) -> str:
    return join(root_path, "state", STATE)


def processed(root: RootLike) -> dict[str, str]:
    """{recording_id: sha256} of every night a successful nightly run handled."""
    fs, root_path = open_root(root)
    path = state_path(root_path)
    return dict(read_json(fs, path)["recordings"]) if fs.exists(path) else {}


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
        {"recordings": done, "last_run": run_id, "updated": datetime.now(UTC).isoformat(timespec="seconds")},
    )
