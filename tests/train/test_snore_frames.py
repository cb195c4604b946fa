"""The per-second snoring head: frame targets from snore events, the head, its file form, the snore
index's source, and the generator's nights without snoring. Tiny synthetic arrays, seconds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sleepsound.io.rml import RmlEvent
from sleepsound.labels.events import snore_frames
from sleepsound.models.heads.artifacts import HeadArtifactError, load_head, save_head
from sleepsound.report.summaries import SNORE_FROM_EPOCHS, SNORE_FROM_FRAMES, snore_shares
from sleepsound.train.frames import frame_f1, frame_metrics, frame_probs, train_frame_head


def _snore(start: float, duration: float) -> RmlEvent:
    return RmlEvent("Nasal", "Snore", start, duration)


def test_a_frame_snores_when_snore_events_cover_most_of_it() -> None:
    events = [_snore(1.2, 1.7), _snore(31.0, 0.2), RmlEvent("Respiratory", "ObstructiveApnea", 0.0, 30.0)]
    got = snore_frames(events, [0.0, 30.0], 30.0, 60)
    assert got is not None and got.shape == (2, 60)
    # 1.2-2.9 s: frame 1.0-1.5 covered 0.3 s (60%), 1.5-2.0 and 2.0-2.5 fully, 2.5-3.0 0.4 s (80%)
    assert np.flatnonzero(got[0]).tolist() == [2, 3, 4, 5]
    assert not got[1].any()  # 0.2 s of 0.5: under half; apnoeas are not snoring
    shifted = snore_frames(events, [15.0], 30.0, 60)  # a window starting 15 s in: nothing of it snores
    assert shifted is not None and not shifted.any()
    overlapping = snore_frames([_snore(0.0, 0.3), _snore(0.1, 0.3)], [0.0], 30.0, 60)  # union: 0.4 s of 0.5
    assert overlapping is not None and overlapping[0, 0] and not overlapping[0, 1:].any()
    assert snore_frames(None, [0.0], 30.0, 60) is None  # no events source: unknown, not "no snoring"


def _frames(n: int, seed: int, layers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Epochs of 20 frames: snoring frames come in runs and carry a direction in feature space."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, 20), dtype=np.int8)
    for i in range(n):
        for start in rng.choice(20, size=2, replace=False):
            y[i, start : start + int(rng.integers(2, 5))] = 1
    x = rng.normal(size=(n, 20, layers, 16)).astype(np.float32)
    x[..., 0] += 3.0 * y[..., None]
    return (x[:, :, 0] if layers == 1 else x).astype(np.float16), y


def test_the_frame_head_learns_frames_saves_as_safetensors_and_loads_the_same(tmp_path) -> None:
    x, y = _frames(120, 0)
    y[:5] = -1  # unknown frames (a night without an events source) are left out of the loss
    tx, ty = _frames(40, 1)
    result = train_frame_head(x, y, seed=0, val=(tx, ty), epochs=10)
    probs = frame_probs(result.model, tx)
    assert probs.shape == ty.shape and frame_f1(ty, probs) > 0.8
    assert 0 <= result.best_epoch < 10 and "val_snore_f1" in result.history[-1]
    again = train_frame_head(x, y, seed=0, val=(tx, ty), epochs=10)
    assert np.array_equal(frame_probs(again.model, tx), probs)  # seeded

    config = save_head(result.model, None, str(tmp_path / "h"), classes=("none", "snore"))
    assert config["head_class"] == "FrameHead" and sorted(p.name for p in (tmp_path / "h").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert np.array_equal(frame_probs(load_head(None, str(tmp_path / "h")), tx), probs)
    text = (tmp_path / "h" / "config.json").read_text().replace('"kernel_size": 5', '"kernel_size": 999')
    (tmp_path / "h" / "config.json").write_text(text)
    with pytest.raises(HeadArtifactError, match="kernel_size"):
        load_head(None, str(tmp_path / "h"))

    figures = frame_metrics(ty, probs, 0.5)
    assert figures["snore_f1"] == pytest.approx(frame_f1(ty, probs))
    assert figures["snore_seconds_true"] == pytest.approx(ty.sum() * 0.5)


def test_a_frame_depends_on_its_own_epoch_and_near_frames_only() -> None:
    """What lets the bedside service, epoch by epoch, score as batch does: no state across epochs."""
    x, y = _frames(30, 2, layers=3)
    model = train_frame_head(x, y, seed=0, epochs=1).model
    alone = frame_probs(model, x[:1])
    together = frame_probs(model, x)[:1]
    assert np.allclose(alone, together, atol=1e-6)
    changed = x[:1].copy()
    changed[0, 15:] = 0  # frames 15-19 changed: frames up to 12 (kernel 5: +-2 frames) keep their values
    assert np.allclose(frame_probs(model, changed)[0, :13], alone[0, :13], atol=1e-6)
    assert not np.allclose(frame_probs(model, changed)[0, 13:], alone[0, 13:])


def test_one_class_of_frames_cannot_train() -> None:
    x, y = _frames(10, 3)
    with pytest.raises(ValueError, match="of one kind"):
        train_frame_head(x, np.zeros_like(y), epochs=1)


def test_the_snore_index_reads_the_per_second_head_where_it_exists_else_the_epoch_estimate() -> None:
    night = pd.DataFrame({"prob_snore": [0.5, 1.0, np.nan], "snore_s_pred": [3.0, 0.0, np.nan]})
    shares, source = snore_shares(night, 0.4)
    assert source == SNORE_FROM_FRAMES and np.allclose(shares[:2], [0.1, 0.0]) and np.isnan(shares[2])
    older = night.drop(columns="snore_s_pred")  # a root without a snore head
    shares, source = snore_shares(older, 0.4)
    assert source == SNORE_FROM_EPOCHS and np.allclose(shares[:2], [0.2, 0.4])
    assert snore_shares(night.assign(snore_s_pred=None), 0.4)[1] == SNORE_FROM_EPOCHS
    assert snore_shares(older, None) == (None, None)  # no respiratory head either


def test_the_generator_makes_a_night_without_snoring_and_changes_nothing_else() -> None:
    from sleepsound.synth.hypnogram import make_night_plan

    kw = {"hours": 0.5, "seed": 3, "subject_index": 1, "cycle_minutes": 20, "ahi": 30.0}
    snoring = make_night_plan("s", **kw)
    quiet = make_night_plan("s", **kw, snoring=False)
    assert any(e.type == "Snore" for e in snoring.events)  # a snorer at AHI 30, or its snorts
    assert not any(e.type == "Snore" for e in quiet.events) and not quiet.breaths.snore.any()
    assert quiet.stages == snoring.stages
    assert [e for e in quiet.events if e.type != "Snore"] == [e for e in snoring.events if e.type != "Snore"]
    assert np.array_equal(quiet.breaths.onset_s, snoring.breaths.onset_s)


def test_snoring_bouts_join_consecutive_called_frames_across_epochs() -> None:
    from sleepsound.report.summaries import snoring_bouts

    first = [0.0] * 58 + [0.9, 0.7]  # the last second of epoch 0 ...
    second = [0.8] + [0.1] * 58 + [0.6]  # ... runs into epoch 1's first frame
    night = pd.DataFrame(
        {"start_s": [0.0, 30.0, 60.0, 120.0], "snore_frames": [first, second, None, [0.9] + [0.0] * 59]}
    )
    bouts = snoring_bouts(night, 0.5)
    assert [(b["start_s"], b["end_s"]) for b in bouts] == [(29.0, 30.5), (59.5, 60.0), (120.0, 120.5)]
    assert bouts[0]["mean_prob"] == pytest.approx(0.8)


def test_night_summaries_say_where_the_snore_index_comes_from() -> None:
    from sleepsound.report.outputs import night_breathing

    n = 120  # an hour, asleep throughout: 10 s of snoring in every epoch is 20 min per hour
    night = pd.DataFrame(
        {
            "stage_pred": ["NREM"] * n,
            "prob_apnea_hypopnea": [0.0] * n,
            "prob_snore": [1.0] * n,
            "snore_s_pred": [10.0] * n,
            "events_true": [None] * n,
        }
    )
    resp = {"events_per_event_epoch": 1.0, "snore_share_per_snore_epoch": 0.5}
    got = night_breathing(night, resp)  # type: ignore[arg-type]
    assert got["snore_source"] == SNORE_FROM_FRAMES and got["snore_index_estimated"] == pytest.approx(10.0 / 30 * 60)
    assert got["snore_index_epoch_estimated"] == pytest.approx(30.0)  # today's estimate, kept beside it
    older = night_breathing(night.drop(columns="snore_s_pred"), resp)  # type: ignore[arg-type]
    assert older["snore_source"] == SNORE_FROM_EPOCHS and older["snore_index_estimated"] == pytest.approx(30.0)


def test_synth_no_snoring_writes_nights_without_a_snore(tmp_path) -> None:
    import json

    from typer.testing import CliRunner

    from sleepsound.cli import app

    args = ["synth", str(tmp_path / "c"), "--subjects", "2", "--hours", "0.02", "--sample-rate", "8000"]
    out = CliRunner().invoke(app, [*args, "--layout", "plain", "--cycle-minutes", "1", "--no-snoring"])
    assert out.exit_code == 0, out.output
    cohort = json.loads((tmp_path / "c" / "cohort.json").read_text())
    assert cohort["params"]["snoring"] is False
    assert all(s["snorer"] is False and "Snore" not in s["event_counts"] for s in cohort["subjects"])
    tables = sorted((tmp_path / "c").rglob("*events*.csv"))
    assert len(tables) == 2 and all("Snore" not in t.read_text() for t in tables)
