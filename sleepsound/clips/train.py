"""Train a clip classifier: block split, one embedding pass, settings chosen on training blocks only.

Why this shape: the test blocks are held out before anything is chosen, and every
setting (head, layer or layer mix, pooling, learning rate, epoch count) is picked by
blocked k-fold validation on the *training* blocks (each training block validated once),
so the reported test score is untouched by selection. The chosen setting is then refit on
all training blocks for the validated number of epochs (the epoch of lowest mean validation
log-loss; the learning rate is constant, so the refit replays the validated schedule) and
scored once on the test blocks. Then, by default, the same setting is fit once more on every clip
(test blocks included) and that head is saved: the held-out score measured the procedure, and the
model a user ships should have seen every source recording there is (``refit_all=False`` saves
the head that was scored instead, so ``clips evaluate --split test`` can re-check it).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import itertools
import logging
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

import sleepsound
from sleepsound.clips.categories import read_csv_rows
from sleepsound.clips.dataset import MIN_CLIP_SECONDS, SAMPLE_RATE, ClipDataset, load_dataset
from sleepsound.clips.features import (
    FeatureSpec,
    default_layers,
    embed_audio,
    head_input,
    layer_names,
    load_clip_backbone,
    read_cached_embeddings,
    write_cached_embeddings,
)
from sleepsound.clips.split import block_folds, block_split, group_by_label
from sleepsound.core.progress import Progress, quiet
from sleepsound.models.backbones.pretrained import OFFLINE_WHISPER
from sleepsound.models.heads.artifacts import save_head
from sleepsound.models.heads.linear import fit_stats_linear
from sleepsound.report.metrics import evaluate as score
from sleepsound.report.metrics import majority_class
from sleepsound.synth.bedroom import CATEGORIES as GENERATED_CATEGORIES
from sleepsound.train.loop import TrainConfig, predict_proba, train_head

log = logging.getLogger(__name__)

LINEAR = "linear"  # the head fitted in closed form (heads.linear); the others are trained by gradient steps
# The longest clip a model may use: check_clip_info (clips.evaluate) refuses a saved model with longer ones.
MAX_MODEL_CLIP_SECONDS = 60.0
MAX_FOLDS = 1_000  # validation or outer folds: each is a list built before the blocks are dealt
MAX_EPOCHS = 100_000
DEVICES = "cpu, cuda, cuda:N or auto"
_DEVICE = re.compile(r"cpu|auto|cuda(:[0-9]{1,3})?")


class OptionError(ValueError):
    """A setting out of its range, named as its command-line option (the clips CLI exits 2 on it)."""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_device(device: Any) -> str:
    """``device`` if it is one of the names torch and the backbones take; OptionError naming --device
    otherwise (a typo such as 'tpu' was blamed on every clip, or ended "not expected")."""
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise OptionError(f"--device must be {DEVICES}, got {device!r}")
    return device


def check_folds(k: Any, option: str) -> int:
    """``k`` folds if 2 <= k <= MAX_FOLDS; OptionError naming ``option`` (a huge k allocated per-fold lists)."""
    if not isinstance(k, int) or isinstance(k, bool) or not 2 <= k <= MAX_FOLDS:
        raise OptionError(f"{option} must be a whole number in 2..{MAX_FOLDS}, got {k!r}")
    return k


@dataclass
class ClipTrainSettings:
    """What to search and how to split; defaults suit a few hundred 1-5 s clips on a CPU."""

    backbone: str = OFFLINE_WHISPER
    layers: list[int] | None = None  # None: every transformer layer's output
    base_pool_seconds: float = 0.1
    pool_factors: tuple[int, ...] = (1,)  # tried for the attention head (mean pooling ignores it)
    # "linear": logistic regression on every layer's mean and spread (heads.linear), the default: on unseen
    # source runs it called the worst no-snore category snoring 1-2 times in 25 where the MLP and attention
    # heads, chosen among, called it 5-8 times (README, "Short clips"); "mlp", "attention": trained heads
    heads: tuple[str, ...] = ("linear",)
    cs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3)  # the linear head's inverse L2 strengths tried
    lrs: tuple[float, ...] = (1e-3,)  # the trained heads' learning rates tried
    max_epochs: int = 40  # every epoch scored; the best by validation log-loss is kept
    batch_size: int = 32
    block_size: int = 25
    test_fraction: float = 0.2
    folds: int = 5  # blocked k-fold validation on the training side
    seed: int = 0
    clip_seconds: float | None = None  # None: the longest clip, at most 5 s
    embed_batch: int | None = None  # clips per forward pass; None: 1 on CPU, 16 on GPU
    device: str = "cpu"
    cache_dir: str | None = None  # embeddings as .npy, keyed by audio + backbone
    refit_all: bool = True  # after scoring the test blocks, save a head fit on every clip
    hard_negatives: str | None = None  # a clip folder added to every training side, never validated or tested on
    # "generated": negatives and snoring mixes per data clip; no mixes by default (measured, issue 16: mixes of
    # the data's snores over generated TVs and motors taught the head to call real TVs and motors snoring)
    generated_per_clip: tuple[float, float] = (0.6, 0.0)
    # which generated categories (synth.bedroom: the default set; the household transients are opt-in or not)
    generated_categories: tuple[str, ...] = GENERATED_CATEGORIES
    positive: str = "snoring"  # the class an alarm is raised for (the decision threshold is on its probability)
    target_recall: float | None = None  # None: argmax; else the threshold keeping this recall out of fold

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """OptionError naming the option of the first setting out of range, before any clip is read.

        Why here: train and cv (and any caller) build these settings before loading; a bad value used to
        surface after the embedding, as a crash, as every clip blamed, or as a whole long file read.
        """
        clip = self.clip_seconds
        if clip is not None and not (_finite(clip) and MIN_CLIP_SECONDS <= clip <= MAX_MODEL_CLIP_SECONDS):
            raise OptionError(
                f"--clip-seconds must be a number of seconds in {MIN_CLIP_SECONDS:g}..{MAX_MODEL_CLIP_SECONDS:g}, "
                f"got {clip!r}"
            )
        check_folds(self.folds, "--folds")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise OptionError(f"--seed must be a whole number >= 0, got {self.seed!r}")
        if not self.lrs or not all(_finite(lr) and lr > 0 for lr in self.lrs):
            raise OptionError(f"--lr must be a finite number > 0, got {list(self.lrs)!r}")
        if not self.cs or not all(_finite(c) and c > 0 for c in self.cs):
            raise OptionError(f"every inverse L2 strength (cs) must be a finite number > 0, got {list(self.cs)!r}")
        if not isinstance(self.max_epochs, int) or not 1 <= self.max_epochs <= MAX_EPOCHS:
            raise OptionError(f"--max-epochs must be a whole number in 1..{MAX_EPOCHS}, got {self.max_epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise OptionError(f"batch_size must be a whole number >= 1, got {self.batch_size!r}")
        if self.embed_batch is not None and (not isinstance(self.embed_batch, int) or self.embed_batch < 1):
            raise OptionError(f"embed_batch must be a whole number >= 1, got {self.embed_batch!r}")
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise OptionError(f"--block-size must be a whole number >= 1, got {self.block_size!r}")
        if not (_finite(self.test_fraction) and 0 <= self.test_fraction < 1):
            raise OptionError(f"--test-fraction must be in [0, 1), got {self.test_fraction!r}")
        recall = self.target_recall
        if recall is not None and not (_finite(recall) and 0 < recall <= 1):
            raise OptionError(f"--target-recall must be in (0, 1], got {recall!r}")
        check_device(self.device)
        if not self.heads:
            raise OptionError("--head: at least one head to try")
        if not isinstance(self.positive, str) or not self.positive:
            raise OptionError(f"--positive must name a class, got {self.positive!r}")

    def check_classes(self, classes: tuple[str, ...]) -> None:
        """OptionError when a threshold is asked for (--target-recall) but --positive is none of ``classes``.

        Why: the threshold was silently skipped, and a model saying target_recall 0.9 decided by argmax.
        """
        if self.target_recall is not None and self.positive not in classes:
            raise OptionError(
                f"--target-recall needs --positive to be one of the classes {', '.join(classes)}; "
                f"got --positive {self.positive!r}"
            )


@dataclass
class Candidate:
    """One setting tried by the blocked k-fold selection, with its validation figures."""

    head: str
    pick: list[int]
    pool_factor: int
    lr: float  # a trained head's learning rate (0 for the linear head, which takes no steps)
    c: float | None = None  # the linear head's inverse L2 strength (None for a trained head)
    val_macro_f1: float = float("nan")
    val_accuracy: float = float("nan")
    val_log_loss: float = float("nan")
    best_epoch: int = -1
    val_proba: np.ndarray | None = None  # out-of-fold probabilities [n_val, C] at the chosen epoch
    val_truth: np.ndarray | None = None  # their true class indices
    failed: str | None = None  # why its training failed (a diverging loss), or None: scored


def candidates(n_layers: int, settings: ClipTrainSettings) -> list[Candidate]:
    """Every (head, layer pick, pooling, lr): each single layer, plus the learned mix of all; the linear
    head takes every layer's statistics at once, one candidate per L2 strength."""
    picks = [[i] for i in range(n_layers)] + ([list(range(n_layers))] if n_layers > 1 else [])
    out = [Candidate(LINEAR, list(range(n_layers)), 1, 0.0, float(c)) for c in settings.cs if LINEAR in settings.heads]
    trained = [head for head in settings.heads if head != LINEAR]
    for head, pick, lr in itertools.product(trained, picks, settings.lrs):
        factors = settings.pool_factors if head == "attention" else settings.pool_factors[:1]
        out.extend(Candidate(head, pick, int(f), float(lr)) for f in factors)
    return out


