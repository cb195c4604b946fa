"""A per-frame head: one label per pooled frame (0.5 s) of an epoch, from that frame and a few neighbours.

Snoring comes and goes with the breath (a snore every 3-5 s, about a second long), so an epoch
label hides where in the 30 s it is. The cache already holds the epoch's frame embeddings; this
head reads them directly: an optional learned layer weighting (heads.layers), a LayerNorm, one
1-D convolution over ``kernel_size`` neighbouring frames (the context: +-1 s at 5 frames of
0.5 s), ReLU, dropout and a per-frame linear layer to the classes. Frames beyond the epoch's
edges are zeros, so a frame's output depends on its own epoch only: the bedside service, which
embeds epoch by epoch, gets the batch scoring's values exactly.

``forward(x) -> logits [B, T, C]``; x is [B, T, D] or [B, T, L, D] with ``n_layers`` = L > 1.
"""

from __future__ import annotations

import torch
from torch import nn

from sleepsound.models.heads.layers import LayerWeighting, check_inputs


class FrameHead(nn.Module):
    kind = "frames"

    def __init__(
        self,
        dim: int,
        n_classes: int = 2,
        hidden: int = 32,
        kernel_size: int = 5,
        dropout: float = 0.1,
        n_layers: int = 1,
    ) -> None:
        super().__init__()
        if dim < 1 or n_classes < 2 or kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(
                f"need dim >= 1, n_classes >= 2 and an odd kernel_size, got {dim}, {n_classes}, {kernel_size}"
            )
        self.dims = {
            "dim": int(dim),
            "n_classes": int(n_classes),
            "hidden": int(hidden),
            "kernel_size": int(kernel_size),
            "dropout": float(dropout),
            "n_layers": int(n_layers),
        }
        self.layer_mix = LayerWeighting(n_layers) if n_layers != 1 else None
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, hidden, kernel_size, padding=kernel_size // 2)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, T, D] (or [B, T, L, D]) -> per-frame logits [B, T, C]."""
        check_inputs(x, None, self.dims["dim"], self.dims["n_layers"])
        x = x.to(self.out.weight.dtype)
        if self.layer_mix is not None:
            x = self.layer_mix(x)
        h = torch.relu(self.conv(self.norm(x).transpose(1, 2))).transpose(1, 2)
        return self.out(self.drop(h))
