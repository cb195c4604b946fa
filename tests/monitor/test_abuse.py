"""What one client can make the monitor service do, each through a live server on loopback: chunk
numbers that would fill a night with silence, NaN in the JSON, an unbounded or trickled session
body, a dashboard login opening sessions, guessed logins, one client holding every session, and one
local process posing as many clients with X-Forwarded-For."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from sleepsound.monitor.app import Settings
from sleepsound.monitor.users import add_user, users_path
from tests.monitor.conftest import NIGHT_RATE, Live, Trained, flac_chunks
from tests.monitor.test_limits import _raw, _wav

TOKEN = "operator-secret-token"
OPERATOR = {"Authorization": f"Bearer {TOKEN}"}
PASSWORD = "correct horse battery"
FAST = Settings(rate_per_s=1000.0, burst=1000)
WITH_TOKEN = Settings(
    operator_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
    rate_per_s=1000.0,
    burst=1000,
    read_timeout_s=1.0,
    login_failures=3,
)


def _open(client: httpx.Client, base: str, bed: str = "bed-7", headers: dict[str, str] | None = None) -> tuple:
    reply = client.post(f"{base}/v1/sessions", json={"bed_id": bed}, headers=headers or {})
    assert reply.status_code == 201, reply.text
    return reply.json()["session_id"], {"Authorization": f"Bearer {reply.json()['token']}"}


def _from(address: str, timeout: float = 30) -> httpx.Client:
    """A client whose requests come from another loopback address (another client to the server)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=timeout)


