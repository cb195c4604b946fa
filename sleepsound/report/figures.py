"""The report's figures, each returned as an ``<img>`` tag with the PNG inline.

Figures are PNGs drawn with matplotlib's Agg canvas (no pyplot state, no display) and
embedded as base64 ``data:`` URIs, so the report needs no external assets. No audio is
ever drawn: the figures take numbers and stage labels only (the attention view takes a Mel
spectrogram the caller computed, never samples).

Clinical figures: AHI estimate vs scored (scatter with the severity bands) and Bland-Altman
agreement, the paper's attention view, and per-night event timelines. Titles built from
data are drawn with mathtext off, so a ``$`` in a recording id cannot break a figure.
"""

from __future__ import annotations

import base64
import functools
import io
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sleepsound.labels.vocabulary import EPOCH_SECONDS
from sleepsound.report.html import esc, fmt
from sleepsound.report.metrics import ahi_agreement

# Hypnogram rows, top to bottom: Wake on top, then REM, then NREM (the clinical convention).
STAGE_LEVEL = {"Wake": 2, "REM": 1, "NREM": 0}
FIGURE_DPI = 100
# Font sizes (points) every figure is drawn with: at 100 dpi a 10-pt tick label is about 14 px, readable
# where the page shows the figure at its own size (the old 7-9 pt titles at 80 dpi were 8-10 px).
READABLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 13,
}
_P = ParamSpec("_P")
_R = TypeVar("_R")


def readable(draw: Callable[_P, _R]) -> Callable[_P, _R]:
    """Draw with the ``READABLE`` font sizes (matplotlib reads them when an artist is made)."""

    @functools.wraps(draw)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with rc_context(READABLE):
            return draw(*args, **kwargs)

    return wrapper


AHI_THRESHOLDS = (5.0, 15.0, 30.0)  # clinical severity bands (method.md): normal / mild / moderate / severe
MAX_MEL_BANDS = 512  # a spectrogram has tens of bands; anything taller (or 1-D) is refused as not one


def _png(fig: Figure, alt: str) -> str:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


# Class names as the axes show them: long snake_case names wrap instead of running into their neighbours.
CLASS_LABELS = {"apnea_hypopnea": "apnoea/\nhypopnoea", "none": "none", "snore": "snore"}


