"""A clip model's recipe (config.json extra.clips) is checked when the classifier is built: a
damaged or tampered field is refused by name, never a crash, a hang or a wrong answer later."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from sleepsound.clips.evaluate import ClipClassifier
from sleepsound.models.heads.artifacts import HeadArtifactError, build_head, save_head

CLASSES = ["no_snoring", "snoring"]


def _clips_info() -> dict[str, Any]:
    """What `clips train` records for a mel-backbone head (see clips/train.py)."""
    return {
        "backbone": "mel",
        "classes": CLASSES,
        "clip_samples": 16000,
        "clip_seconds": 1.0,
        "decision": None,
        "features": {"backbone": "mel", "base_pool_seconds": 0.1, "layers": [-1], "pick": [0], "pool_factor": 1},
        "held_out": {"n": 0},
        "held_out_files": [],
        "refit_on_all": False,
        "sample_rate": 16000,
        "split": {"block_size": 5},
    }


@pytest.fixture
def model(tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    head = build_head("mlp", dim=64, n_classes=2)
    save_head(head, None, str(directory), classes=CLASSES, extra={"clips": _clips_info()})
    return directory


def _edit(model: Path, change: Callable[[dict[str, Any]], None]) -> None:
    config = json.loads((model / "config.json").read_text())
    change(config["extra"]["clips"])
    (model / "config.json").write_text(json.dumps(config))


def _features(**values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda clips: clips["features"].update(values)


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda c: c.update(clip_samples=16000 * 10**6), "clip_samples"),  # a 1e6-s window: allocates TBs
        (lambda c: c.update(clip_samples=0), "clip_samples"),
        (lambda c: c.update(clip_samples=-5), "clip_samples"),
        (lambda c: c.update(clip_samples="abc"), "clip_samples"),
        (lambda c: c.update(clip_samples=True), "clip_samples"),
        (lambda c: c.update(sample_rate=8000), "sample_rate"),
        (lambda c: c.update(features=[1]), "features"),
        (_features(pool_factor=0), "features.pool_factor"),  # divided by zero, then scored anyway
        (_features(pool_factor=1.5), "features.pool_factor"),
        (_features(pick=[7]), "features.pick"),
        (_features(pick=[]), "features.pick"),
        (_features(pick=[0, 0]), "features.pick"),  # two layers for a head that takes one
        (_features(base_pool_seconds=float("nan")), "features.base_pool_seconds"),
        (_features(base_pool_seconds=0), "features.base_pool_seconds"),
        (_features(base_pool_seconds=1e-9), "features.base_pool_seconds"),  # zero frames: ZeroDivisionError
        (_features(base_pool_seconds=0.015), "features.base_pool_seconds"),  # not whole frames
        (_features(base_pool_seconds="0.1"), "features.base_pool_seconds"),
        (_features(layers=5), "features.layers"),
        (_features(layers=[]), "features.layers"),
        (lambda c: c["features"].pop("layers"), "features.layers"),
        (lambda c: c.update(decision="yes"), "decision"),
        (lambda c: c.update(decision=["snoring", 0.5]), "decision"),
        (lambda c: c.update(decision={"positive": "snoring", "threshold": [1]}), "decision"),
        (lambda c: c.update(decision={"positive": "snoring", "threshold": float("nan")}), "decision"),
        (lambda c: c.update(decision={"positive": "cough", "threshold": 0.5}), "decision"),
        (lambda c: c.update(held_out_files="a.wav"), "held_out_files"),
        # joined to --data by `evaluate --split test`: each must stay a label/file name under it
        (lambda c: c.update(held_out_files=["snoring/../../outside/patient.wav"]), "held_out_files"),
        (lambda c: c.update(held_out_files=["snoring/1_0.wav", "/etc/hostname"]), "held_out_files"),
        (lambda c: c.update(held_out_files=["../snoring/1_0.wav"]), "held_out_files"),
        (lambda c: c.update(held_out_files=["snoring/sub/1_0.wav"]), "held_out_files"),
        (lambda c: c.update(held_out_files=["1_0.wav"]), "held_out_files"),
        (lambda c: c.update(held_out_files=["snoring/"]), "held_out_files"),
        (lambda c: c.update(held_out_files=["snoring/..\\x.wav"]), "held_out_files"),
        (lambda c: c.update(split={"block_size": 0}), "split.block_size"),
        (_features(backbone="/etc"), "features.backbone"),
        (_features(backbone="../../../../etc"), "features.backbone"),
        (_features(backbone="a/b/c"), "features.backbone"),
        (_features(backbone=None), "features.backbone"),
    ],
)
def test_a_tampered_clip_recipe_is_refused_naming_the_field(
    model: Path, change: Callable[[dict[str, Any]], None], field: str
) -> None:
    _edit(model, change)
    with pytest.raises(HeadArtifactError) as raised:
        ClipClassifier(model)
    assert str(raised.value).startswith(f"{model / 'config.json'}: extra.clips.{field}")


def test_a_backbone_folder_must_be_a_model_folder_now(model: Path, tmp_path: Path) -> None:
    """Checked when the classifier is built, not when the first clip is scored."""
    folder = tmp_path / "backbone"
    folder.mkdir()
    _edit(model, _features(backbone=str(folder)))
    with pytest.raises(HeadArtifactError, match="is no local model folder"):
        ClipClassifier(model)
    (folder / "config.json").write_text("{}")
    assert ClipClassifier(model).spec.backbone == str(folder)  # loaded (and checked further) on first use


@pytest.mark.parametrize("backbone", ["mel", "null", "whisper-tiny.en-offline", "openai/whisper-tiny"])
def test_the_backbones_a_model_may_name(model: Path, backbone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # online: a hub id downloads on use
    _edit(model, _features(backbone=backbone))
    assert ClipClassifier(model).spec.backbone == backbone


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache in tmp_path, with the hub offline. huggingface_hub reads both
    settings into ``constants`` at import, so the constants are patched along with the environment."""
    import huggingface_hub.constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_offline_a_hub_id_missing_from_the_cache_is_refused_at_load(model: Path, offline_hub: Path) -> None:
    """Not at the first clip, deep inside transformers."""
    _edit(model, _features(backbone="openai/whisper-tiny"))
    with pytest.raises(HeadArtifactError) as raised:
        ClipClassifier(model)
    message = str(raised.value)
    assert message.startswith(f"{model / 'config.json'}: extra.clips.features.backbone 'openai/whisper-tiny'")
    assert "not in the local cache" in message and "offline" in message and "\n" not in message


