"""A self-contained HTML report: metrics beside the baseline and the paper, figures inline.

The page is one file that can be mailed or opened from object storage with no external
assets: figures (``figures``) are inline PNGs, every string from data is HTML-escaped
(``html``), and the sections (``sections``) are laid out here in the page's order. No audio
is ever included: the report takes numbers and stage labels only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any, TypedDict

import pandas as pd

from sleepsound.labels.targets import TARGETS
from sleepsound.report.html import STYLE, esc, fmt, img_tags, table
from sleepsound.report.metrics import PAPER_TABLE_II
from sleepsound.report.sections import (
    SUMMARY_LABELS,
    contents,
    section_ahi,
    section_figures,
    section_metrics,
    section_nights,
    section_run,
    section_target,
    section_trends,
)

# Figure fields: the <img> check each must pass and the figure function its error names.
_FIGURE_SOURCES = {
    "hypnograms": "hypnogram_figure",
    "ahi_figures": "ahi_scatter_figure / bland_altman_figure",
    "attention_views": "attention_figure",
    "event_timelines": "event_timeline_figure",
    "trend_figures": "trend_figure",
}


class NightLink(TypedDict):
    """One night's clinical report as the run report lists it (paths relative to the run report)."""

    recording_id: str
    subject_id: str
    html: str
    pdf: str
    study_date: str | None
    ahi: float
    snore_index: float
    sleep_efficiency: float
    source: str  # where its breathing figures came from: "event table" or "per-epoch"


@dataclass(frozen=True, eq=False)  # eq=False: DataFrame fields have no single truth value for ==
class ReportInputs:
    """Everything one report shows, checked once when built so a bad input fails before any rendering.

    ``meta``: run id, model version, backbone, recordings_accepted / recordings_quarantined,
    test_subjects and anything else worth showing. ``metrics``: ``metrics.evaluate``'s
    dict (None when there are no labelled held-out nights). ``summaries``: one row per
    night (``summaries.summarise_nights`` or the like; a ``recording_id`` column).
    ``hypnograms``: <img> tags from ``hypnogram_figure``. ``quarantined``: records with
    recording_id, reason_code, reason. ``reference``: the Table II row shown beside ours.

    Keyword-only extras (all optional): ``target_metrics``: target name -> ``metrics.evaluate``
    dict of another head (section ``#task-<name>``); ``subject_ci``: figure (accuracy,
    kappa, macro_f1) -> subject-resampled 95% interval, a column of the main table;
    ``breathing``: one row per night of scored/estimated AHI, severity and snore index;
    ``ahi``: ``metrics.ahi_agreement``'s dict; ``ahi_figures``: tags from
    ``ahi_scatter_figure`` / ``bland_altman_figure`` (``#ahi``); ``attention_views``: tags
    from ``attention_figure`` (``#attention``); ``event_timelines``: tags from
    ``event_timeline_figure`` (``#events``).

    The figure tags are embedded verbatim, so only the exact tags ``figures`` draws are
    accepted; they and ``quarantined`` are kept as tuples, so a generator passed in is read
    once and the record renders the same every time.
    """

    meta: Mapping[str, Any]
    metrics: Mapping[str, Any] | None = None
    summaries: pd.DataFrame | None = None
    hypnograms: Sequence[str] = ()
    quarantined: Sequence[Mapping[str, Any]] = ()
    _: KW_ONLY
    reference: str = "30-s HuBERT"
    target_metrics: Mapping[str, Mapping[str, Any] | None] | None = None
    subject_ci: Mapping[str, tuple[float, float]] | None = None
    breathing: pd.DataFrame | None = None
    ahi: Mapping[str, Any] | None = None
    ahi_figures: Sequence[str] = ()
    attention_views: Sequence[str] = ()
    event_timelines: Sequence[str] = ()
    night_links: Sequence[NightLink] = ()
    trends: pd.DataFrame | None = None
    trend_figures: Sequence[str] = ()

    def __post_init__(self) -> None:
        if self.reference not in PAPER_TABLE_II:
            raise ValueError(f"unknown reference {self.reference!r}; known: {sorted(PAPER_TABLE_II)}")
        if self.breathing is not None and not isinstance(self.breathing, pd.DataFrame):
            raise ValueError("breathing must be a pandas DataFrame with one row per night")
        for name, source in _FIGURE_SOURCES.items():
            object.__setattr__(self, name, tuple(img_tags(getattr(self, name), name, source)))
        object.__setattr__(self, "quarantined", tuple(self.quarantined))
        object.__setattr__(self, "night_links", tuple(self.night_links))
        if self.trends is not None and not isinstance(self.trends, pd.DataFrame):
            raise ValueError("trends must be a pandas DataFrame (night.subject_trends)")


