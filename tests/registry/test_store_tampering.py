"""A storage root's model files are not trusted: names must be plain, links must stay inside the
root, JSON must be small and of the types the store writes; anything else is refused by name."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sleepsound.core.storage import open_root
from sleepsound.models.heads.artifacts import build_head, save_head
from sleepsound.registry import store as model_store
from tests.registry.test_model_store import _store

VERSION = "r1-aaaa"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with one stage3 champion, and a head outside it that tampering points at."""
    path = tmp_path / "root"
    _store(str(path), VERSION, "2026-11-01T00:00:00", 0.5)
    model_store.set_champion(str(path), "stage3", VERSION, "first")
    fs, outside = open_root(str(tmp_path / "outside" / "evil"))
    save_head(build_head("attention", dim=8, n_classes=3), fs, outside, extra={"I_AM": "OUTSIDE"})
    (tmp_path / "outside" / "secret.json").write_text(json.dumps({"secret": "outside"}))
    return path


def _stage3(root: Path) -> Path:
    return root / "models" / "stage3"


def _all_reads(root: Path) -> list[Callable[[], object]]:
    return [
        lambda: model_store.versions(str(root), "stage3"),
        lambda: model_store.show(str(root), "stage3"),
        lambda: model_store.serving_models(str(root)),
    ]


@pytest.mark.parametrize(
    "pointer, message",
    [
        ('{"version": "OUTSIDE_HEAD"}', "is not a plain name"),  # an absolute path out of the root
        ('{"version": "../../../outside/evil"}', "is not a plain name"),
        ('{"version": 123}', "is not a plain name"),
        ('{"version": "."}', "is not a plain name"),
        ("[]", "holds list, not an object"),
        ("{oops", "is not JSON"),
    ],
)
def test_a_champion_pointer_that_is_a_path_or_damaged_is_refused(root: Path, pointer: str, message: str) -> None:
    """Issue: champion.json {"version": "/abs/path"} made `models show` and `monitor serve` read outside the root."""
    outside = str(root.parent / "outside" / "evil")
    (_stage3(root) / "champion.json").write_text(pointer.replace("OUTSIDE_HEAD", outside))
    for read in _all_reads(root):
        with pytest.raises(model_store.DamagedStore, match=rf"champion\.json:? .*{message}"):
            read()


def test_a_version_name_given_by_the_user_must_be_plain(root: Path) -> None:
    for bad in ("../../outside/evil", str(root.parent / "outside" / "evil"), ".."):
        with pytest.raises(model_store.ModelNotFound, match="is not a plain name"):
            model_store.show(str(root), "stage3", bad)
        with pytest.raises(model_store.ModelNotFound, match="is not a plain name"):
            model_store.serving_models(str(root), {"stage3": bad})
    with pytest.raises(model_store.ModelNotFound, match=r"task '\.\./x' is not a plain name"):
        model_store.show(str(root), "../x", VERSION)


def test_a_symlinked_version_folder_leading_outside_is_refused(root: Path) -> None:
    os.symlink(root.parent / "outside" / "evil", _stage3(root) / "r2-link")
    with pytest.raises(model_store.DamagedStore, match="r2-link leads outside the storage root"):
        model_store.versions(str(root), "stage3")
    with pytest.raises(model_store.DamagedStore, match="leads outside"):
        model_store.show(str(root), "stage3", "r2-link")
    with pytest.raises(model_store.DamagedStore, match="leads outside"):
        model_store.serving_models(str(root), {"stage3": "r2-link"})


