"""What every sleepsound HTTP service bounds and refuses, in one place (monitor serve, clips serve).

Each rule here answers a defect seen on ``clips serve`` (issue 18):

- a body is read with a byte cap *while it arrives* and a wall-clock read timeout, so neither a
  large upload nor a slow client holds memory or a connection for long (``read_body``);
- audio is bounded *before* it is decoded: ``soundfile.info`` gives the rate, channels and frame
  count from the header, a rate under 8 kHz is refused (a 1,244-byte WAV declaring 1 Hz decodes as
  600 s), and so is one over 384 kHz, more than 8 channels, or more samples (frames x channels) than
  ``AudioLimits.max_samples`` (a 1-MB FLAC of near-silence at 655 kHz x 8 channels decodes to 3 GB);
  a WAV whose header declares more (or less) audio than it holds is refused as ``validate`` refuses
  it; the decode reads one channel in blocks, at most the allowed frames plus one, whatever the
  header claims (``decode_audio``);
- a multipart form is parsed with a cap on its parts and their headers (605k empty parts took
  4.5 s on the event loop), in memory, keeping only the audio part (``upload_bytes``);
- uvicorn runs with a deadline for a request's headers, a cap on one client's connections and on
  all requests (503 past it), the fd limit raised, and no URL query in its log (``serve``);
- a client is its socket's address: X-Forwarded-For (and -Proto) are believed only from the
  proxies the operator names (``--trust-proxy``), never by default (uvicorn's default believes any
  local process, which could then pose as any number of clients and slip every per-client limit);
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
import collections
import contextlib
import io
import ipaddress
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from sleepsound.io.audio import SAMPLES_PER_SECOND, length_problem, wav_format_problem

log = logging.getLogger(__name__)
T = TypeVar("T")

MIN_RATE_HZ = 8_000
MAX_RATE_HZ = 384_000  # above any recorder's rate; ultrasonic rates only make a decode bomb
MAX_CHANNELS = 8
DECODE_BLOCK_FRAMES = 1 << 16
MAX_FORM_PARTS = 8  # a form holds the audio and a few small fields, never thousands of parts
MAX_FORM_HEADERS = 16  # headers per part
HEADER_TIMEOUT_S = 10.0  # a request's headers must arrive within this (slow-loris, idle connections)
KEEP_ALIVE_S = 5
MAX_CONNECTIONS_PER_CLIENT = 64
MAX_CONCURRENCY = 1000  # requests and connections at once; past it uvicorn answers 503
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


class Refused(Exception):
    """A request refused with ``status`` and a message naming the upload and the problem."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


class ClientGone(Exception):
    """The client closed the connection before its upload was complete."""


@dataclass(frozen=True)
class AudioLimits:
    """Bounds on one uploaded piece of audio."""

    max_bytes: int
    max_seconds: float
    min_seconds: float = 0.0
    min_rate: int = MIN_RATE_HZ
    max_rate: int = MAX_RATE_HZ
    max_channels: int = MAX_CHANNELS
    max_samples: int | None = None  # frames x channels; None: max_seconds of 48 kHz stereo

    @property
    def sample_budget(self) -> int:
        """Most samples (frames x channels) one decode may read: the longest accepted audio at 48-kHz
        stereo (io's ``SAMPLES_PER_SECOND``), which bounds the decode's work and memory."""
        if self.max_samples is not None:
            return self.max_samples
        return int(self.max_seconds * SAMPLES_PER_SECOND)


