"""Bad options of `clips train|cv|evaluate|score` are refused with one line and exit 2, naming the option,
before any clip is read or anything written; a diverging learning rate is one failed candidate; the saved
model carries no path of the training machine.

The option refusals run against a data folder that does not exist: an option checked only after the clips
were read would be blamed on the folder instead, and name no option.
"""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import typer
from typer.testing import CliRunner

from sleepsound.clips.cli import clips_app
from sleepsound.clips.split import block_folds
from sleepsound.clips.train import ClipTrainSettings, OptionError
from sleepsound.models.heads.artifacts import build_head, save_head
from tests.clips.test_clips import make_dataset
from tests.clips.test_model_config_checks import CLASSES, _clips_info

app = typer.Typer()
app.add_typer(clips_app, name="clips")
FAST = ["--backbone", "mel", "--block-size", "4", "--folds", "2", "--max-epochs", "3", "--json"]
NO_GPU = not torch.cuda.is_available()


def _refused(args: list[str], option: str) -> str:
    """The one-line exit-2 refusal of ``args``, which must name ``option`` (no traceback, no 'not expected')."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0], result.output
    return lines[0]


TRAIN_CV_BAD = [
    (["--clip-seconds", "120"], "--clip-seconds"),  # saved a model its own tools refuse
    (["--clip-seconds", "-1"], "--clip-seconds"),  # a negative read length read every file whole
    (["--clip-seconds", "0"], "--clip-seconds"),
    (["--clip-seconds", "-0.00001"], "--clip-seconds"),
    (["--clip-seconds", "nan"], "--clip-seconds"),
    (["--clip-seconds", "1e5"], "--clip-seconds"),
    (["--folds", "1000000000"], "--folds"),
    (["--seed", "-1"], "--seed"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--max-epochs", "0"], "--max-epochs"),
    (["--target-recall", "2"], "--target-recall"),
    (["--target-recall", "nan"], "--target-recall"),
    (["--target-recall", "-0.5"], "--target-recall"),
    (["--device", "tpu"], "--device"),
    (["--backbone", "./no-such-model"], "no-such-model"),  # a backbone that cannot load: before the clips
]


@pytest.mark.parametrize("command", ["train", "cv"])
@pytest.mark.parametrize("bad, option", TRAIN_CV_BAD)
def test_a_bad_train_or_cv_option_is_refused_by_name_before_anything_is_read(
    tmp_path: Path, command: str, bad: list[str], option: str
) -> None:
    out = tmp_path / "model"
    args = ["clips", command, "--data", str(tmp_path / "no-such-data"), *FAST, *bad]
    if command == "train":
        args += ["--out", str(out)]
    _refused(args, option)
    assert not out.exists()


@pytest.mark.skipif(not NO_GPU, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("command", ["train", "cv"])
def test_cuda_on_a_machine_without_one_is_refused_before_the_clips(tmp_path: Path, command: str) -> None:
    args = ["clips", command, "--data", str(tmp_path / "no-such-data"), *FAST, "--device", "cuda"]
    _refused(args + (["--out", str(tmp_path / "m")] if command == "train" else []), "CUDA")


def test_a_huge_k_is_refused_by_name(tmp_path: Path) -> None:
    _refused(["clips", "cv", "--data", str(tmp_path / "none"), *FAST, "--k", "1000000000"], "--k")


def test_the_split_counts_blocks_before_it_allocates_a_list_per_fold() -> None:
    files = {"a": [f"a/{i}.wav" for i in range(20)], "b": [f"b/{i}.wav" for i in range(20)]}
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="fewer than 1000000 folds"):
            block_folds(files, block_size=4, k=1_000_000)  # a million empty lists: about 60 MB
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000, peak


def test_the_settings_check_their_own_ranges() -> None:
    """One check, used by train and cv alike (and by any caller of the library)."""
    ClipTrainSettings(clip_seconds=0.1)
    ClipTrainSettings(clip_seconds=60.0, target_recall=1.0, device="cuda:1")
    for bad in (
        {"clip_seconds": math.inf},
        {"clip_seconds": 60.01},
        {"lrs": (1e-3, math.inf)},
        {"lrs": ()},
        {"device": "cuda:x"},
        {"folds": 1001},
    ):
        with pytest.raises(OptionError):
            ClipTrainSettings(**bad)


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "1e300"])
def test_clips_score_refuses_a_bad_max_seconds_by_name(tmp_path: Path, value: str) -> None:
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16_000, dtype=np.float32), 16_000)
    _refused(
        ["clips", "score", "--model", str(tmp_path / "no-model"), str(wav), "--max-seconds", value], "--max-seconds"
    )


@pytest.fixture
def mel_model(tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    save_head(
        build_head("mlp", dim=64, n_classes=2), None, str(directory), classes=CLASSES, extra={"clips": _clips_info()}
    )
    return directory


@pytest.mark.parametrize("device", ["tpu", *(["cuda"] if NO_GPU else [])])
def test_score_and_evaluate_refuse_a_device_once_not_per_file(mel_model: Path, tmp_path: Path, device: str) -> None:
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16_000, dtype=np.float32), 16_000)
    named = "--device" if device == "tpu" else "CUDA"
    _refused(["clips", "score", "--model", str(mel_model), str(wav), str(wav), "--device", device], named)
    _refused(
        ["clips", "evaluate", "--model", str(mel_model), "--data", str(tmp_path / "none"), "--device", device], named
    )


@pytest.mark.parametrize("option", ["--out", "--cache"])
def test_an_output_path_that_is_a_file_is_refused_before_any_work(tmp_path: Path, option: str) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    out = {"--out": tmp_path / "model", "--cache": tmp_path / "cache"}
    for path in (taken, taken / "below"):
        out[option] = path
        args = ["clips", "train", "--data", str(tmp_path / "no-such-data"), *FAST]
        line = _refused([*args, "--out", str(out["--out"]), "--cache", str(out["--cache"])], option)
        assert "not a folder" in line
    assert not (tmp_path / "model").exists() and taken.read_text() == "not a folder"
    if option == "--cache":
        _refused(["clips", "cv", "--data", str(tmp_path / "none"), *FAST, "--cache", str(taken)], "--cache")


@pytest.fixture(scope="module")
def snore_quiet(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Labels other than snoring/no_snoring, a rejected file, a diverging learning rate among the candidates:
    one training run through the CLI."""
    tmp = tmp_path_factory.mktemp("options")
    data = make_dataset(tmp / "data", per_label=16)
    (data / "snoring").rename(data / "snore")
    (data / "no_snoring").rename(data / "quiet")
    (data / "snore" / "1_broken.wav").write_bytes(b"RIFF not really a wave file")
    model, cache = tmp / "model", tmp / "cache"
    args = ["clips", "train", "--data", str(data), "--out", str(model), "--cache", str(cache), *FAST]
    args += ["--head", "mlp", "--lr", "0.001", "--lr", "1e30", "--target-recall", "0.9", "--test-fraction", "0.34"]
    refused = CliRunner().invoke(app, args)  # no class is called "snoring", the default --positive
    nothing_written = not model.exists() and not cache.exists()
    result = CliRunner().invoke(app, [*args, "--positive", "snore", "--no-refit"])
    return {
        "tmp": tmp,
        "data": data,
        "model": model,
        "args": args,
        "refused": refused,
        "nothing_written": nothing_written,
        "result": result,
    }