def test_a_symlinked_task_folder_leading_outside_is_refused(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    _stage3(root).rename(elsewhere)
    os.symlink(elsewhere, _stage3(root))
    for read in _all_reads(root):
        with pytest.raises(model_store.DamagedStore, match="leads outside the storage root"):
            read()


@pytest.mark.parametrize(
    "name, target", [("lineage.json", "secret.json"), ("model.safetensors", "evil/model.safetensors")]
)
def test_a_symlinked_file_leading_outside_is_refused(root: Path, name: str, target: str) -> None:
    link = _stage3(root) / VERSION / name
    link.unlink()
    os.symlink(root.parent / "outside" / target, link)
    with pytest.raises(model_store.DamagedStore, match=rf"{name} leads outside the storage root"):
        model_store.show(str(root), "stage3")
    with pytest.raises(model_store.DamagedStore, match="leads outside"):
        model_store.serving_models(str(root))


def test_a_link_inside_the_root_is_followed(root: Path) -> None:
    os.symlink(_stage3(root) / VERSION, _stage3(root) / "r9-alias")
    assert model_store.show(str(root), "stage3", "r9-alias")["config"]["head_class"] == "AttentionPoolingHead"


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("config.json", "{oops", r"config\.json is not JSON"),
        ("config.json", "[1, 2]", r"config\.json holds list, not an object"),
        ("config.json", '{"head_class": 5}', r"config\.json: 'head_class' is 5"),
        ("lineage.json", "[1, 2]", r"lineage\.json holds list, not an object"),
        ("lineage.json", '{"train_subjects": 5, "created": 7}', r"lineage\.json: '(train_subjects|created)' is"),
        ("lineage.json", '{"train_subjects": [1, 2]}', r"lineage\.json: 'train_subjects' must list subject ids"),
        ("metrics.json", '{"macro_f1": "high", "kappa": null}', r"metrics\.json: 'macro_f1' is 'high'"),
        ("metrics.json", '{"macro_f1": true}', r"metrics\.json: 'macro_f1' is True"),
    ],
)
def test_damaged_json_is_refused_naming_the_file(root: Path, name: str, text: str, message: str) -> None:
    """Issue: damaged registry JSON gave an unplanned exit 1 that named no file."""
    (_stage3(root) / VERSION / name).write_text(text)
    for read in _all_reads(root):
        with pytest.raises(model_store.DamagedStore, match=message):
            read()


def test_an_oversized_json_file_is_refused_unread(root: Path) -> None:
    """Issue: a 400-MB lineage.json was read whole (947 MB RSS)."""
    path = _stage3(root) / VERSION / "lineage.json"
    with open(path, "w") as handle:
        handle.write('{"run_id": "r1", "pad": "' + "a" * (17 << 20) + '"}')
    with pytest.raises(model_store.DamagedStore, match=r"lineage\.json is larger than 16 MiB"):
        model_store.show(str(root), "stage3")


def test_models_show_exits_2_naming_the_file(root: Path) -> None:
    from sleepsound.cli import app

    (_stage3(root) / "champion.json").write_text(json.dumps({"version": "../../../outside/evil"}))
    shown = CliRunner().invoke(app, ["models", "show", "--root", str(root)])
    assert shown.exit_code == 2 and "champion.json" in shown.output and "OUTSIDE" not in shown.output


def test_models_list_exits_2_naming_a_damaged_file(root: Path) -> None:
    from sleepsound.cli import app

    (_stage3(root) / "champion.json").write_text("{not json")
    listed = CliRunner().invoke(app, ["models", "list", "--root", str(root)])
    assert listed.exit_code == 2 and "champion.json" in listed.output, listed.output


@pytest.mark.parametrize("task", ["nope", "[/y]"])
def test_models_list_refuses_a_task_of_a_damaged_store_as_text(root: Path, task: str) -> None:
    """``models list --task`` printed its refusal by hand, as markup: a task folder named with an ESC put it on
    the terminal, and ``--task '[/y]'`` was a MarkupError (exit 1, "not expected"). Now the common refusal: one
    line on stderr, control characters escaped, exit 2."""
    from sleepsound.cli import app

    (root / "models" / "ctrl\x1b[31mred").mkdir()
    out = CliRunner().invoke(app, ["models", "list", "--root", str(root), "--task", task])
    assert out.exit_code == 2 and out.stdout == "", out.output
    assert out.stderr == f"no models of task {task!r} under {root} (tasks here: ctrl\\x1b[31mred, stage3)\n"


