"""Labelled short clips laid end to end into epochs: extra training frames for the per-second snore head.

Why (issue 16): the night's snore head learns only from the generated nights' scored snores, and
calls a TV or a fan snoring where the nights had none of it; the clips model stopped calling
generated TVs and motors snoring once it heard many of them as negatives. Here the same sounds
reach the frame head: clips (a folder in the ``clips`` layout, ``snoring/`` and ``no_snoring/``,
and generated bedroom sounds that are not snoring, ``synth.bedroom``) are laid end to end into one
long recording at 16 kHz, cut and preprocessed by the night's own cutter (``embed.preprocess``:
high-pass, pre-emphasis, per-epoch normalisation; validity checks included), embedded by the
night's own model stage (``embed.model_stage.EmbedStage``: the backbone and its frame pooling), and
each frame labelled by the clip it lies in (-1 where it straddles clips of different labels).

The frames join the snore head's training side only (``training.snore_clips``): never a validation
or test subject's, so every figure stays one of nights the head never heard. Embeddings are cached
under the root by the laid audio's content, the preprocessing and the backbone
(``embeddings/<backbone>/<preproc>/clip-epochs/<key>.npz``), so a rerun embeds nothing.

A clip folder is laid in runs of 2-8 consecutive clips of one source (neighbouring file numbers,
``clips.split.blocks_of``), the runs shuffled (seeded) so an epoch holds several sources and both
labels; generated sounds are 10-s pieces, the categories in turn.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from sleepsound.core.config import Config
from sleepsound.core.progress import Progress, quiet
from sleepsound.core.storage import RootLike, open_root, values_digest, write_bytes_atomic

log = logging.getLogger(__name__)

RATE = 16_000  # the clips' rate (clips.dataset reads every clip at 16 kHz)
GENERATED = "generated"  # training.snore_clips entry: bedroom sounds that are not snoring, made here
GENERATED_SEED_OFFSET = 101  # generated from training.seed + this (as clips train's generated negatives)
GENERATED_PIECE_S = 10.0  # one generated sound lasts this long (a TV or a fan plays on; 3 per epoch)
RUN_CLIPS = (2, 8)  # consecutive clips of one source laid together (inclusive)
LAID_PEAK = 0.5  # clips are peak-normalised; laid at half scale so no sample counts as clipped
CACHE_VERSION = 1
SNORING, NOT_SNORING, STRADDLES = 1, 0, -1


class ClipSourceError(ValueError):
    """A ``training.snore_clips`` source that cannot be used (the message names it): the run stops."""


@dataclass
class Laid:
    """Clips laid end to end: ``audio`` at RATE, and where each laid piece starts and ends."""

    audio: np.ndarray  # float32 [samples], a whole number of epochs at RATE
    starts: np.ndarray  # int64 [pieces]: first sample of each laid piece
    ends: np.ndarray  # int64 [pieces]: one past its last sample
    clip: np.ndarray  # int64 [pieces]: which clip (index into the caller's list) each piece is
    labels: np.ndarray  # int8 [pieces]: 1 snoring, 0 not


@dataclass
class ClipFrames:
    """Embedded clip epochs and their frame targets, ready to join the snore head's training frames."""

    features: np.ndarray  # float16 [E, T, D] (or [E, T, L, D]): the valid epochs only
    labels: np.ndarray  # int8 [E, T]: 1 snoring, 0 not, -1 straddling clips of different labels
    clip: np.ndarray  # int64 [E, T]: the clip each frame's middle lies in (index into names)
    names: list[str]  # clip names
    info: dict[str, Any] = field(default_factory=dict)  # what was laid (for the lineage)

    @staticmethod
    def join(parts: Sequence[ClipFrames]) -> ClipFrames:
        """Several sources' frames as one set (clip indices shifted into one list of names)."""
        names: list[str] = []
        clips = []
        kept = [p for p in parts if len(p.features)] or list(parts[:1])  # a source of no valid epoch adds none
        for part in kept:
            clips.append(np.where(part.clip >= 0, part.clip + len(names), -1))
            names += part.names
        return ClipFrames(
            np.concatenate([p.features for p in kept]),
            np.concatenate([p.labels for p in kept]),
            np.concatenate(clips),
            names,
            {"sources": [p.info for p in parts]},
        )


