"""Block-wise held-out split for clip datasets cut from longer recordings.

Why: in clip datasets such as Khan's snoring set (``snoring/1_0.wav``, ``1_1.wav``, ...)
clips with neighbouring indices are consecutive pieces of one source recording, so a
random clip-level split puts near-duplicates on both sides and flatters the test score.

Policy, per label: sort the files by their numeric index (the last integer in the file
stem; name order when any file has none), cut the sequence into blocks of at most
``block_size`` consecutive clips, starting a new block wherever the index jumps (a gap in
the numbering marks another source recording, as in the shared half of Khan's set, whose
files come in runs of 25), and send ``round(test_fraction * n_blocks)`` whole
blocks (at least 1 and at most n_blocks - 1 when test_fraction > 0) to the test side,
chosen by a generator seeded with (seed, label). Only the two clips either side of a
block boundary can still be neighbours across the split.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np

_LAST_INT = re.compile(r"(\d+)(?!.*\d)")


def file_index(name: str) -> int | None:
    """The last integer in the file stem (``1_17.wav`` -> 17), or None."""
    match = _LAST_INT.search(PurePosixPath(name).stem)
    return int(match.group(1)) if match else None


def ordered(files: Sequence[str]) -> tuple[list[str], str]:
    """Files in recording order and how they were ordered ('numeric index' or 'name')."""
    indices = [file_index(f) for f in files]
    if files and all(i is not None for i in indices):
        return [f for _, f in sorted(zip(indices, files, strict=False), key=lambda t: (t[0], t[1]))], "numeric index"
    return sorted(files), "name"


@dataclass
class BlockSplit:
    """Train and test files (root-relative) and the blocks behind them."""

    train: list[str]
    test: list[str]
    block_size: int
    test_fraction: float
    seed: int
    blocks: dict[str, list[list[str]]] = field(default_factory=dict)  # label -> blocks in order
    test_blocks: dict[str, list[int]] = field(default_factory=dict)  # label -> held-out block numbers
    order: dict[str, str] = field(default_factory=dict)  # label -> ordering used

    def describe(self) -> dict[str, Any]:
        """JSON-able summary recorded with the model."""
        return {
            "kind": "block",
            "block_size": self.block_size,
            "test_fraction": self.test_fraction,
            "seed": self.seed,
            "order": self.order,
            "n_blocks": {k: len(v) for k, v in self.blocks.items()},
            "test_blocks": self.test_blocks,
            "n_train": len(self.train),
            "n_test": len(self.test),
        }


def blocks_of(files: Sequence[str], block_size: int) -> tuple[list[list[str]], str]:
    """Consecutive runs of clips, cut at index gaps and every ``block_size`` clips; and the ordering used."""
    files, how = ordered(list(files))
    blocks: list[list[str]] = []
    previous: int | None = None
    for name in files:
        index = file_index(name) if how == "numeric index" else None
        gap = index is not None and previous is not None and index != previous + 1
        if not blocks or gap or len(blocks[-1]) >= block_size:
            blocks.append([])
        blocks[-1].append(name)
        previous = index
    return blocks, how


def _n_test(n_blocks: int, test_fraction: float, label: str) -> int:
    if test_fraction <= 0:
        return 0
    if n_blocks < 2:
        raise ValueError(
            f"label {label!r} has {n_blocks} block(s) of consecutive clips: cannot hold out whole "
            "blocks; lower --block-size, add clips, or train on everything with --test-fraction 0"
        )
    return int(min(n_blocks - 1, max(1, round(test_fraction * n_blocks))))


def block_split(
    files_by_label: Mapping[str, Sequence[str]], *, block_size: int = 25, test_fraction: float = 0.2, seed: int = 0
) -> BlockSplit:
    """Assign whole blocks of consecutive clips to test, per label (see the module docstring)."""
    if block_size < 1:
        raise ValueError("block_size must be >= 1")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    split = BlockSplit([], [], block_size, test_fraction, seed)
    for label in sorted(files_by_label):
        blocks, how = blocks_of(files_by_label[label], block_size)
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        chosen = sorted(
            int(b) for b in rng.choice(len(blocks), size=_n_test(len(blocks), test_fraction, label), replace=False)
        )
        split.blocks[label], split.test_blocks[label], split.order[label] = blocks, chosen, how
        for number, block in enumerate(blocks):
            (split.test if number in chosen else split.train).extend(block)
    return split


def group_by_label(files: Sequence[str], labels: Sequence[str]) -> dict[str, list[str]]:
    """{label: [files]} from parallel lists."""
    out: dict[str, list[str]] = {}
    for f, label in zip(files, labels, strict=False):
        out.setdefault(label, []).append(f)
    return out


def block_folds(
    files_by_label: Mapping[str, Sequence[str]], *, block_size: int = 25, k: int = 5, seed: int = 0
) -> list[list[str]]:
    """k validation folds of whole blocks (per label, blocks shuffled by (seed, label), dealt round-robin).

    Why: one small validation split of an easy dataset scores many settings at 100% and
    cannot tell them apart; every training block validated once gives a steadier choice.
    """
    if k < 2:
        raise ValueError(f"need k >= 2 folds, got {k}")
    by_label = {label: blocks_of(files_by_label[label], block_size)[0] for label in sorted(files_by_label)}
    for label, blocks in by_label.items():  # before any per-fold list exists: a huge k allocated without bound
        if len(blocks) < k:
            raise ValueError(
                f"label {label!r} has {len(blocks)} blocks, fewer than {k} folds; "
                "lower --block-size or the number of folds"
            )
    folds: list[list[str]] = [[] for _ in range(k)]
    for label, blocks in by_label.items():
        rng = np.random.default_rng([seed, zlib.crc32(label.encode()), k])
        for n, b in enumerate(rng.permutation(len(blocks))):
            folds[n % k].extend(blocks[int(b)])
    return folds