def test_target_recall_with_a_positive_class_not_in_the_data_is_refused_naming_the_classes(snore_quiet: dict) -> None:
    refused = snore_quiet["refused"]
    assert refused.exit_code == 2, refused.output
    line = refused.output.strip().splitlines()[-1]
    assert "--positive 'snoring'" in line and "quiet, snore" in line and "--target-recall" in line
    assert snore_quiet["nothing_written"]  # refused once the classes were known, before the embedding


def test_train_takes_positive_and_the_threshold_is_on_that_class(snore_quiet: dict) -> None:
    result = snore_quiet["result"]
    assert result.exit_code == 0, result.output
    decision = json.loads((snore_quiet["model"] / "config.json").read_text())["extra"]["clips"]["decision"]
    assert decision["positive"] == "snore" and decision["target_recall"] == 0.9


def test_a_diverging_learning_rate_is_a_failed_candidate_and_the_selection_goes_on(snore_quiet: dict) -> None:
    summary = json.loads(snore_quiet["result"].stdout)
    assert summary["chosen"]["lr"] == 0.001
    info = json.loads((snore_quiet["model"] / "config.json").read_text())["extra"]["clips"]
    failed = {c["lr"]: c["failed"] for c in info["candidates"]}
    assert failed[0.001] is None and "non-finite loss" in failed[1e30]