def run_order(groups: Sequence[Sequence[int]], seed: int) -> list[int]:
    """Clip indices in laying order: each group (one source, in recording order) cut into runs of
    RUN_CLIPS consecutive clips, the runs shuffled (seeded), so neighbours stay neighbours."""
    rng = np.random.default_rng([int(seed) & 0x7FFFFFFF, 17])
    runs: list[list[int]] = []
    for group in groups:
        i = 0
        while i < len(group):
            n = int(rng.integers(RUN_CLIPS[0], RUN_CLIPS[1] + 1))
            runs.append(list(group[i : i + n]))
            i += n
    return [c for k in rng.permutation(len(runs)) for c in runs[int(k)]]


def lay_clips(clips: Sequence[np.ndarray], labels: Sequence[int], order: Sequence[int], epoch_samples: int) -> Laid:
    """``clips`` (at RATE) end to end in ``order``, continued from the start of ``order`` again until
    the last epoch is full (a clip may be laid twice; nothing is padded with silence)."""
    if not order:
        raise ValueError("no clips to lay into epochs")
    lengths = np.array([len(clips[i]) for i in order], dtype=np.int64)
    if (lengths <= 0).any():
        raise ValueError("a clip to lay has no samples")
    total = int(lengths.sum())
    n_epochs = max(1, math.ceil(total / epoch_samples))
    want = n_epochs * epoch_samples
    seq, starts, pos = [], [], 0
    while pos < want:
        for i in order:
            seq.append(int(i))
            starts.append(pos)
            pos += len(clips[i])
            if pos >= want:
                break
    starts_a = np.array(starts, dtype=np.int64)
    ends = np.minimum(starts_a + np.array([len(clips[i]) for i in seq], dtype=np.int64), want)
    audio = np.concatenate([clips[i] for i in seq])[:want].astype(np.float32) * np.float32(LAID_PEAK)
    return Laid(audio, starts_a, ends, np.array(seq, dtype=np.int64), np.array([labels[i] for i in seq], dtype=np.int8))


def frame_targets(laid: Laid, epoch_samples: int, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels int8 [E, T], clip int64 [E, T]) of every epoch's frames: a frame takes the label of the
    clips it overlaps when they agree, -1 when they differ; its clip is the one holding its middle."""
    n_epochs = len(laid.audio) // epoch_samples
    edges = np.arange(n_epochs * n_frames + 1, dtype=np.float64) * (epoch_samples / n_frames)
    lo, hi = edges[:-1], edges[1:]
    first = np.searchsorted(laid.ends, lo, side="right")  # first piece ending after the frame starts
    last = np.searchsorted(laid.starts, hi, side="left") - 1  # last piece starting before it ends
    middle = np.searchsorted(laid.starts, (lo + hi) / 2, side="right") - 1
    labels = np.empty(len(lo), dtype=np.int8)
    cum = np.concatenate([[0], np.cumsum(laid.labels.astype(np.int64))])  # snoring pieces before each index
    count = last - first + 1
    snoring = cum[last + 1] - cum[first]
    labels[:] = np.where(snoring == count, SNORING, np.where(snoring == 0, NOT_SNORING, STRADDLES))
    return labels.reshape(n_epochs, n_frames), laid.clip[middle].reshape(n_epochs, n_frames)


def embed_laid(audio: np.ndarray, cfg: Config, progress: Progress = quiet) -> tuple[np.ndarray, np.ndarray]:
    """(features of the valid epochs, valid [E] bool) of laid audio at RATE, through the night's path:
    the epoch cutter of ``preprocess.device`` (``iter_epochs``, or ``iter_raw_epochs`` whose raw epochs
    the model stage filters) and the model stage, in blocks of the backbone's stream size."""
    from sleepsound.embed.model_stage import EmbedStage
    from sleepsound.embed.preprocess import iter_epochs, iter_raw_epochs, margins
    from sleepsound.embed.transport import epoch_row, row_frames, table_rows, to_table

    prep = cfg.preprocess
    raw = prep.device == "model"
    if raw:
        epochs = list(iter_raw_epochs([audio], RATE, prep, margins(RATE, prep.target_rate)))
    else:
        epochs = list(iter_epochs([audio], RATE, prep))
    valid = np.array([e.valid for e in epochs], dtype=bool)
    stage = EmbedStage(cfg.backbone.model_dump(), preprocess=prep.model_dump())
    rate = float(RATE if raw else prep.target_rate)
    kept = [e for e in epochs if e.valid]
    n_layers = stage.backbone.n_layers if stage.backbone.layers else 0
    out: list[np.ndarray] = []
    step = stage.stream_rows
    for start in range(0, len(kept), step):
        rows = [
            epoch_row("clip-epochs", e, cfg.preprocess.epoch_seconds, cfg.preprocess.channel, rate)
            for e in kept[start : start + step]
        ]
        out += [row_frames(row, n_layers) for row in table_rows([stage(to_table(rows, raw=raw))])]
        progress("embed clip epochs", min(start + step, len(kept)), len(kept), "epochs")
    if not out:
        return np.zeros((0, 0, 0), dtype=np.float16), valid
    return np.stack(out).astype(np.float16), valid


