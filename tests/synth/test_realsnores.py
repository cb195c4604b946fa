"""Recorded snore clips laid on a night's snored breaths: only the snores change, at the generator's
snore level, the same files from the same folder and seed, chunk-exact, and a bad folder is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import maximum_filter1d
from typer.testing import CliRunner

from sleepsound.cli import app
from sleepsound.synth.hypnogram import make_night_plan
from sleepsound.synth.realsnores import lay_real_snores
from sleepsound.synth.sound import synthesise_chunk
from sleepsound.synth.writers import generate_cohort
from tests.synth.snoreclips import make_snore_clips

RATE = 8000


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_snore_clips(tmp_path_factory.mktemp("clips") / "snoring")


def _snored_inspirations(plan, levels: np.ndarray, n: int) -> np.ndarray:
    mask = np.zeros(n, dtype=bool)
    b = plan.breaths
    for i in np.flatnonzero(levels > 0):
        # the synthetic envelope is interpolated from a 1-kHz grid: it may reach a millisecond past
        mask[int((b.onset_s[i] - 0.002) * RATE) : int((b.onset_s[i] + b.insp_s[i] + 0.002) * RATE) + 1] = True
    return mask[:n]


@pytest.mark.parametrize("style", ["classic", "quiet-electret"])
def test_real_snores_replace_only_the_snores_at_their_level(clips: Path, style: str) -> None:
    plan = make_night_plan("s", 0.05, seed=5, subject_index=1, cycle_minutes=5.0, ahi=40.0, style=style)
    levels = plan.style_assets.snore if plan.style_assets is not None else plan.breaths.snore
    assert (levels > 0).sum() > 5, "the test night must snore"
    real = lay_real_snores(plan, clips)
    again = lay_real_snores(plan, clips)
    assert real.real_snores.clips == again.real_snores.clips == ("snore_0.wav", "snore_1.wav", "snore_2.wav")
    synthetic = synthesise_chunk(plan, 0, 180, RATE, channels=["Mic"])["Mic"]
    recorded = synthesise_chunk(real, 0, 180, RATE, channels=["Mic"])["Mic"]
    assert np.array_equal(recorded, synthesise_chunk(again, 0, 180, RATE, channels=["Mic"])["Mic"])
    # Chunk-exact: two 90-s chunks are the one 180-s render.
    halves = [synthesise_chunk(real, t, 90, RATE, channels=["Mic"])["Mic"] for t in (0, 90)]
    assert np.allclose(np.concatenate(halves), recorded, atol=1e-6)
    snoring = _snored_inspirations(plan, levels, synthetic.size)
    if style == "classic":  # no room: away from the snored inspirations nothing changed at all
        assert np.array_equal(recorded[~snoring], synthetic[~snoring])
    else:  # the room's tail carries a snore on for under a second: nothing changed beyond it
        reach = maximum_filter1d(snoring.astype(np.uint8), int(1.6 * RATE) + 1) > 0
        diff = recorded - synthetic
        assert np.sum(diff[~reach] ** 2) < 1e-3 * np.sum(diff**2)
    # Level-matched: the snored inspirations are as loud as with the generator's snore, within 6 dB.
    ratio_db = 10 * np.log10(np.mean(recorded[snoring] ** 2) / np.mean(synthetic[snoring] ** 2))
    assert abs(ratio_db) < 6.0, ratio_db


def test_a_folder_without_clips_or_with_a_broken_one_is_refused(tmp_path: Path, clips: Path) -> None:
    plan = make_night_plan("s", 0.05, seed=5, subject_index=1, cycle_minutes=5.0, ahi=40.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio clips"):
        lay_real_snores(plan, tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.wav").write_bytes(b"not a wave file")
    with pytest.raises(ValueError, match=r"bad\.wav"):
        lay_real_snores(plan, broken)
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "out"), "--real-snores", str(tmp_path / "none")])
    assert result.exit_code == 2 and "not a folder" in " ".join(result.output.split())


def test_a_cohort_records_its_clips_and_the_command_takes_them(tmp_path: Path, clips: Path) -> None:
    args = ["--subjects", "1", "--hours", "0.05", "--sample-rate", "8000", "--layout", "plain", "--seed", "5"]
    args += ["--cycle-minutes", "5", "--style", "phone-fan"]
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "a"), *args, "--real-snores", str(clips)])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "a" / "cohort.json").read_text())
    assert doc["params"]["real_snores"] == str(clips.resolve()) and len(doc["params"]["real_snores_sha256"]) == 64
    assert doc["subjects"][0]["real_snore_clips"] == ["snore_0.wav", "snore_1.wav", "snore_2.wav"]
    again = generate_cohort(tmp_path / "b", 1, 0.05, 5, sample_rate=8000, layout="plain", cycle_minutes=5.0,
                            style="phone-fan", real_snores=clips)  # fmt: skip
    audio = sorted((tmp_path / "a").glob("*.flac"))[0]
    assert audio.read_bytes() == Path(again[0].audio_paths[0]).read_bytes()
