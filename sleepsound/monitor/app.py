"""The bedside monitoring service: sessions of streamed audio scored as the night goes.

    POST   /v1/sessions                          {"bed_id": ...} -> session id + device token (once)
    POST   /v1/sessions/{id}/chunks/{seq}        a chunk of audio (raw body or multipart ``file``)
    WS     /v1/sessions/{id}/stream              the same chunks over one WebSocket (seq + audio per message)
    GET    /v1/sessions/{id}                     the session's state
    GET    /v1/sessions/{id}/epochs              its scored epochs (the batch predictions' columns)
    DELETE /v1/sessions/{id}                     end it: the rest is scored, the night published
    POST   /analyze-breathing                    one clip: Normal / Snoring / Apnea Alert
    GET    /v1/alerts, POST /v1/alerts/{id}/ack  alerts (``monitor.alerts``), acknowledging one
    GET    /v1/alerts/stream                     alerts as server-sent events
    GET    /dashboard, /login, /v1/beds, /v1/me  the dashboard (``monitor.dashboard``)
    POST   /login, /logout                       a user's name and password (``monitor.users``) or the token
    GET    /health                               never waits behind scoring

Who may do what: a device token (random, 256 bits, only its SHA-256 kept, compared in constant
time) opens its own session and nothing else; with an operator token configured, opening a
session and analysing a clip need it as a bearer (a dashboard login's cookie is refused:
``device_access``). The operator side (dashboard, alerts) takes the operator token or a login:
a named user's password (``monitor.users``, scrypt-hashed in ``monitor/users.json``) or the token;
an acknowledgement records who made it. Every request passes ``limits.GuardMiddleware`` (Host and Origin checks) and
every upload ``limits.read_body`` / ``decode_audio`` (bytes, read time, rate, seconds); the JSON
that opens a session is read the same way, after the token check, at most ``SESSION_JSON_BYTES``.

What one client can cause: a chunk number is checked before its body is read (``Monitor.check_seq``:
not below 0, at most ten minutes of audio ahead), a client address (``limits.client_of``: the
connection's, X-Forwarded-For only from a ``--trust-proxy``) holds at most
``max_sessions_per_client`` open sessions (a quarter of ``max_sessions`` by default), and a
malformed request is a 422 naming the fields, never echoing what was sent (a bed id is a patient
identifier) nor failing on NaN.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Header, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

import sleepsound
from sleepsound.core.config import Config
from sleepsound.embed.preprocess import EpochCutter
from sleepsound.ingest.validate import MIN_SAMPLE_RATE
from sleepsound.monitor.alerts import AlertRules
from sleepsound.monitor.breathing import MIN_PAUSE_S, breathing_pauses, detection
from sleepsound.monitor.dashboard import Access, add_dashboard
from sleepsound.monitor.limits import (
    AudioLimits,
    Busy,
    ClientSlots,
    GuardMiddleware,
    Refused,
    allowed_hosts,
    client_of,
    decode_audio,
    install_handlers,
    read_body,
    refused_response,
    run_unless_gone,
    upload_bytes,
)
from sleepsound.monitor.scoring import Scorer
from sleepsound.monitor.sessions import Monitor
from sleepsound.monitor.users import USERS_FILE, FailedLogins, UserStore

log = logging.getLogger(__name__)
SESSION_JSON_BYTES = 4096  # {"bed_id": ..., "chunk_seconds": ...} is well under 200 bytes


@dataclass(frozen=True)
class Settings:
    """The service's limits (``monitor serve`` options)."""

    host: str = "127.0.0.1"
    max_sessions: int = 32
    max_chunk_bytes: int = 8 << 20
    max_chunk_seconds: float = 30.0
    min_chunk_seconds: float = 1.0
    max_clip_seconds: float = 300.0
    max_clip_bytes: int = 32 << 20
    read_timeout_s: float = 30.0
    idle_timeout_s: float = 600.0
    reorder_window: int = 8
    rate_per_s: float = 5.0
    burst: int = 20
    operator_token_hash: str | None = None
    extra_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    expiry_check_s: float = 5.0
    login_failures: int = 5  # failed dashboard logins per name (and per address) ...
    login_window_s: float = 900.0  # ... in this window, before further attempts are refused
    # open sessions one client address may hold (None: sessions.default_per_client, a quarter of
    # max_sessions, so one address cannot take nearly every bed); published nights kept in memory for
    # the dashboard (None: max_sessions)
    max_sessions_per_client: int | None = None
    keep_finished: int | None = None
    # /analyze-breathing clips one client address may have queued or running: forty from one client
    # kept every other client's clips at 503 and a live bed's epochs 77 s late
    max_clips_per_client: int = 2
    rules: AlertRules = field(default_factory=AlertRules)
    # Off by default: audio is health data and is held only as long as scoring needs it. A folder
    # here keeps each finished night's audio there as <session-id>.flac, a plain recording that
    # `validate`, `score` and `nightly --source FOLDER` read like any other night.
    keep_audio: str | None = None


