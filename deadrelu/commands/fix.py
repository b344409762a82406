"""`deadrelu fix`: try the repairs side by side under one budget and keep the one that trains best.

A thin shell over `deadrelu.fixes.tournament.fix`: the flags become its keywords, its `FixResult`
is printed (`deadrelu.views.fix_tables.fix_renderable`) and written as `--json`
(`FixResult.to_dict()` under the command's header, schema `deadrelu/fix@1`), `--curves`, `--html`,
and `-o` (the best candidate's trained model). Ctrl-C keeps the finished candidates: their table
and `--json` (with `"interrupted": true`, `"best": null`) are written, no model is, and the exit
code is 130 (143 on SIGTERM).
"""

from __future__ import annotations

from deadrelu.commands._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    INPUT_DATA,
    OUTPUT_FILE,
    PathArg,
    fraction,
    load_from_args,
    non_negative_int,
    number,
    positive_int,
    result_document,
)

ORDER = 60
SCHEMA = "deadrelu/fix@1"


def register(subparsers, parents):
    parser = subparsers.add_parser(
        "fix",
        parents=[parents["model"], parents["data"], parents["common"]],
        help="try the repairs side by side and keep the one that trains best",
        description="Train candidate repairs of MODEL side by side under one budget — baseline (unchanged), "
        "leaky, prelu, revive, revive+lr, lr (learning rate / 10), prune — from the same weights, on the same "
        "batches in the same order, with the same seed and a fresh optimizer, and rank them on the validation "
        "data. Without --try the candidates follow the causes of the dead units (a why-scan). Needs labels "
        "(--labels, or the data file's 'y') and a loss (stored in MODEL, or --loss).",
    )
    parser.add_argument(
        "--try",
        dest="candidates",
        type=candidate_list,
        metavar="LIST",
        help="candidates, comma-separated: baseline,leaky,prelu,revive,revive+lr,lr,prune; LABEL=KIND trains a "
        "kind under another name (e.g. baseline,control=baseline). Default: chosen from the dead units' causes",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=positive_int, default=2, metavar="N", help="epochs per candidate (default 2)")
    budget.add_argument(
        "--steps", type=positive_int, metavar="N", help="batches per candidate instead (at most one pass over --data)"
    )
    parser.add_argument(
        "--fit-batch-size", type=positive_int, default=32, metavar="N", help="training batch size (default 32)"
    )
    parser.add_argument("--validation-data", type=INPUT_DATA, metavar="PATH", help="validation inputs (and 'y' labels)")
    parser.add_argument(
        "--validation-labels", type=INPUT_DATA, metavar="PATH", help="validation labels, if not in the file"
    )
    parser.add_argument(
        "--validation-split",
        type=fraction,
        metavar="F",
        help="hold out the last F of --data for validation (default 0.2 without --validation-data)",
    )
    parser.add_argument("--seed", type=non_negative_int, default=0, metavar="N", help="seed of every fit (default 0)")
    parser.add_argument(
        "--metric",
        type=metric_name,
        metavar="NAME",
        help="rank by this validation metric: data_loss (default: the loss without regularisation penalties), "
        "loss, or a compiled metric such as accuracy (higher is better unless the name says loss or error)",
    )
    parser.add_argument("--loss", metavar="NAME", help="loss, when the file stores none (or to override it)")
    parser.add_argument("--lr", type=number, metavar="F", help="learning rate (default: the file's); lr divides it")
    parser.add_argument(
        "--probe-samples",
        type=positive_int,
        default=2000,
        metavar="N",
        help="validation samples scanned for dead units (default 2000)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=PathArg(output=True, kind="model"),
        metavar="BEST",
        help="write the best candidate's trained model here (.keras or .h5; loads with keras.models.load_model)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite BEST if it exists")
    parser.add_argument("--json", type=OUTPUT_FILE, metavar="PATH", help="write the candidates and the best here")
    parser.add_argument("--curves", type=OUTPUT_FILE, metavar="PNG", help="the candidates' training curves")
    parser.add_argument("--html", type=OUTPUT_FILE, metavar="PATH", help="write the table (and curves) as a page")
    return parser


