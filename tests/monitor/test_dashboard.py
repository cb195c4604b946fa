"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright, no browser
download): log in by name and password, see a bed appear, its hypnogram grow and an alert arrive,
acknowledge it (the acknowledgement names the user), open the finished night's report. Screenshots go to
$SLEEPSOUND_TEST_ARTEFACTS when set."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from sleepsound.monitor.alerts import AlertRules
from sleepsound.monitor.app import Settings
from sleepsound.monitor.users import add_user, users_path
from tests.monitor.conftest import Live
from tests.monitor.test_alerts import _chunks
from tests.monitor.test_breathing import _breaths

TOKEN = "operator-secret-token"
SETTINGS = Settings(
    operator_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
    rate_per_s=1000.0,
    burst=1000,
    rules=AlertRules.model_validate({"no_audio": {"seconds": 600}}),
)


@pytest.mark.parametrize("live", [SETTINGS], indirect=True)
def test_the_dashboard_shows_a_bed_its_night_and_its_alert_and_acknowledges_it(
    live: Live, browser: Any, artefacts: Path, fresh_root: Path
) -> None:
    shots = artefacts
    add_user(users_path(fresh_root), "nurse-1", "correct horse battery")
    operator = {"Authorization": f"Bearer {TOKEN}"}
    page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    try:
        page.goto(f"{live.base}/dashboard")
        assert page.url.endswith("/login")
        page.fill("#name", "nurse-1")
        page.fill("#password", "not-the-password")
        page.click("#user-submit")
        page.wait_for_selector("text=Unknown name or wrong password.")
        page.fill("#name", "nurse-1")
        page.fill("#password", "correct horse battery")
        page.click("#user-submit")
        page.wait_for_url("**/dashboard")
        page.wait_for_selector("#who >> text=logged in as nurse-1")
        page.wait_for_selector("#beds >> text=No beds yet.")

        chunks = _chunks(_breaths(150, (80.0, 96.0)))  # a pause from 77.5 s to the breath at 96 s
        with httpx.Client(timeout=60) as client:
            opened = client.post(f"{live.base}/v1/sessions", json={"bed_id": "bed-12"}, headers=operator).json()
            sid, device = opened["session_id"], {"Authorization": f"Bearer {opened['token']}"}

            def send(seqs: range) -> None:
                for seq in seqs:
                    url = f"{live.base}/v1/sessions/{sid}/chunks/{seq}"
                    assert client.post(url, content=chunks[seq], headers=device).status_code == 200

            send(range(0, 6))  # 60 s: two epochs
            page.wait_for_selector(f"article[data-session='{sid}'] svg[data-epochs='2']", timeout=30_000)
            assert page.inner_text(f"article[data-session='{sid}'] .name") == "bed-12"
            send(range(6, 12))  # the hypnogram grows, and the pause ends in chunk 9
            page.wait_for_selector(f"article[data-session='{sid}'] svg[data-epochs='4']", timeout=30_000)
            page.wait_for_selector(".alert:not(.acknowledged) >> text=breathing pause", timeout=30_000)
            page.screenshot(path=str(shots / "monitor-dashboard-phone.png"), full_page=True)
            page.click(".alert button")
            page.wait_for_selector(".alert.acknowledged >> text=acknowledged by nurse-1")
            (alert,) = client.get(f"{live.base}/v1/alerts", headers=operator).json()
            assert alert["rule"] == "breathing_pause" and alert["acknowledged_at"] is not None
            assert alert["acknowledged_by"] == "nurse-1"

            client.delete(f"{live.base}/v1/sessions/{sid}", headers=device)
            page.wait_for_selector(f"article[data-session='{sid}'] >> text=Night report", timeout=60_000)
            page.set_viewport_size({"width": 1280, "height": 800})
            page.screenshot(path=str(shots / "monitor-dashboard-desktop.png"), full_page=True)
            page.click(f"article[data-session='{sid}'] >> text=Night report")
            page.wait_for_load_state()
            assert f"monitor-{sid}" in page.content()
            decoded = "els => els.map(e => e.complete && e.naturalWidth > 0)"
            figures = page.locator("img").evaluate_all(decoded)
            assert figures and all(figures)  # the report's inline figures are not blocked by the page's policy
            page.click("a[href^='nights/'][href$='.html']")  # the night's own page, from the report
            page.wait_for_load_state()
            assert page.inner_text("h1").startswith("Night report") and all(page.locator("img").evaluate_all(decoded))
            page.click("text=run report")  # and back
            page.wait_for_load_state()
            assert f"monitor-{sid}" in page.content()
        # the page's script calls the API with the login cookie; without it the API says 401
        assert httpx.get(f"{live.base}/v1/beds").status_code == 401
        assert httpx.get(f"{live.base}/v1/alerts/stream", timeout=5).status_code == 401
    finally:
        page.close()
    assert (shots / "monitor-dashboard-phone.png").stat().st_size > 10_000
    assert time.time() > 0


