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
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

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
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    if n == 0:
        return float("nan")
    po = np.trace(counts) / n
    pe = float((counts.sum(axis=1) * counts.sum(axis=0)).sum()) / (n * n)
    return _ratio(po - pe, 1.0 - pe) if not np.isclose(pe, 1.0) else float("nan")


def majority_class(y_train: Iterable[Any], classes: Sequence[Any] = STAGES_3) -> Any:
    """The most frequent training class (ties go to the earlier class in ``classes``)."""
    labels = _as_list(y_train, classes, "y_train")
    if not labels:
        raise ValueError("no training labels to take a majority from")
    counts = [labels.count(c) for c in classes]
    return classes[int(np.argmax(counts))]


_majority_class = majority_class  # ``evaluate``'s argument of the same name shadows it


def macro_f1(y_true: Sequence[Any], y_pred: Sequence[Any], classes: Sequence[Any]) -> float:
    """Macro-F1 over ``classes`` (a class with no true and no predicted epochs scores 0)."""
    if not len(y_true):
        return float("nan")
    return float(f1_score(list(y_true), list(y_pred), labels=list(classes), average="macro", zero_division=0))


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
        "accuracy": float(accuracy_score(yt, yp)) if yt else float("nan"),
        "kappa": cohen_kappa(counts),
        "macro_f1": macro_f1(yt, yp, labels),
        "baseline_class": majority_class,
        "baseline_from": baseline_from,
        "baseline_accuracy": float(accuracy_score(yt, baseline)) if yt else float("nan"),
        "baseline_kappa": cohen_kappa(base_counts),
        "baseline_macro_f1": macro_f1(yt, baseline, labels),
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


def bootstrap_ci(
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    groups: Sequence[Any],
    metric: Callable[[list[Any], list[Any]], float],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile confidence interval of ``metric`` with subjects (``groups``) resampled.

    Epochs of one subject are not independent, so whole subjects are drawn with
    replacement and their epochs pooled; NaN draws (e.g. a class absent) are dropped.
    """
    yt, yp, g = np.asarray(list(y_true), dtype=object), np.asarray(list(y_pred), dtype=object), np.asarray(list(groups))
    if not len(yt) == len(yp) == len(g):
        raise ValueError("y_true, y_pred and groups need one entry per epoch")
    subjects = np.unique(g)
    if len(subjects) < 2:
        return float("nan"), float("nan")
    rows = {s: np.flatnonzero(g == s) for s in subjects}
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        take = np.concatenate([rows[s] for s in rng.choice(subjects, size=len(subjects), replace=True)])
        values.append(metric(list(yt[take]), list(yp[take])))
    finite = np.asarray([v for v in values if np.isfinite(v)])
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
                "accuracy": float((part["true"] == part["pred"]).mean()),
                "macro_f1": macro_f1(list(part["true"]), list(part["pred"]), classes),
                "kappa": cohen_kappa(counts),
            }
        )
    return pd.DataFrame(rows, columns=["subject", "epochs", "accuracy", "macro_f1", "kappa"])
