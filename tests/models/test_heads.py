"""Heads: shapes, masking, the 90-s context builder, and the safe on-disk format."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest
import torch

from sleepsound.models.heads.artifacts import (
    HeadArtifactError,
    build_head,
    head_config,
    load_head,
    load_head_with_config,
    save_head,
)
from sleepsound.models.heads.attention import AttentionPoolingHead, build_context, context_indices
from sleepsound.models.heads.mlp import MeanPoolingHead


def _x(b: int = 4, t: int = 10, d: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(b, t, d)).astype(np.float32))


@pytest.mark.parametrize("cls", [AttentionPoolingHead, MeanPoolingHead])
def test_shapes_and_weights_sum_to_one(cls: type) -> None:
    torch.manual_seed(0)
    head = cls(32, n_classes=3).eval()
    logits, weights = head(_x())
    assert logits.shape == (4, 3) and weights.shape == (4, 10)
    assert torch.allclose(weights.sum(dim=1), torch.ones(4))
    half_logits, _ = head(_x().half())  # float16 caches go straight in
    assert half_logits.dtype == torch.float32


def test_attention_head_is_the_papers_layout() -> None:
    head = AttentionPoolingHead(768)
    linears = [m for m in head.classifier if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(768, 384), (384, 3)]
    assert any(isinstance(m, torch.nn.Dropout) for m in head.classifier)
    assert head.scorer[0].out_features == 384 and head.scorer[-1].out_features == 1
    mlp = MeanPoolingHead(384)
    assert [(m.in_features, m.out_features) for m in mlp.classifier if isinstance(m, torch.nn.Linear)] == [
        (384, 128),
        (128, 3),
    ]
    assert mlp.classifier[2].p == pytest.approx(0.3)


@pytest.mark.parametrize("cls", [AttentionPoolingHead, MeanPoolingHead])
def test_padded_frames_get_zero_weight_and_cannot_leak(cls: type) -> None:
    torch.manual_seed(0)
    head = cls(32).eval()
    x = _x()
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[0, 6:] = False
    mask[1, :3] = False
    mask[2, :] = False  # nothing real at all
    logits, weights = head(x, mask)
    assert torch.all(weights[~mask] == 0)
    assert torch.allclose(weights[[0, 1, 3]].sum(dim=1), torch.ones(3))
    assert torch.isfinite(logits).all() and torch.all(weights[2] == 0)
    garbage = x.clone()
    garbage[~mask] = 1e4  # whatever sits in padded frames must not change the answer
    logits2, weights2 = head(garbage, mask)
    assert torch.allclose(logits, logits2) and torch.allclose(weights, weights2)
    # Row 0 with its padding cut off gives the same logits as the masked row.
    short, _ = head(x[:1, :6])
    assert torch.allclose(short, logits[:1], atol=1e-6)


def test_bad_input_shapes_are_refused() -> None:
    head = AttentionPoolingHead(32)
    with pytest.raises(ValueError):
        head(_x(d=16))
    with pytest.raises(ValueError):
        head(_x(), torch.ones(4, 9, dtype=torch.bool))


def _night() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two interleaved recordings: A has epochs 0 1 2 4 (3 dropped), B has 7 8."""
    recs = np.array(["A", "B", "A", "A", "B", "A"])
    epochs = np.array([1, 8, 0, 4, 7, 2])
    emb = np.stack([np.full((2, 3), i + 1, dtype=np.float16) for i in range(len(recs))])  # row i holds i + 1
    return emb, recs, epochs


def test_build_context_edges_and_gaps() -> None:
    emb, recs, epochs = _night()
    out, mask = build_context(emb, recs, epochs, 3)
    assert out.shape == (6, 6, 3) and mask.shape == (6, 6) and out.dtype == np.float16
    row = {(r, int(e)): i for i, (r, e) in enumerate(zip(recs, epochs, strict=True))}

    def slots(rec: str, ep: int) -> list[float | None]:
        i = row[(rec, ep)]
        return [float(out[i, 2 * s, 0]) if mask[i, 2 * s] else None for s in range(3)]

    v = {k: float(i + 1) for k, i in row.items()}
    assert slots("A", 0) == [None, v[("A", 0)], v[("A", 1)]]  # the night's first epoch
    assert slots("A", 1) == [v[("A", 0)], v[("A", 1)], v[("A", 2)]]
    assert slots("A", 2) == [v[("A", 1)], v[("A", 2)], None]  # epoch 3 was dropped
    assert slots("A", 4) == [None, v[("A", 4)], None]  # after the gap, and the last
    assert slots("B", 7) == [None, v[("B", 7)], v[("B", 8)]]  # never borrows from A
    assert slots("B", 8) == [v[("B", 7)], v[("B", 8)], None]
    assert np.all(out[~mask] == 0)
    assert np.all(mask.reshape(6, 3, 2).all(axis=2) | ~mask.reshape(6, 3, 2).any(axis=2))  # whole epochs
    assert (context_indices(recs, epochs, 3)[:, 1] == np.arange(6)).all()


def test_build_context_one_and_refusals() -> None:
    emb, recs, epochs = _night()
    same, mask = build_context(emb, recs, epochs, 1)
    assert np.array_equal(same, emb) and mask.all()
    with pytest.raises(ValueError, match="odd"):
        build_context(emb, recs, epochs, 2)
    with pytest.raises(ValueError, match="epochs, not seconds"):
        build_context(emb, recs, epochs, 91)
    with pytest.raises(ValueError, match="duplicate"):
        build_context(emb, recs, np.array([1, 8, 0, 4, 7, 1]), 3)
    with pytest.raises(ValueError):
        build_context(emb, recs[:5], epochs[:5], 3)


