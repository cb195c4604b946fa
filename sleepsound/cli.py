"""The ``sleepsound`` command: the one door from the library to the orchestrator.

Heavy imports (torch, Ray, Prefect) happen inside the commands, so ``--help`` is instant
and Prefect reads its settings only after the local API has been announced.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sleepsound.core.json_text import figures_json
from sleepsound.core.text import plain, printable, without_credentials

if TYPE_CHECKING:
    from pydantic import ValidationError

    from sleepsound.core.config import Config

# Tracebacks never show local variables: they can hold credentials and patient ids.
app = typer.Typer(
    help="Sleep stages and breathing events from overnight audio.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
_DEBUG = {"on": False}  # set by --debug: an unexpected error shows its traceback
# Piped or captured, tables are as wide as their cells: ids cut to fit 80 columns are useless to
# the next command (`--model stage3=<version>`). On a terminal rich fits them to the window.
console = Console(width=None if sys.stdout.isatty() else 1000)
# Errors never wrap where nobody reads them on a terminal: a path broken over two lines of a log
# cannot be copied (nor grepped for).
err_console = Console(stderr=True, soft_wrap=not sys.stderr.isatty())


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"sleepsound {version('sleepsound')}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an unexpected error.")] = False,
) -> None:
    """Sleep stages and breathing events from overnight audio."""
    _DEBUG["on"] = debug


SYNTH_ASK_GB = 4  # a cohort larger than this is written only when the user says so

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML configuration file.")]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a setting: section.key=value (repeatable).")
]
RayOpt = Annotated[
    Optional[str],
    typer.Option(
        "--ray-address",
        help="Existing Ray cluster: ray://HOST:10001, or auto for one started on this machine with `ray start` "
        "(default: start a local one of this run's own).",
    ),
]
RunIdOpt = Annotated[Optional[str], typer.Option(help="Name of this run (default: a timestamp).")]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the run's summary as one JSON object (status lines go to stderr).")
]
MetricOpt = Annotated[str, typer.Option(help="Metric a challenger must improve: macro_f1, kappa or accuracy.")]
MarginOpt = Annotated[float, typer.Option(help="How much better than the champion a challenger must be.")]
# Recorded background clips (synth, breathing-eval): which of the folder's clips play.
BackgroundCategoriesOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="With --real-background and --background-only: the label,first,last,category file naming "
        "the clips' categories by file number (default: categories.csv in the folder)."
    ),
]
BackgroundOnlyOpt = Annotated[
    Optional[str],
    typer.Option(help="With --real-background: play only the clips of these categories (comma list)."),
]


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the cohort into.")],
    subjects: Annotated[int, typer.Option(help="Number of nights (one per subject).")] = 4,
    hours: Annotated[float, typer.Option(help="Length of each night in hours.")] = 8.0,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same files.")] = 0,
    sample_rate: Annotated[int, typer.Option(help="Microphone sample rate in Hz.")] = 48_000,
    layout: Annotated[str, typer.Option(help="'psg-audio' (EDF + RML) or 'plain' (FLAC + CSV).")] = "psg-audio",
    cycle_minutes: Annotated[float, typer.Option(help="Sleep-cycle length; shorten for short demo nights.")] = 90.0,
    yes: Annotated[bool, typer.Option("--yes", help=f"Write more than {SYNTH_ASK_GB} GB without asking.")] = False,
    style: Annotated[
        str,
        typer.Option(
            help="Generator style: classic, varied, phone-fan, tv-bedroom, hvac-hall, quiet-electret; "
            "'mixed' or a comma list gives the nights these styles in turn."
        ),
    ] = "classic",
    speech: Annotated[
        str, typer.Option(help="TV and sleep-talk voices of styled nights: espeak (espeak-ng), synth, or auto.")
    ] = "auto",
    snoring: Annotated[
        bool,
        typer.Option(
            "--snoring/--no-snoring",
            help="--no-snoring: nights without any snore (every other draw unchanged), e.g. a TV or fan "
            "night for the snore index's false alarms.",
        ),
    ] = True,
    real_snores: Annotated[
        Optional[Path],
        typer.Option(
            help="Folder of recorded snore clips (WAV/FLAC/OGG, any rate) laid on the snored breaths "
            "instead of the generator's snores, level-matched; the same folder and seed give the same files."
        ),
    ] = None,
    real_background: Annotated[
        Optional[Path],
        typer.Option(
            help="Folder of recorded background clips (e.g. TV news, people talking; WAV/FLAC/OGG, any rate) "
            "strung together as the night's TV instead of the generator's speech, at the TV's level; a "
            "style without a TV gets one at the tv-bedroom style's levels and schedule."
        ),
    ] = None,
    background_categories: BackgroundCategoriesOpt = None,
    background_only: BackgroundOnlyOpt = None,
) -> None:
    """Write a deterministic synthetic cohort in PSG-Audio (or plain) layout.

    Full nights are large (an 8-hour 48 kHz PSG-Audio night is about 5.5 GB): above a few GB the
    command asks first (or needs --yes when it cannot ask), and refuses what the disk cannot hold.
    """

    from sleepsound.core.storage import free_bytes_at
    from sleepsound.synth.realsnores import BACKGROUND_CLIPS, skipped_clips
    from sleepsound.synth.styles import CLASSIC, SPEECH_SOURCES, resolve_speech_source, resolve_styles
    from sleepsound.synth.writers import CohortRefused, check_cohort_args, generate_cohort

    try:
        check_cohort_args(subjects, hours, sample_rate, layout, cycle_minutes, seed)
        resolve_styles(style)
        if speech not in SPEECH_SOURCES:
            raise ValueError(f"--speech must be one of {', '.join(SPEECH_SOURCES)}")
        if style != CLASSIC:  # only styled nights talk: espeak-ng without espeak-ng is refused here
            resolve_speech_source(speech)
        skipped = [("--real-snores", *s) for s in (skipped_clips(real_snores) if real_snores else ())]
        if real_background:
            skipped += [("--real-background", *s) for s in skipped_clips(real_background, BACKGROUND_CLIPS)]
        only = _background_only(real_background, background_categories, background_only)
    except ValueError as exc:
        raise _refused("not written", exc) from None
    for option, name, why in skipped:  # unusable files are left out by name (cohort.json lists them too)
        err_console.print(f"{option}: skipped {printable(name)}: {why}", soft_wrap=True, highlight=False, markup=False)

    # EDF holds Mic and Tracheal at 16 bits; plain audio is one 16-bit channel before compression.
    per_second = sample_rate * 2 * (2 if layout == "psg-audio" else 1)
    size_gb = subjects * hours * 3600 * per_second / 1e9
    existing, free = free_bytes_at(out.resolve())
    free_gb = free / 1e9
    if size_gb > free_gb:
        err_console.print(
            f"[red]not written:[/red] {subjects} night(s) of {hours:g} h at {sample_rate} Hz need about "
            f"{size_gb:.1f} GB; {existing} has {free_gb:.1f} GB free"
        )
        raise typer.Exit(2)
    if size_gb > SYNTH_ASK_GB and not yes:
        shape = f"{subjects} night(s) of {hours:g} h at {sample_rate} Hz: about {size_gb:.1f} GB"
        if not sys.stdin.isatty():
            err_console.print(
                f"[red]not written:[/red] {shape}; pass --yes to write it, or ask for less "
                "(e.g. --subjects 2 --hours 1 --sample-rate 16000 --cycle-minutes 20)"
            )
            raise typer.Exit(2)
        if not typer.confirm(f"write {shape} to {out}?"):
            raise typer.Exit(1)

    try:
        summaries = generate_cohort(
            out,
            n_subjects=subjects,
            hours=hours,
            seed=seed,
            sample_rate=sample_rate,
            layout=layout,
            cycle_minutes=cycle_minutes,
            style=style,
            speech_source=speech,
            snoring=snoring,
            real_snores=real_snores,
            real_background=real_background,
            real_background_only=only,
            refuse_other=True,
        )
    except CohortRefused as exc:  # refused before anything was written
        raise _refused("not written", exc) from None
    table = Table("subject", "hours", "epochs", "AHI", "style")
    for s in summaries:
        table.add_row(str(s.subject_id), f"{s.hours:.2f}", str(s.n_epochs), f"{s.ahi:.1f}", s.style)
    console.print(table)
    console.print(f"cohort written to [bold]{out}[/bold]")


@app.command()
def validate(
    source: Annotated[str, typer.Argument(help="Folder or s3:// prefix holding recordings.")],
    root: Annotated[
        Optional[str], typer.Option(help="Storage root to write the manifest (with findings) into.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    deep: Annotated[
        bool,
        typer.Option(
            "--deep/--quick",
            help="Also stream the audio for NaN/Inf, clipping, "
            "zero-RMS epochs and silent gaps (--quick: headers and labels only).",
        ),
    ] = True,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Check recordings without embedding anything; exit 0 however many are quarantined.

    Exit 2 only when validation could not run (bad arguments, unreachable storage, a root
    another run holds: with --root it writes the manifest, so it holds the root like every
    writing command, and refuses before validating anything).
    """
    cfg = _load_config(config, overrides)
    from datetime import UTC, datetime

    from sleepsound.ingest.discovery import discover, nothing_found
    from sleepsound.ingest.manifest import build_manifest, write_manifest
    from sleepsound.runs.preflight import NotStartable, check_source
    from sleepsound.runs.root_lock import RootBusy, RootLost, hold_root

    if not source.strip():  # "" would be read as the current folder
        err_console.print(
            "[red]nothing to validate:[/red] the source is empty: name the folder or s3:// prefix that holds "
            "the recordings",
            soft_wrap=True,
        )
        raise typer.Exit(2)
    remote = "://" in source and not source.startswith("file://")  # unreachable storage: one line, exit 2
    if remote or os.path.isfile(source.removeprefix("file://")) or "@" in source:
        try:  # the flow commands' words for it (runs.preflight): a file, credentials in a URL
            check_source(source)
        except NotStartable as exc:
            message = str(exc).removeprefix("--source ")
            err_console.print(f"[red]nothing to validate:[/red] source {escape(message)}", soft_wrap=True)
            raise typer.Exit(2) from exc
    try:
        found = discover(source)
        if not found:  # before the root is touched: an empty manifest would replace its rows
            err_console.print(f"[red]nothing to validate:[/red] {escape(nothing_found(source))}", soft_wrap=True)
            raise typer.Exit(2)
        if root:
            with hold_root(root, datetime.now(UTC).strftime("validate-%Y%m%dT%H%M%SZ"), "validate"):
                rows = build_manifest(source, cfg.preprocess, cfg.validation, deep=deep, found=found)
                write_manifest(root, rows)
        else:
            rows = build_manifest(source, cfg.preprocess, cfg.validation, deep=deep, found=found)
    except RootBusy as exc:
        raise _refused("not started", exc) from exc
    except (OSError, RootLost) as exc:
        raise _refused("cannot run validation", exc) from exc
    accepted = [r for r in rows if r["status"] == "accepted"]
    findings = [{"recording": r["recording_id"], **f} for r in rows for f in r["findings"]]
    if as_json:
        print(
            json.dumps(
                {
                    "discovered": len(rows),
                    "accepted": len(accepted),
                    "quarantined": len(rows) - len(accepted),
                    "findings": findings,
                }
            )
        )
        return
    table = Table("recording", "status", "hours", "rate", "labels", "warnings", "reason")
    for r in rows:
        hours = f"{r['duration_s'] / 3600:.2f}" if r["duration_s"] else "-"
        rate = f"{r['sample_rate']:g}" if r["sample_rate"] else "-"
        warnings = sum(f["severity"] == "warning" for f in r["findings"])
        table.add_row(
            plain(r["recording_id"]),
            r["status"],
            hours,
            rate,
            r["label_source"],
            str(warnings),
            plain(r["reason"] or ""),
        )
    console.print(table)
    if any(f["severity"] == "warning" for f in findings):
        details = Table("recording", "level", "code", "message", title="warnings (processed, but read these)")
        for f in findings:
            if f["severity"] == "warning":
                details.add_row(plain(f["recording"]), f["level"], f["code"], plain(f["message"]))
        console.print(details)
    console.print(f"{len(rows)} discovered, {len(accepted)} accepted, {len(rows) - len(accepted)} quarantined")


