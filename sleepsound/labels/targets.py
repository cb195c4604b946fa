"""What a head can learn from an epoch: the label column it reads and the classes it predicts.

Three tasks share one embedding cache and one subject split: the paper's 3-class staging,
5-class staging where the scoring allows it, and the per-epoch respiratory label (none /
snore / apnoea-hypopnoea, from the scored events). A task is trained only when its labels
exist on the training side; otherwise the run records why it was skipped.
"""

from __future__ import annotations

from dataclasses import dataclass

from sleepsound.labels.events import RESP_LABELS
from sleepsound.labels.vocabulary import STAGES_3, STAGES_5


@dataclass(frozen=True)
class LabelTask:
    name: str                  # the model store's task folder
    column: str                # the epoch table's label column
    classes: tuple[str, ...]   # model output order
    true_column: str           # prediction table columns
    pred_column: str


TASKS: dict[str, LabelTask] = {
    "stage3": LabelTask("stage3", "stage3", STAGES_3, "stage_true", "stage_pred"),
    "stage5": LabelTask("stage5", "stage5", STAGES_5, "stage5_true", "stage5_pred"),
    "resp": LabelTask("resp", "resp_label", RESP_LABELS, "resp_true", "resp_pred"),
}
PRIMARY = "stage3"


def label_task(name: str) -> LabelTask:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None
