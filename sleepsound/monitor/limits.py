"""What every sleepsound HTTP service bounds and refuses, in one place (monitor serve, clips serve).

Each rule here answers a defect seen on ``clips serve`` (issue 18):

- a body is read with a byte cap *while it arrives* and a wall-clock read timeout, so neither a
  large upload nor a slow client holds memory or a connection for long (``read_body``);
- audio is bounded *before* it is decoded: ``soundfile.info`` gives the rate and frame count
  from the header, a rate under 8 kHz is refused (a 1,244-byte WAV declaring 1 Hz decodes as
  600 s), and the decode itself reads at most the allowed frames plus one, whatever the
  header claims (``decode_audio``);
- messages name the upload and the problem, never a Python object's repr
  (``<_io.BytesIO object at 0x...>``, which libsndfile's errors carry);
- a client that goes away mid-upload is one log line, not a traceback (``ClientGone``);
- requests are checked for their Host header (DNS rebinding) and, when they change state,
  for a foreign Origin (a cross-origin ``text/plain`` POST is a CSRF) (``GuardMiddleware``);
- scoring runs on one bounded worker thread (``BoundedWorker``): a full queue is a 503 at
  once, never an unbounded wait, and the event loop (``/health``) never waits behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import queue
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_RATE_HZ = 8_000
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class Refused(Exception):
    """A request refused with ``status`` and a message naming the upload and the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The client closed the connection before its upload was complete."""


@dataclass(frozen=True)
class AudioLimits:
    """Bounds on one uploaded piece of audio."""

    max_bytes: int
    max_seconds: float
    min_seconds: float = 0.0
    min_rate: int = MIN_RATE_HZ


_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>|<_io\.\w+[^>]*>")


def clean_message(text: str, name: str) -> str:
    """``text`` with any object repr replaced by the upload's name."""
    return _REPR.sub(name, text)


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes:
    """The request body, refused (413) as soon as it passes ``max_bytes`` and (408) when it has not
    arrived within ``timeout_s``; never buffered past the limit. A client gone mid-body raises ``ClientGone``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise Refused(413, f"upload of {int(declared)} bytes is over the limit of {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0

    async def collect() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise Refused(413, f"upload is over the limit of {max_bytes} bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except TimeoutError:
        raise Refused(408, f"upload not received within {timeout_s:g} s; send it faster or in smaller chunks") from None
    except ClientDisconnect:
        raise ClientGone() from None
    return b"".join(chunks)


def upload_bytes(body: bytes, content_type: str, name: str, field: str = "file") -> bytes:
    """The audio of a request: the ``field`` part of a multipart form (as the tutorial's clients
    send it), or the raw body. The body was already bounded by ``read_body``."""
    if not content_type.lower().startswith("multipart/form-data"):
        return body
    from python_multipart import parse_form

    found: dict[str, bytes] = {}

    def on_field(part: Any) -> None:
        found[(part.field_name or b"").decode("latin-1")] = part.value or b""

    def on_file(part: Any) -> None:
        handle = part.file_object
        handle.seek(0)
        found[(part.field_name or b"").decode("latin-1")] = handle.read()

    headers = {"Content-Type": content_type.encode("latin-1"), "Content-Length": str(len(body)).encode()}
    try:
        parse_form(headers, io.BytesIO(body), on_field, on_file)
    except Exception as exc:
        raise Refused(400, f"{name}: malformed multipart form ({clean_message(str(exc), name)})") from None
    if field not in found:
        raise Refused(400, f"{name}: the form has no {field!r} part; send the audio as {field}=@clip.wav")
    return found[field]


def probe_audio(data: bytes, name: str, limits: AudioLimits) -> Any:
    """The upload's header (``soundfile.info``), refused before anything is decoded when it is not
    audio, its rate is under ``limits.min_rate`` or it declares more than ``limits.max_seconds``."""
    if not data:
        raise Refused(400, f"{name}: empty upload; send the audio file's bytes")
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError) as exc:
        reason = getattr(exc, "error_string", None) or clean_message(str(exc), name)
        raise Refused(400, f"{name}: unreadable audio ({reason})") from None
    rate = int(info.samplerate)
    if rate < limits.min_rate:
        raise Refused(422, f"{name}: sample rate {rate} Hz is below the {limits.min_rate} Hz this service accepts")
    declared = info.frames / rate
    if declared > limits.max_seconds:
        raise Refused(413, f"{name}: longer than {limits.max_seconds:g} s ({declared:.1f} s)")
    return info


def decode_audio(data: bytes, name: str, limits: AudioLimits, channel: int = 0) -> tuple[np.ndarray, int, float]:
    """(mono float32 samples of ``channel``, sample rate, full scale) of an uploaded file, bounded
    before decoding (``probe_audio``), and the decode itself reads at most the allowed frames (plus
    one, to tell an over-long file) whatever the header claims."""
    info = probe_audio(data, name, limits)
    rate = int(info.samplerate)
    max_frames = int(limits.max_seconds * rate)
    try:
        with sf.SoundFile(io.BytesIO(data)) as handle:
            samples = handle.read(max_frames + 1, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        reason = getattr(exc, "error_string", None) or clean_message(str(exc), name)
        raise Refused(400, f"{name}: unreadable audio ({reason})") from None
    if len(samples) > max_frames:
        raise Refused(413, f"{name}: longer than {limits.max_seconds:g} s")
    seconds = len(samples) / rate
    if seconds < limits.min_seconds or len(samples) == 0:
        raise Refused(422, f"{name}: {seconds:.2f} s of audio; at least {limits.min_seconds:g} s are needed")
    if channel >= samples.shape[1]:
        raise Refused(422, f"{name}: no channel {channel} (the file has {samples.shape[1]})")
    full_scale = float("inf") if info.subtype in ("FLOAT", "DOUBLE") else 1.0
    return np.ascontiguousarray(samples[:, channel]), rate, full_scale


async def run_unless_gone(worker: BoundedWorker, request: Request, job: Callable[[], T], poll_s: float = 0.1) -> T:
    """``job`` on ``worker``, skipped if the client goes away while it waits in the queue (``ClientGone``);
    ``Busy`` at once when the queue is full. A job already running finishes (its work is bounded)."""
    gone = threading.Event()

    def guarded() -> T:
        if gone.is_set():
            worker.abandoned += 1
            raise ClientGone()
        return job()

    future = worker.submit(guarded)
    while True:
        done, _ = await asyncio.wait({future}, timeout=poll_s)
        if done:
            return future.result()
        if await request.is_disconnected():
            gone.set()
            future.cancel()  # nobody waits for it now
            raise ClientGone()


class Busy(Exception):
    """The worker's queue is full: the caller answers 503 at once rather than queueing without bound."""


