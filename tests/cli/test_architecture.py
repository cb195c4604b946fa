"""The layer rules are checked, not just stated.

``make test`` runs import-linter on the contracts in ``pyproject.toml``; here we show that the
contracts really refuse a wrong arrow (a library module importing a flow), and check the one
rule import-linter cannot express: only the embedding stage's Ray adapter calls Ray Data.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBRARY = REPO / "sleepsound"
RAY_DATA_ADAPTER = LIBRARY / "embed" / "ray_adapter.py"


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": str(tree)}  # this copy's packages, not the installed ones
    return subprocess.run([exe, "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=300)


def test_the_contracts_refuse_a_library_module_that_imports_a_flow(tmp_path: Path) -> None:
    for name in ("sleepsound", "flows", "tasks"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _lint_imports(tmp_path).returncode == 0, "the contracts hold on the tree as it is"

    metrics = tmp_path / "sleepsound" / "report" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\n\ndef _wrong() -> None:\n    from flows.score import score  # noqa\n")
    broken = _lint_imports(tmp_path)
    assert broken.returncode != 0
    assert "sleepsound.report.metrics -> flows.score" in broken.stdout
    assert "BROKEN" in broken.stdout


def _calls_ray_data(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in {"data", "map_batches"}
            and (node.attr == "map_batches" or (isinstance(node.value, ast.Name) and node.value.id == "ray"))
        ):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ray.data"):
            return True
        if isinstance(node, ast.Import) and any(a.name.startswith("ray.data") for a in node.names):
            return True
    return False


def test_only_the_embedding_stages_ray_adapter_calls_ray_data() -> None:
    callers = sorted(str(p.relative_to(REPO)) for p in LIBRARY.rglob("*.py") if _calls_ray_data(p))
    assert callers == [str(RAY_DATA_ADAPTER.relative_to(REPO))]
