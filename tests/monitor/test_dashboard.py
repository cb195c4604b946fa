"""The dashboard in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright, no browser
download): log in by name and password, see a bed appear, its hypnogram grow and an alert arrive,
acknowledge it (the acknowledgement names the user), open the finished night's report. Screenshots go to
$SLEEPSOUND_TEST_ARTEFACTS when set."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import httpx
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
        # the page's script calls the API with the login cookie; without it the API says 401
        assert httpx.get(f"{live.base}/v1/beds").status_code == 401
        assert httpx.get(f"{live.base}/v1/alerts/stream", timeout=5).status_code == 401
    finally:
        page.close()
    assert (shots / "monitor-dashboard-phone.png").stat().st_size > 10_000
    assert time.time() > 0
