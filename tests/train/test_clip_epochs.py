"""Clip epochs for the per-second snore head: laying clips into epochs, frame targets by hand, the
night's own path (a laid recording embeds as the same audio does as a night), the cache, folders,
the configuration. Tiny clips and the weightless ``mel`` front end: seconds."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sleepsound.core.config import SNORE_CLIPS_DEFAULT, Config
from sleepsound.synth.bedroom import CATEGORIES
from sleepsound.train import clip_epochs as C

EPOCH = 30 * C.RATE


def _mel(**training) -> Config:
    return Config.model_validate({"backbone": {"name": "mel"}, "training": training})


def test_clips_are_laid_end_to_end_and_each_frame_takes_its_clips_label() -> None:
    # three clips: 0.75 s snoring, 1.0 s not, 0.5 s snoring; epochs of 2 s, 4 frames of 0.5 s each
    rate = 1000
    clips = [np.full(750, 0.2, np.float32), np.full(1000, -0.4, np.float32), np.full(500, 0.8, np.float32)]
    laid = C.lay_clips(clips, [1, 0, 1], [0, 1, 2], 2 * rate)
    # 2.25 s laid -> 2 epochs (4 s): continued from the first clip again, nothing padded with silence
    assert len(laid.audio) == 4 * rate and laid.clip.tolist() == [0, 1, 2, 0, 1]
    assert laid.starts.tolist() == [0, 750, 1750, 2250, 3000] and laid.ends[-1] == 4000
    assert np.allclose(laid.audio[:750], 0.2 * C.LAID_PEAK) and np.allclose(laid.audio[2250:3000], 0.2 * C.LAID_PEAK)
    y, clip = C.frame_targets(laid, 2 * rate, 4)
    # frames [0, .5) snoring; [.5, 1) straddles clip 0 (snoring) and clip 1 (not); [1, 1.5) and [1.5, 2) ...
    # [1.5, 2.0) straddles clip 1 (to 1.75) and clip 2 (snoring); second epoch: [2.0, 2.5) clip 2 then clip 0,
    # both snoring; [2.5, 3.0) clip 0; [3.0, 3.5) and [3.5, 4.0) clip 1
    assert y.tolist() == [[1, -1, 0, -1], [1, 1, 0, 0]]
    assert clip.tolist() == [[0, 1, 1, 2], [0, 0, 1, 1]]  # the clip at each frame's middle (0.75 s: clip 1's)
    with pytest.raises(ValueError, match="no clips"):
        C.lay_clips(clips, [1, 0, 1], [], 2 * rate)


def test_runs_keep_neighbouring_clips_together_and_are_seeded() -> None:
    groups = [list(range(0, 10)), list(range(10, 25)), list(range(25, 28))]
    order = C.run_order(groups, seed=3)
    assert sorted(order) == list(range(28)) and order == C.run_order(groups, seed=3)
    assert order != C.run_order(groups, seed=4)
    # between jumps in the order, clips are consecutive clips of one group: neighbours stay neighbours
    group_of = {c: g for g, members in enumerate(groups) for c in members}
    jumps = [
        i for i in range(1, len(order)) if order[i] != order[i - 1] + 1 or group_of[order[i]] != group_of[order[i - 1]]
    ]
    for a, b in zip([0, *jumps], [*jumps, len(order)], strict=True):
        assert len({group_of[c] for c in order[a:b]}) == 1
    assert len(jumps) >= -(-28 // C.RUN_CLIPS[1]) - 1 and order != sorted(order)  # cut into runs and mixed


def _plain_night(tmp: Path, audio: np.ndarray) -> dict:
    """A generated plain night of the same length, its audio replaced by ``audio`` (16-bit exact)."""
    from sleepsound.core.config import PreprocessConfig
    from sleepsound.ingest.manifest import build_manifest
    from sleepsound.synth.writers import generate_cohort

    generate_cohort(
        tmp,
        n_subjects=1,
        hours=len(audio) / C.RATE / 3600,
        seed=1,
        sample_rate=C.RATE,
        layout="plain",
        audio_format="wav",
    )
    (wav,) = tmp.glob("*.wav")
    assert sf.info(wav).frames == len(audio)
    sf.write(wav, audio, C.RATE, subtype="PCM_16")
    (row,) = build_manifest(str(tmp), PreprocessConfig())
    assert row["status"] == "accepted"
    return row


def test_a_laid_recording_embeds_as_the_same_audio_does_as_a_night_and_is_cached(tmp_path, caplog) -> None:
    from sleepsound.embed.cohort import embed_cohort
    from sleepsound.train.dataset import load_embedded

    rng = np.random.default_rng(0)
    # clips whose laid samples are whole 16-bit steps, so the night's WAV holds exactly the laid audio
    clips = [
        (rng.integers(-9000, 9000, int(rng.integers(8, 40)) * 800) * 2 / 32768).astype(np.float32) for _ in range(9)
    ]
    labels = [i % 2 for i in range(9)]
    names = [f"c{i}" for i in range(9)]
    cfg = _mel()
    root = str(tmp_path / "root")
    got = C.clip_frames(clips, labels, names, list(range(9)), cfg, root, info={"source": "test"})
    n_epochs = -(-sum(len(c) for c in clips) // EPOCH)
    assert got.features.shape == (n_epochs, 60, 64) and got.labels.shape == got.clip.shape == (n_epochs, 60)
    assert got.info["epochs"] == n_epochs and got.info["source"] == "test"
    assert set(np.unique(got.labels)) == {-1, 0, 1}
    assert (got.labels[got.labels >= 0] == np.array(labels)[got.clip[got.labels >= 0]]).all()

    laid = C.lay_clips(clips, labels, list(range(9)), EPOCH)
    row = _plain_night(tmp_path / "night", laid.audio)
    night_root = str(tmp_path / "night-root")
    assert not embed_cohort([row], night_root, cfg, use_ray=False, shifted=False).failed
    night = load_embedded(night_root, cfg, pd.DataFrame([row]))
    assert night.features.shape == got.features.shape
    assert np.array_equal(night.features, got.features)  # the same values: the night's path, not a copy of it

    (cached,) = Path(root).rglob("*.npz")
    assert "clip-epochs" in str(cached) and cached.parent.parent.name == cfg.preprocess.fingerprint()
    stamp = cached.stat().st_mtime_ns
    again = C.clip_frames(clips, labels, names, list(range(9)), cfg, root)
    assert np.array_equal(again.features, got.features) and cached.stat().st_mtime_ns == stamp  # read, not embedded
    cached.write_bytes(cached.read_bytes()[:-200])  # damaged: embedded again, warned, rewritten
    with caplog.at_level(logging.WARNING):
        fixed = C.clip_frames(clips, labels, names, list(range(9)), cfg, root)
    assert np.array_equal(fixed.features, got.features) and "embedding again" in caplog.text


def test_with_preprocess_on_the_model_device_the_clip_epochs_are_the_cpu_paths() -> None:
    """preprocess.device model: raw epochs with margins, filtered by the model stage, as a night's are."""
    rng = np.random.default_rng(2)
    clips = [rng.normal(0, 0.1, C.RATE * 7).astype(np.float32) for _ in range(5)]
    cpu = C.clip_frames(clips, [0, 1, 0, 1, 0], list("abcde"), range(5), _mel())
    on_model = _mel().model_copy(update={"preprocess": _mel().preprocess.model_copy(update={"device": "model"})})
    got = C.clip_frames(clips, [0, 1, 0, 1, 0], list("abcde"), range(5), on_model)
    assert got.features.shape == cpu.features.shape == (2, 60, 64) and np.array_equal(got.labels, cpu.labels)
    assert np.allclose(got.features.astype(np.float32), cpu.features.astype(np.float32), atol=2e-3)


