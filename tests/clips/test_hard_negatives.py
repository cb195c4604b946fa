"""`clips hard-negatives`: the folder of generated bedroom sounds, its categories file, levels and snoring
mixes, written the same from the same seed."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import typer
from typer.testing import CliRunner

from sleepsound.clips.categories import categorise, read_categories
from sleepsound.clips.cli import clips_app
from sleepsound.clips.dataset import load_dataset
from sleepsound.clips.hard_negatives import LEVEL_DBFS, write_hard_negatives
from sleepsound.clips.train import ClipTrainSettings, load_extra, load_labelled, tied_rows, untied, with_extra
from sleepsound.synth import bedroom
from tests.clips.test_clips import make_dataset

RATE = bedroom.SAMPLE_RATE


def test_the_folder_writer_makes_the_clips_folder_the_categories_and_the_mixes(tmp_path: Path) -> None:
    snores = make_dataset(tmp_path / "real", per_label=6)
    (snores / "snoring" / "1_bad.wav").write_bytes(b"not audio")
    out = tmp_path / "hard"
    summary = write_hard_negatives(
        out, n=12, seed=3, seconds=0.5, speech_source="synth", snoring=snores, n_snoring=10, snrs_db=(0.0, 10.0)
    )
    assert summary["counts"] == {"no_snoring": 12, "snoring": 10} and summary["speech_source"] == "synth"
    assert summary["snoring_clips"]["used"] == 6 and summary["snoring_clips"]["skipped"][0].startswith(
        "snoring/1_bad.wav: "
    )
    assert not list(tmp_path.glob(".hard*"))  # built aside and renamed into place
    ds = load_dataset(out)
    assert ds.counts() == {"discovered": 22, "used": 22, "rejected": 0}
    for path in sorted(out.glob("*/*.wav")):
        audio, rate = sf.read(path, dtype="float64")
        assert rate == RATE and audio.shape == (RATE // 2,) and np.all(np.isfinite(audio))
        assert np.abs(audio).max() < 0.99
        rms_db = 20 * np.log10(np.sqrt(np.mean(audio**2)))
        assert LEVEL_DBFS[0] - 1.5 <= rms_db <= LEVEL_DBFS[1] + 0.5, path.name

    ranges = read_categories(out / "categories.csv")
    cats = categorise(ds.files, ds.labels, ranges, block_size=25)
    with (out / "manifest.csv").open() as fh:
        manifest = {row["file"]: row for row in csv.DictReader(fh)}
    assert set(manifest) == set(ds.files)
    assert all(manifest[f]["category"] == c for f, c in zip(ds.files, cats, strict=True))
    negatives = {c for c, lb in zip(cats, ds.labels, strict=True) if lb == "no_snoring"}
    assert negatives == set(bedroom.CATEGORIES)
    assert "snoring over tv_speech at 10 dB" in cats and all(
        manifest[f]["snore_file"].startswith("snoring/1_") for f in ds.files if f.startswith("snoring/")
    )

    again = tmp_path / "again"
    write_hard_negatives(
        again, n=12, seed=3, seconds=0.5, speech_source="synth", snoring=snores, n_snoring=10, snrs_db=(0.0, 10.0)
    )
    for path in sorted(out.glob("*/*.wav")):
        assert path.read_bytes() == (again / path.relative_to(out)).read_bytes()  # the same seed, the same files

    with pytest.raises(ValueError, match="already exists"):
        write_hard_negatives(out, n=12, speech_source="synth")
    with pytest.raises(ValueError, match="one per category"):
        write_hard_negatives(tmp_path / "few", n=3, speech_source="synth")


def test_the_cli_writes_a_folder_and_never_over_an_existing_one(tmp_path: Path) -> None:
    app = typer.Typer()
    app.add_typer(clips_app, name="clips")
    out = tmp_path / "hard"
    args = ["clips", "hard-negatives", "--out", str(out), "--n", "10", "--seed", "1", "--speech", "synth", "--json"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["per_category"] == dict.fromkeys(bedroom.CATEGORIES, 2)
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output


def test_added_clips_join_every_training_side_and_are_never_validated_or_tested_on(tmp_path: Path) -> None:
    """`--hard-negatives`: the figures stay those of the data's own held-out blocks; the added clips are
    embedded (and cached) on their own, and a folder mixed from the data's own snores is refused."""
    app = typer.Typer()
    app.add_typer(clips_app, name="clips")
    data = make_dataset(tmp_path / "data", per_label=16)
    extra = tmp_path / "hard"
    write_hard_negatives(extra, n=10, seed=0, seconds=1.0, speech_source="synth")
    cache = tmp_path / "cache"
    common = ["--backbone", "mel", "--block-size", "4", "--folds", "2", "--head", "mlp", "--max-epochs", "3"]
    common += ["--cache", str(cache), "--json"]

    res = CliRunner().invoke(
        app,
        ["clips", "cv", "--data", str(data), "--k", "2", "--hard-negatives", "none", "--target-recall", "0", *common],
    )
    assert res.exit_code == 0, res.output
    plain = json.loads(res.stdout)
    assert plain["added_to_training"] == 0 and len(list(cache.glob("clips-*.npy"))) == 1
    res = CliRunner().invoke(
        app, ["clips", "cv", "--data", str(data), "--k", "2", "--hard-negatives", str(extra), *common]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["added_to_training"] == 10 and out["hard_negatives"] == str(extra)
    assert out["n"] == 32 == sum(f["n"] for f in out["folds"]) == sum(map(sum, out["confusion"]))  # data only
    assert all(not r["category"].startswith("+extra") for r in out["categories"])
    assert len(list(cache.glob("clips-*.npy"))) == 2  # the data's embeddings reused, the added ones cached apart

    model = tmp_path / "model"
    res = CliRunner().invoke(
        app,
        ["clips", "train", "--data", str(data), "--out", str(model), "--test-fraction", "0.25"]
        + ["--hard-negatives", str(extra), *common],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    counts = summary["counts"]
    assert counts["added_to_training"] == 10 and counts["used"] == 32  # the data's own clips
    assert counts["train"] == 24 + 10 and counts["test"] == summary["held_out"]["n"] == 8
    config = json.loads((model / "config.json").read_text())["extra"]["clips"]
    assert sum(config["split"]["validation"]["fold_sizes"]) == 24  # validation: the data's training blocks only
    assert not any(f.startswith("+extra") for f in config["held_out_files"])
    assert counts["saved_model_trained_on"] == 32 + 10

    # snoring mixed from the data's own clips: each mix is tied to its snore and kept off every training
    # side whose validation or test side holds that snore (augmentation inside the training folds only)
    mixed = tmp_path / "mixed"
    write_hard_negatives(mixed, n=10, seed=0, speech_source="synth", snoring=data, n_snoring=15)
    ds = load_labelled(data, ClipTrainSettings())
    full = with_extra(ds, load_extra(ClipTrainSettings(hard_negatives=str(mixed)), ds))
    tied = tied_rows(full, mixed)
    added = np.arange(len(ds.files), len(full.files))
    assert (tied[: len(ds.files)] == -1).all()
    is_mix = np.array([full.files[i].startswith("+extra/snoring/") for i in added])
    assert is_mix.sum() == 15 and (tied[added[is_mix]] >= 0).all() and (tied[added[~is_mix]] == -1).all()
    assert all(full.labels[tied[i]] == "snoring" for i in added[is_mix])
    held = np.unique(tied[added[is_mix]])[:2]
    kept = untied(np.arange(len(full.files)), held, tied)
    assert not np.isin(tied[kept], held).any() and len(kept) == len(full.files) - np.isin(tied, held).sum()
    res = CliRunner().invoke(
        app, ["clips", "cv", "--data", str(data), "--k", "2", "--hard-negatives", str(mixed), *common]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["added_to_training"] == 25


def test_generated_hard_negatives_are_made_for_the_run_mixed_from_its_own_snores_and_tied_to_them(
    tmp_path: Path,
) -> None:
    """`--hard-negatives generated`: made per run (seeded), the data's snores mixed over fresh backgrounds,
    the folder gone afterwards; cross-validation still scores the data's own clips only."""
    from sleepsound.clips.cross_validate import cross_validate_clips
    from sleepsound.clips.train import resolved_hard_negatives, train_clips

    data = make_dataset(tmp_path / "data", per_label=16)
    settings = ClipTrainSettings(
        backbone="mel", block_size=4, folds=2, heads=("mlp",), max_epochs=3, hard_negatives="generated"
    )
    settings.generated_per_clip = (10 / 32, 15 / 32)  # 10 negatives and 15 mixes for 32 clips
    heard: list[str] = []
    with resolved_hard_negatives(data, settings, heard.append) as (resolved, made):
        folder = Path(resolved.hard_negatives or "")
        assert folder.is_dir() and made is not None and made["counts"] == {"no_snoring": 10, "snoring": 15}
        with (folder / "manifest.csv").open() as fh:
            sources = {row["snore_file"] for row in csv.DictReader(fh) if row["label"] == "snoring"}
        assert sources and sources <= {f"snoring/1_{i}.wav" for i in range(16)}  # the data's own snores
        first = sorted(p.read_bytes() for p in folder.glob("no_snoring/*.wav"))
    assert not folder.exists() and "made 10 hard negatives and 15 snoring mixes" in heard[0]
    with resolved_hard_negatives(data, settings, heard.append) as (resolved, _):
        assert sorted(p.read_bytes() for p in Path(resolved.hard_negatives or "").glob("no_snoring/*.wav")) == first

    summary = train_clips(data, tmp_path / "model", replace(settings, test_fraction=0.34))
    assert summary["counts"]["added_to_training"] == 25 and summary["hard_negatives_generated"]["seed"] == 101
    assert summary["counts"]["train"] < 24 + 25  # mixes of the test blocks' snores left out of training
    result = cross_validate_clips(data, settings, k=2)
    assert result["n"] == 32 and result["hard_negatives"] == "generated" and result["added_to_training"] == 25
    other = tmp_path / "other"
    for label in ("a", "b"):
        (other / label).mkdir(parents=True)
        for i in range(8):
            sf.write(other / label / f"{i}.wav", np.full(8000, 0.1 * (i + 1), np.float32), 16000)
    with resolved_hard_negatives(other, settings, heard.append) as (resolved, made):
        assert resolved.hard_negatives is None and made == {"skipped": "labels ['a', 'b']"}  # not snoring data
    assert "no hard negatives generated" in heard[-1]


def test_household_categories_are_written_on_request_undistorted_and_reach_training(tmp_path: Path) -> None:
    """`clips hard-negatives --category door ...` and `--generated-category`: the household transients are
    opt-in; an impulse is written quieter rather than flattened by the limiter; unknown or doubled names fail."""
    from sleepsound.clips.train import resolved_hard_negatives
    from sleepsound.synth.sound import LIMIT_KNEE

    app = typer.Typer()
    app.add_typer(clips_app, name="clips")
    out = tmp_path / "household"
    n = str(2 * len(bedroom.HOUSEHOLD_CATEGORIES))  # two of each
    args = ["clips", "hard-negatives", "--out", str(out), "--n", n, "--seed", "2", "--json"]
    res = CliRunner().invoke(app, [*args, *[f"--category={c}" for c in bedroom.HOUSEHOLD_CATEGORIES]])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["per_category"] == dict.fromkeys(bedroom.HOUSEHOLD_CATEGORIES, 2)
    ds = load_dataset(out)
    cats = categorise(ds.files, ds.labels, read_categories(out / "categories.csv"), block_size=25)
    assert sorted(set(cats)) == sorted(bedroom.HOUSEHOLD_CATEGORIES)
    for path, category in zip(ds.files, cats, strict=True):
        audio, _ = sf.read(out / path, dtype="float64")
        clean = bedroom.background(category, 2, int(Path(path).stem.split("_")[1]) % 10_000)
        crest = np.abs(audio).max() / np.sqrt(np.mean(audio**2))
        # kept: a peak that lands between the limiter's knee and ceiling loses at most 12% to the soft knee
        # (0.98 -> 0.87); a flattened impulse would lose several times that
        assert crest == pytest.approx(np.abs(clean).max(), rel=0.13), path
        rms_db = 20 * np.log10(np.sqrt(np.mean(audio**2)))
        assert np.abs(audio).max() <= LIMIT_KNEE + 1e-3 or rms_db >= LEVEL_DBFS[0] - 1  # quieter only when it must
    bad = CliRunner().invoke(app, ["clips", "hard-negatives", "--out", str(tmp_path / "x"), "--category", "doorbell"])
    assert bad.exit_code == 2 and "doorbell" in bad.output
    with pytest.raises(ValueError, match="give each once"):
        write_hard_negatives(tmp_path / "twice", n=4, categories=("door", "door"))

    data = make_dataset(tmp_path / "data", per_label=8)
    settings = ClipTrainSettings(hard_negatives="generated", generated_categories=("door", "water_flush"))
    with resolved_hard_negatives(data, settings, lambda _m: None) as (_, made):
        assert made is not None and made["per_category"] == {"door": 5, "water_flush": 5}  # 0.6 x 16 clips
    assert ClipTrainSettings().generated_categories == bedroom.CATEGORIES  # the default stays the steady five


def test_clips_cv_makes_the_generated_categories_it_is_asked_for(tmp_path: Path) -> None:
    """`clips cv --generated-category`: the categories reach the run's generated folder (and the record)."""
    app = typer.Typer()
    app.add_typer(clips_app, name="clips")
    data = make_dataset(tmp_path / "data", per_label=16)
    args = ["clips", "cv", "--data", str(data), "--k", "2", "--backbone", "mel", "--block-size", "4", "--folds", "2"]
    args += ["--head", "mlp", "--max-epochs", "2", "--json", "--generated-category", "door"]
    res = CliRunner().invoke(app, [*args, "--generated-category", "clock_tick"])
    assert res.exit_code == 0, res.output
    made = json.loads(res.stdout)["hard_negatives_generated"]
    assert made["per_category"] == {"door": 10, "clock_tick": 9} and made["seed"] == 101  # 0.6 x 32 clips
    bad = CliRunner().invoke(app, [*args, "--generated-category", "doorbell"])
    assert bad.exit_code == 2 and "doorbell" in bad.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--snr", "nan"], "--snr must be from -30 to 60 dB, got nan"),
        (["--snr", "0", "--snr=-inf"], "--snr must be from -30 to 60 dB, got -inf"),
        (["--snr", "61"], "--snr must be from -30 to 60 dB, got 61"),
        (["--seconds", "nan"], "--seconds must be more than 0 (at least one sample) and at most 60, got nan"),
        (["--seconds", "-1"], "--seconds must be more than 0"),
        (["--seconds", "0.00001"], "--seconds must be more than 0"),
        (["--seconds", "600"], "and at most 60, got 600"),
        (["--seed", "-1"], "--seed must be a whole number >= 0, got -1"),
    ],
)
def test_bad_options_are_refused_in_one_line_before_anything_is_made(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    """--snr nan or -inf wrote 'snoring' clips of one constant sample (exit 0), --seconds 600 ten-minute clips
    (1.3 GB), and a bad --seconds or --seed failed after making .OUT.partial and left it, in words that named no
    option. Now exit 2, one line naming the option and its range, and nothing made."""
    app = typer.Typer()
    app.add_typer(clips_app, name="clips")
    snores = make_dataset(tmp_path / "real", per_label=2)
    out = tmp_path / "hard"
    cmd = ["clips", "hard-negatives", "--out", str(out), "--n", "5", "--speech", "synth"]
    cmd += ["--snoring", str(snores), "--n-snoring", "15"]
    res = CliRunner().invoke(app, [*cmd, *args])
    assert res.exit_code == 2 and needle in res.stderr, res.output
    assert len(res.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real"]  # no OUT, no .OUT.partial


def test_a_run_that_fails_after_starting_leaves_no_partial_folder(tmp_path: Path) -> None:
    """A run that failed once the aside folder was made left ``.OUT.partial`` behind. Here another writer
    puts a file into the (empty) OUT while the clips are made, so OUT cannot be replaced at the end."""
    out = tmp_path / "hard"
    out.mkdir()

    def meanwhile(_message: str) -> None:
        (out / "someone-else.txt").write_text("x")

    with pytest.raises(OSError):
        write_hard_negatives(out, n=5, seconds=0.1, speech_source="synth", progress=meanwhile)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard"]
    assert sorted(p.name for p in out.iterdir()) == ["someone-else.txt"]
