"""Breathing pauses in a stretch of audio, and the tutorial's one-clip answer built on them.

``breathing_pauses`` is the one door to pause detection for the bedside: the batch pipeline's own
detector (``sleepsound.breathing``) on the audio as the embed stream sees it, so a pause alerted
at the bedside is an apnoea the night's report counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sleepsound.breathing.detector import BreathingEvent, events_and_heard
from sleepsound.breathing.envelope import FEATURES, FRAME_SECONDS, epoch_envelope
from sleepsound.core.config import PreprocessConfig
from sleepsound.embed.preprocess import StreamingFilter
from sleepsound.ingest.quality import sanitise

MIN_PAUSE_S = 10.0  # the scoring manual's apnoea: at least 10 s of cessation
# The detector judges a pause against the breathing before it (its noise floor over a minute, the
# breaths of the last two minutes, a rhythm in the 40 s before): it needs this much audio.
CONTEXT_S = 90.0


@dataclass(frozen=True)
class Pause:
    """A breathing pause: from the last breath's end to the recovery breath's start, in seconds."""

    start_s: float
    end_s: float
    confidence: float = 1.0

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s


class PauseWatch:
    """The pause rule's view of one stream: its breathing envelope, made chunk by chunk.

    Why not keep the raw audio and run the detector over it after every chunk: a bed would hold
    minutes of samples (11.5 MB for 180 s at 16 kHz) and re-filter them per chunk, so 20 beds
    posting at once would hold gigabytes for a moment. Here each chunk goes once through the batch
    stream's resampler and filter (state carried), becomes 10-Hz envelope frames (4 numbers each),
    and only the last ``keep_s`` of frames are kept (29 KB for 180 s); the detector runs on those.
    """

    def __init__(self, rate: float, keep_s: float, preprocess: PreprocessConfig | None = None) -> None:
        self.cfg = preprocess or PreprocessConfig()
        self.rate = rate
        self.keep = max(1, int(round(keep_s / FRAME_SECONDS)))
        self.start_s = 0.0  # the stream's time of the first kept frame
        self._filter = StreamingFilter(rate, self.cfg)
        self._rest = np.zeros(0, dtype=np.float32)  # filtered samples short of a whole frame
        self._frames = np.zeros((0, len(FEATURES)), dtype=np.float32)
        self.began_s: float | None = None  # the stream's time of the first frame ever pushed (since a restart)
        self.last_heard_s: float | None = None  # the stream's time breathing was last heard
        self._seen: tuple[tuple[float, int], list[BreathingEvent]] | None = None  # ``_read``'s last answer

    def push(self, audio: np.ndarray) -> None:
        if self.began_s is None:
            self.began_s = self.start_s + len(self._frames) * FRAME_SECONDS
        filtered = self._filter.process(sanitise(np.asarray(audio, dtype=np.float32)))
        x = np.concatenate([self._rest, filtered]) if len(self._rest) else filtered
        frame = int(round(FRAME_SECONDS * self.cfg.target_rate))
        whole = len(x) - len(x) % frame
        self._rest = x[whole:].copy()
        frames = np.concatenate([self._frames, epoch_envelope(x[:whole], self.cfg.target_rate)])
        drop = max(0, len(frames) - self.keep)
        self.start_s += drop * FRAME_SECONDS
        self._frames = frames[drop:]

    def restart(self, at_s: float) -> None:
        """After a gap: what comes next is not continuous with what came before."""
        self.__init__(self.rate, self.keep * FRAME_SECONDS, self.cfg)  # type: ignore[misc]
        self.start_s = at_s

    def _read(self) -> list[BreathingEvent]:
        """The kept frames' events, and when breathing was last heard in them: read once per chunk pushed,
        for both ``pauses`` and ``unheard_seconds``."""
        key = (self.start_s, len(self._frames))
        if self._seen is None or self._seen[0] != key:
            events, heard = events_and_heard(self._frames)
            last = np.flatnonzero(heard)
            if len(last):
                self.last_heard_s = max(self.last_heard_s or 0.0, self.start_s + (last[-1] + 1) * FRAME_SECONDS)
            self._seen = (key, events)
        return self._seen[1]

    def unheard_seconds(self) -> float:
        """How long breathing has not been heard, up to the newest frame (``breathing.heard``: no rhythm of
        breath sounds in the 40 s before): while it is not, no pause can be found, so the bed is unwatched."""
        self._read()
        end_s = self.start_s + len(self._frames) * FRAME_SECONDS
        since = self.last_heard_s if self.last_heard_s is not None else self.began_s
        return 0.0 if since is None else max(0.0, round(end_s - since, 1))

    def pauses(self, min_pause_s: float = MIN_PAUSE_S) -> list[Pause]:
        """The detector's apnoeas of at least ``min_pause_s`` among the kept frames, in stream seconds;
        one still running at the end is not reported (its recovery breath has not come)."""
        return [
            Pause(round(self.start_s + e["start_s"], 2), round(self.start_s + e["end_s"], 2), float(e["confidence"]))
            for e in self._read()
            if e["type"] == "apnea" and e["end_s"] - e["start_s"] >= min_pause_s
        ]


def breathing_pauses(
    audio: np.ndarray, rate: int, min_pause_s: float = MIN_PAUSE_S, preprocess: PreprocessConfig | None = None
) -> list[Pause]:
    """The detector's apnoeas of at least ``min_pause_s`` in one clip (hypopnoeas are not a pause).

    The audio goes through the batch stream's resampler and filter and becomes the same 10-Hz
    envelope the embed stage caches, so the rules and the confidence cut are the batch ones.
    With less than ``CONTEXT_S`` of audio before a pause there is too little breathing to judge it.
    """
    if len(audio) < MIN_PAUSE_S * rate:
        return []
    watch = PauseWatch(rate, len(audio) / rate + 1.0, preprocess)
    watch.push(audio)
    watch.push(np.zeros(0, dtype=np.float32))
    return watch.pauses(min_pause_s)


def detection(pauses: list[Pause], windows: list[dict[str, Any]]) -> str:
    """The tutorial's label: any pause or apnoea-hypopnoea window is an alert; else snoring if a window snores."""
    if pauses or any(w.get("resp_pred") == "apnea_hypopnea" for w in windows):
        return "Apnea Alert"
    if any(w.get("resp_pred") == "snore" for w in windows):
        return "Snoring"
    return "Normal"
