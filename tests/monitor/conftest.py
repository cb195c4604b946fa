"""A storage root with champion heads trained on a tiny synthetic cohort, a night to stream, and
that night scored by the batch path (the score flow's steps in one process, as
tests/report/test_model_files.py runs them); plus a live monitor server on loopback, configured
as ``monitor serve`` runs it (``limits.server_config``: no proxy header believed unless a test
names its proxy in ``trusted_proxies``)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import uvicorn

from sleepsound.core.config import Config
from sleepsound.core.ports import free_port
from sleepsound.embed.cohort import embed_cohort
from sleepsound.ingest.manifest import build_manifest, read_manifest, read_manifest_rows, write_manifest
from sleepsound.predict.recordings import predict_recordings
from sleepsound.registry.promotion import decide_promotions
from sleepsound.registry.serving import serving_with_unseen
from sleepsound.report.outputs import read_predictions
from sleepsound.synth.writers import generate_cohort
from sleepsound.train.fit import train_models

NIGHT_RATE = 22_050  # the streamed night's rate: every chunk is resampled to 16 kHz on the way in


def monitor_config(tiny_whisper: str) -> Config:
    return Config.model_validate(
        {
            "backbone": {"name": tiny_whisper, "batch_size": 4},
            "training": {"lr": 3e-3, "min_lr": 1e-4, "epochs": 3, "batch_size": 16},
        }
    )


def config_overrides(tiny_whisper: str) -> list[str]:
    """The same settings as ``--set`` options, for a server in a subprocess."""
    return [
        f"backbone.name={tiny_whisper}",
        "backbone.batch_size=4",
        "training.lr=0.003",
        "training.min_lr=0.0001",
        "training.epochs=3",
        "training.batch_size=16",
    ]


def _ingest_and_embed(source: Path, root: str, cfg: Config, shifted: bool) -> None:
    write_manifest(root, build_manifest(str(source), cfg.preprocess, cfg.validation))
    accepted = [r for r in read_manifest_rows(root) if r["status"] == "accepted"]
    assert not embed_cohort(accepted, root, cfg, use_ray=False, shifted=shifted).failed


@dataclass
class Trained:
    root: Path  # champions only (a fresh copy per test: see ``fresh_root``)
    cfg: Config
    tiny_whisper: str
    night: np.ndarray  # the streamed night's samples (float32, exactly what its FLAC decodes to)
    batch: pd.DataFrame  # that night's batch predictions, by epoch
    batch_events: pd.DataFrame  # that night's batch event table (breathing events)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_whisper: str) -> Trained:
    tmp = tmp_path_factory.mktemp("monitor")
    cfg = monitor_config(tiny_whisper)
    root = tmp / "root"
    cohort = tmp / "cohort"
    generate_cohort(cohort, n_subjects=4, hours=0.1, seed=21, sample_rate=16_000, part_seconds=360, cycle_minutes=6)
    _ingest_and_embed(cohort, str(root), cfg, shifted=True)
    model = train_models(str(root), cfg, "t1", read_manifest(str(root)))
    decide_promotions(str(root), model, read_manifest_rows(str(root)))
    champions = tmp / "champions"
    shutil.copytree(root / "models", champions / "models")
    shutil.copytree(root / "manifest", champions / "manifest")

    night_dir = tmp / "night"
    generate_cohort(
        night_dir, n_subjects=1, hours=0.1, seed=77, sample_rate=NIGHT_RATE, layout="plain", cycle_minutes=6, ahi=45.0
    )  # breathing events in 6 minutes, for the event table
    # batch `score` of that night: ingest -> embed -> champions -> predict
    _ingest_and_embed(night_dir, str(root), cfg, shifted=False)
    predict_recordings(str(root), cfg, "batch", serving_with_unseen(str(root)), read_manifest(str(root)))
    batch = read_predictions(str(root), "batch").sort_values("epoch_index").reset_index(drop=True)
    (events,) = (root / "runs" / "batch" / "events").glob("recording_id=*/part-0.parquet")
    flac = next(night_dir.rglob("*.flac"))
    night, rate = sf.read(flac, dtype="float32")
    assert rate == NIGHT_RATE
    night = night if night.ndim == 1 else night[:, 0]
    return Trained(champions, cfg, tiny_whisper, night, batch, pd.read_parquet(events))


@pytest.fixture
def fresh_root(trained: Trained, tmp_path: Path) -> Path:
    """A root holding the champions (and the training manifest), nothing of any monitor."""
    root = tmp_path / "root"
    shutil.copytree(trained.root, root)
    return root


@dataclass
class Live:
    base: str
    server: uvicorn.Server
    app: object


def start_server(
    app: object, port: int, trusted_proxies: tuple[str, ...] = ()
) -> tuple[uvicorn.Server, threading.Thread]:
    """``app`` served on loopback as the services serve (``limits.server_config``), in a thread."""
    from sleepsound.monitor.limits import quiet_disconnect_tracebacks, server_config

    quiet_disconnect_tracebacks()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, log_level="info", trusted_proxies=trusted_proxies))
    return server, run_in_thread(server)


def run_in_thread(server: uvicorn.Server) -> threading.Thread:
    """Run ``server`` in a daemon thread and return once it listens (30 s at most)."""
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    return thread


@pytest.fixture
def trusted_proxies() -> tuple[str, ...]:
    """The proxies whose X-Forwarded-For the ``live`` server believes: none, as ``monitor serve`` by
    default; a test trusts one with ``@pytest.mark.parametrize("trusted_proxies", [("127.0.0.1",)])``."""
    return ()


@pytest.fixture
def live(
    trained: Trained, fresh_root: Path, trusted_proxies: tuple[str, ...], request: pytest.FixtureRequest
) -> Iterator[Live]:
    """A monitor server in this process on a free loopback port (settings from ``@pytest.mark.parametrize``
    of ``settings`` when a test gives them)."""
    from sleepsound.monitor.app import Settings, create_app

    # replayed as fast as the server takes it: far above a real device's one request per chunk
    settings = getattr(request, "param", None) or Settings(rate_per_s=1000.0, burst=1000)
    app = create_app(str(fresh_root), trained.cfg, settings)
    port = free_port()
    server, thread = start_server(app, port, trusted_proxies)
    try:
        yield Live(f"http://127.0.0.1:{port}", server, app)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def flac_chunks(night: np.ndarray, rate: int, seconds: float) -> list[bytes]:
    """The night cut into chunks of ``seconds`` (the last shorter), each a FLAC file of its own."""
    import io

    step = int(seconds * rate)
    out = []
    for start in range(0, len(night), step):
        buffer = io.BytesIO()
        sf.write(buffer, night[start : start + step], rate, format="FLAC", subtype="PCM_16")
        out.append(buffer.getvalue())
    return out
