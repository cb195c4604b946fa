"""A learned weighting of several backbone layers, as in SUPERB.

Which hidden layer of a frozen speech model carries breathing and sleep cues is not
known in advance (SUPERB found it differs by task), so with ``backbone.layers`` the cache
keeps several and the head learns one scalar per layer: softmax over the scalars (all
equal at the start, so the head begins from the plain mean), and the weighted sum of the
layers is the [B, T, D] input of the head's usual pooling. The softmaxed weights are
saved with the model, so a user can see which layers it relies on.
"""

from __future__ import annotations

import torch
from torch import nn

# More hidden states than any released speech model has (the largest hold ~49); the bound
# keeps a tampered config from asking for something absurd.
MAX_LAYERS = 128


class LayerWeighting(nn.Module):
    """[B, T, L, D] -> [B, T, D]: softmax(logits) over L, weighted sum along L."""

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        if not 2 <= n_layers <= MAX_LAYERS:
            raise ValueError(f"a layer weighting needs 2..{MAX_LAYERS} layers, got {n_layers}")
        self.logits = nn.Parameter(torch.zeros(n_layers))  # equal weights to start

    def weights(self) -> torch.Tensor:
        """The layer weights [L], non-negative, summing to 1."""
        return torch.softmax(self.logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("l,btld->btd", self.weights().to(x.dtype), x)


def check_inputs(x: torch.Tensor, mask: torch.Tensor | None, dim: int, n_layers: int) -> None:
    """A head built for one layer takes [B, T, D]; one built for L > 1 layers takes [B, T, L, D]."""
    want = f"[batch, frames, {dim}]" if n_layers == 1 else f"[batch, frames, {n_layers}, {dim}]"
    ok = x.ndim == 3 if n_layers == 1 else x.ndim == 4 and x.shape[2] == n_layers
    if not ok or x.shape[-1] != dim:
        hint = ""
        if n_layers == 1 and x.ndim == 4:
            hint = " (several backbone layers: build the head with n_layers=x.shape[2])"
        elif n_layers > 1 and x.ndim == 3:
            hint = f" (this head weighs {n_layers} backbone layers: feed features from backbone.layers)"
        raise ValueError(f"expected x of shape {want}, got {tuple(x.shape)}{hint}")
    if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match x's [batch, frames] {tuple(x.shape[:2])}")


def layer_weights(head: nn.Module) -> list[float] | None:
    """A head's softmaxed layer weights as plain floats, or None for a single-layer head."""
    mix = getattr(head, "layer_mix", None)
    if mix is None:
        return None
    with torch.no_grad():
        return [float(w) for w in mix.weights().cpu()]
