"""A small HTTP service that scores a short recording on demand with a clip classifier.

    POST /score?name=clip.wav   body: the audio file's bytes (WAV, FLAC, OGG, ...)
    GET  /health                the model's classes, backbone and clip length

Why this shape: one model, loaded (and its backbone warmed up) once at start, so a request
costs one forward pass; requests take turns on one scoring thread with a bounded queue
(``monitor.limits.BoundedWorker``: a full queue is a 503 at once), since a CPU forward pass
already uses every core, and ``/health`` runs on the event loop, never behind them. Uploads are
bounded in bytes and read time while they arrive, and in rate, channels, seconds and samples to
decode from their header before decoding (``monitor.limits``, shared with ``monitor serve``); a WAV
cut short is refused as ``validate`` refuses it; bad audio is a 400 naming the upload and the
problem. One client holds at most ``MAX_PER_CLIENT`` places (queued or running): past
that it is answered 429 with Retry-After, so it cannot keep every other client at 503. A client
is its connection's address (``limits.client_of``): X-Forwarded-For counts only from a proxy
given to ``clips serve --trust-proxy``, so a local process cannot pose as many clients. A request
whose client has gone is not scored. Requests for another
Host, and state-changing ones from another Origin, are refused. Audio is never logged or kept:
it lives in memory for the request only, and the access log is off (upload names may identify
a patient).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

import sleepsound
from sleepsound.clips.dataset import SAMPLE_RATE, ClipError
from sleepsound.clips.evaluate import ClipClassifier
from sleepsound.clips.scoring import MAX_SCORE_SECONDS, TooLong, score_source
from sleepsound.monitor.limits import (
    AudioBuffer,
    AudioLimits,
    BoundedWorker,
    Busy,
    ClientSlots,
    GuardMiddleware,
    Refused,
    allowed_hosts,
    clean_message,
    client_of,
    install_handlers,
    probe_audio,
    read_body,
    run_unless_gone,
)

log = logging.getLogger(__name__)
MAX_UPLOAD_MB = 64.0
MAX_QUEUED = 8
MAX_PER_CLIENT = 2  # one running and one waiting: a client cannot hold the whole queue
RETRY_AFTER_S = 10
READ_TIMEOUT_S = 30.0


def describe(clf: ClipClassifier, model_dir: str | Path) -> dict[str, Any]:
    """What the service scores with (no training data, no file lists)."""
    return {
        "model": Path(model_dir).name,
        "classes": list(clf.classes),
        "backbone": clf.info.get("backbone"),
        "clip_seconds": clf.clip_samples / SAMPLE_RATE,
        "head": (clf.info.get("chosen") or {}).get("head"),
        "threshold": None if clf.decision is None else {clf.decision["positive"]: clf.decision["threshold"]},
        "sleepsound_version": clf.info.get("sleepsound_version"),
    }


def create_app(
    model_dir: str | Path,
    device: str = "cpu",
    max_seconds: float = MAX_SCORE_SECONDS,
    max_mb: float = MAX_UPLOAD_MB,
    warm: bool = True,
    host: str = "127.0.0.1",
    extra_hosts: tuple[str, ...] = (),
    read_timeout_s: float = READ_TIMEOUT_S,
    max_queued: int = MAX_QUEUED,
    max_per_client: int = MAX_PER_CLIENT,
) -> FastAPI:
    """The service for the clip classifier in ``model_dir`` (a ``clips train`` output folder)."""
    clf = ClipClassifier(model_dir, device)
    if warm:  # load the backbone and run it once, so the first request is as fast as the rest
        clf.proba(np.zeros((1, clf.clip_samples), dtype=np.float32), np.array([clf.clip_samples]))
    limits = AudioLimits(int(max_mb * 2**20), max_seconds)
    worker = BoundedWorker(max_queued, name="clip-scoring")
    slots = ClientSlots(max_per_client)
    info = describe(clf, model_dir)
    app = FastAPI(
        title="sleepsound clip scoring",
        version=sleepsound.__version__,
        description="POST an audio file's bytes to /score; every window of the model's clip length "
        "gets a label and class probabilities.",
    )
    app.state.worker = worker
    install_handlers(app)
    app.add_middleware(GuardMiddleware, allowed_hosts=allowed_hosts(host, extra_hosts))

    @app.get("/health")
    async def health() -> dict[str, Any]:  # async: on the event loop, never queued for a pool thread
        return {"status": "ok", **info, "queued": worker.queued, "scoring": worker.busy}

    async def scored(request: Request, name: str) -> dict[str, Any]:
        """Read, check and score one upload; its client holds one of its places while it is queued or scored."""
        body = await read_body(request, limits.max_bytes, read_timeout_s)
        if not body:
            raise Refused(400, f"{name}: empty request body; send the audio file's bytes")
        try:  # off the event loop: /health and other clients never wait behind a header check
            await run_in_threadpool(probe_audio, body, name, limits)
        except Refused as exc:
            if exc.status == 413 and "longer than" in exc.message:  # the CLI's wording for a long file
                raise Refused(
                    413, f"{name}: longer than {max_seconds:g} s; score whole nights with `sleepsound score`"
                ) from None
            raise

        def run() -> dict[str, Any]:
            return score_source(clf, AudioBuffer(body), name, max_seconds)

        busy = Refused(
            429,
            f"{name}: this client already has {max_per_client} requests queued or running; retry when one has finished",
            {"Retry-After": str(RETRY_AFTER_S)},
        )
        try:
            if worker.full():  # a full queue is everyone's 503, before any one client's 429
                raise Busy()
            with slots.held(client_of(request), busy):  # given back when scored, or when its client has gone
                result = await run_unless_gone(worker, request, run)
        except Busy:
            raise Refused(
                503,
                f"{name}: {max_queued} requests are already waiting; retry in a few seconds",
                {"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        except ClipError as exc:
            raise Refused(413 if isinstance(exc, TooLong) else 400, clean_message(str(exc), name)) from None
        return result

    @app.post("/score")
    async def score(request: Request, name: str = "upload") -> dict[str, Any]:
        # curl --data-binary labels the bytes a urlencoded form: only a real multipart form is refused.
        if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise Refused(
                415,
                f"{name}: send the audio file's bytes as the request body "
                "(curl --data-binary @clip.wav), not as a form",
            )
        result = await scored(request, name)
        log.info("scored %.1f s of audio in %.2f s", result["seconds"], result["scoring_seconds"])
        return result

    return app
