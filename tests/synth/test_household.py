"""Household transients (synth.household): each category is made deterministically at the asked length and
has the property that makes it that sound (a door's energy comes in a low, impulsive blow, a hinge's creak
in a train of stick-slip pulses; footsteps repeat at a walking pace; water is sustained and broadband;
dishes ring; a clock ticks regularly)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import butter, find_peaks, hilbert, sosfiltfilt, welch

from sleepsound.synth import bedroom, household

RATE = bedroom.SAMPLE_RATE
DRAWS = 8  # clips per property: each check is on their median, a property of the category, not of one clip


def _clips(category: str, seconds: float = 1.0, seed: int = 11) -> list[np.ndarray]:
    return [bedroom.background(category, seed, i, seconds) for i in range(DRAWS)]


def _share(x: np.ndarray, low: float, high: float) -> float:
    f, p = welch(x, RATE, nperseg=1024)
    return float(p[(f >= low) & (f < high)].sum() / p.sum())


def _crest(x: np.ndarray) -> float:
    return float(np.max(np.abs(x)) / np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def _energy_in_loudest(x: np.ndarray, seconds: float) -> float:
    """Share of the clip's energy in its loudest window of ``seconds``."""
    e = np.square(x, dtype=np.float64)
    return float(np.convolve(e, np.ones(int(seconds * RATE)), "valid").max() / e.sum())


