"""One typed configuration for a run, loaded from YAML, overridable by environment and flags.

Its hash is recorded beside every artifact it produced, and the preprocessing part's
hash keys the embedding cache, so changing a filter setting re-embeds and nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from sleepsound.labels.vocabulary import EPOCH_SECONDS

ENV_PREFIX = "SLEEPSOUND_"

# Bounds chosen from what the code can run (each is refused before any work starts, naming the setting).
BACKBONE_RATE = 16_000  # every backbone (speech models, mel, null) takes 16-kHz audio
MAX_CONFIG_BYTES = 1 << 20  # a --config file beyond this is no hand-written configuration (and parses slowly)
MAX_FORWARD_BATCH = 1024  # epochs per forward pass: a block of them (2 GB at 16 kHz) is streamed whole
MAX_LAYER = 128  # hidden-state index bound, far above any model's depth; the model checks its own on load
NAME_CHARS = 256  # settings that name a thing (a device, a dtype, a Ray resource)
PATH_CHARS = 4096  # settings that may be a path or URL (Linux's PATH_MAX)
DAY_S = 86_400.0

Name = Annotated[str, Field(min_length=1, max_length=NAME_CHARS)]
PathLike = Annotated[str, Field(min_length=1, max_length=PATH_CHARS)]
Layer = Annotated[int, Field(ge=-MAX_LAYER - 1, le=MAX_LAYER)]
EpochPart = Annotated[float, Field(le=EPOCH_SECONDS)]  # a span within one epoch


class _Section(BaseModel):
    # NaN and infinity are never a setting: they pass every comparison bound and fail mid-run.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class PreprocessConfig(_Section):
    """The paper's preprocessing (method.md), in order."""

    # "both": the night is embedded once per microphone (each its own cache folder) and an
    # epoch's two embeddings are concatenated along the feature axis.
    channel: Literal["Mic", "Tracheal", "both"] = "Mic"
    target_rate: int = Field(BACKBONE_RATE, description="Hz; fixed: every backbone takes 16-kHz audio")
    # Below the Nyquist frequency of the target rate (scipy's butter refuses anything else).
    highpass_hz: float = Field(50.0, gt=0, lt=BACKBONE_RATE / 2)
    preemphasis: float = Field(0.97, ge=0, le=1, description="y[n] = x[n] - a x[n-1]; 0 = off")
    epoch_seconds: float = Field(EPOCH_SECONDS, description="fixed: PSG-Audio's stages are scored per 30-s epoch")
    # An epoch is invalid when more than this many seconds of it have zero RMS (an epoch's length: never).
    max_zero_rms_seconds: EpochPart = Field(10.0, ge=0)
    # At least 16 samples at 16 kHz: a frame of one sample is always "flat", quarantining every epoch.
    zero_rms_frame_seconds: EpochPart = Field(0.1, ge=0.001)
    block_epochs: int = Field(
        1,
        ge=1,
        le=64,  # 32 min of audio per block; more only holds memory (a block is allocated whole)
        description="epochs decoded per streaming block (the same rows for any value; one epoch's arrays stay "
        "in the CPU's caches: a reader spent 26% more CPU per epoch with 4)",
    )
    device: Literal["cpu", "model"] = Field(
        "cpu",
        description="where resampling and the high-pass run: 'cpu' in the readers (soxr, scipy), or 'model' "
        "on the model's device (torch; a GPU's, for nodes whose CPUs cannot keep up), with its own cache",
    )
    # Labels only, never audio, so not in the fingerprint; stored event coverage lets readers
    # re-derive ``resp_label`` with a new value without re-embedding (see sleepsound.labels.events).
    resp_min_overlap_s: EpochPart = Field(
        10.0,
        gt=0,  # 0 would mark every epoch apnea_hypopnea
        description="apnoea/hypopnoea seconds that mark an epoch apnea_hypopnea (the clinical minimum event length)",
    )

    plain_channel_index: dict[Literal["Mic", "Tracheal"], Annotated[int, Field(ge=0, le=65_534)]] = Field(
        default_factory=lambda: {"Mic": 0, "Tracheal": 1},
        description="which channel of a plain WAV/FLAC holds each microphone (0 = first)",
    )

    @field_validator("target_rate")
    @classmethod
    def _backbone_rate(cls, value: int) -> int:
        """The backbones are fed this rate as if it were 16 kHz: any other gives wrong numbers, or none."""
        if value != BACKBONE_RATE:
            raise ValueError(f"must be {BACKBONE_RATE}: every backbone takes {BACKBONE_RATE // 1000}-kHz audio")
        return value

    @field_validator("epoch_seconds")
    @classmethod
    def _scored_epoch(cls, value: float) -> float:
        """Stage labels are read per 30-s epoch by epoch index: another length would pair audio with the
        wrong labels (and the trained heads expect 30-s inputs)."""
        if value != EPOCH_SECONDS:
            raise ValueError(f"must be {EPOCH_SECONDS:g}: PSG-Audio scores sleep in {EPOCH_SECONDS:g}-s epochs")
        return value

    def fingerprint(self) -> str:
        # ``device`` only when not the default, so the CPU path's caches keep their folders.
        exclude = {"block_epochs", "resp_min_overlap_s", *(("device",) if self.device == "cpu" else ())}
        return _hash(self.model_dump(exclude=exclude))[:12]

    def channels(self) -> list[str]:
        """The single microphones this setting reads: both for ``"both"``, else the one named."""
        return ["Mic", "Tracheal"] if self.channel == "both" else [self.channel]


