"""A source that changes under the cache: every cached file belongs to the version of the night the
manifest describes, so labels that arrive or are corrected later, or audio put back to an earlier
upload, are embedded again rather than paired with another version's files."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from prefect import flow

from sleepsound.core.config import Config
from sleepsound.embed.cache import cache_meta, embeddings_path, epochs_path, shifted_path
from sleepsound.embed.cohort import embed_cohort
from sleepsound.embed.epochs import read_epochs
from sleepsound.ingest.manifest import build_manifest
from sleepsound.synth.writers import generate_cohort
from tasks.predict import predict
from tasks.promote import promote

CFG = Config.model_validate({"backbone": {"name": "null"}, "training": {"shift_augment": True}})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Two PSG-Audio nights of two 90-s parts (6 epochs each)."""
    out = tmp_path_factory.mktemp("changed-source")
    generate_cohort(out, n_subjects=2, hours=0.05, seed=21, sample_rate=16_000, part_seconds=90, cycle_minutes=10)
    return out


def _copy(cohort: Path, tmp_path: Path) -> Path:
    shutil.copytree(cohort, tmp_path / "src")
    return tmp_path / "src"


def _by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["recording_id"]: r for r in rows}


def _edf_samples(part: Path) -> tuple[int, bytearray]:
    """An EDF part's bytes and where its data records start (the header's byte count)."""
    data = bytearray(part.read_bytes())
    return int(data[184:192].decode().strip()), data


def test_labels_that_arrive_or_change_after_embedding_are_embedded_again(cohort, tmp_path):
    """The audio's SHA-256 does not change with the labels: the epochs file (stages, events) and the
    shifted windows record the labels' digest too, so a cached night never keeps the old labels."""
    src, root = _copy(cohort, tmp_path), str(tmp_path / "root")
    rml = sorted((src / "APNEA_RML").glob("*.rml"))[0]
    rec, labels = rml.stem, rml.read_bytes()
    rml.unlink()
    first = build_manifest(str(src), CFG.preprocess)
    assert _by_id(first)[rec]["label_source"] == "none" and _by_id(first)[rec]["labels_sha256"] is None
    embed_cohort(first, root, CFG, use_ray=False)
    assert pd.read_parquet(epochs_path(root, CFG, rec))["stage3"].isna().all()

    rml.write_bytes(labels)  # the scoring arrives later: same audio, same SHA-256
    second = build_manifest(str(src), CFG.preprocess, previous=first)
    assert _by_id(second)[rec]["sha256"] == _by_id(first)[rec]["sha256"] and _by_id(second)[rec]["labels_sha256"]
    stats = embed_cohort(second, root, CFG, use_ray=False)
    assert stats.embedded == [rec] and stats.quarantined == []  # stale, not damaged: nothing moved aside
    stages = pd.read_parquet(epochs_path(root, CFG, rec))["stage5"].tolist()
    assert None not in stages and "N2" in stages

    rml.write_text(labels.decode().replace('Type="NonREM2"', 'Type="REM"'))  # the scoring is corrected
    third = build_manifest(str(src), CFG.preprocess, previous=second)
    assert embed_cohort(third, root, CFG, use_ray=False, shifted=False).embedded == [rec]  # as `score` embeds
    corrected = pd.read_parquet(epochs_path(root, CFG, rec))["stage5"].tolist()
    assert "N2" not in corrected and corrected.count("R") > stages.count("R")
    # Training later: the shifted windows, still of the old stages, are embedded again too.
    row = _by_id(third)[rec]
    assert embed_cohort(third, root, CFG, use_ray=False).embedded == [rec]
    windows = pd.read_parquet(shifted_path(root, CFG, rec, row["sha256"], "NREM"))
    assert "N2" not in set(windows["stage5"].dropna())
    assert embed_cohort(third, root, CFG, use_ray=False).embedded == []  # and now it is all cached


