"""The dashboard: every bed being monitored, its night so far, and the alert feed, in one page.

Plain HTML and a little JavaScript served by the monitoring app (no build step): the page polls
``GET /v1/beds`` every 2 s for each bed's state, hypnogram and breathing figures, follows
``GET /v1/alerts/stream`` (server-sent events) for alerts as they are raised, and acknowledges
one with ``POST /v1/alerts/{id}/ack``. A finished night links to its report.

Who may look: ``/login`` takes a user's name and password (``monitor.users``: ``sleepsound
monitor users add NAME``; scrypt hashes at rest, failed logins limited per name and per address)
or the operator token, and sets a session cookie (random; only its hash is kept; HttpOnly,
SameSite=Strict, 12 hours) that remembers who logged in: an acknowledgement records that name.
The API also takes the token as a bearer. With neither a token nor a user (loopback only:
``monitor serve`` refuses another address without a token), the page is open to whoever can
reach the loopback port.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from sleepsound.monitor.limits import Refused, client_of, read_body
from sleepsound.monitor.users import FailedLogins, UserStore

log = logging.getLogger(__name__)

COOKIE = "sleepsound_monitor"
COOKIE_HOURS = 12.0
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",  # no-referrer would make a form POST say Origin: null
}
# A night's report is static: no script at all, its figures inline PNGs (``data:``), its style inline.
REPORT_HEADERS = {
    **HEADERS,
    "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'",
}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Access:
    """Who may use the operator side: the operator token (bearer), or a browser logged in (cookie) with
    the token or as a named user (``monitor.users``: name and password, hashed at rest).

    Open (no check) only when neither an operator token nor any user is configured (loopback only:
    ``monitor serve`` refuses another address without a token). Opening a session (a device's
    request) takes the operator token or a logged-in browser, never a user's password.
    """

    def __init__(
        self, operator_token_hash: str | None, users: UserStore | None = None, failures: FailedLogins | None = None
    ) -> None:
        self.token_hash = operator_token_hash
        self.users = users
        self.failures = failures or FailedLogins()
        self._cookies: dict[str, tuple[float, str]] = {}  # cookie hash -> (expiry (monotonic), who)
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        return self.token_hash is None and not (self.users is not None and self.users.any())

    def check(self, request: Request, what: str, devices: bool = False) -> None:
        """401 without credentials, 403 with wrong ones. ``devices``: a request a device makes (opening a
        session), open whenever no operator token is configured, whatever users there are."""
        if self.token_hash is None and (devices or self.open):
            return
        authorization = request.headers.get("authorization") or ""
        presented = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        if presented:
            if self.token_hash is None or not hmac.compare_digest(_digest(presented), self.token_hash):
                raise Refused(403, "not the operator token")
            return
        if self.who(request) is not None:
            return
        raise Refused(401, f"{what} needs the operator token (Authorization: Bearer <token>) or a login")

    def who(self, request: Request) -> str | None:
        """Who makes this request: a user's name, ``operator`` (the token, or an open service), or None."""
        if self.open:
            return "operator"
        authorization = request.headers.get("authorization") or ""
        presented = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
        if presented and self.token_hash is not None and hmac.compare_digest(_digest(presented), self.token_hash):
            return "operator"
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return None
        with self._lock:
            entry = self._cookies.get(_digest(cookie))
        if entry is None or entry[0] <= time.monotonic():
            return None
        who = entry[1]
        if who != "operator" and (self.users is None or who not in self.users.users()):
            return None  # a user removed since: their cookie goes with them
        return who

    def logged_in(self, request: Request) -> bool:
        return self.who(request) is not None

    def login(self, token: str) -> str | None:
        """A new cookie value when ``token`` is the operator token."""
        if self.token_hash is None or not hmac.compare_digest(_digest(token), self.token_hash):
            return None
        return self._cookie("operator")

    def login_user(self, name: str, password: str) -> str | None:
        """A new cookie value when ``name`` is a user with ``password`` (slow: call it off the event loop)."""
        if self.users is None or not self.users.verify(name, password):
            return None
        return self._cookie(name)

    def logout(self, request: Request) -> None:
        cookie = request.cookies.get(COOKIE)
        if cookie:
            with self._lock:
                self._cookies.pop(_digest(cookie), None)

    def _cookie(self, who: str) -> str:
        now = time.monotonic()
        cookie = secrets.token_urlsafe(32)
        with self._lock:
            self._cookies = {k: v for k, v in self._cookies.items() if v[0] > now}
            self._cookies[_digest(cookie)] = (now + COOKIE_HOURS * 3600, who)
        return cookie


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 1)


