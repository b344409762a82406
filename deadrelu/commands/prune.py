"""`deadrelu prune`: remove dead ReLU units, for a smaller model that computes the same outputs.

A shell over `deadrelu.prune_model`: the flags become its keywords, its result is printed
(`deadrelu.views.notebook.prune_renderable`, the view a notebook shows) and written as `--json`
(`PruneResult.to_dict()` under the header). Its output check is the library's: a failure is an
`OutputCheckError`, exit 4, and nothing is written. The command adds what only it does: a rescan
of the pruned model, what it saves (file size, `predict` time), `--retrain`, and writing OUT (on
the chief only, under several workers).
"""

from __future__ import annotations

import os

from deadrelu.commands._common import (
    EXIT_GATE,
    EXIT_OK,
    INPUT_FILE,
    OUTPUT_FILE,
    add_selection_flags,
    add_strategy_flags,
    data_options,
    load_from_args,
    number,
    output_model,
    positive_int,
    report_from_args,
    require_scan_source,
    result_document,
    selection_options,
    strategy_scope,
    writes_here,
)
from deadrelu.commands._retrain import add_retrain_flags, check_retrain_flags, retrain_from_args, show_comparison

ORDER = 55

# Samples `predict` is timed on (the first of --data), and the interleaved rounds.
TIMING_SAMPLES = 2048
TIMING_ROUNDS = 5


def register(subparsers, parents):
    parser = subparsers.add_parser(
        "prune",
        parents=[parents["model"], parents["data"], parents["common"]],
        help="remove dead units: a smaller model, same outputs",
        description="Remove the dead ReLU units of MODEL: their incoming weights, bias and BatchNormalization "
        "channel, and the inputs through which every later layer read them. The outputs are compared "
        "on the data and nothing is written unless they agree (exit 4 otherwise, the message saying "
        "why). Prints what was removed, what stayed and why, and what it saves: parameters, file size, "
        "predict time.",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=output_model(lambda args: "pruned"),
        metavar="OUT",
        help="where to write (.keras, or .h5); default <model>_pruned.keras beside MODEL",
    )
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument(
        "--report",
        type=INPUT_FILE,
        metavar="SCAN.json",
        help="take the dead units from this report ('deadrelu scan --json'); the outputs are "
        "compared on --data, or on the data file the report names",
    )
    parser.add_argument(
        "--dormant",
        type=number,
        metavar="TAU",
        help="also remove units whose dormancy (ReDo score) is at most TAU, each replaced by its "
        "mean output; the outputs change, so the loss and metrics are measured before and "
        "after (needs labels: --labels or the data file's 'y')",
    )
    parser.add_argument(
        "--tolerance",
        type=number,
        default=1e-5,
        metavar="F",
        help="largest output difference accepted, times max(1, output scale) (default 1e-5)",
    )
    parser.add_argument("--json", type=OUTPUT_FILE, metavar="PATH", help="write a JSON summary of the pruning here")
    parser.add_argument(
        "--fail-if-nothing",
        action="store_true",
        help="exit 1 when no unit is dead (default: say so, write nothing, exit 0)",
    )
    parser.add_argument(
        "--timing-rounds",
        type=positive_int,
        default=TIMING_ROUNDS,
        metavar="N",
        help=f"interleaved predict rounds timing both models (default {TIMING_ROUNDS})",
    )
    parser.add_argument("--no-timing", action="store_true", help="do not time predict of both models")
    add_selection_flags(parser, "prune")
    add_retrain_flags(parser)
    add_strategy_flags(parser)
    return parser


def run(args, output) -> int:
    check_retrain_flags(args)
    out_path = resolve_output(args)
    with strategy_scope(args, output) as strategy:  # before TensorFlow starts its devices
        return _run(args, output, out_path, strategy)


def _run(args, output, out_path: str, strategy) -> int:
    chief = writes_here(strategy, args, output, ("output", "json", "curves"))
    loaded = load_from_args(args, output)
    result = make_prune(args, output, loaded, strategy)
    if result.model is None:
        return nothing_pruned(result, args, output, loaded)
    after = rescan(result, args, output)
    cost = None if args.no_timing else measure(result, args, output, loaded, out_path)
    retrain = None
    if args.retrain:
        # The pruned model is trained in place, so OUT holds the retrained model.
        retrain = retrain_from_args(args, output, loaded.model, {"pruned": result.model})
    if chief:
        save(result, args, output, loaded, out_path, after=after, cost=cost, retrain=retrain)
    show(result, args, output, after=after, cost=cost, wrote=out_path if chief else None)
    if retrain is not None:
        show_comparison(retrain, args, output)
    return EXIT_OK


def resolve_output(args) -> str:
    """Checks the flags that need no model and returns OUT: fails fast, before TensorFlow loads."""
    from deadrelu.errors import UsageError
    from deadrelu.io.saving import model_output_path

    require_scan_source(args, "prune")
    if args.dormant is not None and args.dormant < 0:
        raise UsageError(f"--dormant is a dormancy threshold ≥ 0, e.g. 0.1 (got {args.dormant:g})")
    return model_output_path(args.model, args.output, "pruned", force=args.force)