@app.command()
def run(
    source: Annotated[str, typer.Option(help="Folder or s3:// prefix holding recordings.")],
    root: Annotated[str, typer.Option(help="Storage root (path, file:// or s3://) for every artifact.")],
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    ray_address: RayOpt = None,
    run_id: RunIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the whole workflow (validate, embed, train, predict, report) as a Prefect flow on Ray."""
    cfg = _load_config(config, overrides)
    result = _run_flow(source, root, cfg.model_dump(), ray_address, run_id)
    _print_results(result, as_json)


@app.command()
def train(
    source: Annotated[str, typer.Option(help="Folder or s3:// prefix holding the recordings.")],
    root: Annotated[str, typer.Option(help="Storage root: models are registered and promoted there.")],
    metric: MetricOpt = "macro_f1",
    margin: MarginOpt = 0.01,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    ray_address: RayOpt = None,
    run_id: RunIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Retrain every head and promote each only if it beats its champion on the fixed evaluation set."""
    _check_metric(metric)
    cfg = _load_config(config, overrides)
    result = _run_flow(source, root, cfg.model_dump(), ray_address, run_id, flow="train", metric=metric, margin=margin)
    _print_results(result, as_json)


@app.command()
def nightly(
    source: Annotated[str, typer.Option(help="Folder or s3:// prefix that new recordings arrive in.")],
    root: Annotated[str, typer.Option(help="Storage root: models, state and outputs.")],
    metric: MetricOpt = "macro_f1",
    margin: MarginOpt = 0.01,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    ray_address: RayOpt = None,
    run_id: RunIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Do only what is new: embed new nights, retrain and maybe promote if some are labelled, score them."""
    _check_metric(metric)
    cfg = _load_config(config, overrides)
    result = _run_flow(
        source, root, cfg.model_dump(), ray_address, run_id, flow="nightly", metric=metric, margin=margin
    )
    if as_json:
        _print_results(result, as_json)
        return
    new = result["new"]
    console.print(
        f"new nights: {len(new['labelled'])} labelled, {len(new['unlabelled'])} unlabelled; "
        f"retrained: {'yes' if result['trained'] else 'no'}"
    )
    if result["report"] is None:
        console.print("nothing new to score")
        return
    _print_results(result)


@app.command()
def deploy(
    source: Annotated[str, typer.Option(help="Where new recordings arrive (folder or s3:// prefix).")],
    root: Annotated[str, typer.Option(help="Storage root of models, state and outputs.")],
    cron: Annotated[str, typer.Option(help="When the nightly deployment runs (cron, in --timezone).")] = "0 2 * * *",
    timezone: Annotated[str, typer.Option(help="Time zone of the cron schedule.")] = "UTC",
    work_pool: Annotated[
        str, typer.Option(help="Prefect work pool (created as a process pool if missing).")
    ] = "sleepsound",
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Register the nightly (scheduled), train and score deployments with the Prefect API in PREFECT_API_URL."""
    import os

    if not os.environ.get("PREFECT_API_URL"):
        console.print("[red]set PREFECT_API_URL to the Prefect server that should hold the deployments[/red]")
        raise typer.Exit(2)
    cfg = _load_config(config, overrides)
    from flows.deploy import register_deployments

    ids = register_deployments(
        source, root, cfg.model_dump(), cron=cron, timezone=timezone, work_pool=work_pool, ray_address=ray_address
    )
    for name, deployment_id in ids.items():
        print(f"{name}: {deployment_id}")
    print(f"start a worker where the package is installed: prefect worker start --pool {work_pool}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    address: Annotated[str, typer.Option(help="The Ray cluster's job API, e.g. http://ray-head:8265.")],
    flow: Annotated[str, typer.Argument(help="run, score, train or nightly; its options follow.")],
    working_dir: Annotated[Optional[str], typer.Option(help="Upload this folder as the job's code.")] = None,
    follow: Annotated[bool, typer.Option("--follow/--no-follow", help="Stream the job's logs until it ends.")] = True,
    forward_secret: Annotated[
        Optional[list[str]],
        typer.Option(
            "--forward-secret",
            help="Send this secret-looking variable (e.g. AWS_SECRET_ACCESS_KEY) with the job anyway (repeatable); "
            "anyone who can read the Ray dashboard or Jobs API reads it in plain text. By default none is sent: "
            "the job uses the cluster's own credentials.",
        ),
    ] = None,
) -> None:
    """Run a flow on a Ray cluster as a Ray job (the flow's own options after it) and follow its logs.
    With ``sleepsound --debug submit`` the job runs with --debug too."""
    from sleepsound.runs.submit import submit_flow

    try:
        result = submit_flow(
            address,
            flow,
            ctx.args,
            working_dir=working_dir,
            forward_secrets=forward_secret or (),
            follow=follow,
            debug=_DEBUG["on"],  # `sleepsound --debug submit ...`: the job's own errors show their traceback too
        )
    except ValueError as exc:
        raise _refused(None, exc) from exc
    print(f"Ray job {result['job_id']}: {result['status']}")
    raise typer.Exit(0 if result["status"] == "SUCCEEDED" else 1)


@app.command()
def score(
    source: Annotated[str, typer.Option(help="Folder or s3:// prefix holding the recordings to score.")],
    root: Annotated[str, typer.Option(help="Storage root holding the registered models; outputs go there too.")],
    model: Annotated[
        Optional[list[str]],
        typer.Option("--model", help="Use this version instead of a task's champion: TASK=VERSION (repeatable)."),
    ] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    ray_address: RayOpt = None,
    run_id: RunIdOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Score a cohort with the registered models (champions by default): validate, embed, predict, report."""
    from sleepsound.registry.serving import parse_versions

    cfg = _load_config(config, overrides)
    try:
        versions = parse_versions(model)
    except ValueError as exc:
        console.print(f"[red]{escape(printable(exc))}[/red]")
        raise typer.Exit(2) from exc
    result = _run_flow(source, root, cfg.model_dump(), ray_address, run_id, flow="score", versions=versions)
    _print_results(result, as_json)


def _background_only(folder: Path | None, categories: Path | None, only: str | None) -> tuple[str, ...] | None:
    """The clips ``--background-only`` picks from ``--real-background`` (None: all); ValueError on a bad folder."""
    from sleepsound.synth.realbackground import select_clips
    from sleepsound.synth.realsnores import clip_names

    if folder is None:
        if only is not None or categories is not None:
            raise ValueError("--background-only and --background-categories need --real-background")
        return None
    clip_names(folder, "background clips")
    if only is None:
        return None
    wanted = [c.strip() for c in only.split(",") if c.strip()]
    return select_clips(folder, categories if categories is not None else folder / "categories.csv", wanted)


@app.command("breathing-eval")
def breathing_eval(
    cohorts: Annotated[
        Path, typer.Argument(help="Folder of <style>/<events|clean>/ cohorts (written there with --build).")
    ],
    root: Annotated[
        str, typer.Option(help="Storage root: caches the nights' envelopes; the report goes to transfer/.")
    ],
    held_out: Annotated[
        str, typer.Option(help="Comma list of styles held out of any fitting.")
    ] = "phone-fan,tv-bedroom,hvac-hall",
    build: Annotated[bool, typer.Option(help="Write the cohorts first (kept when already written alike).")] = False,
    styles: Annotated[
        str, typer.Option(help="Styles to build (with --build).")
    ] = "classic,varied,quiet-electret,phone-fan,tv-bedroom,hvac-hall",
    nights: Annotated[int, typer.Option(help="Nights with events per style.")] = 2,
    clean: Annotated[int, typer.Option(help="Nights without events per style.")] = 1,
    hours: Annotated[float, typer.Option(help="Hours per night.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the cohorts.")] = 17,
    min_confidence: Annotated[
        Optional[float], typer.Option(help="Use this cut instead of fitting it on the development styles.")
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="Write the JSON report here instead of <root>/transfer/.")] = None,
    real_snores: Annotated[
        Optional[Path],
        typer.Option(
            help="With --build: also write every held-out style's nights with these recorded snore clips "
            "(groups <style>+real, same night plans), reported apart as 'real snores', never fitted on."
        ),
    ] = None,
    real_background: Annotated[
        Optional[Path],
        typer.Option(
            help="With --build: also write every held-out style's nights with these recorded background clips "
            "as their TV (groups <style>+realbg, same night plans), reported apart as 'real background', "
            "never fitted on; with --real-snores too, also both recorded sounds together (<style>+recorded, "
            "'real snores and background')."
        ),
    ] = None,
    background_categories: BackgroundCategoriesOpt = None,
    background_only: BackgroundOnlyOpt = None,
    backbone: Annotated[
        Optional[str],
        typer.Option(
            help="Also evaluate trained heads: embed every night with this backbone (e.g. "
            "whisper-tiny.en-offline), train the respiratory and per-second snoring heads on the development "
            "styles' nights, and report the head's REI/AHI error and the detector with the snoring head "
            "typing its breaths, per group."
        ),
    ] = None,
    overrides: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="With --backbone: a setting of the heads, section.key=value (repeatable)."),
    ] = None,
    speech: Annotated[
        str,
        typer.Option(
            help="With --build: the styled nights' TV and sleep-talk voices, espeak (espeak-ng), synth, or auto "
            "(espeak-ng where installed); a cohort voiced otherwise is written again."
        ),
    ] = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Transfer evaluation of the breathing-event detector: whole generator styles held out."""
    from sleepsound.breathing.transfer import format_report, report_json, run_transfer

    try:
        only = _background_only(real_background, background_categories, background_only)
        report, path = run_transfer(
            cohorts,
            root,
            [s.strip() for s in held_out.split(",") if s.strip()],
            build,
            [s.strip() for s in styles.split(",") if s.strip()],
            nights,
            clean,
            hours,
            seed,
            min_confidence,
            out,
            progress=lambda msg: err_console.print(msg),
            real_snores=real_snores,
            real_background=real_background,
            real_background_only=only,
            backbone=backbone,
            head_overrides=overrides,
            speech_source=speech,
        )
    except (OSError, ValueError) as exc:  # bad options, no cohorts, a report that cannot be written: one line
        raise _refused(None, exc) from None
    if as_json:
        print(report_json(report))
    else:
        print(format_report(report))
        err_console.print(f"report written to {escape(str(path))}")


@app.command()
def demo(
    root: Annotated[
        str, typer.Option(help="Storage root for the demo's outputs (path or s3://).")
    ] = "./sleepsound-demo",
    subjects: Annotated[int, typer.Option(help="Synthetic nights to generate.")] = 6,
    hours: Annotated[float, typer.Option(help="Length of each synthetic night in hours.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic cohort.")] = 7,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    ray_address: RayOpt = None,
) -> None:
    """Generate a small synthetic cohort and run the full workflow on it."""
    from sleepsound.core.storage import free_bytes_at
    from sleepsound.recipes.demo import DEMO_CYCLE_MINUTES, DEMO_OVERRIDES, DEMO_SAMPLE_RATE, ensure_demo_cohort
    from sleepsound.runs.preflight import check_root_writable
    from sleepsound.synth.writers import check_cohort_args

    cfg = _load_config(config, overrides, extra=DEMO_OVERRIDES)  # refused before the cohort is generated
    source = Path(".sleepsound-demo-source")
    # Before the old cohort is removed or a new one generated: a bad size removed the last demo's nights and
    # ended "not expected", an unwritable --root was found only after the generation, and any size was started.
    try:
        check_cohort_args(subjects, hours, DEMO_SAMPLE_RATE, "psg-audio", DEMO_CYCLE_MINUTES, seed)
        check_root_writable(root)
        size = subjects * hours * 3600 * DEMO_SAMPLE_RATE * 2 * 2  # two 16-bit microphones
        existing, free = free_bytes_at(source.resolve())
        if size > free:
            raise ValueError(
                f"{subjects} night(s) of {hours:g} h need about {size / 1e9:.1f} GB; {existing} has "
                f"{free / 1e9:.1f} GB free (use fewer --subjects or --hours)"
            )
    except ValueError as exc:
        raise _refused("not started", exc) from None
    source = ensure_demo_cohort(source, subjects, hours, seed, console)
    result = _run_flow(str(source), root, cfg.model_dump(), ray_address, "demo")
    _print_results(result)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port of the Prefect UI on 127.0.0.1.", min=1, max=65535)] = 4200,
) -> None:
    """Browse the flow and task runs of local runs in Prefect's UI (state kept in ./.prefect)."""
    import os
    import subprocess

    from sleepsound.runs.prefect_api import OFFLINE_ENV

    home = Path(".prefect").resolve()
    if not home.is_dir():  # a file there was a database traceback
        what = "is not a folder" if home.exists() else "holds no local Prefect state"
        err_console.print(f"[red]./.prefect {what}:[/red] run `sleepsound run` or `sleepsound demo` first")
        raise typer.Exit(2)
    console.print(f"Prefect UI at http://127.0.0.1:{port} (Ctrl-C to stop)")
    env = {**os.environ, **OFFLINE_ENV, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    raise typer.Exit(
        subprocess.call(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env
        )
    )


@app.command()
def cv(
    root: Annotated[str, typer.Option(help="Storage root of an earlier run (its manifest and embedding cache).")],
    folds: Annotated[int, typer.Option(help="Number of subject folds.")] = 5,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Subject-wise k-fold cross-validation of the heads on the cached embeddings (nothing is registered)."""
    cfg = _load_config(config, overrides)
    from sleepsound.ingest.manifest import read_manifest
    from sleepsound.train.cross_validation import cross_validate

    _check_models_root(root)  # missing, a file, or unreachable storage: one line, exit 2
    try:
        result = cross_validate(root, cfg, read_manifest(root), folds)
    except (ValueError, OSError) as exc:
        raise _refused("cannot cross-validate", exc) from exc
    if as_json:
        print(figures_json(result))
        return
    table = Table(
        "task",
        "macro-F1 mean ± SD",
        "accuracy mean ± SD",
        "pooled macro-F1",
        "pooled kappa",
        title=f"{result['k']}-fold cross-validation by subject (seed {result['seed']})",
    )
    for name, figures in result["tasks"].items():
        if "per_fold" not in figures:
            table.add_row(name, "skipped", "", "", "")
            continue
        table.add_row(
            name,
            f"{figures['macro_f1_mean']:.3f} ± {figures['macro_f1_sd']:.3f}",
            f"{figures['accuracy_mean']:.3f} ± {figures['accuracy_sd']:.3f}",
            f"{figures['pooled']['macro_f1']:.3f}",
            f"{figures['pooled']['kappa']:.3f}",
        )
    console.print(table)


@app.command("reproduce-embc2025")
def reproduce_embc2025_command(
    psg_audio: Annotated[str, typer.Option("--psg-audio", help="A copy of PSG-Audio (folder or s3:// prefix).")],
    root: Annotated[str, typer.Option(help="Storage root for the manifest, the caches and the result.")],
    backbone: Annotated[
        str, typer.Option(help="The HuBERT model (Hugging Face id or local folder).")
    ] = "facebook/hubert-base-ls960",
    models: Annotated[
        Optional[list[str]],
        typer.Option(
            "--model", help="Only these rows of Table II (repeatable): SoundSleepNet, 30-s HuBERT, 90-s HuBERT."
        ),
    ] = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    local: Annotated[bool, typer.Option("--local/--ray", help="Embed in this process instead of Ray Data.")] = False,
    mel_pool_seconds: Annotated[float, typer.Option(help="Time resolution of SoundSleepNet's Mel frames.")] = 0.1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
) -> None:
    """Run the EMBC 2025 paper's protocol and print its Table II beside the paper's numbers."""
    cfg = _load_config(config, overrides)
    from datetime import UTC, datetime

    from sleepsound.recipes.embc2025 import reproduce_embc2025
    from sleepsound.runs.root_lock import RootBusy, RootLost, hold_root

    run_id = datetime.now(UTC).strftime("reproduce-%Y%m%dT%H%M%SZ")
    try:  # it writes the root's manifest and caches: held like every writing command
        with hold_root(root, run_id, "reproduce"):
            result = reproduce_embc2025(
                psg_audio,
                root,
                cfg,
                backbone=backbone,
                use_ray=not local,
                models=models,
                mel_pool_seconds=mel_pool_seconds,
            )
    except RootBusy as exc:
        raise _refused("not started", exc) from exc
    except (ValueError, OSError, RootLost) as exc:
        raise _refused("cannot reproduce", exc) from exc
    if as_json:
        print(figures_json(result))
        return
    table = Table(
        "model",
        "class",
        "SE",
        "SP",
        "PPV",
        "NPV",
        title=(
            f"Table II: {result['test_participants']} test / {result['train_participants']} training participants "
            f"({len(result['excluded'])} recordings excluded), the HuBERT rows with {result['backbone']}; "
            "paper's figures in brackets"
        ),
    )
    for row in result["table_ii"]:
        cells = [
            f"{row[c]:.2f} ({row[f'paper_{c}']:.2f})" if row[f"paper_{c}"] is not None else f"{row[c]:.2f}"
            for c in ("SE", "SP", "PPV", "NPV")
        ]
        table.add_row(row["model"], row["class"], *cells)
    console.print(table)
    for name, m in result["models"].items():
        console.print(
            f"{name}: accuracy {m['accuracy']:.3f}, kappa {m['kappa']:.3f}, macro-F1 {m['macro_f1']:.3f} "
            f"(majority baseline macro-F1 {m['baseline_macro_f1']:.3f})"
        )


from sleepsound.bench.cli import bench_app  # noqa: E402  (typer only: no heavy imports at --help)

app.add_typer(bench_app, name="bench")

from sleepsound.clips.cli import clips_app  # noqa: E402  (typer only: no heavy imports at --help)

app.add_typer(clips_app, name="clips")

from sleepsound.monitor.cli import monitor_app  # noqa: E402  (typer only: no heavy imports at --help)

app.add_typer(monitor_app, name="monitor")

models_app = typer.Typer(
    help="Trained heads stored under a storage root: versions, champion, lineage.", no_args_is_help=True
)
app.add_typer(models_app, name="models")
RootOpt = Annotated[str, typer.Option(help="Storage root (path, file:// or s3://).")]


def _check_models_root(root: str) -> None:
    """Exit 2 with one line unless ``root`` is a folder (or object-store prefix) that exists: a file given
    as the root was listed as "no models" with exit 0, and a missing root was told to name a version."""
    from sleepsound.core.storage import open_root

    store = open_root(root)
    try:
        exists = store.fs.exists(store.path)
        folder = exists and store.fs.isdir(store.path)
    except Exception as exc:  # botocore's NoCredentialsError or EndpointConnectionError are no OSErrors
        raise _refused(
            None,
            OSError(
                f"storage root {root} cannot be read ({type(exc).__name__}: {exc}); check the address and credentials"
            ),
        ) from exc
    if not exists:
        raise _refused(None, FileNotFoundError(f"no storage root at {root}: check the path"))
    if not folder:
        raise _refused(None, NotADirectoryError(f"--root {root} is a file: give the storage root folder"))


@models_app.command("list")
def models_list(
    root: RootOpt,
    task: Annotated[Optional[str], typer.Option(help="Only this task (default: every task).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Every stored version, oldest first; the champion is marked."""
    from sleepsound.registry import store as model_store

    _check_models_root(root)
    # Every refusal goes through _refused: a store's folder names (a damaged store's too) and the user's --task
    # are text, never markup ('[/x]' was a MarkupError) nor terminal control (an ESC reached the terminal).
    try:  # a damaged or tampered store names its file (DamagedStore is a ModelNotFound)
        known = model_store.targets(root)
        if task and task not in known:
            have = ", ".join(known) or "none yet"
            raise model_store.ModelNotFound(f"no models of task {task!r} under {root} (tasks here: {have})")
        rows = [v for t in ([task] if task else known) for v in model_store.versions(root, t)]
    except model_store.ModelNotFound as exc:
        raise _refused(None, exc) from exc
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("task", "version", "champion", "head", "context", "train subjects", "macro-F1", "kappa")
    for v in rows:
        table.add_row(
            v["task"],
            v["version"],
            "*" if v["champion"] else "",
            str(v["head"]),
            str(v["context_epochs"]),
            str(v["train_subjects"]),
            "-" if v["macro_f1"] is None else f"{v['macro_f1']:.3f}",
            "-" if v["kappa"] is None else f"{v['kappa']:.3f}",
        )
    console.print(table if rows else f"no models under {root}")


@models_app.command("show")
def models_show(
    root: RootOpt,
    version: Annotated[Optional[str], typer.Argument(help="Version (default: the task's champion).")] = None,
    task: Annotated[str, typer.Option(help="Task of the model.")] = "stage3",
) -> None:
    """One version's config, lineage and held-out metrics, as JSON."""
    from sleepsound.registry import store as model_store

    _check_models_root(root)
    try:
        print(json.dumps(model_store.show(root, task, version), indent=2, default=str))
    except model_store.ModelNotFound as exc:
        raise _refused(None, exc) from exc


def _load_config(config: Path | None, overrides: list[str] | None, extra: Sequence[str] = ()) -> Config:
    """Every command's settings: ``--config``, then ``SLEEPSOUND_*`` variables, then ``extra`` (a recipe's
    own overrides) and the user's ``--set``. A bad setting or an unreadable file exits 2 with one line
    naming it, before anything starts (Prefect, Ray, a root, a cohort), instead of a traceback."""
    import yaml
    from pydantic import ValidationError

    from sleepsound.core.config import load_config

    origins: dict[tuple[str, str], str] = {}  # (section, key) -> the SLEEPSOUND_ variable that set it
    try:
        return load_config(config, [*extra, *(overrides or [])], origins=origins)
    except ValidationError as exc:
        problem = _settings_problem(exc, origins)
    except RecursionError:  # load_config names the source; this is the last guard against a traceback
        problem = f"{config or 'the settings'}: nested too deeply"
    except UnicodeDecodeError:
        problem = f"cannot read {config}: not UTF-8 text"
    except OSError as exc:
        problem = f"cannot read {exc.filename or config}: {exc.strerror or exc}"
    except yaml.YAMLError as exc:  # only the file: an override's value names itself (a ValueError)
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = f"{config} is not valid YAML: {getattr(exc, 'problem', None) or exc}{where}"
    except ValueError as exc:
        problem = str(exc)
    err_console.print(
        f"[red]bad configuration:[/red] {escape(' '.join(problem.split()))}", soft_wrap=True, highlight=False
    )
    raise typer.Exit(2)


def _settings_problem(exc: ValidationError, origins: dict[tuple[str, str], str] | None = None) -> str:
    """Each invalid setting by its dotted name and what is wrong; an unknown one with the valid names beside it.
    A setting that came from a ``SLEEPSOUND_`` variable (``origins``) names the variable: that is what the user
    wrote, and what they must find and change."""
    parts = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        name = ".".join(loc) or "configuration"
        variable = (origins or {}).get((loc[0], loc[1])) if len(loc) >= 2 else None
        if error["type"] == "extra_forbidden":
            section = ".".join(loc[:-1])
            valid = ", ".join(_setting_names(loc[:-1]))
            if variable and len(loc) == 2:
                parts.append(f"{variable}: unknown setting {name}; {section} has {valid}")
            else:
                parts.append(
                    f"{name}: unknown setting; {section} has {valid}"
                    if section
                    else f"{name}: unknown section; the sections are {valid}"
                )
            continue
        value = error.get("input")
        got = f" (got {value!r:.60})" if isinstance(value, (str, int, float, bool)) or value is None else ""
        message = error["msg"].removeprefix("Value error, ")  # a validator's own sentence says it all
        parts.append(f"{name}: {message}{got}" + (f" (set by {variable})" if variable else ""))
    return "; ".join(parts)


def _setting_names(path: list[str]) -> list[str]:
    """The settings a section (dotted ``path`` into ``Config``) accepts, for the message naming an unknown one."""
    from pydantic import BaseModel

    from sleepsound.core.config import Config

    model: type[BaseModel] = Config
    for part in path:
        field = model.model_fields.get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return sorted(model.model_fields)


def _check_metric(metric: str) -> None:
    """Refuse an unknown --metric with exit 2 before Prefect and Ray start (train and nightly share it)."""
    if metric not in ("macro_f1", "kappa", "accuracy"):
        console.print(f"[red]--metric must be macro_f1, kappa or accuracy, got {metric!r}[/red]")
        raise typer.Exit(2)


def _run_flow(
    source: str,
    root: str,
    config: dict,
    ray_address: str | None,
    run_id: str | None,
    flow: str = "pipeline",
    versions: dict[str, str] | None = None,
    metric: str = "macro_f1",
    margin: float = 0.01,
) -> dict:
    from sleepsound.runs.preflight import NotStartable, check_can_start
    from sleepsound.runs.root_lock import RootBusy, hold_root
    from sleepsound.runs.run_record import default_run_id

    purpose = "run" if flow == "pipeline" else flow
    run_id = run_id or default_run_id(flow)  # known here, so the hold and the bars follow the run
    with contextlib.ExitStack() as held:
        # Refuse at once, before Prefect and Ray start (and before torch loads). The root is held from
        # here, not first checked and taken by the flow seconds later: of two runs started together
        # the loser is refused now, having started nothing; the flow carries on under this hold.
        try:
            check_can_start(purpose, source, root, versions, run_id)
            held.enter_context(hold_root(root, run_id, purpose))
        except (RootBusy, NotStartable) as exc:
            raise _refused("not started", exc) from exc
        from sleepsound.registry.evaluation_set import CannotTrain

        try:
            return _run_flow_locally(source, root, config, ray_address, run_id, flow, versions, metric, margin)
        except RootBusy as exc:  # not expected: the flow runs under this process's hold
            raise _refused("not started", exc) from exc
        except CannotTrain as exc:  # found right after validation, before anything was embedded
            raise _refused("not trained", exc) from exc


def _refused(what: str | None, exc: Exception) -> typer.Exit:
    """Say why a command did not start (or stopped before its work), in one line on stderr; exit 2. The
    message is never read as markup: it names files, and a ``[x]`` in a name was a MarkupError."""
    head = f"[red]{what}:[/red] " if what else ""
    err_console.print(f"{head}{escape(without_credentials(printable(exc)))}", soft_wrap=True, highlight=False)
    return typer.Exit(2)


def _run_flow_locally(
    source: str,
    root: str,
    config: dict,
    ray_address: str | None,
    run_id: str,
    flow: str,
    versions: dict[str, str] | None,
    metric: str,
    margin: float,
) -> dict:
    from sleepsound.runs.prefect_api import local_prefect_api
    from sleepsound.runs.progress_view import progress_bars

    keep_s = 60 * float(os.environ.get("SLEEPSOUND_PREFECT_KEEP_MINUTES", "15"))  # 0: stopped after the run
    with (
        local_prefect_api(Path(".prefect").resolve(), keep_s=keep_s) as api_url,  # before Prefect is imported
        _prefect_console(),
        progress_bars(err_console, api_url, run_id),
    ):
        err_console.print(f"Prefect API: {api_url}", highlight=False)
        if flow == "score":
            from flows.score import run_score_on_ray
            from sleepsound.registry.store import ModelNotFound

            try:
                return run_score_on_ray(source, root, config, ray_address=ray_address, run_id=run_id, versions=versions)
            except ModelNotFound as exc:
                raise _refused("cannot score", exc) from exc
        if flow == "nightly":
            from flows.nightly import run_nightly_on_ray

            return run_nightly_on_ray(
                source, root, config, ray_address=ray_address, run_id=run_id, metric=metric, margin=margin
            )
        if flow == "train":
            from flows.train import run_train_on_ray

            return run_train_on_ray(
                source, root, config, ray_address=ray_address, run_id=run_id, metric=metric, margin=margin
            )
        from flows.pipeline import run_pipeline_on_ray

        return run_pipeline_on_ray(source, root, config, ray_address=ray_address, run_id=run_id)


def _prefect_console() -> contextlib.AbstractContextManager[None]:
    """A failed flow's traceback, which Prefect's engine logs to the console, waits for --debug like
    the command's own: its error is one line (the run's logs in Prefect keep the traceback)."""
    if _DEBUG["on"]:
        return contextlib.nullcontext()
    from flows.console_logs import run_tracebacks_off_the_console

    return run_tracebacks_off_the_console()


NIGHTS_SHOWN = 15


def _figure(value: Any, fmt: str) -> str:
    """A table cell: ``-`` for a missing or NaN figure."""
    return "-" if value is None or (isinstance(value, float) and value != value) else format(value, fmt)


def _print_nights(summaries_uri: str) -> None:
    """The predicted night summaries (first ``NIGHTS_SHOWN``): what a user scoring a cohort came for."""
    from sleepsound.report.outputs import read_summaries
    from sleepsound.report.summaries import MIN_HEARD_SHARE, MIN_SLEEP_HOURS_FOR_AHI

    try:
        nights = read_summaries(summaries_uri)
    except (OSError, ValueError):  # no summaries written (nothing accepted): the counts below say why
        return
    nights = nights[nights["source"] == "predicted"]
    if nights.empty:
        return
    table = Table(title=f"nights (predicted), {len(nights)} in all")
    table.add_column("night", overflow="fold")
    for name in ("h", "sleep h", "eff.", "REM %", "AHI", "REI", "severity", "heard", "snore idx"):
        table.add_column(name, no_wrap=True)
    for row in nights.head(NIGHTS_SHOWN).itertuples():
        table.add_row(
            plain(row.recording_id),
            _figure(row.time_in_bed_min / 60, ".1f"),
            _figure(row.total_sleep_time_min / 60, ".1f"),
            _figure(row.sleep_efficiency, ".0%"),
            _figure(row.pct_rem, ".0f"),
            _figure(row.ahi, ".1f"),
            _figure(getattr(row, "rei", None), ".1f"),
            _figure(row.severity, ""),
            _figure(getattr(row, "breathing_heard", None), ".0%"),
            _figure(row.snore_index, ".1f"),
        )
    console.print(table)
    if "snore_source" in nights:  # the per-second snoring head, or today's per-epoch estimate (older roots)
        sources = sorted({str(s) for s in nights["snore_source"].dropna()})
        if sources:
            console.print(f"snore index from: {'; '.join(sources)}")
    if len(nights) > NIGHTS_SHOWN:
        console.print(f"... and {len(nights) - NIGHTS_SHOWN} more nights in {summaries_uri}")
    if "ahi_warning" in nights:  # too little estimated sleep for the AHI to mean anything
        short = int(nights["ahi_warning"].notna().sum())
        if short:
            console.print(
                f"AHI unreliable on {short} of {len(nights)} nights (estimated sleep under "
                f"{MIN_SLEEP_HOURS_FOR_AHI:g} h): read the REI (events per hour of recording)"
            )
    if "events_warning" in nights:  # breathing too seldom heard for a low index to mean a normal night
        unheard = int(nights["events_warning"].notna().sum())
        if unheard:
            console.print(
                f"breathing heard in under {MIN_HEARD_SHARE:.0%} of the recording on {unheard} of {len(nights)} "
                "nights ('heard'): events are found only where it is heard, so a low REI there does not rule out apnoea"
            )


def _print_results(result: dict, as_json: bool = False) -> None:
    """The run's summary as tables, or with ``as_json`` as one JSON object (the run record's content)."""
    if as_json:
        from sleepsound.core.json_text import json_text

        print(json_text(result))
        return
    m = result["metrics"]
    if _figure(m.get("macro_f1"), ".3f") == "-":
        console.print(
            f"run {result['run_id']}: no labelled night outside the models' training, so no held-out "
            "figures; predictions and night summaries only"
        )
    else:
        table = Table("held-out figure", "model", "majority baseline", title=f"run {result['run_id']}")
        table.add_row("macro-F1", f"{m['macro_f1']:.3f}", f"{m['baseline_macro_f1']:.3f}")
        table.add_row("accuracy", f"{m['accuracy']:.3f}", f"{m['baseline_accuracy']:.3f}")
        table.add_row("Cohen's kappa", f"{m['kappa']:.3f}", "0.000")
        for task, label in (("stage5", "stage5"), ("resp", "resp"), ("snore", "snoring per 0.5-s frame")):
            if f"{task}_macro_f1" in m:
                table.add_row(f"{label} macro-F1", f"{m[f'{task}_macro_f1']:.3f}", "")
        if "ahi_pearson_r" in m:
            r = _figure(m["ahi_pearson_r"], ".2f")
            r = "n/a (< 3 nights)" if r == "-" else r  # undefined with too few held-out nights, not a value
            table.add_row("AHI Pearson r / bias", f"{r} / {_figure(m['ahi_bias'], '+.1f')}", "")
        console.print(table)
        from sleepsound.report.sanity import sanity_warnings

        for warning in sanity_warnings(m):
            console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    _print_nights(result["summaries"])
    for task, reason in result["model"].get("skipped", {}).items():
        console.print(f"[yellow]{task} head not trained:[/yellow] {reason}")
    for task, decision in result.get("promotions", {}).items():
        verdict = "[green]promoted[/green]" if decision["promoted"] else "kept the champion"
        console.print(f"{task}: {verdict} ({decision['reason']})")
    counts = result["counts"]
    console.print(
        f"recordings: {counts['discovered']} discovered, {counts['accepted']} accepted, "
        f"{counts['quarantined']} quarantined; {counts['epochs']} epochs and "
        f"{counts.get('shifted', 0)} shifted training windows embedded "
        f"({counts['cached']} recordings from cache)"
    )
    console.print(f"report:      {result['report']}")
    console.print(f"predictions: {result['predictions']}")
    console.print(f"summaries:   {result['summaries']}")
    steps = ", ".join(f"{name} {sec:.0f} s" for name, sec in result["seconds"].items())
    console.print(f"steps:       {steps}")
    run = result["prefect_flow_run"]
    console.print(f"Prefect:     flow run {run['name']} ({run['id']}); browse it with `sleepsound ui`")


def main() -> None:
    """The command's entry point: an error nobody planned for is one line and exit 1 (the traceback
    with --debug); planned refusals already said their line and exit 2."""
    from sleepsound.core.storage import CredentialsInUrl

    try:
        app()
    except CredentialsInUrl as exc:  # planned: any command given a storage URL with a secret in it
        if _DEBUG["on"]:
            raise
        err_console.print(f"[red]error:[/red] {escape(printable(exc))}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except Exception as exc:
        if _DEBUG["on"]:
            raise
        err_console.print(
            f"[red]error:[/red] {escape(type(exc).__name__)}: {escape(without_credentials(printable(exc)))}\n"
            "This was not expected: rerun with --debug for the traceback, and report it if it is a bug.",
            soft_wrap=True,
            highlight=False,
        )
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