def bed_view(monitor: Any, session: Any) -> dict[str, Any]:
    """One bed as the page shows it: state, hypnogram so far, estimated AHI and snore index."""
    from sleepsound.report.outputs import night_breathing

    night = session.night[:]  # the scoring thread appends to it
    rules = monitor.alerts.rules
    silent = session.state == "open" and time.time() - session.last_chunk > rules.no_audio.seconds
    last = night[-1] if night else None
    if session.state != "open":
        state = "ended"
    elif silent or last is None or last["stage_pred"] is None:
        state = "no signal" if (silent or last is not None) else "starting"
    else:
        state = {"Wake": "awake"}.get(last["stage_pred"], last["stage_pred"])
    # The night's figures and hypnogram change only when an epoch is scored: made then, not at every poll
    # (a DataFrame of the whole night costs 6.5 ms for an 8-h bed, every tab polls every 2 s).
    if session.figures is None or session.figures[0] != len(night):
        figures: dict[str, Any] = {}
        if night:
            frame = pd.DataFrame(night).assign(events_true=None, snore_frac_true=None, stage_true=None)
            figures = night_breathing(frame, monitor.scorer.model["heads"].get("resp"))
        session.figures = (len(night), figures, [[row["epoch_index"], row["stage_pred"]] for row in night])
    _, figures, hypnogram = session.figures
    return {
        "session_id": session.id,
        "bed_id": session.bed_id,
        "state": state,
        "epochs": len(night),
        "hypnogram": hypnogram,
        "ahi": _number(figures.get("ahi_estimated")),
        "snore_index": _number(figures.get("snore_index_estimated")),
        # minutes without breathing heard while the bed is watched (None: heard, or not watched)
        "unheard_minutes": (
            round(session.unheard_s / 60, 1)
            if session.state == "open" and session.unheard_s is not None and session.unheard_s >= 60
            else None
        ),
        "report": (
            f"/runs/{session.run_id}/report"
            if session.state == "published"
            and session.run_id
            and (_report_folder(monitor, session.run_id) / "index.html").exists()
            else None  # a night with no whole epoch is published without one
        ),
    }


