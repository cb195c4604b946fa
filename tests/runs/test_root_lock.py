"""One writing run per root: the second is refused with the holder named; a dead run's lock expires."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import s3fs

from sleepsound.runs.root_lock import RootBusy, RootLost, hold_root, holder, lock_path


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_second_run_is_refused_while_the_first_holds_the_root(where, tmp_path, s3_endpoint) -> None:
    if where == "s3":
        s3fs.S3FileSystem().mkdir("sleepsound-lock")
        root = "s3://sleepsound-lock/root"
    else:
        root = str(tmp_path / "root")
    with hold_root(root, "night-1", "nightly"):
        assert holder(root)["run_id"] == "night-1"
        with pytest.raises(RootBusy, match="in use by run 'night-1' \\(nightly"):
            with hold_root(root, "night-2", "train"):
                pass
    assert holder(root) is None  # released
    with hold_root(root, "night-2", "train"):  # and free for the next
        assert holder(root)["run_id"] == "night-2"


@pytest.mark.parametrize("round_", range(15))  # a race shows only now and then: run it often
def test_of_two_runs_starting_together_exactly_one_gets_the_root(tmp_path, round_: int) -> None:
    root = str(tmp_path / f"root-{round_}")
    results: list[str] = []
    barrier = threading.Barrier(8)

    def attempt(n: int) -> None:
        barrier.wait()
        try:
            with hold_root(root, f"run-{n}", "score"):
                results.append("held")
                barrier_done.wait()
        except RootBusy:
            results.append("refused")

    barrier_done = threading.Event()
    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    while len(results) < 8:
        if results.count("refused") == 7:
            barrier_done.set()
        threading.Event().wait(0.01)
    barrier_done.set()
    for t in threads:
        t.join()
    assert sorted(results) == ["held"] + ["refused"] * 7


def _write_dead_lock(root: str) -> Path:
    path = Path(lock_path(root))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "run_id": "crashed",
                "purpose": "nightly",
                "host": "elsewhere",
                "pid": 1,
                "acquired": "2026-01-01T00:00:00+00:00",
                "heartbeat": "2026-01-01T00:00:00+00:00",
            }
        )
    )
    _age(path, 700)  # the storage last wrote it long ago
    return path


@pytest.mark.parametrize("round_", range(10))
def test_of_runs_finding_the_same_dead_lock_exactly_one_takes_it_over(tmp_path, round_: int) -> None:
    root = str(tmp_path / f"root-{round_}")
    _write_dead_lock(root)
    results: list[str] = []
    barrier, done = threading.Barrier(6), threading.Event()

    def attempt(n: int) -> None:
        barrier.wait()
        try:
            with hold_root(root, f"run-{n}", "score", stale_after_s=60):
                results.append("held")
                done.wait()
        except RootBusy as exc:
            results.append("refused" if "run-" in str(exc) else f"refused naming nobody: {exc}")

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for _ in range(1000):  # every run has answered (a holder answers before it waits)
        if len(results) == 6:
            break
        threading.Event().wait(0.01)
    done.set()
    for t in threads:
        t.join()
    assert sorted(results) == ["held"] + ["refused"] * 5
    assert not list(Path(lock_path(root)).parent.glob("*.takeover-*"))  # no claim left behind


def test_a_claim_left_by_a_run_that_died_mid_takeover_does_not_block_the_root(tmp_path) -> None:
    import hashlib

    root = str(tmp_path / "root")
    path = _write_dead_lock(root)
    claim = path.with_name(f"{path.name}.takeover-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}")
    claim.write_text(json.dumps({"run_id": "died-taking-over", "heartbeat": "2026-01-01T00:00:00+00:00"}))
    _age(claim, 120)
    with hold_root(root, "next", "nightly", stale_after_s=60):
        assert holder(root)["run_id"] == "next"
    assert not claim.exists()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_dead_runs_lock_is_taken_over_after_it_goes_stale(where, tmp_path, s3_endpoint) -> None:
    """Stale by the storage's clock: S3's LastModified, a local file's mtime."""
    dead = json.dumps(
        {
            "run_id": "crashed",
            "purpose": "nightly",
            "host": "h",
            "pid": 1,
            "acquired": "2026-01-01T00:00:00+00:00",
            "heartbeat": "2999-01-01T00:00:00+00:00",  # a clock far ahead: not what decides
        }
    )
    if where == "s3":
        fs = s3fs.S3FileSystem()
        fs.mkdir("sleepsound-lock-stale")
        root = "s3://sleepsound-lock-stale/root"
        fs.pipe_file(lock_path(root), dead.encode())
    else:
        root = str(tmp_path / "root")
        Path(lock_path(root)).parent.mkdir(parents=True)
        Path(lock_path(root)).write_text(dead)
    with pytest.raises(RootBusy, match="'crashed'"), hold_root(root, "next", "nightly", stale_after_s=2):
        pass  # written just now by the storage's clock
    threading.Event().wait(3.1)  # S3 keeps whole seconds
    try:
        with hold_root(root, "next", "nightly", stale_after_s=2):
            assert holder(root)["run_id"] == "next"
    except RootLost as exc:  # a 2-s lock's 1.8-s lease can lapse on a loaded machine: the takeover is under test
        assert "was not renewed" in str(exc)
    assert holder(root) is None