# With batch_size 'auto' the pipeline streams blocks of this many epochs (32 min of audio at
# 16 kHz, 61 MB of float32) to each model worker, which runs them in forward passes of its own size.
AUTO_STREAM_ROWS = 64


def whole_frames(seconds: float) -> int | None:
    """How many 0.01-s frames (the finest frame step of any backbone) ``seconds`` holds, None when not
    a whole number of them: pooling windows (``backbone.pool_seconds``, a clip model's) must be."""
    frames = round(seconds * 100)
    return frames if abs(seconds * 100 - frames) <= 1e-6 else None


class BackboneConfig(_Section):
    name: PathLike = "whisper-tiny.en-offline"
    # Negative counts from the end (-1 = the model output); the model refuses an index it lacks when it loads.
    layer: Layer = -1
    # Several hidden states for a learned weighted sum (as in SUPERB): the cache then holds
    # len(layers) times as much and the head learns the weights; empty = ``layer`` alone.
    layers: list[Layer] = Field(
        default_factory=list,
        max_length=2 * MAX_LAYER + 2,
        description="hidden-state indices (as ``layer``: 0 = input "
        "of the first transformer layer, -1 = the model output); empty: use ``layer``",
    )
    # A whole number of frames: 10 ms is the finest frame step of any backbone (the speech models: 20 ms).
    pool_seconds: EpochPart = Field(0.5, gt=0)
    device: Name = "auto"
    dtype: Name = "auto"
    batch_size: int | Literal["auto"] = Field(
        8,
        description="epochs per model forward pass, or 'auto': on CUDA as many as 70% of the free GPU memory "
        "holds (measured by a probe pass), on CPU 8",
    )
    compile: bool = Field(
        False,
        description="torch.compile the backbone (same numbers, fused kernels; the first batch pays the compilation)",
    )
    cast_weights: bool = Field(
        False,
        description="with a bfloat16/float16 dtype, cast the model's weights to it and run without autocast "
        "(GPU speed; slightly different numbers, so its own cache)",
    )
    cpu_threads: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="torch threads per model actor on CPU (default: the node's cores / embed_workers)",
    )

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_or_auto(cls, value: Any) -> Any:
        """One sentence for a bad value, not one per member of ``int | 'auto'``."""
        if value == "auto":
            return value
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_FORWARD_BATCH:
            raise ValueError(f"must be a whole number of epochs from 1 to {MAX_FORWARD_BATCH}, or 'auto'")
        return value

    @field_validator("pool_seconds")
    @classmethod
    def _whole_frames(cls, value: float) -> float:
        """Pooling windows hold whole frames; refused here rather than when the model loads on a worker."""
        frames = whole_frames(value)
        if frames is None:
            raise ValueError("must be a multiple of 0.01 s (whole frames; the speech models need 0.02 s)")
        if frames < 1:  # 1e-9 is a whole number of frames, zero: a ZeroDivisionError later
            raise ValueError("must be at least one frame, 0.01 s (the speech models need 0.02 s)")
        return value

    @model_validator(mode="after")
    def _one_layer_setting(self) -> BackboneConfig:
        """``layer`` and ``layers`` together would be ambiguous: refuse rather than guess."""
        if self.layers and self.layer != -1:
            raise ValueError(f"set backbone.layer ({self.layer}) or backbone.layers ({self.layers}), not both")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"backbone.layers lists a layer twice: {self.layers}")
        return self

    @property
    def stream_rows(self) -> int:
        """Epochs the pipeline hands a model worker at a time: ``batch_size``, or with 'auto' a
        block large enough for any automatic forward batch (the worker splits it)."""
        return AUTO_STREAM_ROWS if self.batch_size == "auto" else int(self.batch_size)

    @property
    def n_layers(self) -> int:
        """Hidden states per frame in the cache: ``len(layers)``, 1 for the single-layer path."""
        return max(1, len(self.layers))