def test_when_every_learning_rate_diverges_the_run_is_refused_in_one_line(snore_quiet: dict, tmp_path: Path) -> None:
    args = [a if a != str(snore_quiet["model"]) else str(tmp_path / "m") for a in snore_quiet["args"]]
    args[args.index("0.001")] = "1e31"
    line = _refused([*args, "--positive", "snore"], "every setting tried failed")
    assert "--lr" in line and not (tmp_path / "m").exists()


def test_the_saved_config_carries_no_path_or_rejected_file_name(snore_quiet: dict) -> None:
    text = (snore_quiet["model"] / "config.json").read_text()
    info = json.loads(text)["extra"]["clips"]
    assert str(snore_quiet["tmp"]) not in text and "1_broken" not in text
    assert info["data_root"] == "data" and info["settings"]["cache_dir"] == "cache"
    assert info["rejected"] == {"n": 1, "reasons": {"unreadable audio": 1}}
    assert info["held_out_files"] and all(f.count("/") == 1 for f in info["held_out_files"])
    printed = json.loads(snore_quiet["result"].stdout)["rejected"]  # the user still sees which file and why
    assert printed[0]["file"] == "snore/1_broken.wav"
    evaluated = CliRunner().invoke(
        app,
        ["clips", "evaluate", "--model", str(snore_quiet["model"]), "--data", str(snore_quiet["data"])]
        + ["--split", "test", "--json", "--positive", "snore"],
    )
    assert evaluated.exit_code == 0, evaluated.output  # the held-out files still found under --data
    assert json.loads(evaluated.stdout)["n"] == len(info["held_out_files"])


def test_evaluate_warns_when_positive_is_not_a_class(snore_quiet: dict) -> None:
    args = ["clips", "evaluate", "--model", str(snore_quiet["model"]), "--data", str(snore_quiet["data"]), "--json"]
    result = CliRunner().invoke(app, [*args, "--positive", "Snore"])
    assert result.exit_code == 0, result.output
    assert "warning: --positive 'Snore' is none of the classes quiet, snore" in result.stderr
    assert json.loads(result.stdout)["warnings"]  # stdout stays one JSON object
    quiet = CliRunner().invoke(app, [*args, "--positive", "snore"])
    assert "warning" not in quiet.stderr and json.loads(quiet.stdout)["positive"] == "snore"


def test_cv_warns_when_positive_is_not_a_class(snore_quiet: dict) -> None:
    args = ["clips", "cv", "--data", str(snore_quiet["data"]), *FAST, "--k", "2", "--positive", "Snore"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "warning: --positive 'Snore' is none of the classes" in result.stderr
    assert json.loads(result.stdout)["positive"] is None


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"file,snore_file\n\xff\xfe,x\n", "not UTF-8"),
        (b"file,snore_file\n" + b"a" * 200_000 + b",x\n", "manifest.csv"),
        (b"snore_file\nx\n", "file"),
    ],
    ids=["not utf-8", "an oversized field", "no file column"],
)
def test_a_hard_negatives_manifest_is_read_capped_and_its_errors_name_it(tmp_path: Path, content, needle) -> None:
    """``--hard-negatives DIR``'s manifest.csv was read unchecked: a non-UTF-8 file said only "'utf-8' codec
    can't decode" and a field over 128 KiB ended in "This was not expected" (audit of 2026-12-08, #12)."""
    from sleepsound.clips.dataset import load_dataset
    from sleepsound.clips.train import tied_rows

    (tmp_path / "manifest.csv").write_bytes(content)
    with pytest.raises(ValueError) as caught:
        tied_rows(load_dataset(make_dataset(tmp_path / "data", per_label=2)), tmp_path)
    assert str(tmp_path / "manifest.csv") in str(caught.value) and needle in str(caught.value)
