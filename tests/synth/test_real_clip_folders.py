"""The clip folders of ``synth --real-snores`` / ``--real-background`` are read as the clip readers read
clips: a long file only for what a clip can use, a file that is no usable clip (unreadable, empty, NaN,
too short, silent snore, hidden) skipped by name with its reason, and a folder with no usable clip
refused (exit 2) before the output folder is made."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from sleepsound.cli import app
from sleepsound.synth import realsnores
from sleepsound.synth.hypnogram import make_night_plan
from sleepsound.synth.realbackground import lay_real_background
from sleepsound.synth.realsnores import clip_names, folder_digest, lay_real_snores

NIGHT = ["--subjects", "1", "--hours", "0.05", "--sample-rate", "8000", "--layout", "plain", "--seed", "5"]
NIGHT += ["--cycle-minutes", "5"]


def _noise(seconds: float, rate: int, seed: int) -> np.ndarray:
    """A snore-like buzz: noise under a 90-Hz pulse, 0.3 of full scale."""
    t = np.arange(round(seconds * rate)) / rate
    rng = np.random.default_rng(seed)
    return (0.3 * (0.5 + 0.5 * np.sin(2 * np.pi * 90 * t)) * rng.standard_normal(t.size)).astype(np.float32)


def _good(folder: Path, n: int = 2, seconds: float = 1.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        sf.write(folder / f"clip_{k}.wav", _noise(seconds, 16_000, k), 16_000, subtype="PCM_16")
    return folder


def _bad(folder: Path) -> dict[str, str]:
    """Unusable files of every kind, with a word of the reason each is skipped for."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "garbage.wav").write_bytes(b"not a wave file at all" * 10)
    nan = _noise(1.0, 16_000, 7)
    nan[100] = np.nan
    sf.write(folder / "nan.wav", nan, 16_000, subtype="FLOAT")
    sf.write(folder / "short.wav", _noise(0.05, 16_000, 8), 16_000, subtype="PCM_16")
    sf.write(folder / ".hidden.wav", _noise(1.0, 16_000, 9), 16_000, subtype="PCM_16")
    return {
        ".hidden.wav": "hidden",
        "empty.wav": "empty",
        "garbage.wav": "unreadable",
        "nan.wav": "NaN",
        "short.wav": "too short",
    }


def _synth(out: Path, *args: str):
    return CliRunner().invoke(app, ["synth", str(out), *NIGHT, *args])


def test_a_long_file_is_read_only_for_what_a_clip_can_use(tmp_path: Path) -> None:
    folder = _good(tmp_path / "clips", n=1)
    # 30 minutes at 8 kHz: 58 MB as float32 if it were read whole.
    with sf.SoundFile(folder / "long.wav", "w", 8000, 1, "PCM_16") as handle:
        for k in range(30):
            handle.write(_noise(60.0, 8000, 100 + k))
    whole = 30 * 60 * 8000 * 4
    plan = make_night_plan("s", 0.05, seed=5, subject_index=0, cycle_minutes=5.0, ahi=40.0)
    tracemalloc.start()
    try:
        snores = lay_real_snores(plan, folder)
        background = lay_real_background(plan, folder)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < whole / 3, f"peak {peak / 1e6:.1f} MB: the long file was read whole"
    assert "long.wav" in snores.real_snores.clips
    listing = realsnores.clip_folder(folder, realsnores.BACKGROUND_CLIPS)
    assert dict(zip(listing.names, listing.seconds, strict=True)) == {"clip_0.wav": 1.0, "long.wav": 60.0}
    assert realsnores.clip_folder(folder, realsnores.SNORE_CLIPS).seconds == (1.0, 10.0)
    rb = background.real_background
    lengths = np.diff(rb.start_s) + 0.05  # pieces overlap by the crossfade
    played = rb.clip_of_piece[:-1]
    assert np.allclose(lengths[played == rb.clips.index("long.wav")], 60.0)  # its first minute is played


