"""``sleepsound deploy`` registers the deployments with a real Prefect API (the test session's)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml


@pytest.fixture()
def api(prefect_api: str, monkeypatch) -> str:
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    return prefect_api


def test_deploy_registers_a_cron_nightly_and_on_demand_train_and_score(api, tmp_path) -> None:
    from prefect.client.orchestration import get_client

    from flows.deploy import register_deployments

    ids = register_deployments(
        "s3://bucket/incoming",
        "s3://bucket/root",
        {"training": {"epochs": 3}},
        cron="30 3 * * *",
        timezone="Europe/London",
        work_pool="sleepsound-test",
    )
    assert set(ids) == {
        "sleepsound-nightly-deployment/nightly",
        "sleepsound-train-deployment/train",
        "sleepsound-score-deployment/score",
    }
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("sleepsound-nightly-deployment/nightly")
        train = client.read_deployment_by_name("sleepsound-train-deployment/train")
        pool = client.read_work_pool("sleepsound-test")
    assert pool.type == "process" and nightly.work_pool_name == "sleepsound-test"
    assert [(s.schedule.cron, s.schedule.timezone) for s in nightly.schedules] == [("30 3 * * *", "Europe/London")]
    assert nightly.parameters["root"] == "s3://bucket/root" and nightly.parameters["config"] == {
        "training": {"epochs": 3}
    }
    assert not train.schedules and nightly.entrypoint.endswith("flows/scheduled.py:nightly_deployment")
    again = register_deployments(
        "s3://bucket/incoming", "s3://bucket/root", cron="0 1 * * *", work_pool="sleepsound-test"
    )
    assert again == ids  # updated in place, not duplicated


def test_prefect_yaml_declares_the_same_entrypoints() -> None:
    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
    entrypoints = {d["name"]: d["entrypoint"] for d in spec["deployments"]}
    assert entrypoints == {
        "nightly": "flows/scheduled.py:nightly_deployment",
        "train": "flows/scheduled.py:train_deployment",
        "score": "flows/scheduled.py:score_deployment",
    }
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly")
    assert nightly["schedules"][0]["cron"] and nightly["work_pool"]["name"] == "sleepsound"
    import flows.scheduled as scheduled

    for entry in entrypoints.values():
        assert hasattr(scheduled, entry.split(":")[1])


def test_deploy_command_registers_and_needs_an_api(api, monkeypatch) -> None:
    from typer.testing import CliRunner

    from sleepsound.cli import app

    out = CliRunner().invoke(
        app,
        [
            "deploy",
            "--source",
            "s3://b/in",
            "--root",
            "s3://b/root",
            "--cron",
            "15 4 * * *",
            "--work-pool",
            "sleepsound-cli",
        ],
    )
    assert out.exit_code == 0, out.output
    assert (
        "sleepsound-nightly-deployment/nightly" in out.output
        and "prefect worker start --pool sleepsound-cli" in out.output
    )
    monkeypatch.delenv("PREFECT_API_URL")
    refused = CliRunner().invoke(app, ["deploy", "--source", "s", "--root", "r"])
    assert refused.exit_code == 2 and "PREFECT_API_URL" in refused.output