def test_90s_head_runs_on_built_context() -> None:
    _emb, recs, epochs = _night()
    x, mask = build_context(np.random.default_rng(0).normal(size=(6, 4, 8)).astype(np.float16), recs, epochs, 3)
    logits, weights = AttentionPoolingHead(8).eval()(torch.from_numpy(x), torch.from_numpy(mask))
    assert logits.shape == (6, 3) and torch.all(weights[~torch.from_numpy(mask)] == 0)


@pytest.mark.parametrize("protocol", ["file", "memory"])
@pytest.mark.parametrize("kind", ["attention", "mlp"])
def test_save_load_round_trip(tmp_path, protocol: str, kind: str) -> None:
    fs = fsspec.filesystem(protocol)
    directory = str(tmp_path / "head") if protocol == "file" else f"/heads-{kind}/v1"
    torch.manual_seed(3)
    head = build_head(kind, dim=24, n_classes=3, dropout=0.2).eval()
    head.meta = {"classes": ["Wake", "NREM", "REM"], "context_epochs": 3, "training": {"lr": 5e-5}}
    save_head(head, fs, directory, extra={"run_id": "r1"})
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(directory, detail=False)) == ["config.json", "model.safetensors"]
    loaded, config = load_head_with_config(fs, directory)
    assert type(loaded) is type(head) and not loaded.training
    assert config["context_epochs"] == 3 and config["classes"] == ["Wake", "NREM", "REM"]
    assert config["training"] == {"lr": 5e-5} and config["extra"] == {"run_id": "r1"}
    assert loaded.meta["context_epochs"] == 3
    x, mask = _x(d=24), torch.ones(4, 10, dtype=torch.bool)
    mask[0, 5:] = False
    with torch.no_grad():
        a, wa = head(x, mask)
        b, wb = loaded(x, mask)
    assert torch.equal(a, b) and torch.equal(wa, wb)
    for name, tensor in head.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name])


def _tamper(tmp_path, change) -> str:
    fs = fsspec.filesystem("file")
    directory = str(tmp_path / "head")
    save_head(AttentionPoolingHead(8), fs, directory)
    path = f"{directory}/config.json"
    config = json.loads(fs.cat(path))
    change(config)
    fs.pipe(path, json.dumps(config).encode())
    return directory


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(head_class="os.system"), "unknown head class"),
        (lambda c: c.update(head_class="Module"), "unknown head class"),
        (lambda c: c["dims"].update(__class__="x"), "takes no arguments"),
        (lambda c: c["dims"].update(dim="8; rm -rf /"), "bad value"),
        (lambda c: c["dims"].update(dim=10**9), "outside"),
        (lambda c: c.update(classes=["Wake", "NREM"]), "classes"),
        (lambda c: c.update(format_version=99), "format"),
        (lambda c: c.update(context_epochs=2), "context_epochs"),
    ],
)
def test_tampered_config_is_refused(tmp_path, change, message: str) -> None:
    directory = _tamper(tmp_path, change)
    with pytest.raises(HeadArtifactError, match=message):
        load_head(fsspec.filesystem("file"), directory)


def test_weights_that_do_not_fit_are_refused(tmp_path) -> None:
    directory = _tamper(tmp_path, lambda c: c["dims"].update(dim=16))
    with pytest.raises(HeadArtifactError, match="do not fit"):
        load_head(None, directory)  # fs None: the directory is a URL/path
    assert head_config(None, directory)["dims"]["dim"] == 16


def test_unknown_kind_and_foreign_models_are_refused(tmp_path) -> None:
    with pytest.raises(HeadArtifactError, match="unknown head type"):
        build_head("transformer", dim=8)
    with pytest.raises(HeadArtifactError):
        save_head(torch.nn.Linear(2, 2), fsspec.filesystem("file"), str(tmp_path / "x"))


@pytest.mark.parametrize("kind", ["attention", "mlp"])
def test_layer_weighted_heads_learn_softmax_weights_and_round_trip(tmp_path, kind: str) -> None:
    """n_layers > 1: [B, T, L, D] in, layer weights start equal, sum to 1, and survive save/load."""
    from sleepsound.models.heads.layers import layer_weights

    torch.manual_seed(0)
    head = build_head(kind, dim=8, n_classes=3, n_layers=3).eval()
    assert layer_weights(head) == pytest.approx([1 / 3] * 3)
    assert layer_weights(build_head(kind, dim=8, n_classes=3)) is None
    assert "layer_mix.logits" not in build_head(kind, dim=8, n_classes=3).state_dict()  # old heads unchanged
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(4, 5, 3, 8)).astype(np.float32))
    logits, weights = head(x)
    assert logits.shape == (4, 3) and weights.shape == (4, 5)
    # Equal weights: the same as the single-layer head fed the plain mean of the layers.
    plain = build_head(kind, dim=8, n_classes=3).eval()
    plain.load_state_dict({k: v for k, v in head.state_dict().items() if not k.startswith("layer_mix")})
    assert torch.allclose(plain(x.mean(dim=2))[0], logits, atol=1e-5)
    with torch.no_grad():
        head.layer_mix.logits.copy_(torch.tensor([2.0, 0.0, -1.0]))
    fs = fsspec.filesystem("file")
    save_head(head, fs, str(tmp_path / "h"))
    loaded = load_head(fs, str(tmp_path / "h"))
    assert layer_weights(loaded) == pytest.approx(layer_weights(head)) and sum(layer_weights(loaded)) == pytest.approx(
        1.0
    )
    assert torch.equal(loaded(x)[0], head(x)[0])
    with pytest.raises(ValueError, match=r"n_layers=x\.shape"):
        plain(x)
    with pytest.raises(ValueError, match=r"backbone\.layers"):
        head(x[:, :, 0])
