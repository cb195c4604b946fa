"""The embedding cache: hits and misses by what produced an embedding, readable without sleepsound."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sleepsound.core.config import Config, PreprocessConfig
from sleepsound.embed.cache import embeddings_dir, embeddings_path, epochs_path
from sleepsound.embed.cohort import embed_cohort
from sleepsound.embed.epochs import read_epochs
from sleepsound.ingest.manifest import build_manifest
from sleepsound.models.backbones.pretrained import load_backbone
from sleepsound.models.backbones.tiny import save_tiny_random_backbone
from sleepsound.synth.writers import generate_cohort


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("cache-cohort")
    generate_cohort(out, n_subjects=3, hours=0.05, seed=21, sample_rate=16_000, part_seconds=180, cycle_minutes=10)
    found = build_manifest(str(out), PreprocessConfig())
    assert [r["status"] for r in found] == ["accepted"] * 3
    return found


def _cfg(backbone: str, **preprocess) -> Config:
    return Config.model_validate(
        {
            "backbone": {"name": backbone, "batch_size": 4},
            "preprocess": preprocess,
            "training": {"shift_augment": False},
        }
    )


def test_hits_and_misses_follow_what_produced_the_embeddings(rows, tiny_whisper, tmp_path):
    root = str(tmp_path / "root")
    cfg = _cfg(tiny_whisper)
    first = embed_cohort(rows[:2], root, cfg, use_ray=False)
    assert sorted(first.embedded) == sorted(r["recording_id"] for r in rows[:2]) and first.epochs == 12

    again = embed_cohort(rows[:2], root, cfg, use_ray=False)
    assert again.embedded == [] and len(again.cached) == 2 and again.epochs == 0

    grown = embed_cohort(rows, root, cfg, use_ray=False)  # one new night: only it is embedded
    assert grown.embedded == [rows[2]["recording_id"]] and len(grown.cached) == 2

    filtered = _cfg(tiny_whisper, highpass_hz=80.0)  # another filter: everything again
    refiltered = embed_cohort(rows, root, filtered, use_ray=False)
    assert len(refiltered.embedded) == 3
    assert embeddings_dir(root, filtered) != embeddings_dir(root, cfg)

    other = str(save_tiny_random_backbone("whisper", tmp_path / "other-whisper", seed=1))
    swapped = embed_cohort(rows, root, _cfg(other), use_ray=False)  # other weights: everything again
    assert len(swapped.embedded) == 3

    layer = _cfg(tiny_whisper).model_copy(
        update={"backbone": _cfg(tiny_whisper).backbone.model_copy(update={"layer": 1})}
    )
    assert len(embed_cohort(rows, root, layer, use_ray=False).embedded) == 3
    assert embed_cohort(rows, root, cfg, use_ray=False).embedded == []  # the first cache is untouched


def test_changed_audio_is_a_new_cache_entry(rows, tiny_whisper, tmp_path):
    root = str(tmp_path / "root")
    cfg = _cfg(tiny_whisper)
    embed_cohort(rows[:1], root, cfg, use_ray=False)
    edited = {**rows[0], "sha256": "f" * 64}  # the night's audio changed upstream
    assert embed_cohort([edited], root, cfg, use_ray=False).embedded == [rows[0]["recording_id"]]
    assert Path(embeddings_path(root, cfg, rows[0]["recording_id"], "f" * 64)).exists()


def test_cache_is_plain_parquet_equal_to_a_direct_forward_pass(rows, tiny_whisper, tmp_path):
    root = str(tmp_path / "root")
    cfg = _cfg(tiny_whisper)
    embed_cohort(rows[:1], root, cfg, use_ray=False)
    rec = rows[0]["recording_id"]
    table = pd.read_parquet(embeddings_path(root, cfg, rec, rows[0]["sha256"]))  # pandas alone
    epochs = pd.read_parquet(epochs_path(root, cfg, rec))
    assert list(table["epoch_index"]) == list(epochs.loc[epochs["valid"], "epoch_index"])
    n_frames, dim = int(table["n_frames"].iloc[0]), int(table["dim"].iloc[0])
    cached = np.stack(table["embedding"].to_numpy()).reshape(len(table), n_frames, dim)
    assert cached.dtype == np.float16 and (n_frames, dim) == (60, 32)
    assert (
        pq.read_schema(embeddings_path(root, cfg, rec, rows[0]["sha256"])).field("embedding").type.value_type
        == "halffloat"
    )

    audio = np.stack([r["audio"] for r in read_epochs(rows[0], cfg.preprocess) if r["valid"]])
    direct = load_backbone(tiny_whisper).embed(audio)
    np.testing.assert_allclose(cached.astype(np.float32), direct.astype(np.float32), atol=1e-3)


def test_several_layers_are_cached_together_and_the_head_learns_their_weights(rows, tiny_whisper, tmp_path):
    """``backbone.layers``: its own cache folder, [frames, layers, dim] rows, a head with layer weights."""
    import json

    import pandas as pd

    from sleepsound.train.dataset import load_embedded
    from sleepsound.train.fit import train_models

    root = str(tmp_path / "root")
    cfg = Config.model_validate(
        {
            "backbone": {"name": tiny_whisper, "batch_size": 4, "layers": [1, -1]},
            "training": {"shift_augment": False, "epochs": 2, "context_epochs": 1},
        }
    )
    single = _cfg(tiny_whisper)
    assert embeddings_dir(root, cfg) != embeddings_dir(root, single)
    assert len(embed_cohort(rows, root, cfg, use_ray=False).embedded) == 3
    assert embed_cohort(rows, root, cfg, use_ray=False).embedded == []
    rec = rows[0]["recording_id"]
    table = pd.read_parquet(embeddings_path(root, cfg, rec, rows[0]["sha256"]))
    assert (int(table["n_frames"].iloc[0]), int(table["n_layers"].iloc[0]), int(table["dim"].iloc[0])) == (60, 2, 32)
    cached = np.stack(table["embedding"].to_numpy()).reshape(len(table), 60, 2, 32)
    embed_cohort(rows[:1], root, single, use_ray=False)
    plain = pd.read_parquet(embeddings_path(root, single, rec, rows[0]["sha256"]))
    last = np.stack(plain["embedding"].to_numpy()).reshape(len(plain), 60, 32)
    np.testing.assert_allclose(cached[:, :, 1].astype(np.float32), last.astype(np.float32), atol=1e-3)

    manifest = pd.DataFrame(rows)
    data = load_embedded(root, cfg, manifest)
    assert data.features.shape[1:] == (60, 2, 32)
    model = train_models(root, cfg, "r-layers", manifest)
    lineage = json.loads(Path(model["model_dir"], "lineage.json").read_text())
    assert lineage["layers"] == [1, -1] and len(lineage["layer_weights"]) == 2
    assert sum(lineage["layer_weights"]) == pytest.approx(1.0)
    head_config = json.loads(Path(model["model_dir"], "config.json").read_text())
    assert head_config["dims"]["n_layers"] == 2 and head_config["extra"]["layer_weights"] == lineage["layer_weights"]


def test_auto_batch_size_and_compile_reach_the_model_stage(rows, tiny_whisper, tmp_path):
    """``batch_size: auto`` is sized on the first batch (8 on CPU); ``compile`` wraps the model."""
    import torch

    from sleepsound.embed.model_stage import EmbedStage

    cfg = Config.model_validate(
        {
            "backbone": {"name": tiny_whisper, "batch_size": "auto", "device": "cpu"},
            "training": {"shift_augment": False},
        }
    )
    assert cfg.backbone.stream_rows == 64
    root = str(tmp_path / "root")
    assert len(embed_cohort(rows[:1], root, cfg, use_ray=False).embedded) == 1
    fixed = _cfg(tiny_whisper)
    assert embeddings_dir(root, cfg) == embeddings_dir(root, fixed)  # batching never changes the cache key
    assert embed_cohort(rows[:1], root, fixed, use_ray=False).embedded == []

    stage = EmbedStage(cfg.backbone.model_dump())
    assert stage.batch_size is None  # sized on the first real batch
    import pyarrow as pa

    from sleepsound.embed.transport import fixed_size_rows

    stage(
        pa.table(
            {
                "audio": fixed_size_rows(np.zeros((3, 30 * 16_000), dtype=np.float32)),
                "valid": [True, True, False],
                "error": pa.array([None, None, None], type=pa.string()),
            }
        )
    )
    assert stage.batch_size == 8
    compiled = EmbedStage({**cfg.backbone.model_dump(), "compile": True})
    assert isinstance(compiled.backbone.model, torch._dynamo.eval_frame.OptimizedModule)
    with pytest.raises(ValueError):
        Config.model_validate({"backbone": {"batch_size": "big"}})


def test_scoring_skips_the_shifted_training_windows_and_training_adds_only_them(rows, tiny_whisper, tmp_path):
    root = tmp_path / "root"
    cfg = Config.model_validate(
        {"backbone": {"name": tiny_whisper, "batch_size": 4}, "training": {"shift_augment": True}}
    )
    scored = embed_cohort(rows[:1], str(root), cfg, use_ray=False, shifted=False)
    assert scored.epochs > 0 and scored.shifted == 0 and not list(root.rglob("*.shifted-*.parquet"))
    trained = embed_cohort(rows[:1], str(root), cfg, use_ray=False)
    assert trained.epochs == 0 and trained.shifted > 0 and list(root.rglob("*.shifted-*.parquet"))


def test_forward_batches_use_few_lengths_and_cover_every_row_once():
    from sleepsound.embed.model_stage import forward_batches

    for size in (1, 4, 12, 16):
        seen: set[int] = set()
        for n in range(0, 40):
            pieces = forward_batches(np.arange(n), size)
            assert np.concatenate(pieces).tolist() == list(range(n)) if n else pieces == []
            seen |= {len(p) for p in pieces}
        assert seen <= {size} | {1 << k for k in range(size.bit_length()) if 1 << k < size}


@pytest.mark.usefixtures("ray_session")
def test_long_nights_are_read_in_chunks_on_ray_and_cached_as_one_reader_would(tiny_whisper, tmp_path):
    """With ray.chunk_minutes below a night's length, several readers share the night (chunks of
    epochs, each with pre- and post-roll); the cache holds the same rows as the one-process path,
    the embeddings equal to float rounding, and a night is still written whole, once."""
    from sleepsound.embed.cohort import night_chunks

    source = tmp_path / "src"
    generate_cohort(source, n_subjects=2, hours=0.1, seed=5, sample_rate=48_000, part_seconds=150, cycle_minutes=3)
    nights = build_manifest(str(source), PreprocessConfig())
    cfg = Config.model_validate(
        {"backbone": {"name": tiny_whisper, "batch_size": 4}, "ray": {"chunk_minutes": 1.5, "read_cpus": 0.5}}
    )
    assert night_chunks(nights[0], 3) == [(0, 3), (3, 6), (6, 9), (9, 12)]
    assert night_chunks(nights[0], 12) == [None]
    remote = {**nights[0], "source_uris": ["s3://b/x.edf"]}
    assert night_chunks(remote, 3) == [(0, 3), (3, 6), (6, 9), (9, 12)]  # EDF parts: read by byte ranges
    assert night_chunks({**remote, "layout": "plain"}, 3) == [None]  # would download it 4 times
    local, chunked = str(tmp_path / "local"), str(tmp_path / "ray")
    one = embed_cohort(nights, local, cfg, use_ray=False)
    many = embed_cohort(nights, chunked, cfg, use_ray=True)
    assert many.failed == {} and sorted(many.embedded) == sorted(one.embedded)
    assert (many.epochs, many.shifted) == (one.epochs, one.shifted) and many.epochs == 24 and many.shifted > 0
    assert many.ray_data and not one.ray_data
    for row in nights:
        rec = row["recording_id"]
        pd.testing.assert_frame_equal(  # labels, validity, quality figures: identical
            pd.read_parquet(epochs_path(local, cfg, rec)), pd.read_parquet(epochs_path(chunked, cfg, rec))
        )
        made = sorted(Path(embeddings_dir(local, cfg)).glob(f"{rec}-*.parquet"))
        assert len(made) >= 2  # the epochs and at least one stage's shifted windows
        for path in made:
            x = pd.read_parquet(path)
            y = pd.read_parquet(Path(embeddings_dir(chunked, cfg)) / path.name)
            assert list(x["epoch_index"]) == list(y["epoch_index"])
            if x.empty:  # a stage without shifted windows in this night: an empty file on both sides
                continue
            np.testing.assert_allclose(
                np.stack(x["embedding"]).astype(np.float32), np.stack(y["embedding"]).astype(np.float32), atol=2e-2
            )


@pytest.mark.usefixtures("ray_session")
def test_a_small_job_on_one_node_without_gpus_is_embedded_in_the_calling_process(rows, tiny_whisper, tmp_path):
    """A flow's embedding of few epochs on a one-node session without GPUs skips Ray Data (its start and
    the model actor's imports outweigh the job): the cache is the one-process path's, file for file."""
    from sleepsound.embed.cohort import small_job

    cfg = _cfg(tiny_whisper)
    local, small = str(tmp_path / "local"), str(tmp_path / "small")
    one = embed_cohort(rows, local, cfg, use_ray=False)
    flow = embed_cohort(rows, small, cfg, use_ray=True, small_job_epochs=cfg.ray.small_job_epochs)
    assert not flow.ray_data and flow.epochs == one.epochs == 18 and flow.embedded == one.embedded
    for rec in flow.embedded:
        pd.testing.assert_frame_equal(
            pd.read_parquet(epochs_path(local, cfg, rec)), pd.read_parquet(epochs_path(small, cfg, rec))
        )
        for path in sorted(Path(embeddings_dir(local, cfg)).glob(f"{rec}-*.parquet")):
            pd.testing.assert_frame_equal(
                pd.read_parquet(path), pd.read_parquet(Path(embeddings_dir(small, cfg)) / path.name)
            )
    assert small_job(18, cfg, 18) and not small_job(19, cfg, 18) and not small_job(18, cfg, 0)
    for ray in ({"embed_workers": 2}, {"num_gpus_per_worker": 1}, {"embed_resources": {"model_node": 1}}):
        asked = Config.model_validate({**cfg.model_dump(), "ray": {**cfg.ray.model_dump(), **ray}})
        assert not small_job(18, asked, 240), ray  # several actors, GPUs or chosen nodes: Ray Data's work
    assert Config().ray.small_job_epochs == 240  # two hours of audio


def test_the_model_stage_keeps_one_row_width_and_the_transport_keeps_nulls(tiny_whisper):
    """Arrow tables all the way: a batch with no valid row has the same embedding width as any
    other (so Ray can join batches), and nulls come back as None, numbers as Python numbers."""
    import pyarrow as pa

    from sleepsound.embed.model_stage import EmbedStage
    from sleepsound.embed.transport import EMBEDDING, TRANSPORT_FIELDS, table_rows, to_table

    stage = EmbedStage(_cfg(tiny_whisper).backbone.model_dump())
    blank = {name: None for name, _ in TRANSPORT_FIELDS}
    rows = [
        {
            **blank,
            "recording_id": "r",
            "epoch_index": i,
            "valid": valid,
            "kind": "epoch",
            "audio": np.random.default_rng(i).standard_normal(30 * 16_000).astype(np.float32),
        }
        for i, valid in enumerate([True, False, True])
    ]
    mixed = stage(to_table(rows))
    dead = stage(to_table([{**r, "valid": False} for r in rows]))
    assert mixed.schema == dead.schema and pa.concat_tables([mixed, dead]).num_rows == 6
    out = list(table_rows([mixed, dead]))
    assert [r["epoch_index"] for r in out] == [0, 1, 2, 0, 1, 2]
    assert out[0]["stage3"] is None and out[0]["n_apnea"] is None and isinstance(out[0]["epoch_index"], int)
    assert out[0][EMBEDDING].any() and not out[1][EMBEDDING].any() and not out[3][EMBEDDING].any()
    assert out[0][EMBEDDING].size == out[0]["n_frames"] * out[0]["dim"]


@pytest.mark.usefixtures("ray_session")
def test_preprocessing_on_the_models_device_has_its_own_cache_and_the_same_epochs(tiny_whisper, tmp_path):
    """preprocess.device model: readers send raw epochs with margins, the model stage resamples and
    filters them; the same epochs, labels and quality as the CPU path, embeddings nearly the same
    (another resampler: see test_preprocess_torch), in a cache folder of its own, one process or Ray."""
    source = tmp_path / "src"
    generate_cohort(source, n_subjects=1, hours=0.1, seed=5, sample_rate=48_000, part_seconds=150, cycle_minutes=3)
    nights = build_manifest(str(source), PreprocessConfig())
    rec, sha = nights[0]["recording_id"], nights[0]["sha256"]
    cpu = _cfg(tiny_whisper)
    model = cpu.model_copy(update={"preprocess": cpu.preprocess.model_copy(update={"device": "model"})})
    assert cpu.preprocess.fingerprint() == PreprocessConfig().fingerprint() != model.preprocess.fingerprint()
    root = str(tmp_path / "root")
    embed_cohort(nights, root, cpu, use_ray=False)
    reference = np.stack(pd.read_parquet(embeddings_path(root, cpu, rec, sha))["embedding"]).astype(np.float32)
    for use_ray, where in ((False, "local"), (True, "ray")):
        out = str(tmp_path / where)
        stats = embed_cohort(nights, out, model, use_ray=use_ray)
        assert stats.failed == {} and stats.epochs == 12
        pd.testing.assert_frame_equal(
            pd.read_parquet(epochs_path(out, model, rec)), pd.read_parquet(epochs_path(root, cpu, rec))
        )
        got = np.stack(pd.read_parquet(embeddings_path(out, model, rec, sha))["embedding"]).astype(np.float32)
        cosine = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
        assert cosine.min() > 0.999
    assert embeddings_dir(root, cpu) != embeddings_dir(root, model)


# --- corrupt and partial cache files: named, quarantined, embedded again (issue 15) ---


def _shift_cfg() -> Config:
    """The weightless mel front end (cheap, deterministic, non-zero values), shifted windows on."""
    return Config.model_validate({"backbone": {"name": "mel", "batch_size": 4}, "training": {"shift_augment": True}})


def _truncate(path: str) -> bytes:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return data[: len(data) // 2]


def _quarantined(root: str, path: str) -> Path:
    return Path(root, "quarantine", "cache", Path(path).relative_to(root))


@pytest.mark.parametrize("which", ["embeddings", "epochs", "shifted"])
def test_a_truncated_cache_file_is_quarantined_by_name_and_embedded_again(rows, tmp_path, caplog, which):
    import json

    from sleepsound.embed.cache import shifted_path, wanted_shift_classes

    root, cfg, row = str(tmp_path / "root"), _shift_cfg(), rows[0]
    rec, sha = row["recording_id"], row["sha256"]
    assert len(embed_cohort(rows[:2], root, cfg, use_ray=False).embedded) == 2
    stage = wanted_shift_classes(cfg, row)[0]
    path = {
        "embeddings": embeddings_path(root, cfg, rec, sha),
        "epochs": epochs_path(root, cfg, rec),
        "shifted": shifted_path(root, cfg, rec, sha, stage),
    }[which]
    before = pd.read_parquet(path)
    cut = _truncate(path)

    with caplog.at_level("WARNING", logger="sleepsound.embed.cache"):
        again = embed_cohort(rows[:2], root, cfg, use_ray=False)
    assert again.embedded == [rec] and again.cached == [rows[1]["recording_id"]] and not again.failed
    assert len(again.quarantined) == 1 and again.quarantined[0].startswith(f"{path}: not a readable Parquet file")
    assert "not a readable Parquet file" in caplog.text and "quarantine" in caplog.text
    assert rec not in caplog.text  # cache paths hold recording ids (patient ids): the reason file names it
    moved = _quarantined(root, path)
    assert moved.read_bytes() == cut
    reason = json.loads(Path(f"{moved}.reason.json").read_text())
    assert reason["path"] == path and "not a readable Parquet file" in reason["problem"]
    after = pd.read_parquet(path)  # the same rows, embedded again (to float16 rounding: other batches)
    emb = ["embedding"] if "embedding" in before else []
    pd.testing.assert_frame_equal(after.drop(columns=emb), before.drop(columns=emb))
    if emb and len(before):
        np.testing.assert_allclose(np.stack(after["embedding"]), np.stack(before["embedding"]), atol=1e-3)
    assert embed_cohort(rows[:2], root, cfg, use_ray=False).embedded == []  # healed: a cache hit again


def test_an_embeddings_file_that_disagrees_with_its_epochs_is_quarantined(rows, tmp_path):
    root, cfg, row = str(tmp_path / "root"), _cfg("mel"), rows[0]
    embed_cohort(rows[:1], root, cfg, use_ray=False)
    path = embeddings_path(root, cfg, row["recording_id"], row["sha256"])
    table = pq.read_table(path)
    pq.write_table(table.slice(0, table.num_rows - 1), path)  # a readable file one row short
    again = embed_cohort(rows[:1], root, cfg, use_ray=False)
    assert again.embedded == [row["recording_id"]]
    epochs = epochs_path(root, cfg, row["recording_id"])
    n = table.num_rows
    assert again.quarantined == [f"{path}: holds {n - 1} embeddings, {epochs} has {n} valid epochs"]
    assert pq.read_table(path).equals(table)


def test_caches_written_before_the_checks_stay_cache_hits(rows, tmp_path):
    """Files without the recorded valid count and checksum are checked by footer and counted rows."""
    root, cfg, row = str(tmp_path / "root"), _cfg("mel"), rows[0]
    embed_cohort(rows[:1], root, cfg, use_ray=False)
    for path in (
        embeddings_path(root, cfg, row["recording_id"], row["sha256"]),
        epochs_path(root, cfg, row["recording_id"]),
    ):
        pq.write_table(pq.read_table(path).replace_schema_metadata(None), path)
        assert b"sleepsound.cache" not in (pq.read_metadata(path).metadata or {})
    again = embed_cohort(rows[:1], root, cfg, use_ray=False)
    assert again.cached == [row["recording_id"]] and not Path(root, "quarantine").exists()


def test_readers_name_a_bad_cache_file_and_quarantine_it_so_the_rerun_heals(rows, tmp_path):
    """Training and prediction read the files in full: a digest mismatch (values altered, footer intact)
    or a file truncated after the embed step is an error naming the file, never a bare Arrow error."""
    from sleepsound.train.dataset import load_embedded

    root, cfg, row = str(tmp_path / "root"), _cfg("mel"), rows[0]
    manifest = pd.DataFrame(rows[:1])
    embed_cohort(rows[:1], root, cfg, use_ray=False)
    first = load_embedded(root, cfg, manifest)
    path = embeddings_path(root, cfg, row["recording_id"], row["sha256"])

    table = pq.read_table(path)  # flip values, keep the schema (and its recorded checksum)
    flat = np.asarray(table["embedding"].combine_chunks().flatten()).copy()
    flat[:10] += np.float16(1.0)
    altered = table.set_column(
        table.schema.get_field_index("embedding"),
        table.schema.field("embedding"),
        pa.FixedSizeListArray.from_arrays(pa.array(flat), table.schema.field("embedding").type.list_size),
    )
    pq.write_table(altered, path)
    assert embed_cohort(rows[:1], root, cfg, use_ray=False).cached == [row["recording_id"]]  # footers agree
    with pytest.raises(OSError, match=rf"{path}: its embedding values differ from the checksum"):
        load_embedded(root, cfg, manifest)
    assert _quarantined(root, path).exists() and not Path(path).exists()
    healed = embed_cohort(rows[:1], root, cfg, use_ray=False)
    assert healed.embedded == [row["recording_id"]]
    np.testing.assert_array_equal(load_embedded(root, cfg, manifest).features, first.features)

    epochs = epochs_path(root, cfg, row["recording_id"])
    _truncate(epochs)  # after the embed step checked it
    with pytest.raises(OSError, match=rf"{epochs}: unreadable \(ArrowInvalid"):
        load_embedded(root, cfg, manifest)
    assert _quarantined(root, epochs).exists()


def test_a_truncated_cache_object_on_s3_is_quarantined_and_embedded_again(rows, s3_endpoint):
    """The same on object storage: footers read by range, the bad object moved under quarantine/cache."""
    import json

    import s3fs

    fs = s3fs.S3FileSystem()
    if not fs.exists("cache-checks"):
        fs.mkdir("cache-checks")
    root, cfg, row = "s3://cache-checks/root", _cfg("mel"), rows[0]
    assert embed_cohort(rows[:1], root, cfg, use_ray=False).embedded == [row["recording_id"]]
    path = embeddings_path("cache-checks/root", cfg, row["recording_id"], row["sha256"])
    data = fs.cat_file(path)
    fs.pipe_file(path, data[: len(data) // 2])
    again = embed_cohort(rows[:1], root, cfg, use_ray=False)
    assert again.embedded == [row["recording_id"]]
    assert again.quarantined[0].startswith(f"{path}: not a readable Parquet file")
    moved = path.replace("cache-checks/root/", "cache-checks/root/quarantine/cache/", 1)
    assert fs.cat_file(moved) == data[: len(data) // 2]
    assert json.loads(fs.cat_file(f"{moved}.reason.json"))["path"] == path
    assert fs.cat_file(path) == data  # embedded again, byte for byte (same batches as the first run)
