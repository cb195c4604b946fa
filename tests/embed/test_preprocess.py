import numpy as np
import pytest
import soxr
from scipy import signal

from sleepsound.core.config import PreprocessConfig
from sleepsound.embed.preprocess import StreamingFilter, count_epochs, iter_epochs, normalise, zero_rms_seconds

RATE = 48_000


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(seconds * RATE)).astype(np.float32)


def _blocks(x: np.ndarray, size: int) -> list[np.ndarray]:
    return [x[i : i + size] for i in range(0, len(x), size)]


def test_streamed_filter_equals_whole_signal():
    cfg = PreprocessConfig()
    x = _noise(7.3)
    whole = StreamingFilter(RATE, cfg).process(x, last=True)
    streamed = StreamingFilter(RATE, cfg)
    parts = [streamed.process(b) for b in _blocks(x, 12_345)] + [streamed.process(x[:0], last=True)]
    joined = np.concatenate(parts)
    assert len(joined) == len(whole) == len(soxr.resample(x, RATE, 16_000))
    np.testing.assert_allclose(joined, whole, atol=1e-4)


def test_highpass_removes_hum_and_keeps_breath_band():
    cfg = PreprocessConfig(preemphasis=0.0)
    t = np.arange(10 * 16_000) / 16_000
    filt = StreamingFilter(16_000, cfg)
    hum = filt.process(np.sin(2 * np.pi * 20 * t).astype(np.float32), last=True)
    voice = StreamingFilter(16_000, cfg).process(np.sin(2 * np.pi * 1000 * t).astype(np.float32), last=True)
    steady = slice(16_000, None)
    assert hum[steady].std() < 0.25 * (1 / np.sqrt(2))  # a 2nd-order high-pass at 50 Hz: ~-16 dB at 20 Hz
    assert voice[steady].std() == pytest.approx(1 / np.sqrt(2), rel=0.02)


def test_biquad_matches_scipy_reference():
    cfg = PreprocessConfig(preemphasis=0.0)
    x = np.random.default_rng(1).standard_normal(16_000).astype(np.float32)
    sos = signal.butter(2, 50, btype="highpass", fs=16_000, output="sos")
    assert sos.shape == (1, 6)  # a single biquad, as in the paper
    np.testing.assert_allclose(StreamingFilter(16_000, cfg).process(x), signal.sosfilt(sos, x), atol=1e-5)


def test_preemphasis_carries_state_across_blocks():
    cfg = PreprocessConfig(highpass_hz=1.0)
    x = np.random.default_rng(2).standard_normal(32_000).astype(np.float32)
    whole = StreamingFilter(16_000, cfg).process(x)
    f = StreamingFilter(16_000, cfg)
    np.testing.assert_allclose(np.concatenate([f.process(x[:1000]), f.process(x[1000:])]), whole, atol=1e-6)


def test_zero_rms_counts_flat_frames_at_any_offset():
    x = _noise(30)
    x[RATE * 5 : RATE * 17] = 0.25  # 12 s flat line with an EDF-style DC offset
    assert zero_rms_seconds(x, RATE, 0.1) == pytest.approx(12.0, abs=0.1)
    assert zero_rms_seconds(_noise(30) * 1e-6, RATE, 0.1) == 0.0  # quiet is not silent
    broken = _noise(30)
    broken[RATE * 5 : RATE * 17] = np.inf  # a broken signal (counted as non-finite), not a silent one
    assert zero_rms_seconds(broken, RATE, 0.1) == 0.0


def test_epochs_are_cut_and_invalidated_by_the_zero_rms_rule():
    cfg = PreprocessConfig()
    x = _noise(125)
    x[RATE * 31 : RATE * 42] = 0.0  # 11 s of silence in epoch 1: invalid
    x[RATE * 65 : RATE * 74] = 0.0  # 9 s in epoch 2: still valid
    epochs = list(iter_epochs(_blocks(x, RATE * 30 * 2), RATE, cfg))
    assert [e.index for e in epochs] == [0, 1, 2, 3] == list(range(count_epochs(len(x), RATE, cfg)))
    assert [e.valid for e in epochs] == [True, False, True, True]
    assert "zero RMS" in epochs[1].reason
    assert all(e.audio.shape == (480_000,) for e in epochs)
    valid = epochs[0].audio
    assert abs(valid.mean()) < 1e-3 and valid.std() == pytest.approx(1.0, rel=1e-3)


