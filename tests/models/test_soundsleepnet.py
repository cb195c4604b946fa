"""The SoundSleepNet-style baseline: the weightless log-Mel front end and the CNN-BiLSTM-Transformer head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sleepsound.core.config import BackboneConfig, Config, PreprocessConfig
from sleepsound.embed.cache import backbone_key
from sleepsound.embed.cohort import embed_cohort
from sleepsound.ingest.manifest import build_manifest
from sleepsound.models.backbones.mel import MelBackbone
from sleepsound.models.backbones.pretrained import load_backbone
from sleepsound.models.heads.artifacts import HeadArtifactError, build_head, load_head, save_head
from sleepsound.models.heads.attention import build_context
from sleepsound.models.heads.soundsleepnet import SoundSleepNetHead
from sleepsound.synth.writers import generate_cohort
from sleepsound.train.dataset import load_embedded
from sleepsound.train.loop import TrainConfig, predict_proba, train_head

SR = 16_000


def _noise(rng: np.random.Generator, seconds: float, band: tuple[float, float]) -> np.ndarray:
    """Band-limited noise (FFT mask), random gain: the classes differ in spectrum, not loudness."""
    n = int(seconds * SR)
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / SR)
    spec[(freqs < band[0]) | (freqs > band[1])] = 0
    audio = np.fft.irfft(spec, n)
    audio = audio / audio.std() * rng.uniform(0.01, 0.3) + 1e-3 * rng.standard_normal(n)
    return audio.astype(np.float32)


# ---------------------------------------------------------------- front end


def test_front_end_shape_dtype_and_surface() -> None:
    bb = load_backbone("mel", pool_seconds=0.5, device="cpu", dtype="auto")
    assert isinstance(bb, MelBackbone)
    assert (bb.name, bb.family, bb.dim, bb.layers, bb.n_layers, bb.on_cuda) == ("mel", "mel", 64, (), 1, False)
    assert bb.dtype == "float32" and bb.device == "cpu" and bb.auto_batch_size(30 * SR, cap=16) == 8
    assert isinstance(bb.model, torch.nn.Module)
    rng = np.random.default_rng(0)
    for n in (30 * SR, 3 * SR + 77, 400):
        out = bb.embed(rng.standard_normal((2, n)).astype(np.float32) * 0.1)
        assert out.dtype == np.float16 and out.shape == (2, bb.n_output_frames(n), 64)
        assert np.isfinite(out).all()
    assert bb.n_output_frames(30 * SR) == 60
    assert bb.embed(np.zeros((0, 30 * SR), np.float32)).shape == (0, 60, 64)
    silent = bb.embed(np.zeros((1, SR), np.float32))  # silence: constant dB, normalised to zeros
    assert np.isfinite(silent).all() and np.abs(silent).max() == 0


def test_pooling_is_the_mean_of_10_ms_frames() -> None:
    audio = _noise(np.random.default_rng(1), 2.05, (100, 3000))[None]
    frames = load_backbone("mel", pool_seconds=0.01).embed(audio).astype(np.float32)  # 205 frames
    pooled = load_backbone("mel", pool_seconds=0.1).embed(audio).astype(np.float32)  # 21 (last holds 5)
    assert frames.shape == (1, 205, 64) and pooled.shape == (1, 21, 64)
    want = np.stack([frames[0, i : i + 10].mean(axis=0) for i in range(0, 205, 10)])
    np.testing.assert_allclose(pooled[0], want, atol=1e-2)


@pytest.mark.parametrize(
    "bad",
    [
        {"pool_seconds": 0.015},
        {"pool_seconds": 0.0},
        {"pool_seconds": -0.5},
        {"layer": 3},
        {"layers": [1, 2]},
        {"dtype": "int8"},
    ],
)
def test_front_end_refuses_bad_settings(bad: dict) -> None:
    with pytest.raises(ValueError):
        load_backbone("mel", **bad)


def test_front_end_refuses_bad_audio() -> None:
    bb = load_backbone("mel")
    with pytest.raises(ValueError, match="at least 400 samples"):
        bb.embed(np.zeros((1, 399), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        bb.embed(np.full((1, SR), np.nan, np.float32))
    with pytest.raises(ValueError, match="batch, samples"):
        bb.embed(np.zeros(SR, np.float32))


def test_fingerprint_and_cache_key_follow_the_settings() -> None:
    base = load_backbone("mel", pool_seconds=0.5).fingerprint
    assert load_backbone("mel", pool_seconds=0.5, dtype="auto").fingerprint == base  # computes float32 anyway
    assert load_backbone("mel", pool_seconds=0.1).fingerprint != base
    assert MelBackbone(pool_seconds=0.5, n_mels=32).fingerprint != base
    key = backbone_key(BackboneConfig(name="mel"))
    assert key.startswith("mel-L-1-") and key == backbone_key(BackboneConfig(name="mel", dtype="float32"))
    assert backbone_key(BackboneConfig(name="mel", pool_seconds=0.1)) != key


def test_agrees_with_librosa_log_mel() -> None:
    librosa = pytest.importorskip("librosa")
    rng = np.random.default_rng(2)
    t = np.arange(3 * SR) / SR
    audio = (0.1 * np.sin(2 * np.pi * 440 * t) + _noise(rng, 3, (50, 6000))).astype(np.float32)
    power = librosa.feature.melspectrogram(
        y=audio,
        sr=SR,
        n_fft=400,
        hop_length=160,
        win_length=400,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=2.0,
        n_mels=64,
        fmin=0.0,
        fmax=8000.0,
        htk=False,
        norm="slaney",
    )
    db = librosa.power_to_db(power, ref=1.0, amin=1e-10, top_db=80.0)[:, : len(audio) // 160]
    ref = ((db - db.mean()) / np.sqrt(db.var() + 1e-5)).T  # [300, 64]
    bb = load_backbone("mel", pool_seconds=0.1)
    with torch.inference_mode():
        ours = bb.model.log_mel(torch.from_numpy(audio[None]))[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-3)
    pooled = bb.embed(audio[None])[0].astype(np.float32)
    np.testing.assert_allclose(pooled, ref.reshape(30, 10, 64).mean(axis=1), atol=5e-3)  # float16 output


# ---------------------------------------------------------------- head


def _head(**dims) -> SoundSleepNetHead:
    torch.manual_seed(0)
    return SoundSleepNetHead(16, **{"conv_channels": 16, "lstm_hidden": 16, "ff_dim": 32, **dims}).eval()


def test_head_shapes_and_weights() -> None:
    head = _head()
    assert head.kind == "soundsleepnet" and all(isinstance(v, (int, float)) for v in head.dims.values())
    logits, weights = head(torch.randn(3, 20, 16, dtype=torch.float16))
    assert logits.shape == (3, 3) and weights.shape == (3, 20) and logits.dtype == torch.float32
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[0, 15:] = False
    mask[1] = False  # no real frame: zero weights, finite logits
    logits, weights = head(torch.randn(3, 20, 16), mask)
    assert torch.isfinite(logits).all() and float(weights[1].abs().sum()) == 0
    torch.testing.assert_close(weights[0, :15], torch.full((15,), 1 / 15))
    assert float(weights[0, 15:].abs().sum()) == 0
    assert sum(p.numel() for p in SoundSleepNetHead(64).parameters()) < 1_000_000  # CPU-trainable default


def test_padded_frames_do_not_change_the_output() -> None:
    head = _head()
    x = torch.randn(2, 20, 16)
    with torch.no_grad():
        want, w_want = head(x)
        for where in ("front", "back"):
            junk = 50 * torch.randn(2, 7, 16)
            padded = torch.cat([junk, x], 1) if where == "front" else torch.cat([x, junk], 1)
            mask = torch.ones(2, 27, dtype=torch.bool)
            if where == "front":
                mask[:, :7] = False
            else:
                mask[:, 20:] = False
            got, w = head(padded, mask)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            real = w[mask].view(2, 20)
            torch.testing.assert_close(real, w_want)
            assert float(w[~mask].abs().sum()) == 0


def test_head_runs_on_the_90s_context_and_with_several_layers() -> None:
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((5, 6, 16)).astype(np.float16)
    x, mask = build_context(emb, np.array(["a"] * 3 + ["b"] * 2), np.array([0, 1, 3, 0, 1]), 3)
    logits, weights = _head()(torch.from_numpy(x), torch.from_numpy(mask))
    assert logits.shape == (5, 3) and weights.shape == (5, 18)
    np.testing.assert_allclose(weights.sum(1).detach().numpy(), 1.0, rtol=1e-5)
    assert float(weights[torch.from_numpy(~mask)].abs().sum()) == 0
    multi = _head(n_layers=2)
    logits, _ = multi(torch.randn(2, 6, 2, 16))
    assert logits.shape == (2, 3)
    with pytest.raises(ValueError, match="expected x"):
        multi(torch.randn(2, 6, 16))


@pytest.mark.parametrize("bad", [{"kernel_size": 4}, {"n_heads": 3}, {"dropout": 1.0}, {"conv_blocks": 0}])
def test_head_refuses_bad_dims(bad: dict) -> None:
    with pytest.raises(ValueError):
        SoundSleepNetHead(16, **{"lstm_hidden": 16, **bad})


def test_save_load_round_trip(tmp_path: Path) -> None:
    head = build_head("soundsleepnet", dim=16, conv_channels=8, lstm_hidden=8, n_heads=2, ff_dim=16, n_layers=1)
    assert isinstance(head, SoundSleepNetHead)
    config = save_head(head, None, str(tmp_path / "h"), context=3)
    assert config["head_class"] == "SoundSleepNetHead" and config["dims"] == head.dims
    loaded = load_head(None, str(tmp_path / "h"))
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], head.eval()(x)[0])
    assert loaded.meta["context_epochs"] == 3 and loaded.dims == head.dims
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.pt"))


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"conv_blocks": 1000}, HeadArtifactError),
        ({"lstm_hidden": 100_000}, HeadArtifactError),
        ({"n_heads": 0}, HeadArtifactError),
        ({"kernel_size": 2.5}, HeadArtifactError),
        ({"evil": 1}, HeadArtifactError),
        ({"n_heads": 3}, ValueError),
    ],
)
def test_tampered_dims_are_refused(tmp_path: Path, change: dict, error: type) -> None:
    directory = tmp_path / "h"
    save_head(_head(), None, str(directory))
    config = json.loads((directory / "config.json").read_text())
    config["dims"].update(change)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(error):
        load_head(None, str(directory))


# ---------------------------------------------------------------- end to end


def test_trains_on_mel_frames_and_beats_chance() -> None:
    torch.set_num_threads(2)
    rng = np.random.default_rng(4)
    bands = [(100, 600), (1500, 4000)]
    y = np.array([0, 1] * 48)
    audio = np.stack([_noise(rng, 4, bands[k]) for k in y])
    x = load_backbone("mel", pool_seconds=0.1).embed(audio)  # [96, 40, 64]
    assert x.shape == (96, 40, 64)
    cfg = TrainConfig(lr=5e-4, min_lr=5e-5, epochs=6, batch_size=16, patience=None, classes=("A", "B"))
    result = train_head(x[:64], y[:64], cfg, head="soundsleepnet")
    assert isinstance(result.model, SoundSleepNetHead) and result.model.meta["training"]["head"] == "soundsleepnet"
    accuracy = float((predict_proba(result.model, x[64:]).argmax(1) == y[64:]).mean())
    assert accuracy >= 0.9, accuracy  # chance is 0.5


def test_embed_cohort_through_the_cache(tmp_path: Path) -> None:
    source = tmp_path / "cohort"
    generate_cohort(source, n_subjects=2, hours=0.05, seed=5, sample_rate=SR, part_seconds=180, cycle_minutes=10)
    rows = build_manifest(str(source), PreprocessConfig())
    assert [r["status"] for r in rows] == ["accepted"] * 2
    cfg = Config.model_validate(
        {
            "backbone": {"name": "mel", "batch_size": 4},
            "training": {"shift_augment": False, "head": "soundsleepnet", "lr": 5e-4},
        }
    )
    root = str(tmp_path / "root")
    stats = embed_cohort(rows, root, cfg, use_ray=False)
    assert sorted(stats.embedded) == sorted(r["recording_id"] for r in rows) and not stats.failed
    assert embed_cohort(rows, root, cfg, use_ray=False).embedded == []  # cached
    data = load_embedded(root, cfg, pd.DataFrame(rows))
    assert data.features.shape == (len(data.epochs), 60, 64) and len(data.epochs) > 0
    assert data.features.dtype == np.float16 and np.isfinite(data.features.astype(np.float32)).all()
