"""The report's sections, each a list of HTML fragments: the run, the held-out metrics beside the
majority baseline and the paper's Table II, the other heads, figure sections, breathing and
AHI agreement, and the table of contents built from their headings.

Kept apart from ``render`` so the page's order and its parts can be read separately.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from sleepsound.report.figures import confusion_figure
from sleepsound.report.html import esc, fmt, table
from sleepsound.report.metrics import PAPER_TABLE_II, TABLE_COLUMNS
from sleepsound.report.sanity import sanity_warnings


def paper_comparison_table(per_class: pd.DataFrame, reference: str = "30-s HuBERT") -> pd.DataFrame:
    """Table II shape (rows class, columns SE SP PPV NPV) with the paper's row beneath ours."""
    paper = PAPER_TABLE_II[reference]
    rows = []
    for cls, values in per_class.iterrows():
        rows.append({"class": cls, "model": "this run", **{c: values.get(c, np.nan) for c in TABLE_COLUMNS}})
        rows.append(
            {
                "class": cls,
                "model": f"paper, {reference}",
                **{c: paper.get(str(cls), {}).get(c, np.nan) for c in TABLE_COLUMNS},
            }
        )
    return pd.DataFrame(rows).set_index("class")


# The Run table's rows in words, in this order; the rest follow in their own order.
RUN_LABELS = {
    "run_id": "run id",
    "written": "run date (report written)",
    "model_version": "3-class stage head version",
    "stage5 model": "5-class stage head version",
    "resp model": "breathing head version",
    "backbone": "backbone",
    "config_hash": "configuration hash",
    "recordings_accepted": "recordings processed",
    "recordings_quarantined": "recordings quarantined",
    "train_subjects": "training subjects",
    "test_subjects": "held-out subjects",
    "held_out_nights": "held-out nights",
}
HEAD_WORDS = {"stage3": "3-class stage head", "stage5": "5-class stage head", "resp": "breathing head"}


def run_label(key: str) -> str:
    """A Run-table key in words: known keys by name, '<head> skipped' / 'promotion <head>' by pattern."""
    if key in RUN_LABELS:
        return RUN_LABELS[key]
    words = key.replace("_", " ")
    for head, name in HEAD_WORDS.items():
        if key == f"{head} skipped":
            return f"{name}: not trained, because"
        if key == f"promotion {head}":
            return f"{name}: promotion"
        if key == f"{head} model":
            return f"{name} version"
    return words


def section_run(meta: Mapping[str, Any]) -> list[str]:
    ordered = [k for k in RUN_LABELS if k in meta] + sorted(k for k in meta if k not in RUN_LABELS)
    frame = pd.DataFrame(
        {"value": [fmt(meta[k]) for k in ordered]}, index=pd.Index([run_label(k) for k in ordered], name="run")
    )
    return ["<h2 id='run'>Run</h2>", table(frame)]


# The night summaries' columns in words (``summaries.SUMMARY_FIELDS`` and the breathing figures).
SUMMARY_LABELS = {
    "recording_id": "recording",
    "subject_id": "subject",
    "split": "split",
    "source": "stages",
    "n_epochs": "epochs",
    "n_epochs_scored": "epochs with a stage",
    "time_in_bed_min": "time in bed (min)",
    "total_sleep_time_min": "total sleep (min)",
    "sleep_efficiency": "sleep efficiency (%)",
    "sleep_onset_latency_min": "sleep onset latency (min)",
    "waso_min": "WASO (min)",
    "rem_latency_min": "REM latency (min)",
    "pct_wake": "Wake (% of staged)",
    "pct_nrem": "NREM (% of sleep)",
    "pct_rem": "REM (% of sleep)",
    "ahi": "AHI (/h)",
    "severity": "severity",
    "snore_index": "snore index (min/h)",
    "ahi_scored": "AHI scored (/h)",
    "ahi_estimated": "AHI estimated (/h)",
    "severity_scored": "severity scored",
    "severity_estimated": "severity estimated",
    "snore_index_scored": "snore index scored (min/h)",
    "snore_index_estimated": "snore index estimated (min/h)",
}


def _percent(fraction: Any) -> float | None:
    return None if fraction is None else 100.0 * float(fraction)


