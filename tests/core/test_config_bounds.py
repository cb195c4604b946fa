"""Every numeric setting has the bounds the code can run with, so nonsense is refused when the
configuration loads, naming the setting, instead of failing (or quarantining good nights) mid-run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from sleepsound.core.config import MAX_CONFIG_BYTES, Config, load_config

# (override, the setting the error must name): each accepted before, each failed only after work started.
REFUSED: list[tuple[str, str]] = [
    ("training.epochs=-1", "training.epochs"),
    ("training.epochs=0", "training.epochs"),
    ("training.epochs=100000", "training.epochs"),
    ("training.lr=nan", "training.lr"),
    ("training.lr=-1", "training.lr"),
    ("training.lr=1e-7", "training"),  # below the default min_lr: the trainer refuses it after embedding
    ("training.min_lr=0", "training.min_lr"),
    ("training.batch_size=0", "training.batch_size"),
    ("training.test_fraction=2", "training.test_fraction"),
    ("training.test_fraction=0", "training.test_fraction"),
    ("training.test_fraction=nan", "training.test_fraction"),
    ("training.seed=-1", "training.seed"),
    ("training.ray_workers=100000", "training.ray_workers"),
    ("preprocess.target_rate=0", "preprocess.target_rate"),
    ("preprocess.target_rate=-16000", "preprocess.target_rate"),
    ("preprocess.target_rate=8000", "preprocess.target_rate"),
    ("preprocess.epoch_seconds=0", "preprocess.epoch_seconds"),
    ("preprocess.epoch_seconds=.inf", "preprocess.epoch_seconds"),
    ("preprocess.epoch_seconds=1000000000.0", "preprocess.epoch_seconds"),
    ("preprocess.epoch_seconds=20", "preprocess.epoch_seconds"),
    ("preprocess.highpass_hz=nan", "preprocess.highpass_hz"),
    ("preprocess.highpass_hz=-5", "preprocess.highpass_hz"),
    ("preprocess.highpass_hz=8000", "preprocess.highpass_hz"),
    ("preprocess.preemphasis=nan", "preprocess.preemphasis"),
    ("preprocess.preemphasis=-0.5", "preprocess.preemphasis"),
    ("preprocess.zero_rms_frame_seconds=0", "preprocess.zero_rms_frame_seconds"),
    ("preprocess.zero_rms_frame_seconds=60", "preprocess.zero_rms_frame_seconds"),
    ("preprocess.max_zero_rms_seconds=-1", "preprocess.max_zero_rms_seconds"),
    ("preprocess.resp_min_overlap_s=0", "preprocess.resp_min_overlap_s"),
    ("preprocess.block_epochs=1000000000", "preprocess.block_epochs"),
    ("preprocess.plain_channel_index={Mic: -7}", "preprocess.plain_channel_index.Mic"),
    ("backbone.pool_seconds=0", "backbone.pool_seconds"),
    ("backbone.pool_seconds=nan", "backbone.pool_seconds"),
    ("backbone.pool_seconds=0.013", "backbone.pool_seconds"),
    ("backbone.pool_seconds=1e-9", "backbone.pool_seconds"),  # zero frames: a ZeroDivisionError when embedding
    ("backbone.pool_seconds=60", "backbone.pool_seconds"),
    ("backbone.batch_size=1000000000000", "backbone.batch_size"),
    ("backbone.batch_size=0", "backbone.batch_size"),
    ("backbone.batch_size=many", "backbone.batch_size"),
    ("backbone.layer=999999", "backbone.layer"),
    ("backbone.layer=-999999", "backbone.layer"),
    ("backbone.layers=[1, 999999]", "backbone.layers.1"),
    ("backbone.cpu_threads=0", "backbone.cpu_threads"),
    ("ray.num_cpus=-3", "ray.num_cpus"),
    ("ray.num_gpus_per_worker=-1", "ray.num_gpus_per_worker"),
    ("ray.chunk_minutes=.inf", "ray.chunk_minutes"),
    ("ray.chunk_minutes=0.1", "ray.chunk_minutes"),
    ("ray.embed_cpus=nan", "ray.embed_cpus"),
    ("ray.embed_resources={model: .nan}", "ray.embed_resources.model"),
    ("ray.object_store_mb=1000000000", "ray.object_store_mb"),
    ("report.hypnograms=1000000000", "report.hypnograms"),
    ("validation.min_silent_gap_s=.inf", "validation.min_silent_gap_s"),
    ("validation.start_tolerance_s=nan", "validation.start_tolerance_s"),
]


@pytest.mark.parametrize(("override", "setting"), REFUSED)
def test_a_nonsense_value_is_refused_naming_its_setting(override: str, setting: str) -> None:
    with pytest.raises(ValidationError) as info:
        load_config(None, [override], environ={})
    assert [".".join(str(p) for p in e["loc"]) for e in info.value.errors()] == [setting]


def test_an_environment_variable_is_bounded_too() -> None:
    with pytest.raises(ValidationError, match=r"training\.epochs"):
        load_config(None, [], environ={"SLEEPSOUND_TRAINING__EPOCHS": "-1"})


@pytest.mark.parametrize(
    "override",
    [
        "training.epochs=1",
        "training.epochs=30",
        "training.lr=1e-3",
        "training.min_lr=5e-5",
        "training.test_fraction=0.34",
        "backbone.batch_size=auto",
        "backbone.batch_size=4",
        "backbone.pool_seconds=0.1",
        "backbone.pool_seconds=0.02",
        "backbone.layer=3",
        "backbone.layer=-2",
        "backbone.layers=[2, -1]",
        "backbone.name=facebook/hubert-base-ls960",
        "preprocess.highpass_hz=1",
        "preprocess.preemphasis=0",
        "preprocess.block_epochs=9",
        "preprocess.max_zero_rms_seconds=0",
        "ray.num_gpus_per_worker=1",
        "ray.num_gpus_per_worker=0.25",
        "ray.embed_workers=8",
        "ray.object_store_mb=512",
        "ray.chunk_minutes=0",
        "ray.chunk_minutes=30",
        "report.hypnograms=0",
    ],
)
def test_the_values_the_readme_and_recipes_use_stay_valid(override: str) -> None:
    load_config(None, [override], environ={})


def test_the_defaults_and_the_recipes_settings_are_valid() -> None:
    from sleepsound.recipes.demo import DEMO_OVERRIDES
    from sleepsound.recipes.embc2025 import model_configs

    assert Config.model_validate(Config().model_dump(by_alias=True)) == Config()
    demo = load_config(None, DEMO_OVERRIDES, environ={})
    assert len(model_configs(demo, "facebook/hubert-base-ls960")) == 3


@pytest.mark.parametrize("setting", ["backbone.name", "backbone.device", "backbone.dtype", "ray.address"])
def test_a_name_has_a_sane_length(setting: str) -> None:
    with pytest.raises(ValidationError, match="at most"):
        load_config(None, [f"{setting}={'x' * 5000}"], environ={})


def test_snore_clip_folders_have_a_sane_length() -> None:
    with pytest.raises(ValidationError, match="at most"):
        load_config(None, [f"training.snore_clips=[{'x' * 5000}]"], environ={})


DEEP = "[" * 5000 + "]" * 5000


def test_deep_nesting_names_its_source(tmp_path: Path) -> None:
    """PyYAML recurses once per level: a RecursionError escaped as an unplanned crash naming nothing."""
    path = tmp_path / "deep.yaml"
    path.write_text(f"training:\n  epochs: {DEEP}\n")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: nested too deeply$"):
        load_config(path, [], environ={})
    with pytest.raises(ValueError, match=r"^override training\.epochs: nested too deeply$"):
        load_config(None, [f"training.epochs={DEEP}"], environ={})
    with pytest.raises(ValueError, match=r"^SLEEPSOUND_TRAINING__EPOCHS: nested too deeply$"):
        load_config(None, [], environ={"SLEEPSOUND_TRAINING__EPOCHS": DEEP})


def test_a_huge_file_is_refused_by_its_size(tmp_path: Path) -> None:
    """A 50-MB file was parsed for 30 s before anything was said; now at most 1 MiB is read."""
    path = tmp_path / "big.yaml"
    path.write_text("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    size = path.stat().st_size
    with pytest.raises(ValueError, match=f"{re.escape(str(path))} is {size} bytes .* at most 1 MiB"):
        load_config(path, [], environ={})
    just = tmp_path / "just.yaml"
    just.write_text("training:\n  epochs: 2\n".ljust(MAX_CONFIG_BYTES - 1) + "\n")
    assert load_config(just, [], environ={}).training.epochs == 2


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_an_endless_file_is_refused_without_reading_it_all() -> None:
    with pytest.raises(ValueError, match="more than 1048576 bytes"):
        load_config("/dev/zero", [], environ={})


def test_the_variables_behind_settings_are_reported() -> None:
    """So an error can name SLEEPSOUND_TRAINING__BOGUS, what the user wrote, not training.bogus."""
    origins: dict[tuple[str, str], str] = {}
    env = {"SLEEPSOUND_TRAINING__EPOCHS": "2", "SLEEPSOUND_BACKBONE__LAYER": "2"}
    load_config(None, ["backbone.layer=3"], environ=env, origins=origins)
    assert origins == {("training", "epochs"): "SLEEPSOUND_TRAINING__EPOCHS"}  # the flag replaced the other


def test_a_variable_naming_no_section_is_refused_not_ignored() -> None:
    """SLEEPSOUND_TRAINNG__EPOCHS=3 was ignored in silence (a misspelt key in a known section was refused)."""
    with pytest.raises(ValueError, match="SLEEPSOUND_TRAINNG__EPOCHS: no configuration section 'trainng'"):
        load_config(None, [], environ={"SLEEPSOUND_TRAINNG__EPOCHS": "3"})