@readable
def confusion_figure(normalised: Sequence[Sequence[float]], classes: Sequence[str]) -> str:
    """Row-normalised confusion matrix (rows true, columns predicted) as an <img> tag.

    The figure grows with the number of classes so the cell values and labels never overlap.
    """
    mat = np.asarray(normalised, dtype=float)
    n = len(classes)
    side = max(4.2, 0.95 * n + 2.2)
    fig = Figure(figsize=(side, side * 0.9), layout="constrained")
    ax = fig.add_subplot()
    ax.imshow(np.ma.masked_invalid(mat), cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            value = mat[i, j]
            text = "–" if np.isnan(value) else f"{value:.2f}"
            ax.text(j, i, text, ha="center", va="center", color="white" if value > 0.6 else "black")
    labels = [CLASS_LABELS.get(str(c), str(c)) for c in classes]
    ax.set_xticks(range(n), labels)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (scored)")
    ax.set_title("row-normalised confusion")
    return _png(fig, "row-normalised confusion matrix")


def _levels(stages: Sequence[str | None]) -> np.ndarray:
    return np.array([STAGE_LEVEL.get(s, np.nan) if isinstance(s, str) else np.nan for s in stages], dtype=float)


@readable
def hypnogram_figure(
    recording_id: str,
    start_s: Sequence[float] | np.ndarray,
    true: Sequence[str | None],
    pred: Sequence[str | None],
    epoch_seconds: float = EPOCH_SECONDS,
) -> str:
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
        ax.step(hours, np.append(levels, levels[-1:] if len(levels) else []), where="post", lw=1.0, color="#1f4e9a")
        ax.set_yticks([0, 1, 2], ["NREM", "REM", "Wake"])
        ax.set_ylim(-0.4, 2.4)
        ax.set_ylabel(label)
    both = ~np.isnan(t_levels) & ~np.isnan(p_levels)
    agree = float((t_levels[both] == p_levels[both]).mean()) if both.any() else float("nan")
    axes[1].set_xlabel("hours from the start of the recording")
    axes[0].set_title(f"{recording_id}  (epoch agreement {fmt(agree)})", parse_math=False)
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


def _ahi_pairs(
    true_ahi: Sequence[float] | np.ndarray, pred_ahi: Sequence[float] | np.ndarray, agreement: Mapping[str, Any] | None
) -> tuple[np.ndarray, np.ndarray, Mapping[str, Any]]:
    """Nights with both AHIs known, and the agreement figures drawn from them (computed if not given)."""
    t, p = _floats(true_ahi, "true_ahi"), _floats(pred_ahi, "pred_ahi")
    if t.shape != p.shape:
        raise ValueError(f"true_ahi and pred_ahi need one value per night: {len(t)} scored, {len(p)} estimated")
    keep = np.isfinite(t) & np.isfinite(p)
    t, p = t[keep], p[keep]
    if agreement is None:
        agreement = ahi_agreement(t, p)
    elif agreement.get("n_nights") is not None and int(agreement["n_nights"]) != len(t):
        raise ValueError(
            f"the agreement figures describe {agreement['n_nights']} nights but {len(t)} nights "
            "have both a scored and an estimated AHI: pass the same nights to both"
        )
    return t, p, agreement


def _no_data(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#777")


@readable
def ahi_scatter_figure(
    true_ahi: Sequence[float] | np.ndarray,
    pred_ahi: Sequence[float] | np.ndarray,
    agreement: Mapping[str, Any] | None = None,
) -> str:
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
    ax.legend(loc="upper left", frameon=False)
    ax.set_title(f"AHI per night (n = {len(t)}, Pearson r {fmt(agreement.get('pearson_r'))})")
    return _png(fig, "estimated vs scored AHI per night")


@readable
def bland_altman_figure(
    true_ahi: Sequence[float] | np.ndarray,
    pred_ahi: Sequence[float] | np.ndarray,
    agreement: Mapping[str, Any] | None = None,
) -> str:
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
    lines = (
        ("bias", agreement.get("bias"), "-"),
        ("+1.96 SD", agreement.get("loa_high"), "--"),
        ("-1.96 SD", agreement.get("loa_low"), "--"),
    )
    finite = [float(v) for _, v, _ in lines if v is not None and np.isfinite(float(v))]
    for label, value, style in lines:
        if value is not None and np.isfinite(float(value)):
            ax.axhline(float(value), color="#c0392b", lw=1.0, ls=style, zorder=1)
            ax.annotate(
                f"{label} {float(value):.1f}",
                (1.0, float(value)),
                xycoords=("axes fraction", "data"),
                xytext=(-3, 2),
                textcoords="offset points",
                ha="right",
                va="bottom",
                color="#c0392b",
            )
    if not len(t):
        _no_data(ax, "no night with both a scored and an estimated AHI")
    span = np.concatenate([diff, finite, [0.0]])
    pad = max(5.0, 0.15 * float(span.max() - span.min()))
    ax.set_ylim(float(span.min()) - pad, float(span.max()) + pad)
    ax.set_xlim(0, max(35.0, 1.08 * float(mean.max(initial=0.0))))
    ax.set_xlabel("mean of scored and estimated AHI")
    ax.set_ylabel("estimated - scored AHI")
    ax.set_title(f"Bland-Altman, AHI (n = {len(t)})")
    return _png(fig, "Bland-Altman plot of the AHI estimate")


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index ranges where ``flags`` is True."""
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


@readable
def attention_figure(
    mel_db: np.ndarray,
    mel_frame_seconds: float,
    weights: np.ndarray,
    weight_seconds: float,
    *,
    title: str,
    centre: tuple[float, float] | None = None,
    mask: np.ndarray | None = None,
) -> str:
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
        raise ValueError(
            f"mel_db must be a [n_mels, n_frames] Mel spectrogram with 2 to {MAX_MEL_BANDS} bands, "
            f"got shape {mel.shape}; the report never takes raw audio"
        )
    w = _floats(weights, "weights")
    if not len(w):
        raise ValueError("weights must hold one attention weight per input frame, got none")
    for name, value in (("mel_frame_seconds", mel_frame_seconds), ("weight_seconds", weight_seconds)):
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    mel_span, span = mel.shape[1] * float(mel_frame_seconds), len(w) * float(weight_seconds)
    if abs(mel_span - span) > max(float(weight_seconds) + float(mel_frame_seconds), 0.02 * span):
        raise ValueError(
            f"the spectrogram covers {mel_span:.2f} s ({mel.shape[1]} frames) but the weights "
            f"{span:.2f} s ({len(w)} frames): they must describe the same input"
        )
    present = np.ones(len(w), dtype=bool)
    if mask is not None:
        present = np.asarray(mask).astype(bool)
        if present.shape != w.shape:
            raise ValueError(
                f"mask must have one entry per attention weight: {present.shape[0] if present.ndim else 0}"
                f" given for {len(w)} weights"
            )
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
    top.imshow(
        image,
        origin="lower",
        aspect="auto",
        cmap="magma",
        interpolation="nearest",
        extent=(0.0, mel_span, 0.0, float(mel.shape[0])),
    )
    top.set_ylabel("Mel band")
    values = np.where(finite, w, 0.0)
    bottom.stairs(values, edges, fill=True, color="#1f4e9a", alpha=0.85)
    peak = float(values.max()) if values.size and values.max() > 0 else 1.0
    bottom.set_ylim(0.0, 1.1 * peak)
    bottom.set_ylabel("attention")
    bottom.set_xlabel("seconds into the input")
    bottom.set_xlim(0.0, max(span, mel_span))
    for start, stop in _runs(shaded):
        for ax in (top, bottom):
            ax.axvspan(
                edges[start], edges[stop], facecolor="#bbbbbb", alpha=0.55, hatch="//", edgecolor="#888", lw=0, zorder=3
            )
    if centre is not None:
        for ax in (top, bottom):
            ax.axvspan(lo, hi, facecolor="none", edgecolor="#2ecc71", lw=1.6, zorder=4)
        top.annotate(
            "predicted epoch",
            ((lo + hi) / 2.0, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, -4),
            textcoords="offset points",
            ha="center",
            va="top",
            color="#1e8449",
            zorder=5,
            bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "#2ecc71", "alpha": 0.9},
        )
    top.set_title(title + ("  (shaded: masked-out frames)" if shaded.any() else ""), parse_math=False)
    return _png(fig, f"attention view: {title}")


@readable
def event_timeline_figure(
    recording_id: str,
    start_s: Sequence[float] | np.ndarray,
    scored_events: Sequence[float | None] | np.ndarray | None,
    predicted_prob: Sequence[float | None] | np.ndarray,
    stages_pred: Sequence[str | None] | None = None,
    *,
    epoch_seconds: float = EPOCH_SECONDS,
) -> str:
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

    fig = Figure(figsize=(10, 3.0), layout="constrained")
    ax = fig.add_subplot()
    if stages is not None:
        wake = np.array([s == "Wake" for s in stages], dtype=bool)[order]
        for first, stop in _runs(wake):
            ax.axvspan(
                start[first] / 3600.0,
                (start[stop - 1] + epoch_seconds) / 3600.0,
                color="#ececec",
                lw=0,
                zorder=0,
                label="predicted Wake" if first == _runs(wake)[0][0] else None,
            )
    ax.plot(middle, prob, color="#1f4e9a", lw=1.1, zorder=2, label="model: P(apnoea or hypopnoea in the epoch)")
    ax.set_ylim(0.0, 1.18)
    ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
    ax.set_ylabel("probability")
    ax.set_xlabel("hours from the start of the recording")
    if n:
        ax.set_xlim(start[0] / 3600.0, (start[-1] + epoch_seconds) / 3600.0)
    has = np.isfinite(events) & (events > 0)
    if has.any():  # scored onsets as marks along the top, above the probability's range: no second axis
        ax.plot(
            middle[has],
            np.full(int(has.sum()), 1.1),
            ls="none",
            marker="v",
            ms=6,
            color="#c0392b",
            zorder=3,
            label="scored apnoea/hypopnoea onset(s) in the epoch",
        )
    if not np.isfinite(events).any():
        scored_text = "no scored events"
    else:
        scored_text = f"{fmt(float(np.nansum(events)), 0)} scored apnoea/hypopnoea onsets"
    if not n:
        _no_data(ax, "no epochs")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncols=3, frameon=False, fontsize=9)
    ax.set_title(f"{recording_id}  ({scored_text})", parse_math=False)
    return _png(fig, f"breathing event timeline of {recording_id}")


@readable
def trend_figure(subject_id: str, nights: pd.DataFrame) -> str:
    """One subject's nights side by side, as home snore trackers show them: AHI, snore index and
    sleep efficiency per night (``night.subject_trends`` rows of that subject, in date order)."""
    labels = [
        str(d) if isinstance(d, str) else f"night {i + 1}"
        for i, d in enumerate(nights.get("study_date", [None] * len(nights)))
    ]
    x = np.arange(len(nights))
    fig = Figure(figsize=(10, 3.2), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (
        ("AHI (events / h of sleep)", _floats(nights["ahi"], "ahi"), "#c0392b"),
        ("snore index (min / h of sleep)", _floats(nights["snore_index"], "snore_index"), "#7d3c98"),
        ("sleep efficiency (%)", 100.0 * _floats(nights["sleep_efficiency"], "sleep_efficiency"), "#1f4e9a"),
    )
    for ax, (name, values, colour) in zip(axes, panels, strict=True):
        ax.plot(x, values, marker="o", color=colour)
        ax.set_title(name)
        ax.set_xticks(x, labels, rotation=30, ha="right")
        finite = values[np.isfinite(values)]
        top = 100.0 if "efficiency" in name else max(float(finite.max()) if finite.size else 0.0, 1.0) * 1.2
        ax.set_ylim(0, max(top, 6.0 if name.startswith("AHI") else 0.0))  # the AHI's 5/h line stays in view
        ax.grid(axis="y", color="#e5e5e5")
    for threshold in AHI_THRESHOLDS:
        axes[0].axhline(threshold, color="#d0d0d0", lw=0.8, ls="--", zorder=0)
    fig.suptitle(f"subject {subject_id}: {len(nights)} nights", parse_math=False)
    return _png(fig, f"trends across nights of subject {subject_id}: AHI, snore index, sleep efficiency")