def test_audio_put_back_to_an_earlier_upload_is_not_paired_with_the_later_versions_epochs(cohort, tmp_path):
    """A -> B -> A: A's embeddings are still cached (keyed by A's SHA-256), but the epochs file, one per
    night, is B's. It used to count as cached whenever B kept A's valid-epoch count."""
    src, root = _copy(cohort, tmp_path), str(tmp_path / "root")
    first = build_manifest(str(src), CFG.preprocess)
    rec = first[0]["recording_id"]
    embed_cohort(first, root, CFG, use_ray=False)
    part = Path(first[0]["source_uris"][1])
    original = part.read_bytes()
    start, data = _edf_samples(part)
    noise = np.random.default_rng(0).integers(-2000, 2000, (len(data) - start) // 2, dtype=np.int16)
    data[start:] = noise.tobytes()  # other audio, every epoch still valid
    part.write_bytes(bytes(data))
    second = build_manifest(str(src), CFG.preprocess, previous=first)
    assert _by_id(second)[rec]["sha256"] != first[0]["sha256"]
    assert embed_cohort(second, root, CFG, use_ray=False).embedded == [rec]

    part.write_bytes(original)  # the earlier upload is put back
    third = build_manifest(str(src), CFG.preprocess, previous=second)
    assert _by_id(third)[rec]["sha256"] == first[0]["sha256"]
    stats = embed_cohort(third, root, CFG, use_ray=False)
    assert stats.embedded == [rec] and stats.quarantined == []
    recorded = cache_meta(pq.read_schema(epochs_path(root, CFG, rec)).metadata)
    assert recorded["audio_sha256"] == first[0]["sha256"]


def _rewrite_samples(part: Path) -> None:
    """Other audio in the same bytes count: the EDF stays valid, the file is another version."""
    start, data = _edf_samples(part)
    data[start:] = bytes(reversed(data[start:]))
    part.write_bytes(bytes(data))


def _change(src: Path, rec: str, how: str) -> str:
    """Change one of night ``rec``'s files as ``how`` says; returns the file's name."""
    part, rml = src / "APNEA_EDF" / rec / f"{rec}[002].edf", src / "APNEA_RML" / f"{rec}.rml"
    if how == "audio rewritten, same size":
        _rewrite_samples(part)
    elif how == "labels corrected":
        rml.write_text(rml.read_text().replace('Type="NonREM2"', 'Type="REM"'))
    elif how == "audio removed":
        part.unlink()
    else:
        rml.unlink()
    return (rml if "labels" in how else part).name


@pytest.mark.parametrize("how", ["audio rewritten, same size", "labels corrected", "audio removed", "labels removed"])
def test_a_night_changed_between_validation_and_embedding_is_quarantined_not_embedded(cohort, tmp_path, how):
    """Its SHA-256 keys the cache: embedding other bytes under it would serve them for the validated
    version ever after. Same-size audio used to be embedded; removed files failed as read_error."""
    src, root = _copy(cohort, tmp_path), str(tmp_path / "root")
    rows = build_manifest(str(src), CFG.preprocess)
    changed, other = rows[0]["recording_id"], rows[1]["recording_id"]
    name = _change(src, changed, how)
    stats = embed_cohort(rows, root, CFG, use_ray=False)
    assert stats.embedded == [other] and set(stats.failed) == {changed}
    assert stats.failure_codes == {changed: "source_changed"}
    why = stats.failed[changed]
    assert name in why and ("removed" if "removed" in how else "changed since") in why
    assert not Path(embeddings_path(root, CFG, changed, rows[0]["sha256"])).exists()
    assert not Path(epochs_path(root, CFG, changed)).exists()
    again = build_manifest(str(src), CFG.preprocess, previous=rows)  # the next run sees the night as it is now
    assert again[0] is not rows[0] and again[1] is rows[1]


def test_a_file_changed_while_its_night_is_read_ends_the_night_with_source_changed(cohort, tmp_path):
    """The readers check again once they have read: the consumer writes a night only after its closing
    row, so bytes read across a change never reach the cache."""
    src = _copy(cohort, tmp_path)
    row = build_manifest(str(src), CFG.preprocess)[0]
    stream = read_epochs(row, CFG.preprocess)
    first = next(stream)
    assert first["error"] is None
    _rewrite_samples(Path(row["source_uris"][1]))  # the second part, not read yet
    rest = list(stream)
    assert rest[-1]["error"].startswith("SourceChanged (source_changed): ") and "[002].edf" in rest[-1]["error"]


def test_a_night_with_a_part_added_after_it_was_embedded_is_embedded_whole(cohort, tmp_path):
    """[002] arrives after a night of [001] alone (no RML yet) was embedded: validated again, a new
    SHA-256, and its shorter epochs file is simply replaced (it used to be moved to
    quarantine/cache as a damaged file, with a warning)."""
    src, root = _copy(cohort, tmp_path), str(tmp_path / "root")
    rec = sorted(p.name for p in (src / "APNEA_EDF").iterdir())[0]
    (src / "APNEA_RML" / f"{rec}.rml").unlink()
    part = src / "APNEA_EDF" / rec / f"{rec}[002].edf"
    held = part.read_bytes()
    part.unlink()
    first = build_manifest(str(src), CFG.preprocess)
    assert (_by_id(first)[rec]["status"], _by_id(first)[rec]["n_epochs"]) == ("accepted", 3)
    embed_cohort(first, root, CFG, use_ray=False)
    part.write_bytes(held)
    second = build_manifest(str(src), CFG.preprocess, previous=first)
    assert (_by_id(second)[rec]["n_parts"], _by_id(second)[rec]["n_epochs"]) == (2, 6)
    stats = embed_cohort(second, root, CFG, use_ray=False)
    assert stats.embedded == [rec] and stats.quarantined == []
    assert len(pd.read_parquet(epochs_path(root, CFG, rec))) == 6


def test_an_object_replaced_or_removed_on_s3_after_validation_is_not_read(cohort, tmp_path, s3_endpoint):
    """On object storage too, by another uploader (so s3fs's cached listing knows nothing of it): the
    download would pass its MD5 check against the new object, and a chunk's ranged reads would mix
    the two. Both readers compare the ETag validation listed."""
    import boto3
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.mkdir("changed-source")
    fs.put(str(cohort) + "/", "changed-source/src/", recursive=True)
    rows = build_manifest("s3://changed-source/src", CFG.preprocess)
    assert [r["status"] for r in rows] == ["accepted", "accepted"] and all(r["file_versions"] for r in rows)
    replaced, removed = (r["source_uris"][1].removeprefix("s3://changed-source/") for r in rows)
    other = tmp_path / "other.edf"
    fs.get_file(f"changed-source/{replaced}", str(other))
    _rewrite_samples(other)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.put_object(Bucket="changed-source", Key=replaced, Body=other.read_bytes())  # same size, other bytes
    client.delete_object(Bucket="changed-source", Key=removed)

    stats = embed_cohort(rows, str(tmp_path / "root"), CFG, use_ray=False)  # whole nights: verified downloads
    assert stats.embedded == [] and stats.failure_codes == dict.fromkeys(stats.failed, "source_changed")
    assert "same size, but its version" in stats.failed[rows[0]["recording_id"]]
    assert "removed after the night was validated" in stats.failed[rows[1]["recording_id"]]
    chunk = list(read_epochs(rows[0], CFG.preprocess, chunk=(3, 6)))  # ranged reads of the EDF parts
    assert len(chunk) == 1 and chunk[0]["error"].startswith("SourceChanged (source_changed): s3://changed-source/")


def test_annotations_read_again_after_embedding_are_the_validated_ones_or_none(cohort, tmp_path, caplog):
    """Training (the snoring frames), prediction and the report read a night's annotation files again
    after embedding: bytes other than validated are refused by their digest, and a night whose files
    changed or went is left unlabelled there rather than trained on unvalidated or failing the run (a
    removed RML stopped it with AnnotationError)."""
    from sleepsound.embed.epochs import night_labels
    from sleepsound.ingest.versions import SourceChanged
    from sleepsound.report.outputs import _event_counts
    from sleepsound.train.dataset import load_embedded
    from sleepsound.train.frames import frame_labels

    src, root = _copy(cohort, tmp_path), str(tmp_path / "root")
    rows = build_manifest(str(src), CFG.preprocess)
    embed_cohort(rows, root, CFG, use_ray=False)
    data = load_embedded(root, CFG, pd.DataFrame(rows))
    changed = data.epochs["recording_id"].astype(str).to_numpy() == rows[0]["recording_id"]
    before = frame_labels(data, _by_id(rows), CFG.preprocess.epoch_seconds)
    assert (before[changed] >= 0).all() and (before[~changed] >= 0).all()
    assert _event_counts(rows[0], []) != {}

    rml = Path(rows[0]["labels_uri"])
    rml.write_text(rml.read_text().replace('Type="Hypopnea"', 'Type="Snore"'))
    with pytest.raises(SourceChanged, match="changed since the night was validated"):
        night_labels(rows[0], int(rows[0]["n_epochs"]))
    after = frame_labels(data, _by_id(rows), CFG.preprocess.epoch_seconds)
    assert (after[changed] == -1).all() and (after[~changed] == before[~changed]).all()
    assert _event_counts(rows[0], []) == {}
    assert "changed or went since validation (source_changed)" in caplog.text

    rml.unlink()
    with pytest.raises(SourceChanged, match="removed after the night was validated"):
        night_labels(rows[0], int(rows[0]["n_epochs"]))
    assert (frame_labels(data, _by_id(rows), CFG.preprocess.epoch_seconds)[changed] == -1).all()


def test_a_local_file_rewritten_with_its_old_modification_time_put_back_is_caught(cohort, tmp_path):
    """Same size, other bytes, and ``os.utime`` puts the old modification time back: the size and
    mtime the listing gave used to match, so the other audio was embedded under the validated
    checksum, and the next run reused the old row. The status-change time cannot be put back."""
    import os

    src, root = _copy(cohort, tmp_path), str(tmp_path / "root")
    rows = build_manifest(str(src), CFG.preprocess)
    changed, other = rows[0]["recording_id"], rows[1]["recording_id"]
    part = src / "APNEA_EDF" / changed / f"{changed}[002].edf"
    before = part.stat()
    _rewrite_samples(part)
    os.utime(part, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (part.stat().st_size, part.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)

    stats = embed_cohort(rows, root, CFG, use_ray=False)
    assert stats.embedded == [other] and stats.failure_codes == {changed: "source_changed"}
    assert part.name in stats.failed[changed] and "same size, but its version" in stats.failed[changed]
    again = build_manifest(str(src), CFG.preprocess, previous=rows)  # between runs: validated again
    assert again[0] is not rows[0] and again[0]["sha256"] != rows[0]["sha256"] and again[1] is rows[1]


def test_a_version_recorded_before_ctime_and_inode_is_compared_on_its_modification_time(cohort, tmp_path):
    """A manifest written before the version carried the status-change time and inode: its unchanged
    files still read as unchanged after an upgrade (no night quarantined for it), a resized or
    re-timed one is still caught."""
    import os

    from sleepsound.ingest.versions import first_change

    src = _copy(cohort, tmp_path)
    row = build_manifest(str(src), CFG.preprocess)[0]
    assert all(";ctime=" in v["version"] and ";ino=" in v["version"] for v in row["file_versions"])
    old = {**row, "file_versions": [{**v, "version": v["version"].split(";")[0]} for v in row["file_versions"]]}
    assert first_change(old) is None
    part = Path(row["source_uris"][1])
    os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 10**9))
    change = first_change(old)
    assert change is not None and change.code == "source_changed" and part.name in change.path


