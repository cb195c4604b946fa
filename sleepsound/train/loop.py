"""Train a head on cached embeddings: weighted cross-entropy, the paper's schedule, subject splits.

The paper (method.md) trains with weighted cross-entropy (weights = inverse class
frequency), AdamW-style optimisation at 5e-5 held constant for 6,000 steps, then decayed
linearly to 2.5e-6 by the end of five epochs. Its total step count is not stated (batch
size unknown), so here the constant part is a fraction of the total steps:

    constant_steps = round(constant_fraction * total_steps),
    total_steps    = epochs * ceil(n_train / batch_size).

How the paper's numbers map: its training side is ~82k epochs (80% of 103k) plus the
15-s-shift copies added wherever two consecutive epochs share a stage (most of the night),
about 150-160k samples. At batch size 32 that is ~4.9k steps per epoch and ~24k in five
epochs, so 6,000 constant steps is ~0.25 of training: the default ``constant_fraction``.
(At batch 16 it would be ~0.12, at 64 ~0.5.) Set ``constant_steps=6000`` to use the
paper's absolute number on data of the paper's size; it overrides the fraction.

Deterministic on CPU for a given seed: weights are initialised, batches shuffled and
dropout drawn from RNGs seeded by ``seed``, inside a forked RNG state so the caller's
global torch RNG is left as it was.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import nn

from sleepsound.labels.vocabulary import STAGES_3
from sleepsound.models.heads.artifacts import build_head

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training settings; the defaults are the paper's where it gives them."""

    lr: float = 5e-5
    min_lr: float = 2.5e-6
    constant_fraction: float = 0.25  # share of all steps at ``lr`` before the linear decay
    constant_steps: int | None = None  # absolute override (the paper: 6000)
    epochs: int = 5
    batch_size: int = 32
    weight_decay: float = 1e-2
    dropout: float | None = None  # None: the head's own default (attention 0.1, mlp 0.3)
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda", "cuda:1", or "auto"
    patience: int | None = 2  # epochs without val macro-F1 gain before stopping; None: never
    classes: tuple[str, ...] = STAGES_3

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        if not 0 < self.min_lr <= self.lr:
            raise ValueError(f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if not 0.0 <= self.constant_fraction <= 1.0:
            raise ValueError(f"constant_fraction must be in [0, 1], got {self.constant_fraction}")
        if self.constant_steps is not None and self.constant_steps < 0:
            raise ValueError("constant_steps must be >= 0")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.patience is not None and self.patience < 1:
            raise ValueError("patience must be >= 1 or None")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be >= 2 distinct names, got {self.classes}")

    @property
    def n_classes(self) -> int:
        return len(self.classes)


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    class_weights: np.ndarray | None = None
    total_steps: int = 0


def encode_labels(y: Iterable[Any], classes: Sequence[str] = STAGES_3) -> np.ndarray:
    """Class indices (int64) from indices or class names; anything else is an error."""
    arr = np.asarray(list(y) if not isinstance(y, np.ndarray) else y)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind in "iu":
        bad = (arr < 0) | (arr >= len(classes))
        if bad.any():
            raise ValueError(f"label indices outside 0..{len(classes) - 1}: {sorted(set(arr[bad].tolist()))[:5]}")
        return arr.astype(np.int64)
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in arr.tolist() if v not in lookup})
    if unknown:
        raise ValueError(f"labels not in {list(classes)}: {unknown[:5]}")
    return np.array([lookup[v] for v in arr.tolist()], dtype=np.int64)


