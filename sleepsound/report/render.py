"""A self-contained HTML report: metrics beside the baseline and the paper, figures inline.

Figures are PNGs drawn with matplotlib's Agg canvas (no pyplot state, no display) and
embedded as base64 ``data:`` URIs, so the report is one file that can be mailed or opened
from object storage with no external assets. Every string from data is HTML-escaped.
No audio is ever included: the report takes numbers and stage labels only (the attention
view takes a Mel spectrogram the caller computed, never samples).

Clinical figures: AHI estimate vs scored (scatter with the severity bands) and Bland-Altman
agreement, the paper's attention view, and per-night event timelines. Titles built from
data are drawn with mathtext off, so a ``$`` in a recording id cannot break a figure.
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sleepsound.labels.vocabulary import EPOCH_SECONDS
from sleepsound.report.metrics import PAPER_TABLE_II, TABLE_COLUMNS, ahi_agreement

# Hypnogram rows, top to bottom: Wake on top, then REM, then NREM (the clinical convention).
STAGE_LEVEL = {"Wake": 2, "REM": 1, "NREM": 0}
FIGURE_DPI = 80
MAX_LIST_ITEMS = 20
AHI_THRESHOLDS = (5.0, 15.0, 30.0)  # clinical severity bands (method.md): normal / mild / moderate / severe
MAX_MEL_BANDS = 512  # a spectrogram has tens of bands; anything taller (or 1-D) is refused as not one
# What _png writes and nothing else: render_report embeds figures verbatim, so it accepts only this shape.
_IMG_TAG = re.compile(r'<img alt="[^"<>]*" src="data:image/png;base64,[A-Za-z0-9+/]+={0,2}">')

_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}h2{margin-top:1.6em}
.muted{color:#777}figure{margin:1em 0}figcaption{font-size:0.85em;color:#555}
nav ul{margin:0.3em 0;padding-left:1.2em}nav li{margin:0.1em 0}"""


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
    axes[0].set_title(f"{recording_id}  (epoch agreement {_fmt(agree)})", fontsize=9, parse_math=False)
    return _png(fig, f"hypnogram of {recording_id}")


