"""Training: class weights, the schedule, learning a synthetic problem, determinism, subject splits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from sleepsound.heads.attention import build_context
from sleepsound.labels import STAGES_3
from sleepsound.training import (
    TrainConfig,
    class_weights,
    constant_steps_for,
    encode_labels,
    lr_at,
    predict_proba,
    split_by_subject,
    train_head,
)

FAST = dict(lr=3e-3, min_lr=3e-4, epochs=6, batch_size=32, patience=None)


def synthetic(n: int = 500, t: int = 12, d: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent Gaussian frames, imbalance 75/15/10 (like NREM/Wake/REM)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.15, 0.75, 0.10])  # Wake, NREM, REM
    means = np.random.default_rng(99).normal(size=(3, d))
    x = rng.normal(size=(n, t, d)) + 0.5 * means[y][:, None, :]
    return x.astype(np.float16), y


def test_class_weights_are_inverse_frequency() -> None:
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights(y, 3)
    assert w == pytest.approx([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)])
    assert w * np.bincount(y) == pytest.approx(np.full(3, 10 / 3))  # each class weighs the same in all
    with pytest.warns(UserWarning, match=r"\[2\]"):
        w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w == pytest.approx([4 / (2 * 3), 4 / (2 * 1), 0.0])


def test_schedule_key_steps() -> None:
    cfg = TrainConfig()  # 5e-5 -> 2.5e-6, constant for a quarter of the steps
    total = 100
    assert constant_steps_for(total, cfg) == 25
    assert lr_at(0, total, cfg) == 5e-5
    assert lr_at(24, total, cfg) == 5e-5
    assert lr_at(25, total, cfg) == 5e-5  # the decay starts from lr ...
    assert lr_at(26, total, cfg) < 5e-5
    assert lr_at(62, total, cfg) == pytest.approx((5e-5 + 2.5e-6) / 2)  # ... halfway at (25 + 99) / 2
    assert lr_at(99, total, cfg) == pytest.approx(2.5e-6)  # ... and reaches min_lr at the last step
    paper = TrainConfig(constant_steps=6000)
    assert lr_at(5999, 24_000, paper) == 5e-5 and lr_at(6000, 24_000, paper) == 5e-5
    assert lr_at(23_999, 24_000, paper) == pytest.approx(2.5e-6)
    lrs = [lr_at(s, total, cfg) for s in range(total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False)) and min(lrs) == pytest.approx(2.5e-6)
    assert lr_at(0, 1, cfg) == 5e-5  # one step: nothing to decay


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        TrainConfig(min_lr=1e-3, lr=1e-4)
    with pytest.raises(ValueError):
        TrainConfig(constant_fraction=1.5)


def test_learns_and_beats_the_majority_baseline() -> None:
    x, y = synthetic(700)
    result = train_head(x[:500], y[:500], TrainConfig(**FAST))
    pred = predict_proba(result.model, x[500:]).argmax(axis=1)
    macro = f1_score(y[500:], pred, average="macro")
    baseline = f1_score(y[500:], np.full(200, np.bincount(y[:500]).argmax()), average="macro", labels=[0, 1, 2])
    assert baseline < 0.3
    assert macro > 0.8 and macro > baseline + 0.5
    assert result.class_weights == pytest.approx(class_weights(y[:500], 3))
    assert result.history[-1]["lr"] == pytest.approx(3e-4)  # the schedule ran to its end
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.model.meta["training"]["class_weights"] == pytest.approx(list(result.class_weights))


def test_mlp_head_and_90s_context_with_masks_train() -> None:
    x, y = synthetic(240, t=6, d=16)
    recs, epochs = np.repeat(["a", "b"], 120), np.tile(np.arange(120), 2)
    keep = np.ones(240, dtype=bool)
    keep[[5, 130]] = False  # dropped epochs leave gaps
    xc, mask = build_context(x[keep], recs[keep], epochs[keep], 3)
    result = train_head(xc, y[keep], TrainConfig(**{**FAST, "epochs": 2}), context=3, mask=mask)
    assert result.model.meta["context_epochs"] == 3
    proba = predict_proba(result.model, xc, batch_size=50, mask=mask)
    assert proba.dtype == np.float32 and proba.shape == (238, 3)
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    mlp = train_head(x, [STAGES_3[i] for i in y], TrainConfig(**{**FAST, "epochs": 2}), head="mlp")
    assert type(mlp.model).__name__ == "MeanPoolingHead"
    assert predict_proba(mlp.model, x[:0]).shape == (0, 3)


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    x, y = synthetic(200)
    cfg = TrainConfig(**{**FAST, "epochs": 2})
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = train_head(x, y, cfg).model.state_dict()
    assert torch.equal(torch.rand(1), before)  # training forks the RNG, the caller's is left alone
    b = train_head(x, y, cfg).model.state_dict()
    c = train_head(x, y, TrainConfig(**{**FAST, "epochs": 2, "seed": 1})).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_early_stopping_keeps_the_best_epoch() -> None:
    x, y = synthetic(360)
    # Shuffled validation labels: nothing to learn there, so the score peaks early and stalls.
    y_val = np.random.default_rng(5).permutation(y[240:])
    seen: list[dict] = []
    result = train_head(x[:240], y[:240], TrainConfig(**{**FAST, "epochs": 8, "patience": 1}),
                        val=(x[240:], y_val), progress=seen.append)
    assert len(seen) == len(result.history) < 8  # stopped before the last epoch
    scores = [h["val_macro_f1"] for h in result.history]
    assert result.best_epoch == int(np.argmax(scores)) < len(scores) - 1
    assert len(scores) - 1 - result.best_epoch == 1  # exactly `patience` epochs past the best
    pred = predict_proba(result.model, x[240:]).argmax(axis=1)
    # The weights kept are the best epoch's, not the last one's.
    assert f1_score(y_val, pred, average="macro", labels=[0, 1, 2], zero_division=0) == \
        pytest.approx(scores[result.best_epoch])
    assert scores[result.best_epoch] != pytest.approx(scores[-1])
    no_stop = train_head(x[:240], y[:240], TrainConfig(**{**FAST, "epochs": 3}), val=(x[240:], y_val))
    assert len(no_stop.history) == 3  # patience None: every epoch runs


def test_labels_are_checked() -> None:
    assert encode_labels(["REM", "Wake"]).tolist() == [2, 0]
    with pytest.raises(ValueError, match="N2"):
        encode_labels(["Wake", "N2"])
    with pytest.raises(ValueError):
        encode_labels(np.array([0, 3]))
    with pytest.raises(ValueError):
        train_head(np.zeros((3, 2, 4), np.float16), [0, 1], TrainConfig())


def test_split_by_subject_is_deterministic_and_never_leaks() -> None:
    subjects = [f"s{i:03d}" for i in range(191)]
    per_epoch = np.repeat(subjects, 5)
    train, test = split_by_subject(per_epoch, 0.2, seed=7)
    assert len(test) == 38 and len(train) == 153  # the paper's split sizes
    assert not set(train) & set(test) and set(train) | set(test) == set(subjects)
    assert split_by_subject(per_epoch[::-1], 0.2, seed=7) == (train, test)  # order does not matter
    assert split_by_subject(per_epoch, 0.2, seed=8) != (train, test)
    # Epoch-level check: no subject's epochs on both sides.
    side = {s: "test" if s in test else "train" for s in subjects}
    assert len({(s, side[s]) for s in per_epoch}) == len(subjects)
    for fraction in (0.01, 0.99):
        tr, te = split_by_subject(["a", "b", "b"], fraction)
        assert len(tr) == 1 and len(te) == 1
    with pytest.raises(ValueError):
        split_by_subject(["only"], 0.2)
