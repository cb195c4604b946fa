"""A head's files are checked for size and sanity before anything large is read or allocated:
the parameter count a config asks for, the safetensors header against it, and finite weights."""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest
import torch
from safetensors.torch import save as save_tensors

from sleepsound.models.heads import artifacts
from sleepsound.models.heads.artifacts import HeadArtifactError, build_head, load_head, save_head


def _saved(tmp_path: Path, kind: str = "frames", **dims: Any) -> Path:
    directory = tmp_path / "head"
    save_head(build_head(kind, **{"dim": 8, "n_classes": 3, **dims}), fsspec.filesystem("file"), str(directory))
    return directory


def _edit_config(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    config = json.loads((directory / "config.json").read_text())
    change(config)
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "kind, dims",
    [
        ("frames", {"dim": 16384, "hidden": 16384, "kernel_size": 63}),  # 17 G parameters, 68 GB
        ("mlp", {"dim": 16384, "hidden": 16384}),  # 268 M parameters, 1 GB
    ],
)
def test_a_small_config_asking_for_a_huge_head_is_refused_before_anything_is_built(
    tmp_path: Path, kind: str, dims: dict[str, int]
) -> None:
    """Issue: a 4-KB config with in-bounds dimensions made the loader allocate up to 68 GB."""
    directory = _saved(tmp_path, kind)
    _edit_config(directory, lambda c: c["dims"].update(dims))
    tracemalloc.start()
    try:
        with pytest.raises(HeadArtifactError, match=r"config\.json: .* parameters; a head may hold at most 50,000,000"):
            load_head(None, str(directory))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20


def test_save_refuses_a_head_it_could_not_load_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifacts, "MAX_HEAD_PARAMETERS", 100)
    with pytest.raises(HeadArtifactError, match="at most 100"):
        save_head(build_head("mlp", dim=8, n_classes=3), fsspec.filesystem("file"), str(tmp_path / "h"))
    assert not (tmp_path / "h").exists()


def test_weights_that_disagree_with_the_config_are_named_from_the_header(tmp_path: Path) -> None:
    directory = _saved(tmp_path, "mlp", hidden=16)
    _edit_config(directory, lambda c: c["dims"].update(hidden=32))
    with pytest.raises(
        HeadArtifactError, match=r"model\.safetensors: weights do not fit .*is \(16,\), the config says \(32,\)"
    ):
        load_head(None, str(directory))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused(tmp_path: Path, bad: float) -> None:
    """Issue: NaN weights loaded, and the model answered a label with null probabilities."""
    head = build_head("mlp", dim=8, n_classes=3)
    with torch.no_grad():
        head.classifier[3].bias[1] = bad
    save_head(head, fsspec.filesystem("file"), str(tmp_path / "h"))
    with pytest.raises(HeadArtifactError, match=r"model\.safetensors: tensor classifier\.3\.bias holds NaN/Inf"):
        load_head(None, str(tmp_path / "h"))


def _rewrite_weights(directory: Path, header: dict[str, Any], body: bytes, length: int | None = None) -> None:
    text = json.dumps(header).encode()
    (directory / "model.safetensors").write_bytes(
        struct.pack("<Q", len(text) if length is None else length) + text + body
    )


def _parts(directory: Path) -> tuple[dict[str, Any], bytes]:
    raw = (directory / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def test_a_header_claiming_absurd_lengths_is_refused(tmp_path: Path) -> None:
    directory = _saved(tmp_path, "mlp")
    header, body = _parts(directory)
    _rewrite_weights(directory, header, body, length=2**60)
    with pytest.raises(HeadArtifactError, match=r"model\.safetensors: its header claims"):
        load_head(None, str(directory))
    _rewrite_weights(directory, {**header, "__metadata__": {"pad": "a" * (2 << 20)}}, body)  # 2 MB of header
    with pytest.raises(HeadArtifactError, match="its header claims"):
        load_head(None, str(directory))


def test_a_padded_weights_file_is_refused_without_being_read(tmp_path: Path) -> None:
    """Issue: a safetensors file padded to 1.5 GB was read whole before its header was checked."""
    directory = _saved(tmp_path, "mlp")
    with open(directory / "model.safetensors", "r+b") as handle:
        handle.truncate(512 << 20)  # sparse: no disk used
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(HeadArtifactError, match=r"model\.safetensors holds 536,870,912 bytes"):
            load_head(None, str(directory))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20 and time.perf_counter() - started < 5


def test_a_truncated_weights_file_is_refused(tmp_path: Path) -> None:
    directory = _saved(tmp_path, "mlp")
    raw = (directory / "model.safetensors").read_bytes()
    (directory / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(HeadArtifactError, match="account for"):
        load_head(None, str(directory))


def test_an_integer_tensor_is_refused(tmp_path: Path) -> None:
    directory = _saved(tmp_path, "mlp")
    state = {k: v.to(torch.int32) for k, v in load_head(None, str(directory)).state_dict().items()}
    (directory / "model.safetensors").write_bytes(save_tensors(state))
    with pytest.raises(HeadArtifactError, match="not a float type"):
        load_head(None, str(directory))


def test_an_oversized_config_is_refused_unread(tmp_path: Path) -> None:
    directory = _saved(tmp_path, "mlp")
    _edit_config(directory, lambda c: c["extra"].update(pad="a" * (17 << 20)))
    with pytest.raises(HeadArtifactError, match=r"config\.json is larger than 16 MiB"):
        load_head(None, str(directory))


@pytest.mark.parametrize("kind", ["attention", "mlp", "soundsleepnet", "frames"])
@pytest.mark.parametrize("protocol", ["file", "memory"])
def test_every_head_class_still_round_trips(tmp_path: Path, kind: str, protocol: str) -> None:
    """The header check is computed from a meta-device build: it must agree with every real head."""
    fs = fsspec.filesystem(protocol)
    directory = str(tmp_path / "h") if protocol == "file" else f"/limits-{kind}/v1"
    torch.manual_seed(0)
    head = build_head(kind, dim=8, n_classes=3, n_layers=2).eval()
    save_head(head, fs, directory)
    loaded = load_head(fs, directory)
    for name, tensor in head.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])