class AudioBuffer(io.BytesIO):
    """An upload's bytes for libsndfile: a seek it asks for outside the buffer (a malformed AIFF
    asks for -1) fails as libsndfile expects (position -1) instead of raising inside soundfile's
    cffi callback, which prints a traceback to the server's log for every such upload."""

    _failed = False

    def seek(self, offset: int, whence: int = 0) -> int:
        try:
            return super().seek(offset, whence)
        except (ValueError, OverflowError):
            self._failed = True
            return -1

    def tell(self) -> int:
        if self._failed:
            self._failed = False
            return -1
        return super().tell()


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
    send it), or the raw body. The body was already bounded by ``read_body``; the form is parsed in
    memory (audio never lands in a temporary file), refused (400) past ``MAX_FORM_PARTS`` parts or
    ``MAX_FORM_HEADERS`` headers a part, so its parse (on the event loop) stays short."""
    if not content_type.lower().startswith("multipart/form-data"):
        return body
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise Refused(400, f"{name}: malformed multipart form (no boundary in its Content-Type)")
    parts: list[tuple[bytes, list[bytes]]] = []  # (Content-Disposition, data pieces) of each part
    header: list[bytes] = [b"", b""]  # the header being read: field, value

    def too_many() -> Refused:
        return Refused(
            400, f"{name}: the form has more than {MAX_FORM_PARTS} parts; send the audio as {field}=@clip.wav"
        )

    def begin() -> None:
        if len(parts) >= MAX_FORM_PARTS:
            raise too_many()
        parts.append((b"", []))

    def header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def header_end() -> None:
        if header[0].strip().lower() == b"content-disposition" and parts:
            parts[-1] = (header[1], parts[-1][1])
        header[0], header[1] = b"", b""

    def part_data(data: bytes, start: int, end: int) -> None:
        if parts and parts[-1][0] and _disposition_name(parts[-1][0]) == field:
            parts[-1][1].append(data[start:end])  # only the audio part's bytes are kept

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": begin,
            "on_header_field": header_field,
            "on_header_value": header_value,
            "on_header_end": header_end,
            "on_part_data": part_data,
        },  # type: ignore[arg-type]
        max_size=len(body) + 1,
        max_header_count=MAX_FORM_HEADERS,
    )
    try:
        parser.write(body)
        parser.finalize()
    except Refused:
        raise
    except Exception as exc:
        raise Refused(400, f"{name}: malformed multipart form ({clean_message(str(exc), name)})") from None
    found = [b"".join(pieces) for disposition, pieces in parts if _disposition_name(disposition) == field]
    if not found:
        raise Refused(400, f"{name}: the form has no {field!r} part; send the audio as {field}=@clip.wav")
    return found[0]


def _disposition_name(disposition: bytes) -> str:
    """The ``name`` of a part's Content-Disposition header."""
    from python_multipart.multipart import parse_options_header

    return parse_options_header(disposition)[1].get(b"name", b"").decode("latin-1")


def probe_audio(data: bytes, name: str, limits: AudioLimits) -> Any:
    """The upload's header (``soundfile.info``), refused before anything is decoded when it is not
    audio, its rate or channels are outside ``limits``, its header disagrees with its size (a WAV
    truncated or never finalised, a FLAC, MP3 or Ogg stream declaring more than its bytes can code:
    as ``validate`` says), it declares more than ``limits.max_seconds`` or more samples (frames x
    channels) than ``limits.sample_budget``."""
    if not data:
        raise Refused(400, f"{name}: empty upload; send the audio file's bytes")
    try:
        info = sf.info(AudioBuffer(data))
    except (sf.LibsndfileError, RuntimeError) as exc:  # a 0-Hz WAV header is named, not libsndfile's "SF_INFO"
        reason = (
            wav_format_problem(io.BytesIO(data), len(data))
            or getattr(exc, "error_string", None)
            or clean_message(str(exc), name)
        )
        raise Refused(400, f"{name}: unreadable audio ({reason})") from None
    rate, channels = int(info.samplerate), int(info.channels)
    if rate < limits.min_rate:
        raise Refused(422, f"{name}: sample rate {rate} Hz is below the {limits.min_rate} Hz this service accepts")
    if rate > limits.max_rate:
        raise Refused(
            422, f"{name}: sample rate {rate} Hz is above the {limits.max_rate} Hz this service accepts; resample it"
        )
    if channels > limits.max_channels:
        raise Refused(
            422, f"{name}: {channels} channels; this service accepts at most {limits.max_channels}: send fewer"
        )
    problem = length_problem(io.BytesIO(data), len(data), info)
    if problem is not None:
        raise Refused(400, f"{name}: {problem[1]}")
    declared = info.frames / rate
    if declared > limits.max_seconds:
        raise Refused(413, f"{name}: longer than {limits.max_seconds:g} s ({declared:.1f} s)")
    if info.frames * channels > limits.sample_budget:
        raise Refused(
            413,
            f"{name}: {declared:.1f} s at {rate} Hz x {channels} channels is {info.frames * channels} samples to "
            f"decode, over the {limits.sample_budget} this service decodes ({limits.max_seconds:g} s of 48 kHz "
            "stereo); resample it to 48 kHz or send fewer channels",
        )
    return info


