"""One night's clinical report as a self-contained HTML page (printable: print CSS for A4/Letter)
and as a PDF drawn by matplotlib (``PdfPages``), from ``night.NightFigures``.

The page is what a sleep service hands a clinician: who and when, the hypnogram on the clock
with breathing events and snoring underneath, the stage table and sleep measures, the AHI
overall / REM / NREM / by type, and what audio cannot measure (SpO2, ODI, arousals) said as
such. Every figure is an estimate from audio, and both the page and the PDF say so first.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import textwrap
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter

from sleepsound.report.figures import _png, readable
from sleepsound.report.html import esc
from sleepsound.report.night import NOT_FROM_AUDIO, STAGE_NAMES, NightFigures
from sleepsound.report.summaries import SNORE_FROM_FRAMES, severity

DISCLAIMER = (
    "These figures are estimates from the bedside audio by machine-learning models. They are not "
    "a diagnosis and do not replace a polysomnography scored by a sleep technologist."
)
EVENT_COLOURS = {"apnea": "#c0392b", "hypopnea": "#e67e22"}
EVENT_NAMES = {"apnea": "apnoea", "hypopnea": "hypopnoea"}
# Hypnogram rows, top to bottom (the clinical convention: Wake on top, REM under it, then deepening NREM).
LEVELS5 = {"W": 4, "R": 3, "N1": 2, "N2": 1, "N3": 0}
LEVELS3 = {"Wake": 2, "REM": 1, "NREM": 0}

NIGHT_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:960px;padding:0 1em;color:#222;
line-height:1.4}h1{font-size:1.5em;margin:0.2em 0}h2{font-size:1.15em;margin:1.2em 0 0.4em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child,td.text,th.text{text-align:left}.scroll{overflow-x:auto;max-width:100%}
img{max-width:100%;height:auto}figure{margin:0.5em 0}figcaption{font-size:0.85em;color:#555}
.disclaimer{background:#eef4fb;border-left:4px solid #1f4e9a;padding:0.5em 0.8em}.muted{color:#666}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:0.15em 1em;margin:0.5em 0}dl.facts dt{color:#555}
dl.facts dd{margin:0}.cols{display:flex;flex-wrap:wrap;gap:0 2em}.cols>section{flex:1 1 300px}
@media print{@page{margin:8mm 10mm}body{margin:0;padding:0;max-width:none;font-size:9pt;line-height:1.25}
a{color:inherit;text-decoration:none}.noprint{display:none}h1{font-size:14pt}h2{font-size:11pt;margin:0.6em 0 0.2em;
break-after:avoid}figure,table,section{break-inside:avoid}figure{margin:0.2em 0}
figure img{max-height:46mm;width:auto}figcaption{font-size:8pt}
td,th{padding:1px 6px}table{margin:0.2em 0}caption{display:none}
dl.facts{grid-template-columns:max-content 1fr max-content 1fr}.disclaimer{border:1px solid #1f4e9a;padding:0.3em 0.6em}
.cols{flex-wrap:nowrap}}"""


def _clock(nf: NightFigures) -> Callable[[float, Any], str]:
    """Tick labels for hours from the recording's start: clock time when the start is known."""
    if nf.start is not None:
        start = nf.start
        return lambda h, _pos: (start + timedelta(hours=h)).strftime("%H:%M")
    return lambda h, _pos: f"+{round(h * 60) // 60}:{round(h * 60) % 60:02d}"


def clock_text(nf: NightFigures, seconds: float) -> str:
    if nf.start is not None:
        return (nf.start + timedelta(seconds=seconds)).strftime("%H:%M")
    return f"+{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d} from recording start"