def _cache_path(root_path: str, cfg: Config, key: str) -> str:
    from sleepsound.core.storage import join
    from sleepsound.embed.cache import embeddings_dir

    return join(embeddings_dir(root_path, cfg), "clip-epochs", f"{key}.npz")


def cached_embedding(
    root: RootLike | None, audio: np.ndarray, cfg: Config, progress: Progress = quiet
) -> tuple[np.ndarray, np.ndarray]:
    """``embed_laid`` from the root's cache when the same audio was embedded with the same preprocessing
    and backbone (the folder says which); an unreadable or altered file is embedded again (warned)."""
    if root is None:
        return embed_laid(audio, cfg, progress)
    fs, root_path = open_root(root)
    key = hashlib.sha256(f"{CACHE_VERSION}|{RATE}|{audio.shape}|".encode() + audio.tobytes()).hexdigest()[:24]
    path = _cache_path(root_path, cfg, key)
    if fs.exists(path):
        try:
            with np.load(io.BytesIO(fs.cat_file(path)), allow_pickle=False) as got:
                features, valid, digest = got["features"], got["valid"], str(got["digest"])
            if values_digest(features) == digest and features.dtype == np.float16:
                return features, valid
            problem = "its values differ from the checksum recorded when it was written"
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            problem = f"unreadable ({type(exc).__name__}: {exc})"
        log.warning("clip-epoch cache %s: %s; embedding again", path, problem)
    features, valid = embed_laid(audio, cfg, progress)
    buffer = io.BytesIO()
    np.savez(buffer, features=features, valid=valid, digest=np.array(values_digest(features)))
    write_bytes_atomic(fs, path, buffer.getvalue())
    return features, valid


def clip_frames(
    clips: Sequence[np.ndarray],
    labels: Sequence[int],
    names: Sequence[str],
    order: Sequence[int],
    cfg: Config,
    root: RootLike | None = None,
    progress: Progress = quiet,
    info: dict[str, Any] | None = None,
) -> ClipFrames:
    """Clips laid in ``order``, embedded (cached under ``root`` when given) and labelled per frame."""
    epoch_samples = int(round(cfg.preprocess.epoch_seconds * RATE))
    laid = lay_clips(clips, labels, order, epoch_samples)
    features, valid = cached_embedding(root, laid.audio, cfg, progress)
    n_frames = int(features.shape[1]) if len(features) else 1
    y, clip = frame_targets(laid, epoch_samples, n_frames)
    y, clip = y[valid], clip[valid]
    counts = {
        "epochs": int(valid.sum()),
        "invalid_epochs": int((~valid).sum()),
        "clips": len(set(order)),
        "frames": {"snoring": int((y == SNORING).sum()), "no_snoring": int((y == NOT_SNORING).sum())},
        "frames_straddling": int((y == STRADDLES).sum()),
    }
    return ClipFrames(features, y, clip, list(names), (info or {}) | counts)