def render_report(inputs: ReportInputs) -> str:
    """The run's report as one self-contained HTML string, so it can be mailed or opened from
    object storage with nothing beside it."""
    meta, metrics, summaries = inputs.meta, inputs.metrics, inputs.summaries
    title = f"sleepsound run {fmt(meta.get('run_id'))}"
    written = meta.get("written")

    # One order for every flow (run, train, score, nightly): the heads in TARGETS' order, whatever order they came in.
    known = list(TARGETS)
    targets = sorted(
        (inputs.target_metrics or {}).items(),
        key=lambda kv: (known.index(kv[0]) if kv[0] in known else len(known), str(kv[0])),
    )
    body = section_run(meta)
    body += section_nights(inputs.night_links)
    body += section_metrics(meta, metrics, inputs.reference, inputs.subject_ci)
    for name, target_result in targets:
        body += section_target(str(name), target_result)

    body += section_figures("hypnograms", "Hypnograms (held-out nights)", inputs.hypnograms, "", "none")
    body += section_figures(
        "attention",
        "Attention view (held-out epochs)",
        inputs.attention_views,
        "top: log-Mel spectrogram of the head's input; bottom: the head's attention weight per frame; "
        "green outline: the predicted epoch; shaded: masked-out frames (absent neighbours)",
        "No attention weights to show (no attention head, or no example epochs).",
    )
    body += section_ahi(inputs.breathing, inputs.ahi, inputs.ahi_figures)
    body += section_figures(
        "events",
        "Breathing events, night by night",
        inputs.event_timelines,
        "markers: scored apnoea/hypopnoea onsets per epoch; line: the model's apnoea-hypopnoea probability",
        "No respiratory head: no event timelines.",
    )

    body += section_trends(inputs.trends, inputs.trend_figures)
    body.append("<h2 id='summaries'>Night summaries</h2>")
    if summaries is not None and not summaries.empty:
        frame = summaries.set_index("recording_id") if "recording_id" in summaries.columns else summaries
        if "sleep_efficiency" in frame.columns:
            frame = frame.assign(sleep_efficiency=frame["sleep_efficiency"] * 100.0)
        body.append(
            table(
                frame,
                {"sleep_efficiency": 1, "pct_wake": 1, "pct_nrem": 1, "pct_rem": 1, "ahi": 1, "snore_index": 1}
                | {c: 1 for c in frame.columns if str(c).endswith("_min")},
                labels=SUMMARY_LABELS,
            )
        )
        body.append(
            "<p class='muted'>sleep efficiency = total sleep / time in bed; "
            "WASO runs from sleep onset to the end of the recording; REM latency from sleep "
            "onset; NREM/REM % of total sleep time.</p>"
        )
    else:
        body.append("<p class='muted'>none</p>")

    body.append("<h2 id='quarantined'>Quarantined recordings</h2>")
    q = pd.DataFrame(list(inputs.quarantined))
    if not q.empty:
        body.append(table(q.set_index("recording_id") if "recording_id" in q.columns else q))
    else:
        body.append("<p class='muted'>none</p>")
    parts = [
        "<!doctype html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p class='subtitle'>{esc(f'written {fmt(written)}' if written else 'date not recorded')}</p>",
        contents(body),
        *body,
        "</body></html>",
    ]
    return "\n".join(parts)