class BoundedWorker:
    """One daemon thread running jobs from a bounded queue; ``submit`` never blocks the event loop.

    Why one thread: a CPU forward pass already uses every core, so two at once only contend.
    Why a daemon: a job stuck in a long forward pass must not keep a stopping server alive.
    """

    def __init__(self, max_queued: int, name: str = "scoring") -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], Callable[[Any, BaseException | None], None]] | None] = (
            queue.Queue(maxsize=max_queued)
        )
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.busy = False
        self.finished = 0  # jobs taken off the queue
        self.abandoned = 0  # jobs skipped because their client had gone
        self._thread.start()

    @property
    def queued(self) -> int:
        return self._jobs.qsize()

    def full(self) -> bool:
        return self._jobs.full()

    def put(self, job: Callable[[], Any], done: Callable[[Any, BaseException | None], None] | None = None) -> None:
        """Queue ``job`` (``done(result, error)`` runs on the worker thread after it); ``Busy`` when full."""
        try:
            self._jobs.put_nowait((job, done or (lambda result, error: None)))
        except queue.Full:
            raise Busy() from None

    def submit(self, job: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``job``; the returned future (of the running loop) resolves with its result."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            def apply() -> None:
                if future.cancelled():
                    return
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

            loop.call_soon_threadsafe(apply)

        self.put(job, settle)
        return future

    def stop(self) -> None:
        """No more jobs after those queued (the thread ends when it reaches this marker)."""
        with contextlib.suppress(queue.Full):
            self._jobs.put_nowait(None)

    def _run(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job, done = item
            self.busy = True
            try:
                result = job()
            except BaseException as exc:
                done(None, exc)
            else:
                done(result, None)
            finally:
                self.finished += 1
                self.busy = False


class GuardMiddleware:
    """Refuse requests for another Host (DNS rebinding) and state-changing ones from a foreign Origin.

    A browser page on another site can make a user's browser POST ``text/plain`` to a loopback
    service without a CORS preflight; the Origin header it must send is how we tell. Requests
    without Origin (curl, devices) pass; ``allowed_origins`` lists the dashboard's own origins
    when they differ from the Host.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str], allowed_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.hosts = {h.lower() for h in allowed_hosts}
        self.origins = {o.lower().rstrip("/") for o in allowed_origins}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        hostname = _hostname(host)
        problem = None
        if "*" not in self.hosts and hostname not in self.hosts:
            problem = (400, "the Host header names a host this service does not answer for")
        elif scope["type"] == "websocket" or scope.get("method") in STATE_CHANGING:
            origin = headers.get("origin")
            foreign = (
                origin.lower().rstrip("/") not in self.origins | _same_origin(host, scope)
                if origin is not None
                else headers.get("sec-fetch-site") == "cross-site"
            )
            if foreign:
                problem = (403, "cross-origin request refused")
        if problem is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await JSONResponse({"detail": problem[1]}, status_code=problem[0])(scope, receive, send)


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _same_origin(host: str, scope: Scope) -> set[str]:
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return {f"{scheme}://{host.lower()}"} if host else set()


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> list[str]:
    """The Host names a service answers to: the loopback names, the bind address, and ``extra``."""
    names = list(LOOPBACK_HOSTS)
    if bind_host not in ("127.0.0.1", "::1", "localhost"):
        names.append(bind_host.lower())
    return [*names, *(e.lower() for e in extra)]


class OneLineDisconnects(logging.Filter):
    """uvicorn logs a client that vanished mid-request as an ASGI traceback; keep it to one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ClientDisconnect | ClientGone | ConnectionResetError):
            record.exc_info = None
            record.exc_text = None
            record.msg, record.args = "client disconnected before the request was complete", ()
        return True


def quiet_disconnect_tracebacks() -> None:
    """Install ``OneLineDisconnects`` on uvicorn's error logger (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, OneLineDisconnects) for f in logger.filters):
        logger.addFilter(OneLineDisconnects())


def refused_response(exc: Refused) -> JSONResponse:
    """The refusal as JSON; an upload cut off unread (408, 413) also closes the connection, so the
    server stops reading the rest of it rather than draining it for keep-alive."""
    headers = {"Connection": "close"} if exc.status in (408, 413) else None
    return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)


def install_handlers(app: Any) -> None:
    """``Refused`` as its status with the message; ``ClientGone`` as one log line (the reply goes nowhere)."""

    async def on_refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Refused)
        return refused_response(exc)

    async def on_gone(request: Request, exc: Exception) -> JSONResponse:
        log.info("client went away during its upload to %s", request.url.path.split("/")[1] or "/")
        return JSONResponse({"detail": "client disconnected"}, status_code=400)

    app.add_exception_handler(Refused, on_refused)
    app.add_exception_handler(ClientGone, on_gone)


def service_logging(level: str = "info") -> None:
    """The service's own lines (counts and opaque ids only) beside uvicorn's; disconnects as one line."""
    quiet_disconnect_tracebacks()
    ours = logging.getLogger("sleepsound")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(level.upper())


def serve(app: Any, host: str, port: int, graceful_s: float = 5.0, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn: no access log (URLs and clients are no one's business), a graceful
    shutdown that gives up on requests still running after ``graceful_s``, disconnects as one line."""
    import uvicorn

    service_logging(log_level)
    uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            access_log=False,
            log_level=log_level,
            timeout_graceful_shutdown=graceful_s,
            timeout_keep_alive=5,
        )
    ).run()