def test_a_killed_run_on_this_machine_frees_the_root_at_once(tmp_path) -> None:
    import os
    import socket
    import subprocess
    import sys

    root = str(tmp_path / "root")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = Path(lock_path(root))
    path.parent.mkdir(parents=True)
    now = "2999-01-01T00:00:00+00:00"  # a heartbeat that never goes stale
    path.write_text(
        json.dumps(
            {
                "run_id": "killed",
                "purpose": "run",
                "host": socket.gethostname(),
                "pid": int(dead.stdout),
                "acquired": now,
                "heartbeat": now,
            }
        )
    )
    with hold_root(root, "rerun", "run"):
        assert holder(root)["run_id"] == "rerun"
    path.write_text(
        json.dumps(
            {
                "run_id": "alive",
                "purpose": "run",
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "acquired": now,
                "heartbeat": now,
            }
        )
    )
    with pytest.raises(RootBusy, match="'alive'"), hold_root(root, "rerun", "run"):
        pass


def test_the_heartbeat_keeps_a_long_run_fresh(tmp_path) -> None:
    root = str(tmp_path / "root")
    with hold_root(root, "long", "train", heartbeat_s=0.05):
        first = holder(root)["heartbeat"]
        threading.Event().wait(0.3)
        assert holder(root)["heartbeat"] > first


@pytest.mark.parametrize("flow_name", ["pipeline", "score", "train", "nightly"])
def test_every_writing_flow_refuses_a_root_another_run_holds(flow_name, prefect_api, tmp_path, monkeypatch) -> None:
    """The flows take the lock themselves, so a deployment run started beside a CLI run is refused too."""
    import importlib

    from sleepsound.core.config import Config

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    module = importlib.import_module(f"flows.{flow_name}")
    flow = {"pipeline": "pipeline", "score": "score", "train": "train_flow", "nightly": "nightly"}[flow_name]
    root = str(tmp_path / "root")
    with hold_root(root, "first", "nightly"), pytest.raises(RootBusy, match="in use by run 'first'"):
        getattr(module, flow)(str(tmp_path / "nowhere"), root, Config().model_dump(), "second")
    assert holder(root) is None  # the refused run did not touch the first one's lock


def test_the_cli_refuses_before_starting_anything(tmp_path) -> None:
    from typer.testing import CliRunner

    from sleepsound.cli import app

    root, source = str(tmp_path / "root"), tmp_path / "source"
    source.mkdir()
    (source / "night.wav").write_bytes(b"")
    with hold_root(root, "night-7", "nightly"):
        out = CliRunner().invoke(app, ["train", "--source", str(source), "--root", root])
    assert out.exit_code == 2
    assert "not started" in out.output and "night-7" in out.output


