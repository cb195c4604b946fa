"""Trained heads as versioned artifacts under the storage root, with a champion per target.

Layout: ``<root>/models/<target>/<version>/`` holds ``model.safetensors`` + ``config.json``
(``models.heads.artifacts``), ``lineage.json`` (what it was trained on: run, split, manifest hash,
embedding cache key, code version) and, once evaluated, ``metrics.json``;
``<root>/models/<target>/champion.json`` names the version that scores by default. A version
folder is complete when its ``config.json`` exists (``models.heads.artifacts.save_head`` writes it last).
Nothing here loads weights or runs code from an artifact: it reads JSON only.

Nothing read here is trusted to stay inside the root: a task or version name (from champion.json,
a listing or the user) must be one plain path segment, as the store writes them; on a local root
every file read must resolve (symlinks followed) under the root's own real path; and each JSON
file is read up to ``MAX_JSON_BYTES`` and must have the types the store writes. Anything else is a
``DamagedStore`` naming the file: a ``ModelNotFound``, so every command that refuses a missing
model (exit 2) refuses a damaged one alike.
"""

from __future__ import annotations

import math
import os
import re
from datetime import UTC, datetime
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from sleepsound.core.records import HeadInfo, LeftOut, PromotionDecision, TrainedModels
from sleepsound.core.storage import NotOurJson, RootLike, join, open_root, read_json_capped, write_json
from sleepsound.models.files import CONFIG_NAME, WEIGHTS_NAME

CHAMPION = "champion.json"
LINEAGE = "lineage.json"
METRICS = "metrics.json"
PROMOTIONS = "promotions.json"


# A registry JSON file is a few KB (promotions.json grows by ~0.5 KB a night); 16 MiB is far
# beyond any the store writes and still cheap to parse, where a 400-MB lineage.json took ~1 GB.
MAX_JSON_BYTES = 16 << 20
# The names the store writes: tasks (stage3, events, ...) and versions (<run id>-<8 hex digits>).
# One path segment, never '.', '..', a slash or an absolute path.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")


class ModelNotFound(LookupError):
    """No such target or version under the storage root."""


class DamagedStore(ModelNotFound):
    """A stored file that is not what the store writes: damaged or oversized JSON, a name that is a
    path, or a link that leads out of the root. A ModelNotFound, so callers refuse it alike (exit 2)."""


def check_name(name: Any, what: str, source: str) -> str:
    """``name`` if it is one plain path segment (see ``NAME_PATTERN``); else DamagedStore naming ``source``."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise DamagedStore(f"{source}: {what} {name!r} is not a plain name (letters, digits, '.', '_', '+', '-')")
    return name


def _inside(fs: Any, root_path: str, path: str) -> str:
    """``path``, refused if on a local root it resolves (symlinks followed) outside the root's real path."""
    if isinstance(fs, LocalFileSystem):
        real_root = os.path.realpath(root_path)
        real = os.path.realpath(path)
        if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
            raise DamagedStore(f"{path} leads outside the storage root {root_path} (to {real}): refused")
    return path


def _read_json(fs: Any, root_path: str, path: str, kind: type) -> Any:
    """The JSON object (``kind`` dict) or array (list) in ``path``, which must stay under the root and
    hold at most MAX_JSON_BYTES; DamagedStore naming the file otherwise."""
    _inside(fs, root_path, path)
    try:
        value = read_json_capped(fs, path, MAX_JSON_BYTES, "a file the store wrote")
    except NotOurJson as exc:
        raise DamagedStore(str(exc)) from exc
    if not isinstance(value, kind):
        want = "an object" if kind is dict else "an array"
        raise DamagedStore(f"{path} holds {type(value).__name__}, not {want}")
    return value


def _json_or_empty(fs: Any, root_path: str, path: str, types: dict[str, tuple[type, ...]]) -> dict[str, Any]:
    """An optional JSON object (empty when absent) whose listed fields, where present, have ``types``."""
    if not fs.exists(path):
        return {}
    value = _read_json(fs, root_path, path, dict)
    for key, allowed in types.items():
        field = value.get(key)
        if key in value and ((isinstance(field, bool) and bool not in allowed) or not isinstance(field, allowed)):
            raise DamagedStore(f"{path}: {key!r} is {field!r}, not {' or '.join(t.__name__ for t in allowed)}")
    return value


_NONE = type(None)
_NUMBER = (int, float, _NONE)
_LINEAGE_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": (str, _NONE),
    "created": (str, _NONE),
    "train_subjects": (list,),
    "val_subjects": (list,),
    "train_epochs": (int, _NONE),
    "class_counts": (dict, list, _NONE),
}
_METRICS_TYPES: dict[str, tuple[type, ...]] = {"macro_f1": _NUMBER, "kappa": _NUMBER, "accuracy": _NUMBER}
_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "head_class": (str,),
    "context_epochs": (int,),
    "classes": (list,),
    "extra": (dict,),
}


