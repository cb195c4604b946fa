"""Monitoring sessions: their state on disk, the scoring of their epochs, their night's run.

Where things live (a local storage root; the service holds ``monitor/serve.lock`` with
``flock``, so one service writes ``monitor/`` at a time and a killed one leaves no stale lock):

    monitor/sessions/<session-id>/session.json    bed, token hash, stream journal (atomic rewrite per chunk)
    monitor/sessions/<session-id>/spool/<seq>.audio   a chunk's bytes until the epochs it feeds are scored
    monitor/sessions/<session-id>/epochs.jsonl    scored epochs, one prediction row a line (fsync'd)
    monitor/sessions/<session-id>/envelopes.bin   each cut epoch's breathing envelope (fsync'd): the night's
                                                  event table at publication
    monitor/sessions/<session-id>/kept.jsonl      with --keep-audio only: scored pieces whose spool files
                                                  wait to become <keep-audio>/<session-id>.flac
    runs/monitor-<session-id>/                    predictions, summaries, metrics, report, as ``score`` writes

Why this is safe to write beside batch runs: ``monitor/`` belongs to the service alone, and the
one write under the shared part of the root (the finished night's ``runs/<run-id>/``) is made
holding the root's lock (``runs.root_lock.hold_root``, purpose ``monitor``) for those seconds
only; when a batch run holds the root, publishing waits and is retried.

Nothing acknowledged is lost: a chunk is on disk (spool + journal) before its 200, a scored
epoch is on disk before its audio is dropped, and a restarted service replays each open
session's journal from one epoch before the first unscored epoch (``stream.NightStream``).

What one client can hold (so it never starves the others): at most ``max_per_client`` open
sessions per client address (a quarter of ``max_sessions`` by default, at least 1:
``default_per_client``), sessions waiting to be published at most ``2 * max_sessions``, and in memory
only the ``keep_finished`` most recent published nights (the dashboard's finished beds; they stay
on disk under ``runs/``). A session ended without a single chunk of audio leaves nothing behind:
no run, no folder, so an open-and-DELETE loop cannot fill memory or the disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import struct
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from sleepsound.breathing.combine import detect_night_and_heard
from sleepsound.breathing.detector import BreathingEvent
from sleepsound.breathing.envelope import FEATURES, empty_envelope, frames_per_epoch, night_envelope
from sleepsound.breathing.heard import with_heard_seconds
from sleepsound.breathing.store import write_events
from sleepsound.core import schemas
from sleepsound.core.config import Config
from sleepsound.core.records import FlowSummary
from sleepsound.core.storage import (
    full_uri,
    is_local,
    join,
    open_root,
    partition,
    remove_tree,
    write_synced_aside,
    write_table,
)
from sleepsound.embed.preprocess import Epoch
from sleepsound.monitor.alerts import AlertRules, Alerts
from sleepsound.monitor.limits import AudioLimits, BoundedWorker, Busy, Refused, decode_audio
from sleepsound.monitor.scoring import Scorer
from sleepsound.monitor.stream import MAX_GAP_S, MIN_CHUNK_S, NightStream, Piece

log = logging.getLogger(__name__)
ENVELOPES = "envelopes.bin"
KEPT = "kept.jsonl"  # with keep_audio: the pieces scored already, whose spool files wait for publication
State = Literal["open", "ending", "ended", "published"]
# What rules and dashboard read (snore_s_pred: the per-second snoring head's seconds, for the snore index).
CLIENT_SHARE = 4  # by default one client address may hold 1/CLIENT_SHARE of the sessions


def default_per_client(max_sessions: int) -> int:
    """Open sessions one client address may hold when the operator does not say: a quarter of
    ``max_sessions``, at least 1. Why a quarter: the old default (all but one) let one address, a
    runaway script or a device with a bug, take nearly every bed while the others waited; a quarter
    leaves at least three quarters to everyone else. Beds that all reach the service from one
    address (a gateway, NAT, a bench) are the operator's to allow with ``--max-sessions-per-client``."""
    return max(1, max_sessions // CLIENT_SHARE)


KEEP = ("epoch_index", "stage_pred", "resp_pred", "prob_apnea_hypopnea", "prob_snore", "snore_s_pred")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Bucket:
    """A token bucket: ``rate`` requests a second on average, bursts of ``burst``."""

    rate: float
    burst: float
    level: float = -1.0
    stamp: float = 0.0

    def take(self) -> float:
        """0 when a request may go now, else the seconds until one may."""
        now = time.monotonic()
        if self.level < 0:
            self.level, self.stamp = self.burst, now
        self.level = min(self.burst, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.level >= 1:
            self.level -= 1
            return 0.0
        return (1 - self.level) / self.rate


@dataclass
class Session:
    """One bed's night in the service. ``lock`` guards the stream and ``cut``; the embeddings and the
    scored count belong to the scoring thread."""

    id: str
    bed_id: str
    token_hash: str
    created: float
    last_seen: float
    stream: NightStream
    state: State = "open"
    run_id: str | None = None
    cut: list[Epoch] = field(default_factory=list)  # cut, not yet embedded
    features: dict[int, np.ndarray | None] = field(default_factory=dict)
    embedded_through: int = 0  # epochs [0, embedded_through) embedded (or known invalid)
    scored: int = 0  # epochs [0, scored) on disk in epochs.jsonl
    queued: bool = False
    last_chunk: float = 0.0  # wall clock of the last chunk taken (the no-audio rule)
    recent: list[dict[str, Any]] = field(default_factory=list)  # the last hour's scored rows, trimmed
    night: list[dict[str, Any]] = field(default_factory=list)  # every scored epoch, trimmed (the dashboard)
    reasons: dict[int, str | None] = field(default_factory=dict)  # why an epoch was not scored
    clipped: dict[int, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    bucket: Bucket | None = None
    client: str | None = None  # the address that opened it (the per-client cap; saved, so a restart keeps it)
    finished: float = 0.0  # when it was published (the newest finished nights stay in memory)
    skipped_s: float = 0.0  # audio given up as missing so far (bounded by the time the session has been open)
    unheard_s: float | None = None  # how long breathing has not been heard (None: the pause rule is off)
    # the dashboard's view of the night (``dashboard.bed_view``): epochs scored, figures, hypnogram
    figures: tuple[int, dict[str, Any], list[list[Any]]] | None = None


def _write_json(path: Path, obj: Any) -> None:
    """Atomic and durable: a crash leaves the old file or the new one."""
    tmp = Path(write_synced_aside(str(path), json.dumps(obj).encode()))
    os.replace(tmp, path)


class Monitor:
    """Every session of one storage root, their files, and the scoring thread's jobs."""

    def __init__(
        self,
        root: str,
        cfg: Config,
        scorer: Scorer,
        limits: AudioLimits,
        max_sessions: int = 32,
        window: int = 8,
        idle_timeout_s: float = 600.0,
        rate: float = 5.0,
        burst: float = 20.0,
        rules: AlertRules | None = None,
        keep_audio: Path | None = None,
        max_per_client: int | None = None,
        keep_finished: int | None = None,
    ) -> None:
        store = open_root(root)
        if not is_local(root):
            raise ValueError(f"{root}: monitor serve needs a storage root on local disk")
        self.root = root
        self.dir = Path(store.path) / "monitor" / "sessions"
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_handle = (Path(store.path) / "monitor" / "serve.lock").open("a+")
        try:
            fcntl.flock(self._lock_handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{root}: another monitor service is serving this root") from None
        self.cfg = cfg
        self.keep_audio = keep_audio
        if keep_audio is not None:
            keep_audio.mkdir(parents=True, exist_ok=True)
        self.scorer = scorer
        self.limits = limits
        self.max_sessions = max_sessions
        self.max_per_client = default_per_client(max_sessions) if max_per_client is None else max_per_client
        self.keep_finished = max_sessions if keep_finished is None else keep_finished
        self.window = window
        self.idle_timeout_s = idle_timeout_s
        self.rate, self.burst = rate, burst
        self.sessions: dict[str, Session] = {}
        self.worker = BoundedWorker(max_queued=max_sessions + 8)
        self.alerts = Alerts(rules or AlertRules(), self.dir, cfg.preprocess.epoch_seconds)
        resp = scorer.model["heads"].get("resp") or {}
        self.events_per_event_epoch = float(resp.get("events_per_event_epoch", 1.0))
        self._registry = threading.Lock()
        self._resume()

    # ------------------------------------------------------------------ sessions

    def open_count(self) -> int:
        """Sessions open now (taking chunks); ended and published ones are not."""
        return sum(s.state == "open" for s in list(self.sessions.values()))

    def open_session(self, bed_id: str, chunk_seconds: float | None, client: str | None = None) -> tuple[Session, str]:
        """A new session and its device token (returned once; only its hash is kept). ``client``: the
        requesting address, held to ``max_per_client`` open sessions (429) so it cannot fill the service."""
        with self._registry:
            self._forget_finished()
            sessions = list(self.sessions.values())
            if sum(s.state in ("open", "ending") for s in sessions) >= self.max_sessions:
                raise Refused(503, f"at capacity: {self.max_sessions} sessions open; retry later")
            if client is not None:
                mine = sum(s.state == "open" and s.client == client for s in sessions)
                if mine >= self.max_per_client:
                    raise Refused(
                        429,
                        f"this client already has {mine} sessions open, the most one client may hold "
                        f"({self.max_per_client} of {self.max_sessions}); end one (DELETE) before opening another",
                    )
            if sum(s.state != "published" for s in sessions) >= 2 * self.max_sessions:
                raise Refused(503, "at capacity: too many ended nights are waiting to be published; retry later")
            token = secrets.token_urlsafe(32)
            sid = uuid.uuid4().hex
            now = time.time()
            stream = NightStream(self.cfg.preprocess, self.window, chunk_seconds)
            session = Session(
                sid, bed_id, token_hash(token), now, now, stream, bucket=Bucket(self.rate, self.burst), client=client
            )
            session.last_chunk = now
            self._watch(session)
            (self.dir / sid / "spool").mkdir(parents=True)
            self._save(session)
            self.sessions = {**self.sessions, sid: session}  # copied, never changed under a reader's loop
        log.info("session %s opened (%d open)", sid, self.open_count())
        return session, token

    def check_seq(self, session: Session, seq: int) -> None:
        """Refuse a chunk number below 0 or too far ahead (``NightStream.check_seq``) before its body is
        read: a huge number must cost nothing, and a negative one is not a duplicate. Without the session's
        lock (the event loop must not wait for a chunk being fed): ``add_chunk`` checks again under it."""
        if session.state != "open":
            raise Refused(409, f"chunk {seq}: the session has ended")
        self._check_gap(session, seq)

    def _check_gap(self, session: Session, seq: int) -> None:
        """``NightStream.check_seq`` (one gap at most ten minutes of audio), and the night's gaps together
        at most ten minutes more than the session has been open: a live recorder cannot lose more audio
        than time has passed, and a device skipping ten minutes a request would cost a scoring CPU."""
        stream = session.stream
        name = f"chunk {seq}"
        stream.check_seq(seq, name)
        given_up = seq - stream.next_seq - stream.window + 1  # at most this many chunks become silence
        if given_up <= 0:
            return
        skip_s = given_up * max(stream.chunk_seconds or MIN_CHUNK_S, MIN_CHUNK_S)
        budget = MAX_GAP_S + (time.time() - session.created) - session.skipped_s
        if skip_s > budget:
            raise Refused(
                422,
                f"{name} would give up {skip_s:.0f} s of audio as missing, more than this session has been open "
                "for; send the chunks in between, or end this session and open a new one",
            )

    def _forget_finished(self) -> None:
        """Keep only the ``keep_finished`` most recently published sessions in memory (under the registry
        lock): their nights stay on disk, and the dashboard lists the recent ones."""
        published = sorted((s for s in self.sessions.values() if s.state == "published"), key=lambda s: s.finished)
        gone = published[: max(0, len(published) - self.keep_finished)]
        if gone:
            ids = {s.id for s in gone}
            self.sessions = {k: v for k, v in self.sessions.items() if k not in ids}
            for sid in ids:
                self.alerts.forget(sid)

    def _discard(self, session: Session) -> None:
        """A session that never took a chunk ends without a trace: nothing to score or publish."""
        with self._registry:
            self.sessions = {k: v for k, v in self.sessions.items() if k != session.id}
        self.alerts.forget(session.id)
        shutil.rmtree(self.dir / session.id, ignore_errors=True)

    def authorise(self, sid: str, authorization: str | None) -> Session:
        """The session, if ``authorization`` carries its device token: 401 without a token, 403 with
        another (a token opens only its own session; an unknown id is 403 too, so ids cannot be probed)."""
        if not authorization or not authorization.lower().startswith("bearer ") or not authorization[7:].strip():
            raise Refused(401, "a device token is required (Authorization: Bearer <token>)")
        presented = token_hash(authorization[7:].strip())
        session = self.sessions.get(sid)
        expected = session.token_hash if session is not None else token_hash(secrets.token_urlsafe(32))
        if not hmac.compare_digest(presented, expected) or session is None:
            raise Refused(403, "this token does not open this session")
        wait = session.bucket.take() if session.bucket else 0.0
        if wait > 0:
            raise Refused(429, f"too many requests for this session; retry in {wait:.1f} s")
        return session

    def add_chunk(self, session: Session, seq: int, data: bytes) -> dict[str, Any]:
        """Decode, spool and stream one chunk (called on a worker thread of the request pool)."""
        name = f"chunk {seq}"
        if session.state != "open":
            raise Refused(409, f"{name}: the session has ended")
        with session.lock:
            self._check_gap(session, seq)  # first: a negative number is no duplicate, a huge one no gap
            if session.stream.is_duplicate(seq):
                session.last_seen = time.time()
                return self._reply(session, seq, duplicate=True)
        audio, rate, full_scale = decode_audio(data, name, self.limits, self.scorer.channel_index)
        with session.lock:
            if session.state != "open":  # ended while this chunk was decoded
                raise Refused(409, f"{name}: the session has ended")
            if session.stream.is_duplicate(seq):  # the same chunk raced itself
                return self._reply(session, seq, duplicate=True)
            session.stream.check_rate(rate, name)
            spool = self.dir / session.id / "spool" / f"{seq}.audio"
            os.replace(write_synced_aside(str(spool), data), spool)
            accepted = session.stream.accept(seq, audio, rate, full_scale)
            session.cut += accepted.epochs
            session.last_seen = session.last_chunk = time.time()
            self._save(session)
            self._pauses(session)
            if accepted.missing:
                session.skipped_s += len(accepted.missing) * (session.stream.chunk_seconds or MIN_CHUNK_S)
                log.info("session %s: %d chunk(s) given up as missing audio", session.id, len(accepted.missing))
            self._queue(session)
            return self._reply(session, seq, duplicate=False, missing=accepted.missing)

    def end_session(self, session: Session, why: str = "closed") -> None:
        """No more audio: flush the stream; the scoring thread scores the rest and publishes the night.
        A session that never took a chunk is discarded at once (``_discard``): there is no night."""
        with session.lock:
            if session.state != "open":
                return
            empty = session.stream.rate is None and not session.stream.pending
            if empty:
                session.state = "ended"  # under the lock: no chunk can slip in now
            else:
                session.cut += session.stream.finish()
                session.state = "ending"
                self._save(session)
                self._queue(session)
        if empty:
            self._discard(session)
            log.info("session %s %s without audio: nothing to publish", session.id, why)
            return
        log.info("session %s %s", session.id, why)

    def status(self, session: Session) -> dict[str, Any]:
        return {
            "session_id": session.id,
            "state": session.state,
            "next_seq": session.stream.next_seq,
            "waiting_chunks": sorted(session.stream.pending),
            "epochs_scored": session.scored,
            "run_id": session.run_id,
        }

    def expire_idle(self) -> int:
        """End sessions with no request for ``idle_timeout_s``; retry unpublished nights. Returns how many ended."""
        now = time.time()
        ended = 0
        for session in list(self.sessions.values()):
            if session.state == "open" and session.stream.rate is not None:
                night_s = session.stream.night_samples / session.stream.rate
                self.alerts.on_silence(session.id, session.bed_id, now - session.last_chunk, night_s)
            if session.state == "open" and now - session.last_seen > self.idle_timeout_s:
                self.end_session(session, "ended after the idle timeout")
                ended += 1
            elif session.state == "ended" or (session.cut and not session.queued):
                with session.lock:
                    self._queue(session)
        return ended

    def predictions(self, session: Session) -> list[dict[str, Any]]:
        return _read_rows(self.dir / session.id / "epochs.jsonl")

    # ------------------------------------------------------------------ alerts

    def _watch(self, session: Session) -> None:
        rule = self.alerts.rules.breathing_pause
        session.stream.tail_seconds = rule.window_s if rule.enabled else 0.0

    def _pauses(self, session: Session) -> None:
        """The pause rule over the stream's recent breathing envelope (under the session's lock, after a chunk)."""
        watch = session.stream.watch
        if watch is None:
            return
        found = watch.pauses(self.alerts.rules.breathing_pause.min_pause_s)
        session.unheard_s = watch.unheard_seconds()
        now_s = session.stream.night_samples / (session.stream.rate or 1)
        self.alerts.on_chunk(
            session.id, session.bed_id, [(p.start_s, p.end_s) for p in found], session.unheard_s, now_s
        )

    def _epoch_rules(self, session: Session, rows: list[dict[str, Any]]) -> None:
        trimmed = [{k: row.get(k) for k in KEEP} for row in rows]
        session.recent += trimmed
        session.night += trimmed
        rules = self.alerts.rules
        minutes = max(rules.event_rate.window_minutes, rules.loud_snoring.minutes, rules.sensor.minutes)
        session.recent = session.recent[-int(minutes * 60 / self.cfg.preprocess.epoch_seconds) - 1 :]
        first = int(session.recent[0]["epoch_index"])
        for table in (session.reasons, session.clipped):
            for i in [i for i in table if i < first]:
                del table[i]
        self.alerts.on_epochs(
            session.id, session.bed_id, session.recent, session.reasons, session.clipped, self.events_per_event_epoch
        )

    # ------------------------------------------------------------------ scoring thread

    def _queue(self, session: Session) -> None:
        """One job per session at most is ever queued, so the bounded queue cannot overflow."""
        if not session.queued:
            try:
                self.worker.put(lambda: self._score(session), self._after)
            except Busy:  # clip analyses took the room: the expiry loop queues it again shortly
                return
            session.queued = True

    def _after(self, result: Any, error: BaseException | None) -> None:
        if error is not None:
            log.error("scoring failed: %s", type(error).__name__ + (f": {error}" if str(error) else ""))

    def _score(self, session: Session) -> None:
        with session.lock:
            session.queued = False
            cut, session.cut = session.cut, []
            final = session.state == "ending" and not session.cut
        if cut:
            _append_envelopes(self.dir / session.id / ENVELOPES, cut)
            for e in cut:
                session.reasons[e.index] = e.reason
                session.clipped[e.index] = e.quality.clipped_fraction
            session.features.update(self.scorer.embed(session.id, cut))
            session.embedded_through = max(session.embedded_through, max(e.index for e in cut) + 1)
        h = self.scorer.half_context
        ready = session.embedded_through if final else session.embedded_through - h
        rows = [
            self.scorer.predict(session.id, session.bed_id, i, session.features)
            for i in range(session.scored, max(session.scored, ready))
        ]
        if rows:
            _append_rows(self.dir / session.id / "epochs.jsonl", rows)
            session.scored += len(rows)
            for i in [i for i in session.features if i < session.scored - h]:
                del session.features[i]
            self._epoch_rules(session, rows)
            with session.lock:
                gone = session.stream.keep_from(max(0, session.scored - h))
                self._save(session)
            if self.keep_audio is not None:  # the night's audio is kept: its pieces wait for publication
                _append_rows(self.dir / session.id / KEPT, [asdict(piece) for piece in gone])
            for piece in [] if self.keep_audio is not None else gone:
                with contextlib.suppress(FileNotFoundError):
                    (self.dir / session.id / "spool" / f"{piece.seq}.audio").unlink()
        if final or session.state == "ended":
            self._publish(session)

    def _publish(self, session: Session) -> None:
        """The night under ``runs/monitor-<id>/`` as ``score`` writes it, holding the root's lock briefly."""
        from sleepsound.report.outputs import write_run_outputs
        from sleepsound.runs.root_lock import RootBusy, hold_root
        from sleepsound.runs.run_record import write_run_record

        session.state = "ended"
        run_id = f"monitor-{session.id}"
        rows = self.predictions(session)
        table = pa.Table.from_pylist(rows, schema=schemas.PREDICTIONS) if rows else schemas.PREDICTIONS.empty_table()
        store = open_root(self.root)
        predictions = f"{store.path}/runs/{run_id}/predictions"
        rate = session.stream.rate or 1
        summary: FlowSummary = {
            "run_id": run_id,
            "model": self.scorer.model,
            "seconds": {"night": round(session.stream.night_samples / rate, 1)},
            "counts": {
                "epochs": len(rows),
                "scored": sum(r["stage_pred"] is not None for r in rows),
                "missing_seconds": round(session.stream.missing_samples / rate, 1),
            },
            "predictions": full_uri(store.fs, predictions),
            "summaries": None,
            "report": None,
        }
        events: list[BreathingEvent] = []
        if rows:  # the night's breathing events and where breathing was heard, as `score` finds them
            epoch = self.cfg.preprocess.epoch_seconds
            env, valid = _night_envelope(self.dir / session.id / ENVELOPES, len(rows), epoch)
            events, heard = detect_night_and_heard(env, valid, table, epoch)
            table = with_heard_seconds(table, heard, epoch)
        try:
            with hold_root(store, run_id, "monitor"):
                # an earlier publication of this night that died part-way left files (a write's temporary one
                # too): the night is written again whole, nothing of the first attempt kept
                if store.fs.exists(f"{store.path}/runs/{run_id}"):
                    remove_tree(store.fs, f"{store.path}/runs/{run_id}")
                write_table(
                    store.fs,
                    join(partition(predictions, session.id), "part-0.parquet"),
                    table.drop_columns(["recording_id"]),
                )
                if rows:  # the summaries read the event table, as `score` writes it
                    write_events(store, run_id, session.id, events)
                    reported = write_run_outputs(
                        store, run_id, self.scorer.model, {"run_id": run_id, "flow": "monitor"}, self.cfg
                    )
                    summary |= {"summaries": reported["summaries"], "report": reported["report"]}
                    summary["metrics"] = reported["metrics"]
                write_run_record(store, "monitor", self.cfg.model_dump(), summary)  # last: the run is complete
        except RootBusy:
            log.info("session %s: the root is busy with another run; its night is published later", session.id)
            with session.lock:
                self._save(session)
            return
        if self.keep_audio is not None:
            self._keep_night(session)
        session.run_id = run_id
        session.finished = time.time()
        session.state = "published"
        with session.lock:
            self._save(session)
        shutil.rmtree(self.dir / session.id / "spool", ignore_errors=True)
        log.info("session %s published: %d epochs", session.id, len(rows))
        with self._registry:  # the oldest finished nights leave memory (they stay on disk)
            self._forget_finished()

    def _keep_night(self, session: Session) -> None:
        """The night's audio as ``<keep_audio>/<session-id>.flac``, in order, missing chunks as silence,
        written aside and renamed into place: a plain recording the batch side reads."""
        import soundfile as sf

        stream = session.stream
        if stream.rate is None:
            return
        pieces = {Piece(**row).seq: Piece(**row) for row in _read_rows(self.dir / session.id / KEPT)}
        pieces.update({p.seq: p for p in stream.pieces})
        out = self.keep_audio / f"{session.id}.flac"  # type: ignore[operator]
        partial = out.with_suffix(".flac.partial")
        with sf.SoundFile(partial, "w", samplerate=stream.rate, channels=1, format="FLAC", subtype="PCM_16") as night:
            for piece in sorted(pieces.values(), key=lambda p: p.start):
                if piece.missing:
                    night.write(np.zeros(piece.samples, dtype=np.float32))
                    continue
                data = (self.dir / session.id / "spool" / f"{piece.seq}.audio").read_bytes()
                audio, _, _ = decode_audio(data, f"chunk {piece.seq}", self.limits, self.scorer.channel_index)
                night.write(audio[: piece.samples])
        os.replace(partial, out)

    # ------------------------------------------------------------------ persistence

    def _save(self, session: Session) -> None:
        s = session.stream
        _write_json(
            self.dir / session.id / "session.json",
            {
                "id": session.id,
                "bed_id": session.bed_id,
                "token_hash": session.token_hash,
                "created": session.created,
                "last_seen": session.last_seen,
                "state": session.state,
                "run_id": session.run_id,
                "client": session.client,
                "stream": {
                    "chunk_seconds": s.chunk_seconds,
                    "rate": s.rate,
                    "full_scale": None if s.full_scale == float("inf") else s.full_scale,
                    "next_seq": s.next_seq,
                    "night_samples": s.night_samples,
                    "missing": s.missing,
                    "missing_samples": s.missing_samples,
                    "pieces": [asdict(p) for p in s.pieces],
                    "pending": sorted(s.pending),
                },
            },
        )

    def _resume(self) -> None:
        """Every session a previous server left: open ones carry on where their scored epochs end."""
        for path in sorted(self.dir.glob("*/session.json")):
            saved = json.loads(path.read_text())
            if saved["state"] == "published":
                continue
            session = self._restore(saved)
            self.sessions[session.id] = session
            if session.state in ("ending", "ended") or session.cut:
                if session.state == "ending" and not session.cut:
                    session.state = "ended"
                self._queue(session)
        self.alerts.keep_only(set(self.sessions))  # a published night's alerts went with it
        if self.sessions:
            log.info("resumed %d session(s)", len(self.sessions))

    def _restore(self, saved: dict[str, Any]) -> Session:
        sid = saved["id"]
        folder = self.dir / sid
        rows = _read_rows(folder / "epochs.jsonl", repair=True)
        scored = len(rows)
        h = self.scorer.half_context
        emit_from = max(0, scored - h)
        st = saved["stream"]
        stream = NightStream(
            self.cfg.preprocess,
            self.window,
            st["chunk_seconds"],
            st["rate"],
            float("inf") if st["full_scale"] is None else st["full_scale"],
            st["next_seq"],
            st["night_samples"],
            [tuple(m) for m in st["missing"]],
            first_epoch=max(0, emit_from - 1),
            emit_from=emit_from,
            missing_samples=st.get("missing_samples"),  # saved before the total was kept: the gaps still held
        )
        session = Session(
            sid, saved["bed_id"], saved["token_hash"], saved["created"], time.time(), stream, state=saved["state"]
        )
        session.bucket = Bucket(self.rate, self.burst)
        session.client = saved.get("client")  # a session saved before clients were kept counts for none
        session.last_chunk = time.time()
        self._watch(session)
        session.night = [{k: r.get(k) for k in KEEP} for r in rows]
        session.recent = session.night[-240:]
        session.scored = session.embedded_through = scored
        for p in st["pieces"]:
            piece = Piece(**p)
            audio = None if piece.missing else self._spooled(sid, piece.seq)
            session.cut += stream.replay(piece, audio)
        for seq in st["pending"]:
            stream.pending[seq] = self._spooled(sid, seq)
        session.embedded_through = emit_from
        if session.state == "ending":
            session.cut += stream.finish()
        return session

    def _spooled(self, sid: str, seq: int) -> np.ndarray:
        data = (self.dir / sid / "spool" / f"{seq}.audio").read_bytes()
        return decode_audio(data, f"chunk {seq}", self.limits, self.scorer.channel_index)[0]

    def _reply(self, session: Session, seq: int, duplicate: bool, missing: list[int] | None = None) -> dict[str, Any]:
        return {
            "session_id": session.id,
            "seq": seq,
            "duplicate": duplicate,
            "missing": missing or [],
            "next_seq": session.stream.next_seq,
            "epochs_scored": session.scored,
        }

    def close(self) -> None:
        self.worker.stop()
        self.alerts.stop()
        with contextlib.suppress(OSError):
            fcntl.flock(self._lock_handle, fcntl.LOCK_UN)
            self._lock_handle.close()


def _append_envelopes(path: Path, epochs: list[Epoch]) -> None:
    """Each cut epoch's breathing envelope as a fixed-size record (index, valid, float32 frames),
    synced: the night's event table is detected from them when it is published, after a restart too."""
    with path.open("ab") as handle:
        for e in epochs:
            if e.envelope is not None:
                handle.write(struct.pack("<i?", e.index, e.valid) + np.ascontiguousarray(e.envelope, "<f4").tobytes())
        handle.flush()
        os.fsync(handle.fileno())


def _night_envelope(path: Path, n_epochs: int, epoch_seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """The night's envelope ``[frames, FEATURES]`` and per-frame validity for epochs ``[0, n_epochs)``;
    an epoch cut twice (a restart cuts again from the last scored one) keeps its last record, a
    record torn by a crash is dropped, and an epoch without one is invalid."""
    per = frames_per_epoch(epoch_seconds)
    size = struct.calcsize("<i?") + per * len(FEATURES) * 4
    data = path.read_bytes() if path.exists() else b""
    epochs: dict[int, tuple[bool, np.ndarray]] = {}
    for start in range(0, len(data) - size + 1, size):
        index, valid = struct.unpack_from("<i?", data, start)
        frames = np.frombuffer(data, "<f4", per * len(FEATURES), start + struct.calcsize("<i?"))
        epochs[index] = (valid, frames.reshape(per, len(FEATURES)))
    env = night_envelope([epochs[i][1] if i in epochs else empty_envelope(epoch_seconds) for i in range(n_epochs)], per)
    valid = np.repeat([i in epochs and epochs[i][0] for i in range(n_epochs)], per)
    return env, valid


def _append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _read_rows(path: Path, repair: bool = False) -> list[dict[str, Any]]:
    """Scored rows; a line torn by a crash mid-write (the last one) is dropped (``repair``: and cut off)."""
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    good = 0
    with path.open("rb") as handle:
        for line in handle:
            try:
                rows.append(json.loads(line))
            except ValueError:
                break
            good += len(line)
    if repair and good != path.stat().st_size:
        with path.open("r+b") as handle:
            handle.truncate(good)
    return rows
