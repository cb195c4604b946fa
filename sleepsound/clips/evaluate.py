"""Load a saved clip classifier and score it on a folder, or on exactly its held-out files.

Loading reads ``config.json`` and ``model.safetensors`` only (``load_head_with_config``:
allow-listed head classes, raw tensors), so a model folder from elsewhere runs no code.
Its ``extra.clips`` recipe is checked when the classifier is built (``check_clip_info``), so a
damaged or tampered one is refused by name there, not by a crash or a silent wrong answer later.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from sleepsound.clips.categories import categorise, find_categories, per_category
from sleepsound.clips.cross_validate import positive_warnings
from sleepsound.clips.dataset import MIN_CLIP_SECONDS, SAMPLE_RATE, ClipDataset, load_dataset, outside_reason
from sleepsound.clips.features import FeatureSpec, embed_audio, head_input, load_clip_backbone
from sleepsound.clips.train import MAX_MODEL_CLIP_SECONDS, decide
from sleepsound.core.config import whole_frames
from sleepsound.core.json_text import undefined_as_null
from sleepsound.models.backbones.pretrained import MEL, NULL, OFFLINE_WHISPER, hub_id_unavailable
from sleepsound.models.files import CONFIG_NAME
from sleepsound.models.heads.artifacts import HeadArtifactError, load_head_with_config
from sleepsound.models.heads.layers import MAX_LAYERS
from sleepsound.report.metrics import evaluate as score
from sleepsound.train.loop import predict_proba

SPLITS = ("all", "test")
# Clip lengths a model may ask for: the shortest clip discovery keeps, up to a minute (training
# takes the longest clip, 5 s by default; every scored window is this long, and a service holds it).
MIN_CLIP_SAMPLES = int(round(MIN_CLIP_SECONDS * SAMPLE_RATE))
MAX_CLIP_SAMPLES = int(MAX_MODEL_CLIP_SECONDS * SAMPLE_RATE)  # what `clips train --clip-seconds` allows
MAX_POOL_FACTOR = 1_000  # base pools merged into one head frame: more than a minute of 0.1-s pools
MAX_POOL_SECONDS = 60.0
# A Hugging Face id: a name, or owner/name (offline it must be in the hub's local cache; nothing is fetched here).
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_backbone(name: Any, where: str) -> str:
    """The offline Whisper, ``mel``, ``null``, a hub id, or an existing local model folder: a name
    that is a path must be a folder with a ``config.json`` now, and a hub id must be in the local
    cache when the hub is offline, not a surprise at the first clip."""
    if not isinstance(name, str) or not name:
        raise HeadArtifactError(f"{where}.backbone must be a backbone name, got {name!r}")
    if name in (OFFLINE_WHISPER, MEL, NULL):
        return name
    folder = Path(name).expanduser()
    if name.startswith((".", "/", "~")) or "\\" in name or folder.exists():
        if not (folder / "config.json").is_file():
            raise HeadArtifactError(f"{where}.backbone {name!r} is no local model folder (no config.json there)")
        return name
    if ".." in name or not _HUB_ID.fullmatch(name):
        raise HeadArtifactError(
            f"{where}.backbone {name!r} is neither {OFFLINE_WHISPER!r}, {MEL!r}, {NULL!r}, a hub id nor a local folder"
        )
    if problem := hub_id_unavailable(name):  # offline and not cached: it would fail only at the first clip
        raise HeadArtifactError(f"{where}.{problem}")
    return name


def check_clip_info(model_dir: str | Path, config: dict[str, Any]) -> dict[str, Any]:
    """The config's ``extra.clips`` recipe, every field the classifier uses checked for type and range;
    HeadArtifactError ("MODEL/config.json: extra.clips.X ...") otherwise, which the clips CLI exits 2 on."""
    where = f"{Path(model_dir) / CONFIG_NAME}: extra.clips"
    info = (config.get("extra") or {}).get("clips")
    if not isinstance(info, dict) or "features" not in info or "clip_samples" not in info:
        raise HeadArtifactError(f"{model_dir} is a head, but not a clip classifier (no extra.clips)")
    samples = info["clip_samples"]
    if not _is_int(samples) or not MIN_CLIP_SAMPLES <= samples <= MAX_CLIP_SAMPLES:
        raise HeadArtifactError(
            f"{where}.clip_samples must be a whole number of samples in {MIN_CLIP_SAMPLES}..{MAX_CLIP_SAMPLES} "
            f"({MIN_CLIP_SECONDS} s to 60 s at {SAMPLE_RATE} Hz), got {samples!r}"
        )
    rate = info.get("sample_rate", SAMPLE_RATE)
    if not _is_int(rate) or rate != SAMPLE_RATE:
        raise HeadArtifactError(f"{where}.sample_rate: model expects {rate!r} Hz; clips run at {SAMPLE_RATE} Hz")
    features = info["features"]
    if not isinstance(features, dict):
        raise HeadArtifactError(f"{where}.features must be an object, got {type(features).__name__}")
    _check_backbone(features.get("backbone"), f"{where}.features")
    layers = features.get("layers")
    if (
        not isinstance(layers, list)
        or not 1 <= len(layers) <= MAX_LAYERS
        or not all(_is_int(k) and -MAX_LAYERS <= k <= MAX_LAYERS for k in layers)
    ):
        raise HeadArtifactError(f"{where}.features.layers must list 1..{MAX_LAYERS} layer numbers, got {layers!r}")
    pick = features.get("pick")
    if not isinstance(pick, list) or not pick or not all(_is_int(k) and 0 <= k < len(layers) for k in pick):
        raise HeadArtifactError(
            f"{where}.features.pick must list positions into features.layers (0..{len(layers) - 1}), got {pick!r}"
        )
    n_layers = config["dims"].get("n_layers", 1)
    if (len(pick) if len(pick) > 1 else 1) != n_layers:
        raise HeadArtifactError(f"{where}.features.pick picks {len(pick)} layer(s); the head takes {n_layers}")
    seconds = features.get("base_pool_seconds")
    frames = whole_frames(seconds) if _is_number(seconds) else None
    if frames is None or frames < 1 or not 0 < seconds <= MAX_POOL_SECONDS:
        raise HeadArtifactError(  # 1e-9 or 0.015 s passed, and scoring then blamed the audio file
            f"{where}.features.base_pool_seconds must be a whole number of 0.01-s frames in "
            f"(0, {MAX_POOL_SECONDS:g}] s, got {seconds!r}"
        )
    factor = features.get("pool_factor")
    if not _is_int(factor) or not 1 <= factor <= MAX_POOL_FACTOR:
        raise HeadArtifactError(
            f"{where}.features.pool_factor must be a whole number 1..{MAX_POOL_FACTOR}, got {factor!r}"
        )
    decision = info.get("decision")
    if decision is not None and decision != {}:  # {} and null: argmax
        threshold = decision.get("threshold") if isinstance(decision, dict) else None
        if (
            not isinstance(decision, dict)
            or decision.get("positive") not in config["classes"]
            or not _is_number(threshold)
            or not 0 <= threshold <= 1
        ):
            shown = {k: decision.get(k) for k in ("positive", "threshold")} if isinstance(decision, dict) else decision
            raise HeadArtifactError(
                f"{where}.decision must be null or {{positive: one of {config['classes']}, threshold: 0-1}} "
                f"(the decision threshold on the positive class's probability), got {shown!r}"
            )
    files = info.get("held_out_files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise HeadArtifactError(f"{where}.held_out_files must list file names")
    if bad := next((f for f in files if outside_reason(f)), None):
        raise HeadArtifactError(  # joined to --data by `evaluate --split test`: '..' or '/' would leave it
            f"{where}.held_out_files must list label/file names inside the data folder, got {bad!r}"
        )
    for key in ("held_out", "split"):
        if not isinstance(info.get(key, {}), (dict, type(None))):
            raise HeadArtifactError(f"{where}.{key} must be an object, got {info[key]!r}")
    block = (info.get("split") or {}).get("block_size", 25)
    if not _is_int(block) or block < 1:
        raise HeadArtifactError(f"{where}.split.block_size must be a positive whole number, got {block!r}")
    return info


class ClipClassifier:
    """A trained head plus the recipe (backbone, layers, pooling, clip length) its inputs need."""

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        self.model, self.config = load_head_with_config(None, str(model_dir))
        info = check_clip_info(model_dir, self.config)
        self.info: dict[str, Any] = info
        self.spec = FeatureSpec.from_dict(info["features"])
        self.classes: tuple[str, ...] = tuple(self.config["classes"])
        self.clip_samples = int(info["clip_samples"])
        self.device = device
        self._backbone: Any = None
        self.decision: dict[str, Any] | None = info.get("decision") or None
        if self.decision is not None:
            pos = self.decision["positive"]
            self.decision = {**self.decision, "positive_index": self.classes.index(pos)}

    @property
    def held_out_files(self) -> list[str]:
        return [str(f) for f in self.info.get("held_out_files", [])]

    def load_backbone(self) -> Any:
        """The backbone, loaded on first use (a heavy model, not needed to read the config); callers that
        score many files load it first, so a name or device that cannot load is one error, not each file's."""
        if self._backbone is None:
            self._backbone = load_clip_backbone(self.spec, self.device)
        return self._backbone

    def proba(self, audio: np.ndarray, lengths: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities [N, C] for fixed-length 16-kHz clips [N, clip_samples]."""
        if audio.ndim != 2 or audio.shape[1] != self.clip_samples:
            raise ValueError(f"expected clips [N, {self.clip_samples}], got {audio.shape}")
        emb = embed_audio(self.load_backbone(), audio, batch_size)
        x, mask = head_input(emb, lengths, self.spec)
        return predict_proba(self.model, x, mask=mask)

    def decide(self, proba: np.ndarray) -> np.ndarray:
        """Class indices: the stored threshold on the positive class when the model has one, else argmax."""
        return decide(proba, self.decision)

    def predict(self, audio: np.ndarray, lengths: np.ndarray, batch_size: int | None = None) -> list[str]:
        return [self.classes[i] for i in self.decide(self.proba(audio, lengths, batch_size))]

    def load(self, data: str | Path, split: str = "all") -> ClipDataset:
        """The folder's clips at the model's clip length; ``split='test'``: only the recorded held-out files."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        files = self.held_out_files if split == "test" else None
        if split == "test" and not files:
            raise ValueError("this model recorded no held-out files (trained with test fraction 0)")
        if split == "test" and self.info.get("refit_on_all"):
            held = self.info.get("held_out") or {}
            raise ValueError(
                f"this model was refit on every clip after its {len(files)} held-out clips were scored "
                f"(accuracy {held.get('accuracy', float('nan')):.4f} then, kept in its config.json), "
                "so none of them is unseen now; train with --no-refit to keep the scored model, or "
                "evaluate it on new clips"
            )
        return load_dataset(data, clip_seconds=self.clip_samples / SAMPLE_RATE, classes=self.classes, files=files)


def evaluate_clips(
    model_dir: str | Path,
    data: str | Path,
    split: str = "all",
    batch_size: int | None = None,
    device: str = "cpu",
    categories: str | Path | None = None,
    positive: str | None = None,
) -> dict[str, Any]:
    """{n, accuracy, macro_f1, kappa, classes, confusion, per_class, counts, rejected} on ``data``, and every
    source category's figures (see :mod:`sleepsound.clips.categories`), the worst first."""
    clf = ClipClassifier(model_dir, device)
    clf.load_backbone()  # a backbone or device that cannot load: refused before the clips are read
    ranges, category_source = find_categories(data, categories)
    ds = clf.load(data, split)
    out: dict[str, Any] = {
        "model": str(model_dir),
        "data": str(data),
        "split": split,
        "n": len(ds.files),
        "classes": list(clf.classes),
    }
    if ds.files:
        predicted = clf.predict(ds.audio, ds.lengths, batch_size)
        metrics = score(ds.labels, predicted, clf.classes)
        out.update({k: metrics[k] for k in ("accuracy", "macro_f1", "kappa", "confusion", "per_class", "support")})
        block_size = int((clf.info.get("split") or {}).get("block_size", 25))  # the model's own blocks
        cats = categorise(ds.files, ds.labels, ranges, block_size)
        found = per_category(ds.labels, predicted, cats, clf.classes, positive if positive in clf.classes else None)
        out.update({k: found[k] for k in ("worst_false_alarm", "worst_recall", "worst_category") if k in found})
        out.update(
            {"category_source": category_source, "positive": found.get("positive"), "categories": found["categories"]}
        )
    else:
        out.update(
            {
                "accuracy": None,
                "macro_f1": None,
                "kappa": None,
                "confusion": [[0] * len(clf.classes) for _ in clf.classes],
                "per_class": [],
                "support": [],
            }
        )
    out["counts"] = ds.counts()
    out["rejected"] = [r.as_dict() for r in ds.rejected]
    out["warnings"] = positive_warnings(positive, clf.classes)
    return undefined_as_null(out)
