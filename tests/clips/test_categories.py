"""Per-source-category figures: the categories file, the block fallback, the worst category first in
`clips cv` and `clips evaluate` (real forward passes of the weightless mel front end on synthetic clips)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import sleepsound.clips.categories as categories_module
from sleepsound.clips.categories import (
    CategoryRange,
    categorise,
    find_categories,
    per_category,
    read_categories,
    read_csv_rows,
    write_categories,
)
from sleepsound.clips.cli import clips_app
from tests.clips.test_clips import make_dataset

KHAN = Path(__file__).with_name("khan2019_categories.csv")


def test_the_shared_datasets_description_names_ten_categories_of_fifty() -> None:
    ranges = read_categories(KHAN)
    assert len(ranges) == 10 and {r.label for r in ranges} == {"no_snoring"}
    assert [(r.first, r.last) for r in ranges] == [(50 * i, 50 * i + 49) for i in range(10)]
    files = ["no_snoring/0_460.wav", "no_snoring/0_160.wav", "snoring/1_30.wav", "snoring/1_3.wav"]
    labels = ["no_snoring", "no_snoring", "snoring", "snoring"]
    assert categorise(files, labels, ranges, block_size=25) == [
        "television news",
        "near-silence with a vibration motor",
        "snoring/run 1 (30-30)",  # a gap in the numbering (3 -> 30) starts a new run
        "snoring/run 0 (3-3)",
    ]


def test_categories_file_round_trip_and_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "categories.csv"
    ranges = [CategoryRange("no_snoring", 0, 9, "tv"), CategoryRange("no_snoring", 10, 19, "fan")]
    write_categories(path, ranges)
    assert read_categories(path) == ranges
    assert find_categories(tmp_path) == (ranges, str(path))  # found beside the data
    assert find_categories(tmp_path / "elsewhere") == ([], "blocks")

    bad = tmp_path / "bad.csv"
    for text, problem in (
        ("label,first,category\nno_snoring,0,tv\n", "missing column(s) last"),
        ("label,first,last,category\nno_snoring,0,x,tv\n", "line 2: first and last must be whole numbers"),
        ("label,first,last,category\nno_snoring,5,1,tv\n", "line 2: needs a label, a category and first <= last"),
        ("label,first,last,category\nno_snoring,0,9,tv\nno_snoring,9,12,fan\n", "line 3: no_snoring 9-12 overlaps"),
        ("# only a comment\n", "no category rows"),
        ("# a comment\nlabel,first,last,category\nno_snoring,a,1,tv\n", "line 3: first and last"),
    ):
        bad.write_text(text)
        with pytest.raises(ValueError, match=re.escape(problem)) as err:
            read_categories(bad)
        assert str(bad) in str(err.value)
    with pytest.raises(ValueError, match="cannot read the categories file"):
        read_categories(tmp_path / "missing.csv")


def test_per_category_reports_false_alarms_and_recall_worst_first() -> None:
    truth = ["n"] * 6 + ["s"] * 4
    pred = ["s", "s", "n", "n", "n", "s"] + ["s", "s", "s", "n"]
    cats = ["tv", "tv", "tv", "fan", "fan", "fan", "run 0", "run 0", "run 1", "run 1"]
    out = per_category(truth, pred, cats, ("n", "s"), positive="s")
    assert out["worst_false_alarm"] == {"category": "tv", "n": 3, "rate": pytest.approx(2 / 3)}
    assert out["worst_recall"] == {"category": "run 1", "n": 2, "recall": 0.5}
    assert out["worst_category"] == {
        "n": {"category": "tv", "n": 3, "accuracy": pytest.approx(1 / 3)},
        "s": {"category": "run 1", "n": 2, "accuracy": 0.5},
    }
    rows = {(r["label"], r["category"]): r for r in out["categories"]}
    assert rows[("n", "fan")]["called"] == {"n": 2, "s": 1} and rows[("n", "fan")]["called_positive"] == 1 / 3
    assert sum(r["n"] for r in out["categories"]) == 10
    assert "worst_false_alarm" not in per_category(truth, pred, cats, ("n", "s"))  # no positive class named


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_dataset(tmp_path_factory.mktemp("cats") / "data", per_label=24)
    write_categories(
        root / "categories.csv",
        [CategoryRange("no_snoring", 0, 11, "quiet A"), CategoryRange("no_snoring", 12, 23, "quiet B")],
    )
    return root


def test_cv_reports_every_source_category_and_leads_with_the_worst(data: Path) -> None:
    app = typer.Typer()
    app.add_typer(clips_app, name="clips")
    common = ["--backbone", "mel", "--block-size", "4", "--folds", "2", "--head", "mlp"]
    args = ["clips", "cv", "--data", str(data), "--k", "3", *common, "--lr", "3e-3", "--max-epochs", "6"]
    res = CliRunner().invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["category_source"] == str(data / "categories.csv") and out["positive"] == "snoring"
    keys = list(out)
    assert keys.index("worst_false_alarm") < keys.index("accuracy") and keys.index("worst_recall") < keys.index(
        "accuracy"
    )
    rows = out["categories"]
    assert {r["category"] for r in rows if r["label"] == "no_snoring"} == {"quiet A", "quiet B"}
    assert {r["category"] for r in rows if r["label"] == "snoring"} == {
        f"snoring/run {i} ({4 * i}-{4 * i + 3})" for i in range(6)
    }  # no rows for snoring in the file: one category per block
    assert sum(r["n"] for r in rows) == out["n"] == 48
    confusion = out["confusion"]  # rows true no_snoring / snoring, columns predicted
    negatives = [r for r in rows if r["label"] == "no_snoring"]
    assert sum(r["called"]["snoring"] for r in negatives) == confusion[0][1]
    worst = max(negatives, key=lambda r: r["called_positive"])
    assert out["worst_false_alarm"]["rate"] == worst["called_positive"]
    assert out["worst_recall"]["recall"] == min(r["accuracy"] for r in rows if r["label"] == "snoring")

    text = CliRunner().invoke(app, args)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    first_pooled = next(i for i, line in enumerate(lines) if "each scored by a model" in line)
    assert any(line.startswith("worst false alarm: ") for line in lines[:first_pooled])
    assert any("| quiet A: n 12" in line for line in lines)


def test_evaluate_reports_categories_from_a_file_given_by_the_user(data: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.add_typer(clips_app, name="clips")
    model = tmp_path / "model"
    train = [
        *("clips", "train", "--data", str(data), "--out", str(model), "--backbone", "mel"),
        *("--block-size", "4", "--folds", "2", "--head", "mlp", "--max-epochs", "4", "--test-fraction", "0"),
    ]
    assert CliRunner().invoke(app, train).exit_code == 0
    mapping = tmp_path / "mine.csv"
    write_categories(mapping, [CategoryRange("snoring", 0, 23, "all snores")])
    res = CliRunner().invoke(
        app, ["clips", "evaluate", "--model", str(model), "--data", str(data), "--categories", str(mapping), "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["category_source"] == str(mapping)
    cats = {(r["label"], r["category"]): r["n"] for r in out["categories"]}
    assert cats[("snoring", "all snores")] == 24
    assert {c for (label, c) in cats if label == "no_snoring"} == {
        f"no_snoring/run {i} ({4 * i}-{4 * i + 3})" for i in range(6)
    }
    assert out["worst_recall"]["category"] == "all snores"
    text = CliRunner().invoke(
        app, ["clips", "evaluate", "--model", str(model), "--data", str(data), "--categories", str(mapping)]
    )
    assert text.exit_code == 0, text.output
    assert (
        text.stdout.startswith("worst false alarm: no_snoring/run ")
        and "worst snoring recall: all snores" in text.stdout
    )
    bad = CliRunner().invoke(
        app, ["clips", "evaluate", "--model", str(model), "--data", str(data), "--categories", str(tmp_path / "no.csv")]
    )
    assert bad.exit_code == 2 and "no.csv" in bad.output
    # Folders named unlike the model's classes: nothing scored is an error, not "0 clips, accuracy n/a", exit 0.
    renamed = tmp_path / "renamed"
    for folder in data.iterdir():
        if folder.is_dir():
            shutil.copytree(folder, renamed / folder.name.upper())
    none = CliRunner().invoke(app, ["clips", "evaluate", "--model", str(model), "--data", str(renamed)])
    assert none.exit_code == 2 and "no clip under" in none.stderr and "rejected" in none.stderr, none.output


def test_a_categories_file_that_is_not_one_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not UTF-8, a field over csv's limit, a repeated column or an endless file: each an error naming the file
    (the CLI's exit 2), not a decoder's message without it, a crash, a silent wrong range or all the memory."""
    bad = tmp_path / "bad.csv"
    monkeypatch.setattr(categories_module, "MAX_CATEGORIES_BYTES", 1 << 18, raising=False)
    for data, problem in (
        (b"label,first,last,category\nno_snoring,0,9,\xff\xfe\n", "not UTF-8 text (byte 41: invalid start byte)"),
        (
            b"label,first,last,category\nno_snoring,0,9," + b"x" * 300_000 + b"\n",
            "larger than 262144 bytes: not a categories file",
        ),
        (b"label,first,last,category\nno_snoring,0,9," + b"x" * 140_000 + b"\n", "not a categories CSV (field larger"),
        (b"label,first,last,category,label\nno_snoring,0,9,tv,snoring\n", "column(s) label named more than once"),
    ):
        bad.write_bytes(data)
        with pytest.raises(ValueError, match=re.escape(problem)) as err:
            read_categories(bad)
        assert str(bad) in str(err.value)
    endless = tmp_path / "endless.csv"
    endless.symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=re.escape(f"{endless}: larger than 262144 bytes")):
        read_categories(endless)