def section_nights(links: Sequence[Mapping[str, Any]]) -> list[str]:
    """The per-night clinical reports (HTML and PDF), one row per night."""
    parts = ["<h2 id='nights'>Night reports</h2>"]
    if not links:
        return [*parts, "<p class='muted'>No predicted nights: no night reports.</p>"]
    rows = []
    for link in links:
        rec = esc(link["recording_id"])
        rows.append(
            "<tr>"
            f"<td><a href='{esc(link['html'])}'>{rec}</a></td><td>{esc(link['subject_id'])}</td>"
            f"<td>{esc(fmt(link.get('study_date')))}</td><td>{esc(fmt(link.get('ahi'), 1))}</td>"
            f"<td>{esc(fmt(link.get('snore_index'), 1))}</td>"
            f"<td>{esc(fmt(_percent(link.get('sleep_efficiency')), 1))}</td>"
            f"<td><a href='{esc(link['pdf'])}'>PDF</a></td>"
            "</tr>"
        )
    head = "".join(
        f"<th scope='col'>{h}</th>"
        for h in (
            "recording",
            "subject",
            "study date",
            "AHI (/h)",
            "snore index (min/h)",
            "sleep efficiency (%)",
            "print",
        )
    )
    return [
        *parts,
        "<p>One clinical report per night: hypnogram on the clock, stage table, sleep measures and breathing, "
        "as a page to print and as a PDF. Figures are estimates from audio.</p>",
        f"<div class='scroll'><table><tr>{head}</tr>{''.join(rows)}</table></div>",
    ]


def section_trends(trends: pd.DataFrame | None, figures: Sequence[str]) -> list[str]:
    """AHI, snore index and sleep efficiency night after night for each subject with several nights."""
    parts = ["<h2 id='trends'>Trends across nights</h2>"]
    if trends is None or trends.empty:
        return [*parts, "<p class='muted'>No subject has more than one night in this run: no trends.</p>"]
    frame = trends.assign(sleep_efficiency=trends["sleep_efficiency"] * 100.0).set_index("subject_id")
    labels = {"subject_id": "subject", "study_date": "study date", **SUMMARY_LABELS}
    parts.append(table(frame, {"ahi": 1, "snore_index": 1, "sleep_efficiency": 1}, labels=labels))
    parts.extend(
        f"<figure>{fig}<figcaption>estimates from audio, night by night</figcaption></figure>" for fig in figures
    )
    return parts


# subject_ci keys (results.subject_intervals') and the overall table's rows they belong to.
_CI_ROWS = {
    "accuracy": "accuracy",
    "kappa": "Cohen's kappa",
    "cohen_kappa": "Cohen's kappa",
    "Cohen's kappa": "Cohen's kappa",
    "macro_f1": "macro-F1",
    "macro-F1": "macro-F1",
}
CI_COLUMN = "95% CI (subjects resampled)"
BREATHING_COLUMNS = (
    "recording_id",
    "split",
    "ahi_scored",
    "ahi_estimated",
    "severity_scored",
    "severity_estimated",
    "snore_index_scored",
    "snore_index_estimated",
)


def _ci_text(name: str, interval: Any) -> str:
    """'low – high' of one bootstrap interval; a malformed interval is refused, not shown wrong."""
    try:
        low, high = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"subject_ci[{name!r}] must be a (low, high) pair of numbers, got {interval!r}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        return "–"  # undefined (e.g. every resampled draw was NaN)
    return f"{low:.3f} – {high:.3f}"


def _overall_table(metrics: Mapping[str, Any], ci: Mapping[str, Any] | None) -> pd.DataFrame:
    """Accuracy, kappa and macro-F1 beside the majority baseline, and the subject-resampled CI if any."""
    rows = {
        "accuracy": (metrics.get("accuracy"), metrics.get("baseline_accuracy")),
        "Cohen's kappa": (metrics.get("kappa"), metrics.get("baseline_kappa", 0.0)),
        "macro-F1": (metrics.get("macro_f1"), metrics.get("baseline_macro_f1")),
    }
    intervals: dict[str, str] = {}
    for key, interval in (ci or {}).items():
        row = _CI_ROWS.get(str(key), str(key))
        if row not in rows:  # a CI of a figure the table lacks: show it with the model's value, if known
            rows[row] = (metrics.get(str(key)), float("nan"))
        intervals[row] = _ci_text(str(key), interval)
    baseline = f"majority baseline ({metrics.get('baseline_class')})"
    frame = pd.DataFrame(
        {"model": [v[0] for v in rows.values()], baseline: [v[1] for v in rows.values()]},
        index=pd.Index(list(rows), name="figure"),
    )
    if intervals:
        frame[CI_COLUMN] = [intervals.get(row, "–") for row in rows]
    return frame


