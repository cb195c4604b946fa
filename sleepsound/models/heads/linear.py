"""A linear head on pooled statistics: every layer's mean and standard deviation over the real frames,
standardised, then one linear layer (L2-regularised logistic regression, fitted in closed form by
scikit-learn rather than by gradient steps).

Why: a short clip gives few examples per source recording, and the flexible heads (an MLP or attention
over frames) learnt the source recordings they heard: on the Khan half's blocked cross-validation the
linear head on mean and spread of all four Whisper layers called the worst unseen no-snore category
snoring 1-2 times in 25 where the selected MLP called it 5-8 times (README, "Short clips"). The
standardisation is part of the head (buffers saved with its weights), so a saved model replays it.

Same interface as the other heads: ``forward(x, mask) -> (logits, weights)``, the weights uniform
over the real frames.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sleepsound.models.heads.attention import _check_inputs


class StatsLinearHead(nn.Module):
    kind = "linear"

    def __init__(self, dim: int, n_classes: int = 2, n_layers: int = 1) -> None:
        super().__init__()
        if dim < 1 or n_classes < 2 or n_layers < 1:
            raise ValueError(f"need dim >= 1, n_classes >= 2, n_layers >= 1, got {dim}, {n_classes}, {n_layers}")
        self.dims = {"dim": int(dim), "n_classes": int(n_classes), "n_layers": int(n_layers)}
        width = 2 * n_layers * dim
        self.register_buffer("center", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))
        self.classifier = nn.Linear(width, n_classes)

    def pooled(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D] or [B, T, L, D], mask [B, T] -> ([B, 2 * L * D] means then standard deviations of
        every layer over the real frames, uniform weights [B, T])."""
        _check_inputs(x, mask, self.dims["dim"], self.dims["n_layers"])
        x = x.to(torch.float32)
        if x.ndim == 3:
            x = x.unsqueeze(2)
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        real = mask.to(device=x.device, dtype=x.dtype)
        weights = real / real.sum(dim=1, keepdim=True).clamp(min=1.0)
        x = x.masked_fill(real[:, :, None, None] == 0, 0.0)
        mean = torch.einsum("bt,btld->bld", weights, x)
        spread = torch.einsum("bt,btld->bld", weights, (x - mean.unsqueeze(1)) ** 2)
        spread = spread.clamp(min=0.0).sqrt()
        return torch.cat([mean.flatten(1), spread.flatten(1)], dim=1), weights

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D] (or [B, T, L, D] with n_layers = L > 1), mask [B, T] (True = real frame)
        -> logits [B, C], weights [B, T]."""
        features, weights = self.pooled(x, mask)
        # a scale of 0 (a constant feature, or a tampered file) must not divide by zero
        standard = (features - self.center) / self.scale.clamp(min=1e-6)
        return self.classifier(standard), weights


def fit_stats_linear(
    x: np.ndarray, y: np.ndarray, mask: np.ndarray, n_classes: int, c: float, max_iter: int = 5000
) -> StatsLinearHead:
    """A ``StatsLinearHead`` fitted on clips ``x`` ([N, T, D] or [N, T, L, D]) with class indices ``y``:
    the pooled statistics standardised on these clips, then L2-regularised logistic regression with
    inverse strength ``c`` (scikit-learn's lbfgs, which finds the one optimum; no epochs, no seed)."""
    from sklearn.linear_model import LogisticRegression

    dim, n_layers = int(x.shape[-1]), 1 if x.ndim == 3 else int(x.shape[2])
    head = StatsLinearHead(dim, n_classes, n_layers)
    with torch.no_grad():
        features = head.pooled(torch.from_numpy(np.asarray(x)), torch.from_numpy(np.asarray(mask)))[0].numpy()
    center = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-6] = 1.0  # a constant feature carries nothing: leave it unscaled
    present = np.unique(y)
    if len(present) < 2:
        raise ValueError(f"a linear head needs clips of at least 2 classes, got only class {present.tolist()}")
    model = LogisticRegression(C=c, max_iter=max_iter).fit((features - center) / scale, y)
    weight = np.zeros((n_classes, features.shape[1]), dtype=np.float64)
    bias = np.zeros(n_classes, dtype=np.float64)
    if len(model.classes_) == 2:  # one logit z: softmax of (-z/2, z/2) is the sigmoid of z
        weight[model.classes_[0]], weight[model.classes_[1]] = -model.coef_[0] / 2, model.coef_[0] / 2
        bias[model.classes_[0]], bias[model.classes_[1]] = -model.intercept_[0] / 2, model.intercept_[0] / 2
    else:
        weight[model.classes_] = model.coef_
        bias[model.classes_] = model.intercept_
    absent = np.setdiff1d(np.arange(n_classes), model.classes_)
    bias[absent] = -1e4  # a class with no training clip is never predicted
    with torch.no_grad():
        head.center.copy_(torch.from_numpy(center))
        head.scale.copy_(torch.from_numpy(scale))
        head.classifier.weight.copy_(torch.from_numpy(weight))
        head.classifier.bias.copy_(torch.from_numpy(bias))
    return head.eval()
