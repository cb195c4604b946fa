"""Every predicted night's clinical page and PDF, rendered in parallel when the run has Ray.

A page and its PDF cost about a third of a second of one core (matplotlib's layout and PDF
writer), so a cohort of 5,000 nights would spend half an hour in one process. Rendering is pure
(a night's predictions in, bytes out), so batches of nights go to Ray tasks and only the bytes
come back: every write stays in the calling task, under its run's hold on the root.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd

from sleepsound.core.records import HeadInfo, TrainedModels
from sleepsound.core.storage import RootLike, StorageRoot, full_uri, join, open_root, remove_tree, write_bytes_atomic
from sleepsound.ingest.manifest import read_manifest_rows
from sleepsound.labels.targets import PRIMARY, TARGETS
from sleepsound.report.night import NightFigures, night_figures, read_night_events, recording_start
from sleepsound.report.night_page import data_source_text, file_stem, night_pdf, render_night_html
from sleepsound.report.render import NightLink

NIGHTS_PER_TASK = 32  # about 10 s of rendering per task: enough to hide a task's start-up
# A small run is shared over the free CPUs, but a task carries at least this many nights: a fresh
# worker's imports (matplotlib, the report) cost about 2 s, four nights' rendering.
MIN_NIGHTS_PER_TASK = 4


@dataclass(frozen=True)
class NightJob:
    """One night to render: its predictions, its manifest row (clock times, data source) and file stem."""

    recording_id: str
    stem: str
    night: pd.DataFrame
    row: dict[str, Any] | None


@dataclass(frozen=True)
class RenderedNight:
    stem: str
    figures: NightFigures
    html: bytes
    pdf: bytes


def render_nights(
    root: str, run_id: str, jobs: list[NightJob], models: dict[str, str], resp: HeadInfo | None
) -> list[RenderedNight]:
    """The pages of ``jobs``, in order (reads the run's event tables; writes nothing)."""
    out = []
    for job in jobs:
        figures = night_figures(
            job.night,
            events=read_night_events(root, run_id, job.recording_id),
            start=recording_start(job.row.get("source_uris") or [], str(job.row.get("layout"))) if job.row else None,
            data_source=data_source_text(job.row),
            models=models,
            events_per_event_epoch=resp.get("events_per_event_epoch", 1.0) if resp else None,
            snore_share_per_snore_epoch=resp.get("snore_share_per_snore_epoch", 1.0) if resp else None,
        )
        html = render_night_html(figures, run_id, job.stem).encode()
        out.append(RenderedNight(job.stem, figures, html, night_pdf(figures, run_id)))
    return out


def _jobs(root: RootLike, preds: pd.DataFrame) -> list[NightJob]:
    try:
        rows = {str(r["recording_id"]): r for r in read_manifest_rows(root)}
    except FileNotFoundError:
        rows = {}
    jobs, used = [], set()
    for rec, night in preds.groupby("recording_id", sort=True):
        rec = str(rec)
        stem, n = file_stem(rec), 1
        while stem.lower() in used:  # two ids that differ only in characters a file name cannot hold
            n += 1
            stem = f"{file_stem(rec)}-{n}"
        used.add(stem.lower())
        jobs.append(NightJob(rec, stem, night, rows.get(rec)))
    return jobs


def _ray_cpus() -> int | None:
    """Whole CPUs the running Ray session has free now; None with no session up."""
    import ray

    if not ray.is_initialized():  # never start a session for a report
        return None
    return int(ray.available_resources().get("CPU", 0))


def _rendered(
    root: str,
    run_id: str,
    batches: list[list[NightJob]],
    models: dict[str, str],
    resp: HeadInfo | None,
    cpus: int,
) -> Iterator[list[RenderedNight]]:
    """Each batch's pages, in batch order. On Ray (``cpus`` > 0) the first batches are submitted now,
    before the caller asks for any (so the caller's own work overlaps them), and then about two
    batches per free CPU render ahead, no more (the pages of 5,000 nights would be a gigabyte in the
    object store). Without Ray nothing renders until the caller asks."""
    if not cpus:
        return (render_nights(root, run_id, batch, models, resp) for batch in batches)
    import ray

    remote = ray.remote(num_cpus=1, max_retries=2)(render_nights)
    ahead = max(2, cpus * 2)
    pending = deque(remote.remote(root, run_id, batch, models, resp) for batch in batches[:ahead])

    def collected() -> Iterator[list[RenderedNight]]:
        for batch in batches[ahead:]:
            yield ray.get(pending.popleft())  # in order: the report's links keep the nights' order
            pending.append(remote.remote(root, run_id, batch, models, resp))
        while pending:
            yield ray.get(pending.popleft())

    return collected()


def _drop_other_pages(store: StorageRoot, folder: str, stems: set[str]) -> None:
    """Remove the pages of nights this run no longer holds (a rerun after a night was quarantined): the
    folder then holds the pages of the nights its report lists and no other."""
    try:
        listed = store.fs.ls(folder, detail=False)
    except FileNotFoundError:
        return
    for path in listed:
        stem, dot, suffix = path.rsplit("/", 1)[-1].rpartition(".")
        if dot and suffix in ("html", "pdf") and stem not in stems:
            remove_tree(store.fs, path)


def start_night_reports(
    root: RootLike,
    run_id: str,
    preds: pd.DataFrame,
    model: TrainedModels,
    backbone: str | None,
    use_ray: bool = False,
    nights_per_task: int = NIGHTS_PER_TASK,
) -> Callable[[], tuple[list[NightLink], list[NightFigures]]]:
    """Every predicted night's clinical report, ``runs/<run_id>/report/nights/<rec>.html`` and ``.pdf``:
    starts the rendering and returns the call that waits for the pages, writes them and returns
    their links and figures.

    The breathing events are the run's event table where it wrote one, the per-epoch
    probabilities otherwise (``night.night_figures``); the clock times come from the night's
    first EDF header where it has one. ``use_ray``: where a Ray session is up, batches of at most
    ``nights_per_task`` nights (fewer, so that every free CPU gets a share of a small run) render as
    Ray tasks from this call on, so the caller can draw the run's own figures meanwhile (the calling
    process still writes every file, when it makes the returned call).
    """
    store = open_root(root)
    heads = model.get("heads") or {PRIMARY: model}
    named = sorted(heads.items(), key=lambda kv: list(TARGETS).index(kv[0]) if kv[0] in TARGETS else len(TARGETS))
    models = {name: str(info.get("version")) for name, info in named if info.get("version")}
    if backbone:
        models["backbone"] = backbone.rstrip("/").rsplit("/", 1)[-1]
    jobs = _jobs(store, preds)
    per_task = max(1, nights_per_task)
    free = _ray_cpus() if use_ray else None
    cpus = free or 0
    if free == 0 and len(jobs) > per_task:  # a large run waits for CPUs on Ray rather than rendering
        cpus = 1  # hours of pages in this one process
    if cpus:  # a small run's nights shared over the free CPUs: 20 nights on 2 CPUs 17.6 -> 9.6 s
        per_task = min(per_task, max(MIN_NIGHTS_PER_TASK, math.ceil(len(jobs) / cpus)))
    # Whole free CPUs only: 1.9 rounded up made two tasks on a 2-core flow, the second waiting for the
    # first (the score benchmark's report 19 -> 32 s). With none free a small run renders here.
    batches = [jobs[i : i + per_task] for i in range(0, len(jobs), per_task)]
    folder = join(store.path, "runs", run_id, "report", "nights")
    pages = _rendered(full_uri(store.fs, store.path), run_id, batches, models, heads.get("resp"), cpus)

    def written() -> tuple[list[NightLink], list[NightFigures]]:
        links: list[NightLink] = []
        nights: list[NightFigures] = []
        for batch, rendered in zip(batches, pages, strict=True):
            for job, page in zip(batch, rendered, strict=True):
                write_bytes_atomic(store.fs, join(folder, f"{page.stem}.html"), page.html)
                write_bytes_atomic(store.fs, join(folder, f"{page.stem}.pdf"), page.pdf)
                figures = page.figures
                nights.append(figures)
                links.append(
                    NightLink(
                        recording_id=job.recording_id,
                        subject_id=figures.subject_id,
                        html=f"nights/{page.stem}.html",
                        pdf=f"nights/{page.stem}.pdf",
                        study_date=figures.start.strftime("%Y-%m-%d") if figures.start else None,
                        ahi=figures.ahi["ahi"],
                        snore_index=figures.snore_index,
                        sleep_efficiency=figures.summary["sleep_efficiency"],
                        source="event table" if figures.events is not None else "per-epoch",
                    )
                )
        _drop_other_pages(store, folder, {link["html"].rsplit("/", 1)[-1].removesuffix(".html") for link in links})
        return links, nights

    return written
