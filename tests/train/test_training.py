"""Training: class weights, the schedule, learning a synthetic problem, determinism, subject splits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from sleepsound.core.config import Config, PreprocessConfig
from sleepsound.embed.cache import channel_configs, embeddings_path, epochs_path, shifted_path
from sleepsound.embed.cohort import embed_cohort
from sleepsound.embed.epochs import read_epochs, shift_pairs
from sleepsound.embed.preprocess import StreamingFilter, iter_epochs, normalise
from sleepsound.ingest.manifest import build_manifest
from sleepsound.labels.vocabulary import STAGES_3
from sleepsound.models.heads.attention import build_context
from sleepsound.predict.recordings import predict_recordings
from sleepsound.synth.writers import generate_cohort
from sleepsound.train.dataset import (
    load_embedded,
    model_inputs,
)
from sleepsound.train.fit import train_models
from sleepsound.train.loop import (
    TrainConfig,
    class_weights,
    constant_steps_for,
    encode_labels,
    lr_at,
    predict_proba,
    split_by_subject,
    train_head,
)

FAST = dict(lr=3e-3, min_lr=3e-4, epochs=6, batch_size=32, patience=None)


def synthetic(n: int = 500, t: int = 12, d: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-dependent Gaussian frames, imbalance 75/15/10 (like NREM/Wake/REM)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(3, size=n, p=[0.15, 0.75, 0.10])  # Wake, NREM, REM
    means = np.random.default_rng(99).normal(size=(3, d))
    x = rng.normal(size=(n, t, d)) + 0.5 * means[y][:, None, :]
    return x.astype(np.float16), y


def test_class_weights_are_inverse_frequency() -> None:
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights(y, 3)
    assert w == pytest.approx([10 / (3 * 6), 10 / (3 * 3), 10 / (3 * 1)])
    assert w * np.bincount(y) == pytest.approx(np.full(3, 10 / 3))  # each class weighs the same in all
    with pytest.warns(UserWarning, match=r"\[2\]"):
        w = class_weights(np.array([0, 0, 0, 1]), 3)
    assert w == pytest.approx([4 / (2 * 3), 4 / (2 * 1), 0.0])


def test_schedule_key_steps() -> None:
    cfg = TrainConfig()  # 5e-5 -> 2.5e-6, constant for a quarter of the steps
    total = 100
    assert constant_steps_for(total, cfg) == 25
    assert lr_at(0, total, cfg) == 5e-5
    assert lr_at(24, total, cfg) == 5e-5
    assert lr_at(25, total, cfg) == 5e-5  # the decay starts from lr ...
    assert lr_at(26, total, cfg) < 5e-5
    assert lr_at(62, total, cfg) == pytest.approx((5e-5 + 2.5e-6) / 2)  # ... halfway at (25 + 99) / 2
    assert lr_at(99, total, cfg) == pytest.approx(2.5e-6)  # ... and reaches min_lr at the last step
    paper = TrainConfig(constant_steps=6000)
    assert lr_at(5999, 24_000, paper) == 5e-5 and lr_at(6000, 24_000, paper) == 5e-5
    assert lr_at(23_999, 24_000, paper) == pytest.approx(2.5e-6)
    lrs = [lr_at(s, total, cfg) for s in range(total)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False)) and min(lrs) == pytest.approx(2.5e-6)
    assert lr_at(0, 1, cfg) == 5e-5  # one step: nothing to decay


def test_config_is_checked() -> None:
    with pytest.raises(ValueError):
        TrainConfig(min_lr=1e-3, lr=1e-4)
    with pytest.raises(ValueError):
        TrainConfig(constant_fraction=1.5)


def test_learns_and_beats_the_majority_baseline() -> None:
    x, y = synthetic(700)
    result = train_head(x[:500], y[:500], TrainConfig(**FAST))
    pred = predict_proba(result.model, x[500:]).argmax(axis=1)
    macro = f1_score(y[500:], pred, average="macro")
    baseline = f1_score(y[500:], np.full(200, np.bincount(y[:500]).argmax()), average="macro", labels=[0, 1, 2])
    assert baseline < 0.3
    assert macro > 0.8 and macro > baseline + 0.5
    assert result.class_weights == pytest.approx(class_weights(y[:500], 3))
    assert result.history[-1]["lr"] == pytest.approx(3e-4)  # the schedule ran to its end
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.model.meta["training"]["class_weights"] == pytest.approx(list(result.class_weights))


def test_mlp_head_and_90s_context_with_masks_train() -> None:
    x, y = synthetic(240, t=6, d=16)
    recs, epochs = np.repeat(["a", "b"], 120), np.tile(np.arange(120), 2)
    keep = np.ones(240, dtype=bool)
    keep[[5, 130]] = False  # dropped epochs leave gaps
    xc, mask = build_context(x[keep], recs[keep], epochs[keep], 3)
    result = train_head(xc, y[keep], TrainConfig(**{**FAST, "epochs": 2}), context=3, mask=mask)
    assert result.model.meta["context_epochs"] == 3
    proba = predict_proba(result.model, xc, batch_size=50, mask=mask)
    assert proba.dtype == np.float32 and proba.shape == (238, 3)
    assert np.allclose(proba.sum(axis=1), 1, atol=1e-5)
    mlp = train_head(x, [STAGES_3[i] for i in y], TrainConfig(**{**FAST, "epochs": 2}), head="mlp")
    assert type(mlp.model).__name__ == "MeanPoolingHead"
    assert predict_proba(mlp.model, x[:0]).shape == (0, 3)


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    x, y = synthetic(200)
    cfg = TrainConfig(**{**FAST, "epochs": 2})
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = train_head(x, y, cfg).model.state_dict()
    assert torch.equal(torch.rand(1), before)  # training forks the RNG, the caller's is left alone
    b = train_head(x, y, cfg).model.state_dict()
    c = train_head(x, y, TrainConfig(**{**FAST, "epochs": 2, "seed": 1})).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_early_stopping_keeps_the_best_epoch() -> None:
    x, y = synthetic(360)
    # Shuffled validation labels: nothing to learn there, so the score peaks early and stalls.
    y_val = np.random.default_rng(5).permutation(y[240:])
    seen: list[dict] = []
    result = train_head(
        x[:240],
        y[:240],
        TrainConfig(**{**FAST, "epochs": 8, "patience": 1}),
        val=(x[240:], y_val),
        progress=seen.append,
    )
    assert len(seen) == len(result.history) < 8  # stopped before the last epoch
    scores = [h["val_macro_f1"] for h in result.history]
    assert result.best_epoch == int(np.argmax(scores)) < len(scores) - 1
    assert len(scores) - 1 - result.best_epoch == 1  # exactly `patience` epochs past the best
    pred = predict_proba(result.model, x[240:]).argmax(axis=1)
    # The weights kept are the best epoch's, not the last one's.
    assert f1_score(y_val, pred, average="macro", labels=[0, 1, 2], zero_division=0) == pytest.approx(
        scores[result.best_epoch]
    )
    assert scores[result.best_epoch] != pytest.approx(scores[-1])
    no_stop = train_head(x[:240], y[:240], TrainConfig(**{**FAST, "epochs": 3}), val=(x[240:], y_val))
    assert len(no_stop.history) == 3  # patience None: every epoch runs


def test_labels_are_checked() -> None:
    assert encode_labels(["REM", "Wake"]).tolist() == [2, 0]
    with pytest.raises(ValueError, match="N2"):
        encode_labels(["Wake", "N2"])
    with pytest.raises(ValueError):
        encode_labels(np.array([0, 3]))
    with pytest.raises(ValueError):
        train_head(np.zeros((3, 2, 4), np.float16), [0, 1], TrainConfig())


def test_split_by_subject_is_deterministic_and_never_leaks() -> None:
    subjects = [f"s{i:03d}" for i in range(191)]
    per_epoch = np.repeat(subjects, 5)
    train, test = split_by_subject(per_epoch, 0.2, seed=7)
    assert len(test) == 38 and len(train) == 153  # the paper's split sizes
    assert not set(train) & set(test) and set(train) | set(test) == set(subjects)
    assert split_by_subject(per_epoch[::-1], 0.2, seed=7) == (train, test)  # order does not matter
    assert split_by_subject(per_epoch, 0.2, seed=8) != (train, test)
    # Epoch-level check: no subject's epochs on both sides.
    side = {s: "test" if s in test else "train" for s in subjects}
    assert len({(s, side[s]) for s in per_epoch}) == len(subjects)
    for fraction in (0.01, 0.99):
        tr, te = split_by_subject(["a", "b", "b"], fraction)
        assert len(tr) == 1 and len(te) == 1
    with pytest.raises(ValueError):
        split_by_subject(["only"], 0.2)


# ---------------------------------------------------------------- shifted windows, context, channels


RATE = 48_000
NIGHT_EPOCHS = 18  # of 30 s in each of the ``nights`` fixture's 9-min nights


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> list[dict]:
    """Four 9-min nights at 16 kHz (every stage within them); the last has no annotations."""
    out = tmp_path_factory.mktemp("shift-cohort")
    generate_cohort(out, n_subjects=4, hours=0.15, seed=5, sample_rate=16_000, part_seconds=540, cycle_minutes=9)
    unlabelled = sorted(p.name for p in (out / "APNEA_EDF").iterdir())[-1]
    (out / "APNEA_RML" / f"{unlabelled}.rml").unlink()
    rows = build_manifest(str(out), PreprocessConfig())
    assert [r["status"] for r in rows] == ["accepted"] * 4 and rows[-1]["label_source"] == "none"
    return rows


def _config(tiny_whisper: str, **training) -> Config:
    return Config.model_validate(
        {
            "backbone": {"name": tiny_whisper, "batch_size": 8},
            "training": {"lr": 3e-3, "min_lr": 3e-4, "epochs": 2, "batch_size": 16, "test_fraction": 0.34, **training},
        }
    )


@pytest.fixture(scope="module")
def embedded_root(nights, tiny_whisper, tmp_path_factory) -> str:
    """The nights embedded with shifted windows of all three stages (the default)."""
    root = str(tmp_path_factory.mktemp("shift-root"))
    stats = embed_cohort(nights, root, _config(tiny_whisper), use_ray=False)
    assert not stats.failed and stats.shifted > 0
    return root


def test_shifted_windows_equal_cutting_the_whole_filtered_stream() -> None:
    cfg = PreprocessConfig()
    x = np.random.default_rng(4).standard_normal(RATE * 150).astype(np.float32)
    x[RATE * 95 : RATE * 107] = 0.0  # 12 s of silence: epoch 3 is invalid
    blocks = [x[i : i + RATE * 60] for i in range(0, len(x), RATE * 60)]
    out = list(iter_epochs(blocks, RATE, cfg, shift_after={0, 1, 2, 3}))
    # Only pairs of valid epochs, each window yielded just before the pair's second epoch.
    assert [(e.index, e.offset_s) for e in out] == [(0, 0), (0, 15), (1, 0), (1, 15), (2, 0), (3, 0), (4, 0)]
    whole = StreamingFilter(RATE, cfg).process(x, last=True)  # the night at once: no blocks, no carried state
    epoch, half = 480_000, 240_000
    for e in out:
        start = e.index * epoch + (half if e.offset_s else 0)
        if e.quality.valid:
            np.testing.assert_allclose(e.audio, normalise(whole[start : start + epoch]), atol=2e-3)
    plain = list(iter_epochs(blocks, RATE, cfg))
    assert [e.index for e in plain] == [0, 1, 2, 3, 4]  # asking for nothing changes nothing
    for a, b in zip(plain, [e for e in out if not e.offset_s], strict=True):
        np.testing.assert_array_equal(a.audio, b.audio)
    assert [e.index for e in iter_epochs(blocks, RATE, cfg, shift_after={1}) if e.offset_s] == [1]


def test_shifted_rows_only_between_same_stage_pairs_of_enabled_classes(nights) -> None:
    cfg = PreprocessConfig()
    assert shift_pairs(["Wake", "Wake", "NREM", "NREM", None, None, "REM", "REM"], {"Wake", "REM"}) == {0, 6}
    row = nights[0]
    rows = list(read_epochs(row, cfg, shift_classes=("Wake", "REM")))
    epochs = [r for r in rows if r["kind"] == "epoch"]
    shifted = [r for r in rows if r["kind"] == "shifted"]
    stage3 = [e["stage3"] for e in epochs]
    want = {
        i
        for i in range(len(epochs) - 1)
        if stage3[i] == stage3[i + 1] in ("Wake", "REM") and epochs[i]["valid"] and epochs[i + 1]["valid"]
    }
    assert want and {r["epoch_index"] for r in shifted} == want
    assert all(r["offset_s"] == 15.0 and r["start_s"] == r["epoch_index"] * 30 + 15 for r in shifted)
    assert all(r["stage3"] == stage3[r["epoch_index"]] and r["resp_label"] is not None for r in shifted)
    only = list(read_epochs(row, cfg, shift_classes=("Wake", "REM"), epochs=False))
    assert [r["epoch_index"] for r in only] == [r["epoch_index"] for r in shifted]
    for a, b in zip(only, shifted, strict=True):
        np.testing.assert_array_equal(a["audio"], b["audio"])
    assert not any(r["kind"] == "shifted" for r in read_epochs(nights[-1], cfg, shift_classes=("Wake",)))


def test_cache_embeds_only_missing_shifted_windows(nights, tiny_whisper, tmp_path) -> None:
    root = str(tmp_path / "root")
    labelled = [r for r in nights if r["label_source"] != "none"]
    first = embed_cohort(nights, root, _config(tiny_whisper, shift_augment=False), use_ray=False)
    assert first.epochs == 4 * NIGHT_EPOCHS and first.shifted == 0
    cfg = _config(tiny_whisper, shift_classes=["REM"])
    assert not any(Path(shifted_path(root, cfg, r["recording_id"], r["sha256"], "REM")).exists() for r in nights)
    kept = {p: p.stat().st_mtime_ns for p in Path(root).rglob("*.parquet")}

    rem = embed_cohort(nights, root, cfg, use_ray=False)  # augmentation turned on: shifted windows only
    assert rem.epochs == 0 and rem.shifted > 0 and sorted(rem.embedded) == sorted(r["recording_id"] for r in labelled)
    assert rem.cached == [nights[-1]["recording_id"]]  # unlabelled: no shifted windows to make
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # epochs and their embeddings untouched
    table = pd.read_parquet(shifted_path(root, cfg, labelled[0]["recording_id"], labelled[0]["sha256"], "REM"))
    assert set(table["stage3"]) <= {"REM"} and (table["offset_s"] == 15).all()

    every = _config(tiny_whisper)
    rem_files = {p: p.stat().st_mtime_ns for p in Path(root).rglob("*.shifted-REM.parquet")}
    more = embed_cohort(nights, root, every, use_ray=False)  # Wake and NREM only
    assert more.epochs == 0 and more.shifted > rem.shifted
    assert {p: p.stat().st_mtime_ns for p in rem_files} == rem_files
    for stats in (
        embed_cohort(nights, root, every, use_ray=False),
        embed_cohort(nights, root, _config(tiny_whisper, shift_augment=False), use_ray=False),
    ):
        assert stats.embedded == [] and stats.epochs == stats.shifted == 0 and len(stats.cached) == 4


def test_training_uses_shifted_windows_of_training_subjects_only(nights, embedded_root, tiny_whisper) -> None:
    cfg = _config(tiny_whisper)
    manifest = pd.DataFrame(nights)
    model = train_models(embedded_root, cfg, "shift", manifest)
    train, test = set(model["train_subjects"]), set(model["test_subjects"])
    assert len(test) == 1 and nights[-1]["subject_id"] not in train | test

    def shifted_rows(subjects: set[str]) -> int:
        return sum(
            len(pd.read_parquet(shifted_path(embedded_root, cfg, r["recording_id"], r["sha256"], s)))
            for r in nights
            if r["subject_id"] in subjects
            for s in ("Wake", "NREM", "REM")
        )

    assert shifted_rows(test) > 0  # the test subject's windows exist in the cache ...
    assert model["train_shifted"] == shifted_rows(train) > 0  # ... and only the training subjects' are used
    data = load_embedded(embedded_root, cfg, manifest[manifest["subject_id"].isin(train)], shifted=True)
    assert set(data.epochs["subject_id"]) == train and data.is_shifted.sum() == model["train_shifted"]
    assert model["train_epochs"] == int((~data.is_shifted).sum())
    plain = train_models(embedded_root, _config(tiny_whisper, shift_augment=False), "plain", manifest)
    assert plain["train_shifted"] == 0 and plain["train_epochs"] == model["train_epochs"]


def test_90s_context_trains_with_shifted_windows_and_predicts(nights, embedded_root, tiny_whisper, tmp_path) -> None:
    cfg = _config(tiny_whisper, context_epochs=3)
    manifest = pd.DataFrame(nights)
    data = load_embedded(embedded_root, cfg, manifest.iloc[:1], shifted=True)
    x, mask = model_inputs(data, 3)
    t = data.features.shape[1]
    rows = data.epochs.reset_index(drop=True)
    where = {(bool(s), int(i)): n for n, (s, i) in enumerate(zip(data.is_shifted, rows["epoch_index"], strict=True))}
    for n, (is_shifted, i) in enumerate(zip(data.is_shifted, rows["epoch_index"], strict=True)):
        before = where.get((bool(is_shifted), int(i) - 1))  # a shifted window's neighbours are shifted windows
        assert mask[n, :t].all() == (before is not None) and mask[n, t : 2 * t].all()
        if before is not None:
            np.testing.assert_array_equal(x[n, :t], data.features[before])
    model = train_models(embedded_root, cfg, "ctx3", manifest)
    assert model["train_shifted"] > 0
    out = predict_recordings(embedded_root, cfg, "ctx3", model, manifest)
    preds = pd.read_parquet(out)
    assert len(preds) == 4 * NIGHT_EPOCHS and not preds.duplicated(["recording_id", "epoch_index"]).any()
    assert preds["stage_pred"].notna().all()


def test_both_channels_concatenate_each_epochs_embeddings(nights, embedded_root, tiny_whisper) -> None:
    both = _config(tiny_whisper).model_copy(update={"preprocess": PreprocessConfig(channel="both")})
    mic, tracheal = channel_configs(both)
    assert (mic.preprocess.channel, tracheal.preprocess.channel) == ("Mic", "Tracheal")
    assert mic.preprocess.fingerprint() != tracheal.preprocess.fingerprint()
    stats = embed_cohort(nights, embedded_root, both, use_ray=False)  # Mic is cached: Tracheal only
    assert stats.epochs == 4 * NIGHT_EPOCHS and not stats.failed
    for row in nights:
        for single in (mic, tracheal):
            assert Path(epochs_path(embedded_root, single, row["recording_id"])).exists()
            assert Path(embeddings_path(embedded_root, single, row["recording_id"], row["sha256"])).exists()
    manifest = pd.DataFrame(nights)
    a = load_embedded(embedded_root, mic, manifest, shifted=True)
    b = load_embedded(embedded_root, tracheal, manifest, shifted=True)
    joined = load_embedded(embedded_root, both, manifest, shifted=True)
    assert joined.features.shape[2] == a.features.shape[2] + b.features.shape[2]
    assert joined.features.shape[:2] == (len(joined.epochs), a.features.shape[1])
    key = ["recording_id", "epoch_index", "offset_s"]
    common = a.epochs[key].merge(b.epochs[key], on=key)
    assert len(joined.epochs) == len(common)
    first = joined.epochs.iloc[0]
    n_a = int(
        (
            (a.epochs["recording_id"] == first["recording_id"])
            & (a.epochs["epoch_index"] == first["epoch_index"])
            & (a.epochs["offset_s"] == first["offset_s"])
        )
        .to_numpy()
        .argmax()
    )
    np.testing.assert_array_equal(joined.features[0, :, : a.features.shape[2]], a.features[n_a])
    model = train_models(embedded_root, both, "both", manifest)
    assert len(model["train_subjects"]) == 2


def test_every_task_gets_a_head_on_one_split_and_predictions_carry_them(nights, embedded_root, tiny_whisper) -> None:
    """stage3, stage5 and resp heads share the split; predictions hold each head's labels, the
    scored side, and the stage3 head's attention weights over its input frames."""
    import json

    from sleepsound.registry import store as model_store

    cfg = _config(tiny_whisper, context_epochs=3)
    manifest = pd.DataFrame(nights)
    model = train_models(embedded_root, cfg, "tasks", manifest)
    assert set(model["heads"]) == {"stage3", "stage5", "resp", "snore"} and model["skipped"] == {}
    assert model["val_subjects"] == []  # 2 training subjects: too few to spare one
    for name, head in model["heads"].items():
        lineage = json.loads(Path(head["model_dir"], "lineage.json").read_text())
        assert lineage["task"] == name and lineage["train_subjects"] == model["train_subjects"]
        assert lineage["test_subjects"] == model["test_subjects"] and lineage["created"]
        assert head["version"] in [v["version"] for v in model_store.versions(embedded_root, name)]
    resp = model["heads"]["resp"]
    assert resp["events_per_event_epoch"] > 0 and 0 < resp["snore_share_per_snore_epoch"] <= 1

    preds = pd.read_parquet(predict_recordings(embedded_root, cfg, "tasks", model, manifest))
    valid = preds["stage_pred"].notna()
    assert set(preds.loc[valid, "stage5_pred"]) <= {"W", "N1", "N2", "N3", "R"}
    assert set(preds.loc[valid, "resp_pred"]) <= {"none", "snore", "apnea_hypopnea"}
    assert preds.loc[valid, ["prob_snore", "prob_apnea_hypopnea"]].notna().all().all()
    weights = np.stack(preds.loc[valid, "attention"].to_numpy())
    assert weights.shape[1] == 3 * 60 and np.allclose(weights.sum(axis=1), 1.0, atol=1e-4)
    unlabelled = preds["split"] == "unlabelled"
    assert preds.loc[unlabelled, ["stage_true", "resp_true", "events_true"]].isna().all().all()
    labelled = preds[~unlabelled]
    assert labelled["resp_true"].notna().all() and labelled["events_true"].notna().all()
    assert set(labelled["split"]) == {"train", "test"}
    # the per-second snoring head: each valid epoch's 60 frames, its seconds called snoring, the frames' truth
    frames = np.stack(preds.loc[valid, "snore_frames"].to_numpy())
    assert frames.shape[1] == 60 and ((frames >= 0) & (frames <= 1)).all()
    called = (frames > 0.5).sum(axis=1) * 0.5
    assert np.allclose(preds.loc[valid, "snore_s_pred"].to_numpy(float), called)
    truth = np.stack(preds.loc[valid & ~unlabelled, "snore_frames_true"].to_numpy())
    scored_s = labelled.loc[valid, "snore_frac_true"].to_numpy(float) * 30
    assert truth.shape[1] == 60 and truth.any() and (scored_s[truth.any(axis=1)] > 0.25).all()
    assert np.corrcoef(truth.sum(axis=1) * 0.5, scored_s)[0, 1] > 0.9  # frames: the events' seconds, to a frame
    assert preds.loc[unlabelled, "snore_frames_true"].isna().all()
    snore = json.loads(Path(model["heads"]["snore"]["model_dir"], "config.json").read_text())
    assert snore["head_class"] == "FrameHead" and snore["classes"] == ["none", "snore"]
    # the default clip epochs (generated bedroom sounds, no snoring) joined its training frames only
    clips = json.loads(Path(model["heads"]["snore"]["model_dir"], "lineage.json").read_text())["snore_clips"]
    n_train = int((valid & (preds["split"] == "train")).sum())  # the training subjects' valid epochs
    assert clips["epochs"] == max(1, round(0.1 * n_train)) and clips["sources"][0]["source"] == "generated"
    assert clips["sources"][0]["frames"] == {"snoring": 0, "no_snoring": 60 * clips["epochs"]}


