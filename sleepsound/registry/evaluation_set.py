"""The fixed evaluation set of a storage root: the subjects every model of it is judged on.

Champion/challenger only means something when both are scored on the same nights, and a
nightly retraining sees new subjects arrive. So the first training under a root draws its
test subjects (seeded, ``training.test_fraction``) and records them in
``<root>/models/evaluation_set.json``; every later training holds exactly those subjects out
(new subjects only ever join the training side) and every promotion is decided on them.
Delete the file to draw a new set (the old models' scores then no longer compare).
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd

from sleepsound.core.config import Config
from sleepsound.core.storage import RootLike, join, open_root, read_json, write_json
from sleepsound.train.loop import split_by_subject

EVALUATION_SET = "evaluation_set.json"


def evaluation_set_path(root_path: str) -> str:
    return join(root_path, "models", EVALUATION_SET)


class CannotTrain(ValueError):
    """The labelled nights cannot train and evaluate a head on this root; the message says why and what to do."""


def _recorded_held(root: RootLike, labelled: pd.DataFrame) -> list[str] | None:
    """The recorded evaluation subjects present among ``labelled`` (None before the set is drawn);
    CannotTrain when the nights cannot serve it."""
    fs, root_path = open_root(root)
    path = evaluation_set_path(root_path)
    present = sorted(labelled["subject_id"].astype(str).unique())
    if fs.exists(path):
        recorded = [str(s) for s in read_json(fs, path)["subjects"]]
        held = sorted(set(recorded) & set(present))
        if not held:
            raise CannotTrain(
                f"none of the evaluation subjects recorded in {path} are among the labelled nights; "
                "add their nights to the source, or delete that file to draw a new evaluation set"
            )
        if len(held) == len(present):
            raise CannotTrain(f"every labelled subject is in the evaluation set {path}: nothing left to train on")
        return held
    if len(present) < 2:
        raise CannotTrain(f"training needs labelled nights from at least 2 subjects; found {len(present)}")
    return None


def check_trainable(root: RootLike, labelled: pd.DataFrame) -> None:
    """CannotTrain when these labelled nights cannot train on this root; writes nothing, so a run
    can ask right after validation, before it embeds anything."""
    _recorded_held(root, labelled)


def evaluation_subjects(root: RootLike, cfg: Config, labelled: pd.DataFrame) -> list[str]:
    """The root's evaluation subjects present among ``labelled``; drawn and recorded on first use."""
    fs, root_path = open_root(root)
    path = evaluation_set_path(root_path)
    held = _recorded_held(root, labelled)
    if held is not None:
        return held
    present = sorted(labelled["subject_id"].astype(str).unique())
    _, test = split_by_subject(present, cfg.training.test_fraction, cfg.training.seed)
    write_json(
        fs,
        path,
        {
            "subjects": test,
            "drawn_from": len(present),
            "test_fraction": cfg.training.test_fraction,
            "seed": cfg.training.seed,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return test
