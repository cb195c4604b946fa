"""``sleepsound bench monitor``: how many beds one monitor server holds in real time, and how fast alerts come.

It replays synthetic nights (the project's generator, one per bed) against a real ``monitor serve``
subprocess on loopback, each bed a thread sending its night in chunks paced at ``speed`` times
real time (a chunk is sent when its audio would have ended), and follows the alert stream. For
``beds`` = 1, 2, 4, ... up to the number asked it reports:

- held: every bed kept up: each chunk acknowledged before the next one was due, and scoring
  never more than ``max_lag_epochs`` epochs behind the audio sent (polled every second);
- alert latency: from the moment the audio that shows an alert's event had been sent (the end
  of the chunk holding the alert's ``end_s``) to the alert arriving on ``/v1/alerts/stream``,
  per rule, with how many whole chunks each alert waited after that one (a breathing pause is
  alerted once its recovery breath is heard: when that falls in the next chunk, the alert waits
  one chunk length, so the pause rule's p95 follows the chunk size: ``--chunk-seconds`` is
  repeatable, one run per size);
- memory per bed: the server's peak resident memory during the run above its idle level, per bed;
- dropped chunks: chunks not acknowledged with a 200 (after three tries).

The most beds held is the largest run in which every bed kept up. Figures depend on the
backbone (``--set backbone.name=...``) and the machine; the server runs with the root's champions.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sleepsound.core.ports import free_port

READY_S = 180.0
NIGHT_RATE = 16_000  # the replayed nights' sample rate: what a bedside recorder sends after its own resampling


def _rss_kb(pid: int) -> int:
    """Resident memory of ``pid`` in KiB (Linux), 0 when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _nights(beds: int, minutes: float, sample_rate: int, seed: int, workdir: Path) -> list[np.ndarray]:
    """One synthetic night per bed (plain FLAC), decoded."""
    import soundfile as sf

    from sleepsound.synth.writers import generate_cohort

    folder = workdir / f"nights-{beds}-{minutes:g}min-{sample_rate}hz-seed{seed}"
    if not (folder / "cohort.json").is_file():
        generate_cohort(
            folder,
            n_subjects=beds,
            hours=minutes / 60,
            seed=seed,
            sample_rate=sample_rate,
            layout="plain",
            cycle_minutes=max(1.0, min(90.0, minutes)),
        )
    out = []
    for path in sorted(folder.rglob("*.flac"))[:beds]:
        audio, _ = sf.read(path, dtype="float32", always_2d=True)
        out.append(audio[:, 0])
    return out


def _flac(audio: np.ndarray, rate: int) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format="FLAC")
    return buffer.getvalue()