def test_heads_without_a_snore_head_fall_back_to_the_per_epoch_snore_index(
    nights, embedded_root, tiny_whisper, tmp_path
) -> None:
    """Heads trained before the per-second snoring head (targets without ``snore``): the predictions'
    per-second columns are null, no snoring table is written, and the summaries say the snore index
    is the per-epoch estimate; with the head, the same nights' summaries say per-second."""
    import shutil

    from sleepsound.ingest.manifest import write_manifest
    from sleepsound.report.outputs import read_summaries, write_run_outputs
    from sleepsound.report.summaries import SNORE_FROM_EPOCHS, SNORE_FROM_FRAMES

    root = str(tmp_path / "root")  # a copy with its manifest written, as a scoring run's root has
    shutil.copytree(embedded_root, root)
    write_manifest(root, nights)
    manifest = pd.DataFrame(nights)
    for targets, run_id, source in (
        (["stage3", "resp"], "older", SNORE_FROM_EPOCHS),
        (["stage3", "resp", "snore"], "newer", SNORE_FROM_FRAMES),
    ):
        cfg = _config(tiny_whisper, targets=targets, shift_augment=False)
        model = train_models(root, cfg, run_id, manifest)
        preds = pd.read_parquet(predict_recordings(root, cfg, run_id, model, manifest))
        assert preds["snore_s_pred"].notna().any() == ("snore" in targets)
        reported = write_run_outputs(root, run_id, model, {"run_id": run_id}, cfg)
        summaries = read_summaries(reported["summaries"])
        predicted = summaries[summaries["source"] == "predicted"]
        assert predicted["snore_source"].tolist() == [source] * len(nights)
        assert "snore_index" in predicted  # NaN where the tiny heads predict no sleep: per hour of sleep
        assert Path(root, "runs", run_id, "snoring").exists() == ("snore" in targets)
        if "snore" in targets:  # one dataset, the id from the folders (a column too made pandas refuse it)
            bouts = pd.read_parquet(Path(root, "runs", run_id, "snoring"))
            assert {"recording_id", "start_s", "end_s", "mean_prob"} <= set(bouts.columns)


