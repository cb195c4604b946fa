"""``reproduce-embc2025`` end to end on a synthetic cohort in PSG-Audio layout (tiny backbones)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleepsound.cli import app
from sleepsound.synth.writers import generate_cohort


@pytest.fixture(scope="module")
def psg_audio(tmp_path_factory) -> Path:
    """Five 9-minute nights, one with a corrupt EDF (excluded, as the paper excluded bad recordings)."""
    out = tmp_path_factory.mktemp("embc-cohort")
    generate_cohort(out, n_subjects=5, hours=0.15, seed=8, sample_rate=16_000, part_seconds=540, cycle_minutes=9)
    broken = sorted(p.name for p in (out / "APNEA_EDF").iterdir())[0]
    (out / "APNEA_EDF" / broken / f"{broken}[001].edf").write_bytes(b"not an edf")
    return out


def test_reproduce_prints_table_ii_beside_the_papers_numbers(psg_audio, tiny_whisper, tmp_path):
    root = tmp_path / "root"
    out = CliRunner().invoke(
        app,
        [
            "reproduce-embc2025",
            "--psg-audio",
            str(psg_audio),
            "--root",
            str(root),
            "--backbone",
            tiny_whisper,
            "--local",
            "--json",
            "--mel-pool-seconds",
            "0.5",
            "--set",
            "training.epochs=2",
            "--set",
            "training.lr=3e-3",
            "--set",
            "training.min_lr=3e-4",
            "--set",
            "backbone.batch_size=8",
        ],
    )
    assert out.exit_code == 0, out.output
    # Progress bars of model loading share the output (CliRunner mixes stderr in): take the JSON object.
    result = json.loads(out.output[out.output.index('{"protocol"') :].splitlines()[0])
    assert (result["recordings"], result["accepted"], len(result["excluded"])) == (5, 4, 1)
    assert result["excluded"][0]["reason_code"] == "unreadable_edf"
    assert (result["participants"], result["train_participants"], result["test_participants"]) == (4, 3, 1)
    assert set(result["models"]) == {"SoundSleepNet", "30-s HuBERT", "90-s HuBERT"}
    assert result["models"]["90-s HuBERT"]["context_epochs"] == 3
    assert result["models"]["SoundSleepNet"]["backbone"] == "mel"
    n_test = {m["n_epochs"] for m in result["models"].values()}
    assert len(n_test) == 1 and n_test.pop() > 0  # one split: the same test epochs for every model
    rows = result["table_ii"]
    assert [(r["model"], r["class"]) for r in rows[:3]] == [("SoundSleepNet", c) for c in ("Wake", "REM", "NREM")]
    assert rows[0]["paper_SE"] == 0.78 and all(r["paper_NPV"] is not None for r in rows)
    assert json.loads((root / "reproduce" / "embc2025.json").read_text())["table_ii"] == rows

    table = CliRunner().invoke(
        app,
        [
            "reproduce-embc2025",
            "--psg-audio",
            str(psg_audio),
            "--root",
            str(root),
            "--backbone",
            tiny_whisper,
            "--local",
            "--model",
            "30-s HuBERT",
            "--set",
            "training.epochs=1",
        ],
    )
    assert table.exit_code == 0, table.output
    assert "Table II" in table.output and "(0.81)" in table.output  # the paper's 30-s HuBERT Wake SE
    bad = CliRunner().invoke(
        app, ["reproduce-embc2025", "--psg-audio", str(psg_audio), "--root", str(root), "--local", "--model", "ResNet"]
    )
    assert bad.exit_code == 2 and "unknown models" in bad.output


def test_a_refused_source_or_a_held_root_leaves_the_roots_manifest_as_it_was(psg_audio, tmp_path):
    """The recipe replaced the root's manifest before it could refuse the source (an empty folder wiped the
    root's cohort from it), and it never held the root, so it did so under another run (audit of 2026-12-08)."""
    from sleepsound.core.config import Config
    from sleepsound.ingest.manifest import build_manifest, read_manifest, write_manifest
    from sleepsound.runs.root_lock import hold_root

    root = tmp_path / "root"
    rows = build_manifest(str(psg_audio), Config().preprocess, Config().validation, use_ray=False)
    write_manifest(str(root), rows)
    before = sorted(read_manifest(str(root))["recording_id"])
    (tmp_path / "empty").mkdir()
    base = ["reproduce-embc2025", "--root", str(root), "--local", "--model", "SoundSleepNet"]
    refused = CliRunner().invoke(app, [*base, "--psg-audio", str(tmp_path / "empty")])
    assert refused.exit_code == 2 and "cannot reproduce" in refused.output and "subjects" in refused.output
    assert "not expected" not in refused.output
    unknown = CliRunner().invoke(app, [*base[:-2], "--psg-audio", str(psg_audio), "--backbone", "./no-such-model"])
    assert unknown.exit_code == 2 and "no model folder" in unknown.output
    with hold_root(str(root), "someone-else", "score"):
        busy = CliRunner().invoke(app, [*base, "--psg-audio", str(tmp_path / "empty")])
    assert busy.exit_code == 2 and "not started" in busy.output and "someone-else" in busy.output
    assert sorted(read_manifest(str(root))["recording_id"]) == before