def candidate_list(text: str) -> list[tuple[str, str]]:
    """--try: `baseline,control=baseline,leaky` → `[(label, kind), ...]` (a one-line usage error otherwise)."""
    import argparse

    from deadrelu.errors import UsageError
    from deadrelu.fixes.tournament import parse_candidates

    try:
        return parse_candidates(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error).replace("`candidates`: ", "")) from None


def metric_name(text: str) -> str:
    """--metric: a metric name, `val_` prefix allowed (checked against the model's metrics later)."""
    import argparse

    if not text.strip() or "/" in text:
        raise argparse.ArgumentTypeError(f"expected a metric name such as accuracy or loss, got {text!r}")
    return text.strip()


def run(args, output) -> int:
    from deadrelu.commands._retrain import training_data
    from deadrelu.errors import UsageError
    from deadrelu.fixes.tournament import FixInterrupted, fix

    if args.data is None:
        raise UsageError("fix trains every candidate: pass --data train.npz (with 'y', or --labels y.npy)")
    candidates = args.candidates
    if args.output:
        from deadrelu.io.saving import model_output_path

        model_output_path(args.model, args.output, "fixed", force=args.force)
    loaded = load_from_args(args, output)
    from deadrelu.engine.losses import compile_config

    if args.loss is None and not compile_config(loaded.model).get("loss"):
        raise UsageError("the model file stores no loss: pass --loss NAME (e.g. --loss categorical_crossentropy)")
    x, y, validation = training_data(args, loaded.model, "fix")
    if validation is None and args.validation_split is None:
        output.note("no --validation-data: holding out the last 0.2 of --data (--validation-split 0.2)", style="dim")
    options = {
        "candidates": [f"{label}={kind}" for label, kind in candidates] if candidates else None,
        "validation_data": validation,
        "validation_split": args.validation_split,
        "epochs": args.epochs,
        "steps": args.steps,
        "batch_size": args.fit_batch_size,
        "seed": args.seed,
        "metric": args.metric,
        "loss": args.loss,
        "learning_rate": args.lr,
        "probe_samples": args.probe_samples,
        "verbose": 0,
    }
    interrupted = None
    with output.progress("fix", unit="epochs") as (on_start, on_batch):
        try:
            result = fix(
                loaded.model, x, y, on_start=on_start, on_epoch=lambda name, epoch, logs: on_batch(1), **options
            )
        except FixInterrupted as exc:
            result, interrupted = exc.result, exc
    write_outputs(result, args, output, loaded)
    output.out.print(result)
    if interrupted is not None:
        finished = len(result.candidates)
        output.note(f"interrupted: kept the {finished} finished candidate(s); no model was written", style="bold red")
        terminated = type(interrupted.__cause__).__name__ == "Terminated"
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED
    return EXIT_OK


def write_outputs(result, args, output, loaded) -> None:
    """-o (not when interrupted), --curves, --html and --json, each written atomically."""
    from deadrelu.io.files import write_json

    written = None
    if args.output and result.model is not None and not result.interrupted:
        from deadrelu.io.saving import save_model

        notes: list[str] = []
        written = save_model(result.model, args.output, force=args.force, notes=notes)
        result.notes.extend(notes)
    if args.curves and any(c.trained for c in result.candidates):
        from deadrelu.views.plots import plot_curves

        plot_curves(result.comparison(), args.curves)
    if args.html:
        _write_html(result, args)
    if args.json:
        document = result_document("fix", loaded, result, output_path=written)
        write_json(args.json, {**document, "schema": SCHEMA})
    for path, what in ((written, "best model"), (args.json, "summary"), (args.curves, "curves"), (args.html, "page")):
        if path:
            output.note(f"wrote {what} {path}", style="dim")


def _write_html(result, args) -> None:
    from deadrelu.io.files import atomic_output
    from deadrelu.views.fix_tables import fix_page

    png = None
    if args.curves and any(c.trained for c in result.candidates):
        with open(args.curves, "rb") as file:
            png = file.read()
    with atomic_output(args.html) as tmp, open(tmp, "w", encoding="utf-8") as file:
        file.write(fix_page(result, curves_png=png))
