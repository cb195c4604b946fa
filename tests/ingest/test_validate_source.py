"""`sleepsound validate` is given a folder: a file, or nothing at all, is refused with exit 2 and the
words the flow commands use (defect 9: a file was validated as a folder it could not list, exit 0;
"" validated the current folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleepsound.cli import app


@pytest.mark.parametrize("as_uri", [False, True])
def test_a_file_given_as_the_source_is_refused(tmp_path: Path, as_uri: bool) -> None:
    night = tmp_path / "night.wav"
    night.write_bytes(b"RIFF")
    source = f"file://{night}" if as_uri else str(night)
    out = CliRunner().invoke(app, ["validate", source, "--json", "--root", str(tmp_path / "root")])
    assert out.exit_code == 2, out.output
    assert "is a file: give the folder that holds the recordings" in out.output
    assert not (tmp_path / "root").exists()


@pytest.mark.parametrize("source", ["", "   "])
def test_an_empty_source_is_refused_not_read_as_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    (tmp_path / "here.wav").write_bytes(b"")  # what "" would have validated
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["validate", source, "--json"])
    assert out.exit_code == 2, out.output
    assert "the source is empty" in out.output and "here.wav" not in out.output