def class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse class frequency, w_c = N / (K * n_c) over the K present classes (mean 1 on the
    training samples' classes, as scikit-learn's 'balanced'); classes absent from ``y`` get 0
    and a warning."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    if not present.any():
        raise ValueError("no training labels")
    weights = np.zeros(n_classes, dtype=np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    if not present.all():
        warnings.warn(
            f"classes {np.flatnonzero(~present).tolist()} have no training samples; "
            "their loss weight is 0 and the head cannot learn them",
            UserWarning,
            stacklevel=2,
        )
    return weights


def constant_steps_for(total: int, cfg: TrainConfig) -> int:
    """Steps held at ``cfg.lr`` before the decay starts."""
    if cfg.constant_steps is not None:
        return int(cfg.constant_steps)
    return int(math.floor(cfg.constant_fraction * total + 0.5))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning rate of (0-based) ``step`` of ``total``: ``lr`` for the constant steps, then
    linear from ``lr`` (at step ``constant``) to ``min_lr`` (at the last step, ``total - 1``)."""
    constant = constant_steps_for(total, cfg)
    last = total - 1
    if step < constant or last <= constant:
        return cfg.lr
    frac = min(1.0, (step - constant) / (last - constant))
    return cfg.lr + (cfg.min_lr - cfg.lr) * frac


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _batch(
    x: np.ndarray, mask: np.ndarray | None, idx: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    xb = torch.from_numpy(np.ascontiguousarray(x[idx], dtype=np.float32)).to(device)
    mb = None if mask is None else torch.from_numpy(np.ascontiguousarray(mask[idx], dtype=bool)).to(device)
    return xb, mb


def train_head(
    x: np.ndarray,
    y: Sequence[Any] | np.ndarray,
    cfg: TrainConfig | None = None,
    val: tuple[np.ndarray, Any] | tuple[np.ndarray, Any, np.ndarray | None] | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
    *,
    head: str = "attention",
    context: int = 1,
    mask: np.ndarray | None = None,
    rank: int = 0,
    world_size: int = 1,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> TrainResult:
    """Train a head on x [N, T, D] (float16 is fine; numpy or memmap) and labels y [N].

    x [N, T, L, D] (several backbone layers) builds the head with ``n_layers=L``: it learns
    a softmax weighting of the layers (see sleepsound.models.heads.layers) along with the rest.

    ``y`` holds class indices or names from ``cfg.classes``; ``mask`` [N, T] marks real
    frames (from ``build_context``); ``context`` is recorded with the model. ``val`` is
    (x, y) or (x, y, mask): when given, each epoch is scored by validation macro-F1, the
    best epoch's weights are kept and training stops after ``cfg.patience`` epochs
    without improvement. ``progress`` receives each epoch's history record.

    Data parallel (sleepsound.train.distributed): ``world_size`` processes call this with the same
    data and seed and their ``rank``; each takes an equal share of every epoch's shuffled
    order (so all take the same number of steps), ``wrap`` makes the model data-parallel
    (Ray Train's ``prepare_model``: DDP), and the class weights, schedule and validation are
    computed on the whole data alike everywhere, so early stopping agrees across ranks.
    """
    cfg = cfg or TrainConfig()
    x = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[2] < 2):
        raise ValueError(f"expected x [N, T, D] or [N, T, L >= 2, D], got shape {x.shape}")
    yi = encode_labels(y, cfg.classes)
    if len(yi) != len(x) or len(yi) == 0:
        raise ValueError(f"need as many labels as inputs (> 0): {len(x)} inputs, {len(yi)} labels")
    if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask shape {mask.shape} does not match x {x.shape[:2]}")
    val_x = val_y = val_mask = None
    if val is not None:
        val_x, val_y = val[0], encode_labels(val[1], cfg.classes)
        val_mask = val[2] if len(val) > 2 else None
    device = _device(cfg.device)
    weights = class_weights(yi, cfg.n_classes)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    share = len(yi) // world_size
    if share == 0:
        raise ValueError(f"{len(yi)} samples cannot be shared among {world_size} workers")
    steps_per_epoch = math.ceil(share / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    head_args: dict[str, Any] = {"dim": int(x.shape[-1]), "n_classes": cfg.n_classes}
    if x.ndim == 4:
        head_args["n_layers"] = int(x.shape[2])
    if cfg.dropout is not None:
        head_args["dropout"] = float(cfg.dropout)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_head(head, **head_args).to(device)
        trained = wrap(model) if wrap is not None else model  # the wrapper shares model's parameters
        generator = torch.Generator().manual_seed(cfg.seed)
        loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32, device=device))
        optimiser = torch.optim.AdamW(trained.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        yt = torch.from_numpy(yi).to(device)
        result = TrainResult(model, class_weights=weights, total_steps=total)
        best_score, best_state, since_best, step = -math.inf, None, 0, 0
        for epoch in range(cfg.epochs):
            started = time.perf_counter()
            trained.train()
            order = torch.randperm(len(yi), generator=generator).numpy()[rank::world_size][:share]
            running = 0.0
            for start in range(0, share, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                lr = lr_at(step, total, cfg)
                for group in optimiser.param_groups:
                    group["lr"] = lr
                xb, mb = _batch(x, mask, idx, device)
                logits, _ = trained(xb, mb)
                loss = loss_fn(logits, yt[idx])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss at step {step} (epoch {epoch})")
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                running += float(loss.detach()) * len(idx)
                step += 1
            record: dict[str, float] = {
                "epoch": epoch,
                "step": step,
                "loss": running / share,
                "lr": lr,
                "seconds": time.perf_counter() - started,
            }
            if val_x is not None:
                pred = predict_proba(model, val_x, mask=val_mask).argmax(axis=1)
                record["val_macro_f1"] = float(
                    f1_score(val_y, pred, labels=range(cfg.n_classes), average="macro", zero_division=0)
                )
                record["val_accuracy"] = float(accuracy_score(val_y, pred)) if len(val_y) else float("nan")
                if record["val_macro_f1"] > best_score:
                    best_score, result.best_epoch, since_best = record["val_macro_f1"], epoch, 0
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    since_best += 1
            result.history.append(record)
            log.info("epoch %d: %s", epoch, record)
            if progress is not None:
                progress(dict(record))
            if best_state is not None and cfg.patience is not None and since_best >= cfg.patience:
                log.info("early stop after epoch %d (best %d)", epoch, result.best_epoch)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        result.best_epoch = len(result.history) - 1
    model.meta = {
        "classes": list(cfg.classes),
        "context_epochs": int(context),
        "training": {
            **asdict(cfg),
            "classes": list(cfg.classes),
            "head": head,
            "train_samples": len(yi),
            "total_steps": total,
            "best_epoch": result.best_epoch,
            "class_weights": [float(w) for w in weights],
        },
    }
    model.eval()
    return result


def predict_proba(model: nn.Module, x: np.ndarray, batch_size: int = 256, mask: np.ndarray | None = None) -> np.ndarray:
    """Class probabilities [N, C] as float32 (the model is put in eval mode)."""
    return predict_with_weights(model, x, batch_size, mask)[0]


@torch.inference_mode()
def predict_with_weights(
    model: nn.Module, x: np.ndarray, batch_size: int = 256, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities [N, C] and the head's frame weights [N, T] (attention, or uniform
    pooling), both float32: the weights are what the report's attention view draws."""
    model.eval()
    device = next(model.parameters()).device
    n_classes = int(getattr(model, "dims", {}).get("n_classes", 3))
    if len(x) == 0:
        return np.zeros((0, n_classes), dtype=np.float32), np.zeros(
            (0, x.shape[1] if x.ndim > 1 else 0), dtype=np.float32
        )
    probs, weights = [], []
    for start in range(0, len(x), batch_size):
        idx = np.arange(start, min(start + batch_size, len(x)))
        xb, mb = _batch(x, mask, idx, device)
        logits, w = model(xb, mb)
        probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy().astype(np.float32))
        weights.append(w.float().cpu().numpy().astype(np.float32))
    return np.concatenate(probs), np.concatenate(weights)


def split_by_subject(
    subject_ids: Iterable[Any], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[str], list[str]]:
    """Deterministic subject-level split -> (train_subjects, test_subjects), sorted.

    ``subject_ids`` may repeat (one per epoch or recording). The test side holds
    round(test_fraction * n_subjects) subjects, at least 1 and at most n - 1 (the paper:
    38 of 191). The same ids and seed always give the same split, whatever their order.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    unique = sorted({str(s) for s in subject_ids})
    if len(unique) < 2:
        raise ValueError(f"a subject split needs at least 2 subjects, got {len(unique)}")
    n_test = min(len(unique) - 1, max(1, int(math.floor(len(unique) * test_fraction + 0.5))))
    order = np.random.default_rng(seed).permutation(len(unique))
    test = sorted(unique[i] for i in order[:n_test])
    train = sorted(set(unique) - set(test))
    return train, test
