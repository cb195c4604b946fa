"""A misbehaving network between the code and a real S3 server: a forwarding proxy on loopback.

It forwards every request to the S3 endpoint (moto's server) and damages the first
``failures`` object downloads (GET requests answered with a body) in one of two ways a
real network does: ``truncate`` (the connection drops half-way through the body) or
``corrupt`` (the body arrives whole but with flipped bytes, as a broken middlebox may).
Independently, ``drop_every=n`` drops the connection of every n-th request of any kind with
no answer (alternately before it reaches S3 and after S3 has acted on it, so a retried PUT
is a replay), and ``delay_every=n`` holds every n-th request for ``delay_s`` first.
"""

from __future__ import annotations

import http.client
import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


class FlakyS3Proxy:
    def __init__(
        self,
        upstream: str,
        mode: str = "truncate",
        failures: int = 0,
        drop_every: int = 0,
        delay_every: int = 0,
        delay_s: float = 0.0,
    ) -> None:
        if mode not in ("truncate", "corrupt"):
            raise ValueError(mode)
        self.upstream = urlsplit(upstream)
        self.mode, self.failures, self.damaged = mode, failures, 0
        self.drop_every, self.delay_every, self.delay_s = drop_every, delay_every, delay_s
        self.requests, self.dropped, self.delayed = 0, 0, 0
        self._counter = itertools.count(1)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                drop, delay = proxy._fate()
                if delay:
                    time.sleep(proxy.delay_s)
                if drop == "before":
                    self.close_connection = True
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                payload = response.read()
                conn.close()
                if drop == "after":
                    self.close_connection = True
                    return
                damage = (
                    self.command == "GET"
                    and response.status in (200, 206)
                    and len(payload) > 1024
                    and proxy._take_failure()
                )
                self.send_response(response.status)
                head = self.command == "HEAD"  # no body, but the object's real Content-Length
                for key, value in response.getheaders():
                    if key.lower() not in HOP_HEADERS and (head or key.lower() != "content-length"):
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(payload)))
                if damage and proxy.mode == "truncate":
                    self.send_header("Connection", "close")
                    self.end_headers()
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.end_headers()
                if damage:
                    payload = bytes(b ^ 0xFF if i % 997 == 0 else b for i, b in enumerate(payload))
                self.wfile.write(payload)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _fate(self) -> tuple[str | None, bool]:
        """(drop: None, "before" or "after" forwarding; delay) for the next request."""
        with self._lock:
            n = next(self._counter)
            self.requests = n
            drop = bool(self.drop_every) and n % self.drop_every == 0
            delay = bool(self.delay_every) and n % self.delay_every == 0
            self.dropped += drop
            self.delayed += delay
            return (("before", "after")[self.dropped % 2] if drop else None), delay

    def _take_failure(self) -> bool:
        with self._lock:
            if self.damaged < self.failures:
                self.damaged += 1
                return True
            return False

    def __enter__(self) -> FlakyS3Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