@flow(name="predict-probe")
def _predict_only(root: str, config: dict, model: dict) -> dict:
    """The run's predict step alone, as a flow runs it (its Prefect logger, its manifest writes)."""
    return predict(root, config, "p1", model)


def test_a_night_whose_audio_changed_before_its_envelope_is_rebuilt_is_quarantined_not_predicted(
    cohort, tmp_path, prefect_api, caplog
):
    """Prediction reads a night's audio again when its breathing envelope is missing from the cache (a
    cache from before envelopes, or a bad file moved aside). A file changed since validation stopped the
    whole predict step with an OSError; now that night alone is quarantined as ``source_changed``,
    naming the file in the manifest (the log: a count and the code), the others are scored, the counts
    add up, nothing of it is written (a first attempt's files of it are removed from the rerun of that
    run id), and the next run validates it again."""
    import logging
    import shutil as sh

    from sleepsound.ingest.manifest import read_manifest, read_manifest_rows, write_manifest
    from sleepsound.predict.recordings import predict_recordings
    from sleepsound.train.fit import train_models

    src, root = _copy(cohort, tmp_path), str(tmp_path / "root")
    rows = build_manifest(str(src), CFG.preprocess)
    write_manifest(root, rows)
    assert not embed_cohort(rows, root, CFG, use_ray=False).failed
    model = train_models(root, CFG, "t1", read_manifest(root))
    changed, other = rows[0]["recording_id"], rows[1]["recording_id"]
    predict_recordings(root, CFG, "p1", model, read_manifest(root))  # a first attempt of the run scored both
    sh.rmtree(tmp_path / "root" / "breathing")  # no envelope cached: the audio must be read again
    _rewrite_samples(src / "APNEA_EDF" / changed / f"{changed}[002].edf")

    with caplog.at_level(logging.INFO):
        predicted = _predict_only(root, CFG.model_dump(), model)
    assert (predicted["accepted"], predicted["quarantined"]) == (1, 1)
    manifest = read_manifest(root).set_index("recording_id")
    assert manifest.loc[changed, "reason_code"] == "source_changed"
    assert (
        f"{changed}[002].edf" in manifest.loc[changed, "reason"] and "changed since" in manifest.loc[changed, "reason"]
    )
    runs = tmp_path / "root" / "runs" / "p1"
    assert set(pd.read_parquet(runs / "predictions")["recording_id"].astype(str)) == {other}
    assert [p.name for p in (runs / "events").iterdir()] == [f"recording_id={other}"]
    assert not list((tmp_path / "root" / "breathing").rglob(f"{changed}-*"))  # no envelope of the other audio
    logged = [r.getMessage() for r in caplog.records]
    assert any("left 1 recordings out of the predictions" in m and "source_changed" in m for m in logged), logged
    assert not [m for m in logged if changed in m or other in m]

    again = build_manifest(str(src), CFG.preprocess, previous=read_manifest_rows(root))  # the next run
    assert [r["status"] for r in again] == ["accepted", "accepted"] and again[0]["sha256"] != rows[0]["sha256"]


