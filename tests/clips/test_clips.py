"""sleepsound clips: discovery and rejection, the block split, train + evaluate via the CLI, the model files.

Synthetic clips: "snore" = low-frequency harmonic bursts, "quiet" = faint broadband noise,
written with soundfile in several rates, channel counts and lengths; the backbone is the
tiny random Whisper from conftest (a real local model folder, loaded the real way).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import typer
from typer.testing import CliRunner

from sleepsound.clips.cli import clips_app
from sleepsound.clips.dataset import FRAME_SAMPLES, SAMPLE_RATE, load_dataset, read_mono_16k
from sleepsound.clips.evaluate import ClipClassifier
from sleepsound.clips.split import block_folds, block_split, file_index, ordered
from sleepsound.models.heads.artifacts import load_head_with_config


def _snore(rng: np.random.Generator, seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(70, 130)
    tone = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6)) / k for k in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(1.5, 3.0) * t), 0, None) ** 2
    return (0.5 * tone * envelope / 3 + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def _quiet(rng: np.random.Generator, seconds: float, rate: int) -> np.ndarray:
    return (0.01 * rng.standard_normal(int(seconds * rate))).astype(np.float32)


def make_dataset(root: Path, per_label: int = 24, seed: int = 0) -> Path:
    """DIR/snoring/1_<i>.wav and DIR/no_snoring/0_<i>.wav, with mixed rates, channels and lengths."""
    rng = np.random.default_rng(seed)
    for label, prefix, make in (("snoring", 1, _snore), ("no_snoring", 0, _quiet)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            rate = (16_000, 22_050, 8_000)[i % 3]
            audio = make(rng, rng.uniform(0.6, 1.0), rate)
            if i % 4 == 0:  # stereo: the loader takes the mean of the channels
                audio = np.stack([audio, audio], axis=1)
            sf.write(root / label / f"{prefix}_{i}.wav", audio, rate, subtype="PCM_16")
    return root


def test_discovery_rejects_with_reasons_and_counts_add_up(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", per_label=6)
    (root / "snoring" / "1_broken.wav").write_bytes(b"RIFF not really a wave file")
    sf.write(root / "snoring" / "1_empty.wav", np.zeros((0,), dtype=np.float32), 16_000)
    sf.write(root / "no_snoring" / "0_blip.wav", np.ones(100, dtype=np.float32) * 0.1, 16_000)
    sf.write(root / "no_snoring" / "0_silence.wav", np.zeros(16_000, dtype=np.float32), 16_000)  # kept
    long = np.sin(np.arange(7 * 44_100) / 44_100 * 2 * np.pi * 200).astype(np.float32) * 0.2
    sf.write(root / "snoring" / "1_long.flac", long, 44_100)
    (root / "snoring" / "1_zero.wav").write_bytes(b"")  # 0 bytes
    (root / "no_snoring" / "0_gone.wav").symlink_to(tmp_path / "nowhere.wav")  # a broken link
    (root / "no_snoring" / "more").mkdir()  # nested folders are not read

    ds = load_dataset(root)
    assert ds.counts() == {"discovered": 20, "used": 14, "rejected": 6}
    assert ds.counts()["used"] + ds.counts()["rejected"] == ds.counts()["discovered"]
    reasons = {r.file: r.reason for r in ds.rejected}
    assert set(reasons) == {
        "snoring/1_broken.wav",
        "snoring/1_empty.wav",
        "no_snoring/0_blip.wav",
        "snoring/1_zero.wav",
        "no_snoring/0_gone.wav",
        "no_snoring/more",
    }
    assert reasons["snoring/1_broken.wav"].startswith("snoring/1_broken.wav: unreadable")
    assert "empty" in reasons["snoring/1_empty.wav"] and "too short" in reasons["no_snoring/0_blip.wav"]
    assert reasons["snoring/1_zero.wav"].endswith("empty file (0 bytes)")
    assert "broken symbolic link" in reasons["no_snoring/0_gone.wav"] and "a folder" in reasons["no_snoring/more"]
    # A long file is read only as far as a clip can use (never whole), or to an explicit longer clip length.
    assert len(read_mono_16k(root / "snoring" / "1_long.flac")) == 5 * SAMPLE_RATE
    assert len(read_mono_16k(root / "snoring" / "1_long.flac", max_seconds=6.0)) == 6 * SAMPLE_RATE
    assert load_dataset(root, clip_seconds=6.0).lengths.max() == 6 * SAMPLE_RATE
    # Policy: the longest clip (7 s) capped at 5 s, a whole number of 20-ms frames; peak 1; silence kept as zeros.
    assert ds.clip_samples == 5 * SAMPLE_RATE and ds.clip_samples % FRAME_SAMPLES == 0
    assert ds.audio.shape == (14, ds.clip_samples) and ds.audio.dtype == np.float32
    i_long, i_quiet = ds.files.index("snoring/1_long.flac"), ds.files.index("no_snoring/0_silence.wav")
    assert ds.lengths[i_long] == ds.clip_samples and not ds.audio[i_quiet].any()
    peaks = np.abs(ds.audio).max(axis=1)
    assert np.allclose(peaks[np.arange(14) != i_quiet], 1.0, atol=1e-6)
    short = ds.files.index("snoring/1_1.wav")  # 22.05 kHz, 0.6-1.0 s: resampled, then zero-padded
    assert ds.lengths[short] < ds.clip_samples and not ds.audio[short, ds.lengths[short] :].any()

    # Without the long file the default is the longest clip (< 1 s) rounded up to a frame.
    (root / "snoring" / "1_long.flac").unlink()
    ds2 = load_dataset(root)
    assert ds2.clip_samples == int(np.ceil(ds2.lengths.max() / FRAME_SAMPLES) * FRAME_SAMPLES) <= SAMPLE_RATE
    # A model's classes reject other label folders by name; a file list reports missing files.
    only = load_dataset(root, classes=("snoring",), files=["snoring/1_0.wav", "no_snoring/0_0.wav", "snoring/x.wav"])
    assert only.files == ["snoring/1_0.wav"]
    assert [r.file for r in only.rejected] == ["no_snoring/0_0.wav", "snoring/x.wav"]
    assert "not one of the classes" in only.rejected[0].reason and "not found" in only.rejected[1].reason


def test_block_split_keeps_blocks_whole_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    files = {
        "snoring": [f"snoring/1_{i}.wav" for i in rng.permutation(95)],
        "no_snoring": [f"no_snoring/0_{i}.wav" for i in rng.permutation(100)],
    }
    assert file_index("snoring/1_17.wav") == 17
    assert ordered(["a/1_10.wav", "a/1_9.wav", "a/1_100.wav"])[0] == ["a/1_9.wav", "a/1_10.wav", "a/1_100.wav"]
    assert ordered(["a/b.wav", "a/a.wav", "a/c3.wav"]) == (["a/a.wav", "a/b.wav", "a/c3.wav"], "name")

    split = block_split(files, block_size=20, test_fraction=0.2, seed=7)
    assert sorted(split.train + split.test) == sorted(files["snoring"] + files["no_snoring"])
    assert not set(split.train) & set(split.test)
    test = set(split.test)
    for label, blocks in split.blocks.items():
        assert len(blocks) == 5 and split.order[label] == "numeric index"
        assert len(split.test_blocks[label]) == 1  # round(0.2 * 5)
        for block in blocks:  # a block is consecutive indices and lies wholly on one side
            idx = [file_index(f) for f in block]
            assert idx == list(range(idx[0], idx[0] + len(idx)))
            assert len({f in test for f in block}) == 1
    again = block_split(files, block_size=20, test_fraction=0.2, seed=7)
    assert again.test == split.test and again.train == split.train
    others = [block_split(files, block_size=20, test_fraction=0.2, seed=s).test for s in range(8)]
    assert len({tuple(t) for t in others}) > 1
    assert block_split(files, block_size=20, test_fraction=0.0).test == []
    folds = block_folds({k: [f for f in v if f in set(split.train)] for k, v in files.items()}, block_size=20, k=2)
    assert sorted(folds[0] + folds[1]) == sorted(split.train) and not set(folds[0]) & set(folds[1])
    for blocks in split.blocks.values():  # folds hold whole blocks too
        assert all(len({f in folds[0] for f in b}) == 1 for b in blocks if b[0] in set(split.train))
    with pytest.raises(ValueError, match=r"label 'a' has 1 block.*--test-fraction 0"):
        block_split({"a": ["a/1.wav", "a/2.wav"]}, block_size=20, test_fraction=0.2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_whisper: str) -> dict:
    """One training run through the CLI, shared by the end-to-end and round-trip tests."""
    tmp = tmp_path_factory.mktemp("clips")
    data = make_dataset(tmp / "data", per_label=24)
    model = tmp / "model"
    app = typer.Typer()
    app.add_typer(clips_app, name="clips")
    args = [
        "clips",
        "train",
        "--data",
        str(data),
        "--out",
        str(model),
        "--backbone",
        tiny_whisper,
        "--block-size",
        "4",
        "--test-fraction",
        "0.34",
        "--seed",
        "3",
        "--folds",
        "2",
        "--lr",
        "3e-3",
        "--max-epochs",
        "10",
        "--no-refit",
        "--cache",
        str(tmp / "cache"),
        "--json",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return {"app": app, "data": data, "model": model, "summary": json.loads(result.stdout), "args": args}


def test_train_and_evaluate_via_cli(trained: dict) -> None:
    app, data, model, summary = trained["app"], trained["data"], trained["model"], trained["summary"]
    held, counts = summary["held_out"], summary["counts"]
    assert counts["test"] == held["n"] == 16  # 2 of 6 blocks of 4 per label
    assert counts["used"] == 48 and counts["added_to_training"] == 29  # default: 0.6 generated negatives per clip
    assert counts["train"] == 32 + 29
    assert held["accuracy"] >= 0.8, held
    info = json.loads((model / "config.json").read_text())["extra"]["clips"]  # the default path, as shipped
    assert info["settings"]["target_recall"] is None and info["decision"] is None  # argmax by default
    assert info["hard_negatives_generated"]["seed"] == 3 + 101 and info["hard_negatives_generated"]["counts"] == {
        "no_snoring": 29,
        "snoring": 0,
    }

    runner = CliRunner()
    res = runner.invoke(
        app, ["clips", "evaluate", "--model", str(model), "--data", str(data), "--split", "test", "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # exactly one JSON object
    assert {"n", "accuracy", "macro_f1", "confusion", "per_class", "classes", "rejected"} <= set(out)
    assert out["n"] == held["n"] and sum(map(sum, out["confusion"])) == out["n"]
    assert abs(out["accuracy"] - held["accuracy"]) <= 1 / out["n"] + 1e-9
    assert {row["class"] for row in out["per_class"]} == {"no_snoring", "snoring"}

    (data / "snoring" / "1_corrupt.wav").write_bytes(b"\x00" * 64)
    try:
        res = runner.invoke(app, ["clips", "evaluate", "--model", str(model), "--data", str(data), "--json"])
    finally:
        (data / "snoring" / "1_corrupt.wav").unlink()
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["n"] == 48 and out["counts"] == {"discovered": 49, "used": 48, "rejected": 1}
    assert out["rejected"][0]["file"] == "snoring/1_corrupt.wav" and "1_corrupt.wav" in out["rejected"][0]["reason"]
    assert out["accuracy"] >= 0.8

    text = runner.invoke(app, ["clips", "evaluate", "--model", str(model), "--data", str(data)])
    assert text.exit_code == 0 and "accuracy" in text.stdout
    bad = runner.invoke(app, ["clips", "evaluate", "--model", str(data), "--data", str(data), "--json"])
    assert bad.exit_code == 2


def test_by_default_the_saved_head_is_refit_on_every_clip_after_the_test_is_scored(
    trained: dict, tmp_path: Path
) -> None:
    """The held-out score measures the procedure; the model to ship sees every source recording, and
    `--split test` refuses to call its (now seen) held-out clips unseen."""
    app, data, args = trained["app"], trained["data"], list(trained["args"])
    args.remove("--no-refit")
    args[args.index("--out") + 1] = str(tmp_path / "refit")
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["refit_on_all"] is True and out["held_out"] == trained["summary"]["held_out"]  # same split, same score
    assert (
        out["counts"]["saved_model_trained_on"] == 48 + 29
        and trained["summary"]["counts"]["saved_model_trained_on"] == trained["summary"]["counts"]["train"]
    )
    refit_weights = load_head_with_config(None, str(tmp_path / "refit"))[0].state_dict()
    scored_weights = load_head_with_config(None, str(trained["model"]))[0].state_dict()
    assert any(not np.allclose(refit_weights[k].numpy(), scored_weights[k].numpy()) for k in refit_weights)

    refused = CliRunner().invoke(
        app, ["clips", "evaluate", "--model", str(tmp_path / "refit"), "--data", str(data), "--split", "test"]
    )
    assert refused.exit_code == 2 and "refit on every clip" in refused.output and "--no-refit" in refused.output
    every = CliRunner().invoke(
        app, ["clips", "evaluate", "--model", str(tmp_path / "refit"), "--data", str(data), "--json"]
    )
    assert every.exit_code == 0 and json.loads(every.stdout)["n"] == 48


def test_model_round_trip(trained: dict, tiny_whisper: str) -> None:
    """Safetensors + JSON only; the saved recipe reloads and predicts the held-out files alike twice."""
    model = trained["model"]
    assert sorted(p.name for p in model.iterdir()) == ["config.json", "model.safetensors"]  # no pickles
    head, config = load_head_with_config(None, str(model))
    info = config["extra"]["clips"]
    assert config["classes"] == info["classes"] == ["no_snoring", "snoring"]
    assert info["backbone"] == tiny_whisper and info["sample_rate"] == SAMPLE_RATE
    assert info["features"]["layers"] and info["chosen"]["head"] == "linear"  # the default head
    assert config["head_class"] == "StatsLinearHead" and info["chosen"]["c"] in info["settings"]["cs"]
    assert info["split"]["kind"] == "block" and len(info["held_out_files"]) == info["counts"]["test"]
    assert info["sleepsound_version"] and info["clip_seconds"] == info["clip_samples"] / SAMPLE_RATE
    chosen_layers = info["chosen"]["layers"]
    assert head.dims["n_layers"] == (len(chosen_layers) if len(chosen_layers) > 1 else 1)

    clf = ClipClassifier(model)
    ds = clf.load(trained["data"], split="test")
    assert sorted(ds.files) == sorted(info["held_out_files"]) and not ds.rejected
    first = clf.proba(ds.audio, ds.lengths)
    second = ClipClassifier(model).proba(ds.audio, ds.lengths, batch_size=3)
    assert first.shape == (len(ds.files), 2) and np.allclose(first, second, atol=1e-4)


def test_a_gap_in_the_numbering_starts_a_new_block() -> None:
    from sleepsound.clips.split import blocks_of

    names = [f"s/1_{i}.wav" for i in (*range(0, 5), *range(10, 13), 14)]
    blocks, how = blocks_of(list(reversed(names)), block_size=4)
    assert how == "numeric index"
    assert [[int(n.split("_")[1].split(".")[0]) for n in b] for b in blocks] == [[0, 1, 2, 3], [4], [10, 11, 12], [14]]
    assert blocks_of(["b.wav", "a.wav", "c.wav"], 2) == ([["a.wav", "b.wav"], ["c.wav"]], "name")


def test_cross_validation_scores_every_clip_once_by_a_model_blind_to_its_block(
    trained: dict, tiny_whisper: str
) -> None:
    """`clips cv`: whole blocks per outer fold, the full selection inside each, pooled figures with a block CI."""
    app, data = trained["app"], trained["data"]
    args = [
        "clips",
        "cv",
        "--data",
        str(data),
        "--backbone",
        tiny_whisper,
        "--k",
        "3",
        "--block-size",
        "4",
        "--folds",
        "2",
        "--head",
        "mlp",
        "--lr",
        "3e-3",
        "--max-epochs",
        "8",
        "--json",
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["kind"] == "blocked cross-validation" and out["k"] == 3
    assert out["n"] == 48 == sum(map(sum, out["confusion"])) == sum(f["n"] for f in out["folds"])
    assert out["n_blocks"] == 12 and len(out["folds"]) == 3  # 6 blocks of 4 per label, 2 per label per fold
    assert all(f["n"] == 16 and f["chosen"]["head"] == "mlp" for f in out["folds"])
    low, high = out["ci95"]["accuracy"]
    assert low <= out["accuracy"] <= high and out["ci95"]["resampled"] == "blocks"
    assert out["accuracy"] >= 0.8, out  # snores vs faint noise: easy when done right
    assert out["weakest_blocks"][0]["block"].split("/")[0] in {"snoring", "no_snoring"}

    too_many = CliRunner().invoke(app, [*args[:6], "--k", "7", *args[8:]])
    assert too_many.exit_code == 2 and "fewer than 7 folds" in too_many.output


REAL_BEDROOM = (
    Path(__file__).resolve().parents[2].parent / "shared" / "data" / "psg-audio-clip" / "00006_00000995_NoApnea.wav"
)


def test_clips_score_labels_every_window_of_a_real_bedroom_recording(trained: dict, tmp_path: Path) -> None:
    """The shared 20-s PSG-Audio excerpt (22.05 kHz float64 WAV): read, resampled, cut into the model's
    clip length, every window scored; a file that cannot be scored is named and makes the exit code 1."""
    app, model = trained["app"], trained["model"]
    res = CliRunner().invoke(app, ["clips", "score", "--model", str(model), str(REAL_BEDROOM), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    clip_s = out["clip_seconds"]
    assert out["file"] == str(REAL_BEDROOM) and out["seconds"] == pytest.approx(20.0, abs=0.01)
    assert len(out["windows"]) == int(np.ceil((out["seconds"] - out["unscored_tail_s"]) / clip_s - 1e-9))
    assert out["windows"][0]["start_s"] == 0 and out["windows"][1]["start_s"] == pytest.approx(clip_s, abs=1e-3)
    assert all(abs(sum(w["probabilities"].values()) - 1) < 1e-3 for w in out["windows"])
    assert sum(out["seconds_by_label"].values()) + out["unscored_tail_s"] == pytest.approx(out["seconds"], abs=0.01)
    assert out["label"] in out["classes"] == ["no_snoring", "snoring"]

    (tmp_path / "broken.wav").write_bytes(b"RIFF....WAVEfmt nonsense")
    res = CliRunner().invoke(
        app,
        [
            "clips",
            "score",
            "--model",
            str(model),
            str(trained["data"] / "snoring" / "1_0.wav"),
            str(tmp_path / "broken.wav"),
            str(tmp_path / "gone.wav"),
        ],
    )
    assert res.exit_code == 1
    assert "1_0.wav: snoring" in res.stdout or "1_0.wav: no_snoring" in res.stdout
    assert "broken.wav: unreadable audio" in res.output and "gone.wav: file not found" in res.output


def _without_root_privileges() -> list[str]:
    """A command prefix under which file permissions are enforced: nothing for an ordinary user; as
    root, setpriv drops the capabilities that let root read any file."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: root reads any file, so no permission error occurs")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