def _run(
    root: Path,
    nights: list[np.ndarray],
    rate: int,
    speed: float,
    chunk_s: float,
    overrides: list[str],
    max_lag_epochs: int,
    log: Path,
) -> dict[str, Any]:
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sets = [arg for item in overrides for arg in ("--set", item)]
    cmd = [
        sys.executable,
        "-m",
        "sleepsound.cli",
        "monitor",
        "serve",
        "--root",
        str(root),
        "--port",
        str(port),
        "--rate",
        "1000",
        "--max-sessions",
        str(len(nights) + 1),
        "--max-sessions-per-client",  # every bed is replayed from this one address
        str(len(nights)),
        *sets,
    ]
    server = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"the monitor server exited ({server.returncode}); its log: {log}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the monitor server did not start within {READY_S:g} s; its log: {log}")
            time.sleep(0.3)
        idle_kb = _rss_kb(server.pid)
        alerts: list[tuple[float, dict[str, Any]]] = []
        stop = threading.Event()

        def follow() -> None:
            try:
                with httpx.Client(timeout=None) as client, client.stream("GET", f"{base}/v1/alerts/stream") as reply:
                    kind = None
                    for line in reply.iter_lines():
                        if stop.is_set():
                            return
                        if line.startswith("event: "):
                            kind = line[7:]
                        elif line.startswith("data: ") and kind == "alert":
                            alerts.append((time.monotonic(), json.loads(line[6:])))
            except httpx.TransportError:
                return

        threading.Thread(target=follow, daemon=True).start()
        step = int(chunk_s * rate)
        chunks = [[_flac(n[i : i + step], rate) for i in range(0, len(n) - step + 1, step)] for n in nights]
        sessions: list[tuple[str, dict[str, str]]] = []
        with httpx.Client(timeout=30) as client:
            for b in range(len(nights)):
                opened = client.post(f"{base}/v1/sessions", json={"bed_id": f"bench-{b}"}).json()
                sessions.append((opened["session_id"], {"Authorization": f"Bearer {opened['token']}"}))
        t0 = time.monotonic() + 0.5
        late = [0.0] * len(nights)
        dropped = [0] * len(nights)
        lag = [0] * len(nights)
        sent = [0] * len(nights)
        peak_kb = [idle_kb]

        def bed(b: int) -> None:
            sid, auth = sessions[b]
            with httpx.Client(timeout=30) as client:
                for k, body in enumerate(chunks[b]):
                    due = t0 + (k + 1) * chunk_s / speed
                    time.sleep(max(0.0, due - time.monotonic()))
                    ok = False
                    for _ in range(3):
                        try:
                            ok = client.post(
                                f"{base}/v1/sessions/{sid}/chunks/{k}", content=body, headers=auth
                            ).is_success
                        except httpx.TransportError:
                            ok = False
                        if ok:
                            break
                    dropped[b] += not ok
                    sent[b] = k + 1
                    late[b] = max(late[b], time.monotonic() - due)

        def watch() -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    peak_kb[0] = max(peak_kb[0], _rss_kb(server.pid))
                    for b, (sid, auth) in enumerate(sessions):
                        try:
                            scored = client.get(f"{base}/v1/sessions/{sid}", headers=auth).json()["epochs_scored"]
                        except (httpx.TransportError, KeyError, ValueError):
                            continue
                        lag[b] = max(lag[b], int(sent[b] * chunk_s // 30) - int(scored))
                    time.sleep(1.0)

        threads = [threading.Thread(target=bed, args=(b,)) for b in range(len(nights))]
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(2.0)  # the last epochs' scoring, the last alerts
        stop.set()
        interval = chunk_s / speed
        latencies = []
        by_rule: dict[str, list[float]] = {}
        waited: dict[str, list[int]] = {}
        for received, alert in alerts:
            if alert["rule"] == "no_audio":
                continue
            chunk_end = np.ceil(alert["end_s"] / chunk_s) * chunk_s
            latencies.append(received - (t0 + chunk_end / speed))
            by_rule.setdefault(alert["rule"], []).append(latencies[-1])
            # where the time went: whole chunks sent after the one holding end_s before the alert came
            waited.setdefault(alert["rule"], []).append(max(0, int(latencies[-1] // interval)))
        held = [late[b] <= interval and lag[b] <= max_lag_epochs and not dropped[b] for b in range(len(nights))]
        return {
            "beds": len(nights),
            "chunk_seconds": chunk_s,
            "held": all(held),
            "beds_kept_up": int(sum(held)),
            "worst_ack_delay_s": round(max(late), 3),
            "worst_scoring_lag_epochs": int(max(lag)),
            "dropped_chunks": int(sum(dropped)),
            "alerts": len(latencies),
            "alert_latency_p50_s": round(float(np.percentile(latencies, 50)), 3) if latencies else None,
            "alert_latency_p95_s": round(float(np.percentile(latencies, 95)), 3) if latencies else None,
            # Epoch rules (event rate, loud snoring, sensor) wait for their epoch's score, which with a
            # 90-s head waits for the next epoch; the pause rule reads the stream chunk by chunk.
            "alert_latency_by_rule": {
                rule: {
                    "alerts": len(values),
                    "p50_s": round(float(np.percentile(values, 50)), 3),
                    "p95_s": round(float(np.percentile(values, 95)), 3),
                    # alerts raised after the chunk holding end_s, after the next one, ...: the part of
                    # the latency that is waiting for audio rather than computing
                    "alerts_by_chunks_waited": {str(k): waited[rule].count(k) for k in sorted(set(waited[rule]))},
                }
                for rule, values in sorted(by_rule.items())
            },
            "memory_per_bed_mb": round(max(0, peak_kb[0] - idle_kb) / 1024 / len(nights), 1),
            "server_idle_mb": round(idle_kb / 1024, 1),
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def check_servable(root: str | Path) -> None:
    """Raise what ``monitor serve`` would fail on when ``root`` holds no champions to serve (LookupError,
    or ValueError for a damaged store): checked before any night is generated, which takes minutes,
    where the server found it only when it started."""
    from sleepsound.registry.store import serving_models

    serving_models(str(root))


def run_monitor_bench(
    root: str | Path,
    beds: int = 20,
    minutes: float = 10.0,
    speed: float = 1.0,
    chunk_seconds: float | Sequence[float] = 10.0,
    sample_rate: int = NIGHT_RATE,
    seed: int = 0,
    overrides: list[str] | None = None,
    max_lag_epochs: int = 2,
    workdir: Path | None = None,
    ramp: bool = True,
) -> dict[str, Any]:
    """Runs with 1, 2, 4, ... ``beds`` beds (each on a fresh copy of ``root``'s models); stops after the
    first run that did not keep up. ``ramp`` False: the one run with ``beds`` beds (a goal's check
    without the smaller runs' time). Several ``chunk_seconds``: the whole ramp once per chunk size
    (devices may send 1-30 s chunks, and the pause alert's latency is bounded below by one chunk's
    wait when the recovery breath's confirmation falls into the next chunk). Returns every run, the
    most beds held per chunk size and at every chunk size."""
    import shutil

    sizes = [float(chunk_seconds)] if isinstance(chunk_seconds, int | float) else [float(c) for c in chunk_seconds]
    if not sizes or any(not 1.0 <= c <= 30.0 for c in sizes):
        raise ValueError(f"chunk sizes {sizes}: the service takes chunks of 1-30 s")
    check_servable(root)
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="sleepsound-bench-monitor-"))
    work.mkdir(parents=True, exist_ok=True)
    nights = _nights(beds, minutes, sample_rate, seed, work)
    counts = sorted({*(2**i for i in range(beds.bit_length()) if 2**i < beds), beds}) if ramp else [beds]
    runs = []
    held_by_chunk: dict[str, int] = {}
    for size in sizes:
        held = []
        for n in counts:
            run_root = work / f"root-{n}-{size:g}s"
            shutil.rmtree(run_root, ignore_errors=True)
            for part in ("models", "manifest"):
                if (Path(root) / part).exists():
                    shutil.copytree(Path(root) / part, run_root / part)
            run = _run(
                run_root,
                nights[:n],
                sample_rate,
                speed,
                size,
                list(overrides or []),
                max_lag_epochs,
                work / f"server-{n}-{size:g}s.log",
            )
            runs.append(run)
            if not run["held"]:
                break
            held.append(n)
        held_by_chunk[f"{size:g}"] = max(held) if held else 0
    return {
        "speed": speed,
        "minutes": minutes,
        "chunk_seconds": sizes[0] if len(sizes) == 1 else sizes,
        "most_beds_held": min(held_by_chunk.values()),
        "most_beds_held_by_chunk": held_by_chunk,
        "runs": runs,
        "cpu_count": os.cpu_count(),
    }
