"""The per-second snoring head: frame targets from the scored snore events, training and prediction.

The cache holds every epoch's frame embeddings (``backbone.pool_seconds``, 0.5 s: 60 frames per
30-s epoch). A frame is snoring when the night's snore events cover most of it
(``labels.events.snore_frames``); the events come from the night's own annotations (RML or
events CSV), read again here, so nothing in the cache changes and old caches serve as they are.
``models.heads.frames.FrameHead`` reads one epoch's frames at a time (its context is a few
neighbouring frames inside the epoch), so the bedside service, which embeds epoch by epoch,
scores exactly as batch prediction does. Training is weighted cross-entropy over frames with
AdamW; with validation subjects the epoch of best snoring F1 is kept.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score
from torch import nn

from sleepsound.core.config import Config
from sleepsound.core.progress import Progress, quiet
from sleepsound.core.records import ManifestRow
from sleepsound.labels.events import snore_frames
from sleepsound.models.heads.frames import FrameHead
from sleepsound.train.clip_epochs import ClipFrames
from sleepsound.train.dataset import EmbeddedEpochs

log = logging.getLogger(__name__)

# The head's size and schedule: small on purpose (a few thousand weights on tiny.en's 384-d frames
# after the conv); measured in the README's per-second snoring section.
HIDDEN = 32
KERNEL = 5  # frames: +-1 s of context at 0.5-s frames
LR = 3e-3
EPOCHS = 12
BATCH = 16  # epochs (of 60 frames) per step
CUT = 0.5  # P(snoring) above which a frame is called snoring


@dataclass
class FrameResult:
    model: FrameHead
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1


def frame_labels(data: EmbeddedEpochs, rows: dict[str, ManifestRow], epoch_seconds: float) -> np.ndarray:
    """[windows, frames] int8 targets of ``data``'s rows: 1 snoring, 0 not, -1 unknown (a night without
    an events source, a row of a recording not in ``rows``, or a night whose annotation files changed
    or went since validation: read again here, after embedding, they are never taken unvalidated, and
    one such night must not fail the run; the next run validates it again)."""
    from sleepsound.embed.epochs import night_labels  # the annotation readers the embed stage uses
    from sleepsound.ingest.versions import SourceChanged

    n, n_frames = len(data.features), int(data.features.shape[1]) if len(data.features) else 0
    out = np.full((n, n_frames), -1, dtype=np.int8)
    if not n:
        return out
    rec = data.epochs["recording_id"].astype(str).to_numpy()
    offsets = data.epochs["offset_s"].to_numpy(float) if "offset_s" in data.epochs else np.zeros(n)
    starts = data.epochs["epoch_index"].to_numpy(float) * epoch_seconds + offsets
    for recording in np.unique(rec):
        row = rows.get(str(recording))
        if row is None or row.get("label_source") == "none":
            continue
        try:
            events = night_labels(row, int(row["n_epochs"])).events
        except SourceChanged as exc:  # no recording id in the log (a patient id): the code and the count
            log.warning(
                "a night's annotation files changed or went since validation (%s): its snoring frames are "
                "left unknown; the next run validates it again",
                exc.code,
            )
            continue
        here = np.flatnonzero(rec == recording)
        got = snore_frames(events, starts[here], epoch_seconds, n_frames)
        if got is not None:
            out[here] = got.astype(np.int8)
    return out


def _weights(y: np.ndarray) -> torch.Tensor:
    """Inverse class frequency over the labelled frames, square-rooted: snoring is rare, but a
    fully balanced loss calls every breath-like sound snoring."""
    counts = np.bincount(y[y >= 0].astype(np.int64), minlength=2).astype(np.float64)
    w = np.where(counts > 0, np.sqrt(counts.sum() / (2 * np.maximum(counts, 1))), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def train_frame_head(
    x: np.ndarray,
    y: np.ndarray,
    seed: int = 0,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    progress: Progress = quiet,
    epochs: int = EPOCHS,
) -> FrameResult:
    """A FrameHead on windows ``x`` [N, T, D] (or [N, T, L, D]) with frame targets ``y`` [N, T] (-1 ignored)."""
    keep = (y >= 0).any(axis=1)
    x, y = x[keep], y[keep]
    labelled = y[y >= 0]
    if len(set(labelled.tolist())) < 2:
        raise ValueError(
            f"per-frame snoring needs snoring and other frames; the training frames hold {len(labelled)} of one kind"
        )
    n_layers = int(x.shape[2]) if x.ndim == 4 else 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FrameHead(int(x.shape[-1]), n_classes=2, hidden=HIDDEN, kernel_size=KERNEL, n_layers=n_layers)
        opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-2)
        loss_fn = nn.CrossEntropyLoss(weight=_weights(y), ignore_index=-1)
        order_rng = np.random.default_rng(seed)
        result = FrameResult(model)
        best_f1, best_state = -1.0, None
        yt = torch.from_numpy(y.astype(np.int64))
        for epoch in range(epochs):
            model.train()
            total = 0.0
            perm = order_rng.permutation(len(x))
            for start in range(0, len(x), BATCH):
                idx = perm[start : start + BATCH]
                logits = model(torch.from_numpy(np.asarray(x[idx], dtype=np.float32)))
                loss = loss_fn(logits.reshape(-1, 2), yt[idx].reshape(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            record: dict[str, float] = {"epoch": float(epoch), "train_loss": total / len(x)}
            if val is not None and (val[1] >= 0).any():
                f1 = frame_f1(val[1], frame_probs(model, val[0]))
                record["val_snore_f1"] = f1
                if f1 > best_f1:
                    best_f1, best_state, result.best_epoch = f1, copy.deepcopy(model.state_dict()), epoch
            result.history.append(record)
            progress("train snore", epoch + 1, epochs, "epochs")
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            result.best_epoch = epochs - 1
    model.eval()
    return result


@torch.inference_mode()
def frame_probs(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """P(snoring) of every frame, [N, T] float32 (the model is put in eval mode)."""
    model.eval()
    if len(x) == 0:
        return np.zeros((0, x.shape[1] if x.ndim > 1 else 0), dtype=np.float32)
    out = []
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(np.asarray(x[start : start + batch_size], dtype=np.float32))
        out.append(torch.softmax(model(xb).float(), dim=-1)[..., 1].numpy().astype(np.float32))
    return np.concatenate(out)


def frame_f1(y: np.ndarray, probs: np.ndarray, cut: float = CUT) -> float:
    """Snoring F1 over the labelled frames (targets -1 left out); 0 when nothing is snoring or called so."""
    known = y >= 0
    return float(f1_score(y[known], probs[known] > cut, zero_division=0.0))


def frame_metrics(y: np.ndarray, probs: np.ndarray, frame_s: float, cut: float = CUT) -> dict[str, Any]:
    """Per-frame snoring figures: F1, precision, recall, counts, and snoring seconds scored vs called."""
    from sklearn.metrics import precision_recall_fscore_support

    known = y >= 0
    t, p = y[known].astype(bool), probs[known] > cut
    precision, recall, f1, _ = precision_recall_fscore_support(t, p, average="binary", zero_division=0.0)
    return {
        "n_frames": int(known.sum()),
        "frame_seconds": float(frame_s),
        "snore_f1": float(f1),
        "snore_precision": float(precision),
        "snore_recall": float(recall),
        "snore_seconds_true": float(t.sum() * frame_s),
        "snore_seconds_pred": float(p.sum() * frame_s),
    }


def fit_frames(
    cfg: Config,
    data: EmbeddedEpochs,
    rows: dict[str, ManifestRow],
    val: EmbeddedEpochs | None = None,
    progress: Progress = quiet,
    extra: ClipFrames | Callable[[], ClipFrames | None] | None = None,
) -> tuple[FrameResult, np.ndarray, ClipFrames | None]:
    """The snoring head on ``data``'s epochs (shifted windows left out) and ``extra`` clip epochs
    (``train.clip_epochs``: training side only; a callable is asked only once the nights can train a
    head, so a root without scored snoring makes none) -> (result, the nights' frame targets used,
    the clip epochs added)."""
    epochs_only = ~data.is_shifted
    part = EmbeddedEpochs(data.features[epochs_only], data.epochs[epochs_only].reset_index(drop=True))
    y = frame_labels(part, rows, cfg.preprocess.epoch_seconds)
    x_all, y_all = part.features, y
    known = y[y >= 0]
    if len(np.unique(known)) < 2:  # clips alone never make the head: its figures are the nights' frames
        raise ValueError(
            "per-frame snoring needs snoring and other frames; "
            f"the training nights' frames hold {len(known)} of one kind"
        )
    if callable(extra):
        extra = extra()
    if extra is not None and len(extra.features):
        if extra.features.shape[1:] != part.features.shape[1:]:
            raise ValueError(
                f"clip epochs have frames {list(extra.features.shape[1:])}, the nights {list(part.features.shape[1:])}"
            )
        x_all = np.concatenate([part.features, extra.features])
        y_all = np.concatenate([y, extra.labels])
    val_args = None
    if val is not None and len(val.features):
        val_args = (val.features, frame_labels(val, rows, cfg.preprocess.epoch_seconds))
    return train_frame_head(x_all, y_all, cfg.training.seed, val_args, progress), y, extra


def manifest_lookup(manifest: pd.DataFrame) -> dict[str, ManifestRow]:
    """Manifest rows by recording id, as plain values (lists, None) the annotation readers take."""
    import pyarrow as pa

    typed = pa.Table.from_pandas(manifest, preserve_index=False).to_pylist()
    return {str(r["recording_id"]): r for r in typed}  # type: ignore[misc]
