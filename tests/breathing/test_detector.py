"""The envelope and the detector on tiny numpy signals with known pauses, steady fan noise and speech."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from sleepsound.breathing.detector import DEFAULT, detect_candidates, detect_events
from sleepsound.breathing.envelope import FEATURES, FRAME_HZ, epoch_envelope
from sleepsound.breathing.evaluate import add_counts, match_counts, scores
from sleepsound.report.summaries import MIN_SLEEP_HOURS_FOR_AHI, event_indices
from tests.breathing.signals import (
    RATE,
    breathing,
    faint_fragments,
    fan,
    fan_blips,
    fast_breaths_between_pauses,
    half_voiced_snorer,
    hiss,
    murmur,
    one_sound_breaths,
    snorer_whose_snoring_pauses,
    snorer_with_short_snores,
    speech,
    syllabic_noise,
    tonal_fragments,
)

SECONDS = 240.0
PAUSE = (130.0, 152.0)  # 22 s without a breath


def _detect(audio: np.ndarray) -> list:
    return detect_events(epoch_envelope(audio, RATE))


def _only(events: list, kind: str) -> dict:
    assert [e["type"] for e in events] == [kind], events
    return events[0]


def _room(room: str) -> np.ndarray:
    """The room's own noise: a quiet microphone's hiss or a fan."""
    return hiss(SECONDS) if room == "hiss" else fan(SECONDS, 0.005)


def _pause_typed_apnoea_by(audio: np.ndarray, **rules_off: float) -> None:
    """The pause in ``audio`` is one apnoea over it, and a hypopnoea with the typing rules ``rules_off``
    turned off: those rules, not the gap rule, made it an apnoea."""
    env = epoch_envelope(audio, RATE)
    event = _only(detect_events(env), "apnea")
    assert event["start_s"] <= PAUSE[0] + 3.5 and event["end_s"] >= PAUSE[1] - 1
    without = detect_events(env, settings=replace(DEFAULT, **rules_off))
    assert [e["type"] for e in without] == ["hypopnea"]


def test_envelope_tells_breath_noise_from_silence_and_voice():
    env = epoch_envelope(breathing(12.0) + speech(12.0, 8.0, 2.0), RATE)
    assert env.shape == (120, len(FEATURES)) and env.dtype == np.float32
    breath_db, flatness, voicing = (env[:, FEATURES.index(k)] for k in ("breath_db", "flatness", "voicing"))
    inspiration, silence, voice = slice(12, 20), slice(49, 50), slice(82, 98)  # 1.2-2 s, 4.9 s, 8.2-9.8 s
    assert breath_db[inspiration].min() > breath_db[silence].max() + 20
    assert voicing[voice].mean() > 0.6 > 0.3 > voicing[inspiration].mean()
    assert flatness[inspiration].mean() > flatness[voice].mean()


@pytest.mark.parametrize("fan_level", [0.0, 0.01], ids=["quiet room", "fan"])
def test_regular_breathing_has_no_events(fan_level):
    audio = breathing(SECONDS) + fan(SECONDS, fan_level)
    assert _detect(audio) == []


@pytest.mark.parametrize("fan_level", [0.0, 0.01], ids=["quiet room", "fan"])
def test_a_pause_in_breathing_is_one_apnoea_where_it_is(fan_level):
    audio = breathing(SECONDS, pauses=(PAUSE,)) + fan(SECONDS, fan_level)
    event = _only(_detect(audio), "apnea")
    # silence from the end of the last breath (up to 3.5 s into the pause) to the recovery breath
    assert PAUSE[0] <= event["start_s"] <= PAUSE[0] + 3.5 and PAUSE[1] - 0.5 <= event["end_s"] <= PAUSE[1] + 1
    assert 0.5 <= event["confidence"] <= 1.0


def test_weaker_breaths_for_twenty_seconds_are_a_hypopnoea():
    audio = breathing(SECONDS, weak=(PAUSE,)) + fan(SECONDS, 0.003)
    event = _only(_detect(audio), "hypopnea")
    assert event["start_s"] < PAUSE[0] + 4 and event["end_s"] > PAUSE[1] - 4


def test_breathing_that_steps_down_and_stays_down_is_no_hypopnoea():
    # 65% weaker from 150 s to the end (snoring that stopped, a sleeper turned away): the breathing never
    # comes back, so it is a new level, not a dip; without the rule it was a 98-s hypopnoea at 0.88.
    audio = breathing(360.0, weak=((150.0, 360.0),)) + fan(360.0, 0.003)
    env = epoch_envelope(audio, RATE)
    assert detect_events(env) == []
    without = detect_candidates(env, settings=replace(DEFAULT, step_check=False))
    assert [e["type"] for e in without] == ["hypopnea"] and without[0]["confidence"] >= DEFAULT.min_confidence


def test_weaker_breathing_until_the_recording_ends_is_no_hypopnoea():
    # The last 30 s weaker: no breath after it, so the breathing is never seen coming back (the night
    # ended, or the sleeper turned away) and there is no dip to score; 20 s earlier it is a hypopnoea.
    audio = breathing(SECONDS, weak=((SECONDS - 30, SECONDS),)) + fan(SECONDS, 0.003)
    assert _detect(audio) == []
    earlier = breathing(SECONDS, weak=((SECONDS - 50, SECONDS - 20),)) + fan(SECONDS, 0.003)
    assert [e["type"] for e in _detect(earlier)] == ["hypopnea"]


def test_a_dip_of_ten_percent_is_no_hypopnoea():
    assert _detect(breathing(SECONDS, weak=(PAUSE,), weak_gain=0.9)) == []


def test_a_short_dip_just_past_the_rule_is_below_the_calibrated_confidence():
    # 45% weaker for 12 s: the rule's candidate, but breath-to-breath variation in wake and REM makes
    # such dips the detector's typical false alarm; the cut fitted on the development styles
    # (0.7, notes s22-transfer) leaves it out, where the old hand-set 0.5 reported it.
    audio = breathing(SECONDS, weak=((130.0, 142.0),), weak_gain=0.55) + fan(SECONDS, 0.003)
    candidates = detect_candidates(epoch_envelope(audio, RATE))
    assert [e["type"] for e in candidates] == ["hypopnea"] and 0.5 <= candidates[0][
        "confidence"
    ] < DEFAULT.min_confidence
    assert _detect(audio) == []


def test_one_faint_breath_between_two_short_pauses_is_no_hypopnoea():
    # 15 s holding a single faint breath: no whole weak breath cycles, so no sustained drop (the rule
    # asks for two breaths beginning in the event); without it this was a hypopnoea at 0.8.
    audio = one_sound_breaths(SECONDS, ((121.0, 137.0),), 128.0, 0.3) + fan(SECONDS, 0.003)
    assert _detect(audio) == []
    lenient = detect_candidates(epoch_envelope(audio, RATE), settings=replace(DEFAULT, min_weak_breaths=0))
    assert [e["type"] for e in lenient] == ["hypopnea"] and lenient[0]["confidence"] >= DEFAULT.min_confidence


def test_fast_breaths_that_run_into_each_other_after_a_pause_are_still_breaths():
    # After an apnoea the breathing runs fast and its noise never falls back to the floor: one long
    # stretch of sound. Taken whole it is no breath (longer than one), so neither pause had a
    # recovery nor the second a rhythm before it; cut at its deep dips it is breaths again.
    pauses = ((90.0, 112.0), (134.0, 156.0))
    env = epoch_envelope(fast_breaths_between_pauses(SECONDS, pauses) + fan(SECONDS, 0.003), RATE)
    events = detect_events(env)
    assert [e["type"] for e in events] == ["apnea", "apnea"], events
    for event, (a, b) in zip(events, pauses, strict=True):
        assert a <= event["start_s"] <= a + 3.5 and b - 0.5 <= event["end_s"] <= b + 1
    assert detect_events(env, settings=replace(DEFAULT, split_db=0.0)) == []


def test_a_pause_shorter_than_ten_seconds_is_no_apnoea():
    assert _detect(breathing(SECONDS, pauses=((130.0, 137.0),))) == []


def test_speech_during_a_pause_does_not_end_it():
    audio = breathing(SECONDS, pauses=(PAUSE,)) + speech(SECONDS, 138.0, 3.0)
    event = _only(_detect(audio), "apnea")
    assert event["start_s"] <= PAUSE[0] + 3.5 and event["end_s"] >= PAUSE[1] - 0.5  # one event over the whole pause


@pytest.mark.parametrize("room", ["hiss", "fan"])
def test_a_pause_under_a_low_steady_murmur_is_an_apnoea(room):
    # A TV turned low keeps the room's level over the silence test for the whole pause (about 20 dB under
    # the breaths) while nothing in the pause stands out of the room as a sound.
    env = epoch_envelope(breathing(SECONDS, pauses=(PAUSE,)) + _room(room) + murmur(SECONDS, PAUSE, 0.1), RATE)
    event = _only(detect_events(env), "apnea")
    assert PAUSE[0] <= event["start_s"] <= PAUSE[0] + 3.5 and PAUSE[1] - 0.5 <= event["end_s"] <= PAUSE[1] + 1
    assert detect_events(env, settings=replace(DEFAULT, soundless_gap=False)) == []


def test_a_tv_lull_without_breathing_before_it_is_no_pause():
    talk = sum(speech(SECONDS, t, 2.5) for t in np.arange(2.0, SECONDS - 3, 3.0) if not 120 <= t < 140)
    assert _detect(talk) == []


def test_a_pause_under_faint_tonal_sound_is_an_apnoea():
    # A TV's faint fragments in the pause pass as breaths, so the rules see a deep hypopnoea; the
    # fragments are tonal where the breaths before were noise, so it is a pause under other sound.
    audio = breathing(SECONDS, pauses=(PAUSE,)) + hiss(SECONDS) + tonal_fragments(SECONDS, PAUSE, 0.15)
    # (Tonal and flickering, so far under the breaths, they are also no breath heard in the pause: that rule
    # off too, they are the hypopnoea the typing rules retype.)
    rules_off = {"covered_pause_ratio": 0.0, "tonal_pause_ratio": 0.0, "flicker_pause_ratio": 0.0}
    _pause_typed_apnoea_by(audio, talk_in_pause_flicker=0.0, **rules_off)


def test_a_pause_under_louder_tonal_sound_is_an_apnoea():
    # Fragments louder than above (the stretch just over a fifth of the baseline, past the deep rule's
    # depth) are an apnoea too, being plainly tonal; the deep rule alone would call it a hypopnoea.
    audio = breathing(SECONDS, pauses=(PAUSE,)) + hiss(SECONDS) + tonal_fragments(SECONDS, PAUSE, 0.25)
    _pause_typed_apnoea_by(audio, tonal_pause_ratio=0.0, flicker_pause_ratio=0.0, talk_in_pause_flicker=0.0)


def test_a_pause_in_a_fan_whose_noise_swells_is_an_apnoea():
    # The fan's own swells, 2.5 dB over its floor, pass as faint breaths in the pause, so the rules see a
    # deep hypopnoea; sounds that barely rise out of the room's noise are the room's, so it is a pause.
    audio = breathing(SECONDS, pauses=(PAUSE,)) + fan(SECONDS, 0.005) + fan_blips(SECONDS, PAUSE, 0.005, 2.5)
    _pause_typed_apnoea_by(audio, faint_over_floor=0.0)


@pytest.mark.parametrize("times", [(134.0, 139.0, 144.5, 149.0), (136.0, 141.0, 146.0), (134.5, 140.0, 145.5, 150.0)])
def test_faint_fragments_in_a_pause_do_not_end_it(times):
    # Half-second sounds 18 dB under the breaths and 1-2 dB over a fan's noise pass as breaths; the pause is
    # still one apnoea over its whole length (they made it a shorter apnoea, or a hypopnoea).
    audio = breathing(SECONDS, pauses=(PAUSE,)) + fan(SECONDS, 0.005) + faint_fragments(SECONDS, times, 0.12)
    event = _only(_detect(audio), "apnea")
    assert event["start_s"] <= PAUSE[0] + 3.5 and event["end_s"] >= PAUSE[1] - 1


def test_one_faint_fragment_does_not_split_a_pause_in_two():
    pause = (120.0, 152.0)
    audio = breathing(SECONDS, pauses=(pause,)) + fan(SECONDS, 0.005) + faint_fragments(SECONDS, (136.0,), 0.12)
    env = epoch_envelope(audio, RATE)
    event = _only(detect_events(env), "apnea")
    assert event["start_s"] <= pause[0] + 3.5 and event["end_s"] >= pause[1] - 1
    assert [e["type"] for e in detect_events(env, settings=replace(DEFAULT, faint_in_pause=0.0))] == ["apnea"] * 2
    # A fragment that stands clearly out of a quiet room is heard: the rule leaves it alone.
    quiet_room = epoch_envelope(
        breathing(SECONDS, pauses=(pause,)) + hiss(SECONDS) + faint_fragments(SECONDS, (136.0,), 0.15), RATE
    )
    assert [e["type"] for e in detect_events(quiet_room)] == ["apnea"] * 2


@pytest.mark.parametrize("room", ["hiss", "fan"])
def test_faint_tonal_talk_in_a_pause_does_not_end_it(room):
    # Breaths of broadband noise, and in the pause a second and a half of a TV's talk 15 dB under them:
    # a voice's harmonics (tonal, unvoiced to the detector) riding up and down syllable by syllable. It
    # passes as a breath and cuts the pause in two (the apnoea after it alone is found); being tonal and
    # flickering where the breaths were smooth noise, it is no breath heard and the pause is one apnoea.
    audio = breathing(SECONDS, pauses=(PAUSE,), band=(250.0, 3900.0)) + _room(room)
    env = epoch_envelope(audio + syllabic_noise(SECONDS, (139.0, 141.6), 0.6, tonal=True), RATE)
    event = _only(detect_events(env), "apnea")
    assert event["start_s"] <= PAUSE[0] + 3.5 and event["end_s"] >= PAUSE[1] - 1
    split = _only(detect_events(env, settings=replace(DEFAULT, talk_in_pause_flicker=0.0)), "apnea")
    assert split["start_s"] > 140.0


@pytest.mark.parametrize("room", ["hiss", "fan"])
def test_a_pause_under_talk_as_noise_like_as_breath_is_an_apnoea(room):
    # A TV's unvoiced talk in the pause, no less noise-like than breath (no flatness rule applies) and the
    # stretch 0.2-0.3 of the baseline: its level rides up and down syllable by syllable where breaths swell.
    audio = breathing(SECONDS, pauses=(PAUSE,)) + _room(room) + syllabic_noise(SECONDS, PAUSE, 0.4)
    _pause_typed_apnoea_by(audio, flicker_pause_ratio=0.0, faint_pause_ratio=0.0)


def test_a_pause_under_faint_blurred_talk_is_an_apnoea():
    # Talk from further off in a fan's noise: under 10 dB over the room, the stretch a quarter of the
    # baseline, its syllables blurred so its level rides only half again as much as the breaths' did (the
    # flicker rule wants twice). Breaths weakened as far still swell smoothly (the tests below).
    audio = breathing(SECONDS, pauses=(PAUSE,)) + fan(SECONDS, 0.005) + syllabic_noise(SECONDS, PAUSE, 0.25, depth=0.25)
    _pause_typed_apnoea_by(audio, faint_pause_ratio=0.0)


@pytest.mark.parametrize("room", ["hiss", "fan"])
def test_breaths_weakened_as_much_as_that_talk_stay_a_hypopnoea(room):
    # Breaths at 0.3 of their usual amplitude are as deep a stretch as the talk above, but they swell smoothly.
    event = _only(_detect(breathing(SECONDS, weak=(PAUSE,), weak_gain=0.3) + _room(room)), "hypopnea")
    assert event["start_s"] < PAUSE[0] + 4 and event["end_s"] > PAUSE[1] - 4


@pytest.mark.parametrize("room", ["hiss", "fan"])
def test_breaths_weakened_as_deeply_stay_a_hypopnoea(room):
    # As deep as the fragments above (amplitude ratio under 0.2), but the sounds are breath noise that
    # stands well out of the room's noise, a microphone's hiss or a fan's.
    audio = breathing(SECONDS, weak=(PAUSE,), weak_gain=0.15) + _room(room)
    event = _only(_detect(audio), "hypopnea")
    assert event["start_s"] < PAUSE[0] + 4 and event["end_s"] > PAUSE[1] - 4


def test_event_matching_counts_overlaps_per_type():
    truth = [{"start_s": 10.0, "end_s": 25.0, "type": "apnea"}, {"start_s": 60.0, "end_s": 75.0, "type": "hypopnea"}]
    detected = [
        {"start_s": 20.0, "end_s": 32.0, "type": "apnea", "confidence": 0.9},
        {"start_s": 61.0, "end_s": 72.0, "type": "apnea", "confidence": 0.6},  # right place, wrong type
        {"start_s": 100.0, "end_s": 112.0, "type": "hypopnea", "confidence": 0.7},
    ]
    result = scores(add_counts([match_counts(truth, detected)]))
    assert result["apnea"]["recall"] == 1.0 and result["apnea"]["precision"] == 0.5
    assert result["hypopnea"]["recall"] == 0.0 and result["hypopnea"]["f1"] == 0.0
    assert result["any"]["recall"] == 1.0 and result["any"]["precision"] == pytest.approx(2 / 3)


def test_ahi_counts_sleep_and_rei_the_whole_recording():
    stages = ["Wake"] * 120 + ["NREM"] * 360 + ["REM"] * 120  # 5 h, 4 h asleep
    events = [
        {"start_s": 100.0, "end_s": 115.0, "type": "apnea", "confidence": 0.9},  # in wake
        *(
            {"start_s": 4000.0 + 60 * k, "end_s": 4012.0 + 60 * k, "type": "hypopnea", "confidence": 0.7}
            for k in range(7)
        ),
    ]
    out = event_indices(events, stages)
    assert out["ahi"] == pytest.approx(7 / 4.0) and out["rei"] == pytest.approx(8 / 5.0)
    assert (out["n_apnea"], out["n_hypopnea"], out["severity"], out["ahi_warning"]) == (1, 7, "normal", None)
    short = event_indices(events, ["Wake"] * 120 + ["NREM"] * 120 + ["Wake"] * 360)  # 1 h asleep
    assert short["ahi_warning"] and f"{MIN_SLEEP_HOURS_FOR_AHI:g} h" in short["ahi_warning"]
    assert short["ahi"] == pytest.approx(7 / 1.0) and short["severity"] == "mild"


def _snore_track(n: int, snores: list[tuple[float, float]]) -> np.ndarray:
    """What the per-second snoring head would say: P(snoring) 0.9 over each snore, 0.05 elsewhere."""
    track = np.full(n, 0.05)
    for a, b in snores:
        track[int(a * FRAME_HZ) : int(b * FRAME_HZ)] = 0.9
    return track


def test_snoring_that_pauses_is_no_hypopnoea_where_the_snoring_head_hears_the_snores():
    # Three breaths in four are noise-like snores (palatal, tongue-base: no voicing), nearly 3x as loud
    # as a plain breath; for 22 s the snoring stops and comes back, the airflow unchanged. The envelope
    # alone takes the snores for plain breaths and calls the pause a hypopnoea.
    pause = (150.0, 172.0)
    audio, snores = snorer_whose_snoring_pauses(300.0, pause)
    env = epoch_envelope(audio + fan(300.0, 0.003), RATE)
    assert [e["type"] for e in detect_events(env)] == ["hypopnea"]
    assert detect_events(env, snoring=_snore_track(len(env), snores)) == []
    # Unknown frames (NaN: no snoring head, an invalid epoch) leave the envelope's typing as it was.
    assert detect_events(env, snoring=np.full(len(env), np.nan)) == detect_events(env)
    # The same snorer's true hypopnoea (every breath 60% weaker, the snoring stopping too) is still one:
    # the plain breaths inside are weaker than the plain breaths before.
    audio, snores = snorer_whose_snoring_pauses(300.0, pause, weak=pause)
    env = epoch_envelope(audio + fan(300.0, 0.003), RATE)
    event = _only(detect_events(env, snoring=_snore_track(len(env), snores)), "hypopnea")
    assert event["start_s"] < pause[0] + 4 and event["end_s"] > pause[1] - 4
    with pytest.raises(ValueError, match="snoring track has 10 frames"):
        detect_events(env, snoring=np.zeros(10))


def test_short_snores_on_breaths_that_pause_are_no_hypopnoea_but_all_of_it_weakening_is_one():
    # Each inspiration carries a short snore four times as loud (as a recorded snore laid on a breath);
    # for 22 s the snoring stops and the breaths go on unchanged. The breath cycles' peaks drop far past
    # 30%, the breath noise around them not at all: the airflow did not drop, no event. The envelope
    # alone, without a snoring head; without the body's check it was a hypopnoea.
    pause = (150.0, 172.0)
    env = epoch_envelope(snorer_with_short_snores(300.0, pause) + fan(300.0, 0.003), RATE)
    assert detect_events(env) == []
    assert [e["type"] for e in detect_events(env, settings=replace(DEFAULT, body_percentile=0.0))] == ["hypopnea"]
    # Snores and breaths 60% weaker together: the body drops with the peaks, a hypopnoea.
    env = epoch_envelope(snorer_with_short_snores(300.0, pause, weak=pause) + fan(300.0, 0.003), RATE)
    event = _only(detect_events(env), "hypopnea")
    assert event["start_s"] < pause[0] + 4 and event["end_s"] > pause[1] - 4


def test_a_snorer_whose_snoring_stops_while_the_plain_breaths_weaken_a_quarter_has_a_hypopnoea():
    # The snoring stops and the plain breaths go on 25% weaker in amplitude (56% in power): short of the
    # 30% drop the whole stretch is judged by, but not unchanged, as they are in a pause of the snoring.
    # The snoring stopping with breaths that weaken is a hypopnoea (a TV's fragments among the plain
    # breaths kept true hypopnoeas of this kind out when the rule asked 30% of them too).
    pause = (150.0, 172.0)
    audio, snores = snorer_whose_snoring_pauses(300.0, pause, weak=pause, weak_gain=0.75)
    env = epoch_envelope(audio + fan(300.0, 0.003), RATE)
    track = _snore_track(len(env), snores)
    event = _only(detect_events(env, snoring=track), "hypopnea")
    assert event["start_s"] < pause[0] + 4 and event["end_s"] > pause[1] - 4
    assert detect_events(env, snoring=track, settings=replace(DEFAULT, unsnored_kept=0.49)) == []


def test_a_snorer_whose_snores_go_on_quieter_while_most_stop_has_a_hypopnoea():
    # Every breath before snored; inside the stretch most stop snoring and the few snores that go on are
    # at 40% of their amplitude, like every breath there. Only the mix changed for the "stopped snoring"
    # rule; compared like for like, the snores themselves dropped: a hypopnoea, not a pause of the snoring.
    weak = (150.0, 190.0)
    audio, snores = snorer_whose_snoring_pauses(300.0, weak, plain_every=10**6, weak=weak, snoring_in_pause=5)
    env = epoch_envelope(audio + fan(300.0, 0.003), RATE)
    track = _snore_track(len(env), snores)
    event = _only(detect_events(env, snoring=track), "hypopnea")
    assert event["start_s"] < weak[0] + 4 and event["end_s"] > weak[1] - 4
    assert detect_events(env, snoring=track, settings=replace(DEFAULT, like_for_like_drop=0.0)) == []


def test_a_half_voiced_snorer_whose_snoring_pauses_has_no_event_without_the_snoring_head():
    # The snores' flutter voices about a quarter of their frames, too few for the envelope to call them
    # snores, so they count as plain breaths and the few truly plain breaths of the pause as a 65% drop.
    # The breaths' voicing stopping with it tells the snoring stopped, not the airflow.
    pause = (150.0, 172.0)
    env = epoch_envelope(half_voiced_snorer(300.0, pause) + fan(300.0, 0.003), RATE)
    assert detect_events(env) == []
    off = replace(DEFAULT, stopped_voicing=0.0)
    assert [e["type"] for e in detect_events(env, settings=off)] == ["hypopnea"]
    # The same snorer's hypopnoea, snoring on 60% weaker (voiced as before), is still one.
    env = epoch_envelope(half_voiced_snorer(300.0, (0.0, 0.0), weak=pause) + fan(300.0, 0.003), RATE)
    event = _only(detect_events(env), "hypopnea")
    assert event["start_s"] < pause[0] + 4 and event["end_s"] > pause[1] - 4


def test_a_snorer_who_snores_every_breath_and_stops_for_a_while_has_no_event():
    # No plain breath before the pause to compare the plain breaths inside with: the breaths inside have
    # stopped snoring where every breath before snored, so what dropped is the snoring, not the airflow.
    pause = (150.0, 172.0)
    audio, snores = snorer_whose_snoring_pauses(300.0, pause, plain_every=10**6)
    env = epoch_envelope(audio + fan(300.0, 0.003), RATE)
    track = _snore_track(len(env), snores)
    assert detect_events(env, snoring=track) == []
    off = replace(DEFAULT, stopped_snoring=False)
    assert [e["type"] for e in detect_events(env, snoring=track, settings=off)] == ["hypopnea"]
    # The same snorer's hypopnoea with the snores going on, 60% weaker: still one.
    audio, snores = snorer_whose_snoring_pauses(300.0, (0.0, 0.0), plain_every=10**6, weak=pause)
    env = epoch_envelope(audio + fan(300.0, 0.003), RATE)
    event = _only(detect_events(env, snoring=_snore_track(len(env), snores)), "hypopnea")
    assert event["start_s"] < pause[0] + 4 and event["end_s"] > pause[1] - 4


@pytest.mark.parametrize("min_blocks", [None, 8, 0])
def test_the_baseline_is_the_median_of_each_seconds_usable_window(min_blocks: int | None) -> None:
    """The vectorised rolling baseline equals the plain definition, second by second: the median of the
    finite block values of the ``baseline_s`` before, or NaN with fewer than the minimum of them (long
    runs without breathing, a night shorter than the window, more rows than one sorted block)."""
    from sleepsound.breathing.detector import _BASELINE_ROWS, _frame_baseline

    rng = np.random.default_rng(3)
    n_blocks = _BASELINE_ROWS + 700
    blocks = rng.lognormal(0.0, 1.0, n_blocks)
    blocks[rng.random(n_blocks) < 0.4] = np.nan  # seconds without a usable breath frame
    blocks[1000:1300] = np.nan  # five minutes without one
    blocks[2000:2040] = 1.0  # ties
    settings = replace(DEFAULT, baseline_s=120.0)
    need = 30 if min_blocks is None else min_blocks
    want = np.full(n_blocks, np.nan)
    for k in range(n_blocks):
        prior = blocks[max(0, k - 120) : k]
        prior = prior[np.isfinite(prior)]
        if len(prior) >= max(need, 1):
            want[k] = np.median(prior)
    got = _frame_baseline(blocks, n_blocks * int(FRAME_HZ) - 3, settings, min_blocks)
    assert len(got) == n_blocks * int(FRAME_HZ) - 3
    np.testing.assert_array_equal(got[:: int(FRAME_HZ)], want[: len(got[:: int(FRAME_HZ)])])
    assert np.isnan(want[1250]) and np.isfinite(want[1300 + 121])  # the gap empties the window, then it refills
    short = _frame_baseline(blocks[:50], 50 * int(FRAME_HZ), settings, min_blocks)
    assert np.isnan(short[0]) and (np.isfinite(short[-1]) == (need <= np.isfinite(blocks[:49]).sum()))


@pytest.mark.parametrize("step", ["up", "down"])
@pytest.mark.parametrize("quiet", [0.03, 0.01], ids=["30 dB", "40 dB"])
def test_breathing_whose_level_steps_for_good_leaves_no_false_pause_beside_the_step(quiet, step):
    """A recorder's gain, a quiet start, a sleeper turning to or from the microphone: the quiet breaths of the
    minute beside the step were judged against the loud ones on its other side (a window centred on each
    second), stopped counting as sounds, and the gap they left was an apnoea (the odd-audio audit,
    2026-12-07: up; 2026-12-08: down)."""
    seconds = 480.0
    t = np.arange(int(seconds * RATE)) / RATE
    gain = np.where(t < 240, quiet, 1.0) if step == "up" else np.where(t < 240, 1.0, quiet)
    assert _detect(breathing(seconds) * gain + hiss(seconds)) == []


@pytest.mark.parametrize("step", ["up", "down"])
@pytest.mark.parametrize("pause", [(215.0, 235.0), (250.0, 270.0), (300.0, 325.0)], ids=str)
def test_a_pause_beside_a_step_of_the_level_is_still_found_where_it_is(pause, step):
    """Quiet breaths beside a step leave a gap silent only against the loud side; the pause inside that gap
    is what is left silent once they count (a veto of the whole gap lost pauses in the minute before a
    step up)."""
    seconds = 480.0
    t = np.arange(int(seconds * RATE)) / RATE
    gain = np.where(t < 240, 0.03, 1.0) if step == "up" else np.where(t < 240, 1.0, 0.03)
    event = _only(_detect(breathing(seconds, pauses=(pause,)) * gain + hiss(seconds)), "apnea")
    assert pause[0] - 1 <= event["start_s"] <= pause[0] + 3.5 and pause[1] - 1 <= event["end_s"] <= pause[1] + 1