def test_unusable_files_are_skipped_by_name_and_the_counts_add_up(tmp_path: Path) -> None:
    folder = _good(tmp_path / "clips")
    why = _bad(folder)
    (folder / "notes.txt").write_text("not audio\n")  # not an audio file: not listed at all
    for rules in (realsnores.SNORE_CLIPS, realsnores.BACKGROUND_CLIPS):
        listing = realsnores.clip_folder(folder, rules)
        assert listing.names == ("clip_0.wav", "clip_1.wav")
        assert [name for name, _ in listing.skipped] == sorted(why)
        for name, reason in listing.skipped:
            assert why[name].lower() in reason.lower(), (name, reason)
        record = listing.record()
        assert record["files"] == 7 == record["used"] + len(record["skipped"])
    # The digest covers the clips used, hashed as before (names and bytes), whatever else lies there.
    h = hashlib.sha256()
    for name in ("clip_0.wav", "clip_1.wav"):
        h.update(name.encode() + (folder / name).read_bytes())
    assert folder_digest(folder) == h.hexdigest()
    with pytest.raises(ValueError, match=r"nan\.wav \(skipped: non-finite"):
        folder_digest(folder, "background clips", ["clip_0.wav", "nan.wav"])


def test_a_silent_snore_clip_is_skipped_but_a_silent_background_clip_is_left_to_the_night(tmp_path: Path) -> None:
    folder = _good(tmp_path / "clips")
    sf.write(folder / "silent.wav", np.zeros(16_000, dtype=np.float32), 16_000, subtype="PCM_16")
    assert clip_names(folder) == ("clip_0.wav", "clip_1.wav")
    assert realsnores.clip_folder(folder).skipped == (("silent.wav", "digitally silent: no sound to use"),)
    assert clip_names(folder, "background clips") == ("clip_0.wav", "clip_1.wav", "silent.wav")


def test_the_command_uses_the_good_clips_of_a_folder_with_bad_ones(tmp_path: Path) -> None:
    folder = _good(tmp_path / "clips")
    _bad(folder)
    for option in ("--real-snores", "--real-background"):
        out = tmp_path / option.strip("-")
        result = _synth(out, "--style", "phone-fan", "--speech", "synth", option, str(folder))
        assert result.exit_code == 0, result.output
        assert f"{option}: skipped nan.wav: non-finite samples" in " ".join(result.stderr.split()), result.stderr
        cohort = json.loads((out / "cohort.json").read_text())
        listing = cohort["params"][f"{option.strip('-').replace('-', '_')}_clips"]  # every file, used or why not
        assert listing["files"] == listing["used"] + len(listing["skipped"]) and listing["used"] == 2
        assert {row["file"] for row in listing["skipped"]} >= {"nan.wav", "empty.wav"}
        subject = cohort["subjects"][0]
        if option == "--real-snores":
            assert subject["real_snore_clips"] == ["clip_0.wav", "clip_1.wav"]
            assert subject["event_counts"].get("Snore", 0) > 0
        else:
            assert subject["real_background"]["clips"] == 2


def test_a_nan_clip_or_a_hidden_file_is_never_laid_as_a_snore(tmp_path: Path) -> None:
    folder = _good(tmp_path / "clips")
    _bad(folder)
    for name in ("empty.wav", "garbage.wav", "short.wav"):
        (folder / name).unlink()  # left: two good clips, nan.wav and .hidden.wav (a night draws up to 8)
    result = _synth(tmp_path / "out", "--real-snores", str(folder))
    assert result.exit_code == 0, result.output
    subject = json.loads((tmp_path / "out" / "cohort.json").read_text())["subjects"][0]
    assert subject["real_snore_clips"] == ["clip_0.wav", "clip_1.wav"]


@pytest.mark.parametrize("option", ["--real-snores", "--real-background"])
def test_a_folder_with_no_usable_clip_is_refused_before_the_output_folder_is_made(tmp_path: Path, option: str) -> None:
    folder = tmp_path / "clips"
    why = _bad(folder)
    out = tmp_path / "out"
    result = _synth(out, option, str(folder))
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "not written" in text and "no usable" in text and "5 file(s) skipped" in text, text
    assert "nan.wav: non-finite samples" in text and "Traceback" not in text
    assert not out.exists()
    for name in why:  # one bad file alone, each kind: refused the same way
        alone = tmp_path / f"alone{name}"
        alone.mkdir()
        (folder / name).rename(alone / name)
        result = _synth(out, option, str(alone))
        assert result.exit_code == 2 and "no usable" in result.output and name in result.output, result.output
        assert not out.exists()
