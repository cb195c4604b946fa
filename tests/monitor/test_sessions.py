"""A night streamed in chunks to a live monitor server scores as batch `score` scores the same file.

Real parts only: the project's synthetic night (8 kHz FLAC), heads trained by the train flow's
steps on a tiny synthetic cohort with the tiny random Whisper, a uvicorn server on loopback, an
httpx client over real HTTP, a server subprocess killed with SIGKILL mid-night.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from sleepsound.monitor.app import Settings
from sleepsound.monitor.stream import MISSING
from tests.monitor.conftest import NIGHT_RATE, Live, Trained, config_overrides, flac_chunks, free_port

CHUNK_S = 7.0  # not a divisor of 30: epochs complete in the middle of chunks
PREDICTED = ["stage_pred", "resp_pred"]
PROBS = ["prob_wake", "prob_nrem", "prob_rem", "prob_snore", "prob_apnea_hypopnea"]


def _open(client: httpx.Client, base: str, bed: str = "bed-7") -> tuple[str, dict[str, str]]:
    reply = client.post(f"{base}/v1/sessions", json={"bed_id": bed})
    assert reply.status_code == 201, reply.text
    body = reply.json()
    return body["session_id"], {"Authorization": f"Bearer {body['token']}"}


def _wait_published(client: httpx.Client, base: str, sid: str, auth: dict[str, str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"{base}/v1/sessions/{sid}", headers=auth).json()
        if status["state"] == "published":
            return status
        time.sleep(0.2)
    raise AssertionError(f"session not published: {status}")


def _same_as_batch(streamed: list[dict], batch: pd.DataFrame) -> None:
    got = pd.DataFrame(streamed).sort_values("epoch_index").reset_index(drop=True)
    assert batch["stage_pred"].notna().sum() >= 10 and batch["prob_snore"].notna().sum() >= 10  # not vacuous
    assert got["epoch_index"].tolist() == batch["epoch_index"].tolist()
    assert got["start_s"].tolist() == batch["start_s"].tolist()
    for column in PREDICTED:
        assert got[column].tolist() == batch[column].tolist(), column
    for column in PROBS:
        if column in batch and batch[column].notna().any():
            assert got[column].to_numpy(float) == pytest.approx(batch[column].to_numpy(float), abs=2e-3), column
    # per-second snoring: the champion snore head on the same frames, every frame as batch scores it
    assert batch["snore_s_pred"].notna().sum() >= 10
    assert got["snore_frames"].notna().tolist() == batch["snore_frames"].notna().tolist()
    live = np.concatenate([np.asarray(v, float) for v in got["snore_frames"].dropna()])
    done = np.concatenate([np.asarray(v, float) for v in batch["snore_frames"].dropna()])
    assert live == pytest.approx(done, abs=2e-3)
    at_cut = np.abs(done - 0.5) < 2e-3  # a frame this close to the cut may be called either way
    assert ((live > 0.5) == (done > 0.5))[~at_cut].all()
    seconds = got["snore_s_pred"].to_numpy(float)
    assert seconds[got["snore_s_pred"].notna()] == pytest.approx(
        batch["snore_s_pred"].dropna().to_numpy(float), abs=0.5 * at_cut.sum() + 1e-6
    )


def test_a_night_streamed_in_chunks_scores_as_batch_score_and_lands_as_a_run(trained: Trained, live: Live) -> None:
    chunks = flac_chunks(trained.night, NIGHT_RATE, CHUNK_S)
    # out of order within the window, and two chunks sent twice
    order = list(range(len(chunks)))
    order[3], order[5] = order[5], order[3]
    order[10:14] = [13, 11, 12, 10]
    sends = [*order[:8], 2, *order[8:], 20]
    with httpx.Client(timeout=60) as client:
        sid, auth = _open(client, live.base)
        replies = []
        for seq in sends:
            reply = client.post(f"{live.base}/v1/sessions/{sid}/chunks/{seq}", content=chunks[seq], headers=auth)
            assert reply.status_code == 200, reply.text
            replies.append(reply.json())
        duplicates = [r["seq"] for r in replies if r["duplicate"]]
        assert duplicates == [2, 20]
        assert all(not r["missing"] for r in replies)
        assert client.get(f"{live.base}/health").json()["status"] == "ok"
        # epochs are scored as the night goes, before the session ends
        deadline = time.monotonic() + 60
        while client.get(f"{live.base}/v1/sessions/{sid}", headers=auth).json()["epochs_scored"] < 10:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        ended = client.delete(f"{live.base}/v1/sessions/{sid}", headers=auth)
        assert ended.status_code == 200 and ended.json()["state"] in ("ending", "ended", "published")
        status = _wait_published(client, live.base, sid, auth)
        streamed = client.get(f"{live.base}/v1/sessions/{sid}/epochs", headers=auth).json()
    _same_as_batch(streamed, trained.batch)
    root = Path(live.app.state.monitor.root)  # type: ignore[attr-defined]
    run = root / "runs" / status["run_id"]
    published = pd.read_parquet(run / "predictions" / f"recording_id={sid}" / "part-0.parquet")
    assert published["epoch_index"].tolist() == trained.batch["epoch_index"].tolist()
    # where breathing was heard, epoch by epoch as batch `score` finds it
    assert published["breath_heard_s"].notna().all() and published["breath_heard_s"].sum() > 0
    np.testing.assert_allclose(published["breath_heard_s"], trained.batch["breath_heard_s"], atol=0.5)
    assert (run / "summaries" / "summaries.parquet").exists() and (run / "report" / "index.html").exists()
    summaries = pd.read_parquet(run / "summaries" / "summaries.parquet")
    assert summaries.loc[summaries["source"] == "predicted", "snore_source"].tolist() == ["per-second snoring head"]
    events = pd.read_parquet(run / "events" / f"recording_id={sid}" / "part-0.parquet")  # as `score` finds them
    assert len(trained.batch_events) >= 2 and events["type"].tolist() == trained.batch_events["type"].tolist()
    np.testing.assert_allclose(events[["start_s", "end_s"]], trained.batch_events[["start_s", "end_s"]], atol=0.2)
    record = json.loads((run / "run.json").read_text())
    assert record["flow"] == "monitor" and record["counts"]["epochs"] == len(trained.batch)
    assert record["models"]["stage3"] == trained.batch["model_version"].iloc[0]
    assert not (root / "monitor" / "sessions" / sid / "spool").exists()  # no audio kept after the night
    assert not (root / "state" / "lock.json").exists()  # the root's lock was held only to publish


def test_a_gap_beyond_the_window_is_missing_audio_not_closed_up(trained: Trained, live: Live) -> None:
    chunks = flac_chunks(trained.night[: 150 * NIGHT_RATE], NIGHT_RATE, 10.0)  # 15 chunks, 5 epochs
    with httpx.Client(timeout=60) as client:
        sid, auth = _open(client, live.base)
        sent = [i for i in range(len(chunks)) if i not in (4, 5)]  # chunks 4 and 5 (40-60 s) never arrive
        replies = [
            client.post(f"{live.base}/v1/sessions/{sid}/chunks/{i}", content=chunks[i], headers=auth).json()
            for i in sent
        ]
        assert [seq for r in replies for seq in r["missing"]] == [4, 5]
        # what a publication of this night killed part-way would have left: written again whole, without it
        runs = Path(live.app.state.monitor.root) / "runs" / f"monitor-{sid}"  # type: ignore[attr-defined]
        leftover = runs / "predictions" / f"recording_id={sid}" / ".part-0.parquet.tmp-5a1e"
        leftover.parent.mkdir(parents=True)
        leftover.write_bytes(b"half a parquet file")
        client.delete(f"{live.base}/v1/sessions/{sid}", headers=auth)
        status = _wait_published(client, live.base, sid, auth)
        rows = client.get(f"{live.base}/v1/sessions/{sid}/epochs", headers=auth).json()
    assert not leftover.exists() and (runs / "run.json").exists()
    record = json.loads((runs / "run.json").read_text())
    assert record["counts"]["missing_seconds"] == 20.0  # the whole night's gap, long scored past by the end
    assert status["run_id"] == f"monitor-{sid}"
    assert [r["epoch_index"] for r in rows] == [0, 1, 2, 3, 4]  # epoch 2 still starts at 60 s
    assert rows[1]["stage_pred"] is None  # 30-60 s held the missing audio: not scored
    assert rows[0]["stage_pred"] is not None and rows[2]["stage_pred"] is not None
    epochs_file = Path(live.app.state.monitor.dir) / sid / "epochs.jsonl"  # type: ignore[attr-defined]
    assert epochs_file.exists()
    session = json.loads((epochs_file.parent / "session.json").read_text())
    assert session["stream"]["missing"] == [] or all(b - a == 10 * NIGHT_RATE for a, b in session["stream"]["missing"])
    assert MISSING == "missing_audio"


def _spawn(root: Path, port: int, trained: Trained, log: Path, *options: str) -> subprocess.Popen:
    sets = [arg for item in config_overrides(trained.tiny_whisper) for arg in ("--set", item)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.Popen(
        [sys.executable, "-m", "sleepsound.cli", "monitor", "serve", "--root", str(root), "--port", str(port)]
        + ["--rate", "1000", *options, *sets],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env=env,
    )


def _wait_up(base: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"server did not come up: {log.read_text()}")


def test_a_server_killed_mid_night_resumes_the_session_and_loses_nothing(
    trained: Trained, fresh_root: Path, tmp_path: Path
) -> None:
    chunks = flac_chunks(trained.night, NIGHT_RATE, CHUNK_S)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    one_each = ("--max-sessions-per-client", "1")
    first = _spawn(fresh_root, port, trained, log, *one_each)
    try:
        _wait_up(base, first, log)
        with httpx.Client(timeout=60) as client:
            sid, auth = _open(client, base)
            half = len(chunks) // 2
            for seq in [*range(half - 2), half - 1]:  # chunk half-2 still missing: half-1 waits in the window
                reply = client.post(f"{base}/v1/sessions/{sid}/chunks/{seq}", content=chunks[seq], headers=auth)
                assert reply.is_success, reply.text
            deadline = time.monotonic() + 60
            while client.get(f"{base}/v1/sessions/{sid}", headers=auth).json()["epochs_scored"] < 3:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            first.kill()
    second = _spawn(fresh_root, port, trained, log, *one_each)
    try:
        _wait_up(base, second, log)
        with httpx.Client(timeout=60) as client:
            status = client.get(f"{base}/v1/sessions/{sid}", headers=auth).json()
            assert status["state"] == "open" and status["waiting_chunks"] == [half - 1]
            # the resumed session still counts for the address that opened it (a restart freed its place)
            assert client.post(f"{base}/v1/sessions", json={"bed_id": "bed-8"}).status_code == 429
            for seq in range(half - 2, len(chunks)):  # half-1 again: taken once
                reply = client.post(f"{base}/v1/sessions/{sid}/chunks/{seq}", content=chunks[seq], headers=auth)
                assert reply.status_code == 200 and reply.json()["duplicate"] == (seq == half - 1), reply.text
            client.delete(f"{base}/v1/sessions/{sid}", headers=auth)
            _wait_published(client, base, sid, auth)
            streamed = client.get(f"{base}/v1/sessions/{sid}/epochs", headers=auth).json()
        # SIGTERM while a client is stuck half-way through an upload (the read timeout is 30 s):
        # the graceful shutdown gives it 5 s, then the server exits
        import socket

        stuck = socket.create_connection(("127.0.0.1", port), timeout=10)
        stuck.sendall(
            f"POST /v1/sessions/{sid}/chunks/999 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: {auth['Authorization']}\r\nContent-Length: 100000\r\n\r\nRIFF".encode()
        )
        time.sleep(0.3)
        started = time.monotonic()
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) is not None
        assert time.monotonic() - started < 12
        stuck.close()
    finally:
        if second.poll() is None:
            second.kill()
    _same_as_batch(streamed, trained.batch)
    text = log.read_text()
    assert "resumed 1 session(s)" in text and "Traceback" not in text
    assert "bed-7" not in text and auth["Authorization"][7:] not in text
    assert np.isfinite(pd.DataFrame(streamed)["prob_wake"].to_numpy(float)).all()


KEPT = Path(os.environ["SLEEPSOUND_CACHE"]).parent / "kept-nights"  # this test process's own folder (conftest)
KEEP = Settings(rate_per_s=1000.0, burst=1000, keep_audio=str(KEPT))


@pytest.mark.parametrize("live", [KEEP], indirect=True)
def test_a_night_kept_by_the_operator_lands_as_a_plain_recording_the_batch_side_reads(
    trained: Trained, live: Live, tmp_path: Path
) -> None:
    """Off by default (no audio kept: the other tests check the spool is gone); with --keep-audio the
    night, missing chunks as silence, is a FLAC the batch side validates like any night."""
    night = trained.night[: 150 * NIGHT_RATE]
    chunks = flac_chunks(night, NIGHT_RATE, 10.0)
    with httpx.Client(timeout=60) as client:
        sid, auth = _open(client, live.base)
        for i in [i for i in range(len(chunks)) if i != 4]:  # chunk 4 (40-50 s) never arrives
            client.post(f"{live.base}/v1/sessions/{sid}/chunks/{i}", content=chunks[i], headers=auth)
        client.delete(f"{live.base}/v1/sessions/{sid}", headers=auth)
        _wait_published(client, live.base, sid, auth)
    source = tmp_path / "kept"
    source.mkdir()
    os.replace(KEPT / f"{sid}.flac", source / f"{sid}.flac")
    kept, rate = sf.read(source / f"{sid}.flac", dtype="float32")
    assert rate == NIGHT_RATE and len(kept) == len(night)
    decoded = np.concatenate([sf.read(io.BytesIO(c), dtype="float32")[0] for c in chunks])
    gap = slice(40 * NIGHT_RATE, 50 * NIGHT_RATE)
    assert not kept[gap].any()
    np.testing.assert_array_equal(np.delete(kept, np.r_[gap]), np.delete(decoded, np.r_[gap]))
    from sleepsound.core.config import PreprocessConfig
    from sleepsound.ingest.manifest import build_manifest

    [row] = build_manifest(str(source), PreprocessConfig())
    assert row["status"] == "accepted" and row["recording_id"] == sid and row["n_epochs"] == 5


def test_a_night_streamed_over_one_websocket_scores_as_batch_score(trained: Trained, live: Live) -> None:
    """The same chunks over one WebSocket (8-byte sequence number + audio per message): duplicates and
    malformed messages answered without closing it, a wrong token refused at the door, and the same
    predictions as batch `score`."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    chunks = flac_chunks(trained.night, NIGHT_RATE, CHUNK_S)
    ws_base = live.base.replace("http://", "ws://")
    with httpx.Client(timeout=60) as client:
        sid, auth = _open(client, live.base)
        other, _ = _open(client, live.base, bed="bed-8")
        # a token opens only its own session, on a socket as on a POST: refused before the handshake ends
        with pytest.raises(InvalidStatus) as refused:
            connect(f"{ws_base}/v1/sessions/{other}/stream", additional_headers=auth)
        assert refused.value.response.status_code == 403
        with connect(f"{ws_base}/v1/sessions/{sid}/stream", additional_headers=auth, max_size=None) as ws:
            ws.send(b"\x01\x02")  # too short to hold a sequence number
            assert json.loads(ws.recv(timeout=30))["status"] == 400
            replies = []
            for seq in [*range(len(chunks)), 3]:  # chunk 3 twice
                ws.send(seq.to_bytes(8, "little", signed=True) + chunks[seq])
                replies.append(json.loads(ws.recv(timeout=60)))
            assert [r["seq"] for r in replies if r["duplicate"]] == [3]
            bad = ws.send((len(chunks)).to_bytes(8, "little") + b"not audio") or json.loads(ws.recv(timeout=30))
            assert bad["status"] == 400 and "unreadable audio" in bad["detail"]
        client.delete(f"{live.base}/v1/sessions/{sid}", headers=auth)
        _wait_published(client, live.base, sid, auth)
        streamed = client.get(f"{live.base}/v1/sessions/{sid}/epochs", headers=auth).json()
    _same_as_batch(streamed, trained.batch)
