"""Preprocessing on the model's device (preprocess.device: model), checked against the CPU path it
stands in for: the resampler against soxr's HQ, the truncated high-pass against the recursive
biquad, whole epochs with margins against the streamed night, and the raw epochs the readers cut."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
import torch

from sleepsound.core.config import PreprocessConfig
from sleepsound.embed.preprocess import StreamingFilter, iter_epochs, iter_raw_epochs, margins, normalise
from sleepsound.embed.preprocess_torch import TorchPreprocess

CFG = PreprocessConfig()


def _noise(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """White noise plus a tone and a hum: energy everywhere a resampler or a high-pass can differ."""
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(seed)
    return (
        0.1 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.sin(2 * np.pi * 30 * t)
    ).astype(np.float32)


def _relative_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)) / np.std(b))


@pytest.mark.parametrize("rate", [48_000, 44_100])
def test_the_resampler_is_within_two_percent_of_soxr_hq_on_white_noise(rate):
    x = _noise(rate, 12.0)
    reference = soxr.resample(x, rate, 16_000, quality="HQ")
    segment = x[rate * 2 : rate * 10]  # away from both ends, where soxr has its whole history
    ours = TorchPreprocess(CFG).resample(torch.from_numpy(segment)[None], rate)[0].numpy()
    assert len(ours) == 8 * 16_000
    assert _relative_rms(ours[400:-400], reference[32_000 + 400 : 160_000 - 400]) < 0.02


def test_the_truncated_high_pass_and_pre_emphasis_equal_the_recursive_ones():
    x = _noise(16_000, 70.0)
    streamed = StreamingFilter(16_000, CFG)
    whole = np.concatenate([streamed.process(x[i : i + 16_000]) for i in range(0, len(x), 16_000)])
    before, after = margins(16_000, 16_000)
    epoch = 480_000
    raw = x[epoch - before : 2 * epoch + after]
    ours = TorchPreprocess(CFG)(torch.from_numpy(raw)[None], 16_000)[0].numpy()
    np.testing.assert_allclose(ours, whole[epoch : 2 * epoch], atol=1e-5)


@pytest.mark.parametrize("rate", [48_000, 44_100])
def test_an_epoch_with_margins_matches_the_streamed_night(rate):
    """The measured difference the README states: about 1.5% RMS on broadband noise (the worst case;
    breathing sounds sit well below the resamplers' cut-offs), nothing from the epoch's edges."""
    x = _noise(rate, 95.0, seed=1)
    streamed = StreamingFilter(rate, CFG)
    whole = np.concatenate(
        [streamed.process(x[i : i + rate]) for i in range(0, len(x), rate)]
        + [streamed.process(np.zeros(0, np.float32), last=True)]
    )
    before, after = margins(rate, 16_000)
    raw_epoch = 30 * rate
    raw = np.stack([x[i * raw_epoch - before : (i + 1) * raw_epoch + after] for i in (1, 2)])
    ours = TorchPreprocess(CFG)(torch.from_numpy(raw), rate).numpy()
    for row, i in zip(ours, (1, 2), strict=True):
        reference = normalise(whole[i * 480_000 : (i + 1) * 480_000])
        assert _relative_rms(normalise(row), reference) < 0.03
        edges = np.abs(normalise(row) - reference)
        assert edges[:4_800].max() < 0.2 and edges[-4_800:].max() < 0.2  # no start-up or cut-off transient


def test_raw_epochs_carry_the_samples_around_them_and_the_same_quality():
    rate = 48_000
    x = _noise(rate, 5 * 30.0 + 7.0, seed=2)  # five epochs and a partial one
    x[int(2.5 * 30 * rate) : int(2.5 * 30 * rate) + 100] = np.nan  # epoch 2 invalid
    before, after = margins(rate, 16_000)
    raw_epoch = 30 * rate
    blocks = [x[i : i + 2 * raw_epoch] for i in range(0, len(x), 2 * raw_epoch)]
    filtered = list(iter_epochs(blocks, rate, CFG, shift_after={0, 3}))
    raw = list(iter_raw_epochs(blocks, rate, CFG, (before, after), shift_after={0, 3}))
    assert [(e.index, e.offset_s, e.valid) for e in raw] == [(e.index, e.offset_s, e.valid) for e in filtered]
    clean = np.nan_to_num(x, nan=0.0)
    padded = np.concatenate([np.zeros(before, np.float32), clean, np.zeros(raw_epoch + after, np.float32)])
    for e in raw:
        start = e.index * raw_epoch + (raw_epoch // 2 if e.offset_s else 0)
        assert len(e.audio) == before + raw_epoch + after
        np.testing.assert_array_equal(e.audio, padded[start : start + before + raw_epoch + after])
    assert [e.quality for e in raw if not e.offset_s] == [e.quality for e in filtered if not e.offset_s]
