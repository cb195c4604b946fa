"""The HTML report: sections, one inline PNG per figure, escaping, no external assets."""

from __future__ import annotations

import base64
import time
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from sleepsound.report.figures import (
    ahi_scatter_figure,
    attention_figure,
    bland_altman_figure,
    event_timeline_figure,
    hypnogram_figure,
)
from sleepsound.report.metrics import ahi_agreement, evaluate
from sleepsound.report.render import ReportInputs, render_report
from sleepsound.report.sections import paper_comparison_table
from sleepsound.report.summaries import summarise_nights

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
        frames.append(
            pd.DataFrame(
                {
                    "recording_id": f"rec-{k}",
                    "epoch_index": np.arange(n_epochs),
                    "start_s": 30.0 * np.arange(n_epochs),
                    "stage_true": true,
                    "stage_pred": pred,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _render(n_nights: int = 2, n_epochs: int = 120) -> tuple[str, int]:
    preds = _nights(n_nights, n_epochs)
    scored = preds.dropna(subset=["stage_true", "stage_pred"])
    metrics = evaluate(scored["stage_true"], scored["stage_pred"], C, "NREM")
    summaries = summarise_nights(preds, stage_column="stage_pred")
    figures = [
        hypnogram_figure(rec, n["start_s"].to_numpy(), list(n["stage_true"]), list(n["stage_pred"]))
        for rec, n in preds.groupby("recording_id")
    ]
    meta = {
        "run_id": f"run-{EVIL}",
        "model_version": "v1-abc",
        "backbone": "hubert-base",
        "recordings_accepted": n_nights,
        "recordings_quarantined": 1,
        "test_subjects": ["s1", "s2"],
    }
    quarantined = [{"recording_id": "bad-night", "reason_code": "no_audio", "reason": f"missing {EVIL} audio"}]
    return render_report(ReportInputs(meta, metrics, summaries, figures, quarantined)), len(figures)


def test_report_has_every_section_and_an_image_per_figure() -> None:
    text, n_hypnograms = _render()
    parser = _Collector()
    parser.feed(text)
    ids = {attrs.get("id") for _, attrs in parser.tags}
    assert {"run", "metrics", "per-class", "confusion", "hypnograms", "nights", "summaries", "quarantined"} <= ids
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == 1 + n_hypnograms  # the confusion matrix and one hypnogram per night
    for img in images:
        assert img["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(img["src"].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    body = " ".join(parser.text)
    for needle in (
        "run-",
        "v1-abc",
        "hubert-base",
        "recordings processed",
        "recordings quarantined",
        "majority baseline (NREM)",
        "Cohen's kappa",
        "macro-F1",
        "paper, 30-s HuBERT",
        "rec-0",
        "rec-1",
        "bad-night",
        "no_audio",
        "total sleep (min)",  # the summary table's columns in words, not their keys
        "sleep efficiency (%)",
    ):
        assert needle in body, needle
    assert "<td>120</td>" in text  # counts stay integers
    assert "0.81" in body and "0.17" in body  # the paper's 30-s HuBERT Wake SE and NREM NPV


def test_report_is_self_contained_and_escaped() -> None:
    text, _ = _render()
    assert "<script" not in text and "&lt;script&gt;" in text
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text and "data:audio" not in text and "<audio" not in text


def test_report_without_metrics_or_nights() -> None:
    text = render_report(ReportInputs({"run_id": "r0"}, None, pd.DataFrame(), [], []))
    assert "No labelled held-out nights" in text and "<img" not in text
    with pytest.raises(ValueError):
        render_report(ReportInputs({"run_id": "r0"}, None, None, ["<b>not a figure</b>"], []))


def test_table_ii_shape_with_paper_rows() -> None:
    per_class = pd.DataFrame(
        {"SE": [0.5, 0.6, 0.1], "SP": [0.9] * 3, "PPV": [0.3, 0.9, np.nan], "NPV": [0.9] * 3},
        index=pd.Index(C, name="class"),
    )
    table = paper_comparison_table(per_class)
    assert list(table.columns) == ["model", "SE", "SP", "PPV", "NPV"]
    wake_paper = table[(table.index == "Wake") & (table["model"] != "this run")].iloc[0]
    assert wake_paper[["SE", "SP", "PPV", "NPV"]].tolist() == [0.81, 0.76, 0.24, 0.98]


def test_ten_nights_render_quickly() -> None:
    started = time.perf_counter()
    text, n = _render(n_nights=10, n_epochs=900)
    assert n == 10 and text.count("<img") == 11
    assert time.perf_counter() - started < 20  # a few seconds normally; generous for loaded CI


# --- clinical figures and the extra sections -------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STAGE5 = ["W", "N1", "N2", "N3", "R"]
RESP = ["none", "snore", "apnea_hypopnea"]


def _png_of(tag: str) -> bytes:
    """The PNG bytes of an <img> data-URI tag, checking the tag's shape on the way."""
    parser = _Collector()
    parser.feed(tag)
    assert [t for t, _ in parser.tags] == ["img"]
    src = parser.tags[0][1]["src"] or ""
    assert src.startswith("data:image/png;base64,")
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data[:8] == PNG_MAGIC
    return data


def _ahi_pair(n: int = 12, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true = rng.gamma(2.0, 10.0, n)
    pred = np.clip(true + rng.normal(1.0, 5.0, n), 0.0, None)
    true[2], pred[5] = np.nan, np.nan  # a night without sleep / without an estimate
    return true, pred


def _attention_inputs(seconds: int = 90) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    mel = rng.normal(-40.0, 8.0, (64, seconds * 100 + 1)).astype(np.float32)  # 10-ms hop, centred frames
    weights = rng.random(seconds * 2).astype(np.float32)  # one weight per 0.5 s
    return mel, weights / weights.sum()


def test_ahi_figures_are_pngs_and_leave_out_nan_nights() -> None:
    true, pred = _ahi_pair()
    agreement = ahi_agreement(true, pred)
    assert agreement["n_nights"] == 10
    for tag in (
        ahi_scatter_figure(true, pred),
        ahi_scatter_figure(true, pred, agreement),
        bland_altman_figure(true, pred),
        bland_altman_figure(list(true), list(pred), agreement),
    ):
        assert 1_000 < len(_png_of(tag)) < 200_000
    # None and pd.NA are unknown nights as well; no night at all still draws (an empty, labelled plot)
    _png_of(ahi_scatter_figure([10.0, None, 3.0, 40.0], [12.0, 7.0, pd.NA, 35.0]))
    _png_of(bland_altman_figure([np.nan, 5.0], [1.0, np.nan]))
    _png_of(ahi_scatter_figure([], []))


def test_ahi_figures_refuse_mismatched_nights() -> None:
    true, pred = _ahi_pair()
    with pytest.raises(ValueError, match="one value per night"):
        ahi_scatter_figure(true, pred[:-1])
    with pytest.raises(ValueError, match="one value per night"):
        bland_altman_figure(true[:3], pred)
    other = ahi_agreement(true[:6], pred[:6])  # figures of other nights than the ones drawn
    with pytest.raises(ValueError, match="same nights"):
        bland_altman_figure(true, pred, other)
    with pytest.raises(ValueError, match="numbers"):
        ahi_scatter_figure(["high", "low"], [1.0, 2.0])


def test_attention_figure_draws_the_paper_view() -> None:
    mel, weights = _attention_inputs()
    mask = np.repeat([False, True, True], 60)  # the night's first epoch: no left neighbour
    tag = attention_figure(mel, 0.01, weights, 0.5, title=f"night {EVIL} epoch 0", centre=(30.0, 60.0), mask=mask)
    _png_of(tag)
    assert "<script" not in tag and "&lt;script&gt;" in tag  # the title reaches the page only escaped
    # NaN frames (in the spectrogram or the weights) are drawn as gaps; a 30-s input needs no mask or centre
    mel30, weights30 = _attention_inputs(30)
    mel30[:, :100] = np.nan
    weights30[:4] = np.nan
    _png_of(attention_figure(mel30, 0.01, weights30, 0.5, title="30-s input"))


def test_attention_figure_refuses_audio_and_mismatched_inputs() -> None:
    mel, weights = _attention_inputs()
    samples = np.random.default_rng(0).normal(size=16_000 * 90).astype(np.float32)
    with pytest.raises(ValueError, match="never takes raw audio"):
        attention_figure(samples, 1 / 16_000, weights, 0.5, title="raw")
    with pytest.raises(ValueError, match="never takes raw audio"):
        attention_figure(samples.reshape(1, -1), 1 / 16_000, weights, 0.5, title="raw, one row")
    with pytest.raises(ValueError, match="same input"):
        attention_figure(mel, 0.01, weights[:120], 0.5, title="60 s of weights for 90 s of spectrogram")
    with pytest.raises(ValueError, match="one entry per attention weight"):
        attention_figure(mel, 0.01, weights, 0.5, title="t", mask=np.ones(179, dtype=bool))
    with pytest.raises(ValueError, match="centre"):
        attention_figure(mel, 0.01, weights, 0.5, title="t", centre=(60.0, 120.0))
    with pytest.raises(ValueError, match="positive number of seconds"):
        attention_figure(mel, 0.0, weights, 0.5, title="t")
    with pytest.raises(ValueError, match="one-dimensional"):
        attention_figure(mel, 0.01, weights.reshape(3, 60), 0.5, title="t")


def _night_breathing(n: int = 240, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str | None]]:
    rng = np.random.default_rng(seed)
    start = 30.0 * np.arange(n)
    events = np.where(rng.random(n) < 0.1, rng.integers(1, 3, n), 0).astype(float)
    prob = np.clip(0.4 * events + 0.3 * rng.random(n), 0.0, 1.0)
    prob[50:55] = np.nan  # invalid epochs
    stages: list[str | None] = list(rng.choice(C, n, p=[0.2, 0.7, 0.1]))
    stages[50:55] = [None] * 5
    return start, events, prob, stages


def test_event_timeline_figure_with_and_without_scored_events() -> None:
    start, events, prob, stages = _night_breathing()
    _png_of(event_timeline_figure("rec-0", start, events, prob, stages))
    _png_of(event_timeline_figure("rec-0", start[::-1], events[::-1], prob[::-1]))  # any order, no stages
    _png_of(event_timeline_figure("no events scored", start, None, prob, stages))
    _png_of(event_timeline_figure("all NaN", start, np.full(len(start), np.nan), prob))
    _png_of(event_timeline_figure("some None", start, [None] * 10 + list(events[10:]), prob))
    # data strings are not matplotlib mathtext: a '$' pair in an id must not break the figure
    _png_of(event_timeline_figure("rec $x_$", start, events, prob))
    _png_of(hypnogram_figure("rec $x_$", start, stages, stages))


def test_event_timeline_figure_refuses_bad_input() -> None:
    start, events, prob, stages = _night_breathing()
    with pytest.raises(ValueError, match="one value per epoch"):
        event_timeline_figure("r", start, events[:-1], prob)
    with pytest.raises(ValueError, match="one value per epoch"):
        event_timeline_figure("r", start, events, prob, stages[:-3])
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        event_timeline_figure("r", start, events, prob * 3.0)  # expected counts, not probabilities
    with pytest.raises(ValueError, match="finite"):
        event_timeline_figure("r", np.full(len(start), np.nan), events, prob)


@pytest.fixture(scope="module")
def full_report() -> tuple[str, dict[str, int]]:
    """render_report with every new argument (built once: the figures take about a second)."""
    return _full_report()


def _full_report() -> tuple[str, dict[str, int]]:
    rng = np.random.default_rng(4)
    preds = _nights(2, 120)
    scored = preds.dropna(subset=["stage_true", "stage_pred"])
    metrics = evaluate(scored["stage_true"], scored["stage_pred"], C, "NREM")
    s5_true = rng.choice(STAGE5, 300, p=[0.1, 0.1, 0.6, 0.1, 0.1])
    s5_pred = np.where(rng.random(300) < 0.6, s5_true, rng.choice(STAGE5, 300))
    resp_true = rng.choice(RESP, 300, p=[0.7, 0.2, 0.1])
    resp_pred = np.where(rng.random(300) < 0.7, resp_true, rng.choice(RESP, 300))
    tasks = {"stage5": evaluate(s5_true, s5_pred, STAGE5, "N2"), "resp": evaluate(resp_true, resp_pred, RESP, "none")}
    true, pred = _ahi_pair()
    agreement = ahi_agreement(true, pred)
    breathing = pd.DataFrame(
        {
            "recording_id": [f"night-{k}" for k in range(len(true) - 1)] + [EVIL],
            "split": "test",
            "ahi_scored": true,
            "ahi_estimated": pred,
            "severity_scored": ["mild"] * len(true),
            "severity_estimated": ["moderate"] * len(true),
            "snore_index_scored": 12.34,
            "snore_index_estimated": 9.87,
        }
    )
    mel, weights = _attention_inputs()
    start, events, prob, stages = _night_breathing()
    figures = {
        "hypnograms": [
            hypnogram_figure(rec, n["start_s"].to_numpy(), list(n["stage_true"]), list(n["stage_pred"]))
            for rec, n in preds.groupby("recording_id")
        ],
        "ahi_figures": [ahi_scatter_figure(true, pred, agreement), bland_altman_figure(true, pred, agreement)],
        "attention_views": [
            attention_figure(
                mel,
                0.01,
                weights,
                0.5,
                title=f"{EVIL} epoch 3",
                centre=(30.0, 60.0),
                mask=np.repeat([True, True, False], 60),
            )
        ],
        "event_timelines": [event_timeline_figure(EVIL, start, events, prob, stages)],
    }
    meta = {"run_id": "r-full", "test_subjects": ["s1", "s2"]}
    text = render_report(
        ReportInputs(
            meta,
            metrics,
            preds.pipe(summarise_nights, stage_column="stage_pred"),
            figures["hypnograms"],
            [{"recording_id": EVIL, "reason_code": "no_audio", "reason": EVIL}],
            target_metrics=tasks,
            subject_ci={"accuracy": (0.512, 0.734), "kappa": [0.101, 0.402], "macro_f1": (np.nan, np.nan)},
            breathing=breathing,
            ahi=agreement,
            ahi_figures=figures["ahi_figures"],
            attention_views=figures["attention_views"],
            event_timelines=figures["event_timelines"],
        )
    )
    return text, {k: len(v) for k, v in figures.items()}


def test_report_with_every_new_section(full_report: tuple[str, dict[str, int]]) -> None:
    text, counts = full_report
    parser = _Collector()
    parser.feed(text)
    ids = [attrs.get("id") for _, attrs in parser.tags if attrs.get("id")]
    assert len(ids) == len(set(ids)), "element ids must be unique"
    assert {
        "contents",
        "run",
        "metrics",
        "per-class",
        "confusion",
        "task-stage5",
        "task-stage5-per-class",
        "task-stage5-confusion",
        "task-resp",
        "task-resp-per-class",
        "task-resp-confusion",
        "hypnograms",
        "attention",
        "ahi",
        "breathing",
        "ahi-agreement",
        "ahi-severity",
        "events",
        "nights",
        "quarantined",
    } <= set(ids)
    # the table of contents links every section heading, in page order
    links = [attrs["href"] for tag, attrs in parser.tags if tag == "a"]
    sections = [attrs["id"] for tag, attrs in parser.tags if tag == "h2"]
    assert links == [f"#{s}" for s in sections]
    assert sections.index("metrics") < sections.index("task-stage5") < sections.index("ahi") < sections.index("events")
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    # confusion matrices (stage3, stage5, resp) plus every figure passed in
    assert len(images) == 3 + sum(counts.values())
    for img in images:
        assert base64.b64decode((img["src"] or "").split(",", 1)[1])[:8] == PNG_MAGIC
    body = " ".join(parser.text)
    for needle in (
        "95% CI (subjects resampled)",
        "0.512 – 0.734",
        "0.101 – 0.402",
        "Held-out subjects: stage5 head",
        "Held-out subjects: resp head",
        "majority baseline (N2)",
        "majority baseline (none)",
        "apnea_hypopnea",
        "scored epochs",
        "night-0",
        "12.3",
        "9.9",
        "moderate",
        "AHI ≥ 5",
        "AHI ≥ 15",
        "AHI ≥ 30",
        "Pearson r",
        "bias (estimate - scored)",
        "severity kappa",
        "scored \\ estimated",
    ):
        assert needle in body, needle
    assert "paper, 30-s HuBERT" in body and body.count("paper, 30-s HuBERT") == 3  # stage3 only, one per class
    assert "<td>macro-F1</td>" in text and "– – –" not in body  # an undefined interval is one dash
    assert f"<td>{ahi_agreement(*_ahi_pair())['n_nights']}</td>" in text  # counts stay integers
    assert f"{ahi_agreement(*_ahi_pair())['pearson_r']:.2f}" in body


def test_full_report_is_self_contained_and_escaped(full_report: tuple[str, dict[str, int]]) -> None:
    text, _ = full_report
    assert "<script" not in text and "&lt;script&gt;" in text
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text and "data:audio" not in text and "<audio" not in text


def test_old_call_still_works_and_says_what_is_missing() -> None:
    text, n_hypnograms = _render()
    assert text.count("<img") == 1 + n_hypnograms  # nothing new drawn without new data
    parser = _Collector()
    parser.feed(text)
    ids = {attrs.get("id") for _, attrs in parser.tags}
    assert {"contents", "attention", "ahi", "events"} <= ids and not any(str(i).startswith("task-") for i in ids)
    for line in ("No attention weights to show", "no breathing figures", "No respiratory head: no event timelines"):
        assert line in text, line
    # breathing nights without an agreement (no respiratory head): the table, and one muted line for the rest
    text = render_report(
        ReportInputs(
            {"run_id": "r1"},
            None,
            None,
            [],
            [],
            target_metrics={"resp": None},
            breathing=pd.DataFrame({"recording_id": ["a"], "split": ["test"], "ahi_scored": [7.25]}),
        )
    )
    assert "7.2" in text and "no agreement figures" in text and "No labelled held-out epochs for this head" in text


def test_report_refuses_foreign_figures_and_bad_intervals() -> None:
    tag = ahi_scatter_figure([1.0, 20.0, 40.0], [2.0, 18.0, 33.0])
    for bad in (
        ['<img src="https://example.org/x.png">'],
        [tag + "<script>alert(1)</script>"],
        [tag.replace("<img ", "<img onerror=alert(1) ")],
        tag,
        [b"<img>"],
    ):
        for argument in ("ahi_figures", "attention_views", "event_timelines"):
            with pytest.raises(ValueError, match="<img>"):
                render_report(ReportInputs({"run_id": "r"}, **{argument: bad}))
    with pytest.raises(ValueError, match="subject_ci"):
        render_report(
            ReportInputs(
                {"run_id": "r"},
                evaluate(["Wake", "REM"], ["Wake", "NREM"], C, "NREM"),
                subject_ci={"accuracy": (0.1, 0.2, 0.3)},
            )
        )
    with pytest.raises(ValueError, match="DataFrame"):
        render_report(ReportInputs({"run_id": "r"}, breathing=[{"recording_id": "a"}]))  # type: ignore[arg-type]


def test_the_report_warns_when_its_figures_mean_little_and_says_when_it_was_written() -> None:
    """A one-class head and two held-out nights are said in the report, above the figures; the run
    table has readable labels and the date (issue 19)."""
    preds = _nights(2, 120)
    scored = preds.dropna(subset=["stage_true", "stage_pred"])
    one_class = evaluate(scored["stage_true"], ["NREM"] * len(scored), C, "NREM")
    meta = {"run_id": "r1", "written": "2026-12-05 01:00 UTC", "config_hash": "abc123", "held_out_nights": 2}
    text = render_report(ReportInputs(meta, one_class, pd.DataFrame(), [], []))
    parser = _Collector()
    parser.feed(text)
    body = " ".join(parser.text)
    assert "no better than always answering the training majority class" in body
    assert "rest on 2 nights" in body
    assert text.count("role='alert'") == 2
    assert text.index("role='alert'") < text.index("id='per-class'")  # read before the figures
    for label in ("report written", "2026-12-05 01:00 UTC", "configuration hash", "held-out nights"):
        assert label in body, label
    assert "config_hash" not in body
    good = render_report(
        ReportInputs(
            {**meta, "held_out_nights": 5},
            evaluate(scored["stage_true"], scored["stage_pred"], C, "NREM"),
            pd.DataFrame(),
            [],
            [],
        )
    )
    assert "role='alert'" not in good