def test_offline_a_cached_hub_id_loads(model: Path, offline_hub: Path) -> None:
    from huggingface_hub import try_to_load_from_cache

    repo = offline_hub / "models--openai--whisper-tiny"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "snapshots" / revision / "config.json").write_text("{}")
    (repo / "snapshots" / revision / "model.safetensors").write_bytes(b"{}")  # weights too, or it is refused
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    assert try_to_load_from_cache("openai/whisper-tiny", "config.json") == str(
        repo / "snapshots" / revision / "config.json"
    )  # the layout huggingface_hub itself reads
    _edit(model, _features(backbone="openai/whisper-tiny"))
    assert ClipClassifier(model).spec.backbone == "openai/whisper-tiny"


def test_a_good_recipe_with_a_decision_loads_and_scores(model: Path) -> None:
    _edit(model, lambda c: c.update(decision={"positive": "snoring", "threshold": 0.3}))
    clf = ClipClassifier(model)
    assert clf.decision is not None and clf.decision["positive_index"] == 1
    audio = np.random.default_rng(0).normal(scale=0.1, size=(2, 16000)).astype(np.float32)
    proba = clf.proba(audio, np.array([16000, 8000]))
    assert proba.shape == (2, 2) and np.isfinite(proba).all()


def test_clips_score_exits_2_naming_the_field(model: Path, tmp_path: Path) -> None:
    from sleepsound.cli import app

    wav = tmp_path / "clip.wav"
    sf.write(wav, np.zeros(16000, dtype=np.float32), 16000)
    _edit(model, _features(pool_factor=0))
    result = CliRunner().invoke(app, ["clips", "score", "--model", str(model), str(wav)])
    assert result.exit_code == 2 and "extra.clips.features.pool_factor" in result.output
