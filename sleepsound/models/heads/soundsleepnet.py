"""A SoundSleepNet-style head: CNN encoder, two BiLSTM layers, two Transformer layers, mean pooling.

The baseline of method.md (Hong et al. 2022: CNN encoders on Mel spectrograms, two BiLSTM
layers, two Transformer layers), sized to train on a CPU and fed the pooled log-Mel frames
of ``sleepsound.models.backbones.mel`` through the same cache, trainer and context as the
speech-model heads. With a speech backbone's frames it works too (any ``dim``).

Layout for x [B, T, D] (the D Mel bands as channels, time as the sequence):

* ``conv_blocks`` x (Conv1d over time, ``kernel_size``, stride 1 -> GELU -> LayerNorm over
  channels -> dropout); LayerNorm, not BatchNorm, so no statistic ever mixes frames, or
  real frames with padding;
* two bidirectional LSTM layers (``lstm_hidden`` per direction), run packed;
* two ``nn.TransformerEncoderLayer`` (d_model = 2 x ``lstm_hidden``, ``n_heads``,
  ``ff_dim``), batch first, padding as the key padding mask;
* masked mean over the real frames, dropout, one linear layer to the classes.

Padding: each row's real frames are first gathered to its front, in order, and the
sequence trimmed to the longest row, so padding (wherever the mask puts it: a 90-s
context may lack its first or last epoch) is never convolved, recurred over or attended
to, whatever it holds. The pooling weights go back to the input frame positions: 1/n on
the n real frames, 0 elsewhere; a row with no real frame gets all-zero weights and the
classifier's bias alone, as the attention head does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from sleepsound.models.heads.layers import LayerWeighting, check_inputs

LSTM_LAYERS = 2
TRANSFORMER_LAYERS = 2


class _ConvBlock(nn.Module):
    """Conv1d over time (same length) -> GELU -> LayerNorm over channels -> dropout; [B, T, C] in and out."""

    def __init__(self, channels_in: int, channels_out: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels_in, channels_out, kernel_size, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(channels_out)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """x [B, T, C_in], real [B, T, 1] float (1 = real frame) -> [B, T, C_out], padding zeroed
        again so the next convolution sees zeros there, as at the sequence's own ends."""
        y = nn.functional.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.drop(self.norm(y)) * real


class SoundSleepNetHead(nn.Module):
    """CNN -> 2 x BiLSTM -> 2 x Transformer -> masked mean -> linear (see module docstring)."""

    kind = "soundsleepnet"

    def __init__(
        self,
        dim: int,
        n_classes: int = 3,
        conv_channels: int = 64,
        conv_blocks: int = 3,
        kernel_size: int = 5,
        lstm_hidden: int = 64,
        n_heads: int = 4,
        ff_dim: int = 256,
        dropout: float = 0.1,
        n_layers: int = 1,
    ) -> None:
        super().__init__()
        if dim < 1 or n_classes < 2:
            raise ValueError(f"need dim >= 1 and n_classes >= 2, got dim={dim}, n_classes={n_classes}")
        if min(conv_channels, conv_blocks, lstm_hidden, n_heads, ff_dim) < 1:
            raise ValueError("conv_channels, conv_blocks, lstm_hidden, n_heads and ff_dim must be >= 1")
        if kernel_size < 1 or kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (the convolutions keep the frame count), got {kernel_size}")
        d_model = 2 * lstm_hidden
        if d_model % n_heads:
            raise ValueError(f"n_heads={n_heads} must divide the Transformer width 2 x lstm_hidden = {d_model}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dims = {
            "dim": int(dim),
            "n_classes": int(n_classes),
            "conv_channels": int(conv_channels),
            "conv_blocks": int(conv_blocks),
            "kernel_size": int(kernel_size),
            "lstm_hidden": int(lstm_hidden),
            "n_heads": int(n_heads),
            "ff_dim": int(ff_dim),
            "dropout": float(dropout),
            "n_layers": int(n_layers),
        }
        widths = [dim] + [conv_channels] * conv_blocks
        self.encoder = nn.ModuleList(
            _ConvBlock(a, b, kernel_size, dropout) for a, b in zip(widths, widths[1:], strict=False)
        )
        self.lstm = nn.LSTM(
            conv_channels, lstm_hidden, num_layers=LSTM_LAYERS, batch_first=True, bidirectional=True, dropout=dropout
        )
        self.transformer = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, n_heads, ff_dim, dropout, activation="gelu", batch_first=True)
            for _ in range(TRANSFORMER_LAYERS)
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, n_classes))
        self.layer_mix = LayerWeighting(n_layers) if n_layers != 1 else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, D] (or [B, T, L, D] with n_layers = L > 1; any float dtype), mask [B, T]
        (True = real frame) -> logits [B, C], pooling weights [B, T]."""
        check_inputs(x, mask, self.dims["dim"], self.dims["n_layers"])
        x = x.to(self.classifier[1].weight.dtype)
        if self.layer_mix is not None:
            x = self.layer_mix(x)
        b, t = x.shape[:2]
        mask = (
            torch.ones(b, t, dtype=torch.bool, device=x.device)
            if mask is None
            else mask.to(device=x.device, dtype=torch.bool)
        )
        lengths = mask.sum(dim=1)
        # Real frames to the front, in their order (a stable sort of "is padding"), then trim.
        order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
        width = max(1, int(lengths.max()) if b else 1)
        order = order[:, :width]
        packed_mask = torch.arange(width, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        h = torch.gather(x, 1, order.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        real = packed_mask.unsqueeze(-1).to(h.dtype)
        h = h * real  # padding holds zeros, whatever it held on input
        for block in self.encoder:
            h = block(h, real)
        # A row with no real frame runs on one zero frame (an empty sequence would break the
        # LSTM and give the attention nothing to attend to); its pooling weights stay 0.
        run_lengths = lengths.clamp(min=1)
        run_mask = packed_mask | (torch.arange(width, device=x.device) == 0).unsqueeze(0)
        packed = pack_padded_sequence(h, run_lengths.cpu(), batch_first=True, enforce_sorted=False)
        h, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=width)
        for layer in self.transformer:
            h = layer(h, src_key_padding_mask=~run_mask)
        packed_weights = packed_mask.to(h.dtype) / lengths.clamp(min=1).unsqueeze(1).to(h.dtype)
        pooled = torch.einsum("bt,btd->bd", packed_weights, torch.nan_to_num(h) * real)
        weights = torch.zeros(b, t, dtype=h.dtype, device=x.device).scatter(1, order, packed_weights)
        return self.classifier(pooled), weights
