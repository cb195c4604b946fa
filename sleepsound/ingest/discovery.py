"""Find the recordings under a source, in both accepted layouts, without reading audio.

PSG-Audio: ``APNEA_EDF/<patient>/<patient>[001].edf`` parts (brackets possibly
URL-encoded) and ``APNEA_RML/<patient>.rml``. Plain: ``<name>.wav|.flac|.ogg|.mp3|...`` with optional
``<name>.stages.csv`` and ``<name>.events.csv`` beside it (suffixes in any case). One source may
hold both: plain nights anywhere outside ``APNEA_EDF/`` and the annotation folder are found
beside the PSG-Audio ones. Hidden files and folders (``.name``, macOS ``._name`` and
``__MACOSX/``) are not recordings and are skipped.

On local disk symbolic links are followed (a folder reached twice, through a loop or a second
link, is listed once); what cannot be listed (a loop, a folder this process may not read) becomes
a source with a ``problem``, which validation quarantines with that reason, so nothing under
the source disappears without a line in the manifest. Likewise a file whose name is not valid
UTF-8 (``bad_file_name``), a file inside ``APNEA_EDF/`` or the annotation folder that is neither a
part nor an RML (``unrecognised_file``), and stage or event CSVs filed away from their audio.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import unquote

import fsspec
from fsspec.implementations.local import LocalFileSystem

from sleepsound.core.storage import full_uri, open_root
from sleepsound.core.text import printable
from sleepsound.io.audio import PLAIN_SUFFIXES, UNREAD_AUDIO_SUFFIXES
from sleepsound.io.transfer import download

PART_RE = re.compile(r"^(?P<patient>.+)\[(?P<part>\d{3})\]\.(?:edf|bdf)$", re.IGNORECASE)
# Audio a plain night may arrive as but that is not read (UNREAD_AUDIO_SUFFIXES) is listed too,
# so the night is quarantined with the reason (``io.audio.probe_plain``) instead of disappearing.
SIDECAR_SUFFIXES = {"labels_uri": ".stages.csv", "events_uri": ".events.csv"}
# Names a recording's files have: a file with one of these whose name is not valid UTF-8 is listed
# (``bad_file_name``); other files outside the PSG-Audio folders are not recordings and are not.
RECORDING_SUFFIXES = (*PLAIN_SUFFIXES, *UNREAD_AUDIO_SUFFIXES, *SIDECAR_SUFFIXES.values(), ".edf", ".bdf", ".rml")


@dataclass
class RecordingSource:
    """Where one night's files are; ``labels_uri`` is None for unlabelled nights."""

    recording_id: str
    subject_id: str
    layout: str  # "psg-audio" or "plain"
    audio_uris: list[str]
    part_numbers: list[int] = field(default_factory=list)
    labels_uri: str | None = None
    events_uri: str | None = None
    problem: tuple[str, str, str] | None = None  # (path, code, message): quarantined as found
    # (path, code, message) warnings found by discovery (a CSV with this night's name filed in
    # another folder): they go into the night's findings, whatever else validation finds.
    notes: list[tuple[str, str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def nothing_found(source: str) -> str:
    """What a user is told when a source holds no recording: the layouts that were looked for."""
    return (
        f"no recordings under {source}: looked for PSG-Audio nights (APNEA_EDF/<patient>/<patient>[001].edf, "
        f"labels in APNEA_RML/<patient>.rml) and plain nights (<name>{'|'.join(PLAIN_SUFFIXES)}, "
        "optional <name>.stages.csv and <name>.events.csv) in every subfolder"
    )


def discover(source: str, rml_folder: str = "APNEA_RML") -> list[RecordingSource]:
    """List every recording under ``source``, both layouts at once; a folder with no audio yields
    an empty list. Recording ids are unique: an id found in both layouts is listed once, with
    every file, as a problem (``duplicate_recording``)."""
    fs, root = open_root(source)
    if not fs.exists(root):
        raise FileNotFoundError(f"source {source!r} does not exist")
    if isinstance(fs, LocalFileSystem) and not fs.isdir(root):
        raise NotADirectoryError(f"source {source!r} is a file: give the folder that holds the recordings")
    files, unlisted = _listing(fs, root)
    psg: list[RecordingSource] = []
    edf_root = posixpath.join(root, "APNEA_EDF")
    if fs.isdir(edf_root):
        psg = _discover_psg_audio(fs, root, rml_folder)
        layout_folders = (edf_root + "/", posixpath.join(root, rml_folder) + "/")
        used = {uri for src in psg for uri in (*src.audio_uris, src.labels_uri) if uri}
        strays = [path for path in files if path.startswith(layout_folders) and full_uri(fs, path) not in used]
        psg += [_stray(fs, root, path, rml_folder) for path in strays]
        files = [path for path in files if not path.startswith(layout_folders)]
    badly_named = [path for path in files if _bad_name(path)]
    files = [path for path in files if not _bad_name(path)]
    plain = _discover_plain(fs, root, files)
    plain += [
        _problem(fs, root, path, "bad_file_name", _BAD_NAME)
        for path in badly_named
        if posixpath.basename(path).lower().endswith(RECORDING_SUFFIXES)
    ]
    return sorted(_ids_that_fit(_one_per_id(psg, plain)) + unlisted, key=lambda src: src.recording_id)


# A night's id names its cache files, written aside first: ``.<id>-<digest>.shifted-<stage>.parquet.tmp-<uuid>``
# adds 76 bytes to it, and file names stop at 255 bytes; 160 leaves room for longer stage names.
MAX_ID_BYTES = 160


def _ids_that_fit(sources: list[RecordingSource]) -> list[RecordingSource]:
    """Sources whose recording id is too long to name a file get that as their problem (``bad_file_name``):
    a 240-byte name was accepted and then failed writing its caches mid-run (ENAMETOOLONG)."""
    for src in sources:
        size = len(src.recording_id.encode("utf-8", "surrogateescape"))
        if src.problem is None and size > MAX_ID_BYTES:
            where = next(iter(src.audio_uris), src.recording_id)
            src.problem = (
                where,
                "bad_file_name",
                f"the recording id (the file or patient name) is {size} bytes: the caches name files after it "
                f"and file names stop at 255, so it must be at most {MAX_ID_BYTES}; rename it (with its CSVs)",
            )
    return sources


_BAD_NAME = (
    "the file name (or a folder above it) is not valid UTF-8 (undecodable bytes shown as \\udcXX), so it cannot "
    "be a recording id or be written to the manifest: rename it (with its CSVs), e.g. with `convmv` or by hand"
)


def _bad_name(path: str) -> bool:
    """Whether ``path`` holds bytes that are not UTF-8 (Python keeps them as lone surrogates)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _problem(fs: fsspec.AbstractFileSystem, root: str, path: str, code: str, message: str) -> RecordingSource:
    """A problem source for one file, named by its path under the source (undecodable bytes escaped)."""
    relative = printable(posixpath.relpath(path, root))
    layout = "psg-audio" if relative.startswith("APNEA_") else "plain"
    return RecordingSource(relative, relative, layout, [], [], problem=(printable(full_uri(fs, path)), code, message))


def _stray(fs: fsspec.AbstractFileSystem, root: str, path: str, rml_folder: str) -> RecordingSource:
    """A file under ``APNEA_EDF/`` or the annotation folder that no night reads: listed, never lost."""
    if _bad_name(path):
        return _problem(fs, root, path, "bad_file_name", _BAD_NAME)
    relative = posixpath.relpath(path, root)
    parts = relative.split("/")
    if parts[0] == "APNEA_EDF" and len(parts) == 2:
        why = (
            "a file directly in APNEA_EDF/, where only patient folders belong "
            "(APNEA_EDF/<patient>/<patient>[001].edf): not read; move it into its patient's folder "
            "under the part's name, or remove it"
        )
    elif parts[0] == "APNEA_EDF" and len(parts) == 3:
        why = (
            f"not named like a part of night {parts[1]!r} ({parts[1]}[001].edf, [002], ...: three-digit part "
            "numbers in brackets, .edf or .bdf): not read; rename it if it is a part, or remove it"
        )
    elif parts[0] == "APNEA_EDF":
        why = "in a subfolder of a patient folder, where nothing is read: move it or remove it"
    else:
        why = (
            f"not an RML file directly in {rml_folder}/ (<patient>.rml), so not read as labels: "
            "move it where it belongs, or remove it"
        )
    return _problem(fs, root, path, "unrecognised_file", why)


def _one_per_id(psg: list[RecordingSource], plain: list[RecordingSource]) -> list[RecordingSource]:
    """PSG-Audio and plain nights together; an id both give (``APNEA_EDF/x/`` and ``x.wav``) becomes
    one source holding every file, with the clash as its problem (two rows with one id would
    overwrite each other downstream)."""
    by_id = {src.recording_id: src for src in psg}
    out = list(psg)
    for src in plain:
        other = by_id.get(src.recording_id)
        if other is None:
            out.append(src)
            continue
        plain_files = [u for u in (*src.audio_uris, src.labels_uri, src.events_uri) if u]
        other.problem = (
            plain_files[0],
            "duplicate_recording",
            f"the recording id {src.recording_id!r} names both a PSG-Audio night (APNEA_EDF/{src.recording_id}/) "
            f"and a plain night ({', '.join(plain_files)}); rename the plain night's files (with their CSVs)",
        )
        other.audio_uris = [*other.audio_uris, *src.audio_uris]
    return out


def _listing(fs: fsspec.AbstractFileSystem, root: str) -> tuple[list[str], list[RecordingSource]]:
    """Every file path under ``root`` (hidden ones left out), and a problem source for each folder
    that could not be listed. On local disk links are followed (``_walk_local``); object stores have none."""
    if isinstance(fs, LocalFileSystem):
        return _walk_local(root)
    return [path for path in sorted(fs.find(root)) if not _hidden(posixpath.relpath(path, root))], []


def _walk_local(root: str) -> tuple[list[str], list[RecordingSource]]:
    """``os.walk`` that follows symbolic links to folders, each real folder once: a link back to a
    folder above it (a loop) or to one already listed is skipped and reported, as is a folder
    that cannot be listed (permission denied)."""
    files: list[str] = []
    problems: list[RecordingSource] = []
    listed = {os.path.realpath(root): root}
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                names = sorted((entry.name, entry.is_symlink()) for entry in entries)
        except OSError as exc:
            why = (
                f"the folder could not be listed ({exc.strerror}): any recording in it is not seen; fix its permissions"
            )
            problems.append(_unlisted(root, folder, "unlisted_folder", why))
            continue
        for name, is_link in names:
            path = posixpath.join(folder, name)
            relative = posixpath.relpath(path, root)
            if _hidden(relative):
                continue
            if not os.path.isdir(path):  # files, file links (broken ones too: validation names them)
                files.append(path)
                continue
            real = os.path.realpath(path)
            first = listed.get(real)
            if first is None:
                listed[real] = path
                pending.append(path)
            elif is_link:
                where = "the source folder" if first == root else repr(posixpath.relpath(first, root))
                why = (
                    f"a symbolic link back to {where}, a folder above it (a loop)"
                    if _leads_above(root, folder, real)
                    else f"a symbolic link to {where}, already listed"
                )
                problems.append(
                    _unlisted(
                        root, path, "skipped_link", f"{why}: not followed; what is under it is listed once, there"
                    )
                )
    return sorted(files), problems


def _leads_above(root: str, folder: str, real: str) -> bool:
    """Whether ``real`` is the real path of ``folder`` or of a folder above it up to ``root``: a link
    there would list the same files forever."""
    while True:
        if os.path.realpath(folder) == real:
            return True
        if folder == root or posixpath.dirname(folder) == folder:
            return False
        folder = posixpath.dirname(folder)


def _unlisted(root: str, path: str, code: str, message: str) -> RecordingSource:
    """A problem source for a folder that was not listed, named by its path under the source."""
    relative = posixpath.relpath(path, root)
    return RecordingSource(relative, relative, "plain", [], [], problem=(path, code, message))


def _discover_psg_audio(fs: fsspec.AbstractFileSystem, root: str, rml_folder: str) -> list[RecordingSource]:
    edf_root = posixpath.join(root, "APNEA_EDF")
    found: list[RecordingSource] = []
    for patient_dir in sorted(fs.ls(edf_root, detail=False)):
        patient = posixpath.basename(patient_dir.rstrip("/"))
        if _hidden(patient) or _bad_name(patient) or not fs.isdir(patient_dir):
            continue  # a file here, or a folder name that is not UTF-8: listed by ``_stray``
        parts: list[tuple[int, str]] = []
        for path in fs.ls(patient_dir, detail=False):
            name = posixpath.basename(path.rstrip("/"))
            if _hidden(name) or _bad_name(name):
                continue
            match = PART_RE.match(unquote(name))
            if match and match["patient"] in (patient, unquote(patient)):  # another patient's part is a stray
                parts.append((int(match["part"]), full_uri(fs, path)))
        parts.sort()
        rml = posixpath.join(root, rml_folder, f"{patient}.rml")
        found.append(
            RecordingSource(
                recording_id=patient,
                subject_id=patient.split("-")[0],
                layout="psg-audio",
                audio_uris=[uri for _, uri in parts],
                part_numbers=[n for n, _ in parts],
                labels_uri=full_uri(fs, rml) if fs.exists(rml) else None,
            )
        )
    orphans = _orphan_annotations(fs, root, rml_folder, {src.recording_id for src in found})
    return sorted(found + orphans, key=lambda src: src.recording_id) if orphans else found


def _orphan_annotations(
    fs: fsspec.AbstractFileSystem, root: str, rml_folder: str, patients: set[str]
) -> list[RecordingSource]:
    """Nights whose ``<rml_folder>/<patient>.rml`` exists without an ``APNEA_EDF/<patient>/`` folder:
    listed without audio, so validation quarantines them (``no_audio``) instead of losing them."""
    rml_root = posixpath.join(root, rml_folder)
    if not fs.isdir(rml_root):
        return []
    orphans: list[RecordingSource] = []
    for path in sorted(fs.ls(rml_root, detail=False)):
        name = posixpath.basename(path.rstrip("/"))
        patient = name[: -len(".rml")]
        if not name.endswith(".rml") or not patient or patient in patients or fs.isdir(path):
            continue
        if _hidden(name) or _bad_name(name):
            continue  # listed by ``_stray``
        orphans.append(
            RecordingSource(
                recording_id=patient,
                subject_id=patient.split("-")[0],
                layout="psg-audio",
                audio_uris=[],
                part_numbers=[],
                labels_uri=full_uri(fs, path),
            )
        )
    return orphans


def _discover_plain(fs: fsspec.AbstractFileSystem, root: str, files: list[str]) -> list[RecordingSource]:
    """One source per file name stem of ``files`` (one listing of the source: no request per file
    on object storage).

    A stem given by two audio files (``n.wav`` and ``n.flac``, or ``a/n.wav`` and ``b/n.wav``)
    is one recording id, so it is listed once with every file and validation quarantines it
    (two rows with one id would overwrite each other). Stage or event CSVs without audio are
    listed too, without audio, so validation quarantines them (``no_audio``, one row per name
    naming every such CSV) instead of losing them; a CSV with a night's name in another folder
    than its audio is named in that night's findings (``misplaced_annotations``, a warning).
    """
    audio: dict[str, list[str]] = {}
    sidecars: dict[tuple[str, str], dict[str, str]] = {}  # (folder, stem) -> {"labels_uri": path, ...}
    for path in files:
        name = posixpath.basename(path)
        lower = name.lower()
        kind = next((k for k, suffix in SIDECAR_SUFFIXES.items() if lower.endswith(suffix)), None)
        if kind is not None:
            stem = name[: -len(SIDECAR_SUFFIXES[kind])]
            sidecars.setdefault((posixpath.dirname(path), stem), {})[kind] = full_uri(fs, path)
        elif lower.endswith(PLAIN_SUFFIXES + UNREAD_AUDIO_SUFFIXES):
            audio.setdefault(name.rsplit(".", 1)[0], []).append(path)
    found: list[RecordingSource] = []
    for stem, paths in sorted(audio.items()):
        labels = sidecars.pop((posixpath.dirname(paths[0]), stem), {})
        # CSVs with this name elsewhere (another folder, or beside a duplicate's audio): never read
        elsewhere = [uri for key in sorted(sidecars) if key[1] == stem for uri in sidecars.pop(key).values()]
        beside = ", ".join(full_uri(fs, p) for p in paths)
        found.append(
            RecordingSource(
                recording_id=stem,
                subject_id=stem,
                layout="plain",
                audio_uris=[full_uri(fs, p) for p in paths],
                part_numbers=[1] * len(paths),
                notes=[
                    (
                        uri,
                        "misplaced_annotations",
                        f"has the recording's name but is not beside its audio ({beside}), so it was not read "
                        "for it: move it beside the audio if it belongs to this night, or rename or remove it",
                    )
                    for uri in elsewhere
                ],
                **labels,
            )
        )
    orphans: dict[str, list[dict[str, str]]] = {}
    for (_, stem), labels in sorted(sidecars.items()):  # beside no audio of their name
        orphans.setdefault(stem, []).append(labels)
    for stem, groups in orphans.items():
        source = RecordingSource(
            recording_id=stem, subject_id=stem, layout="plain", audio_uris=[], part_numbers=[], **groups[0]
        )
        if len(groups) > 1:  # one id, several folders: one row naming every CSV
            csvs = [uri for labels in groups for uri in labels.values()]
            source.problem = (
                csvs[0],
                "no_audio",
                f"annotations without audio: no {stem}.wav or .flac anywhere in the source for the CSVs "
                f"{', '.join(csvs)}; upload the night's audio beside them (in one folder) or remove them",
            )
        found.append(source)
    return sorted(found, key=lambda src: src.recording_id)


def _hidden(relative: str) -> bool:
    """A path under the source that no one uploads as a recording: a hidden file or folder
    (``.Trash-1000/``, macOS ``._night.wav`` resource forks) or a zip's ``__MACOSX/`` folder."""
    return any((part.startswith(".") and part not in {".", ".."}) or part == "__MACOSX" for part in relative.split("/"))


@contextlib.contextmanager
def local_copies(uris: list[str]) -> Iterator[list[str]]:
    """Local paths for ``uris``: the files themselves when local, else verified downloads
    (``io.transfer.download``: retried, size- and checksum-checked, atomic), removed on exit."""
    tmpdir: str | None = None
    paths: list[str] = []
    try:
        for uri in uris:
            fs, path = fsspec.core.url_to_fs(uri)
            if isinstance(fs, LocalFileSystem):
                paths.append(path)
                continue
            tmpdir = tmpdir or tempfile.mkdtemp(prefix="sleepsound-")
            paths.append(download(uri, os.path.join(tmpdir, unquote(posixpath.basename(path)))))
        yield paths
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