@pytest.fixture(scope="module")
def four_nights(tmp_path_factory) -> Path:
    """Four PSG-Audio nights of two 90-s parts, four subjects: two for the evaluation set."""
    out = tmp_path_factory.mktemp("four-nights")
    generate_cohort(out, n_subjects=4, hours=0.05, seed=23, sample_rate=16_000, part_seconds=90, cycle_minutes=10)
    return out


@flow(name="promote-probe")
def _promote_only(root: str, model: dict) -> dict:
    """The run's promote step alone, as a flow runs it (its Prefect logger)."""
    return promote(root, model)


def _champion_of_other_features(four_nights: Path, tmp_path: Path) -> tuple[str, list, dict, dict, Callable[[], None]]:
    """A root whose champion was trained on other features (another high-pass) than its challenger,
    both on the same evaluation subjects; ``forget()`` drops the champion's cached features, so
    re-scoring it must read the evaluation nights' audio again."""
    from sleepsound.ingest.manifest import read_manifest, write_manifest
    from sleepsound.registry.promotion import decide_promotions
    from sleepsound.train.fit import train_models

    training = {"test_fraction": 0.5, "epochs": 1, "shift_augment": False}
    old = Config.model_validate(
        {"backbone": {"name": "null"}, "preprocess": {"highpass_hz": 60.0}, "training": training}
    )
    new = Config.model_validate({"backbone": {"name": "null"}, "training": training})
    assert old.preprocess.fingerprint() != new.preprocess.fingerprint()
    src, root = _copy(four_nights, tmp_path), str(tmp_path / "root")
    rows = build_manifest(str(src), new.preprocess)
    write_manifest(root, rows)
    embed_cohort(rows, root, old, use_ray=False)
    champion = train_models(root, old, "old", read_manifest(root))
    assert decide_promotions(root, champion, rows)["stage3"]["promoted"]
    embed_cohort(rows, root, new, use_ray=False)
    challenger = train_models(root, new, "new", read_manifest(root))

    def forget() -> None:
        for folder in Path(root).glob(f"**/{old.preprocess.fingerprint()}"):
            shutil.rmtree(folder)

    return root, rows, champion, challenger, forget