def test_block_size_does_not_change_epochs():
    cfg = PreprocessConfig()
    x = _noise(95, seed=3)
    a = list(iter_epochs(_blocks(x, RATE * 30), RATE, cfg))
    b = list(iter_epochs(_blocks(x, RATE * 90), RATE, cfg))
    for ea, eb in zip(a, b, strict=True):
        np.testing.assert_allclose(ea.audio, eb.audio, atol=1e-4)


def test_normalise_leaves_silence_finite():
    assert np.all(np.isfinite(normalise(np.zeros(100, dtype=np.float32))))


def test_nan_samples_invalidate_their_epoch_only():
    cfg = PreprocessConfig()
    x = _noise(90)
    x[RATE * 40 : RATE * 40 + 100] = np.nan  # inside epoch 1
    epochs = list(iter_epochs(_blocks(x, RATE * 30), RATE, cfg))
    assert [e.valid for e in epochs] == [True, False, True]
    assert epochs[1].quality.nonfinite == 100 and "NaN" in epochs[1].reason
    assert np.isfinite(epochs[2].audio).all() and epochs[2].audio.std() == pytest.approx(1.0, rel=1e-3)


def test_clipping_is_measured_against_the_format_full_scale():
    from sleepsound.ingest.quality import measure_epoch

    x = np.clip(_noise(30) * 3, -2.0, 2.0)  # a signal stored with physical range +-2
    quality, _ = measure_epoch(x, RATE, PreprocessConfig(), full_scale=2.0)
    assert quality.clipped_fraction == pytest.approx(np.mean(np.abs(x) >= 1.998), abs=1e-9)
    assert 0.4 < quality.clipped_fraction < 0.6 and quality.valid  # clipping is reported, not dropped


def test_silent_gaps_are_found_across_block_boundaries():
    from sleepsound.ingest.quality import GapFinder

    finder = GapFinder(frame_seconds=1.0, min_seconds=3.0)
    for block in ([0, 1, 1], [1, 1, 0, 1], [1, 1, 1], [0, 0, 1, 1, 1, 1], [1]):
        finder.feed(np.array(block, dtype=bool))
    assert finder.finish() == [(1.0, 5.0), (6.0, 10.0), (12.0, 17.0)]


# Stated tolerance of a chunk against the whole night, on normalised (unit-variance) audio:
# float32 rounding of filters restarted one epoch early (measured: at most 4.8e-6).
CHUNK_TOLERANCE = 1e-4


@pytest.mark.parametrize("layout", ["psg-audio", "plain"])
def test_a_night_read_in_chunks_equals_it_read_whole(layout, tmp_path):
    """Chunks of a night (each read with an epoch of pre- and post-roll, across part boundaries)
    give the whole night's rows: the same epochs and shifted windows, the same labels and quality
    figures, the audio within CHUNK_TOLERANCE."""
    from sleepsound.embed.epochs import read_epochs
    from sleepsound.ingest.manifest import build_manifest
    from sleepsound.synth.writers import generate_cohort

    generate_cohort(
        tmp_path / "src",
        n_subjects=1,
        hours=0.1,
        seed=3,
        sample_rate=48_000,
        part_seconds=100,
        cycle_minutes=3,
        layout=layout,
    )
    cfg = PreprocessConfig()
    [row] = build_manifest(str(tmp_path / "src"), cfg)
    n = int(row["n_epochs"])
    stages = ("Wake", "NREM", "REM")
    whole = list(read_epochs(row, cfg, stages))
    chunks = [(0, 5), (5, 6), (6, n)]
    pieces = [r for chunk in chunks for r in read_epochs(row, cfg, stages, chunk=chunk)]
    assert not any(r["error"] for r in whole + pieces)
    key = lambda r: (r["epoch_index"], r["kind"])  # noqa: E731
    assert sorted(map(key, pieces)) == sorted(map(key, whole))
    assert any(r["kind"] == "shifted" for r in whole)
    by_key = {key(r): r for r in pieces}
    for r in whole:
        other = by_key[key(r)]
        for name in ("valid", "invalid_reason", "zero_rms_s", "nonfinite", "clipped_fraction", "stage5", "resp_label"):
            assert other[name] == r[name], name
        assert np.max(np.abs(other["audio"] - r["audio"])) <= CHUNK_TOLERANCE
    # Decoding blocks of 4 epochs (block_epochs' former default) gives the very same rows.
    four = list(read_epochs(row, cfg.model_copy(update={"block_epochs": 4}), stages))
    assert [key(r) for r in four] == [key(r) for r in whole]
    for a, b in zip(whole, four, strict=True):
        np.testing.assert_array_equal(a["audio"], b["audio"])
        np.testing.assert_array_equal(a["envelope"], b["envelope"])
    [bad] = read_epochs(row, cfg, chunk=(3, 3))
    assert "not a range of the night's" in bad["error"]


