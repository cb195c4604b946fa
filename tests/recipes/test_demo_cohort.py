"""The demo's source folder holds exactly the cohort its settings describe."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from sleepsound.recipes.demo import ensure_demo_cohort


def _nights(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "APNEA_EDF").iterdir())


def test_a_demo_cohort_of_other_settings_is_replaced_not_added_to(tmp_path: Path) -> None:
    """Generated over the old one, a demo of fewer nights kept the earlier nights beside the new ones,
    and the demo then read them all."""
    out, quiet = tmp_path / "source", Console(quiet=True)
    ensure_demo_cohort(out, subjects=2, hours=0.02, seed=3, console=quiet)
    assert len(_nights(out)) == 2
    ensure_demo_cohort(out, subjects=1, hours=0.02, seed=4, console=quiet)
    assert len(_nights(out)) == 1
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    ensure_demo_cohort(out, subjects=1, hours=0.02, seed=4, console=quiet)  # the same settings: kept as is
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
