"""Versioned heads under a storage root: listing, showing, the champion pointer, and the CLI."""

import json

import pytest
from typer.testing import CliRunner

from sleepsound.core.storage import join, open_root, write_json
from sleepsound.models.heads.artifacts import build_head, save_head
from sleepsound.registry import store as model_store


def _store(root: str, version: str, created: str, macro_f1: float | None) -> None:
    fs, root_path = open_root(root)
    path = model_store.model_dir(root_path, "stage3", version)
    save_head(build_head("attention", dim=8, n_classes=3), fs, path, context=3)
    lineage = {"run_id": version.split("-")[0], "created": created, "train_subjects": ["a", "b"], "train_epochs": 40}
    write_json(fs, join(path, "lineage.json"), lineage)
    if macro_f1 is not None:
        figures = {"macro_f1": macro_f1, "kappa": 0.1, "accuracy": 0.5, "run_id": lineage["run_id"]}
        model_store.write_metrics(root, "stage3", version, figures)


def test_versions_champion_and_show(tmp_path):
    root = str(tmp_path / "root")
    assert model_store.targets(root) == [] and model_store.versions(root, "stage3") == []
    _store(root, "r2-bbbb", "2026-11-02T00:00:00", 0.61)
    _store(root, "r1-aaaa", "2026-11-01T00:00:00", None)
    (tmp_path / "root" / "models" / "stage3" / "r3-half-written").mkdir()  # no config.json: incomplete
    listed = model_store.versions(root, "stage3")
    assert [v["version"] for v in listed] == ["r1-aaaa", "r2-bbbb"]
    assert listed[1]["macro_f1"] == 0.61 and listed[0]["macro_f1"] is None and listed[1]["context_epochs"] == 3

    with pytest.raises(model_store.ModelNotFound, match="no champion"):
        model_store.show(root, "stage3")
    with pytest.raises(model_store.ModelNotFound):
        model_store.set_champion(root, "stage3", "r3-half-written", "test")
    model_store.set_champion(root, "stage3", "r1-aaaa", "first")
    record = model_store.set_champion(root, "stage3", "r2-bbbb", "better macro-F1")
    assert record["previous"] == "r1-aaaa" and model_store.champion_version(root, "stage3") == "r2-bbbb"
    shown = model_store.show(root, "stage3")
    assert shown["version"] == "r2-bbbb" and shown["champion"] and shown["metrics"]["macro_f1"] == 0.61
    assert shown["config"]["head_class"] == "AttentionPoolingHead" and shown["lineage"]["train_epochs"] == 40


def test_only_the_training_run_writes_a_models_own_metrics(tmp_path):
    """Issue 15: a score run overwrote the champion's metrics.json with other nights' figures."""
    root = str(tmp_path / "root")
    _store(root, "r1-aaaa", "2026-11-01T00:00:00", 0.5)
    path = tmp_path / "root" / "models" / "stage3" / "r1-aaaa" / "metrics.json"
    before = path.read_bytes()
    for run in ("score-20261102T000000Z", None):
        with pytest.raises(model_store.NotTheTrainingRun, match="belongs to the run that trained stage3/r1-aaaa"):
            model_store.write_metrics(root, "stage3", "r1-aaaa", {"macro_f1": 0.09, "run_id": run})
    assert path.read_bytes() == before
    model_store.write_metrics(root, "stage3", "r1-aaaa", {"macro_f1": 0.52, "run_id": "r1"})  # its rerun may
    assert json.loads(path.read_text())["macro_f1"] == 0.52


