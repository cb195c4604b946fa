"""The paper's preprocessing, streamed: 16 kHz, 50 Hz biquad high-pass, pre-emphasis, 30-s epochs.

Every step keeps its state across blocks (the resampler's history, the filter's delay
line, the last sample for pre-emphasis), so a night processed in blocks equals the
same night processed at once, and memory stays bounded by the block size.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import soxr
from scipy import signal

from sleepsound.breathing.envelope import epoch_envelope
from sleepsound.core.config import PreprocessConfig
from sleepsound.ingest.quality import EpochQuality, flat_frames, measure_epoch, sanitise


@dataclass
class Epoch:
    """One 30-s epoch of preprocessed 16 kHz audio and what its raw samples showed.

    ``offset_s`` > 0 marks a shifted training window: it starts that far into epoch
    ``index`` and ends as far into the next epoch (see ``iter_epochs``).
    """

    index: int
    audio: np.ndarray
    quality: EpochQuality
    offset_s: float = 0.0
    # The breathing envelope of the unnormalised audio (``breathing.envelope``), when asked for.
    envelope: np.ndarray | None = None

    @property
    def valid(self) -> bool:
        return self.quality.valid

    @property
    def reason(self) -> str | None:
        return self.quality.invalid_reason

    @property
    def zero_rms_seconds(self) -> float:
        return self.quality.zero_rms_s


class StreamingFilter:
    """Resample, high-pass and pre-emphasise a stream of blocks with carried state."""

    def __init__(self, in_rate: float, cfg: PreprocessConfig) -> None:
        self.cfg = cfg
        self._resampler = (
            soxr.ResampleStream(in_rate, cfg.target_rate, 1, dtype="float32", quality="HQ")
            if in_rate != cfg.target_rate
            else None
        )
        # A biquad is a 2nd-order section: Butterworth order 2 at the cutoff.
        self._sos = signal.butter(2, cfg.highpass_hz, btype="highpass", fs=cfg.target_rate, output="sos")
        self._zi = np.zeros((self._sos.shape[0], 2))
        self._last = 0.0

    def process(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        x = self._resampler.resample_chunk(block, last=last) if self._resampler else block
        if len(x) == 0:
            return x.astype(np.float32)
        y, self._zi = signal.sosfilt(self._sos, x, zi=self._zi)
        # Pre-emphasis y[n] - a*y[n-1] lifts breathing and snore energy over low-frequency noise.
        out = np.empty_like(y)
        out[0] = y[0] - self.cfg.preemphasis * self._last
        out[1:] = y[1:] - self.cfg.preemphasis * y[:-1]
        self._last = float(y[-1])
        return out.astype(np.float32)


def zero_rms_seconds(raw: np.ndarray, in_rate: float, frame_seconds: float) -> float:
    """Seconds of digital silence in ``raw`` (see ``ingest.quality.flat_frames``)."""
    frame = max(1, int(round(frame_seconds * in_rate)))
    return float(np.count_nonzero(flat_frames(raw, in_rate, frame_seconds))) * frame / in_rate


def normalise(segment: np.ndarray) -> np.ndarray:
    """Local mean-variance normalisation of one input segment (the paper's last step)."""
    std = float(segment.std())
    return ((segment - segment.mean()) / (std if std > 1e-8 else 1.0)).astype(np.float32)


def _pair_quality(a: EpochQuality, b: EpochQuality) -> EpochQuality:
    """A shifted window's quality: the worse of its two (valid) epochs' figures."""
    return EpochQuality(
        max(a.zero_rms_s, b.zero_rms_s),
        a.nonfinite + b.nonfinite,
        max(a.clipped_fraction, b.clipped_fraction),
        a.invalid_reason or b.invalid_reason,
    )


def iter_epochs(
    blocks: Iterable[np.ndarray],
    in_rate: float,
    cfg: PreprocessConfig,
    full_scale: float = 1.0,
    shift_after: Container[int] = (),
    first_index: int = 0,
    emit_from: int = 0,
    emit_until: int | None = None,
    envelope: bool = False,
) -> Iterator[Epoch]:
    """Cut a stream of raw blocks (aligned to the epoch grid) into preprocessed epochs.

    Blocks must hold a whole number of epochs at ``in_rate`` (the last may be short); a
    trailing partial epoch is dropped because it has no full 30 s to score. Each epoch's
    raw samples are measured first (``quality.measure_epoch``); NaN/Inf samples are then
    zeroed so they cannot leak into the filters' state and spoil the epochs after them.

    For every ``i`` in ``shift_after`` whose epochs ``i`` and ``i + 1`` are both valid, a
    shifted window (``offset_s`` = half an epoch) is yielded just before epoch ``i + 1``: the
    second half of epoch i and the first half of epoch i + 1, cut from the same filtered
    stream (same filter state as the epochs) and then normalised on its own, exactly like an
    epoch. Only the previous epoch's second half is kept, so memory stays one block.

    A chunk of a night: ``blocks`` start at epoch ``first_index`` and only epochs in
    ``[emit_from, emit_until)`` are yielded, with the shifted windows of the pairs that start
    there. Epochs before ``emit_from`` are pre-roll, after are post-roll: read and filtered so
    the resampler's and the filter's state match a whole night's, never yielded (see
    ``embed.epochs.read_epochs``).

    ``envelope``: each epoch (not the shifted windows) also carries its breathing envelope,
    computed from the filtered audio before the per-epoch normalisation, which would erase
    the level differences between epochs that the breathing detector reads.

    The work is ``EpochCutter``'s, so the bedside stream (which pushes audio as it arrives)
    cuts epochs with exactly this code.
    """
    cutter = EpochCutter(in_rate, cfg, full_scale, shift_after, first_index, emit_from, emit_until, envelope)
    for block in blocks:
        yield from cutter.push(block)
    yield from cutter.finish()


class EpochCutter:
    """``iter_epochs`` as a push interface: feed raw blocks as they come, take the epochs they complete.

    Why a class: a live stream (``sleepsound.monitor``) has audio only when a device sends it,
    so it cannot hand ``iter_epochs`` an iterator; pushing through this object keeps one
    implementation for both. Blocks may be any length: raw samples wait in a buffer shorter
    than an epoch until a whole epoch can be measured (with epoch-aligned blocks it stays
    empty, so the batch path copies nothing more than before).
    """

    def __init__(
        self,
        in_rate: float,
        cfg: PreprocessConfig,
        full_scale: float = 1.0,
        shift_after: Container[int] = (),
        first_index: int = 0,
        emit_from: int = 0,
        emit_until: int | None = None,
        envelope: bool = False,
    ) -> None:
        self.cfg = cfg
        self.envelope = envelope
        self.in_rate = in_rate
        self.full_scale = full_scale
        self.shift_after = shift_after
        self.emit_from = emit_from
        self.until = float("inf") if emit_until is None else emit_until
        self.raw_epoch = int(round(cfg.epoch_seconds * in_rate))
        self.out_epoch = int(round(cfg.epoch_seconds * cfg.target_rate))
        self.half = self.out_epoch // 2
        self._filter = StreamingFilter(in_rate, cfg)
        self._measured: deque[EpochQuality] = deque()
        self._raw = np.zeros(0, dtype=np.float32)  # raw samples of an epoch not yet measured
        self._buffer = np.zeros(0, dtype=np.float32)
        self.next_index = first_index
        self._tail: tuple[np.ndarray, EpochQuality] | None = None  # previous epoch's second half, unnormalised

    def push(self, block: np.ndarray) -> Iterator[Epoch]:
        """Measure and filter ``block`` now; the returned iterator yields the epochs it completed."""
        raw = np.concatenate([self._raw, block]) if len(self._raw) else block
        whole = len(raw) - len(raw) % self.raw_epoch
        for start in range(0, whole, self.raw_epoch):
            self._measured.append(
                measure_epoch(raw[start : start + self.raw_epoch], self.in_rate, self.cfg, self.full_scale)[0]
            )
        self._raw = raw[whole:].copy()
        self._buffer = np.concatenate([self._buffer, self._filter.process(sanitise(block))])
        return self._drain()

    def finish(self) -> Iterator[Epoch]:
        """The end of the stream: flush the resampler; a trailing partial epoch is dropped."""
        self._buffer = np.concatenate([self._buffer, self._filter.process(np.zeros(0, dtype=np.float32), last=True)])
        return self._drain()

    def _drain(self) -> Iterator[Epoch]:
        while len(self._buffer) >= self.out_epoch and self._measured:
            audio, self._buffer = self._buffer[: self.out_epoch], self._buffer[self.out_epoch :]
            quality = self._measured.popleft()
            pair = self.next_index - 1  # the shifted window between this epoch and the previous one
            tail = self._tail
            if (
                tail is not None
                and quality.valid
                and tail[1].valid
                and pair in self.shift_after
                and self.emit_from <= pair < self.until
            ):
                window = np.concatenate([tail[0], audio[: self.half]])
                yield Epoch(pair, normalise(window), _pair_quality(tail[1], quality), self.half / self.cfg.target_rate)
            self._tail = (audio[self.half :].copy(), quality) if self.shift_after else None
            if self.emit_from <= self.next_index < self.until:
                env = epoch_envelope(audio, self.cfg.target_rate) if self.envelope else None
                yield Epoch(self.next_index, normalise(audio) if quality.valid else audio, quality, envelope=env)
            self.next_index += 1


def count_epochs(n_samples: int, in_rate: float, cfg: PreprocessConfig) -> int:
    """Full epochs a recording of ``n_samples`` holds."""
    return int(n_samples // int(round(cfg.epoch_seconds * in_rate)))


MARGIN_BEFORE_S = 0.3  # preprocess.device model: the high-pass's truncated response (0.256 s) and resampler history
MARGIN_AFTER_S = 0.05  # and the resampler's look-ahead


def reduced(rate: int, target: int) -> tuple[int, int]:
    """(input, output) rates divided by their greatest common divisor: the polyphase pattern's period."""
    g = math.gcd(int(rate), int(target))
    return int(rate) // g, int(target) // g


def margins(rate: int, target: int) -> tuple[int, int]:
    """Raw samples to read before and after each epoch, whole multiples of the polyphase period so
    the epoch starts exactly on an output sample."""
    period = reduced(rate, target)[0]
    before = math.ceil(MARGIN_BEFORE_S * rate / period) * period
    after = math.ceil(MARGIN_AFTER_S * rate / period) * period
    return before, after


def iter_raw_epochs(
    blocks: Iterable[np.ndarray],
    in_rate: float,
    cfg: PreprocessConfig,
    margins: tuple[int, int],
    full_scale: float = 1.0,
    shift_after: Container[int] = (),
    first_index: int = 0,
    emit_from: int = 0,
    emit_until: int | None = None,
    envelope: bool = False,
) -> Iterator[Epoch]:
    """``iter_epochs`` for ``preprocess.device: model``: the same epochs and shifted windows, the
    same quality figures and validity, but each one's audio raw (NaN/Inf zeroed), at ``in_rate``,
    with ``margins`` = (before, after) raw samples around it, zeros beyond the night's ends, for
    the model stage to resample and filter on its device (``embed.preprocess_torch``).
    ``envelope``: each epoch's breathing envelope from its raw samples at ``in_rate``, read through
    the stream's filters (``breathing.envelope``), so a night's events do not depend on the device."""
    raw_epoch = int(round(cfg.epoch_seconds * in_rate))
    half = raw_epoch // 2
    before, after = margins
    until = float("inf") if emit_until is None else emit_until
    buffer = np.zeros(0, dtype=np.float32)
    buffer_start = first_index * raw_epoch  # the night's sample index of buffer[0]
    quality: dict[int, EpochQuality] = {}
    measured = next_index = first_index  # next epoch to measure, next epoch to yield

    def segment(lo: int, hi: int) -> np.ndarray:
        """The night's samples [lo, hi), zeros where the stream has none (before or after the night)."""
        out = np.zeros(hi - lo, dtype=np.float32)
        a, b = max(lo, buffer_start), min(hi, buffer_start + len(buffer))
        if b > a:
            out[a - lo : b - lo] = buffer[a - buffer_start : b - buffer_start]
        return out

    def drain(finished: bool) -> Iterator[Epoch]:
        nonlocal next_index, buffer, buffer_start
        while next_index < measured:
            i, pair = next_index, next_index - 1
            if not finished and buffer_start + len(buffer) < (i + 1) * raw_epoch + after:
                return  # epoch i's look-ahead margin has not been read yet
            shifted = pair in shift_after and pair in quality and quality[pair].valid and quality[i].valid
            if shifted and emit_from <= pair < until:
                lo = pair * raw_epoch + half - before
                window = segment(lo, lo + raw_epoch + before + after)
                yield Epoch(pair, window, _pair_quality(quality[pair], quality[i]), half / in_rate)
            if emit_from <= i < until:
                lo = i * raw_epoch - before
                audio = segment(lo, lo + raw_epoch + before + after)
                env = epoch_envelope(audio[before : before + raw_epoch], in_rate, raw=cfg) if envelope else None
                yield Epoch(i, audio, quality[i], envelope=env)
            quality.pop(pair, None)
            next_index += 1
            keep_from = i * raw_epoch - before  # nothing later reaches back further
            if keep_from > buffer_start:
                buffer = buffer[keep_from - buffer_start :]
                buffer_start = keep_from

    for block in blocks:
        for start in range(0, len(block) - raw_epoch + 1, raw_epoch):
            quality[measured] = measure_epoch(block[start : start + raw_epoch], in_rate, cfg, full_scale)[0]
            measured += 1
        buffer = np.concatenate([buffer, sanitise(block).astype(np.float32, copy=False)])
        yield from drain(finished=False)
    yield from drain(finished=True)