# What ``training.snore_clips`` adds by default (measured in the README's per-second snoring section).
SNORE_CLIPS_DEFAULT: tuple[str, ...] = ("generated",)


class TrainingConfig(_Section):
    """How the heads are trained. ``snore_clips`` (with ``snore_generated_share``) adds labelled short
    clips, laid into epochs and embedded as a night is, to the per-second snore head's training frames
    only: generated bedroom sounds that are not snoring ("generated") and/or clip folders."""

    head: Literal["attention", "mlp", "soundsleepnet"] = "attention"
    context_epochs: Literal[1, 3] = 1
    # The paper's 15-s shifted extra samples between consecutive same-stage epochs (method.md,
    # "Class imbalance"); embedded once into the cache, used for training only.
    shift_augment: bool = True
    shift_classes: list[Literal["Wake", "NREM", "REM"]] = Field(
        default_factory=lambda: ["Wake", "NREM", "REM"], description="stages that get shifted samples"
    )
    lr: float = Field(5e-5, gt=0, le=1)
    min_lr: float = Field(2.5e-6, gt=0, le=1, description="where the learning rate decays to; at most lr")
    epochs: int = Field(5, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=8192)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of subjects held out (at least one, not all)")
    # Subjects kept out of training to pick the best epoch (early stopping); drawn from the
    # training side only when it has at least MIN_SUBJECTS_FOR_VALIDATION subjects.
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of training subjects for early stopping")
    # What the heads predict. Read as ``tasks`` too, its name before "task" came to mean a Prefect task only.
    targets: list[Literal["stage3", "stage5", "resp", "snore"]] = Field(
        default_factory=lambda: ["stage3", "stage5", "resp", "snore"],
        validation_alias=AliasChoices("targets", "tasks"),
        description="heads to train; stage3 always, the others where the labels allow (else skipped with a reason)",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy's generators refuse negative seeds
    ray_workers: int = Field(
        1,
        ge=1,
        le=1024,
        description="Ray Train workers for data-parallel head training (DDP); 1 trains in the task's own process",
    )
    ray_use_gpu: bool = Field(False, description="one GPU per Ray Train worker")
    # Extra training frames for the per-second snore head (train.clip_epochs): short clips laid end to
    # end into epochs, cut, preprocessed and embedded as a night's epochs are, each frame labelled by
    # the clip it lies in. Training side only: never a validation or test subject's frames.
    snore_clips: list[PathLike] = Field(
        default_factory=lambda: list(SNORE_CLIPS_DEFAULT),
        description="clip epochs added to the snore head's training frames: 'generated' (bedroom sounds that "
        "are not snoring, made here from training.seed: TV, talk, fans, motor hums, a vibration motor) and/or "
        "clip folders in the clips layout (snoring/, no_snoring/); [] for none",
    )
    snore_generated_share: float = Field(
        0.1, gt=0, le=1, description="generated clip epochs per training night epoch (at least one)"
    )

    @model_validator(mode="after")
    def _min_lr_within_lr(self) -> TrainingConfig:
        """The schedule decays from lr to min_lr; the trainer refuses the reverse only after embedding."""
        if self.min_lr > self.lr:
            raise ValueError(f"training.min_lr ({self.min_lr:g}) must not exceed training.lr ({self.lr:g})")
        return self

    @model_validator(mode="after")
    def _snore_clip_sources(self) -> TrainingConfig:
        """Each source once, none empty: a doubled folder would silently weigh twice."""
        if any(not s.strip() for s in self.snore_clips):
            raise ValueError(f"training.snore_clips holds an empty entry: {self.snore_clips}")
        if len(set(self.snore_clips)) != len(self.snore_clips):
            raise ValueError(f"training.snore_clips names a source twice: {self.snore_clips}")
        return self


class RayConfig(_Section):
    """Resources of the Ray stages. Logical CPUs only schedule work: on a 2-core machine the
    coordinating task (0.1), the reader (0.5) and one model actor (1) must fit together."""

    address: Annotated[str, Field(min_length=1, max_length=PATH_CHARS)] | None = None
    num_cpus: int | None = Field(None, ge=1, le=65_536, description="logical CPUs of a local Ray session")
    embed_workers: int = Field(1, ge=1, le=1024, description="model actors (one per GPU on GPU nodes)")
    embed_cpus: float = Field(1.0, gt=0, le=1024, description="logical CPUs each model actor holds")
    read_cpus: float = Field(0.5, gt=0, le=1024, description="logical CPUs each streaming reader task holds")
    num_gpus_per_worker: float = Field(0.0, ge=0, le=16, description="GPUs each model actor holds (0: none)")
    embed_resources: dict[Name, Annotated[float, Field(ge=0, le=1e6)]] = Field(
        default_factory=dict,
        description="custom Ray resources each model actor needs, to pin the actors to the nodes that "
        "advertise them (e.g. {model_node: 1}); GPUs are asked for with num_gpus_per_worker",
    )
    chunk_minutes: float = Field(
        60.0,
        ge=0,
        le=DAY_S / 60,  # a chunk longer than a day splits no night
        description="a night on local disk longer than this is read by several readers at once, in chunks of "
        "this length (each with an epoch of pre- and post-roll: the same rows to float rounding); 0: one reader "
        "per night",
    )
    small_job_epochs: int = Field(
        240,
        ge=0,
        le=10_000_000,
        description="a flow's embedding of at most this many epochs (240: two hours of audio) runs in its task's "
        "own process, not through Ray Data, where the session is one node without GPUs and one model actor is "
        "asked for: Ray Data's start and the actor's imports (5-7 s) outweigh such a job; 0: always Ray Data",
    )
    object_store_mb: int | None = Field(
        None,
        ge=64,
        le=1 << 20,
        description="size of a local Ray session's shared object "
        "store (default Ray's: 30% of RAM); a cluster keeps its own",
    )

    @field_validator("chunk_minutes")
    @classmethod
    def _whole_epochs(cls, value: float) -> float:
        """A chunk shorter than an epoch rounds to none and silently means one reader per night."""
        if 0 < value < EPOCH_SECONDS / 60:
            raise ValueError(f"must be 0 (one reader per night) or at least one epoch ({EPOCH_SECONDS / 60:g} min)")
        return value


class ValidationConfig(_Section):
    """When validation calls something a fault or a warning (see README, "Fault codes")."""

    clip_fraction: float = Field(
        0.01, gt=0, le=1, description="share of an epoch's samples at full scale that counts as heavy clipping"
    )
    min_silent_gap_s: float = Field(60.0, gt=0, le=DAY_S, description="digital silence at least this long is reported")
    start_tolerance_s: float = Field(60.0, ge=0, le=DAY_S, description="RML RecordingStart vs EDF start")
    part_tolerance_s: float = Field(1.0, ge=0, le=DAY_S, description="an EDF part vs its RML segment")


class ReportConfig(_Section):
    """What the run report draws. The attention view shows a Mel spectrogram of a held-out
    epoch (derived from the audio, at 64 Mel bands): set ``attention_examples=0`` to leave it out."""

    hypnograms: int = Field(12, ge=0, le=1000, description="nights drawn as hypnograms and event timelines")
    attention_examples: int = Field(2, ge=0, le=20, description="held-out epochs drawn in the attention view")


class Config(_Section):
    preprocess: PreprocessConfig = PreprocessConfig()
    backbone: BackboneConfig = BackboneConfig()
    training: TrainingConfig = TrainingConfig()
    ray: RayConfig = RayConfig()
    validation: ValidationConfig = ValidationConfig()
    report: ReportConfig = ReportConfig()

    def fingerprint(self) -> str:
        # Never hashed: what the report draws, and where a small embedding runs (the same cache either way).
        data = self.model_dump(exclude={"report": True, "ray": {"small_job_epochs"}})
        if not data["backbone"]["layers"]:  # configs from before ``layers`` keep their hash
            del data["backbone"]["layers"]
        for (section, key), default in _ADDED_LATER.items():  # likewise for later settings left at default
            if data[section][key] == default:
                del data[section][key]
        if data["training"]["targets"] == ["stage3", "stage5", "resp", "snore"]:
            data["training"]["targets"] = ["stage3", "stage5", "resp"]  # the default before the snore head
        data["training"]["tasks"] = data["training"].pop("targets")  # hashed under its former name: same hash
        if data["preprocess"]["block_epochs"] == 1:  # the same rows as 4, its default when hashes were recorded
            data["preprocess"]["block_epochs"] = 4
        return _hash(data)[:12]


# Settings added after configuration hashes were first recorded, with their defaults: a setting
# left at its default is left out of the hash, so an unchanged configuration keeps its hash.
_ADDED_LATER: dict[tuple[str, str], Any] = {
    ("preprocess", "device"): "cpu",
    ("backbone", "cast_weights"): False,
    ("ray", "chunk_minutes"): 60.0,
    ("ray", "embed_resources"): {},
    # The snore head's clip epochs: a configuration from before them keeps its hash. It now trains with
    # the default's extra frames (as it gained the snore head itself); the heads' lineage records what
    # was added (``snore_clips``), and the code version the change.
    ("training", "snore_clips"): list(SNORE_CLIPS_DEFAULT),
    ("training", "snore_generated_share"): 0.1,
}


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, key = dotted.partition(".")
    if not key:
        raise ValueError(f"override {dotted!r} must look like section.key=value")
    target = data.setdefault(section, {})
    if not isinstance(target, dict):
        raise ValueError(f"cannot set {dotted}: {section} is {target!r}, not a section of settings")
    target[key] = value


def _yaml_value(text: str, where: str) -> Any:
    """An override's value, parsed as YAML; a value YAML cannot read names the override that held it."""
    try:
        return yaml.safe_load(text)
    except RecursionError:  # thousands of nested [ or {: PyYAML recurses once per level
        raise ValueError(f"{where}: nested too deeply") from None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{where}: {text!r} is not a YAML value ({problem})") from exc


def _read_file(path: str | Path) -> dict[str, Any]:
    """The file's settings. At most MAX_CONFIG_BYTES are read (a larger file, or an endless one such as a
    device, is refused by its size): PyYAML would spend half a minute on 50 MB before anything started."""
    with open(path, "rb") as handle:
        raw = handle.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path} is {_size_of(path)}; a configuration file may be at most 1 MiB")
    try:
        data = yaml.safe_load(raw.decode("utf-8")) or {}
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path}: the top level must map sections ({', '.join(Config.model_fields)}) to "
            f"settings, not a {type(data).__name__}"
        )
    return data