def test_a_task_without_labels_is_skipped_with_its_reason(nights, embedded_root, tiny_whisper) -> None:
    """Nights scored in 3 classes only: no 5-class head, and the run says why; stage3 is still required."""
    from sleepsound.labels.targets import TARGETS
    from sleepsound.train.fit import NotTrainable, _train_target

    cfg = _config(tiny_whisper)
    data = load_embedded(embedded_root, cfg, pd.DataFrame(nights[:2]))
    data.epochs["stage5"] = None
    with pytest.raises(NotTrainable, match="stage5: the training subjects' epochs carry 0"):
        _train_target(
            embedded_root,
            cfg,
            "x",
            pd.DataFrame(nights),
            {"train_subjects": [], "val_subjects": [], "test_subjects": []},
            TARGETS["stage5"],
            data,
            data.features,
            None,
            None,
        )


def test_a_clip_folder_that_cannot_be_read_stops_the_snore_head_rather_than_skipping_it(
    nights, embedded_root, tiny_whisper, tmp_path
) -> None:
    from sleepsound.labels.targets import TARGETS
    from sleepsound.train.clip_epochs import ClipSourceError
    from sleepsound.train.fit import _train_frames

    cfg = _config(tiny_whisper, snore_clips=["generated", str(tmp_path / "no-such-clips")])
    data = load_embedded(embedded_root, cfg, pd.DataFrame(nights[:2]))
    split = {"train_subjects": [], "val_subjects": [], "test_subjects": []}
    with pytest.raises(ClipSourceError, match="no-such-clips is not a folder"):
        _train_frames(embedded_root, cfg, "x", pd.DataFrame(nights), split, TARGETS["snore"], data, None)