def add_dashboard(app: FastAPI, monitor: Any, access: Access) -> None:
    """The page, its script, login, the beds' JSON and the finished nights' reports."""

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/dashboard", status_code=303)

    @app.get("/login", include_in_schema=False)
    def login_page() -> HTMLResponse:
        return HTMLResponse(LOGIN_HTML.replace("{message}", ""), headers=HEADERS)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        """Name and password, or the operator token. Failures count per name and per client address
        (``users.FailedLogins``; the address is ``limits.client_of``, as for every per-client limit);
        past the limit the attempt is refused unread (429)."""
        body = await read_body(request, 4096, 10.0)
        form = parse_qs(body.decode("utf-8", "replace"))
        token = (form.get("token") or [""])[0]
        name = (form.get("name") or [""])[0].strip()
        password = (form.get("password") or [""])[0]
        address = f"address:{client_of(request)}"
        keys = (address, f"name:{name}") if name else (address, "token")
        wait = access.failures.wait(*keys)
        if wait > 0:
            message = f"Too many failed logins; try again in {math.ceil(wait / 60)} min."
            page = LOGIN_HTML.replace("{message}", f'<p class="error">{message}</p>')
            return HTMLResponse(page, status_code=429, headers={**HEADERS, "Retry-After": str(math.ceil(wait))})
        if name:  # scrypt takes ~50 ms: off the event loop, so /health never waits for it
            cookie = await run_in_threadpool(access.login_user, name, password)
            failure = "Unknown name or wrong password."
        else:
            cookie = access.login(token)
            failure = "That is not the operator token."
        if cookie is None:
            access.failures.failed(*keys)
            log.info("failed dashboard login (%s)", "name and password" if name else "token")
            page = LOGIN_HTML.replace("{message}", f'<p class="error">{failure}</p>')
            return HTMLResponse(page, status_code=401, headers=HEADERS)
        access.failures.succeeded(keys[1])
        reply = RedirectResponse("/dashboard", status_code=303)
        reply.set_cookie(COOKIE, cookie, max_age=int(COOKIE_HOURS * 3600), httponly=True, samesite="strict", path="/")
        return reply

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> Response:
        access.logout(request)
        reply = RedirectResponse("/login", status_code=303)
        reply.delete_cookie(COOKIE, path="/")
        return reply

    @app.get("/v1/me")
    def me(request: Request) -> dict[str, Any]:
        """Who the dashboard is logged in as (its header shows it)."""
        access.check(request, "the dashboard")
        return {"who": access.who(request), "open": access.open}

    @app.get("/dashboard", include_in_schema=False)
    def dashboard(request: Request) -> Response:
        if not access.open and not access.logged_in(request):
            return RedirectResponse("/login", status_code=303)
        return HTMLResponse(DASHBOARD_HTML, headers=HEADERS)

    @app.get("/dashboard.js", include_in_schema=False)
    def script() -> Response:
        return Response(DASHBOARD_JS, media_type="text/javascript", headers=HEADERS)

    @app.get("/v1/beds")
    def beds(request: Request) -> list[dict[str, Any]]:
        access.check(request, "the dashboard")
        return [bed_view(monitor, s) for s in sorted(monitor.sessions.values(), key=lambda s: s.created)]

    @app.get("/runs/{run_id}/report", include_in_schema=False)
    @app.get("/runs/{run_id}/index.html", include_in_schema=False)  # where a night's page links back to
    def report(run_id: str, request: Request) -> Response:
        access.check(request, "a night's report")
        path = _report_folder(monitor, run_id) / "index.html"
        if not path.exists():
            raise Refused(404, f"night {run_id} has no report")
        return FileResponse(path, media_type="text/html", headers=REPORT_HEADERS)

    @app.get("/runs/{run_id}/nights/{name}", include_in_schema=False)
    def night_page(run_id: str, name: str, request: Request) -> Response:
        """The night's own page and PDF, which the report links to (``nights/<id>.html``, ``.pdf``)."""
        access.check(request, "a night's report")
        folder = _report_folder(monitor, run_id) / "nights"
        kinds = {".html": "text/html", ".pdf": "application/pdf"}
        path = folder / name
        if Path(name).suffix not in kinds or path.parent != folder or not path.is_file():
            raise Refused(404, f"night {run_id} has no page {name!r}")
        return FileResponse(path, media_type=kinds[Path(name).suffix], headers=REPORT_HEADERS)


def _report_folder(monitor: Any, run_id: str) -> Path:
    """A published night's report folder; 404 for a run id no session the service holds published."""
    if not any(s.run_id == run_id for s in monitor.sessions.values()):
        raise Refused(404, f"no published night {run_id}")
    return Path(monitor.dir).parents[1] / "runs" / run_id / "report"


