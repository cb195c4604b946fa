"""The run report and a night report in a real headless Chromium at phone and desktop widths.

One browser for the test session (Debian's /usr/bin/chromium driven by Playwright; `make test`
installs it). Screenshots go to $SLEEPSOUND_TEST_ARTEFACTS when set, else a pytest temp folder.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pypdf import PdfReader

from sleepsound.labels.events import RESP_LABELS
from sleepsound.labels.vocabulary import STAGES_3, STAGES_5
from sleepsound.report.figures import event_timeline_figure, hypnogram_figure, trend_figure
from sleepsound.report.metrics import evaluate
from sleepsound.report.night import subject_trends
from sleepsound.report.night_reports import start_night_reports
from sleepsound.report.outputs import night_breathing
from sleepsound.report.render import ReportInputs, render_report
from sleepsound.report.summaries import night_summary
from tests.report.conftest import write_events
from tests.report.test_night import MODEL

WIDTHS = {"phone": 390, "desktop": 1280}

# Elements wider than the viewport, outside the scroll containers wide tables live in.
OVERFLOW_JS = """() => {
  const w = document.documentElement.clientWidth;
  const out = [];
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('.scroll') && !el.classList.contains('scroll')) continue;
    const r = el.getBoundingClientRect();
    if (r.width > 0 && (r.right > w + 1 || r.left < -1)) out.push(el.tagName + ' ' + Math.round(r.right));
  }
  return {scroll: document.documentElement.scrollWidth, width: w, wide: out.slice(0, 5)};
}"""


@pytest.fixture(scope="session")
def run_dir(three_nights: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run's report folder as write_run_outputs lays it out: index.html and nights/*.html, *.pdf."""
    root = tmp_path_factory.mktemp("browser-root")
    write_events(root, "r1", "P2-night1", [(1205.0, 1230.0, "apnea", 0.9), (3305.0, 3350.0, "hypopnea", 0.6)])
    links, nights = start_night_reports(root, "r1", three_nights, MODEL, "hubert-base")()
    rng = np.random.default_rng(0)
    rows, figures = [], []
    for rec, night in three_nights.groupby("recording_id"):
        breathing = night_breathing(night, MODEL["heads"]["resp"])
        for source, column in (("predicted", "stage_pred"), ("scored", "stage_true")):
            suffix = "_estimated" if source == "predicted" else "_scored"
            rows.append(
                {"recording_id": rec, "subject_id": night["subject_id"].iloc[0], "split": "test", "source": source}
                | night_summary(list(night[column]))
                | {k: breathing.get(f"{k}{suffix}") for k in ("ahi", "severity", "snore_index")}
            )
        figures.append(
            hypnogram_figure(str(rec), night["start_s"], list(night["stage_true"]), list(night["stage_pred"]))
        )
    s3 = three_nights["stage_true"]
    tasks = {
        "resp": evaluate(rng.choice(RESP_LABELS, 200), rng.choice(RESP_LABELS, 200), RESP_LABELS, "none"),
        "stage5": evaluate(rng.choice(STAGES_5, 200), rng.choice(STAGES_5, 200), STAGES_5, "N2"),
    }
    night = three_nights[three_nights["recording_id"] == "P1-night1"]
    timeline = event_timeline_figure(
        "P1-night1", night["start_s"], night["events_true"], night["prob_apnea_hypopnea"], list(night["stage_pred"])
    )
    trends = subject_trends(nights)
    text = render_report(
        ReportInputs(
            {"run_id": "r1", "written": "2024-03-10 07:00 UTC", "backbone": "hubert-base", "stage5 model": "v5"},
            evaluate(s3, np.where(rng.random(len(s3)) < 0.8, s3, rng.choice(STAGES_3, len(s3))), STAGES_3, "NREM"),
            pd.DataFrame(rows),
            figures,
            [],
            target_metrics=tasks,
            event_timelines=[timeline],
            night_links=links,
            trends=trends,
            trend_figures=[trend_figure(str(s), t) for s, t in trends.groupby("subject_id")],
        )
    )
    folder = root / "runs" / "r1" / "report"
    (folder / "index.html").write_text(text)
    return folder


