"""The whole workflow as a real Prefect flow on a real Ray session, on local disk (on S3: the nightly and
score flows in tests/flows/test_faults.py, through a flaky proxy)."""

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from sleepsound.core.config import Config
from sleepsound.synth.writers import generate_cohort

pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Five short nights, plus one corrupt night and one night without labels."""
    out = tmp_path_factory.mktemp("flow-cohort")
    generate_cohort(out, n_subjects=6, hours=0.1, seed=11, sample_rate=16_000, part_seconds=360, cycle_minutes=6)
    patients = sorted(p.name for p in (out / "APNEA_EDF").iterdir())
    (out / "APNEA_EDF" / patients[0] / f"{patients[0]}[001].edf").write_bytes(b"\x00garbage" * 64)
    (out / "APNEA_RML" / f"{patients[1]}.rml").unlink()
    return out


def _config(tiny_whisper: str) -> dict:
    return Config.model_validate(
        {
            "backbone": {"name": tiny_whisper, "batch_size": 4},
            "training": {"lr": 3e-3, "min_lr": 1e-4, "epochs": 20, "batch_size": 16},
        }
    ).model_dump()


def test_flow_on_local_disk(cohort, tiny_whisper, tmp_path):
    from flows.pipeline import run_pipeline_on_ray

    root = str(tmp_path / "root")
    result = run_pipeline_on_ray(str(cohort), root, _config(tiny_whisper), run_id="t1")
    patients = sorted(p.name for p in (cohort / "APNEA_EDF").iterdir())
    counts = result["counts"]
    assert (counts["discovered"], counts["accepted"], counts["quarantined"]) == (6, 5, 1)

    manifest = pd.read_parquet(Path(root) / "manifest" / "manifest.parquet")
    bad = manifest.set_index("recording_id").loc[patients[0]]
    assert bad["status"] == "quarantined" and bad["reason_code"] == "unreadable_edf"
    assert f"{patients[0]}[001].edf" in bad["reason"]

    preds = pd.read_parquet(Path(root) / "runs" / "t1" / "predictions")
    assert set(preds["recording_id"].astype(str)) == set(patients[1:])
    unlabelled = preds[preds["recording_id"].astype(str) == patients[1]]
    assert (unlabelled["split"] == "unlabelled").all() and unlabelled["stage_true"].isna().all()
    assert unlabelled["stage_pred"].notna().all()
    assert {"prob_wake", "prob_nrem", "prob_rem", "model_version", "start_s"} <= set(preds.columns)
    assert (preds["split"] == "test").any()
    assert not preds.duplicated(["recording_id", "epoch_index"]).any()

    report = (Path(root) / "runs" / "t1" / "report" / "index.html").read_text()
    for section in (
        "id='metrics'",
        "id='task-stage5'",
        "id='task-resp'",
        "id='ahi'",
        "id='attention'",
        "id='events'",
        "id='hypnograms'",
    ):
        assert section in report, section
    assert report.count("<img") >= 6  # confusion x3, hypnograms, attention views, AHI figures, timelines
    summaries = pd.read_parquet(Path(root) / "runs" / "t1" / "summaries")
    assert {"total_sleep_time_min", "sleep_efficiency", "ahi", "severity", "snore_index"} <= set(summaries.columns)
    scored = summaries[(summaries["source"] == "scored")]
    assert scored["ahi"].notna().all() and summaries.loc[summaries["source"] == "predicted", "ahi"].notna().all()
    assert 0 <= result["metrics"]["macro_f1"] <= 1
    assert {"stage5_macro_f1", "resp_macro_f1"} <= set(result["metrics"])
    metrics = json.loads((Path(root) / "runs" / "t1" / "metrics.json").read_text())
    assert set(metrics["tasks"]) == {"stage5", "resp", "snore"}
    assert metrics["subject_ci"] == {}  # one test subject: nothing to resample (see test_results)
    assert metrics["ahi"]["n_nights"] == len(result["model"]["test_subjects"])
    assert set(result["model"]["heads"]) == {"stage3", "stage5", "resp", "snore"}

    _assert_respiratory_labels_and_shifted_windows(Path(root), patients, result["model"])

    _assert_prefect_recorded(result["prefect_flow_run"]["id"])
    _assert_progress_reported("t1", result["counts"])
    assert set(result["seconds"]) == {"ingest", "check-trainable", "embed", "train", "predict", "report"}
    record = json.loads((Path(root) / "runs" / "t1" / "run.json").read_text())
    assert (record["schema"], record["flow"], record["run_id"]) == ("sleepsound.run/1", "run", "t1")
    assert record["seconds"] == result["seconds"] and record["counts"] == result["counts"]
    assert record["counts"]["discovered"] == record["counts"]["accepted"] + record["counts"]["quarantined"]
    assert set(record["models"]) == {"stage3", "stage5", "resp", "snore"} and len(record["config_hash"]) > 8
    assert record["prefect_flow_run"]["id"] == result["prefect_flow_run"]["id"]

    again = run_pipeline_on_ray(str(cohort), root, _config(tiny_whisper), run_id="t2")
    assert again["counts"]["embedded"] == 0 and again["counts"]["cached"] == 5

    _assert_scoring_uses_the_champions(cohort, root, tiny_whisper, result["model"])
    _assert_retraining_keeps_an_equal_champion(cohort, root, tiny_whisper, result["model"])
    _assert_nightly_does_only_what_is_new(cohort, root, tiny_whisper, tmp_path)


def _assert_nightly_does_only_what_is_new(cohort: Path, root: str, tiny_whisper: str, tmp_path: Path) -> None:
    """First nightly: every night is new (trained, promoted or not, scored). Then a new unlabelled
    night arrives: only it is embedded and scored, nothing is trained. Then nothing is new."""
    from flows.nightly import run_nightly_on_ray
    from sleepsound.runs.nightly_state import processed

    source = tmp_path / "nightly-source"
    shutil.copytree(cohort, source)
    first = run_nightly_on_ray(str(source), root, _config(tiny_whisper), run_id="n1")
    assert first["trained"] and set(first["promotions"]) == {"stage3", "stage5", "resp", "snore"}
    assert len(first["new"]["labelled"]) == 4 and len(first["new"]["unlabelled"]) == 1
    assert pd.read_parquet(Path(root) / "runs" / "n1" / "predictions")["recording_id"].nunique() == 5
    assert len(processed(root)) == 5

    generate_cohort(
        tmp_path / "extra", n_subjects=1, hours=0.1, seed=99, sample_rate=16_000, part_seconds=360, cycle_minutes=6
    )
    patient = next((tmp_path / "extra" / "APNEA_EDF").iterdir()).name
    shutil.copytree(tmp_path / "extra" / "APNEA_EDF" / patient, source / "APNEA_EDF" / patient)  # no RML: unlabelled
    second = run_nightly_on_ray(str(source), root, _config(tiny_whisper), run_id="n2")
    assert not second["trained"] and second["new"] == {"labelled": [], "unlabelled": [patient]}
    assert second["counts"]["embedded"] == 1 and second["counts"]["cached"] == 5
    preds = pd.read_parquet(Path(root) / "runs" / "n2" / "predictions")
    assert set(preds["recording_id"].astype(str)) == {patient} and (preds["split"] == "unlabelled").all()
    from sleepsound.cli import _print_results, console

    with console.capture() as shown:  # what the command prints for an unlabelled night
        _print_results(second)
    text = shown.get()
    assert "no held-out figures" in text and "nan" not in text
    assert "nights (predicted), 1 in all" in text and patient in text and "severity" in text and "REI" in text
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()) as printed:  # --json: one object, undefined figures null
        _print_results(second, as_json=True)
    summary = json.loads(printed.getvalue())
    assert summary["run_id"] == "n2" and summary["new"]["unlabelled"] == [patient]
    assert summary["metrics"]["macro_f1"] is None and summary["counts"] == second["counts"]

    third = run_nightly_on_ray(str(source), root, _config(tiny_whisper), run_id="n3")
    assert third["new"] == {"labelled": [], "unlabelled": []} and third["report"] is None
    assert len(processed(root)) == 6
    assert [p.name for p in (Path(root) / "runs" / "n3").iterdir()] == ["run.json"]  # only the record


def _assert_retraining_keeps_an_equal_champion(cohort: Path, root: str, tiny_whisper: str, first: dict) -> None:
    """The train flow registers challengers, scores them beside the champions on the recorded
    evaluation set, and keeps each champion that the retrained twin does not beat by the margin."""
    from flows.train import run_train_on_ray
    from sleepsound.registry import store as model_store

    retrained = run_train_on_ray(str(cohort), root, _config(tiny_whisper), run_id="r1")
    assert set(retrained["seconds"]) == {"ingest", "check-trainable", "embed", "train", "promote", "predict", "report"}
    assert retrained["model"]["test_subjects"] == first["test_subjects"]
    stage3 = retrained["promotions"]["stage3"]
    assert not stage3["promoted"] and stage3["champion"]["version"] == first["version"]
    assert stage3["challenger"]["score"] == pytest.approx(stage3["champion"]["score"])
    assert model_store.champion_version(root, "stage3") == first["version"]
    assert retrained["model"]["version"] in [v["version"] for v in model_store.versions(root, "stage3")]
    report = (Path(root) / "runs" / "r1" / "report" / "index.html").read_text()
    assert "3-class stage head: promotion" in report and "not promoted" in report

    # Without the evaluation subjects' nights, train stops right after validation, before embedding.
    from sleepsound.ingest.manifest import read_manifest_rows
    from sleepsound.registry.evaluation_set import CannotTrain

    source = cohort.parent / "without-evaluation-subjects"
    shutil.copytree(cohort, source)
    for row in read_manifest_rows(root):
        if str(row["subject_id"]) in first["test_subjects"]:
            shutil.rmtree(source / "APNEA_EDF" / str(row["recording_id"]), ignore_errors=True)
            (source / "APNEA_RML" / f"{row['recording_id']}.rml").unlink(missing_ok=True)
    before = sorted(p.name for p in (Path(root) / "runs").iterdir())
    with pytest.raises(CannotTrain, match="none of the evaluation subjects"):
        run_train_on_ray(str(source), root, _config(tiny_whisper), run_id="r2")
    assert sorted(p.name for p in (Path(root) / "runs").iterdir()) == before  # nothing written for r2


def _assert_scoring_uses_the_champions(cohort: Path, root: str, tiny_whisper: str, trained: dict) -> None:
    """The score flow trains nothing: the first run's heads (the champions) predict every night."""
    from flows.scheduled import score_deployment
    from flows.score import run_score_on_ray
    from sleepsound.registry import store as model_store

    stored = {task: len(model_store.versions(root, task)) for task in ("stage3", "stage5", "resp", "snore")}
    scored = score_deployment(str(cohort), root, _config(tiny_whisper))  # what the deployment runs
    run_id = scored["run_id"]
    assert run_id.startswith("score-")
    assert {task: len(model_store.versions(root, task)) for task in stored} == stored
    assert {t: h["version"] for t, h in scored["model"]["heads"].items()} == {
        t: h["version"] for t, h in trained["heads"].items()
    }
    assert scored["model"]["test_subjects"] == trained["test_subjects"]  # the nights it never trained on
    assert set(scored["seconds"]) == {"ingest", "embed", "champions", "predict", "report"}
    preds = pd.read_parquet(Path(root) / "runs" / run_id / "predictions")
    assert preds["recording_id"].nunique() == 5 and (preds["model_version"] == trained["version"]).all()
    assert set(preds.loc[preds["split"] == "test", "subject_id"]) == set(trained["test_subjects"])
    assert scored["metrics"]["macro_f1"] == pytest.approx(
        json.loads((Path(root) / "runs" / "t1" / "metrics.json").read_text())["macro_f1"]
    )
    with pytest.raises(model_store.ModelNotFound, match="task"):
        run_score_on_ray(str(cohort), root, _config(tiny_whisper), run_id="s2", versions={"nope": "x"})