def test_a_night_on_s3_is_read_in_chunks_by_byte_ranges(s3_endpoint, tmp_path):
    """Chunks of a PSG-Audio night on object storage read their EDF records where they lie (no
    download of the night): the whole night's rows within CHUNK_TOLERANCE, and a chunk never reads
    the records of a part outside its range (damaging them changes nothing it returns)."""
    import s3fs

    from sleepsound.embed.epochs import read_epochs
    from sleepsound.ingest.manifest import build_manifest
    from sleepsound.io.edf_header import read_edf_header
    from sleepsound.synth.writers import generate_cohort

    generate_cohort(
        tmp_path / "src", n_subjects=1, hours=0.1, seed=5, sample_rate=48_000, part_seconds=100, cycle_minutes=3
    )
    s3 = s3fs.S3FileSystem()
    s3.mkdir("sleepsound-ranges")
    s3.put(str(tmp_path / "src") + "/", "sleepsound-ranges/src/", recursive=True)
    cfg = PreprocessConfig()
    [row] = build_manifest("s3://sleepsound-ranges/src", cfg)
    assert row["status"] == "accepted" and row["n_parts"] == 4  # 360 s in parts of 100 s
    n = int(row["n_epochs"])
    stages = ("Wake", "NREM", "REM")
    whole = list(read_epochs(row, cfg, stages))  # one reader: the night downloaded and checked
    chunks = [(0, 5), (5, 6), (6, n)]
    pieces = [r for chunk in chunks for r in read_epochs(row, cfg, stages, chunk=chunk)]
    assert not any(r["error"] for r in whole + pieces)
    key = lambda r: (r["epoch_index"], r["kind"])  # noqa: E731
    assert sorted(map(key, pieces)) == sorted(map(key, whole))
    by_key = {key(r): r for r in pieces}
    for r in whole:
        other = by_key[key(r)]
        for name in ("valid", "invalid_reason", "clipped_fraction", "stage5", "resp_label"):
            assert other[name] == r[name], name
        assert np.max(np.abs(other["audio"] - r["audio"])) <= CHUNK_TOLERANCE

    from sleepsound.embed.epochs import night_parts, recording_source

    with night_parts(recording_source(row), row, cfg, chunk=True) as parts:  # read where they lie
        assert [p.path for p in parts] == row["source_uris"] and all(p.edf_layout is not None for p in parts)
        assert [p.file_bytes for p in parts] == [s3.size(uri) for uri in row["source_uris"]]
    with night_parts(recording_source(row), row, cfg, chunk=False) as parts:  # a whole night: downloaded
        assert all(p.edf_layout is None and not p.path.startswith("s3://") for p in parts)

    # Epochs 6.. start at 180 s: with the pre-roll epoch (150 s) they need parts 2-4. Part 1's
    # records zeroed in place (same size, same header): the last chunk is unchanged.
    first = row["source_uris"][0]
    data = s3.cat_file(first)  # not get/pipe: they read "[001]" in the name as a glob
    local = tmp_path / "part1.edf"
    local.write_bytes(data)
    header = read_edf_header(str(local)).header_bytes
    s3.pipe_file(first, data[:header] + bytes(len(data) - header))
    # Which bytes a chunk reads, so the readers' check that every file is still the version validated
    # (which now ends a night whose part changed: tests/embed/test_changed_source.py) is set aside.
    row = {**row, "file_versions": None}
    again = list(read_epochs(row, cfg, stages, chunk=(6, n)))
    assert [key(r) for r in again] == [key(r) for r in pieces if r["epoch_index"] >= 6 or r["kind"] == "end"][
        -len(again) :
    ]
    for r in again:
        if r["kind"] != "end":
            np.testing.assert_array_equal(r["audio"], by_key[key(r)]["audio"])
    damaged = list(read_epochs(row, cfg, stages, chunk=(0, 5)))
    assert any(not np.array_equal(r["audio"], by_key[key(r)]["audio"]) for r in damaged if r["kind"] == "epoch")