class SessionCreate(BaseModel):
    bed_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="The bed's opaque id (never logged).")
    chunk_seconds: float | None = Field(
        None,
        ge=1,
        le=30,
        allow_inf_nan=False,
        description="The chunks' length in seconds (1-30), for sizing a gap (default: the first chunk's).",
    )


class SessionCreated(BaseModel):
    session_id: str
    token: str
    epoch_seconds: float
    min_sample_rate: int
    max_chunk_seconds: float
    max_chunk_bytes: int


class ChunkReply(BaseModel):
    session_id: str
    seq: int
    duplicate: bool
    missing: list[int]
    next_seq: int
    epochs_scored: int


class SessionStatus(BaseModel):
    session_id: str
    state: str
    next_seq: int
    waiting_chunks: list[int]
    epochs_scored: int
    run_id: str | None


class Pause(BaseModel):
    start_s: float
    end_s: float


class BreathingAnswer(BaseModel):
    status: str
    detection: str
    probabilities: dict[str, float] | None
    pauses: list[Pause]
    windows: list[dict[str, Any]]
    seconds: float
    note: str | None = None


def create_app(root: str, cfg: Config, settings: Settings, versions: dict[str, str] | None = None) -> FastAPI:
    """The service for the storage root ``root`` (its champion heads, ``cfg``'s backbone and preprocessing)."""
    scorer = Scorer(root, cfg, versions)
    # A night's chunks need the rate batch validation asks of a night (scored alike); a clip, 8 kHz.
    limits = AudioLimits(
        settings.max_chunk_bytes, settings.max_chunk_seconds, settings.min_chunk_seconds, MIN_SAMPLE_RATE
    )
    clip_limits = AudioLimits(settings.max_clip_bytes, settings.max_clip_seconds)
    monitor = Monitor(
        root,
        cfg,
        scorer,
        limits,
        settings.max_sessions,
        settings.reorder_window,
        settings.idle_timeout_s,
        settings.rate_per_s,
        settings.burst,
        settings.rules,
        Path(settings.keep_audio) if settings.keep_audio else None,
        max_per_client=settings.max_sessions_per_client,
        keep_finished=settings.keep_finished,
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def expire() -> None:
            while True:
                await asyncio.sleep(settings.expiry_check_s)
                try:
                    await run_in_threadpool(monitor.expire_idle)
                except Exception as exc:  # a full disk, say: say so and keep watching
                    log.error("checking idle sessions failed: %s: %s", type(exc).__name__, exc)

        task = asyncio.create_task(expire())
        try:
            yield
        finally:
            task.cancel()
            monitor.close()

    app = FastAPI(
        title="sleepsound bedside monitoring",
        version=sleepsound.__version__,
        lifespan=lifespan,
        description="Stream a night's audio in chunks; every 30-s epoch is scored as it completes.",
    )
    app.state.monitor = monitor
    install_handlers(app)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_middleware(
        GuardMiddleware,
        allowed_hosts=allowed_hosts(settings.host, settings.extra_hosts),
        allowed_origins=settings.allowed_origins,
    )

    @app.get("/health")
    async def health() -> dict[str, Any]:  # async: on the event loop, never queued for a pool thread
        return {
            "status": "ok",
            "sessions": monitor.open_count(),
            "scoring_queue": monitor.worker.queued,
            "scoring": monitor.worker.busy,
            **scorer.describe(),
        }

    access = Access(
        settings.operator_token_hash,
        UserStore(monitor.dir.parent / USERS_FILE),
        FailedLogins(settings.login_failures, settings.login_window_s),
    )
    add_dashboard(app, monitor, access)

    def device_access(request: Request, what: str) -> None:
        """Opening a session and analysing a clip take the operator token as a bearer when one is set,
        never a dashboard login (a user's password must not open sessions); open without a token."""
        if access.token_hash is None:
            return  # loopback without a token: devices open sessions freely, whatever users there are
        authorization = request.headers.get("authorization") or ""
        if not authorization.lower().startswith("bearer ") or not authorization[7:].strip():
            if access.who(request) is not None:
                raise Refused(
                    403, f"{what} takes the operator token (Authorization: Bearer <token>), not a dashboard login"
                )
            raise Refused(401, f"{what} needs the operator token (Authorization: Bearer <token>)")
        access.check(request, what, devices=True)  # the bearer: the operator token, else 403

    @app.post(
        "/v1/sessions",
        status_code=201,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": SessionCreate.model_json_schema()}},
            }
        },
    )
    async def open_session(request: Request) -> SessionCreated:
        """``{"bed_id", "chunk_seconds"}``: checked for the operator token first, then read bounded in
        bytes and time (``read_body``), never echoed into a log or an answer."""
        device_access(request, "opening a session")
        body = session_request(await read_body(request, SESSION_JSON_BYTES, settings.read_timeout_s), request)
        session, token = await run_in_threadpool(
            monitor.open_session, body.bed_id, body.chunk_seconds, client_of(request)
        )
        return SessionCreated(
            session_id=session.id,
            token=token,
            epoch_seconds=cfg.preprocess.epoch_seconds,
            min_sample_rate=limits.min_rate,
            max_chunk_seconds=limits.max_seconds,
            max_chunk_bytes=limits.max_bytes,
        )

    @app.post("/v1/sessions/{sid}/chunks/{seq}")
    async def add_chunk(sid: str, seq: int, request: Request, authorization: str | None = Header(None)) -> ChunkReply:
        session = monitor.authorise(sid, authorization)
        monitor.check_seq(session, seq)  # before the body: a refused number costs nothing
        body = await read_body(request, limits.max_bytes, settings.read_timeout_s)
        data = upload_bytes(body, request.headers.get("content-type", ""), f"chunk {seq}")
        return ChunkReply(**await run_in_threadpool(monitor.add_chunk, session, seq, data))

    streams: dict[str, WebSocket] = {}  # session id -> its one open stream
    clip_slots = ClientSlots(settings.max_clips_per_client)

    @app.websocket("/v1/sessions/{sid}/stream")
    async def stream_chunks(websocket: WebSocket, sid: str) -> None:
        """The same chunks over one WebSocket: each binary message is an 8-byte little-endian sequence
        number and the chunk's audio bytes, answered by the JSON that POST .../chunks/{seq} returns, or
        ``{"seq", "status", "detail"}`` for a refused chunk (the socket stays open). The device token
        comes in the Authorization header, as for every request; each message passes the same token
        check, rate limit and audio limits as a POST."""
        auth = websocket.headers.get("authorization")
        try:
            session = monitor.authorise(sid, auth)
        except Refused as exc:  # the HTTP status and message, as a POST would get them (401, 403, 429)
            await websocket.send_denial_response(refused_response(exc))
            return
        await websocket.accept()
        # One stream a session, the newest: a device that reconnects replaces its half-dead socket, and
        # no client holds more sockets than sessions (they were uncounted, and a thousand filled uvicorn's
        # connection limit, so that /health answered 503).
        replaced = streams.get(session.id)
        streams[session.id] = websocket
        if replaced is not None:
            with contextlib.suppress(Exception):
                await replaced.close(code=1008, reason="replaced by a newer stream of this session")
        try:
            with contextlib.suppress(WebSocketDisconnect, TimeoutError, _Replaced):
                while True:
                    if streams.get(session.id) is not websocket:
                        raise _Replaced
                    message = await asyncio.wait_for(websocket.receive(), timeout=settings.idle_timeout_s)
                    if message["type"] == "websocket.disconnect":
                        return
                    data = message.get("bytes")
                    seq = int.from_bytes(data[:8], "little", signed=True) if data and len(data) >= 8 else None
                    try:
                        if seq is None:
                            raise Refused(400, "a chunk is an 8-byte little-endian sequence number, then the audio")
                        if len(data) - 8 > limits.max_bytes:  # type: ignore[arg-type]
                            raise Refused(413, f"chunk {seq}: over {limits.max_bytes} bytes")
                        monitor.authorise(sid, auth)  # the token again, and the session's rate limit
                        reply = await run_in_threadpool(monitor.add_chunk, session, seq, data[8:])  # type: ignore[index]
                        if streams.get(session.id) is not websocket:  # closed meanwhile: the chunk is taken
                            raise _Replaced
                        await websocket.send_json(ChunkReply(**reply).model_dump())
                    except Refused as exc:
                        await websocket.send_json({"seq": seq, "status": exc.status, "detail": exc.message})
        finally:
            if streams.get(session.id) is websocket:  # gone or disconnected: not replaced
                del streams[session.id]

    @app.get("/v1/sessions/{sid}")
    def session_status(sid: str, authorization: str | None = Header(None)) -> SessionStatus:
        return SessionStatus(**monitor.status(monitor.authorise(sid, authorization)))

    @app.get("/v1/sessions/{sid}/epochs")
    def session_epochs(sid: str, authorization: str | None = Header(None)) -> list[dict[str, Any]]:
        return monitor.predictions(monitor.authorise(sid, authorization))

    @app.delete("/v1/sessions/{sid}")
    async def end_session(sid: str, authorization: str | None = Header(None)) -> SessionStatus:
        session = monitor.authorise(sid, authorization)
        await run_in_threadpool(monitor.end_session, session)
        return SessionStatus(**monitor.status(session))

    @app.get("/v1/alerts")
    def list_alerts(request: Request, session_id: str | None = None) -> list[dict[str, Any]]:
        access.check(request, "reading alerts")
        return monitor.alerts.listing(session_id)

    @app.post("/v1/alerts/{alert_id}/ack")
    def acknowledge(alert_id: str, request: Request) -> dict[str, Any]:
        access.check(request, "acknowledging an alert")
        alert = monitor.alerts.acknowledge(alert_id, access.who(request) or "operator")
        if alert is None:
            raise Refused(404, f"no alert {alert_id}")
        return alert

    @app.get("/v1/alerts/stream")
    async def alert_stream(request: Request) -> StreamingResponse:
        """Server-sent events: every alert and acknowledgement from now on, a comment every 15 s."""
        access.check(request, "following alerts")
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)

        def deliver(message: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(lambda: inbox.full() or inbox.put_nowait(message))

        unsubscribe = monitor.alerts.subscribe(deliver)

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b": connected\n\n"
                while not await request.is_disconnected():
                    try:
                        message = await asyncio.wait_for(inbox.get(), 15.0)
                    except TimeoutError:
                        message = None
                    # the login is checked again before anything more is sent: a browser logged out, a
                    # user removed or a login expired since the stream opened gets nothing more
                    if access.who(request) is None:
                        return
                    if message is None:
                        yield b": keep-alive\n\n"
                        continue
                    yield f"event: {message['type']}\ndata: {json.dumps(message['alert'])}\n\n".encode()
            finally:
                unsubscribe()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def read_and_analyse(request: Request, name: str) -> tuple[list[Any], list[dict[str, Any]], float]:
        """Read, decode and analyse one clip: its breathing pauses and its epochs' predictions."""
        body = await read_body(request, clip_limits.max_bytes, settings.read_timeout_s)
        data = upload_bytes(body, request.headers.get("content-type", ""), name)
        audio, rate, full_scale = await run_in_threadpool(decode_audio, data, name, clip_limits, scorer.channel_index)
        seconds = len(audio) / rate
        if seconds < MIN_PAUSE_S:
            raise Refused(
                422,
                f"{name}: {seconds:.1f} s of audio is too short to hold a {MIN_PAUSE_S:g}-s breathing pause; "
                f"send at least {MIN_PAUSE_S:g} s",
            )

        def analyse() -> tuple[list[Any], list[dict[str, Any]]]:
            pauses = breathing_pauses(audio, rate)
            cutter = EpochCutter(rate, cfg.preprocess, full_scale)
            epochs = [*cutter.push(audio), *cutter.finish()]
            features = scorer.embed("clip", epochs)
            windows = []
            for e in epochs:
                row = scorer.predict("clip", "clip", e.index, features)
                windows.append(
                    {
                        "start_s": row["start_s"],
                        "end_s": row["start_s"] + cfg.preprocess.epoch_seconds,
                        "valid": e.valid,
                        "invalid_reason": e.reason,
                        **{k: row[k] for k in ("stage_pred", "resp_pred", "prob_snore", "prob_apnea_hypopnea")},
                    }
                )
            return pauses, windows

        try:
            if monitor.worker.queued >= settings.max_sessions:  # the sessions' jobs keep their room
                raise Busy()
            pauses, windows = await run_unless_gone(monitor.worker, request, analyse)
        except Busy:
            raise Refused(503, "the scoring queue is full; retry in a few seconds") from None
        return pauses, windows, seconds

    @app.post("/analyze-breathing")
    async def analyze_breathing(request: Request, name: str = "upload") -> BreathingAnswer:
        device_access(request, "analysing a clip")
        busy = Refused(
            429,
            f"{name}: this client already has {settings.max_clips_per_client} clip(s) being sent or analysed; "
            "retry when one has finished",
            {"Retry-After": "5"},
        )
        # A place for the client from before its body is read until the answer: one client holds at most
        # max_clips_per_client clips in memory and in the scoring queue.
        with clip_slots.held(client_of(request), busy):
            pauses, windows, seconds = await read_and_analyse(request, name)
        scored = [w for w in windows if w["prob_snore"] is not None]
        note = None
        probabilities = None
        if scored:
            snore = max(w["prob_snore"] for w in scored)
            apnea = max(w["prob_apnea_hypopnea"] for w in scored)
            probabilities = {"snoring": snore, "apnea": apnea, "normal": max(0.0, 1.0 - max(snore, apnea))}
        elif "resp" not in scorer.heads:
            note = "no respiratory head under this root: the answer rests on breathing pauses alone"
        else:
            note = (
                f"no full valid {cfg.preprocess.epoch_seconds:g}-s window: the respiratory head was not run; "
                "the answer rests on breathing pauses alone"
            )
        return BreathingAnswer(
            status="success",
            detection=detection(pauses, scored),
            probabilities=probabilities,
            pauses=[Pause(start_s=p.start_s, end_s=p.end_s) for p in pauses],
            windows=windows,
            seconds=round(seconds, 3),
            note=note,
        )

    return app


class _Replaced(Exception):
    """A stream whose session opened a newer one: it ends quietly."""


def _not_finite(constant: str) -> Any:
    raise Refused(422, f"the session's JSON holds {constant}: numbers must be finite")


def session_request(body: bytes, request: Request) -> SessionCreate:
    """The JSON that opens a session, validated; a 422 naming the fields (never their values) otherwise."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and kind != "application/json" and not kind.endswith("+json"):
        raise Refused(415, "send the session as JSON (Content-Type: application/json)")
    try:
        data = json.loads(body, parse_constant=_not_finite)
    except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
        raise Refused(422, 'the body is not JSON; send {"bed_id": "bed-7"}') from None
    except RecursionError:  # [[[[...]]]] deeper than the parser's stack, within the 4 KiB allowed
        raise Refused(422, 'the body nests too deeply to be a session; send {"bed_id": "bed-7"}') from None
    try:
        return SessionCreate.model_validate(data)
    except ValidationError as exc:
        raise Refused(422, _fields(exc.errors(include_url=False, include_input=False))) from None


def _fields(errors: Any) -> str:
    """Validation errors as ``field: problem; ...``, without the values sent."""
    parts = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 without the input echoed back (a bed id is a patient identifier, and a NaN in it
    made the answer itself fail with a 500 and a traceback in the log)."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", "invalid"), "type": e.get("type", "invalid")}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": errors}, status_code=422)