def _floats(values: Any, what: str) -> np.ndarray:
    """A 1-D float array from numbers, None, NaN or pd.NA (all unknown -> NaN); anything else is refused."""
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        try:
            out = pd.to_numeric(pd.Series(list(values), dtype=object), errors="raise").to_numpy(np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{what} must hold numbers (None/NaN for unknown): {err}") from None
    if out.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {out.shape}")
    return out


def _ahi_pairs(true_ahi: Sequence[float] | np.ndarray, pred_ahi: Sequence[float] | np.ndarray,
               agreement: Mapping[str, Any] | None) -> tuple[np.ndarray, np.ndarray, Mapping[str, Any]]:
    """Nights with both AHIs known, and the agreement figures drawn from them (computed if not given)."""
    t, p = _floats(true_ahi, "true_ahi"), _floats(pred_ahi, "pred_ahi")
    if t.shape != p.shape:
        raise ValueError(f"true_ahi and pred_ahi need one value per night: {len(t)} scored, {len(p)} estimated")
    keep = np.isfinite(t) & np.isfinite(p)
    t, p = t[keep], p[keep]
    if agreement is None:
        agreement = ahi_agreement(t, p)
    elif agreement.get("n_nights") is not None and int(agreement["n_nights"]) != len(t):
        raise ValueError(f"the agreement figures describe {agreement['n_nights']} nights but {len(t)} nights "
                         "have both a scored and an estimated AHI: pass the same nights to both")
    return t, p, agreement


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777", fontsize=9)


def ahi_scatter_figure(true_ahi: Sequence[float] | np.ndarray, pred_ahi: Sequence[float] | np.ndarray,
                       agreement: Mapping[str, Any] | None = None) -> str:
    """Estimated vs scored AHI per night as an <img> tag: how far the estimate sits from the identity
    line, and whether it crosses a clinical band (5/15/30, light lines on both axes).

    Pearson r in the title comes from ``agreement`` (``metrics.ahi_agreement``'s dict) when given,
    else it is computed; nights with either AHI unknown are left out.
    """
    t, p, agreement = _ahi_pairs(true_ahi, pred_ahi, agreement)
    top = max(35.0, 1.08 * float(max(t.max(initial=0.0), p.max(initial=0.0))))
    fig = Figure(figsize=(4.2, 4.0), layout="constrained")
    ax = fig.add_subplot()
    for threshold in AHI_THRESHOLDS:
        ax.axvline(threshold, color="#d0d0d0", lw=0.8, ls="--", zorder=0)
        ax.axhline(threshold, color="#d0d0d0", lw=0.8, ls="--", zorder=0)
    ax.plot([0, top], [0, top], color="#888", lw=1.0, zorder=1, label="identity")
    ax.scatter(t, p, s=18, color="#1f4e9a", alpha=0.8, zorder=2, label="night")
    if not len(t):
        _no_data(ax, "no night with both a scored and an estimated AHI")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("scored AHI (events / h of sleep)")
    ax.set_ylabel("estimated AHI")
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_title(f"AHI per night (n = {len(t)}, Pearson r {_fmt(agreement.get('pearson_r'))})", fontsize=10)
    return _png(fig, "estimated vs scored AHI per night")


def bland_altman_figure(true_ahi: Sequence[float] | np.ndarray, pred_ahi: Sequence[float] | np.ndarray,
                        agreement: Mapping[str, Any] | None = None) -> str:
    """Bland-Altman plot of the AHI estimate as an <img> tag: mean of the two vs difference
    (estimate - scored), with the bias and 95% limits of agreement, so a systematic offset or an
    error growing with the AHI shows at a glance.

    Bias and limits come from ``agreement`` (``metrics.ahi_agreement``'s dict) when given, else
    they are computed; nights with either AHI unknown are left out.
    """
    t, p, agreement = _ahi_pairs(true_ahi, pred_ahi, agreement)
    mean, diff = (t + p) / 2.0, p - t
    fig = Figure(figsize=(4.6, 3.6), layout="constrained")
    ax = fig.add_subplot()
    ax.axhline(0.0, color="#d0d0d0", lw=0.8, zorder=0)
    ax.scatter(mean, diff, s=18, color="#1f4e9a", alpha=0.8, zorder=2)
    lines = (("bias", agreement.get("bias"), "-"), ("+1.96 SD", agreement.get("loa_high"), "--"),
             ("-1.96 SD", agreement.get("loa_low"), "--"))
    finite = [float(v) for _, v, _ in lines if v is not None and np.isfinite(float(v))]
    for label, value, style in lines:
        if value is not None and np.isfinite(float(value)):
            ax.axhline(float(value), color="#c0392b", lw=1.0, ls=style, zorder=1)
            ax.annotate(f"{label} {float(value):.1f}", (1.0, float(value)), xycoords=("axes fraction", "data"),
                        xytext=(-3, 2), textcoords="offset points", ha="right", va="bottom", fontsize=8,
                        color="#c0392b")
    if not len(t):
        _no_data(ax, "no night with both a scored and an estimated AHI")
    span = np.concatenate([diff, finite, [0.0]])
    pad = max(5.0, 0.15 * float(span.max() - span.min()))
    ax.set_ylim(float(span.min()) - pad, float(span.max()) + pad)
    ax.set_xlim(0, max(35.0, 1.08 * float(mean.max(initial=0.0))))
    ax.set_xlabel("mean of scored and estimated AHI")
    ax.set_ylabel("estimated - scored AHI")
    ax.set_title(f"Bland-Altman, AHI (n = {len(t)})", fontsize=10)
    return _png(fig, "Bland-Altman plot of the AHI estimate")


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index ranges where ``flags`` is True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def attention_figure(mel_db: np.ndarray, mel_frame_seconds: float, weights: np.ndarray, weight_seconds: float, *,
                     title: str, centre: tuple[float, float] | None = None, mask: np.ndarray | None = None) -> str:
    """The paper's attention view as an <img> tag: the input's Mel spectrogram over the head's
    frame weights on one time axis, so one can see which breaths the head listens to.

    ``mel_db``: [n_mels, n_frames] (dB), frames ``mel_frame_seconds`` apart; ``weights``: [T],
    one per ``weight_seconds`` of input. ``mask``: [T], True where the frame held real input;
    False frames (absent neighbours of a 90-s input) are shaded. ``centre``: (start, end)
    seconds of the predicted epoch, outlined. Numbers only: the caller computes the Mel
    spectrogram, and a 1-D array (raw samples) is refused.
    """
    mel = np.asarray(mel_db, dtype=np.float64)
    if mel.ndim != 2 or not 2 <= mel.shape[0] <= MAX_MEL_BANDS or mel.shape[1] < 1:
        raise ValueError(f"mel_db must be a [n_mels, n_frames] Mel spectrogram with 2 to {MAX_MEL_BANDS} bands, "
                         f"got shape {mel.shape}; the report never takes raw audio")
    w = _floats(weights, "weights")
    if not len(w):
        raise ValueError("weights must hold one attention weight per input frame, got none")
    for name, value in (("mel_frame_seconds", mel_frame_seconds), ("weight_seconds", weight_seconds)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    mel_span, span = mel.shape[1] * float(mel_frame_seconds), len(w) * float(weight_seconds)
    if abs(mel_span - span) > max(float(weight_seconds) + float(mel_frame_seconds), 0.02 * span):
        raise ValueError(f"the spectrogram covers {mel_span:.2f} s ({mel.shape[1]} frames) but the weights "
                         f"{span:.2f} s ({len(w)} frames): they must describe the same input")
    present = np.ones(len(w), dtype=bool)
    if mask is not None:
        present = np.asarray(mask).astype(bool)
        if present.shape != w.shape:
            raise ValueError(f"mask must have one entry per attention weight: {present.shape[0] if present.ndim else 0}"
                             f" given for {len(w)} weights")
    if centre is not None:
        lo, hi = (float(v) for v in centre)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi <= max(span, mel_span) + 1e-6):
            raise ValueError(f"centre must be (start, end) seconds within the input's {span:.1f} s, got {centre!r}")
    finite = np.isfinite(w)
    shaded = ~present | ~finite
    edges = np.arange(len(w) + 1) * float(weight_seconds)

    fig = Figure(figsize=(9, 3.8))
    fig.subplots_adjust(left=0.08, right=0.99, top=0.9, bottom=0.13, hspace=0.08)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2.2, 1]})
    image = np.ma.masked_invalid(mel)
    top.imshow(image, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
               extent=(0.0, mel_span, 0.0, float(mel.shape[0])))
    top.set_ylabel("Mel band", fontsize=9)
    values = np.where(finite, w, 0.0)
    bottom.stairs(values, edges, fill=True, color="#1f4e9a", alpha=0.85)
    peak = float(values.max()) if values.size and values.max() > 0 else 1.0
    bottom.set_ylim(0.0, 1.1 * peak)
    bottom.set_ylabel("attention", fontsize=9)
    bottom.set_xlabel("seconds into the input")
    bottom.set_xlim(0.0, max(span, mel_span))
    for start, stop in _runs(shaded):
        for ax in (top, bottom):
            ax.axvspan(edges[start], edges[stop], facecolor="#bbbbbb", alpha=0.55, hatch="//", edgecolor="#888",
                       lw=0, zorder=3)
    if centre is not None:
        for ax in (top, bottom):
            ax.axvspan(lo, hi, facecolor="none", edgecolor="#2ecc71", lw=1.6, zorder=4)
        top.annotate("predicted epoch", ((lo + hi) / 2.0, 1.0), xycoords=("data", "axes fraction"), xytext=(0, -4),
                     textcoords="offset points", ha="center", va="top", fontsize=8, color="#1e8449", zorder=5,
                     bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "#2ecc71", "alpha": 0.9})
    top.set_title(title + ("  (shaded: masked-out frames)" if shaded.any() else ""), fontsize=9, parse_math=False)
    return _png(fig, f"attention view: {title}")


