"""Alerts raised from live streams, deduplicated, acknowledged, followed over SSE and sent to a webhook
receiver that is down at first and up later (every attempt recorded, every body signed)."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from sleepsound.monitor.alerts import AlertRules, Alerts, load_rules, sign
from sleepsound.monitor.app import Settings
from tests.monitor.conftest import Live, free_port, start_server
from tests.monitor.test_breathing import RATE, _breaths

HOOK_PORT = free_port()
SECRET = "a-webhook-secret-of-some-length"
RULES = AlertRules.model_validate(
    {
        "sensor": {"minutes": 1.0},
        "no_audio": {"seconds": 1.5},
        "event_rate": {"per_hour": 0.0, "min_minutes": 0.5},
        "webhooks": [{"url": f"http://127.0.0.1:{HOOK_PORT}/hook", "secret": SECRET}],
        "backoff_s": 0.3,
        "max_attempts": 12,
    }
)


def _chunks(audio: np.ndarray, seconds: float = 10.0) -> list[bytes]:
    out = []
    step = int(seconds * RATE)
    for start in range(0, len(audio), step):
        buffer = io.BytesIO()
        sf.write(buffer, audio[start : start + step], RATE, format="FLAC")
        out.append(buffer.getvalue())
    return out


def test_rules_files_change_defaults_and_refuse_typos(tmp_path: Path) -> None:
    good = tmp_path / "rules.yaml"
    good.write_text("no_audio:\n  seconds: 30\n")
    rules = load_rules(good)
    assert rules.no_audio.seconds == 30 and rules.breathing_pause.min_pause_s == 10.0
    bad = tmp_path / "typo.yaml"
    bad.write_text("no_adio:\n  seconds: 30\n")
    with pytest.raises(ValueError, match="no_adio"):
        load_rules(bad)


@pytest.mark.parametrize(
    "live", [Settings(rules=RULES, expiry_check_s=0.2, rate_per_s=1000.0, burst=1000)], indirect=True
)
def test_alerts_from_live_streams_reach_the_stream_and_a_webhook_that_was_down(live: Live, tmp_path: Path) -> None:
    received: list[dict[str, Any]] = []

    async def hook(request: Request) -> PlainTextResponse:
        body = await request.body()
        assert request.headers["x-sleepsound-signature"] == sign(SECRET, body)
        received.append(json.loads(body))
        return PlainTextResponse("ok")

    events: list[tuple[str, dict[str, Any]]] = []

    def follow() -> None:
        with httpx.Client(timeout=None) as client, client.stream("GET", f"{live.base}/v1/alerts/stream") as reply:
            kind = None
            for line in reply.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind:
                    events.append((kind, json.loads(line[6:])))
                if len(events) >= 6:
                    return

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    time.sleep(0.5)
    receiver = None
    try:
        with httpx.Client(timeout=60) as client:
            sessions = {}
            for name, audio in (("silent", np.zeros(100 * RATE, dtype=np.float32)), ("pause", _breaths(120, (60, 76)))):
                opened = client.post(f"{live.base}/v1/sessions", json={"bed_id": f"bed-{name}"}).json()
                auth = {"Authorization": f"Bearer {opened['token']}"}
                sessions[name] = opened["session_id"]
                for seq, chunk in enumerate(_chunks(audio)):
                    reply = client.post(
                        f"{live.base}/v1/sessions/{opened['session_id']}/chunks/{seq}", content=chunk, headers=auth
                    )
                    assert reply.status_code == 200, reply.text
            # the webhook receiver comes up only now: the first deliveries have failed
            receiver = start_server(Starlette(routes=[Route("/hook", hook, methods=["POST"])]), HOOK_PORT)
            deadline = time.monotonic() + 30
            while True:
                alerts = client.get(f"{live.base}/v1/alerts").json()
                rules = sorted((a["session_id"] == sessions["silent"], a["rule"]) for a in alerts)
                if rules == [
                    (False, "breathing_pause"),
                    (False, "event_rate"),
                    (False, "no_audio"),
                    (True, "no_audio"),
                    (True, "sensor"),
                ]:
                    break
                assert time.monotonic() < deadline, rules
                time.sleep(0.2)
            pause = next(a for a in alerts if a["rule"] == "breathing_pause")
            assert pause["start_s"] == pytest.approx(57.5, abs=0.3) and pause["end_s"] == pytest.approx(76.0, abs=0.3)
            assert pause["bed_id"] == "bed-pause" and pause["evidence"]["pause_s"] == pytest.approx(18.5, abs=0.5)
            sensor = next(a for a in alerts if a["rule"] == "sensor")
            assert sensor["start_s"] == 0.0 and "zero RMS" in sensor["evidence"]["last_reason"]
            acked = client.post(f"{live.base}/v1/alerts/{pause['id']}/ack")
            assert acked.status_code == 200 and acked.json()["acknowledged_at"] is not None
            assert client.post(f"{live.base}/v1/alerts/nope/ack").status_code == 404
            time.sleep(1.0)  # still silent, still scored: deduplicated, no second alert of any rule
            assert len(client.get(f"{live.base}/v1/alerts").json()) == 5
        follower.join(timeout=10)
        assert sorted(kind for kind, _ in events) == ["acknowledged", *["alert"] * 5]
        deadline = time.monotonic() + 20
        while len(received) < 6:
            assert time.monotonic() < deadline, received
            time.sleep(0.2)
        assert sorted(m["type"] for m in received) == ["acknowledged", *["alert"] * 5]
        attempts = [
            json.loads(line)
            for line in (Path(live.app.state.monitor.dir).parent / "webhooks.jsonl")  # type: ignore[attr-defined]
            .read_text()
            .splitlines()
        ]
        first = [a for a in attempts if a["alert"] == received[0]["alert"]["id"] and a["type"] == "alert"] or attempts
        assert any("error" in a for a in attempts) and sum(a.get("status") == 200 for a in attempts) == 6
        assert first[-1].get("status") == 200
    finally:
        if receiver is not None:
            receiver[0].should_exit = True
            receiver[1].join(timeout=10)
    folder = Path(live.app.state.monitor.dir)  # type: ignore[attr-defined]
    reloaded = Alerts(AlertRules(), folder, 30.0).listing()
    assert {a["id"] for a in reloaded} == {a["id"] for a in alerts}
    assert next(a for a in reloaded if a["id"] == pause["id"])["acknowledged_at"] is not None


def test_loud_snoring_reads_the_per_second_head_where_the_rows_have_it(tmp_path: Path) -> None:
    """20 epochs (10 min): with the per-second head an epoch snores when 10 s of it are called snoring,
    whatever the resp head's epoch label; rows without it fall back to that label."""
    alerts = Alerts(AlertRules(), tmp_path, epoch_seconds=30.0)

    def rows(snore_s: float | None, label: str) -> list[dict[str, Any]]:
        return [{"epoch_index": i, "resp_pred": label, "snore_s_pred": snore_s} for i in range(20)]

    for session, night in {
        "s-quiet": rows(9.5, "snore"),  # the epoch head says snore; the seconds say not enough
        "s-loud": rows(12.0, "none"),
        "s-old": rows(None, "snore"),  # heads without the per-second head
    }.items():
        alerts.on_epochs(session, "bed", night, {}, {}, 1.0)
    raised = {a["session_id"] for a in alerts.listing() if a["rule"] == "loud_snoring"}
    assert raised == {"s-loud", "s-old"}


