"""The HTML report: sections, one inline PNG per figure, escaping, no external assets."""

from __future__ import annotations

import base64
import time
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from sleepsound.metrics import evaluate
from sleepsound.report import hypnogram_figure, paper_comparison_table, render_report
from sleepsound.summaries import summarise_nights

C = ["Wake", "NREM", "REM"]
EVIL = "<script>alert('x')</script>"


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _nights(n_nights: int, n_epochs: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n_nights):
        true = rng.choice(C, n_epochs, p=[0.2, 0.7, 0.1]).astype(object)
        pred = np.where(rng.random(n_epochs) < 0.7, true, rng.choice(C, n_epochs)).astype(object)
        true[5:8] = None  # invalid epochs
        pred[5:8] = None
        frames.append(pd.DataFrame({"recording_id": f"rec-{k}", "epoch_index": np.arange(n_epochs),
                                    "start_s": 30.0 * np.arange(n_epochs), "stage_true": true, "stage_pred": pred}))
    return pd.concat(frames, ignore_index=True)


def _render(n_nights: int = 2, n_epochs: int = 120) -> tuple[str, int]:
    preds = _nights(n_nights, n_epochs)
    scored = preds.dropna(subset=["stage_true", "stage_pred"])
    metrics = evaluate(scored["stage_true"], scored["stage_pred"], C, "NREM")
    summaries = summarise_nights(preds, stage_column="stage_pred")
    figures = [hypnogram_figure(rec, n["start_s"].to_numpy(), list(n["stage_true"]), list(n["stage_pred"]))
               for rec, n in preds.groupby("recording_id")]
    meta = {"run_id": f"run-{EVIL}", "model_version": "v1-abc", "backbone": "hubert-base",
            "recordings_accepted": n_nights, "recordings_quarantined": 1, "test_subjects": ["s1", "s2"]}
    quarantined = [{"recording_id": "bad-night", "reason_code": "no_audio", "reason": f"missing {EVIL} audio"}]
    return render_report(meta, metrics, summaries, figures, quarantined), len(figures)


def test_report_has_every_section_and_an_image_per_figure() -> None:
    text, n_hypnograms = _render()
    parser = _Collector()
    parser.feed(text)
    ids = {attrs.get("id") for _, attrs in parser.tags}
    assert {"run", "metrics", "per-class", "confusion", "hypnograms", "nights", "quarantined"} <= ids
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == 1 + n_hypnograms  # the confusion matrix and one hypnogram per night
    for img in images:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    body = " ".join(parser.text)
    for needle in ("run-", "v1-abc", "hubert-base", "recordings processed", "recordings quarantined",
                   "majority baseline (NREM)", "Cohen's kappa", "macro-F1", "paper, 30-s HuBERT",
                   "rec-0", "rec-1", "bad-night", "no_audio", "total_sleep_time_min"):
        assert needle in body, needle
    assert "<td>120</td>" in text  # counts stay integers
    assert "0.81" in body and "0.17" in body  # the paper's 30-s HuBERT Wake SE and NREM NPV


def test_report_is_self_contained_and_escaped() -> None:
    text, _ = _render()
    assert "<script" not in text and "&lt;script&gt;" in text
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text and "data:audio" not in text and "<audio" not in text


def test_report_without_metrics_or_nights() -> None:
    text = render_report({"run_id": "r0"}, None, pd.DataFrame(), [], [])
    assert "No labelled held-out nights" in text and "<img" not in text
    with pytest.raises(ValueError):
        render_report({"run_id": "r0"}, None, None, ["<b>not a figure</b>"], [])


def test_table_ii_shape_with_paper_rows() -> None:
    per_class = pd.DataFrame({"SE": [0.5, 0.6, 0.1], "SP": [0.9] * 3, "PPV": [0.3, 0.9, np.nan],
                              "NPV": [0.9] * 3}, index=pd.Index(C, name="class"))
    table = paper_comparison_table(per_class)
    assert list(table.columns) == ["model", "SE", "SP", "PPV", "NPV"]
    wake_paper = table[(table.index == "Wake") & (table["model"] != "this run")].iloc[0]
    assert wake_paper[["SE", "SP", "PPV", "NPV"]].tolist() == [0.81, 0.76, 0.24, 0.98]


def test_ten_nights_render_quickly() -> None:
    started = time.perf_counter()
    text, n = _render(n_nights=10, n_epochs=900)
    assert n == 10 and text.count("<img") == 11
    assert time.perf_counter() - started < 20  # a few seconds normally; generous for loaded CI
