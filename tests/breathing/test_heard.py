"""Where breathing was heard: the stretches of a night in which the detector could find an event, and the
warning the indices carry when that is too little of the night (``breathing.heard``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sleepsound.breathing.detector import detect_events, heard_frames
from sleepsound.breathing.envelope import FRAME_HZ, epoch_envelope
from sleepsound.breathing.heard import HEARD_COLUMN, heard_seconds, with_heard_seconds
from sleepsound.core import schemas
from sleepsound.report.summaries import MIN_HEARD_SHARE, breathing_heard, event_indices
from tests.breathing.signals import RATE, breathing, fan, hiss

SECONDS = 240.0


def _heard(audio: np.ndarray) -> tuple[np.ndarray, list]:
    env = epoch_envelope(audio, RATE)
    events = detect_events(env)
    return heard_frames(env, events=events), events


def test_a_night_of_audible_breathing_is_heard_throughout_its_pause_included() -> None:
    heard, events = _heard(breathing(SECONDS, pauses=((130.0, 152.0),)) + hiss(SECONDS))
    assert [e["type"] for e in events] == ["apnea"]
    assert heard.all()  # the pause's own frames too: an event was findable there


@pytest.mark.parametrize("room", ["hiss", "fan"])
def test_a_room_with_no_breath_sound_in_it_is_heard_nowhere(room: str) -> None:
    audio = hiss(SECONDS) if room == "hiss" else fan(SECONDS, 0.01)
    heard, events = _heard(audio)
    assert events == [] and not heard.any()  # no events, and the night says it could not have found any


def test_breathing_that_fades_out_of_the_microphones_reach_is_heard_only_while_it_reaches() -> None:
    audio = breathing(SECONDS) * np.where(np.arange(int(SECONDS * RATE)) < 120 * RATE, 1.0, 1e-4) + hiss(SECONDS)
    heard, _ = _heard(audio)
    share = heard.mean()
    assert 0.5 < share < 0.75  # the first two minutes, and the rhythm window's reach past them
    assert heard[: int(110 * FRAME_HZ)].all() and not heard[int(170 * FRAME_HZ) :].any()


def test_invalid_frames_are_never_heard() -> None:
    env = epoch_envelope(breathing(SECONDS) + hiss(SECONDS), RATE)
    valid = np.ones(len(env), dtype=bool)
    valid[600:900] = False
    heard = heard_frames(env, valid)
    assert not heard[600:900].any() and heard[:600].all()


def test_each_epochs_heard_seconds_land_on_its_prediction_row() -> None:
    quiet_then_breathing = np.concatenate([hiss(120.0), breathing(120.0) + hiss(120.0, seed=3)])
    env = epoch_envelope(quiet_then_breathing, RATE)
    valid = np.ones(len(env), dtype=bool)
    seconds = heard_seconds(heard_frames(env, valid), 30.0)
    assert seconds.shape == (8,) and seconds[0] == 0.0 and np.all(seconds[5:] == 30.0)
    rows = [{"recording_id": "r", "epoch_index": i, "start_s": 30.0 * i} for i in (7, 0, 3, 9)]  # 9: past the end
    table = with_heard_seconds(pa.Table.from_pylist(rows, schema=schemas.PREDICTIONS), heard_frames(env, valid), 30.0)
    assert table.schema == schemas.PREDICTIONS
    assert table.column(HEARD_COLUMN).to_pylist() == [30.0, 0.0, pytest.approx(seconds[3]), None]


def test_the_indices_warn_when_breathing_was_heard_in_too_little_of_the_night() -> None:
    stages = ["NREM"] * 480  # 4 h, all asleep
    heard_all = event_indices([], stages, heard_s=[30.0] * 480)
    assert heard_all["breathing_heard"] == 1.0 and heard_all["events_warning"] is None
    assert heard_all["rei"] == 0.0 and heard_all["severity_rei"] == "normal"
    barely = event_indices([], stages, heard_s=[30.0] * 48 + [0.0] * 432)  # a tenth of the night
    assert barely["breathing_heard"] == pytest.approx(0.1)
    assert "10%" in barely["events_warning"] and "does not rule out apnoea" in barely["events_warning"]
    assert barely["rei"] == 0.0  # the index stays what was counted; the warning says what it is worth
    edge = event_indices([], stages, heard_s=[30.0 * MIN_HEARD_SHARE] * 480)
    assert edge["events_warning"] is None  # at the bound: no warning
    older = event_indices([], stages)  # a run from before the column: unknown, no warning
    assert np.isnan(older["breathing_heard"]) and older["events_warning"] is None
    assert np.isnan(breathing_heard([None, float("nan")], 1.0))
    assert breathing_heard([30.0, None], 60.0 / 3600.0) == pytest.approx(0.5)  # unknown epochs count as unheard


REAL_BEDROOM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "psg-audio-clip"


def test_a_real_bedroom_microphone_hears_its_sleepers_breathing_throughout() -> None:
    """20 s of PSG-Audio's ambient microphone (a patient scored without apnoea; the breath band swells 2-4 dB
    over the room, some 18 times a minute) laid end to end, each copy from another point of the clip, to
    four minutes: the faint breaths are heard as a rhythm all through, and no event is found."""
    import soundfile as sf

    from sleepsound.core.config import PreprocessConfig

    audio, rate = sf.read(REAL_BEDROOM / "00006_00000995_NoApnea.wav", dtype="float32")
    rng = np.random.default_rng(0)
    night = np.concatenate([np.roll(audio, int(rng.integers(len(audio)))) for _ in range(12)])
    epoch = int(30 * rate)
    env = np.concatenate(
        [epoch_envelope(night[k : k + epoch], rate, raw=PreprocessConfig()) for k in range(0, len(night), epoch)]
    )
    events = detect_events(env)
    per_epoch = heard_seconds(heard_frames(env, events=events), 30.0)
    indices = event_indices(events, ["NREM"] * len(per_epoch), heard_s=per_epoch.tolist())
    assert events == [] and indices["breathing_heard"] > 0.95 and indices["events_warning"] is None
    # the same room with its sleeper 30 dB further off (the microphone's own noise added back): unheard
    far = night * 0.03 + np.random.default_rng(1).normal(0.0, float(np.std(night)), len(night)).astype(np.float32)
    env = np.concatenate(
        [epoch_envelope(far[k : k + epoch], rate, raw=PreprocessConfig()) for k in range(0, len(far), epoch)]
    )
    per_epoch = heard_seconds(heard_frames(env, events=detect_events(env)), 30.0)
    far_indices = event_indices([], ["NREM"] * len(per_epoch), heard_s=per_epoch.tolist())
    assert far_indices["breathing_heard"] < MIN_HEARD_SHARE and far_indices["events_warning"] is not None


def test_events_and_heard_in_one_reading_are_the_two_calls_answers() -> None:
    from sleepsound.breathing.detector import events_and_heard

    env = epoch_envelope(breathing(SECONDS, pauses=((130.0, 152.0),)) + hiss(SECONDS), RATE)
    events, heard = events_and_heard(env)
    assert events == detect_events(env) and len(events) == 1
    np.testing.assert_array_equal(heard, heard_frames(env, events=events))