def _answer(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    try:
        return sock.recv(4096)
    finally:
        sock.close()


@pytest.mark.parametrize("live", [FAST], indirect=True)
def test_a_chunk_number_far_ahead_is_refused_before_it_costs_anything(trained: Trained, live: Live) -> None:
    from websockets.sync.client import connect

    chunks = flac_chunks(trained.night[: 130 * NIGHT_RATE], NIGHT_RATE, 10.0)
    port = int(live.base.rsplit(":", 1)[1])
    with httpx.Client(timeout=10) as client:
        sid, auth = _open(client, live.base)
        url = f"{live.base}/v1/sessions/{sid}/chunks"
        # far ahead: refused at once (it used to fill 100,000 chunks of silence), 2**63 too
        for seq in (100_000, 2**63):
            started = time.monotonic()
            far = client.post(f"{url}/{seq}", content=chunks[0], headers=auth)
            assert far.status_code == 422 and "may be skipped" in far.json()["detail"]
            assert time.monotonic() - started < 2
        # refused from the number alone, before the body is read (no 408 after the read timeout)
        sock = _raw(
            port,
            f"POST /v1/sessions/{sid}/chunks/100000 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: {auth['Authorization']}\r\nContent-Length: 100000\r\n\r\n".encode(),
        )
        assert _answer(sock).startswith(b"HTTP/1.1 422")
        # the same numbers over the WebSocket
        ws_url = f"{live.base.replace('http://', 'ws://')}/v1/sessions/{sid}/stream"
        with connect(ws_url, additional_headers=auth, max_size=None) as ws:
            for seq in (2**63 - 1, 100_000):
                ws.send(seq.to_bytes(8, "little", signed=True) + chunks[0])
                reply = json.loads(ws.recv(timeout=10))
                assert reply["status"] == 422 and reply["seq"] == seq
        status = client.get(f"{live.base}/v1/sessions/{sid}", headers=auth).json()
        assert status["next_seq"] == 0 and status["waiting_chunks"] == []

        # a real gap within the bound still becomes missing audio; one past it (10-s chunks: 60) does not
        assert client.post(f"{url}/0", content=chunks[0], headers=auth).json()["next_seq"] == 1
        too_far = client.post(f"{url}/62", content=chunks[1], headers=auth)
        assert too_far.status_code == 422 and "61 chunks ahead" in too_far.json()["detail"]
        gap = client.post(f"{url}/12", content=chunks[12], headers=auth).json()
        assert gap["missing"] == [1, 2, 3, 4] and gap["next_seq"] == 5  # 12 waits within the window of 8


@pytest.mark.parametrize("live", [FAST], indirect=True)
def test_gaps_together_are_bounded_by_how_long_the_session_has_been_open(trained: Trained, live: Live) -> None:
    chunk = flac_chunks(trained.night[: 10 * NIGHT_RATE], NIGHT_RATE, 10.0)[0]
    with httpx.Client(timeout=30) as client:
        sid, auth = _open(client, live.base)
        url = f"{live.base}/v1/sessions/{sid}/chunks"
        first = client.post(f"{url}/9", content=chunk, headers=auth)  # chunk length unknown: the window only
        assert first.status_code == 422 and "9 chunks ahead" in first.json()["detail"]
        assert client.post(f"{url}/0", content=chunk, headers=auth).is_success
        gap = client.post(f"{url}/60", content=chunk, headers=auth).json()  # 52 chunks (520 s) given up
        assert gap["missing"] == list(range(1, 53))
        # another 520 s at once: more audio lost than the session has been open (plus ten minutes)
        again = client.post(f"{url}/112", content=chunk, headers=auth)
        assert again.status_code == 422 and "more than this session has been open" in again.json()["detail"]
        assert client.get(f"{live.base}/v1/sessions/{sid}", headers=auth).json()["next_seq"] == 53


@pytest.mark.parametrize("live", [FAST], indirect=True)
def test_a_negative_chunk_number_is_refused_not_taken_for_a_duplicate(trained: Trained, live: Live) -> None:
    from websockets.sync.client import connect

    chunk = flac_chunks(trained.night[: 10 * NIGHT_RATE], NIGHT_RATE, 10.0)[0]
    with httpx.Client(timeout=10) as client:
        sid, auth = _open(client, live.base)
        negative = client.post(f"{live.base}/v1/sessions/{sid}/chunks/-1", content=chunk, headers=auth)
        assert negative.status_code == 422 and negative.json()["detail"] == "chunk -1: chunk numbers start at 0"
        ws_url = f"{live.base.replace('http://', 'ws://')}/v1/sessions/{sid}/stream"
        with connect(ws_url, additional_headers=auth, max_size=None) as ws:
            for seq in (-1, -(2**63)):
                ws.send(seq.to_bytes(8, "little", signed=True) + chunk)
                reply = json.loads(ws.recv(timeout=10))
                assert reply["status"] == 422 and "chunk numbers start at 0" in reply["detail"]
        assert client.post(f"{live.base}/v1/sessions/{sid}/chunks/0", content=chunk, headers=auth).is_success


@pytest.mark.parametrize("live", [FAST], indirect=True)
def test_bad_session_json_is_a_clean_422_that_echoes_and_logs_no_bed_id(
    live: Live, fresh_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bed = "bed-secret-77"
    json_headers = {"Content-Type": "application/json"}
    with httpx.Client(timeout=10) as client:
        for number in ("NaN", "Infinity", "-Infinity", "1e400", "0.001", "31"):
            reply = client.post(
                f"{live.base}/v1/sessions",
                content=f'{{"bed_id": "{bed}", "chunk_seconds": {number}}}',
                headers=json_headers,
            )
            assert reply.status_code == 422, (number, reply.text)
            assert bed not in reply.text
        nan = client.post(f"{live.base}/v1/sessions", content=f'{{"bed_id": "{bed}", "chunk_seconds": NaN}}')
        assert "numbers must be finite" in nan.json()["detail"]
        badly_named = client.post(f"{live.base}/v1/sessions", json={"bed_id": "bed secret 77 !"})
        assert badly_named.status_code == 422 and badly_named.json()["detail"].startswith("bed_id:")
        assert "secret" not in badly_named.text
        assert client.post(f"{live.base}/v1/sessions", content=b"{not json").status_code == 422
        nested = client.post(f"{live.base}/v1/sessions", content=b"[" * 2000 + b"]" * 2000, headers=json_headers)
        assert nested.status_code == 422 and "nests too deeply" in nested.json()["detail"]  # was a 500, traceback
        plain = client.post(
            f"{live.base}/v1/sessions", content=b'{"bed_id": "b"}', headers={"Content-Type": "text/plain"}
        )
        assert plain.status_code == 415
        # FastAPI's own validation (a path parameter) answers without echoing the input either
        path = client.post(
            f"{live.base}/v1/sessions/x/chunks/not-a-number", content=b"x", headers={"Authorization": "Bearer t"}
        )
        assert path.status_code == 422 and "not-a-number" not in path.text

        # the open loopback mode keeps its promise: devices open sessions, users or not
        add_user(users_path(fresh_root), "nurse-1", PASSWORD)
        assert client.post(f"{live.base}/v1/sessions", json={"bed_id": bed, "chunk_seconds": 10}).status_code == 201
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert bed not in text and not any(r.exc_info for r in caplog.records)


@pytest.mark.parametrize("live", [WITH_TOKEN], indirect=True)
def test_the_session_body_is_read_after_the_token_check_and_bounded_in_bytes_and_time(live: Live) -> None:
    port = int(live.base.rsplit(":", 1)[1])
    head = f"POST /v1/sessions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
    # no token: refused before a byte of the promised body arrives
    started = time.monotonic()
    assert _answer(_raw(port, f"{head}Content-Length: 100000\r\n\r\n".encode())).startswith(b"HTTP/1.1 401")
    assert time.monotonic() - started < 1.0
    # with the token: a declared 300 MiB is refused unread, a chunked flood past a few KiB too
    big = _answer(_raw(port, f"{head}Authorization: Bearer {TOKEN}\r\nContent-Length: {300 << 20}\r\n\r\n".encode()))
    assert big.startswith(b"HTTP/1.1 413")
    sent = 0

    def flood():  # 16 MiB offered in 64 KiB pieces
        nonlocal sent
        for _ in range(256):
            sent += 64 * 1024
            yield b" " * (64 * 1024)

    with httpx.Client(timeout=10) as client:
        try:
            status = client.post(f"{live.base}/v1/sessions", content=flood(), headers=OPERATOR).status_code
        except httpx.TransportError:  # answered 413 and closed while we were still sending
            status = 413
        assert status == 413 and sent < 8 << 20
        # a trickled body: 408 once the read timeout (1 s) has passed, not a connection held forever
        started = time.monotonic()
        slow = _raw(port, f'{head}Authorization: Bearer {TOKEN}\r\nContent-Length: 50\r\n\r\n{{"bed'.encode())
        assert _answer(slow).startswith(b"HTTP/1.1 408") and time.monotonic() - started < 4
        assert _open(client, live.base, headers=OPERATOR)[0]


@pytest.mark.parametrize("live", [WITH_TOKEN], indirect=True)
def test_a_dashboard_login_cannot_open_sessions_or_analyse_clips(live: Live, fresh_root: Path) -> None:
    add_user(users_path(fresh_root), "nurse-1", PASSWORD)
    with httpx.Client(timeout=30) as nurse:
        login = nurse.post(f"{live.base}/login", data={"name": "nurse-1", "password": PASSWORD})
        assert login.status_code == 303
        assert nurse.get(f"{live.base}/v1/beds").status_code == 200  # the login is good for the dashboard
        opened = nurse.post(f"{live.base}/v1/sessions", json={"bed_id": "bed-by-nurse"})
        assert opened.status_code == 403 and "not a dashboard login" in opened.json()["detail"]
        clip = nurse.post(f"{live.base}/analyze-breathing", content=_wav(12, 16_000))
        assert clip.status_code == 403 and "operator token" in clip.json()["detail"]
        assert _open(nurse, live.base, headers=OPERATOR)[0]  # the token as a bearer still does
    anonymous = httpx.post(f"{live.base}/v1/sessions", json={"bed_id": "b"})
    assert anonymous.status_code == 401 and anonymous.json()["detail"].endswith("(Authorization: Bearer <token>)")


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("live", [WITH_TOKEN], indirect=True)
def test_wrong_operator_tokens_lock_only_the_address_that_sent_them(live: Live) -> None:
    with _from("127.0.0.2") as guesser:
        codes = [
            guesser.post(f"{live.base}/login", content=f"token=guess-{i}", headers=FORM).status_code for i in range(4)
        ]
        assert codes == [401, 401, 401, 429]  # login_failures=3
    with _from("127.0.0.3") as operator:  # the operator, elsewhere, still logs in with the token
        assert operator.post(f"{live.base}/login", content=f"token={TOKEN}", headers=FORM).status_code == 303
    with _from("127.0.0.2") as guesser:  # the guesser stays locked out, the right token or not
        assert guesser.post(f"{live.base}/login", content=f"token={TOKEN}", headers=FORM).status_code == 429


@pytest.mark.parametrize("live", [WITH_TOKEN], indirect=True)
def test_concurrent_wrong_passwords_are_each_counted_against_the_limit(live: Live, fresh_root: Path) -> None:
    add_user(users_path(fresh_root), "nurse-1", PASSWORD)
    codes: list[int] = []

    def guess(i: int) -> None:
        with _from("127.0.0.4") as client:
            reply = client.post(f"{live.base}/login", content=f"name=nurse-1&password=wrong-{i}", headers=FORM)
            codes.append(reply.status_code)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes.count(401) == 3 and codes.count(429) == 9  # only the limit's worth of passwords checked
    with _from("127.0.0.5") as nurse:  # the name is locked, from any address
        assert nurse.post(f"{live.base}/login", data={"name": "nurse-1", "password": PASSWORD}).status_code == 429
    with _from("127.0.0.6") as operator:  # a good login takes back its reservation: the address is not charged
        for _ in range(14):
            assert operator.post(f"{live.base}/login", content=f"token={TOKEN}", headers=FORM).status_code == 303


# one client may hold 2 of the 3 sessions (set here: the default is a quarter, which would be 1)
FLOOD = Settings(max_sessions=3, max_sessions_per_client=2, keep_finished=1, rate_per_s=1000.0, burst=1000)


@pytest.mark.parametrize("live", [FLOOD], indirect=True)
def test_one_client_cannot_hold_every_session_and_ended_ones_do_not_pile_up(
    trained: Trained, live: Live, fresh_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    chunk = flac_chunks(trained.night[: 10 * NIGHT_RATE], NIGHT_RATE, 10.0)[0]
    sessions = fresh_root / "monitor" / "sessions"
    with httpx.Client(timeout=30) as hog, _from("127.0.0.2") as other:
        mine = [_open(hog, live.base, f"bed-{i}") for i in range(2)]
        third = hog.post(f"{live.base}/v1/sessions", json={"bed_id": "bed-2"})
        assert third.status_code == 429 and "the most one client may hold (2 of 3)" in third.json()["detail"]
        _open(other, live.base, "bed-other")  # another client still gets a bed
        full = other.post(f"{live.base}/v1/sessions", json={"bed_id": "bed-more"})
        assert full.status_code == 503 and "at capacity" in full.json()["detail"]

        # sessions ended without audio leave nothing: not listed, not on disk, no run
        for sid, auth in mine:
            assert hog.delete(f"{live.base}/v1/sessions/{sid}", headers=auth).status_code == 200
        for i in range(15):
            sid, auth = _open(hog, live.base, f"churn-{i}")
            hog.delete(f"{live.base}/v1/sessions/{sid}", headers=auth)
        assert hog.get(f"{live.base}/v1/sessions/{mine[0][0]}", headers=mine[0][1]).status_code == 403
        assert len(hog.get(f"{live.base}/v1/beds").json()) == 1
        assert len(list(sessions.iterdir())) == 1 and not list((fresh_root / "runs").glob("monitor-*"))

        # finished nights: published, on disk, but only the newest (keep_finished=1) kept in memory
        for i in range(3):
            sid, auth = _open(hog, live.base, f"night-{i}")
            assert hog.post(f"{live.base}/v1/sessions/{sid}/chunks/0", content=chunk, headers=auth).is_success
            hog.delete(f"{live.base}/v1/sessions/{sid}", headers=auth)
            deadline = time.monotonic() + 30
            while hog.get(f"{live.base}/v1/sessions/{sid}", headers=auth).json()["state"] != "published":
                assert time.monotonic() < deadline
                time.sleep(0.1)
        beds = hog.get(f"{live.base}/v1/beds").json()
        assert sorted(b["bed_id"] for b in beds) == ["bed-other", "night-2"]
        assert len(list((fresh_root / "runs").glob("monitor-*"))) == 3
        assert hog.get(f"{live.base}/health").json()["sessions"] == 1
    opened = [r.getMessage() for r in caplog.records if " opened (" in r.getMessage()]
    assert opened and all(int(m.split("(")[1].split()[0]) <= 3 for m in opened)  # open sessions, not all ever


SPOOF = Settings(
    operator_token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
    max_sessions=8,
    max_sessions_per_client=2,
    login_failures=3,
    rate_per_s=1000.0,
    burst=1000,
)


def _open_as(client: httpx.Client, base: str, forwarded: str) -> httpx.Response:
    headers = {**OPERATOR, "X-Forwarded-For": forwarded}
    return client.post(f"{base}/v1/sessions", json={"bed_id": "bed-x"}, headers=headers)


def _guess_as(client: httpx.Client, base: str, forwarded: str, token: str = "a-guess") -> int:
    headers = {**FORM, "X-Forwarded-For": forwarded}
    return client.post(f"{base}/login", content=f"token={token}", headers=headers).status_code


@pytest.mark.parametrize("live", [SPOOF], indirect=True)
def test_a_local_process_cannot_pose_as_many_clients_with_x_forwarded_for(live: Live) -> None:
    """By default no proxy is trusted: every request from 127.0.0.1 is the one client 127.0.0.1,
    whatever X-Forwarded-For it sends (uvicorn's own default believed it from 127.0.0.1)."""
    with httpx.Client(timeout=30) as client:
        codes = [_open_as(client, live.base, f"10.0.0.{i}").status_code for i in range(1, 4)]
        assert codes == [201, 201, 429]  # one client: its 2 sessions, then refused
        refused = _open_as(client, live.base, "10.0.0.9")
        assert "the most one client may hold (2 of 8)" in refused.json()["detail"]
        guesses = [_guess_as(client, live.base, f"10.1.0.{i}") for i in range(1, 5)]
        assert guesses == [401, 401, 401, 429]  # login_failures=3 for the one address
    with _from("127.0.0.2") as other:  # another connection address is another client
        assert _open_as(other, live.base, "10.0.0.1").status_code == 201


@pytest.mark.parametrize("trusted_proxies", [("127.0.0.1",)])
@pytest.mark.parametrize("live", [SPOOF], indirect=True)
def test_behind_a_trusted_proxy_its_x_forwarded_for_names_the_client(live: Live) -> None:
    """``--trust-proxy 127.0.0.1``: the client a proxy there forwards for is the one limited."""
    with httpx.Client(timeout=30) as proxy:
        codes = [_open_as(proxy, live.base, "10.0.0.1").status_code for _ in range(3)]
        assert codes == [201, 201, 429]  # the forwarded client holds its 2 sessions
        assert _open_as(proxy, live.base, "10.0.0.2").status_code == 201  # another one behind the proxy
        guesses = [_guess_as(proxy, live.base, "10.1.0.1") for _ in range(4)]
        assert guesses == [401, 401, 401, 429]
        assert _guess_as(proxy, live.base, "10.1.0.2", TOKEN) == 303  # only the guesser is locked out
    with _from("127.0.0.2") as direct:  # not the trusted proxy: its header is not believed
        assert _open_as(direct, live.base, "10.0.0.3").status_code == 201
        assert _open_as(direct, live.base, "10.0.0.4").status_code == 201
        assert _open_as(direct, live.base, "10.0.0.5").status_code == 429


@pytest.mark.parametrize("live", [Settings(max_sessions=8, rate_per_s=1000.0, burst=1000)], indirect=True)
def test_by_default_one_client_holds_a_quarter_of_the_sessions(live: Live) -> None:
    """Without --max-sessions-per-client one address holds max_sessions // 4 (here 2 of 8), not all
    but one: the other addresses keep three quarters of the beds."""
    with httpx.Client(timeout=30) as hog:
        for i in range(2):
            _open(hog, live.base, f"bed-{i}")
        third = hog.post(f"{live.base}/v1/sessions", json={"bed_id": "bed-2"})
        assert third.status_code == 429 and "the most one client may hold (2 of 8)" in third.json()["detail"]
    for address in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        with _from(address) as other:
            _open(other, live.base, "bed-a")
            _open(other, live.base, "bed-b")
    assert httpx.get(f"{live.base}/health", timeout=10).json()["sessions"] == 8


def _until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What the server sent, and whether it closed the connection within ``seconds``."""
    sock.settimeout(seconds)
    got = b""
    try:
        while chunk := sock.recv(4096):
            got += chunk
        return got, True
    except TimeoutError:
        return got, False
    finally:
        sock.close()


@pytest.mark.parametrize("live", [FAST], indirect=True)
def test_a_request_refused_before_its_body_is_read_closes_its_connection(live: Live) -> None:
    """A chunk refused for its token (401) was answered but its connection stayed open for as long as
    the client dripped the promised body: no read timeout runs for a body nobody reads."""
    port = int(live.base.rsplit(":", 1)[1])
    for auth in ("", "Authorization: Bearer a-guess\r\n"):
        sock = _raw(
            port,
            f"POST /v1/sessions/x/chunks/0 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
            "Content-Length: 1000000\r\n\r\nRIFF".encode(),
        )
        answer, closed = _until_closed(sock, 5.0)
        assert answer.split(b" ")[1] in (b"401", b"403", b"404") and closed, answer[:200]


@pytest.mark.parametrize("live", [FAST], indirect=True)
def test_a_session_has_one_stream_the_newest_and_refused_handshakes_say_why(trained: Trained, live: Live) -> None:
    """A thousand WebSockets on one session from one address filled uvicorn's connection limit (they
    were not counted per client), so /health answered 503. Now a new stream replaces the session's
    old one; a refused handshake is the HTTP status a POST gets, not a bare 403."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus
    from websockets.sync.client import connect

    chunk = flac_chunks(trained.night[: 10 * NIGHT_RATE], NIGHT_RATE, 10.0)[0]
    with httpx.Client(timeout=30) as client:
        sid, auth = _open(client, live.base)
        url = f"{live.base.replace('http://', 'ws://')}/v1/sessions/{sid}/stream"
        for headers, status in (({}, 401), ({"Authorization": "Bearer a-guess"}, 403)):
            with pytest.raises(InvalidStatus) as refused:
                connect(url, additional_headers=headers, open_timeout=10)
            assert refused.value.response.status_code == status
            assert b"detail" in refused.value.response.body
        sockets = [connect(url, additional_headers=auth, max_size=None, open_timeout=10) for _ in range(5)]
        newest = sockets[-1]
        for old in sockets[:-1]:
            with pytest.raises(ConnectionClosed) as ended:
                old.recv(timeout=10)
            assert ended.value.rcvd is not None and ended.value.rcvd.code == 1008
        newest.send((0).to_bytes(8, "little", signed=True) + chunk)
        assert json.loads(newest.recv(timeout=30))["next_seq"] == 1
        newest.close()
        assert client.get(f"{live.base}/health").status_code == 200


@pytest.mark.parametrize(
    "live", [Settings(rate_per_s=1000.0, burst=1000, max_clips_per_client=1, read_timeout_s=20.0)], indirect=True
)
def test_one_client_cannot_hold_every_place_in_the_clip_queue(live: Live) -> None:
    """Forty clips in flight from one client kept every other client's at 503 and a live bed's epochs
    late. A client's place is taken before its clip is read: one upload still arriving is its one."""
    port = int(live.base.rsplit(":", 1)[1])
    clip = _wav(12.0, 16_000)
    arriving = _raw(
        port,
        f"POST /analyze-breathing HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(clip)}\r\n\r\n".encode()
        + clip[:1000],
    )
    try:
        time.sleep(0.5)
        with httpx.Client(timeout=60) as same:
            second = same.post(f"{live.base}/analyze-breathing", content=clip)
        assert second.status_code == 429 and "already has 1 clip" in second.json()["detail"]
        with _from("127.0.0.2", timeout=60) as other:
            assert other.post(f"{live.base}/analyze-breathing", content=clip).status_code == 200
        arriving.sendall(clip[1000:])  # the first upload completes, is answered, and gives its place back
        arriving.settimeout(60)
        assert arriving.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        arriving.close()
    with httpx.Client(timeout=60) as same:
        assert same.post(f"{live.base}/analyze-breathing", content=clip).status_code == 200