def rem_segments(hours: np.ndarray, rem: np.ndarray, step: float, level: float) -> tuple[np.ndarray, np.ndarray]:
    """x and y of the hypnogram's REM bar as one line: a segment per run of consecutive REM epochs
    (``hours`` their starts, ``step`` an epoch), NaN between runs; a gap in the epochs ends a run."""
    rem = np.asarray(rem, dtype=bool)
    if not rem.any():
        return np.empty(0), np.empty(0)
    joined = np.zeros(len(rem), dtype=bool)  # REM epoch i continues the run of epoch i - 1
    joined[1:] = rem[1:] & rem[:-1] & (np.diff(hours) <= step * 1.001)
    firsts = np.flatnonzero(rem & ~joined)
    lasts = np.flatnonzero(rem & ~np.append(joined[1:], False))
    xs = np.column_stack([hours[firsts], hours[lasts] + step, np.full(len(firsts), np.nan)]).ravel()
    ys = np.column_stack([np.full((len(firsts), 2), level), np.full(len(firsts), np.nan)]).ravel()
    return xs, ys


def clock_ticks(start: datetime | None, span_h: float) -> np.ndarray:
    """Tick positions (hours from the start) on round clock times: every 5, 10 or 30 minutes or
    every hour, by the night's length; from the recording's start when its clock time is unknown."""
    step_min = 5 if span_h <= 0.5 else 10 if span_h <= 1.5 else 30 if span_h <= 4 else 60
    offset_min = 0.0
    if start is not None:
        since_midnight = start.hour * 60 + start.minute + start.second / 60.0
        offset_min = (-since_midnight) % step_min
    return np.arange(offset_min, span_h * 60.0 + 1e-6, step_min) / 60.0


@readable
def draw_night_chart(fig: Figure, nf: NightFigures, area: Mapping[str, float] | None = None) -> None:
    """Hypnogram (top) with breathing events and snoring underneath, on one clock-time axis;
    ``area``: left/right/top/bottom in figure fractions (the PDF page), else the whole figure."""
    levels = LEVELS5 if nf.stage_head == "stage5" else LEVELS3
    hours0 = (nf.start_s - (nf.start_s.min() if len(nf.start_s) else 0.0)) / 3600.0
    step = nf.epoch_seconds / 3600.0
    grid = fig.add_gridspec(3, 1, height_ratios=[3, 1.1, 1.1], hspace=0.12, **(area or {}))
    hyp = fig.add_subplot(grid[0])
    ev = fig.add_subplot(grid[1], sharex=hyp)
    sn = fig.add_subplot(grid[2], sharex=hyp)
    y = np.array([levels.get(s, np.nan) if s else np.nan for s in nf.stages], dtype=float)
    if len(y):
        hyp.step(np.append(hours0, hours0[-1] + step), np.append(y, y[-1]), where="post", lw=1.4, color="#1f4e9a")
        rem = np.array([STAGE_NAMES.get(s or "") == "REM" for s in nf.stages])
        # REM as one line broken by NaNs, a segment per run of REM epochs: a line per epoch was a
        # third of an 8-h night's page and PDF (two hundred artists, each laid out and drawn twice).
        xs, ys = rem_segments(hours0, rem, step, levels["R" if "R" in levels else "REM"])
        if len(xs):
            hyp.plot(xs, ys, color="#c0392b", lw=3.5, solid_capstyle="butt")
    order = sorted(levels, key=levels.get, reverse=True)
    hyp.set_yticks([levels[s] for s in order], [STAGE_NAMES[s] for s in order])
    hyp.set_ylim(-0.5, max(levels.values()) + 0.5)
    hyp.set_ylabel("stage")
    head = "5-class head" if nf.stage_head == "stage5" else "3-class head (no 5-class predictions)"
    hyp.set_title(f"Hypnogram ({head})", loc="left")
    hyp.grid(axis="x", color="#e5e5e5")

    unheard = _unheard_spans(nf, hours0, step)
    if unheard:  # where no event could have been found: grey behind the events' rows
        ev.broken_barh(unheard, (-0.6, 2.2), color="#e3e3e3", zorder=0)
        ev.text(
            0.995,
            0.94,
            "grey: breathing not heard",
            transform=ev.transAxes,
            ha="right",
            va="top",
            fontsize=7,
            color="#666",
        )
    if nf.events is not None:
        for row, kind in enumerate(("apnea", "hypopnea")):
            mine = nf.events[nf.events["type"] == kind]
            spans = [
                ((s - nf.start_s.min()) / 3600.0, max(e - s, 5.0) / 3600.0)
                for s, e in zip(mine["start_s"], mine["end_s"], strict=True)
            ]
            ev.broken_barh(spans, (1 - row - 0.35, 0.7), color=EVENT_COLOURS[kind])
        ev.set_yticks([1, 0], [EVENT_NAMES["apnea"], EVENT_NAMES["hypopnea"]])
        ev.set_ylim(-0.6, 1.6)
        ev.set_ylabel("events")
    elif np.isfinite(nf.prob_event).any():
        ev.fill_between(hours0 + step / 2, np.nan_to_num(nf.prob_event), step="mid", color="#c0392b", alpha=0.6, lw=0)
        ev.set_ylim(0, 1)
        ev.set_yticks([0, 0.5, 1], ["0%", "50%", "100%"])
        ev.set_ylabel("P(event)")
    else:
        ev.set_yticks([])
        ev.text(
            0.5,
            0.5,
            "no breathing estimate in this run",
            transform=ev.transAxes,
            ha="center",
            va="center",
            color="#777",
        )
    if np.isfinite(nf.prob_snore).any():
        sn.fill_between(hours0 + step / 2, np.nan_to_num(nf.prob_snore), step="mid", color="#7d3c98", alpha=0.6, lw=0)
        sn.set_ylim(0, 1)
        sn.set_yticks([0, 0.5, 1], ["0%", "50%", "100%"])
        sn.set_ylabel("snoring" if nf.snore_source == SNORE_FROM_FRAMES else "P(snore)")
    else:
        sn.set_yticks([])
        sn.text(
            0.5, 0.5, "no snoring estimate in this run", transform=sn.transAxes, ha="center", va="center", color="#777"
        )
    span = hours0[-1] + step if len(hours0) else 1.0
    hyp.set_xlim(0, span)
    ticks = clock_ticks(nf.start, span)
    for ax in (hyp, ev, sn):
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_major_formatter(FuncFormatter(_clock(nf)))
        ax.tick_params(axis="x", labelbottom=ax is sn)
    sn.set_xlabel("clock time" if nf.start is not None else "time from the start of the recording (h:mm)")