def event_timeline_figure(recording_id: str, start_s: Sequence[float] | np.ndarray,
                          scored_events: Sequence[float | None] | np.ndarray | None,
                          predicted_prob: Sequence[float | None] | np.ndarray,
                          stages_pred: Sequence[str | None] | None = None, *,
                          epoch_seconds: float = EPOCH_SECONDS) -> str:
    """One night's breathing events as an <img> tag: scored apnoea/hypopnoea onsets per epoch
    (markers) against the model's per-epoch apnoea-hypopnoea probability (line), so one sees
    where the estimate finds events the scorer did not, and the reverse.

    ``scored_events`` may be None, or NaN per epoch, when the night has no scored events;
    unknown probabilities (invalid epochs) leave a gap. Predicted Wake (``stages_pred``) is
    shaded: those epochs do not count towards the estimated AHI.
    """
    start = _floats(start_s, "start_s")
    n = len(start)
    events = np.full(n, np.nan) if scored_events is None else _floats(scored_events, "scored_events")
    prob = _floats(predicted_prob, "predicted_prob")
    stages = list(stages_pred) if stages_pred is not None else None
    lengths = {"start_s": n, "scored_events": len(events), "predicted_prob": len(prob)}
    if stages is not None:
        lengths["stages_pred"] = len(stages)
    if len(set(lengths.values())) != 1:
        raise ValueError(f"every per-epoch input needs one value per epoch, got lengths {lengths}")
    if not np.isfinite(start).all():
        raise ValueError("start_s must be finite for every epoch")
    known = np.isfinite(prob)
    if ((prob[known] < 0) | (prob[known] > 1)).any():
        raise ValueError("predicted_prob must be probabilities in [0, 1] (NaN for unknown)")
    if (events[np.isfinite(events)] < 0).any():
        raise ValueError("scored_events cannot be negative")
    order = np.argsort(start, kind="stable")
    start, events, prob = start[order], events[order], prob[order]
    middle = (start + epoch_seconds / 2.0) / 3600.0

    fig = Figure(figsize=(9, 2.4))
    fig.subplots_adjust(left=0.08, right=0.92, top=0.86, bottom=0.2)
    ax = fig.add_subplot()
    if stages is not None:
        wake = np.array([s == "Wake" for s in stages], dtype=bool)[order]
        for first, stop in _runs(wake):
            ax.axvspan(start[first] / 3600.0, (start[stop - 1] + epoch_seconds) / 3600.0, color="#ececec", lw=0,
                       zorder=0)
    ax.plot(middle, prob, color="#1f4e9a", lw=0.9, zorder=2)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("P(apnoea/hypopnoea)", fontsize=8)
    ax.set_xlabel("hours from the start of the recording")
    if n:
        ax.set_xlim(start[0] / 3600.0, (start[-1] + epoch_seconds) / 3600.0)
    twin = ax.twinx()
    has = np.isfinite(events) & (events > 0)
    twin.plot(middle[has], events[has], ls="none", marker="v", ms=4, color="#c0392b", zorder=3)
    twin.set_ylim(0.0, 1.15 * max(1.0, float(events[has].max()) if has.any() else 1.0))
    twin.set_ylabel("scored events", fontsize=8, color="#c0392b")
    if not np.isfinite(events).any():
        scored_text = "no scored events"
    else:
        scored_text = f"{_fmt(float(np.nansum(events)), 0)} scored apnoea/hypopnoea onsets"
    if not n:
        _no_data(ax, "no epochs")
    shade = "; shaded: predicted Wake" if stages is not None else ""
    ax.set_title(f"{recording_id}  ({scored_text}; line: model probability{shade})", fontsize=9, parse_math=False)
    return _png(fig, f"breathing event timeline of {recording_id}")


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


