"""The paper's attention-pooling head, and the 90-s context it can be fed.

A scorer gives each frame one scalar score (Linear(D, D/2) - tanh - Linear(D/2, 1)),
softmax over time (padded frames masked out), and the weighted mean of the frames is
the segment's D-vector; two fully connected layers classify it (D -> D/2 -> classes,
768 -> 384 -> 3 for HuBERT-Base), with dropout. The weights are returned too: they are
the interpretability view (in the paper they follow inspiration and expiration).

The paper does not give the scorer's exact layout; this additive-attention form is the
usual reading of "a self-attention scorer gives each frame a weight". For D = 768 it has
about 0.59 M trainable parameters, fewer than the paper's reported 2.1 M, so the paper's
head must hold something not described (for instance a wider scorer).

Context: the 30-s configuration feeds one epoch (T frames); the 90-s one feeds the epoch
with its two neighbours concatenated along time (3T frames) and predicts the middle one.
``build_context`` builds those inputs per recording; a neighbour that does not exist
(the night's first or last epoch, or an epoch dropped as invalid) is zeros with its
frames masked out, so the head never attends to padding.

Several backbone layers (``n_layers`` > 1, input [B, T, L, D]): a learned softmax weighting
(sleepsound.models.heads.layers) first sums them to [B, T, D]; with the default 1 the head is
exactly as before (same parameters, same state dict keys).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from sleepsound.models.heads.layers import LayerWeighting, check_inputs

# Context is counted in epochs: 1 = 30 s, 3 = 90 s. Anything this long is surely a
# mistake (seconds passed for epochs), and would need context x the memory of the cache.
MAX_CONTEXT_EPOCHS = 11


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the last axis where ``mask`` is True; exactly 0 elsewhere.

    A row with no real frame at all gets all-zero weights (not NaN), so its pooled
    vector is zero and the classifier sees only its biases.
    """
    if mask is None:
        return torch.softmax(scores, dim=-1)
    mask = mask.to(torch.bool)
    scores = scores.masked_fill(~mask, float("-inf"))
    any_real = mask.any(dim=-1, keepdim=True)
    scores = torch.where(any_real, scores, torch.zeros_like(scores))
    weights = torch.softmax(scores, dim=-1)
    return torch.where(mask, weights, torch.zeros_like(weights))


def _check_inputs(x: torch.Tensor, mask: torch.Tensor | None, dim: int, n_layers: int = 1) -> None:
    check_inputs(x, mask, dim, n_layers)


