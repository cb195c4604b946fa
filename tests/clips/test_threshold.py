"""The decision threshold: calibrated out of fold for a target recall, stored in the model's config.json,
and used by every reader of the model (evaluate, score, the service's description, cross-validation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from sleepsound.clips.cli import clips_app
from sleepsound.clips.evaluate import ClipClassifier
from sleepsound.clips.serve import describe
from sleepsound.clips.train import calibrate_threshold, decide
from sleepsound.models.heads.artifacts import HeadArtifactError
from tests.clips.test_clips import make_dataset

COMMON = ["--backbone", "mel", "--block-size", "4", "--folds", "2", "--head", "mlp", "--max-epochs", "4", "--json"]


def test_the_threshold_is_the_highest_that_keeps_the_target_recall_and_decides_the_positive_class() -> None:
    p_pos = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.55, 0.3, 0.2, 0.85, 0.65])
    truth = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    proba = np.stack([1 - p_pos, p_pos], axis=1)
    full = calibrate_threshold(proba, truth, 1, 1.0)
    assert full["threshold"] == 0.6 and full["validation_recall"] == 1.0  # every positive kept
    assert full["validation_false_alarm"] == pytest.approx(2 / 5)  # 0.85 and 0.65 reach 0.6
    four_in_five = calibrate_threshold(proba, truth, 1, 0.8)
    assert four_in_five["threshold"] == 0.7 and four_in_five["validation_recall"] == 0.8
    assert four_in_five["validation_false_alarm"] == pytest.approx(1 / 5)
    picked = decide(proba, {**four_in_five, "positive_index": 1})
    assert picked.tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 1, 0]  # 0.6 and 0.55 fall below 0.7: not snoring
    assert decide(proba, None).tolist() == proba.argmax(axis=1).tolist()
    low = decide(proba, {"positive_index": 1, "threshold": 0.25})
    assert low.tolist() == (p_pos >= 0.25).astype(int).tolist()  # below 0.5 too: the threshold, not argmax
    with pytest.raises(ValueError, match="target recall"):
        calibrate_threshold(proba, truth, 1, 1.5)
    with pytest.raises(ValueError, match="positive class and of the others"):
        calibrate_threshold(proba[:5], truth[:5], 1, 0.9)


def test_a_calibrated_threshold_round_trips_through_config_json_and_is_used_by_evaluate_and_score(
    tmp_path: Path,
) -> None:
    app = typer.Typer()
    app.add_typer(clips_app, name="clips")
    data = make_dataset(tmp_path / "data", per_label=16)
    model = tmp_path / "model"
    res = CliRunner().invoke(
        app,
        ["clips", "train", "--data", str(data), "--out", str(model), "--test-fraction", "0.25"]
        + ["--target-recall", "0.9", "--cache", str(tmp_path / "cache"), *COMMON],
    )
    assert res.exit_code == 0, res.output
    config_path = model / "config.json"
    config = json.loads(config_path.read_text())
    decision = config["extra"]["clips"]["decision"]
    assert decision["positive"] == "snoring" and decision["target_recall"] == 0.9
    assert 0 <= decision["threshold"] <= 1 and decision["validation_recall"] >= 0.9
    assert decision["validation_n"]["positive"] == 12  # the 3 training blocks of 4 snores, out of fold
    clf = ClipClassifier(model)
    assert clf.decision is not None and clf.decision["threshold"] == decision["threshold"]
    assert describe(clf, model)["threshold"] == {"snoring": decision["threshold"]}

    def evaluate() -> dict:
        out = CliRunner().invoke(app, ["clips", "evaluate", "--model", str(model), "--data", str(data), "--json"])
        assert out.exit_code == 0, out.output
        return json.loads(out.stdout)

    def score() -> list[str]:
        out = CliRunner().invoke(app, ["clips", "score", "--model", str(model), str(data / "snoring" / "1_3.wav")])
        assert out.exit_code == 0, out.output
        return out.stdout

    ds = clf.load(data)
    p = clf.proba(ds.audio, ds.lengths)[:, 1]
    calls = evaluate()["confusion"]
    assert sum(row[1] for row in calls) == int((p >= decision["threshold"]).sum())  # the stored threshold decides

    config["extra"]["clips"]["decision"]["threshold"] = 1.0  # now nothing reaches it: never snoring
    config_path.write_text(json.dumps(config))
    assert all(row[1] == 0 for row in evaluate()["confusion"])
    assert ": no_snoring (" in score()
    config["extra"]["clips"]["decision"]["threshold"] = 0.0  # everything reaches it: always snoring
    config_path.write_text(json.dumps(config))
    assert all(row[0] == 0 for row in evaluate()["confusion"])
    assert ": snoring (" in score()

    config["extra"]["clips"]["decision"]["threshold"] = 1.5
    config_path.write_text(json.dumps(config))
    with pytest.raises(HeadArtifactError, match="decision threshold"):
        ClipClassifier(model)
    config["extra"]["clips"]["decision"] = None  # a model saved before thresholds: argmax
    config_path.write_text(json.dumps(config))
    clf = ClipClassifier(model)
    assert clf.decision is None and describe(clf, model)["threshold"] is None
    assert sum(row[1] for row in evaluate()["confusion"]) == int((p >= 0.5).sum())
