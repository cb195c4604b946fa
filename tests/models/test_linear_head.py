"""The linear head on pooled statistics (``heads.linear``): its pooling is every layer's mean and spread
over the real frames only, its fitted weights reproduce scikit-learn's logistic regression exactly, and
it survives the safetensors round trip the model store and clip models use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from sleepsound.models.heads.artifacts import load_head, save_head
from sleepsound.models.heads.linear import StatsLinearHead, fit_stats_linear
from sleepsound.train.loop import predict_proba


def _clips(n: int, n_classes: int, layers: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips whose class shifts the mean of a few dimensions; the last frames of some are padding."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % n_classes
    shape = (n, 6, 8) if layers is None else (n, 6, layers, 8)
    x = rng.normal(0, 1, shape).astype(np.float32)
    x[..., :3] += y.reshape(-1, *([1] * (x.ndim - 1))) * 0.8
    mask = np.ones((n, 6), dtype=bool)
    mask[::3, 4:] = False
    x[~mask] = 1e3  # padding that would wreck the statistics if it were counted
    return x, y, mask


def test_pooling_is_each_layers_mean_and_spread_over_real_frames_only() -> None:
    x, _, mask = _clips(9, 2, layers=3)
    head = StatsLinearHead(dim=8, n_classes=2, n_layers=3)
    pooled, weights = head.pooled(torch.from_numpy(x), torch.from_numpy(mask))
    for i in range(len(x)):
        real = x[i][mask[i]]  # [t, L, D]
        want = np.concatenate([real.mean(axis=0).ravel(), real.std(axis=0).ravel()])
        np.testing.assert_allclose(pooled[i].numpy(), want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(weights[i].numpy(), mask[i] / mask[i].sum())
    single, _ = StatsLinearHead(dim=8, n_classes=2).pooled(torch.from_numpy(x[:, :, 0]), torch.from_numpy(mask))
    np.testing.assert_allclose(single[0, :8].numpy(), x[0][mask[0]][:, 0].mean(axis=0), rtol=1e-5)


def _sklearn_proba(x: np.ndarray, y: np.ndarray, mask: np.ndarray, c: float) -> np.ndarray:
    """What the head must reproduce: scikit-learn on the same standardised statistics."""
    head = StatsLinearHead(dim=x.shape[-1], n_classes=2, n_layers=1 if x.ndim == 3 else x.shape[2])
    features = head.pooled(torch.from_numpy(x), torch.from_numpy(mask))[0].numpy()
    center, scale = features.mean(axis=0), features.std(axis=0)
    model = LogisticRegression(C=c, max_iter=5000).fit((features - center) / scale, y)
    return model.predict_proba((features - center) / scale)


def test_two_and_three_classes_reproduce_logistic_regression_and_survive_the_round_trip(tmp_path: Path) -> None:
    for n_classes, layers in ((2, 4), (3, None)):
        x, y, mask = _clips(60, n_classes, layers, seed=n_classes)
        head = fit_stats_linear(x, y, mask, n_classes, c=0.1)
        proba = predict_proba(head, x, mask=mask)
        assert (proba.argmax(axis=1) == y).mean() >= 0.9
        if n_classes == 2:
            np.testing.assert_allclose(proba, _sklearn_proba(x, y, mask, 0.1), atol=1e-4)
        names = [f"class{i}" for i in range(n_classes)]
        save_head(head, None, str(tmp_path / str(n_classes)), classes=names)
        assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in (tmp_path / str(n_classes)).iterdir())
        again = load_head(None, str(tmp_path / str(n_classes)))
        assert isinstance(again, StatsLinearHead)
        np.testing.assert_allclose(predict_proba(again, x, mask=mask), proba, atol=1e-6)


def test_a_class_with_no_training_clip_is_never_predicted_and_a_zero_scale_stays_finite() -> None:
    x, y, mask = _clips(40, 2, layers=None)
    head = fit_stats_linear(x, y, mask, n_classes=3, c=0.1)  # class 2 was never seen
    proba = predict_proba(head, x, mask=mask)
    assert proba[:, 2].max() < 1e-6 and set(proba.argmax(axis=1)) <= {0, 1}
    with torch.no_grad():
        head.scale.zero_()  # a tampered or degenerate file: no division by zero
    assert np.isfinite(predict_proba(head, x, mask=mask)).all()
