"""A self-contained HTML report: metrics beside the baseline and the paper, figures inline.

Figures are PNGs drawn with matplotlib's Agg canvas (no pyplot state, no display) and
embedded as base64 ``data:`` URIs, so the report is one file that can be mailed or opened
from object storage with no external assets. Every string from data is HTML-escaped.
No audio is ever included: the report takes numbers and stage labels only.
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sleepsound.labels import EPOCH_SECONDS
from sleepsound.metrics import PAPER_TABLE_II, TABLE_COLUMNS

# Hypnogram rows, top to bottom: Wake on top, then REM, then NREM (the clinical convention).
STAGE_LEVEL = {"Wake": 2, "REM": 1, "NREM": 0}
FIGURE_DPI = 80
MAX_LIST_ITEMS = 20

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}h2{margin-top:1.6em}
.muted{color:#777}figure{margin:1em 0}figcaption{font-size:0.85em;color:#555}"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any, digits: int = 2) -> str:
    """A table cell's text (not yet escaped): numbers rounded, NaN/None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes omitted>"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return "–" if math.isnan(float(value)) else f"{float(value):.{digits}f}"
    if isinstance(value, (list, tuple, set, frozenset, np.ndarray)):
        items = [_fmt(v, digits) for v in list(value)]
        more = f", … ({len(items)} in all)" if len(items) > MAX_LIST_ITEMS else ""
        return ", ".join(items[:MAX_LIST_ITEMS]) + more
    try:
        if pd.isna(value):
            return "–"
    except (TypeError, ValueError):
        pass
    return str(value)