def folder_clips(folder: str) -> tuple[list[np.ndarray], list[int], list[str], list[list[int]], dict[str, Any]]:
    """(clips, labels, names, groups, info) of a clip folder (``snoring/``, ``no_snoring/``; other label
    folders and unusable files are left out and counted); groups are runs of consecutive file numbers."""
    from pathlib import Path

    from sleepsound.clips.dataset import load_dataset
    from sleepsound.clips.split import blocks_of

    base = Path(folder)
    if not base.is_dir():
        raise ClipSourceError(f"training.snore_clips: {folder} is not a folder of clips (snoring/, no_snoring/)")
    ds = load_dataset(base, classes=("no_snoring", "snoring"))
    if not ds.files or len(set(ds.labels)) < 2:
        raise ClipSourceError(
            f"training.snore_clips: {folder} holds {len(ds.files)} usable clips of {sorted(set(ds.labels))}; "
            "it needs snoring/ and no_snoring/ clips"
        )
    where = {name: i for i, name in enumerate(ds.files)}
    groups: list[list[int]] = []
    for label in ("no_snoring", "snoring"):
        blocks, _ = blocks_of([f for f, lb in zip(ds.files, ds.labels, strict=True) if lb == label], 25)
        groups += [[where[f] for f in block] for block in blocks]
    clips = [ds.audio[i, : ds.lengths[i]] for i in range(len(ds.files))]
    labels = [SNORING if lb == "snoring" else NOT_SNORING for lb in ds.labels]
    info = {"source": str(folder), "rejected": len(ds.rejected)}
    return clips, labels, list(ds.files), groups, info


@lru_cache(maxsize=64)
def _generated_piece(category: str, seed: int, index: int, speech: str) -> np.ndarray:
    """One generated bedroom sound, kept per process: every training run of a process (k-fold folds,
    the flows' Ray workers, one training run after another) asks for the same first pieces again."""
    from sleepsound.synth import bedroom

    x = bedroom.background(category, seed, index, GENERATED_PIECE_S, RATE, speech)
    x.setflags(write=False)
    return x


def generated_clips(n_pieces: int, seed: int, speech: str = "auto") -> tuple[tuple[np.ndarray, ...], tuple[str, ...]]:
    """``n_pieces`` generated bedroom sounds of GENERATED_PIECE_S, the categories in turn, each at a
    level drawn as the clips' hard negatives are."""
    from sleepsound.clips.hard_negatives import LEVEL_DBFS
    from sleepsound.synth import bedroom

    level = np.random.default_rng([int(seed) & 0x7FFFFFFF, 7])
    clips, names = [], []
    for i in range(n_pieces):
        category = bedroom.CATEGORIES[i % len(bedroom.CATEGORIES)]
        index = i // len(bedroom.CATEGORIES)
        x = _generated_piece(category, seed, index, speech)
        clips.append(bedroom.at_level(x, float(level.uniform(*LEVEL_DBFS))))
        names.append(f"{GENERATED}/{category}/{index}")
    return tuple(clips), tuple(names)


def snore_clip_frames(root: RootLike, cfg: Config, n_epochs: int, progress: Progress = quiet) -> ClipFrames | None:
    """The clip epochs ``training.snore_clips`` asks for, for a training side of ``n_epochs`` night
    epochs (generated: ``training.snore_generated_share`` of them, at least one); None when it asks
    for none, no epochs (and why, in ``info``) with two microphones. A bad folder is a ValueError."""
    sources = cfg.training.snore_clips
    if not sources:
        return None
    if len(cfg.preprocess.channels()) != 1:  # a clip was heard by one microphone, not by both at once
        reason = "preprocess.channel=both: clips have one microphone"
        return ClipFrames(
            np.zeros((0, 1, 1), dtype=np.float16),
            np.zeros((0, 1), np.int8),
            np.zeros((0, 1), np.int64),
            [],
            {"skipped": reason},
        )
    parts = []
    for source in sources:
        if source == GENERATED:
            want = max(1, round(cfg.training.snore_generated_share * n_epochs))
            n_pieces = math.ceil(want * cfg.preprocess.epoch_seconds / GENERATED_PIECE_S)
            seed = cfg.training.seed + GENERATED_SEED_OFFSET
            clips, names = generated_clips(n_pieces, seed)
            info = {"source": GENERATED, "seed": seed, "pieces": n_pieces, "piece_seconds": GENERATED_PIECE_S}
            labels = [NOT_SNORING] * len(clips)
            parts.append(clip_frames(clips, labels, names, list(range(len(clips))), cfg, root, progress, info))
        else:
            clips_f, labels_f, names_f, groups, info = folder_clips(source)
            order = run_order(groups, cfg.training.seed)
            parts.append(clip_frames(clips_f, labels_f, names_f, order, cfg, root, progress, info))
    return ClipFrames.join(parts) if parts else None
