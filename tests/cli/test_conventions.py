"""Command-line conventions a user of any tool expects (issue 19)."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

from typer.testing import CliRunner

from sleepsound.cli import app


def test_version_prints_the_installed_version_and_exits_0() -> None:
    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0 and out.stdout.strip() == f"sleepsound {version('sleepsound')}"


def test_piped_tables_keep_whole_recording_ids(tmp_path) -> None:
    """A table piped to another command keeps every id whole (they were cut to fit 80 columns)."""
    import subprocess
    import sys

    source = tmp_path / "source"
    source.mkdir()
    long_id = "subject-0042_night-2026-12-04_bedroom-microphone-left-channel_take-3"
    (source / f"{long_id}.wav").write_bytes(b"")  # quarantined: empty file, named in the table
    out = subprocess.run(
        [sys.executable, "-c", "from sleepsound.cli import main; main()", "validate", str(source), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert long_id in out.stdout, out.stdout


def test_synth_asks_before_writing_many_gigabytes(tmp_path) -> None:
    """More than SYNTH_ASK_GB is written only with a yes; more than the disk holds is never started.
    (CI's disk had 10.8 GB free: the defaults' 22 GB met the second rule first.)"""
    import shutil

    from sleepsound.cli import SYNTH_ASK_GB

    six_hours = ["--subjects", "1", "--hours", "6", "--sample-rate", "48000"]  # Mic and Tracheal: about 4.1 GB
    out = CliRunner().invoke(app, ["synth", str(tmp_path / "cohort"), *six_hours], input="")
    assert out.exit_code == 2
    if shutil.disk_usage(tmp_path).free / 1e9 > 4.2:
        assert SYNTH_ASK_GB < 4.1 and "about 4.1 GB; pass --yes" in out.stderr
    else:
        assert "need about 4.1 GB" in out.stderr and "GB free" in out.stderr
    huge = CliRunner().invoke(app, ["synth", str(tmp_path / "huge"), "--subjects", "100000", "--yes"])
    assert huge.exit_code == 2 and "100000 night(s) of 8 h at 48000 Hz need about" in huge.stderr
    assert not (tmp_path / "cohort").exists() and not (tmp_path / "huge").exists()
    small = CliRunner().invoke(
        app, ["synth", str(tmp_path / "small"), "--subjects", "1", "--hours", "0.02", "--sample-rate", "16000"]
    )
    assert small.exit_code == 0 and (tmp_path / "small" / "APNEA_EDF").is_dir()


def test_models_list_needs_no_torch(tmp_path) -> None:
    """Listing the registry reads JSON: it loaded torch for a file name (1.9 s of a 2.4 s command)."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from sleepsound.cli import app\n"
        "out = CliRunner().invoke(app, ['models', 'list', '--root', sys.argv[1]])\n"
        "print(out.exit_code, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["0", "False"], out.stdout + out.stderr


def test_an_unexpected_error_is_one_line_and_its_traceback_waits_for_debug(tmp_path) -> None:
    """An error no code plans for (here a store reader that fails in a way nothing names) is one line and
    exit 1; --debug shows the traceback (and tracebacks never print local variables, which can hold
    secrets). A damaged champion.json was the example until the store learnt to name it (exit 2)."""
    import subprocess
    import sys

    (tmp_path / "root").mkdir()
    main = (
        "import sleepsound.registry.store as store\n"
        "def broken(root):\n"
        "    raise RuntimeError('the reader failed in a way nothing names')\n"
        "store.targets = broken\n"
        "from sleepsound.cli import main; main()"
    )

    def command(*extra: str) -> subprocess.CompletedProcess[str]:
        args = [*extra, "models", "list", "--root", str(tmp_path / "root")]
        return subprocess.run([sys.executable, "-c", main, *args], capture_output=True, text=True, timeout=120)

    plain = command()
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.startswith("error: RuntimeError: the reader failed") and "rerun with --debug" in plain.stderr
    debug = command("--debug")
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "RuntimeError" in debug.stderr
    assert "locals" not in debug.stderr.lower()


def test_the_installed_command_is_the_one_that_keeps_tracebacks_for_debug() -> None:
    """The console script called ``app`` directly, so every unplanned error printed a whole traceback."""
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "sleepsound"]
    assert script.value == "sleepsound.cli:main"


