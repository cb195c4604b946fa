"""Short-window breathing-sound classifier (``sleepsound clips``).

A folder dataset whose sub-folders name the labels (``DIR/snoring/*.wav``,
``DIR/no_snoring/*.wav``), embedded by a frozen speech backbone and classified by a small
head. Modules: :mod:`.dataset` (discovery, loading, the fixed-length policy), :mod:`.split`
(block-wise held-out split, because neighbouring clips share a source recording),
:mod:`.features` (backbone embedding and pooling, identical at training and prediction),
:mod:`.train` (settings chosen by validation on the training side only), :mod:`.cross_validate`
(the whole procedure over folds of whole blocks: accuracy on unseen source recordings), :mod:`.evaluate`
and :mod:`.cli`.
"""

from __future__ import annotations

from sleepsound.clips.dataset import ClipDataset, Rejected, load_dataset
from sleepsound.clips.split import BlockSplit, block_split

__all__ = ["BlockSplit", "ClipDataset", "Rejected", "block_split", "load_dataset"]