def _size_of(path: str | Path) -> str:
    """A file's size for a message: its bytes, or 'more than 1 MiB' for a stream with no size."""
    try:
        size = Path(path).stat().st_size
    except OSError:
        size = 0
    if size <= MAX_CONFIG_BYTES:
        return f"more than {MAX_CONFIG_BYTES} bytes"
    return f"{size} bytes ({size / 2**20:.1f} MiB)"


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    environ: dict[str, str] | None = None,
    origins: dict[tuple[str, str], str] | None = None,
) -> Config:
    """YAML file, then ``SLEEPSOUND_SECTION__KEY`` variables, then ``section.key=value`` flags.

    ``origins``, when given, is filled with the environment variable behind each (section, key) it set
    (a later flag for the same key removes it), so an error can name the variable the user wrote."""
    data: dict[str, Any] = {}
    found: dict[tuple[str, str], str] = {} if origins is None else origins
    if path is not None:
        data = _read_file(path)
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if name.startswith(ENV_PREFIX) and "__" in name:
            section, key = name[len(ENV_PREFIX) :].lower().split("__", 1)
            if section not in Config.model_fields:  # a misspelt section was ignored in silence
                raise ValueError(
                    f"environment variable {name}: no configuration section {section!r} "
                    f"(sections: {', '.join(Config.model_fields)}); fix or unset it"
                )
            _set_dotted(data, f"{section}.{key}", _yaml_value(value, name))
            found[(section, key)] = name
    for item in overrides or []:
        dotted, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} must look like section.key=value")
        _set_dotted(data, dotted.strip(), _yaml_value(value, f"override {dotted.strip()}"))
        section, _, key = dotted.strip().partition(".")
        found.pop((section, key), None)
    try:
        return Config.model_validate(data)
    except RecursionError:  # a structure nested deeper than Python's stack, wherever it came from
        raise ValueError(f"{path or 'the settings'}: nested too deeply") from None