def test_names_read_from_files_are_printed_as_they_are(tmp_path) -> None:
    """A file name or a label is never Rich markup nor a terminal escape: ``[/x]`` in a stage CSV stopped
    ``validate`` with a MarkupError, ``[bold]b.wav`` was listed as ``b``, and an ESC in a name reached the
    terminal."""
    import subprocess
    import sys

    import numpy as np
    import soundfile as sf

    source = tmp_path / "source"
    source.mkdir()
    tone = (0.1 * np.sin(np.arange(16000 * 40) / 5)).astype(np.float32)
    for name in ("[bold]b", "ctrl\x1b[31mred", "n"):
        sf.write(source / f"{name}.wav", tone, 16000)
    (source / "n.stages.csv").write_text("start_s,duration_s,stage\n0,30,[/x]\n")
    out = subprocess.run(
        [sys.executable, "-c", "from sleepsound.cli import main; main()", "validate", str(source), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "[bold]b" in out.stdout and "ctrl\\x1b[31mred" in out.stdout and "'[/x]'" in out.stdout
    assert "\x1b" not in out.stdout + out.stderr


def test_a_flow_that_fails_inside_prefect_is_one_line_and_its_traceback_waits_for_debug(
    prefect_api: str, ray_session: None, tmp_path: Path
) -> None:
    """A task that raises fails the flow inside Prefect, whose engine logs the traceback ("Encountered
    exception during execution") on the console: it came above the one-line error. Without --debug the
    console keeps Prefect's line (it names the run) and loses the traceback; the run's logs keep it."""
    import json
    import os
    import subprocess
    import sys
    import urllib.request

    import ray

    (tmp_path / "incoming").mkdir()  # an empty folder is a quiet night: the flow starts, and its first task fails
    main = (
        "from prefect import task\n"
        "import flows.nightly\n"
        "@task(name='ingest')\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('the ingest task failed in a way nothing names')\n"
        "flows.nightly.ingest = broken\n"
        "from sleepsound.cli import main; main()"
    )
    env = {**os.environ, "PREFECT_API_URL": prefect_api}

    def start(root: str, *extra: str) -> subprocess.Popen[str]:
        """The command in a child process; both run at once (a root each: a run holds its root)."""
        flow = ["nightly", "--source", str(tmp_path / "incoming"), "--root", str(tmp_path / root)]
        flow += ["--ray-address", ray.get_runtime_context().gcs_address]
        return subprocess.Popen(
            [sys.executable, "-c", main, *extra, *flow],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )

    def finish(child: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
        stdout, stderr = child.communicate(timeout=300)
        return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)

    children = start("root"), start("root-debug", "--debug")
    plain, debug = (finish(child) for child in children)
    assert plain.returncode == 1 and "Traceback (most recent call last)" not in plain.stderr, plain.stderr
    assert "Encountered exception during execution: RuntimeError" in plain.stderr  # Prefect's line, one line
    lines = plain.stderr.splitlines()
    assert "error: RuntimeError: the ingest task failed in a way nothing names" in lines, plain.stderr
    assert "rerun with --debug" in plain.stderr
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr, debug.stderr
    assert "the ingest task failed in a way nothing names" in debug.stderr and "locals" not in debug.stderr.lower()
    query = {"logs": {"level": {"ge_": 40}}, "sort": "TIMESTAMP_DESC", "limit": 50}
    request = urllib.request.Request(
        f"{prefect_api}/logs/filter", data=json.dumps(query).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        logged = [log["message"] for log in json.load(response)]
    kept = [m for m in logged if "nothing names" in m and "Traceback (most recent call last)" in m]
    assert len(kept) >= 2, logged  # both runs' records in Prefect keep the traceback


def test_a_failed_run_says_nothing_of_logs_sent_after_its_prefect_server_stopped(
    ray_session: None, tmp_path: Path
) -> None:
    """With SLEEPSOUND_PREFECT_KEEP_MINUTES=0 the command's own Prefect server stops when the run ends, and
    Prefect's log worker sent the failed run's last records at exit, to nobody: "--- Error logging to API ---"
    came under the one-line error. Its batch interval is lengthened here so that those records are certainly
    still queued when the run ends (at the 2-s default they usually are)."""
    import os
    import subprocess
    import sys

    import ray

    (tmp_path / "incoming").mkdir()  # an empty folder is a quiet night: the flow starts, and its first task fails
    # The task is replaced once the command has announced its server (Prefect reads its settings on import).
    main = (
        "import sleepsound.cli as cli\n"
        "console = cli._prefect_console\n"
        "def broken_ingest():\n"
        "    from prefect import task\n"
        "    import flows.nightly\n"
        "    @task(name='ingest')\n"
        "    def broken(*args, **kwargs):\n"
        "        raise RuntimeError('the ingest task failed in a way nothing names')\n"
        "    flows.nightly.ingest = broken\n"
        "    return console()\n"
        "cli._prefect_console = broken_ingest\n"
        "cli.main()"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    env |= {
        "SLEEPSOUND_PREFECT_KEEP_MINUTES": "0",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "60",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),  # this copy's packages, not the installed ones
    }
    flow = ["nightly", "--source", str(tmp_path / "incoming"), "--root", str(tmp_path / "root")]
    flow += ["--ray-address", ray.get_runtime_context().gcs_address]
    out = subprocess.run(
        [sys.executable, "-c", main, *flow], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 1, out.stderr
    assert "error: RuntimeError: the ingest task failed in a way nothing names" in out.stderr.splitlines()
    assert "Error logging to API" not in out.stdout + out.stderr, out.stderr
    assert (tmp_path / ".prefect" / "prefect.db").exists()  # the command's own server, stopped with it