def _unheard_spans(nf: NightFigures, hours0: np.ndarray, step: float) -> list[tuple[float, float]]:
    """(start, width) in hours of each run of epochs with breathing heard under half their length."""
    if nf.heard_s is None or len(nf.heard_s) != len(hours0):
        return []
    low = np.isfinite(nf.heard_s) & (nf.heard_s < nf.epoch_seconds / 2)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], low.astype(np.int8), [0]])))
    return [
        (float(hours0[a]), float(hours0[b - 1] - hours0[a] + step))
        for a, b in zip(edges[::2], edges[1::2], strict=True)
    ]


def night_chart_tag(nf: NightFigures) -> str:
    fig = Figure(figsize=(10, 5.2), layout="constrained")
    draw_night_chart(fig, nf)
    return _png(fig, f"hypnogram of {nf.recording_id} with breathing events and snoring on the same time axis")


def _n(value: float, digits: int = 1, unit: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:.{digits}f}{unit}"


def header_facts(nf: NightFigures, run_id: str) -> list[tuple[str, str]]:
    known = nf.start is not None
    date = nf.start.strftime("%Y-%m-%d") if nf.start is not None else "not recorded in the files"
    facts = [
        ("Recording", nf.recording_id),
        ("Subject", nf.subject_id),
        ("Study date", date),
        ("Run", run_id),
        ("Lights off", clock_text(nf, 0.0) if known else "recording start (0:00)"),
        ("Lights on", clock_text(nf, nf.duration_s)),
        ("Data source", nf.data_source),
        ("Models", ", ".join(f"{k} {v}" for k, v in nf.models.items()) or "–"),
        ("Report written", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]
    if not known:
        facts.append(("Times", "from the recording's start: its files record no clock time"))
    return facts


def stage_rows(nf: NightFigures) -> list[tuple[str, str, str, str]]:
    """(stage, minutes, % of total sleep time, % of time in bed) per stage, in the report's order."""
    tst, tib = nf.summary["total_sleep_time_min"], nf.summary["time_in_bed_min"]
    rows = []
    for s in nf.stage_order:
        minutes = nf.stage_minutes[s]
        sleep_pct = "" if STAGE_NAMES[s] == "Wake" else _n(100 * minutes / tst if tst else math.nan, 1, " %")
        rows.append((STAGE_NAMES[s], _n(minutes), sleep_pct, _n(100 * minutes / tib if tib else math.nan, 1, " %")))
    return rows


def measure_rows(nf: NightFigures) -> list[tuple[str, str]]:
    s = nf.summary
    return [
        ("Time in bed (lights off to lights on)", _n(s["time_in_bed_min"], 1, " min")),
        ("Total sleep time", _n(s["total_sleep_time_min"], 1, " min")),
        ("Sleep efficiency", _n(100 * s["sleep_efficiency"], 1, " %")),
        ("Sleep onset latency", _n(s["sleep_onset_latency_min"], 1, " min")),
        ("Wake after sleep onset (WASO)", _n(s["waso_min"], 1, " min")),
        ("REM latency (from sleep onset)", _n(s["rem_latency_min"], 1, " min")),
    ]


def breathing_rows(nf: NightFigures) -> list[tuple[str, str, str]]:
    """(figure, estimate, scored reference) rows; the reference only on nights with scored events."""
    a, ref = nf.ahi, nf.ahi_scored or {}
    per_h = " /h"
    longest = "–" if not math.isfinite(nf.longest_event_s) else f"{nf.longest_event_s:.0f} s"
    return [
        ("AHI, all sleep", _n(a["ahi"], 1, per_h), _n(ref.get("ahi", math.nan), 1, per_h)),
        ("AHI in REM", _n(a["ahi_rem"], 1, per_h), _n(ref.get("ahi_rem", math.nan), 1, per_h)),
        ("AHI in NREM", _n(a["ahi_nrem"], 1, per_h), _n(ref.get("ahi_nrem", math.nan), 1, per_h)),
        ("Apnoea index", _n(a["ahi_apnea"], 1, per_h), "–"),
        ("Hypopnoea index", _n(a["ahi_hypopnea"], 1, per_h), "–"),
        ("Events during sleep", _n(a["events"], 0 if nf.events is not None else 1), _n(ref.get("events", math.nan), 0)),
        ("Longest event", longest, "–"),
        ("REI (per hour of recording)", _n(nf.rei, 1, per_h), "–"),
        (
            "Severity by AHI / by REI",
            f"{nf.severity or '–'} / {severity(nf.rei) if math.isfinite(nf.rei) else '–'}",
            "–",
        ),
        ("Snore index (snoring minutes per hour of sleep)", _n(nf.snore_index, 1), "–"),
    ]


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]], caption: str) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    heads = "".join(f"<th scope='col'>{esc(h)}</th>" for h in head)
    caption_tag = f"<caption class='muted'>{esc(caption)}</caption>"
    return f"<div class='scroll'><table>{caption_tag}<tr>{heads}</tr>{cells}</table></div>"