def _metrics_body(
    metrics: Mapping[str, Any], *, prefix: str, reference: str | None, ci: Mapping[str, Any] | None = None
) -> list[str]:
    """Overall table, per-class SE/SP/PPV/NPV (beside the paper's row when ``reference``) and the
    confusion figure of one head's ``metrics.evaluate`` dict; ids start with ``prefix``."""
    parts = [table(_overall_table(metrics, ci), 3)]
    if ci:
        parts.append(
            "<p class='muted'>95% intervals: whole test subjects drawn with replacement, their epochs "
            "pooled (epochs of one night are not independent).</p>"
        )
    if metrics.get("baseline_from") == "held-out":
        parts.append(
            "<p class='muted'>The baseline's class is the held-out labels' own majority, which flatters it.</p>"
        )
    per_class = pd.DataFrame(metrics["per_class"]).set_index("class")
    if reference is not None:
        parts.append(
            f"<h3 id='{prefix}per-class'>Per class, one-vs-rest (the paper's Table II shape; the paper's "
            f"row is {esc(reference)} on PSG-Audio's ambient microphone, 38 test participants)</h3>"
        )
        parts.append(table(paper_comparison_table(per_class, reference)))
    else:
        support = metrics.get("support")
        by_class = per_class[[c for c in TABLE_COLUMNS if c in per_class.columns]].copy()
        if isinstance(support, Sequence) and len(support) == len(by_class):
            by_class.insert(0, "scored epochs", [int(v) for v in support])
        parts.append(f"<h3 id='{prefix}per-class'>Per class, one-vs-rest</h3>")
        parts.append(table(by_class))
    parts.append(
        "<p class='muted'>SE sensitivity, SP specificity, PPV/NPV positive/negative predictive "
        "value; – where undefined (e.g. PPV of a class never predicted).</p>"
    )
    parts.append(f"<h3 id='{prefix}confusion'>Confusion matrix</h3>")
    parts.append(
        f"<figure>{confusion_figure(metrics['confusion_normalised'], metrics['classes'])}"
        f"<figcaption>rows: scored {'stage' if reference is not None else 'class'}; each row sums to 1"
        "</figcaption></figure>"
    )
    return parts


def section_metrics(
    meta: Mapping[str, Any], metrics: Mapping[str, Any] | None, reference: str, ci: Mapping[str, Any] | None = None
) -> list[str]:
    parts = ["<h2 id='metrics'>Held-out subjects</h2>"]
    if not metrics:
        return [*parts, "<p class='muted'>No labelled held-out nights: no metrics.</p>"]
    n_subjects = meta.get("test_subjects")
    n_subjects = len(n_subjects) if isinstance(n_subjects, (list, tuple, set)) else n_subjects
    parts.append(
        f"<p>{esc(fmt(metrics.get('n_epochs')))} epochs"
        + (f" from {esc(fmt(n_subjects))} subjects the model never saw" if n_subjects is not None else "")
        + ".</p>"
    )
    warnings = sanity_warnings({**metrics, "held_out_nights": meta.get("held_out_nights")})
    parts += [f"<p class='warning' role='alert'><strong>Warning:</strong> {esc(w)}.</p>" for w in warnings]
    return parts + _metrics_body(metrics, prefix="", reference=reference, ci=ci)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "task"


def section_target(name: str, metrics: Mapping[str, Any] | None) -> list[str]:
    """One more head (stage5, resp, ...) scored like the main one, without the paper's rows."""
    slug = _slug(str(name))
    parts = [f"<h2 id='task-{esc(slug)}'>Held-out subjects: {esc(name)} head</h2>"]
    if not metrics:
        return [*parts, "<p class='muted'>No labelled held-out epochs for this head: no metrics.</p>"]
    classes = ", ".join(str(c) for c in metrics.get("classes", []))
    parts.append(f"<p>{esc(fmt(metrics.get('n_epochs')))} epochs of the held-out subjects; classes {esc(classes)}.</p>")
    return parts + _metrics_body(metrics, prefix=f"task-{esc(slug)}-", reference=None)


def section_figures(anchor: str, heading: str, figures: Sequence[str], caption: str, empty: str) -> list[str]:
    parts = [f"<h2 id='{anchor}'>{esc(heading)}</h2>"]
    if not figures:
        return [*parts, f"<p class='muted'>{esc(empty)}</p>"]
    caption_tag = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return parts + [f"<figure>{fig}{caption_tag}</figure>" for fig in figures]


def _value_table(rows: Mapping[str, Any], name: str) -> pd.DataFrame:
    """A one-column table whose cells keep their own types (so counts stay integers)."""
    index = pd.Index(list(rows), name=name)
    return pd.DataFrame({"value": pd.Series(list(rows.values()), index=index, dtype=object)}, index=index)


