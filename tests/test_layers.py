"""The library does not reach up into the orchestrator: only ``sleepsound/cli.py`` imports ``flows`` or ``tasks``.

Checked on the source (every import statement, at any depth), so a lazy import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "sleepsound"
DOOR = LIBRARY / "cli.py"          # the one command-line face allowed to start flows
ORCHESTRATOR = {"flows", "tasks"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_only_the_cli_imports_flows_or_tasks() -> None:
    offenders = {str(path.relative_to(LIBRARY.parent)): sorted(_imported_roots(path) & ORCHESTRATOR)
                 for path in sorted(LIBRARY.rglob("*.py")) if path != DOOR and _imported_roots(path) & ORCHESTRATOR}
    assert offenders == {}
    assert "flows" in _imported_roots(DOOR)     # the scan sees imports inside functions (the CLI's are all lazy)