def render_night_html(
    nf: NightFigures, run_id: str, stem: str | None = None, run_report_href: str = "../index.html"
) -> str:
    """The night's report as one self-contained HTML page; ``stem``: its file name without suffix (links the PDF)."""
    title = f"Night report: {nf.recording_id}"
    pdf_href = f"{stem}.pdf" if stem else pdf_name(nf.recording_id)
    what = (
        "the detected apnoeas and hypopnoeas"
        if nf.events is not None
        else "the per-epoch probability of an apnoea or hypopnoea (P(event))"
    )
    facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in header_facts(nf, run_id))
    scored = nf.ahi_scored is not None
    b_rows = breathing_rows(nf)
    b_head: tuple[str, ...] = (
        ("figure", "estimate from audio", "scored (PSG)") if scored else ("figure", "estimate from audio")
    )
    b_rows = b_rows if scored else [r[:2] for r in b_rows]
    missing = "".join(f"<tr><td>{esc(k)}</td><td class='text'>{esc(v)}</td></tr>" for k, v in NOT_FROM_AUDIO.items())
    notes = "".join(f"<p class='muted'>{esc(n)}.</p>" for n in nf.notes)
    body = [
        "<!doctype html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{esc(title)}</title><style>{NIGHT_STYLE}</style></head><body>",
        f"<p class='noprint'><a href='{esc(run_report_href)}'>← run report</a> · "
        f"<a href='{esc(pdf_href)}'>PDF</a> · print this page for a paper copy</p>",
        "<header>",
        f"<h1>{esc(title)}</h1>",
        "<p class='disclaimer' role='note'><strong>Estimates from audio, not a diagnosis.</strong> "
        f"{esc(DISCLAIMER)}</p>",
        f"<dl class='facts'>{facts}</dl>",
        "</header>",
        "<h2 id='hypnogram'>Hypnogram, breathing events and snoring</h2>",
        f"<figure>{night_chart_tag(nf)}<figcaption>Stages from the "
        f"{'5-class' if nf.stage_head == 'stage5' else '3-class'} head on the clock (REM in red); underneath, "
        f"{what}"
        + (
            " and the share of each epoch's seconds called snoring (per-second snoring head)"
            if nf.snore_source == SNORE_FROM_FRAMES
            else " and the probability of snoring (P(snore))"
        )
        + ", on the same time axis.</figcaption></figure>",
        "<div class='cols'><section>",
        "<h2 id='stages'>Sleep stages</h2>",
        _table(("stage", "minutes", "% of sleep", "% of time in bed"), stage_rows(nf), "minutes and shares per stage"),
        "</section><section>",
        "<h2 id='measures'>Sleep measures</h2>",
        _table(("measure", "value"), measure_rows(nf), "lights off and on are the recording's start and end"),
        "</section></div>",
        "<div class='cols'><section>",
        "<h2 id='breathing'>Breathing</h2>",
        _table(b_head, b_rows, "events per hour of sleep; events count only in sleep"),
        "<p class='muted'>Severity by AHI: &lt; 5 normal, 5-15 mild, 15-30 moderate, ≥ 30 severe. "
        f"Source of the breathing figures: {esc(nf.ahi_source)}.</p>",
        notes,
        "</section><section>",
        "<h2 id='not-measured'>Not measured</h2>",
        "<p>These are not measurable from audio:</p>",
        "<div class='scroll'><table><tr><th scope='col'>figure</th><th scope='col' class='text'>why</th></tr>",
        f"{missing}</table></div>",
        "</section></div>",
        "</body></html>",
    ]
    return "\n".join(body)


