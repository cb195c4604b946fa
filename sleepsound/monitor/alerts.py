"""Alerts: rules over a night as it is scored, deduplicated, acknowledged, delivered live and to webhooks.

The rules and their defaults (a YAML file given to ``monitor serve --alerts`` changes any of them):

- ``breathing_pause``: a pause of at least 10 s ended by a recovery breath (``breathing.breathing_pauses``
  over the last 180 s of the stream after every chunk: the batch detector's apnoeas); one alert per pause.
- ``event_rate``: estimated apnoea-hypopnoea events per hour over the last hour above 30 (severe
  in AASM terms), from the resp head's probabilities as the batch report estimates them
  (P(apnoea-hypopnoea) x events per event epoch); judged once 10 minutes have been scored.
- ``loud_snoring``: snoring in every epoch for 10 minutes: at least 10 s of the epoch called snoring
  by the per-second ``snore`` head, or, for heads that predate it, the resp head's snore label.
- ``breathing_unheard``: no breathing heard for 5 minutes while audio comes in (no rhythm of breath
  sounds over the room's noise: ``breathing.heard``), so no pause could be found: the microphone is too
  far, turned away or drowned by the room. One alert per episode; it clears when breathing is heard.
  It reads the pause rule's envelope, so it needs ``breathing_pause`` enabled.
- ``no_audio``: no chunk for 120 s while the session is open (the device is gone).
- ``sensor``: the microphone silent (an epoch refused for zero RMS) or clipping (over 1% of an
  epoch's samples at full scale) for 5 minutes.

Deduplication: a rule fires once per episode: it raises one alert when its condition starts and
none again until the condition has cleared (a pause is its own episode). Each alert has an id,
the session and bed, the rule, the night's times (seconds from the start of the night), the
wall-clock time raised and its evidence; ``acknowledge`` records who and when. Alerts are
appended to ``monitor/sessions/<id>/alerts.jsonl`` as they happen, so a restarted service
shows them again.

Delivery: every alert (and acknowledgement) goes to the live subscribers (the server-sent
event stream) at once and to each configured webhook from a thread and queue of its own (a webhook
that hangs delays only its own deliveries): the JSON body
signed with HMAC-SHA256 of the webhook's secret (``X-Sleepsound-Signature: sha256=<hex>``),
retried with exponential backoff (1, 2, 4, ... s, up to ``max_attempts``), every attempt
recorded in ``monitor/webhooks.jsonl`` (time, alert, webhook index, status or error).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)


class PauseRule(BaseModel):
    enabled: bool = True
    min_pause_s: float = Field(10.0, gt=0)
    window_s: float = Field(180.0, gt=0)  # the audio the detector reads: the pause and 90 s of breathing before it


class EventRateRule(BaseModel):
    enabled: bool = True
    per_hour: float = Field(30.0, ge=0)
    window_minutes: float = Field(60.0, gt=0)
    min_minutes: float = Field(10.0, gt=0)


class SnoringRule(BaseModel):
    enabled: bool = True
    minutes: float = Field(10.0, gt=0)
    seconds_per_epoch: float = Field(10.0, gt=0, le=30)  # per-second head: an epoch snores with this much snoring


class UnheardRule(BaseModel):
    enabled: bool = True
    minutes: float = Field(5.0, gt=0)


class NoAudioRule(BaseModel):
    enabled: bool = True
    seconds: float = Field(120.0, gt=0)


class SensorRule(BaseModel):
    enabled: bool = True
    minutes: float = Field(5.0, gt=0)
    clipped_fraction: float = Field(0.01, gt=0, le=1)


class Webhook(BaseModel):
    url: str
    secret: str = Field(min_length=16, description="HMAC key; the receiver checks X-Sleepsound-Signature with it")


class AlertRules(BaseModel):
    """Every rule and where alerts go; unknown keys are refused (a typo must not pass silently)."""

    model_config = {"extra": "forbid"}

    breathing_pause: PauseRule = PauseRule()
    event_rate: EventRateRule = EventRateRule()
    loud_snoring: SnoringRule = SnoringRule()
    breathing_unheard: UnheardRule = UnheardRule()
    no_audio: NoAudioRule = NoAudioRule()
    sensor: SensorRule = SensorRule()
    webhooks: list[Webhook] = []
    max_attempts: int = Field(6, ge=1)
    backoff_s: float = Field(1.0, gt=0)


def load_rules(path: str | Path | None) -> AlertRules:
    """The rules in a YAML file (only what it changes), or the defaults."""
    import yaml

    if path is None:
        return AlertRules()
    with open(path, encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: alert rules must be a mapping of rule names to settings")
    return AlertRules.model_validate(data)


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Alerts:
    """All alerts of one service: raised by the rules, kept, acknowledged, and sent out."""

    def __init__(self, rules: AlertRules, folder: Path, epoch_seconds: float) -> None:
        self.rules = rules
        self.folder = folder  # monitor/sessions
        self.epoch_seconds = epoch_seconds
        self.alerts: dict[str, dict[str, Any]] = {}
        self._active: dict[tuple[str, str], str] = {}  # (session, rule) -> the episode's alert id
        self._lock = threading.Lock()
        self._subscribers: list[Callable[[dict[str, Any]], None]] = []
        # One queue and one delivery thread per webhook: a pager that hangs or refuses delays its own
        # deliveries only (with one thread for all, a dead one held every other's alerts for minutes).
        self._deliveries: list[queue.Queue[tuple[dict[str, Any], int] | None]] = [queue.Queue() for _ in rules.webhooks]
        self._webhook_log = folder.parent / "webhooks.jsonl"
        self._log_lock = threading.Lock()
        for index in range(len(rules.webhooks)):
            threading.Thread(target=self._deliver_loop, args=(index,), name=f"webhook-{index}", daemon=True).start()
        for path in sorted(folder.glob("*/alerts.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    break  # a line torn by a crash
                self.alerts[record["id"]] = record
                if record.get("active"):
                    self._active[(record["session_id"], record["rule"])] = record["id"]

    # ------------------------------------------------------------------ rules

    def on_chunk(
        self,
        session_id: str,
        bed_id: str,
        pauses: list[tuple[float, float]],
        unheard_s: float | None = None,
        now_s: float | None = None,
    ) -> None:
        """Pauses (night seconds) found in the stream's recent audio: one alert per new pause; and how long
        breathing has not been heard up to ``now_s`` (night seconds), the ``breathing_unheard`` rule."""
        u = self.rules.breathing_unheard
        if u.enabled and unheard_s is not None and now_s is not None:
            self._episode(
                session_id,
                bed_id,
                "breathing_unheard",
                unheard_s >= u.minutes * 60,
                now_s - unheard_s,
                now_s,
                {"minutes": round(unheard_s / 60, 1)},
            )
        rule = self.rules.breathing_pause
        if not rule.enabled:
            return
        for start, end in pauses:
            last = [a for a in self.alerts.values() if a["session_id"] == session_id and a["rule"] == "breathing_pause"]
            if any(start < a["end_s"] for a in last):
                continue  # the same pause seen again in a later window
            self._raise(session_id, bed_id, "breathing_pause", start, end, {"pause_s": round(end - start, 1)})

    def on_epochs(
        self,
        session_id: str,
        bed_id: str,
        rows: list[dict[str, Any]],
        reasons: dict[int, str | None],
        clipped: dict[int, float],
        events_per_event_epoch: float,
    ) -> None:
        """Scored epochs (all of the night so far, in order): the epoch rules."""
        if not rows:
            return
        e = self.epoch_seconds
        last = rows[-1]
        now_s = (int(last["epoch_index"]) + 1) * e
        r = self.rules.loud_snoring
        if r.enabled:

            def snoring(row: dict[str, Any]) -> bool:
                seconds = row.get("snore_s_pred")
                if seconds is not None:
                    return float(seconds) >= r.seconds_per_epoch
                return row.get("resp_pred") == "snore"

            run = _trailing(rows, snoring)
            self._episode(
                session_id,
                bed_id,
                "loud_snoring",
                run * e >= r.minutes * 60,
                now_s - run * e,
                now_s,
                {"minutes": round(run * e / 60, 1)},
            )
        s = self.rules.sensor
        if s.enabled:

            def faulty(row: dict[str, Any]) -> bool:
                i = int(row["epoch_index"])
                reason = reasons.get(i) or ""
                return reason.startswith("zero RMS") or clipped.get(i, 0.0) > s.clipped_fraction

            run = _trailing(rows, faulty)
            self._episode(
                session_id,
                bed_id,
                "sensor",
                run * e >= s.minutes * 60,
                now_s - run * e,
                now_s,
                {"minutes": round(run * e / 60, 1), "last_reason": reasons.get(int(last["epoch_index"]))},
            )
        q = self.rules.event_rate
        if q.enabled and now_s >= q.min_minutes * 60:
            window = [row for row in rows if int(row["epoch_index"]) * e >= now_s - q.window_minutes * 60]
            probs = [row["prob_apnea_hypopnea"] for row in window if row.get("prob_apnea_hypopnea") is not None]
            hours = len(window) * e / 3600
            rate = sum(probs) * events_per_event_epoch / hours if probs and hours else 0.0
            self._episode(
                session_id,
                bed_id,
                "event_rate",
                bool(probs) and rate > q.per_hour,
                now_s - len(window) * e,
                now_s,
                {"events_per_hour": round(rate, 1), "minutes": len(window) * e / 60},
            )

    def on_silence(self, session_id: str, bed_id: str, seconds_since_chunk: float, night_s: float) -> None:
        """Called by the expiry loop: no chunk for ``seconds_since_chunk``."""
        r = self.rules.no_audio
        if r.enabled:
            self._episode(
                session_id,
                bed_id,
                "no_audio",
                seconds_since_chunk >= r.seconds,
                night_s,
                night_s,
                {"seconds_without_audio": round(seconds_since_chunk)},
            )

    def forget(self, session_id: str) -> None:
        """A session the service no longer holds: its running episodes end and its alerts leave memory and
        the listings (they stay in its ``alerts.jsonl``), so neither grows with every night ever watched."""
        self.keep_only(None, drop=session_id)

    def keep_only(self, session_ids: set[str] | None, drop: str | None = None) -> None:
        """Hold the alerts of ``session_ids`` only (None: all but ``drop``'s)."""

        def kept(sid: str) -> bool:
            return sid != drop if session_ids is None else sid in session_ids

        with self._lock:
            self._active = {k: v for k, v in self._active.items() if kept(k[0])}
            self.alerts = {k: a for k, a in self.alerts.items() if kept(a["session_id"])}

    # ------------------------------------------------------------------ records

    def acknowledge(self, alert_id: str, by: str) -> dict[str, Any] | None:
        with self._lock:
            alert = self.alerts.get(alert_id)
            if alert is None:
                return None
            if alert.get("acknowledged_at") is None:
                alert["acknowledged_at"] = time.time()
                alert["acknowledged_by"] = by
                self._append(alert)
        self._send({"type": "acknowledged", "alert": alert})
        return alert

    def listing(self, session_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return sorted(
                (a for a in self.alerts.values() if session_id is None or a["session_id"] == session_id),
                key=lambda a: a["raised_at"],
            )

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """``callback(message)`` for every alert and acknowledgement from now on; returns the unsubscribe."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _episode(
        self, sid: str, bed: str, rule: str, on: bool, start_s: float, end_s: float, evidence: dict[str, Any]
    ) -> None:
        key = (sid, rule)
        with self._lock:
            current = self._active.get(key)
            if on and current is not None:
                self.alerts[current]["end_s"] = end_s  # the episode goes on: no new alert
                return
            if not on and current is not None:
                alert = self.alerts[current]
                alert["active"] = False
                alert["cleared_at"] = time.time()
                del self._active[key]
                self._append(alert)
                return
        if on:
            self._raise(sid, bed, rule, start_s, end_s, evidence, active=True)

    def _raise(
        self,
        sid: str,
        bed: str,
        rule: str,
        start_s: float,
        end_s: float,
        evidence: dict[str, Any],
        active: bool = False,
    ) -> None:
        alert = {
            "id": uuid.uuid4().hex[:16],
            "session_id": sid,
            "bed_id": bed,
            "rule": rule,
            "start_s": round(start_s, 1),
            "end_s": round(end_s, 1),
            "raised_at": time.time(),
            "evidence": evidence,
            "active": active,
            "acknowledged_at": None,
            "acknowledged_by": None,
        }
        with self._lock:
            self.alerts[alert["id"]] = alert
            if active:
                self._active[(sid, rule)] = alert["id"]
            self._append(alert)
        log.info("alert %s raised: rule %s, session %s", alert["id"], rule, sid)
        self._send({"type": "alert", "alert": alert})

    def _append(self, alert: dict[str, Any]) -> None:
        folder = self.folder / alert["session_id"]
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / "alerts.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(alert) + "\n")

    # ------------------------------------------------------------------ delivery

    def _send(self, message: dict[str, Any]) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(message)
        for deliveries in self._deliveries:
            deliveries.put((message, 1))

    def _deliver_loop(self, index: int) -> None:
        """Webhook ``index``'s deliveries, each retried with backoff while the next ones go out."""
        import httpx

        waiting: list[tuple[float, dict[str, Any], int]] = []
        with httpx.Client(timeout=5) as client:
            while True:
                timeout = max(0.0, min(w[0] for w in waiting) - time.monotonic()) if waiting else None
                try:
                    item = self._deliveries[index].get(timeout=timeout)
                    if item is None:
                        return
                    waiting.append((time.monotonic(), *item))
                except queue.Empty:
                    pass
                due = [w for w in waiting if w[0] <= time.monotonic()]
                waiting = [w for w in waiting if w[0] > time.monotonic()]
                for _, message, attempt in due:
                    if not self._attempt(client, message, index, attempt) and attempt < self.rules.max_attempts:
                        delay = self.rules.backoff_s * 2 ** (attempt - 1)
                        waiting.append((time.monotonic() + delay, message, attempt + 1))

    def _attempt(self, client: Any, message: dict[str, Any], index: int, attempt: int) -> bool:
        hook = self.rules.webhooks[index]
        body = json.dumps(message, sort_keys=True).encode()
        record: dict[str, Any] = {
            "at": time.time(),
            "alert": message["alert"]["id"],
            "type": message["type"],
            "webhook": index,
            "attempt": attempt,
        }
        try:
            reply = client.post(
                hook.url,
                content=body,
                headers={
                    "Content-Type": "application/json",
                    "X-Sleepsound-Signature": sign(hook.secret, body),
                },
            )
            record["status"] = reply.status_code
            ok = 200 <= reply.status_code < 300
        except Exception as exc:  # refused, timed out, DNS: recorded and retried
            record["error"] = type(exc).__name__
            ok = False
        with self._log_lock, self._webhook_log.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        return ok

    def stop(self) -> None:
        for deliveries in self._deliveries:
            deliveries.put(None)


def _trailing(rows: list[dict[str, Any]], test: Callable[[dict[str, Any]], bool]) -> int:
    """How many of the last rows pass ``test`` in a row."""
    n = 0
    for row in reversed(rows):
        if not test(row):
            break
        n += 1
    return n
