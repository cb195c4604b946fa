"""A small HTTP service that scores a short recording on demand with a clip classifier.

    POST /score?name=clip.wav   body: the audio file's bytes (WAV, FLAC, OGG, ...)
    GET  /health                the model's classes, backbone and clip length

Why this shape: one model, loaded (and its backbone warmed up) once at start, so a request
costs one forward pass; requests take turns on the model (a lock), since a CPU forward pass
already uses every core. Uploads are bounded in bytes and seconds, and bad audio is a 400
naming the upload and the problem. Audio is never logged or kept: it lives in memory for the
request only, and the access log is off (upload names may identify a patient).
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from starlette.concurrency import run_in_threadpool

import sleepsound
from sleepsound.clips.dataset import SAMPLE_RATE, ClipError
from sleepsound.clips.evaluate import ClipClassifier
from sleepsound.clips.scoring import MAX_SCORE_SECONDS, TooLong, score_source

log = logging.getLogger(__name__)
MAX_UPLOAD_MB = 64.0


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


async def _body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``max_bytes`` (never buffered past it)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise HTTPException(413, f"upload of {int(declared)} bytes is over the limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"upload is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    model_dir: str | Path,
    device: str = "cpu",
    max_seconds: float = MAX_SCORE_SECONDS,
    max_mb: float = MAX_UPLOAD_MB,
    warm: bool = True,
) -> FastAPI:
    """The service for the clip classifier in ``model_dir`` (a ``clips train`` output folder)."""
    clf = ClipClassifier(model_dir, device)
    if warm:  # load the backbone and run it once, so the first request is as fast as the rest
        clf.proba(np.zeros((1, clf.clip_samples), dtype=np.float32), np.array([clf.clip_samples]))
    turn = threading.Lock()
    max_bytes = int(max_mb * 2**20)
    info = describe(clf, model_dir)
    app = FastAPI(
        title="sleepsound clip scoring",
        version=sleepsound.__version__,
        description="POST an audio file's bytes to /score; every window of the model's clip length "
        "gets a label and class probabilities.",
    )

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", **info}

    @app.post("/score")
    async def score(request: Request, name: str = "upload") -> dict[str, Any]:
        # curl --data-binary labels the bytes a urlencoded form: only a real multipart form is refused.
        if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise HTTPException(
                415,
                f"{name}: send the audio file's bytes as the request body "
                "(curl --data-binary @clip.wav), not as a form",
            )
        body = await _body(request, max_bytes)
        if not body:
            raise HTTPException(400, f"{name}: empty request body; send the audio file's bytes")

        def run() -> dict[str, Any]:
            with turn:
                return score_source(clf, io.BytesIO(body), name, max_seconds)

        try:
            result = await run_in_threadpool(run)
        except ClipError as exc:
            raise HTTPException(413 if isinstance(exc, TooLong) else 400, str(exc)) from None
        log.info("scored %.1f s of audio in %.2f s", result["seconds"], result["scoring_seconds"])
        return result

    return app
