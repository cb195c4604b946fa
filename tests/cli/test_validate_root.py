"""`sleepsound validate --root` writes the manifest, so it holds the root like every writing command."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from sleepsound.cli import app
from sleepsound.runs.root_lock import hold_root, holder


def test_validate_refuses_a_root_another_run_holds_and_writes_nothing(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "night.wav").write_bytes(b"")  # one recording (quarantined: empty)
    root = str(tmp_path / "root")
    with hold_root(root, "night-7", "nightly"):
        out = CliRunner().invoke(app, ["validate", str(source), "--root", root, "--quick"])
        assert holder(root)["run_id"] == "night-7"  # its lock untouched
    assert out.exit_code == 2, out.output
    assert "not started" in out.output and "night-7" in out.output
    assert not (tmp_path / "root" / "manifest").exists()


def test_validate_holds_the_root_while_it_writes_and_frees_it_after(tmp_path: Path, monkeypatch) -> None:
    import sleepsound.ingest.manifest as manifest

    source = tmp_path / "source"
    source.mkdir()
    (source / "night.wav").write_bytes(b"")  # one recording (quarantined: empty)
    root = str(tmp_path / "root")
    seen: list[dict | None] = []
    real_write = manifest.write_manifest

    def write_manifest(at, rows):  # a spy that looks at the lock while the manifest is written
        seen.append(holder(at))
        return real_write(at, rows)

    monkeypatch.setattr(manifest, "write_manifest", write_manifest)
    out = CliRunner().invoke(app, ["validate", str(source), "--root", root, "--quick"])
    assert out.exit_code == 0, out.output
    assert seen and seen[0] is not None and seen[0]["purpose"] == "validate"
    assert holder(root) is None
    assert (tmp_path / "root" / "manifest" / "manifest.parquet").exists()