def test_a_flow_run_under_its_commands_hold_carries_on_under_it(tmp_path) -> None:
    """The command line holds the root before it starts Prefect and Ray; the flow it then runs in the
    same process for the same run takes no second lock (it was refused by its own command's) and frees
    nothing when it ends; another run is still refused."""
    root = str(tmp_path / "root")
    with hold_root(root, "r1", "nightly") as outer:
        with hold_root(root, "r1", "nightly") as inner:
            assert inner == outer and holder(root)["run_id"] == "r1"
            with pytest.raises(RootBusy, match="in use by run 'r1'"):
                with hold_root(root, "r2", "score"):
                    pass
        assert (holder(root)["run_id"], holder(root)["acquired"]) == ("r1", outer["acquired"])
    assert holder(root) is None
    with hold_root(root, "r2", "score"):  # released by the command's hold alone
        assert holder(root)["run_id"] == "r2"


def test_of_two_commands_started_together_the_loser_starts_nothing(prefect_api, ray_session, tmp_path) -> None:
    """Two `sleepsound nightly` started at once on one root (an empty incoming folder: a quiet night).
    Both used to pass the command's look at the lock, and the loser was refused only when its flow
    took the lock, after starting Prefect and Ray. The command now takes the lock itself before it
    starts anything: the loser is refused with the holder named and never gets as far as printing
    its Prefect API (the first thing a started run prints)."""
    import os
    import subprocess
    import sys

    import ray

    source, root = tmp_path / "incoming", tmp_path / "root"
    source.mkdir()
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "SLEEPSOUND_PREFECT_KEEP_MINUTES": "0"}
    gcs = ray.get_runtime_context().gcs_address  # the winner joins the test run's one Ray session
    command = [str(Path(sys.executable).parent / "sleepsound"), "nightly", "--source", str(source), "--root", str(root)]
    runs = [
        subprocess.Popen(
            [*command, "--run-id", f"n{i}", "--ray-address", gcs],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for i in (1, 2)
    ]
    outputs = [run.communicate(timeout=300)[0] for run in runs]
    assert sorted(run.returncode for run in runs) == [0, 2], outputs
    won, lost = outputs if runs[0].returncode == 0 else outputs[::-1]
    assert "Prefect API:" in won
    assert "not started" in lost and "is in use by run 'n" in lost and "Prefect API:" not in lost, lost
    assert holder(str(root)) is None


def test_a_stalled_run_never_overwrites_the_lock_of_the_run_that_took_over(tmp_path) -> None:
    """And it is told: its next write and the end of its block raise RootLost naming the taker."""
    from sleepsound.core.storage import open_root, write_json

    root = str(tmp_path / "root")
    fs, path = open_root(root)
    with pytest.raises(RootLost, match="'next' on h took it over") as at_exit:
        with hold_root(root, "stalled", "train", heartbeat_s=0.05):
            Path(lock_path(root)).write_text(
                json.dumps(
                    {
                        "run_id": "next",
                        "purpose": "train",
                        "host": "h",
                        "pid": 1,
                        "acquired": "now",
                        "heartbeat": "2999-01-01T00:00:00+00:00",
                    }
                )
            )
            threading.Event().wait(0.3)  # several heartbeats later
            assert holder(root)["run_id"] == "next"
            with pytest.raises(RootLost, match=r"run 'stalled' no longer holds .*'next' on h took it over"):
                write_json(fs, f"{path}/manifest/overwritten.json", {"x": 1})
    assert "rerun it" in str(at_exit.value)
    assert holder(root)["run_id"] == "next"  # and leaving does not remove it either
    assert not (tmp_path / "root" / "manifest" / "overwritten.json").exists()


def test_a_run_stalled_past_its_lease_stops_writing_before_another_may_take_over(tmp_path) -> None:
    """A heartbeat that cannot keep up (a stalled process) ends the hold before the lock goes stale."""
    from sleepsound.core.storage import open_root, write_json

    root = str(tmp_path / "root")
    fs, path = open_root(root)
    with pytest.raises(RootLost), hold_root(root, "slow", "train", stale_after_s=0.2, heartbeat_s=5):
        write_json(fs, f"{path}/early.json", {"x": 1})  # within its lease
        threading.Event().wait(0.3)
        with pytest.raises(RootLost, match=r"run 'slow' no longer holds .*not renewed for"):
            write_json(fs, f"{path}/late.json", {"x": 1})
    assert (tmp_path / "root" / "early.json").exists() and not (tmp_path / "root" / "late.json").exists()


def _age(path: Path, seconds: float) -> None:
    """Make the storage say the file was last written ``seconds`` ago (its modification time)."""
    import os
    import time

    then = time.time() - seconds
    os.utime(path, (then, then))


def _live_lock_elsewhere(root: str, heartbeat: str) -> Path:
    path = Path(lock_path(root))
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"run_id": "skewed", "purpose": "nightly", "host": "elsewhere", "pid": 1, "acquired": heartbeat}
    path.write_text(json.dumps({**record, "heartbeat": heartbeat}))
    return path