def _assert_respiratory_labels_and_shifted_windows(root: Path, patients: list[str], model: dict) -> None:
    """Epoch tables carry respiratory labels (null for the unlabelled night); the cache holds the
    labelled nights' shifted windows (one file per stage), which trained the model."""
    epochs = {p.stem: pd.read_parquet(p) for p in (root / "epochs").glob("*/*.parquet")}
    assert set(epochs) == set(patients[1:])
    assert epochs[patients[1]]["resp_label"].isna().all()
    for rec in patients[2:]:
        assert set(epochs[rec]["resp_label"]) <= {"none", "snore", "apnea_hypopnea"}
        assert (epochs[rec]["n_apnea"] >= 0).all() and epochs[rec]["snore_frac"].between(0, 1).all()
        assert len(list((root / "embeddings").glob(f"*/*/{rec}-*.shifted-*.parquet"))) == 3
    assert not list((root / "embeddings").glob(f"*/*/{patients[1]}-*.shifted-*.parquet"))
    assert model["train_shifted"] > 0


def _assert_prefect_recorded(flow_run_id: str) -> None:
    """The Prefect API holds the flow run and its six task runs, all completed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=50,
        )
    assert run.state.is_completed()
    names = ["check-trainable", "embed", "ingest", "predict", "report", "train"]
    assert sorted(t.name.rsplit("-", 1)[0] for t in tasks) == names
    assert all(t.state.is_completed() for t in tasks)


def _assert_progress_reported(run_id: str, counts: dict) -> None:
    """What the command line's bars show: every stage reported to the Prefect API, to its end."""
    from datetime import UTC, datetime

    from sleepsound.runs.progress_view import read_progress

    stages = {
        s["stage"]: s for s in read_progress(os.environ["PREFECT_API_URL"], run_id, datetime(2000, 1, 1, tzinfo=UTC))
    }
    assert stages["validate"] == {"stage": "validate", "done": 6, "total": 6, "unit": "recordings"}
    assert stages["embed"]["done"] == stages["embed"]["total"] == 5 * 12  # five accepted 6-min nights
    assert stages["train stage3"]["done"] == stages["train stage3"]["total"] >= 1
    assert {"train stage5", "train resp"} <= set(stages)