def test_a_clip_folder_is_read_in_runs_of_its_numbers_and_a_bad_one_is_named(tmp_path) -> None:
    rng = np.random.default_rng(1)
    for label, first in (("snoring", "1"), ("no_snoring", "0")):
        (tmp_path / "clips" / label).mkdir(parents=True)
        for n in [*range(0, 4), *range(50, 53)]:
            sf.write(tmp_path / "clips" / label / f"{first}_{n}.wav", rng.normal(0, 0.1, 16000), 16000)
    (tmp_path / "clips" / "other").mkdir()
    sf.write(tmp_path / "clips" / "other" / "x_1.wav", rng.normal(0, 0.1, 16000), 16000)
    clips, labels, names, groups, info = C.folder_clips(str(tmp_path / "clips"))
    assert len(clips) == 14 and sorted(set(labels)) == [0, 1] and info["rejected"] == 1
    assert all(n.startswith("snoring/" if y else "no_snoring/") for n, y in zip(names, labels, strict=True))
    assert all(len(c) == 16000 and abs(np.abs(c).max() - 1) < 1e-6 for c in clips)  # peak-normalised, as clips are read
    assert sorted(len(g) for g in groups) == [3, 3, 4, 4]  # runs of consecutive numbers, per label
    assert all(len({labels[i] for i in g}) == 1 for g in groups)
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "snoring").mkdir()
    sf.write(tmp_path / "only" / "snoring" / "1_0.wav", rng.normal(0, 0.1, 16000), 16000)
    with pytest.raises(ValueError, match="only holds 1 usable clips"):
        C.folder_clips(str(tmp_path / "only"))
    with pytest.raises(ValueError, match="missing is not a folder"):
        C.folder_clips(str(tmp_path / "missing"))