def test_a_live_holder_whose_clock_is_601_s_behind_is_not_taken_over(tmp_path) -> None:
    """Its heartbeat says 601 s ago (its own clock), but the storage wrote the lock just now."""
    from datetime import UTC, datetime, timedelta

    root = str(tmp_path / "root")
    _live_lock_elsewhere(root, (datetime.now(UTC) - timedelta(seconds=601)).isoformat())
    with pytest.raises(RootBusy, match="in use by run 'skewed'"), hold_root(root, "mine", "train"):
        pass
    assert holder(root)["run_id"] == "skewed"


def test_a_lock_the_storage_last_wrote_long_ago_is_taken_over_whatever_its_heartbeat_says(tmp_path) -> None:
    """A holder whose clock runs ahead stamps heartbeats in our future; the storage's clock says it died."""
    from datetime import UTC, datetime, timedelta

    root = str(tmp_path / "root")
    path = _live_lock_elsewhere(root, (datetime.now(UTC) + timedelta(seconds=3600)).isoformat())
    _age(path, 700)
    with hold_root(root, "mine", "train"):
        assert holder(root)["run_id"] == "mine"


@pytest.mark.parametrize("content", [b"", b'{"run_id": "half-writ'])
def test_an_empty_or_unreadable_lock_ages_by_its_storage_time_and_is_taken_over(content, tmp_path) -> None:
    root = str(tmp_path / "root")
    path = Path(lock_path(root))
    path.parent.mkdir(parents=True)
    path.write_bytes(content)  # a run died between creating the lock and writing it
    with pytest.raises(RootBusy, match="in use"), hold_root(root, "mine", "train"):
        pass  # just created: its writer may be a moment from writing it
    _age(path, 700)
    with hold_root(root, "mine", "train"):
        assert holder(root)["run_id"] == "mine"
    assert holder(root) is None


def test_an_unreadable_claim_left_mid_takeover_ages_by_its_storage_time(tmp_path) -> None:
    import hashlib

    root = str(tmp_path / "root")
    path = _write_dead_lock(root)
    _age(path, 700)
    claim = path.with_name(f"{path.name}.takeover-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}")
    claim.write_bytes(b"")
    _age(claim, 120)
    with hold_root(root, "next", "nightly"):
        assert holder(root)["run_id"] == "next"
    assert not claim.exists()


