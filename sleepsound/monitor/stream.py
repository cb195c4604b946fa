"""One bed's night as it arrives: chunks put in order, duplicates dropped, gaps filled and marked, epochs cut.

The cutting is ``embed.preprocess.EpochCutter``, the batch path's own code (resample, high-pass,
pre-emphasis, 30-s epochs, quality checks), so an epoch streamed here equals the same epoch of
the same file scored by ``sleepsound score`` to float rounding.

Order: chunk ``seq`` n is the n-th piece of the night. A chunk that arrives early waits (at most
``window`` chunks ahead of the next expected one); when a chunk arrives further ahead than that,
the missing ones are given up: each is ``chunk_seconds`` of silence in the stream, and every
epoch it touches is invalid with reason ``missing_audio``. Nothing is silently closed up, so
epoch ``i`` always starts ``30 i`` seconds after the night's start.

Bounds: every chunk given up becomes samples fed through the cutter, so how far ahead a chunk may
be is bounded (``check_seq``, before anything is decoded or allocated): a negative number is
refused, and so is one more than ``MAX_GAP_S`` of audio (and more than ``window`` chunks) ahead of
the next expected chunk (only ``window`` before the chunk length is known); a number like 2**63
would otherwise fill the night with silence forever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from sleepsound.core.config import PreprocessConfig
from sleepsound.embed.preprocess import Epoch, EpochCutter
from sleepsound.monitor.breathing import PauseWatch
from sleepsound.monitor.limits import Refused

MISSING = "missing_audio"
# The most audio one chunk may skip (given up as silence). Why ten minutes: a device that loses its
# link and resumes with its newest chunk skips what it could not send, and a session with no request
# for the idle timeout (600 s by default) is ended anyway, so a live session never needs more. A gap
# of ten minutes costs one request about 20 epochs of silence through the cutter: bounded.
MAX_GAP_S = 600.0
# Chunks are 1-30 s long (the service refuses shorter ones): a declared or journalled length below
# this is taken as this, so a gap is never more than 600 chunks.
MIN_CHUNK_S = 1.0


@dataclass
class Piece:
    """One chunk's place in the night (the journal that lets a restarted server replay the stream)."""

    seq: int
    start: int  # the night's sample index of its first sample
    samples: int
    missing: bool = False


@dataclass
class Accepted:
    """What one chunk did: taken before (``duplicate``), epochs it completed, chunks given up as missing."""

    duplicate: bool
    epochs: list[Epoch] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)


