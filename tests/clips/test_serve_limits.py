"""`clips score` and `clips serve` refuse what the prober got through: decode bombs (rate x channels),
WAVs cut short or lying about their length (scored as if whole), one client holding every place
in the service's queue, and one local process posing as many clients with X-Forwarded-For. Through
the CLI and a live server run as `clips serve` runs it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import typer
import uvicorn
from typer.testing import CliRunner

from sleepsound.clips.cli import clips_app
from sleepsound.core.ports import free_port
from sleepsound.monitor.limits import server_config
from tests.clips.test_clips import make_dataset
from tests.monitor.conftest import run_in_thread


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory, tiny_whisper: str) -> Path:
    """A small clip model trained through the CLI (as few clips and epochs as `clips train` accepts)."""
    tmp = tmp_path_factory.mktemp("clips-limits")
    data = make_dataset(tmp / "data", per_label=8)
    args = ["clips", "train", "--data", str(data), "--out", str(tmp / "model"), "--backbone", tiny_whisper]
    args += ["--block-size", "2", "--test-fraction", "0.25", "--folds", "2", "--max-epochs", "2", "--no-refit"]
    args += ["--hard-negatives", "none"]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 0, result.output
    return tmp / "model"


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(clips_app, name="clips")
    return app


def _write(path: Path, seconds: float, rate: int, channels: int = 1, fmt: str = "WAV") -> Path:
    samples = np.zeros((int(seconds * rate), channels), dtype=np.float32)  # near-silence: FLAC packs it small
    samples[::500] = 0.2
    sf.write(path, samples, rate, format=fmt, subtype="PCM_16")
    return path


def _hostile(folder: Path) -> dict[str, Path]:
    """A decode bomb, an ultrasonic rate, a WAV cut in half, a WAV declaring 18 h, and a good clip."""
    folder.mkdir(exist_ok=True)
    cut = _write(folder / "cut.wav", 6.0, 16_000)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    lying = _write(folder / "lying.wav", 2.0, 16_000)
    raw = bytearray(lying.read_bytes())
    raw[40:44] = (0x7FFFFFF0).to_bytes(4, "little")  # the data chunk's size
    lying.write_bytes(bytes(raw))
    return {
        "bomb": _write(folder / "bomb.flac", 3.0, 192_000, channels=8, fmt="FLAC"),
        "ultra": _write(folder / "ultra.flac", 0.5, 500_000, fmt="FLAC"),
        "cut": cut,
        "lying": lying,
        "good": _write(folder / "good.wav", 2.0, 16_000),
    }


def test_clips_score_names_each_refused_file_and_scores_the_rest(model: Path, tmp_path: Path) -> None:
    files = _hostile(tmp_path)
    args = ["clips", "score", "--model", str(model), "--max-seconds", "5", "--json", *map(str, files.values())]
    result = CliRunner().invoke(_cli(), args)
    assert result.exit_code == 1, result.output
    out = {row["file"]: row for row in json.loads(result.stdout)} if result.stdout.startswith("[") else None
    text = result.output if out is None else json.dumps(out)
    bomb = str(files["bomb"])
    assert f"{bomb}: 3.0 s at 192000 Hz x 8 channels is 4608000 samples to decode, over the 480000 allowed" in text
    assert f"{files['ultra']}: sample rate 500000 Hz is above the 384000 Hz accepted" in text
    assert f"{files['cut']}: truncated: the header declares 0:00:06 of audio" in text
    assert f"{files['lying']}: truncated: the header declares 18:38:" in text
    assert "bytes missing" in text
    assert text.count("error") >= 4 and "good.wav" in text


def _serve(model: Path, trusted_proxies: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    from sleepsound.clips.serve import create_app

    port = free_port()
    app = create_app(model, max_seconds=5.0, max_mb=4.0, read_timeout_s=30.0, max_per_client=2)
    config = server_config(app, "127.0.0.1", port, log_level="warning", trusted_proxies=trusted_proxies)
    server = uvicorn.Server(config)
    thread = run_in_thread(server)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def service(model: Path) -> Iterator[tuple[str, Any]]:
    """The service as `clips serve` runs it by default: no proxy's X-Forwarded-For believed."""
    yield from _serve(model, ())


@pytest.fixture(scope="module")
def proxied(model: Path) -> Iterator[tuple[str, Any]]:
    """The service as `clips serve --trust-proxy 127.0.0.1` runs it, behind a proxy on loopback."""
    yield from _serve(model, ("127.0.0.1",))