def test_generated_clip_epochs_are_bedroom_negatives_sized_by_the_training_side(tmp_path) -> None:
    cfg = _mel(snore_generated_share=0.1)
    got = C.snore_clip_frames(str(tmp_path), cfg, n_epochs=30)
    assert got is not None and len(got.features) == 3  # 0.1 x 30 -> 3 epochs: nine 10-s pieces
    assert (got.labels == 0).all() and got.names[:5] == [f"generated/{c}/0" for c in CATEGORIES]
    (source,) = got.info["sources"]
    assert source["source"] == "generated" and source["seed"] == 101 and source["pieces"] == 9
    assert C.snore_clip_frames(str(tmp_path), _mel(snore_clips=[]), 25) is None
    both = _mel().model_copy(update={"preprocess": _mel().preprocess.model_copy(update={"channel": "both"})})
    skipped = C.snore_clip_frames(str(tmp_path), both, 25)
    assert skipped is not None and len(skipped.features) == 0 and "both" in skipped.info["skipped"]


def test_clip_epochs_never_make_a_snore_head_alone() -> None:
    """Its figures are the nights' frames: nights without a known snoring frame train none, clips or not."""
    from sleepsound.train.dataset import EmbeddedEpochs
    from sleepsound.train.frames import fit_frames

    rng = np.random.default_rng(3)
    nights = EmbeddedEpochs(
        rng.normal(size=(4, 60, 8)).astype(np.float16),
        pd.DataFrame({"recording_id": "r", "epoch_index": range(4), "offset_s": 0.0}),
    )
    clips = C.ClipFrames(
        rng.normal(size=(3, 60, 8)).astype(np.float16),
        np.tile([0, 1], (3, 30)).astype(np.int8),
        np.zeros((3, 60), np.int64),
        ["c"],
    )
    with pytest.raises(ValueError, match="training nights' frames hold 0"):  # no events source: nothing known
        fit_frames(_mel(), nights, {}, extra=clips)


def test_the_setting_is_checked() -> None:
    """(Its hash rule, an old configuration keeping its hash, is in tests/core/test_config.py.)"""
    assert Config().training.snore_clips == list(SNORE_CLIPS_DEFAULT)
    assert Config.model_validate({"training": {"snore_clips": ["generated", "../clips"]}}).training.snore_clips
    with pytest.raises(ValueError, match="twice"):
        Config.model_validate({"training": {"snore_clips": ["generated", "generated"]}})
    with pytest.raises(ValueError, match="empty entry"):
        Config.model_validate({"training": {"snore_clips": [" "]}})
    with pytest.raises(ValueError, match="snore_generated_share"):
        Config.model_validate({"training": {"snore_generated_share": 0}})