def test_clips_score_scores_every_readable_file_and_names_each_one_it_cannot_read(
    trained: dict, tmp_path: Path
) -> None:
    """Issue 15: one unreadable file (in a folder this process may not enter) stopped the whole batch.
    The real command, in a process that lacks the permission: the good files are scored, each
    failure is named with its cause (not libsndfile's "System error."), and the exit code is 1."""
    good = trained["data"] / "snoring" / "1_0.wav"
    other = trained["data"] / "no_snoring" / "0_1.wav"
    locked = tmp_path / "locked.wav"
    shutil.copy(good, locked)
    locked.chmod(0)
    closed = tmp_path / "closed"
    closed.mkdir()
    shutil.copy(good, closed / "inside.wav")
    closed.chmod(0)
    os.mkfifo(tmp_path / "pipe.wav")
    files = [good, closed / "inside.wav", locked, tmp_path / "pipe.wav", other]
    try:
        out = subprocess.run(
            [
                *_without_root_privileges(),
                sys.executable,
                "-m",
                "sleepsound.cli",
                "clips",
                "score",
                "--model",
                str(trained["model"]),
                "--json",
                *map(str, files),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            check=False,
        )
    finally:
        closed.chmod(0o755)
    assert out.returncode == 1, out.stderr
    results = {r["file"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert list(results) == [str(f) for f in files]  # every file answered, in order
    assert results[str(good)]["label"] in ("snoring", "no_snoring") and results[str(other)]["windows"]
    assert results[str(closed / "inside.wav")]["error"] == f"{closed / 'inside.wav'}: Permission denied"
    assert results[str(locked)]["error"].startswith(f"{locked}: permission denied")
    assert results[str(tmp_path / "pipe.wav")]["error"] == f"{tmp_path / 'pipe.wav'}: not a regular file"


def test_the_http_service_scores_an_upload_like_the_cli_and_refuses_bad_ones_by_name(trained: dict) -> None:
    import io
    import socket
    import threading
    import urllib.error
    import urllib.request

    import uvicorn

    from sleepsound.clips.scoring import score_source
    from sleepsound.clips.serve import create_app

    clip = trained["data"] / "snoring" / "1_3.wav"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(trained["model"], max_seconds=3.0, max_mb=0.25),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            threading.Event().wait(0.05)
        base = f"http://127.0.0.1:{port}"

        def post(body: bytes, name: str, kind: str = "application/octet-stream") -> tuple[int, dict]:
            request = urllib.request.Request(
                f"{base}/score?name={name}", data=body, method="POST", headers={"Content-Type": kind}
            )
            try:
                with urllib.request.urlopen(request, timeout=60) as reply:
                    return reply.status, json.loads(reply.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        with urllib.request.urlopen(f"{base}/health", timeout=10) as reply:
            health = json.loads(reply.read())
        assert health["status"] == "ok" and health["classes"] == ["no_snoring", "snoring"]

        status, out = post(clip.read_bytes(), "1_3.wav")
        assert status == 200, out
        # curl --data-binary @clip.wav says application/x-www-form-urlencoded: the bytes are the audio
        status, curl = post(clip.read_bytes(), "1_3.wav", "application/x-www-form-urlencoded")
        assert status == 200 and curl["label"] == out["label"], curl
        offline = score_source(ClipClassifier(trained["model"]), str(clip), "1_3.wav")
        assert out["file"] == "1_3.wav" and out["label"] == offline["label"]
        assert [w["probabilities"]["snoring"] for w in out["windows"]] == pytest.approx(
            [w["probabilities"]["snoring"] for w in offline["windows"]], abs=2e-3
        )

        four_seconds = np.tile(sf.read(clip, dtype="float32")[0], 6)[: 4 * sf.info(clip).samplerate]
        buffer = io.BytesIO()
        sf.write(buffer, four_seconds, sf.info(clip).samplerate, format="FLAC")
        status, out = post(buffer.getvalue(), "long.flac")
        assert status == 413 and "long.flac: longer than 3 s" in out["detail"]
        status, out = post(b"not audio at all", "junk.wav")
        assert status == 400 and out["detail"].startswith("junk.wav: unreadable audio")
        status, out = post(b"", "nothing.wav")
        assert status == 400 and "nothing.wav: empty request body" in out["detail"]
        status, out = post(b"\0" * (300 * 1024), "big.wav")
        assert status == 413 and "over the limit" in out["detail"]
        status, out = post(
            b"--x\r\nContent-Disposition: form-data; name=file\r\n\r\n--x--",
            "form.wav",
            "multipart/form-data; boundary=x",
        )
        assert status == 415 and "--data-binary" in out["detail"]
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_http_service_bounds_its_work_and_refuses_what_main_let_through(trained: dict, caplog) -> None:
    """Issue 18's list for `clips serve`, each through a live server: a 1 Hz WAV, an unbounded queue,
    /health behind scoring, a client gone before its turn, a slow client, an aborted upload's
    traceback, a BytesIO repr in a message, no Host check, a cross-origin text/plain POST."""
    import io
    import logging
    import socket
    import threading
    import time

    import httpx

    from sleepsound.clips.serve import create_app
    from tests.monitor.conftest import free_port, start_server

    caplog.set_level(logging.INFO)
    app = create_app(trained["model"], max_seconds=3.0, max_mb=0.25, read_timeout_s=1.0, max_queued=3)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server, thread = start_server(app, port)
    clip = (trained["data"] / "snoring" / "1_3.wav").read_bytes()

    def raw(request: bytes) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(request)
        return sock

    try:
        with httpx.Client(timeout=30) as client:
            buffer = io.BytesIO()
            sf.write(buffer, np.zeros(600, dtype=np.float32), 1, format="WAV", subtype="PCM_16")
            started = time.monotonic()
            one_hz = client.post(f"{base}/score?name=bomb.wav", content=buffer.getvalue())
            assert one_hz.status_code == 422 and "sample rate 1 Hz" in one_hz.json()["detail"]
            assert time.monotonic() - started < 2
            junk = client.post(f"{base}/score?name=junk.wav", content=b"not audio" * 20)
            assert junk.status_code == 400 and "<_io" not in junk.text and "object at 0x" not in junk.text
            assert client.get(f"{base}/health", headers={"Host": "evil.example"}).status_code == 400
            forged = client.post(
                f"{base}/score", content=clip, headers={"Origin": "http://evil.example", "Content-Type": "text/plain"}
            )
            assert forged.status_code == 403

            slow = raw(f"POST /score HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 50000\r\n\r\nRIFF".encode())
            assert slow.recv(4096).startswith(b"HTTP/1.1 408")
            slow.close()
            caplog.clear()
            raw(f"POST /score HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 50000\r\n\r\n".encode()).close()

            # the scoring thread busy: a request whose client leaves while queued is never scored and
            # gives its queue place back at once (it kept it until the worker came by: a client hanging up
            # after each upload filled the queue past its own cap); the queue holds 3 and refuses the rest
            # at once, /health answers throughout
            release = threading.Event()
            app.state.worker.put(release.wait)
            header = f"POST /score?name=gone.wav HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            header += f"Content-Length: {len(clip)}\r\n\r\n"
            raw(header.encode() + clip).close()
            time.sleep(0.5)
            assert app.state.worker.queued == 0 and app.state.worker.abandoned == 1
            codes: list[int] = []

            def post(address: str) -> None:
                with httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=60) as c:
                    codes.append(c.post(f"{base}/score?name=x.wav", content=clip).status_code)

            posts = [threading.Thread(target=post, args=(f"127.0.0.{1 + i % 2}",)) for i in range(6)]
            for t in posts:
                t.start()
            time.sleep(1.0)
            started = time.monotonic()
            assert client.get(f"{base}/health").json()["scoring"] is True
            assert time.monotonic() - started < 1
            release.set()
            for t in posts:
                t.join()
            assert sorted(codes)[:3] == [200, 200, 200] and set(codes) - {200} <= {429, 503}, codes
            assert 503 in codes and app.state.worker.abandoned == 1
        messages = [r.getMessage() for r in caplog.records]
        assert sum("went away" in m for m in messages) >= 2  # the aborted upload and the client gone while queued
        assert not any(r.exc_info for r in caplog.records), messages
    finally:
        server.should_exit = True
        thread.join(timeout=10)