def test_the_service_refuses_bombs_and_cut_wavs_by_name(service: tuple[str, Any], tmp_path: Path) -> None:
    base = service[0]
    files = _hostile(tmp_path)
    expected = {
        "bomb": (413, "bomb.flac: 3.0 s at 192000 Hz x 8 channels is 4608000 samples to decode"),
        "ultra": (422, "ultra.flac: sample rate 500000 Hz is above the 384000 Hz"),
        "cut": (400, "cut.wav: truncated: the header declares 0:00:06 of audio"),
        "lying": (400, "lying.wav: truncated: the header declares 18:38:"),
    }
    with httpx.Client(timeout=60) as client:
        for key, (status, start) in expected.items():
            reply = client.post(f"{base}/score?name={files[key].name}", content=files[key].read_bytes())
            assert reply.status_code == status and reply.json()["detail"].startswith(start), reply.text
        reply = client.post(f"{base}/score?name=good.wav", content=files["good"].read_bytes())
        assert reply.status_code == 200 and reply.json()["seconds"] == 2.0


def test_one_client_cannot_hold_every_place_in_the_queue(proxied: tuple[str, Any], tmp_path: Path) -> None:
    base, app = proxied
    good = _write(tmp_path / "good.wav", 2.0, 16_000).read_bytes()
    release = threading.Event()
    app.state.worker.put(release.wait)  # the scoring thread busy: requests wait in the queue (8 places)
    codes: dict[str, list[int]] = {"10.0.0.1": [], "10.0.0.2": []}

    def post(client: str) -> None:
        with httpx.Client(timeout=60) as c:
            reply = c.post(f"{base}/score?name=x.wav", content=good, headers={"X-Forwarded-For": client})
            codes[client].append(reply.status_code)

    hog = [threading.Thread(target=post, args=("10.0.0.1",)) for _ in range(2)]  # behind a loopback proxy
    other = threading.Thread(target=post, args=("10.0.0.2",))
    for t in hog:
        t.start()
    time.sleep(0.5)
    try:
        with httpx.Client(timeout=60) as client:
            third = client.post(f"{base}/score?name=more.wav", content=good, headers={"X-Forwarded-For": "10.0.0.1"})
            assert third.status_code == 429, third.text
            assert "more.wav: this client already has 2 requests queued or running" in third.json()["detail"]
            assert int(third.headers["Retry-After"]) > 0
            other.start()  # another client still gets a place
            time.sleep(0.3)
            assert client.get(f"{base}/health").json()["queued"] == 3
    finally:
        release.set()
    for t in [*hog, other]:
        t.join()
    assert codes == {"10.0.0.1": [200, 200], "10.0.0.2": [200]}
    again = httpx.post(f"{base}/score?name=later.wav", content=good, headers={"X-Forwarded-For": "10.0.0.1"})
    assert again.status_code == 200, again.text  # its places were given back


def test_x_forwarded_for_does_not_make_a_local_process_many_clients(service: tuple[str, Any], tmp_path: Path) -> None:
    """By default every request from 127.0.0.1 is the one client 127.0.0.1, whatever X-Forwarded-For
    says (uvicorn's own default believed it), so its third request is refused, not queued."""
    base, app = service
    good = _write(tmp_path / "good.wav", 2.0, 16_000).read_bytes()
    release = threading.Event()
    app.state.worker.put(release.wait)  # the scoring thread busy: requests wait in the queue
    codes: list[int] = []

    def post(forwarded: str) -> None:
        with httpx.Client(timeout=60) as c:
            reply = c.post(f"{base}/score?name=x.wav", content=good, headers={"X-Forwarded-For": forwarded})
            codes.append(reply.status_code)

    posing = [threading.Thread(target=post, args=(f"10.0.0.{i}",)) for i in (1, 2)]
    for t in posing:
        t.start()
    time.sleep(0.5)
    try:
        third = httpx.post(
            f"{base}/score?name=more.wav", content=good, headers={"X-Forwarded-For": "10.0.0.3"}, timeout=10
        )  # a 429 comes at once; queued (the forwarded address believed), it would wait for the release
        assert third.status_code == 429, third.text
        assert "this client already has 2 requests queued or running" in third.json()["detail"]
    finally:
        release.set()
    for t in posing:
        t.join()
    assert codes == [200, 200]