@pytest.mark.parametrize("command", ["list", "show"])
def test_models_commands_refuse_a_root_named_with_control_characters_as_text(tmp_path: Path, command: str) -> None:
    """The root refusals were printed by hand too: an ESC in the --root given reached the terminal."""
    from sleepsound.cli import app

    root = tmp_path / "ro\x1b[2Jot[/z]"
    out = CliRunner().invoke(app, ["models", command, "--root", str(root)])
    assert out.exit_code == 2 and "\x1b" not in out.output, out.output
    assert out.stderr == f"no storage root at {tmp_path}/ro\\x1b[2Jot[/z]: check the path\n"


@pytest.mark.parametrize("command", ["list", "show"])
@pytest.mark.parametrize("given", ["missing", "file"])
def test_models_commands_refuse_a_root_that_is_no_folder(tmp_path: Path, command: str, given: str) -> None:
    """A file given as the root was listed as "no models" with exit 0; a missing root was told to name a version."""
    from sleepsound.cli import app

    root = tmp_path / "root"
    if given == "file":
        root.write_text("not a root")
    out = CliRunner().invoke(app, ["models", command, "--root", str(root)])
    expected = "is a file" if given == "file" else "no storage root at"
    assert out.exit_code == 2 and expected in out.output and len(out.output.strip().splitlines()) == 1, out.output


def test_an_untouched_store_reads_as_before(root: Path) -> None:
    assert [v["version"] for v in model_store.versions(str(root), "stage3")] == [VERSION]
    assert model_store.serving_models(str(root))["version"] == VERSION


@pytest.mark.parametrize(
    "counts, message",
    [
        ([0, 0, 0, 0, 0, 0, 0, 9], "has 8 entries for the head's 3 classes"),  # ended a score run in IndexError
        ([1, "x", 2], "must hold one count"),
        ([1, -2, 3], "must hold one count"),
    ],
)
def test_class_counts_that_do_not_fit_the_head_are_refused_by_file(root: Path, counts: list, message: str) -> None:
    lineage = _stage3(root) / VERSION / "lineage.json"
    lineage.write_text(json.dumps({**json.loads(lineage.read_text()), "class_counts": counts}))
    with pytest.raises(model_store.DamagedStore, match=message) as refused:
        model_store.serving_models(str(root))
    assert "lineage.json" in str(refused.value)


def test_score_refuses_a_truncated_champion_before_it_starts(root: Path, tmp_path: Path) -> None:
    """The preflight only resolved names: a champion cut to 100 bytes started Prefect and Ray, embedded
    the cohort, and failed when the head was loaded. Now its header is checked first (no weights read)."""
    from sleepsound.runs.preflight import NotStartable, check_models

    check_models(str(root), {})  # whole: passes
    weights = _stage3(root) / VERSION / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(NotStartable, match=r"cannot score: .*model\.safetensors"):
        check_models(str(root), {})


def test_score_checks_a_champion_on_object_storage_through_the_roots_filesystem(root: Path, s3_endpoint: str) -> None:
    """The heads' folders the store names are paths of the root's filesystem (no ``s3://``): the check
    read them from local disk, so `score` on an S3 root failed every time before it started."""
    import s3fs

    from sleepsound.runs.preflight import NotStartable, check_models

    s3 = s3fs.S3FileSystem()
    s3.mkdir("preflight-s3")
    s3.put(str(root) + "/", "preflight-s3/root/", recursive=True)
    check_models("s3://preflight-s3/root", {})  # whole: passes
    key = f"preflight-s3/root/models/stage3/{VERSION}/model.safetensors"
    s3.pipe_file(key, s3.cat_file(key)[:100])
    s3.invalidate_cache()
    with pytest.raises(NotStartable, match=r"cannot score: .*model\.safetensors"):
        check_models("s3://preflight-s3/root", {})
