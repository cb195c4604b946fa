"""Stage and event vocabularies shared by readers, the generator, heads and reports.

One place for these names keeps the RML reader, the synthetic writer and the
metrics from drifting apart.
"""

from __future__ import annotations

EPOCH_SECONDS = 30.0

# 5-class AASM names used inside sleepsound (R&K NonREM4 folds into N3).
STAGES_5: tuple[str, ...] = ("W", "N1", "N2", "N3", "R")
# The paper's 3 classes, in the order of the model's outputs.
STAGES_3: tuple[str, ...] = ("Wake", "NREM", "REM")
UNSCORED = "UNS"

FIVE_TO_THREE: dict[str, str] = {"W": "Wake", "N1": "NREM", "N2": "NREM", "N3": "NREM", "R": "REM"}

# PSG-Audio RML stage types -> sleepsound 5-class names.
RML_STAGE_TO_5: dict[str, str] = {
    "Wake": "W",
    "NonREM1": "N1",
    "NonREM2": "N2",
    "NonREM3": "N3",
    "NonREM4": "N3",
    "REM": "R",
    "NotScored": UNSCORED,
}
STAGE5_TO_RML: dict[str, str] = {
    "W": "Wake",
    "N1": "NonREM1",
    "N2": "NonREM2",
    "N3": "NonREM3",
    "R": "REM",
    UNSCORED: "NotScored",
}

# Stage names a plain night's stage CSV may use, keyed as ``stage5_of`` compares them (lower case,
# without spaces, "_" or "-"): the 5-class names, RML's, R&K's (S3 and S4 are N3, as NonREM4 is)
# and common ways to say "not scored" (movement time included: no sleep stage, so left out of
# training and metrics like RML's NotScored). Bare numbers are not accepted: exports disagree on
# them (REM is 4 in some, 5 in others); "Stage 4" (R&K) is.
STAGE_SPELLINGS: dict[str, str] = {
    **{name.lower(): name for name in (*STAGES_5, UNSCORED)},
    **{name.lower(): stage for name, stage in RML_STAGE_TO_5.items()},
    "awake": "W",
    "wk": "W",
    "s0": "W",
    "s1": "N1",
    "nrem1": "N1",
    "stage1": "N1",
    "s2": "N2",
    "nrem2": "N2",
    "stage2": "N2",
    "s3": "N3",
    "s4": "N3",
    "n4": "N3",
    "nrem3": "N3",
    "nrem4": "N3",
    "sws": "N3",
    "stage3": "N3",
    "stage4": "N3",
    "unscored": UNSCORED,
    "?": UNSCORED,
    "unknown": UNSCORED,
    "movement": UNSCORED,
    "movementtime": UNSCORED,
    "mt": UNSCORED,
    "artifact": UNSCORED,
    "artefact": UNSCORED,
}


def stage5_of(name: str) -> str | None:
    """The 5-class stage (or ``UNS``) a stage name means (``STAGE_SPELLINGS``, with or without a
    leading "Stage"/"Sleep stage"), or None for a name it does not know."""
    key = "".join(name.split()).replace("_", "").replace("-", "").lower()
    for prefix in ("", "sleep", "sleepstage", "stage"):
        if key.startswith(prefix) and key[len(prefix) :] in STAGE_SPELLINGS:
            return STAGE_SPELLINGS[key[len(prefix) :]]
    return None


APNEA_TYPES: frozenset[str] = frozenset({"ObstructiveApnea", "CentralApnea", "MixedApnea"})
HYPOPNEA_TYPES: frozenset[str] = frozenset({"Hypopnea"})
SNORE_TYPES: frozenset[str] = frozenset({"Snore"})


def to_three_class(stage5: str) -> str | None:
    """Map a 5-class stage to Wake/NREM/REM; None for unscored epochs."""
    return FIVE_TO_THREE.get(stage5)
