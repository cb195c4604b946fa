"""Load a saved clip classifier and score it on a folder, or on exactly its held-out files.

Loading reads ``config.json`` and ``model.safetensors`` only (``load_head_with_config``:
allow-listed head classes, raw tensors), so a model folder from elsewhere runs no code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sleepsound.clips.categories import categorise, find_categories, per_category
from sleepsound.clips.dataset import SAMPLE_RATE, ClipDataset, load_dataset
from sleepsound.clips.features import FeatureSpec, embed_audio, head_input, load_clip_backbone
from sleepsound.clips.train import decide
from sleepsound.core.json_text import undefined_as_null
from sleepsound.models.heads.artifacts import HeadArtifactError, load_head_with_config
from sleepsound.report.metrics import evaluate as score
from sleepsound.train.loop import predict_proba

SPLITS = ("all", "test")


class ClipClassifier:
    """A trained head plus the recipe (backbone, layers, pooling, clip length) its inputs need."""

    def __init__(self, model_dir: str | Path, device: str = "cpu") -> None:
        self.model, self.config = load_head_with_config(None, str(model_dir))
        info = (self.config.get("extra") or {}).get("clips")
        if not isinstance(info, dict) or "features" not in info or "clip_samples" not in info:
            raise HeadArtifactError(f"{model_dir} is a head, but not a clip classifier (no extra.clips)")
        self.info: dict[str, Any] = info
        self.spec = FeatureSpec.from_dict(info["features"])
        self.classes: tuple[str, ...] = tuple(self.config["classes"])
        self.clip_samples = int(info["clip_samples"])
        if int(info.get("sample_rate", SAMPLE_RATE)) != SAMPLE_RATE:
            raise HeadArtifactError(f"model expects {info.get('sample_rate')} Hz; clips run at {SAMPLE_RATE} Hz")
        self.device = device
        self._backbone: Any = None
        self.decision: dict[str, Any] | None = info.get("decision") or None
        if self.decision is not None:
            pos = self.decision.get("positive")
            if pos not in self.classes or not 0 <= float(self.decision.get("threshold", -1)) <= 1:
                raise HeadArtifactError(f"{model_dir}: decision threshold {self.decision} names no class or is not 0-1")
            self.decision = {**self.decision, "positive_index": self.classes.index(pos)}

    @property
    def held_out_files(self) -> list[str]:
        return [str(f) for f in self.info.get("held_out_files", [])]

    def proba(self, audio: np.ndarray, lengths: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities [N, C] for fixed-length 16-kHz clips [N, clip_samples]."""
        if audio.ndim != 2 or audio.shape[1] != self.clip_samples:
            raise ValueError(f"expected clips [N, {self.clip_samples}], got {audio.shape}")
        if self._backbone is None:  # loaded on first use: a heavy model, not needed to read the config
            self._backbone = load_clip_backbone(self.spec, self.device)
        emb = embed_audio(self._backbone, audio, batch_size)
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
    return undefined_as_null(out)
