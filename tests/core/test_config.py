import pytest
from pydantic import ValidationError

from sleepsound.core.config import Config, load_config


def test_defaults_follow_the_paper():
    cfg = Config()
    assert (cfg.preprocess.target_rate, cfg.preprocess.highpass_hz, cfg.preprocess.epoch_seconds) == (
        16_000,
        50.0,
        30.0,
    )
    assert cfg.preprocess.max_zero_rms_seconds == 10.0
    assert (cfg.training.lr, cfg.training.min_lr, cfg.training.epochs) == (5e-5, 2.5e-6, 5)


def test_yaml_then_env_then_flags(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preprocess:\n  highpass_hz: 60\ntraining:\n  epochs: 7\n")
    env = {"SLEEPSOUND_TRAINING__EPOCHS": "9", "SLEEPSOUND_BACKBONE__LAYER": "2"}
    cfg = load_config(path, ["backbone.layer=3"], environ=env)
    assert cfg.preprocess.highpass_hz == 60 and cfg.training.epochs == 9 and cfg.backbone.layer == 3


def test_preprocessing_fingerprint_tracks_only_what_changes_audio():
    base = Config()
    assert base.preprocess.fingerprint() == Config(training={"epochs": 1}).preprocess.fingerprint()
    assert base.preprocess.fingerprint() == Config(preprocess={"block_epochs": 9}).preprocess.fingerprint()
    assert base.preprocess.fingerprint() != Config(preprocess={"highpass_hz": 60}).preprocess.fingerprint()


def test_unknown_keys_are_refused(tmp_path):
    with pytest.raises(ValidationError):
        load_config(None, ["preprocess.hipass=60"], environ={})
    with pytest.raises(ValueError):
        load_config(None, ["nonsense"], environ={})


def test_backbone_layers_setting():
    """``backbone.layers`` or ``backbone.layer``, never both; an old config keeps its fingerprint."""
    plain = Config()
    assert plain.backbone.n_layers == 1
    several = Config.model_validate({"backbone": {"layers": [2, -1]}})
    assert several.backbone.n_layers == 2 and several.fingerprint() != plain.fingerprint()
    assert Config.model_validate({"backbone": {"layers": []}}).fingerprint() == plain.fingerprint()
    with pytest.raises(ValueError, match="not both"):
        Config.model_validate({"backbone": {"layer": 3, "layers": [2, -1]}})
    with pytest.raises(ValueError, match="twice"):
        Config.model_validate({"backbone": {"layers": [2, 2]}})


def test_the_configuration_hash_of_unchanged_settings_stays_what_runs_recorded():
    """Run records and model lineage carry Config.fingerprint(); settings added since (left at their
    defaults) and the tasks -> targets rename must not change it for a configuration that did not."""
    assert Config().fingerprint() == "eadb802c4f4b"  # the default configuration's hash before they existed
    assert load_config(None, ["training.tasks=[stage3, resp]"]).fingerprint() == (
        load_config(None, ["training.targets=[stage3, resp]"]).fingerprint()
    )
    for changed in (
        "ray.chunk_minutes=30",
        "backbone.cast_weights=true",
        "ray.embed_resources={model: 1}",
        "preprocess.device=model",
        "training.snore_clips=[]" if Config().training.snore_clips else "training.snore_clips=[generated]",
        "training.snore_generated_share=0.5",
    ):
        assert load_config(None, [changed]).fingerprint() != Config().fingerprint(), changed
    # where a small embedding runs changes nothing it makes: never in the hash
    assert load_config(None, ["ray.small_job_epochs=0"]).fingerprint() == Config().fingerprint()