MAX_STEM = 120  # with ".html", a "-N" twin suffix and the aside file's ".…tmp-<uuid>" well under 255 bytes


def file_stem(recording_id: str) -> str:
    """A file name for the night's report: the id with anything but letters, digits, '.', '_', '-' as '_'.

    An id longer than ``MAX_STEM`` keeps its first characters and a digest of the whole id: a
    220-character id (a long plain-audio file name) made a report name the disk refused (ENAMETOOLONG),
    which stopped every night's report.
    """
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", recording_id).lstrip(".")
    if len(stem) > MAX_STEM:
        digest = hashlib.sha256(recording_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        stem = f"{stem[: MAX_STEM - 13]}-{digest}"
    return stem or "night"


def html_name(recording_id: str) -> str:
    return f"{file_stem(recording_id)}.html"


def pdf_name(recording_id: str) -> str:
    return f"{file_stem(recording_id)}.pdf"


@readable
def _pdf_page(nf: NightFigures, run_id: str) -> Figure:
    """One A4 page: header, disclaimer, the chart, then the tables, laid out in figure coordinates."""
    fig = Figure(figsize=(8.27, 11.69))
    fig.text(0.06, 0.965, f"Night report: {nf.recording_id}", fontsize=16, weight="bold", parse_math=False)
    fig.text(0.06, 0.948, "\n".join(textwrap.wrap(DISCLAIMER, 110)), fontsize=8.5, color="#1f4e9a", va="top")
    y = 0.915
    for k, v in header_facts(nf, run_id):
        fig.text(0.06, y, k, fontsize=9, color="#555", va="top")
        fig.text(0.25, y, v, fontsize=9, va="top", parse_math=False)
        y -= 0.016
    draw_night_chart(fig, nf, {"left": 0.16, "right": 0.96, "top": y - 0.025, "bottom": y - 0.31})
    scored = nf.ahi_scored is not None
    tables = [
        ("Sleep stages", ("stage", "minutes", "% of sleep", "% in bed"), stage_rows(nf), (0.06, 0.47)),
        ("Sleep measures", ("measure", "value"), measure_rows(nf), (0.52, 0.94)),
    ]
    b_rows = breathing_rows(nf) if scored else [r[:2] for r in breathing_rows(nf)]
    b_head = ("figure", "estimate", "scored (PSG)") if scored else ("figure", "estimate from audio")
    top = y - 0.38
    for name, head, rows, (x0, x1) in tables:
        _pdf_table(fig, name, head, rows, x0, x1, top, 0.018 * (len(rows) + 1))
    top -= 0.018 * 7 + 0.05
    _pdf_table(fig, "Breathing", b_head, b_rows, 0.06, 0.94, top, 0.018 * (len(b_rows) + 1))
    top -= 0.018 * (len(b_rows) + 1) + 0.05
    fig.text(0.06, top, f"Source of the breathing figures: {nf.ahi_source}.", fontsize=8, color="#555", wrap=True)
    top -= 0.03
    fig.text(0.06, top, "Not measurable from audio:", fontsize=9, weight="bold")
    for k, v in NOT_FROM_AUDIO.items():
        top -= 0.016
        fig.text(0.08, top, f"{k}: {v}", fontsize=8.5)
    return fig


def _pdf_table(
    fig: Figure,
    name: str,
    head: tuple[str, ...],
    rows: list[tuple[str, ...]],
    x0: float,
    x1: float,
    top: float,
    height: float,
) -> None:
    fig.text(x0, top + 0.008, name, fontsize=11, weight="bold")
    ax = fig.add_axes((x0, top - height, x1 - x0, height))
    ax.axis("off")
    table = ax.table(
        cellText=[list(r) for r in rows], colLabels=list(head), loc="upper left", cellLoc="left", colLoc="left"
    )
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    for (r, _c), cell in table.get_celld().items():
        cell.set_edgecolor("#cccccc")
        if r == 0:
            cell.set_facecolor("#f3f3f3")
    table.auto_set_column_width(list(range(len(head))))


def night_pdf(nf: NightFigures, run_id: str) -> bytes:
    """The night's report as a one-page PDF (matplotlib's PdfPages: no browser needed)."""
    buffer = io.BytesIO()
    with PdfPages(
        buffer, metadata={"Title": f"Night report {nf.recording_id}", "Subject": DISCLAIMER, "Creator": "sleepsound"}
    ) as pdf:
        pdf.savefig(_pdf_page(nf, run_id))
    return buffer.getvalue()


def data_source_text(row: Mapping[str, Any] | None) -> str:
    """The recording's files in words (layout, parts, length, sample rate): no paths, no ids."""
    if not row:
        return "unknown (the recording is not in the manifest)"
    kind = "PSG-Audio EDF" if row.get("layout") == "psg-audio" else "audio file"
    parts = int(row.get("n_parts") or 1)
    bits = [f"{kind}, {parts} part{'s' if parts != 1 else ''}"]
    if row.get("duration_s"):
        bits.append(f"{float(row['duration_s']) / 3600.0:.1f} h")
    if row.get("sample_rate"):
        bits.append(f"{float(row['sample_rate']) / 1000.0:g} kHz")
    bits.append(f"labels: {row.get('label_source') or 'none'}")
    return ", ".join(bits)
