"""The paper's attention view: a held-out epoch's Mel spectrogram over the head's frame weights.

Examples are the test nights' most confident correct stage3 predictions, one per stage as
far as they go, so the view shows what the head attends to when it is right. The audio is
re-read from the source for just those epochs (the stream stops after the last one needed)
and only its 64-band log-Mel spectrogram reaches the report, never the samples.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from sleepsound.core.config import Config
from sleepsound.embed.epochs import read_epochs
from sleepsound.report.figures import attention_figure

MEL_BANDS = 64
N_FFT, HOP = 400, 160  # 25 ms windows, 10 ms hop at 16 kHz


def log_mel(audio: np.ndarray, sample_rate: int = 16_000) -> np.ndarray:
    """[n_mels, frames] log-Mel power in dB of a mono float32 segment (transformers' audio utils)."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    filters = mel_filter_bank(
        num_frequency_bins=N_FFT // 2 + 1,
        num_mel_filters=MEL_BANDS,
        min_frequency=0.0,
        max_frequency=sample_rate / 2,
        sampling_rate=sample_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return spectrogram(
        np.asarray(audio, dtype=np.float32),
        window_function(N_FFT, "hann"),
        frame_length=N_FFT,
        hop_length=HOP,
        power=2.0,
        mel_filters=filters,
        log_mel="dB",
        db_range=80.0,
    ).astype(np.float32)


def pick_examples(preds: pd.DataFrame, n: int) -> pd.DataFrame:
    """Up to ``n`` confident correct test epochs, cycling through the stages."""
    if n <= 0 or "attention" not in preds:
        return preds.iloc[:0]
    right = preds[
        (preds["split"] == "test") & (preds["stage_pred"] == preds["stage_true"]) & preds["attention"].notna()
    ].copy()
    if right.empty:
        return right
    right["confidence"] = right[["prob_wake", "prob_nrem", "prob_rem"]].max(axis=1)
    ranked = right.sort_values("confidence", ascending=False)
    groups = [g for _, g in ranked.groupby("stage_true", sort=True)]
    chosen = []
    for rank in range(n):
        for group in groups:
            if len(chosen) < n and rank < len(group):
                chosen.append(group.iloc[rank])
    return pd.DataFrame(chosen)


def attention_views(preds: pd.DataFrame, manifest_rows: list[dict[str, Any]], cfg: Config, n: int) -> list[str]:
    """<img> tags of the attention view for up to ``n`` example epochs (``manifest_rows``: read_manifest_rows)."""
    examples = pick_examples(preds, n)
    by_id = {str(r["recording_id"]): r for r in manifest_rows}
    views = []
    context = cfg.training.context_epochs
    epoch_s = cfg.preprocess.epoch_seconds
    for example in examples.itertuples(index=False):
        row = by_id.get(str(example.recording_id))
        if row is None:
            continue
        index = int(example.epoch_index)
        first = index - (context // 2)
        wanted = set(range(first, first + context))
        audio: dict[int, np.ndarray] = {}
        for out in read_epochs(row, cfg.preprocess, epochs=True):
            if out.get("error"):
                break
            i = int(out["epoch_index"])
            if out.get("kind", "epoch") == "epoch" and i in wanted and out["valid"]:
                audio[i] = np.asarray(out["audio"], dtype=np.float32)
            if i > max(wanted):
                break
        if index not in audio:
            continue
        length = len(audio[index])
        segment = np.concatenate([audio.get(i, np.zeros(length, dtype=np.float32)) for i in sorted(wanted)])
        mel = log_mel(segment, cfg.preprocess.target_rate)
        weights = np.asarray(example.attention, dtype=np.float32)
        weight_s = context * epoch_s / len(weights)
        mask = np.repeat([i in audio for i in sorted(wanted)], len(weights) // context)
        centre = ((index - first) * epoch_s, (index - first + 1) * epoch_s)
        title = (
            f"{example.recording_id} epoch {index}: scored {example.stage_true}, predicted "
            f"{example.stage_pred} ({example.confidence:.2f})"
        )
        views.append(
            attention_figure(
                mel, HOP / cfg.preprocess.target_rate, weights, weight_s, title=title, centre=centre, mask=mask
            )
        )
    return views
