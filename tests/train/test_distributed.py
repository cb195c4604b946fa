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


def test_ray_train_two_workers_learns_and_returns_an_ordinary_head(tmp_path) -> None:
    from sleepsound.train.distributed import train_head_ray

    x, y = _task()
    vx, vy = _task(60, seed=1)
    cfg = TrainConfig(epochs=4, batch_size=16, lr=3e-3, min_lr=3e-4, classes=("a", "b", "c"))
    result = train_head_ray(x, y, cfg, head="mlp", val=(vx, vy), workers=2, storage_path=str(tmp_path))
    assert type(result.model).__name__ == "MeanPoolingHead" and not result.model.training
    assert result.model.meta["classes"] == ["a", "b", "c"] and result.model.meta["training"]["ray_workers"] == 2
    assert 1 <= len(result.history) <= 4 and result.total_steps == 4 * 6  # 96 samples each, batches of 16
    accuracy = float((predict_proba(result.model, vx).argmax(axis=1) == vy).mean())
    assert accuracy > 0.8  # chance is 1/3


def test_training_ray_workers_setting_trains_a_task_head_with_ray_train() -> None:
    import pandas as pd

    from sleepsound.core.config import Config
    from sleepsound.labels.targets import TARGETS
    from sleepsound.train.dataset import EmbeddedEpochs
    from sleepsound.train.fit import fit_target

    x, y = _task(96)
    epochs = pd.DataFrame({"stage3": [("Wake", "NREM", "REM")[i] for i in y], "offset_s": 0.0})
    cfg = Config.model_validate({"training": {"ray_workers": 2, "epochs": 2, "lr": 3e-3, "min_lr": 3e-4}})
    result, labels, keep = fit_target(cfg, TARGETS["stage3"], EmbeddedEpochs(x, epochs), x, None)
    assert result.model.meta["training"]["ray_workers"] == 2 and keep.all() and (labels == y).all()