# subject_ci keys (results.subject_intervals') and the overall table's rows they belong to.
_CI_ROWS = {"accuracy": "accuracy", "kappa": "Cohen's kappa", "cohen_kappa": "Cohen's kappa",
            "Cohen's kappa": "Cohen's kappa", "macro_f1": "macro-F1", "macro-F1": "macro-F1"}
CI_COLUMN = "95% CI (subjects resampled)"
BREATHING_COLUMNS = ("recording_id", "split", "ahi_scored", "ahi_estimated", "severity_scored", "severity_estimated",
                     "snore_index_scored", "snore_index_estimated")


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
    rows = {"accuracy": (metrics.get("accuracy"), metrics.get("baseline_accuracy")),
            "Cohen's kappa": (metrics.get("kappa"), metrics.get("baseline_kappa", 0.0)),
            "macro-F1": (metrics.get("macro_f1"), metrics.get("baseline_macro_f1"))}
    intervals: dict[str, str] = {}
    for key, interval in (ci or {}).items():
        row = _CI_ROWS.get(str(key), str(key))
        if row not in rows:  # a CI of a figure the table lacks: show it with the model's value, if known
            rows[row] = (metrics.get(str(key)), float("nan"))
        intervals[row] = _ci_text(str(key), interval)
    baseline = f"majority baseline ({metrics.get('baseline_class')})"
    frame = pd.DataFrame({"model": [v[0] for v in rows.values()], baseline: [v[1] for v in rows.values()]},
                         index=pd.Index(list(rows), name="figure"))
    if intervals:
        frame[CI_COLUMN] = [intervals.get(row, "–") for row in rows]
    return frame


