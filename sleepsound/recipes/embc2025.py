"""``sleepsound reproduce-embc2025``: the paper's whole protocol on a copy of PSG-Audio.

Xu, Brown and Ma (EMBC 2025), as summarised in method.md: recordings that fail validation
are left out (the paper's 21 exclusions for missing audio or annotation errors: here every
quarantine reason is listed), one seeded split by participant (20% test: 38 of 191), the
ambient microphone, and three models trained on the same training participants and scored
on the same test participants:

* **SoundSleepNet**: the Mel-spectrogram baseline (``backbone.name=mel``,
  ``training.head=soundsleepnet``), learning rate 5e-4;
* **30-s HuBERT**: frozen HuBERT-Base, attention pooling over one epoch;
* **90-s HuBERT**: the same over the epoch and its two neighbours.

Everyone shares the paper's loss (inverse-frequency weighted cross-entropy), schedule (a
constant learning rate, then linear decay to 2.5e-6; the constant part is a quarter of the
steps, which is the paper's 6,000 at its data size and batch of 32) and five epochs. The
result is Table II (per class SE, SP, PPV, NPV) beside the paper's numbers, plus accuracy,
kappa and macro-F1, written to ``<root>/reproduce/embc2025.json``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from sleepsound import __version__
from sleepsound.core.config import Config
from sleepsound.core.json_text import figures_json
from sleepsound.core.storage import RootLike, join, open_root, write_json
from sleepsound.embed.cohort import embed_cohort
from sleepsound.ingest.manifest import build_manifest, labelled_manifest, write_manifest
from sleepsound.report.metrics import PAPER_TABLE_II, TABLE_COLUMNS
from sleepsound.train.cross_validation import score_split
from sleepsound.train.loop import split_by_subject

HUBERT_BASE = "facebook/hubert-base-ls960"
SOUNDSLEEPNET_LR = 5e-4


def model_configs(base: Config, backbone: str, mel_pool_seconds: float = 0.1) -> dict[str, Config]:
    """The paper's three models as configurations of this project (the row names of Table II)."""

    def variant(backbone_name: str, pool_seconds: float | None = None, **training: Any) -> Config:
        data = base.model_dump()
        data["backbone"]["name"] = backbone_name
        if pool_seconds is not None:
            data["backbone"]["pool_seconds"] = pool_seconds
        data["training"].update(targets=["stage3"], **training)
        data["preprocess"]["channel"] = "Mic"
        return Config.model_validate(data)

    return {
        # By default the CNN reads the spectrogram at 0.1 s (300 frames per epoch), nearer its published input.
        "SoundSleepNet": variant(
            "mel", pool_seconds=mel_pool_seconds, head="soundsleepnet", context_epochs=1, lr=SOUNDSLEEPNET_LR
        ),
        "30-s HuBERT": variant(backbone, head="attention", context_epochs=1),
        "90-s HuBERT": variant(backbone, head="attention", context_epochs=3),
    }


def reproduce_embc2025(
    source: str,
    root: RootLike,
    base: Config | None = None,
    backbone: str = HUBERT_BASE,
    use_ray: bool = True,
    models: list[str] | None = None,
    mel_pool_seconds: float = 0.1,
) -> dict[str, Any]:
    """Validate, embed, train and score the three models; returns (and writes) Table II with the paper's."""
    base = base or Config()
    configs = model_configs(base, backbone, mel_pool_seconds)
    if models:
        unknown = sorted(set(models) - set(configs))
        if unknown:
            raise ValueError(f"unknown models {unknown}; known: {list(configs)}")
        configs = {k: v for k, v in configs.items() if k in models}
    for name in sorted({cfg.backbone.name for cfg in configs.values()}):  # a typo or offline: refused now
        _check_backbone(name)
    rows = build_manifest(source, base.preprocess, base.validation, use_ray=use_ray)
    manifest = pd.DataFrame(rows)
    labelled = labelled_manifest(manifest) if rows else manifest  # nothing found: no subject, refused below
    subjects = sorted(labelled["subject_id"].astype(str).unique()) if len(labelled) else []
    train, test = split_by_subject(subjects, base.training.test_fraction, base.training.seed)
    # Only a run that can go on replaces the root's manifest: a source it refuses (too few subjects, none
    # found) used to wipe the root's cohort from it first.
    write_manifest(root, rows)
    accepted = [r for r in rows if r["status"] == "accepted"]

    results: dict[str, Any] = {}
    for name, cfg in configs.items():
        stats = embed_cohort(accepted, root, cfg, use_ray=use_ray)
        got = score_split(root, cfg, labelled, test, ["stage3"])["stage3"]
        if "skipped" in got:
            raise ValueError(f"{name}: {got['skipped']}")
        results[name] = {
            **got["metrics"],
            "train_epochs": got["train_epochs"],
            "embedded": len(stats.embedded),
            "cached": len(stats.cached),
            "backbone": cfg.backbone.name,
            "head": cfg.training.head,
            "context_epochs": cfg.training.context_epochs,
            "lr": cfg.training.lr,
        }
    excluded = [
        {"recording_id": r["recording_id"], "reason_code": r["reason_code"], "reason": r["reason"]}
        for r in rows
        if r["status"] != "accepted"
    ]
    out = {
        "protocol": "Xu, Brown and Ma, EMBC 2025 (method.md)",
        "code_version": __version__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": source,
        "backbone": backbone,
        "recordings": len(rows),
        "accepted": len(accepted),
        "excluded": excluded,
        "participants": len(subjects),
        "train_participants": len(train),
        "test_participants": len(test),
        "test_subjects": test,
        "table_ii": table_ii(results),
        "models": results,
    }
    fs, root_path = open_root(root)
    write_json(fs, join(root_path, "reproduce", "embc2025.json"), json.loads(figures_json(out)))  # NaN as null
    return out


def table_ii(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of Table II: model, class, then ours and the paper's SE, SP, PPV, NPV."""
    rows = []
    for model, metrics in results.items():
        per_class = {r["class"]: r for r in metrics["per_class"]}
        for cls in ("Wake", "REM", "NREM"):  # the paper's row order
            paper = PAPER_TABLE_II.get(model, {}).get(cls, {})
            rows.append(
                {
                    "model": model,
                    "class": cls,
                    **{c: per_class.get(cls, {}).get(c) for c in TABLE_COLUMNS},
                    **{f"paper_{c}": paper.get(c) for c in TABLE_COLUMNS},
                }
            )
    return rows


def _check_backbone(name: str) -> None:
    """ValueError when backbone ``name`` cannot be loaded here (``mel`` needs nothing): it ended as an
    unexpected error after the manifest was written and other models embedded."""
    from sleepsound.models.backbones.pretrained import BackboneLoadError, load_backbone

    try:
        load_backbone(name)
    except BackboneLoadError as exc:
        raise ValueError(str(exc)) from None
