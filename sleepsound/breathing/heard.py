"""Where in a night breathing was heard: the only stretches where the detector can find an event.

An audio-only index counts events where breath sounds can be heard and nowhere else. A sleeper far from
the microphone, a quiet breather or a loud room gives a night with no breathing rhythm over the room's
noise, and then no events: an REI of 0 that says nothing about the airway. So each scored epoch carries
the seconds of it in which breathing was heard (``detector.heard_frames``: a rhythm of breath sounds
within the 40 s before or after), and the night's indices say how much of the night that was and warn
when it is too little to read a low index as a normal night (``report.summaries.MIN_HEARD_SHARE``).
PSG-Audio's ambient microphone hears a sleeper's faint breaths (2-4 dB over the room) all through; the
generator's nights are heard over 60% of the time, most of them all of it.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sleepsound.breathing.envelope import FRAME_HZ, frames_per_epoch

HEARD_COLUMN = "breath_heard_s"


def heard_seconds(heard: np.ndarray, epoch_seconds: float) -> np.ndarray:
    """Seconds of each epoch (rows of ``frames_per_epoch`` envelope frames) in which breathing was heard,
    from the night's frames heard (``detector.heard_frames`` or ``events_and_heard``)."""
    per = frames_per_epoch(epoch_seconds)
    whole = len(heard) // per
    return np.asarray(heard[: whole * per], dtype=bool).reshape(whole, per).sum(axis=1) / FRAME_HZ


def with_heard_seconds(table: pa.Table, heard: np.ndarray, epoch_seconds: float) -> pa.Table:
    """A night's prediction rows with ``breath_heard_s`` filled by their ``epoch_index`` (null for an epoch
    the envelope does not reach)."""
    seconds = heard_seconds(heard, epoch_seconds)
    index = table.column("epoch_index").to_numpy(zero_copy_only=False).astype(np.int64)
    inside = (index >= 0) & (index < len(seconds))
    values = np.zeros(len(index))
    values[inside] = seconds[index[inside]]
    column = pa.array(values, type=pa.float32(), mask=~inside)
    at = table.schema.get_field_index(HEARD_COLUMN)
    return table.set_column(at, HEARD_COLUMN, column)