def test_validation_subjects_come_from_the_training_side() -> None:
    from sleepsound.train.fit import subject_split

    manifest = pd.DataFrame(
        {
            "recording_id": [f"r{i}" for i in range(10)],
            "subject_id": [f"s{i}" for i in range(10)],
            "status": "accepted",
            "label_source": "rml",
        }
    )
    split = subject_split(Config.model_validate({"training": {"val_fraction": 0.2}}), manifest)
    assert len(split["test_subjects"]) == 2 and len(split["val_subjects"]) == 2 and len(split["train_subjects"]) == 6
    assert not set(split["val_subjects"]) & (set(split["test_subjects"]) | set(split["train_subjects"]))
    assert subject_split(Config.model_validate({"training": {"val_fraction": 0.2}}), manifest) == split
    none = subject_split(Config.model_validate({"training": {"val_fraction": 0}}), manifest)
    assert none["val_subjects"] == [] and none["test_subjects"] == split["test_subjects"]


def test_kfold_cross_validation_tests_every_labelled_subject_once(nights, embedded_root, tiny_whisper) -> None:
    from typer.testing import CliRunner

    from sleepsound.cli import app
    from sleepsound.ingest.manifest import write_manifest
    from sleepsound.train.cross_validation import kfold_subjects

    folds = kfold_subjects(["c", "a", "b", "d", "e"], 2, seed=3)
    assert sorted(sum(folds, [])) == ["a", "b", "c", "d", "e"] and [len(f) for f in folds] == [3, 2]
    assert kfold_subjects(["e", "d", "c", "b", "a"], 2, seed=3) == folds
    with pytest.raises(ValueError, match="k-fold"):
        kfold_subjects(["a", "b"], 3)

    write_manifest(embedded_root, nights)
    out = CliRunner().invoke(
        app,
        [
            "cv",
            "--root",
            embedded_root,
            "--folds",
            "3",
            "--json",
            "--set",
            f"backbone.name={tiny_whisper}",
            "--set",
            "training.epochs=1",
            "--set",
            "training.tasks=[stage3, resp]",
        ],
    )
    assert out.exit_code == 0, out.output
    result = json.loads(out.output.strip().splitlines()[-1], parse_constant=_no_constants)  # strict: no NaN
    labelled = sorted(r["subject_id"] for r in nights if r["label_source"] != "none")
    assert sorted(sum(result["fold_subjects"], [])) == labelled
    stage3 = result["tasks"]["stage3"]
    assert [f["fold"] for f in stage3["per_fold"]] == [0, 1, 2]
    assert stage3["pooled"]["n_epochs"] == sum(f["n_epochs"] for f in stage3["per_fold"]) > 0
    assert 0 <= stage3["macro_f1_mean"] <= 1 and "resp" in result["tasks"] and "stage5" not in result["tasks"]
    bad = CliRunner().invoke(app, ["cv", "--root", embedded_root, "--folds", "9"])
    assert bad.exit_code == 2 and "k-fold" in bad.output