UNHEARD = Settings(
    operator_token_hash=SETTINGS.operator_token_hash,
    rate_per_s=1000.0,
    burst=1000,
    rules=AlertRules.model_validate({"no_audio": {"seconds": 600}, "breathing_unheard": {"minutes": 1}}),
)


@pytest.mark.parametrize("live", [UNHEARD], indirect=True)
def test_a_failed_first_poll_is_shown_and_retried_and_an_unheard_bed_says_so(
    live: Live, browser: Any, fresh_root: Path
) -> None:
    """The page's first /v1/beds answered 503 (the service at its connection cap): the page says the beds
    are not updated and keeps polling, never showing an empty ward for it. Then a bed whose microphone
    hears only the room for over a minute: its card says breathing is not heard, and the rule alerts."""
    failed = {"n": 0}

    def first_fails(route: Any) -> None:
        if failed["n"] == 0:
            failed["n"] += 1
            route.fulfill(status=503, content_type="application/json", body='{"detail": "busy"}')
        else:
            route.continue_()

    add_user(users_path(fresh_root), "nurse-1", "correct horse battery")
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    try:
        page.route("**/v1/beds", first_fails)
        page.goto(f"{live.base}/login")
        page.fill("#name", "nurse-1")
        page.fill("#password", "correct horse battery")
        page.click("#user-submit")
        page.wait_for_selector("#problem >> text=Beds not updated")
        assert "No beds yet." not in page.inner_text("#beds")
        page.wait_for_selector("#beds >> text=No beds yet.", timeout=10_000)  # the next poll
        assert page.inner_text("#problem") == ""
        room = np.random.default_rng(3).normal(0, 0.002, 80 * 16_000).astype(np.float32)
        with httpx.Client(timeout=60) as client:
            operator = {"Authorization": f"Bearer {TOKEN}"}
            opened = client.post(f"{live.base}/v1/sessions", json={"bed_id": "bed-7"}, headers=operator).json()
            device = {"Authorization": f"Bearer {opened['token']}"}
            for seq, chunk in enumerate(_chunks(room)):
                url = f"{live.base}/v1/sessions/{opened['session_id']}/chunks/{seq}"
                assert client.post(url, content=chunk, headers=device).status_code == 200
            page.wait_for_selector("article .unheard >> text=breathing not heard for", timeout=30_000)
            page.wait_for_selector(".alert >> text=breathing unheard", timeout=30_000)
            (alert,) = client.get(f"{live.base}/v1/alerts", headers=operator).json()
            assert alert["rule"] == "breathing_unheard" and alert["bed_id"] == "bed-7"
    finally:
        page.close()


@pytest.mark.parametrize("live", [SETTINGS], indirect=True)
def test_the_alert_stream_of_a_login_that_logged_out_sends_nothing_more(live: Live, fresh_root: Path) -> None:
    add_user(users_path(fresh_root), "nurse-1", "correct horse battery")
    alerts = live.app.state.monitor.alerts  # type: ignore[attr-defined]
    with httpx.Client(timeout=30) as nurse:
        form = {"name": "nurse-1", "password": "correct horse battery"}
        assert nurse.post(f"{live.base}/login", data=form).status_code in (200, 303)
        lines: list[str] = []

        def follow() -> None:
            with nurse.stream("GET", f"{live.base}/v1/alerts/stream") as stream:
                for line in stream.iter_lines():
                    lines.append(line)

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        deadline = time.monotonic() + 10
        while ": connected" not in lines and time.monotonic() < deadline:
            time.sleep(0.05)
        alerts.on_chunk("s-1", "bed-1", [(100.0, 115.0)])
        while not any(line.startswith("event: alert") for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("bed-1" in line for line in lines)  # logged in: the alert arrives
        nurse.post(f"{live.base}/logout")
        alerts.on_chunk("s-2", "PATIENT-4711", [(200.0, 215.0)])
        reader.join(timeout=10)
        assert not reader.is_alive()  # the stream ended
        assert not any("PATIENT-4711" in line for line in lines)  # and the alert after the logout never went