def make_prune(args, output, loaded, strategy=None):
    """`deadrelu.prune_model` on MODEL with the flags: from --report (proven on --data), or a scan of --data.

    Returns:
        The `PruneResult`.

    Raises:
        OutputCheckError: The outputs of MODEL and the pruned copy differ on the data (exit 4;
            nothing is written).
    """
    from deadrelu.fixes.prune import prune_model

    options = {
        "labels": args.labels,
        "dormant": args.dormant,
        **selection_options(args),
        "batch_size": args.batch_size,
        **data_options(args),
        "validation_data": args.validation_data,
        "validation_labels": args.validation_labels,
        "loss": args.loss,
        "tolerance": args.tolerance,
        "strategy": strategy,
    }
    if args.report:
        report = report_from_args(args, output, loaded, strategy)  # read back, not scanned
        with output.progress("pruning"):
            return prune_model(loaded.model, report, data=args.data, **options)
    with output.progress("scanning") as (on_start, on_batch):
        return prune_model(loaded.model, args.data, on_start=on_start, on_batch=on_batch, **options)


def nothing_pruned(result, args, output, loaded) -> int:
    """No unit was removed: say why and write nothing (but the --json summary).

    Returns:
        0 when the selected sites have no dead (or dormant) units; 1 then with --fail-if-nothing.

    Raises:
        UnsupportedModelError: There are such units but none can be removed exactly (exit 2).
    """
    from deadrelu.errors import UnsupportedModelError

    show(result, args, output)
    if result.candidates:
        units = sum(len(units) for units in result.candidates.values())
        path = next(iter(result.skipped), None)
        first = f" (e.g. {path}: {result.skipped[path]})" if path else ""
        raise UnsupportedModelError(
            f"nothing pruned: none of the {units:,} selected units can be removed exactly{first}; nothing was written"
        )
    output.out.print("nothing written", markup=False)
    if args.json:
        from deadrelu.io.files import write_json

        write_json(args.json, result_document("prune", loaded, result, output_path=None))
        output.note(f"wrote summary {args.json}", style="dim")
    return EXIT_GATE if args.fail_if_nothing else EXIT_OK


def _data(result, args):
    """The data the units were proven on: --data, else the data file the report names."""
    return args.data or (result.report.data or {}).get("source")


def rescan(result, args, output):
    """Scans the pruned model on the same data: the pruned sites should have no dead unit left."""
    from deadrelu.engine.scanner import scan

    with output.progress("rescanning") as (on_start, on_batch):
        return scan(
            result.model,
            _data(result, args),
            batch_size=args.batch_size,
            **data_options(args),
            on_start=on_start,
            on_batch=on_batch,
        )


def measure(result, args, output, loaded, out_path: str):
    """Parameters, file size (saved as OUT is) and predict time of both models, side by side.

    Returns:
        A `deadrelu.fixes.model_utils.CostComparison`.
    """
    from deadrelu.data import load_data
    from deadrelu.engine.mesh import whole_batches
    from deadrelu.fixes.model_utils import compare_cost

    model = loaded.model
    samples = min(filter(None, (args.samples, TIMING_SAMPLES)))
    data = load_data(_data(result, args), model, **{**data_options(args), "samples": samples})
    # Under --distribution, Keras's predict takes only batches that split evenly over the devices.
    x, batch_size = whole_batches(next(iter(data.batches(samples))), args.batch_size)
    suffix = os.path.splitext(out_path)[1] or ".keras"
    with output.progress("timing predict (--no-timing skips it)"):
        return compare_cost(
            model, result.model, x, batch_size=batch_size, rounds=args.timing_rounds, file_suffix=suffix
        )


def save(result, args, output, loaded, out_path: str, *, after=None, cost=None, retrain=None) -> None:
    """Writes OUT (atomically) and the --json summary: `result.to_dict()` under its header, and what
    only the command measures (the rescan, the cost, the retraining)."""
    from deadrelu.io.saving import save_model

    save_model(result.model, out_path, force=args.force, notes=result.notes)
    if args.json:
        from deadrelu.io.files import write_json

        document = result_document(
            "prune",
            loaded,
            result,
            output_path=out_path,
            summary_after=after.summary if after is not None else None,
            units_after={site.path: site.units for site in after.sites} if after is not None else None,
            dead_after={site.path: len(site.dead) for site in after.sites} if after is not None else None,
            cost=cost.to_dict() if cost is not None else None,
            retrain=retrain.to_dict() if retrain is not None else None,
        )
        write_json(args.json, document)


def show(result, args, output, *, after=None, cost=None, wrote: str | None = None) -> None:
    """The result's view (every pruned site, the layers, the checks, what it saves), its notes, the files."""
    from deadrelu.views.notebook import prune_renderable

    output.out.print(prune_renderable(result, rows=None, after=after, cost=cost, notes=False))
    for note in result.notes:
        output.note(note)
    if wrote:
        output.out.print(f"wrote {wrote}", markup=False)
        if args.json:
            output.note(f"wrote summary {args.json}", style="dim")
