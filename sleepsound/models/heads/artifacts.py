"""Heads on disk as ``model.safetensors`` + ``config.json``: no pickles, no code from the artifact.

``config.json`` names the head class, which must be in ``HEAD_CLASSES`` (an allow-list:
loading never imports or calls anything a config names), its constructor dimensions
(checked against the class's known parameters and plain number types), the class names
in output order, the context (epochs per input: 1 = 30 s, 3 = 90 s) and the training
settings. The weights are safetensors (raw tensors only). Works with any fsspec
filesystem (local, s3, memory) given as ``fs`` plus a protocol-free directory path.

Loading trusts neither file's sizes: ``config.json`` is read up to ``MAX_CONFIG_BYTES``; the
head the config describes is first built on PyTorch's ``meta`` device (shapes, no memory), its
parameter count capped (``MAX_HEAD_PARAMETERS``) and its tensor names and shapes compared with
the safetensors header, read alone, before the weights are read or the real head allocated;
weights holding NaN or Inf are refused.
"""

from __future__ import annotations

import json
import math
import posixpath
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from sleepsound.core.storage import NotOurJson, read_json_capped, refuse_credentials, write_bytes_atomic
from sleepsound.labels.vocabulary import STAGES_3
from sleepsound.models.files import CONFIG_NAME, WEIGHTS_NAME
from sleepsound.models.heads.attention import AttentionPoolingHead
from sleepsound.models.heads.frames import FrameHead
from sleepsound.models.heads.layers import MAX_LAYERS
from sleepsound.models.heads.linear import StatsLinearHead
from sleepsound.models.heads.mlp import MeanPoolingHead
from sleepsound.models.heads.soundsleepnet import SoundSleepNetHead

FORMAT = "sleepsound-head"
FORMAT_VERSION = 1

# The only classes a config may name, and the constructor arguments each accepts.
HEAD_CLASSES: dict[str, type[nn.Module]] = {
    "AttentionPoolingHead": AttentionPoolingHead,
    "MeanPoolingHead": MeanPoolingHead,
    "SoundSleepNetHead": SoundSleepNetHead,
    "FrameHead": FrameHead,
    "StatsLinearHead": StatsLinearHead,
}
_ALIASES = {
    "attention": "AttentionPoolingHead",
    "mlp": "MeanPoolingHead",
    "soundsleepnet": "SoundSleepNetHead",
    "frames": "FrameHead",
    "linear": "StatsLinearHead",
}
_DIM_TYPES: dict[str, dict[str, tuple[type, ...]]] = {
    "AttentionPoolingHead": {
        "dim": (int,),
        "n_classes": (int,),
        "hidden": (int, type(None)),
        "dropout": (int, float),
        "scorer_hidden": (int, type(None)),
        "n_layers": (int,),
    },
    "MeanPoolingHead": {
        "dim": (int,),
        "n_classes": (int,),
        "hidden": (int,),
        "dropout": (int, float),
        "n_layers": (int,),
    },
    "SoundSleepNetHead": {
        "dim": (int,),
        "n_classes": (int,),
        "conv_channels": (int,),
        "conv_blocks": (int,),
        "kernel_size": (int,),
        "lstm_hidden": (int,),
        "n_heads": (int,),
        "ff_dim": (int,),
        "dropout": (int, float),
        "n_layers": (int,),
    },
    "FrameHead": {
        "dim": (int,),
        "n_classes": (int,),
        "hidden": (int,),
        "kernel_size": (int,),
        "dropout": (int, float),
        "n_layers": (int,),
    },
    "StatsLinearHead": {"dim": (int,), "n_classes": (int,), "n_layers": (int,)},
}
# Tighter upper bounds than MAX_WIDTH for arguments that multiply the model's size or depth.
_MAX_DIM = {"conv_blocks": 16, "kernel_size": 63, "n_heads": 64, "conv_channels": 2048, "lstm_hidden": 2048}
# Optional: heads saved before ``n_layers`` existed lack it and are single-layer (the default 1).
_REQUIRED_DIMS = ("dim", "n_classes")
MAX_WIDTH = 16_384
# Each bound above is sane alone, yet together they allow a 17 G-parameter FrameHead (68 GB of
# float32) from a 4-KB config. The heads sleepsound trains hold well under 5 M parameters (an
# attention head over a 1280-wide Whisper-large embedding: ~1.6 M); 50 M (200 MB of float32) is
# ten times that, and still loads on a bedside machine.
MAX_HEAD_PARAMETERS = 50_000_000
# A config is a few KB (a clip model lists its held-out files: thousands of names, under 1 MB).
MAX_CONFIG_BYTES = 16 << 20
# A head's safetensors header lists ~60 tensors in a few KB; safetensors itself allows 100 MB.
MAX_HEADER_BYTES = 1 << 20
# safetensors dtypes a head's float parameters may be stored as, with their sizes in bytes.
_FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}


