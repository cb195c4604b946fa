"""The shared service limits (``sleepsound.monitor.limits``) that the prober got past, each through a
live uvicorn server set up by ``limits.server_config`` (as ``monitor serve`` and ``clips serve`` run it):
decode bombs (rate x channels), WAVs cut short, forms of many parts, slow and idle connections, one
client's many connections, URL queries in uvicorn's log, libsndfile's callback tracebacks, and
X-Forwarded-For believed from any local process.

The app is a small one over the same functions the monitor's endpoints call (``read_body``,
``upload_bytes``, ``decode_audio``), so these run in seconds without a trained model."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn
from fastapi import FastAPI, Request, WebSocket

from sleepsound.core.ports import free_port
from sleepsound.monitor.limits import (
    AudioLimits,
    client_of,
    decode_audio,
    install_handlers,
    read_body,
    server_config,
    service_logging,
    upload_bytes,
)
from tests.monitor.conftest import run_in_thread

LIMITS = AudioLimits(max_bytes=8 << 20, max_seconds=10.0)
HEADER_TIMEOUT_S = 0.5
PER_CLIENT = 4


def _app() -> FastAPI:
    app = FastAPI()
    install_handlers(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/decode")
    async def decode(request: Request, name: str = "upload") -> dict[str, Any]:
        body = await read_body(request, LIMITS.max_bytes, 10.0)
        data = upload_bytes(body, request.headers.get("content-type", ""), name)  # on the loop, as app.py does
        audio, rate, _ = decode_audio(data, name, LIMITS)
        return {"frames": len(audio), "rate": rate}

    @app.get("/client")
    async def client(request: Request) -> dict[str, str]:
        return {"client": client_of(request), "scheme": request.url.scheme}

    @app.websocket("/ws/{sid}")
    async def ws(websocket: WebSocket, sid: str) -> None:
        await websocket.accept()
        await websocket.close()

    return app


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    service_logging("info")
    port = free_port()
    config = server_config(
        _app(), "127.0.0.1", port, header_timeout_s=HEADER_TIMEOUT_S, max_per_client=PER_CLIENT, log_level="info"
    )
    live = uvicorn.Server(config)
    thread = run_in_thread(live)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        live.should_exit = True
        thread.join(timeout=10)


def _audio(seconds: float, rate: int, channels: int = 1, fmt: str = "FLAC") -> bytes:
    buffer = io.BytesIO()
    samples = np.zeros((int(seconds * rate), channels), dtype=np.float32)  # near-silence: FLAC packs it small
    samples[::997] = 0.01
    sf.write(buffer, samples, rate, format=fmt, subtype="PCM_16" if fmt == "WAV" else "PCM_24")
    return buffer.getvalue()


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def test_rate_and_channels_are_bounded_before_decoding(server: str) -> None:
    # 8 s of near-silence at 192 kHz x 8 channels: a few hundred KB of FLAC, 12.3 M samples decoded
    bomb = _audio(8.0, 192_000, channels=8)
    assert len(bomb) < LIMITS.max_bytes
    reply = httpx.post(f"{server}/decode?name=bomb.flac", content=bomb, timeout=30)
    assert reply.status_code == 413, reply.text
    assert "bomb.flac: 8.0 s at 192000 Hz x 8 channels" in reply.json()["detail"]
    assert "48 kHz" in reply.json()["detail"]
    reply = httpx.post(f"{server}/decode?name=ultra.flac", content=_audio(0.5, 500_000), timeout=30)
    assert reply.status_code == 422 and "500000 Hz is above the 384000 Hz" in reply.json()["detail"]
    reply = httpx.post(f"{server}/decode?name=many.wav", content=_audio(0.5, 16_000, 9, "WAV"), timeout=30)
    assert reply.status_code == 422 and "many.wav: 9 channels" in reply.json()["detail"]
    # within the budget (10 s of 48 kHz stereo): decoded, channel 0 only
    reply = httpx.post(f"{server}/decode?name=ok.flac", content=_audio(4.0, 48_000, channels=2), timeout=30)
    assert reply.status_code == 200 and reply.json() == {"frames": 4 * 48_000, "rate": 48_000}


def test_a_wav_cut_short_or_lying_about_its_length_is_refused_as_validate_refuses_it(server: str) -> None:
    whole = _audio(6.0, 16_000, fmt="WAV")
    reply = httpx.post(f"{server}/decode?name=cut.wav", content=whole[: len(whole) // 2], timeout=30)
    assert reply.status_code == 400, reply.text
    assert reply.json()["detail"].startswith("cut.wav: truncated: the header declares 0:00:06 of audio")
    assert "bytes missing" in reply.json()["detail"]
    lying = bytearray(_audio(2.0, 16_000, fmt="WAV"))
    lying[40:44] = (0x7FFFFFF0).to_bytes(4, "little")  # the data chunk declares 18 h
    reply = httpx.post(f"{server}/decode?name=lying.wav", content=bytes(lying), timeout=30)
    assert reply.status_code == 400 and "lying.wav: truncated: the header declares 18:38:" in reply.json()["detail"]


def test_a_form_of_many_tiny_parts_is_refused_at_once(server: str) -> None:
    part = b'--B\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n'
    body = part * (6 * 2**20 // len(part)) + b"--B--\r\n"  # ~120k parts, within the byte limit
    started = time.monotonic()
    reply = httpx.post(
        f"{server}/decode?name=m", content=body, headers={"Content-Type": "multipart/form-data; boundary=B"}, timeout=30
    )
    assert reply.status_code == 400 and "more than 8 parts" in reply.json()["detail"], reply.text
    assert time.monotonic() - started < 2.0
    # the audio part of an ordinary form is still found, among small fields
    wav = _audio(1.0, 16_000, fmt="WAV")
    form = httpx.post(f"{server}/decode?name=f.wav", files={"file": ("f.wav", wav)}, data={"note": "x"}, timeout=30)
    assert form.status_code == 200 and form.json()["frames"] == 16_000


def test_malformed_audio_is_one_refusal_without_a_callback_traceback(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raised: list[Any] = []
    monkeypatch.setattr(sys, "unraisablehook", raised.append)
    # an AIFF whose sound chunk's id is damaged: libsndfile seeks to -1 (soundfile's callback raised, cffi printed it)
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(3200, dtype=np.float32), 16_000, format="AIFF", subtype="PCM_16")
    aiff = bytearray(buffer.getvalue())
    aiff[aiff.index(b"SSND")] = 0x84
    reply = httpx.post(f"{server}/decode?name=bad.aiff", content=bytes(aiff), timeout=30)
    assert reply.status_code == 400 and reply.json()["detail"].startswith("bad.aiff: unreadable audio")
    assert raised == []


def test_a_connection_that_never_finishes_its_headers_is_closed(server: str) -> None:
    slow = socket.create_connection(("127.0.0.1", _port(server)), timeout=5)
    slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
    idle = socket.create_connection(("127.0.0.1", _port(server)), timeout=5)
    started = time.monotonic()
    for sock in (slow, idle):
        sock.settimeout(5)
        assert sock.recv(100) == b""  # closed by the server
        sock.close()
    assert time.monotonic() - started < HEADER_TIMEOUT_S + 2
    # ... and one that keeps trickling header lines is closed too
    trickle = socket.create_connection(("127.0.0.1", _port(server)), timeout=5)
    trickle.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    trickle.settimeout(0.1)
    closed = False
    end = time.monotonic() + HEADER_TIMEOUT_S + 2
    while time.monotonic() < end and not closed:
        try:
            trickle.sendall(b"X-a: b\r\n")
            closed = trickle.recv(100) == b""
        except TimeoutError:
            continue
        except OSError:
            closed = True
    trickle.close()
    assert closed


def test_one_client_holding_many_connections_does_not_shut_out_others(server: str) -> None:
    greedy = []
    for _ in range(PER_CLIENT):  # from another loopback address: a second client
        sock = socket.socket()
        sock.bind(("127.0.0.2", 0))
        sock.connect(("127.0.0.1", _port(server)))
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        greedy.append(sock)
    time.sleep(0.1)
    extra = socket.socket()
    extra.bind(("127.0.0.2", 0))
    extra.connect(("127.0.0.1", _port(server)))
    extra.settimeout(5)
    assert extra.recv(100).startswith(b"HTTP/1.1 503")  # answered and closed at once, its fd freed
    extra.close()
    reply = httpx.get(f"{server}/health", timeout=5)  # another client gets in
    assert reply.status_code == 200
    for sock in greedy:
        sock.close()


def test_uvicorn_log_lines_carry_no_url_query(server: str) -> None:
    import websockets.asyncio.client

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep()
    logging.getLogger("uvicorn").addHandler(handler)
    try:

        async def visit() -> None:
            url = server.replace("http", "ws") + "/ws/s-1?token=SECRET-TOKEN&patient=Jane-Doe"
            async with websockets.asyncio.client.connect(url) as socket_:
                await socket_.close()

        asyncio.run(visit())
        time.sleep(0.2)
    finally:
        logging.getLogger("uvicorn").removeHandler(handler)
    assert any("/ws/s-1" in line for line in lines), lines  # the handshake is still logged ...
    assert not any("SECRET-TOKEN" in line or "Jane-Doe" in line for line in lines), lines  # ... without its query


FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"}


def _whoami(base: str, local: str = "127.0.0.1") -> dict[str, str]:
    transport = httpx.HTTPTransport(local_address=local)
    with httpx.Client(transport=transport, timeout=5) as client:
        return client.get(f"{base}/client", headers=FORWARDED).json()


def test_a_client_is_its_connections_address_unless_its_proxy_is_trusted(server: str) -> None:
    from sleepsound.monitor.limits import parse_trusted_proxies

    # by default (uvicorn's own default believed 127.0.0.1): the header is ignored
    assert _whoami(server) == {"client": "127.0.0.1", "scheme": "http"}
    port = free_port()
    trusted = parse_trusted_proxies(["127.0.0.1"])  # as --trust-proxy 127.0.0.1
    proxied = uvicorn.Server(server_config(_app(), "127.0.0.1", port, log_level="warning", trusted_proxies=trusted))
    thread = run_in_thread(proxied)
    try:
        base = f"http://127.0.0.1:{port}"
        assert _whoami(base) == {"client": "203.0.113.7", "scheme": "https"}  # from the trusted proxy
        assert _whoami(base, local="127.0.0.2") == {"client": "127.0.0.2", "scheme": "http"}  # not from another
    finally:
        proxied.should_exit = True
        thread.join(timeout=10)


def test_trusted_proxies_are_addresses_or_networks_never_every_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from sleepsound.clips.cli import clips_app
    from sleepsound.monitor.cli import monitor_app
    from sleepsound.monitor.limits import parse_trusted_proxies

    given = ["127.0.0.1, ::1", "10.1.2.3/8", "10.0.0.0/8"]
    assert parse_trusted_proxies(given) == ("127.0.0.1", "::1", "10.0.0.0/8")
    assert parse_trusted_proxies([]) == ()
    for bad, says in (("*", "lets any client pose as any other"), ("localhost", "not an IP address or network")):
        with pytest.raises(ValueError, match=says):
            parse_trusted_proxies([bad])
    # refused by both serve commands before anything is loaded
    monitor = CliRunner().invoke(monitor_app, ["serve", "--root", str(tmp_path), "--trust-proxy", "localhost"])
    assert monitor.exit_code == 2 and "--trust-proxy 'localhost': not an IP address" in monitor.output
    clips = CliRunner().invoke(clips_app, ["serve", "--model", str(tmp_path), "--trust-proxy", "*"])
    assert clips.exit_code == 2 and "lets any client pose as any other" in clips.output
    # a good one reaches uvicorn's configuration (the app and the server stubbed: no model to load)
    served: dict[str, Any] = {}
    monkeypatch.setattr("sleepsound.clips.serve.create_app", lambda *args, **kwargs: object())
    monkeypatch.setattr("sleepsound.monitor.limits.serve", lambda *args, **kwargs: served.update(kwargs))
    given = ["serve", "--model", str(tmp_path), "--trust-proxy", "127.0.0.1", "--trust-proxy", "10.0.0.0/8"]
    assert CliRunner().invoke(clips_app, given).exit_code == 0
    assert served["trusted_proxies"] == ("127.0.0.1", "10.0.0.0/8")


@pytest.mark.parametrize(
    "given, says",
    [
        (["--max-chunk-mb", "nan"], "--max-chunk-mb nan: give a finite number above 0"),  # was int(nan): ValueError
        (["--rate", "inf"], "--rate inf: give a finite number above 0"),  # was OverflowError
        (["--read-timeout", "nan"], "--read-timeout nan"),  # was accepted: no read deadline at all
        (["--idle-timeout", "-1"], "--idle-timeout -1.0"),
        (["--graceful", "nan"], "--graceful nan"),
        (["--port", "99999"], "65535"),  # was a uvicorn traceback
        (["--max-sessions", "-5"], "--max-sessions"),
    ],
)
def test_monitor_serve_refuses_limits_that_are_no_limits(tmp_path: Path, given: list[str], says: str) -> None:
    from typer.testing import CliRunner

    from sleepsound.monitor.cli import monitor_app

    refused = CliRunner().invoke(monitor_app, ["serve", "--root", str(tmp_path), *given])
    assert refused.exit_code == 2 and says in refused.output, refused.output


def test_a_wave_file_of_millions_of_chunks_is_walked_no_further_than_any_recording_needs() -> None:
    """7.8 million empty chunks after the audio (60 MB, under the upload limit) kept the header check
    busy 10 s on the event loop. The walk stops after MAX_WAVE_CHUNKS: what lies past them is not read."""
    import struct

    import soundfile as sf

    from sleepsound.io.audio import MAX_WAVE_CHUNKS, _unparsed_tail
    from sleepsound.monitor.limits import AudioLimits, probe_audio

    empty = b"JUNK\x00\x00\x00\x00"
    for count, expected in ((10, 64), (MAX_WAVE_CHUNKS + 10, 0)):  # garbage reached, or not read at all
        data = empty * count + b"\xff" * 64
        assert _unparsed_tail(io.BytesIO(data), 0, len(data), "<") == expected
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(16_000, dtype=np.float32), 16_000, format="WAV", subtype="PCM_16")
    body = buffer.getvalue() + empty * (MAX_WAVE_CHUNKS * 4)
    body = body[:4] + struct.pack("<I", len(body) - 8) + body[8:]
    probe_audio(body, "c.wav", AudioLimits(64 * 2**20, 600.0))  # the audio is read as before