def test_promotion_scores_both_models_on_the_fixed_evaluation_set(nights, tiny_whisper, tmp_path) -> None:
    """First model: champion. A retrained twin (same data, same seed: the same weights) scores the
    same on the same recorded evaluation subjects, so it does not clear the margin. (The rule itself,
    worse and better challengers included, is tested in test_model_store.)"""
    from sleepsound.registry import store as model_store
    from sleepsound.registry.evaluation_set import evaluation_set_path
    from sleepsound.registry.promotion import decide_promotions, evaluate_on_subjects

    root = str(tmp_path / "root")
    cfg = _config(tiny_whisper, shift_augment=False, tasks=["stage3", "resp"], epochs=2)
    embed_cohort(nights, root, cfg, use_ray=False)
    manifest = pd.DataFrame(nights)
    first = train_models(root, cfg, "first", manifest)
    recorded = json.loads(Path(evaluation_set_path(root)).read_text())["subjects"]
    assert recorded == first["test_subjects"] and len(recorded) == 1
    decided = decide_promotions(root, first, nights)
    assert decided["stage3"]["promoted"] and decided["resp"]["promoted"]
    # Its own figures (a nightly run's report writes none for the heads it trains): the promotion's.
    own = model_store.show(root, "stage3", first["version"])["metrics"]
    assert own["run_id"] == "first" and own["macro_f1"] == pytest.approx(decided["stage3"]["challenger"]["score"])
    assert model_store.champion_version(root, "stage3") == first["version"]

    twin = train_models(root, cfg, "twin", manifest)
    assert twin["test_subjects"] == recorded and twin["version"] != first["version"]
    again = decide_promotions(root, twin, nights, margin=0.01)["stage3"]
    assert not again["promoted"] and again["champion"]["version"] == first["version"]
    assert again["challenger"]["score"] == pytest.approx(again["champion"]["score"])
    assert again["champion"]["score"] == pytest.approx(decided["stage3"]["challenger"]["score"])
    assert model_store.champion_version(root, "stage3") == first["version"]
    direct = evaluate_on_subjects(root, "stage3", first["model_dir"], nights, recorded)
    assert direct["n_epochs"] > 0 and direct["macro_f1"] == pytest.approx(again["champion"]["score"])
    log = json.loads(Path(root, "models", "stage3", "promotions.json").read_text())
    assert [d["promoted"] for d in log] == [True, False]


