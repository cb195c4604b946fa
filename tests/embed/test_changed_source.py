"""A source that changes under the cache: every cached file belongs to the version of the night the
manifest describes, so labels that arrive or are corrected later, or audio put back to an earlier
upload, are embedded again rather than paired with another version's files."""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from sleepsound.core.config import Config
from sleepsound.embed.cache import cache_meta, epochs_path, shifted_path
from sleepsound.embed.cohort import embed_cohort
from sleepsound.ingest.manifest import build_manifest
from sleepsound.synth.writers import generate_cohort

CFG = Config.model_validate({"backbone": {"name": "null"}, "training": {"shift_augment": True}})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Two PSG-Audio nights of two 90-s parts (6 epochs each)."""
    out = tmp_path_factory.mktemp("changed-source")
    generate_cohort(out, n_subjects=2, hours=0.05, seed=21, sample_rate=16_000, part_seconds=90, cycle_minutes=10)
    return out


def _copy(cohort: Path, tmp_path: Path) -> Path:
    shutil.copytree(cohort, tmp_path / "src")
    return tmp_path / "src"


def _by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["recording_id"]: r for r in rows}


def _edf_samples(part: Path) -> tuple[int, bytearray]:
    """An EDF part's bytes and where its data records start (the header's byte count)."""
    data = bytearray(part.read_bytes())
    return int(data[184:192].decode().strip()), data


def test_labels_that_arrive_or_change_after_embedding_are_embedded_again(cohort, tmp_path):
    """The audio's SHA-256 does not change with the labels: the epochs file (stages, events) and the
    shifted windows record the labels' digest too, so a cached night never keeps the old labels."""
    src, root = _copy(cohort, tmp_path), str(tmp_path / "root")
    rml = sorted((src / "APNEA_RML").glob("*.rml"))[0]
    rec, labels = rml.stem, rml.read_bytes()
    rml.unlink()
    first = build_manifest(str(src), CFG.preprocess)
    assert _by_id(first)[rec]["label_source"] == "none" and _by_id(first)[rec]["labels_sha256"] is None
    embed_cohort(first, root, CFG, use_ray=False)
    assert pd.read_parquet(epochs_path(root, CFG, rec))["stage3"].isna().all()

    rml.write_bytes(labels)  # the scoring arrives later: same audio, same SHA-256
    second = build_manifest(str(src), CFG.preprocess, previous=first)
    assert _by_id(second)[rec]["sha256"] == _by_id(first)[rec]["sha256"] and _by_id(second)[rec]["labels_sha256"]
    stats = embed_cohort(second, root, CFG, use_ray=False)
    assert stats.embedded == [rec] and stats.quarantined == []  # stale, not damaged: nothing moved aside
    stages = pd.read_parquet(epochs_path(root, CFG, rec))["stage5"].tolist()
    assert None not in stages and "N2" in stages

    rml.write_text(labels.decode().replace('Type="NonREM2"', 'Type="REM"'))  # the scoring is corrected
    third = build_manifest(str(src), CFG.preprocess, previous=second)
    assert embed_cohort(third, root, CFG, use_ray=False, shifted=False).embedded == [rec]  # as `score` embeds
    corrected = pd.read_parquet(epochs_path(root, CFG, rec))["stage5"].tolist()
    assert "N2" not in corrected and corrected.count("R") > stages.count("R")
    # Training later: the shifted windows, still of the old stages, are embedded again too.
    row = _by_id(third)[rec]
    assert embed_cohort(third, root, CFG, use_ray=False).embedded == [rec]
    windows = pd.read_parquet(shifted_path(root, CFG, rec, row["sha256"], "NREM"))
    assert "N2" not in set(windows["stage5"].dropna())
    assert embed_cohort(third, root, CFG, use_ray=False).embedded == []  # and now it is all cached


def test_audio_put_back_to_an_earlier_upload_is_not_paired_with_the_later_versions_epochs(cohort, tmp_path):
    """A -> B -> A: A's embeddings are still cached (keyed by A's SHA-256), but the epochs file, one per
    night, is B's. It used to count as cached whenever B kept A's valid-epoch count."""
    src, root = _copy(cohort, tmp_path), str(tmp_path / "root")
    first = build_manifest(str(src), CFG.preprocess)
    rec = first[0]["recording_id"]
    embed_cohort(first, root, CFG, use_ray=False)
    part = Path(first[0]["source_uris"][1])
    original = part.read_bytes()
    start, data = _edf_samples(part)
    noise = np.random.default_rng(0).integers(-2000, 2000, (len(data) - start) // 2, dtype=np.int16)
    data[start:] = noise.tobytes()  # other audio, every epoch still valid
    part.write_bytes(bytes(data))
    second = build_manifest(str(src), CFG.preprocess, previous=first)
    assert _by_id(second)[rec]["sha256"] != first[0]["sha256"]
    assert embed_cohort(second, root, CFG, use_ray=False).embedded == [rec]

    part.write_bytes(original)  # the earlier upload is put back
    third = build_manifest(str(src), CFG.preprocess, previous=second)
    assert _by_id(third)[rec]["sha256"] == first[0]["sha256"]
    stats = embed_cohort(third, root, CFG, use_ray=False)
    assert stats.embedded == [rec] and stats.quarantined == []
    recorded = cache_meta(pq.read_schema(epochs_path(root, CFG, rec)).metadata)
    assert recorded["audio_sha256"] == first[0]["sha256"]
