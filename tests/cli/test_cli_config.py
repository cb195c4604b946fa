"""A bad configuration stops every command with exit 2 and one line naming the problem.

The real commands run through typer's CliRunner; the refusal must come before any work, so
nothing may be started or created: no Prefect server (``./.prefect``), no Ray, no storage root,
no demo cohort, and none of the heavy modules imported.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleepsound.cli import _load_config, app

COMMANDS: dict[str, Callable[[str, str], list[str]]] = {
    "run": lambda source, root: ["run", "--source", source, "--root", root],
    "score": lambda source, root: ["score", "--source", source, "--root", root],
    "train": lambda source, root: ["train", "--source", source, "--root", root],
    "nightly": lambda source, root: ["nightly", "--source", source, "--root", root],
    "demo": lambda source, root: ["demo", "--root", root],
    "deploy": lambda source, root: ["deploy", "--source", source, "--root", root],
    "validate": lambda source, root: ["validate", source, "--root", root],
    "cv": lambda source, root: ["cv", "--root", root],
}
PROBLEMS: dict[str, tuple[list[str], str]] = {  # arguments, and what the one line must say ({tmp}: tmp_path)
    "typo": (
        ["--set", "training.epoch=3"],
        "training.epoch: unknown setting; training has batch_size, context_epochs, epochs,",
    ),
    "bad value": (["--set", "training.epochs=abc"], "training.epochs: Input should be a valid integer"),
    "missing file": (["--config", "{tmp}/missing.yaml"], "cannot read {tmp}/missing.yaml: No such file"),
}
HEAVY = ("flows", "tasks", "prefect", "ray", "torch")


def _refused(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expected: str, prefect_api_url: str | None = None
) -> None:
    """Run the command in ``tmp_path``; check the exit, the single line, and that nothing was started."""
    monkeypatch.chdir(tmp_path)
    if prefect_api_url:
        monkeypatch.setenv("PREFECT_API_URL", prefect_api_url)
    else:
        monkeypatch.delenv("PREFECT_API_URL", raising=False)
    modules = set(sys.modules)
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 2, out.output
    assert isinstance(out.exception, SystemExit) and "Traceback" not in out.output, out.output  # no error escaped
    assert out.stdout == ""
    [line] = out.stderr.splitlines()
    assert line.startswith("bad configuration: ") and expected in line, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "the refusal created something"  # no root, .prefect
    assert not [m for m in set(sys.modules) - modules if m.split(".")[0] in HEAVY]


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_bad_configuration_exits_2_with_one_line(
    command: str, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    extra, expected = PROBLEMS[problem]
    args = COMMANDS[command](str(tmp_path / "source"), str(work / "root"))
    args += [a.replace("{tmp}", str(tmp_path)) for a in extra]
    # deploy checks PREFECT_API_URL first: point it somewhere (nothing listens) so it reaches the configuration
    _refused(
        args,
        work,
        monkeypatch,
        expected.replace("{tmp}", str(tmp_path)),
        prefect_api_url="http://127.0.0.1:9/api" if command == "deploy" else None,
    )


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (["--set", "trainin.epochs=3"], "trainin: unknown section; the sections are backbone, preprocess, ray,"),
        (
            ["--set", "training.head=transformer"],
            "training.head: Input should be 'attention', 'mlp' or 'soundsleepnet' (got 'transformer')",
        ),
        (["--set", "training.shift_classes=[Wake"], "override training.shift_classes: '[Wake' is not a YAML value"),
        (["--set", "nonsense"], "override 'nonsense' must look like section.key=value"),
        (
            ["--set", "backbone.layer=3", "--set", "backbone.layers=[1]"],
            "backbone: set backbone.layer (3) or backbone.layers ([1]), not both",
        ),
        (
            ["--config", "{tmp}/broken.yaml"],
            "{tmp}/broken.yaml is not valid YAML: expected the node content, but "
            "found '<stream end>' (line 3, column 1)",
        ),
        (["--config", "{tmp}/list.yaml"], "{tmp}/list.yaml: the top level must map sections"),
        (["--config", "{tmp}"], "cannot read {tmp}: Is a directory"),
        # bounds, nesting and size: each ran Prefect and Ray (or crashed with a RecursionError, or parsed
        # for 30 s) before
        (["--set", "preprocess.target_rate=0"], "preprocess.target_rate: must be 16000"),
        (["--set", "preprocess.epoch_seconds=0"], "preprocess.epoch_seconds: must be 30"),
        (["--set", "training.lr=nan"], "training.lr: Input should be a finite number"),
        (["--set", "backbone.batch_size=1000000000000"], "backbone.batch_size: must be a whole number"),
        (["--config", "{tmp}/deep.yaml"], "{tmp}/deep.yaml: nested too deeply"),
        (["--set", "training.epochs=" + "[" * 5000], "override training.epochs: nested too deeply"),
        (
            ["--config", "{tmp}/big.yaml"],
            "{tmp}/big.yaml is 1048580 bytes (1.0 MiB); a configuration file may be at most",
        ),
    ],
)
def test_each_kind_of_problem_is_named(
    setting: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken.yaml").write_text("training:\n  epochs: [\n")
    (tmp_path / "list.yaml").write_text("- training\n- backbone\n")
    (tmp_path / "deep.yaml").write_text("training:\n  epochs: " + "[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "big.yaml").write_text("#" * 1048579 + "\n")
    work = tmp_path / "cwd"
    work.mkdir()
    args = ["run", "--source", str(tmp_path / "source"), "--root", str(work / "root")]
    _refused(
        args + [a.replace("{tmp}", str(tmp_path)) for a in setting],
        work,
        monkeypatch,
        expected.replace("{tmp}", str(tmp_path)),
    )


def test_a_bad_environment_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLEEPSOUND_TRAINING__EPOCHS", "abc")
    _refused(
        ["train", "--source", "s", "--root", "root"],
        tmp_path,
        monkeypatch,
        "training.epochs: Input should be a valid integer",
    )


def test_recipe_overrides_come_before_the_users() -> None:
    """demo's own settings are applied first, so a user's --set still wins over them."""
    from sleepsound.recipes.demo import DEMO_OVERRIDES

    cfg = _load_config(None, ["training.epochs=3"], extra=DEMO_OVERRIDES)
    assert cfg.training.epochs == 3 and cfg.training.lr == 1e-3 and cfg.training.shift_classes == ["Wake", "REM"]


def test_an_unknown_environment_variable_is_named_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It was reported as ``training.bogus``, which the user never typed and cannot grep for."""
    monkeypatch.setenv("SLEEPSOUND_TRAINING__BOGUS", "1")
    _refused(
        ["train", "--source", "s", "--root", "root"],
        tmp_path,
        monkeypatch,
        "SLEEPSOUND_TRAINING__BOGUS: unknown setting training.bogus; training has batch_size,",
    )


def test_a_bad_value_from_the_environment_names_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLEEPSOUND_TRAINING__EPOCHS", "-1")
    _refused(
        ["train", "--source", "s", "--root", "root"],
        tmp_path,
        monkeypatch,
        "training.epochs: Input should be greater than or equal to 1 (got -1) (set by SLEEPSOUND_TRAINING__EPOCHS)",
    )
    monkeypatch.setenv("SLEEPSOUND_TRAINING__EPOCHS", "[" * 5000)
    _refused(
        ["train", "--source", "s", "--root", "root"],
        tmp_path,
        monkeypatch,
        "SLEEPSOUND_TRAINING__EPOCHS: nested too deeply",
    )


def test_a_flag_that_replaces_a_variable_is_not_blamed_on_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLEEPSOUND_TRAINING__EPOCHS", "3")
    monkeypatch.chdir(tmp_path)
    out = CliRunner().invoke(app, ["train", "--source", "s", "--root", "root", "--set", "training.epochs=0"])
    assert out.exit_code == 2 and "SLEEPSOUND_TRAINING__EPOCHS" not in out.stderr, out.stderr
    assert "training.epochs: Input should be greater than or equal to 1 (got 0)" in out.stderr
