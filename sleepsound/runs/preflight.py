"""What a flow command checks before it starts anything: a problem found here costs the user a
second and one line, where the same problem found by the flow cost minutes of embedding and a
traceback (a missing source, a root that cannot be written, no model to score with).

Each check reads only: nothing is created, so a refused command leaves no root or state behind.
"""

from __future__ import annotations

import os

import fsspec
from fsspec.implementations.local import LocalFileSystem

from sleepsound.core.storage import CredentialsInUrl, refuse_credentials

FLOWS = ("run", "train", "nightly", "score")


class NotStartable(ValueError):
    """A precondition of the command does not hold; the message says which and the way out."""


def check_no_credentials(url: str, option: str) -> None:
    """A storage URL carries no credentials (``storage.refuse_credentials``), as a NotStartable naming ``option``."""
    try:
        refuse_credentials(url, option)
    except CredentialsInUrl as exc:
        raise NotStartable(str(exc)) from None


def check_source(source: str) -> None:
    """The source exists and is a folder (or an object-store prefix with something under it)."""
    check_no_credentials(source, "--source")
    try:
        fs, path = fsspec.core.url_to_fs(source)
    except (ValueError, ImportError) as exc:
        raise NotStartable(f"--source {source}: not a path or URL sleepsound can read ({exc})") from exc
    if isinstance(fs, LocalFileSystem):
        if not os.path.exists(path):
            raise NotStartable(f"--source {source} does not exist: give the folder that holds the recordings")
        if not os.path.isdir(path):
            raise NotStartable(f"--source {source} is a file: give the folder that holds the recordings")
        if not os.access(path, os.R_OK | os.X_OK):
            raise NotStartable(f"--source {source}: permission denied; this process may not list it")
        return
    try:
        found = fs.exists(path) and bool(fs.ls(path, detail=False))
    except Exception as exc:  # botocore's NoCredentialsError or EndpointConnectionError are no OSErrors
        raise NotStartable(
            f"--source {source}: cannot be listed ({type(exc).__name__}: {exc}); check the address and credentials"
        ) from exc
    if not found:
        raise NotStartable(f"--source {source}: nothing there; check the bucket and prefix")


def check_has_recordings(source: str) -> None:
    """The source holds at least one recording of a layout sleepsound reads (one listing)."""
    from sleepsound.ingest.discovery import discover, nothing_found

    if not discover(source):
        raise NotStartable(nothing_found(source))


def check_root_writable(root: str) -> None:
    """A local root (or the nearest folder above it that exists) can be written by this process.

    Object-store roots are checked by the run's lock, its first write, which names the problem.
    """
    check_no_credentials(root, "--root")
    fs, path = fsspec.core.url_to_fs(root)
    if not isinstance(fs, LocalFileSystem):
        return
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotStartable(f"--root {root}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NotStartable(f"--root {root}: {existing} is not writable by this process")


def check_models(root: str, versions: dict[str, str]) -> None:
    """A score run has a stage3 model to score with, every version it names exists, and each head's
    files are whole (config and weights header; a truncated champion failed only inside the flow)."""
    from sleepsound.core.storage import open_root
    from sleepsound.models.heads.artifacts import HeadArtifactError, check_head_files
    from sleepsound.registry.store import ModelNotFound, serving_models

    try:
        model = serving_models(root, versions)
        fs, _ = open_root(root)  # the heads' folders are paths of the root's filesystem (no s3:// of their own)
        for head in model["heads"].values():
            check_head_files(fs, head["model_dir"])
    except (ModelNotFound, HeadArtifactError) as exc:
        raise NotStartable(f"cannot score: {exc}") from exc


def check_champions(root: str) -> None:
    """A run that trains can read the store it will promote into: each task's champion pointer and the
    head it names. A damaged pointer was found only at the promotion, after the cohort was embedded and
    every head trained, and each retry left one more set of orphan versions behind."""
    from sleepsound.core.storage import open_root
    from sleepsound.models.heads.artifacts import HeadArtifactError, check_head_files
    from sleepsound.registry.store import ModelNotFound, champion_version, model_dir, targets

    try:
        fs, root_path = open_root(root)
        if not fs.exists(root_path):
            return
        for target in targets(root):
            version = champion_version(root, target)
            if version is not None:
                check_head_files(fs, model_dir(root_path, target, version))
    except (ModelNotFound, HeadArtifactError) as exc:
        raise NotStartable(f"cannot train into this store: {exc}") from exc
    except OSError as exc:  # unreachable or refused storage: one line, not a traceback
        raise NotStartable(f"cannot read the model store under {root}: {exc.strerror or exc}") from exc


def check_nightly_state(root: str) -> None:
    """The root's nightly state, if any, can be read: the flow reads it only after validating and
    embedding the whole cohort, so a damaged one would cost all that and end in a traceback."""
    from sleepsound.runs.nightly_state import DamagedState, processed, state_path

    try:
        processed(root)
    except DamagedState as exc:
        raise NotStartable(str(exc)) from exc
    except OSError as exc:  # a folder or an unreadable file where the state belongs
        raise NotStartable(f"cannot read {state_path(root)} ({exc.strerror or exc}): fix or move it aside") from exc


def check_can_start(
    flow: str, source: str, root: str, versions: dict[str, str] | None = None, run_id: str | None = None
) -> None:
    """Every check a flow command makes before it starts Prefect, Ray or a lock (NotStartable)."""
    from sleepsound.runs.run_record import check_run_id

    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}")
    if run_id is not None:
        try:
            check_run_id(run_id)
        except ValueError as exc:
            raise NotStartable(f"--run-id: {exc}") from exc
    check_source(source)
    if flow != "nightly":  # a nightly run over an empty incoming folder is a quiet night, not a mistake
        check_has_recordings(source)
    check_root_writable(root)
    if flow == "nightly":
        check_nightly_state(root)
    if flow != "score":
        check_champions(root)
    if flow == "score":
        check_models(root, versions or {})