def test_a_run_whose_heartbeat_cannot_be_written_stops_writing_and_says_why(tmp_path, monkeypatch) -> None:
    """A full disk under the lock: the next write of the run raises, naming the root, the run and the cause."""
    from sleepsound.core.storage import open_root, write_json
    from tests.full_disk import disk_full_on

    root = str(tmp_path / "root")
    fs, path = open_root(root)
    elsewhere = str(tmp_path / "elsewhere")
    with pytest.raises(RuntimeError) as at_exit, hold_root(root, "full", "train", heartbeat_s=0.05):
        write_json(fs, f"{path}/before.json", {"x": 1})
        failed = disk_full_on(monkeypatch, ".lock.json.tmp-")
        threading.Event().wait(0.3)  # a few heartbeats
        assert failed, "the heartbeat never reached the full disk"
        monkeypatch.undo()  # the disk has room again: the run must still not write, the lock may be another's
        with pytest.raises(RuntimeError) as caught:
            write_json(fs, f"{path}/after.json", {"x": 1})
        message = str(caught.value)
        assert type(caught.value).__name__ == "RootLost"
        assert "'full'" in message and root in message and "no space left on device" in message.lower()
        assert "after.json" in message
        write_json(open_root(elsewhere).fs, f"{elsewhere}/free.json", {"x": 1})  # another root is not fenced
    assert type(at_exit.value).__name__ == "RootLost"  # the run ends failed, not as if it had finished
    assert not (tmp_path / "root" / "after.json").exists()
    assert (tmp_path / "elsewhere" / "free.json").exists()
    assert not list((tmp_path / "root" / "state").glob(".*tmp-*"))  # no temp files piled up


def test_a_full_disk_when_the_lock_is_created_leaves_no_empty_lock_behind(tmp_path, monkeypatch) -> None:
    """The crash-between-create-and-write of an empty lock.json, made by a full disk: now nothing is left."""
    from sleepsound.core.storage import DiskFull
    from tests.full_disk import disk_full_on

    root = str(tmp_path / "root")
    disk_full_on(monkeypatch, ".lock.json.tmp-")
    with pytest.raises(DiskFull, match=r"no space left on device writing .*state/lock\.json"):
        with hold_root(root, "a", "run"):
            pass
    monkeypatch.undo()
    assert list((tmp_path / "root" / "state").iterdir()) == []  # no lock, no hidden file
    with hold_root(root, "b", "run"):  # the rerun gets the root at once
        assert holder(root)["run_id"] == "b"


_LOCK_ON_A_FULL_DISK = """
import json, os, sys, threading
from sleepsound.core.storage import open_root, write_json
from sleepsound.runs.root_lock import hold_root, holder

disk = sys.argv[1]
root = os.path.join(disk, "root")
os.makedirs(os.path.join(root, "state"))
filler = os.path.join(disk, "filler")


def fill():
    # fill the disk to the last block
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"x" * 4096)
        except OSError:
            pass


fill()
result = {}
try:
    with hold_root(root, "first", "run"):
        result["first"] = "held"
except Exception as exc:
    result["first"] = f"{type(exc).__name__}: {exc}"
result["left_in_state"] = sorted(os.listdir(os.path.join(root, "state")))
os.unlink(filler)  # space freed: the rerun must get the root, not be refused by an empty lock
try:
    with hold_root(root, "rerun", "run", heartbeat_s=0.05):
        result["rerun"] = "held"
        fill()  # the disk fills up while it holds the root
        threading.Event().wait(0.5)  # heartbeats fail
        os.unlink(filler)  # and even with room again the run must not write: it cannot know it still holds
        try:
            write_json(open_root(root).fs, os.path.join(root, "late.json"), {"x": 1})
            result["late_write"] = "written"
        except Exception as exc:
            result["late_write"] = f"{type(exc).__name__}: {exc}"
except Exception as exc:
    result["rerun_end"] = f"{type(exc).__name__}: {exc}"
result["left_after"] = sorted(os.listdir(os.path.join(root, "state")))
print(json.dumps(result))
"""


def test_a_real_full_disk_never_leaves_an_empty_lock_and_stops_a_holder_that_cannot_renew(tmp_path) -> None:
    """On a 256 KiB tmpfs filled to the last block (where this machine lets a test mount one)."""
    from tests.full_disk import on_a_small_disk

    result = on_a_small_disk(tmp_path, _LOCK_ON_A_FULL_DISK, size="256k")
    lock = f"{tmp_path}/disk/root/state/lock.json"
    assert (
        result["first"]
        == f"DiskFull: no space left on device writing {lock}: free space and rerun; finished work is kept"
    )
    assert result["left_in_state"] == []  # no empty lock.json to refuse every later run, no hidden file
    assert result["rerun"] == "held"
    assert result["late_write"].startswith("RootLost: run 'rerun' no longer holds ")
    assert "heartbeat could not be written: no space left on device" in result["late_write"]
    assert result["rerun_end"].startswith("RootLost: run 'rerun' no longer holds ")
    assert result["left_after"] == []  # its own lock removed on the way out, no temp files piled up


