"""Data-parallel head training: equal disjoint shards per rank, and a real Ray Train run (2 workers, DDP on CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sleepsound.train.loop import TrainConfig, predict_proba, train_head

pytestmark = pytest.mark.usefixtures("ray_session")


def _task(n: int = 192, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three classes told apart by the mean of a few feature dimensions, with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 6, 16)).astype(np.float32)
    x[:, :, :3] += 2.0 * np.eye(3, dtype=np.float32)[y][:, None, :]
    return x.astype(np.float16), y


def test_ranks_take_equal_disjoint_shares_of_each_epoch() -> None:
    x, y = _task(10)
    seen: dict[int, list[int]] = {}

    def spy(rank: int):
        def wrap(model: torch.nn.Module) -> torch.nn.Module:
            class Recorder(torch.nn.Module):
                def __init__(self) -> None:
                    super().__init__()
                    self.inner = model

                def forward(self, xb, mb=None):
                    seen.setdefault(rank, []).append(len(xb))
                    return self.inner(xb, mb)

            return Recorder()

        return wrap

    cfg = TrainConfig(epochs=1, batch_size=2, lr=1e-3, min_lr=1e-4)
    for rank in (0, 1, 2):
        train_head(x, y, cfg, rank=rank, world_size=3, wrap=spy(rank))
    assert seen == {0: [2, 1], 1: [2, 1], 2: [2, 1]}  # 10 // 3 = 3 each, same step count
    with pytest.raises(ValueError, match="outside world_size"):
        train_head(x, y, cfg, rank=3, world_size=3)


def test_the_ray_workers_setting_trains_a_head_with_ray_train_that_learns_and_is_ordinary() -> None:
    """``training.ray_workers=2``: the task's head is trained by a real Ray Train run (2 workers, DDP
    on CPU) and comes back as the ordinary head one process trains. (One Ray Train run: each costs
    about 12 s of the suite.)"""
    import pandas as pd

    from sleepsound.core.config import Config
    from sleepsound.labels.targets import TARGETS
    from sleepsound.train.dataset import EmbeddedEpochs
    from sleepsound.train.fit import fit_target

    names = ("Wake", "NREM", "REM")
    x, y = _task()
    vx, vy = _task(60, seed=1)
    epochs = pd.DataFrame({"stage3": [names[i] for i in y], "offset_s": 0.0})
    val = EmbeddedEpochs(vx, pd.DataFrame({"stage3": [names[i] for i in vy], "offset_s": 0.0}))
    cfg = Config.model_validate(
        {"training": {"ray_workers": 2, "epochs": 4, "batch_size": 16, "lr": 3e-3, "min_lr": 3e-4, "head": "mlp"}}
    )
    result, labels, keep = fit_target(cfg, TARGETS["stage3"], EmbeddedEpochs(x, epochs), x, None, val=(val, vx, None))
    assert keep.all() and (labels == y).all()
    assert type(result.model).__name__ == "MeanPoolingHead" and not result.model.training
    assert result.model.meta["classes"] == list(names) and result.model.meta["training"]["ray_workers"] == 2
    assert 1 <= len(result.history) <= 4 and result.total_steps == 4 * 6  # 96 samples each, batches of 16
    accuracy = float((predict_proba(result.model, vx).argmax(axis=1) == vy).mean())
    assert accuracy > 0.8  # chance is 1/3
