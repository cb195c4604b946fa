"""Command-line conventions a user of any tool expects (issue 19)."""

from __future__ import annotations

from importlib.metadata import version

from typer.testing import CliRunner

from sleepsound.cli import app


def test_version_prints_the_installed_version_and_exits_0() -> None:
    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0 and out.stdout.strip() == f"sleepsound {version('sleepsound')}"