def decode_audio(data: bytes, name: str, limits: AudioLimits, channel: int = 0) -> tuple[np.ndarray, int, float]:
    """(mono float32 samples of ``channel``, sample rate, full scale) of an uploaded file, bounded
    before decoding (``probe_audio``). The decode reads blocks and keeps only ``channel``, so memory
    is one block plus the channel, and reads at most the allowed frames (plus one, to tell an
    over-long file) whatever the header claims."""
    info = probe_audio(data, name, limits)
    rate, channels = int(info.samplerate), int(info.channels)
    if channel >= channels:
        raise Refused(422, f"{name}: no channel {channel} (the file has {channels})")
    max_frames = min(int(limits.max_seconds * rate), limits.sample_budget // channels)
    out = np.empty(min(int(info.frames), max_frames) + 1, dtype=np.float32)
    block = np.empty((min(DECODE_BLOCK_FRAMES, len(out)), channels), dtype=np.float32)
    filled = 0
    try:
        with sf.SoundFile(AudioBuffer(data)) as handle:
            while filled < len(out):
                got = handle.read(min(len(block), len(out) - filled), dtype="float32", always_2d=True, out=block)
                if not len(got):
                    break
                out[filled : filled + len(got)] = got[:, channel]
                filled += len(got)
    except (sf.LibsndfileError, RuntimeError) as exc:
        reason = getattr(exc, "error_string", None) or clean_message(str(exc), name)
        raise Refused(400, f"{name}: unreadable audio ({reason})") from None
    if filled > max_frames:
        raise Refused(413, f"{name}: longer than {limits.max_seconds:g} s")
    seconds = filled / rate
    if seconds < limits.min_seconds or filled == 0:
        raise Refused(422, f"{name}: {seconds:.2f} s of audio; at least {limits.min_seconds:g} s are needed")
    full_scale = float("inf") if info.subtype in ("FLOAT", "DOUBLE") else 1.0
    return out[:filled], rate, full_scale


async def run_unless_gone(worker: BoundedWorker, request: Request, job: Callable[[], T], poll_s: float = 0.1) -> T:
    """``job`` on ``worker``, taken out of the queue if the client goes away while it waits
    (``ClientGone``); ``Busy`` at once when the queue is full. A job already running finishes (its work
    is bounded). An abandoned job used to keep its queue place until the worker reached it, so a
    client that hung up after each upload filled the queue past its own cap: every other client 503."""
    guarded = _UnlessGone(job)
    future, withdraw = worker.submit(guarded)
    while True:
        done, _ = await asyncio.wait({future}, timeout=poll_s)
        if done:
            return future.result()
        if await request.is_disconnected():
            guarded.gone.set()  # if the worker took it meanwhile, it is skipped there
            if withdraw():
                worker.abandoned += 1
            future.cancel()  # nobody waits for it now
            raise ClientGone()


class _UnlessGone:
    """A job skipped when ``gone`` is set by the time the worker reaches it."""

    def __init__(self, job: Callable[[], Any]) -> None:
        self.job, self.gone = job, threading.Event()

    def __call__(self) -> Any:
        if self.gone.is_set():
            raise ClientGone()
        return self.job()


class Busy(Exception):
    """The worker's queue is full: the caller answers 503 at once rather than queueing without bound."""


Job = tuple[Callable[[], Any], Callable[[Any, BaseException | None], None]]


class BoundedWorker:
    """One daemon thread running jobs from a bounded queue; ``submit`` never blocks the event loop.

    Why one thread: a CPU forward pass already uses every core, so two at once only contend.
    Why a daemon: a job stuck in a long forward pass must not keep a stopping server alive.
    A queued job can be withdrawn (its client went), which frees its place at once.
    """

    def __init__(self, max_queued: int, name: str = "scoring") -> None:
        self.max_queued = max_queued
        self._jobs: collections.deque[Job] = collections.deque()
        self._changed = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.busy = False
        self.finished = 0  # jobs taken off the queue
        self.abandoned = 0  # jobs withdrawn because their client had gone
        self._thread.start()

    @property
    def queued(self) -> int:
        with self._changed:
            return len(self._jobs)

    def full(self) -> bool:
        return self.queued >= self.max_queued

    def put(
        self, job: Callable[[], Any], done: Callable[[Any, BaseException | None], None] | None = None
    ) -> Callable[[], bool]:
        """Queue ``job`` (``done(result, error)`` runs on the worker thread after it); ``Busy`` when full.
        Returns the call that withdraws it while it still waits (True if it did)."""
        entry: Job = (job, done or (lambda result, error: None))
        with self._changed:
            if self._stopping or len(self._jobs) >= self.max_queued:
                raise Busy()
            self._jobs.append(entry)
            self._changed.notify()

        def withdraw() -> bool:
            with self._changed:
                if any(queued is entry for queued in self._jobs):
                    self._jobs.remove(entry)
                    return True
                return False  # already taken by the worker (or done)

        return withdraw

    def submit(self, job: Callable[[], T]) -> tuple[asyncio.Future[T], Callable[[], bool]]:
        """Queue ``job``: a future (of the running loop) that resolves with its result, and its withdraw call."""
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

        return future, self.put(job, settle)

    def stop(self) -> None:
        """No more jobs after those queued (the thread ends once it has run them)."""
        with self._changed:
            self._stopping = True
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._jobs and not self._stopping:
                    self._changed.wait()
                if not self._jobs:
                    return
                job, done = self._jobs.popleft()
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


_QUERY = re.compile(r"\?[^\s\"']*")


class NoQueryStrings(logging.Filter):
    """uvicorn logs every WebSocket handshake as ``"WebSocket /path?query"``, access log or not; a
    query may carry a device token (``?token=``, browsers cannot set Authorization on a WebSocket) or
    a patient's name, so the query is cut from every uvicorn line before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format: leave it to the handler
            return True
        if "?" in message:
            record.msg, record.args = _QUERY.sub("?[query removed]", message), ()
        return True


def quiet_disconnect_tracebacks() -> None:
    """Install ``OneLineDisconnects`` and ``NoQueryStrings`` on uvicorn's loggers (idempotent)."""
    for name in ("uvicorn.error", "uvicorn.access", "uvicorn"):
        logger = logging.getLogger(name)
        for kind in (OneLineDisconnects, NoQueryStrings):
            if not any(isinstance(f, kind) for f in logger.filters):
                logger.addFilter(kind())


def refused_response(exc: Refused, with_body: bool = False) -> JSONResponse:
    """The refusal as JSON. An upload cut off unread (408, 413), or any refusal of a request that
    came with a body (``with_body``: a 401 is decided before the chunk is read), also closes the
    connection: the server stops there rather than draining the rest for keep-alive, and a client
    dripping a body after its refusal no longer holds the socket open for ever."""
    headers = {"Connection": "close"} if with_body or exc.status in (408, 413) else {}
    return JSONResponse({"detail": exc.message}, status_code=exc.status, headers={**headers, **(exc.headers or {})})


def _declares_a_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    return "transfer-encoding" in request.headers or (length is not None and length.strip() not in ("", "0"))


def install_handlers(app: Any) -> None:
    """``Refused`` as its status with the message; ``ClientGone`` as one log line (the reply goes nowhere)."""

    async def on_refused(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Refused)
        return refused_response(exc, with_body=_declares_a_body(request))

    async def on_gone(request: Request, exc: Exception) -> JSONResponse:
        log.info("client went away during its upload to %s", request.url.path.split("/")[1] or "/")
        return JSONResponse({"detail": "client disconnected"}, status_code=400)

    app.add_exception_handler(Refused, on_refused)
    app.add_exception_handler(ClientGone, on_gone)


def service_logging(level: str = "info") -> None:
    """The service's own lines (counts and opaque ids only) beside uvicorn's; disconnects as one line."""
    quiet_disconnect_tracebacks()
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # a malformed form is our 400, not its warning
    ours = logging.getLogger("sleepsound")
    if not ours.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        ours.addHandler(handler)
        ours.setLevel(level.upper())


class ClientSlots:
    """How many requests each client has queued or running, capped so one client cannot hold every
    place in a service's queue (ten long uploads from one client kept every other client at 503 for
    minutes). Thread-safe; a client is ``client_of`` the request."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> bool:
        """One more place for ``client``; False when it already holds ``per_client``."""
        with self._lock:
            if self._held.get(client, 0) >= self.per_client:
                return False
            self._held[client] = self._held.get(client, 0) + 1
            return True

    def give_back(self, client: str) -> None:
        with self._lock:
            left = self._held.get(client, 0) - 1
            if left > 0:
                self._held[client] = left
            else:
                self._held.pop(client, None)

    @contextlib.contextmanager
    def held(self, client: str, refusal: Refused) -> Any:
        """A place for ``client`` while the block runs; ``refusal`` (a 429) when it has none left."""
        if not self.take(client):
            raise refusal
        try:
            yield
        finally:
            self.give_back(client)


def client_of(request: Request) -> str:
    """The request's client address as uvicorn resolved it: the socket's peer, or, for a request from
    a proxy the operator trusts (``--trust-proxy``), the client its X-Forwarded-For names. Every per-request
    client key uses it (queue places, sessions per client, failed logins per address), so they all
    agree on who a client is and none can be dodged by a header the operator did not ask to trust."""
    return request.client.host if request.client else "unknown"


def parse_trusted_proxies(values: Iterable[str]) -> tuple[str, ...]:
    """The reverse proxies (addresses or CIDR networks; a value may list several, comma-separated)
    whose X-Forwarded-For and X-Forwarded-Proto uvicorn is to believe, normalised; ValueError naming a
    value that is not one. Checked here because uvicorn takes anything else (a host name, a typo) as a
    literal that silently never matches; ``*`` is refused: believing every address is the defect this
    option exists to avoid."""
    out: list[str] = []
    for value in values:
        for item in (part.strip() for part in value.split(",")):
            if not item:
                continue
            if item == "*":
                raise ValueError(
                    "--trust-proxy *: name the proxy's address or network; believing X-Forwarded-For from "
                    "every address lets any client pose as any other"
                )
            try:
                address = ipaddress.ip_network(item, strict=False) if "/" in item else ipaddress.ip_address(item)
            except ValueError:
                raise ValueError(
                    f"--trust-proxy {item!r}: not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8)"
                ) from None
            out.append(str(address))
    return tuple(dict.fromkeys(out))


_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\n"
    b"Connection: close\r\nContent-Length: 43\r\n\r\ntoo many connections from this client; retry"
)


def guarded_protocol(header_timeout_s: float, max_per_client: int) -> type:
    """uvicorn's h11 protocol with what it lacks against slow and greedy clients (its keep-alive
    timeout starts only after a first response, so a connection that never finishes its headers was
    held forever, 20k of them exhausting the fds):

    - a connection must complete a request's headers within ``header_timeout_s`` of opening (or of
      its previous response), else it is closed;
    - one client address holds at most ``max_per_client`` connections; another is answered 503 and
      closed at once, so its fd is free again and other clients still get in.

    The address counted is the socket's peer, never X-Forwarded-For, even from a trusted proxy: the
    count is taken when the connection opens, before any header has arrived, and what it bounds (fds,
    connections) belongs to the peer. Behind a trusted proxy the cap bounds the proxy's connections
    to this service; the proxy bounds each of its own clients.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    open_by_client: dict[str, int] = {}

    class Guarded(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _counted: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            peer = self.client[0] if self.client else "unknown"
            if open_by_client.get(peer, 0) >= max_per_client:
                transport.write(_TOO_MANY)
                transport.close()
                return
            open_by_client[peer] = open_by_client.get(peer, 0) + 1
            self._counted = peer
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout_s, self._headers_late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _uncount(self) -> None:
            if self._counted is not None:
                left = open_by_client.get(self._counted, 0) - 1
                if left > 0:
                    open_by_client[self._counted] = left
                else:
                    open_by_client.pop(self._counted, None)
                self._counted = None

        def _headers_late(self) -> None:
            import h11

            self._deadline = None
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()  # no request begun in time: a slow-loris or an idle socket

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def handle_websocket_upgrade(self, event: Any) -> None:
            self._disarm()
            self._uncount()  # the socket is the WebSocket protocol's now; it is counted by uvicorn
            super().handle_websocket_upgrade(event)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._uncount()
            super().connection_lost(exc)

    return Guarded


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit (each connection is an fd; the
    usual soft 1024 is reached long before memory is); the limit now in force."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, ValueError, OSError):
        return 1024


def server_config(
    app: Any,
    host: str,
    port: int,
    graceful_s: float = 5.0,
    log_level: str = "info",
    header_timeout_s: float = HEADER_TIMEOUT_S,
    max_per_client: int = MAX_CONNECTIONS_PER_CLIENT,
    max_concurrency: int = MAX_CONCURRENCY,
    trusted_proxies: Sequence[str] = (),
) -> Any:
    """uvicorn's configuration for a sleepsound service: no access log (URLs and clients are no
    one's business), a graceful shutdown that gives up on requests still running after
    ``graceful_s``, a short keep-alive, ``guarded_protocol``'s header deadline and per-client
    connection cap, and ``limit_concurrency`` (503 past it) kept under the fd limit.

    Proxy headers (X-Forwarded-For, -Proto) are believed only from ``trusted_proxies``
    (``parse_trusted_proxies``' output), none by default: uvicorn's own default believes them from
    127.0.0.1 (or $FORWARDED_ALLOW_IPS), so any local process could pose as many clients."""
    import uvicorn

    fds = raise_fd_limit()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        log_level=log_level,
        proxy_headers=bool(trusted_proxies),
        forwarded_allow_ips=list(trusted_proxies),  # never None: uvicorn would read $FORWARDED_ALLOW_IPS
        timeout_graceful_shutdown=graceful_s,
        timeout_keep_alive=KEEP_ALIVE_S,
        limit_concurrency=max(16, min(max_concurrency, fds - 64)),
        http=guarded_protocol(header_timeout_s, max_per_client),
        h11_max_incomplete_event_size=16 * 1024,  # request line and headers
    )


def serve(
    app: Any,
    host: str,
    port: int,
    graceful_s: float = 5.0,
    log_level: str = "info",
    trusted_proxies: Sequence[str] = (),
) -> None:
    """Run ``app`` with uvicorn as ``server_config`` sets it up (proxy headers believed only from
    ``trusted_proxies``); disconnects as one line, no URL query in the log."""
    import uvicorn

    service_logging(log_level)
    uvicorn.Server(server_config(app, host, port, graceful_s, log_level, trusted_proxies=trusted_proxies)).run()
