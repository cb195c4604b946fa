"""The clip embedding cache: a truncated or altered file is named, quarantined and embedded again."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from sleepsound.clips.dataset import load_dataset
from sleepsound.clips.features import FeatureSpec
from sleepsound.clips.train import ClipTrainSettings, embed_dataset
from tests.clips.test_clips import make_dataset


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory):
    return load_dataset(make_dataset(tmp_path_factory.mktemp("clip-cache") / "data", per_label=3))


def _embed(clips, cache: Path) -> np.ndarray:
    """The weightless mel front end: the cache is the same whatever the backbone, and it is fast."""
    return embed_dataset(clips, FeatureSpec("mel", [-1]), ClipTrainSettings(backbone="mel", cache_dir=str(cache)))


@pytest.mark.parametrize("fault", ["truncated", "altered"])
def test_a_bad_clip_cache_file_is_quarantined_by_name_and_embedded_again(clips, tmp_path, caplog, fault):
    cache = tmp_path / "cache"
    first = _embed(clips, cache)
    (path,) = cache.glob("clips-*.npy")
    data = path.read_bytes()
    if fault == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:  # a readable array of the right shape whose values changed after the checksum was recorded
        bad = first.copy()
        bad[0, 0, 0, :4] += np.float16(1.0)
        np.save(path, bad, allow_pickle=False)
    broken = path.read_bytes()

    with caplog.at_level(logging.WARNING, logger="sleepsound.clips.features"):
        again = _embed(clips, cache)
    np.testing.assert_array_equal(again, first)
    assert str(path) in caplog.text
    moved = cache / "quarantine" / path.name
    assert moved.read_bytes() == broken
    reason = json.loads(Path(f"{moved}.reason.json").read_text())
    assert reason["path"] == str(path)
    assert ("unreadable" if fault == "truncated" else "differ from the checksum") in reason["problem"]
    assert path.read_bytes() == data  # written again, whole
    caplog.clear()
    np.testing.assert_array_equal(_embed(clips, cache), first)  # a cache hit, nothing moved
    assert "quarantine" not in caplog.text


def test_a_clip_cache_written_before_its_checksum_is_still_used(clips, tmp_path):
    cache = tmp_path / "cache"
    first = _embed(clips, cache)
    for checksum in cache.glob("*.sha256"):
        checksum.unlink()
    (path,) = cache.glob("clips-*.npy")
    stamp = path.stat().st_mtime_ns
    np.testing.assert_array_equal(_embed(clips, cache), first)
    assert path.stat().st_mtime_ns == stamp and not (cache / "quarantine").exists()


def test_training_reports_clips_embedded_and_settings_tried(tmp_path):
    """What `clips train` draws as bars: counts in, to the end, never a file name."""
    from sleepsound.clips.train import train_clips
    from tests.clips.test_clips import make_dataset

    data = make_dataset(tmp_path / "data", per_label=6)
    heard: list[tuple[str, int, int, str]] = []
    settings = ClipTrainSettings(
        backbone="mel", block_size=2, folds=2, max_epochs=2, heads=("mlp",), test_fraction=0.34, refit_all=False
    )
    summary = train_clips(data, tmp_path / "model", settings, bar=lambda *call: heard.append(call))
    used = summary["counts"]["used"]
    embedded = [c for c in heard if c[0] == "embed clips"]
    assert embedded[-1] == ("embed clips", used, used, "clips") and all(c[2] == used for c in embedded)
    selected = [c for c in heard if c[0] == "select"]
    assert selected[0][1] == 0 and selected[-1] == (
        "select",
        len(summary["candidates"]),
        len(summary["candidates"]),
        "settings",
    )