LOGIN_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>sleepsound monitor: log in</title>
<style>body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:24rem;padding:0 1rem}
input,button{font-size:1rem;padding:.5rem;width:100%;box-sizing:border-box;margin:.3rem 0}.error{color:#b00020}</style>
</head><body><h1>Bedside monitor</h1>{message}
<form method="post" action="/login" id="user-login"><label for="name">Name</label>
<input id="name" name="name" autocomplete="username" required>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit" id="user-submit">Log in</button></form>
<details><summary>Log in with the operator token</summary>
<form method="post" action="/login" id="token-login"><label for="token">Operator token</label>
<input id="token" name="token" type="password" autocomplete="off" required>
<button type="submit" id="token-submit">Log in with the token</button></form></details></body></html>
"""

DASHBOARD_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>sleepsound monitor</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;padding:.8rem;background:#f6f7f9;color:#1d2330}
h1{font-size:1.3rem;margin:.2rem 0 .8rem}main{display:grid;gap:.8rem;grid-template-columns:1fr}
@media(min-width:900px){main{grid-template-columns:2fr 1fr}}
.bed{background:#fff;border-radius:.5rem;padding:.7rem;margin-bottom:.8rem;box-shadow:0 1px 2px #0002}
.bed h2{font-size:1.05rem;margin:0 0 .3rem;display:flex;justify-content:space-between;gap:.5rem;flex-wrap:wrap}
.state{font-weight:600}.state.awake{color:#b36b00}.state.NREM{color:#1f5fa8}.state.REM{color:#6b3fa0}
.state.no.signal,.state.ended{color:#666}.figures{font-size:.9rem;color:#444}.unheard{color:#a40000}
svg{width:100%;height:70px;background:#fafbfc;border:1px solid #e3e6ea;border-radius:.3rem}
.feed{background:#fff;border-radius:.5rem;padding:.7rem;box-shadow:0 1px 2px #0002}
.alert{border-left:4px solid #b00020;padding:.3rem .5rem;margin:.4rem 0;background:#fff5f6}
.alert.acknowledged{border-color:#999;background:#f3f3f3}
.alert button{font-size:.9rem;padding:.3rem .6rem;margin-top:.2rem}.empty{color:#666}
.legend{font-size:.75rem;color:#666}header{display:flex;justify-content:space-between;align-items:center;
flex-wrap:wrap;gap:.5rem}.who{font-size:.9rem;color:#444}.who button{font-size:.85rem}
.feed h2{font-size:1.05rem;margin:0 0 .3rem}.problem{color:#a40000;margin:0 0 .5rem}.problem:empty{display:none}
</style></head>
<body><header><h1>Bedside monitor</h1>
<form method="post" action="/logout" class="who"><span id="who"></span> <button type="submit">Log out</button></form>
</header>
<p id="problem" class="problem" role="status"></p>
<main><section id="beds" aria-label="beds"><p class="empty">Loading beds…</p></section>
<section class="feed" aria-label="alerts"><h2>Alerts</h2>
<div id="alerts"><p class="empty">Loading alerts…</p></div></section></main>
<script src="/dashboard.js"></script></body></html>
"""

DASHBOARD_JS = r"""'use strict';
const LEVEL = {Wake: 8, REM: 30, NREM: 55};
const beds = document.getElementById('beds');
const feed = document.getElementById('alerts');
const problem = document.getElementById('problem');
const known = new Map();

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function hypnogram(points) {
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  const n = Math.max(points.length, 1);
  svg.setAttribute('viewBox', `0 0 ${n} 64`);
  svg.setAttribute('preserveAspectRatio', 'none');
  svg.setAttribute('class', 'hypnogram');
  let d = '';
  points.forEach(([i, stage], k) => {
    if (stage === null) return;
    const y = LEVEL[stage];
    const starts = k === 0 || points[k - 1][1] === null;
    d += `${starts ? 'M' : 'L'}${k} ${y} L${k + 1} ${y} `;
  });
  const path = document.createElementNS('http://www.w3.org/2000/svg', 'path');
  path.setAttribute('d', d.trim());
  path.setAttribute('fill', 'none');
  path.setAttribute('stroke', '#1f5fa8');
  path.setAttribute('stroke-width', '2');
  path.setAttribute('vector-effect', 'non-scaling-stroke');
  svg.appendChild(path);
  svg.dataset.epochs = String(points.length);
  return svg;
}

function figure(value, unit) { return value === null ? '-' : `${value} ${unit}`; }

async function refresh() {
  // A failed poll (the service busy, the network gone) keeps the last beds shown and says so: an empty
  // ward must never be shown for an answer that was not a list of beds.
  let list;
  try {
    const reply = await fetch('/v1/beds', {credentials: 'same-origin'});
    if (reply.status === 401) { location.href = '/login'; return; }
    if (!reply.ok) throw new Error(`the service answered ${reply.status}`);
    list = await reply.json();
    if (!Array.isArray(list)) throw new Error('the service answered no list of beds');
  } catch (error) {
    problem.textContent = `Beds not updated since ${new Date().toLocaleTimeString()}: ${error.message}; retrying.`;
    return;
  }
  problem.textContent = '';
  beds.replaceChildren();
  if (!list.length) beds.appendChild(el('p', {class: 'empty'}, 'No beds yet.'));
  for (const bed of list) {
    const card = el('article', {class: 'bed', 'data-session': bed.session_id});
    const title = el('h2');
    title.appendChild(el('span', {class: 'name'}, bed.bed_id));
    title.appendChild(el('span', {class: `state ${bed.state}`}, bed.state));
    card.appendChild(title);
    card.appendChild(hypnogram(bed.hypnogram));
    card.appendChild(el('div', {class: 'legend'}, 'hypnogram: Wake top, REM middle, NREM bottom; gaps unscored'));
    const minutes = (bed.epochs / 2).toFixed(1);
    card.appendChild(el('div', {class: 'figures'},
      `${minutes} min scored, events/h ${figure(bed.ahi, '')}, snore index ${figure(bed.snore_index, 'min/h')}`));
    if (bed.unheard_minutes !== null) {
      card.appendChild(el('div', {class: 'unheard'},
        `breathing not heard for ${bed.unheard_minutes} min: pauses cannot be found`));
    }
    if (bed.report) {
      const link = el('a', {href: bed.report}, 'Night report');
      card.appendChild(link);
    }
    beds.appendChild(card);
  }
}

function showAlert(alert) {
  known.set(alert.id, alert);
  let item = feed.querySelector(`[data-alert="${alert.id}"]`);
  if (!item) {
    item = el('div', {'data-alert': alert.id});
    feed.prepend(item);
  }
  const empty = feed.querySelector('.empty');
  if (empty) empty.remove();
  item.className = 'alert' + (alert.acknowledged_at ? ' acknowledged' : '');
  item.replaceChildren();
  const when = new Date(alert.raised_at * 1000).toLocaleTimeString();
  item.appendChild(el('strong', {}, alert.rule.replace('_', ' ')));
  const span = `${Math.round(alert.start_s)}-${Math.round(alert.end_s)} s into the night`;
  item.appendChild(el('div', {}, `${alert.bed_id}, ${span}, raised ${when}`));
  if (alert.acknowledged_at) {
    const by = alert.acknowledged_by ? ` by ${alert.acknowledged_by}` : '';
    item.appendChild(el('div', {class: 'ack'}, `acknowledged${by}`));
  } else {
    const button = el('button', {type: 'button'}, 'Acknowledge');
    button.addEventListener('click', async () => {
      const reply = await fetch(`/v1/alerts/${alert.id}/ack`, {method: 'POST', credentials: 'same-origin'});
      if (reply.ok) showAlert(await reply.json());
    });
    item.appendChild(button);
  }
}

async function loadAlerts() {
  // Every alert so far: at start and whenever the live stream (re)connects, so none raised while it
  // was down is missed; retried until it answers.
  try {
    const reply = await fetch('/v1/alerts', {credentials: 'same-origin'});
    if (!reply.ok) throw new Error(`the service answered ${reply.status}`);
    const alerts = await reply.json();
    for (const alert of alerts) showAlert(alert);
    if (!alerts.length && !known.size) feed.replaceChildren(el('p', {class: 'empty'}, 'No alerts.'));
  } catch (error) {
    setTimeout(loadAlerts, 5000);
  }
}

async function poll() {
  await refresh();
  setTimeout(poll, 2000);  // the next poll after this one's answer: slow answers never pile up
}

async function whoAmI() {
  try {
    const me = await fetch('/v1/me', {credentials: 'same-origin'});
    if (!me.ok) return;
    const who = await me.json();
    document.getElementById('who').textContent = who.open ? 'open on loopback' : `logged in as ${who.who}`;
  } catch (error) { /* shown at the next page load */ }
}

function start() {
  const stream = new EventSource('/v1/alerts/stream');
  stream.addEventListener('open', loadAlerts);
  stream.addEventListener('alert', (e) => showAlert(JSON.parse(e.data)));
  stream.addEventListener('acknowledged', (e) => showAlert(JSON.parse(e.data)));
  whoAmI();
  poll();
}
start();
"""
