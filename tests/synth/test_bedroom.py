"""Generated bedroom hard negatives: deterministic, finite, the right length, in their bands; speech with
and without espeak-ng; mixing at a given SNR."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import welch

from sleepsound.synth import bedroom

RATE = bedroom.SAMPLE_RATE


def _power_share(x: np.ndarray, low: float, high: float) -> float:
    f, p = welch(x, RATE, nperseg=2048)
    return float(p[(f >= low) & (f <= high)].sum() / p.sum())


@pytest.mark.parametrize("category", bedroom.CATEGORIES)
def test_every_category_is_deterministic_finite_unit_rms_and_exactly_long(category: str) -> None:
    for seconds in (0.5, 1.0, 2.3):
        x = bedroom.background(category, seed=4, index=2, seconds=seconds, speech_source="synth")
        assert x.dtype == np.float32 and x.shape == (round(seconds * RATE),)
        assert np.all(np.isfinite(x)) and np.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
    a = bedroom.background(category, 4, 2, speech_source="synth")
    assert np.array_equal(a, bedroom.background(category, 4, 2, speech_source="synth"))  # same seed, same sound
    assert not np.allclose(a, bedroom.background(category, 4, 3, speech_source="synth"))  # each clip its own
    assert not np.allclose(a, bedroom.background(category, 5, 2, speech_source="synth"))


def test_tv_speech_stays_in_the_tv_loudspeakers_band() -> None:
    x = np.concatenate([bedroom.background("tv_speech", 3, i, speech_source="synth") for i in range(6)])
    assert _power_share(x, 0, 60) < 0.002 and _power_share(x, 7700, RATE / 2) < 0.002
    assert _power_share(x, 60, 140) < 0.02  # cabinet rumble, well below the programme
    assert _power_share(x, 150, 4000) > 0.8


def test_the_tv_loudspeaker_has_its_band_a_resonant_peak_and_rumble_that_follows_the_programme() -> None:
    noise = np.random.default_rng(9).standard_normal(4 * RATE).astype(np.float32)
    for draw in range(4):
        y = bedroom.tv_loudspeaker(noise, np.random.default_rng(draw), RATE)
        f, p = welch(y, RATE, nperseg=4096)
        assert 190 <= f[np.argmax(p)] <= 620, draw  # the driver's resonance leads a white input
        assert p[f < 100].sum() / p.sum() < 0.01 and p[f > 7700].sum() / p.sum() < 0.001, draw
    silent = np.zeros(RATE, np.float32)
    silent[: RATE // 2] = noise[: RATE // 2]
    y = bedroom.tv_loudspeaker(silent, np.random.default_rng(0), RATE)
    assert np.abs(y[-RATE // 4 :]).max() < 0.01 * np.abs(y[: RATE // 2]).max()  # no programme, no rumble


def test_limiter_ceiling_loudness_riding_and_breaths() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(8 * RATE).astype(np.float32)
    x[2 * RATE :] *= 0.1  # a passage 20 dB quieter
    limited = bedroom.limit(x * 3, RATE, ceiling=2.0)
    assert np.abs(limited).max() <= 2.0 + 1e-6 and np.abs(x * 3).max() > 2.0
    ridden = bedroom.loudness_normalise(x, RATE, seconds=0.5, max_gain_db=15)
    before = np.std(x[6 * RATE :]) / np.std(x[:RATE])
    after = np.std(ridden[6 * RATE :]) / np.std(ridden[:RATE])
    assert 20 * np.log10(after / before) > 12  # the quiet passage is lifted toward the programme level
    breath = bedroom.breath_in(np.random.default_rng(2), RATE // 3, RATE)
    assert _power_share(breath, 250, 5000) > 0.9
    env = bedroom._envelope(breath, RATE, 0.01)
    assert env[len(env) // 2] > 3 * max(env[len(env) // 20], env[-1])  # rises and falls


def test_news_programme_is_deterministic_and_pauses_between_phrases() -> None:
    a = bedroom.news_programme(np.random.default_rng(5), 6 * RATE, RATE, "synth")
    assert np.array_equal(a, bedroom.news_programme(np.random.default_rng(5), 6 * RATE, RATE, "synth"))
    depths = []
    for draw in range(6):
        x = bedroom.news_programme(np.random.default_rng(draw), 8 * RATE, RATE, "synth")
        env = bedroom._envelope(x, RATE, 0.02)[::160]
        depths.append(20 * np.log10(np.percentile(env, 50) / np.percentile(env, 5)))
    assert max(depths) > 15 and min(depths) > 2  # pauses (a music bed under some fills them partly)


def test_synthetic_speech_is_modulated_at_syllable_rate_not_breathing_rate() -> None:
    for talker in range(6):
        x = bedroom.speech_like(np.random.default_rng(talker), 8 * RATE)
        env = bedroom._envelope(x, RATE, 0.02)[:: RATE // 100]  # 100 Hz envelope
        f = np.fft.rfftfreq(len(env), 0.01)
        p = np.abs(np.fft.rfft(env - env.mean())) ** 2
        smooth = np.convolve(p, np.ones(5) / 5, "same")
        band = (f >= 1) & (f <= 12)
        assert 2.5 <= f[band][np.argmax(smooth[band])] <= 7, talker  # the syllable rate leads
        assert p[(f >= 2.5) & (f <= 7)].sum() > 3 * p[(f >= 0.15) & (f <= 0.6)].sum(), talker
        assert _power_share(x, 80, 1000) > 0.5  # pitch and first formants carry most of the power, as in speech
        assert _power_share(x, 1000, 7500) > 0.005  # upper formants and fricatives the rest


def test_hums_sit_between_50_and_300_hz_and_the_vibration_motor_switches_on_and_off() -> None:
    for category in ("motor_hum", "fan_hvac"):
        for index in range(4):
            x = bedroom.background(category, 0, index)
            f = np.fft.rfftfreq(len(x), 1 / RATE)
            p = np.abs(np.fft.rfft(x)) ** 2
            p[f < 40] = 0
            assert 45 <= f[np.argmax(p)] <= 310, (category, index)
    x = bedroom.background("vibration_motor", 0, 1, seconds=2.0)
    env = bedroom._envelope(x, RATE, 0.01)
    assert 20 * np.log10(np.percentile(env, 95) / np.percentile(env, 5)) > 25  # buzz, then near-silence


def test_speech_works_without_espeak_and_refuses_espeak_when_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert not bedroom.espeak_available()
    auto = bedroom.background("room_speech", 1, 0, speech_source="auto")
    assert np.array_equal(auto, bedroom.background("room_speech", 1, 0, speech_source="synth"))
    with pytest.raises(RuntimeError, match="espeak-ng is not installed"):
        bedroom.background("tv_speech", 1, 0, speech_source="espeak")
    with pytest.raises(ValueError, match="speech source must be one of"):
        bedroom.background("tv_speech", 1, 0, speech_source="festival")
    with pytest.raises(ValueError, match="unknown hard-negative category"):
        bedroom.background("dishwasher", 1, 0)


@pytest.mark.skipif(not bedroom.espeak_available(), reason="espeak-ng is not installed")
def test_espeak_speech_is_deterministic_and_band_limited_on_tv() -> None:
    a = bedroom.background("tv_speech", 2, 0, speech_source="espeak")
    assert np.array_equal(a, bedroom.background("tv_speech", 2, 0, speech_source="espeak"))
    assert np.all(np.isfinite(a)) and _power_share(a, 7600, RATE / 2) < 0.002


def test_mix_at_snr_puts_the_signal_the_asked_level_above_the_background() -> None:
    rng = np.random.default_rng(0)
    s, n = rng.standard_normal(RATE), bedroom.background("fan_hvac", 0, 0)
    mix = bedroom.mix_at_snr(s, n, 5.0)
    recovered = mix - np.dot(mix, n) / np.dot(n, n) * n  # what is left of the signal
    ratio_db = 10 * np.log10(np.mean(recovered**2) / np.mean((mix - recovered) ** 2))
    assert ratio_db == pytest.approx(5.0, abs=0.3)
    with pytest.raises(ValueError, match="samples"):
        bedroom.mix_at_snr(s, n[:100], 0.0)
