"""Data-parallel head training with Ray Train, for when one device is not enough.

A head trains in minutes on one GPU, so this is for very large cohorts or many heads at
once: ``training.ray_workers`` > 1 runs ``train_head`` in that many Ray Train workers
(PyTorch DDP; one GPU each with ``training.ray_use_gpu``). The inputs go to Ray's object
store once and every worker reads the same arrays; each trains on an equal share of every
epoch (see ``train_head``'s ``rank``/``world_size``), gradients are averaged by DDP, and
rank 0 reports the trained weights as a safetensors checkpoint, which is loaded back here
into an ordinary head. Same seed, same schedule, same early stopping as one process.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from sleepsound.models.heads.artifacts import build_head
from sleepsound.train.loop import TrainConfig, TrainResult, train_head

WEIGHTS = "head.safetensors"
META = "head.json"


def _worker_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: train its share with DDP; rank 0 reports the weights."""
    import ray
    import ray.train
    import ray.train.torch
    from safetensors.torch import save_file

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    arrays = ray.get(config["arrays"])
    cfg = TrainConfig(**{**config["train_config"], "device": str(ray.train.torch.get_device())})
    val = None
    if arrays["val_x"] is not None:
        val = (arrays["val_x"], arrays["val_y"], arrays["val_mask"])
    result = train_head(
        arrays["x"],
        arrays["y"],
        cfg,
        val,
        head=config["head"],
        context=config["context"],
        mask=arrays["mask"],
        rank=rank,
        world_size=world,
        wrap=lambda m: ray.train.torch.prepare_model(m, move_to_device=False),
    )
    metrics = {"best_epoch": result.best_epoch, "epochs_run": len(result.history)}
    if rank == 0:
        with tempfile.TemporaryDirectory() as folder:
            state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
            save_file(state, str(Path(folder) / WEIGHTS))
            (Path(folder) / META).write_text(
                json.dumps(
                    {
                        "dims": result.model.dims,
                        "meta": result.model.meta,
                        "history": result.history,
                        "best_epoch": result.best_epoch,
                        "total_steps": result.total_steps,
                        "class_weights": [float(w) for w in result.class_weights],
                    }
                )
            )
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
    else:
        ray.train.report(metrics)


def train_head_ray(
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    *,
    head: str = "attention",
    context: int = 1,
    mask: np.ndarray | None = None,
    val: tuple[Any, ...] | None = None,
    workers: int = 2,
    use_gpu: bool = False,
    storage_path: str | None = None,
) -> TrainResult:
    """``train_head`` across ``workers`` Ray Train workers (an existing Ray session is used)."""
    from dataclasses import asdict

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from safetensors.torch import load_file

    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    val_x, val_y, val_mask = (list(val) + [None] * 3)[:3] if val is not None else (None, None, None)
    arrays = ray.put(
        {"x": np.asarray(x), "y": np.asarray(y), "mask": mask, "val_x": val_x, "val_y": val_y, "val_mask": val_mask}
    )
    train_config = {k: v for k, v in asdict(cfg).items() if k != "device"}
    train_config["classes"] = list(cfg.classes)
    with tempfile.TemporaryDirectory(prefix="sleepsound-ray-train-") as scratch:
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"arrays": arrays, "train_config": train_config, "head": head, "context": context},
            scaling_config=ScalingConfig(
                num_workers=workers, use_gpu=use_gpu, resources_per_worker={"CPU": 0.5} if not use_gpu else None
            ),
            run_config=RunConfig(name="sleepsound-head", storage_path=storage_path or scratch),
        )
        outcome = trainer.fit()
        if outcome.checkpoint is None:
            raise RuntimeError(f"Ray Train finished without the trained weights: {outcome.error}")
        with outcome.checkpoint.as_directory() as folder:
            state = load_file(str(Path(folder) / WEIGHTS))
            saved = json.loads((Path(folder) / META).read_text())
    model = build_head(head, **saved["dims"])
    model.load_state_dict(state)
    model.meta = saved["meta"]
    model.meta["training"]["ray_workers"] = workers
    model.eval()
    return TrainResult(
        model,
        history=saved["history"],
        best_epoch=saved["best_epoch"],
        class_weights=np.asarray(saved["class_weights"]),
        total_steps=saved["total_steps"],
    )
