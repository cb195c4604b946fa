"""Trained heads in the transfer evaluation: heads fitted on the development styles, scored on the rest.

``breathing.transfer`` measures the envelope detector, which has one fitted number. The project's
heads are fitted on far more (every weight), so the honest question for them is the same one: do
they hold on generator styles and sounds they never heard? ``score_with_heads`` embeds every night
of the cohorts through the project's embed stage (cached per backbone like any night), trains the
project's heads (``train.fit.train_models``: the stage head, the per-epoch respiratory head and the
per-second snoring head) on the development styles' nights only, and adds to every night:

* ``head_epoch_events``: the respiratory head's expected events per epoch (P(apnoea or hypopnoea)
  x the training side's events per event epoch), the REI/AHI estimate the summaries call ``ahi_head``;
* ``combined``: the detector's candidates with the snoring head's P(snoring) typing the breaths
  (``breathing.combine``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

import numpy as np

from sleepsound.breathing.detector import DEFAULT, DetectorSettings, detect_candidates
from sleepsound.breathing.transfer import NightResult, find_cohorts, recorded_suffix
from sleepsound.core.config import Config

HEAD_TARGETS = ["stage3", "resp", "snore"]  # stage3 is the primary head every training run makes


class HeadsInfo(TypedDict):
    """What was trained: the backbone, the development nights and subjects, the heads and any skipped."""

    backbone: str
    train_nights: int
    train_subjects: int
    val_subjects: int
    heads: list[str]
    skipped: dict[str, str]
    models: dict[str, str]  # head -> its model folder under the storage root


class NightHeads(TypedDict):
    """One night's head outputs: expected events per epoch (None without a respiratory head) and
    P(snoring) per envelope frame (None without a snoring head)."""

    epoch_events: np.ndarray | None
    snore_track: np.ndarray | None


def head_config(backbone: str, overrides: Sequence[str] | None = None) -> Config:
    """The heads' configuration: the defaults (and ``SLEEPSOUND_`` variables) with ``backbone``, no
    shifted windows (the cohorts' nights are embedded for scoring only), and ``section.key=value``
    overrides as ``--set`` takes them."""
    from sleepsound.core.config import load_config

    base = ["training.shift_augment=false", f"training.targets=[{', '.join(HEAD_TARGETS)}]"]
    return load_config(None, [*base, f"backbone.name={backbone}", *(overrides or [])])


def score_with_heads(
    cohort_root: str | os.PathLike[str],
    storage_root: str | os.PathLike[str],
    nights: Sequence[NightResult],
    held_out: Sequence[str],
    backbone: str,
    settings: DetectorSettings = DEFAULT,
    overrides: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> HeadsInfo:
    """``head_outputs``, then ``head_epoch_events`` and ``combined`` (the detector's candidates with the
    snoring head's track) added to each night, in place."""
    from sleepsound.breathing.store import load_envelope
    from sleepsound.embed.cache import channel_configs

    info, outputs, rows = head_outputs(cohort_root, storage_root, nights, held_out, backbone, overrides, progress)
    channel = channel_configs(Config())[0]
    for night in nights:
        got = outputs[(night["style"], night["recording_id"])]
        if got["epoch_events"] is not None:
            night["head_epoch_events"] = got["epoch_events"].tolist()
        if got["snore_track"] is not None:
            env, valid = load_envelope(str(storage_root), channel, rows[(night["style"], night["recording_id"])])
            night["combined"] = detect_candidates(env, valid, settings, snoring=got["snore_track"])
    return info


def head_outputs(
    cohort_root: str | os.PathLike[str],
    storage_root: str | os.PathLike[str],
    nights: Sequence[NightResult],
    held_out: Sequence[str],
    backbone: str,
    overrides: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[HeadsInfo, dict[tuple[str, str], NightHeads], dict[tuple[str, str], Any]]:
    """Embed every night, train the heads on the development styles' nights (every style not held out,
    none of the recorded-sound groups) and score every night with them -> (what was trained, each
    night's outputs and manifest row by (style, recording id)). The models go to the storage root's
    ``models/`` like any training run's."""
    import pandas as pd
    import pyarrow as pa

    from sleepsound.core import schemas
    from sleepsound.core.storage import open_root
    from sleepsound.embed.cohort import embed_cohort
    from sleepsound.ingest.manifest import build_manifest
    from sleepsound.labels.targets import TARGETS
    from sleepsound.models.heads.artifacts import load_head
    from sleepsound.train.fit import train_models

    cfg = head_config(backbone, overrides)
    say = progress or (lambda _: None)
    groups = {n["style"] for n in nights}
    rows: dict[tuple[str, str], Any] = {}
    for style, _, folder in find_cohorts(cohort_root):
        if style in groups:
            for r in build_manifest(str(folder), cfg.preprocess, cfg.validation):
                if r["status"] == "accepted":
                    rows[(style, str(r["recording_id"]))] = r
    missing = [n["recording_id"] for n in nights if (n["style"], n["recording_id"]) not in rows]
    if missing:
        raise ValueError(f"{cohort_root}: {len(missing)} night(s) of the evaluation are not in the cohorts")
    dev = [rows[(s, r)] for s, r in rows if s not in held_out and recorded_suffix(s) is None]
    if not dev:  # before any embedding: nothing to train on is known now
        raise ValueError("every style is held out: no development nights to train the heads on")
    say(f"embedding {len(rows)} nights with {backbone} (cached nights are kept)")
    for batch in _distinct_batches(list(rows.values())):
        embed_cohort(batch, str(storage_root), cfg, use_ray=False, shifted=False)

    def frame(chosen: list[Any]) -> pd.DataFrame:
        return pa.Table.from_pylist(chosen, schema=schemas.MANIFEST).to_pandas()

    say(f"training the heads on {len(dev)} development nights")
    model = train_models(str(storage_root), cfg, "breathing-transfer", frame(dev), test_subjects=[])
    fs = open_root(str(storage_root)).fs
    heads = {name: (TARGETS[name], load_head(fs, info["model_dir"]), info) for name, info in model["heads"].items()}
    outputs = score_nights(storage_root, cfg, heads, rows, nights)
    trained: HeadsInfo = {
        "backbone": backbone,
        "train_nights": len(dev),
        "train_subjects": len(model["train_subjects"]),
        "val_subjects": len(model.get("val_subjects", [])),
        "heads": sorted(heads),
        "skipped": dict(model.get("skipped", {})),
        "models": {name: str(info["model_dir"]) for name, info in model["heads"].items()},
    }
    return trained, outputs, rows


def score_nights(
    storage_root: str | os.PathLike[str],
    cfg: Config,
    heads: dict[str, tuple[Any, Any, Any]],
    rows: dict[tuple[str, str], Any],
    nights: Sequence[NightResult],
) -> dict[tuple[str, str], NightHeads]:
    """Each night's head outputs from its cached embeddings: ``heads`` maps a target to (target, loaded
    head, its HeadInfo or lineage), ``rows`` a night's (style, recording id) to its manifest row."""
    import pyarrow as pa

    from sleepsound.breathing.combine import snore_track
    from sleepsound.breathing.envelope import frames_per_epoch
    from sleepsound.core import schemas
    from sleepsound.train.dataset import load_embedded, model_inputs
    from sleepsound.train.frames import frame_probs
    from sleepsound.train.loop import predict_with_weights

    resp, snore = heads.get("resp"), heads.get("snore")
    epoch_s = cfg.preprocess.epoch_seconds
    outputs: dict[tuple[str, str], NightHeads] = {}
    for night in nights:
        key = (night["style"], night["recording_id"])
        row = rows[key]
        data = load_embedded(str(storage_root), cfg, pa.Table.from_pylist([row], schema=schemas.MANIFEST).to_pandas())
        index = data.epochs["epoch_index"].astype(int).to_numpy()
        n_epochs = int(row["n_epochs"])
        got: NightHeads = {"epoch_events": None, "snore_track": None}
        if resp is not None:
            target, head, info = resp
            x, mask = model_inputs(data, cfg.training.context_epochs)
            probs, _ = predict_with_weights(head, x, mask=mask)
            per_epoch = np.zeros(n_epochs)
            per_epoch[index] = probs[:, target.classes.index("apnea_hypopnea")] * float(
                info.get("events_per_event_epoch", 1.0)
            )
            got["epoch_events"] = per_epoch
        if snore is not None:
            p = frame_probs(snore[1], data.features) if len(data.features) else np.zeros((0, 0))
            pairs = zip(index.tolist(), list(p), strict=True)
            got["snore_track"] = snore_track(pairs, n_epochs * frames_per_epoch(epoch_s), epoch_s)
        outputs[key] = got
    return outputs


def _distinct_batches(rows: list[Any]) -> list[list[Any]]:
    """The rows in batches with no recording id twice: a style's recorded-sound groups keep its
    recording ids (same night plans) with other audio, and the embed stage gathers a recording's rows
    by id; the same audio twice (``tv-bedroom+tv`` is ``tv-bedroom``) is embedded once."""
    seen: set[tuple[str, str]] = set()
    batches: list[list[Any]] = []
    for row in rows:
        key = (str(row["recording_id"]), str(row["sha256"]))
        if key in seen:
            continue
        seen.add(key)
        for batch in batches:
            if all(str(r["recording_id"]) != key[0] for r in batch):
                batch.append(row)
                break
        else:
            batches.append([row])
    return batches