class HeadArtifactError(ValueError):
    """A head artifact that cannot be trusted or understood."""


def head_class_name(kind_or_class: str) -> str:
    """'attention' / 'mlp' or a class name from the allow-list -> the class name."""
    name = _ALIASES.get(kind_or_class, kind_or_class)
    if name not in HEAD_CLASSES:
        raise HeadArtifactError(
            f"unknown head type {kind_or_class!r}; known: {sorted(HEAD_CLASSES)} (or {sorted(_ALIASES)})"
        )
    return name


def _check_dims(name: str, dims: Any, required: bool = True) -> dict[str, Any]:
    if not isinstance(dims, Mapping):
        raise HeadArtifactError(f"'dims' must be an object, got {type(dims).__name__}")
    allowed = _DIM_TYPES[name]
    unknown = sorted(set(dims) - set(allowed))
    if unknown:
        raise HeadArtifactError(f"{name} takes no arguments {unknown}; known: {sorted(allowed)}")
    missing = [k for k in _REQUIRED_DIMS if k not in dims] if required else []
    if missing:
        raise HeadArtifactError(f"{name} config lacks {missing}")
    for key, value in dims.items():
        if isinstance(value, bool) or not isinstance(value, allowed[key]):
            raise HeadArtifactError(f"{name} argument {key!r} has a bad value {value!r}")
        # Bounds keep a tampered config from asking for absurd allocations.
        if key == "dropout" and not 0.0 <= value < 1.0:
            raise HeadArtifactError(f"{name} dropout {value!r} is outside [0, 1)")
        if key == "n_layers" and not 1 <= value <= MAX_LAYERS:
            raise HeadArtifactError(f"{name} n_layers {value!r} is outside 1..{MAX_LAYERS}")
        limit = _MAX_DIM.get(key, MAX_WIDTH)
        if key != "dropout" and value is not None and not 1 <= value <= limit:
            raise HeadArtifactError(f"{name} argument {key!r}={value!r} is outside 1..{limit}")
    return dict(dims)


def build_head(kind: str, **dims: Any) -> nn.Module:
    """A fresh head from the allow-list ('attention', 'mlp', or their class names)."""
    name = head_class_name(kind)
    return HEAD_CLASSES[name](**_check_dims(name, dims, required=False))


def _resolve(fs: fsspec.AbstractFileSystem | None, directory: str) -> tuple[fsspec.AbstractFileSystem, str]:
    if fs is None:
        refuse_credentials(directory, "model folder")
        fs, directory = fsspec.core.url_to_fs(directory)
    return fs, directory.rstrip("/") or "/"


def _expected_state(name: str, dims: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The state dict's tensor shapes of ``HEAD_CLASSES[name](**dims)``, from a head built on the
    ``meta`` device (no memory at all), so a config cannot make the loader allocate before it is checked."""
    try:
        with torch.device("meta"):
            model = HEAD_CLASSES[name](**dims)
    except (ValueError, TypeError, AssertionError, RuntimeError) as exc:  # in bounds, yet not a buildable head
        raise HeadArtifactError(f"{name}{dict(dims)} cannot be built: {exc}") from exc
    return {key: tuple(int(n) for n in value.shape) for key, value in model.state_dict().items()}


def _check_parameter_count(name: str, dims: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Refuse a head larger than ``MAX_HEAD_PARAMETERS`` (see there why)."""
    count = sum(math.prod(shape) for shape in shapes.values())
    if count > MAX_HEAD_PARAMETERS:
        raise HeadArtifactError(
            f"{name}{dict(dims)} would hold {count:,} parameters; a head may hold at most {MAX_HEAD_PARAMETERS:,}"
        )


def safetensors_header(fs: fsspec.AbstractFileSystem, path: str) -> tuple[dict[str, Any], int, int]:
    """The safetensors header of ``path`` (its tensors: name -> dtype, shape, data_offsets), the
    header's length and the file's size in bytes, from the first 8 + header bytes only; a bad or
    oversized header is a HeadArtifactError naming the file."""
    size = int(fs.size(path))
    with fs.open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise HeadArtifactError(f"{path} is not a safetensors file (only {len(head)} bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES or 8 + length > size:
            raise HeadArtifactError(
                f"{path}: its header claims {length:,} bytes (at most {MAX_HEADER_BYTES:,} in a {size:,}-byte file)"
            )
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HeadArtifactError(f"{path}: its header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise HeadArtifactError(f"{path}: its header is not a JSON object")
    header.pop("__metadata__", None)
    for key, entry in header.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("dtype"), str)
            or not isinstance(entry.get("shape"), list)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in entry["shape"])
            or not isinstance(entry.get("data_offsets"), list)
            or len(entry["data_offsets"]) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in entry["data_offsets"])
        ):
            raise HeadArtifactError(f"{path}: header entry {key!r} is malformed: {entry!r}")
    return header, int(length), size