class NightStream:
    """The in-order, gap-marked stream of one session, cut into epochs by the batch code.

    ``first_epoch`` / ``emit_from``: a resumed stream starts at an epoch boundary before the
    first epoch it still has to deliver (one epoch of pre-roll settles the filters, as
    ``embed.epochs.read_epochs`` does for a chunk of a night).
    """

    def __init__(
        self,
        cfg: PreprocessConfig,
        window: int = 8,
        chunk_seconds: float | None = None,
        rate: int | None = None,
        full_scale: float = 1.0,
        next_seq: int = 0,
        night_samples: int = 0,
        missing: list[tuple[int, int]] | None = None,
        first_epoch: int = 0,
        emit_from: int = 0,
        missing_samples: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.window = window
        self.chunk_seconds = chunk_seconds
        self.rate = rate
        self.full_scale = full_scale
        self.next_seq = next_seq
        self.night_samples = night_samples  # samples fed so far, missing ones included
        self.missing: list[tuple[int, int]] = list(missing or [])  # the gaps still inside the window
        # every sample given up as missing this night (``missing`` forgets gaps as their epochs are scored)
        self.missing_samples = sum(b - a for a, b in self.missing) if missing_samples is None else missing_samples
        self.pending: dict[int, np.ndarray] = {}
        self.pieces: list[Piece] = []
        self.first_epoch = first_epoch
        self.emit_from = emit_from
        self._cutter: EpochCutter | None = None
        self.tail_seconds = 0.0  # how much of the stream the pause rule reads (0: no pause rule)
        self.watch: PauseWatch | None = None  # its breathing envelope, made as chunks are fed

    @property
    def raw_epoch(self) -> int:
        assert self.rate is not None
        return int(round(self.cfg.epoch_seconds * self.rate))

    def cutter(self) -> EpochCutter:
        if self._cutter is None:
            assert self.rate is not None
            self._cutter = EpochCutter(
                self.rate,
                self.cfg,
                self.full_scale,
                first_index=self.first_epoch,
                emit_from=self.emit_from,
                envelope=True,  # for the night's event table (sessions: envelopes.bin)
            )
        return self._cutter

    def is_duplicate(self, seq: int) -> bool:
        return seq < self.next_seq or seq in self.pending

    def max_ahead(self) -> int:
        """How many chunks past the next expected one a chunk may be: the reorder window, or
        ``MAX_GAP_S`` of audio at the session's chunk length, whichever is more. Before the chunk length
        is known (not declared, no chunk yet) only the window: the first chunk taken sets the length,
        so a first chunk far ahead could otherwise be 30 s long and skip 30 s per chunk number."""
        if self.chunk_seconds is None:
            return self.window
        return max(self.window, math.ceil(MAX_GAP_S / max(self.chunk_seconds, MIN_CHUNK_S)))

    def check_seq(self, seq: int, name: str) -> None:
        """Refuse (422) a chunk number below 0 or too far ahead, before the chunk costs anything."""
        if seq < 0:
            raise Refused(422, f"{name}: chunk numbers start at 0")
        ahead = seq - self.next_seq
        if ahead > self.max_ahead():
            raise Refused(
                422,
                f"{name}: {ahead} chunks ahead of the next expected chunk {self.next_seq}; at most "
                f"{self.max_ahead()} chunks ({MAX_GAP_S / 60:g} min of audio) may be skipped: send the chunks "
                "in between, or end this session and open a new one",
            )

    def check_rate(self, rate: int, name: str) -> None:
        if self.rate is not None and rate != self.rate:
            raise Refused(422, f"{name}: sample rate {rate} Hz, but this session's audio is {self.rate} Hz")

    def accept(self, seq: int, audio: np.ndarray, rate: int, full_scale: float) -> Accepted:
        """Take chunk ``seq`` (decoded, mono, at ``rate``); returns the epochs it completed."""
        self.check_seq(seq, f"chunk {seq}")
        if self.is_duplicate(seq):
            return Accepted(True)
        self.check_rate(rate, f"chunk {seq}")
        if self.rate is None:
            self.rate, self.full_scale = rate, full_scale
        if self.chunk_seconds is None:
            self.chunk_seconds = len(audio) / rate
        self.pending[seq] = audio
        out = Accepted(False)
        while self.pending:
            if self.next_seq in self.pending:
                out.epochs += self._feed(self.next_seq, self.pending.pop(self.next_seq))
            elif max(self.pending) - self.next_seq >= self.window:
                out.missing.append(self.next_seq)
                out.epochs += self._feed_missing(self.next_seq)
            else:
                break
            self.next_seq += 1
        return out

    def finish(self) -> list[Epoch]:
        """The end of the night: chunks still waiting behind a gap are fed after it (the gap marked
        missing), then the resampler is flushed; a trailing partial epoch is dropped, as in batch."""
        epochs: list[Epoch] = []
        while self.pending:
            if self.next_seq in self.pending:
                epochs += self._feed(self.next_seq, self.pending.pop(self.next_seq))
            else:
                epochs += self._feed_missing(self.next_seq)
            self.next_seq += 1
        if self.rate is None:
            return epochs
        return epochs + self._marked(list(self.cutter().finish()))

    def replay(self, piece: Piece, audio: np.ndarray | None) -> list[Epoch]:
        """Feed a journalled piece again after a restart (``audio`` None for a missing one), skipping
        what lies before the resumed stream's first epoch."""
        start = self.first_epoch * self.raw_epoch
        samples = np.zeros(piece.samples, dtype=np.float32) if audio is None else audio
        skip = max(0, start - piece.start)
        self.pieces.append(piece)
        if skip >= piece.samples:
            return []
        return self._marked(list(self.cutter().push(samples[skip:])))

    def _keep_tail(self, audio: np.ndarray | None) -> None:
        """Feed the pause rule's envelope (``monitor.breathing.PauseWatch``), which restarts after a gap:
        what came before it is not continuous with what follows."""
        if not self.tail_seconds or self.rate is None:
            return
        if self.watch is None:
            self.watch = PauseWatch(self.rate, self.tail_seconds, self.cfg)
            self.watch.start_s = self.night_samples / self.rate
        if audio is None:
            self.watch.restart(self.night_samples / self.rate)
        else:
            self.watch.push(audio)

    def _feed(self, seq: int, audio: np.ndarray) -> list[Epoch]:
        self.pieces.append(Piece(seq, self.night_samples, len(audio)))
        self._keep_tail(audio)
        self.night_samples += len(audio)
        return self._marked(list(self.cutter().push(audio)))

    def _feed_missing(self, seq: int) -> list[Epoch]:
        assert self.rate is not None and self.chunk_seconds is not None
        n = max(1, int(round(self.chunk_seconds * self.rate)))
        self.missing.append((self.night_samples, self.night_samples + n))
        self.missing_samples += n
        self.pieces.append(Piece(seq, self.night_samples, n, missing=True))
        self.night_samples += n
        self._keep_tail(None)
        return self._marked(list(self.cutter().push(np.zeros(n, dtype=np.float32))))

    def _marked(self, epochs: list[Epoch]) -> list[Epoch]:
        """Epochs touching missing audio are invalid, whatever their samples (silence) looked like."""
        if not self.missing:
            return epochs
        out = []
        for epoch in epochs:
            lo, hi = epoch.index * self.raw_epoch, (epoch.index + 1) * self.raw_epoch
            if any(a < hi and b > lo for a, b in self.missing):
                epoch = Epoch(epoch.index, epoch.audio, replace(epoch.quality, invalid_reason=MISSING), epoch.offset_s)
            out.append(epoch)
        return out

    def keep_from(self, first_needed_epoch: int) -> list[Piece]:
        """Forget pieces that end before ``first_needed_epoch``'s pre-roll; returns them (their spool
        files can go)."""
        if self.rate is None:
            return []
        start = max(0, first_needed_epoch - 1) * self.raw_epoch
        gone = [p for p in self.pieces if p.start + p.samples <= start]
        self.pieces = [p for p in self.pieces if p.start + p.samples > start]
        self.missing = [(a, b) for a, b in self.missing if b > start]
        return gone