def test_a_worker_following_the_hold_stops_writing_once_another_run_has_the_root(tmp_path) -> None:
    """A worker process (a Ray task's, here a plain subprocess) holds no lock: it follows its run's."""
    import subprocess
    import sys

    from sleepsound.runs.root_lock import follow_hold

    root = str(tmp_path / "root")
    worker = (
        "import json, sys\n"
        "from sleepsound.core.storage import open_root, write_json\n"
        "from sleepsound.runs.root_lock import follow_hold\n"
        "root, token, name = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]\n"
        "with follow_hold(root, token):\n"
        "    try:\n"
        "        write_json(open_root(root).fs, f'{root}/{name}', {'x': 1})\n"
        "        print('written')\n"
        "    except RuntimeError as exc:\n"
        "        print(f'{type(exc).__name__}: {exc}')\n"
    )

    def work(token: dict, name: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", worker, root, json.dumps(token), name], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    with hold_root(root, "mine", "run") as token:
        assert work(token, "during.json") == "written"
    taken = {"run_id": "mine", "acquired": token["acquired"]}
    with hold_root(root, "next", "run"):
        answer = work(taken, "late.json")
    assert answer.startswith("RootLost: run 'mine' no longer holds") and "'next'" in answer
    assert (tmp_path / "root" / "during.json").exists() and not (tmp_path / "root" / "late.json").exists()
    with follow_hold(root, taken):  # in this process too, and with the lock gone altogether
        from sleepsound.core.storage import open_root, write_json

        with pytest.raises(RootLost, match="lock file was removed"):
            write_json(open_root(root).fs, f"{root}/gone.json", {"x": 1})


def test_a_task_run_in_the_holders_own_process_keeps_the_holders_fence(tmp_path) -> None:
    """A task run in the flow's own process follows the hold it already has: leaving the task must
    not unfence the run (the holder's fence, which heartbeats feed, stays in place)."""
    from sleepsound.core.storage import is_fenced, open_root, write_json
    from sleepsound.runs.root_lock import follow_hold

    store = open_root(str(tmp_path / "root"))
    with follow_hold(store, None):  # a task called outside any flow: nothing to follow
        assert not is_fenced(store.fs, store.path)
        write_json(store.fs, store.join("free.json"), {"x": 1})
    with hold_root(store, "mine", "run") as token:
        with follow_hold(store, token):
            write_json(store.fs, store.join("inside.json"), {"x": 1})
        assert is_fenced(store.fs, store.path)
    assert not is_fenced(store.fs, store.path)


def _replaying(monkeypatch, pattern: str) -> list[str]:
    """Exclusive creates of paths matching ``pattern`` behave as one whose answer was lost after the storage
    made it: the file is created, and the retried request is refused (FileExistsError, S3's 412)."""
    import re

    from sleepsound.runs import root_lock

    real, replayed = root_lock.create_bytes_exclusive, []

    def create(fs, path: str, data: bytes) -> None:
        real(fs, path, data)
        if re.search(pattern, path):
            replayed.append(path)
            raise FileExistsError(path)

    monkeypatch.setattr(root_lock, "create_bytes_exclusive", create)
    return replayed


def test_a_lock_whose_create_answer_was_lost_is_the_runs_own(tmp_path, monkeypatch) -> None:
    """It used to refuse the run by its own name ("in use by run 'lockreplay'") and leave the lock behind."""
    root = str(tmp_path / "root")
    replayed = _replaying(monkeypatch, r"/state/lock\.json$")
    with hold_root(root, "lockreplay", "nightly"):
        assert holder(root)["run_id"] == "lockreplay"
        with pytest.raises(RootBusy, match="in use by run 'lockreplay'"), hold_root(root, "other", "train"):
            pass  # another run still finds it held
    assert replayed == [lock_path(root)]  # the other run's create failed for real
    assert holder(root) is None  # released on the way out, not left to block the root


def test_a_takeover_claim_whose_create_answer_was_lost_is_the_runs_own(tmp_path, monkeypatch) -> None:
    root = str(tmp_path / "root")
    _write_dead_lock(root)
    replayed = _replaying(monkeypatch, r"\.takeover-")
    with hold_root(root, "next", "nightly"):
        assert holder(root)["run_id"] == "next"
    assert len(replayed) == 1
    assert holder(root) is None
    assert not list(Path(lock_path(root)).parent.glob("*.takeover-*"))  # no claim left behind


class _DropsFirstAnswer:
    """A FlakyS3Proxy that drops the answer to the first ``method`` request for a key ending in ``suffix``
    after S3 acted on it (botocore retries it: a replay), and passes everything else through."""

    def __init__(self, upstream: str, method: str, suffix: str) -> None:
        from urllib.parse import urlsplit

        from tests.flaky_s3 import FlakyS3Proxy

        self.seen, self.dropped = 0, 0
        request, lock, outer = threading.local(), threading.Lock(), self

        class Proxy(FlakyS3Proxy):
            def _fate(self) -> tuple[str | None, bool]:
                drop, delay = super()._fate()
                if getattr(request, "matches", False):
                    with lock:
                        outer.seen += 1
                        if outer.dropped == 0:
                            outer.dropped = 1
                            return "after", delay
                return drop, delay

        self.proxy = Proxy(upstream)
        base = self.proxy.server.RequestHandlerClass

        class Handler(base):  # type: ignore[misc, valid-type]
            def _noted(self) -> None:
                request.matches = self.command == method and urlsplit(self.path).path.endswith(suffix)
                base._forward(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _noted

        self.proxy.server.RequestHandlerClass = Handler
        self.url = self.proxy.url

    def __enter__(self) -> _DropsFirstAnswer:
        self.proxy.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.proxy.__exit__(*exc)


def test_a_lost_answer_to_the_lock_put_on_s3_neither_refuses_the_run_nor_leaves_its_lock(
    s3_endpoint, monkeypatch
) -> None:
    """The audit's case on a real S3 API: the answer to the lock's PUT is dropped after S3 stored it,
    botocore retries the conditional PUT, and S3 refuses it (412) as the lock exists: the run's own."""
    s3fs.S3FileSystem().mkdir("sleepsound-lock-replay")
    root = "s3://sleepsound-lock-replay/root"
    with _DropsFirstAnswer(s3_endpoint, "PUT", "/root/state/lock.json") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            with hold_root(root, "lockreplay", "nightly"):
                assert holder(root)["run_id"] == "lockreplay"
            assert holder(root) is None  # its own lock removed on the way out
        finally:
            monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
            s3fs.S3FileSystem.clear_instance_cache()
    assert proxy.dropped == 1 and proxy.seen >= 2, proxy.seen  # dropped, then replayed
    assert holder(root) is None


def _lock_of_this_host(root: str, **fields: object) -> Path:
    """A lock naming this host and ``fields`` (pid, boot_id, pid_ns, started), renewed just now."""
    import socket

    path = Path(lock_path(root))
    path.parent.mkdir(parents=True, exist_ok=True)
    now = "2999-01-01T00:00:00+00:00"  # a heartbeat that never goes stale: the storage's clock decides
    record = {"run_id": "neighbour", "purpose": "nightly", "host": socket.gethostname(), "acquired": now}
    path.write_text(json.dumps({**record, **fields, "heartbeat": now}))
    return path


def _dead_pid() -> int:
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


@pytest.mark.parametrize("other", ["pid_ns", "boot_id"])
def test_a_holder_of_this_hostname_in_another_pid_namespace_or_boot_waits_to_go_stale(other, tmp_path) -> None:
    """Containers with host networking share the hostname, not their processes: its pid is not ours to judge."""
    from sleepsound.runs.root_lock import _boot_id, _pid_ns

    root = str(tmp_path / "root")
    here = {"boot_id": _boot_id(), "pid_ns": _pid_ns()}
    elsewhere = {**here, other: 1 if other == "pid_ns" else "another-boot"}
    path = _lock_of_this_host(root, pid=_dead_pid(), **elsewhere)
    with pytest.raises(RootBusy, match="in use by run 'neighbour'"), hold_root(root, "mine", "run"):
        pass
    _age(path, 700)
    with hold_root(root, "mine", "run"):
        assert holder(root)["run_id"] == "mine"


def test_a_dead_holder_in_this_pid_namespace_frees_the_root_at_once(tmp_path) -> None:
    from sleepsound.runs.root_lock import _boot_id, _pid_ns

    root = str(tmp_path / "root")
    _lock_of_this_host(root, pid=_dead_pid(), boot_id=_boot_id(), pid_ns=_pid_ns(), started=1)
    with hold_root(root, "mine", "run"):
        assert holder(root)["run_id"] == "mine"


def test_a_holders_pid_now_naming_another_process_frees_the_root_at_once(tmp_path) -> None:
    """The pid is alive but started at another time than the holder: reused after the holder died."""
    import os

    from sleepsound.runs.root_lock import _boot_id, _pid_ns, _started

    root = str(tmp_path / "root")
    me = {"pid": os.getpid(), "boot_id": _boot_id(), "pid_ns": _pid_ns()}
    _lock_of_this_host(root, **me, started=_started(os.getpid()))  # the very process: alive
    with pytest.raises(RootBusy, match="in use by run 'neighbour'"), hold_root(root, "mine", "run"):
        pass
    _lock_of_this_host(root, **me, started=_started(os.getpid()) - 1)
    with hold_root(root, "mine", "run"):
        assert holder(root)["run_id"] == "mine"


_HOLDER_IN_ITS_OWN_PID_NAMESPACE = """
import os, subprocess, sys
with open("/proc/sys/kernel/ns_last_pid", "w") as out:  # the holder's pid: one that is free outside
    out.write(sys.argv[1])
holder = (
    "import os, sys\\n"
    "from sleepsound.runs.root_lock import hold_root\\n"
    "with hold_root(sys.argv[1], 'neighbour', 'nightly', heartbeat_s=0.05):\\n"
    "    print('held', os.getpid(), flush=True)\\n"
    "    sys.stdin.readline()\\n"
    "print('released', flush=True)\\n"
)
sys.exit(subprocess.run([sys.executable, "-c", holder, sys.argv[2]]).returncode)
"""


def test_a_live_holder_in_another_pid_namespace_of_this_host_keeps_the_root(tmp_path) -> None:
    """For real: a holder in its own PID namespace (unshare), under this hostname, at a pid that names no
    process here. It used to be judged dead at once and lose its root."""
    import os
    import shutil
    import subprocess
    import sys

    unshare = shutil.which("unshare")
    probe = [unshare or "unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "true"]
    if unshare is None or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("this machine lets no test make a PID namespace (unshare)")
    with open("/proc/sys/kernel/pid_max") as handle:
        pid_max = int(handle.read())
    free = next(p for p in range(pid_max - 2, 300, -1) if not os.path.exists(f"/proc/{p}"))
    root = str(tmp_path / "root")
    run = subprocess.Popen(
        [*probe[:-1], sys.executable, "-c", _HOLDER_IN_ITS_OWN_PID_NAMESPACE, str(free - 1), root],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stdout.readline().split() == ["held", str(free)], run.stderr.read() if run.poll() else ""
        assert holder(root)["pid"] == free and not os.path.exists(f"/proc/{free}")  # "dead" seen from here
        with pytest.raises(RootBusy, match="in use by run 'neighbour'"), hold_root(root, "mine", "run"):
            pass
        threading.Event().wait(0.2)  # a few of its heartbeats: it still holds the root
        assert holder(root)["run_id"] == "neighbour"
    finally:
        out, err = run.communicate("\n", timeout=60)
    assert run.returncode == 0 and out.strip() == "released", err  # no RootLost: nobody took it over
    assert holder(root) is None