def _onsets(x: np.ndarray, below_peak_db: float = 15.0, gap_s: float = 0.15) -> np.ndarray:
    """Times (s) where the 5-ms level rises by 10 dB within 10 ms to within ``below_peak_db`` of the loudest."""
    m = RATE // 200
    level = 10 * np.log10(np.mean(np.square(x[: len(x) // m * m], dtype=np.float64).reshape(-1, m), 1) + 1e-20)
    rising = np.flatnonzero((level[2:] - level[:-2] > 10) & (level[2:] > level.max() - below_peak_db)) + 2
    kept: list[int] = []
    for i in rising:
        if not kept or i - kept[-1] > gap_s * 200:
            kept.append(int(i))
    return np.array(kept) / 200


def test_the_household_categories_are_registered_and_opt_in() -> None:
    assert bedroom.HOUSEHOLD_CATEGORIES == ("door", "footsteps", "water_flush", "dishes", "clock_tick", "door_creak")
    assert set(bedroom.ALL_CATEGORIES) == set(bedroom.CATEGORIES) | set(bedroom.HOUSEHOLD_CATEGORIES)
    assert not set(bedroom.CATEGORIES) & set(bedroom.HOUSEHOLD_CATEGORIES)  # not in the shipped default


@pytest.mark.parametrize("category", bedroom.HOUSEHOLD_CATEGORIES)
def test_a_household_clip_is_deterministic_finite_unit_rms_and_exactly_long(category: str) -> None:
    for seconds in (0.5, 1.0, 10.0):  # a clip, and a night's 10-s piece (several events, never none)
        x = bedroom.background(category, seed=4, index=2, seconds=seconds, rate=RATE)
        assert x.dtype == np.float32 and x.shape == (round(seconds * RATE),)
        assert np.all(np.isfinite(x)) and np.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
        assert np.abs(x).max() < 100  # a sane crest factor: no blow-up of a resonance
    a = bedroom.background(category, 4, 2)
    assert np.array_equal(a, bedroom.background(category, 4, 2))
    assert not np.allclose(a, bedroom.background(category, 4, 3))  # each clip its own
    assert not np.allclose(a, bedroom.background(category, 5, 2))


def test_a_door_is_a_low_impulsive_blow() -> None:
    clips = _clips("door")
    assert np.median([_crest(x) for x in clips]) > 6  # steady sounds (fans, hums, speech) stay near 2-5
    assert np.median([_energy_in_loudest(x, 0.2) for x in clips]) > 0.6  # most energy in one blow and its ring
    assert np.median([_share(x, 0, 1000) for x in clips]) > 0.8  # a door panel's modes are low
    fan = [bedroom.background("fan_hvac", 11, i) for i in range(DRAWS)]
    assert np.median([_crest(x) for x in clips]) > 1.5 * np.median([_crest(x) for x in fan])


def _pulses(x: np.ndarray) -> int:
    """Sharp bursts in the 0.8-5 kHz band's envelope at least 4 ms apart (within 10 dB of the loudest)."""
    sos = butter(4, [800, 5000], btype="bandpass", fs=RATE, output="sos")
    env = np.convolve(np.abs(hilbert(sosfiltfilt(sos, x))), np.ones(16) / 16, "same")
    peaks, _ = find_peaks(env, height=0.3 * env.max(), distance=int(0.004 * RATE), prominence=0.15 * env.max())
    return len(peaks)


def test_a_hinge_creak_is_a_train_of_slips_where_a_slam_is_one_blow() -> None:
    creaks = [household.creak_event(np.random.default_rng(i), RATE) for i in range(DRAWS)]
    doors = [household.door_event(np.random.default_rng(i), RATE) for i in range(DRAWS)]
    assert np.median([_pulses(x) for x in creaks]) >= 10  # stick-slip at 15-200 Hz for 0.4-1.4 s
    assert np.median([_pulses(x) for x in doors]) <= 4  # a slam, a push shut, a few knocks
    clips = _clips("door_creak")
    assert np.median([_energy_in_loudest(x, 0.2) for x in clips]) < np.median(
        [_energy_in_loudest(x, 0.2) for x in _clips("door")]
    )  # it lasts as the door swings, where a slam's energy is in one blow


def test_footsteps_come_at_a_walking_pace_and_are_low() -> None:
    counts = [len(_onsets(x, gap_s=0.3)) for x in _clips("footsteps", seconds=3.0)]
    assert 4 <= np.median(counts) <= 8, counts  # steps 0.4-0.7 s apart: 4-8 in 3 s
    assert np.median([_share(x, 0, 1000) for x in _clips("footsteps")]) > 0.8


def test_water_is_sustained_broadband_and_gurgles() -> None:
    clips = _clips("water_flush", seconds=2.0)
    assert np.median([_energy_in_loudest(x, 0.2) for x in clips]) < 0.3  # no single blow: it runs
    assert np.median([_share(x, 1500, 8000) for x in clips]) > 0.2  # turbulent hiss and bubbles, not a hum
    rms = [np.sqrt(np.mean(x[: len(x) // 800 * 800].astype(np.float64).reshape(-1, 800) ** 2, 1)) for x in clips]
    assert np.median([np.std(r) / np.mean(r) for r in rms]) > 0.15  # its level swells and gurgles


def test_dishes_ring_with_narrow_modes() -> None:
    clips = _clips("dishes")
    assert np.median([_crest(x) for x in clips]) > 8
    ratios = []
    for x in clips:
        f, p = welch(x, RATE, nperseg=4096)
        band = p[(f >= 500) & (f < 7500)]
        ratios.append(band.max() / np.median(band))
    assert np.median(ratios) > 100  # a ringing mode stands 20 dB above the band's median


def test_a_clock_ticks_regularly_and_high() -> None:
    for x in _clips("clock_tick", seconds=3.0):
        ticks = _onsets(x, below_peak_db=12, gap_s=0.1)
        assert len(ticks) >= 3
        gaps = np.diff(ticks)
        assert np.std(gaps) < 0.02 + 0.05 * np.mean(gaps)  # the escapement's period (within the 5-ms grid)
    assert np.median([_share(x, 1500, 8000) for x in _clips("clock_tick")]) > 0.7


def test_struck_modes_ring_at_their_frequency_and_decay_at_their_rate() -> None:
    ring = household.struck(np.array([1000.0]), np.array([1.0]), np.array([0.05]), 0.0003, 0.5, RATE)
    f, p = welch(ring, RATE, nperseg=4096)
    assert abs(f[np.argmax(p)] - 1000) < 10
    first, later = (np.sqrt(np.mean(ring[i : i + 800] ** 2)) for i in (800, 800 + 1600))
    assert later / first == pytest.approx(np.exp(-0.1 / 0.05), rel=0.05)  # exp(-t / tau) after 0.1 s
    assert household.modes(np.array([9000.0]), np.ones(1), np.ones(1), 100, RATE).max() == 0  # above Nyquist: left out


def test_an_impulse_is_written_quieter_rather_than_flattened() -> None:
    x = bedroom.background("clock_tick", 2, 0)
    y = bedroom.at_level(x, -20.0)
    assert np.abs(y).max() <= 0.5 + 1e-6  # scaled to the limiter's knee: untouched by it
    assert _crest(y) == pytest.approx(_crest(x), rel=1e-4)
    steady = bedroom.background("motor_hum", 2, 0)
    assert 20 * np.log10(np.sqrt(np.mean(bedroom.at_level(steady, -20.0).astype(np.float64) ** 2))) == pytest.approx(
        -20.0, abs=0.05
    )