def test_breathing_unheard_for_five_minutes_is_one_alert_until_it_is_heard_again(tmp_path: Path) -> None:
    alerts = Alerts(AlertRules(), tmp_path, epoch_seconds=30.0)
    for now, unheard in ((100.0, 0.0), (400.0, 240.0), (460.0, 300.0), (520.0, 360.0), (580.0, 420.0)):
        alerts.on_chunk("s-far", "bed 4", [], unheard, now)
    [alert] = [a for a in alerts.listing() if a["rule"] == "breathing_unheard"]
    assert alert["start_s"] == 160.0 and alert["end_s"] == 580.0 and alert["active"]  # one alert, the episode grows
    assert alert["evidence"]["minutes"] == 5.0
    alerts.on_chunk("s-far", "bed 4", [], 0.0, 640.0)  # heard again: the episode clears
    assert not alerts.listing()[0]["active"]
    alerts.on_chunk("s-far", "bed 4", [], 300.0, 1000.0)  # a second episode, a second alert
    assert len([a for a in alerts.listing() if a["rule"] == "breathing_unheard"]) == 2
    off = Alerts(AlertRules.model_validate({"breathing_unheard": {"enabled": False}}), tmp_path / "off", 30.0)
    off.on_chunk("s-far", "bed 4", [], 900.0, 1000.0)
    assert off.listing() == []


def test_a_webhook_that_hangs_delays_none_of_another_webhooks_alerts(tmp_path: Path) -> None:
    """A pager that takes connections and never answers (each attempt waits out the 5-s timeout) and a
    healthy one: every alert reaches the healthy one at once, as if the other were not there."""
    import socket

    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(64)  # connections complete in the kernel's backlog; nothing ever reads or answers
    received: list[float] = []

    async def hook(request: Request) -> PlainTextResponse:
        received.append(time.monotonic())
        return PlainTextResponse("ok")

    port = free_port()
    server, thread = start_server(Starlette(routes=[Route("/hook", hook, methods=["POST"])]), port)
    rules = AlertRules.model_validate(
        {
            "webhooks": [
                {"url": f"http://127.0.0.1:{hanging.getsockname()[1]}/hook", "secret": SECRET},
                {"url": f"http://127.0.0.1:{port}/hook", "secret": SECRET},
            ]
        }
    )
    alerts = Alerts(rules, tmp_path / "sessions", epoch_seconds=30.0)
    try:
        start = time.monotonic()
        for k in range(4):  # four pauses of two beds
            alerts.on_chunk(f"s-{k % 2}", f"bed {k % 2}", [(100.0 * k, 100.0 * k + 15.0)])
        deadline = time.monotonic() + 4.0  # under one timeout of the hanging pager
        while len(received) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(received) == 4 and max(received) - start < 4.0
    finally:
        alerts.stop()
        server.should_exit = True
        thread.join(timeout=10)
        hanging.close()


def test_a_forgotten_nights_alerts_leave_memory_and_a_restart_holds_only_the_sessions_it_resumes(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "sessions"
    alerts = Alerts(AlertRules(), folder, epoch_seconds=30.0)
    for sid in ("s-old", "s-new"):
        alerts.on_chunk(sid, "bed", [(100.0, 115.0)])
    alerts.forget("s-old")
    assert {a["session_id"] for a in alerts.listing()} == {"s-new"}
    assert (folder / "s-old" / "alerts.jsonl").exists()  # its record stays on disk
    again = Alerts(AlertRules(), folder, epoch_seconds=30.0)  # a restart reads every session's file
    assert len(again.listing()) == 2
    again.keep_only({"s-new"})  # the sessions it resumed
    assert [a["session_id"] for a in again.listing()] == ["s-new"]