def _metrics_body(metrics: Mapping[str, Any], *, prefix: str, reference: str | None,
                  ci: Mapping[str, Any] | None = None) -> list[str]:
    """Overall table, per-class SE/SP/PPV/NPV (beside the paper's row when ``reference``) and the
    confusion figure of one head's ``metrics.evaluate`` dict; ids start with ``prefix``."""
    parts = [_table(_overall_table(metrics, ci), 3)]
    if ci:
        parts.append("<p class='muted'>95% intervals: whole test subjects drawn with replacement, their epochs "
                     "pooled (epochs of one night are not independent).</p>")
    if metrics.get("baseline_from") == "held-out":
        parts.append("<p class='muted'>The baseline's class is the held-out labels' own majority, which flatters "
                     "it.</p>")
    per_class = pd.DataFrame(metrics["per_class"]).set_index("class")
    if reference is not None:
        parts.append(f"<h3 id='{prefix}per-class'>Per class, one-vs-rest (the paper's Table II shape; the paper's "
                     f"row is {_esc(reference)} on PSG-Audio's ambient microphone, 38 test participants)</h3>")
        parts.append(_table(paper_comparison_table(per_class, reference)))
    else:
        support = metrics.get("support")
        table = per_class[[c for c in TABLE_COLUMNS if c in per_class.columns]].copy()
        if isinstance(support, Sequence) and len(support) == len(table):
            table.insert(0, "scored epochs", [int(v) for v in support])
        parts.append(f"<h3 id='{prefix}per-class'>Per class, one-vs-rest</h3>")
        parts.append(_table(table))
    parts.append("<p class='muted'>SE sensitivity, SP specificity, PPV/NPV positive/negative predictive "
                 "value; – where undefined (e.g. PPV of a class never predicted).</p>")
    parts.append(f"<h3 id='{prefix}confusion'>Confusion matrix</h3>")
    parts.append(f"<figure>{confusion_figure(metrics['confusion_normalised'], metrics['classes'])}"
                 f"<figcaption>rows: scored {'stage' if reference is not None else 'class'}; each row sums to 1"
                 "</figcaption></figure>")
    return parts