def _open(browser: Any, path: Path, width: int) -> Any:
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.set_default_timeout(5000)  # a missing element fails in seconds, not the default 30
    page.goto(path.as_uri())
    return page


@pytest.mark.parametrize("width", list(WIDTHS))
def test_run_report_in_the_browser(browser: Any, run_dir: Path, artefacts: Path, width: str) -> None:
    page = _open(browser, run_dir / "index.html", WIDTHS[width])
    try:
        assert page.locator("h1").inner_text() == "sleepsound run r1"
        assert "2024-03-10" in page.locator(".subtitle").inner_text()  # the run's date under the title
        ids = page.locator("h2").evaluate_all("els => els.map(e => e.id)")
        assert ids[:5] == ["run", "nights", "metrics", "task-stage5", "task-resp"]  # heads in one fixed order
        assert {"trends", "summaries", "quarantined"} <= set(ids)
        assert "5-class stage head version" in page.locator("#run + .scroll").inner_text()  # words, not keys
        links = page.locator("#nights + p + .scroll a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
        assert "nights/P1-night1.html" in links and "nights/P1-night1.pdf" in links
        assert page.locator("img[alt^='trends across nights of subject P1']").count() == 1
        assert page.locator("img:not([alt])").count() == 0
        layout = page.evaluate(OVERFLOW_JS)
        assert layout["scroll"] <= layout["width"] and not layout["wide"], layout  # wide tables scroll by themselves
        summary = page.locator("#summaries + .scroll")
        assert "total sleep (min)" in summary.inner_text()
        page.screenshot(path=str(artefacts / f"run-report-{width}.png"), full_page=True)
        page.emulate_media(media="print")
        assert page.locator("nav#contents").evaluate("e => getComputedStyle(e).display") == "none"
    finally:
        page.close()


@pytest.mark.parametrize("width", list(WIDTHS))
def test_night_report_in_the_browser(browser: Any, run_dir: Path, artefacts: Path, width: str) -> None:
    page = _open(browser, run_dir / "nights" / "P2-night1.html", WIDTHS[width])
    try:
        assert page.locator("h1").inner_text() == "Night report: P2-night1"
        assert "not a diagnosis" in page.locator("[role=note]").inner_text()
        headings = page.locator("h2").all_inner_texts()
        assert headings == ["Hypnogram, breathing events and snoring", "Sleep stages", "Sleep measures", "Breathing",
                            "Not measured"]  # fmt: skip
        hypnogram = page.locator("#hypnogram + figure img")
        assert "hypnogram of P2-night1" in hypnogram.get_attribute("alt")
        assert hypnogram.evaluate("img => img.naturalWidth") > 0  # the inline PNG decodes
        stages = page.locator("#stages + .scroll table tr td:first-child").all_inner_texts()
        assert stages == ["Wake", "REM", "N1", "N2", "N3"]
        breathing = page.locator("#breathing + .scroll").inner_text()
        assert "Apnoea index" in breathing and "45 s" in breathing  # by type and the longest event, from the table
        assert "event table" in page.locator("body").inner_text()
        layout = page.evaluate(OVERFLOW_JS)
        assert layout["scroll"] <= layout["width"] and not layout["wide"], layout
        page.screenshot(path=str(artefacts / f"night-report-{width}.png"), full_page=True)
        page.emulate_media(media="print")
        assert page.locator(".noprint").evaluate("e => getComputedStyle(e).display") == "none"
        assert page.locator("figure").evaluate("e => getComputedStyle(e).breakInside") == "avoid"
        if width == "desktop":  # Chromium's own print of the page: one sheet of A4 and of Letter, links hidden
            for paper in ("A4", "Letter"):
                printed = page.pdf(format=paper, print_background=True)
                (artefacts / f"night-report-{paper}.pdf").write_bytes(printed)
                assert len(PdfReader(io.BytesIO(printed)).pages) == 1
            text = PdfReader(io.BytesIO(printed)).pages[0].extract_text()
            assert "Night report: P2-night1" in text and "run report" not in text
    finally:
        page.close()
