"""Careless or hostile clip folders: each file used or rejected by name, never a silently wrong model."""

from __future__ import annotations

from pathlib import Path

import typer
from typer.testing import CliRunner

from sleepsound.clips.cli import clips_app
from tests.clips.test_clips import make_dataset


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(clips_app, name="clips")
    return app


def test_a_label_folder_with_no_usable_clip_is_refused_not_trained_as_an_empty_class(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", per_label=6)
    (tmp_path / "data" / "Snoring").mkdir()  # a stray folder whose files are all unusable
    (tmp_path / "data" / "Snoring" / "1_0.wav").write_bytes(b"")
    (tmp_path / "data" / "Snoring" / "notes.txt").write_text("not audio")
    args = ["clips", "train", "--data", str(data), "--out", str(tmp_path / "model"), "--backbone", "mel"]
    result = CliRunner().invoke(_cli(), [*args, "--hard-negatives", "none", "--block-size", "2", "--folds", "2"])
    assert result.exit_code == 2, result.output
    assert "label folder 'Snoring' has no usable clip (2 file(s) rejected; first: Snoring/1_0.wav: empty" in (
        result.output
    )
    assert "Traceback" not in result.output and not (tmp_path / "model").exists()
