"""What a head can learn from an epoch: the label column it reads and the classes it predicts.

Three targets share one embedding cache and one subject split: the paper's 3-class staging,
5-class staging where the scoring allows it, and the per-epoch respiratory label (none /
snore / apnoea-hypopnoea, from the scored events). A target is trained only when its labels
exist on the training side; otherwise the run records why it was skipped.

A fourth, ``snore``, is per frame (``frames``): one label per pooled frame (0.5 s) of each epoch,
snoring when the scored snore events cover most of the frame (``labels.events.snore_frames``),
learnt by ``models.heads.frames.FrameHead`` on the same cached frames (``train.frames``). Its
prediction columns are the seconds of each epoch called snoring and the frames' P(snoring).
"""

from __future__ import annotations

from dataclasses import dataclass

from sleepsound.labels.events import RESP_LABELS
from sleepsound.labels.vocabulary import STAGES_3, STAGES_5


@dataclass(frozen=True)
class Target:
    name: str  # the model store's target folder
    column: str  # the epoch table's label column
    classes: tuple[str, ...]  # model output order
    true_column: str  # prediction table columns
    pred_column: str
    frames: bool = False  # one label per pooled frame, not per epoch


TARGETS: dict[str, Target] = {
    "stage3": Target("stage3", "stage3", STAGES_3, "stage_true", "stage_pred"),
    "stage5": Target("stage5", "stage5", STAGES_5, "stage5_true", "stage5_pred"),
    "resp": Target("resp", "resp_label", RESP_LABELS, "resp_true", "resp_pred"),
    # Rows with a scored snore share (nights with an events source) carry frame labels.
    "snore": Target("snore", "snore_frac", ("none", "snore"), "snore_frames_true", "snore_s_pred", frames=True),
}
PRIMARY = "stage3"