def _table(frame: pd.DataFrame, digits: int | Mapping[str, int] = 2, index: bool = True) -> str:
    """An escaped HTML table; ``digits`` per column name or for all."""
    def places(col: Any) -> int:
        return digits.get(str(col), 2) if isinstance(digits, Mapping) else digits

    names = ([frame.index.name or ""] if index else []) + [str(c) for c in frame.columns]
    head = "".join(f"<th>{_esc(c)}</th>" for c in names)
    rows = []
    columns = list(frame.columns)
    for idx, *values in frame.itertuples(index=True, name=None):  # per-column dtypes survive (ints stay ints)
        cells = [f"<td>{_esc(_fmt(idx))}</td>"] if index else []
        cells += [f"<td>{_esc(_fmt(v, places(c)))}</td>" for c, v in zip(columns, values, strict=True)]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _png(fig: Figure, alt: str) -> str:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def confusion_figure(normalised: Sequence[Sequence[float]], classes: Sequence[str]) -> str:
    """Row-normalised confusion matrix (rows true, columns predicted) as an <img> tag."""
    mat = np.asarray(normalised, dtype=float)
    fig = Figure(figsize=(3.8, 3.3), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(np.ma.masked_invalid(mat), cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            value = mat[i, j]
            text = "–" if np.isnan(value) else f"{value:.2f}"
            ax.text(j, i, text, ha="center", va="center", color="white" if value > 0.6 else "black")
    ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (scored)")
    ax.set_title("row-normalised confusion", fontsize=10)
    return _png(fig, "row-normalised confusion matrix")


def _levels(stages: Sequence[str | None]) -> np.ndarray:
    return np.array([STAGE_LEVEL.get(s, np.nan) if isinstance(s, str) else np.nan for s in stages], dtype=float)


def hypnogram_figure(recording_id: str, start_s: Sequence[float] | np.ndarray, true: Sequence[str | None],
                     pred: Sequence[str | None], epoch_seconds: float = EPOCH_SECONDS) -> str:
    """Scored (top) and predicted (bottom) hypnograms of one night as an <img> tag.

    Step plots, Wake on top; epochs of unknown stage leave a gap.
    """
    start = np.asarray(start_s, dtype=float)
    if not (len(start) == len(true) == len(pred)):
        raise ValueError("start_s, true and pred must have one entry per epoch")
    order = np.argsort(start, kind="stable")
    hours = np.append(start[order], start[order][-1] + epoch_seconds if len(start) else 0.0) / 3600.0
    fig = Figure(figsize=(9, 2.6))
    fig.subplots_adjust(left=0.09, right=0.99, top=0.88, bottom=0.17, hspace=0.12)
    axes = fig.subplots(2, 1, sharex=True)
    t_levels, p_levels = _levels(true)[order], _levels(pred)[order]
    for ax, levels, label in ((axes[0], t_levels, "scored"), (axes[1], p_levels, "predicted")):
        ax.step(hours, np.append(levels, levels[-1:] if len(levels) else []), where="post", lw=1.0,
                color="#1f4e9a")
        ax.set_yticks([0, 1, 2], ["NREM", "REM", "Wake"])
        ax.set_ylim(-0.4, 2.4)
        ax.set_ylabel(label, fontsize=9)
    both = ~np.isnan(t_levels) & ~np.isnan(p_levels)
    agree = float((t_levels[both] == p_levels[both]).mean()) if both.any() else float("nan")
    axes[1].set_xlabel("hours from the start of the recording")
    axes[0].set_title(f"{recording_id}  (epoch agreement {_fmt(agree)})", fontsize=9)
    return _png(fig, f"hypnogram of {recording_id}")


def paper_comparison_table(per_class: pd.DataFrame, reference: str = "30-s HuBERT") -> pd.DataFrame:
    """Table II shape (rows class, columns SE SP PPV NPV) with the paper's row beneath ours."""
    paper = PAPER_TABLE_II[reference]
    rows = []
    for cls, values in per_class.iterrows():
        rows.append({"class": cls, "model": "this run", **{c: values.get(c, np.nan) for c in TABLE_COLUMNS}})
        rows.append({"class": cls, "model": f"paper, {reference}",
                     **{c: paper.get(str(cls), {}).get(c, np.nan) for c in TABLE_COLUMNS}})
    return pd.DataFrame(rows).set_index("class")


def _section_run(meta: Mapping[str, Any]) -> list[str]:
    keys = {"run_id": "run id", "model_version": "model version", "backbone": "backbone",
            "recordings_accepted": "recordings processed", "recordings_quarantined": "recordings quarantined"}
    ordered = [k for k in keys if k in meta] + [k for k in meta if k not in keys]
    frame = pd.DataFrame({"value": [_fmt(meta[k]) for k in ordered]},
                         index=pd.Index([keys.get(k, k) for k in ordered], name="run"))
    return ["<h2 id='run'>Run</h2>", _table(frame)]


def _section_metrics(meta: Mapping[str, Any], metrics: Mapping[str, Any] | None, reference: str) -> list[str]:
    parts = ["<h2 id='metrics'>Held-out subjects</h2>"]
    if not metrics:
        return [*parts, "<p class='muted'>No labelled held-out nights: no metrics.</p>"]
    n_subjects = meta.get("test_subjects")
    n_subjects = len(n_subjects) if isinstance(n_subjects, (list, tuple, set)) else n_subjects
    parts.append(f"<p>{_esc(_fmt(metrics.get('n_epochs')))} epochs"
                 + (f" from {_esc(_fmt(n_subjects))} subjects the model never saw" if n_subjects is not None else "")
                 + ".</p>")
    baseline = f"majority baseline ({metrics.get('baseline_class')})"
    overall = pd.DataFrame({
        "model": [metrics.get("accuracy"), metrics.get("kappa"), metrics.get("macro_f1")],
        baseline: [metrics.get("baseline_accuracy"), metrics.get("baseline_kappa", 0.0),
                   metrics.get("baseline_macro_f1")],
    }, index=pd.Index(["accuracy", "Cohen's kappa", "macro-F1"], name="figure"))
    parts.append(_table(overall, 3))
    per_class = pd.DataFrame(metrics["per_class"]).set_index("class")
    parts.append(f"<h3 id='per-class'>Per class, one-vs-rest (the paper's Table II shape; the paper's row is "
                 f"{_esc(reference)} on PSG-Audio's ambient microphone, 38 test participants)</h3>")
    parts.append(_table(paper_comparison_table(per_class, reference)))
    parts.append("<p class='muted'>SE sensitivity, SP specificity, PPV/NPV positive/negative predictive "
                 "value; – where undefined (e.g. PPV of a class never predicted).</p>")
    parts.append("<h3 id='confusion'>Confusion matrix</h3>")
    parts.append(f"<figure>{confusion_figure(metrics['confusion_normalised'], metrics['classes'])}"
                 "<figcaption>rows: scored stage; each row sums to 1</figcaption></figure>")
    return parts


def render_report(meta: Mapping[str, Any], metrics: Mapping[str, Any] | None = None,
                  summaries: pd.DataFrame | None = None, hypnograms: Iterable[str] = (),
                  quarantined: Iterable[Mapping[str, Any]] = (), *, reference: str = "30-s HuBERT") -> str:
    """The run's report as one self-contained HTML string.

    ``meta``: run id, model version, backbone, recordings_accepted / recordings_quarantined,
    test_subjects and anything else worth showing. ``metrics``: ``metrics.evaluate``'s
    dict (None when there are no labelled held-out nights). ``summaries``: one row per
    night (``summaries.summarise_nights`` or the like; a ``recording_id`` column).
    ``hypnograms``: <img> tags from ``hypnogram_figure``. ``quarantined``: records with
    recording_id, reason_code, reason. ``reference``: the Table II row shown beside ours.
    """
    if reference not in PAPER_TABLE_II:
        raise ValueError(f"unknown reference {reference!r}; known: {sorted(PAPER_TABLE_II)}")
    title = f"sleepsound run {_fmt(meta.get('run_id'))}"
    parts = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>", f"<h1>{_esc(title)}</h1>"]
    parts += _section_run(meta)
    parts += _section_metrics(meta, metrics, reference)

    parts.append("<h2 id='hypnograms'>Hypnograms (held-out nights)</h2>")
    figures = [h for h in hypnograms]
    for fig in figures:
        if not fig.startswith("<img ") or 'src="data:image/png;base64,' not in fig:
            raise ValueError("hypnograms must be <img> tags from hypnogram_figure")
    parts.extend(f"<figure>{fig}</figure>" for fig in figures)
    if not figures:
        parts.append("<p class='muted'>none</p>")

    parts.append("<h2 id='nights'>Night summaries</h2>")
    if summaries is not None and not summaries.empty:
        frame = summaries.set_index("recording_id") if "recording_id" in summaries.columns else summaries
        parts.append(_table(frame, {"sleep_efficiency": 2, "pct_wake": 1, "pct_nrem": 1, "pct_rem": 1}
                            | {c: 1 for c in frame.columns if str(c).endswith("_min")}))
        parts.append("<p class='muted'>minutes unless marked; sleep efficiency = TST / time in bed; "
                     "WASO runs from sleep onset to the end of the recording; REM latency from sleep "
                     "onset; NREM/REM % of total sleep time.</p>")
    else:
        parts.append("<p class='muted'>none</p>")

    parts.append("<h2 id='quarantined'>Quarantined recordings</h2>")
    q = pd.DataFrame(list(quarantined))
    if not q.empty:
        parts.append(_table(q.set_index("recording_id") if "recording_id" in q.columns else q))
    else:
        parts.append("<p class='muted'>none</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