def _lineage(fs: Any, root_path: str, path: str) -> dict[str, Any]:
    lineage = _json_or_empty(fs, root_path, join(path, LINEAGE), _LINEAGE_TYPES)
    for key in ("train_subjects", "val_subjects"):
        if not all(isinstance(s, str) for s in lineage.get(key, [])):
            raise DamagedStore(f"{join(path, LINEAGE)}: {key!r} must list subject ids (strings)")
    return lineage


def _check_class_counts(counts: Any, classes: Any, path: str) -> None:
    """A head's training class counts (its majority-class baseline): one non-negative number per
    class. A list longer than the head's classes ended a score run in a bare IndexError."""
    if counts is None:
        return
    values = list(counts.values()) if isinstance(counts, dict) else counts
    where = join(path, LINEAGE)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in values):
        raise DamagedStore(f"{where}: 'class_counts' must hold one count (a number, 0 or more) per class")
    if isinstance(counts, list) and isinstance(classes, list) and len(counts) != len(classes):
        raise DamagedStore(f"{where}: 'class_counts' has {len(counts)} entries for the head's {len(classes)} classes")


def _config(fs: Any, root_path: str, path: str) -> dict[str, Any]:
    config = _json_or_empty(fs, root_path, join(path, CONFIG_NAME), _CONFIG_TYPES)
    if not config:
        raise DamagedStore(f"{join(path, CONFIG_NAME)} is empty: not a head's config")
    return config


def model_dir(root_path: str, target: str, version: str) -> str:
    """``<root>/models/<target>/<version>``; both must be plain names (never a path out of the root)."""
    check_name(target, "task", "models")
    check_name(version, "version", f"models/{target}")
    return join(root_path, "models", target, version)


def _version_dir(fs: Any, root_path: str, target: str, version: str) -> str:
    """The version's folder, checked to be a plain name that stays under the root."""
    return _inside(fs, root_path, model_dir(root_path, target, version))


def targets(root: RootLike) -> list[str]:
    """Tasks with at least one stored model."""
    fs, root_path = open_root(root)
    base = join(root_path, "models")
    if not fs.exists(base):
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(base, detail=False) if fs.isdir(p))


def versions(root: RootLike, target: str) -> list[dict[str, Any]]:
    """Every complete version of ``target``, oldest first, with its headline facts."""
    fs, root_path = open_root(root)
    base = join(root_path, "models", check_name(target, "task", join(root_path, "models")))
    if not fs.exists(base):
        return []
    _inside(fs, root_path, base)
    champion = champion_version(root, target)
    out = []
    for path in fs.ls(base, detail=False):
        version = path.rstrip("/").rsplit("/", 1)[-1]
        if not fs.isdir(path) or not fs.exists(join(path, CONFIG_NAME)):
            continue
        path = _version_dir(fs, root_path, target, check_name(version, "version", base))
        lineage = _lineage(fs, root_path, path)
        metrics = _json_or_empty(fs, root_path, join(path, METRICS), _METRICS_TYPES)
        config = _config(fs, root_path, path)
        out.append(
            {
                "task": target,
                "version": version,
                "champion": version == champion,
                "created": lineage.get("created"),
                "head": config.get("head_class"),
                "context_epochs": config.get("context_epochs"),
                "classes": config.get("classes"),
                "train_subjects": len(lineage.get("train_subjects", [])),
                "train_epochs": lineage.get("train_epochs"),
                "macro_f1": metrics.get("macro_f1"),
                "kappa": metrics.get("kappa"),
                "accuracy": metrics.get("accuracy"),
            }
        )
    return sorted(out, key=lambda v: (v["created"] or "", v["version"]))


def show(root: RootLike, target: str, version: str | None = None) -> dict[str, Any]:
    """Everything stored about one version (default: the champion): config, lineage, metrics."""
    fs, root_path = open_root(root)
    version = version or champion_version(root, target)
    if version is None:
        raise ModelNotFound(f"task {target!r} has no champion under {root}; name a version (sleepsound models list)")
    path = _version_dir(fs, root_path, target, version)
    if not fs.exists(join(path, CONFIG_NAME)):
        raise ModelNotFound(f"no model {target}/{version} under {root}")
    if fs.exists(join(path, WEIGHTS_NAME)):  # what a scorer loads from this folder stays in the root too
        _inside(fs, root_path, join(path, WEIGHTS_NAME))
    return {
        "task": target,
        "version": version,
        "path": path,
        "champion": version == champion_version(root, target),
        "config": _config(fs, root_path, path),
        "lineage": _lineage(fs, root_path, path),
        "metrics": _json_or_empty(fs, root_path, join(path, METRICS), _METRICS_TYPES),
    }


