"""The per-second snoring head's frames laid on the envelope's 10-Hz frames (``breathing.combine``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sleepsound.breathing.combine import night_snore_track, snore_track


def test_each_epochs_frames_cover_its_envelope_frames_and_unknown_epochs_stay_nan():
    # 3 epochs of 30 s (300 envelope frames each); epoch 1 has no frames (invalid), epoch 2 is cut short.
    probs = np.linspace(0.0, 1.0, 60, dtype=np.float32)
    track = snore_track([(0, probs), (1, None), (2, 1.0 - probs)], 750, 30.0)
    assert track.shape == (750,) and track.dtype == np.float32
    assert np.array_equal(track[:5], np.full(5, probs[0])) and track[295] == probs[59]  # 0.5 s = 5 frames
    assert np.isnan(track[300:600]).all()
    assert track[600] == pytest.approx(1.0) and len(track[600:]) == 150


def test_frames_that_do_not_divide_an_epoch_are_refused():
    with pytest.raises(ValueError, match="epoch 0: \\(7,\\) snoring frames"):
        snore_track([(0, np.zeros(7))], 300, 30.0)


def test_a_nights_prediction_rows_give_the_track_or_none_without_a_snoring_head():
    rows = pd.DataFrame({"epoch_index": [1, 0], "snore_frames": [[0.9] * 60, None]})
    track = night_snore_track(rows, 600, 30.0)
    assert track is not None and np.isnan(track[:300]).all() and np.allclose(track[300:], 0.9)
    assert night_snore_track(rows.assign(snore_frames=None), 600, 30.0) is None
    assert night_snore_track(rows.drop(columns="snore_frames"), 600, 30.0) is None