def test_evaluation_nights_changed_since_validation_are_left_out_of_both_scores_or_refuse_the_comparison(
    four_nights, tmp_path, prefect_api, caplog
):
    """A champion of other features (here another high-pass) is re-scored by embedding its evaluation
    nights again from the audio: a night changed since validation stopped the promote step with
    RuntimeError("evaluation nights failed to embed: ..."). Now it is left out of both models' scores
    (a warning with the count and the reason, no id), and with too few nights left the challenger is
    not compared: a recorded refusal, the champion kept."""
    import logging

    from sleepsound.registry import store as model_store
    from sleepsound.registry.promotion import decide_promotions, evaluate_on_subjects

    root, rows, champion, challenger, forget = _champion_of_other_features(four_nights, tmp_path)
    subjects = challenger["test_subjects"]
    nights = [r for r in rows if r["subject_id"] in subjects]
    assert len(nights) == 2

    def change(night: dict) -> None:
        """Rewrite one of ``night``'s parts, with the champion's features of every night no longer
        cached (pruned, or nights added since it was trained): re-scoring it reads the audio again."""
        forget()
        _rewrite_samples(Path(night["source_uris"][1]))

    change(nights[0])
    with caplog.at_level(logging.INFO):
        decided = _promote_only(root, challenger)
    rest = [r for r in rows if r["recording_id"] != nights[0]["recording_id"]]
    champion_dir = model_store.model_dir(root, "stage3", champion["version"])
    for target, decision in decided.items():
        assert decision["left_out"] == {"nights": 1, "of": 2, "reason": "source_changed"}, target
        assert "1 of 2 evaluation nights left out of both scores: source_changed" in decision["reason"]
    stage3 = decided["stage3"]
    assert stage3["challenger"]["score"] == pytest.approx(
        evaluate_on_subjects(root, "stage3", challenger["heads"]["stage3"]["model_dir"], rest, subjects)["macro_f1"]
    )
    assert stage3["champion"]["score"] == pytest.approx(
        evaluate_on_subjects(root, "stage3", champion_dir, rest, subjects)["macro_f1"]
    )
    logged = [r.getMessage() for r in caplog.records]
    assert any("1 of 2 evaluation nights left out" in m and "source_changed" in m for m in logged), logged
    assert not [m for m in logged for r in rows if r["recording_id"] in m]

    current = model_store.champion_version(root, "stage3")
    change(nights[1])  # now neither evaluation night can be read as validated for the champion
    refused = decide_promotions(root, challenger, rows)
    for decision in refused.values():
        assert not decision["promoted"] and decision["challenger"]["score"] is None
        assert decision["reason"].startswith("not compared: 2 of 2 evaluation nights changed since validation or could")
    assert model_store.champion_version(root, "stage3") == current
    log = json.loads(Path(root, "models", "stage3", "promotions.json").read_text())
    assert log[-1]["reason"] == refused["stage3"]["reason"] and log[-1]["challenger"]["score"] is None