def _section_metrics(meta: Mapping[str, Any], metrics: Mapping[str, Any] | None, reference: str,
                     ci: Mapping[str, Any] | None = None) -> list[str]:
    parts = ["<h2 id='metrics'>Held-out subjects</h2>"]
    if not metrics:
        return [*parts, "<p class='muted'>No labelled held-out nights: no metrics.</p>"]
    n_subjects = meta.get("test_subjects")
    n_subjects = len(n_subjects) if isinstance(n_subjects, (list, tuple, set)) else n_subjects
    parts.append(f"<p>{_esc(_fmt(metrics.get('n_epochs')))} epochs"
                 + (f" from {_esc(_fmt(n_subjects))} subjects the model never saw" if n_subjects is not None else "")
                 + ".</p>")
    return parts + _metrics_body(metrics, prefix="", reference=reference, ci=ci)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "task"


def _section_task(name: str, metrics: Mapping[str, Any] | None) -> list[str]:
    """One more head (stage5, resp, ...) scored like the main one, without the paper's rows."""
    slug = _slug(str(name))
    parts = [f"<h2 id='task-{_esc(slug)}'>Held-out subjects: {_esc(name)} head</h2>"]
    if not metrics:
        return [*parts, "<p class='muted'>No labelled held-out epochs for this head: no metrics.</p>"]
    classes = ", ".join(str(c) for c in metrics.get("classes", []))
    parts.append(f"<p>{_esc(_fmt(metrics.get('n_epochs')))} epochs of the held-out subjects; classes "
                 f"{_esc(classes)}.</p>")
    return parts + _metrics_body(metrics, prefix=f"task-{_esc(slug)}-", reference=None)


def _figures(items: Iterable[str], what: str, source: str) -> list[str]:
    """The <img> tags as this module draws them; anything else would be embedded unescaped, so it is refused."""
    if isinstance(items, str):
        raise ValueError(f"{what} must be a list of <img> tags from {source}, not a single string")
    figures = list(items)
    for fig in figures:
        if not isinstance(fig, str) or not _IMG_TAG.fullmatch(fig):
            raise ValueError(f"{what} must be <img> data-URI tags from {source}")
    return figures


def _section_figures(anchor: str, heading: str, figures: list[str], caption: str, empty: str) -> list[str]:
    parts = [f"<h2 id='{anchor}'>{_esc(heading)}</h2>"]
    if not figures:
        return [*parts, f"<p class='muted'>{_esc(empty)}</p>"]
    caption_tag = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return parts + [f"<figure>{fig}{caption_tag}</figure>" for fig in figures]


def _value_table(rows: Mapping[str, Any], name: str) -> pd.DataFrame:
    """A one-column table whose cells keep their own types (so counts stay integers)."""
    index = pd.Index(list(rows), name=name)
    return pd.DataFrame({"value": pd.Series(list(rows.values()), index=index, dtype=object)}, index=index)


