"""POST /analyze-breathing (the tutorial's endpoint) and a scoring thread that never holds up /health."""

from __future__ import annotations

import io
import threading
import time

import httpx
import numpy as np
import pytest
import soundfile as sf

from sleepsound.monitor.app import Settings
from sleepsound.monitor.breathing import breathing_pauses
from tests.monitor.conftest import NIGHT_RATE, Live, Trained

RATE = 16_000


def _breaths(seconds: float, pause: tuple[float, float] | None, seed: int = 0) -> np.ndarray:
    """Noise bursts of 1.5 s every 4 s over a quiet floor (breathing), none inside ``pause``."""
    rng = np.random.default_rng(seed)
    audio = rng.normal(0, 0.002, int(seconds * RATE)).astype(np.float32)
    for start in np.arange(0.0, seconds - 1.5, 4.0):
        if pause and pause[0] - 1.5 < start < pause[1]:
            continue
        lo = int(start * RATE)
        audio[lo : lo + int(1.5 * RATE)] += rng.normal(0, 0.1, int(1.5 * RATE)).astype(np.float32)
    return audio


def _flac(audio: np.ndarray, rate: int = RATE) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="FLAC")
    return buffer.getvalue()


def test_pauses_are_found_with_their_recovery_breath() -> None:
    """The batch detector's apnoeas (from the last breath to the recovery breath), given the 90 s of
    breathing before a pause that it judges the pause against."""
    audio = _breaths(120, (60.0, 76.0))
    (pause,) = breathing_pauses(audio, RATE)
    assert pause.start_s == pytest.approx(57.5, abs=0.3) and pause.end_s == pytest.approx(76.0, abs=0.3)
    assert 0.7 <= pause.confidence <= 1.0
    assert breathing_pauses(_breaths(120, None), RATE) == []
    assert breathing_pauses(np.zeros(120 * RATE, dtype=np.float32), RATE) == []  # no breathing seen at all: no guess
    assert breathing_pauses(_breaths(120, (60.0, 66.0)), RATE) == []  # 6 s is not an apnoea


def test_a_stream_finds_the_pause_when_its_recovery_breath_arrives_keeping_only_the_envelope() -> None:
    from sleepsound.monitor.breathing import PauseWatch

    audio = _breaths(260, (200.0, 216.0))
    watch = PauseWatch(RATE, keep_s=180)
    step = 7 * RATE
    found_at = None
    for start in range(0, len(audio), step):
        watch.push(audio[start : start + step])
        assert watch.pauses() == [] or found_at is not None or start + step >= 216 * RATE
        if found_at is None and watch.pauses():
            found_at = (start + step) / RATE
    assert found_at == pytest.approx(217.0, abs=7)  # the chunk holding the recovery breath (at 216 s)
    (pause,) = watch.pauses()
    (whole,) = breathing_pauses(audio, RATE)
    assert pause.start_s == pytest.approx(whole.start_s, abs=0.2) and pause.end_s == pytest.approx(whole.end_s, abs=0.2)
    assert watch.start_s == pytest.approx(80.0, abs=0.2)  # 180 s of 10-Hz frames kept, nothing older
    watch.restart(at_s=300.0)  # a gap: nothing before it counts
    assert watch.pauses() == [] and watch.start_s == 300.0


@pytest.mark.parametrize("pause", [None, (250.0, 270.0)], ids=["no pause", "a pause after the step"])
def test_a_stream_whose_sound_gets_30_db_quieter_for_good_raises_no_pause_at_the_step(pause) -> None:
    """The sleeper turns away from the microphone: the newest gap closes before a minute of the quieter
    breathing after it is heard, so it is judged against the breath that closed it (a true pause's recovery
    breath is no weaker); the batch detector said no pause, but the stream raised one at the step."""
    from sleepsound.monitor.breathing import PauseWatch
    from tests.breathing.signals import RATE as SIGNAL_RATE
    from tests.breathing.signals import breathing, hiss

    seconds = 360.0
    t = np.arange(int(seconds * SIGNAL_RATE)) / SIGNAL_RATE
    audio = breathing(seconds, pauses=(pause,) if pause else ()) * np.where(t < 240, 1.0, 0.03) + hiss(seconds)
    watch = PauseWatch(SIGNAL_RATE, keep_s=180)
    seen = set()
    step = 10 * SIGNAL_RATE
    for start in range(0, len(audio), step):
        watch.push(audio[start : start + step].astype(np.float32))
        seen |= {(round(p.start_s), round(p.end_s)) for p in watch.pauses()}
    if pause is None:
        assert seen == set()
    else:
        assert len(seen) == 1 and all(abs(a - 250) <= 3 and abs(b - 270) <= 1 for a, b in seen), seen


