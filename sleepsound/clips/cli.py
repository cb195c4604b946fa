"""``sleepsound clips``: train and evaluate the short-window breathing-sound classifier.

Registered by sleepsound/cli.py as ``app.add_typer(clips_app, name="clips")``. Heavy
imports happen inside the commands so ``--help`` stays instant.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from sleepsound.core.json_text import json_text
from sleepsound.core.text import printable, without_credentials

clips_app = typer.Typer(
    help="Short-window breathing-sound classifier: folders of labelled clips "
    "(e.g. snoring/ and no_snoring/), a frozen speech backbone and a small head.",
    no_args_is_help=True,
    add_completion=False,
)

DataOpt = Annotated[Path, typer.Option("--data", help="Folder with one sub-folder of clips per label.")]
BackboneOpt = Annotated[str, typer.Option(help="Backbone name or local model folder.")]
BlockSizeOpt = Annotated[
    int,
    typer.Option(
        help="At most this many consecutive clips per block (kept together); "
        "a gap in the file numbering always starts a new block."
    ),
]
HeadOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        help="Head(s) to try (repeatable): linear (logistic regression on every layer's mean and spread; the "
        "default), mlp, attention."
    ),
]
LrOpt = Annotated[Optional[list[float]], typer.Option(help="Learning rate(s) to try (repeatable).")]
MaxEpochsOpt = Annotated[
    int, typer.Option(help="Epochs per validation run; the epoch of lowest validation log-loss is the one refit.")
]
ClipSecondsOpt = Annotated[Optional[float], typer.Option(help="Fixed clip length; default the longest, <= 5 s.")]
CacheOpt = Annotated[Optional[Path], typer.Option(help="Folder to cache clip embeddings in.")]
DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or auto.")]
CategoriesOpt = Annotated[
    Optional[Path],
    typer.Option(
        help="CSV of label,first,last,category (inclusive ranges of the file numbers) naming each clip's "
        "source category; default DATA/categories.csv, else each block of consecutive clips."
    ),
]
PositiveOpt = Annotated[
    str,
    typer.Option(help="The class an alarm is raised for: each category's share called it is reported."),
]
HardNegativesOpt = Annotated[
    Optional[str],
    typer.Option(
        help="Clips added to every training side only, never validated or tested on (the figures stay those of "
        "the data's own unseen blocks): a clip folder (e.g. from `clips hard-negatives`), 'generated' (made for "
        "this run from --seed: 0.6 bedroom negatives per data clip: TV news, talk, fans, motor hums, vibration "
        "motors), or 'none'."
    ),
]
GeneratedCategoryOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        help="With --hard-negatives generated: the categories to make (repeatable; default tv_speech, room_speech, "
        "fan_hvac, motor_hum, vibration_motor; the household transients door, door_creak, footsteps, water_flush, "
        "dishes, clock_tick are opt-in)."
    ),
]
TargetRecallOpt = Annotated[
    Optional[float],
    typer.Option(
        help="Decide the positive class by a threshold on its probability, the highest that keeps this recall "
        "on the validation blocks (out of fold), stored with the model; default (or 0): argmax."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
TRUST_PROXY_HELP = (
    "Address or network (CIDR) of a reverse proxy whose X-Forwarded-For (the client's address) and "
    "X-Forwarded-Proto are believed (repeatable). Default: none: a client is its connection's address, "
    "so a local process cannot pose as many clients to take more than its places in the queue."
)
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Log each validation run.")]


def _json(obj: Any) -> str:
    return json_text(obj)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {without_credentials(printable(message))}", err=True)
    return typer.Exit(2)


def _hard_negatives(value: str | None) -> str | None:
    """The --hard-negatives value as the settings hold it: None for 'none', else as given."""
    return None if value is None or value.strip().lower() == "none" else value


def _settings(
    verbose: bool, *, head: list[str] | None, lr: list[float] | None, cache: Path | None, **fields: Any
) -> Any:
    """ClipTrainSettings from the shared options (repeatable ones default to the settings' own lists)."""
    from sleepsound.clips.train import ClipTrainSettings

    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    defaults = ClipTrainSettings()
    generated = fields.pop("generated_category", None)
    try:  # every option in range (ClipTrainSettings.check) before any clip is read or file written
        return ClipTrainSettings(
            heads=tuple(head or defaults.heads),
            lrs=tuple(lr or defaults.lrs),
            cache_dir=str(cache) if cache else None,
            generated_categories=tuple(generated or defaults.generated_categories),
            **fields,
        )
    except ValueError as exc:
        raise _fail(str(exc)) from exc


def _load_errors() -> tuple[type[Exception], ...]:
    """What a clips command turns into one line and exit 2: storage, bad values, and a backbone that cannot
    be loaded (a typo, offline and not cached, CUDA absent), which used to end "This was not expected"."""
    from sleepsound.models.backbones.pretrained import BackboneLoadError

    return (OSError, ValueError, BackboneLoadError)


def _check_device(device: str) -> None:
    """Exit 2 naming --device unless it is a device name (checked before a model or clip is read)."""
    from sleepsound.clips.train import check_device

    try:
        check_device(device)
    except ValueError as exc:
        raise _fail(str(exc)) from exc


def _echo_warnings(result: dict[str, Any]) -> None:
    """Warnings on stderr (stdout may be one JSON object)."""
    for warning in result.get("warnings", []):
        typer.echo(f"warning: {printable(warning)}", err=True)


def _echo_worst(result: dict[str, Any]) -> None:
    """The worst source category's figures, printed before any pooled figure (names as ``printable``
    writes them: a category comes from a user's CSV, a label from a folder name)."""
    alarm, missed = result.get("worst_false_alarm"), result.get("worst_recall")
    positive = printable(result.get("positive"))
    if alarm:
        typer.echo(
            f"worst false alarm: {printable(alarm['category'])} called {positive} {alarm['rate']:.0%} of the time "
            f"({round(alarm['rate'] * alarm['n'])}/{alarm['n']})"
        )
    if missed:
        typer.echo(f"worst {positive} recall: {printable(missed['category'])} {missed['recall']:.2f} (n {missed['n']})")
    if not alarm and not missed:
        for label, worst in result["worst_category"].items():
            name = printable(worst["category"])
            typer.echo(f"worst {printable(label)} category: {name} accuracy {worst['accuracy']:.2f} (n {worst['n']})")


def _echo_categories(result: dict[str, Any]) -> None:
    """One line per source category (worst first within each label), and where the names came from; every
    name as ``printable`` writes it, so a control character in a CSV or folder name cannot rewrite the screen."""
    typer.echo(f"per source category (from {printable(result['category_source'])}):")
    for row in result["categories"]:
        called = ", ".join(f"{printable(c)} {n}" for c, n in row["called"].items())
        label, name = printable(row["label"]), printable(row["category"])
        typer.echo(f"  {label:>12} | {name}: n {row['n']}, accuracy {row['accuracy']:.2f} ({called})")


@clips_app.command()
def train(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Model folder to write (config.json + model.safetensors).")],
    backbone: BackboneOpt = "whisper-tiny.en-offline",
    test_fraction: Annotated[float, typer.Option(help="Share of each label's blocks held out for the test.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the block choice and the training.")] = 0,
    block_size: BlockSizeOpt = 25,
    folds: Annotated[int, typer.Option(help="Blocked validation folds on the training side.")] = 5,
    refit: Annotated[
        bool,
        typer.Option(
            help="After scoring the test blocks, save a head refit on every clip "
            "(the model to ship); --no-refit saves the head that was scored."
        ),
    ] = True,
    head: HeadOpt = None,
    lr: LrOpt = None,
    max_epochs: MaxEpochsOpt = 40,
    clip_seconds: ClipSecondsOpt = None,
    cache: CacheOpt = None,
    device: DeviceOpt = "cpu",
    hard_negatives: HardNegativesOpt = "generated",
    generated_category: GeneratedCategoryOpt = None,
    target_recall: TargetRecallOpt = None,
    positive: Annotated[
        str, typer.Option(help="With --target-recall: the class whose probability the threshold is on.")
    ] = "snoring",
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Choose settings on validation blocks, score the held-out test blocks, save a head refit on every clip."""
    from sleepsound.clips.train import train_clips

    settings = _settings(
        verbose,
        backbone=backbone,
        test_fraction=test_fraction,
        seed=seed,
        block_size=block_size,
        folds=folds,
        head=head,
        lr=lr,
        max_epochs=max_epochs,
        clip_seconds=clip_seconds,
        cache=cache,
        device=device,
        refit_all=refit,
        hard_negatives=_hard_negatives(hard_negatives),
        generated_category=generated_category,
        target_recall=target_recall or None,
        positive=positive,
    )
    from rich.console import Console

    from sleepsound.runs.progress_view import local_bars

    try:
        with local_bars(Console(stderr=True)) as bar:
            summary = train_clips(data, out, settings, progress=None if as_json else typer.echo, bar=bar)
    except _load_errors() as exc:
        raise _fail(str(exc)) from exc
    held, chosen = summary["held_out"], summary["chosen"]
    if as_json:
        typer.echo(
            _json(
                {
                    "model": str(out),
                    "held_out": held,
                    "chosen": chosen,
                    "counts": summary["counts"],
                    "refit_on_all": summary["refit_on_all"],
                    "rejected": summary["rejected"],
                    "seconds": summary["seconds"],
                }
            )
        )
        return
    typer.echo(
        f"chosen on validation blocks: {chosen['head']} head, layers {chosen['layers']}, "
        f"pool {chosen['pool_seconds']:g} s, "
        + (f"C {chosen['c']:g} " if chosen.get("c") is not None else f"lr {chosen['lr']:g}, {chosen['epochs']} epochs ")
        + f"(validation macro-F1 {chosen['val_macro_f1']:.3f})"
    )
    for r in summary["rejected"]:
        typer.echo(f"rejected {printable(r['reason'])}")
    if held["n"]:
        typer.echo(
            f"held-out test blocks ({held['n']} clips never seen in training): accuracy "
            f"{held['accuracy']:.4f}, macro-F1 {held['macro_f1']:.4f}, confusion {held['confusion']} "
            f"(rows true, columns predicted: {held['classes']})"
        )
    trained_on = summary["counts"]["saved_model_trained_on"]
    typer.echo(
        f"model written to {out} (trained on {trained_on} clips"
        + (", test blocks included: refit after scoring)" if summary["refit_on_all"] else ")")
    )


@clips_app.command()
def cv(
    data: DataOpt,
    k: Annotated[
        int,
        typer.Option(
            "--k",
            help="Outer folds of whole blocks; each clip is scored once, by a "
            "model trained (with its own validation) on the other folds.",
        ),
    ] = 10,
    backbone: BackboneOpt = "whisper-tiny.en-offline",
    seed: Annotated[int, typer.Option(help="Seed of the fold deal and the training.")] = 0,
    block_size: BlockSizeOpt = 25,
    folds: Annotated[int, typer.Option(help="Blocked validation folds inside each outer training side.")] = 5,
    head: HeadOpt = None,
    lr: LrOpt = None,
    max_epochs: MaxEpochsOpt = 40,
    clip_seconds: ClipSecondsOpt = None,
    cache: CacheOpt = None,
    device: DeviceOpt = "cpu",
    categories: CategoriesOpt = None,
    positive: PositiveOpt = "snoring",
    hard_negatives: HardNegativesOpt = "generated",
    generated_category: GeneratedCategoryOpt = None,
    target_recall: TargetRecallOpt = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Accuracy on unseen source recordings: the whole training procedure cross-validated over whole blocks,
    reported per source category, worst first."""
    from sleepsound.clips.cross_validate import cross_validate_clips

    settings = _settings(
        verbose,
        backbone=backbone,
        seed=seed,
        block_size=block_size,
        folds=folds,
        head=head,
        lr=lr,
        max_epochs=max_epochs,
        clip_seconds=clip_seconds,
        cache=cache,
        device=device,
        hard_negatives=_hard_negatives(hard_negatives),
        generated_category=generated_category,
        target_recall=target_recall or None,
        positive=positive,
    )
    try:
        result = cross_validate_clips(
            data,
            settings,
            k=k,
            progress=None if as_json else typer.echo,
            categories=categories,
            positive=positive,
        )
    except _load_errors() as exc:
        raise _fail(str(exc)) from exc
    _echo_warnings(result)
    if as_json:
        typer.echo(_json(result))
        return
    for r in result["rejected"]:
        typer.echo(f"rejected {printable(r['reason'])}")
    acc, f1 = result["ci95"]["accuracy"], result["ci95"]["macro_f1"]
    _echo_worst(result)
    typer.echo(
        f"{result['n']} clips in {result['n_blocks']} blocks, each scored by a model that never saw its "
        f"block: accuracy {result['accuracy']:.4f} (95% CI {acc[0]:.3f}-{acc[1]:.3f}), macro-F1 "
        f"{result['macro_f1']:.4f} ({f1[0]:.3f}-{f1[1]:.3f}), confusion {result['confusion']} "
        f"(rows true, columns predicted: {result['classes']})"
    )
    typer.echo("weakest blocks: " + ", ".join(f"{b['block']} {b['accuracy']:.2f}" for b in result["weakest_blocks"]))
    _echo_categories(result)


@clips_app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", help="Model folder written by `clips train`.")],
    data: DataOpt,
    split: Annotated[
        str, typer.Option(help="all: every clip in --data; test: exactly the model's held-out files.")
    ] = "all",
    device: DeviceOpt = "cpu",
    categories: CategoriesOpt = None,
    positive: PositiveOpt = "snoring",
    as_json: JsonOpt = False,
) -> None:
    """Score a saved model on a folder of labelled clips, per source category, worst first."""
    from sleepsound.clips.evaluate import evaluate_clips

    _check_device(device)
    try:
        result = evaluate_clips(model, data, split=split, device=device, categories=categories, positive=positive)
    except _load_errors() as exc:
        raise _fail(str(exc)) from exc
    _echo_warnings(result)
    if not result["n"]:  # an evaluation of nothing is no pass: folders named unlike the model's classes, say
        first = f", the first: {result['rejected'][0]['reason']}" if result["rejected"] else ""
        raise _fail(
            f"no clip under {data} could be scored ({split}): the model's classes are "
            f"{', '.join(map(str, result['classes']))}; {len(result['rejected'])} files rejected{first}"
        )
    if as_json:
        typer.echo(_json(result))
        return
    acc = "n/a" if result["accuracy"] is None else f"{result['accuracy']:.4f}"
    f1 = "n/a" if result["macro_f1"] is None else f"{result['macro_f1']:.4f}"
    _echo_worst(result)
    typer.echo(
        f"{result['n']} clips ({split}): accuracy {acc}, macro-F1 {f1}, confusion {result['confusion']} "
        f"(rows true, columns predicted: {result['classes']})"
    )
    _echo_categories(result)
    for r in result["rejected"]:
        typer.echo(f"rejected {printable(r['reason'])}")


@clips_app.command("score")
def score_files(
    model: Annotated[Path, typer.Option("--model", help="Model folder written by `clips train`.")],
    files: Annotated[
        list[Path],
        # readable=False: click would refuse the whole batch for one unreadable file; each is checked alone
        typer.Argument(help="Audio files (any format soundfile reads, any rate).", readable=False),
    ],
    max_seconds: Annotated[
        float, typer.Option(help="Longest audio accepted; whole nights go to `sleepsound score`.")
    ] = 600.0,
    device: DeviceOpt = "cpu",
    as_json: JsonOpt = False,
) -> None:
    """Label every clip-length window of short recordings; exit 1 if any file could not be scored."""
    from sleepsound.clips.dataset import ClipError
    from sleepsound.clips.evaluate import ClipClassifier
    from sleepsound.clips.scoring import check_max_seconds, score_source

    _check_device(device)
    try:
        max_seconds = check_max_seconds(max_seconds)
        clf = ClipClassifier(model, device)
        clf.load_backbone()  # a backbone or device that cannot load is one error, not every file's
    except _load_errors() as exc:  # a HeadArtifactError is a ValueError
        raise _fail(str(exc)) from exc
    failed = 0
    for path in files:
        try:
            result: dict[str, Any] = score_source(clf, str(path), str(path), max_seconds)
        except ClipError as exc:
            failed += 1
            result = {"file": str(path), "error": str(exc)}
        except Exception as exc:  # one file's fault (storage, decoder, model) never costs the others
            failed += 1
            result = {"file": str(path), "error": f"{path}: scoring failed ({type(exc).__name__}: {exc})"}
        if as_json:
            typer.echo(_json(result))
        elif "error" in result:
            typer.echo(f"error: {printable(result['error'])}", err=True)
        else:
            share = ", ".join(f"{c} {s:g} s" for c, s in result["seconds_by_label"].items())
            typer.echo(
                f"{printable(path)}: {result['label']} ({result['seconds']:g} s in {len(result['windows'])} window(s) "
                f"of {result['clip_seconds']:g} s: {share})"
            )
    if failed:
        if not as_json:
            typer.echo(f"{failed} of {len(files)} file(s) could not be scored (named above)", err=True)
        raise typer.Exit(1)


@clips_app.command()
def serve(
    model: Annotated[Path, typer.Option("--model", help="Model folder written by `clips train`.")],
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback by default: recordings are health data).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_seconds: Annotated[float, typer.Option(help="Longest audio accepted per request.")] = 600.0,
    max_mb: Annotated[float, typer.Option(help="Largest upload accepted per request, in MiB.")] = 64.0,
    device: DeviceOpt = "cpu",
    allowed_host: Annotated[
        Optional[list[str]], typer.Option(help="Another Host name to answer to (a reverse proxy's; repeatable).")
    ] = None,
    trust_proxy: Annotated[Optional[list[str]], typer.Option(help=TRUST_PROXY_HELP)] = None,
) -> None:
    """HTTP service: POST audio bytes to /score, get each window's label and probabilities as JSON."""
    from sleepsound.clips.serve import create_app
    from sleepsound.monitor.limits import parse_trusted_proxies
    from sleepsound.monitor.limits import serve as run_server

    try:
        proxies = parse_trusted_proxies(trust_proxy or ())
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    try:
        app = create_app(
            model,
            device=device,
            max_seconds=max_seconds,
            max_mb=max_mb,
            host=host,
            extra_hosts=tuple(allowed_host or ()),
        )
    except (OSError, ValueError) as exc:  # a HeadArtifactError is a ValueError
        raise _fail(str(exc)) from exc
    typer.echo(f"scoring with {model} on http://{host}:{port} (POST /score, GET /health, docs at /docs)")
    if proxies:
        typer.echo(f"client addresses from X-Forwarded-For of {', '.join(proxies)}")
    # no access log or URL query in the log; header deadline, per-client connection cap; SIGTERM gives 5 s;
    # X-Forwarded-For believed only from --trust-proxy (a client's places are counted by its address)
    run_server(app, host, port, trusted_proxies=proxies)


