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
STAGE5_TO_RML: dict[str, str] = {"W": "Wake", "N1": "NonREM1", "N2": "NonREM2", "N3": "NonREM3", "R": "REM", UNSCORED: "NotScored"}

APNEA_TYPES: frozenset[str] = frozenset({"ObstructiveApnea", "CentralApnea", "MixedApnea"})
HYPOPNEA_TYPES: frozenset[str] = frozenset({"Hypopnea"})
SNORE_TYPES: frozenset[str] = frozenset({"Snore"})


def to_three_class(stage5: str) -> str | None:
    """Map a 5-class stage to Wake/NREM/REM; None for unscored epochs."""
    return FIVE_TO_THREE.get(stage5)