def _agreement_tables(ahi: Mapping[str, Any]) -> list[str]:
    parts = [
        table(
            _value_table(
                {
                    "nights": ahi.get("n_nights"),
                    "Pearson r": ahi.get("pearson_r"),
                    "Pearson p": ahi.get("pearson_p"),
                    "bias (estimate - scored)": ahi.get("bias"),
                    "95% limits of agreement, low": ahi.get("loa_low"),
                    "95% limits of agreement, high": ahi.get("loa_high"),
                    "mean absolute error": ahi.get("mean_abs_error"),
                    "severity agreement": ahi.get("severity_agreement"),
                    "severity kappa": ahi.get("severity_kappa"),
                },
                "AHI agreement",
            ),
            2,
        )
    ]
    screening = ahi.get("screening") or {}
    if screening:

        def threshold(key: Any) -> float:
            try:
                return float(key)
            except (TypeError, ValueError):
                return math.inf

        keys = sorted(screening, key=threshold)
        index = pd.Index(
            [f"AHI ≥ {threshold(k):g}" if math.isfinite(threshold(k)) else str(k) for k in keys], name="screening at"
        )
        frame = pd.DataFrame(
            {
                "SE": [screening[k].get("SE") for k in keys],
                "SP": [screening[k].get("SP") for k in keys],
                "scored positives": pd.Series([screening[k].get("positives") for k in keys], index=index, dtype=object),
            },
            index=index,
        )
        parts.append(table(frame))
    classes, counts = ahi.get("severity_classes"), ahi.get("severity_confusion")
    if classes and counts is not None:
        mat = np.asarray(counts)
        if mat.shape == (len(classes), len(classes)):
            frame = pd.DataFrame(
                mat.astype(np.int64) if np.isfinite(mat).all() else mat,
                index=pd.Index([str(c) for c in classes], name="scored \\ estimated"),
                columns=[str(c) for c in classes],
            )
            parts.append("<h3 id='ahi-severity'>Severity, scored vs estimated (nights)</h3>")
            parts.append(table(frame))
    parts.append(
        "<p class='muted'>Screening: a scored AHI at or above the threshold is a positive; SE/SP of the "
        "estimate at the same threshold. Severity: &lt; 5 normal, 5-15 mild, 15-30 moderate, "
        "≥ 30 severe.</p>"
    )
    return parts


def section_ahi(breathing: pd.DataFrame | None, ahi: Mapping[str, Any] | None, figures: Sequence[str]) -> list[str]:
    parts = ["<h2 id='ahi'>Breathing: AHI, severity and snoring</h2>"]
    has_nights = breathing is not None and not breathing.empty
    if not has_nights and ahi is None and not figures:
        return [*parts, "<p class='muted'>No scored events and no respiratory head: no breathing figures.</p>"]
    if has_nights:
        assert breathing is not None
        ordered = [c for c in BREATHING_COLUMNS if c in breathing.columns]
        frame = breathing[ordered + [c for c in breathing.columns if c not in ordered]]
        frame = frame.set_index("recording_id") if "recording_id" in frame.columns else frame
        parts.append("<h3 id='breathing'>Night by night</h3>")
        parts.append(
            table(
                frame,
                {c: 1 for c in frame.columns if str(c).startswith(("ahi", "snore_index"))},
                labels=SUMMARY_LABELS,
            )
        )
        parts.append(
            "<p class='muted'>AHI: apnoeas + hypopnoeas per hour of sleep (the estimate over predicted "
            "sleep); snore index: snoring minutes per hour of sleep.</p>"
        )
    parts.append("<h3 id='ahi-agreement'>Agreement on the held-out nights</h3>")
    if ahi is None or not ahi.get("n_nights"):
        parts.append(
            "<p class='muted'>No held-out night has both a scored and an estimated AHI: no agreement figures.</p>"
        )
    else:
        parts += _agreement_tables(ahi)
    parts.extend(f"<figure>{fig}</figure>" for fig in figures)
    return parts


def contents(body: list[str]) -> str:
    """A table of contents from the sections' <h2 id=...> headings (already escaped)."""
    links = [
        f"<li><a href='#{anchor}'>{text}</a></li>"
        for anchor, text in re.findall(r"<h2 id='([^']+)'>(.*?)</h2>", "\n".join(body))
    ]
    return f"<nav id='contents' aria-label='contents'><ul>{''.join(links)}</ul></nav>"