def test_an_evaluation_night_that_cannot_be_read_again_is_left_out_by_its_code_with_no_id_said(four_nights, tmp_path):
    """Not changed (the storage gave no version to compare, and the size is the same) but no longer
    readable: re-scoring the champion raised RuntimeError("evaluation nights failed to embed: {id:
    message}"), a patient id in the traceback a flow logs. Now the night is left out of both scores
    like a changed one, by its reason code (``read_error``), and nothing raised names it."""
    from sleepsound.registry.promotion import decide_promotions

    root, rows, _, challenger, forget = _champion_of_other_features(four_nights, tmp_path)
    night = next(r for r in rows if r["subject_id"] in challenger["test_subjects"])
    forget()
    part = Path(night["source_uris"][0])
    data = bytearray(part.read_bytes())
    data[:8] = b"garbage!"  # the EDF header's version field: no longer an EDF, same size
    part.write_bytes(bytes(data))
    blind = [
        {**r, "file_versions": [{**v, "version": None} for v in r["file_versions"]]}
        if r["recording_id"] == night["recording_id"]
        else r
        for r in rows
    ]
    decided = decide_promotions(root, challenger, blind)
    for target, decision in decided.items():
        assert decision["left_out"] == {"nights": 1, "of": 2, "reason": "read_error"}, target
        assert night["recording_id"] not in decision["reason"]