def _agreement_tables(ahi: Mapping[str, Any]) -> list[str]:
    parts = [_table(_value_table({
        "nights": ahi.get("n_nights"), "Pearson r": ahi.get("pearson_r"), "Pearson p": ahi.get("pearson_p"),
        "bias (estimate - scored)": ahi.get("bias"), "95% limits of agreement, low": ahi.get("loa_low"),
        "95% limits of agreement, high": ahi.get("loa_high"), "mean absolute error": ahi.get("mean_abs_error"),
        "severity agreement": ahi.get("severity_agreement"), "severity kappa": ahi.get("severity_kappa"),
    }, "AHI agreement"), 2)]
    screening = ahi.get("screening") or {}
    if screening:
        def threshold(key: Any) -> float:
            try:
                return float(key)
            except (TypeError, ValueError):
                return math.inf
        keys = sorted(screening, key=threshold)
        index = pd.Index([f"AHI ≥ {threshold(k):g}" if math.isfinite(threshold(k)) else str(k) for k in keys],
                         name="screening at")
        frame = pd.DataFrame({
            "SE": [screening[k].get("SE") for k in keys], "SP": [screening[k].get("SP") for k in keys],
            "scored positives": pd.Series([screening[k].get("positives") for k in keys], index=index, dtype=object)},
            index=index)
        parts.append(_table(frame))
    classes, counts = ahi.get("severity_classes"), ahi.get("severity_confusion")
    if classes and counts is not None:
        mat = np.asarray(counts)
        if mat.shape == (len(classes), len(classes)):
            frame = pd.DataFrame(mat.astype(np.int64) if np.isfinite(mat).all() else mat,
                                 index=pd.Index([str(c) for c in classes], name="scored \\ estimated"),
                                 columns=[str(c) for c in classes])
            parts.append("<h3 id='ahi-severity'>Severity, scored vs estimated (nights)</h3>")
            parts.append(_table(frame))
    parts.append("<p class='muted'>Screening: a scored AHI at or above the threshold is a positive; SE/SP of the "
                 "estimate at the same threshold. Severity: &lt; 5 normal, 5-15 mild, 15-30 moderate, "
                 "≥ 30 severe.</p>")
    return parts


def _section_ahi(breathing: pd.DataFrame | None, ahi: Mapping[str, Any] | None, figures: list[str]) -> list[str]:
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
        parts.append(_table(frame, {c: 1 for c in frame.columns if str(c).startswith(("ahi", "snore_index"))}))
        parts.append("<p class='muted'>AHI: apnoeas + hypopnoeas per hour of sleep (the estimate over predicted "
                     "sleep); snore index: snoring minutes per hour of sleep.</p>")
    parts.append("<h3 id='ahi-agreement'>Agreement on the held-out nights</h3>")
    if ahi is None or not ahi.get("n_nights"):
        parts.append("<p class='muted'>No held-out night has both a scored and an estimated AHI: no agreement "
                     "figures.</p>")
    else:
        parts += _agreement_tables(ahi)
    parts.extend(f"<figure>{fig}</figure>" for fig in figures)
    return parts


def _contents(body: list[str]) -> str:
    """A table of contents from the sections' <h2 id=...> headings (already escaped)."""
    links = [f"<li><a href='#{anchor}'>{text}</a></li>"
             for anchor, text in re.findall(r"<h2 id='([^']+)'>(.*?)</h2>", "\n".join(body))]
    return f"<nav id='contents' aria-label='contents'><ul>{''.join(links)}</ul></nav>"