def test_analyze_breathing_answers_like_the_tutorial(trained: Trained, live: Live) -> None:
    clip = _flac(_breaths(120, (60.0, 76.0)))
    with httpx.Client(timeout=60) as client:
        form = client.post(f"{live.base}/analyze-breathing", files={"file": ("clip.flac", clip, "audio/flac")})
        assert form.status_code == 200, form.text
        out = form.json()
        assert out["status"] == "success" and out["detection"] == "Apnea Alert"
        assert len(out["pauses"]) == 1 and out["pauses"][0]["end_s"] == pytest.approx(76.0, abs=0.3)
        assert [w["start_s"] for w in out["windows"]] == [0.0, 30.0, 60.0, 90.0]
        assert set(out["probabilities"]) == {"snoring", "apnea", "normal"}
        raw = client.post(f"{live.base}/analyze-breathing?name=clip.flac", content=clip).json()
        assert raw["windows"] == out["windows"] and raw["pauses"] == out["pauses"]

        night = _flac(trained.night[: 60 * NIGHT_RATE], NIGHT_RATE)
        scored = client.post(f"{live.base}/analyze-breathing", files={"file": ("night.flac", night)}).json()
        assert scored["detection"] in ("Normal", "Snoring", "Apnea Alert") and len(scored["windows"]) == 2

        short = client.post(f"{live.base}/analyze-breathing", files={"file": ("short.flac", _flac(_breaths(6, None)))})
        assert short.status_code == 422 and "too short to hold a 10-s breathing pause" in short.json()["detail"]
        twenty = client.post(f"{live.base}/analyze-breathing", content=_flac(_breaths(20, None))).json()
        assert twenty["probabilities"] is None and "no full valid 30-s window" in twenty["note"]
        assert twenty["detection"] == "Normal"
        no_file = client.post(f"{live.base}/analyze-breathing", files={"other": ("x.flac", clip)})
        assert no_file.status_code == 400 and "no 'file' part" in no_file.json()["detail"]


@pytest.mark.parametrize("live", [Settings(max_sessions=2)], indirect=True)
def test_health_answers_at_once_while_the_scoring_queue_is_full(trained: Trained, live: Live) -> None:
    clip = _flac(trained.night[: 300 * NIGHT_RATE], NIGHT_RATE)
    codes: list[int] = []

    def analyse(address: str) -> None:  # six clients (one client may have only two clips in flight)
        with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=120) as client:
            codes.append(client.post(f"{live.base}/analyze-breathing", content=clip).status_code)

    threads = [threading.Thread(target=analyse, args=(f"127.0.0.{2 + i}",)) for i in range(6)]
    for t in threads:
        t.start()
    seen_busy, slowest = False, 0.0
    with httpx.Client(timeout=5) as client:
        while any(t.is_alive() for t in threads):
            started = time.monotonic()
            health = client.get(f"{live.base}/health").json()
            slowest = max(slowest, time.monotonic() - started)
            seen_busy |= health["scoring"] or health["scoring_queue"] > 0
            time.sleep(0.05)
    for t in threads:
        t.join()
    assert seen_busy and slowest < 1.0
    assert 200 in codes and 503 in codes  # the queue is bounded: the surplus is refused at once, not queued


def test_a_stream_says_how_long_breathing_has_gone_unheard() -> None:
    """Breathing for two minutes, then six minutes of the room alone (the sleeper turned away, the
    microphone knocked over), then breathing again: the watch counts the unheard time from the last
    rhythm heard, and it drops to nothing once breathing is heard again."""
    from sleepsound.monitor.breathing import PauseWatch

    room = np.random.default_rng(5).normal(0, 0.002, 360 * RATE).astype(np.float32)
    audio = np.concatenate([_breaths(120, None), room, _breaths(120, None, seed=1)])
    watch = PauseWatch(RATE, keep_s=180)
    unheard = []
    for start in range(0, len(audio), 10 * RATE):
        watch.push(audio[start : start + 10 * RATE])
        unheard.append((start / RATE + 10, watch.unheard_seconds()))
    at = dict(unheard)
    assert at[120.0] == 0.0  # breathing all along
    # since the last rhythm heard: the last breath ends at 117.5 s, and a pause can be found for up to the
    # 40-s rhythm window after it
    assert 300 - 118 - 40 <= at[300.0] <= 300 - 118
    assert at[480.0] > 280  # past the 180 s the watch keeps: counted on (the room alone, heard nowhere)
    assert at[600.0] == 0.0  # heard again
    silent = PauseWatch(RATE, keep_s=180)  # a microphone that never hears breathing: unheard from its start
    for start in range(0, 200 * RATE, 10 * RATE):
        silent.push(room[start : start + 10 * RATE])
    assert silent.unheard_seconds() == pytest.approx(200.0, abs=0.2)
