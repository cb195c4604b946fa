"""A source that changes under a run and between runs, through the real nightly and score flows on
Ray: every night ends processed or quarantined with its reason, the counts add up, and no run embeds,
trains on or scores a version of a night other than the one it validated (library-level cases, S3
included: tests/embed/test_changed_source.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from sleepsound.core.config import Config
from sleepsound.synth.writers import generate_cohort

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Four labelled nights of two 3-minute parts."""
    out = tmp_path_factory.mktemp("changing-source")
    generate_cohort(out, n_subjects=4, hours=0.1, seed=5, sample_rate=16_000, part_seconds=180, cycle_minutes=6)
    return out


def _config() -> dict:
    return Config.model_validate({"backbone": {"name": "null"}, "training": {"epochs": 2}}).model_dump()


def _rewrite_samples(part: Path, by: int = 0) -> None:
    """Other audio in the same number of bytes (the EDF stays valid): another version of the file, its
    samples reversed, or with ``by`` moved ``by`` samples along."""
    data = bytearray(part.read_bytes())
    start = int(data[184:192].decode().strip())
    samples = data[start:]
    data[start:] = samples[2 * by :] + samples[: 2 * by] if by else bytes(reversed(samples))
    part.write_bytes(bytes(data))


def _correct_labels(rml: Path) -> None:
    rml.write_text(rml.read_text().replace('Type="NonREM2"', 'Type="REM"'))


@contextlib.contextmanager
def _once_validated(root: Path, change: Callable[[], None]) -> Iterator[threading.Event]:
    """Run ``change`` as soon as the run's ingest step has (re)written the manifest, that is once the
    source is validated, while the run goes on to embed it (Ray Data's start alone takes seconds)."""
    manifest = root / "manifest" / "manifest.parquet"
    before = manifest.stat().st_mtime_ns if manifest.exists() else None
    done, stop = threading.Event(), threading.Event()

    def watch() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                if manifest.stat().st_mtime_ns != before:
                    change()
                    done.set()
                    return
            time.sleep(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield done
    finally:
        stop.set()
        thread.join()


def _manifest(root: Path) -> pd.DataFrame:
    return pd.read_parquet(root / "manifest" / "manifest.parquet").set_index("recording_id")


def _epochs_file(root: Path, rec: str) -> Path:
    (path,) = root.glob(f"epochs/*/{rec}.parquet")
    return path


def test_a_source_changing_under_and_between_nightly_and_score_runs(cohort, tmp_path) -> None:
    from flows.nightly import run_nightly_on_ray
    from flows.score import run_score_on_ray
    from sleepsound.embed.cache import cache_meta
    from sleepsound.runs.nightly_state import processed

    src, root = tmp_path / "src", tmp_path / "root"
    shutil.copytree(cohort, src)
    a, b, c, d = sorted(p.name for p in (src / "APNEA_EDF").iterdir())
    part = lambda rec: src / "APNEA_EDF" / rec / f"{rec}[002].edf"  # noqa: E731

    # 1. Night c's audio is rewritten (same size) after validation, while the run embeds: c is quarantined
    #    as source_changed, the others are trained on and scored, the counts add up, and nothing of c is
    #    cached under the validated checksum.
    with _once_validated(root, lambda: _rewrite_samples(part(c))) as changed:
        first = run_nightly_on_ray(str(src), str(root), _config(), run_id="n1")
    assert changed.is_set()
    manifest = _manifest(root)
    assert manifest.loc[c, "reason_code"] == "source_changed" and f"{c}[002].edf" in manifest.loc[c, "reason"]
    assert (first["counts"]["discovered"], first["counts"]["accepted"], first["counts"]["quarantined"]) == (4, 3, 1)
    assert first["trained"] and sorted(first["new"]["labelled"]) == [a, b, d]
    preds = pd.read_parquet(root / "runs" / "n1" / "predictions")
    assert set(preds["recording_id"].astype(str)) == {a, b, d} and set(processed(str(root))) == {a, b, d}
    assert not list(root.glob(f"embeddings/*/*/{c}-{manifest.loc[c, 'sha256'][:16]}*"))

    # 2. Between runs, b's labels are corrected (same audio) and c is left as it now is: the next nightly
    #    validates c again and finds both new (b's truth changed), trains and scores them with b's new labels.
    _correct_labels(src / "APNEA_RML" / f"{b}.rml")
    second = run_nightly_on_ray(str(src), str(root), _config(), run_id="n2")
    assert sorted(second["new"]["labelled"]) == [b, c] and second["trained"]
    assert (second["counts"]["accepted"], second["counts"]["quarantined"]) == (4, 0)
    preds = pd.read_parquet(root / "runs" / "n2" / "predictions")
    assert set(preds["recording_id"].astype(str)) == {b, c}
    scored_b = preds[preds["recording_id"].astype(str) == b]
    assert "N2" not in set(scored_b["stage5_true"].dropna()) and (scored_b["stage5_true"] == "R").any()
    assert "N2" not in set(pd.read_parquet(_epochs_file(root, b))["stage5"].dropna())

    # 3. a's audio is replaced in place (same id, same size) between runs: `score` validates and embeds it
    #    again, one prediction row per epoch and night, a's epochs file made from the new audio.
    _rewrite_samples(part(a))
    scored = run_score_on_ray(str(src), str(root), _config(), run_id="s1")
    assert (scored["counts"]["embedded"], scored["counts"]["cached"]) == (1, 3)
    manifest = _manifest(root)
    assert cache_meta(pq.read_schema(_epochs_file(root, a)).metadata)["audio_sha256"] == manifest.loc[a, "sha256"]
    preds = pd.read_parquet(root / "runs" / "s1" / "predictions")
    assert len(preds) == manifest["n_epochs"].sum() and not preds.duplicated(["recording_id", "epoch_index"]).any()

    # 4. a changes again while the next nightly embeds it (its shifted training windows were never
    #    embedded by `score`): quarantined, nothing else new, and the run's counts say so. The nightly
    #    after that finds a as it now is, new since n1 handled it.
    os.utime(part(d))  # touched, not changed: validated again, same checksum, not new
    with _once_validated(root, lambda: _rewrite_samples(part(a), by=1)) as changed:
        third = run_nightly_on_ray(str(src), str(root), _config(), run_id="n3")
    assert changed.is_set()
    assert third["new"] == {"labelled": [], "unlabelled": []} and not third["trained"]
    assert (third["counts"]["accepted"], third["counts"]["quarantined"]) == (3, 1)
    assert _manifest(root).loc[a, "reason_code"] == "source_changed"
    fourth = run_nightly_on_ray(str(src), str(root), _config(), run_id="n4")
    assert fourth["new"]["labelled"] == [a] and set(processed(str(root))) == {a, b, c, d}