def render_report(meta: Mapping[str, Any], metrics: Mapping[str, Any] | None = None,
                  summaries: pd.DataFrame | None = None, hypnograms: Iterable[str] = (),
                  quarantined: Iterable[Mapping[str, Any]] = (), *, reference: str = "30-s HuBERT",
                  task_metrics: Mapping[str, Mapping[str, Any] | None] | None = None,
                  subject_ci: Mapping[str, tuple[float, float]] | None = None,
                  breathing: pd.DataFrame | None = None, ahi: Mapping[str, Any] | None = None,
                  ahi_figures: Iterable[str] = (), attention_views: Iterable[str] = (),
                  event_timelines: Iterable[str] = ()) -> str:
    """The run's report as one self-contained HTML string.

    ``meta``: run id, model version, backbone, recordings_accepted / recordings_quarantined,
    test_subjects and anything else worth showing. ``metrics``: ``metrics.evaluate``'s
    dict (None when there are no labelled held-out nights). ``summaries``: one row per
    night (``summaries.summarise_nights`` or the like; a ``recording_id`` column).
    ``hypnograms``: <img> tags from ``hypnogram_figure``. ``quarantined``: records with
    recording_id, reason_code, reason. ``reference``: the Table II row shown beside ours.

    Keyword-only extras (all optional): ``task_metrics``: task name -> ``metrics.evaluate``
    dict of another head (section ``#task-<name>``); ``subject_ci``: figure (accuracy,
    kappa, macro_f1) -> subject-resampled 95% interval, a column of the main table;
    ``breathing``: one row per night of scored/estimated AHI, severity and snore index;
    ``ahi``: ``metrics.ahi_agreement``'s dict; ``ahi_figures``: tags from
    ``ahi_scatter_figure`` / ``bland_altman_figure`` (``#ahi``); ``attention_views``: tags
    from ``attention_figure`` (``#attention``); ``event_timelines``: tags from
    ``event_timeline_figure`` (``#events``).
    """
    if reference not in PAPER_TABLE_II:
        raise ValueError(f"unknown reference {reference!r}; known: {sorted(PAPER_TABLE_II)}")
    if breathing is not None and not isinstance(breathing, pd.DataFrame):
        raise ValueError("breathing must be a pandas DataFrame with one row per night")
    hypnogram_tags = _figures(hypnograms, "hypnograms", "hypnogram_figure")
    ahi_tags = _figures(ahi_figures, "ahi_figures", "ahi_scatter_figure / bland_altman_figure")
    attention_tags = _figures(attention_views, "attention_views", "attention_figure")
    timeline_tags = _figures(event_timelines, "event_timelines", "event_timeline_figure")
    title = f"sleepsound run {_fmt(meta.get('run_id'))}"

    body = _section_run(meta)
    body += _section_metrics(meta, metrics, reference, subject_ci)
    for name, task_result in (task_metrics or {}).items():
        body += _section_task(str(name), task_result)

    body += _section_figures("hypnograms", "Hypnograms (held-out nights)", hypnogram_tags, "", "none")
    body += _section_figures(
        "attention", "Attention view (held-out epochs)", attention_tags,
        "top: log-Mel spectrogram of the head's input; bottom: the head's attention weight per frame; "
        "green outline: the predicted epoch; shaded: masked-out frames (absent neighbours)",
        "No attention weights to show (no attention head, or no example epochs).")
    body += _section_ahi(breathing, ahi, ahi_tags)
    body += _section_figures(
        "events", "Breathing events, night by night", timeline_tags,
        "markers: scored apnoea/hypopnoea onsets per epoch; line: the model's apnoea-hypopnoea probability",
        "No respiratory head: no event timelines.")

    body.append("<h2 id='nights'>Night summaries</h2>")
    if summaries is not None and not summaries.empty:
        frame = summaries.set_index("recording_id") if "recording_id" in summaries.columns else summaries
        body.append(_table(frame, {"sleep_efficiency": 2, "pct_wake": 1, "pct_nrem": 1, "pct_rem": 1}
                           | {c: 1 for c in frame.columns if str(c).endswith("_min")}))
        body.append("<p class='muted'>minutes unless marked; sleep efficiency = TST / time in bed; "
                    "WASO runs from sleep onset to the end of the recording; REM latency from sleep "
                    "onset; NREM/REM % of total sleep time.</p>")
    else:
        body.append("<p class='muted'>none</p>")

    body.append("<h2 id='quarantined'>Quarantined recordings</h2>")
    q = pd.DataFrame(list(quarantined))
    if not q.empty:
        body.append(_table(q.set_index("recording_id") if "recording_id" in q.columns else q))
    else:
        body.append("<p class='muted'>none</p>")
    parts = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>", f"<h1>{_esc(title)}</h1>",
             _contents(body), *body, "</body></html>"]
    return "\n".join(parts)