def test_local_ray_session_sizes_come_from_the_config_and_never_reach_a_cluster():
    """ray.num_cpus and ray.object_store_mb size a local session; with an address the cluster keeps its own."""
    from flows.pipeline import ray_runner

    config = {"ray": {"num_cpus": 2, "object_store_mb": 512}}
    local = ray_runner(config).init_kwargs
    assert local["num_cpus"] == 2 and local["object_store_memory"] == 512 * 2**20
    for remote in (ray_runner(config, "ray://head:10001"), ray_runner({"ray": {**config["ray"], "address": "auto"}})):
        assert "num_cpus" not in remote.init_kwargs and "object_store_memory" not in remote.init_kwargs
    assert "object_store_memory" not in ray_runner({"ray": {}}).init_kwargs


def test_without_an_address_a_run_starts_a_session_of_its_own(monkeypatch):
    """Ray's bare ``init()`` joins a cluster ``ray start`` left on the machine (another folder, code and
    environment); a run without ``--ray-address`` or ``RAY_ADDRESS`` asks for a local session instead,
    and ``auto`` still joins the machine's cluster."""
    from flows.pipeline import JOB_CONFIG_ENV, ray_runner

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(JOB_CONFIG_ENV, raising=False)
    assert ray_runner({"ray": {}}).address == "local"
    assert ray_runner({"ray": {}}, "auto").address == "auto"
    assert ray_runner({"ray": {"address": "ray://head:10001"}}).address == "ray://head:10001"
    monkeypatch.setenv("RAY_ADDRESS", "ray://other:10001")  # the user's own choice, which Ray honours
    assert ray_runner({"ray": {}}).address is None


def test_a_local_session_says_token_authentication_explicitly(monkeypatch):
    """Ray's default for a new local session (token auth on) set explicitly, so Ray does not warn about
    it at every command; a mode the user chose, or a cluster's address, is left alone."""
    from flows.pipeline import ray_runner

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ray_runner({"ray": {}}, "ray://head:10001")
    assert "RAY_AUTH_MODE" not in os.environ
    ray_runner({"ray": {}})
    assert os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray_runner({"ray": {}})
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
