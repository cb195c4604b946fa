"""Epoch-level metrics as the paper reports them (per-class SE, SP, PPV, NPV) and the usual summaries.

Per class, one-vs-rest from the confusion matrix C (rows true, columns predicted):
TP = C[c, c], FN = row sum - TP, FP = column sum - TP, TN = the rest;
SE = TP / (TP + FN), SP = TN / (TN + FP), PPV = TP / (TP + FP), NPV = TN / (TN + FN).
A ratio whose denominator is 0 (e.g. PPV of a class never predicted) is NaN, not an
error; Cohen's kappa is NaN when chance agreement is 1. The majority baseline predicts the
most frequent *training* class for every epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import confusion_matrix

from sleepsound.labels.vocabulary import STAGES_3

TABLE_COLUMNS = ("SE", "SP", "PPV", "NPV")

# Xu, Brown and Ma (EMBC 2025), Table II, ambient microphone, 38 test participants.
PAPER_TABLE_II: dict[str, dict[str, dict[str, float]]] = {
    "SoundSleepNet": {
        "Wake": {"SE": 0.78, "SP": 0.84, "PPV": 0.32, "NPV": 0.98},
        "REM": {"SE": 0.21, "SP": 0.89, "PPV": 0.07, "NPV": 0.97},
        "NREM": {"SE": 0.72, "SP": 0.64, "PPV": 0.93, "NPV": 0.25},
    },
    "30-s HuBERT": {
        "Wake": {"SE": 0.81, "SP": 0.76, "PPV": 0.24, "NPV": 0.98},
        "REM": {"SE": 0.44, "SP": 0.72, "PPV": 0.06, "NPV": 0.97},
        "NREM": {"SE": 0.45, "SP": 0.79, "PPV": 0.94, "NPV": 0.17},
    },
    "90-s HuBERT": {
        "Wake": {"SE": 0.83, "SP": 0.81, "PPV": 0.29, "NPV": 0.98},
        "REM": {"SE": 0.54, "SP": 0.74, "PPV": 0.08, "NPV": 0.98},
        "NREM": {"SE": 0.52, "SP": 0.79, "PPV": 0.95, "NPV": 0.19},
    },
}
PAPER_30S_HUBERT = PAPER_TABLE_II["30-s HuBERT"]


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else float("nan")


def _as_list(values: Iterable[Any], classes: Sequence[Any], what: str) -> list[Any]:
    out = list(values)
    known = set(classes)
    unknown = sorted({str(v) for v in out if v not in known})
    if unknown:
        raise ValueError(f"{what} holds labels not in {list(classes)}: {unknown[:5]}")
    return out


def confusion_counts(y_true: Iterable[Any], y_pred: Iterable[Any], classes: Sequence[Any] = STAGES_3) -> np.ndarray:
    """Counts [C, C], rows true class, columns predicted class, in ``classes`` order."""
    yt, yp = _as_list(y_true, classes, "y_true"), _as_list(y_pred, classes, "y_pred")
    if len(yt) != len(yp):
        raise ValueError(f"{len(yt)} true labels but {len(yp)} predictions")
    if not yt:
        return np.zeros((len(classes), len(classes)), dtype=np.int64)
    return confusion_matrix(yt, yp, labels=list(classes)).astype(np.int64)


def row_normalise(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the share of each true class predicted as each class);
    a row with no epochs is NaN."""
    counts = np.asarray(counts, dtype=np.float64)
    sums = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sums > 0, counts / np.where(sums > 0, sums, 1.0), np.nan)