def test_a_large_categories_file_is_checked_in_about_a_second_and_overlaps_are_still_found(tmp_path: Path) -> None:
    """Each row was compared with every earlier one: 20 k rows took 11 s, a 16-MiB file (600 k rows) hours."""
    path = tmp_path / "categories.csv"
    rows = [CategoryRange(("snoring", "no_snoring")[i % 2], 10 * i, 10 * i + 9, f"c{i}") for i in range(100_000)]
    write_categories(path, rows)
    started = time.perf_counter()
    assert read_categories(path) == rows
    assert time.perf_counter() - started < 3.0  # about a second on a loaded 2-core machine
    files = [f"snoring/1_{10 * i + 5}.wav" for i in range(0, 4_000, 2)]
    started = time.perf_counter()
    assert categorise(files, ["snoring"] * len(files), rows, 4) == [f"c{i}" for i in range(0, 4_000, 2)]
    assert time.perf_counter() - started < 2.0  # was clips x ranges: 2 k x 100 k comparisons
    # One overlap deep in the file, far from its partner in the file's order: named as before.
    text = path.read_text().splitlines()
    text.insert(60_000, "no_snoring,15,17,late tv")  # inside row 1 (no_snoring 10-19), on line 60001
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path} line 60001: no_snoring 15-17 overlaps 10-19 (c1)")):
        read_categories(path)


