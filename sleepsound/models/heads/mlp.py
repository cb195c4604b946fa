"""Mean-pooling MLP head: the tutorial detector's design (D -> 128 -> classes, ReLU, dropout 0.3).

Same interface as the attention head: ``forward(x, mask) -> (logits, weights)``, where
the weights are the uniform pooling weights over the real frames (0 on padding). With
``n_layers`` > 1 it takes [B, T, L, D] and learns a layer weighting first (heads.layers).
"""

from __future__ import annotations

import torch
from torch import nn

from sleepsound.models.heads.attention import _check_inputs
from sleepsound.models.heads.layers import LayerWeighting


class MeanPoolingHead(nn.Module):
    kind = "mlp"

    def __init__(
        self, dim: int, n_classes: int = 3, hidden: int = 128, dropout: float = 0.3, n_layers: int = 1
    ) -> None:
        super().__init__()
        if dim < 1 or n_classes < 2:
            raise ValueError(f"need dim >= 1 and n_classes >= 2, got dim={dim}, n_classes={n_classes}")
        self.dims = {
            "dim": int(dim),
            "n_classes": int(n_classes),
            "hidden": int(hidden),
            "dropout": float(dropout),
            "n_layers": int(n_layers),
        }
        self.classifier = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )
        self.layer_mix = LayerWeighting(n_layers) if n_layers != 1 else None  # none: state dict as before

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D] (or [B, T, L, D] with n_layers = L > 1), mask [B, T] (True = real frame)
        -> logits [B, C], weights [B, T]."""
        _check_inputs(x, mask, self.dims["dim"], self.dims["n_layers"])
        x = x.to(self.classifier[0].weight.dtype)
        if self.layer_mix is not None:
            x = self.layer_mix(x)
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        real = mask.to(device=x.device, dtype=x.dtype)
        weights = real / real.sum(dim=1, keepdim=True).clamp(min=1.0)
        pooled = torch.einsum("bt,btd->bd", weights, x.masked_fill(real.unsqueeze(-1) == 0, 0.0))
        return self.classifier(pooled), weights