def champion_version(root: RootLike, target: str) -> str | None:
    """The version ``champion.json`` names (None without one); DamagedStore if it is not a plain version name."""
    fs, root_path = open_root(root)
    pointer = join(root_path, "models", check_name(target, "task", join(root_path, "models")), CHAMPION)
    if not fs.exists(pointer):
        return None
    record = _read_json(fs, root_path, pointer, dict)
    return check_name(record.get("version"), "version", pointer)


def set_champion(root: RootLike, target: str, version: str, reason: str) -> dict[str, Any]:
    """Point ``target``'s champion at ``version`` (which must exist), recording why and what it replaced."""
    fs, root_path = open_root(root)
    if not fs.exists(join(_version_dir(fs, root_path, target, version), CONFIG_NAME)):
        raise ModelNotFound(f"no model {target}/{version} under {root}")
    record = {
        "version": version,
        "previous": champion_version(root, target),
        "reason": reason,
        "promoted": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_json(fs, join(root_path, "models", target, CHAMPION), record)
    return record


def promote_if_better(
    root: RootLike,
    target: str,
    challenger: str,
    challenger_score: float,
    champion_score: float | None,
    *,
    metric: str = "macro_f1",
    margin: float = 0.01,
    left_out: LeftOut | None = None,
) -> PromotionDecision:
    """Champion/challenger: make ``challenger`` the champion only if it beats the champion's score
    on the same evaluation set by at least ``margin`` (higher is better); a first model always wins.

    Both scores must come from the same evaluation nights, or the comparison means nothing:
    the caller scores both (``left_out``: the evaluation nights it left out of both, said in the
    reason and recorded). The decision and both scores are appended to
    ``models/<target>/promotions.json`` (promoted or not) and returned.
    """
    fs, root_path = open_root(root)
    _check_decision(fs, root_path, root, target, challenger, margin)
    current = champion_version(root, target)
    if current == challenger:
        # A rerun of the run that promoted it (killed after promoting): its decision stands as recorded,
        # once, with both scores; the pointer, naming the champion it replaced, is left as it is.
        log_path = join(root_path, "models", target, PROMOTIONS)
        earlier = _read_json(fs, root_path, log_path, list) if fs.exists(log_path) else []
        made = [d for d in earlier if isinstance(d, dict) and (d.get("challenger") or {}).get("version") == challenger]
        if made and made[-1].get("promoted"):
            return made[-1]  # type: ignore[no-any-return]
        return _decision(
            target,
            metric,
            margin,
            True,
            "already the champion: promoted by an earlier attempt of this run",
            (challenger, challenger_score),
            (current, None),
        )
    if challenger_score != challenger_score:  # NaN: nothing to judge it by
        promoted, why = False, f"the challenger's {metric} is undefined on the evaluation set"
    elif current is None or champion_score is None:
        promoted, why = True, "no champion yet"
    elif challenger_score >= champion_score + margin:
        promoted, why = True, f"{metric} {challenger_score:.4f} beats {champion_score:.4f} by at least {margin}"
    else:
        promoted, why = (
            False,
            (
                f"{metric} {challenger_score:.4f} does not beat the champion's {champion_score:.4f} "
                f"by the margin {margin}"
            ),
        )
    if left_out is not None:
        why += (
            f" ({left_out['nights']} of {left_out['of']} evaluation nights left out of both scores: "
            f"{left_out['reason']})"
        )
    decision = _decision(
        target, metric, margin, promoted, why, (challenger, challenger_score), (current, champion_score)
    )
    if left_out is not None:
        decision["left_out"] = left_out
    _append_decision(fs, root_path, target, decision)
    if promoted:
        set_champion(root, target, challenger, why)
    return decision


def refuse_promotion(
    root: RootLike, target: str, challenger: str, reason: str, *, metric: str = "macro_f1", margin: float = 0.01
) -> PromotionDecision:
    """Record that ``challenger`` was not compared at all (``reason`` says why: no scores to compare on
    the evaluation set): not promoted, the champion unchanged, appended to promotions.json like any
    decision so the history says why this model never had its chance."""
    fs, root_path = open_root(root)
    _check_decision(fs, root_path, root, target, challenger, margin)
    decision = _decision(
        target, metric, margin, False, reason, (challenger, None), (champion_version(root, target), None)
    )
    _append_decision(fs, root_path, target, decision)
    return decision


def _decision(
    target: str,
    metric: str,
    margin: float,
    promoted: bool,
    reason: str,
    challenger: tuple[str, float | None],
    champion: tuple[str | None, float | None],
) -> PromotionDecision:
    """One promotions.json entry, decided now; ``challenger`` and ``champion``: (version, score)."""
    return {
        "task": target,
        "metric": metric,
        "margin": margin,
        "promoted": promoted,
        "reason": reason,
        "challenger": {"version": challenger[0], "score": challenger[1]},
        "champion": {"version": champion[0], "score": champion[1]},
        "decided": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _check_decision(
    fs: fsspec.AbstractFileSystem, root_path: str, root: RootLike, target: str, challenger: str, margin: float
) -> None:
    """ModelNotFound for a challenger the store lacks, ValueError for a negative margin."""
    if not fs.exists(join(_version_dir(fs, root_path, target, challenger), CONFIG_NAME)):
        raise ModelNotFound(f"no model {target}/{challenger} under {root}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")


def _append_decision(fs: fsspec.AbstractFileSystem, root_path: str, target: str, decision: PromotionDecision) -> None:
    log_path = join(root_path, "models", target, PROMOTIONS)
    log = _read_json(fs, root_path, log_path, list) if fs.exists(log_path) else []
    write_json(fs, log_path, [*log, decision])


def serving_models(root: RootLike, versions: dict[str, str] | None = None) -> TrainedModels:
    """Each task's champion (or the version named in ``versions``) as the model dict that
    ``predict.recordings.predict_recordings`` and ``report.outputs.write_run_outputs`` take, without its test subjects.

    The stage3 model is required; other targets join when they have a champion or a named version.
    """
    versions = dict(versions or {})
    unknown = sorted(set(versions) - set(targets(root)))
    if unknown:
        raise ModelNotFound(f"no models of task(s) {unknown} under {root}")
    heads: dict[str, HeadInfo] = {}
    for target in targets(root):
        version = versions.get(target) or champion_version(root, target)
        if version is None:
            continue
        info = show(root, target, version)
        extra = info["config"].get("extra", {})
        _check_class_counts(info["lineage"].get("class_counts"), info["config"].get("classes"), info["path"])
        heads[target] = {
            "task": target,
            "model_dir": info["path"],
            "version": version,
            "class_counts": info["lineage"].get("class_counts"),
            **{k: extra[k] for k in ("events_per_event_epoch", "snore_share_per_snore_epoch") if k in extra},
        }
    if "stage3" not in heads:
        raise ModelNotFound(f"no stage3 champion under {root}: train one first (sleepsound run or train)")
    lineage = show(root, "stage3", heads["stage3"]["version"])["lineage"]
    return {
        "model_dir": heads["stage3"]["model_dir"],
        "version": heads["stage3"]["version"],
        "task": "stage3",
        "train_subjects": list(lineage.get("train_subjects", [])),
        "val_subjects": list(lineage.get("val_subjects", [])),
        "test_subjects": [],
        "heads": heads,
        "skipped": {},
    }


class NotTheTrainingRun(PermissionError):
    """A run other than the one that trained a model tried to write that model's own files."""


def write_metrics(root: RootLike, target: str, version: str, metrics: dict[str, Any]) -> None:
    """Record a model's own held-out figures; only the run that trained it may (``metrics["run_id"]``
    must be its lineage's ``run_id``), so another run's nights never pass for the model's evaluation.
    That run may write them again: a rerun of a crashed run retrains the same version."""
    fs, root_path = open_root(root)
    path = _version_dir(fs, root_path, target, version)
    trained_by = _lineage(fs, root_path, path).get("run_id")
    if trained_by is None or metrics.get("run_id") != trained_by:
        raise NotTheTrainingRun(
            f"{join(path, METRICS)} belongs to the run that trained {target}/{version} ({trained_by or 'unknown'}); "
            f"run {metrics.get('run_id')!r} writes its figures under runs/{metrics.get('run_id')}/ only"
        )
    write_json(fs, join(path, METRICS), metrics)


def write_first_metrics(root: RootLike, target: str, version: str, metrics: dict[str, Any]) -> None:
    """Record figures for a model that has none yet, as its training run (a model's figures are its
    own run's: the promotion step of that run evaluates it on the evaluation subjects)."""
    fs, root_path = open_root(root)
    path = _version_dir(fs, root_path, target, version)
    if not fs.exists(join(path, METRICS)):
        trained_by = _lineage(fs, root_path, path).get("run_id")
        write_metrics(root, target, version, {**metrics, "run_id": trained_by})