def test_overlaps_are_named_by_the_later_row_and_before_a_later_bad_row(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    for text, problem in (
        ("label,first,last,category\nn,20,30,b\nn,0,9,a\nn,25,26,c\n", "line 4: n 25-26 overlaps 20-30 (b)"),
        ("label,first,last,category\nn,0,9,a\nm,0,9,b\nn,9,9,c\n", "line 4: n 9-9 overlaps 0-9 (a)"),
        ("label,first,last,category\nn,0,100,a\n\n# c\nn,50,60,b\nn,x,1,c\n", "line 5: n 50-60 overlaps 0-100 (a)"),
        ("label,first,last,category\nn,0,10,a\nn,x,1,c\nn,5,6,b\n", "line 3: first and last must be whole numbers"),
    ):
        bad.write_text(text)
        with pytest.raises(ValueError, match=re.escape(f"{bad} {problem}")):
            read_categories(bad)
    bad.write_text("label,first,last,category\nn,0,9,a\nn,10,19,b\nm,0,19,c\n")
    assert len(read_categories(bad)) == 3  # touching ranges and other labels do not overlap


def test_a_manifest_csv_is_read_capped_with_errors_naming_the_file(tmp_path: Path) -> None:
    """``read_csv_rows`` for a hard-negatives ``manifest.csv``: a non-UTF-8 file or a field over csv's
    limit was a codec message naming no file, or exit 1 "This was not expected"; there was no size cap."""
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "file,label,snore_file\nsnoring/1_0.wav,snoring,snoring/1_3.wav\n\nno_snoring/0_0.wav,no_snoring,\n"
    )
    assert read_csv_rows(manifest, "hard-negatives manifest", ("file",)) == [
        (2, {"file": "snoring/1_0.wav", "label": "snoring", "snore_file": "snoring/1_3.wav"}),
        (4, {"file": "no_snoring/0_0.wav", "label": "no_snoring", "snore_file": ""}),
    ]
    for data, problem in (
        (b"file,label\n\xff\xfe bad\n", "not UTF-8 text (byte 11: invalid start byte)"),
        (b"file,label\n" + b"x" * 200_000 + b",y\n", "not a hard-negatives manifest CSV (field larger"),
        (b"name,label\nx,y\n", "missing column(s) file (expected file)"),
        (b"file,file\nx,y\n", "column(s) file named more than once"),
    ):
        manifest.write_bytes(data)
        with pytest.raises(ValueError, match=re.escape(f"{manifest}: {problem}")):
            read_csv_rows(manifest, "hard-negatives manifest", ("file",))
    manifest.write_text("file,label\n" + "snoring/1_0.wav,snoring\n" * 100)
    with pytest.raises(ValueError, match=re.escape(f"{manifest}: larger than 1024 bytes: not a hard-negatives")):
        read_csv_rows(manifest, "hard-negatives manifest", ("file",), max_bytes=1024)
    with pytest.raises(ValueError, match=re.escape("cannot read the hard-negatives manifest file")):
        read_csv_rows(tmp_path / "missing.csv", "hard-negatives manifest", ("file",))
    manifest.write_text("file,label\n")
    assert read_csv_rows(manifest, "hard-negatives manifest", ("file",)) == []