def test_models_cli(tmp_path):
    from sleepsound.cli import app

    root = str(tmp_path / "root")
    _store(root, "r1-aaaa", "2026-11-01T00:00:00", 0.5)
    model_store.set_champion(root, "stage3", "r1-aaaa", "first")
    listed = CliRunner().invoke(app, ["models", "list", "--root", root, "--json"])
    assert listed.exit_code == 0 and json.loads(listed.output)[0]["champion"] is True
    table = CliRunner().invoke(app, ["models", "list", "--root", root])
    assert "r1-aaaa" in table.output and "*" in table.output
    shown = CliRunner().invoke(app, ["models", "show", "--root", root])
    assert shown.exit_code == 0 and json.loads(shown.output)["version"] == "r1-aaaa"
    missing = CliRunner().invoke(app, ["models", "show", "nope", "--root", root])
    assert missing.exit_code == 2
    typo = CliRunner().invoke(app, ["models", "list", "--root", str(tmp_path / "rot")])
    assert typo.exit_code == 2 and "no storage root at" in typo.stderr and typo.stdout == ""
    task = CliRunner().invoke(app, ["models", "list", "--root", root, "--task", "stage9"])
    # one line, however long the path: an error wrapped at 80 columns breaks the path it names
    assert task.exit_code == 2 and f"no models of task 'stage9' under {root} (tasks here: stage3)\n" in task.stderr


def test_a_worse_challenger_is_refused_and_every_decision_is_logged(tmp_path):
    root = str(tmp_path / "root")
    for version in ("r1-aaaa", "r2-bbbb", "r3-cccc", "r4-dddd"):
        _store(root, version, "2026-11-01T00:00:00", None)
    first = model_store.promote_if_better(root, "stage3", "r1-aaaa", 0.50, None)
    assert first["promoted"] and first["reason"] == "no champion yet"
    worse = model_store.promote_if_better(root, "stage3", "r2-bbbb", 0.48, 0.50, margin=0.01)
    assert not worse["promoted"] and "does not beat" in worse["reason"]
    assert model_store.champion_version(root, "stage3") == "r1-aaaa"
    close = model_store.promote_if_better(root, "stage3", "r3-cccc", 0.505, 0.50, margin=0.01)
    assert not close["promoted"]  # better, but within the margin
    better = model_store.promote_if_better(root, "stage3", "r4-dddd", 0.53, 0.50, margin=0.01)
    assert better["promoted"] and model_store.champion_version(root, "stage3") == "r4-dddd"
    nan = model_store.promote_if_better(root, "stage3", "r2-bbbb", float("nan"), 0.53)
    assert not nan["promoted"] and "undefined" in nan["reason"]
    log = json.loads((tmp_path / "root" / "models" / "stage3" / "promotions.json").read_text())
    assert [d["promoted"] for d in log] == [True, False, False, True, False]
    assert log[1]["champion"] == {"version": "r1-aaaa", "score": 0.50}
    with pytest.raises(model_store.ModelNotFound):
        model_store.promote_if_better(root, "stage3", "r9-none", 0.9, 0.5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--source", "s", "--root", "r", "--metric", "loss"], "--metric must be"),
        (["nightly", "--source", "s", "--root", "r", "--metric", "auc"], "--metric must be"),
        (["score", "--source", "s", "--root", "r", "--model", "stage3"], "--model takes TASK=VERSION"),
    ],
)
def test_flow_commands_refuse_bad_arguments_before_starting_anything(args, message):
    from sleepsound.cli import app

    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2 and message in out.output


def test_a_rerun_of_the_run_that_promoted_repeats_its_decision_and_records_nothing_more(tmp_path):
    """A train run killed after promoting, run again: the challenger is already the champion. It was
    recorded as "no champion yet" a second time, and the pointer's ``previous`` named itself."""
    root = str(tmp_path / "root")
    for version in ("base-aaaa", "tr1-bbbb"):
        _store(root, version, "2026-11-01T00:00:00", None)
    model_store.promote_if_better(root, "stage3", "base-aaaa", 0.50, None)
    first = model_store.promote_if_better(root, "stage3", "tr1-bbbb", 0.55, 0.50, margin=0.0)
    pointer = (tmp_path / "root" / "models" / "stage3" / "champion.json").read_text()
    again = model_store.promote_if_better(root, "stage3", "tr1-bbbb", 0.55, None, margin=0.0)  # the rerun
    assert again == first and again["champion"] == {"version": "base-aaaa", "score": 0.50}
    log = json.loads((tmp_path / "root" / "models" / "stage3" / "promotions.json").read_text())
    assert [d["challenger"]["version"] for d in log] == ["base-aaaa", "tr1-bbbb"]  # nothing appended
    assert (tmp_path / "root" / "models" / "stage3" / "champion.json").read_text() == pointer
    assert json.loads(pointer)["previous"] == "base-aaaa"