def test_the_evaluation_set_is_drawn_once_and_explains_when_it_cannot_serve(tmp_path) -> None:
    from sleepsound.registry.evaluation_set import evaluation_subjects

    root = str(tmp_path / "root")
    cfg = Config.model_validate({"training": {"test_fraction": 0.2}})
    labelled = pd.DataFrame({"subject_id": [f"s{i}" for i in range(10)]})
    first = evaluation_subjects(root, cfg, labelled)
    assert len(first) == 2
    grown = pd.DataFrame({"subject_id": [f"s{i}" for i in range(14)]})
    assert evaluation_subjects(root, cfg, grown) == first  # new subjects only join training
    with pytest.raises(ValueError, match="none of the evaluation subjects"):
        evaluation_subjects(root, cfg, pd.DataFrame({"subject_id": ["x1", "x2"]}))
    with pytest.raises(ValueError, match="nothing left to train on"):
        evaluation_subjects(root, cfg, pd.DataFrame({"subject_id": first}))


def test_whether_nights_can_train_is_known_before_embedding_and_asking_writes_nothing(tmp_path) -> None:
    from sleepsound.registry.evaluation_set import CannotTrain, check_trainable, evaluation_subjects

    root = tmp_path / "root"
    with pytest.raises(CannotTrain, match="at least 2 subjects; found 1"):
        check_trainable(str(root), pd.DataFrame({"subject_id": ["s1"]}))
    check_trainable(str(root), pd.DataFrame({"subject_id": ["s1", "s2"]}))
    assert not root.exists()  # asking drew no evaluation set
    cfg = Config.model_validate({"training": {"test_fraction": 0.5}})
    drawn = evaluation_subjects(str(root), cfg, pd.DataFrame({"subject_id": ["s1", "s2", "s3", "s4"]}))
    with pytest.raises(CannotTrain, match="add their nights to the source, or delete that file"):
        check_trainable(str(root), pd.DataFrame({"subject_id": sorted({"s1", "s2", "s3", "s4"} - set(drawn))}))


def _no_constants(name: str) -> None:
    """``json.loads``' hook for NaN and Infinity, which jq and JSON.parse refuse."""
    raise ValueError(f"not JSON: {name}")
