"""``sleepsound clips``: train and evaluate the short-window breathing-sound classifier.

Registered by sleepsound/cli.py as ``app.add_typer(clips_app, name="clips")``. Heavy
imports happen inside the commands so ``--help`` stays instant.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

clips_app = typer.Typer(help="Short-window breathing-sound classifier: folders of labelled clips "
                             "(e.g. snoring/ and no_snoring/), a frozen speech backbone and a small head.",
                        no_args_is_help=True, add_completion=False)

DataOpt = Annotated[Path, typer.Option("--data", help="Folder with one sub-folder of clips per label.")]


def _json(obj: Any) -> str:
    def clean(v: Any) -> Any:
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(obj), allow_nan=False)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@clips_app.command()
def train(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Model folder to write (config.json + model.safetensors).")],
    backbone: Annotated[str, typer.Option(help="Backbone name or local model folder.")] = "whisper-tiny.en-offline",
    test_fraction: Annotated[float, typer.Option(help="Share of each label's blocks held out for the test.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the block choice and the training.")] = 0,
    block_size: Annotated[int, typer.Option(help="At most this many consecutive clips per block (kept on one "
                                            "side); a gap in the file numbering always starts a new block.")] = 25,
    folds: Annotated[int, typer.Option(help="Blocked validation folds on the training side.")] = 5,
    head: Annotated[Optional[list[str]], typer.Option(help="Head(s) to try: mlp, attention (repeatable).")] = None,
    lr: Annotated[Optional[list[float]], typer.Option(help="Learning rate(s) to try (repeatable).")] = None,
    max_epochs: Annotated[int, typer.Option(help="Epochs per validation run; the epoch of lowest validation "
                                               "log-loss is the one refit.")] = 40,
    clip_seconds: Annotated[Optional[float], typer.Option(help="Fixed clip length; default the longest, <= 5 s.")
                            ] = None,
    cache: Annotated[Optional[Path], typer.Option(help="Folder to cache clip embeddings in.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each validation run.")] = False,
) -> None:
    """Train on the training blocks, choose settings on held-out training blocks, score the test blocks."""
    from sleepsound.clips.train import ClipTrainSettings, train_clips

    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    defaults = ClipTrainSettings()
    settings = ClipTrainSettings(backbone=backbone, test_fraction=test_fraction, seed=seed, block_size=block_size,
                                 folds=folds,
                                 heads=tuple(head or defaults.heads), lrs=tuple(lr or defaults.lrs),
                                 max_epochs=max_epochs, clip_seconds=clip_seconds,
                                 cache_dir=str(cache) if cache else None, device=device)
    try:
        summary = train_clips(data, out, settings, progress=None if as_json else typer.echo)
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    held, chosen = summary["held_out"], summary["chosen"]
    if as_json:
        typer.echo(_json({"model": str(out), "held_out": held, "chosen": chosen, "counts": summary["counts"],
                          "rejected": summary["rejected"], "seconds": summary["seconds"]}))
        return
    typer.echo(f"chosen on validation blocks: {chosen['head']} head, layers {chosen['layers']}, "
               f"pool {chosen['pool_seconds']:g} s, lr {chosen['lr']:g}, {chosen['epochs']} epochs "
               f"(validation macro-F1 {chosen['val_macro_f1']:.3f})")
    for r in summary["rejected"]:
        typer.echo(f"rejected {r['reason']}")
    if held["n"]:
        typer.echo(f"held-out test blocks ({held['n']} clips never seen in training): accuracy "
                   f"{held['accuracy']:.4f}, macro-F1 {held['macro_f1']:.4f}, confusion {held['confusion']} "
                   f"(rows true, columns predicted: {held['classes']})")
    typer.echo(f"model written to {out}")


@clips_app.command()
def evaluate(
    model: Annotated[Path, typer.Option("--model", help="Model folder written by `clips train`.")],
    data: DataOpt,
    split: Annotated[str, typer.Option(help="all: every clip in --data; test: exactly the model's held-out files.")]
    = "all",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score a saved model on a folder of labelled clips."""
    from sleepsound.clips.evaluate import evaluate_clips

    try:
        result = evaluate_clips(model, data, split=split, device=device)
    except (OSError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(_json(result))
        return
    acc = "n/a" if result["accuracy"] is None else f"{result['accuracy']:.4f}"
    f1 = "n/a" if result["macro_f1"] is None else f"{result['macro_f1']:.4f}"
    typer.echo(f"{result['n']} clips ({split}): accuracy {acc}, macro-F1 {f1}, confusion {result['confusion']} "
               f"(rows true, columns predicted: {result['classes']})")
    for r in result["rejected"]:
        typer.echo(f"rejected {r['reason']}")