class AttentionPoolingHead(nn.Module):
    """Attention pooling over frames, then D -> hidden -> n_classes (hidden = D/2 by default)."""

    kind = "attention"

    def __init__(
        self,
        dim: int,
        n_classes: int = 3,
        hidden: int | None = None,
        dropout: float = 0.1,
        scorer_hidden: int | None = None,
        n_layers: int = 1,
    ) -> None:
        super().__init__()
        if dim < 1 or n_classes < 2:
            raise ValueError(f"need dim >= 1 and n_classes >= 2, got dim={dim}, n_classes={n_classes}")
        hidden = int(hidden or max(1, dim // 2))
        scorer_hidden = int(scorer_hidden or max(1, dim // 2))
        self.dims = {
            "dim": int(dim),
            "n_classes": int(n_classes),
            "hidden": hidden,
            "dropout": float(dropout),
            "scorer_hidden": scorer_hidden,
            "n_layers": int(n_layers),
        }
        self.scorer = nn.Sequential(nn.Linear(dim, scorer_hidden), nn.Tanh(), nn.Linear(scorer_hidden, 1))
        self.classifier = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )
        # Only with several layers, so a single-layer head keeps its parameters and state dict keys.
        self.layer_mix = LayerWeighting(n_layers) if n_layers != 1 else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D] (or [B, T, L, D] with n_layers = L > 1; any float dtype), mask [B, T]
        (True = real frame) -> logits [B, C], attention weights [B, T]."""
        _check_inputs(x, mask, self.dims["dim"], self.dims["n_layers"])
        x = x.to(self.scorer[0].weight.dtype)
        if self.layer_mix is not None:
            x = self.layer_mix(x)
        if mask is not None:
            mask = mask.to(device=x.device, dtype=torch.bool)
            x = x.masked_fill(~mask.unsqueeze(-1), 0.0)  # padding can never leak, whatever it holds
        weights = masked_softmax(self.scorer(x).squeeze(-1), mask)
        pooled = torch.einsum("bt,btd->bd", weights, x)
        return self.classifier(pooled), weights


def context_indices(recording_ids: np.ndarray, epoch_index: np.ndarray, context: int) -> np.ndarray:
    """Row of each neighbour: [N, context] int64, -1 where the neighbour is absent.

    Column ``context // 2`` is the row itself. Neighbours are looked up by
    (recording_id, epoch_index + offset), so rows may come in any order and recordings
    may be interleaved; a neighbour never crosses into another recording.
    """
    if not isinstance(context, (int, np.integer)) or context < 1 or context % 2 != 1:
        raise ValueError(f"context must be an odd number of epochs (1 = 30 s, 3 = 90 s), got {context!r}")
    if context > MAX_CONTEXT_EPOCHS:
        raise ValueError(
            f"context={context} epochs is too long (max {MAX_CONTEXT_EPOCHS}); "
            "context counts epochs, not seconds: use 3 for the 90-s configuration"
        )
    recs = pd.Index(np.asarray(recording_ids)).astype(str)
    epochs = np.asarray(epoch_index).astype(np.int64)
    if len(recs) != len(epochs):
        raise ValueError(f"{len(recs)} recording ids but {len(epochs)} epoch indices")
    keys = pd.MultiIndex.from_arrays([recs, epochs])
    if keys.has_duplicates:
        dup = keys[keys.duplicated()][0]
        raise ValueError(f"duplicate epoch {dup[1]} of recording {dup[0]!r}")
    half = context // 2
    out = np.full((len(epochs), context), -1, dtype=np.int64)
    for slot, offset in enumerate(range(-half, half + 1)):
        out[:, slot] = keys.get_indexer(pd.MultiIndex.from_arrays([recs, epochs + offset]))
    return out


def build_context(
    emb: np.ndarray, recording_ids: np.ndarray, epoch_index: np.ndarray, context: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each epoch with its neighbours along time: ([N, context*T, D], mask [N, context*T]).

    Several layers per frame ([N, T, L, D]) give [N, context*T, L, D]: neighbours go along T.

    ``context`` counts epochs: 3 gives the paper's 90-s input (previous, this, next).
    Absent neighbours (the night's edges, epochs dropped as invalid, so missing from
    ``emb``) are zero frames with mask False. Row i of the output predicts row i of the
    input. ``context`` 1 returns the input unchanged with an all-True mask. The output
    keeps ``emb``'s dtype and takes ``context`` times its memory.
    """
    emb = np.asarray(emb)
    if emb.ndim not in (3, 4):
        raise ValueError(f"expected embeddings [N, T, D] or [N, T, L, D], got shape {emb.shape}")
    n, t = emb.shape[:2]
    idx = context_indices(recording_ids, epoch_index, context)
    if len(idx) != n:
        raise ValueError(f"{n} embedding rows but {len(idx)} recording ids / epoch indices")
    if context == 1:
        return emb, np.ones((n, t), dtype=bool)
    out = np.zeros((n, context * t, *emb.shape[2:]), dtype=emb.dtype)
    mask = np.zeros((n, context * t), dtype=bool)
    for slot in range(context):
        present = idx[:, slot] >= 0
        out[present, slot * t : (slot + 1) * t] = emb[idx[present, slot]]
        mask[present, slot * t : (slot + 1) * t] = True
    return out, mask