def _check_header(
    path: str,
    header: Mapping[str, Any],
    header_bytes: int,
    size: int,
    name: str,
    shapes: Mapping[str, tuple[int, ...]],
) -> None:
    """The file's tensors are exactly the head's (names, shapes, float dtypes), laid end to end to
    the file's last byte: so the bytes read next are what the head needs, no more."""
    missing, unexpected = sorted(set(shapes) - set(header)), sorted(set(header) - set(shapes))
    if missing or unexpected:
        raise HeadArtifactError(
            f"{path}: weights do not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    end = 0
    for key, entry in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
        if tuple(entry["shape"]) != shapes[key]:
            raise HeadArtifactError(
                f"{path}: weights do not fit {name}: tensor {key} is {tuple(entry['shape'])}, "
                f"the config says {shapes[key]}"
            )
        if entry["dtype"] not in _FLOAT_DTYPES:
            raise HeadArtifactError(f"{path}: tensor {key} is {entry['dtype']}, not a float type")
        begin, stop = entry["data_offsets"]
        if begin != end or stop - begin != math.prod(shapes[key]) * _FLOAT_DTYPES[entry["dtype"]]:
            raise HeadArtifactError(f"{path}: tensor {key} has bad data offsets {entry['data_offsets']}")
        end = stop
    if 8 + header_bytes + end != size:
        raise HeadArtifactError(
            f"{path} holds {size:,} bytes; its header and tensors account for {8 + header_bytes + end:,}"
        )


def save_head(
    model: nn.Module,
    fs: fsspec.AbstractFileSystem | None,
    directory: str,
    *,
    classes: Sequence[str] | None = None,
    context: int | None = None,
    training: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``model.safetensors`` and ``config.json`` under ``directory``; returns the config.

    ``classes``, ``context`` and ``training`` default to what ``train_head`` recorded on
    the model (``model.meta``), else STAGES_3, 1 and {}. ``extra`` must be JSON. With
    ``fs`` None, ``directory`` may be a URL (``s3://...``).
    """
    fs, directory = _resolve(fs, directory)
    name = head_class_name(type(model).__name__)
    if type(model) is not HEAD_CLASSES[name]:
        raise HeadArtifactError(f"{type(model).__qualname__} is not an allow-listed head")
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    _check_parameter_count(name, model.dims, shapes)  # one it could not load again is not saved
    meta = dict(getattr(model, "meta", {}) or {})
    classes = list(classes if classes is not None else meta.get("classes", STAGES_3))
    if len(classes) != model.dims["n_classes"]:
        raise ValueError(f"{len(classes)} class names for a head with {model.dims['n_classes']} outputs")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "head_class": name,
        "dims": _check_dims(name, model.dims),
        "classes": classes,
        "context_epochs": int(context if context is not None else meta.get("context_epochs", 1)),
        "training": dict(training if training is not None else meta.get("training", {})),
        "extra": dict(extra or {}),
    }
    text = json.dumps(config, indent=2, sort_keys=True)  # fails here, before writing, if not JSON
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    write_bytes_atomic(fs, posixpath.join(directory, WEIGHTS_NAME), save_tensors(state))
    # The config goes last: a directory with a config is a complete artifact.
    write_bytes_atomic(fs, posixpath.join(directory, CONFIG_NAME), text.encode())
    return config


def validate_config(config: Any) -> dict[str, Any]:
    """Check a loaded ``config.json``; raises HeadArtifactError on anything unexpected."""
    if not isinstance(config, dict):
        raise HeadArtifactError("head config must be a JSON object")
    if config.get("format") != FORMAT or config.get("format_version") != FORMAT_VERSION:
        raise HeadArtifactError(
            f"not a {FORMAT} v{FORMAT_VERSION} artifact: format={config.get('format')!r} "
            f"version={config.get('format_version')!r}"
        )
    name = config.get("head_class")
    if not isinstance(name, str) or name not in HEAD_CLASSES:
        raise HeadArtifactError(f"unknown head class {name!r}; allowed: {sorted(HEAD_CLASSES)}")
    dims = _check_dims(name, config.get("dims"))
    classes = config.get("classes")
    if (
        not isinstance(classes, list)
        or not all(isinstance(c, str) for c in classes)
        or len(classes) != dims["n_classes"]
        or len(set(classes)) != len(classes)
    ):
        raise HeadArtifactError(f"'classes' must be {dims['n_classes']} distinct names, got {classes!r}")
    context = config.get("context_epochs")
    if isinstance(context, bool) or not isinstance(context, int) or context < 1 or context % 2 != 1:
        raise HeadArtifactError(f"'context_epochs' must be an odd positive integer, got {context!r}")
    return config


def head_config(fs: fsspec.AbstractFileSystem | None, directory: str) -> dict[str, Any]:
    """The validated ``config.json`` of a saved head."""
    fs, directory = _resolve(fs, directory)
    path = posixpath.join(directory, CONFIG_NAME)
    try:
        config = read_json_capped(fs, path, MAX_CONFIG_BYTES, "a head's file")
    except NotOurJson as exc:
        raise HeadArtifactError(str(exc)) from exc
    try:
        return validate_config(config)
    except HeadArtifactError as exc:
        raise HeadArtifactError(f"{path}: {exc}") from exc


def check_head_files(fs: fsspec.AbstractFileSystem | None, directory: str) -> tuple[dict[str, Any], int]:
    """A saved head's config and its weights file's size, both checked from the config and the
    safetensors header alone (no weights read): a command can refuse a damaged head before it starts
    anything, where loading it inside a run failed after the whole cohort was embedded."""
    fs, directory = _resolve(fs, directory)
    config = head_config(fs, directory)
    name, dims = config["head_class"], config["dims"]
    path = posixpath.join(directory, WEIGHTS_NAME)
    # Sizes first, from the config and the header alone: nothing large is read or allocated
    # before both agree on a head of a sane size.
    try:
        shapes = _expected_state(name, dims)
        _check_parameter_count(name, dims, shapes)
    except HeadArtifactError as exc:
        raise HeadArtifactError(f"{posixpath.join(directory, CONFIG_NAME)}: {exc}") from exc
    header, header_bytes, size = safetensors_header(fs, path)
    _check_header(path, header, header_bytes, size, f"{name}{dict(dims)}", shapes)
    return config, size


def load_head_with_config(fs: fsspec.AbstractFileSystem | None, directory: str) -> tuple[nn.Module, dict[str, Any]]:
    """The head (eval mode, CPU) and its config. Only allow-listed classes, only tensors."""
    fs, directory = _resolve(fs, directory)
    config, size = check_head_files(fs, directory)
    name, dims = config["head_class"], config["dims"]
    path = posixpath.join(directory, WEIGHTS_NAME)
    with fs.open(path, "rb") as handle:
        raw = handle.read(size)
    try:
        state = load_tensors(raw)
    except Exception as exc:  # safetensors raises its own error types
        raise HeadArtifactError(f"{path} is unreadable: {exc}") from exc
    del raw
    for key, tensor in state.items():
        if not bool(torch.isfinite(tensor).all()):  # a NaN weight answers a label with null probabilities
            raise HeadArtifactError(f"{path}: tensor {key} holds NaN/Inf")
    try:
        model = HEAD_CLASSES[name](**dims)
        model.load_state_dict(state, strict=True)
    except (ValueError, TypeError, AssertionError, RuntimeError) as exc:
        raise HeadArtifactError(f"{path}: weights do not fit {name}{dims}: {exc}") from exc
    model.meta = {
        "classes": config["classes"],
        "context_epochs": config["context_epochs"],
        "training": config.get("training", {}),
    }
    return model.eval(), config


def load_head(fs: fsspec.AbstractFileSystem | None, directory: str) -> nn.Module:
    """The head alone (see ``load_head_with_config``); ``model.meta`` holds classes and context."""
    return load_head_with_config(fs, directory)[0]
