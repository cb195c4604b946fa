"""A flow's tasks write only while their run holds the root: every writing task follows the hold
the flow passes it, so a worker whose run was taken over writes nothing (``follow_hold``)."""

from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest

import tasks
from sleepsound.core.storage import RootLost
from sleepsound.ingest.manifest import write_manifest
from sleepsound.runs.root_lock import hold_root

FLOWS = Path(__file__).resolve().parents[2] / "flows"


def _tasks_with_a_hold() -> set[str]:
    import importlib
    import pkgutil

    names = set()
    for info in pkgutil.iter_modules(tasks.__path__):
        module = importlib.import_module(f"tasks.{info.name}")
        for name, obj in vars(module).items():
            fn = getattr(obj, "fn", None)
            mine = fn is not None and getattr(fn, "__module__", None) == module.__name__
            if mine and "hold" in inspect.signature(fn).parameters:
                names.add(name)
    return names


def test_every_flow_passes_its_hold_to_every_task_that_writes() -> None:
    followers = _tasks_with_a_hold()
    assert {"ingest", "embed", "train", "promote", "predict", "report", "mark_done"} <= followers
    missing = []
    for path in sorted(FLOWS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "submit"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id in followers
                and not any(k.arg == "hold" for k in node.keywords)
            ):
                missing.append(f"{path.name}:{node.lineno} {node.func.value.id}")
    assert not missing, f"task submitted without the run's hold: {missing}"


def test_a_task_whose_run_was_taken_over_writes_nothing(tmp_path) -> None:
    """The task body as a Ray worker runs it (another process's hold, here a stale token)."""
    from tasks.nightly import mark_done

    root = str(tmp_path / "root")
    write_manifest(root, [])
    with hold_root(root, "first", "nightly") as first:
        pass
    lock = tmp_path / "root" / "state" / "lock.json"  # another host's run holds the root now
    lock.write_text(json.dumps({"run_id": "second", "purpose": "nightly", "acquired": "2026-12-04T00:00:00+00:00"}))
    with pytest.raises(RootLost, match=r"run 'first' no longer holds .*the lock is now held by run 'second'"):
        mark_done.fn(root, "first", [], hold=first)
    assert not (tmp_path / "root" / "state" / "nightly.json").exists()
    assert mark_done.fn(root, "first", []) == 0  # called outside a flow (no hold): nothing to follow