@clips_app.command("hard-negatives")
def hard_negatives(
    out: Annotated[Path, typer.Option("--out", help="New folder to write (no_snoring/, snoring/, categories.csv).")],
    n: Annotated[int, typer.Option("--n", help="Hard negatives in all, spread evenly over the categories.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed: the same seed writes the same clips.")] = 0,
    seconds: Annotated[float, typer.Option(help="Length of every clip.")] = 1.0,
    category: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Categories to make (repeatable): tv_speech, room_speech, fan_hvac, motor_hum, vibration_motor "
            "(the default five), and the household transients door, door_creak, footsteps, water_flush, dishes, "
            "clock_tick."
        ),
    ] = None,
    speech: Annotated[
        str, typer.Option(help="Speech from espeak-ng (espeak), the built-in formant synthesiser (synth), or auto.")
    ] = "auto",
    snoring: Annotated[
        Optional[Path],
        typer.Option(
            help="Snoring clips (a clip dataset with snoring/, or a folder of clips) to mix over backgrounds."
        ),
    ] = None,
    n_snoring: Annotated[Optional[int], typer.Option(help="Snoring mixes in all (default --n).")] = None,
    snr: Annotated[
        Optional[list[float]], typer.Option(help="Snore-to-background ratio(s) in dB (repeatable; default 0, 5, 10).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Write generated bedroom sounds that are not snoring (TV, talk, fans, motors; doors, footsteps, water, dishes,
    a clock on request), and snoring mixed over them."""
    from sleepsound.clips.hard_negatives import write_hard_negatives
    from sleepsound.synth.bedroom import CATEGORIES

    try:
        summary = write_hard_negatives(
            out,
            n=n,
            seed=seed,
            seconds=seconds,
            categories=tuple(category or CATEGORIES),
            speech_source=speech,
            snoring=snoring,
            n_snoring=n_snoring,
            snrs_db=tuple(snr or (0.0, 5.0, 10.0)),
            progress=None if as_json else typer.echo,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(_json(summary))
        return
    counts = summary["counts"]
    typer.echo(
        f"wrote {counts['no_snoring']} hard negatives and {counts['snoring']} snoring mixes to {out} "
        f"(speech from {summary['speech_source']}; categories in {out / 'categories.csv'})"
    )
    for skipped in summary["snoring_clips"]["skipped"]:
        typer.echo(f"skipped snoring clip {printable(skipped)}")
