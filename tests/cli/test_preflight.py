"""A flow command whose preconditions do not hold stops at once: exit 2, one line naming the
problem and the way out, nothing created, no Prefect or Ray started (before: minutes of work and
a traceback). The real commands run through typer's CliRunner."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleepsound.cli import app

NEVER = ("flows", "tasks", "prefect", "ray")  # torch may load: the score check reads the model store


def _refused(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    modules = set(sys.modules)
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2, out.output
    assert "Traceback" not in out.output and out.stdout == ""
    [line] = out.stderr.splitlines()
    assert line.startswith("not started: ") and expected in line, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "the refusal created something"
    assert not [m for m in set(sys.modules) - modules if m.split(".")[0] in NEVER]


def _one_night(folder: Path) -> None:
    """A source holding one recording as discovery sees it (validation would quarantine it)."""
    folder.mkdir()
    (folder / "night.wav").write_bytes(b"")


@pytest.mark.parametrize("command", ["run", "train", "nightly", "score"])
def test_a_missing_source_is_refused_before_any_work(command, tmp_path, monkeypatch) -> None:
    args = [command, "--source", str(tmp_path / "missing"), "--root", str(tmp_path / "root")]
    _refused(args, tmp_path, monkeypatch, f"--source {tmp_path / 'missing'} does not exist")


def test_a_file_given_as_the_source_is_refused(tmp_path, monkeypatch) -> None:
    (tmp_path / "night.wav").write_bytes(b"RIFF")
    args = ["run", "--source", str(tmp_path / "night.wav"), "--root", str(tmp_path / "root")]
    _refused(args, tmp_path, monkeypatch, "is a file: give the folder that holds the recordings")


@pytest.mark.parametrize("option", ["--source", "--root"])
def test_credentials_in_a_storage_url_are_refused_and_never_echoed(option, tmp_path, monkeypatch) -> None:
    """s3fs does not read ``KEY:SECRET@`` from a URL: it became the bucket's name, and the unplanned
    error printed it whole."""
    _one_night(tmp_path / "nights")
    secret = "s3://KEYID555:SecretZZZ888@bucket/prefix"
    given = {"--source": str(tmp_path / "nights"), "--root": str(tmp_path / "root"), option: secret}
    args = ["run", "--source", given["--source"], "--root", given["--root"]]
    _refused(args, tmp_path, monkeypatch, f"{option} s3://***@bucket/prefix: credentials in a storage URL are refused")
    out = CliRunner().invoke(app, args)
    assert "SecretZZZ888" not in out.output and "KEYID555" not in out.output


@pytest.mark.parametrize(
    "args",
    [
        ["models", "list", "--root"],
        ["monitor", "users", "list", "--root"],
        ["clips", "score", "/etc/hostname", "--model"],
    ],
    ids=["models", "monitor-users", "clips-model"],
)
def test_every_command_refuses_a_storage_url_with_credentials_without_echoing_them(args) -> None:
    """Only the flow commands checked: `models list --root s3://KEY:SECRET@bucket/...` printed botocore's
    'Invalid bucket name "KEY:SECRET@bucket"', and `clips score --model` the path with them."""
    secret = "s3://KEYID555:SecretZZZ888@bucket/prefix"
    done = subprocess.run(
        [sys.executable, "-m", "sleepsound.cli", *args, secret],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "SecretZZZ888" not in done.stdout + done.stderr and "KEYID555" not in done.stdout + done.stderr
    assert "***@bucket" in done.stderr and "Traceback" not in done.stderr


def test_score_without_a_model_is_refused_before_embedding(tmp_path, monkeypatch) -> None:
    _one_night(tmp_path / "nights")
    args = ["score", "--source", str(tmp_path / "nights"), "--root", str(tmp_path / "root")]
    _refused(args, tmp_path, monkeypatch, "cannot score: no stage3 champion under")


def test_score_naming_an_unknown_version_is_refused(tmp_path, monkeypatch) -> None:
    _one_night(tmp_path / "nights")
    args = ["score", "--source", str(tmp_path / "nights"), "--root", str(tmp_path / "root"), "--model", "stage3=v9"]
    _refused(args, tmp_path, monkeypatch, "cannot score: no models of task(s) ['stage3']")


def test_a_root_this_process_may_not_write_is_refused(tmp_path) -> None:
    """In a process that really lacks the permission (as root: without the capabilities that bypass it)."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: root may write any folder")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    _one_night(tmp_path / "nights")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    args = ["run", "--source", str(tmp_path / "nights"), "--root", str(locked / "root")]
    out = subprocess.run(
        [*prefix, sys.executable, "-c", "from sleepsound.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("not started: ") and "is not writable by this process" in out.stderr
    assert not (locked / "root").exists() and not (tmp_path / ".prefect").exists()


def test_a_root_under_a_file_is_refused(tmp_path, monkeypatch) -> None:
    _one_night(tmp_path / "nights")
    (tmp_path / "afile").write_text("")
    args = ["run", "--source", str(tmp_path / "nights"), "--root", str(tmp_path / "afile" / "root")]
    _refused(args, tmp_path, monkeypatch, "is a file, not a folder")


@pytest.mark.parametrize("command", ["run", "train", "score"])
def test_a_source_without_recordings_says_which_layouts_it_looked_for(command, tmp_path, monkeypatch) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not audio")
    args = [command, "--source", str(tmp_path / "empty"), "--root", str(tmp_path / "root")]
    _refused(args, tmp_path, monkeypatch, "no recordings under")
    out = CliRunner().invoke(app, args)
    assert "APNEA_EDF/<patient>/<patient>[001].edf" in out.stderr and ".flac" in out.stderr


def test_validate_on_a_source_without_recordings_exits_2_and_writes_no_manifest(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    root = tmp_path / "root"
    out = CliRunner().invoke(app, ["validate", str(tmp_path / "empty"), "--root", str(root), "--quick"])
    assert out.exit_code == 2 and out.stdout == ""
    assert out.stderr.startswith("nothing to validate: no recordings under") and "plain nights" in out.stderr
    assert not root.exists()


def test_nightly_with_a_damaged_state_is_refused_before_any_work(tmp_path, monkeypatch) -> None:
    """Read after validating and embedding the cohort, a damaged state cost that work and ended in a bare
    JSONDecodeError (exit 1)."""
    _one_night(tmp_path / "nights")
    (tmp_path / "root" / "state").mkdir(parents=True)
    (tmp_path / "root" / "state" / "nightly.json").write_text('{"recordings": {"a": ')
    args = ["nightly", "--source", str(tmp_path / "nights"), "--root", str(tmp_path / "root")]
    _refused(args, tmp_path, monkeypatch, "state/nightly.json is not JSON")


def test_an_object_store_root_that_cannot_be_read_is_one_line_naming_it(monkeypatch) -> None:
    """`models list --root s3://...` without credentials ended in "error: NoCredentialsError: Unable to
    locate credentials" (exit 1, the root unnamed): botocore's errors are not OSErrors."""
    import s3fs

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance role to look for
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    s3fs.S3FileSystem.clear_instance_cache()  # a file system another test opened holds its credentials
    try:
        out = CliRunner().invoke(app, ["models", "list", "--root", "s3://no-such-bucket-here/prefix"])
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert out.exit_code == 2, out.output
    assert "storage root s3://no-such-bucket-here/prefix cannot be read (NoCredentialsError" in out.output


@pytest.mark.parametrize("command", ["run", "train", "nightly", "score"])
@pytest.mark.parametrize("run_id", ["../../escaped", "/tmp/abs", "r[1]", "a/b", ".hidden", "x" * 129, "naïve"])
def test_a_run_id_that_is_no_plain_name_is_refused(command, run_id, tmp_path, monkeypatch) -> None:
    """A run id names runs/<id>/ under the root: ``../../escaped`` and ``/abs`` wrote a whole run outside
    it, and a rerun's clean-up removed the nights of whatever run folder it landed in."""
    _one_night(tmp_path / "nights")
    args = [command, "--source", str(tmp_path / "nights"), "--root", str(tmp_path / "root"), "--run-id", run_id]
    _refused(args, tmp_path, monkeypatch, f"--run-id: run id {run_id!r} is not a plain name")


def test_plain_run_ids_pass_as_the_default_ones_do() -> None:
    from sleepsound.runs.run_record import check_run_id, default_run_id

    for run_id in (
        "demo",
        "nightly-20261207T210000Z",
        "bench-w1",
        "monitor-" + "a" * 32,
        "v1.2+rc_3",
        default_run_id("score"),
    ):
        assert check_run_id(run_id) == run_id
    with pytest.raises(ValueError, match="not a plain name"):
        check_run_id("../x")


@pytest.mark.parametrize("command", ["run", "train", "nightly"])
@pytest.mark.parametrize("damage", ["pointer", "weights"])
def test_a_run_that_trains_refuses_a_damaged_store_before_any_work(command, damage, tmp_path, monkeypatch) -> None:
    """Found at the promotion before: after the whole cohort was embedded and every head trained, exit 1
    "not expected", and each retry left a new set of orphan versions in the store."""
    from sleepsound.registry import store as model_store
    from tests.registry.test_model_store import _store

    _one_night(tmp_path / "nights")
    root = tmp_path / "root"
    _store(str(root), "r1-aaaa", "2026-11-01T00:00:00", None)
    model_store.set_champion(str(root), "stage3", "r1-aaaa", "first")
    if damage == "pointer":
        (root / "models" / "stage3" / "champion.json").write_text('{"version": "../../../../tmp/evil", "promoted": "x"')
        expected = "champion.json"
    else:
        weights = root / "models" / "stage3" / "r1-aaaa" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
        expected = "model.safetensors"
    args = [command, "--source", str(tmp_path / "nights"), "--root", str(root)]
    _refused(args, tmp_path, monkeypatch, "cannot train into this store")
    out = CliRunner().invoke(app, args)
    assert expected in out.stderr
    assert sorted(p.name for p in (root / "models" / "stage3").iterdir() if p.is_dir()) == ["r1-aaaa"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--hours", "nan"], "positive, finite number of hours"),
        (["--subjects", "0"], "at least one subject"),
        (["--seed", "-1"], "seed must be a whole number >= 0"),
        (["--hours", "1e6"], "GB free"),
        (["--root", "A_FILE"], "is a file, not a folder"),
    ],
)
def test_demo_refuses_a_bad_size_or_root_before_it_touches_the_last_demos_nights(args, needle, tmp_path, monkeypatch):
    """The demo removed its last cohort, then ended "not expected" on a bad --hours or --subjects; a --root
    that is a file was found only after the nights were generated; any size was started (audit of 2026-12-08)."""
    monkeypatch.chdir(tmp_path)
    last = tmp_path / ".sleepsound-demo-source"
    last.mkdir()
    (last / "demo-params.json").write_text("{}")
    (tmp_path / "A_FILE").write_text("x")
    result = CliRunner().invoke(app, ["demo", *[str(tmp_path / a) if a == "A_FILE" else a for a in args]])
    assert result.exit_code == 2 and needle in " ".join(result.output.split()), result.output
    assert "not expected" not in result.output
    assert (last / "demo-params.json").read_text() == "{}" and not (tmp_path / "sleepsound-demo").exists()


@pytest.mark.parametrize("command", [["validate", "s3://nobucket/x"], ["cv", "--root", "s3://nobucket/x"]])
def test_unreachable_object_storage_is_one_line_not_an_unexpected_error(command, monkeypatch) -> None:
    """botocore's errors are no OSErrors: `validate` and `cv` on storage that answers nothing ended with
    exit 1 and "This was not expected" (audit of 2026-12-08). A closed port on loopback: nothing answers."""
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    # s3fs keeps one filesystem per set of arguments, whatever the endpoint in the environment: a cached one
    # would miss this endpoint, and the one made here would send later tests' requests to the closed port.
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        result = CliRunner().invoke(app, command)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    assert result.exit_code == 2 and "s3://nobucket/x" in result.stderr, result.output
    assert "not expected" not in result.output and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("port", ["-1", "0", "99999"])
def test_ui_refuses_a_port_that_is_none_before_it_starts_anything(port, tmp_path, monkeypatch) -> None:
    """-1 and 99999 ended in Prefect's or uvicorn's traceback, 0 served on a random port printed as ':0'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".prefect").mkdir()
    result = CliRunner().invoke(app, ["ui", "--port", port])
    assert result.exit_code == 2 and "--port" in result.output and "Prefect UI at" not in result.output


def test_ui_without_a_prefect_folder_is_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".prefect").write_text("x")  # a file where the state should be: a database traceback before
    result = CliRunner().invoke(app, ["ui"])
    assert result.exit_code == 2 and "./.prefect is not a folder" in result.stderr, result.output
