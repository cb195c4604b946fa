"""Offline, a hub id backbone is refused when named unless its config and its safetensors weights are
both in the local Hugging Face cache: a cached config alone passed and failed later, in transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sleepsound.models.backbones.pretrained import BackboneLoadError, hub_id_unavailable, load_backbone

REPO = "openai/whisper-tiny"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline hub whose cache (in tmp_path, laid out as huggingface_hub writes it) holds REPO's
    config.json only; tests add files to the returned snapshot folder. huggingface_hub reads the
    settings into ``constants`` at import, so those are patched along with the environment."""
    import huggingface_hub.constants

    cache = tmp_path / "hf" / "hub"
    repo = cache / "models--openai--whisper-tiny"
    folder = repo / "snapshots" / REVISION
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return folder


def test_a_cached_config_without_weights_is_refused_before_transformers(snapshot: Path) -> None:
    problem = hub_id_unavailable(REPO)
    assert problem is not None and "\n" not in problem
    assert "whose config is in the local cache" in problem and "but not its weights (no model.safetensors" in problem
    assert "offline" in problem
    with pytest.raises(BackboneLoadError, match="but not its weights"):
        load_backbone(REPO)


def test_pickled_weights_do_not_count(snapshot: Path) -> None:
    (snapshot / "pytorch_model.bin").write_bytes(b"not opened")
    assert "pytorch_model.bin, a pickle, does not count" in (hub_id_unavailable(REPO) or "")


def test_cached_safetensors_pass(snapshot: Path) -> None:
    (snapshot / "model.safetensors").write_bytes(b"{}")  # only its presence is checked here
    assert hub_id_unavailable(REPO) is None


def test_a_sharded_checkpoint_needs_every_shard_its_index_lists(snapshot: Path) -> None:
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {"metadata": {}, "weight_map": {"encoder.a": shards[0], "encoder.b": shards[1], "encoder.c": shards[1]}}
    (snapshot / "model.safetensors.index.json").write_text(json.dumps(index))
    (snapshot / shards[0]).write_bytes(b"{}")
    problem = hub_id_unavailable(REPO) or ""
    assert f"1 of the 2 shards its model.safetensors.index.json lists, first {shards[1]}" in problem
    (snapshot / shards[1]).write_bytes(b"{}")
    assert hub_id_unavailable(REPO) is None


@pytest.mark.parametrize("index", ["not json", '{"weight_map": {}}', '{"weight_map": {"a": 3}}', "[]"])
def test_an_index_that_names_no_shards_is_refused(snapshot: Path, index: str) -> None:
    (snapshot / "model.safetensors.index.json").write_text(index)
    assert "model.safetensors.index.json" in (hub_id_unavailable(REPO) or "")


def test_online_nothing_is_checked(snapshot: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert hub_id_unavailable(REPO) is None  # the weights download on first use
