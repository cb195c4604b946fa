"""Tiny random backbones of each family, saved like real ones, for tests and quick demos.

They are written with ``save_pretrained(safe_serialization=True)`` (config.json +
model.safetensors + preprocessor_config.json) and so go through exactly the loading path of
a real local model folder: tests exercise the registry, not a shortcut around it. The
Whisper one keeps the real 80 Mel bands and the 1500-position (30-s) window, because
transformers' ``WhisperEncoder`` insists on exactly ``2 * max_source_positions`` Mel frames:
fewer positions would make 30-s epochs invalid input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch

Family = Literal["whisper", "hubert", "wav2vec2", "wavlm"]
TINY_DIM = 32
TINY_LAYERS = 2


def tiny_config(family: Family, **overrides: Any) -> Any:
    """The transformers config of a 2-layer, 32-wide, 2-head model of ``family``."""
    from transformers import HubertConfig, Wav2Vec2Config, WavLMConfig, WhisperConfig

    if family == "whisper":
        base = dict(
            d_model=TINY_DIM,
            encoder_layers=TINY_LAYERS,
            encoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_layers=1,
            decoder_attention_heads=2,
            decoder_ffn_dim=64,
            num_mel_bins=80,
            max_source_positions=1500,
            max_target_positions=8,
            vocab_size=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
            begin_suppress_tokens=None,
            suppress_tokens=None,
        )
        return WhisperConfig(**{**base, **overrides})
    classes = {"hubert": HubertConfig, "wav2vec2": Wav2Vec2Config, "wavlm": WavLMConfig}
    if family not in classes:
        raise ValueError(f"unknown family {family!r}; choose whisper, hubert, wav2vec2 or wavlm")
    base = dict(
        hidden_size=TINY_DIM,
        num_hidden_layers=TINY_LAYERS,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        vocab_size=32,
        proj_codevector_dim=16,
        codevector_dim=16,
        classifier_proj_size=16,
        tdnn_dim=(16,) * 5,
        xvector_output_dim=16,
    )
    return classes[family](**{**base, **overrides})


def save_tiny_random_backbone(family: Family, out_dir: Path, seed: int = 0, **config_overrides: Any) -> Path:
    """Write a tiny random model of ``family`` to ``out_dir`` (safetensors, no pickles) and return the folder.

    The result loads with ``load_backbone(str(out_dir))``. ``config_overrides`` change the
    config (e.g. ``do_stable_layer_norm=True`` for the large-model layout of the waveform families).
    """
    from transformers import AutoModel, Wav2Vec2FeatureExtractor, WhisperFeatureExtractor, WhisperModel

    out_dir = Path(out_dir)
    config = tiny_config(family, **config_overrides)
    torch.manual_seed(seed)
    if family == "whisper":
        model = WhisperModel(config)
        extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=16_000)
    else:
        model = AutoModel.from_config(config)
        extractor = Wav2Vec2FeatureExtractor(
            feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True, return_attention_mask=False
        )
    with torch.no_grad():  # a less degenerate random init than transformers' defaults (tiny std)
        generator = torch.Generator().manual_seed(seed)
        for param in model.parameters():
            if param.dim() > 1:
                param.copy_(torch.randn(param.shape, generator=generator) / param.shape[1:].numel() ** 0.5)
    model.save_pretrained(out_dir, safe_serialization=True)
    extractor.save_pretrained(out_dir)
    return out_dir
