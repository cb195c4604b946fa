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
    ],
)
def test_each_kind_of_problem_is_named(
    setting: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken.yaml").write_text("training:\n  epochs: [\n")
    (tmp_path / "list.yaml").write_text("- training\n- backbone\n")
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