def _config(
    settings: ClipTrainSettings, classes: tuple[str, ...], lr: float, epochs: int, patience: int | None
) -> TrainConfig:
    """Constant learning rate, so a refit for the validated epoch count replays the validated schedule."""
    return TrainConfig(
        classes=classes,
        lr=lr,
        min_lr=lr,
        constant_fraction=1.0,
        epochs=epochs,
        batch_size=settings.batch_size,
        seed=settings.seed,
        patience=patience,
        device=settings.device,
    )


def _log_loss(proba: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-7, 1.0)))) if len(y) else float("nan")


def _packed(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One validation scoring as ``_fit_and_watch`` returns it: the predicted classes, then the log-loss."""
    return np.append(proba.argmax(axis=1).astype(np.float64), _log_loss(proba, y))


def embed_dataset(
    ds: ClipDataset, spec: FeatureSpec, settings: ClipTrainSettings, progress: Callable[[int, int], None] | None = None
) -> np.ndarray:
    """Embeddings [N, T, L, D] of every accepted clip, from the cache when the same audio was embedded."""
    backbone = load_clip_backbone(spec, settings.device)
    key = hashlib.sha256(f"{backbone.fingerprint}|{ds.audio.shape}".encode() + ds.audio.tobytes()).hexdigest()[:16]
    path = Path(settings.cache_dir) / f"clips-{key}.npy" if settings.cache_dir else None
    if path is not None and (cached := read_cached_embeddings(path, len(ds.audio))) is not None:
        return cached
    emb = embed_audio(backbone, ds.audio, settings.embed_batch, progress)
    if path is not None:
        write_cached_embeddings(path, emb)
    return emb


def _fit_and_watch(
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    fit: np.ndarray,
    val: np.ndarray,
    cand: Candidate,
    settings: ClipTrainSettings,
    classes: tuple[str, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Train ``max_epochs`` on ``fit`` and return the validation class indices predicted after
    each epoch and their log-loss: (predictions [E, n_val], losses [E]) packed as
    [E, n_val + 1], and the probabilities [E, n_val, C] (for a threshold calibrated out of fold).
    ``train_head``'s ``wrap`` hook hands us the model so every epoch can be scored as it ends. The linear
    head is fitted once, in closed form: one "epoch"."""
    if cand.head == LINEAR:
        assert cand.c is not None
        model = fit_stats_linear(x[fit], y[fit], mask[fit], len(classes), cand.c)
        proba = predict_proba(model, x[val], mask=mask[val])
        return _packed(proba, y[val])[None, :], proba.astype(np.float32)[None]
    held: list[Any] = []
    rows: list[np.ndarray] = []
    probas: list[np.ndarray] = []

    def watch(_record: dict[str, float]) -> None:
        proba = predict_proba(held[0], x[val], mask=mask[val])
        probas.append(proba.astype(np.float32))
        rows.append(_packed(proba, y[val]))

    cfg = _config(settings, classes, cand.lr, settings.max_epochs, None)
    train_head(
        x[fit],
        y[fit],
        cfg,
        head=cand.head,
        mask=mask[fit],
        progress=watch,
        wrap=lambda model: held.append(model) or model,
    )
    return np.stack(rows), np.stack(probas)


def select(
    emb: np.ndarray,
    ds: ClipDataset,
    train_idx: np.ndarray,
    folds: list[np.ndarray],
    spec: FeatureSpec,
    settings: ClipTrainSettings,
    bar: Progress = quiet,
    tied: np.ndarray | None = None,
) -> tuple[Candidate, list[Candidate]]:
    """Blocked k-fold validation on the training side for every candidate.

    Per candidate the epoch count is the one with the lowest validation log-loss averaged
    over the folds (macro-F1 saturates within an epoch or two on easy data and would stop
    training far too early); it is scored by the macro-F1 of all folds' predictions at that
    epoch. Best: highest macro-F1, then lowest log-loss, then the earlier (simpler) candidate.
    """
    y = np.array([ds.classes.index(lb) for lb in ds.labels], dtype=np.int64)
    scored = []
    tried = candidates(emb.shape[2], settings)
    bar("select", 0, len(tried), "settings")
    for cand in tried:
        cspec = FeatureSpec(spec.backbone, spec.layers, spec.base_pool_seconds, cand.pick, cand.pool_factor)
        x, mask = head_input(emb, ds.lengths, cspec)
        runs, probas = [], []
        try:
            for val in folds:
                fit = untied(np.setdiff1d(train_idx, val), val, tied)  # no mix of a validation snore in its fit
                packed, proba = _fit_and_watch(x, y, mask, fit, val, cand, settings, ds.classes)
                runs.append(packed)
                probas.append(proba)
        except FloatingPointError as exc:  # one diverging learning rate is a failed candidate, not a failed run
            cand.failed = str(exc)
            log.warning("candidate %s lr=%g failed: %s", cand.head, cand.lr, exc)
            scored.append(cand)
            bar("select", len(scored), len(tried), "settings")
            continue
        losses = np.mean([r[:, -1] for r in runs], axis=0)
        epoch = int(np.argmin(losses))
        pred = np.concatenate([r[epoch, :-1] for r in runs]).astype(np.int64)
        truth = np.concatenate([y[v] for v in folds])
        cand.best_epoch, cand.val_log_loss = epoch, float(losses[epoch])
        cand.val_proba, cand.val_truth = np.concatenate([p[epoch] for p in probas]), truth
        cand.val_macro_f1 = float(
            f1_score(truth, pred, average="macro", labels=range(len(ds.classes)), zero_division=0)
        )
        cand.val_accuracy = float(np.mean(pred == truth))
        log.info(
            "candidate %s layers=%s pool=%gs %s: validation macro-F1 %.4f, accuracy %.4f, log-loss %.4f at epoch %d",
            cand.head,
            layer_names(spec.layers, cand.pick),
            cspec.pool_seconds,
            f"C={cand.c:g}" if cand.c is not None else f"lr={cand.lr:g}",
            cand.val_macro_f1,
            cand.val_accuracy,
            cand.val_log_loss,
            cand.best_epoch,
        )
        scored.append(cand)
        bar("select", len(scored), len(tried), "settings")
    working = [c for c in scored if c.failed is None]
    if not working:
        raise ValueError(
            f"every setting tried failed in training ({len(scored)}; the first: {scored[0].failed}); try a lower --lr"
        )
    best = max(working, key=lambda c: (c.val_macro_f1, -c.val_log_loss))  # first wins exact ties
    return best, scored


@dataclass
class FittedClips:
    """A head refit on the training side with the setting blocked validation chose."""

    model: Any
    spec: FeatureSpec  # the chosen layers and pooling
    best: Candidate
    scored: list[Candidate]
    decision: dict[str, Any] | None = None  # the calibrated threshold (see calibrate_threshold), or None: argmax

    def proba(self, emb: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Class probabilities [N, C] for embeddings [N, T, L, D] of clips with real ``lengths``."""
        x, mask = head_input(emb, lengths, self.spec)
        return predict_proba(self.model, x, mask=mask)

    def predict(self, emb: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Class indices (the calibrated threshold's when there is one)."""
        return decide(self.proba(emb, lengths), self.decision)


def decide(proba: np.ndarray, decision: dict[str, Any] | None) -> np.ndarray:
    """Class indices from probabilities [N, C]: the positive class wherever its probability reaches the
    threshold, else the likeliest other class; argmax when there is no threshold."""
    picked = proba.argmax(axis=1)
    if not decision:
        return picked
    pos, threshold = int(decision["positive_index"]), float(decision["threshold"])
    others = proba.copy()
    others[:, pos] = -np.inf
    return np.where(proba[:, pos] >= threshold, pos, others.argmax(axis=1))


def calibrate_threshold(
    proba: np.ndarray, truth: np.ndarray, positive_index: int, target_recall: float
) -> dict[str, Any]:
    """The highest threshold on the positive class's probability that keeps ``target_recall`` of the
    positives in ``proba`` (out-of-fold: clips of source runs the scoring model never saw).

    Why: argmax (0.5) is not where a bedside alarm wants to sit; the threshold is chosen on held-out
    sources for the recall the issue demands, and then buys as few false alarms as that recall allows.
    """
    if not 0 < target_recall <= 1:
        raise ValueError(f"target recall must be in (0, 1], got {target_recall}")
    p = proba[:, positive_index]
    is_pos = truth == positive_index
    if not is_pos.any() or is_pos.all():
        raise ValueError("calibrating a threshold needs validation clips of the positive class and of the others")
    ranked = np.sort(p[is_pos])
    missed = int(np.floor((1 - target_recall) * len(ranked) + 1e-9))  # positives allowed below the threshold
    threshold = float(ranked[missed])
    return {
        "positive_index": positive_index,
        "threshold": threshold,
        "target_recall": target_recall,
        "validation_recall": float(np.mean(p[is_pos] >= threshold)),
        "validation_false_alarm": float(np.mean(p[~is_pos] >= threshold)),
        "validation_n": {"positive": int(is_pos.sum()), "other": int((~is_pos).sum())},
        "calibrated_on": "out-of-fold probabilities of the chosen setting on the validation blocks",
    }


def fit_setting(
    emb: np.ndarray, ds: ClipDataset, idx: np.ndarray, spec: FeatureSpec, best: Candidate, settings: ClipTrainSettings
) -> Any:
    """The head of setting ``best`` trained on rows ``idx`` for its validated epoch count."""
    x, mask = head_input(emb, ds.lengths, spec)
    y = np.array([ds.classes.index(lb) for lb in ds.labels], dtype=np.int64)
    if best.head == LINEAR:
        assert best.c is not None
        model = fit_stats_linear(x[idx], y[idx], mask[idx], len(ds.classes), best.c)
        model.meta = {
            "classes": list(ds.classes),
            "context_epochs": 1,
            "training": {"head": LINEAR, "c": best.c, "classes": list(ds.classes), "train_samples": len(idx)},
        }
        return model
    return train_head(
        x[idx],
        y[idx],
        _config(settings, ds.classes, best.lr, best.best_epoch + 1, None),
        head=best.head,
        mask=mask[idx],
    ).model


def select_and_fit(
    emb: np.ndarray,
    ds: ClipDataset,
    train_idx: np.ndarray,
    folds: list[np.ndarray],
    spec: FeatureSpec,
    settings: ClipTrainSettings,
    bar: Progress = quiet,
    tied: np.ndarray | None = None,
) -> FittedClips:
    """Choose a setting by blocked validation on ``folds`` (within ``train_idx``), then refit it on all of
    ``train_idx`` for the validated epoch count."""
    best, scored = select(emb, ds, train_idx, folds, spec, settings, bar, tied)
    chosen = FeatureSpec(spec.backbone, list(spec.layers), spec.base_pool_seconds, list(best.pick), best.pool_factor)
    decision = None
    if settings.target_recall is not None and settings.positive in ds.classes:
        assert best.val_proba is not None and best.val_truth is not None
        decision = calibrate_threshold(
            best.val_proba, best.val_truth, ds.classes.index(settings.positive), settings.target_recall
        )
        decision["positive"] = settings.positive
    try:
        model = fit_setting(emb, ds, train_idx, chosen, best, settings)
    except FloatingPointError as exc:  # the validated setting diverged on the whole training side
        raise ValueError(f"the chosen setting ({best.head}, lr {best.lr:g}) failed in its refit: {exc}") from exc
    return FittedClips(model, chosen, best, scored, decision)


def load_labelled(data: str | Path, settings: ClipTrainSettings) -> ClipDataset:
    """The clip folder, refused unless at least two labels have usable clips and every label folder has one.

    Why: the classes are the label folders found, so a folder whose every file was rejected would
    still be a class the head has no example of: a model that can never call it, saved as if fine.
    """
    ds = load_dataset(data, clip_seconds=settings.clip_seconds)
    if len(ds.classes) < 2:
        raise ValueError(f"need at least 2 label folders with usable clips under {data}, found {list(ds.classes)}")
    if problem := _label_without_clips(ds):
        raise ValueError(f"{data}: {problem}")
    settings.check_classes(ds.classes)  # the classes are known now, and nothing is embedded yet
    return ds


def check_output_folder(path: str | Path, option: str) -> None:
    """OSError naming ``option`` unless ``path`` is a folder this process can write a file in, or can be made
    in one (its nearest existing parent is a writable folder); probed with a temporary file, nothing kept.

    Why: ``--out`` and ``--cache`` were first touched after the embedding (and the fit), so an existing file
    of that name, or a folder that may not be written, lost all the work done before it.
    """
    folder = Path(path).expanduser()
    probe = folder
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        what = "is" if probe == folder else f"lies under {probe}, which is"
        raise OSError(f"{option} {folder} {what} not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise OSError(f"{option} {folder}: cannot write in {probe} ({exc.strerror or exc})") from None


def with_backbone_layers(settings: ClipTrainSettings) -> ClipTrainSettings:
    """``settings`` with ``layers`` resolved, by loading the backbone now: a name that cannot be loaded (a typo,
    offline and not cached), or a device this machine lacks, is refused before any clip is read
    (BackboneLoadError), not after every clip was loaded."""
    if settings.layers is not None:
        load_clip_backbone(FeatureSpec(settings.backbone, list(settings.layers)), settings.device)
        return settings
    return replace(settings, layers=default_layers(settings.backbone, settings.device))


def _label_without_clips(ds: ClipDataset) -> str | None:
    """Why a label folder of ``ds`` cannot be a class (no usable clip: each of its files rejected), or None."""
    for label in ds.classes:
        if label not in ds.labels:
            rejected = [r for r in ds.rejected if r.label == label]
            first = f"; first: {rejected[0].reason}" if rejected else ""
            return (
                f"label folder {label!r} has no usable clip ({len(rejected)} file(s) rejected{first}); "
                "fix or remove its files, or move the folder out of the data folder"
            )
    return None


EXTRA_PREFIX = "+extra/"  # names of added training clips, so they never collide with the data's own


def load_extra(settings: ClipTrainSettings, ds: ClipDataset) -> ClipDataset | None:
    """The ``hard_negatives`` folder at the data's clip length and classes (other labels rejected), or None.

    A snoring mix made from one of the data's own clips (its ``manifest.csv`` names the clip) is kept, but
    :func:`tied_rows` ties it to that clip, so it never trains a model that is validated or tested on it.
    """
    if not settings.hard_negatives:
        return None
    folder = Path(settings.hard_negatives)
    extra = load_dataset(folder, clip_seconds=ds.clip_samples / SAMPLE_RATE, classes=ds.classes)
    if not extra.files:
        raise ValueError(f"{folder}: no usable clips of the classes {list(ds.classes)} to add to training")
    if extra.clip_samples != ds.clip_samples:
        raise ValueError(f"{folder}: clips of {extra.clip_samples} samples, the data's are {ds.clip_samples}")
    return extra


def tied_rows(full: ClipDataset, folder: str | Path | None) -> np.ndarray:
    """For every row of a :func:`with_extra` dataset, the data row an added clip was made from (a snoring
    mix of one of the data's own clips, per the folder's ``manifest.csv``), else -1.

    Why: augmentation stays inside the training folds: an added mix leaves every training side whose
    validation or test side holds the snore it was made from, so no held-out snore is heard in training.
    """
    tied = np.full(len(full.files), -1, dtype=np.int64)
    manifest = Path(folder) / "manifest.csv" if folder else None
    if manifest is None or not manifest.is_file():
        return tied
    rows = read_csv_rows(manifest, "hard-negatives manifest", ("file",))  # capped, errors name the file
    made_from = {row["file"]: row.get("snore_file") or "" for _, row in rows if row["file"]}
    row_of = {f: i for i, f in enumerate(full.files) if not f.startswith(EXTRA_PREFIX)}
    for i, name in enumerate(full.files):
        if name.startswith(EXTRA_PREFIX):
            tied[i] = row_of.get(made_from.get(name[len(EXTRA_PREFIX) :], ""), -1)
    return tied


def untied(rows: np.ndarray, held: np.ndarray, tied: np.ndarray | None) -> np.ndarray:
    """``rows`` without the added clips made from a clip of ``held`` (see :func:`tied_rows`)."""
    if tied is None or not len(held):
        return rows
    return rows[~np.isin(tied[rows], held)]


GENERATED = "generated"  # --hard-negatives value: make them here (clips hard-negatives) for this training
GENERATED_SEED_OFFSET = 101  # generated from seed + this: other draws than any folder made with the plain seed


@contextmanager
def resolved_hard_negatives(
    data: str | Path, settings: ClipTrainSettings, say: Callable[[str], None]
) -> Iterator[tuple[ClipTrainSettings, dict[str, Any] | None]]:
    """``settings`` with ``hard_negatives="generated"`` replaced by a folder made for this run (bedroom
    negatives of ``generated_categories``, 0.6 per data clip in all, and, when ``generated_per_clip`` asks for them, the
    data's own snores mixed over more, in a temporary folder removed afterwards), and what was made; any other value
    passes through unchanged. Data without snoring and no_snoring labels gets none (said, and recorded).

    Why: hard negatives of many TVs, talkers, fans and motors are what keep the detector from calling
    them snoring (issue 16); made here from a seed, with espeak-ng's speech or the built-in synthesiser's.
    """
    if settings.hard_negatives != GENERATED:
        yield settings, None
        return
    from sleepsound.clips.hard_negatives import write_hard_negatives

    ds = load_labelled(data, settings)
    if not {"no_snoring", "snoring"} <= set(ds.classes):
        say(f"no hard negatives generated: they are no_snoring and snoring clips, the labels here are {ds.classes}")
        yield replace(settings, hard_negatives=None), {"skipped": f"labels {list(ds.classes)}"}
        return
    n_neg, n_mix = (round(share * len(ds.files)) for share in settings.generated_per_clip)
    with tempfile.TemporaryDirectory(prefix="sleepsound-hard-negatives-") as tmp:
        folder = Path(tmp) / "generated"
        made = write_hard_negatives(
            folder,
            n=max(n_neg, len(settings.generated_categories)),  # at least one per category
            categories=settings.generated_categories,
            seed=settings.seed + GENERATED_SEED_OFFSET,
            seconds=ds.clip_samples / SAMPLE_RATE,
            snoring=data if n_mix > 0 else None,
            # at least one per category and SNR
            n_snoring=max(n_mix, 3 * len(settings.generated_categories)) if n_mix > 0 else None,
        )
        say(
            f"made {made['counts']['no_snoring']} hard negatives and {made['counts']['snoring']} snoring mixes "
            f"(seed {made['seed']}, speech from {made['speech_source']})"
        )
        made = {k: made[k] for k in ("seed", "seconds", "speech_source", "counts", "per_category", "snrs_db")}
        yield replace(settings, hard_negatives=str(folder)), made


def with_extra(ds: ClipDataset, extra: ClipDataset | None) -> ClipDataset:
    """The data's clips followed by the extra ones (named ``+extra/...``): the data keeps its row numbers."""
    if extra is None:
        return ds
    return ClipDataset(
        ds.root,
        ds.classes,
        [*ds.files, *(EXTRA_PREFIX + f for f in extra.files)],
        [*ds.labels, *extra.labels],
        np.concatenate([ds.audio, extra.audio]),
        np.concatenate([ds.lengths, extra.lengths]),
        ds.clip_samples,
        list(ds.rejected),
    )


def extra_rows(ds: ClipDataset) -> list[str]:
    """The names of the added training clips in a :func:`with_extra` dataset."""
    return [f for f in ds.files if f.startswith(EXTRA_PREFIX)]


def indices_of(ds: ClipDataset, files: list[str]) -> np.ndarray:
    """Sorted row numbers of ``files`` in the dataset."""
    index = {f: i for i, f in enumerate(ds.files)}
    return np.array(sorted(index[f] for f in files), dtype=np.int64)


def validation_folds(ds: ClipDataset, train_files: list[str], settings: ClipTrainSettings) -> list[np.ndarray]:
    """Blocked validation folds (row numbers) within the training files."""
    train = indices_of(ds, train_files)
    fold_files = block_folds(
        group_by_label([ds.files[i] for i in train], [ds.labels[i] for i in train]),
        block_size=settings.block_size,
        k=settings.folds,
        seed=settings.seed + 1,
    )
    return [indices_of(ds, files) for files in fold_files]


def embed_all(
    ds: ClipDataset, settings: ClipTrainSettings, extra: ClipDataset | None = None, bar: Progress = quiet
) -> tuple[FeatureSpec, np.ndarray]:
    """Every candidate layer of every clip, embedded once (or read from the cache), with its spec; with
    ``extra``, its rows follow the data's (each set cached on its own, so adding one re-embeds nothing)."""
    layers = settings.layers or default_layers(settings.backbone, settings.device)
    spec = FeatureSpec(settings.backbone, list(layers), settings.base_pool_seconds, [0], 1)
    emb = embed_dataset(ds, spec, settings, lambda done, total: bar("embed clips", done, total, "clips"))
    if extra is not None:
        more = embed_dataset(extra, spec, settings, lambda done, total: bar("embed added", done, total, "clips"))
        emb = np.concatenate([emb, more])
    return spec, emb


def train_clips(
    data: str | Path,
    out_dir: str | Path,
    settings: ClipTrainSettings | None = None,
    progress: Callable[[str], None] | None = None,
    bar: Progress = quiet,
) -> dict[str, Any]:
    """Train, score on the held-out blocks, save the head; returns the summary (also in the config).
    ``progress`` hears a line per step, ``bar`` the counts of clips embedded and settings tried."""
    settings = settings or ClipTrainSettings()
    say = progress or (lambda _msg: None)
    check_output_folder(out_dir, "--out")
    if settings.cache_dir:
        check_output_folder(settings.cache_dir, "--cache")
    settings = with_backbone_layers(settings)
    with resolved_hard_negatives(data, settings, say) as (resolved, made):
        return _train_clips(data, out_dir, resolved, say, bar, made)


def _train_clips(
    data: str | Path,
    out_dir: str | Path,
    settings: ClipTrainSettings,
    say: Callable[[str], None],
    bar: Progress,
    made: dict[str, Any] | None,
) -> dict[str, Any]:
    started = time.perf_counter()
    ds = load_labelled(data, settings)
    split = block_split(
        group_by_label(ds.files, ds.labels),
        block_size=settings.block_size,
        test_fraction=settings.test_fraction,
        seed=settings.seed,
    )
    extra = load_extra(settings, ds)
    data_ds, ds = ds, with_extra(ds, extra)  # added clips join every training side, never a validation or test one
    tied = tied_rows(ds, settings.hard_negatives)
    test_idx = indices_of(ds, split.test)
    train_idx = untied(indices_of(ds, split.train + extra_rows(ds)), test_idx, tied)
    folds = validation_folds(ds, split.train, settings)
    say(
        f"{data_ds.counts()['used']} clips used, {len(data_ds.rejected)} rejected; {len(split.train)} train "
        f"({settings.folds} validation folds of whole blocks), {len(split.test)} test"
        + (f"; {len(extra.files)} added to training from {settings.hard_negatives}" if extra else "")
    )

    t0 = time.perf_counter()
    spec, emb = embed_all(data_ds, settings, extra, bar)
    embed_s = time.perf_counter() - t0
    say(f"embedded {len(emb)} clips in {embed_s:.0f} s")

    t0 = time.perf_counter()
    fitted = select_and_fit(emb, ds, train_idx, folds, spec, settings, bar, tied)
    best, scored, spec = fitted.best, fitted.scored, fitted.spec
    epochs = best.best_epoch + 1
    train_s = time.perf_counter() - t0
    held_out: dict[str, Any] = {"n": 0}
    if len(test_idx):
        pred = fitted.predict(emb[test_idx], ds.lengths[test_idx])
        names = [ds.classes[i] for i in pred]
        truth = [ds.labels[i] for i in test_idx]
        metrics = score(truth, names, ds.classes, majority_class([ds.labels[i] for i in train_idx], ds.classes))
        held_out = {
            "n": len(test_idx),
            **{
                k: metrics[k]
                for k in ("accuracy", "macro_f1", "kappa", "classes", "confusion", "per_class", "baseline_accuracy")
            },
        }
    model, refit = fitted.model, bool(settings.refit_all and len(test_idx))
    if refit:  # the score above measured the procedure; the saved head sees every source recording
        model = fit_setting(emb, ds, np.arange(len(ds.files)), spec, best, settings)
    chosen = {
        "head": best.head,
        "layers": layer_names(spec.layers, spec.pick),
        "pool_seconds": spec.pool_seconds,
        "lr": best.lr,
        "c": best.c,
        "epochs": epochs,
        "val_macro_f1": best.val_macro_f1,
        "val_accuracy": best.val_accuracy,
        "val_log_loss": best.val_log_loss,
    }
    summary = {
        "sleepsound_version": sleepsound.__version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(),
        "backbone": settings.backbone,
        "features": spec.as_dict(),
        "classes": list(ds.classes),
        "clip_seconds": ds.clip_samples / SAMPLE_RATE,
        "clip_samples": ds.clip_samples,
        "sample_rate": SAMPLE_RATE,
        "data_root": Path(data).resolve().name,  # the folder's name only: no path of the training machine
        "split": {
            **split.describe(),
            "validation": {
                "kind": "blocked k-fold on the training blocks",
                "folds": settings.folds,
                "seed": settings.seed + 1,
                "fold_sizes": [len(f) for f in folds],
            },
        },
        "held_out_files": list(split.test),
        "decision": fitted.decision,  # None: argmax; else the positive class from its calibrated threshold
        "refit_on_all": refit,  # True: the saved head also saw the held-out files
        "counts": {
            **data_ds.counts(),
            "added_to_training": len(extra.files) if extra else 0,
            "train": len(train_idx),
            "test": len(test_idx),
            "saved_model_trained_on": len(ds.files) if refit else len(train_idx),
        },
        "rejected": [r.as_dict() for r in ds.rejected]
        + ([{**r.as_dict(), "file": EXTRA_PREFIX + r.file} for r in extra.rejected] if extra else []),
        "chosen": chosen,
        "candidates": [
            {
                "head": c.head,
                "layers": layer_names(spec.layers, c.pick),
                "pool_seconds": spec.base_pool_seconds * c.pool_factor,
                "lr": c.lr,
                "c": c.c,
                "val_macro_f1": c.val_macro_f1,
                "val_accuracy": c.val_accuracy,
                "val_log_loss": c.val_log_loss,
                "best_epoch": c.best_epoch,
                "failed": c.failed,
            }
            for c in scored
        ],
        "settings": shipped_settings(settings, made),
        "hard_negatives_generated": made,  # what --hard-negatives generated made (its folder is gone), or None
        "held_out": held_out,
        "seconds": {
            "embed": round(embed_s, 1),
            "select_and_fit": round(train_s, 1),
            "total": round(time.perf_counter() - started, 1),
        },
    }
    save_head(
        model, None, str(out_dir), extra={"clips": {**summary, "rejected": rejected_summary(summary["rejected"])}}
    )
    return summary


def shipped_settings(settings: ClipTrainSettings, made: dict[str, Any] | None) -> dict[str, Any]:
    """The settings as the saved config records them: folders (the cache, the added clips) by name only, and
    a generated folder (gone after the run) as 'generated'."""
    out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()}
    for key in ("cache_dir", "hard_negatives"):
        if out[key]:
            out[key] = Path(out[key]).name
    if made is not None and "skipped" not in made:
        out["hard_negatives"] = GENERATED
    return out


def rejected_summary(rejected: list[dict[str, str]]) -> dict[str, Any]:
    """The rejected files as a shipped model's config keeps them: how many, and how many for each kind of
    reason (the text after the file's name, up to any detail in brackets), no file name or path.

    Why: a model is handed on, and file names (or a decoder message quoting a full path) may identify a
    patient; the full list is in what ``clips train`` prints and returns."""
    reasons: dict[str, int] = {}
    for row in rejected:
        reason, name = row["reason"], row["file"].removeprefix(EXTRA_PREFIX)  # an added clip's reason has no prefix
        if reason.startswith(name + ": "):
            reason = reason[len(name) + 2 :]
        kind = reason.split(" (", 1)[0].split(":", 1)[0].strip() or "unknown"
        reasons[kind] = reasons.get(kind, 0) + 1
    return {"n": len(rejected), "reasons": dict(sorted(reasons.items()))}