def per_class_from_counts(counts: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Table II shape: index ``class``, columns SE SP PPV NPV (NaN where undefined)."""
    counts = np.asarray(counts)
    total = counts.sum()
    rows = {}
    for i, name in enumerate(classes):
        tp = counts[i, i]
        fn = counts[i].sum() - tp
        fp = counts[:, i].sum() - tp
        tn = total - tp - fn - fp
        rows[name] = {
            "SE": _ratio(tp, tp + fn),
            "SP": _ratio(tn, tn + fp),
            "PPV": _ratio(tp, tp + fp),
            "NPV": _ratio(tn, tn + fn),
        }
    frame = pd.DataFrame.from_dict(rows, orient="index", columns=list(TABLE_COLUMNS))
    frame.index.name = "class"
    return frame


def per_class_table(y_true: Iterable[Any], y_pred: Iterable[Any], classes: Sequence[str] = STAGES_3) -> pd.DataFrame:
    """One-vs-rest SE/SP/PPV/NPV per class, shaped like the paper's Table II."""
    return per_class_from_counts(confusion_counts(y_true, y_pred, classes), classes)


def cohen_kappa(counts: np.ndarray) -> float:
    """Cohen's kappa from a confusion matrix; NaN when undefined (chance agreement 1 or no data)."""
    return float(confusion_kappa(counts))


def majority_class(y_train: Iterable[Any], classes: Sequence[Any] = STAGES_3) -> Any:
    """The most frequent training class (ties go to the earlier class in ``classes``)."""
    labels = _as_list(y_train, classes, "y_train")
    if not labels:
        raise ValueError("no training labels to take a majority from")
    counts = [labels.count(c) for c in classes]
    return classes[int(np.argmax(counts))]


_majority_class = majority_class  # ``evaluate``'s argument of the same name shadows it


def evaluate(
    y_true: Iterable[Any], y_pred: Iterable[Any], classes: Sequence[str] = STAGES_3, majority_class: Any | None = None
) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-able values (NaN where undefined).

    ``majority_class`` is the most frequent class of the *training* labels (see
    ``majority_class()``); when None the held-out labels' own majority is used, which
    flatters the baseline, and ``baseline_from`` says so.
    """
    labels = list(classes)
    yt, yp = _as_list(y_true, labels, "y_true"), _as_list(y_pred, labels, "y_pred")
    counts = confusion_counts(yt, yp, labels)
    baseline_from = "training"
    if majority_class is None:
        majority_class, baseline_from = _majority_class(yt, labels), "held-out"
    if majority_class not in labels:
        raise ValueError(f"majority class {majority_class!r} not in {labels}")
    baseline = [majority_class] * len(yt)
    base_counts = confusion_counts(yt, baseline, labels)
    per_class = per_class_from_counts(counts, labels)
    return {
        "n_epochs": len(yt),
        "classes": labels,
        "support": counts.sum(axis=1).tolist(),
        "accuracy": float(confusion_accuracy(counts)),
        "kappa": cohen_kappa(counts),
        "macro_f1": float(confusion_macro_f1(counts)),
        "baseline_class": majority_class,
        "baseline_from": baseline_from,
        "baseline_accuracy": float(confusion_accuracy(base_counts)),
        "baseline_kappa": cohen_kappa(base_counts),
        "baseline_macro_f1": float(confusion_macro_f1(base_counts)),
        "confusion": counts.tolist(),
        "confusion_normalised": row_normalise(counts).tolist(),
        "per_class": per_class.reset_index().to_dict("records"),
    }


def ahi_agreement(true_ahi: Sequence[float], pred_ahi: Sequence[float]) -> dict[str, Any]:
    """How an AHI estimate agrees with the scored one, night by night.

    Pearson r (and its p-value); Bland-Altman bias (mean of estimate - scored) and 95% limits
    of agreement (bias +- 1.96 SD of the differences); severity agreement on the clinical
    bands (4x4 confusion, exact agreement, Cohen's kappa); and, per screening threshold 5,
    15 and 30 (scored AHI >= t is a positive), the estimate's sensitivity and specificity.
    Nights where either value is unknown are left out.
    """
    from scipy.stats import pearsonr

    from sleepsound.report.summaries import SEVERITIES, severity

    t = np.asarray(true_ahi, dtype=np.float64)
    p = np.asarray(pred_ahi, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"{len(t)} scored AHIs but {len(p)} estimates")
    keep = np.isfinite(t) & np.isfinite(p)
    t, p = t[keep], p[keep]
    diff = p - t
    r, r_p = pearsonr(t, p) if len(t) >= 3 and t.std() > 0 and p.std() > 0 else (float("nan"), float("nan"))
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else float("nan")
    bias = float(diff.mean()) if len(diff) else float("nan")
    bands = confusion_counts([severity(v) for v in t], [severity(v) for v in p], SEVERITIES)
    screening = {}
    for threshold in (5, 15, 30):
        pos, hit = t >= threshold, p >= threshold
        screening[str(threshold)] = {
            "SE": _ratio((pos & hit).sum(), pos.sum()),
            "SP": _ratio((~pos & ~hit).sum(), (~pos).sum()),
            "positives": int(pos.sum()),
        }
    return {
        "n_nights": len(t),
        "pearson_r": float(r),
        "pearson_p": float(r_p),
        "bias": bias,
        "loa_low": bias - 1.96 * sd,
        "loa_high": bias + 1.96 * sd,
        "mean_abs_error": float(np.abs(diff).mean()) if len(diff) else float("nan"),
        "severity_classes": list(SEVERITIES),
        "severity_confusion": bands.tolist(),
        "severity_agreement": _ratio(np.trace(bands), bands.sum()),
        "severity_kappa": cohen_kappa(bands),
        "screening": screening,
    }


# A metric of pooled confusion matrices: [..., C, C] counts -> [...] values (NaN where undefined).
ConfusionMetric = Callable[[np.ndarray], np.ndarray]


def confusion_accuracy(counts: np.ndarray) -> np.ndarray:
    """Share of epochs on the diagonal, per matrix of ``[..., C, C]``."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.trace(counts, axis1=-2, axis2=-1) / np.where(n > 0, n, 1.0), np.nan)


def confusion_macro_f1(counts: np.ndarray) -> np.ndarray:
    """Macro-F1 per matrix of ``[..., C, C]``, as scikit-learn's ``f1_score(average="macro",
    zero_division=0)`` scores labels: a class with no true and no predicted epochs scores 0
    (F1 = 2TP / (2TP + FP + FN))."""
    counts = np.asarray(counts, dtype=np.float64)
    tp = np.diagonal(counts, axis1=-2, axis2=-1)
    denominator = counts.sum(axis=-1) + counts.sum(axis=-2)  # 2TP + FN + FP
    f1 = np.where(denominator > 0, 2.0 * tp / np.where(denominator > 0, denominator, 1.0), 0.0)
    return np.where(counts.sum(axis=(-2, -1)) > 0, f1.mean(axis=-1), np.nan)


def confusion_kappa(counts: np.ndarray) -> np.ndarray:
    """Cohen's kappa per matrix of ``[..., C, C]``; NaN with no epochs or chance agreement 1."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum(axis=(-2, -1))
    safe = np.where(n > 0, n, 1.0)
    po = np.trace(counts, axis1=-2, axis2=-1) / safe
    pe = (counts.sum(axis=-1) * counts.sum(axis=-2)).sum(axis=-1) / (safe * safe)
    undefined = (n == 0) | np.isclose(pe, 1.0)
    return np.where(undefined, np.nan, (po - pe) / np.where(undefined, 1.0, 1.0 - pe))


def bootstrap_ci(
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    groups: Sequence[Any],
    metric: ConfusionMetric,
    classes: Sequence[Any],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile confidence interval of ``metric`` with subjects (``groups``) resampled.

    Epochs of one subject are not independent, so whole subjects are drawn with
    replacement and their epochs pooled; NaN draws (e.g. a class absent) are dropped.
    The metric reads the pooled confusion matrix, so each subject's matrix is counted once
    and a draw only sums them: a thousand draws over a cohort of thousands of nights cost
    a matrix product, where scoring each draw's pooled epochs again cost minutes.
    """
    yt, yp = _as_list(y_true, classes, "y_true"), _as_list(y_pred, classes, "y_pred")
    g = np.asarray(list(groups))
    if not len(yt) == len(yp) == len(g):
        raise ValueError("y_true, y_pred and groups need one entry per epoch")
    subjects, subject_of = np.unique(g, return_inverse=True)
    if len(subjects) < 2:
        return float("nan"), float("nan")
    index = {c: i for i, c in enumerate(classes)}
    per_subject = np.zeros((len(subjects), len(index), len(index)), dtype=np.int64)
    np.add.at(per_subject, (subject_of, [index[v] for v in yt], [index[v] for v in yp]), 1)
    rng = np.random.default_rng(seed)
    drawn = np.zeros((n_boot, len(subjects)), dtype=np.int64)  # how often each draw takes each subject
    for b in range(n_boot):  # one call per draw: the same draws as scoring each draw's epochs did
        drawn[b] = np.bincount(rng.choice(len(subjects), size=len(subjects), replace=True), minlength=len(subjects))
    values = np.asarray(metric(np.einsum("bs,sij->bij", drawn, per_subject)), dtype=np.float64)
    finite = values[np.isfinite(values)]
    if not len(finite):
        return float("nan"), float("nan")
    tail = (1.0 - level) / 2.0
    return float(np.quantile(finite, tail)), float(np.quantile(finite, 1.0 - tail))


def per_subject(
    y_true: Sequence[Any], y_pred: Sequence[Any], groups: Sequence[Any], classes: Sequence[str] = STAGES_3
) -> pd.DataFrame:
    """Accuracy, macro-F1 and kappa of each subject's own epochs (one row per subject)."""
    frame = pd.DataFrame({"true": list(y_true), "pred": list(y_pred), "subject": list(groups)})
    rows = []
    for subject, part in frame.groupby("subject", sort=True):
        counts = confusion_counts(part["true"], part["pred"], classes)
        rows.append(
            {
                "subject": subject,
                "epochs": len(part),
                "accuracy": float(confusion_accuracy(counts)),
                "macro_f1": float(confusion_macro_f1(counts)),
                "kappa": cohen_kappa(counts),
            }
        )
    return pd.DataFrame(rows, columns=["subject", "epochs", "accuracy", "macro_f1", "kappa"])
